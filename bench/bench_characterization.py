"""Characterization (Table 1) of one large cohort over 1,000+ covariates: Mercia vs a polars peer.

    .venv/bin/python bench/bench_characterization.py [--persons 100000]

The peer needs polars, which Mercia itself does not use: `pip install -e ".[bench]"`.

Target (issue 4): a 100,000-person cohort characterized over 1,000+ covariates in under 10 s.

Data: the cached synthetic site of bench/bench_cohorts.py (bench/out/synth_<persons>.duckdb, seed
20261125), copied to bench/out/characterization_<persons>.duckdb (gitignored) and given
* cohort 900: every person once, indexed at the middle of their observation period, so the cohort
  has exactly `persons` persons;
* 1,200 extra condition concepts and 300 procedure concepts (named in CONCEPT), drawn per person with
  Zipf-like weights, about 25 condition and 5 procedure records per person dated from 5 years before to
  1 year after index. The synthetic population alone has only ~50 distinct clinical concepts, far
  below the 1,000 the target asks for.
A covariate is one (window, domain, concept) with at least one person, as in OHDSI FeatureExtraction;
the default windows are -365..0, -30..0 and any time prior, so 1,500 concepts give 4,000+ covariates.

Mercia: `characterize(cdm, 900)` (aggregation in DuckDB) then `release()` of its four tables with the
OpenSAFELY policy, in a fresh process (bench/harness.py).
Peer: the same Table 1 written the obvious way in polars (lazy, multi-threaded) on rows exported from
the same CDM (cohort, person, condition, procedure, measurement rows; drug rows with their ingredient
ancestors): timed as export and compute separately. The peer's counts, means and SDs are checked
against Mercia's un-released tables, so both compute the same thing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
sys.path.insert(0, str(BENCH))

from harness import machine, measure  # noqa: E402

COHORT_ID = 900
EXTRA_CONDITIONS = 1_200
EXTRA_PROCEDURES = 300
CONDITION_BASE = 2_000_000_000  # concept ids of the extra concepts: far from any real OMOP id
PROCEDURE_BASE = 2_100_000_000
SEED = 4


def site(persons: int) -> Path:
    """The synthetic site of bench_cohorts.py, made on first use (same file, same seed)."""
    from bench_cohorts import database

    return database(persons)


def prepared(persons: int) -> Path:
    """The benchmark's CDM: the site plus cohort 900 and the extra concepts' records (cached)."""
    path = OUT / f"characterization_{persons}.duckdb"
    if path.exists():
        return path
    import duckdb
    import numpy as np
    import pyarrow as pa

    partial = path.with_name(path.name + ".partial")
    shutil.copyfile(site(persons), partial)
    t0 = time.perf_counter()
    con = duckdb.connect(str(partial))

    def run(sql: str) -> None:
        con.execute(sql).fetchall()  # consumed, so the connection is free for the next statement

    try:
        run(f"DELETE FROM results.cohort WHERE cohort_definition_id = {COHORT_ID}")
        run(f"""
            INSERT INTO results.cohort
            SELECT {COHORT_ID}, person_id,
                   CAST(observation_period_start_date
                        + CAST(DATE_DIFF('day', observation_period_start_date,
                                         observation_period_end_date) / 2 AS INTEGER) AS DATE),
                   observation_period_end_date
            FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY person_id ORDER BY observation_period_start_date)
                  AS rn FROM observation_period) WHERE rn = 1""")
        idx = con.sql(
            f"SELECT subject_id, cohort_start_date FROM results.cohort WHERE cohort_definition_id = {COHORT_ID}"
        ).to_arrow_table()
        person = idx["subject_id"].to_numpy()
        index_day = idx["cohort_start_date"].cast(pa.int32()).to_numpy()
        rng = np.random.default_rng(SEED)

        def records(table: str, base: int, n_concepts: int, per_person: float, first_id: int) -> None:
            counts = rng.poisson(per_person, len(person))
            who = np.repeat(np.arange(len(person)), counts)
            weights = 1.0 / np.arange(1, n_concepts + 1) ** 0.8
            concept = base + rng.choice(n_concepts, len(who), p=weights / weights.sum())
            day = index_day[who] + rng.integers(-5 * 365, 366, len(who))
            ids = np.arange(first_id, first_id + len(who), dtype=np.int64)
            tab = pa.table(
                {
                    "id": ids,
                    "person_id": pa.array(person[who].astype(np.int64)),
                    "concept_id": pa.array(concept.astype(np.int64)),
                    "d": pa.array(day.astype(np.int32), type=pa.date32()),
                }
            )
            con.register("extra", tab)
            if table == "condition_occurrence":
                run(
                    "INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id,"
                    " condition_start_date, condition_type_concept_id, condition_status_concept_id)"
                    " SELECT id, person_id, concept_id, d, 32817, 0 FROM extra"
                )
            else:
                run(
                    "INSERT INTO procedure_occurrence (procedure_occurrence_id, person_id, procedure_concept_id,"
                    " procedure_date, procedure_type_concept_id)"
                    " SELECT id, person_id, concept_id, d, 32817 FROM extra"
                )
            con.unregister("extra")
            names = pa.table(
                {
                    "concept_id": pa.array(np.arange(base, base + n_concepts, dtype=np.int64)),
                    "concept_name": pa.array([f"{table.split('_')[0]} {k}" for k in range(n_concepts)]),
                }
            )
            con.register("names", names)
            domain = "Condition" if table == "condition_occurrence" else "Procedure"
            run(
                "INSERT INTO concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id,"
                " concept_code, valid_start_date, valid_end_date)"
                f" SELECT concept_id, concept_name, '{domain}', 'Mercia bench', 'Clinical Finding',"
                " CAST(concept_id AS VARCHAR), DATE '1970-01-01', DATE '2099-12-31' FROM names"
            )
            con.unregister("names")

        first = con.sql("SELECT COALESCE(MAX(condition_occurrence_id), 0) + 1 FROM condition_occurrence").fetchall()[0]
        records("condition_occurrence", CONDITION_BASE, EXTRA_CONDITIONS, 25.0, int(first[0]))  # type: ignore[index]
        first = con.sql("SELECT COALESCE(MAX(procedure_occurrence_id), 0) + 1 FROM procedure_occurrence").fetchall()[0]
        records("procedure_occurrence", PROCEDURE_BASE, EXTRA_PROCEDURES, 5.0, int(first[0]))  # type: ignore[index]
        run("CHECKPOINT")
    finally:
        con.close()
    partial.rename(path)
    print(f"prepared {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


SETTINGS: dict[str, Any] = {"domains": ["condition", "drug", "measurement", "procedure"]}


# ---- Mercia --------------------------------------------------------------------------------------------
def run_mercia(path: str) -> dict[str, Any]:
    from mercia.analyses import CharacterizationSettings, characterize
    from mercia.cdm import Cdm
    from mercia.disclosure import OPENSAFELY, DisclosureLog, release

    cdm = Cdm.open(path, read_only=True)
    try:
        t0 = time.perf_counter()
        res = characterize(cdm, COHORT_ID, CharacterizationSettings(**SETTINGS))
        t_analysis = time.perf_counter() - t0
        t0 = time.perf_counter()
        log = DisclosureLog()
        released = {n: release(t, OPENSAFELY, log=log) for n, t in res.tables.items()}
        t_release = time.perf_counter() - t0
    finally:
        cdm.close()
    cov = res.tables["table1_covariates"].data
    meas = res.tables["table1_measurements"].data
    age = res.tables["table1_age"].data
    return {
        "analysis_s": t_analysis,
        "release_s": t_release,
        "covariates": len(cov),
        "concepts": int(cov[["domain", "concept_id"]].drop_duplicates().shape[0]),
        "log_entries": len(log.entries),
        "released_rows": sum(len(r.data) for r in released.values()),
        "cov": cov[["window", "domain", "concept_id", "n"]].to_dict("list"),
        "meas": meas[["window", "concept_id", "unit_concept_id", "n", "mean", "sd"]].to_dict("list"),
        "age": age[["n", "age_mean", "age_sd"]].to_dict("list"),
        "demographics": res.tables["table1_demographics"].data[["variable", "level", "n"]].to_dict("list"),
    }


# ---- peer: polars on exported rows ----------------------------------------------------------------------
_WINDOWS = [("-365..0", -365, 0), ("-30..0", -30, 0), ("any prior", None, 0)]


def export_rows(path: str) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect(path, read_only=True)
    try:
        q = {
            "idx": f"SELECT subject_id AS person_id, MIN(cohort_start_date) AS index_date FROM results.cohort "
            f"WHERE cohort_definition_id = {COHORT_ID} GROUP BY subject_id",
            "person": "SELECT person_id, year_of_birth, gender_concept_id FROM person",
            "condition": "SELECT person_id, condition_concept_id AS concept_id, condition_start_date AS d "
            "FROM condition_occurrence",
            "procedure": "SELECT person_id, procedure_concept_id AS concept_id, procedure_date AS d "
            "FROM procedure_occurrence",
            "measurement": "SELECT measurement_id, person_id, measurement_concept_id AS concept_id, "
            "measurement_date AS d, COALESCE(unit_concept_id, 0) AS unit_concept_id, value_as_number AS v "
            "FROM measurement",
            "drug": "SELECT person_id, drug_concept_id, drug_exposure_start_date AS d FROM drug_exposure",
            "ingredient_of": "SELECT ca.descendant_concept_id AS drug_concept_id, ca.ancestor_concept_id AS "
            "concept_id FROM concept_ancestor ca JOIN concept c ON c.concept_id = ca.ancestor_concept_id "
            "AND c.concept_class_id = 'Ingredient'",
        }
        return {k: con.sql(s).to_arrow_table() for k, s in q.items()}
    finally:
        con.close()


def peer_table1(rows: dict[str, Any]) -> dict[str, Any]:
    """Table 1 in polars: persons with a record per window and concept, latest measurement values,
    age and sex."""
    import polars as pl

    idx = pl.from_arrow(rows["idx"]).lazy()
    person = pl.from_arrow(rows["person"]).lazy()
    drug = (
        pl.from_arrow(rows["drug"]).lazy().join(pl.from_arrow(rows["ingredient_of"]).lazy(), on="drug_concept_id")
    ).select("person_id", "concept_id", "d")
    recs = pl.concat(
        [
            pl.from_arrow(rows["condition"]).lazy().with_columns(domain=pl.lit("condition")),
            drug.with_columns(domain=pl.lit("drug")),
            pl.from_arrow(rows["measurement"]).lazy().select("person_id", "concept_id", "d")
            .with_columns(domain=pl.lit("measurement")),
            pl.from_arrow(rows["procedure"]).lazy().with_columns(domain=pl.lit("procedure")),
        ]
    )
    off = recs.join(idx, on="person_id").with_columns(
        off=(pl.col("d") - pl.col("index_date")).dt.total_days()
    )
    frames = []
    for name, lo, hi in _WINDOWS:
        cond = pl.col("off") <= hi if lo is None else pl.col("off").is_between(lo, hi)
        frames.append(
            off.filter(cond)
            .group_by("domain", "concept_id")
            .agg(n=pl.col("person_id").n_unique())
            .with_columns(window=pl.lit(name))
        )
    cov = pl.concat(frames)
    m = pl.from_arrow(rows["measurement"]).lazy().filter(pl.col("v").is_not_null()).join(idx, on="person_id")
    m = m.with_columns(off=(pl.col("d") - pl.col("index_date")).dt.total_days())
    mframes = []
    for name, lo, hi in _WINDOWS:
        cond = pl.col("off") <= hi if lo is None else pl.col("off").is_between(lo, hi)
        latest = (
            m.filter(cond)
            .sort("d", "measurement_id", descending=True)
            .group_by("person_id", "concept_id", "unit_concept_id", maintain_order=True)
            .first()
        )
        mframes.append(
            latest.group_by("concept_id", "unit_concept_id")
            .agg(n=pl.len(), mean=pl.col("v").mean(), sd=pl.col("v").std())
            .with_columns(window=pl.lit(name))
        )
    ages = idx.join(person, on="person_id").with_columns(
        age=pl.col("index_date").dt.year().cast(pl.Int64) - pl.col("year_of_birth")
    )
    cov_df, meas_df, age_df, sex_df, group_df = pl.collect_all(
        [
            cov,
            pl.concat(mframes),
            ages.select(n=pl.len(), age_mean=pl.col("age").mean(), age_sd=pl.col("age").std()),
            ages.group_by("gender_concept_id").agg(n=pl.len()),
            ages.group_by((pl.col("age") // 5).alias("band")).agg(n=pl.len()),
        ]
    )
    return {"cov": cov_df, "meas": meas_df, "age": age_df, "sex": sex_df, "groups": group_df}


def run_peer(path: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    rows = export_rows(path)
    t_export = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = peer_table1(rows)
    t_compute = time.perf_counter() - t0
    return {
        "export_s": t_export,
        "compute_s": t_compute,
        "exported_rows": sum(t.num_rows for t in rows.values()),
        "cov": out["cov"].select("window", "domain", "concept_id", "n").to_dict(as_series=False),
        "meas": out["meas"].select("window", "concept_id", "unit_concept_id", "n", "mean", "sd")
        .to_dict(as_series=False),
        "age": out["age"].to_dict(as_series=False),
    }


def same_results(ours: dict[str, Any], peer: dict[str, Any]) -> list[str]:
    """Differences between Mercia's un-released Table 1 and the peer's (empty: identical)."""
    import numpy as np
    import pandas as pd

    problems = []
    key = ["window", "domain", "concept_id"]
    a = pd.DataFrame(ours["cov"]).sort_values(key).reset_index(drop=True)
    b = pd.DataFrame(peer["cov"]).sort_values(key).reset_index(drop=True)
    if not a.astype(str).equals(b[a.columns].astype(str)):
        problems.append(f"covariate counts differ ({len(a)} rows vs {len(b)})")
    mk = ["window", "concept_id", "unit_concept_id"]
    ma = pd.DataFrame(ours["meas"]).sort_values(mk).reset_index(drop=True)
    mb = pd.DataFrame(peer["meas"]).sort_values(mk).reset_index(drop=True)[ma.columns]
    if len(ma) != len(mb) or not (ma[[*mk, "n"]].to_numpy() == mb[[*mk, "n"]].to_numpy()).all():
        problems.append("measurement n differ")
    elif not np.allclose(ma[["mean", "sd"]].to_numpy(float), mb[["mean", "sd"]].to_numpy(float), rtol=1e-9):
        problems.append("measurement means/SDs differ")
    if not np.allclose(
        [ours["age"]["n"][0], ours["age"]["age_mean"][0], ours["age"]["age_sd"][0]],
        [peer["age"]["n"][0], peer["age"]["age_mean"][0], peer["age"]["age_sd"][0]],
    ):
        problems.append("age differs")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--persons", type=int, default=100_000)
    args = ap.parse_args()
    path = str(prepared(args.persons))
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    ours = measure(run_mercia, path)
    peer = measure(run_peer, path)
    o, p = ours["value"], peer["value"]
    print(f"\ncohort {COHORT_ID}: {args.persons:,} persons; {o['concepts']:,} distinct concepts; "
          f"{o['covariates']:,} covariates (window x domain x concept with >= 1 person)")
    mercia_s = o["analysis_s"] + o["release_s"]
    print(f"Mercia  characterize {o['analysis_s']:6.2f} s + release {o['release_s']:5.2f} s = {mercia_s:6.2f} s "
          f"({o['released_rows']:,} released rows, {o['log_entries']:,} log entries); "
          f"process {ours['seconds']:.1f} s, peak RSS {ours['peak_rss_mib']:,.0f} MiB")
    peer_s = p["export_s"] + p["compute_s"]
    print(f"polars  export {p['export_s']:6.2f} s ({p['exported_rows']:,} rows) + compute {p['compute_s']:5.2f} s "
          f"= {peer_s:6.2f} s; process {peer['seconds']:.1f} s, peak RSS {peer['peak_rss_mib']:,.0f} MiB")
    print(f"ratio   Mercia characterize / polars compute     = {o['analysis_s'] / p['compute_s']:.2f}")
    print(f"ratio   Mercia (characterize+release) / polars (export+compute) = {mercia_s / peer_s:.2f}")
    problems = same_results(o, p)
    print("results: identical to the peer" if not problems else f"results DIFFER: {problems}")
    target = "met" if mercia_s < 10 and o["covariates"] >= 1000 else "NOT met"
    print(f"target (< 10 s for 1,000+ covariates at 100,000 persons): {target} at {args.persons:,} persons")
    print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
