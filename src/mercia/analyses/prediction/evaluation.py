"""How good a risk prediction is: discrimination, calibration and overall accuracy, as OHDSI
PatientLevelPrediction reports them.

- AUC (the c-statistic) by the Mann-Whitney statistic, with a DeLong (1988) confidence interval:
  AUC +- z * SE on the AUC scale, clipped to [0, 1], as pROC's default (which PatientLevelPrediction
  uses) gives it. The DeLong variance uses the structural components of Sun & Xu (2014).
- Brier score: mean squared difference of predicted risk and outcome; scaled Brier 1 - Brier / Brier
  of predicting the observed risk for everyone.
- Calibration in the large: mean predicted risk against observed risk, and the intercept of the
  logistic model y ~ offset(logit p) (what PLP calls calibrationInLargeIntercept).
- Weak calibration (PLP's "calibration intercept" and "calibration slope"): the logistic
  recalibration y ~ a + b logit(p); a perfectly calibrated model has a = 0, b = 1. When the linear
  predictor separates outcomes perfectly the recalibration has no maximum: it is reported as
  separated with NaN intercept and slope, not as a crash.
- E-statistics (Austin & Steyerberg 2019, PLP's Eavg/E90/Emax): absolute differences between predicted
  risk and a smoothed observed risk; smoothing by lowess (statsmodels, frac 2/3, no robustness
  iterations), where PLP uses R's loess, so values are close to PLP's, not equal.
- Calibration strata: persons in `n_strata` equal-sized groups of predicted risk (deciles by default,
  PLP's calibration plot), with persons, outcomes and the sum of predicted risks per group.

Everything here is row-level input and aggregate output; the caller releases the aggregates.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from mercia.analyses.solvers import Evaluation, logistic_terms, newton_maximise
from mercia.errors import StudyError

_EPS = 1e-12


def _check(y: ArrayLike, p: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    yv = np.asarray(y, dtype=float).ravel()
    pv = np.asarray(p, dtype=float).ravel()
    if yv.shape != pv.shape:
        raise StudyError(f"outcomes ({len(yv)}) and predictions ({len(pv)}) differ in length")
    if len(yv) == 0:
        raise StudyError("no persons to evaluate the prediction on")
    if not np.isin(yv, (0.0, 1.0)).all():
        raise StudyError("outcomes must be 0 or 1")
    if not np.isfinite(pv).all() or (pv < 0).any() or (pv > 1).any():
        raise StudyError("predicted risks must be numbers between 0 and 1")
    return yv, pv


@dataclass(frozen=True)
class AucResult:
    auc: float
    lower: float
    upper: float
    se: float


def auc_delong(y: ArrayLike, p: ArrayLike, alpha: float = 0.05) -> AucResult:
    """AUC with a DeLong confidence interval (structural components as Sun & Xu 2014)."""
    yv, pv = _check(y, p)
    pos, neg = pv[yv == 1], pv[yv == 0]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        raise StudyError(
            f"the AUC needs persons with and without the outcome ({m} with, {n} without); "
            "lengthen the time at risk or use a larger population"
        )
    # Midranks within each group and overall give the placement values without an m x n matrix.
    r_all = stats.rankdata(np.concatenate([pos, neg]))
    r_pos, r_neg = stats.rankdata(pos), stats.rankdata(neg)
    v10 = (r_all[:m] - r_pos) / n  # for each positive: share of negatives ranked below (ties half)
    v01 = 1.0 - (r_all[m:] - r_neg) / m  # for each negative: share of positives ranked above
    auc = float(v10.mean())
    s10 = float(np.var(v10, ddof=1)) if m > 1 else 0.0
    s01 = float(np.var(v01, ddof=1)) if n > 1 else 0.0
    se = math.sqrt(s10 / m + s01 / n)
    z = float(stats.norm.ppf(1 - alpha / 2))
    return AucResult(auc, max(0.0, auc - z * se), min(1.0, auc + z * se), se)


def brier(y: ArrayLike, p: ArrayLike) -> tuple[float, float]:
    """Brier score and scaled Brier score (1 - Brier / Brier of the observed risk)."""
    yv, pv = _check(y, p)
    b = float(np.mean((pv - yv) ** 2))
    ybar = yv.mean()
    ref = ybar * (1 - ybar)
    return b, float(1 - b / ref) if ref > 0 else math.nan


@dataclass(frozen=True)
class Recalibration:
    intercept: float
    slope: float
    separated: bool


def _logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    q = np.clip(p, _EPS, 1 - _EPS)
    return np.log(q / (1 - q))


def _newton_logistic(
    x: NDArray[np.float64], y: NDArray[np.float64], offset: NDArray[np.float64]
) -> NDArray[np.float64] | None:
    """Maximum-likelihood logistic regression (columns of x, with an offset) by Newton-Raphson
    (`mercia.analyses.solvers`); None when it does not converge (a separated or degenerate design)."""

    def evaluate(b: NDArray[np.float64]) -> Evaluation:
        return Evaluation(*logistic_terms(x, y, b, offset)[:3])

    res = newton_maximise(evaluate, np.zeros(x.shape[1]))
    if not res.converged or np.abs(res.beta).max() > 1e6:
        return None
    return res.beta


def _separated(lp: NDArray[np.float64], y: NDArray[np.float64]) -> bool:
    """Outcome perfectly separated by the linear predictor (in either direction): no finite MLE."""
    pos, neg = lp[y == 1], lp[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return True
    return bool(pos.min() >= neg.max() or pos.max() <= neg.min())


def weak_calibration(y: ArrayLike, p: ArrayLike) -> Recalibration:
    """Logistic recalibration y ~ a + b logit(p): PLP's calibration intercept and slope."""
    yv, pv = _check(y, p)
    lp = _logit(pv)
    if _separated(lp, yv):
        return Recalibration(math.nan, math.nan, True)
    beta = _newton_logistic(np.column_stack([np.ones_like(lp), lp]), yv, np.zeros_like(lp))
    if beta is None:
        return Recalibration(math.nan, math.nan, True)
    return Recalibration(float(beta[0]), float(beta[1]), False)


def calibration_in_the_large_intercept(y: ArrayLike, p: ArrayLike) -> float:
    """The intercept of y ~ 1 + offset(logit p): 0 when mean risk is right on the logit scale."""
    yv, pv = _check(y, p)
    if yv.min() == yv.max():
        return math.nan
    beta = _newton_logistic(np.ones((len(yv), 1)), yv, _logit(pv))
    return math.nan if beta is None else float(beta[0])


def e_statistics(y: ArrayLike, p: ArrayLike) -> tuple[float, float, float]:
    """Eavg, E90, Emax: mean, 90th centile and maximum of |lowess(y ~ p) - p|."""
    from statsmodels.nonparametric.smoothers_lowess import lowess

    yv, pv = _check(y, p)
    if len(yv) < 10 or yv.min() == yv.max():
        return math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # delta: points closer than 1% of the range reuse a neighbour's fit (linear interpolation), which
        # keeps lowess near-linear in n
        delta = 0.01 * float(pv.max() - pv.min())
        smoothed = lowess(yv, pv, frac=2 / 3, it=0, delta=delta, return_sorted=False)
    diff = np.abs(np.clip(smoothed, 0, 1) - pv)
    if not np.isfinite(diff).all():
        return math.nan, math.nan, math.nan
    return float(diff.mean()), float(np.quantile(diff, 0.9)), float(diff.max())


def risk_strata(y: ArrayLike, p: ArrayLike, n_strata: int = 10) -> pd.DataFrame:
    """Persons in `n_strata` equal-sized groups by predicted risk (ties split by order, so groups stay
    equal): stratum (1 = lowest risk), n_persons, n_outcomes, expected_outcomes (sum of risks)."""
    yv, pv = _check(y, p)
    if n_strata < 2:
        raise StudyError(f"risk strata: give at least 2 strata, not {n_strata}")
    k = min(n_strata, len(yv))
    order = np.argsort(pv, kind="stable")
    stratum = np.empty(len(pv), dtype=np.int64)
    stratum[order] = np.arange(len(pv)) * k // len(pv) + 1
    df = pd.DataFrame({"stratum": stratum, "y": yv, "p": pv})
    out = df.groupby("stratum").agg(n_persons=("y", "size"), n_outcomes=("y", "sum"), expected_outcomes=("p", "sum"))
    out = out.reindex(range(1, n_strata + 1), fill_value=0).reset_index()
    out["n_outcomes"] = out["n_outcomes"].astype(np.int64)
    out["n_persons"] = out["n_persons"].astype(np.int64)
    return out


@dataclass(frozen=True)
class Performance:
    """Every performance measure of one set of predictions."""

    n_persons: int
    n_outcomes: int
    auc: float
    auc_lower: float
    auc_upper: float
    brier: float
    brier_scaled: float
    mean_predicted_risk: float
    observed_risk: float
    calibration_in_the_large: float
    calibration_intercept: float
    calibration_slope: float
    separated: bool
    e_avg: float
    e_90: float
    e_max: float

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def evaluate(y: ArrayLike, p: ArrayLike, alpha: float = 0.05) -> Performance:
    """All the measures at once; needs persons with and without the outcome."""
    yv, pv = _check(y, p)
    a = auc_delong(yv, pv, alpha)
    b, b_scaled = brier(yv, pv)
    weak = weak_calibration(yv, pv)
    e_avg, e_90, e_max = e_statistics(yv, pv)
    return Performance(
        n_persons=len(yv),
        n_outcomes=int(yv.sum()),
        auc=a.auc,
        auc_lower=a.lower,
        auc_upper=a.upper,
        brier=b,
        brier_scaled=b_scaled,
        mean_predicted_risk=float(pv.mean()),
        observed_risk=float(yv.mean()),
        calibration_in_the_large=calibration_in_the_large_intercept(yv, pv),
        calibration_intercept=weak.intercept,
        calibration_slope=weak.slope,
        separated=weak.separated,
        e_avg=e_avg,
        e_90=e_90,
        e_max=e_max,
    )
