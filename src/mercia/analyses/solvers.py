"""The numerical cores every fitted model shares: one Newton-Raphson, one Cox partial likelihood.

`newton_maximise` is the only Newton-Raphson loop in Mercia. Cox (survival.py, one site or pooled),
the conditional Cox and Poisson models of cohort_method.py, the federated GLM and Cox fits
(federation/glm.py, one evaluation a round over the sites) and the logistic recalibration of
prediction/evaluation.py all call it, so they stop by one rule:

* a Newton step solves information @ step = score; while the log-likelihood at beta + step is lower
  than at beta (beyond 1e-12 of it, relative) or not finite, the step is halved, at most 30 times;
* converged when the accepted step is small relative to the coefficients,
  max|step| <= tol * (1 + max|beta|), and the log-likelihood has stopped changing,
  |delta loglik| <= tol * (|loglik| + 0.1) (for a GLM, -2 loglik is the deviance up to a constant,
  so this is R's glm.fit test); tol = 1e-10. Both are needed: under separation the likelihood creeps
  towards its bound while the coefficients keep marching away;
* otherwise it stops after `max_iter` steps, or at once when the information is singular, the step is
  not finite, or no halving of it raises the likelihood; each caller turns the `status` into its own
  error, warning or missing estimate.

`cox_risk_sums` is the only implementation of Efron's (and Breslow's) handling of tied event times:
per event, the risk-set sums with the Efron share of the tied events removed. `cox_partial_likelihood`
(log partial likelihood, score, information) and `efron_means` (the weighted risk-set means behind
Schoenfeld residuals) are both built on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "MAX_HALVINGS",
    "TOL",
    "Evaluation",
    "NewtonResult",
    "cox_partial_likelihood",
    "cox_risk_sums",
    "efron_means",
    "logistic_terms",
    "newton_maximise",
]

TOL = 1e-10
MAX_HALVINGS = 30
Ties = Literal["efron", "breslow"]
Status = Literal["converged", "max_iter", "singular", "not_finite", "no_ascent"]


@dataclass(frozen=True)
class Evaluation:
    """The log-likelihood, its gradient (score) and negative Hessian (information) at one beta, and
    whatever the caller wants back with them (`state`: e.g. the site summaries of a federated round)."""

    loglik: float
    score: np.ndarray
    information: np.ndarray
    state: Any = None


@dataclass(frozen=True)
class NewtonResult:
    beta: np.ndarray
    at: Evaluation  # the evaluation at `beta`
    iterations: int
    status: Status

    @property
    def converged(self) -> bool:
        return self.status == "converged"


def newton_maximise(
    evaluate: Callable[[np.ndarray], Evaluation],
    beta0: np.ndarray,
    *,
    max_iter: int = 100,
    tol: float = TOL,
) -> NewtonResult:
    """Maximise a log-likelihood by Newton-Raphson with step halving (the rule: see the module)."""
    beta = np.asarray(beta0, dtype=float).copy()
    cur = evaluate(beta)
    it = 0
    while it < max_iter:
        it += 1
        try:
            step = np.linalg.solve(np.atleast_2d(cur.information), np.atleast_1d(cur.score))
        except np.linalg.LinAlgError:
            return NewtonResult(beta, cur, it, "singular")
        if not np.isfinite(step).all():
            return NewtonResult(beta, cur, it, "not_finite")
        floor = cur.loglik - 1e-12 * (1 + abs(cur.loglik))
        for _ in range(MAX_HALVINGS + 1):
            new = evaluate(beta + step)
            if np.isfinite(new.loglik) and new.loglik >= floor:
                break
            step = step / 2
        else:
            return NewtonResult(beta, cur, it, "no_ascent")
        old = cur.loglik
        beta, cur = beta + step, new
        small_step = float(np.max(np.abs(step))) <= tol * (1 + float(np.max(np.abs(beta))))
        small_change = abs(cur.loglik - old) <= tol * (abs(cur.loglik) + 0.1)
        if small_step and small_change:
            return NewtonResult(beta, cur, it, "converged")
    return NewtonResult(beta, cur, it, "max_iter")


def logistic_terms(
    X: np.ndarray, y: np.ndarray, beta: np.ndarray, offset: np.ndarray | None = None
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Logistic regression's log-likelihood, score, information and fitted probabilities at beta."""
    from scipy import special

    eta = X @ beta if offset is None else X @ beta + offset
    mu = special.expit(eta)
    # -log(1 + e^(-eta)) for events, -log(1 + e^eta) otherwise: no overflow for large |eta| and no
    # cancellation between large terms (y'eta - sum log(1 + e^eta) loses digits when fitted well)
    loglik = float(-np.logaddexp(0.0, np.where(y == 1.0, -eta, eta)).sum())
    w = mu * (1 - mu)
    return loglik, X.T @ (y - mu), (X * w[:, None]).T @ X, mu


# ------------------------------------------------------------------------------ Cox partial likelihood


@dataclass(frozen=True)
class RiskSums:
    """Per event (rows with event = 1, grouped by stratum and tied time, latest time first): the risk
    set sums S0 = sum w and S1 = sum w x with the Efron share of the tied events taken off (Breslow:
    nothing taken off); w = exp(x'beta - shift), `shift` per event being its stratum's largest x'beta
    (so exp() cannot overflow; it cancels in every ratio). S2 = sum w x x' is kept per tied-time group
    (`s2`, and `t2` over the group's events): per event it is s2[g] - c * t2[g]."""

    phi0: np.ndarray  # (events,)
    phi1: np.ndarray  # (events, p)
    c: np.ndarray  # (events,) the share of the tied events' weight taken off
    s2: np.ndarray | None  # (groups, p, p), when asked for
    t2: np.ndarray | None  # (groups, p, p), when asked for
    shift: np.ndarray  # (events,)
    event_group: np.ndarray  # (events,) index of the event's tied-time group
    row_group: np.ndarray  # (rows,) index of each input row's tied-time group, in input order
    n_groups: int
    eta_events: float  # sum of x'beta over events


def _cumsum_within(v: np.ndarray, stratum: np.ndarray | None) -> np.ndarray:
    """Cumulative sums down the groups, restarting at each stratum (groups sorted by stratum)."""
    if stratum is None:
        return np.cumsum(v, axis=0)
    shape = v.shape
    flat = pd.DataFrame(v.reshape(shape[0], -1)).groupby(stratum, sort=False).cumsum().to_numpy()
    return flat.reshape(shape)


def cox_risk_sums(
    X: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    beta: np.ndarray,
    strata: np.ndarray | None = None,
    ties: Ties = "efron",
    *,
    second: bool = True,
) -> RiskSums:
    """The risk-set sums of a Cox model at beta, each stratum its own risk sets (Efron or Breslow ties).

    The risk set of a time is every row of its stratum with time at or after it. With d events tied at
    a time, Efron's method gives the k-th of them (k = 0 .. d-1) the risk set less k/d of the tied
    events' weight; Breslow's gives them all the whole risk set.
    """
    X = np.asarray(X, dtype=float)
    n, p = X.shape
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    b = np.asarray(beta, dtype=float)
    if n == 0:
        none = np.zeros(0, dtype=np.int64)
        empty = np.zeros((0, p, p)) if second else None
        return RiskSums(np.zeros(0), np.zeros((0, p)), np.zeros(0), empty, empty, np.zeros(0), none, none, 0, 0.0)
    st = None if strata is None else np.asarray(strata)
    one_stratum = st is None or bool((st == st[0]).all())
    order = np.argsort(-t, kind="stable")  # latest first: the risk set of a time is a prefix
    if one_stratum:
        s = np.zeros(n, dtype=np.int64)
    else:
        assert st is not None
        order = order[np.argsort(st[order], kind="stable")]  # by stratum, then latest first
        s = st[order]
    XT = np.ascontiguousarray(X[order].T)  # (p, rows): each covariate a contiguous row
    t, e = t[order], e[order]
    eta = b @ XT
    new_stratum = np.r_[True, s[1:] != s[:-1]]
    start = np.flatnonzero(new_stratum | np.r_[True, t[1:] != t[:-1]])
    G = len(start)
    # each row's shift: its stratum's largest eta
    stratum_start = np.flatnonzero(new_stratum)
    m_stratum = np.maximum.reduceat(eta, stratum_start)
    m = np.repeat(m_stratum, np.diff(np.r_[stratum_start, n]))
    w = np.exp(eta - m)
    group_stratum = None if one_stratum else s[start]
    wXT = XT * w
    s0 = np.add.reduceat(w, start)
    s1 = np.add.reduceat(wXT, start, axis=1).T
    d = np.add.reduceat(e, start)
    ev = np.flatnonzero(e)
    sorted_group = np.repeat(np.arange(G), np.diff(np.r_[start, n]))
    ev_group = sorted_group[ev]
    we = w[ev] * e[ev]
    weXT, XeT = wXT[:, ev] * e[ev], XT[:, ev]
    t0 = np.bincount(ev_group, weights=we, minlength=G)
    t1 = np.stack([np.bincount(ev_group, weights=weXT[j], minlength=G) for j in range(p)], axis=1)
    di = d.astype(int)
    rep = np.repeat(np.arange(G), di)  # one entry per event
    if ties == "efron":
        c = (np.arange(len(rep)) - np.repeat(np.cumsum(di) - di, di)) / d[rep]
    else:
        c = np.zeros(len(rep))
    s2 = t2 = None
    if second:
        # one column pair at a time (S2 is symmetric); t2 over the event rows only
        s2 = np.empty((G, p, p))
        t2 = np.empty((G, p, p))
        for j in range(p):
            for k in range(j, p):
                s2[:, j, k] = s2[:, k, j] = np.add.reduceat(wXT[j] * XT[k], start)
                t2[:, j, k] = t2[:, k, j] = np.bincount(ev_group, weights=weXT[j] * XeT[k], minlength=G)
    # risk sets: cumulative sums down the groups of a stratum (one pass for S0, S1 and S2)
    sums = _cumsum_within(np.column_stack([s0, s1] + ([] if s2 is None else [s2.reshape(G, p * p)])),
                          group_stratum)
    s0, s1 = sums[:, 0], sums[:, 1:p + 1]
    if s2 is not None:
        s2 = np.ascontiguousarray(sums[:, p + 1:]).reshape(G, p, p)
    row_group = np.empty(n, dtype=np.int64)
    row_group[order] = sorted_group
    return RiskSums(
        phi0=s0[rep] - c * t0[rep],
        phi1=s1[rep] - c[:, None] * t1[rep],
        c=c,
        s2=s2,
        t2=t2,
        shift=m[start][rep],
        event_group=rep,
        row_group=row_group,
        n_groups=len(start),
        eta_events=float(eta[ev] @ e[ev]),
    )


def cox_partial_likelihood(
    X: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    beta: np.ndarray,
    strata: np.ndarray | None = None,
    ties: Ties = "efron",
) -> tuple[float, np.ndarray, np.ndarray]:
    """Log partial likelihood, score and information of a (stratified) Cox model at beta."""
    X = np.asarray(X, dtype=float)
    p = X.shape[1]
    e = np.asarray(event, dtype=float)
    if len(e) == 0 or not e.any():
        return 0.0, np.zeros(p), np.zeros((p, p))
    r = cox_risk_sums(X, time, e, beta, strata, ties)
    assert r.s2 is not None and r.t2 is not None
    loglik = r.eta_events - float(np.sum(np.log(r.phi0) + r.shift))
    mean = r.phi1 / r.phi0[:, None]
    score = (X * e[:, None]).sum(axis=0) - mean.sum(axis=0)
    # sum over events of (s2[g] - c t2[g]) / phi0, gathered per tied-time group first
    a = np.bincount(r.event_group, weights=1 / r.phi0, minlength=r.n_groups)
    b = np.bincount(r.event_group, weights=r.c / r.phi0, minlength=r.n_groups)
    info = np.einsum("g,gij->ij", a, r.s2) - np.einsum("g,gij->ij", b, r.t2) - np.einsum("ki,kj->ij", mean, mean)
    return loglik, score, info


def efron_means(
    X: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    beta: np.ndarray,
    strata: np.ndarray | None = None,
) -> np.ndarray:
    """Per row, the Efron-weighted risk-set mean of x at its time (the average over the events tied
    there of S1 / S0): Schoenfeld residuals are x minus it, on event rows."""
    X = np.asarray(X, dtype=float)
    n, p = X.shape
    e = np.asarray(event, dtype=float)
    if n == 0 or not e.any():
        return np.zeros((n, p))
    r = cox_risk_sums(X, time, e, beta, strata, "efron", second=False)
    means = np.zeros((r.n_groups, p))
    np.add.at(means, r.event_group, r.phi1 / r.phi0[:, None])
    counts = np.bincount(r.event_group, minlength=r.n_groups)
    means /= np.maximum(counts, 1)[:, None]
    return means[r.row_group]
