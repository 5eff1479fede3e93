"""The parts of the cohort method against references: matching against a line-by-line transcription
of CohortMethod's Match.cpp and the caliper rule for all inputs; stratification against R's
quantile/cut; balance against direct formulas; the propensity model against scikit-learn; the outcome
models against lifelines and statsmodels; the MDRR against CohortMethod's formula."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from mercia.analyses.balance import balance, smd
from mercia.analyses.cohort_method import fit_cox_strata, fit_poisson_strata, mdrr
from mercia.analyses.matching import match_on_ps, stratify_by_ps
from mercia.analyses.propensity import PsSettings, auc, equipoise, fit_ps, preference_score
from mercia.errors import StudyError

lifelines = pytest.importorskip("lifelines")
sm = pytest.importorskip("statsmodels.api")
sklearn_lm = pytest.importorskip("sklearn.linear_model")
sklearn_metrics = pytest.importorskip("sklearn.metrics")


# ------------------------------------------------------------------------------------------- matching


def match_cpp(score: np.ndarray, treatment: np.ndarray, max_ratio: int, caliper: float) -> np.ndarray:
    """CohortMethod's Match.cpp transcribed statement by statement (input sorted by score)."""
    n = len(treatment)
    treated_count = int(treatment.sum())
    comparator_count = n - treated_count
    stratum = [-1] * n
    sizes: list[int] = []
    back, forth = [0] * n, [0] * n
    prior = -1
    for i in range(n):
        back[i] = prior
        if treatment[i] == 0:
            prior = i
    nxt = -1
    for i in range(n - 1, -1, -1):
        forth[i] = nxt
        if treatment[i] == 0:
            nxt = i
    matched_comparators = 0
    import heapq

    def dist(a: int, b: int) -> float:
        return abs(score[a] - score[b])

    def update(index: int) -> None:
        nc, pc = forth[index], back[index]
        end = n - 1 if nc == -1 else nc
        for k in range(index, end + 1):
            back[k] = pc
        begin = 0 if pc == -1 else pc
        for k in range(begin, index + 1):
            forth[k] = nc

    for ratio in range(1, max_ratio + 1):
        heap: list[tuple[float, int, int]] = []
        m = -1
        for i in range(n):
            if treatment[i] == 1 and m != -1:
                heap.append((dist(i, m), i, m))
            elif treatment[i] == 0 and stratum[i] == -1:
                m = i
        m = -1
        for i in range(n - 1, -1, -1):
            if treatment[i] == 1 and m != -1:
                heap.append((dist(i, m), i, m))
            elif treatment[i] == 0 and stratum[i] == -1:
                m = i
        if not heap:
            break
        heapq.heapify(heap)
        matched_treated = 0
        d, ti, ci = heapq.heappop(heap)
        while d < caliper and matched_treated < treated_count and matched_comparators < comparator_count:
            st_, sc = stratum[ti], stratum[ci]
            if st_ == -1 and sc == -1:
                sid = len(sizes)
                stratum[ti] = stratum[ci] = sid
                update(ci)
                sizes.append(1)
                matched_treated += 1
                matched_comparators += 1
            elif st_ != -1 and sc == -1:
                if sizes[st_] < ratio:
                    stratum[ci] = st_
                    update(ci)
                    sizes[st_] += 1
                    matched_treated += 1
                    matched_comparators += 1
            elif (st_ == -1 or sizes[st_] < ratio) and sc != -1:
                b, f = back[ti], forth[ti]
                cands = [(dist(ti, x), ti, x) for x in (b, f) if x != -1]
                if cands:
                    heapq.heappush(heap, min(cands))
            if heap and matched_comparators < comparator_count:
                d, ti, ci = heapq.heappop(heap)
            else:
                break
        if matched_comparators == comparator_count or matched_treated == 0:
            break
    return np.array(stratum)


def _scores(seed: int, n: int, shift: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = (rng.random(n) < 0.4).astype(int)
    ps = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + shift * t)))
    return ps, t


@pytest.mark.parametrize(("seed", "ratio"), [(1, 1), (2, 1), (3, 2), (4, 4), (5, 0)])
def test_matching_equals_cohortmethods_algorithm(seed: int, ratio: int) -> None:
    ps, t = _scores(seed, 400)
    ours = match_on_ps(ps, t, max_ratio=ratio)
    order = np.argsort(ps, kind="stable")
    logit = np.log(ps / (1 - ps))
    cal = 0.2 * np.std(logit, ddof=1)
    ref_sorted = match_cpp(logit[order], t[order], 999 if ratio == 0 else ratio, cal)
    ref = np.full(len(ps), -1)
    ref[order] = ref_sorted
    np.testing.assert_array_equal(ours, ref)
    assert (ours >= 0).sum() > 100


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 300), ratio=st.integers(0, 4),
       caliper=st.floats(0.01, 1.0), shift=st.floats(-2, 2))
def test_no_matched_pair_is_outside_the_caliper(seed: int, n: int, ratio: int, caliper: float, shift: float) -> None:
    ps, t = _scores(seed, n, shift)
    strata = match_on_ps(ps, t, caliper=caliper, max_ratio=ratio)
    logit = np.log(ps / (1 - ps))
    width = caliper * np.std(logit, ddof=1) if n > 1 and ps.min() != ps.max() else 9999
    for s in np.unique(strata[strata >= 0]):
        k = strata == s
        assert t[k].sum() == 1  # exactly one target per matched set
        assert 1 <= (t[k] == 0).sum() <= (999 if ratio == 0 else ratio)
        target = logit[k & (t == 1)][0]
        assert np.all(np.abs(logit[k & (t == 0)] - target) < width)


def test_matching_bad_input_and_edge_cases() -> None:
    with pytest.raises(StudyError):
        match_on_ps(np.array([0.2, 0.3]), np.array([1]))
    with pytest.raises(StudyError):
        match_on_ps(np.array([0.2, 1.3]), np.array([1, 0]))
    with pytest.raises(StudyError):
        match_on_ps(np.array([0.2, 0.3]), np.array([1, 0]), max_ratio=-1)
    # Scores of 0 and 1 (a model that separates): nobody can be matched, and nothing crashes.
    assert (match_on_ps(np.array([0.0, 1.0, 1.0, 0.0]), np.array([0, 1, 1, 0])) == -1).all()
    assert len(match_on_ps(np.zeros(0), np.zeros(0))) == 0
    only_targets = match_on_ps(np.array([0.2, 0.4]), np.array([1, 1]))
    assert (only_targets == -1).all()


@pytest.mark.parametrize("base", ["all", "target", "comparator"])
def test_stratification_equals_quantile_and_cut(base: str) -> None:
    ps, t = _scores(7, 500)
    ours = stratify_by_ps(ps, t, number_of_strata=5, base_selection=base)
    pool = {"all": ps, "target": ps[t == 1], "comparator": ps[t == 0]}[base]
    breaks = np.unique(np.r_[0, np.quantile(pool, [0.2, 0.4, 0.6, 0.8]), 1])
    breaks[0] = -1
    ref = pd.cut(ps, bins=breaks, right=True, labels=False) + 1
    np.testing.assert_array_equal(ours, ref)
    if base == "all":
        assert np.bincount(ours)[1:].tolist() == [100] * 5


# -------------------------------------------------------------------------------------------- balance


def test_balance_unweighted_and_weighted_against_direct_formulas() -> None:
    rng = np.random.default_rng(3)
    n = 300
    t = (rng.random(n) < 0.5).astype(int)
    X = np.c_[rng.random(n) < 0.3 + 0.2 * t, rng.normal(50 + 5 * t, 10, n)].astype(float)
    b = balance(sp.csr_matrix(X), t)
    for j in range(2):
        x1, x0 = X[t == 1, j], X[t == 0, j]
        assert b.loc[j, "mean_target"] == pytest.approx(x1.mean())
        assert b.loc[j, "sd_comparator"] == pytest.approx(x0.std(ddof=0))
        assert b.loc[j, "smd"] == pytest.approx((x1.mean() - x0.mean()) / np.sqrt((x1.var() + x0.var()) / 2))
    strata = rng.integers(0, 10, n)
    bw = balance(sp.csr_matrix(X), t, strata)
    size = pd.Series(1, index=range(n)).groupby([strata, t]).transform("size").to_numpy()
    for arm, label in ((1, "target"), (0, "comparator")):
        w = (1 / size)[t == arm]
        w = w / w.sum()
        for j in range(2):
            x = X[t == arm, j]
            m = (w * x).sum()
            sd_ = math.sqrt(abs((w * x * x).sum() - m * m) / (1 - (w * w).sum()))
            assert bw.loc[j, f"mean_{label}"] == pytest.approx(m)
            assert bw.loc[j, f"sd_{label}"] == pytest.approx(sd_)


def test_smd_edge_cases() -> None:
    out = smd(np.array([0.5, 0.3, 0.2]), np.array([0.5, 0.3, 0.1]), np.array([0.0, 0.1, 0.0]),
              np.array([0.0, 0.1, 0.0]))
    assert out[0] == 0.0 and out[1] == 0.0 and np.isnan(out[2])


# ---------------------------------------------------------------------------------- propensity model


def _ps_data(seed: int, n: int = 2000, p: int = 30) -> tuple[sp.csr_matrix, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = (rng.random((n, p)) < rng.uniform(0.05, 0.5, p)).astype(float)
    beta = np.r_[rng.normal(0, 0.8, 5), np.zeros(p - 5)]
    t = (rng.random(n) < 1 / (1 + np.exp(-(X @ beta - 0.5)))).astype(int)
    return sp.csr_matrix(X), t


def test_ps_with_a_normal_prior_equals_sklearn_l2_logistic_regression() -> None:
    X, t = _ps_data(1)
    fit = fit_ps(X, np.arange(1, X.shape[1] + 1), t, PsSettings(variance=0.5, min_fraction=0.0))
    assert fit.ok
    # sklearn minimises ||w||^2 / 2 + C * sum(log loss): a normal prior with variance C; the
    # model sees columns scaled by their max (1 for binary), so coefficients compare directly.
    ref = sklearn_lm.LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(X, t)
    np.testing.assert_allclose(fit.coef, ref.coef_.ravel(), atol=2e-4)
    assert fit.intercept == pytest.approx(ref.intercept_[0], abs=2e-4)
    np.testing.assert_allclose(fit.ps, ref.predict_proba(X)[:, 1], atol=1e-4)
    assert fit.auc == pytest.approx(sklearn_metrics.roc_auc_score(t, fit.ps))


def test_ps_cross_validation_picks_a_variance_from_the_grid_and_down_sampling_corrects_the_intercept() -> None:
    X, t = _ps_data(2)
    fit = fit_ps(X, np.arange(X.shape[1]), t, PsSettings(cv_variances=[0.001, 0.1, 10.0], cv_folds=3))
    assert fit.variance in (0.001, 0.1, 10.0) and fit.cv is not None and len(fit.cv) == 3
    assert fit.variance != 0.001  # the informative covariates need a wide prior
    sampled = fit_ps(X, np.arange(X.shape[1]), t, PsSettings(variance=0.1, max_cohort_size_for_fitting=300))
    assert sampled.sampled
    # The corrected intercept puts the mean score back near the treated share of everyone.
    assert abs(sampled.ps.mean() - t.mean()) < 0.05


def test_ps_reports_a_covariate_that_is_the_treatment_instead_of_crashing() -> None:
    X, t = _ps_data(3)
    X = sp.hstack([X, sp.csr_matrix(t[:, None].astype(float))]).tocsr()
    fit = fit_ps(X, np.arange(X.shape[1]), t, PsSettings(variance=0.1))
    assert not fit.ok and "correlate" in fit.error
    assert fit.high_correlation is not None and fit.high_correlation["covariate_id"].tolist() == [X.shape[1] - 1]
    np.testing.assert_array_equal(fit.ps, t)
    # Told not to stop, the separating covariate stays; a regularised model still fits.
    fit2 = fit_ps(X, np.arange(X.shape[1]), t, PsSettings(variance=0.1, error_on_high_correlation=False))
    assert fit2.ok and fit2.auc > 0.99


def test_ps_bad_input() -> None:
    X, t = _ps_data(4, n=50)
    assert "empty" in fit_ps(X, np.arange(X.shape[1]), np.ones(50, dtype=int)).error
    assert "no subjects" in fit_ps(X[:0], np.arange(X.shape[1]), np.zeros(0)).error
    with pytest.raises(StudyError):
        fit_ps(X, np.arange(3), t)


def test_preference_score_equipoise_and_auc() -> None:
    ps = np.array([0.1, 0.5, 0.9, 0.5])
    t = np.array([0, 1, 1, 0])
    pref = preference_score(ps, t)  # treated share 0.5: the preference score is the PS
    np.testing.assert_allclose(pref, ps)
    t2 = np.array([0, 1, 1, 1])  # share 0.75: logit shifted by log(3)
    x = np.exp(np.log(0.5 / 0.5) - np.log(3))
    assert preference_score(ps, t2)[1] == pytest.approx(x / (1 + x))
    assert equipoise(pref) == 0.5
    assert auc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1])) == 1.0


# ------------------------------------------------------------------------------------ outcome models


def _tte(seed: int, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = (rng.random(n) < 0.5).astype(float)
    stratum = rng.integers(0, n // 4, n)
    frailty = rng.normal(0, 0.5, n // 4)[stratum]
    tt = np.ceil(rng.exponential(200 / np.exp(0.4 * x + frailty)))
    c = rng.integers(1, 300, n)
    return pd.DataFrame({"x": x, "s": stratum, "time": np.minimum(tt, c).astype(float),
                         "event": (tt <= c).astype(float), "days": rng.integers(10, 400, n).astype(float),
                         "n": rng.poisson(0.3 * np.exp(0.5 * x + frailty))})


@pytest.mark.parametrize("stratified", [False, True])
def test_cox_equals_lifelines(stratified: bool) -> None:
    d = _tte(1)
    est = fit_cox_strata(d["x"].to_numpy(), d["time"].to_numpy(), d["event"].to_numpy(),
                         d["s"].to_numpy() if stratified else None)
    cph = lifelines.CoxPHFitter().fit(d[["x", "time", "event", "s"]] if stratified else d[["x", "time", "event"]],
                                      "time", "event", strata=["s"] if stratified else None)
    assert est.log_rr == pytest.approx(cph.params_["x"], abs=1e-6)
    assert est.se == pytest.approx(cph.standard_errors_["x"], abs=1e-6)


@pytest.mark.parametrize("stratified", [False, True])
def test_conditional_poisson_equals_statsmodels_with_stratum_effects(stratified: bool) -> None:
    d = _tte(2)
    est = fit_poisson_strata(d["x"].to_numpy(), d["n"].to_numpy(), d["days"].to_numpy(),
                             d["s"].to_numpy() if stratified else None)
    design = pd.get_dummies(d["s"], prefix="s", dtype=float) if stratified else pd.DataFrame({"c": np.ones(len(d))})
    design.insert(0, "x", d["x"])
    # Strata whose events are all in one arm (or with none) carry no information on x; statsmodels
    # gives their effects -inf, the conditional likelihood leaves them out.
    if stratified:
        g = d.groupby(["s", "x"])["n"].sum().unstack(fill_value=0)
        ok = d["s"].isin(g.index[(g > 0).any(axis=1)])
        d, design = d[ok], design[ok].loc[:, lambda df: (df != 0).any()]
    res = sm.GLM(d["n"], design, family=sm.families.Poisson(), offset=np.log(d["days"])).fit(tol=1e-12)
    assert est.log_rr == pytest.approx(res.params["x"], abs=1e-5)
    assert est.se == pytest.approx(res.bse["x"], rel=1e-4)


def test_outcome_models_with_no_events_in_one_arm_say_so() -> None:
    x = np.array([1.0, 1, 0, 0])
    est = fit_cox_strata(x, np.array([5.0, 6, 7, 8]), np.array([0.0, 0, 1, 1]))
    assert not est.converged and math.isnan(est.row(0.05)["log_rr"])
    assert not fit_poisson_strata(x, np.array([0, 0, 2, 1]), np.array([10.0, 10, 10, 10])).converged


def test_mdrr_equals_cohortmethods_formula() -> None:
    # CohortMethod: exp(sqrt((z_beta + z_{1-alpha/2})^2 / (events * pT * pC))), z_beta = -qnorm(1 - power).
    assert mdrr(0.5, 100) == pytest.approx(math.exp(math.sqrt((0.8416212 + 1.959964) ** 2 / 25)), rel=1e-6)
    assert mdrr(0.5, 0) == math.inf and mdrr(1.0, 10) == math.inf


def test_ps_with_a_laplace_prior_equals_sklearn_l1_logistic_regression() -> None:
    pytest.importorskip("glum")
    X, t = _ps_data(5)
    v = 0.02
    fit = fit_ps(X, np.arange(X.shape[1]), t, PsSettings(prior="laplace", variance=v, min_fraction=0.0))
    assert fit.ok
    # Laplace prior with variance v: penalty sqrt(2 / v) * sum|b| on the summed log likelihood, which
    # is sklearn's L1 objective with C = 1 / sqrt(2 / v) (saga leaves the intercept unpenalised).
    ref = sklearn_lm.LogisticRegression(l1_ratio=1.0, solver="saga", C=1 / math.sqrt(2 / v), tol=1e-10,
                                        max_iter=100_000).fit(X, t)
    np.testing.assert_allclose(fit.coef, ref.coef_.ravel(), atol=5e-3)
    assert (fit.coef == 0).sum() > 5 and ((fit.coef == 0) == (np.abs(ref.coef_.ravel()) < 1e-6)).mean() > 0.9
