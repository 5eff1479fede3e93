"""Exact federated regression, the DataSHIELD way: Newton-Raphson over summed site summaries.

Each round the hub sends the current coefficients `beta` to every site. A site answers with sums over
its own rows only: the score X'(y - mu), the information X'WX, its log-likelihood and its counts.
The log-likelihood of the pooled rows is the sum of the sites' log-likelihoods, so its gradient and
Hessian are the sums of theirs: the hub's Newton step is exactly the step a pooled-data fit would
take, and it converges to the same estimates (to floating-point rounding). No row leaves a site.

Site side:  glm_site_summary(X, y, beta, "binomial" | "poisson", offset=None) -> SiteSummary
            cox_summary(CoxData, beta, ties) -> SiteSummary   (each site its own stratum)
Hub side:   federated_glm(site_summaries_fn, p, family) -> FederatedFit
            federated_cox(site_summaries_fn, p) -> FederatedFit

`site_summaries_fn(beta)` returns one SiteSummary per site; in-process it is a closure over site
data, later the hub calls nodes over HTTP. A site with fewer than `min_count` rows or events (or
non-events, for a binary outcome) is refused before its summary is used: see
docs/explanation/pooling.md for why. Over HTTP a node also refuses, before the first round, a model
any of whose levels is small (`mercia.disclosure.model_support`), and every refusal and every fit
that does not converge reaches the researcher as the one `MODEL_REFUSED` answer. The messages here
carry no coefficient sizes or counts either: whether and how a fit diverges can turn on one person.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy import special, stats

from mercia.analyses.solvers import Evaluation, logistic_terms, newton_maximise
from mercia.analyses.survival import CoxData, cox_site_summary
from mercia.disclosure import ModelInfo, ReleasedTable, ResultTable
from mercia.errors import DisclosureError
from mercia.federation.pooling import PoolingError

__all__ = [
    "ConvergenceError",
    "FederatedFit",
    "SiteRefusedError",
    "SiteSummary",
    "cox_summary",
    "federated_cox",
    "federated_glm",
    "glm_site_summary",
    "in_process",
    "summary_from_released",
    "summary_table",
]

Family = Literal["binomial", "poisson"]
DEFAULT_MIN_COUNT = 10


class ConvergenceError(PoolingError):
    """Newton-Raphson did not converge (e.g. perfect separation, a constant or collinear covariate)."""


class SiteRefusedError(PoolingError, DisclosureError):
    """A site's summary would disclose too much (too few rows or events) and is not used."""


@dataclass
class SiteSummary:
    """What one site sends in one round: sums over its rows at `beta`, never the rows themselves."""

    beta: np.ndarray
    score: np.ndarray
    information: np.ndarray
    loglik: float
    n: int
    n_events: int
    site: str = "site"
    # rows without the event (binary outcomes): as disclosive as events when few
    n_nonevents: int | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (the node sends released counts only, and no non-events: see node/rounds.py)."""
        return {
            "beta": self.beta.tolist(),
            "score": self.score.tolist(),
            "information": self.information.tolist(),
            "loglik": self.loglik,
            "n": self.n,
            "n_events": self.n_events,
            "site": self.site,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> SiteSummary:
        return cls(
            beta=np.asarray(d["beta"], dtype=float),
            score=np.asarray(d["score"], dtype=float),
            information=np.asarray(d["information"], dtype=float),
            loglik=float(d["loglik"]),  # type: ignore[arg-type]
            n=int(d["n"]),  # type: ignore[call-overload]
            n_events=int(d["n_events"]),  # type: ignore[call-overload]
            site=str(d.get("site", "site")),
            n_nonevents=None if d.get("n_nonevents") is None else int(d["n_nonevents"]),  # type: ignore[call-overload]
        )


@dataclass
class FederatedFit:
    """A model fitted across sites; the same shape for logistic, Poisson and Cox."""

    model: str
    terms: list[str]
    coef: np.ndarray
    se: np.ndarray
    covariance: np.ndarray
    loglik: float
    n: int
    n_events: int
    n_sites: int
    iterations: int
    converged: bool
    alpha: float = 0.05
    sites: list[str] = field(default_factory=list)

    @property
    def z(self) -> np.ndarray:
        return self.coef / self.se

    @property
    def p_values(self) -> np.ndarray:
        return 2 * stats.norm.sf(np.abs(self.z))

    @property
    def ci_lower(self) -> np.ndarray:
        return self.coef - float(stats.norm.ppf(1 - self.alpha / 2)) * self.se

    @property
    def ci_upper(self) -> np.ndarray:
        return self.coef + float(stats.norm.ppf(1 - self.alpha / 2)) * self.se

    @property
    def ratio_name(self) -> str:
        return {"logistic": "or", "poisson": "rr", "cox": "hr"}.get(self.model, "ratio")

    def summary(self) -> pd.DataFrame:
        """One row per term: coefficient, SE, z, p, Wald interval, and exp() of them (OR, RR, HR)."""
        r = self.ratio_name
        return pd.DataFrame(
            {
                "term": self.terms,
                "coef": self.coef,
                "se": self.se,
                "z": self.z,
                "p": self.p_values,
                "ci_lower": self.ci_lower,
                "ci_upper": self.ci_upper,
                r: np.exp(self.coef),
                f"{r}_lower": np.exp(self.ci_lower),
                f"{r}_upper": np.exp(self.ci_upper),
            }
        )


# ------------------------------------------------------------------------------------------ site side


def _site_arrays(
    X: np.ndarray, y: np.ndarray, beta: Sequence[float] | np.ndarray, offset: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2:
        raise PoolingError(f"X must be a 2-D matrix (rows x terms), got shape {X.shape}")
    n, p = X.shape
    if y.shape != (n,):
        raise PoolingError(f"y has shape {y.shape} but X has {n} rows; give one outcome per row")
    b = np.asarray(beta, dtype=float)
    if b.shape != (p,):
        raise PoolingError(f"beta has {b.size} values but the model has {p} terms")
    off = np.zeros(n) if offset is None else np.asarray(offset, dtype=float)
    if off.shape != (n,):
        raise PoolingError(f"offset has shape {off.shape} but X has {n} rows; give one offset per row")
    for name, a in (("X", X), ("y", y), ("offset", off), ("beta", b)):
        if not np.isfinite(a).all():
            raise PoolingError(f"{name} holds missing or infinite values; drop or impute those rows first")
    return X, y, b, off


def glm_site_summary(
    X: np.ndarray,
    y: np.ndarray,
    beta: Sequence[float] | np.ndarray,
    family: Family,
    offset: np.ndarray | None = None,
    *,
    site: str = "site",
    min_count: int = DEFAULT_MIN_COUNT,
) -> SiteSummary:
    """This site's score, information and log-likelihood at `beta` (canonical links: logit, log).

    `offset` is added to the linear predictor (log person-time for Poisson rates). The site refuses
    (SiteRefusedError) when it has too few rows or events to answer safely, so nothing leaves.
    """
    X, y, b, off = _site_arrays(X, y, beta, offset)
    eta = X @ b + off
    if family == "binomial":
        if not np.isin(y, (0.0, 1.0)).all():
            raise PoolingError("a logistic model needs y coded 0/1 (no other values)")
        loglik, score, information, _ = logistic_terms(X, y, b, off)
        n_non: int | None = int(len(y) - y.sum())
    elif family == "poisson":
        if (y < 0).any():
            raise PoolingError("a Poisson model needs non-negative counts in y")
        with np.errstate(over="ignore"):
            mu = np.exp(eta)
        loglik = float(y @ eta - mu.sum() - special.gammaln(y + 1).sum())
        score, information = X.T @ (y - mu), (X * mu[:, None]).T @ X
        n_non = None
    else:
        raise PoolingError(f"unknown family {family!r}: use 'binomial' (logistic) or 'poisson'")
    summary = SiteSummary(
        beta=b.copy(),
        score=score,
        information=information,
        loglik=loglik,
        n=len(y),
        n_events=round(float(y.sum())),
        site=site,
        n_nonevents=n_non,
    )
    _guard(summary, min_count, X.shape[1])
    return summary


def cox_summary(
    data: CoxData,
    beta: Sequence[float] | np.ndarray,
    ties: Literal["efron", "breslow"] = "efron",
    *,
    site: str = "site",
    min_count: int = DEFAULT_MIN_COUNT,
) -> SiteSummary:
    """This site's Cox partial-likelihood summary at `beta`; its risk sets never mix with another site's,
    so the federated fit is stratified by site (and by any strata within the site)."""
    c = cox_site_summary(data, beta, ties)
    summary = SiteSummary(c.beta, c.score, c.information, c.loglik, c.n_obs, c.n_events, site)
    _guard(summary, min_count, data.X.shape[1])
    return summary


def _guard(s: SiteSummary, min_count: int, p: int) -> None:
    """Refuse a summary that rests on too few rows or events.

    The score at beta is X'(y - mu): with few rows, or few events, it comes close to listing them
    (one event: X'y is that person's covariates). The same check runs at the site (nothing leaves)
    and again at the hub (a remote node may be misconfigured).
    """
    # The reasons are named, never counted: the message may travel, and a count here is exact.
    reasons = []
    if s.n < min_count:
        reasons.append("rows")
    if s.n <= p:
        reasons.append("rows for its terms (the summaries would determine the rows)")
    if s.n_events < min_count:
        reasons.append("events")
    if s.n_nonevents is not None and s.n_nonevents < min_count:
        reasons.append("rows without the event")
    if reasons:
        raise SiteRefusedError(
            f"site {s.site!r} is refused: too few {', '.join(reasons)} (the minimum is {min_count}). Its "
            "score and information at a given beta could reveal individual rows; leave the site out "
            "or pool it with another at the site, not at the hub"
        )


def summary_table(
    summary: SiteSummary, name: str = "federated_round", *, min_level_count: int | None = None
) -> ResultTable:
    """The summary as a 'model' ResultTable, so the node sends it through `release()` like any result.

    One row per term: beta, score, a row of the information matrix, and the log-likelihood (repeated).
    The site's policy then blocks it when the model rests on too few rows or events (or too few
    residual degrees of freedom), on top of the `min_count` guard. `min_level_count` (the design's
    sparsest level, `mercia.disclosure.model_support.support_count`) goes on every row as a count
    column, so release() withholds the whole summary when any level is small.
    """
    p = len(summary.beta)
    data = pd.DataFrame({"term": [f"b{j}" for j in range(p)], "beta": summary.beta, "score": summary.score})
    for j in range(p):
        data[f"info_{j}"] = summary.information[:, j]
    data["loglik"] = summary.loglik
    counts = []
    if min_level_count is not None:
        data["min_level_count"] = np.int64(min_level_count)
        counts.append("min_level_count")
    # non-events (binary outcomes) are not in ModelInfo: the min_count guard has checked them already
    return ResultTable(
        name=name,
        kind="model",
        data=data,
        count_columns=counts,
        model=ModelInfo(df_resid=summary.n - p, n_obs=summary.n, n_events=summary.n_events),
    )


def summary_from_released(released: ReleasedTable) -> SiteSummary:
    """Back from a released 'model' table to a SiteSummary at the hub (counts as released: rounded)."""
    site = released.site or released.name
    if released.kind != "model" or released.status == "blocked":
        raise SiteRefusedError(
            f"site {site!r} did not release its summary ({released.kind}, {released.status}): its "
            "disclosure policy blocks a model resting on so few rows or events; leave the site out"
        )
    d = released.data
    p = len(d)
    info = d[[f"info_{j}" for j in range(p)]].to_numpy(dtype=float)
    mi = released.model_info or {}
    return SiteSummary(
        beta=d["beta"].to_numpy(dtype=float),
        score=d["score"].to_numpy(dtype=float),
        information=info,
        loglik=float(d["loglik"].iloc[0]),
        n=int(mi.get("n_obs") or 0),
        n_events=int(mi.get("n_events") or 0),
        site=site,
    )


# ------------------------------------------------------------------------------------------- hub side


def in_process(
    summarise: Callable[..., SiteSummary], sites: Sequence[object], **kwargs: object
) -> Callable[[np.ndarray], list[SiteSummary]]:
    """A `site_summaries_fn` over in-process site data: `summarise(site_data, beta, **kwargs)` for each.

    Example: in_process(lambda d, b: glm_site_summary(d.X, d.y, b, "binomial"), datasets).
    """

    def fn(beta: np.ndarray) -> list[SiteSummary]:
        return [summarise(s, beta, **kwargs) for s in sites]

    return fn


def _collect(
    fn: Callable[[np.ndarray], list[SiteSummary]], beta: np.ndarray, p: int, min_count: int
) -> tuple[float, np.ndarray, np.ndarray, list[SiteSummary]]:
    summaries = list(fn(beta))
    if not summaries:
        raise PoolingError("no site answered: at least one site summary is needed for a federated fit")
    for s in summaries:
        if s.score.shape != (p,) or s.information.shape != (p, p):
            raise PoolingError(
                f"site {s.site!r} answered for {s.score.shape[0]} terms but the model has {p}; "
                "every site must use the same design (same terms, same order)"
            )
        if not np.array_equal(s.beta, beta):
            raise PoolingError(f"site {s.site!r} answered for a different beta than the hub sent")
        _guard(s, min_count, p)
    ll = math.fsum(s.loglik for s in summaries)
    score = np.sum([s.score for s in summaries], axis=0)
    info = np.sum([s.information for s in summaries], axis=0)
    return ll, score, info, summaries


def _newton(
    fn: Callable[[np.ndarray], list[SiteSummary]],
    p: int,
    *,
    max_iter: int,
    tol: float,
    min_count: int,
    what: str,
    strict: bool,
    perfect_fit_possible: bool = False,
) -> tuple[np.ndarray, np.ndarray, float, list[SiteSummary], int, bool]:
    if p < 1:
        raise PoolingError("the model has no terms; give at least one column (e.g. an intercept)")
    if max_iter < 1 or not tol > 0:
        raise PoolingError(f"max_iter must be >= 1 and tol > 0 (got {max_iter}, {tol})")
    hint = (
        "this is what perfect or quasi-perfect separation looks like (a covariate, or a combination, "
        "predicts the outcome exactly, or a level has no events), or a constant or collinear covariate; "
        "drop or merge that covariate"
    )

    def evaluate(beta: np.ndarray) -> Evaluation:
        ll, score, info, summaries = _collect(fn, beta, p, min_count)
        return Evaluation(ll, score, info, summaries)

    # the one Newton-Raphson and its stopping rule: mercia.analyses.solvers
    res = newton_maximise(evaluate, np.zeros(p), max_iter=max_iter, tol=tol)
    if res.status == "singular":
        raise ConvergenceError(f"{what}: the summed information matrix is singular; {hint}")
    if res.status == "not_finite":
        raise ConvergenceError(f"{what}: the Newton step is not finite; {hint}")
    if res.status == "no_ascent":
        raise ConvergenceError(f"{what} did not converge: no step increases the log-likelihood; {hint}")
    beta, ll, info, summaries = res.beta, res.at.loglik, res.at.information, res.at.state
    it, converged = res.iterations, res.converged
    if converged and perfect_fit_possible and ll > -1e-8:
        # A binary outcome fitted perfectly: every fitted probability is numerically 0 or 1, so the
        # score and information vanish and the step is 0, which looks like convergence. The MLE is
        # at infinity; the coefficients returned here would be arbitrary.
        raise ConvergenceError(f"{what} did not converge: the outcome is predicted perfectly; {hint}")
    if not converged:
        msg = f"{what} did not converge in {max_iter} rounds; {hint}"
        if strict:
            raise ConvergenceError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        raise ConvergenceError(f"{what}: the information at the estimate is singular; {hint}") from None
    return beta, cov, ll, summaries, it, converged


def _fit(
    model: str,
    beta: np.ndarray,
    cov: np.ndarray,
    ll: float,
    summaries: list[SiteSummary],
    it: int,
    converged: bool,
    terms: Sequence[str] | None,
    alpha: float,
) -> FederatedFit:
    p = len(beta)
    names = list(terms) if terms is not None else [f"x{i}" for i in range(p)]
    if len(names) != p:
        raise PoolingError(f"{len(names)} term names for {p} coefficients")
    diag = np.diag(cov)
    if (diag <= 0).any():
        raise ConvergenceError(f"{model}: the estimated variance of a coefficient is not positive")
    return FederatedFit(
        model=model,
        terms=names,
        coef=beta,
        se=np.sqrt(diag),
        covariance=cov,
        loglik=ll,
        n=sum(s.n for s in summaries),
        n_events=sum(s.n_events for s in summaries),
        n_sites=len(summaries),
        iterations=it,
        converged=converged,
        alpha=alpha,
        sites=[s.site for s in summaries],
    )


def federated_glm(
    site_summaries_fn: Callable[[np.ndarray], list[SiteSummary]],
    p: int,
    family: Family,
    max_iter: int = 50,
    tol: float = 1e-10,
    *,
    terms: Sequence[str] | None = None,
    min_count: int = DEFAULT_MIN_COUNT,
    alpha: float = 0.05,
    strict: bool = True,
) -> FederatedFit:
    """Fit a logistic ('binomial') or Poisson GLM across sites by Newton-Raphson on summed summaries.

    Converges when both the step (relative to the coefficients) and the relative change in deviance
    are below `tol`. Raises ConvergenceError when it does not (`strict=False`: warns and returns the
    last iterate with converged=False), SiteRefusedError when a site is below `min_count`.
    """
    if family not in ("binomial", "poisson"):
        raise PoolingError(f"unknown family {family!r}: use 'binomial' (logistic) or 'poisson'")
    model = "logistic" if family == "binomial" else "poisson"
    beta, cov, ll, summaries, it, conv = _newton(
        site_summaries_fn, p, max_iter=max_iter, tol=tol, min_count=min_count,
        what=f"federated {model} regression", strict=strict, perfect_fit_possible=family == "binomial",
    )  # fmt: skip
    return _fit(model, beta, cov, ll, summaries, it, conv, terms, alpha)


def federated_cox(
    site_summaries_fn: Callable[[np.ndarray], list[SiteSummary]],
    p: int,
    max_iter: int = 50,
    tol: float = 1e-10,
    *,
    terms: Sequence[str] | None = None,
    min_count: int = DEFAULT_MIN_COUNT,
    alpha: float = 0.05,
    strict: bool = True,
) -> FederatedFit:
    """Fit a Cox model across sites, stratified by site: each site returns `cox_summary(...)` at beta.

    The summed partial log-likelihood is that of a pooled fit with `strata=site`, so the estimates
    equal lifelines' CoxPHFitter(strata=...) on the pooled rows.
    """
    beta, cov, ll, summaries, it, conv = _newton(
        site_summaries_fn, p, max_iter=max_iter, tol=tol, min_count=min_count,
        what="federated Cox regression", strict=strict,
    )  # fmt: skip
    return _fit("cox", beta, cov, ll, summaries, it, conv, terms, alpha)
