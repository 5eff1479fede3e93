"""Propensity scores: regularised logistic regression of treatment on a large sparse covariate set.

As OHDSI CohortMethod's `createPs`: covariates are tidied (rare ones dropped, continuous ones scaled
by their largest absolute value, constant ones removed); covariates correlating with treatment above
0.5 are reported as the likely exposure definition leaking into the covariates (CohortMethod's
`errorOnHighCorrelation`); each arm is down-sampled to `max_cohort_size_for_fitting` before fitting,
and the intercept corrected for the sampling (King and Zeng 2001, eq. 7) when scoring everyone.

The penalty is a prior on the coefficients, as in Cyclops: `normal` (ridge, variance v: penalty
sum(b^2) / 2v) or `laplace` (lasso, penalty sqrt(2/v) sum|b|), the intercept unpenalised. The prior
variance is chosen by K-fold cross-validation of the predictive log likelihood over a grid. Because
v is a property of the coefficients and not of the sample size, the search runs on a random subset
(`cv_max_rows`) and the final fit on the whole fitting sample.

A fit that cannot be made (an empty arm, no covariates, a covariate that is the treatment) is
reported in `PsFit.error` and the propensity score set to the treatment, as CohortMethod does with
stopOnError = FALSE: nobody can then be matched, and the analysis says why instead of crashing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field
from scipy import optimize, stats

from mercia import limits
from mercia.errors import StudyError
from mercia.model_doc import field_docs

_Variance = Annotated[float, Field(gt=0, le=limits.MAX_RANGE_VALUE)]


@field_docs
class PsSettings(BaseModel):
    """The propensity model: a regularised logistic regression of treatment on the covariates
    (CohortMethod's createPs with Cyclops), its prior variance chosen by cross-validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prior: Literal["normal", "laplace"] = Field(
        "normal", description="the coefficients' prior: normal (ridge penalty) or laplace (lasso penalty)"
    )
    variance: float | None = Field(
        None, gt=0, le=limits.MAX_RANGE_VALUE, description="fixed prior variance; None: cross-validate"
    )
    cv_variances: list[_Variance] = Field(
        default_factory=lambda: [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0], max_length=limits.MAX_LIST,
        description="prior variances tried by cross-validation, smallest first (larger: weaker penalty); "
        "the search stops after the held-out likelihood falls twice in a row",
    )
    cv_folds: int = Field(5, ge=2, le=20, description="folds of the cross-validation (stratified by treatment)")
    cv_max_rows: int = Field(
        20_000, ge=100, le=limits.MAX_INT32,
        description="the cross-validation runs on a random sample of at most this many persons",
    )
    max_cohort_size_for_fitting: int = Field(
        250_000, ge=0, le=limits.MAX_INT32,
        description="each arm is down-sampled to this many persons for fitting (everyone is scored, the "
        "intercept corrected); 0: no down-sampling",
    )
    min_fraction: float = Field(
        0.001, ge=0, lt=1, description="drop covariates non-zero in fewer than this fraction of the persons"
    )
    error_on_high_correlation: bool = Field(
        True,
        description="refuse to fit when a covariate correlates with treatment above high_correlation "
        "(probably the exposure itself; the analysis then says which)",
    )
    high_correlation: float = Field(
        0.5, gt=0, le=1, description="absolute correlation with treatment counted as high"
    )
    exclude_covariate_ids: list[Annotated[int, Field(ge=limits.MIN_INT64, le=limits.MAX_INT64)]] = Field(
        default_factory=list, max_length=limits.MAX_CONCEPT_SET_ITEMS,
        description="covariate ids (concept_id * 1000 + analysis id) left out of the propensity model",
    )
    seed: int = Field(  # numpy and scikit-learn take 0 to 2**32 - 1
        1, ge=0, le=limits.MAX_INT32, description="seed of the down-sampling and cross-validation folds"
    )
    max_iter: int = Field(
        1000, ge=10, le=limits.MAX_ITERATIONS, description="iterations of the optimiser at most, per fit"
    )


@dataclass
class PsFit:
    """Propensity and preference scores for every row, and how the model was fitted (site-side)."""

    ps: np.ndarray
    preference: np.ndarray
    error: str | None
    covariate_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    intercept: float = 0.0
    coef: np.ndarray = field(default_factory=lambda: np.zeros(0))  # on the covariates' own scale
    variance: float | None = None
    cv: pd.DataFrame | None = None
    high_correlation: pd.DataFrame | None = None
    auc: float | None = None
    sampled: bool = False
    n_covariates_offered: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def preference_score(ps: np.ndarray, treatment: np.ndarray) -> np.ndarray:
    """Walker et al. (2013): the propensity score with the treated share's log-odds taken out."""
    p = float(np.mean(treatment))
    if p in (0.0, 1.0):
        return np.full(len(ps), np.nan)
    ps = np.minimum(ps, 0.9999999)
    with np.errstate(divide="ignore"):
        x = np.exp(np.log(ps / (1 - ps)) - np.log(p / (1 - p)))
    return x / (x + 1)


def equipoise(preference: np.ndarray, bounds: tuple[float, float] = (0.3, 0.7)) -> float:
    """Share of rows whose preference score lies in `bounds` (CohortMethod: 0.3 to 0.7)."""
    if not len(preference):
        return float("nan")
    return float(np.mean((preference >= bounds[0]) & (preference <= bounds[1])))


def auc(score: np.ndarray, treatment: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    t = treatment.astype(bool)
    n1, n0 = int(t.sum()), int((~t).sum())
    if not n1 or not n0:
        return float("nan")
    r = stats.rankdata(score)
    return float((r[t].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def univariable_correlation(X: sp.csr_matrix, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column with y (as Cyclops::getUnivariableCorrelation)."""
    n = X.shape[0]
    mx = np.asarray(X.mean(axis=0)).ravel()
    mx2 = np.asarray(X.multiply(X).mean(axis=0)).ravel()
    my = float(y.mean())
    mxy = np.asarray(X.T @ y).ravel() / n
    vx = mx2 - mx**2
    vy = my - my**2
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (mxy - mx * my) / np.sqrt(vx * vy)
    return np.where(vx > 0, r, np.nan)


def _tidy(X: sp.csr_matrix, min_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Columns kept (rare and constant ones dropped) and their scale (max |value|)."""
    n = X.shape[0]
    csc = X.tocsc()
    nnz = np.diff(csc.indptr)
    absmax = np.zeros(X.shape[1])
    if csc.nnz:
        nonempty = nnz > 0
        absmax[nonempty] = np.maximum.reduceat(np.abs(csc.data), csc.indptr[:-1][nonempty])
    # A column non-zero in every row with one value is constant, so the intercept already says it.
    colmin = np.asarray(abs(csc).min(axis=0).todense()).ravel() if n else np.zeros(X.shape[1])
    constant = (nnz == n) & (colmin == absmax)
    keep = (nnz >= max(1, min_fraction * n)) & ~constant & (absmax > 0)
    return np.flatnonzero(keep), absmax


def _objective(X: sp.csr_matrix, XT: sp.csr_matrix, y: np.ndarray, var: float):
    def fg(b: np.ndarray) -> tuple[float, np.ndarray]:
        e = X @ b[1:] + b[0]
        f = float(np.sum(np.logaddexp(0, e) - y * e)) + float(b[1:] @ b[1:]) / (2 * var)
        r = 1 / (1 + np.exp(-e)) - y
        return f, np.r_[r.sum(), XT @ r + b[1:] / var]

    return fg


def _fit(X: sp.csr_matrix, y: np.ndarray, var: float, prior: str, b0: np.ndarray | None, max_iter: int,
         gtol: float = 1e-5) -> np.ndarray:
    """Maximum a posteriori coefficients [intercept, b...] under the prior."""
    p = X.shape[1]
    start = np.zeros(p + 1) if b0 is None else b0.copy()
    if b0 is None:
        m = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
        start[0] = np.log(m / (1 - m))
    if prior == "normal":
        res = optimize.minimize(_objective(X, X.T.tocsr(), y, var), start, jac=True, method="L-BFGS-B",
                                options={"maxiter": max_iter, "gtol": gtol, "maxcor": 20})
        return res.x
    try:
        from glum import GeneralizedLinearRegressor
    except ImportError:  # pragma: no cover - depends on the environment
        raise StudyError("the laplace prior needs the glum package (pip install glum); or use prior: normal") from None
    lam = np.sqrt(2.0 / var)  # Laplace prior with variance v: density exp(-sqrt(2/v)|b|)
    m = GeneralizedLinearRegressor(family="binomial", alpha=lam / X.shape[0], l1_ratio=1.0, scale_predictors=False,
                                   max_iter=max_iter, start_params=None if b0 is None else b0)
    m.fit(X.tocsc(), y)
    return np.r_[m.intercept_, m.coef_]


def _loglik(X: sp.csr_matrix, y: np.ndarray, b: np.ndarray) -> float:
    e = X @ b[1:] + b[0]
    return float(np.sum(y * e - np.logaddexp(0, e)))


def _cross_validate(X: sp.csr_matrix, y: np.ndarray, s: PsSettings, rng: np.random.Generator) -> pd.DataFrame:
    n = X.shape[0]
    idx = np.arange(n) if n <= s.cv_max_rows else np.sort(rng.choice(n, s.cv_max_rows, replace=False))
    Xs, ys = X[idx], y[idx]
    # Folds stratified by treatment, so every fold has both arms.
    fold = np.empty(len(ys), dtype=int)
    for arm in (0, 1):
        k = np.flatnonzero(ys == arm)
        fold[k] = rng.permutation(len(k)) % s.cv_folds
    variances = sorted(s.cv_variances)
    ll: list[float] = []
    warm: list[np.ndarray | None] = [None] * s.cv_folds
    for v in variances:
        total = 0.0
        for f in range(s.cv_folds):
            tr, te = fold != f, fold == f
            # Warm starts along the path (the solution under a narrower prior is close to the next),
            # and a loose tolerance on the summed gradient: held-out likelihoods differ between
            # variances in their first digits, and the final fit is made tightly.
            warm[f] = _fit(Xs[tr], ys[tr], v, s.prior, warm[f], s.max_iter, gtol=1e-3)
            total += _loglik(Xs[te], ys[te], warm[f])
        ll.append(total)
        # The held-out likelihood is unimodal in the variance in practice: stop after two falls in a
        # row rather than fit the widest (slowest) priors.
        if len(ll) >= 3 and ll[-1] < ll[-2] < ll[-3]:
            break
    variances = variances[: len(ll)]
    return pd.DataFrame({"variance": variances, "cv_loglik": ll, "rows": len(ys)})


def fit_ps(X: sp.csr_matrix, covariate_ids: np.ndarray, treatment: np.ndarray,
           settings: PsSettings | None = None) -> PsFit:
    """Fit the propensity model and score every row of `X` (treatment 1 = target, 0 = comparator)."""
    s = settings or PsSettings()
    t = np.asarray(treatment, dtype=float)
    n = len(t)
    if X.shape[0] != n or len(covariate_ids) != X.shape[1]:
        raise StudyError(f"X is {X.shape} but there are {n} treatments and {len(covariate_ids)} covariate ids")

    def failed(msg: str, **kw: object) -> PsFit:
        return PsFit(ps=t.copy(), preference=preference_score(t, t) if n else t.copy(), error=msg, **kw)

    if n == 0:
        return failed("no subjects in the population, so no propensity model can be fitted")
    if t.min() == t.max():
        return failed("the target or comparator cohort is empty, so no propensity model can be fitted")
    rng = np.random.default_rng(s.seed)
    fit_rows = np.arange(n)
    sampled = False
    if s.max_cohort_size_for_fitting:
        parts = []
        for arm in (1, 0):
            k = np.flatnonzero(t == arm)
            if len(k) > s.max_cohort_size_for_fitting:
                k = np.sort(rng.choice(k, s.max_cohort_size_for_fitting, replace=False))
                sampled = True
            parts.append(k)
        fit_rows = np.sort(np.concatenate(parts))
    ids = np.asarray(covariate_ids, dtype=np.int64)
    X = X.tocsr()
    offered = ~np.isin(ids, s.exclude_covariate_ids)
    Xf = X[fit_rows][:, np.flatnonzero(offered)]
    cols, scale = _tidy(Xf, s.min_fraction)
    cols_all = np.flatnonzero(offered)[cols]
    scale = scale[cols]
    if not len(cols_all):
        return failed("no covariates are left for the propensity model (all rare or constant)",
                      n_covariates_offered=int(offered.sum()))
    Xfit = Xf[:, cols] @ sp.diags(1.0 / scale)
    y = t[fit_rows]
    corr = univariable_correlation(Xfit.tocsr(), y)
    high = np.abs(np.nan_to_num(corr)) > s.high_correlation
    high_df = pd.DataFrame({"covariate_id": ids[cols_all[high]], "correlation": corr[high]})
    if s.error_on_high_correlation and high.any():
        return failed(
            f"{int(high.sum())} covariate(s) correlate with treatment above {s.high_correlation} (covariate ids "
            f"{', '.join(map(str, high_df['covariate_id'].head(5)))}): probably the exposure itself; add its "
            "concepts to the covariate settings' excluded_concept_ids",
            high_correlation=high_df, n_covariates_offered=int(offered.sum()))
    Xfit = Xfit.tocsr()
    cv = None
    if s.variance is None:
        cv = _cross_validate(Xfit, y, s, rng)
        var = float(cv.loc[cv["cv_loglik"].idxmax(), "variance"])
    else:
        var = s.variance
    b = _fit(Xfit, y, var, s.prior, None, s.max_iter)
    coef = b[1:] / scale  # back to the covariates' own scale
    intercept = float(b[0])
    if sampled:
        # King and Zeng (2001), eq. 7: the sample's treated share differs from the population's.
        ys, yp = y.mean(), t.mean()
        intercept -= np.log(ys / (1 - ys)) - np.log(yp / (1 - yp))
    eta = X[:, cols_all] @ coef + intercept
    ps = np.round(1 / (1 + np.exp(-eta)), 10)
    return PsFit(ps=ps, preference=preference_score(ps, t), error=None, covariate_ids=ids[cols_all],
                 intercept=intercept, coef=coef, variance=var, cv=cv, high_correlation=high_df,
                 auc=auc(ps, t), sampled=sampled, n_covariates_offered=int(offered.sum()))
