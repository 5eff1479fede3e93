"""The recruitment count model and projection (issue 15, item 4), against statsmodels and a hand case.

- Poisson with a constant rate: the MLE is the mean count, its 95% CI exp(log mean +- 1.96 / sqrt(sum y)).
- Negative binomial when overdispersed: the same fit as statsmodels' NegativeBinomial (NB2) directly.
- Seasonal terms only when they lower the AIC by more than 2.
- Projection at a constant rate lambda and consent c: the months to N consented average N / (lambda c).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm

from mercia.trials.feasibility import month_window
from mercia.trials.recruitment import (
    ProjectionError,
    RateModel,
    fit_rate,
    overdispersion_p,
    pooled_months,
    project,
    projection,
)

MONTHS = month_window("2024-12", 48)
MOY = np.array([int(m[5:]) for m in MONTHS], dtype=float)


def test_poisson_rate_is_the_mean_with_the_exact_log_interval() -> None:
    y = np.random.default_rng(1).poisson(20, 48)
    m = fit_rate(MONTHS, y.tolist())
    assert (m.family, m.seasonal) == ("poisson", False)
    assert m.rate == pytest.approx(y.mean(), rel=1e-8)
    half = 1.959964 / math.sqrt(y.sum())
    assert m.rate_ci == pytest.approx((y.mean() * math.exp(-half), y.mean() * math.exp(half)), rel=1e-6)
    ref = sm.GLM(y, np.ones((48, 1)), family=sm.families.Poisson()).fit()
    assert m.aic == pytest.approx(ref.aic)


def test_overdispersed_counts_get_statsmodels_negative_binomial() -> None:
    y = np.random.default_rng(2).negative_binomial(2, 2 / (2 + 20), 48)
    m = fit_rate(MONTHS, y.tolist())
    assert m.family == "negative binomial" and m.overdispersion_p < 0.05
    X = np.column_stack([np.ones(48), np.sin(2 * np.pi * MOY / 12), np.cos(2 * np.pi * MOY / 12)])
    ref = sm.NegativeBinomial(y, X if m.seasonal else X[:, :1], loglike_method="nb2").fit(disp=0, maxiter=200)
    assert m.params == pytest.approx(np.asarray(ref.params)[:-1], rel=1e-4)
    assert m.alpha == pytest.approx(ref.params[-1], rel=1e-3)
    assert m.aic == pytest.approx(ref.aic, rel=1e-8)


def test_overdispersion_test_is_cameron_trivedi() -> None:
    """The auxiliary regression by hand: slope = sum(aux * mu) / sum(mu^2), t = slope / se."""
    from scipy import stats

    y = np.random.default_rng(3).negative_binomial(3, 3 / (3 + 15), 60).astype(float)
    mu = np.full_like(y, y.mean())
    aux = ((y - mu) ** 2 - y) / mu
    slope = (aux * mu).sum() / (mu ** 2).sum()
    resid = aux - slope * mu
    se = math.sqrt((resid ** 2).sum() / (len(y) - 1) / (mu ** 2).sum())
    assert overdispersion_p(y, mu) == pytest.approx(stats.t.sf(slope / se, len(y) - 1), rel=1e-6)


def test_seasonality_is_kept_only_when_it_lowers_the_aic() -> None:
    rng = np.random.default_rng(4)
    seasonal = rng.poisson(30 * np.exp(0.6 * np.sin(2 * np.pi * MOY / 12)))
    m = fit_rate(MONTHS, seasonal.tolist())
    assert m.seasonal and m.family == "poisson"
    X = np.column_stack([np.ones(48), np.sin(2 * np.pi * MOY / 12), np.cos(2 * np.pi * MOY / 12)])
    ref = sm.GLM(seasonal, X, family=sm.families.Poisson()).fit()
    assert m.params == pytest.approx(np.asarray(ref.params), rel=1e-6)
    assert ref.aic < sm.GLM(seasonal, X[:, :1], family=sm.families.Poisson()).fit().aic - 2
    flat = fit_rate(MONTHS, rng.poisson(30, 48).tolist())
    assert not flat.seasonal


def test_suppressed_months_are_left_out_and_too_few_is_a_clear_error() -> None:
    counts: list[int | None] = np.random.default_rng(5).poisson(20, 48).tolist()
    counts[::2] = [None] * 24
    assert fit_rate(MONTHS, counts).months_used == 24
    with pytest.raises(ProjectionError, match="needs at least 6"):
        fit_rate(MONTHS[:5], [3, 4, 5, 6, 7])
    assert "error" in projection({"months": MONTHS, "persons": [None] * 48}, 10, 0.5)


def test_suppressed_months_are_censored_and_the_fit_is_the_censored_mle() -> None:
    """Small months suppressed (1..7, as OpenSAFELY's policy does): leaving them out biases the rate up;
    taken as censored, the fit is the maximum of the censored likelihood, found here by scipy directly."""
    from scipy import optimize, stats

    y = np.random.default_rng(6).poisson(6.0, 48)
    released = [int(v) if v == 0 or v > 7 else None for v in y]
    bounds = [None if v is not None else (1, 7) for v in released]
    assert released.count(None) > 20
    m = fit_rate(MONTHS, released, bounds)
    assert not m.seasonal and m.family == "poisson"

    def nll(b: float) -> float:
        mu = math.exp(b)
        obs = [v for v in released if v is not None]
        cens = released.count(None)
        return -(stats.poisson.logpmf(obs, mu).sum() + cens * math.log(stats.poisson.cdf(7, mu) - stats.poisson.pmf(0, mu)))

    ref = optimize.minimize_scalar(nll, bounds=(0, 4), method="bounded", options={"xatol": 1e-10})
    assert m.rate == pytest.approx(math.exp(ref.x), rel=1e-4)
    assert m.rate_ci[0] < y.mean() < m.rate_ci[1]
    dropped = fit_rate(MONTHS, released)  # without bounds the suppressed months are left out: too high
    assert dropped.rate > m.rate_ci[1]


def _constant(rate: float, se: float = 1e-6) -> RateModel:
    return RateModel(family="poisson", seasonal=False, params=np.array([math.log(rate)]), cov=np.array([[se ** 2]]),
                     alpha=0.0, aic=0.0, overdispersion_p=1.0, months_used=48, last_month="2024-12", rate=rate,
                     rate_ci=(rate, rate))


@pytest.mark.parametrize("rate, consent, target", [(20.0, 0.5, 400), (8.0, 0.25, 100), (100.0, 0.1, 1000)])
def test_projection_at_a_constant_rate_takes_n_over_lambda_c(rate: float, consent: float, target: int) -> None:
    p = project(_constant(rate), target, consent, simulations=4000, seed=1)
    expected = target / (rate * consent)
    assert p["expected_months"] == pytest.approx(expected, abs=0.01)
    # Consented recruits are Poisson(lambda c) a month: the month the target is reached is the first
    # whole month at or past N / (lambda c), give or take the Poisson spread.
    assert abs(p["median_months"] - expected) <= 1.0
    lo, hi = p["interval_months"]
    sd = math.sqrt(target) / (rate * consent)  # months: sd of the N-th arrival time of a Poisson process
    assert lo <= expected <= hi
    assert hi - lo == pytest.approx(2 * 1.96 * sd, rel=0.35, abs=1.5)


def test_projection_interval_widens_with_rate_uncertainty() -> None:
    sure = project(_constant(20.0), 400, 0.5, seed=2)
    unsure = project(_constant(20.0, se=0.2), 400, 0.5, seed=2)
    width = lambda p: p["interval_months"][1] - p["interval_months"][0]  # noqa: E731
    assert width(unsure) > 1.5 * width(sure)


@pytest.mark.parametrize("target, consent, message", [
    (0, 0.5, "target: 0; give a whole number"), (10, 0.0, "consent: 0.0; give the share"),
    (10, 1.5, "consent: 1.5"),
])
def test_bad_projection_settings_are_one_line(target: int, consent: float, message: str) -> None:
    with pytest.raises(ProjectionError, match=message):
        project(_constant(10.0), target, consent)


def test_pooled_months_sum_sites_and_censor_a_month_suppressed_anywhere() -> None:
    a = {"months": ["2024-01", "2024-02"], "persons": [10, None], "bounds": [None, [1, 7]]}
    b = {"months": ["2024-01", "2024-02"], "persons": [15, 20], "bounds": [None, None]}
    assert pooled_months([a, b]) == {"months": ["2024-01", "2024-02"], "persons": [25, None],
                                     "bounds": [None, [21, 27]]}
