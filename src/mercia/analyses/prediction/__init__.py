"""Patient-level prediction (OHDSI PatientLevelPrediction semantics): study population with time at
risk, L1 logistic regression or gradient boosting on FeatureExtraction-style covariates, person-level
split with cross-validation, discrimination and calibration, saved models applied at other sites.

    run = develop_model(cdm, target_id=1, outcome_id=2, settings=PredictionSettings())
    save_model(run, "model/")                      # at the training site
    validation = apply_model("model/", other_cdm)  # at another site: external validation

Needs scikit-learn and statsmodels (the `stats` extra).
"""

from mercia.analyses.prediction.analysis import PredictionRun, PredictionSettings, develop_model, prediction
from mercia.analyses.prediction.evaluation import (
    Performance,
    auc_delong,
    brier,
    evaluate,
    risk_strata,
    weak_calibration,
)
from mercia.analyses.prediction.external import external_validation
from mercia.analyses.prediction.model_io import (
    LoadedModel,
    ModelFileError,
    ValidationRun,
    apply_model,
    load_model,
    save_model,
)
from mercia.analyses.prediction.models import (
    GradientBoostingSettings,
    LassoLogisticSettings,
    TrainedModel,
    fit_model,
    person_split,
)
from mercia.analyses.prediction.population import PopulationSettings, build_population

__all__ = [
    "GradientBoostingSettings",
    "LassoLogisticSettings",
    "LoadedModel",
    "ModelFileError",
    "Performance",
    "PopulationSettings",
    "PredictionRun",
    "PredictionSettings",
    "TrainedModel",
    "ValidationRun",
    "apply_model",
    "auc_delong",
    "brier",
    "build_population",
    "develop_model",
    "evaluate",
    "external_validation",
    "fit_model",
    "load_model",
    "person_split",
    "prediction",
    "risk_strata",
    "save_model",
    "weak_calibration",
]
