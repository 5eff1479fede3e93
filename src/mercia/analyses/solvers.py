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
per event, the risk-set sums with the Efron share of the tied events removed. What does not depend on
beta (the sort by stratum and time, the tied-time groups, each event's Efron share) is made once per
fit by `cox_risk_sets`; its `likelihood` (log partial likelihood, score, information) and
`efron_means` (the weighted risk-set means behind Schoenfeld residuals) are both built on
`cox_risk_sums`, and `cox_partial_likelihood` / `efron_means` are the one-call forms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "MAX_HALVINGS",
    "TOL",
    "CoxRiskSets",
    "Evaluation",
    "NewtonResult",
    "cox_partial_likelihood",
    "cox_risk_sets",
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

SHORT = 64  # segments of at most this many groups are scanned together, by doubling


@dataclass(frozen=True, eq=False)
class _Scan:
    """Cumulative sums along the last axis restarting at each segment (the tied-time groups of one stratum):
    a long segment by np.cumsum, the short ones all at once by doubling (Hillis-Steele: pass k adds
    the value 2^k places up, within the segment), so 100,000 matched sets cost two array passes."""

    long: tuple[slice, ...]
    passes: tuple[tuple[np.ndarray, np.ndarray], ...]  # per pass, (to, from) positions

    @classmethod
    def of(cls, lengths: np.ndarray) -> _Scan:
        seg_start = np.cumsum(lengths) - lengths
        is_long = lengths > SHORT
        firsts, sizes = seg_start[is_long].tolist(), lengths[is_long].tolist()
        long = tuple(slice(a, a + n) for a, n in zip(firsts, sizes, strict=True))
        passes = []
        longest_short = int(lengths[~is_long].max(initial=0))
        if longest_short > 1:
            size = int(lengths.sum())
            pos = np.arange(size) - np.repeat(seg_start, lengths)
            short = np.repeat(~is_long, lengths)
            d = 1
            while d < longest_short:
                to = np.flatnonzero(short & (pos >= d))
                passes.append((to, to - d))
                d *= 2
        return cls(long, tuple(passes))

    def __call__(self, y: np.ndarray) -> None:
        """In place, along the last axis of a 1-d or 2-d `y`; `y` may be a view (a reversed one scans
        each segment from its end)."""
        for sl in self.long:
            np.cumsum(y[..., sl], axis=-1, out=y[..., sl])
        rows = [y] if y.ndim == 1 else list(y)  # row by row: 1-d fancy indexing is the fast kind
        for to, frm in self.passes:
            for row in rows:
                row[to] += row[frm]


def _stable_order(key: np.ndarray) -> np.ndarray:
    """np.argsort(key, kind="stable"); whole numbers that fit in 16 bits (days of follow-up, a few
    strata) are sorted as such, by numpy's radix sort, several times faster."""
    if key.dtype.kind in "iuf" and len(key) and np.iinfo(np.int16).min <= key.min() and key.max() <= np.iinfo(
            np.int16).max:
        small = key.astype(np.int16)
        if np.array_equal(small, key):
            return np.argsort(small, kind="stable")
    return np.argsort(key, kind="stable")


@dataclass(frozen=True, eq=False)
class CoxRiskSets:
    """Everything about a Cox model's risk sets that does not depend on beta, worked out once per fit
    (`cox_risk_sets`); each Newton step then calls `likelihood(beta)`, i.e. `cox_risk_sums(self, beta)`.

    Rows are sorted by stratum, then latest time first, so the risk set of a time is a prefix of its
    stratum; a tied-time group is a run of equal (stratum, time)."""

    XT: np.ndarray  # (p, rows) sorted covariates less `center`, each a contiguous row
    center: np.ndarray  # (p,) per covariate, the value of it nearest its mean
    e: np.ndarray  # (rows,) sorted events
    ties: Ties
    start: np.ndarray  # (groups,) first sorted row of each tied-time group
    stratum_start: np.ndarray  # (strata,) first sorted row of each stratum
    stratum_rows: np.ndarray  # (strata,) rows of each stratum
    sorted_group: np.ndarray  # (rows,) group of each sorted row
    row_group: np.ndarray  # (rows,) group of each input row, in input order
    ev: np.ndarray  # sorted positions of the event rows
    ev_start: np.ndarray  # positions in `ev` where a group's event rows begin
    ev_groups: np.ndarray  # the groups those are
    event_group: np.ndarray  # (events,) group of each event, latest time first
    event_stratum: np.ndarray  # (events,) stratum of each event
    c: np.ndarray  # (events,) Efron share of the tied events' weight taken off (Breslow: 0)
    x_events: np.ndarray  # (p,) sum of x - center over events
    down: _Scan  # cumulative sums down the groups of each stratum (the risk sets)
    up: _Scan  # the same, from each stratum's last group up (applied to reversed group arrays)

    @property
    def n_groups(self) -> int:
        return len(self.start)

    def likelihood(self, beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Log partial likelihood, score and information at beta."""
        p = self.XT.shape[0]
        if not len(self.ev):
            return 0.0, np.zeros(p), np.zeros((p, p))
        r = cox_risk_sums(self, beta)
        loglik = r.eta_events - float(np.sum(np.log(r.phi0) + r.shift))
        meanT = r.phi1.T / r.phi0  # (p, events)
        score = self.x_events - meanT.sum(axis=1)
        # sum over events of S2 / phi0, S2 = sum over the risk set of w x x' less the Efron share c of
        # the tied events': a group's rows are in the risk set of every later group of its stratum
        # (later = earlier time), so each row carries the sum of 1 / phi0 over the events of its own
        # group and of those after it, and an event row loses c / phi0 of its own group's events;
        # then it is one weighted sum of x x' over the rows, X' diag(v) X
        inv = 1 / r.phi0
        after = np.bincount(r.event_group, weights=inv, minlength=self.n_groups)
        self.up(after[::-1])
        own = np.bincount(r.event_group, weights=self.c * inv, minlength=self.n_groups)
        v = r.w * (after[self.sorted_group] - self.e * own[self.sorted_group])
        info = (self.XT * v) @ self.XT.T - meanT @ meanT.T
        return loglik, score, info

    def efron_means(self, beta: np.ndarray) -> np.ndarray:
        """Per input row, the Efron-weighted risk-set mean of x at its time (the average over the events
        tied there of S1 / S0): Schoenfeld residuals are x minus it, on event rows."""
        p, n = self.XT.shape
        if not len(self.ev):
            return np.zeros((n, p))
        r = cox_risk_sums(self, beta)
        means = np.zeros((self.n_groups, p))
        np.add.at(means, r.event_group, r.phi1 / r.phi0[:, None])
        counts = np.bincount(r.event_group, minlength=self.n_groups)
        means /= np.maximum(counts, 1)[:, None]
        means[counts > 0] += self.center
        return means[self.row_group]


def cox_risk_sets(
    X: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    strata: np.ndarray | None = None,
    ties: Ties = "efron",
) -> CoxRiskSets:
    """The risk sets of a Cox model, each stratum its own (Efron or Breslow ties): sort order, tied-time
    groups and each event's Efron share, for every beta of a fit."""
    X = np.asarray(X, dtype=float)
    n = X.shape[0]
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    st = None if strata is None else np.asarray(strata)
    order = _stable_order(-t)  # latest first: the risk set of a time is a prefix
    new_stratum = np.zeros(n, dtype=bool)
    new_stratum[:1] = True
    if st is not None and n and not bool((st == st[0]).all()):
        order = order[_stable_order(st[order])]  # by stratum, then latest first
        s = st[order]
        new_stratum[1:] = s[1:] != s[:-1]
    # x less a value it takes (x - center is exactly 0 where x is constant, so is its information, as
    # the model's is), near its mean (so the sums of w x x' and the means' squares cancel less); the
    # likelihood does not change: a constant added to x'beta in a stratum cancels out of it
    p = X.shape[1]
    center = X[np.abs(X[:1000] - X.mean(axis=0)).argmin(axis=0), np.arange(p)] if n else np.zeros(p)
    XT = np.take(np.ascontiguousarray(X.T), order, axis=1)  # (p, rows): each covariate a contiguous row
    XT -= center[:, None]
    t, e_sorted = t[order], e[order]
    new_group = new_stratum.copy()
    new_group[1:] |= t[1:] != t[:-1]
    start = np.flatnonzero(new_group)
    G = len(start)
    sorted_group = np.cumsum(new_group) - 1
    stratum_start = np.flatnonzero(new_stratum)
    stratum_groups = np.diff(np.r_[np.flatnonzero(new_stratum[start]), G]).astype(np.int64)
    d = np.add.reduceat(e_sorted, start) if G else np.zeros(0)
    di = d.astype(int)
    event_group = np.repeat(np.arange(G), di)  # one entry per event
    if ties == "efron":
        c = (np.arange(len(event_group)) - np.repeat(np.cumsum(di) - di, di)) / d[event_group]
    else:
        c = np.zeros(len(event_group))
    ev = np.flatnonzero(e_sorted)
    ev_group = sorted_group[ev]
    ev_start = np.flatnonzero(np.r_[True, ev_group[1:] != ev_group[:-1]]) if len(ev) else np.zeros(0, np.int64)
    row_group = np.empty(n, dtype=np.int64)
    row_group[order] = sorted_group
    group_stratum = np.cumsum(new_stratum)[start] - 1
    return CoxRiskSets(
        XT=XT,
        center=center,
        e=e_sorted,
        ties=ties,
        start=start,
        stratum_start=stratum_start,
        stratum_rows=np.diff(np.r_[stratum_start, n]),
        sorted_group=sorted_group,
        row_group=row_group,
        ev=ev,
        ev_start=ev_start,
        ev_groups=ev_group[ev_start],
        event_group=event_group,
        event_stratum=group_stratum[event_group],
        c=c,
        x_events=XT @ e_sorted,
        down=_Scan.of(stratum_groups),
        up=_Scan.of(stratum_groups[::-1]),
    )


@dataclass(frozen=True)
class RiskSums:
    """Per event (rows with event = 1, grouped by stratum and tied time, latest time first): the risk
    set sums S0 = sum w and S1 = sum w x with the Efron share of the tied events taken off (Breslow:
    nothing taken off); w = exp(x'beta - shift), `shift` per event being its stratum's largest x'beta
    (so exp() cannot overflow; it cancels in every ratio)."""

    phi0: np.ndarray  # (events,)
    phi1: np.ndarray  # (events, p), a transposed view
    shift: np.ndarray  # (events,)
    event_group: np.ndarray  # (events,) index of the event's tied-time group
    w: np.ndarray  # (rows,) the weights of the sorted rows
    eta_events: float  # sum of x'beta over events


def cox_risk_sums(sets: CoxRiskSets, beta: np.ndarray) -> RiskSums:
    """The risk-set sums of a Cox model at beta (the one implementation of Efron's ties in Mercia).

    The risk set of a time is every row of its stratum with time at or after it. With d events tied at
    a time, Efron's method gives the k-th of them (k = 0 .. d-1) the risk set less k/d of the tied
    events' weight; Breslow's gives them all the whole risk set.
    """
    XT, e, ev = sets.XT, sets.e, sets.ev
    p, n = XT.shape
    G = sets.n_groups
    eta = np.asarray(beta, dtype=float) @ XT
    if n == 0:
        return RiskSums(np.zeros(0), np.zeros((0, p)), np.zeros(0), sets.event_group, np.zeros(0), 0.0)
    m = np.maximum.reduceat(eta, sets.stratum_start)  # each stratum's largest eta
    w = np.exp(eta - np.repeat(m, sets.stratum_rows))
    wXT = XT * w
    # per group, [sum w, sum w x]; then down each stratum's groups: the risk sets
    risk = np.empty((1 + p, G))
    risk[0] = np.add.reduceat(w, sets.start)
    risk[1:] = np.add.reduceat(wXT, sets.start, axis=1)
    sets.down(risk)
    # per group, the same over its events only (the tied events' weight)
    tied = np.zeros((1 + p, G))
    if len(ev):
        ew = np.empty((1 + p, len(ev)))
        ew[0] = w[ev] * e[ev]
        ew[1:] = wXT[:, ev] * e[ev]
        tied[:, sets.ev_groups] = np.add.reduceat(ew, sets.ev_start, axis=1)
    g = sets.event_group
    phi = risk[:, g] - sets.c * tied[:, g]
    return RiskSums(
        phi0=phi[0],
        phi1=phi[1:].T,
        shift=m[sets.event_stratum],
        event_group=g,
        w=w,
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
    """Log partial likelihood, score and information of a (stratified) Cox model at beta (for one
    evaluation; a fit makes `cox_risk_sets` once and calls its `likelihood` per step)."""
    return cox_risk_sets(X, time, event, strata, ties).likelihood(np.asarray(beta, dtype=float))


def efron_means(
    X: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    beta: np.ndarray,
    strata: np.ndarray | None = None,
) -> np.ndarray:
    """Per row, the Efron-weighted risk-set mean of x at its time: `CoxRiskSets.efron_means`."""
    return cox_risk_sets(X, time, event, strata, "efron").efron_means(np.asarray(beta, dtype=float))
