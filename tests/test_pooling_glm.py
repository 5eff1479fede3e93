"""Federated GLM and Cox fits equal pooled-data fits (statsmodels, lifelines), whatever the split."""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lifelines import CoxPHFitter

from mercia.analyses.survival import CoxData
from mercia.disclosure import SACRO, DisclosureLog, release
from mercia.errors import DisclosureError, MerciaError
from mercia.federation import (
    ConvergenceError,
    PoolingError,
    SiteRefusedError,
    SiteSummary,
    cox_summary,
    federated_cox,
    federated_glm,
    glm_site_summary,
    in_process,
    summary_from_released,
    summary_table,
)

TOL = 1e-8
N = 900


def _design(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.column_stack([np.ones(n), rng.normal(size=n), rng.binomial(1, 0.4, n), rng.uniform(-1, 1, n)])


@pytest.fixture(scope="module")
def logistic_rows():
    rng = np.random.default_rng(20261125)
    X = _design(rng, N)
    y = rng.binomial(1, 1 / (1 + np.exp(-(X @ [-0.4, 0.8, -0.6, 0.3])))).astype(float)
    site = rng.integers(0, 3, N)
    return X, y, site


@pytest.fixture(scope="module")
def poisson_rows():
    rng = np.random.default_rng(7)
    X = _design(rng, N)
    person_years = rng.uniform(0.2, 6.0, N)
    offset = np.log(person_years)
    y = rng.poisson(np.exp(X @ [-1.5, 0.3, 0.5, -0.2] + offset)).astype(float)
    site = rng.integers(0, 3, N)
    return X, y, offset, site


def _glm_fn(X, y, site, family, offset=None, **kw):
    def fn(beta):
        return [
            glm_site_summary(
                X[site == k], y[site == k], beta, family,
                None if offset is None else offset[site == k], site=f"site{k}", **kw,
            )
            for k in np.unique(site)
        ]  # fmt: skip

    return fn


def test_federated_logistic_equals_pooled_statsmodels(logistic_rows):
    X, y, site = logistic_rows
    fit = federated_glm(_glm_fn(X, y, site, "binomial"), 4, "binomial", terms=["(Intercept)", "a", "b", "c"])
    ref = sm.GLM(y, X, family=sm.families.Binomial()).fit(tol=1e-14)
    assert fit.converged and fit.n_sites == 3 and fit.n == N and fit.n_events == int(y.sum())
    np.testing.assert_allclose(fit.coef, ref.params, atol=TOL, rtol=0)
    np.testing.assert_allclose(fit.se, ref.bse, atol=TOL, rtol=0)
    np.testing.assert_allclose(fit.p_values, ref.pvalues, atol=TOL, rtol=0)
    np.testing.assert_allclose(fit.ci_lower, ref.conf_int()[:, 0], atol=TOL, rtol=0)
    assert abs(fit.loglik - ref.llf) < TOL
    s = fit.summary()
    assert list(s.columns[:3]) == ["term", "coef", "se"] and "or" in s.columns
    np.testing.assert_allclose(s["or"], np.exp(ref.params), rtol=1e-8)


def test_federated_poisson_with_offset_equals_pooled_statsmodels(poisson_rows):
    X, y, offset, site = poisson_rows
    fit = federated_glm(_glm_fn(X, y, site, "poisson", offset), 4, "poisson")
    ref = sm.GLM(y, X, family=sm.families.Poisson(), offset=offset).fit(tol=1e-14)
    assert fit.converged and fit.model == "poisson"
    np.testing.assert_allclose(fit.coef, ref.params, atol=TOL, rtol=0)
    np.testing.assert_allclose(fit.se, ref.bse, atol=TOL, rtol=0)
    assert abs(fit.loglik - ref.llf) < TOL
    assert "rr" in fit.summary().columns


def _cox_sites(seed: int, sizes: tuple[int, ...] = (150, 220, 180)) -> list[CoxData]:
    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(sizes):
        X = np.column_stack([rng.normal(size=n), rng.binomial(1, 0.5, n), rng.normal(size=n)])
        hazard = 0.02 * (1 + k) * np.exp(X @ [0.5, -0.7, 0.2])
        t_event = rng.exponential(1 / hazard)
        t_cens = rng.uniform(5, 60, n)
        time = np.ceil(np.minimum(t_event, t_cens))  # whole days: plenty of ties
        event = (t_event <= t_cens).astype(int)
        out.append(CoxData(X, time, event, ["x", "b", "z"]))
    return out


def test_federated_cox_equals_lifelines_stratified_by_site():
    sites = _cox_sites(3)
    fn = in_process(lambda d, b: cox_summary(d, b), sites)
    fit = federated_cox(fn, 3, terms=["x", "b", "z"])
    frames = []
    for k, s in enumerate(sites):
        f = s.frame()
        f["site"] = k
        frames.append(f)
    df = pd.concat(frames, ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cph = CoxPHFitter().fit(
            df, duration_col="time", event_col="event", strata=["site"],
            fit_options={"precision": 1e-14, "max_steps": 200},
        )  # fmt: skip
    ref = cph.summary.loc[["x", "b", "z"]]
    assert fit.converged and fit.model == "cox" and fit.n_sites == 3
    np.testing.assert_allclose(fit.coef, ref["coef"], atol=TOL, rtol=0)
    np.testing.assert_allclose(fit.se, ref["se(coef)"], atol=TOL, rtol=0)
    assert abs(fit.loglik - cph.log_likelihood_) < TOL
    assert "hr" in fit.summary().columns


def test_perfect_separation_is_a_clear_error_not_a_crash(logistic_rows):
    X, _, site = logistic_rows
    y = (X[:, 1] > 0.1).astype(float)  # the outcome is exactly a threshold on a covariate
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / divide warnings on the way
        with pytest.raises(ConvergenceError, match="separation") as err:
            federated_glm(_glm_fn(X, y, site, "binomial"), 4, "binomial")
    assert isinstance(err.value, MerciaError)
    assert "inf" not in str(err.value) and "nan" not in str(err.value)


def test_quasi_separation_does_not_converge(logistic_rows):
    X, y, site = logistic_rows
    y = np.where(X[:, 2] == 1, 0.0, y)  # no events at all in one level of b
    with pytest.raises(ConvergenceError, match="did not converge"):
        federated_glm(_glm_fn(X, y, site, "binomial"), 4, "binomial")
    with pytest.warns(RuntimeWarning, match="did not converge"):
        fit = federated_glm(_glm_fn(X, y, site, "binomial"), 4, "binomial", max_iter=8, strict=False)
    assert not fit.converged and fit.iterations == 8


def test_small_site_is_refused_at_the_site(logistic_rows):
    X, y, site = logistic_rows
    small = np.flatnonzero(site == 0)[:9]
    with pytest.raises(SiteRefusedError, match=r"'tiny' is refused: too few rows") as err:
        glm_site_summary(X[small], y[small], np.zeros(4), "binomial", site="tiny")
    assert isinstance(err.value, DisclosureError)
    assert "9" not in str(err.value)  # the reason is named, its count is not (the message may travel)


def test_small_site_is_refused_at_the_hub_before_use(logistic_rows):
    # A misconfigured node answers with min_count=0; the hub still refuses its summary.
    X, y, site = logistic_rows
    rows = np.flatnonzero(y == 1)[:5]
    rows = np.r_[rows, np.flatnonzero(y == 0)[:40]]
    big = _glm_fn(X, y, site, "binomial")
    used = []

    def fn(beta):
        s = glm_site_summary(X[rows], y[rows], beta, "binomial", site="few-events", min_count=0)
        used.append(s)
        return [*big(beta), s]

    with pytest.raises(SiteRefusedError, match=r"'few-events' is refused: too few events \(the minimum is 10\)"):
        federated_glm(fn, 4, "binomial")
    assert len(used) == 1  # refused in the first round, before any step used it
    # Few non-events are as disclosive as few events.
    with pytest.raises(SiteRefusedError, match="too few rows without the event"):
        glm_site_summary(X[:20], np.r_[np.ones(17), np.zeros(3)], np.zeros(4), "binomial")
    # The minimum is a parameter.
    fit = federated_glm(fn, 4, "binomial", min_count=5)
    assert fit.n_sites == 4


def test_cox_site_below_minimum_events_is_refused():
    sites = _cox_sites(5)
    few = CoxData(
        sites[0].X[:30], sites[0].time[:30], np.r_[np.ones(4), np.zeros(26)].astype(int), ["x", "b", "z"]
    )
    with pytest.raises(SiteRefusedError, match="too few events"):
        cox_summary(few, np.zeros(3), site="few")


def test_site_summary_round_trips_through_json(poisson_rows):
    X, y, offset, _ = poisson_rows
    s = glm_site_summary(X[:100], y[:100], [0.1, 0.2, 0.0, -0.1], "poisson", offset[:100], site="leeds")
    back = SiteSummary.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back.site == "leeds" and back.n == 100 and back.loglik == s.loglik
    np.testing.assert_array_equal(back.information, s.information)
    np.testing.assert_array_equal(back.score, s.score)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y": np.full(50, 2.0)}, "0/1"),
        ({"beta": np.zeros(3)}, "beta has 3 values but the model has 4"),
        ({"y": np.zeros(49)}, "one outcome per row"),
        ({"offset": np.zeros(3)}, "one offset per row"),
        ({"X": np.full((50, 4), np.nan)}, "X holds missing"),
        ({"family": "gamma"}, "unknown family"),
    ],
)
def test_site_input_errors(kwargs, match):
    rng = np.random.default_rng(0)
    args = {"X": _design(rng, 50), "y": rng.binomial(1, 0.5, 50).astype(float), "beta": np.zeros(4)}
    args |= {"family": "binomial", "offset": None}
    args |= kwargs
    with pytest.raises(PoolingError, match=match):
        glm_site_summary(args["X"], args["y"], args["beta"], args["family"], args["offset"], min_count=0)


def test_hub_checks_what_sites_send(logistic_rows):
    X, y, _ = logistic_rows
    with pytest.raises(PoolingError, match="at least one site"):
        federated_glm(lambda b: [], 4, "binomial")
    with pytest.raises(PoolingError, match="same design"):
        federated_glm(lambda b: [glm_site_summary(X[:, :3], y, b[:3], "binomial")], 4, "binomial")
    with pytest.raises(PoolingError, match="different beta"):
        federated_glm(lambda b: [glm_site_summary(X, y, b + 1, "binomial")], 4, "binomial")
    with pytest.raises(ConvergenceError, match="singular"):
        Xc = np.column_stack([X, X[:, 1]])  # a duplicated column
        federated_glm(lambda b: [glm_site_summary(Xc, y, b, "binomial")], 5, "binomial")


# One dataset, split at random across 1-4 sites: the estimates must not depend on the split.
_rng = np.random.default_rng(99)
_X = _design(_rng, 240)
_YB = _rng.binomial(1, 1 / (1 + np.exp(-(_X @ [0.2, 0.7, -0.5, 0.4])))).astype(float)
_OFF = np.log(_rng.uniform(0.5, 3, 240))
_YP = _rng.poisson(np.exp(_X @ [-0.5, 0.3, 0.4, -0.3] + _OFF)).astype(float)
_REF = {
    "binomial": sm.GLM(_YB, _X, family=sm.families.Binomial()).fit(tol=1e-14),
    "poisson": sm.GLM(_YP, _X, family=sm.families.Poisson(), offset=_OFF).fit(tol=1e-14),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(["binomial", "poisson"]),
    perm_seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(1, 23), max_size=3, unique=True),
)
def test_any_split_gives_the_pooled_fit(family, perm_seed, cuts):
    order = np.random.default_rng(perm_seed).permutation(len(_YB))
    bounds = [0, *sorted(10 * c for c in cuts), len(_YB)]  # every site has at least 10 rows
    parts = [order[a:b] for a, b in itertools.pairwise(bounds)]
    y = _YB if family == "binomial" else _YP
    off = None if family == "binomial" else _OFF

    def fn(beta):
        return [
            glm_site_summary(
                _X[r], y[r], beta, family, None if off is None else off[r], site=f"s{i}", min_count=0
            )
            for i, r in enumerate(parts)
        ]

    fit = federated_glm(fn, 4, family, min_count=0)
    ref = _REF[family]
    assert fit.n == len(_YB) and fit.n_sites == len(cuts) + 1
    np.testing.assert_allclose(fit.coef, ref.params, atol=TOL, rtol=0)
    np.testing.assert_allclose(fit.se, ref.bse, atol=TOL, rtol=0)


def test_summaries_sent_through_release_give_the_same_fit(logistic_rows):
    # The node's path: summary -> 'model' ResultTable -> release() with the site's policy -> hub.
    X, y, site = logistic_rows
    log = DisclosureLog()
    direct = _glm_fn(X, y, site, "binomial")

    def via_release(beta):
        out = []
        for s in direct(beta):
            released = release(summary_table(s), SACRO, site=s.site, log=log)
            out.append(summary_from_released(released))
        return out

    fit = federated_glm(via_release, 4, "binomial")
    ref = federated_glm(direct, 4, "binomial")
    np.testing.assert_array_equal(fit.coef, ref.coef)
    np.testing.assert_array_equal(fit.se, ref.se)
    assert fit.sites == ["site0", "site1", "site2"] and fit.n == N
    assert log.entries  # every round's release is on the record


def test_a_policy_that_blocks_the_site_refuses_it_at_the_hub(logistic_rows):
    X, y, _ = logistic_rows
    # 24 rows (12 events): passes min_count and SACRO, but a stricter policy blocks it.
    rows = np.r_[np.flatnonzero(y == 1)[:12], np.flatnonzero(y == 0)[:12]]
    s = glm_site_summary(X[rows], y[rows], np.zeros(4), "binomial", site="small")
    strict = SACRO.model_copy(update={"min_model_dof": 50})
    released = release(summary_table(s), strict, site="small", log=DisclosureLog())
    assert released.status == "blocked"
    with pytest.raises(SiteRefusedError, match="'small' did not release"):
        summary_from_released(released)
