"""Recruitment projection: a count model of newly eligible persons per month, and time to reach a target.

Input: released monthly counts (a site's, or several sites' summed month by month). A month whose count
was suppressed is not left out (that would bias the rate upwards: the suppressed months are the small
ones) but taken as censored between the bounds the policy implies (1 to its suppression limit, or 0 to
it where zeros are suppressed too): the fit is then the censored-data maximum likelihood (each suppressed
month contributes the probability of a count between its bounds), maximised directly with scipy.
Without suppressed months the fits are statsmodels'. The model, chosen by stated rules:

1. The mean: a constant rate (log link, intercept only: no trend is extrapolated), plus, with at least
   24 months, possibly one 12-month harmonic pair (sin and cos of 2 pi month-of-year / 12).
2. The family: Cameron and Trivedi's regression test for overdispersion (auxiliary OLS of
   ((y - mu)^2 - y) / mu on mu, no intercept; one-sided) on the Poisson GLM with the richer mean (so
   seasonality is not mistaken for overdispersion). If p < 0.05 the model is negative binomial (NB2,
   alpha by maximum likelihood), otherwise Poisson.
3. Seasonality: the harmonic pair is kept when, in that family, it lowers the AIC by more than 2.

Projection: the months needed until the consented recruits reach `target`, by simulation from the fitted
model: coefficients drawn from their asymptotic normal distribution, each future month's newly eligible
drawn from the model (Poisson, or gamma-Poisson for NB2), each of them consenting with probability
`consent`. The median and a 95% interval of the months needed are reported, with the expected months
N / (lambda c) at the fitted mean rate. Everything here works on released numbers only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from mercia.errors import MerciaError

ALPHA_TEST = 0.05
AIC_GAIN = 2.0
MIN_MONTHS = 6
MAX_PROJECTION_MONTHS = 1200


class ProjectionError(MerciaError):
    status_code = 400


@dataclass(frozen=True)
class RateModel:
    family: str  # "poisson" or "negative binomial"
    seasonal: bool
    params: np.ndarray  # intercept[, sin, cos]
    cov: np.ndarray
    alpha: float  # NB2 dispersion (0 for Poisson)
    aic: float
    overdispersion_p: float
    months_used: int
    last_month: str  # 'YYYY-MM' of the last month used
    rate: float  # mean newly eligible per month (over a year, for a seasonal model)
    rate_ci: tuple[float, float]

    def summary(self) -> dict[str, Any]:
        return {"family": self.family, "seasonal": self.seasonal, "rate_per_month": round(self.rate, 3),
                "rate_ci": [round(self.rate_ci[0], 3), round(self.rate_ci[1], 3)],
                "alpha": round(self.alpha, 4), "aic": round(self.aic, 3),
                "overdispersion_p": round(self.overdispersion_p, 4), "months_used": self.months_used}


def _design(month_of_year: np.ndarray, seasonal: bool) -> np.ndarray:
    cols = [np.ones(len(month_of_year))]
    if seasonal:
        cols += [np.sin(2 * np.pi * month_of_year / 12), np.cos(2 * np.pi * month_of_year / 12)]
    return np.column_stack(cols)


def overdispersion_p(y: np.ndarray, mu: np.ndarray) -> float:
    """Cameron and Trivedi (1990): OLS of ((y - mu)^2 - y) / mu on mu without intercept; the one-sided
    p-value of its slope (H1: variance = mu + alpha mu^2, alpha > 0)."""
    import statsmodels.api as sm
    from scipy import stats

    aux = ((y - mu) ** 2 - y) / mu
    fit = sm.OLS(aux, mu).fit()
    t = float(fit.tvalues[0])
    return float(stats.t.sf(t, df=fit.df_resid)) if np.isfinite(t) else 1.0


def _fit(y: np.ndarray, X: np.ndarray, nb: bool, censored: np.ndarray | None = None,
         bounds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray]:
    """The maximum-likelihood fit, and y with any censored months at their expectation under it.

    Without censored months: statsmodels (Poisson GLM, or NegativeBinomial NB2). With them: the censored
    likelihood (a suppressed month contributes P(lo <= Y <= hi)) maximised directly (scipy, BFGS), with
    the covariance from the numerical Hessian at the optimum."""
    y = y.astype(float).copy()
    if censored is None or not censored.any():
        return (*_fit_once(y, X, nb), y)
    from scipy import optimize
    from statsmodels.tools.numdiff import approx_hess3

    assert bounds is not None
    obs, idx = np.flatnonzero(~censored), np.flatnonzero(censored)
    ks = np.arange(int(bounds[idx, 0].min()), int(bounds[idx, 1].max()) + 1, dtype=float)
    inside = (ks[None, :] >= bounds[idx, 0:1]) & (ks[None, :] <= bounds[idx, 1:2])
    k = X.shape[1]

    def nll(theta: np.ndarray) -> float:
        alpha = float(np.exp(theta[k])) if nb else 0.0
        mu = np.exp(np.clip(X @ theta[:k], -30, 30))
        ll = _logpmf(y[obs], mu[obs], alpha).sum()
        pk = _pmf(ks[None, :], mu[idx][:, None], alpha) * inside
        ll += np.log(np.maximum(pk.sum(axis=1), 1e-300)).sum()
        return float(-ll)

    start = np.zeros(k + (1 if nb else 0))
    start[0] = math.log(max(np.mean(np.r_[y[obs], bounds[idx].mean(axis=1)]), 0.1))
    if nb:
        start[k] = math.log(0.1)
    r = optimize.minimize(nll, start, method="BFGS", options={"gtol": 1e-8})
    theta = r.x
    cov_full = np.linalg.pinv(approx_hess3(theta, nll))
    alpha = float(np.exp(theta[k])) if nb else 0.0
    mu = np.exp(X @ theta[:k])
    pk = _pmf(ks[None, :], mu[idx][:, None], alpha) * inside
    total = pk.sum(axis=1)
    y[idx] = np.where(total > 0, (pk * ks).sum(axis=1) / np.where(total > 0, total, 1), bounds[idx].mean(axis=1))
    aic = 2 * len(theta) + 2 * float(r.fun)
    return theta[:k], cov_full[:k, :k], alpha, aic, y


def _logpmf(y: np.ndarray, mu: np.ndarray, alpha: float) -> np.ndarray:
    """log P(Y = y): Poisson(mu), or NB2 with mean mu and variance mu + alpha mu^2."""
    from scipy.special import gammaln

    if alpha <= 0:
        return y * np.log(mu) - mu - gammaln(y + 1)
    n = 1 / alpha
    return (gammaln(y + n) - gammaln(n) - gammaln(y + 1) + n * np.log(n / (n + mu)) + y * np.log(mu / (n + mu)))


def _pmf(ks: np.ndarray, mu: np.ndarray, alpha: float) -> np.ndarray:
    return np.exp(_logpmf(ks, mu, alpha))


def _fit_once(y: np.ndarray, X: np.ndarray, nb: bool) -> tuple[np.ndarray, np.ndarray, float, float]:
    import statsmodels.api as sm

    if not nb:
        r = sm.GLM(y, X, family=sm.families.Poisson()).fit()
        return np.asarray(r.params), np.asarray(r.cov_params()), 0.0, float(r.aic)
    with warnings.catch_warnings():  # alpha near 0 (hardly overdispersed) converges slowly; the fit stands
        warnings.simplefilter("ignore")
        r = sm.NegativeBinomial(y, X, loglike_method="nb2").fit(disp=0, maxiter=200)
    k = X.shape[1]
    return (np.asarray(r.params)[:k], np.asarray(r.cov_params())[:k, :k], float(np.asarray(r.params)[k]),
            float(r.aic))


def fit_rate(months: list[str], counts: list[int | float | None],
             bounds: list[tuple[int, int] | None] | None = None) -> RateModel:
    """The count model of newly eligible persons per month (module docstring). A suppressed month (None)
    is censored between its `bounds` (lowest, highest); without bounds it is left out."""
    if bounds is None:
        bounds = [None] * len(months)
    rows = [(m, c, b) for m, c, b in zip(months, counts, bounds, strict=True) if c is not None or b is not None]
    released = sum(c is not None for _, c, _ in rows)
    if released < MIN_MONTHS:
        raise ProjectionError(f"monthly counts: {released} months released; the projection needs at least "
                              f"{MIN_MONTHS} (a longer history, or a site with more eligible persons)")
    y = np.array([c if c is not None else np.nan for _, c, _ in rows], dtype=float)
    censored = np.isnan(y)
    lims = np.array([b if b is not None else (0, 0) for _, _, b in rows], dtype=float)
    if np.nansum(y) + lims[censored, 1].sum() <= 0:
        raise ProjectionError("monthly counts: no newly eligible person in the released history; nothing to project")
    moy = np.array([int(m.split("-")[1]) for m, _, _ in rows], dtype=float)
    can_season = len(y) >= 24
    # The family first, on the richer mean (so seasonality is not taken for overdispersion) ...
    Xr = _design(moy, can_season)
    pr, _, _, _, yr = _fit(y, Xr, False, censored, lims)
    p_over = overdispersion_p(yr, np.exp(Xr @ pr))
    nb = p_over < ALPHA_TEST
    # ... then the seasonal terms within that family, by AIC.
    params, cov, alpha, aic, _ = _fit(y, _design(moy, False), nb, censored, lims)
    seasonal = False
    if can_season:
        p1, c1, a1, aic1, _ = _fit(y, Xr, nb, censored, lims)
        if aic1 < aic - AIC_GAIN:
            params, cov, alpha, aic, seasonal = p1, c1, a1, aic1, True
    if seasonal:
        grid = _design(np.arange(1, 13, dtype=float), True)
        rate = float(np.exp(grid @ params).mean())
        draws = np.random.default_rng(0).multivariate_normal(params, cov, size=4000)
        sims = np.exp(draws @ grid.T).mean(axis=1)
        lo, hi = (float(x) for x in np.quantile(sims, [0.025, 0.975]))
    else:
        se = math.sqrt(cov[0, 0])
        rate = math.exp(params[0])
        lo, hi = math.exp(params[0] - 1.959964 * se), math.exp(params[0] + 1.959964 * se)
    return RateModel(family="negative binomial" if nb else "poisson", seasonal=seasonal, params=params, cov=cov,
                     alpha=alpha, aic=aic, overdispersion_p=p_over, months_used=len(y), last_month=rows[-1][0],
                     rate=rate, rate_ci=(lo, hi))


def project(model: RateModel, target: int, consent: float, *, simulations: int = 2000, seed: int = 0,
            start_month: str | None = None) -> dict[str, Any]:
    """Months until `target` consented recruits: median and 95% interval by simulation, and N/(lambda c)."""
    if not isinstance(target, int) or target < 1:
        raise ProjectionError(f"target: {target!r}; give a whole number of persons, 1 or more")
    if not 0 < consent <= 1:
        raise ProjectionError(f"consent: {consent!r}; give the share of eligible persons expected to consent, "
                              "more than 0 and at most 1")
    rng = np.random.default_rng(seed)
    m0 = int((start_month or model.last_month).split("-")[1])
    expected = target / (model.rate * consent)
    # Long enough for nearly every simulation to get there (three times the expected time, plus a year),
    # and never more than MAX_PROJECTION_MONTHS; those that do not are reported as beyond the horizon.
    horizon = int(min(MAX_PROJECTION_MONTHS, max(24, math.ceil(3 * expected) + 12)))
    moy = ((m0 + np.arange(1, horizon + 1) - 1) % 12 + 1).astype(float)
    X = _design(moy, model.seasonal)
    betas = rng.multivariate_normal(model.params, model.cov, size=simulations)
    mu = np.exp(betas @ X.T)  # simulations x horizon
    if model.alpha > 0:  # NB2 as gamma-Poisson: lambda ~ Gamma(1/alpha, alpha mu)
        mu = rng.gamma(1 / model.alpha, model.alpha * mu)
    recruits = rng.poisson(mu * consent)  # each eligible person consenting with probability c: Poisson thinning
    cum = np.cumsum(recruits, axis=1)
    reached = cum >= target
    months = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, horizon + 1).astype(float)
    lo, med, hi = (float(x) for x in np.quantile(months, [0.025, 0.5, 0.975], method="inverted_cdf"))
    return {"target": target, "consent": consent, "expected_months": round(expected, 2),
            "median_months": med, "interval_months": [lo, hi], "simulations": simulations,
            "beyond_horizon": float((months > horizon).mean()), "horizon_months": horizon,
            "curve": _curve(cum, target)}


def _curve(cum: np.ndarray, target: int) -> dict[str, list[float]]:
    """Median and 95% band of cumulative consented recruits per month, up to the month most simulations
    reach the target (for the report's plot)."""
    q = np.quantile(cum, [0.025, 0.5, 0.975], axis=0)
    upto = int(min(cum.shape[1], max(12, (np.argmax(q[0] >= target) + 1) if (q[0] >= target).any() else 120)))
    return {"month": list(range(1, upto + 1)), "low": q[0, :upto].tolist(), "median": q[1, :upto].tolist(),
            "high": q[2, :upto].tolist()}


def projection(monthly: dict[str, Any], target: int | None, consent: float | None) -> dict[str, Any]:
    """The fitted model's summary and, with a target and a consent rate, the projection; or the reason not.
    `monthly`: {"months", "persons", and optionally "bounds" (per month, [lowest, highest] of a suppressed
    count, or null)}."""
    bounds = monthly.get("bounds")
    try:
        model = fit_rate(monthly["months"], monthly["persons"],
                         [tuple(b) if b is not None else None for b in bounds] if bounds is not None else None)
    except ProjectionError as e:
        return {"error": str(e)}
    out: dict[str, Any] = {"model": model.summary()}
    if target is not None and consent is not None:
        out["projection"] = project(model, target, consent)
    return out


def pooled_months(site_monthly: list[dict[str, Any]]) -> dict[str, Any]:
    """Sites' released monthly counts summed month by month. A month suppressed at some site is censored
    in the pool: the released counts plus each suppressed site's bounds."""
    if not site_monthly:
        return {"months": [], "persons": [], "bounds": []}
    months = site_monthly[0]["months"]
    same = [m for m in site_monthly if m["months"] == months]
    persons: list[int | None] = []
    bounds: list[list[int] | None] = []
    for i, _ in enumerate(months):
        known = sum(m["persons"][i] for m in same if m["persons"][i] is not None)
        missing = [m for m in same if m["persons"][i] is None]
        if not missing:
            persons.append(int(known))
            bounds.append(None)
            continue
        site_bounds = [(m.get("bounds") or [None] * len(months))[i] for m in missing]
        persons.append(None)
        bounds.append(None if any(b is None for b in site_bounds) else
                      [int(known + sum(b[0] for b in site_bounds)), int(known + sum(b[1] for b in site_bounds))])
    return {"months": months, "persons": persons, "bounds": bounds}
