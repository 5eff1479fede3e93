"""Matching and stratification on the propensity score, as OHDSI CohortMethod does them.

`match_on_ps` is CohortMethod's greedy matcher (Match.cpp): rows sorted by propensity score; for
each target ratio 1..max_ratio a heap of (target, nearest unmatched comparator on either side) pairs
is drained closest first; a pair whose comparator was taken meanwhile is replaced by the target's
nearest free comparator; matching stops at the first pair at or beyond the caliper. The caliper is
on the logit of the score, 0.2 standard deviations of the logit by default ("standardized logit").

`stratify_by_ps` cuts the score at quantiles of the whole population (or of one arm), intervals
closed on the right, as CohortMethod's `stratifyByPs` (R's `quantile` type 7 and `cut`).
"""

from __future__ import annotations

import heapq
import math
from typing import Literal

import numpy as np

from mercia.errors import StudyError

CaliperScale = Literal["propensity score", "standardized", "standardized logit"]


def _logit(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p / (1 - p))


class _Free:
    """Unused comparators by rank: the nearest free one at or after / at or before a rank, by
    union-find with path compression (what Match.cpp's back and forth indices do)."""

    def __init__(self, m: int) -> None:
        self.nxt = list(range(m + 1))  # rank j -> itself while free; m is "none after"
        self.prv = list(range(m + 1))  # index j + 1 for rank j; 0 is "none before"

    @staticmethod
    def _find(arr: list[int], x: int) -> int:
        root = x
        while arr[root] != root:
            root = arr[root]
        while arr[x] != root:
            arr[x], x = root, arr[x]
        return root

    def after(self, j: int) -> int:
        return self._find(self.nxt, j)

    def before(self, j: int) -> int:
        return self._find(self.prv, j + 1) - 1

    def take(self, j: int) -> None:
        self.nxt[j] = j + 1
        self.prv[j + 1] = j


def match_on_ps(
    ps: np.ndarray,
    treatment: np.ndarray,
    *,
    caliper: float = 0.2,
    caliper_scale: CaliperScale = "standardized logit",
    max_ratio: int = 1,
    allow_reverse_match: bool = False,
) -> np.ndarray:
    """Stratum (matched set) id per row, -1 for rows left unmatched. `max_ratio` 0 means no limit
    (variable-ratio matching up to 999 comparators per target, as CohortMethod)."""
    ps = np.asarray(ps, dtype=float)
    t = np.asarray(treatment).astype(int)
    if ps.shape != t.shape:
        raise StudyError("propensity scores and treatment differ in length")
    if max_ratio < 0 or caliper < 0:
        raise StudyError("max_ratio and caliper must be >= 0")
    if len(ps) and (np.isnan(ps).any() or ps.min() < 0 or ps.max() > 1):
        raise StudyError("propensity scores must be probabilities in [0, 1]")
    reverse = allow_reverse_match and t.sum() > (1 - t).sum()
    if reverse:
        t = 1 - t
    order = np.argsort(ps, kind="stable")
    score = ps[order]
    if caliper <= 0 or len(ps) == 0 or score.min() == score.max():
        cal = 9999.0
    elif caliper_scale == "standardized":
        cal = caliper * float(np.std(score, ddof=1))
    elif caliper_scale == "standardized logit":
        score = _logit(score)
        fin = score[np.isfinite(score)]
        cal = caliper * float(np.std(fin, ddof=1)) if len(fin) > 1 else 9999.0
    else:
        cal = caliper
    ratio = 999 if max_ratio == 0 else max_ratio
    strata_sorted = _greedy(score, t[order], ratio, cal)
    out = np.full(len(ps), -1, dtype=np.int64)
    out[order] = strata_sorted
    return out


def _greedy(score_arr: np.ndarray, t: np.ndarray, max_ratio: int, caliper: float) -> np.ndarray:
    # Plain Python lists and floats: the loop is scalar work, where numpy indexing is slow.
    n = len(score_arr)
    comp_arr = np.flatnonzero(t == 0)  # positions of comparators, ascending score
    treated_arr = np.flatnonzero(t == 1)
    m, n_treated = len(comp_arr), len(treated_arr)
    score = score_arr.tolist()
    comp = comp_arr.tolist()
    treated = treated_arr.tolist()
    # Comparators before each target (by position): its nearest candidates are ranks k-1 and k.
    rank_of = dict(zip(treated, np.searchsorted(comp_arr, treated_arr).tolist(), strict=True))
    stratum = [-1] * n
    sizes: list[int] = []
    free = _Free(m)
    matched_comparators = 0
    inf = math.inf

    def nearest(i: int) -> list[tuple[float, int, int]]:
        k = rank_of[i]
        out = []
        b = free.before(k - 1) if k > 0 else -1
        if b >= 0:
            d = abs(score[i] - score[comp[b]])
            out.append((d if d == d else inf, i, b))
        a = free.after(k) if k < m else m
        if a < m:
            d = abs(score[i] - score[comp[a]])
            out.append((d if d == d else inf, i, a))
        return out

    for target_ratio in range(1, max_ratio + 1):
        heap: list[tuple[float, int, int]] = []
        for i in treated:
            s_t = stratum[i]
            if s_t == -1 or sizes[s_t] < target_ratio:
                heap.extend(nearest(i))
        if not heap:
            break
        heapq.heapify(heap)
        matched_this_round = 0
        while heap and matched_this_round < n_treated and matched_comparators < m:
            d, i, r = heapq.heappop(heap)
            if not d < caliper:
                break
            c = comp[r]
            s_t = stratum[i]
            if s_t != -1 and sizes[s_t] >= target_ratio:
                continue
            if stratum[c] == -1:
                if s_t == -1:
                    s_t = len(sizes)
                    sizes.append(0)
                    stratum[i] = s_t
                stratum[c] = s_t
                sizes[s_t] += 1
                free.take(r)
                matched_this_round += 1
                matched_comparators += 1
            else:
                # The comparator went to another target: offer this one its nearest free comparator.
                cands = nearest(i)
                if cands:
                    heapq.heappush(heap, min(cands))
        if matched_comparators == m or matched_this_round == 0:
            break
    return np.asarray(stratum, dtype=np.int64)


def stratify_by_ps(
    ps: np.ndarray,
    treatment: np.ndarray,
    *,
    number_of_strata: int = 5,
    base_selection: Literal["all", "target", "comparator"] = "all",
) -> np.ndarray:
    """Stratum 1..k per row: cuts at the quantiles of the base population's scores."""
    ps = np.asarray(ps, dtype=float)
    t = np.asarray(treatment).astype(int)
    if number_of_strata < 1:
        raise StudyError("number_of_strata must be at least 1")
    if not len(ps):
        return np.zeros(0, dtype=np.int64)
    base = {"all": ps, "target": ps[t == 1], "comparator": ps[t == 0]}[base_selection]
    cuts = np.unique(np.quantile(base, np.arange(1, number_of_strata) / number_of_strata)) if len(base) else []
    breaks = np.unique(np.r_[0.0, cuts, 1.0])
    breaks[0] = -1.0  # so that 0 falls in the first stratum
    if len(breaks) - 1 <= 1:
        return np.ones(len(ps), dtype=np.int64)
    # cut(..., right = TRUE): interval (b[j-1], b[j]] is stratum j.
    return np.searchsorted(breaks, ps, side="left").astype(np.int64)
