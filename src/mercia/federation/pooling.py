"""Meta-analysis of per-site estimates: fixed effect (inverse variance) and DerSimonian-Laird.

Each site releases one estimate on an additive scale (a log hazard ratio, log odds ratio, log rate
ratio, a difference) with its standard error; the hub pools them here. Ratio measures released as
estimate and confidence interval are brought onto the log scale by `site_estimates_from_ci`.

    pooled = meta_analyse([-0.9, -1.6, -1.3], [0.57, 0.44, 0.64], sites=["a", "b", "c"])
    pooled.random.estimate, pooled.tau2, pooled.i2, pooled.summary()

Formulas (DerSimonian & Laird 1986; Higgins & Thompson 2002; Higgins, Thompson & Spiegelhalter 2009):
w_i = 1/se_i^2, fixed = sum(w y)/sum(w), Q = sum(w (y - fixed)^2) on k-1 df,
tau2 = max(0, (Q - (k-1)) / (sum w - sum w^2 / sum w)), random weights 1/(se_i^2 + tau2),
I2 = max(0, (Q - (k-1)) / Q); prediction interval random ± t_{k-2} sqrt(tau2 + se_random^2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from mercia.errors import StudyError

__all__ = [
    "MetaAnalysis",
    "PooledEstimate",
    "PoolingError",
    "meta_analyse",
    "site_estimates_from_ci",
]


class PoolingError(StudyError):
    """Site results cannot be pooled as given (bad estimates, standard errors or site lists)."""


@dataclass(frozen=True)
class PooledEstimate:
    """One pooled estimate on the analysis (additive, e.g. log) scale."""

    estimate: float
    se: float
    ci_lower: float
    ci_upper: float
    z: float
    p: float


@dataclass(frozen=True)
class MetaAnalysis:
    """Fixed-effect and DerSimonian-Laird random-effects pooling of k site estimates.

    `i2` and `q_p` are None for a single site (heterogeneity is not defined); the prediction
    interval is None below 3 sites (its t distribution has k-2 degrees of freedom).
    """

    sites: list[str]
    estimates: np.ndarray
    se: np.ndarray
    fixed: PooledEstimate
    random: PooledEstimate
    q: float
    q_df: int
    q_p: float | None
    i2: float | None
    tau2: float
    prediction_lower: float | None
    prediction_upper: float | None
    weights_fixed: np.ndarray
    weights_random: np.ndarray
    alpha: float = 0.05
    ratio: bool = field(default=False)

    @property
    def k(self) -> int:
        return len(self.sites)

    def site_table(self) -> pd.DataFrame:
        """One row per site: its estimate, SE, and its share of each pooled estimate (weights sum to 1)."""
        df = pd.DataFrame(
            {
                "site": self.sites,
                "estimate": self.estimates,
                "se": self.se,
                "weight_fixed": self.weights_fixed,
                "weight_random": self.weights_random,
            }
        )
        if self.ratio:
            df["ratio"] = np.exp(self.estimates)
        return df

    def summary(self) -> pd.DataFrame:
        """The two pooled rows, with ratios (exp) when the estimates are log ratios."""
        rows = []
        for model, pe in (("fixed", self.fixed), ("random", self.random)):
            row: dict[str, object] = {"model": model, **pe.__dict__}
            if self.ratio:
                row |= {
                    "ratio": math.exp(pe.estimate),
                    "ratio_lower": math.exp(pe.ci_lower),
                    "ratio_upper": math.exp(pe.ci_upper),
                }
            rows.append(row)
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready numbers (no arrays): what the hub stores and reports."""
        return {
            "sites": list(self.sites),
            "estimates": [float(v) for v in self.estimates],
            "se": [float(v) for v in self.se],
            "fixed": dict(self.fixed.__dict__),
            "random": dict(self.random.__dict__),
            "q": self.q,
            "q_df": self.q_df,
            "q_p": self.q_p,
            "i2": self.i2,
            "tau2": self.tau2,
            "prediction_lower": self.prediction_lower,
            "prediction_upper": self.prediction_upper,
            "weights_fixed": [float(v) for v in self.weights_fixed],
            "weights_random": [float(v) for v in self.weights_random],
            "alpha": self.alpha,
            "ratio": self.ratio,
        }


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, int | float) and 0 < alpha < 1):
        raise PoolingError(
            f"alpha must be between 0 and 1 (exclusive), got {alpha!r}; 0.05 gives 95% intervals"
        )


def _as_vector(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise PoolingError(f"{what} must be numbers, got {values!r}") from None
    if arr.ndim != 1:
        raise PoolingError(f"{what} must be a flat list of numbers, one per site (got shape {arr.shape})")
    return arr


def _sites(sites: Sequence[str] | None, k: int) -> list[str]:
    if sites is None:
        return [f"site {i + 1}" for i in range(k)]
    names = [str(s) for s in sites]
    if len(names) != k:
        raise PoolingError(f"{len(names)} site names for {k} estimates; give one name per estimate")
    dup = sorted({s for s in names if names.count(s) > 1})
    if dup:
        raise PoolingError(f"site names repeat ({', '.join(dup)}): each site may contribute one estimate")
    return names


def _pooled(y: np.ndarray, w: np.ndarray, zcrit: float) -> PooledEstimate:
    est = float(w @ y / w.sum())
    se = float(math.sqrt(1.0 / w.sum()))
    z = est / se
    return PooledEstimate(est, se, est - zcrit * se, est + zcrit * se, z, float(2 * stats.norm.sf(abs(z))))


def meta_analyse(
    estimates: Sequence[float] | np.ndarray,
    se: Sequence[float] | np.ndarray,
    *,
    sites: Sequence[str] | None = None,
    alpha: float = 0.05,
    ratio: bool = False,
) -> MetaAnalysis:
    """Pool one estimate per site (on an additive scale: take logs of ratios first) with its SE.

    `ratio=True` only adds exponentiated columns to the summaries; the pooling is the same.
    """
    _check_alpha(alpha)
    y = _as_vector(estimates, "estimates")
    s = _as_vector(se, "standard errors")
    k = len(y)
    if k < 1:
        raise PoolingError("no site estimates to pool: at least one site must report an estimate")
    if len(s) != k:
        raise PoolingError(f"{k} estimates but {len(s)} standard errors; give one of each per site")
    names = _sites(sites, k)
    bad = [names[i] for i in range(k) if not math.isfinite(y[i])]
    if bad:
        raise PoolingError(
            f"estimate is missing or infinite for {', '.join(bad)}; a site with no estimate (e.g. no "
            "events in one group) must be left out of the pooling, not passed as NaN"
        )
    bad = [f"{names[i]} ({float(s[i])!r})" for i in range(k) if not (math.isfinite(s[i]) and s[i] > 0)]
    if bad:
        raise PoolingError(
            f"standard error must be a positive finite number; not so for {', '.join(bad)}. "
            "A zero or missing SE usually means the site's model did not fit; leave that site out"
        )
    zcrit = float(stats.norm.ppf(1 - alpha / 2))
    v = s**2
    w = 1.0 / v
    fixed = _pooled(y, w, zcrit)
    df = k - 1
    q = float(w @ (y - fixed.estimate) ** 2)
    if k > 1:
        c = float(w.sum() - (w**2).sum() / w.sum())
        tau2 = max(0.0, (q - df) / c)
        # Q can be exactly 0 only when all estimates are equal: no heterogeneity at all
        i2: float | None = max(0.0, (q - df) / q) if q > 0 else 0.0
        q_p: float | None = float(stats.chi2.sf(q, df))
    else:
        tau2, i2, q_p = 0.0, None, None
    wr = 1.0 / (v + tau2)
    random = _pooled(y, wr, zcrit)
    pred_lo = pred_hi = None
    if k >= 3:
        half = float(stats.t.ppf(1 - alpha / 2, k - 2)) * math.sqrt(tau2 + random.se**2)
        pred_lo, pred_hi = random.estimate - half, random.estimate + half
    return MetaAnalysis(
        sites=names,
        estimates=y,
        se=s,
        fixed=fixed,
        random=random,
        q=q,
        q_df=df,
        q_p=q_p,
        i2=i2,
        tau2=tau2,
        prediction_lower=pred_lo,
        prediction_upper=pred_hi,
        weights_fixed=w / w.sum(),
        weights_random=wr / wr.sum(),
        alpha=alpha,
        ratio=ratio,
    )


def site_estimates_from_ci(
    estimates: Sequence[float] | np.ndarray,
    lower: Sequence[float] | np.ndarray,
    upper: Sequence[float] | np.ndarray,
    *,
    ratio: bool,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """(estimate, SE) on the additive scale from estimates with symmetric-on-that-scale intervals.

    With `ratio=True` the inputs are ratios (HR, OR, RR) and the outputs log ratios; the SE is the
    interval's width on the log scale over 2 z. Intervals must contain their estimate.
    """
    if not 0 < level < 1:
        raise PoolingError(f"level must be between 0 and 1, e.g. 0.95; got {level!r}")
    e = _as_vector(estimates, "estimates")
    lo = _as_vector(lower, "lower limits")
    hi = _as_vector(upper, "upper limits")
    if not (len(e) == len(lo) == len(hi)):
        raise PoolingError(
            f"{len(e)} estimates, {len(lo)} lower and {len(hi)} upper limits; give one of each per site"
        )
    if not (np.isfinite(e).all() and np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise PoolingError(
            "estimates and limits must all be finite numbers; leave out sites without an estimate"
        )
    if ratio:
        if (e <= 0).any() or (lo <= 0).any() or (hi <= 0).any():
            raise PoolingError("ratios and their limits must be positive (take logs only of ratios)")
        e, lo, hi = np.log(e), np.log(lo), np.log(hi)
    if ((lo >= hi) | (e < lo) | (e > hi)).any():
        bad = np.flatnonzero((lo >= hi) | (e < lo) | (e > hi)).tolist()
        raise PoolingError(f"interval does not contain its estimate, or is empty, for rows {bad}")
    zcrit = float(stats.norm.ppf(0.5 + level / 2))
    return e, (hi - lo) / (2 * zcrit)
