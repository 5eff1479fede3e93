"""A full comparative cohort analysis (covariates, propensity model, matching, balance, outcome model)
on N target and N comparator persons with thousands of covariates.

    .venv/bin/python bench/bench_cohort_method.py [--persons 100000] [--concepts 6000] [--records 40]

The CDM is made here, not by mercia.synth (whose vocabulary has a few dozen concepts): `concepts`
standard concepts (conditions, drug ingredients, procedures; Zipf-distributed use, so a few are common
and most rare) each under one of 200 group concepts in concept_ancestor (roll-up doubles the
covariates of a window), `records` records per person over the 3 years before index, age and sex,
and an outcome whose hazard rises with age and with the 3 commonest concepts, which also make the
target likelier (HR 1.3 planted). Cached as bench/out/cm_<persons>_<concepts>.duckdb (gitignored).

Measured in fresh processes (bench/harness.py): `cohort_method` end to end with its default settings
(the exposures excluded from the covariates), and `build_covariates` alone. Figures are printed and
written to bench/out/bench_cohort_method_<persons>.json.

OHDSI's reference point: CohortMethod fits the propensity model on at most 250,000 persons per arm
(`maxCohortSizeForFitting`) with Cyclops; FeatureExtraction's default covariates give tens of
thousands of covariates on real data. We know of no published timing of a whole CohortMethod run on
a stated machine to compare against.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
sys.path.insert(0, str(BENCH))

SEED = 20261126
EPOCH = dt.date(2010, 1, 1)
GROUPS = 201  # a multiple of 3: a concept and its group share a domain
FIRST_CONCEPT = 40_000_000  # away from the bundled vocabulary's ids
TARGET_DRUG, COMPARATOR_DRUG = 39_000_001, 39_000_002


def make_cdm(path: Path, persons: int, concepts: int, records: int) -> None:
    import pyarrow as pa

    from mercia.cdm import Cdm

    rng = np.random.default_rng(SEED)
    n = 2 * persons
    pid = np.arange(1, n + 1, dtype=np.int64)
    age = rng.integers(30, 90, n)
    male = rng.random(n) < 0.5
    index = rng.integers(3 * 365 + 10, 10 * 365, n)
    ids = np.arange(FIRST_CONCEPT, FIRST_CONCEPT + concepts, dtype=np.int64)
    domain = np.array(["Condition", "Drug", "Procedure"])[np.arange(concepts) % 3]
    # Records: Zipf-like popularity, dates over the 3 years before index.
    k = n * records
    who = np.repeat(pid, records)
    pick = np.minimum(rng.zipf(1.25, k) - 1, concepts - 1)
    day = np.repeat(index, records) - rng.integers(0, 3 * 365, k)
    # Confounder: a record of one of the 3 commonest concepts raises both treatment and outcome.
    conf = np.bincount(who[pick < 3] - 1, minlength=n) > 0
    lin = -0.3 + 0.9 * conf + 0.02 * (age - 60) + 0.3 * male
    target = rng.random(n) < 1 / (1 + np.exp(-lin))
    follow = rng.integers(30, 720, n)
    rate = 0.0004 * np.exp(0.03 * (age - 60) + 0.8 * conf + np.log(1.3) * target)
    t_out = np.ceil(rng.exponential(1 / rate)).astype(np.int64)

    def date(days: np.ndarray) -> pa.Array:
        return pa.array((np.datetime64(EPOCH) + days.astype("timedelta64[D]")).astype("datetime64[D]"))

    with Cdm.open(path) as cdm:
        cdm.create_tables(["person", "observation_period", "cohort", "condition_occurrence", "drug_exposure",
                           "procedure_occurrence", "measurement", "concept", "concept_ancestor"])
        cdm.insert_arrow("person", pa.table({"person_id": pid, "gender_concept_id": np.where(male, 8507, 8532),
                                             "year_of_birth": 2015 - age, "race_concept_id": np.zeros(n, int),
                                             "ethnicity_concept_id": np.zeros(n, int)}))
        cdm.insert_arrow("observation_period", pa.table({
            "observation_period_id": pid, "person_id": pid, "observation_period_start_date": date(np.zeros(n, int)),
            "observation_period_end_date": date(index + follow), "period_type_concept_id": np.zeros(n, int)}))
        out = t_out <= follow
        cohort_ids = np.r_[np.where(target, 1, 2), np.full(out.sum(), 3)]
        cdm.insert_arrow("cohort", pa.table({
            "cohort_definition_id": cohort_ids, "subject_id": np.r_[pid, pid[out]],
            "cohort_start_date": date(np.r_[index, (index + t_out)[out]]),
            "cohort_end_date": date(np.r_[index + follow, (index + t_out)[out]])}))
        tables = {"Condition": ("condition_occurrence", "condition_occurrence_id"),
                  "Drug": ("drug_exposure", "drug_exposure_id"),
                  "Procedure": ("procedure_occurrence", "procedure_occurrence_id")}
        for dom, (table, key) in tables.items():
            m = domain[pick] == dom
            cols: dict[str, Any] = {key: np.arange(1, m.sum() + 1), "person_id": who[m]}
            if dom == "Condition":
                cols |= {"condition_concept_id": ids[pick[m]], "condition_start_date": date(day[m]),
                         "condition_type_concept_id": np.zeros(m.sum(), int)}
            elif dom == "Drug":
                cols |= {"drug_concept_id": ids[pick[m]], "drug_exposure_start_date": date(day[m]),
                         "drug_exposure_end_date": date(day[m]), "drug_type_concept_id": np.zeros(m.sum(), int)}
            else:
                cols |= {"procedure_concept_id": ids[pick[m]], "procedure_date": date(day[m]),
                         "procedure_type_concept_id": np.zeros(m.sum(), int)}
            cdm.insert_arrow(table, pa.table(cols))
        # The exposures themselves, on the index day (excluded from the covariates by the analysis).
        cdm.insert_arrow("drug_exposure", pa.table({
            "drug_exposure_id": np.arange(10**9, 10**9 + n), "person_id": pid,
            "drug_concept_id": np.where(target, TARGET_DRUG, COMPARATOR_DRUG),
            "drug_exposure_start_date": date(index), "drug_exposure_end_date": date(index + follow),
            "drug_type_concept_id": np.zeros(n, int)}))
        group_ids = np.arange(FIRST_CONCEPT + concepts, FIRST_CONCEPT + concepts + GROUPS, dtype=np.int64)
        group_of = group_ids[np.arange(concepts) % GROUPS]
        all_ids = np.concatenate([ids, group_ids, [TARGET_DRUG, COMPARATOR_DRUG]])
        dom_all = np.concatenate([domain, np.array(["Condition", "Drug", "Procedure"])[np.arange(GROUPS) % 3],
                                  ["Drug", "Drug"]])
        cls = np.where(dom_all == "Drug", "Ingredient", "Clinical Finding")
        cls[concepts:concepts + GROUPS][dom_all[concepts:concepts + GROUPS] == "Drug"] = "ATC 4th"
        vocab = np.where(cls == "ATC 4th", "ATC", "Bench")
        nc = len(all_ids)
        cdm.insert_arrow("concept", pa.table({
            "concept_id": all_ids, "concept_name": [f"concept {i}" for i in all_ids], "domain_id": dom_all,
            "vocabulary_id": vocab, "concept_class_id": cls, "concept_code": all_ids.astype(str),
            "valid_start_date": date(np.zeros(nc, int)), "valid_end_date": date(np.full(nc, 40000))}))
        anc_a = np.r_[all_ids, group_of]
        anc_d = np.r_[all_ids, ids]
        cdm.insert_arrow("concept_ancestor", pa.table({
            "ancestor_concept_id": anc_a, "descendant_concept_id": anc_d,
            "min_levels_of_separation": np.zeros(len(anc_a), int), "max_levels_of_separation": np.zeros(len(anc_a), int)}))


def run_cohort_method(path: str) -> dict[str, Any]:
    from mercia.analyses.cohort_method import CohortMethodSettings, cohort_method
    from mercia.cdm import Cdm
    from mercia.features import CovariateSettings

    s = CohortMethodSettings(covariates=CovariateSettings(excluded_concept_ids=[TARGET_DRUG, COMPARATOR_DRUG]))
    with Cdm.open(path, read_only=True) as cdm:
        res = cohort_method(cdm, 1, 2, [3], s)
    est = res["cm_estimates"].data.set_index("adjustment")
    diag = res["cm_ps_diagnostics"].data.iloc[0]
    att = res["cm_attrition_3"].data
    return {"covariates": int(diag["covariates_offered"]), "covariates_in_ps": int(diag["covariates_in_model"]),
            "auc": float(diag["auc"]), "prior_variance": float(diag["prior_variance"]),
            "matched_pairs": int(att["n_target"].iloc[-1]),
            "crude_hr": float(est.loc["crude", "rr"]), "matched_hr": float(est.loc["match", "rr"]),
            "matched_ci": [float(est.loc["match", "ci_lower"]), float(est.loc["match", "ci_upper"])],
            "max_abs_smd_after": float(est.loc["match", "max_abs_smd_after"]), "notes": res.notes}


def run_covariates(path: str) -> dict[str, Any]:
    from mercia.cdm import Cdm
    from mercia.features import CovariateSettings, build_covariates

    with Cdm.open(path, read_only=True) as cdm:
        cd = build_covariates(cdm, [1, 2], CovariateSettings(excluded_concept_ids=[TARGET_DRUG, COMPARATOR_DRUG]))
    return {"rows": cd.X.shape[0], "covariates": cd.X.shape[1], "nonzeros": int(cd.X.nnz)}


def main() -> None:
    from harness import machine, measure

    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=100_000, help="per arm (target and comparator each)")
    ap.add_argument("--concepts", type=int, default=6000)
    ap.add_argument("--records", type=int, default=40, help="records per person")
    a = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    path = OUT / f"cm_{a.persons}_{a.concepts}_{a.records}.duckdb"
    if not path.exists():
        print(f"making the CDM ({2 * a.persons:,} persons) ...", flush=True)
        make_cdm(path, a.persons, a.concepts, a.records)
    cov = measure(run_covariates, str(path))
    full = measure(run_cohort_method, str(path))
    report = {"machine": machine(), "persons_per_arm": a.persons, "concepts": a.concepts, "records": a.records,
              "covariates_seconds": round(cov["seconds"], 1), "covariates_peak_rss_mib": round(cov["peak_rss_mib"]),
              **{f"covariates_{k}": v for k, v in cov["value"].items()},
              "cohort_method_seconds": round(full["seconds"], 1),
              "cohort_method_peak_rss_mib": round(full["peak_rss_mib"]), **full["value"]}
    print(json.dumps(report, indent=1))
    (OUT / f"bench_cohort_method_{a.persons}.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
