"""Survival analyses against lifelines: Kaplan-Meier from SQL aggregates, Cox (Efron), federated Cox."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import proportional_hazard_test

from mercia.analyses.notes import Note, NoteCode
from mercia.analyses.survival import (
    CovariateSpec,
    CoxData,
    CoxSettings,
    SurvivalSettings,
    cox_data,
    cox_model,
    cox_site_summary,
    fit_cox,
    kaplan_meier,
    km_estimates,
    median_survival,
    newton_raphson,
    ph_test,
    time_to_event_counts,
)
from mercia.disclosure import SACRO, DisclosureLog, release
from mercia.errors import StudyError
from test_analyses_support import load, load_world, survival_world


@pytest.fixture(scope="module")
def world():
    return survival_world(300, seed=7)


def _lifelines_km(t: np.ndarray, e: np.ndarray) -> KaplanMeierFitter:
    return KaplanMeierFitter().fit(t, e)


def test_km_equals_lifelines(cdm_factory, world):
    cdm = load_world(cdm_factory(), world)
    res = kaplan_meier(cdm, [1, 2], 3)
    curve = res["km"].data
    exp = world["expected"]
    for cid, treat in ((1, 1.0), (2, 0.0)):
        g = exp[exp["treatment"] == treat]
        kmf = _lifelines_km(g["time"].to_numpy(), g["event"].to_numpy())
        mine = curve[curve["cohort_id"] == cid].set_index("time")
        sf = kmf.survival_function_.iloc[:, 0]
        ci = kmf.confidence_interval_
        times = mine.index.to_numpy(dtype=float)
        np.testing.assert_allclose(mine["estimate"].to_numpy(), sf.loc[times].to_numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(
            mine["ci_lower"].to_numpy(), ci.iloc[:, 0].loc[times].to_numpy(), atol=1e-6
        )
        np.testing.assert_allclose(
            mine["ci_upper"].to_numpy(), ci.iloc[:, 1].loc[times].to_numpy(), atol=1e-6
        )
        table = kmf.event_table.loc[times]
        np.testing.assert_array_equal(mine["n_at_risk"].to_numpy(), table["at_risk"].to_numpy())
        np.testing.assert_array_equal(mine["n_events"].to_numpy(), table["observed"].to_numpy())
        np.testing.assert_array_equal(mine["n_censored"].to_numpy(), table["censored"].to_numpy())
        from lifelines.utils import median_survival_times

        med, lo, hi = median_survival(mine.reset_index())
        assert med == kmf.median_survival_time_
        ci_med = median_survival_times(kmf.confidence_interval_)
        assert (lo, hi) == (float(ci_med.iloc[0, 0]), float(ci_med.iloc[0, 1]))
    summary = res["km_summary"].data.set_index("cohort_id")
    assert summary.loc[1, "n_persons"] == int((exp["treatment"] == 1).sum())
    assert summary.loc[1, "n_events"] == int(exp.loc[exp["treatment"] == 1, "event"].sum())


def test_km_estimates_edge_cases():
    # Everybody dies at the last time: S = 0, lifelines' Greenwood term is set to 0 there.
    counts = pd.DataFrame(
        {"time": [1, 2, 3], "n_at_risk": [5, 3, 1], "n_events": [1, 1, 1], "n_censored": [1, 1, 0]}
    )
    est = km_estimates(counts)
    t = np.array([1, 1, 2, 2, 3])
    e = np.array([1, 0, 1, 0, 1])
    kmf = _lifelines_km(t, e)
    np.testing.assert_allclose(est["estimate"], kmf.survival_function_.iloc[1:, 0], atol=1e-12)
    np.testing.assert_allclose(est["ci_lower"], kmf.confidence_interval_.iloc[1:, 0], atol=1e-12)
    np.testing.assert_allclose(est["ci_upper"], kmf.confidence_interval_.iloc[1:, 1], atol=1e-12)


def test_time_at_risk_settings(duck_cdm, world):
    cdm = load_world(duck_cdm, world)
    exp = world["expected"]
    capped = time_to_event_counts(cdm, [1, 2], 3, SurvivalSettings(tar_end=100))
    assert capped["time"].max() <= 100
    t = np.minimum(exp["time"], 100)
    e = exp["event"].astype(bool) & (exp["time"] <= 100)
    assert int(capped["n_events"].sum()) == int(e.sum())
    assert int(capped.groupby("cohort_id")["n_at_risk"].max().sum()) == len(t)
    # Cohort end (index + 30) censors earlier.
    ce = time_to_event_counts(cdm, [1], 3, SurvivalSettings(censor_at="cohort_end"))
    assert ce["time"].max() <= 30
    # Persons with an outcome before index are dropped when asked.
    pre = world["cohorts"]
    n_pre = pre[(pre["cohort_definition_id"] == 3)].groupby("subject_id").size()
    excl = time_to_event_counts(cdm, [1, 2], 3, SurvivalSettings(exclude_prior_outcome=True))
    assert excl.groupby("cohort_id")["n_at_risk"].max().sum() < len(exp)
    assert len(n_pre) > 0


def _lifelines_cox(df: pd.DataFrame, **kw) -> CoxPHFitter:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CoxPHFitter().fit(df, duration_col="time", event_col="event", **kw)


def test_cox_equals_lifelines(cdm_factory, world):
    cdm = load_world(cdm_factory(), world)
    settings = CoxSettings(covariates=[CovariateSpec(name="cond", concept_ids=[100], window_start=-30)])
    res = cox_model(cdm, 1, 2, 3, settings)
    table = res["cox"].data.set_index("term")
    exp = world["expected"][["time", "event", "treatment", "age", "male", "cond"]]
    cph = _lifelines_cox(exp)
    s = cph.summary
    for term in ["treatment", "age", "male", "cond"]:
        assert abs(table.loc[term, "coef"] - s.loc[term, "coef"]) < 1e-6
        assert abs(table.loc[term, "se"] - s.loc[term, "se(coef)"]) < 1e-6
        assert abs(table.loc[term, "hr"] - s.loc[term, "exp(coef)"]) < 1e-6
        assert abs(table.loc[term, "hr_lower"] - s.loc[term, "exp(coef) lower 95%"]) < 1e-6
        assert abs(table.loc[term, "hr_upper"] - s.loc[term, "exp(coef) upper 95%"]) < 1e-6
        assert abs(table.loc[term, "p"] - s.loc[term, "p"]) < 1e-6
    info = res["cox"].model
    assert info.n_obs == len(exp) and info.n_events == int(exp["event"].sum())
    ph = res["cox_ph_test"].data.set_index("term")
    ref = proportional_hazard_test(cph, exp, time_transform="rank").summary
    np.testing.assert_allclose(ph.loc[ref.index, "test_statistic"], ref["test_statistic"], atol=1e-6)
    # The released table is a model table: it passes (enough events) under SACRO.
    released = release(res["cox"], SACRO, log=DisclosureLog())
    assert released.status == "released"


def test_cox_data_covariates_follow_descendants_and_window(duck_cdm, world):
    cdm = load_world(duck_cdm, world)
    exp = world["expected"]
    with_desc = cox_data(cdm, 1, 2, 3, CoxSettings(covariates=[CovariateSpec(name="c", concept_ids=[100])]))
    np.testing.assert_array_equal(with_desc.X[:, -1], exp["cond"].to_numpy())
    only_100 = cox_data(
        cdm,
        1,
        2,
        3,
        CoxSettings(covariates=[CovariateSpec(name="c", concept_ids=[100], include_descendants=False)]),
    )
    assert 0 < only_100.X[:, -1].sum() < exp["cond"].sum()
    # Conditions are 10 days before index: a window ending 11 days before index sees none.
    none = cox_data(
        cdm,
        1,
        2,
        3,
        CoxSettings(covariates=[CovariateSpec(name="c", concept_ids=[100], window_start=-5, window_end=0)]),
    )
    assert none.X[:, -1].sum() == 0


def _sites(seed: int) -> list[CoxData]:
    out = []
    for k, n in enumerate((120, 90, 150)):
        w = survival_world(n, seed=seed + k, hr=1.3 + 0.3 * k)["expected"]
        out.append(
            CoxData(
                X=w[["treatment", "age", "male", "cond"]].to_numpy(),
                time=w["time"].to_numpy(),
                event=w["event"].to_numpy(),
                terms=["treatment", "age", "male", "cond"],
            )
        )
    return out


def test_federated_newton_equals_stratified_lifelines():
    sites = _sites(11)

    def pooled(beta):
        # What the hub does: ask each site for its summary at beta and add them up.
        summaries = [cox_site_summary(s, beta) for s in sites]
        total = summaries[0]
        for s in summaries[1:]:
            total = total + s
        return total

    fit = newton_raphson(pooled, 4, sites[0].terms, tol=1e-12)
    frames = []
    for k, s in enumerate(sites):
        f = s.frame()
        f["site"] = k
        frames.append(f)
    df = pd.concat(frames, ignore_index=True)
    cph = _lifelines_cox(df, strata=["site"], fit_options={"precision": 1e-14, "max_steps": 200})
    s = cph.summary.loc[sites[0].terms]
    np.testing.assert_allclose(fit.coef, s["coef"].to_numpy(), atol=1e-8, rtol=0)
    np.testing.assert_allclose(fit.se, s["se(coef)"].to_numpy(), atol=1e-8, rtol=0)
    assert abs(fit.loglik - cph.log_likelihood_) < 1e-8
    # In-process pooling (fit_cox over a list) is the same computation.
    np.testing.assert_allclose(fit_cox(sites).coef, fit.coef, atol=1e-10)


def test_ph_test_stratified_equals_lifelines():
    sites = _sites(5)
    df = pd.concat([s.frame().assign(site=k) for k, s in enumerate(sites)], ignore_index=True)
    terms = sites[0].terms
    data = CoxData(
        X=df[terms].to_numpy(),
        time=df["time"].to_numpy(),
        event=df["event"].to_numpy(),
        terms=terms,
        strata=df["site"].to_numpy(),
    )
    mine = ph_test(data).set_index("term")
    cph = _lifelines_cox(df, strata=["site"], fit_options={"precision": 1e-12})
    ref = proportional_hazard_test(cph, df, time_transform="rank").summary
    np.testing.assert_allclose(mine.loc[ref.index, "test_statistic"], ref["test_statistic"], atol=1e-6)
    np.testing.assert_allclose(mine.loc[ref.index, "p"], ref["p"], atol=1e-6)


def test_site_summary_derivatives_and_breslow():
    site = _sites(3)[0]
    beta = np.array([0.3, 0.01, -0.2, 0.5])
    for ties in ("efron", "breslow"):
        s0 = cox_site_summary(site, beta, ties)
        h = 1e-6
        for j in range(4):
            d = np.zeros(4)
            d[j] = h
            up, dn = cox_site_summary(site, beta + d, ties), cox_site_summary(site, beta - d, ties)
            assert abs((up.loglik - dn.loglik) / (2 * h) - s0.score[j]) < 1e-4
            np.testing.assert_allclose(-(up.score - dn.score) / (2 * h), s0.information[j], atol=1e-4)
    # Breslow against lifelines' own Breslow-free check: with no ties both methods agree.
    untied = CoxData(
        X=site.X, time=site.time + np.arange(site.n_obs) * 1e-6, event=site.event, terms=site.terms
    )
    a, b = cox_site_summary(untied, beta, "efron"), cox_site_summary(untied, beta, "breslow")
    assert abs(a.loglik - b.loglik) < 1e-9
    with pytest.raises(StudyError, match="beta has 2 values"):
        cox_site_summary(site, [0.0, 1.0])


def test_empty_cohorts(cdm_factory):
    cdm = load(
        cdm_factory(),
        persons=pd.DataFrame({"person_id": [1], "gender_concept_id": [8507], "year_of_birth": [1970]}),
        observation_periods=pd.DataFrame(
            {
                "person_id": [1],
                "observation_period_start_date": [pd.Timestamp("2000-01-01").date()],
                "observation_period_end_date": [pd.Timestamp("2001-01-01").date()],
            }
        ),
    )
    km = kaplan_meier(cdm, [1], 3)
    assert km.empty and len(km["km"].data) == 0
    assert km["km_summary"].data["n_persons"].tolist() == [0]
    cox = cox_model(cdm, 1, 2, 3)
    assert cox.empty and len(cox["cox"].data) == 0
    assert cox.notes == [Note(NoteCode.MODEL_WITHHELD)]
    log = DisclosureLog()
    assert len(release(km["km"], SACRO, log=log).data) == 0
    assert release(cox["cox"], SACRO, log=log).status == "blocked"


def test_all_entries_keep_covariates_per_entry(duck_cdm, world):
    w = dict(world)
    c = w["cohorts"]
    ops = w["observation_periods"].set_index("person_id")
    # A second entry into cohort 1, 100 days later, for persons still observed then; their condition
    # (10 days before the first index) is outside a 30-day window of the second.
    again = c[c["cohort_definition_id"] == 1].copy()
    again["cohort_start_date"] = [x + pd.Timedelta(days=100) for x in again["cohort_start_date"]]
    again["cohort_end_date"] = again["cohort_start_date"]
    death = w["deaths"].set_index("person_id")["death_date"]
    again = again[
        [
            ops.loc[p, "observation_period_end_date"] >= d and death.get(p, d) >= d
            for p, d in zip(again["subject_id"], again["cohort_start_date"], strict=True)
        ]
    ]
    w["cohorts"] = pd.concat([c, again])
    cdm = load_world(duck_cdm, w)
    cov = [CovariateSpec(name="cond", concept_ids=[100], window_start=-30)]
    first = cox_data(cdm, 1, 2, 3, CoxSettings(covariates=cov))
    every = cox_data(
        cdm, 1, 2, 3, CoxSettings(survival=SurvivalSettings(first_entry_only=False), covariates=cov)
    )
    assert len(again) > 10 and every.n_obs == first.n_obs + len(again)
    assert every.X[:, -1].sum() == first.X[:, -1].sum()
    wide = cox_data(
        cdm,
        1,
        2,
        3,
        CoxSettings(
            survival=SurvivalSettings(first_entry_only=False),
            covariates=[CovariateSpec(name="cond", concept_ids=[100], window_start=-200)],
        ),
    )
    cond = world["expected"].set_index("person_id")["cond"]
    assert wide.X[:, -1].sum() == first.X[:, -1].sum() + cond.loc[again["subject_id"]].sum()


def test_one_empty_arm_says_so(duck_cdm, world):
    w = dict(world)
    w["cohorts"] = w["cohorts"][w["cohorts"]["cohort_definition_id"] != 2]
    cdm = load_world(duck_cdm, w)
    cox = cox_model(cdm, 1, 2, 3)
    # Which arm is empty is a count: the note is the one every withheld model gives.
    assert cox.empty and cox.notes == [Note(NoteCode.MODEL_WITHHELD)]
    km = kaplan_meier(cdm, [1, 2], 3)
    assert not km.empty and km.notes == [Note(NoteCode.NO_TIME_AT_RISK, cohort=2)]
    released = release(km["km"], SACRO, log=DisclosureLog())
    assert len(released.data) > 0 and set(released.data["cohort_id"]) == {1}


def test_bad_settings():
    with pytest.raises(StudyError, match="tar_end"):
        SurvivalSettings(tar_start=10, tar_end=5)
    with pytest.raises(StudyError, match="reserved"):
        CoxSettings(covariates=[CovariateSpec(name="age", concept_ids=[1])])
