"""Patient-level prediction: develop (lasso, gradient boosting) and apply a model on a synthetic site.

    .venv/bin/python bench/bench_prediction.py [--persons 100000] [--models lasso,gbm]

Data: `mercia.synth.generate_site(persons=N, seed=20261126, profile=DEFAULT_SITES[0])` with acute
event rates x3, cached as bench/out/prediction_<N>.duckdb (gitignored), with cohort 1 = first
hypertension diagnosis (target) and cohort 2 = every urinary tract infection (outcome).
Each step runs in a fresh process (bench/harness.py): wall time and peak RSS. Default settings
(PLP's population, default covariates, 3-fold CV, 25% test); the gradient boosting grid is the default
2 x 2. `apply` is `apply_model` of the saved lasso at the same site (population + covariates + predict).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
sys.path.insert(0, str(BENCH))

from harness import machine, measure  # noqa: E402

SEED = 20261126


def _cond(name: str, key: str, *, keep_all: bool = False) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": name,
        "concepts": {"c": {"name": name, "conditions": [key]}},
        "entry": [{"condition": "c", **({} if keep_all else {"first": True})}],
    }
    if keep_all:
        d.update(keep="all", exit={"after": {"days": 1}})
    return d


def site(persons: int) -> Path:
    path = OUT / f"prediction_{persons}.duckdb"
    if path.exists():
        return path
    from mercia.cdm import Cdm
    from mercia.cohorts.dsl import from_dict
    from mercia.cohorts.generate import generate_cohorts
    from mercia.synth import DEFAULT_SITES, generate_site

    OUT.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp.duckdb")
    tmp.unlink(missing_ok=True)
    with Cdm.open(str(tmp)) as cdm:
        prof = DEFAULT_SITES[0].model_copy(update={"acute_rate_multiplier": 3.0})
        generate_site(cdm, persons=persons, seed=SEED, profile=prof)
        generate_cohorts(
            cdm,
            [
                (1, from_dict(_cond("Hypertension", "hypertension"))),
                (2, from_dict(_cond("Urinary tract infection", "urinary_tract_infection", keep_all=True))),
            ],
        )
    tmp.rename(path)
    return path


def develop(path: str, model: str, save_to: str | None) -> dict[str, Any]:
    from mercia.analyses.prediction import (
        GradientBoostingSettings,
        LassoLogisticSettings,
        PredictionSettings,
        develop_model,
        save_model,
    )
    from mercia.cdm import Cdm

    settings = PredictionSettings(
        model=LassoLogisticSettings() if model == "lasso" else GradientBoostingSettings()
    )
    with Cdm.open(path, read_only=True) as cdm:
        run = develop_model(cdm, 1, 2, settings)
    if save_to:
        save_model(run, save_to)
    test = run.performance["test"]
    return {
        "population": run.performance["train"].n_persons + test.n_persons,
        "outcomes": run.performance["train"].n_outcomes + test.n_outcomes,
        "covariates": len(run.model.covariate_ids),
        "test_auc": round(test.auc, 3),
        "hyperparameters": run.model.hyperparameters,
    }


def apply(path: str, model_dir: str) -> dict[str, Any]:
    from mercia.analyses.prediction import apply_model
    from mercia.cdm import Cdm

    with Cdm.open(path, read_only=True) as cdm:
        v = apply_model(model_dir, cdm)
    return {"population": v.performance.n_persons, "auc": round(v.performance.auc, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--models", default="lasso,gbm")
    args = ap.parse_args()
    print(machine())
    path = str(site(args.persons))
    tmp = Path(tempfile.mkdtemp())
    try:
        for model in args.models.split(","):
            save_to = str(tmp / model) if model == "lasso" else None
            r = measure(develop, path, model, save_to)
            print(f"develop {model:5s} {args.persons:>9,} persons: {r['seconds']:7.1f} s, "
                  f"peak {r['peak_rss_mib']:6.0f} MiB, {r['value']}")
        if (tmp / "lasso").exists():
            r = measure(apply, path, str(tmp / "lasso"))
            print(f"apply lasso   {args.persons:>9,} persons: {r['seconds']:7.1f} s, "
                  f"peak {r['peak_rss_mib']:6.0f} MiB, {r['value']}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
