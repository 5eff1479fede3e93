"""A trained prediction model on disk, and applying it to another site's CDM (external validation).

A model directory holds:
- `manifest.json`: format, model type, target and outcome cohort ids, the population and covariate
  settings (so the same population and covariates are built at the new site), the covariate ids the
  model reads with their names, the training site, the hyperparameters, the training and test
  performance measures (AUC, Brier, calibration; no counts), the estimator file's name and sha256.
- the estimator: `coefficients.json` for the lasso (intercept and non-zero coefficients on the
  original covariate scale: plain data, nothing executed on load), or `estimator.joblib` for gradient
  boosting. joblib files are pickles and run code when loaded, so the sha256 in the manifest is checked
  before loading and a mismatch refuses the file: load only models from sources you trust.

What leaves the training site in a model directory is model parameters, never rows. `save_model`
refuses a model any of whose covariates rests on `policy.suppress_up_to` or fewer training persons,
or whose boosting leaves may hold that few (min_samples_leaf), so the parameters describe no small
group. Counts are not written at all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mercia.analyses.notes import Note, NoteCode
from mercia.analyses.prediction.analysis import (
    PERFORMANCE_COLUMNS,
    PredictionRun,
    PredictionSettings,
    attrition_table,
    covariates_for,
    performance_table,
    strata_table,
)
from mercia.analyses.prediction.evaluation import Performance, evaluate, risk_strata
from mercia.analyses.prediction.models import TrainedModel, check_finite
from mercia.analyses.prediction.population import build_population
from mercia.analyses.result import AnalysisResult
from mercia.cdm import Cdm
from mercia.disclosure import OPENSAFELY, DisclosureLog, DisclosurePolicy, ModelInfo, release
from mercia.errors import StudyError

MODEL_FORMAT = "mercia-prediction-model/1"
MANIFEST = "manifest.json"


class ModelFileError(StudyError):
    """A model directory is missing, malformed or altered."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    import sklearn

    from mercia import __version__

    return {"mercia": __version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__}


def _released_metrics(
    run: PredictionRun, policy: DisclosurePolicy, site: str | None, log: DisclosureLog
) -> dict[str, dict[str, Any]]:
    """The performance measures as released (the manifest travels with the model, so it gets what a
    report would: release() of the run's performance table, the same single door out)."""
    table = next(t for n, t in run.result.tables.items() if n.endswith("_performance"))
    data = release(table, policy, site=site, log=log).data
    out: dict[str, dict[str, Any]] = {}
    for row in data.to_dict("records"):
        out[str(row["split"])] = {
            c: (None if row[c] is None or pd.isna(row[c]) or not np.isfinite(float(row[c])) else float(row[c]))
            for c in PERFORMANCE_COLUMNS
        }
    return out


def save_model(
    run: PredictionRun, directory: str | Path, *, site: str | None = None, policy: DisclosurePolicy = OPENSAFELY
) -> Path:
    """Write the model of `run` to a new (or empty) `directory`; return the manifest's path."""
    out = Path(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelFileError(f"{str(out)!r} exists and is not an empty folder; choose a new folder for the model")
    m = run.model
    small = [cid for cid, n in run.covariate_persons.items() if n <= policy.suppress_up_to]
    if m.kind == "lasso_logistic":
        nz = set(m.covariate_ids[np.flatnonzero(m.coefficients)].tolist())
        small = [c for c in small if c in nz]
    if small:
        raise ModelFileError(
            f"the model uses {len(small)} covariate(s) present in {policy.suppress_up_to} or fewer training "
            f"persons (ids {small[:10]}); refit with min_covariate_persons above {policy.suppress_up_to}"
        )
    if m.kind == "gradient_boosting" and m.hyperparameters["min_samples_leaf"] <= policy.suppress_up_to:
        raise ModelFileError(
            f"boosting leaves may hold {m.hyperparameters['min_samples_leaf']} persons, not more than the "
            f"policy's threshold {policy.suppress_up_to}; refit with a larger min_samples_leaf"
        )
    log = DisclosureLog()
    if m.kind == "lasso_logistic":
        # The coefficients leave the site in this folder: they pass the door like any model table, and a
        # model any of whose terms release() would withhold is not written at all.
        coef_table = next(t for n, t in run.result.tables.items() if n.endswith("_coefficients"))
        released = release(coef_table, policy, site=site, log=log)
        # A withheld term's row is dropped (its covariate is a level found in the data), so count rows too.
        withheld = len(released.data) < len(coef_table.data) or released.data["coefficient"].isna().any()
        if released.status != "released" or withheld:
            raise ModelFileError(
                "disclosure control withholds some of the model's coefficients (too few persons or events "
                "behind them, see the model's disclosure log); refit with more data or fewer covariates"
            )
    out.mkdir(parents=True, exist_ok=True)
    if m.kind == "lasso_logistic":
        nz_idx = np.flatnonzero(m.coefficients)
        estimator = out / "coefficients.json"
        estimator.write_text(
            json.dumps(
                {
                    "intercept": m.intercept,
                    "coefficients": [
                        {"covariate_id": int(m.covariate_ids[j]), "coefficient": float(m.coefficients[j])}
                        for j in nz_idx
                    ],
                },
                indent=1,
            )
            + "\n"
        )
        used = [int(m.covariate_ids[j]) for j in nz_idx]
    else:
        import joblib

        estimator = out / "estimator.joblib"
        joblib.dump(m.estimator, estimator)
        used = [int(c) for c in m.covariate_ids]
    manifest: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "model_type": m.kind,
        "target_cohort_id": run.target_id,
        "outcome_cohort_id": run.outcome_id,
        "settings": run.settings.model_dump(mode="json"),
        "covariate_ids": [int(c) for c in m.covariate_ids],
        "covariates_used": used,
        "covariate_names": {str(c): run.covariate_names.get(int(c), str(c)) for c in m.covariate_ids},
        "hyperparameters": m.hyperparameters,
        "training_site": site,
        "trained": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "metrics": _released_metrics(run, policy, site, log),
        "estimator_file": estimator.name,
        "estimator_sha256": _sha256(estimator),
        "versions": _versions(),
    }
    (out / "disclosure.json").write_text(log.to_json() + "\n")
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


@dataclass
class LoadedModel:
    manifest: dict[str, Any]
    model: TrainedModel
    settings: PredictionSettings

    @property
    def covariate_names(self) -> dict[int, str]:
        return {int(k): v for k, v in self.manifest["covariate_names"].items()}


def load_model(directory: str | Path) -> LoadedModel:
    """Read a model directory, checking its format and the estimator's sha256 before loading it."""
    d = Path(directory)
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise ModelFileError(f"{str(d)!r} is not a model folder: it has no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{mpath}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{mpath}: not a {MODEL_FORMAT} manifest")
    name = manifest.get("estimator_file")
    if name not in ("coefficients.json", "estimator.joblib"):
        raise ModelFileError(f"{mpath}: estimator_file must be coefficients.json or estimator.joblib")
    est = d / name
    if not est.is_file():
        raise ModelFileError(f"{str(d)!r}: the estimator file {name} is missing")
    if _sha256(est) != manifest.get("estimator_sha256"):
        raise ModelFileError(
            f"{est}: its sha256 differs from the manifest's, so it was altered or replaced; it is not loaded "
            "(get the model folder again from its source)"
        )
    settings = PredictionSettings.model_validate(manifest["settings"])
    ids = np.asarray(manifest["covariate_ids"], dtype=np.int64)
    if manifest["model_type"] == "lasso_logistic":
        coef = json.loads(est.read_text())
        pos = {int(c): j for j, c in enumerate(ids)}
        beta = np.zeros(len(ids))
        for c in coef["coefficients"]:
            beta[pos[int(c["covariate_id"])]] = float(c["coefficient"])
        model = TrainedModel("lasso_logistic", ids, manifest["hyperparameters"], [], float(coef["intercept"]), beta)
    else:
        import joblib

        model = TrainedModel("gradient_boosting", ids, manifest["hyperparameters"], [], estimator=joblib.load(est))
    return LoadedModel(manifest, model, settings)


@dataclass
class ValidationRun:
    result: AnalysisResult
    performance: Performance
    predictions: pd.DataFrame  # row-level: stays at the site (for tests and local checks)


def apply_model(
    model_dir: str | Path,
    cdm: Cdm,
    *,
    target_id: int | None = None,
    outcome_id: int | None = None,
    allow_missing_covariates: bool = False,
    name: str = "external",
) -> ValidationRun:
    """External validation: build the model's population and covariates on `cdm` (the training
    settings, the cohort ids of the manifest unless given) and evaluate the model's predictions there.

    Covariates the model uses that this CDM does not have (no one in the population has them) are an
    error naming them, unless `allow_missing_covariates`, when they count as absent (zero) and a note
    names them."""
    loaded = load_model(model_dir)
    man = loaded.manifest
    target = man["target_cohort_id"] if target_id is None else target_id
    outcome = man["outcome_cohort_id"] if outcome_id is None else outcome_id
    s = loaded.settings
    # Every covariate present, however rare: the model's own columns must not be filtered away here.
    cov_settings = s.covariates.model_copy(update={"min_persons": 1, "min_fraction": 0.0})
    pop, attrition = build_population(cdm, target, outcome, s.population)
    if pop.empty:
        raise StudyError(
            f"the target cohort {target} has no entries at this site after the population steps; "
            "generate the target cohort here first"
        )
    y = pop["outcome"].to_numpy(dtype=np.int64)
    if y.sum() == 0:
        raise StudyError(
            f"no outcomes: no one in the target population (cohort {target}) has an outcome (cohort {outcome}) "
            "during time at risk at this site, so the model cannot be validated here"
        )
    cd = covariates_for(cdm, target, pop, cov_settings)
    used = [int(c) for c in man["covariates_used"]]
    have = set(cd.covariate_ids.tolist())
    missing = [c for c in used if c not in have]
    notes: list[Note] = []
    if missing:
        names = loaded.covariate_names
        listed = "; ".join(f"{c} {names.get(c, '')}".strip() for c in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        msg = f"this CDM lacks {len(missing)} covariate(s) the model uses: {listed}{more}"
        if not allow_missing_covariates:
            raise StudyError(
                msg + ". Check the CDM has the tables and vocabulary the covariates come from; to apply the "
                "model anyway with these covariates absent (zero), pass allow_missing_covariates"
            )
        notes.append(Note(NoteCode.MISSING_COVARIATES))  # which ones are missing here is the site's data
    X = cd.align_to(loaded.model.covariate_ids)
    p = check_finite(loaded.model.predict(X))
    perf = evaluate(y, p, s.alpha)
    if perf.separated:
        notes.append(Note(NoteCode.PREDICTIONS_SEPARATE, split="external"))
    n = len(y)
    info = ModelInfo(df_resid=float(n), n_obs=n, n_events=int(y.sum()))
    tables = {
        t.name: t
        for t in (
            attrition_table(name, attrition),
            performance_table(name, {"external": perf}, info),
            strata_table(name, {"external": risk_strata(y, p, s.risk_strata)}),
        )
    }
    preds = pd.DataFrame({"person_id": pop["person_id"], "outcome": y, "predicted_risk": p})
    return ValidationRun(AnalysisResult("prediction_validation", tables, notes=notes), perf, preds)
