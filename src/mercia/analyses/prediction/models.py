"""Prediction models and how they are trained: a person-level split, k-fold cross-validation of the
hyperparameters on the training persons, and the final fit on all of them (as PatientLevelPrediction).

- L1-regularised (lasso) logistic regression, scikit-learn's liblinear solver. Covariates are divided
  by their largest absolute training value before fitting (PLP's normalisation), so one penalty suits
  binary and continuous covariates; the coefficients kept are on the original scale. The penalty
  strength is chosen by cross-validated log loss over a grid.
- Gradient boosting: scikit-learn's HistGradientBoostingClassifier, learning rate and tree size chosen
  by cross-validated log loss over a grid. `min_samples_leaf` keeps every leaf above the disclosure
  threshold of the built-in policies, so no leaf value describes a handful of persons.

The split is by person: all entries of a person fall in one part, stratified by whether the person
has the outcome (PLP's "stratified" split). Out-of-fold predictions of the chosen hyperparameters
give the cross-validation performance.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from mercia import limits
from mercia.errors import StudyError
from mercia.model_doc import field_docs

# Penalties and learning rates: scikit-learn takes only positive, finite ones.
_Positive = Annotated[float, Field(gt=0, le=limits.MAX_RANGE_VALUE)]


@field_docs
class LassoLogisticSettings(BaseModel):
    """L1 logistic regression; the inverse penalty C from a log grid chosen by cross-validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["lasso_logistic"] = Field("lasso_logistic", description="selects this model")
    c_grid: list[_Positive] = Field(
        default_factory=lambda: [float(c) for c in np.logspace(-3, 1, 9)],
        min_length=1,
        max_length=limits.MAX_LIST,
        description="inverse penalty strengths tried (larger: weaker penalty)",
    )
    max_iter: int = Field(1000, ge=10, le=limits.MAX_ITERATIONS, description="solver iterations at most, per fit")


@field_docs
class GradientBoostingSettings(BaseModel):
    """Histogram gradient boosting; learning rate x tree size grid chosen by cross-validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["gradient_boosting"] = Field("gradient_boosting", description="selects this model")
    learning_rates: list[_Positive] = Field(
        default_factory=lambda: [0.05, 0.1], min_length=1, max_length=limits.MAX_LIST,
        description="learning rates tried by cross-validation",
    )
    # scikit-learn needs at least 2 leaves
    max_leaf_nodes: list[Annotated[int, Field(ge=2, le=limits.MAX_INT32)]] = Field(
        default_factory=lambda: [7, 31], min_length=1, max_length=limits.MAX_LIST,
        description="tree sizes (leaves per tree at most) tried by cross-validation, with each learning rate",
    )
    max_iter: int = Field(100, ge=1, le=limits.MAX_ITERATIONS, description="boosting rounds")
    min_samples_leaf: int = Field(20, ge=1, le=limits.MAX_INT32, description="persons in a leaf at least")


ModelSettings = Annotated[LassoLogisticSettings | GradientBoostingSettings, Field(discriminator="type")]


def person_split(
    person_ids: NDArray[np.int64], y: NDArray[np.int64], test_fraction: float, n_folds: int, seed: int
) -> NDArray[np.int64]:
    """Per row: 0 for the test set, 1..n_folds for the cross-validation fold of a training person.

    Persons, not rows, are assigned: a person's rows share a part. Persons with and without the
    outcome are shuffled separately, the first `test_fraction` of each go to test, the rest to folds
    in turn, so every part has about the same outcome rate.
    """
    if not 0 < test_fraction < 1:
        raise StudyError(f"test_fraction {test_fraction} must be between 0 and 1 (0.25 is usual)")
    if n_folds < 2:
        raise StudyError(f"n_folds {n_folds}: cross-validation needs at least 2 folds")
    rng = np.random.default_rng(seed)
    persons, inverse = np.unique(person_ids, return_inverse=True)
    has_outcome = np.zeros(len(persons), dtype=bool)
    np.logical_or.at(has_outcome, inverse, y.astype(bool))
    part = np.empty(len(persons), dtype=np.int64)
    for stratum in (True, False):
        idx = np.flatnonzero(has_outcome == stratum)
        idx = idx[rng.permutation(len(idx))]
        n_test = round(len(idx) * test_fraction)
        part[idx[:n_test]] = 0
        part[idx[n_test:]] = np.arange(len(idx) - n_test) % n_folds + 1
    return part[inverse]


@dataclass
class TrainedModel:
    """A fitted model over `covariate_ids` (the columns it reads, in order)."""

    kind: Literal["lasso_logistic", "gradient_boosting"]
    covariate_ids: NDArray[np.int64]
    hyperparameters: dict[str, Any]
    cv_scores: list[dict[str, Any]]
    intercept: float = 0.0
    coefficients: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    estimator: Any = None

    def predict(self, X: sp.csr_matrix) -> NDArray[np.float64]:
        """Predicted risks for rows of X whose columns are `covariate_ids` in order."""
        if X.shape[1] != len(self.covariate_ids):
            raise StudyError(f"the model reads {len(self.covariate_ids)} covariates, X has {X.shape[1]} columns")
        if self.kind == "lasso_logistic":
            eta = self.intercept + np.asarray(X @ self.coefficients).ravel()
            return 1.0 / (1.0 + np.exp(-eta))
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="openmp"):
            return self.estimator.predict_proba(_dense(X))[:, 1]

    @property
    def n_parameters(self) -> int:
        """Parameters the fit estimated: non-zero coefficients and the intercept for the lasso; for
        boosting the trees' leaves."""
        if self.kind == "lasso_logistic":
            return int(np.count_nonzero(self.coefficients)) + 1
        # an upper bound (trees may stop short of max_leaf_nodes): conservative for residual dof
        return int(self.estimator.n_iter_ * self.hyperparameters["max_leaf_nodes"])


def _dense(X: sp.csr_matrix) -> NDArray[np.float32]:
    return np.asarray(X.toarray(), dtype=np.float32)


def _log_loss(y: NDArray[np.int64], p: NDArray[np.float64]) -> float:
    q = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def _lasso(C: float, max_iter: int, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    # liblinear penalises the intercept as a feature of value intercept_scaling; a large value makes
    # that penalty negligible, as an unpenalised intercept should be. scikit-learn 1.8 spells the L1
    # penalty l1_ratio=1 and deprecates `penalty`.
    l1: dict[str, Any] = {"l1_ratio": 1.0} if _SKLEARN_18 else {"penalty": "l1"}
    return LogisticRegression(
        C=C, solver="liblinear", intercept_scaling=100.0, max_iter=max_iter, random_state=seed, **l1
    )


def _sklearn_at_least(major: int, minor: int) -> bool:
    from importlib.metadata import version

    parts = version("scikit-learn").split(".")
    return (int(parts[0]), int(parts[1])) >= (major, minor)


_SKLEARN_18 = _sklearn_at_least(1, 8)


def _fit_lasso(
    X: sp.csr_matrix, y: NDArray[np.int64], folds: NDArray[np.int64], s: LassoLogisticSettings, seed: int
) -> tuple[TrainedModel, NDArray[np.float64]]:
    scale = np.asarray(abs(X).max(axis=0).todense()).ravel()
    scale[scale == 0] = 1.0
    Xs = (X @ sp.diags(1.0 / scale)).tocsr()
    fold_ids = np.unique(folds)
    scores: list[dict[str, Any]] = []
    oof_by_c: dict[float, NDArray[np.float64]] = {}
    with warnings.catch_warnings():
        # liblinear's convergence warnings at the weakest penalties are expected in a grid
        warnings.filterwarnings("ignore", message=".*converge.*")
        for C in s.c_grid:
            oof = np.empty(len(y))
            for f in fold_ids:
                tr, va = folds != f, folds == f
                if y[tr].min() == y[tr].max():
                    raise StudyError("a cross-validation fold has no outcomes; use fewer folds or more data")
                m = _lasso(C, s.max_iter, seed).fit(Xs[tr], y[tr])
                oof[va] = m.predict_proba(Xs[va])[:, 1]
            oof_by_c[C] = oof
            scores.append({"C": C, "cv_log_loss": _log_loss(y, oof)})
        best = min(scores, key=lambda r: (r["cv_log_loss"], -r["C"]))["C"]
        final = _lasso(best, s.max_iter, seed).fit(Xs, y)
    model = TrainedModel(
        kind="lasso_logistic",
        covariate_ids=np.zeros(0, dtype=np.int64),
        hyperparameters={"C": best},
        cv_scores=scores,
        intercept=float(final.intercept_[0]),
        coefficients=final.coef_.ravel() / scale,
    )
    return model, oof_by_c[best]


def _gbm(lr: float, leaves: int, s: GradientBoostingSettings, seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        learning_rate=lr,
        max_leaf_nodes=leaves,
        max_iter=s.max_iter,
        min_samples_leaf=s.min_samples_leaf,
        early_stopping=False,
        random_state=seed,
    )


def _fit_gbm(
    X: sp.csr_matrix, y: NDArray[np.int64], folds: NDArray[np.int64], s: GradientBoostingSettings, seed: int
) -> tuple[TrainedModel, NDArray[np.float64]]:
    import sklearn.ensemble  # noqa: F401 - its OpenMP runtime must be loaded before it can be limited
    from threadpoolctl import threadpool_limits

    # One OpenMP thread: on a busy shared server (a site's) OpenMP threads spin against each other;
    # we measured a 1,500 x 20 fit at 0.6 s on one thread and 13.7 s on all, under load.
    with threadpool_limits(limits=1, user_api="openmp"):
        return _fit_gbm_grid(_dense(X), y, folds, s, seed)


def _fit_gbm_grid(
    Xd: NDArray[np.float32], y: NDArray[np.int64], folds: NDArray[np.int64], s: GradientBoostingSettings, seed: int
) -> tuple[TrainedModel, NDArray[np.float64]]:
    fold_ids = np.unique(folds)
    scores: list[dict[str, Any]] = []
    oof_by: dict[tuple[float, int], NDArray[np.float64]] = {}
    for lr in s.learning_rates:
        for leaves in s.max_leaf_nodes:
            oof = np.empty(len(y))
            for f in fold_ids:
                tr, va = folds != f, folds == f
                if y[tr].min() == y[tr].max():
                    raise StudyError("a cross-validation fold has no outcomes; use fewer folds or more data")
                oof[va] = _gbm(lr, leaves, s, seed).fit(Xd[tr], y[tr]).predict_proba(Xd[va])[:, 1]
            oof_by[(lr, leaves)] = oof
            scores.append({"learning_rate": lr, "max_leaf_nodes": leaves, "cv_log_loss": _log_loss(y, oof)})
    best = min(scores, key=lambda r: r["cv_log_loss"])
    key = (best["learning_rate"], best["max_leaf_nodes"])
    final = _gbm(*key, s, seed).fit(Xd, y)
    model = TrainedModel(
        kind="gradient_boosting",
        covariate_ids=np.zeros(0, dtype=np.int64),
        hyperparameters={"learning_rate": key[0], "max_leaf_nodes": key[1], "max_iter": s.max_iter,
                         "min_samples_leaf": s.min_samples_leaf},
        cv_scores=scores,
        estimator=final,
    )
    return model, oof_by[key]


def fit_model(
    X: sp.csr_matrix,
    y: NDArray[np.int64],
    folds: NDArray[np.int64],
    covariate_ids: NDArray[np.int64],
    settings: LassoLogisticSettings | GradientBoostingSettings,
    seed: int = 42,
) -> tuple[TrainedModel, NDArray[np.float64]]:
    """Choose hyperparameters by cross-validation over `folds` (one fold id per row), refit on all
    rows; returns the model and the out-of-fold predictions of the chosen hyperparameters."""
    y = np.asarray(y, dtype=np.int64)
    if X.shape[0] != len(y) or len(folds) != len(y):
        raise StudyError("X, y and folds must have one entry per row")
    if X.shape[1] != len(covariate_ids):
        raise StudyError("X must have one column per covariate id")
    if y.min() == y.max():
        raise StudyError(
            "the training persons all have the same outcome (all with or all without); a model needs both"
        )
    if X.shape[1] == 0:
        raise StudyError("no covariates to fit a model on; widen the covariate settings")
    if settings.type == "lasso_logistic":
        model, oof = _fit_lasso(X, y, folds, settings, seed)
    else:
        model, oof = _fit_gbm(X, y, folds, settings, seed)
    model.covariate_ids = np.asarray(covariate_ids, dtype=np.int64)
    return model, oof


def separating_covariates(X: sp.csr_matrix, y: NDArray[np.int64]) -> NDArray[np.int64]:
    """Columns that separate the outcome completely: non-zero in exactly the rows with the outcome
    (or in exactly those without). A logistic model without a penalty has no finite fit then."""
    y = np.asarray(y, dtype=bool)
    nz = (X != 0).astype(np.int64).tocsc()
    in_pos = np.asarray(nz[y].sum(axis=0)).ravel()
    in_neg = np.asarray(nz[~y].sum(axis=0)).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    complete = ((in_pos == n_pos) & (in_neg == 0)) | ((in_pos == 0) & (in_neg == n_neg))
    return np.flatnonzero(complete & (n_pos > 0) & (n_neg > 0))


def check_finite(p: NDArray[np.float64]) -> NDArray[np.float64]:
    if not np.isfinite(p).all():
        raise StudyError("the model gave a non-finite prediction; refit with a stronger penalty")
    return p


__all__ = [
    "GradientBoostingSettings",
    "LassoLogisticSettings",
    "ModelSettings",
    "TrainedModel",
    "check_finite",
    "fit_model",
    "person_split",
    "separating_covariates",
]
