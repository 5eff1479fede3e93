"""Patient-level prediction, the parts that need no synthetic site: metrics against scikit-learn and
statsmodels, the DeLong variance against its textbook form, the person-level split, model fitting on
generated matrices, and the study population's time-at-risk rules on a hand-made CDM."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import statsmodels.api as sm
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

from mercia.analyses.prediction import (
    GradientBoostingSettings,
    LassoLogisticSettings,
    PopulationSettings,
    auc_delong,
    brier,
    build_population,
    evaluate,
    fit_model,
    person_split,
    risk_strata,
    weak_calibration,
)
from mercia.analyses.prediction.evaluation import calibration_in_the_large_intercept
from mercia.analyses.prediction.models import _SKLEARN_18, separating_covariates
from mercia.cdm import Cdm
from mercia.errors import MerciaError, StudyError
from test_analyses_support import FEMALE, MALE, day, load


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.2 * x - 1)))).astype(int)
    p = 1 / (1 + np.exp(-(0.8 * x - 0.6)))
    return y, p


# ------------------------------------------------------------------------------ metrics vs references


@settings(max_examples=60, deadline=None)
@given(
    y=st.lists(st.integers(0, 1), min_size=4, max_size=60),
    scores=st.lists(st.integers(0, 6), min_size=60, max_size=60),
)
def test_auc_equals_sklearn_with_ties(y: list[int], scores: list[int]) -> None:
    yv = np.array(y)
    if yv.min() == yv.max():
        with pytest.raises(StudyError, match="with and without"):
            auc_delong(yv, np.array(scores[: len(y)]) / 6)
        return
    p = np.array(scores[: len(y)]) / 6  # few distinct values: many ties
    assert auc_delong(yv, p).auc == pytest.approx(roc_auc_score(yv, p), abs=1e-12)


def _delong_textbook(y: np.ndarray, p: np.ndarray) -> float:
    """DeLong et al. (1988) directly: psi over all (positive, negative) pairs."""
    pos, neg = p[y == 1], p[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return math.sqrt(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))


def test_delong_se_equals_the_textbook_form() -> None:
    y, p = _data(400, 1)
    p = np.round(p, 2)  # ties as well
    a = auc_delong(y, p)
    assert a.se == pytest.approx(_delong_textbook(y, p), rel=1e-10)
    assert a.lower == pytest.approx(a.auc - 1.959963984540054 * a.se)
    assert a.upper == pytest.approx(a.auc + 1.959963984540054 * a.se)


def test_brier_equals_sklearn() -> None:
    y, p = _data(300, 2)
    b, scaled = brier(y, p)
    assert b == pytest.approx(brier_score_loss(y, p), abs=1e-15)
    assert scaled == pytest.approx(1 - b / (y.mean() * (1 - y.mean())))


def test_calibration_slope_and_intercept_equal_statsmodels_glm() -> None:
    y, p = _data(500, 3)
    lp = np.log(p / (1 - p))
    glm = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    weak = weak_calibration(y, p)
    assert (weak.intercept, weak.slope) == pytest.approx(tuple(glm.params), abs=1e-8)
    large = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=lp).fit()
    assert calibration_in_the_large_intercept(y, p) == pytest.approx(float(large.params[0]), abs=1e-8)


def test_a_well_calibrated_model_has_slope_one_and_intercept_zero() -> None:
    rng = np.random.default_rng(4)
    p = rng.uniform(0.02, 0.6, 40_000)
    y = (rng.random(len(p)) < p).astype(int)
    perf = evaluate(y, p)
    assert perf.calibration_slope == pytest.approx(1.0, abs=0.05)
    assert perf.calibration_intercept == pytest.approx(0.0, abs=0.05)
    assert perf.calibration_in_the_large == pytest.approx(0.0, abs=0.03)
    assert perf.e_avg < 0.01 and perf.e_max < 0.05


def test_perfect_separation_is_reported_not_a_crash() -> None:
    y = np.array([0, 0, 0, 1, 1, 1] * 5)
    p = np.where(y == 1, 0.9, 0.1) + np.linspace(0, 0.05, len(y))
    perf = evaluate(y, p)
    assert perf.separated and perf.auc == 1.0
    assert math.isnan(perf.calibration_slope) and math.isnan(perf.calibration_intercept)
    assert perf.brier == pytest.approx(brier_score_loss(y, p))


def test_risk_strata_are_equal_sized_and_add_up() -> None:
    y, p = _data(1003, 5)
    s = risk_strata(y, p, 10)
    assert list(s["stratum"]) == list(range(1, 11))
    assert s["n_persons"].sum() == 1003 and s["n_persons"].max() - s["n_persons"].min() <= 1
    assert s["n_outcomes"].sum() == y.sum()
    assert s["expected_outcomes"].sum() == pytest.approx(p.sum())
    order = np.argsort(p, kind="stable")
    assert s["n_outcomes"].iloc[0] == y[order[: s["n_persons"].iloc[0]]].sum()


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 1], [0.5], "differ in length"),
        ([0, 2], [0.5, 0.5], "0 or 1"),
        ([0, 1], [0.5, 1.5], "between 0 and 1"),
        ([0, 1], [np.nan, 0.5], "between 0 and 1"),
        ([], [], "no persons"),
        ([1, 1, 1], [0.2, 0.3, 0.4], "with and without"),
    ],
)
def test_evaluation_bad_input(y: list[int], p: list[float], message: str) -> None:
    with pytest.raises(MerciaError, match=message):
        evaluate(np.array(y), np.array(p))


# ------------------------------------------------------------------------------ split and models


@settings(max_examples=40, deadline=None)
@given(
    persons=st.lists(st.integers(1, 40), min_size=10, max_size=120),
    seed=st.integers(0, 2**32 - 1),
    folds=st.integers(2, 5),
)
def test_person_split_keeps_each_person_in_one_part(persons: list[int], seed: int, folds: int) -> None:
    pid = np.array(persons)
    y = (pid % 3 == 0).astype(int)
    part = person_split(pid, y, 0.25, folds, seed)
    assert set(np.unique(part)) <= set(range(folds + 1))
    for p in np.unique(pid):
        assert len(set(part[pid == p])) == 1
    # stratified: the test share of outcome persons and non-outcome persons is each about a quarter
    uniq = pd.DataFrame({"pid": pid, "part": part, "y": y}).drop_duplicates("pid")
    for _, g in uniq.groupby("y"):
        assert abs((g["part"] == 0).sum() - round(len(g) * 0.25)) <= 0
    assert np.array_equal(part, person_split(pid, y, 0.25, folds, seed))  # seeded


def test_person_split_bad_input() -> None:
    with pytest.raises(StudyError, match="test_fraction"):
        person_split(np.arange(10), np.zeros(10, dtype=int), 1.0, 3, 1)
    with pytest.raises(StudyError, match="at least 2 folds"):
        person_split(np.arange(10), np.zeros(10, dtype=int), 0.25, 1, 1)


def _matrix(n: int, seed: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Binary covariates 0-3 carry risk (log-odds +1.5, +1.0, -1.0, 0.8 per decade of 'age' column 4);
    5-19 are noise."""
    rng = np.random.default_rng(seed)
    binary = (rng.random((n, 19)) < 0.3).astype(float)
    age = rng.uniform(20, 90, n)
    X = np.column_stack([binary[:, :4], age, binary[:, 4:]])
    eta = -3 + 1.5 * X[:, 0] + 1.0 * X[:, 1] - 1.0 * X[:, 2] + 0.08 * (age - 55)
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    return sp.csr_matrix(X), y, np.arange(100, 120, dtype=np.int64) * 1000 + 1


def test_lasso_recovers_the_planted_signs_and_predicts_as_sklearn_does() -> None:
    X, y, ids = _matrix(3000, 6)
    folds = person_split(np.arange(len(y)), y, 0.25, 3, 1)
    train, test = folds > 0, folds == 0
    model, oof = fit_model(X[train], y[train], folds[train], ids, LassoLogisticSettings(), seed=1)
    beta = dict(zip(ids.tolist(), model.coefficients, strict=True))
    assert beta[ids[0]] > 0.8 and beta[ids[1]] > 0.5 and beta[ids[2]] < -0.5
    assert beta[ids[4]] == pytest.approx(0.08, abs=0.03)  # per year of age, on the original scale
    assert sum(abs(beta[i]) > 0 for i in ids[5:]) <= 8  # the L1 penalty drops most noise columns
    assert roc_auc_score(y[test], model.predict(X[test])) > 0.75
    assert roc_auc_score(y[train], oof) > 0.7
    # the saved-scale coefficients give exactly sklearn's predictions on the scaled matrix
    scale = np.asarray(abs(X[train]).max(axis=0).todense()).ravel()
    l1 = {"l1_ratio": 1.0} if _SKLEARN_18 else {"penalty": "l1"}
    ref = LogisticRegression(
        C=model.hyperparameters["C"], solver="liblinear", intercept_scaling=100.0, max_iter=1000, random_state=1, **l1
    ).fit(X[train] @ sp.diags(1 / scale), y[train])
    np.testing.assert_allclose(
        model.predict(X[test]), ref.predict_proba(X[test] @ sp.diags(1 / scale))[:, 1], rtol=1e-10
    )


def test_gradient_boosting_beats_chance_and_chooses_from_its_grid() -> None:
    X, y, ids = _matrix(1500, 7)
    folds = person_split(np.arange(len(y)), y, 0.25, 3, 2)
    train, test = folds > 0, folds == 0
    s = GradientBoostingSettings(learning_rates=[0.1], max_leaf_nodes=[7, 15], max_iter=40)
    model, _ = fit_model(X[train], y[train], folds[train], ids, s, seed=2)
    assert model.hyperparameters["max_leaf_nodes"] in (7, 15)
    assert len(model.cv_scores) == 2
    p = model.predict(X[test])
    assert roc_auc_score(y[test], p) > 0.7
    np.testing.assert_array_equal(p, model.estimator.predict_proba(X[test].toarray().astype(np.float32))[:, 1])


def test_a_separating_covariate_is_found_and_the_fit_stays_finite() -> None:
    X, y, ids = _matrix(600, 8)
    sep = sp.csr_matrix(y.reshape(-1, 1).astype(float))
    X2 = sp.hstack([X, sep]).tocsr()
    ids2 = np.append(ids, 999_001)
    assert separating_covariates(X2, y).tolist() == [X2.shape[1] - 1]
    assert separating_covariates(X, y).tolist() == []
    folds = person_split(np.arange(len(y)), y, 0.25, 3, 3)
    model, _ = fit_model(X2, y, np.where(folds == 0, 1, folds), ids2, LassoLogisticSettings(), seed=3)
    p = model.predict(X2)
    assert np.isfinite(p).all()
    assert evaluate(y, p).separated


def test_fit_model_bad_input() -> None:
    X, y, ids = _matrix(50, 9)
    folds = np.arange(50) % 3 + 1
    with pytest.raises(StudyError, match="same outcome"):
        fit_model(X, np.zeros(50, dtype=int), folds, ids, LassoLogisticSettings())
    with pytest.raises(StudyError, match="one column per covariate"):
        fit_model(X, y, folds, ids[:3], LassoLogisticSettings())
    with pytest.raises(StudyError, match="one entry per row"):
        fit_model(X, y[:10], folds, ids, LassoLogisticSettings())


# ------------------------------------------------------------------------------ population (PLP rules)


@pytest.fixture
def population_cdm() -> Cdm:
    """Six persons with hand-placed target entries (cohort 1) and outcomes (cohort 2)."""
    persons = pd.DataFrame(
        {"person_id": [1, 2, 3, 4, 5, 6], "gender_concept_id": [MALE, FEMALE] * 3, "year_of_birth": [1950] * 6}
    )
    ops = pd.DataFrame(
        {
            "person_id": [1, 2, 3, 4, 5, 6, 6],
            "observation_period_start_date": [day(0)] * 6 + [day(2000)],
            "observation_period_end_date": [day(1000), day(1000), day(1000), day(400), day(1000), day(1500), day(3000)],
        }
    )
    rows = [
        (1, 1, 100, 110),  # person 1: outcome on day 100 + 30
        (2, 1, 130, 131),
        (1, 2, 100, 110),  # person 2: outcome before index (prior outcome)
        (2, 2, 50, 51),
        (1, 3, 100, 110),  # person 3: no outcome, full year at risk
        (1, 4, 300, 310),  # person 4: observation ends 100 days after index, no outcome
        (1, 5, 300, 310),  # person 5: outcome on day index + 50 but observation long enough
        (2, 5, 350, 351),
        (1, 6, 100, 110),  # person 6: two entries; the second in a later observation period
        (1, 6, 2100, 2110),
        (2, 6, 2100, 2101),  # on the second index day itself: before time at risk (day 0 < day 1)
    ]
    cohorts = pd.DataFrame(
        [
            {"cohort_definition_id": c, "subject_id": p, "cohort_start_date": day(s), "cohort_end_date": day(e)}
            for c, p, s, e in rows
        ]
    )
    cdm = Cdm.open(None)
    return load(cdm, persons=persons, observation_periods=ops, cohorts=cohorts)


def test_population_follows_plp_defaults(population_cdm: Cdm) -> None:
    pop, attrition = build_population(population_cdm, 1, 2)
    got = {(r.person_id, r.cohort_start_date.date()): r for r in pop.itertuples()}
    assert (2, day(100)) not in got  # prior outcome removed
    assert (4, day(300)) not in got  # 100 days at risk < 364 and no outcome
    assert got[(1, day(100))].outcome == 1 and got[(1, day(100))].days_to_event == 30
    assert got[(3, day(100))].outcome == 0 and got[(3, day(100))].tar_end == 365
    assert got[(5, day(300))].outcome == 1
    assert got[(6, day(100))].outcome == 0
    # the outcome on day 0 of person 6's second entry falls before time at risk: a prior outcome
    assert (6, day(2100)) not in got
    assert list(attrition["n_entries"]) == [7, 5, 4]
    assert list(attrition["n_outcomes"]) == [2, 2, 2]


def test_population_settings_change_the_population_as_plp_does(population_cdm: Cdm) -> None:
    s = PopulationSettings(
        risk_window_start=0, remove_subjects_with_prior_outcome=False, require_time_at_risk=False
    )
    pop, _ = build_population(population_cdm, 1, 2, s)
    got = {(r.person_id, r.cohort_start_date.date()): r for r in pop.itertuples()}
    assert got[(6, day(2100))].outcome == 1 and got[(6, day(2100))].days_to_event == 0
    assert got[(4, day(300))].tar_end == 100  # cut at the end of observation
    assert got[(2, day(100))].outcome == 0
    first, _ = build_population(population_cdm, 1, 2, s.model_copy(update={"first_exposure_only": True}))
    assert (6, day(2100)) not in {(r.person_id, r.cohort_start_date.date()) for r in first.itertuples()}
    short = PopulationSettings(risk_window_start=1, risk_window_end=20)
    pop2, _ = build_population(population_cdm, 1, 2, short.model_copy(update={"min_time_at_risk": 19}))
    assert pop2.set_index("person_id").loc[1, "outcome"] == 0  # day 30 is after a 20-day window
    anchored = PopulationSettings(end_anchor="cohort_end", risk_window_end=25, min_time_at_risk=0)
    pop3, _ = build_population(population_cdm, 1, 2, anchored)
    assert pop3.set_index("person_id").loc[1, "outcome"] == 1  # cohort end 110 + 25 covers day 130
    assert pop3.set_index("person_id").loc[1, "tar_end"] == 35


def test_population_bad_settings() -> None:
    with pytest.raises(MerciaError, match="before it starts"):
        PopulationSettings(risk_window_start=10, risk_window_end=5)
    with pytest.raises(ValidationError, match="min_time_at_risk"):
        PopulationSettings(min_time_at_risk=-1)


# ------------------------------------------------------------------------------ curves from released strata


def _released_like(y: np.ndarray, p: np.ndarray, split: str = "test") -> pd.DataFrame:
    s = risk_strata(y, p, 10)
    s["stratum"] = s["stratum"].astype(str).str.zfill(3)
    total = {"stratum": "Total", "n_persons": s["n_persons"].sum(), "n_outcomes": s["n_outcomes"].sum(),
             "expected_outcomes": s["expected_outcomes"].sum()}
    return pd.concat([s, pd.DataFrame([total])], ignore_index=True).assign(split=split)


def test_roc_and_calibration_points_from_strata() -> None:
    from mercia.report.prediction_plots import calibration_points, prediction_figures, roc_points

    y, p = _data(2000, 11)
    strata = _released_like(y, p)
    roc = roc_points(strata, "test")
    assert roc is not None and len(roc) == 11
    assert (roc.iloc[0]["fpr"], roc.iloc[0]["tpr"]) == (0.0, 0.0)
    assert (roc.iloc[-1]["fpr"], roc.iloc[-1]["tpr"]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    # the 11-point curve's area is close to the exact AUC
    area = float(np.sum(np.diff(roc["fpr"]) * (roc["tpr"].to_numpy()[1:] + roc["tpr"].to_numpy()[:-1]) / 2))
    assert area == pytest.approx(roc_auc_score(y, p), abs=0.02)
    cal = calibration_points(strata, "test")
    assert len(cal) == 10 and cal["predicted"].is_monotonic_increasing
    assert (cal["observed"] * strata["n_persons"].iloc[:10]).sum() == pytest.approx(y.sum())
    # a suppressed stratum: no ROC curve, the calibration plot leaves that stratum out
    strata.loc[3, "n_outcomes"] = np.nan
    strata.loc[3, "expected_outcomes"] = np.nan
    assert roc_points(strata, "test") is None
    assert len(calibration_points(strata, "test")) == 9
    figs = prediction_figures(strata, None, "m", lambda fig: "<figure>")
    assert figs[0].startswith('<p class="empty">No ROC') and figs[1] == "<figure>"
