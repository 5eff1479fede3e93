"""The methods benchmark's metrics, as OHDSI MethodEvaluation's `computeMetrics` defines them.

For a set of control estimates (log RR, its SE, the 95% CI, the p-value) with known true effects:

- **auc**: how well the estimates tell positive controls (true RR > 1) from negative ones (true RR 1),
  the area under the ROC curve of log RR as the score (ties count one half, as pROC);
- **coverage**: the share whose CI contains the true RR (strictly: lower < true < upper);
- **mean_precision**: exp(mean(log(1 + 1/se^2))) - 1, a geometric mean of the precision 1/se^2 that a
  few huge precisions cannot dominate;
- **mse**: mean of (log RR - log true RR)^2;
- **type1**: share of negative controls with p < 0.05;
- **type2**: share of positive controls with p >= 0.05;
- **non_estimable**: share with no estimate (a missing or infinite log RR or SE).

As MethodEvaluation does, an estimate that could not be made counts in every metric as log RR 0, SE
999, CI (0, 999) and p 1: it covers every truth, is never significant and adds nothing to precision.

`benchmark_metrics` gives these per method and per true effect size: at true RR 1 the negative
controls alone (auc and type2 undefined); at each true RR > 1 those positive controls, with the AUC
against all the negative controls; and "all" over every control. MethodEvaluation rounds to two
decimals for display; these are unrounded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from mercia.errors import MerciaError

METRICS = ("auc", "coverage", "mean_precision", "mse", "type1", "type2", "non_estimable")
ESTIMATE_COLUMNS = ("log_rr", "se_log_rr", "ci_lower", "ci_upper", "p", "true_effect_size")


class MetricsError(MerciaError):
    """Estimates given to the metrics are missing a column or malformed."""


def auc(score: ArrayLike, positive: ArrayLike) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties one half
    (the Mann-Whitney statistic). NaN without both classes."""
    s = np.asarray(score, dtype=float)
    y = np.asarray(positive, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = stats.rankdata(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _filled(df: pd.DataFrame) -> pd.DataFrame:
    """Non-estimable rows as MethodEvaluation scores them; p and the CI from the SE where missing."""
    d = df.copy()
    lr, se = d["log_rr"].astype(float), d["se_log_rr"].astype(float)
    bad = ~(np.isfinite(lr) & np.isfinite(se))
    z = float(stats.norm.ppf(0.975))
    for col, value in (("ci_lower", np.exp(lr - z * se)), ("ci_upper", np.exp(lr + z * se)),
                       ("p", 2 * stats.norm.sf(np.abs(lr / se)))):
        d[col] = d[col].astype(float).where(d[col].notna(), value)
    d["non_estimable"] = bad.astype(float)
    d.loc[bad, ["log_rr", "se_log_rr", "ci_lower", "ci_upper", "p"]] = [0.0, 999.0, 0.0, 999.0, 1.0]
    return d


def compute_metrics(log_rr: ArrayLike, se_log_rr: ArrayLike, true_effect_size: ArrayLike, *,
                    ci_lower: ArrayLike | None = None, ci_upper: ArrayLike | None = None,
                    p: ArrayLike | None = None) -> dict[str, float]:
    """The seven metrics over one set of controls (MethodEvaluation's computeMetrics, unrounded). The
    CI and p default to the normal ones from log RR and SE."""
    lr = np.asarray(log_rr, dtype=float)
    n = len(lr)
    df = pd.DataFrame({"log_rr": lr, "se_log_rr": np.asarray(se_log_rr, dtype=float),
                       "ci_lower": np.nan if ci_lower is None else np.asarray(ci_lower, dtype=float),
                       "ci_upper": np.nan if ci_upper is None else np.asarray(ci_upper, dtype=float),
                       "p": np.nan if p is None else np.asarray(p, dtype=float),
                       "true_effect_size": np.asarray(true_effect_size, dtype=float)})
    if len(df) != n:
        raise MetricsError("log_rr, se_log_rr and true_effect_size must be of equal length")
    return _metrics(_filled(df))


def _metrics(d: pd.DataFrame, negatives: pd.DataFrame | None = None) -> dict[str, float]:
    true = d["true_effect_size"].to_numpy(dtype=float)
    if np.any(~np.isfinite(true)) or np.any(true <= 0):
        raise MetricsError("true_effect_size must be positive numbers (1 for a negative control)")
    lr = d["log_rr"].to_numpy(dtype=float)
    se = d["se_log_rr"].to_numpy(dtype=float)
    pv = d["p"].to_numpy(dtype=float)
    neg, pos = true == 1, true > 1

    def share(x: np.ndarray) -> float:
        return float(x.mean()) if len(x) else math.nan

    if negatives is None:
        roc_score, roc_pos = lr, pos
    else:  # one effect size's positive controls against all the negative controls
        roc_score = np.concatenate([lr[pos], negatives["log_rr"].to_numpy(dtype=float)])
        roc_pos = np.concatenate([np.ones(int(pos.sum()), dtype=bool), np.zeros(len(negatives), dtype=bool)])
    return {
        "n": len(d),
        "auc": auc(roc_score, roc_pos),
        "coverage": share((d["ci_lower"].to_numpy(float) < true) & (d["ci_upper"].to_numpy(float) > true)),
        "mean_precision": float(np.expm1(np.mean(np.log1p(1 / se**2)))) if len(d) else math.nan,
        "mse": share((lr - np.log(true)) ** 2),
        "type1": share(pv[neg] < 0.05),
        "type2": share(pv[pos] >= 0.05),
        "non_estimable": share(d["non_estimable"].to_numpy(dtype=float)),
    }


def benchmark_metrics(estimates: pd.DataFrame, by: Sequence[str] = ("method",)) -> pd.DataFrame:
    """Metrics per group of `by` and per true effect size ("1", "1.5", ..., and "all").

    `estimates` has one row per control and method: `by` columns, log_rr, se_log_rr, ci_lower, ci_upper,
    p (the CI and p may be NaN: then from log RR and SE) and true_effect_size (1 for negative controls).
    """
    missing = [c for c in [*by, "log_rr", "se_log_rr", "true_effect_size"] if c not in estimates.columns]
    if missing:
        raise MetricsError(f"estimates lack column(s) {', '.join(missing)}")
    est = estimates.copy()
    for c in ("ci_lower", "ci_upper", "p"):
        if c not in est.columns:
            est[c] = np.nan
    rows = []
    for key, g in est.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        d = _filled(g)
        negatives = d[d["true_effect_size"] == 1]
        base = dict(zip(by, key, strict=True))
        for size in sorted(d["true_effect_size"].unique()):
            part = d[d["true_effect_size"] == size]
            m = _metrics(part, negatives if size > 1 else None)
            rows.append({**base, "true_effect_size": f"{size:g}", **m})
        rows.append({**base, "true_effect_size": "all", **_metrics(d)})
    return pd.DataFrame(rows, columns=[*by, "true_effect_size", "n", *METRICS])
