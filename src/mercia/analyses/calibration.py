"""Empirical calibration of effect estimates with negative (and positive) controls.

The semantics are those of OHDSI's EmpiricalCalibration R package (Schuemie et al. 2014, 2018):

- `fit_null` fits the empirical null distribution: the systematic error of an analysis is modelled as
  normal, N(mean, sd^2), and each negative control's estimate as that error plus its own sampling
  error, so log_rr_i ~ N(mean, sd^2 + se_i^2). The maximum-likelihood (mean, sd) is found (R's
  `fitNull`).
- `calibrate_p` gives the calibrated p-value of an estimate against that null (R's `calibrateP`).
- `fit_systematic_error_model` lets the error depend on the true effect size:
  log_rr_i ~ N(a + b * true_i, (c + d * |true_i|)^2 + se_i^2), fitted by maximum likelihood on
  negative and positive controls (R's `fitSystematicErrorModel`, non-legacy form). With negative
  controls only (every true effect zero) the slopes cannot be estimated; the model is then the null
  distribution with mean slope 1 and sd slope 0 (R's `convertNullToErrorModel`).
- `calibrate_ci` inverts that model to give a calibrated point estimate, confidence interval and
  standard error (R's `calibrateConfidenceInterval`).

Estimates whose log RR or SE is NaN or infinite are dropped before fitting (with a warning, as R does)
and calibrate to NaN. Effect estimates never carry person-level data, so nothing here needs the
disclosure door; the caller releases the calibrated numbers with the rest of its results.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, stats

from mercia.errors import StudyError

# R's fitNull drops estimates this extreme: they are failed fits, not information about bias.
EXTREME_LOG_RR = math.log(100.0)
# Search range for calibrated bounds on the log scale, as R's calibrateConfidenceInterval.
_ROOT_RANGE = (-100.0, 100.0)
# A systematic-error SD below this is treated as zero (as R's likelihoods do); it also keeps the
# likelihood finite when an estimate's own SE is zero.
_SD_FLOOR = 1e-6


class CalibrationError(StudyError):
    """Controls are missing or unusable for empirical calibration."""


@dataclass(frozen=True)
class NullDistribution:
    """The empirical null: systematic error ~ N(mean, sd^2) on the log effect scale."""

    mean: float
    sd: float
    n_controls: int

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "sd": self.sd, "n_controls": self.n_controls}


@dataclass(frozen=True)
class SystematicErrorModel:
    """Systematic error as a function of the true log effect t: N(a + b t, (c + d |t|)^2)."""

    mean_intercept: float
    mean_slope: float
    sd_intercept: float
    sd_slope: float
    n_controls: int
    negative_controls_only: bool

    def error_mean(self, true_log_rr: ArrayLike) -> NDArray[np.float64]:
        return self.mean_intercept + self.mean_slope * np.asarray(true_log_rr, dtype=float)

    def error_sd(self, true_log_rr: ArrayLike) -> NDArray[np.float64]:
        return self.sd_intercept + self.sd_slope * np.abs(np.asarray(true_log_rr, dtype=float))

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "mean_intercept": self.mean_intercept,
            "mean_slope": self.mean_slope,
            "sd_intercept": self.sd_intercept,
            "sd_slope": self.sd_slope,
            "n_controls": self.n_controls,
            "negative_controls_only": self.negative_controls_only,
        }


# ----------------------------------------------------------------------------------- input checks


def _as_vectors(*arrays: ArrayLike, names: Sequence[str]) -> list[NDArray[np.float64]]:
    out: list[NDArray[np.float64]] = []
    for a, name in zip(arrays, names, strict=True):
        try:
            v = np.atleast_1d(np.asarray(a, dtype=float))
        except (TypeError, ValueError) as e:
            raise CalibrationError(f"{name} must be numbers: {e}") from None
        if v.ndim != 1:
            raise CalibrationError(f"{name} must be one-dimensional, not of shape {v.shape}")
        out.append(v)
    lengths = {len(v) for v in out}
    if len(lengths) > 1:
        raise CalibrationError(
            f"{', '.join(names)} must be of equal length (got {', '.join(str(len(v)) for v in out)})"
        )
    return out


def _usable(log_rr: NDArray[np.float64], se: NDArray[np.float64], what: str) -> NDArray[np.bool_]:
    """Which estimates a fit may use; warns about the ones dropped, as R does."""
    if np.any(se < 0):
        raise CalibrationError(f"{what}: a standard error is negative; standard errors must be >= 0")
    keep = np.isfinite(log_rr) & np.isfinite(se)
    if not keep.all():
        warnings.warn(
            f"{what}: {int((~keep).sum())} estimate(s) with a missing or infinite log RR or standard error "
            "removed before fitting",
            stacklevel=3,
        )
    return keep


# ----------------------------------------------------------------------------------- the null


_LOG_2PI = math.log(2 * math.pi)


def _normal_nll(x: NDArray[np.float64], mean: NDArray[np.float64] | float, var: NDArray[np.float64]) -> float:
    """-sum log N(x; mean, var), written out (scipy's logpdf costs more than the fit itself)."""
    return float(0.5 * np.sum(_LOG_2PI + np.log(var) + (x - mean) ** 2 / var))


def _profile_nll(
    sds: NDArray[np.float64], log_rr: NDArray[np.float64], se: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """For each candidate sd: the mean maximising the likelihood (the precision-weighted mean) and
    the negative log-likelihood there."""
    var = sds[:, None] ** 2 + se[None, :] ** 2
    w = 1.0 / var
    means = (w * log_rr).sum(axis=1) / w.sum(axis=1)
    nll = 0.5 * np.sum(_LOG_2PI + np.log(var) + (log_rr - means[:, None]) ** 2 * w, axis=1)
    return means, nll


def fit_null(log_rr: ArrayLike, se_log_rr: ArrayLike) -> NullDistribution:
    """Fit the empirical null distribution to negative-control estimates (log RR and its SE).

    Maximum likelihood of log_rr_i ~ N(mean, sd^2 + se_i^2). The mean is profiled out (for a given sd
    it is the precision-weighted mean), and the sd found by a grid over [0, 10 * spread] refined with
    a bounded scalar search, so the boundary sd = 0 (no systematic error beyond chance) is reached
    exactly rather than approached as R's Nelder-Mead on the precision does.
    """
    log_rr_v, se_v = _as_vectors(log_rr, se_log_rr, names=("log_rr", "se_log_rr"))
    keep = _usable(log_rr_v, se_v, "fit_null")
    extreme = keep & (np.abs(log_rr_v) > EXTREME_LOG_RR)
    if extreme.any():
        warnings.warn(
            f"fit_null: {int(extreme.sum())} estimate(s) with |log RR| > log(100) removed before fitting",
            stacklevel=2,
        )
    keep &= ~extreme
    x, se = log_rr_v[keep], se_v[keep]
    if len(x) == 0:
        raise CalibrationError(
            "fit_null: no usable negative-control estimates; give at least one negative control with a "
            "finite log RR and standard error (a dozen or more are advisable)"
        )
    sd_floor = _SD_FLOOR if np.any(se == 0) else 0.0
    spread = float(np.ptp(x)) + float(np.max(se))
    upper = max(10.0 * spread, 1.0)

    def objective(sd: float) -> float:
        return float(_profile_nll(np.array([sd]), x, se)[1][0])

    grid = np.concatenate([[sd_floor], np.geomspace(max(sd_floor, 1e-4), upper, 200)])
    values = _profile_nll(grid, x, se)[1]
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    sd = float(grid[best])
    if hi > lo:
        res = optimize.minimize_scalar(objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
        if res.fun <= values[best]:
            sd = float(res.x)
    if sd <= _SD_FLOOR:
        sd = 0.0 if sd_floor == 0.0 else sd
    return NullDistribution(mean=float(_profile_nll(np.array([sd]), x, se)[0][0]), sd=sd, n_controls=len(x))


def calibrate_p(
    null: NullDistribution,
    log_rr: ArrayLike,
    se_log_rr: ArrayLike,
    two_sided: bool = True,
    upper: bool = True,
) -> NDArray[np.float64]:
    """Calibrated p-values of estimates against an empirical null (R's calibrateP).

    z = (log_rr - mean) / sqrt(sd^2 + se^2); two-sided p = 2 * min(Phi(z), Phi(-z)); one-sided upper
    (the alternative that the effect is greater) p = Phi(-z), lower p = Phi(z). NaN where the
    estimate or its SE is missing or infinite.
    """
    if not isinstance(null, NullDistribution):
        raise CalibrationError(f"null must be a NullDistribution from fit_null, not {type(null).__name__}")
    x, se = _as_vectors(log_rr, se_log_rr, names=("log_rr", "se_log_rr"))
    if np.any(se < 0):
        raise CalibrationError("calibrate_p: a standard error is negative; standard errors must be >= 0")
    ok = np.isfinite(x) & np.isfinite(se)
    p = np.full(len(x), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (x[ok] - null.mean) / np.sqrt(null.sd**2 + se[ok] ** 2)
    p_upper = stats.norm.cdf(-z)
    p_lower = stats.norm.cdf(z)
    if two_sided:
        p[ok] = np.minimum(2.0 * np.minimum(p_upper, p_lower), 1.0)
    else:
        p[ok] = p_upper if upper else p_lower
    return p


def expected_absolute_systematic_error(null: NullDistribution) -> float:
    """EASE: E|error| for error ~ N(mean, sd^2), the folded-normal mean (R's
    computeExpectedAbsoluteSystematicError); 0 means no systematic error."""
    mu, sd = null.mean, null.sd
    if sd == 0:
        return abs(mu)
    return float(
        sd * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * sd**2))
        + mu * (1 - 2 * stats.norm.cdf(-mu / sd))
    )


# ----------------------------------------------------------------------------------- error model


def null_to_error_model(
    null: NullDistribution, mean_slope: float = 1.0, sd_slope: float = 0.0
) -> SystematicErrorModel:
    """The systematic error model a null implies when error does not depend on the true effect
    (R's convertNullToErrorModel)."""
    return SystematicErrorModel(
        mean_intercept=null.mean,
        mean_slope=mean_slope,
        sd_intercept=null.sd,
        sd_slope=sd_slope,
        n_controls=null.n_controls,
        negative_controls_only=True,
    )


def fit_systematic_error_model(
    log_rr: ArrayLike, se_log_rr: ArrayLike, true_log_rr: ArrayLike
) -> SystematicErrorModel:
    """Fit the systematic error model to negative and positive controls (R's fitSystematicErrorModel).

    With every true effect zero (negative controls only) the model is `fit_null`'s null with mean
    slope 1 and sd slope 0. Otherwise the controls need at least two distinct true effects. The sd is
    constrained non-negative over the true effects observed: the parameters are searched as the sd at
    |t| = 0 and at the largest |t|, both bounded below at zero, which is the same linear model.
    """
    x, se, t = _as_vectors(log_rr, se_log_rr, true_log_rr, names=("log_rr", "se_log_rr", "true_log_rr"))
    keep = _usable(x, se, "fit_systematic_error_model")
    if np.any(~np.isfinite(t[keep])):
        raise CalibrationError("fit_systematic_error_model: every true_log_rr must be a finite number")
    x, se, t = x[keep], se[keep], t[keep]
    if len(x) == 0:
        raise CalibrationError(
            "fit_systematic_error_model: no usable control estimates; give negative (and ideally positive) "
            "controls with a finite log RR and standard error"
        )
    if np.all(t == 0):
        return null_to_error_model(fit_null(x, se))
    if len(np.unique(t)) < 2:
        raise CalibrationError(
            "fit_systematic_error_model: all controls have the same true effect size, so the error's "
            "dependence on it cannot be estimated; add negative controls (true_log_rr = 0)"
        )
    abs_t = np.abs(t)
    t_max = float(abs_t.max())
    sd_floor = _SD_FLOOR if np.any(se == 0) else 0.0

    def unpack(theta: NDArray[np.float64]) -> tuple[float, float, float, float]:
        a, b, sd0, sd_max = theta
        return a, b, sd0, (sd_max - sd0) / t_max

    frac = abs_t / t_max  # sd_i = sd0 * (1 - frac_i) + sd_max * frac_i

    def neg_log_lik(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        a, b, sd0, sd_max = theta
        sd = sd0 * (1 - frac) + sd_max * frac
        var = sd * sd + se * se
        r = x - a - b * t
        g_sd = sd * (1 / var - r * r / (var * var))
        grad = np.array(
            [-np.sum(r / var), -np.sum(r * t / var), np.sum(g_sd * (1 - frac)), np.sum(g_sd * frac)]
        )
        return _normal_nll(x, a + b * t, var), grad

    # Start from least squares of the estimates on the truth, error sd from its residuals.
    slope, intercept = np.polyfit(t, x, 1)
    resid_sd = float(np.std(x - (intercept + slope * t)))
    bounds = [(None, None), (None, None), (sd_floor, None), (sd_floor, None)]
    best: optimize.OptimizeResult | None = None
    for sd_start in (resid_sd, 0.1, 0.5):
        res = optimize.minimize(
            neg_log_lik,
            np.array([intercept, slope, max(sd_start, sd_floor), max(sd_start, sd_floor)]),
            method="L-BFGS-B",
            jac=True,
            bounds=bounds,
            options={"ftol": 1e-13, "gtol": 1e-9, "maxiter": 5000},
        )
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    a, b, c, d = unpack(best.x)
    return SystematicErrorModel(
        mean_intercept=float(a),
        mean_slope=float(b),
        sd_intercept=float(c),
        sd_slope=float(d),
        n_controls=len(x),
        negative_controls_only=False,
    )


def _bounds(
    model: SystematicErrorModel, z: float, log_rr: NDArray[np.float64], se: NDArray[np.float64]
) -> NDArray[np.float64]:
    """For each estimate, the true log effect x at which it sits z error-SDs from the error model's
    mean: the root of z + (mean(x) - log_rr) / sqrt(sd(x)^2 + se^2) in [-100, 100], NaN when the ends
    of that range do not bracket one (as R's calibrateConfidenceInterval). Solved by bisection of all
    estimates at once; 80 halvings of the range reach double precision."""

    def f(x: NDArray[np.float64]) -> NDArray[np.float64]:
        mean = model.mean_intercept + model.mean_slope * x
        sd = model.sd_intercept + model.sd_slope * np.abs(x)
        return z + (mean - log_rr) / np.sqrt(sd * sd + se * se)

    lo = np.full(len(log_rr), _ROOT_RANGE[0])
    hi = np.full(len(log_rr), _ROOT_RANGE[1])
    f_lo, f_hi = f(lo), f(hi)
    bracketed = np.sign(f_lo) != np.sign(f_hi)
    lo_negative = f_lo < 0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        f_mid = f(mid)
        # keep the half whose ends still differ in sign
        go_right = (f_mid < 0) == lo_negative
        lo = np.where(go_right, mid, lo)
        hi = np.where(go_right, hi, mid)
    root = 0.5 * (lo + hi)
    root[f_lo == 0] = _ROOT_RANGE[0]
    root[f_hi == 0] = _ROOT_RANGE[1]
    return np.where(bracketed | (f_lo == 0) | (f_hi == 0), root, np.nan)


def calibrate_ci(
    model: SystematicErrorModel,
    log_rr: ArrayLike,
    se_log_rr: ArrayLike,
    alpha: float = 0.05,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Calibrated (log RR, lower, upper, SE) for estimates under a systematic error model.

    The calibrated estimate is the true effect whose expected biased estimate equals the observed one;
    the bounds are the true effects at which the observed estimate sits at the alpha/2 and 1 - alpha/2
    quantiles of N(mean(x), sd(x)^2 + se^2). SE = (upper - lower) / (2 z_{1-alpha/2}). NaN where the
    input is missing or infinite or no bound exists in [-100, 100].
    """
    if isinstance(model, NullDistribution):
        model = null_to_error_model(model)
    if not isinstance(model, SystematicErrorModel):
        raise CalibrationError(
            f"model must be a SystematicErrorModel (or NullDistribution), not {type(model).__name__}"
        )
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise CalibrationError(f"alpha {alpha!r} must be between 0 and 1 (0.05 for a 95% interval)")
    x, se = _as_vectors(log_rr, se_log_rr, names=("log_rr", "se_log_rr"))
    if np.any(se < 0):
        raise CalibrationError("calibrate_ci: a standard error is negative; standard errors must be >= 0")
    z = float(stats.norm.ppf(1 - alpha / 2))
    ok = np.isfinite(x) & np.isfinite(se)
    point, lo, hi = (np.full(len(x), np.nan) for _ in range(3))
    point[ok] = _bounds(model, 0.0, x[ok], se[ok])
    lo[ok] = _bounds(model, z, x[ok], se[ok])
    hi[ok] = _bounds(model, -z, x[ok], se[ok])
    se_cal = (hi - lo) / (2 * z)
    return point, lo, hi, se_cal


# ----------------------------------------------------------------------------------- all at once


@dataclass(frozen=True)
class CalibratedEstimates:
    """Estimates with their calibrated p-values and intervals, and the fits that calibrated them."""

    table: pd.DataFrame
    null: NullDistribution
    model: SystematicErrorModel
    ease: float


def calibrate_estimates(
    log_rr: ArrayLike, se_log_rr: ArrayLike, true_log_rr: ArrayLike, alpha: float = 0.05
) -> CalibratedEstimates:
    """Calibrate a set of estimates run through one pipeline: negative controls (true_log_rr 0),
    positive controls (true_log_rr known, non-zero) and estimates of interest (true_log_rr NaN).

    The null is fitted on the negative controls, the systematic error model on all controls (the null
    when there are no positive controls); every row gets its traditional and calibrated p-value
    (against the null) and its calibrated log RR, CI and SE (from the model). Controls are calibrated
    too, as OHDSI does, which shows how well calibration works on them.
    """
    x, se, t = _as_vectors(log_rr, se_log_rr, true_log_rr, names=("log_rr", "se_log_rr", "true_log_rr"))
    negative = t == 0
    if not negative.any():
        raise CalibrationError(
            "no negative controls (true_log_rr = 0); empirical calibration needs them, a dozen or more"
        )
    null = fit_null(x[negative], se[negative])
    control = np.isfinite(t)
    model = fit_systematic_error_model(x[control], se[control], t[control])
    point, lo, hi, se_cal = calibrate_ci(model, x, se, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * stats.norm.sf(np.abs(x / se))
    table = pd.DataFrame(
        {
            "log_rr": x,
            "se_log_rr": se,
            "true_log_rr": t,
            "p": p,
            "calibrated_p": calibrate_p(null, x, se),
            "calibrated_log_rr": point,
            "calibrated_ci_lower": lo,
            "calibrated_ci_upper": hi,
            "calibrated_se_log_rr": se_cal,
        }
    )
    return CalibratedEstimates(table, null, model, expected_absolute_systematic_error(null))
