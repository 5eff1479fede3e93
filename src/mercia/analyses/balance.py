"""Covariate balance: per-covariate means, SDs and standardized differences, as CohortMethod's
`computeCovariateBalance`.

Unweighted populations (before adjustment, or matched sets that are all 1:1) use plain means and
the population SD (divisor n). Stratified or variable-ratio populations weight each row by one over
its (stratum, arm) size, normalised to sum to one per arm, and use the weighted SD
sqrt(|sum w x^2 - mean^2| / (1 - sum w^2)). The SMD is (mean_t - mean_c) / sqrt((sd_t^2 + sd_c^2) / 2),
undefined (NaN) where both SDs are zero and the means differ.
All of it runs on the sparse matrix: cost grows with its non-zeros.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

SMD_THRESHOLD = 0.1


def _weights(treatment: np.ndarray, stratum: np.ndarray | None) -> tuple[np.ndarray, bool]:
    t = treatment.astype(int)
    if stratum is None:
        return np.ones(len(t)), False
    key = pd.DataFrame({"s": stratum, "t": t})
    size = key.groupby(["s", "t"])["t"].transform("size").to_numpy(dtype=float)
    if (size <= 1).all():
        return np.ones(len(t)), False
    return 1.0 / size, True


def balance(X: sp.spmatrix, treatment: np.ndarray, stratum: np.ndarray | None = None) -> pd.DataFrame:
    """Per column of X: n_target/n_comparator (rows), nonzero_target/nonzero_comparator (rows with a
    non-zero value), mean_target, mean_comparator, sd_target, sd_comparator, smd."""
    X = sp.csr_matrix(X)
    t = np.asarray(treatment).astype(int)
    w, weighted = _weights(t, stratum)
    out: dict[str, np.ndarray] = {}
    for arm, label in ((1, "target"), (0, "comparator")):
        k = t == arm
        Xa = X[np.flatnonzero(k)]
        n = int(k.sum())
        out[f"n_{label}"] = np.full(X.shape[1], n, dtype=np.int64)
        out[f"nonzero_{label}"] = np.diff(Xa.tocsc().indptr).astype(np.int64)
        if n == 0:
            out[f"mean_{label}"] = np.full(X.shape[1], np.nan)
            out[f"sd_{label}"] = np.full(X.shape[1], np.nan)
            continue
        if weighted:
            wa = w[k] / w[k].sum()
            mean = np.asarray(Xa.T @ wa).ravel()
            sq = np.asarray(Xa.multiply(Xa).T @ wa).ravel()
            denom = 1 - float(np.sum(wa**2))
            with np.errstate(divide="ignore", invalid="ignore"):
                sd = np.sqrt(np.abs(sq - mean**2) / denom) if denom > 0 else np.zeros_like(mean)
        else:
            s1 = np.asarray(Xa.sum(axis=0)).ravel()
            s2 = np.asarray(Xa.multiply(Xa).sum(axis=0)).ravel()
            mean = s1 / n
            sd = np.sqrt(np.maximum(s2 - s1**2 / n, 0) / n)
        out[f"mean_{label}"] = mean
        out[f"sd_{label}"] = sd
    df = pd.DataFrame(out)
    df["smd"] = smd(df["mean_target"].to_numpy(), df["mean_comparator"].to_numpy(),
                    df["sd_target"].to_numpy(), df["sd_comparator"].to_numpy())
    return df


def smd(m1: np.ndarray, m0: np.ndarray, s1: np.ndarray, s0: np.ndarray) -> np.ndarray:
    pooled = np.sqrt((s1**2 + s0**2) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (m1 - m0) / pooled
    d = np.where(pooled > 0, d, np.where(m1 == m0, 0.0, np.nan))
    return np.where(np.isinf(d), np.nan, d)


def balance_before_after(X: sp.spmatrix, treatment: np.ndarray, kept: np.ndarray, stratum: np.ndarray,
                         ref: pd.DataFrame) -> pd.DataFrame:
    """One row per covariate: the population before (all rows of X) and after adjustment (the rows
    `kept`, weighted by their strata), with the covariate reference alongside."""
    before = balance(X, treatment)
    after = balance(sp.csr_matrix(X)[np.flatnonzero(kept)], treatment[kept], stratum[kept])
    cols = ref[["covariate_id", "covariate_name", "analysis_id", "kind"]].reset_index(drop=True)
    return pd.concat([cols, before.add_prefix("before_"), after.add_prefix("after_")], axis=1)
