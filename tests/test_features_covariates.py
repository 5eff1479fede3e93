"""Covariates built in SQL against the same covariates computed row by row in pandas; scores and
windows on hand-made persons; ids stable across sites; bad input."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercia.cdm import Cdm
from mercia.errors import StudyError
from mercia.features import CovariateSettings, Window, build_covariates
from test_analyses_support import FEMALE, MALE, load

D0 = dt.date(2012, 1, 1)
WINDOWS = [Window(kind="any_time_prior"), Window(kind="long_term", start=-365, end=0),
           Window(kind="short_term", start=-30, end=0), Window(kind="medium_term", start=-180, end=-10)]
SLOT = {"any_time_prior": 0, "long_term": 1, "medium_term": 2, "short_term": 3}


def _d(n: int) -> dt.date:
    return D0 + dt.timedelta(days=int(n))


def world(seed: int, n: int = 60) -> dict:
    rng = np.random.default_rng(seed)
    pid = np.arange(1, n + 1)
    persons = pd.DataFrame({"person_id": pid, "gender_concept_id": rng.choice([MALE, FEMALE], n),
                            "year_of_birth": rng.integers(1930, 2000, n)})
    rows = []
    for p in pid:
        for cid in (1, 2):
            if rng.random() < 0.6:
                s = int(rng.integers(400, 1500))
                rows.append((cid, p, _d(s), _d(s + 10)))
                if rng.random() < 0.3:
                    rows.append((cid, p, _d(s + 90), _d(s + 100)))
    cohorts = pd.DataFrame(rows, columns=["cohort_definition_id", "subject_id", "cohort_start_date",
                                          "cohort_end_date"])
    ops = pd.DataFrame({"person_id": pid, "observation_period_start_date": D0,
                        "observation_period_end_date": _d(2500)})
    k = n * 15
    conditions = pd.DataFrame({"person_id": rng.choice(pid, k), "condition_concept_id": rng.integers(200, 210, k),
                               "condition_start_date": [_d(x) for x in rng.integers(0, 1600, k)]})
    drugs = pd.DataFrame({"person_id": rng.choice(pid, k), "drug_concept_id": rng.integers(500, 508, k),
                          "drug_exposure_start_date": [_d(x) for x in rng.integers(0, 1600, k)]})
    m = n * 10
    measurements = pd.DataFrame({"person_id": rng.choice(pid, m), "measurement_concept_id": rng.integers(300, 303, m),
                                 "measurement_date": [_d(x) for x in rng.integers(0, 1600, m)],
                                 "value_as_number": np.round(rng.normal(5, 3, m), 2),
                                 "unit_concept_id": rng.choice([8000, 8001], m)})
    # Drug products 500..507 belong to ingredients 900..903; 950 is an ATC class above all of them.
    anc = [(900 + (d - 500) // 2, d) for d in range(500, 508)] + [(i, i) for i in range(900, 904)]
    anc += [(950, d) for d in range(500, 508)] + [(950, 950)]
    concepts = pd.DataFrame({
        "concept_id": [*range(900, 904), 950, *range(200, 210), *range(300, 303)],
        "concept_name": [*(f"ingredient {i}" for i in range(4)), "a drug class", *(f"cond {i}" for i in range(10)),
                         *(f"lab {i}" for i in range(3))],
        "concept_class_id": ["Ingredient"] * 4 + ["ATC 4th"] + ["Clinical Finding"] * 10 + ["Lab Test"] * 3,
        "vocabulary_id": ["RxNorm"] * 4 + ["ATC"] + ["SNOMED"] * 10 + ["LOINC"] * 3,
        "domain_id": ["Drug"] * 5 + ["Condition"] * 10 + ["Measurement"] * 3,
    })
    return {"persons": persons, "observation_periods": ops, "cohorts": cohorts, "conditions": conditions,
            "drugs": drugs, "measurements": measurements,
            "ancestors": pd.DataFrame(anc, columns=["ancestor_concept_id", "descendant_concept_id"]),
            "concepts": concepts}


def entries(w: dict, first_only: bool = True) -> pd.DataFrame:
    c = w["cohorts"].drop_duplicates(["cohort_definition_id", "subject_id", "cohort_start_date"])
    c = c.sort_values(["cohort_definition_id", "subject_id", "cohort_start_date"])
    if first_only:
        c = c.groupby(["cohort_definition_id", "subject_id"], as_index=False).first()
    c = c.reset_index(drop=True)
    return c.assign(row_id=np.arange(len(c)))


def reference(w: dict, windows: list[Window], *, roll_up_atc: bool) -> dict[int, np.ndarray]:
    """Dense columns, by covariate id, for conditions (as recorded), drug ingredients (and the ATC
    class with roll-up) and latest measurement values, computed from the rows in pandas."""
    e = entries(w)
    out: dict[int, np.ndarray] = {}

    def binary(recs: pd.DataFrame, date_col: str, concept_of: dict[int, list[int]], base: int) -> None:
        j = recs.merge(e, left_on="person_id", right_on="subject_id")
        off = (pd.to_datetime(j[date_col]) - pd.to_datetime(j["cohort_start_date"])).dt.days.to_numpy()
        for win in windows:
            ok = (off <= win.end) & (off >= win.lo)
            for row, raw in zip(j["row_id"].to_numpy()[ok], j["concept"].to_numpy()[ok], strict=True):
                for c in concept_of.get(int(raw), [int(raw)]):
                    col = out.setdefault(c * 1000 + base + SLOT[win.kind], np.zeros(len(e)))
                    col[row] = 1.0

    binary(w["conditions"].rename(columns={"condition_concept_id": "concept"}), "condition_start_date", {}, 101)
    ing = {d: [900 + (d - 500) // 2] + ([950] if roll_up_atc else []) for d in range(500, 508)}
    binary(w["drugs"].rename(columns={"drug_concept_id": "concept"}), "drug_exposure_start_date", ing, 410)
    m = w["measurements"].merge(e, left_on="person_id", right_on="subject_id")
    m["off"] = (pd.to_datetime(m["measurement_date"]) - pd.to_datetime(m["cohort_start_date"])).dt.days
    m["mid"] = np.arange(len(m))  # load() numbers measurement_id in row order
    for win in windows:
        mm = m[(m["off"] <= win.end) & (m["off"] >= win.lo)]
        latest = mm.sort_values(["measurement_date", "mid"]).groupby(
            ["row_id", "measurement_concept_id", "unit_concept_id"]).last().reset_index()
        for r in latest.itertuples():
            cid = r.measurement_concept_id * 1_000_000 + (r.unit_concept_id % 1000) * 1000 + 705 + SLOT[win.kind]
            out.setdefault(cid, np.zeros(len(e)))[r.row_id] = r.value_as_number
    return out


def _only_domains(**kw: object) -> CovariateSettings:
    base = {"windows": WINDOWS, "use_demographics": False, "use_charlson": False, "use_chads2vasc": False,
            "use_procedures": False, "roll_up": False}
    return CovariateSettings(**{**base, **kw})


@pytest.mark.parametrize("seed", [1, 2])
def test_domain_covariates_equal_a_row_by_row_reference(seed: int) -> None:
    w = world(seed)
    with Cdm.open() as cdm:
        load(cdm, **w)
        cd = build_covariates(cdm, [1, 2], _only_domains())
        ref = reference(w, WINDOWS, roll_up_atc=False)
        e = entries(w)
        assert cd.rows[["person_id", "cohort_definition_id"]].to_numpy().tolist() == \
            e[["subject_id", "cohort_definition_id"]].to_numpy().tolist()
        assert sorted(ref) == sorted(cd.covariate_ids.tolist())
        dense = cd.X.toarray()
        for cid, col in ref.items():
            np.testing.assert_allclose(dense[:, cd.column(cid)], col, err_msg=str(cid))
        kinds = dict(zip(cd.ref["covariate_id"], cd.ref["kind"], strict=True))
        assert {kinds[c] for c in ref if c % 1000 >= 705} == {"continuous"}


def test_roll_up_adds_atc_classes_and_not_other_drug_ancestors() -> None:
    w = world(3)
    with Cdm.open() as cdm:
        load(cdm, **w)
        cd = build_covariates(cdm, [1, 2], _only_domains(roll_up=True, use_conditions=False))
        ref = reference(w, WINDOWS, roll_up_atc=True)
        ref = {k: v for k, v in ref.items() if k // 1000 >= 900 and k % 1000 < 705}
        drug_ids = [c for c in cd.covariate_ids.tolist() if c % 1000 in (410, 411, 412, 413)]
        assert sorted(drug_ids) == sorted(ref)
        for cid, col in ref.items():
            np.testing.assert_allclose(cd.X[:, cd.column(cid)].toarray().ravel(), col)


def hand_made() -> dict:
    """Three persons with known covariates; index 2020-06-01 for all."""
    idx = dt.date(2020, 6, 1)
    persons = pd.DataFrame({"person_id": [1, 2, 3], "gender_concept_id": [FEMALE, MALE, FEMALE],
                            "year_of_birth": [1944, 1990, 1950]})
    ops = pd.DataFrame({"person_id": [1, 2, 3], "observation_period_start_date": dt.date(2010, 1, 1),
                        "observation_period_end_date": dt.date(2024, 1, 1)})
    cohorts = pd.DataFrame({"cohort_definition_id": [7, 7, 8], "subject_id": [1, 2, 3],
                            "cohort_start_date": idx, "cohort_end_date": idx})

    def before(days: int) -> dt.date:
        return idx - dt.timedelta(days=days)

    # 1111 is a child of heart failure 316139 (Charlson CHF 1, CHA2DS2-VASc C 1); 2222 a child of
    # Charlson's renal disease 4030518 (weight 2); 320128 hypertension (CHA2DS2-VASc H); 197930 is
    # excluded from H, so its child 3333 counts for nothing. Person 2's records are after index.
    conditions = pd.DataFrame({
        "person_id": [1, 1, 1, 1, 2, 3],
        "condition_concept_id": [1111, 2222, 320128, 3333, 1111, 1111],
        "condition_start_date": [before(400), before(20), before(5), before(1), idx + dt.timedelta(days=3),
                                 before(0)],
    })
    anc = [(316139, 1111), (4030518, 2222), (320128, 320128), (320128, 3333), (197930, 3333),
           (1111, 1111), (2222, 2222), (3333, 3333)]
    concepts = pd.DataFrame({"concept_id": [1111, 2222, 3333, 320128, 316139, 4030518, 197930],
                             "concept_name": ["hf child", "ckd child", "ht child", "Essential hypertension",
                                              "Heart failure", "Renal disease", "Secondary hypertension"],
                             "concept_class_id": "Clinical Finding", "domain_id": "Condition"})
    return {"persons": persons, "observation_periods": ops, "cohorts": cohorts, "conditions": conditions,
            "ancestors": pd.DataFrame(anc, columns=["ancestor_concept_id", "descendant_concept_id"]),
            "concepts": concepts}


def test_scores_demographics_and_windows_on_hand_made_persons() -> None:
    with Cdm.open() as cdm:
        load(cdm, **hand_made())
        cd = build_covariates(cdm, [7, 8], CovariateSettings(use_drugs=False, use_procedures=False,
                                                             use_measurements=False))
        X = cd.X.toarray()

        def val(row: int, cid: int) -> float:
            return X[row, cd.column(cid)] if cid in cd.covariate_ids else 0.0

        # Charlson: CHF (1) + renal (2) for person 1; CHF on the index day for person 3; nothing for 2.
        assert [val(r, 1901) for r in range(3)] == [3.0, 0.0, 1.0]
        # CHA2DS2-VASc: person 1 is 76 and female (2 + 1), CHF 1, hypertension 1 (3333 excluded) = 5;
        # person 2 (30, male) 0; person 3 (70, female: 1 + 1) with CHF = 3.
        assert [val(r, 1904) for r in range(3)] == [5.0, 0.0, 3.0]
        assert [val(r, 1002) for r in range(3)] == [76.0, 30.0, 70.0]
        assert [val(r, FEMALE * 1000 + 1) for r in range(3)] == [1.0, 0.0, 1.0]
        assert val(0, (76 // 5 + 1) * 1000 + 3) == 1.0
        assert val(0, 2020 * 1000 + 6) == 1.0 and val(0, 6 * 1000 + 7) == 1.0
        assert val(0, 1008) == (dt.date(2020, 6, 1) - dt.date(2010, 1, 1)).days
        # Roll-up: the heart-failure child counts for heart failure itself (400 days before: any time
        # prior only), the renal child (20 days before) in all three windows.
        assert val(0, 316139 * 1000 + 210) == 1.0 and val(0, 316139 * 1000 + 211) == 0.0
        assert all(val(0, 4030518 * 1000 + a) == 1.0 for a in (210, 211, 213))
        assert val(1, 1111 * 1000 + 210) == 0.0  # after index
        names = dict(zip(cd.ref["covariate_id"], cd.ref["covariate_name"], strict=True))
        assert names[316139 * 1000 + 210] == "any time prior through 0 days relative to index: Heart failure"


def test_excluded_concepts_drop_their_records_and_descendants() -> None:
    with Cdm.open() as cdm:
        load(cdm, **hand_made())
        s = CovariateSettings(use_drugs=False, use_procedures=False, use_measurements=False,
                              use_demographics=False, use_charlson=False, use_chads2vasc=False,
                              excluded_concept_ids=[316139])
        cd = build_covariates(cdm, [7, 8], s)
        concepts = set(cd.ref["concept_id"])
        assert not concepts & {316139, 1111}
        assert 4030518 in concepts


def test_first_entry_only_and_rare_covariate_filter() -> None:
    w = world(4)
    with Cdm.open() as cdm:
        load(cdm, **w)
        all_entries = build_covariates(cdm, [1, 2], _only_domains(), first_entry_only=False)
        assert len(all_entries.rows) == len(entries(w, first_only=False))
        first = build_covariates(cdm, [1, 2], _only_domains())
        rare = build_covariates(cdm, [1, 2], _only_domains(min_persons=25))
        counts = np.diff(first.X.tocsc().indptr)
        assert sorted(rare.covariate_ids.tolist()) == sorted(first.covariate_ids[counts >= 25].tolist())
        frac = build_covariates(cdm, [1, 2], _only_domains(min_fraction=0.5))
        assert (np.diff(frac.X.tocsc().indptr) >= 0.5 * len(frac.rows)).all()


def test_ids_are_stable_across_sites_and_align() -> None:
    with Cdm.open() as a, Cdm.open() as b:
        load(a, **world(5))
        load(b, **world(6, n=30))
        ca = build_covariates(a, [1, 2], _only_domains())
        cb = build_covariates(b, [1, 2], _only_domains())
        shared = sorted(set(ca.covariate_ids) & set(cb.covariate_ids))
        assert shared
        Xb = cb.align_to(ca.covariate_ids)
        assert Xb.shape == (len(cb.rows), len(ca.covariate_ids))
        for cid in shared[:10]:
            np.testing.assert_array_equal(Xb[:, ca.column(cid)].toarray(), cb.X[:, cb.column(cid)].toarray())


def test_empty_cohort_gives_zero_rows() -> None:
    with Cdm.open() as cdm:
        load(cdm, **world(7))
        cd = build_covariates(cdm, [99], CovariateSettings(use_procedures=False))
        assert cd.X.shape[0] == 0 and len(cd.rows) == 0


@pytest.mark.parametrize("bad", [[], [1, 1], [-3], ["1"]])
def test_bad_cohort_ids(bad: list) -> None:
    with Cdm.open() as cdm:
        load(cdm, **world(8, n=5))
        with pytest.raises(StudyError):
            build_covariates(cdm, bad)


def test_bad_settings_and_missing_tables() -> None:
    with pytest.raises(StudyError):
        Window(kind="long_term", start=10, end=0)
    with pytest.raises(StudyError):
        Window(kind="long_term")
    with pytest.raises(StudyError):
        CovariateSettings(windows=[Window(kind="long_term", start=-365), Window(kind="long_term", start=-30)])
    with pytest.raises(StudyError):
        CovariateSettings(excluded_concept_ids=[-5])
    with Cdm.open() as cdm:
        cdm.create_tables(["person", "observation_period", "cohort"])
        with pytest.raises(StudyError, match="concept_ancestor"):
            build_covariates(cdm, [1])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lo=st.integers(-400, -1), width=st.integers(0, 200))
def test_any_window_matches_the_reference(lo: int, width: int) -> None:
    w = world(11, n=25)
    win = [Window(kind="medium_term", start=lo, end=min(lo + width, 0))]
    with Cdm.open() as cdm:
        load(cdm, **w)
        cd = build_covariates(cdm, [1, 2], _only_domains(windows=win, use_measurements=False))
        ref = reference(w, win, roll_up_atc=False)
        ref = {k: v for k, v in ref.items() if k % 1000 < 705}
        assert sorted(ref) == sorted(cd.covariate_ids.tolist())
        for cid, col in ref.items():
            np.testing.assert_allclose(cd.X[:, cd.column(cid)].toarray().ravel(), col)


def test_domain_covariates_on_every_engine(cdm_factory) -> None:
    # The same reference on DuckDB and PostgreSQL: the covariate SQL is built once and rendered per dialect.
    w = world(3)
    cdm = cdm_factory()
    load(cdm, **w)
    cd = build_covariates(cdm, [1, 2], _only_domains())
    ref = reference(w, WINDOWS, roll_up_atc=False)
    assert sorted(ref) == sorted(cd.covariate_ids.tolist())
    dense = cd.X.toarray()
    for cid, col in ref.items():
        np.testing.assert_allclose(dense[:, cd.column(cid)], col, err_msg=str(cid))
