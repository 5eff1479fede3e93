"""Patient-level prediction at one site: population, covariates, split, fit, evaluate, result tables.

`develop_model(cdm, target_id, outcome_id, settings)` returns the trained model (to save with
`save_model` and apply elsewhere) and an `AnalysisResult` whose tables pass the disclosure door:

- `<name>_attrition` (counts, sequential): entries, persons and outcomes after each population step.
- `<name>_performance` (model): per split (train, cv, test; external at another site) the AUC with
  its DeLong CI, Brier score, calibration in the large, calibration intercept and slope, E-statistics,
  with the persons and outcomes it rests on as count columns, and `min_level_count`: the fewer of
  the split's outcomes and non-outcomes, and of the model's own support. A split resting on
  few is withheld, and every split is when the model is.
- `<name>_risk_strata` (rates): persons, outcomes and expected outcomes (sum of predicted risks,
  protected as person-time is) per stratum of predicted risk (deciles by default), with each split's
  total; observed risk derived from the released counts. The calibration plot and the ROC curve of the
  report are drawn from this table, so they show only released numbers.
- `<name>_coefficients` (model, lasso only): the non-zero coefficients with the training persons
  having each covariate as a count column (a term resting on few is withheld), and on every row the
  model's support `min_level_count` (`mercia.disclosure.model_support`: the fewest training persons,
  outcomes or non-outcomes in either level of any covariate with a non-zero coefficient, or overall):
  when it is small no coefficient is released, since the others are fitted around the small group.

Nothing row-level is in any table: no predictions, no person ids, no thresholds at single persons.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mercia import limits
from mercia.analyses.notes import Note, NoteCode
from mercia.analyses.prediction.evaluation import Performance, evaluate, risk_strata
from mercia.analyses.prediction.models import (
    LassoLogisticSettings,
    ModelSettings,
    TrainedModel,
    check_finite,
    fit_model,
    person_split,
    separating_covariates,
)
from mercia.analyses.prediction.population import PopulationSettings, build_population
from mercia.analyses.result import AnalysisResult
from mercia.cdm import Cdm
from mercia.disclosure import ModelInfo, RateSpec, ResultTable
from mercia.disclosure.model_support import support_count
from mercia.errors import StudyError
from mercia.features import CovariateData, CovariateSettings, build_covariates
from mercia.model_doc import field_docs

PERFORMANCE_COLUMNS = (
    "auc",
    "auc_lower",
    "auc_upper",
    "brier",
    "brier_scaled",
    "mean_predicted_risk",
    "calibration_in_the_large",
    "calibration_intercept",
    "calibration_slope",
    "separated",
    "e_avg",
    "e_90",
    "e_max",
)


@field_docs
class PredictionSettings(BaseModel):
    """Everything a prediction study fixes: population, covariates, model, split and evaluation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    population: PopulationSettings = Field(
        PopulationSettings(), description="the study population and its time at risk"
    )
    covariates: CovariateSettings = Field(CovariateSettings(), description="the candidate predictors")
    model: ModelSettings = Field(
        default_factory=LassoLogisticSettings,
        description="the model, chosen by `type:` lasso_logistic or gradient_boosting",
    )
    test_fraction: float = Field(
        0.25, gt=0, lt=1, description="share of persons held out as the test set (split by person, stratified)"
    )
    n_folds: int = Field(3, ge=2, le=20, description="cross-validation folds on the training persons")
    seed: int = Field(42, ge=0, le=limits.MAX_INT32, description="seed of the split, the folds and the model")
    min_covariate_persons: int = Field(
        10,
        ge=1,
        le=limits.MAX_INT32,
        description="covariates non-zero in fewer training persons, or with fewer training outcomes or "
        "non-outcomes among the persons with or without them, are not used: a coefficient resting on a "
        "handful of persons or outcomes describes them, and the model would not be released (10 is above "
        "the built-in policies' thresholds)",
    )
    risk_strata: int = Field(10, ge=2, le=100, description="strata of predicted risk (PLP: deciles)")
    alpha: float = Field(
        0.05, gt=0, lt=1, description="1 - confidence level of the AUC's (DeLong) interval: 0.05 gives 95%"
    )


@dataclass
class PredictionRun:
    """What a prediction run leaves at the site: the model, its result tables and what it rests on."""

    model: TrainedModel
    result: AnalysisResult
    settings: PredictionSettings
    target_id: int
    outcome_id: int
    covariate_names: dict[int, str]
    covariate_persons: dict[int, int]
    performance: dict[str, Performance] = field(default_factory=dict)
    # the model's sparsest level in the training persons (model_support.support_count)
    support: int | None = None
    # row-level (split, person_id, outcome, predicted_risk): stays at the site, for local checks
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)


def covariates_for(cdm: Cdm, target_id: int, pop: pd.DataFrame, covariates: CovariateSettings) -> CovariateData:
    """Covariates of exactly the population's rows, in its order."""
    cd = build_covariates(cdm, [target_id], covariates, first_entry_only=False)
    rows = cd.rows.assign(cohort_start_date=pd.to_datetime(cd.rows["cohort_start_date"]))
    key = rows[["person_id", "cohort_start_date", "row_id"]]
    matched = pop[["person_id", "cohort_start_date"]].merge(key, how="left", on=["person_id", "cohort_start_date"])
    if matched["row_id"].isna().any():  # pragma: no cover - both read the same cohort rows
        raise StudyError("covariates are missing for some population rows; regenerate the target cohort")
    return cd.subset_rows(matched["row_id"].to_numpy(dtype=np.int64))


def attrition_table(name: str, attrition: pd.DataFrame) -> ResultTable:
    return ResultTable(
        name=f"{name}_attrition",
        kind="counts",
        data=attrition.reset_index(drop=True),
        dimensions=["step"],
        count_columns=["n_entries", "n_persons", "n_outcomes"],
        sequential=True,
    )


def performance_table(
    name: str, perf: dict[str, Performance], info: ModelInfo, support: int | None = None
) -> ResultTable:
    """One row per split; `support` is the model's own (`support_count`), None for a model applied
    as given (external validation: its coefficients were released where it was trained)."""
    rows = []
    for split, p in perf.items():
        d = p.to_dict()
        n, k = int(d["n_persons"]), int(d["n_outcomes"])
        # AUC and calibration with few outcomes (or few non-outcomes) rank and place those persons
        level = min(k, n - k, *([support] if support is not None else []))
        rows.append({"split": split, "n_persons": n, "n_outcomes": k, "min_level_count": max(level, 1),
                     **{c: float(d[c]) for c in PERFORMANCE_COLUMNS}})
    return ResultTable(
        name=f"{name}_performance",
        kind="model",
        data=pd.DataFrame(rows),
        count_columns=["n_persons", "n_outcomes", "min_level_count"],
        model=info,
    )


def strata_table(name: str, strata: dict[str, pd.DataFrame]) -> ResultTable:
    data = pd.concat([s.assign(split=split) for split, s in strata.items()], ignore_index=True)
    data["stratum"] = data["stratum"].astype(str).str.zfill(3)  # labels sort as strata do
    return ResultTable(
        name=f"{name}_risk_strata",
        kind="rates",
        data=data[["split", "stratum", "n_persons", "n_outcomes", "expected_outcomes"]],
        dimensions=["split", "stratum"],
        margins=["stratum"],
        count_columns=["n_persons", "n_outcomes"],
        exposure_columns=["expected_outcomes"],
        rates={"observed_risk": RateSpec(numerator="n_outcomes", denominator="n_persons")},
        total_label="Total",
    )


def coefficient_table(name: str, run: PredictionRun, info: ModelInfo, n_train: int) -> ResultTable:
    m = run.model
    nz = np.flatnonzero(m.coefficients)
    rows = [{"covariate_id": -1, "covariate_name": "(intercept)", "coefficient": m.intercept, "n_persons": n_train}]
    for j in nz:
        cid = int(m.covariate_ids[j])
        rows.append({"covariate_id": cid, "covariate_name": run.covariate_names.get(cid, str(cid)),
                     "coefficient": float(m.coefficients[j]), "n_persons": run.covariate_persons.get(cid, 0)})
    data = pd.DataFrame(rows)
    # ids are labels, not numbers to release or suppress
    data["covariate_id"] = data["covariate_id"].astype(str)
    # one count for the whole model on every row: released whole or not at all; covariates are levels
    # found in the data, so a withheld one's row (its name) goes with its estimate
    data["min_level_count"] = np.int64(run.support if run.support is not None else 1)
    return ResultTable(name=f"{name}_coefficients", kind="model", data=data,
                       count_columns=["n_persons", "min_level_count"], model=info,
                       data_levels=["covariate_id", "covariate_name"])


def develop_model(
    cdm: Cdm,
    target_id: int,
    outcome_id: int,
    settings: PredictionSettings | None = None,
    *,
    name: str = "prediction",
) -> PredictionRun:
    """Develop (train and internally validate) a prediction model on `cdm`; see the module doc."""
    settings = settings or PredictionSettings()
    pop, attrition = build_population(cdm, target_id, outcome_id, settings.population)
    n_outcomes = int(pop["outcome"].sum()) if len(pop) else 0
    if pop.empty:
        raise StudyError(
            f"the target cohort {target_id} has no entries left after the population steps; "
            "check the cohort was generated and the time-at-risk settings"
        )
    if n_outcomes == 0:
        raise StudyError(
            f"no outcomes: no one in the target population (cohort {target_id}) has an outcome "
            f"(cohort {outcome_id}) during time at risk; check the outcome cohort was generated and "
            "lengthen the time at risk"
        )
    y = pop["outcome"].to_numpy(dtype=np.int64)
    if n_outcomes == len(y):
        raise StudyError("every person in the target population has the outcome; there is nothing to predict")
    cd = covariates_for(cdm, target_id, pop, settings.covariates)
    folds = person_split(pop["person_id"].to_numpy(), y, settings.test_fraction, settings.n_folds, settings.seed)
    train, test = folds > 0, folds == 0
    for part, mask in (("test", test), ("training", train)):
        if y[mask].sum() == 0 or y[mask].sum() == mask.sum():
            raise StudyError(
                f"the {part} persons do not include both outcomes and non-outcomes ({int(y.sum())} outcomes "
                "in all); the population is too small for a prediction model"
            )
    if y[train].sum() < settings.n_folds:
        raise StudyError(
            f"only {int(y[train].sum())} training persons have the outcome, fewer than the "
            f"{settings.n_folds} cross-validation folds; use fewer folds or a larger population"
        )
    # Covariates used: at least min_covariate_persons training persons in each level (with and
    # without the covariate), and as many outcomes and non-outcomes in each. The released model must
    # rest on no small level (model_support); a covariate failing this would withhold every coefficient.
    X_train_all = cd.X[train]
    nonzero = X_train_all != 0
    counts = np.asarray(nonzero.sum(axis=0)).ravel()
    y_train = y[train].astype(float)
    events_with = np.asarray(nonzero.T @ y_train).ravel()
    without = int(train.sum()) - counts
    events_without = float(y_train.sum()) - events_with
    m = settings.min_covariate_persons
    keep = (
        (counts >= m) & (events_with >= m) & (counts - events_with >= m)
        & (without >= m) & (events_without >= m) & (without - events_without >= m)
    )  # fmt: skip
    if not keep.any():
        raise StudyError(
            f"no covariate has at least {m} training persons, outcomes and non-outcomes both among the persons "
            "with it and among those without it (min_covariate_persons); a model on fewer would rest on a "
            "handful of persons and would not be released. Use a larger population or a more common outcome"
        )
    cd = cd.subset_covariates(keep)
    counts = counts[keep]
    ids = cd.covariate_ids
    notes: list[Note] = []
    sep = separating_covariates(cd.X[train], y[train])
    if len(sep):
        # Which covariates separate, and how many, are read from the rows: the code says only that some do.
        notes.append(Note(NoteCode.SEPARATING_COVARIATES))
    model, oof = fit_model(cd.X[train], y[train], folds[train], ids, settings.model, settings.seed)
    preds = {
        "train": check_finite(model.predict(cd.X[train])),
        "cv": oof,
        "test": check_finite(model.predict(cd.X[test])),
    }
    truths = {"train": y[train], "cv": y[train], "test": y[test]}
    perf = {k: evaluate(truths[k], preds[k], settings.alpha) for k in preds}
    for k, p in perf.items():
        if p.separated:
            notes.append(Note(NoteCode.PREDICTIONS_SEPARATE, split=k))
    n_train = int(train.sum())
    # What the model rests on, level by level: the covariates it uses (the lasso's non-zero ones; a
    # boosted model's leaves are bounded by min_samples_leaf instead, see save_model) and the outcome.
    used = np.flatnonzero(model.coefficients) if model.kind == "lasso_logistic" else np.zeros(0, dtype=int)
    X_used = cd.X[train][:, used]
    X_used = X_used.toarray() if hasattr(X_used, "toarray") else np.asarray(X_used)
    support = support_count(X_used, y[train])
    info = ModelInfo(
        df_resid=float(n_train - model.n_parameters), n_obs=n_train, n_events=int(y[train].sum())
    )
    strata = {k: risk_strata(truths[k], preds[k], settings.risk_strata) for k in preds}
    covariate_names = dict(zip(ids.tolist(), cd.ref["covariate_name"].astype(str).tolist(), strict=True))
    covariate_persons = dict(zip(ids.tolist(), counts.astype(int).tolist(), strict=True))
    tables = {
        t.name: t
        for t in (
            attrition_table(name, attrition),
            performance_table(name, perf, info, support),
            strata_table(name, strata),
        )
    }
    run = PredictionRun(
        model=model,
        result=AnalysisResult("prediction", tables, notes=notes),
        settings=settings,
        target_id=target_id,
        outcome_id=outcome_id,
        covariate_names=covariate_names,
        covariate_persons=covariate_persons,
        performance=perf,
        support=support,
        predictions=pd.concat(
            [
                pd.DataFrame(
                    {"split": k, "person_id": pop["person_id"].to_numpy()[train if k != "test" else test],
                     "outcome": truths[k], "predicted_risk": preds[k]}
                )
                for k in preds
            ],
            ignore_index=True,
        ),
    )
    if model.kind == "lasso_logistic":
        t = coefficient_table(name, run, info, n_train)
        run.result.tables[t.name] = t
    return run


def prediction(
    cdm: Cdm, target_id: int, outcome_id: int, settings: PredictionSettings | None = None, *, name: str = "prediction"
) -> AnalysisResult:
    """The study-package entry point: develop a model and return its result tables only."""
    return develop_model(cdm, target_id, outcome_id, settings, name=name).result
