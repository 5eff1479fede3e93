"""cohort_method end to end on small CDMs: adjusted results equal direct lifelines/statsmodels fits on
the matched rows, matching improves balance, attrition adds up, duplicates are handled as CohortMethod
does, bad input is refused, separation is reported, tables pass release()."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from mercia.analyses.cohort_method import (
    CohortMethodSettings,
    cohort_method,
    cohort_method_populations,
)
from mercia.analyses.notes import Note, NoteCode
from mercia.analyses.propensity import PsSettings
from mercia.cdm import Cdm
from mercia.disclosure import SACRO, DisclosureLog, release
from mercia.errors import StudyError
from mercia.features import CovariateSettings
from test_analyses_support import FEMALE, MALE, load

lifelines = pytest.importorskip("lifelines")
sm = pytest.importorskip("statsmodels.api")

D0 = dt.date(2015, 1, 1)
CONFOUNDER, NOISE, DRUG_T, DRUG_C = 100, 200, 500, 501


def _d(n: int) -> dt.date:
    return D0 + dt.timedelta(days=int(n))


def world(seed: int = 1, n: int = 1500, hr: float = 1.0, overlap: int = 0) -> dict:
    """Target (1) and comparator (2) new users; condition 100 makes treatment likelier and the outcome
    (cohort 3) commoner; 5 negative-control outcomes (10..14) happen regardless of treatment."""
    rng = np.random.default_rng(seed)
    pid = np.arange(1, n + 1)
    conf = rng.random(n) < 0.4
    age = rng.integers(40, 85, n)
    treat = rng.random(n) < 1 / (1 + np.exp(-(-0.6 + 1.6 * conf + 0.02 * (age - 60))))
    index = rng.integers(400, 900, n)
    end = index + rng.integers(30, 400, n)
    persons = pd.DataFrame({"person_id": pid, "gender_concept_id": rng.choice([MALE, FEMALE], n),
                            "year_of_birth": 2016 - age})
    ops = pd.DataFrame({"person_id": pid, "observation_period_start_date": D0,
                        "observation_period_end_date": [_d(e + 30) for e in end]})
    cohorts = pd.DataFrame({"cohort_definition_id": np.where(treat, 1, 2), "subject_id": pid,
                            "cohort_start_date": [_d(i) for i in index], "cohort_end_date": [_d(e) for e in end]})
    if overlap:  # some persons also enter the other cohort, later or on the same day
        extra = pd.DataFrame({"cohort_definition_id": np.where(treat[:overlap], 2, 1), "subject_id": pid[:overlap],
                              "cohort_start_date": [_d(i + (k % 2) * 5) for k, i in enumerate(index[:overlap])],
                              "cohort_end_date": [_d(e) for e in end[:overlap]]})
        cohorts = pd.concat([cohorts, extra], ignore_index=True)
    rate = 0.002 * np.exp(1.2 * conf + np.log(hr) * treat)
    t_out = index + np.ceil(rng.exponential(1 / rate)).astype(int)
    has = t_out <= end
    prior = rng.random(n) < 0.03  # an outcome before index: these persons leave the study population
    out = [(3, p, _d(t), _d(t)) for p, t, h in zip(pid, t_out, has, strict=True) if h]
    out += [(3, p, _d(i - 50), _d(i - 50)) for p, i, h in zip(pid, index, prior, strict=True) if h]
    for k in range(5):
        t_nc = index + np.ceil(rng.exponential(1 / (0.0015 * np.exp(0.8 * conf)))).astype(int)
        out += [(10 + k, p, _d(t), _d(t)) for p, t, e in zip(pid, t_nc, end, strict=True) if t <= e]
    cohorts = pd.concat([cohorts, pd.DataFrame(out, columns=cohorts.columns)], ignore_index=True)
    conditions = pd.DataFrame({
        "person_id": np.r_[pid[conf], rng.choice(pid, n)],
        "condition_concept_id": np.r_[np.full(conf.sum(), CONFOUNDER), np.full(n, NOISE)],
        "condition_start_date": [_d(x) for x in np.r_[index[conf] - 100, rng.integers(0, 900, n)]],
    })
    drugs = pd.DataFrame({"person_id": pid, "drug_concept_id": np.where(treat, DRUG_T, DRUG_C),
                          "drug_exposure_start_date": [_d(i) for i in index]})
    anc = pd.DataFrame({"ancestor_concept_id": [DRUG_T, DRUG_C, CONFOUNDER, NOISE],
                        "descendant_concept_id": [DRUG_T, DRUG_C, CONFOUNDER, NOISE]})
    concepts = pd.DataFrame({"concept_id": [DRUG_T, DRUG_C, CONFOUNDER, NOISE],
                             "concept_name": ["drug t", "drug c", "confounder", "noise"],
                             "concept_class_id": ["Ingredient", "Ingredient", "Clinical Finding", "Clinical Finding"],
                             "domain_id": ["Drug", "Drug", "Condition", "Condition"]})
    return {"persons": persons, "observation_periods": ops, "cohorts": cohorts, "conditions": conditions,
            "drugs": drugs, "ancestors": anc, "concepts": concepts}


def settings(**kw: object) -> CohortMethodSettings:
    cov = CovariateSettings(use_procedures=False, use_measurements=False, excluded_concept_ids=[DRUG_T, DRUG_C])
    base: dict[str, object] = {"covariates": cov, "ps": PsSettings(variance=1.0)}
    return CohortMethodSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def cdm():
    c = Cdm.open()
    load(c, **world())
    yield c
    c.close()


def test_matched_estimate_equals_lifelines_on_the_matched_rows(cdm: Cdm) -> None:
    s = settings()
    res = cohort_method(cdm, 1, 2, [3], s)
    est = res["cm_estimates"].data.set_index("adjustment")
    _, pops = cohort_method_populations(cdm, 1, 2, [3], s)
    d = pops[3]
    m = d[d["stratum"] >= 0]
    assert (m.groupby("stratum")["treatment"].agg(["sum", "size"]).to_numpy() == [1, 2]).all()
    # statsmodels' PHReg (Efron ties, one risk set per matched pair); lifelines agrees with it
    # (tests/test_cohort_method_parts.py) but is slow with hundreds of strata.
    ph = sm.PHReg(m["time"], m[["treatment"]], status=m["event"], strata=m["stratum"], ties="efron").fit()
    assert est.loc["match", "log_rr"] == pytest.approx(ph.params[0], abs=1e-6)
    assert est.loc["match", "se_log_rr"] == pytest.approx(ph.bse[0], abs=1e-6)
    crude = lifelines.CoxPHFitter().fit(d[["treatment", "time", "event"]], "time", "event")
    assert est.loc["crude", "log_rr"] == pytest.approx(crude.params_["treatment"], abs=1e-6)
    counts = res["cm_counts"].data.set_index("adjustment")
    assert counts.loc["match", "target_subjects"] == (m["treatment"] == 1).sum()
    assert counts.loc["match", "target_events"] == m.loc[m["treatment"] == 1, "event"].sum()


def test_confounding_is_removed_by_matching(cdm: Cdm) -> None:
    # No treatment effect is planted: the crude HR is confounded upwards, the matched one is not.
    est = cohort_method(cdm, 1, 2, [3], settings())["cm_estimates"].data.set_index("adjustment")
    assert est.loc["crude", "ci_lower"] > 1.0
    assert est.loc["match", "ci_lower"] < 1.0 < est.loc["match", "ci_upper"]


def test_balance_improves_and_is_flagged(cdm: Cdm) -> None:
    res = cohort_method(cdm, 1, 2, [3], settings())
    bal = res["cm_balance_3"].data.set_index("covariate_id")
    row = bal.loc[CONFOUNDER * 1000 + 210]
    assert abs(row["before_smd"]) > 0.3 and abs(row["after_smd"]) < 0.1
    assert bal["after_smd"].abs().max() < bal["before_smd"].abs().max()
    est = res["cm_estimates"].data.set_index("adjustment")
    assert est.loc["match", "max_abs_smd_after"] == pytest.approx(bal["after_smd"].abs().max())
    assert est.loc["match", "balance_flag"] == float(bal["after_smd"].abs().max() > 0.1)


def test_stratification_and_poisson(cdm: Cdm) -> None:
    s = settings(adjustment="stratify", outcome_model={"model_type": "poisson"})
    res = cohort_method(cdm, 1, 2, [3], s)
    _, pops = cohort_method_populations(cdm, 1, 2, [3], s)
    d = pops[3]
    assert sorted(d["stratum"].unique()) == [1, 2, 3, 4, 5]
    design = pd.get_dummies(d["stratum"], prefix="s", dtype=float)
    design.insert(0, "treatment", d["treatment"].astype(float))
    glm = sm.GLM(d["n_events"], design, family=sm.families.Poisson(), offset=np.log(d["days_at_risk"])).fit(tol=1e-12)
    est = res["cm_estimates"].data.set_index("adjustment")
    assert est.loc["stratify", "log_rr"] == pytest.approx(glm.params["treatment"], abs=1e-5)
    assert est.loc["stratify", "se_log_rr"] == pytest.approx(glm.bse["treatment"], rel=1e-4)


def test_attrition_adds_up_and_steps_are_reported(cdm: Cdm) -> None:
    res = cohort_method(cdm, 1, 2, [3], settings(population={"washout_period": 500}))
    att = res["cm_attrition_3"].data
    steps = [s.split(". ", 1)[1] for s in att["step"]]
    assert steps[0].startswith("original cohorts") and steps[-1] == "matched on propensity score"
    assert "no prior outcome" in steps
    assert (np.diff(att["n_target"]) <= 0).all() and (np.diff(att["n_comparator"]) <= 0).all()
    assert att["n_target"].iloc[1] < att["n_target"].iloc[0]  # the washout removed some
    _, pops = cohort_method_populations(cdm, 1, 2, [3], settings(population={"washout_period": 500}))
    assert att["n_target"].iloc[-2] == (pops[3]["treatment"] == 1).sum()


@pytest.mark.parametrize("how", ["keep all", "keep first", "remove all"])
def test_duplicate_subjects_as_cohortmethod(how: str) -> None:
    with Cdm.open() as cdm:
        load(cdm, **world(seed=2, n=600, overlap=40))
        res = cohort_method(cdm, 1, 2, [3], settings(population={"remove_duplicate_subjects": how}))
        att = res["cm_attrition_3"].data
        total = att["n_target"] + att["n_comparator"]
        assert total.iloc[0] == 640
        if how == "keep all":
            assert "duplicate" not in " ".join(att["step"]) and total.iloc[1] == 640
        elif how == "remove all":
            assert total.iloc[1] == 560  # the 40 persons in both, with both their entries, are gone
        else:
            # The 20 on different days keep their first entry; the 20 with both on one day go.
            assert total.iloc[1] == 580


def test_negative_controls_are_estimated_and_calibrate(cdm: Cdm) -> None:
    res = cohort_method(cdm, 1, 2, [3], settings(), negative_control_ids=[10, 11, 12, 13, 14],
                        labels={3: "outcome", 10: "nc0"})
    est = res["cm_estimates"].data
    adj = est[est["adjustment"] == "match"]
    assert set(adj["outcome_type"]) == {"outcome", "negative_control"} and len(adj) == 6
    assert adj["calibrated_p"].notna().all() and adj["calibrated_ci_lower"].notna().all()
    assert "cm_balance_outcome" in res.tables and "cm_balance_nc0" not in res.tables
    assert "cm_attrition_nc0" in res.tables
    assert Note(NoteCode.CALIBRATED) in res.notes


def test_tables_pass_release_and_small_cells_are_suppressed(cdm: Cdm) -> None:
    res = cohort_method(cdm, 1, 2, [3], settings())
    log = DisclosureLog()
    released = {k: release(t, SACRO, log=log) for k, t in res.tables.items()}
    assert all(r.status == "released" for r in released.values())
    bal = released["cm_balance_3"].data
    site = res["cm_balance_3"].data
    small = site["min_nonzero"] <= SACRO.suppress_up_to
    # A covariate resting on a few persons is not listed at all: its name alone says someone has it.
    assert small.any() and not set(site.loc[small, "covariate_id"]) & set(bal["covariate_id"])
    assert len(bal) == int((~small).sum()) and bal["after_smd"].notna().any()
    assert "person_id" not in " ".join(c for r in released.values() for c in r.data.columns)


def test_separation_is_reported_not_raised(cdm: Cdm) -> None:
    # The exposures' own drugs left in the covariates: they are the treatment.
    s = settings(covariates=CovariateSettings(use_procedures=False, use_measurements=False))
    res = cohort_method(cdm, 1, 2, [3], s)
    assert Note(NoteCode.PS_NOT_FITTED) in res.notes
    est = res["cm_estimates"].data
    assert list(est["adjustment"]) == ["crude"]
    diag = res["cm_ps_diagnostics"].data
    assert diag["status"].iloc[0] == "not fitted" and diag["high_correlation_covariates"].iloc[0] > 0
    assert res["cm_attrition_3"].data["n_target"].iloc[-1] == 0


def test_bad_input(cdm: Cdm) -> None:
    with pytest.raises(StudyError, match="at least one outcome"):
        cohort_method(cdm, 1, 2, [], settings())
    with pytest.raises(StudyError, match="same cohort"):
        cohort_method(cdm, 1, 1, [3], settings())
    with pytest.raises(StudyError, match="exposure and an outcome"):
        cohort_method(cdm, 1, 2, [1], settings())
    with pytest.raises(StudyError):
        cohort_method(cdm, 1, 2, [-3], settings())
    with pytest.raises(StudyError):
        CohortMethodSettings(equipoise_bounds=(0.7, 0.3))


def test_an_outcome_nobody_has_and_an_empty_comparator() -> None:
    with Cdm.open() as cdm:
        load(cdm, **world(seed=3, n=300))
        res = cohort_method(cdm, 1, 2, [99], settings())
        est = res["cm_estimates"].data
        # no estimate: the row's level count is 1, so release() withholds it under every policy
        assert est["log_rr"].isna().all() and (est["min_level_count"] == 1).all()
        res = cohort_method(cdm, 1, 77, [3], settings())
        assert Note(NoteCode.PS_NOT_FITTED) in res.notes


def test_study_package_cohort_method_type() -> None:
    from pathlib import Path

    import yaml

    from mercia.study import StudyPackage

    folder = Path(__file__).resolve().parents[1] / "examples" / "studies" / "sglt2_heart_failure"
    data = yaml.safe_load((folder / "study.yaml").read_text())
    data["analyses"] = [{"type": "cohort_method", "name": "cm", "target": "sglt2", "comparator": "gliclazide",
                         "outcomes": ["hf_admission"], "settings": {"adjustment": "stratify",
                                                                    "match": {"max_ratio": 0}}}]
    pkg = StudyPackage.from_dict(data, base_dir=folder)
    a = pkg.spec.analyses[0]
    assert isinstance(a.settings, CohortMethodSettings) and a.settings.adjustment == "stratify"
    bad = [{**data["analyses"][0], "negative_controls": ["no_such_cohort"]},
           {**data["analyses"][0], "outcomes": []},
           {**data["analyses"][0], "settings": {"match": {"caliper": -1}}},
           {**data["analyses"][0], "settings": {"ps": {"prior": "cauchy"}}}]
    for analysis in bad:
        with pytest.raises(StudyError):
            StudyPackage.from_dict({**data, "analyses": [analysis]}, base_dir=folder)
