"""The demo study end to end on one synthetic site, phase by phase; its survival and incidence phases
against lifelines and pandas on rows exported from the same CDM.

    .venv/bin/python bench/bench_study.py [--persons 1000000] [--engine duckdb postgres spark] [--pg-url URL]

Target (issue 4): the demo study (examples/studies/sglt2_heart_failure: 3 cohorts, Table 1 and balance,
cohort entries, incidence, prevalence, Kaplan-Meier, adjusted Cox; SACRO policy) on 1,000,000 persons
in under 60 s.

Target (issue 14): the same at 10,000,000 persons on DuckDB in under 5 minutes and 8 GiB peak memory;
the study at 1,000,000 persons on DuckDB, PostgreSQL and Spark (local) side by side, the same released
tables on all three.

Engines (`--engine`, in turn): duckdb, the file below; postgres, the same site copied once into schema
synth_<persons> of the server at --pg-url (OHDSI's CDM indexes, ANALYZE; the copy is not timed), the
study's cohorts in a fresh results_<persons> schema per run, the peer exporting through COPY. With two
engines their released tables are compared row by row. spark: the same site exported once to a folder of
Parquet tables (not timed), the study run on `spark:FOLDER` (a local Spark session, local[2]; its start
counted in the process time, not in run_study's); no peer there (the peer's plain SQL reads DuckDB or
PostgreSQL), so Spark is measured against the other engines' run of the same study. Peak memory on Spark
is the Python process and, separately, its child processes (the driver JVM), sampled every half second.

Data: the cached synthetic site of bench/bench_cohorts.py (bench/out/synth_<persons>.duckdb, or in
$MERCIA_BENCH_OUT; seed 20261125), copied before each run to study_<persons>.duckdb beside it (a study
writes its cohorts into the CDM; the copy is not timed).

Mercia: `run_study(example_package(), cdm, out)` in a fresh process (bench/harness.py); the phases
are the run's own `StudyRun.timings` (cohort generation, then each analysis including the release of
its tables, then the report).

Peer, in its own fresh process, on the CDM the Mercia run left (so the cohorts are the same rows):
the rows a hand-written analysis would pull out (the study's cohort entries, persons, observation
periods, deaths, the condition records of the Cox covariates' concepts and their descendants) are
exported with plain SQL, and then
* time to event per person in pandas, Kaplan-Meier with lifelines' KaplanMeierFitter per cohort and
  the adjusted Cox model with lifelines' CoxPHFitter (Efron ties, as Mercia) and its
  proportional-hazards test;
* population incidence of heart-failure admission (365-day washout, first events) by age group and
  calendar year in pandas/numpy, split at birthdays and year ends as Mercia's SQL does.
The ratio compares Mercia's km + cox + incidence phases (analysis and release) with the peer's
export + compute. The peer's hazard ratio, KM counts and incidence totals are checked against what
Mercia released, so both compute the same thing. Cohort generation has its own benchmark against
OHDSI's Circe SQL (bench/bench_cohorts.py); Table 1 has bench/bench_characterization.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
# Where the cached sites are (bench_cohorts.py makes them): bench/out, or the folder in $MERCIA_BENCH_OUT.
OUT = Path(os.environ.get("MERCIA_BENCH_OUT") or BENCH / "out")
sys.path.insert(0, str(BENCH))

from harness import machine, measure  # noqa: E402

ENGINES = ("duckdb", "postgres", "spark")
PEER_PHASES = ("km", "cox_adjusted", "hf_incidence_population")
DAYS_PER_YEAR = 365.25


def site(persons: int) -> Path:
    from bench_cohorts import database

    return database(persons)


# ---- Mercia --------------------------------------------------------------------------------------------
def run_mercia(target: str, out_dir: str, schemas: dict[str, str] | None = None) -> dict[str, Any]:
    """run_study on `target` (a DuckDB file, or a PostgreSQL URL with `schemas`: cdm/vocab/results)."""
    from mercia.cdm import Cdm
    from mercia.study.package import example_package
    from mercia.study.runner import run_study

    cdm = Cdm.open(target, **{f"{k}_schema": v for k, v in (schemas or {}).items()})
    try:
        run = run_study(example_package(), cdm, out_dir, site="bench")
    finally:
        cdm.close()
    cox = run.tables["cox_adjusted"].data.set_index("term")
    km = run.tables["km_summary"].data
    inc = run.tables["hf_incidence_population"].data
    total = inc[(inc["age_group"].astype(str) == "Total") & (inc["calendar_year"].astype(str) == "Total")]
    return {
        "timings": run.timings,
        # Every released table, to compare the engines (sorted rows, so row order does not count).
        "released": {name: _canonical(t.data) for name, t in run.tables.items()},
        "cohorts": run.tables["cohort_counts"].data[["cohort_id", "persons"]].to_dict("list"),
        "cox_coef": {t: float(v) for t, v in cox["coef"].items()},
        "km": km[["cohort_id", "n_persons", "n_events"]].astype("float").to_dict("list"),
        "incidence_total": [float(total["n_events"].iloc[0]), float(total["person_years"].iloc[0])],
    }


def _canonical(df: Any) -> list[tuple]:
    """A released table as sorted tuples of text (floats to 9 significant digits), for comparing engines."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if v != v else f"{v:.9g}"
        return str(v)

    return sorted(tuple(cell(v) for v in row) for row in df.itertuples(index=False, name=None))


# ---- the site on Spark ---------------------------------------------------------------------------------
def spark_site(persons: int) -> Path:
    """The cached site as a folder of Parquet CDM tables (made once; a fresh results folder per run)."""
    from mercia.cdm import Cdm
    from mercia.cdm.export import export_parquet

    folder = OUT / f"spark_{persons}"
    if not (folder / "person.parquet").exists():
        shutil.rmtree(folder, ignore_errors=True)
        with Cdm.open(site(persons), read_only=True) as cdm:
            export_parquet(cdm, folder)
    shutil.rmtree(folder / "results", ignore_errors=True)  # the study's cohorts: a fresh results schema
    return folder


# ---- the site on PostgreSQL ----------------------------------------------------------------------------
# OHDSI's CDM DDL indexes (OMOP CDM v5.4 OMOPCDM_postgresql_5.4_indices.sql) on the tables the synthetic
# site fills: person and concept columns of the clinical tables, the vocabulary's lookups.
PG_INDEXES = {
    "person": ["person_id"], "observation_period": ["person_id"], "death": ["person_id"],
    "visit_occurrence": ["person_id", "visit_concept_id"],
    "condition_occurrence": ["person_id", "condition_concept_id"],
    "drug_exposure": ["person_id", "drug_concept_id"],
    "measurement": ["person_id", "measurement_concept_id"],
    "condition_era": ["person_id", "condition_concept_id"], "drug_era": ["person_id", "drug_concept_id"],
    "concept": ["concept_id"], "concept_ancestor": ["ancestor_concept_id", "descendant_concept_id"],
}


def pg_site(persons: int, url: str) -> str:
    """The cached DuckDB site of `persons` copied into PostgreSQL schema synth_<persons> (once; reused while
    its person count matches), with OHDSI's indexes and ANALYZE. Returns the schema. Not timed."""
    import duckdb
    import psycopg
    import pyarrow as pa

    from mercia.cdm import Cdm

    schema = f"synth_{persons}"
    with psycopg.connect(url, autocommit=True) as con:
        have = con.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = "
                           "'person'", [schema]).fetchall()
        if have and con.execute(f'SELECT COUNT(*) FROM "{schema}".person').fetchall()[0][0] == persons:
            return schema
        con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    t0 = time.perf_counter()
    src = duckdb.connect(str(site(persons)), read_only=True)
    cdm = Cdm.open(url, cdm_schema=schema, vocab_schema=schema, results_schema=schema)
    rows = 0
    try:
        present = {r[0] for r in src.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'")
                   .fetchall()}
        for name in cdm.spec.tables:
            if name not in present or name in ("cohort", "cohort_definition"):
                continue
            cdm.create_tables([name])
            reader = src.sql(f'SELECT * FROM main."{name}"').to_arrow_reader(1_000_000)
            for batch in reader:
                cdm.insert_arrow(name, pa.Table.from_batches([batch]))
                rows += batch.num_rows
        for table, cols in PG_INDEXES.items():
            for c in cols:
                cdm.execute(f'CREATE INDEX IF NOT EXISTS "idx_{table}_{c}" ON "{schema}"."{table}" ("{c}")')
        cdm.execute("ANALYZE")
    finally:
        cdm.close()
        src.close()
    print(f"copied the {persons:,}-person site into PostgreSQL schema {schema} ({rows:,} rows, indexes, "
          f"ANALYZE) in {time.perf_counter() - t0:.0f} s (not timed)", flush=True)
    return schema


# ---- peer ----------------------------------------------------------------------------------------------
def _days(s: Any) -> Any:
    """A date column as int64 days since 1970-01-01 (NaT -> a large sentinel)."""
    import numpy as np
    import pandas as pd

    v = pd.to_datetime(s).to_numpy().astype("datetime64[D]")
    out = v.astype(np.int64)
    out[np.isnat(v)] = np.iinfo(np.int64).max // 4
    return out


def export_rows(target: str, ids: dict[str, int], package_hash: str, cov_concepts: list[int],
                schemas: dict[str, str] | None = None) -> dict[str, Any]:
    """The rows a hand-written analysis pulls out: from a DuckDB file, or from PostgreSQL (`schemas`) through
    psycopg's COPY ... TO STDOUT read by pyarrow's CSV reader (the fast way out of PostgreSQL)."""
    wanted = ", ".join(str(int(i)) for i in ids.values())
    concepts = ", ".join(str(int(c)) for c in cov_concepts)
    if not all(c in "0123456789abcdef" for c in package_hash):
        raise ValueError("package_hash: hexadecimal expected")
    results = "results" if schemas is None else f'"{schemas["results"]}"'
    q = {
        # A study stores its cohorts in the results schema under its own block of ids (study_cohort maps
        # them back to the package's ids), as `mercia cohort list` shows them.
        "cohort": "SELECT s.study_cohort_id AS cohort_definition_id, c.subject_id AS person_id, "
        f"c.cohort_start_date, c.cohort_end_date FROM {results}.cohort c JOIN {results}.study_cohort s "
        f"ON s.cohort_definition_id = c.cohort_definition_id AND s.package_hash = '{package_hash}' "
        f"WHERE s.study_cohort_id IN ({wanted})",
        "person": "SELECT person_id, year_of_birth, month_of_birth, day_of_birth, gender_concept_id FROM person",
        "op": "SELECT person_id, observation_period_start_date AS s, observation_period_end_date AS e "
        "FROM observation_period",
        "death": "SELECT person_id, MIN(death_date) AS death_date FROM death GROUP BY person_id",
        "descendants": f"SELECT ancestor_concept_id, descendant_concept_id FROM concept_ancestor "
        f"WHERE ancestor_concept_id IN ({concepts})",
        # Only the covariates' concepts and their descendants, as a hand-written analysis would ask.
        "conditions": "SELECT person_id, condition_concept_id, condition_start_date FROM condition_occurrence "
        f"WHERE condition_concept_id IN ({concepts}) OR condition_concept_id IN (SELECT descendant_concept_id "
        f"FROM concept_ancestor WHERE ancestor_concept_id IN ({concepts}))",
    }
    if schemas is None:
        import duckdb

        con = duckdb.connect(target, read_only=True)
        try:
            return {k: con.sql(s).to_arrow_table().to_pandas(date_as_object=False) for k, s in q.items()}
        finally:
            con.close()
    import io

    import psycopg
    import pyarrow.csv as pacsv

    out = {}
    with psycopg.connect(target, autocommit=True) as con:
        con.execute(f'SET search_path TO "{schemas["cdm"]}"')
        for k, sql in q.items():
            buf = io.BytesIO()
            with con.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv, HEADER)") as cp:
                for chunk in cp:
                    buf.write(chunk)
            buf.seek(0)
            out[k] = pacsv.read_csv(buf).to_pandas(date_as_object=False)  # ISO dates are read as dates
    return out


def time_to_event(rows: dict[str, Any], target_ids: list[int], outcome_id: int) -> Any:
    """Per (cohort, person): first entry, censored at the earliest of observation end, cohort end and
    death; the event is the first outcome start in [index, end] (Mercia's SurvivalSettings with
    censor_at='cohort_end')."""
    import numpy as np

    c = rows["cohort"]
    entries = c[c["cohort_definition_id"].isin(target_ids)].sort_values(
        ["cohort_definition_id", "person_id", "cohort_start_date", "cohort_end_date"]
    )
    idx = entries.drop_duplicates(["cohort_definition_id", "person_id"]).copy()
    idx["index"] = _days(idx["cohort_start_date"])
    idx["cend"] = _days(idx["cohort_end_date"])
    op = rows["op"].assign(s=lambda f: _days(f["s"]), e=lambda f: _days(f["e"]))
    b = idx.merge(op, on="person_id")
    b = b[(b["index"] >= b["s"]) & (b["index"] <= b["e"])]
    b = b.merge(rows["death"], on="person_id", how="left")
    b["death"] = _days(b["death_date"])
    b["end"] = np.minimum(np.minimum(b["e"], b["cend"]), np.where(b["death"] < b["e"], b["death"], b["e"]))
    o = c[c["cohort_definition_id"] == outcome_id][["person_id", "cohort_start_date"]]
    o = o.assign(x=_days(o["cohort_start_date"]))[["person_id", "x"]]
    ev = b[["cohort_definition_id", "person_id", "index", "end"]].merge(o, on="person_id")
    ev = ev[(ev["x"] >= ev["index"]) & (ev["x"] <= ev["end"])]
    first = ev.groupby(["cohort_definition_id", "person_id"])["x"].min().rename("event_day").reset_index()
    b = b.merge(first, on=["cohort_definition_id", "person_id"], how="left")
    b = b[b["end"] >= b["index"]].copy()
    b["event"] = b["event_day"].notna().astype(int)
    b["time"] = np.where(b["event"] == 1, b["event_day"] - b["index"], b["end"] - b["index"]).astype(float)
    return b


def peer_survival(rows: dict[str, Any], pkg: Any) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    from lifelines import CoxPHFitter, KaplanMeierFitter
    from lifelines.statistics import proportional_hazard_test

    ids = pkg.cohort_ids
    km_a = next(a for a in pkg.analyses if a.table_prefix() == "km")
    cox_a = next(a for a in pkg.analyses if a.table_prefix() == "cox_adjusted")
    out: dict[str, Any] = {"km": {}}
    tte = time_to_event(rows, [ids[t] for t in km_a.targets], ids[km_a.outcome])
    for cid, g in tte.groupby("cohort_definition_id"):
        kmf = KaplanMeierFitter().fit(g["time"], g["event"])
        out["km"][int(cid)] = (len(g), int(g["event"].sum()), float(kmf.median_survival_time_))

    t_id, c_id = ids[cox_a.target], ids[cox_a.comparator]
    d = time_to_event(rows, [t_id, c_id], ids[cox_a.outcome])
    both = d.groupby("person_id")["cohort_definition_id"].nunique()
    d = d[~d["person_id"].isin(both[both > 1].index)].copy()
    p = rows["person"]
    d = d.merge(p[["person_id", "year_of_birth", "gender_concept_id"]], on="person_id")
    d["treatment"] = (d["cohort_definition_id"] == t_id).astype(int)
    d["age"] = pd.to_datetime(d["cohort_start_date"]).dt.year - d["year_of_birth"]
    d["male"] = (d["gender_concept_id"] == 8507).astype(int)
    settings = cox_a.settings
    cond = rows["conditions"]
    cond = cond.assign(day=_days(cond["condition_start_date"]))
    terms = ["treatment", "age", "male"]
    for cov in settings.covariates:
        concepts = set(cov.concept_ids)
        if cov.include_descendants:
            anc = rows["descendants"]
            concepts |= set(anc.loc[anc["ancestor_concept_id"].isin(cov.concept_ids), "descendant_concept_id"])
        r = cond[cond["condition_concept_id"].isin(concepts)][["person_id", "day"]]
        m = d[["person_id", "index"]].merge(r, on="person_id")
        m = m[(m["day"] >= m["index"] + cov.window_start) & (m["day"] <= m["index"] + cov.window_end)]
        d[cov.name] = d["person_id"].isin(set(m["person_id"])).astype(int)
        terms.append(cov.name)
    frame = d[["time", "event", *terms]].astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Converged as tightly as Mercia's Newton-Raphson (lifelines' default stops at a relative
        # log-likelihood change of 1e-9, which leaves ~1e-4 in weakly identified terms).
        options = {"precision": 1e-12, "r_precision": 1e-15, "max_steps": 500}
        try:
            cph = CoxPHFitter().fit(frame, duration_col="time", event_col="event", fit_options=options)
        except Exception:
            # lifelines' full Newton step can overshoot on large data (nan delta at 1M persons); a
            # damped step converges to the same optimum.
            options["step_size"] = 0.5
            cph = CoxPHFitter().fit(frame, duration_col="time", event_col="event", fit_options=options)
        ph = proportional_hazard_test(cph, frame, time_transform="rank")
    out["cox_coef"] = {t: float(v) for t, v in cph.params_.items()}
    out["ph_p"] = {str(k): float(v) for k, v in zip(ph.summary.index, ph.summary["p"], strict=True)}
    out["cox_n"] = len(frame)
    assert np.isfinite(list(out["cox_coef"].values())).all()
    return out


def _shift_years(year: Any, month: Any, day: Any, years: Any) -> Any:
    """Day numbers of (year + years, month, day), with 29 February moving to the 28th in common years
    (as DuckDB's date + INTERVAL n YEAR)."""
    import numpy as np

    y = (year + years).astype(np.int64)
    first = ((y - 1970) * 12 + (month - 1)).astype("datetime64[M]").astype("datetime64[D]")
    nxt = ((y - 1970) * 12 + month).astype("datetime64[M]").astype("datetime64[D]")
    dim = (nxt - first).astype(np.int64)
    return first.astype(np.int64) + np.minimum(day, dim) - 1


def peer_incidence(rows: dict[str, Any], pkg: Any) -> dict[str, Any]:
    """Population incidence by age group and calendar year: first outcome only, `washout_days` of
    observation before time at risk starts."""
    import numpy as np
    import pandas as pd

    a_ = next(a for a in pkg.analyses if a.table_prefix() == "hf_incidence_population")
    s = a_.build(pkg.cohort_ids)
    op = rows["op"]
    den = pd.DataFrame(
        {"person_id": op["person_id"], "s": _days(op["s"]) + s.washout_days, "e": _days(op["e"])}
    )
    c = rows["cohort"]
    o = c[(c["cohort_definition_id"] == s.outcome_cohort_id) & c["person_id"].isin(den["person_id"])]
    first = o.assign(x=_days(o["cohort_start_date"])).groupby("person_id")["x"].min()
    den["x"] = den["person_id"].map(first)
    has = den["x"].notna().to_numpy()
    x = den["x"].fillna(0).to_numpy(np.int64)
    a = den["s"].to_numpy(np.int64)
    b = np.where(has, np.minimum(den["e"].to_numpy(np.int64), x), den["e"].to_numpy(np.int64))
    event = has & (x <= den["e"].to_numpy(np.int64))
    keep = a <= b
    pid, a, b, event = den["person_id"].to_numpy()[keep], a[keep], b[keep], event[keep]
    person = rows["person"].set_index("person_id")
    yob = person["year_of_birth"].reindex(pid).to_numpy(np.int64)
    mob = person["month_of_birth"].reindex(pid).fillna(1).to_numpy(np.int64)
    dob = person["day_of_birth"].reindex(pid).fillna(1).to_numpy(np.int64)
    pieces = []
    for k, (lo, hi) in enumerate(s.age_groups):
        start = np.maximum(a, _shift_years(yob, mob, dob, lo))
        end = np.minimum(b, _shift_years(yob, mob, dob, 200 if hi is None else hi + 1) - 1)
        ok = start <= end
        pieces.append(pd.DataFrame({"k": k, "a": start[ok], "b": end[ok], "end": b[ok], "ev": event[ok]}))
    band = pd.concat(pieces, ignore_index=True)
    y0 = band["a"].to_numpy().astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    y1 = band["b"].to_numpy().astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    reps = (y1 - y0 + 1).astype(np.int64)
    row = np.repeat(np.arange(len(band)), reps)
    yr = y0[row] + (np.arange(len(row)) - np.repeat(np.cumsum(reps) - reps, reps))
    jan1 = (yr - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
    dec31 = (yr + 1 - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64) - 1
    a2 = np.maximum(band["a"].to_numpy()[row], jan1)
    b2 = np.minimum(band["b"].to_numpy()[row], dec31)
    ev = band["ev"].to_numpy()[row] & (b2 == band["end"].to_numpy()[row])
    fine = pd.DataFrame({"k": band["k"].to_numpy()[row], "yr": yr, "days": b2 - a2 + 1, "ev": ev.astype(int)})
    fine = fine[fine["days"] > 0]
    table = fine.groupby(["k", "yr"]).agg(days=("days", "sum"), events=("ev", "sum")).reset_index()
    return {
        "cells": len(table),
        "total": [float(table["events"].sum()), float(table["days"].sum() / DAYS_PER_YEAR)],
    }


def run_peer(target: str, schemas: dict[str, str] | None = None) -> dict[str, Any]:
    from mercia.study.package import example_package

    pkg = example_package()
    cox_a = next(a for a in pkg.analyses if a.table_prefix() == "cox_adjusted")
    concepts = sorted({c for cov in cox_a.settings.covariates for c in cov.concept_ids})
    t0 = time.perf_counter()
    rows = export_rows(target, pkg.cohort_ids, pkg.content_hash, concepts, schemas)
    t_export = time.perf_counter() - t0
    t0 = time.perf_counter()
    surv = peer_survival(rows, pkg)
    t_surv = time.perf_counter() - t0
    t0 = time.perf_counter()
    inc = peer_incidence(rows, pkg)
    t_inc = time.perf_counter() - t0
    return {
        "export_s": t_export,
        "survival_s": t_surv,
        "incidence_s": t_inc,
        "exported_rows": sum(len(v) for v in rows.values()),
        **surv,
        "incidence_total": inc["total"],
    }


def compare(ours: dict[str, Any], peer: dict[str, Any]) -> list[str]:
    """Where Mercia's released results and the peer's disagree (empty: they agree)."""
    import math

    problems = []
    for term, v in peer["cox_coef"].items():
        mine = ours["cox_coef"].get(term, math.nan)
        if math.isnan(mine):
            continue  # suppressed by disclosure control (the term rests on too few events)
        if not math.isclose(mine, v, rel_tol=1e-6, abs_tol=1e-6):
            problems.append(f"Cox {term}: {ours['cox_coef'].get(term)} vs lifelines {v}")
    km = ours["km"]
    for cid, n, d in zip(km["cohort_id"], km["n_persons"], km["n_events"], strict=True):
        pn, pd_, _ = peer["km"].get(int(cid), (0, 0, 0))
        if (n, d) != (pn, pd_) and not (math.isnan(n) or math.isnan(d)):
            problems.append(f"KM cohort {cid}: released {n:.0f} persons / {d:.0f} events vs peer {pn} / {pd_}")
    (e1, py1), (e2, py2) = ours["incidence_total"], peer["incidence_total"]
    # Mercia releases person-time rounded (to whole person-years under SACRO).
    if e1 != e2 or abs(py1 - py2) > 0.5 + 1e-9:
        problems.append(f"incidence total: {e1:.0f} events / {py1} PY vs peer {e2:.0f} / {py2:.1f}")
    return problems


def run_engine(engine: str, persons: int, pg_url: str | None) -> dict[str, Any]:
    """Mercia then the peer on one engine; prints the figures, returns Mercia's run."""
    if engine == "postgres":
        import psycopg

        assert pg_url
        cdm_schema = pg_site(persons, pg_url)
        results = f"results_{persons}"
        with psycopg.connect(pg_url, autocommit=True) as con:  # a fresh results schema, as a fresh copy
            con.execute(f'DROP SCHEMA IF EXISTS "{results}" CASCADE')
        schemas = {"cdm": cdm_schema, "vocab": cdm_schema, "results": results}
        target, cleanup = pg_url, None
    elif engine == "spark":
        folder = spark_site(persons)
        schemas, target, cleanup = None, f"spark:{folder}", None
    else:
        work = OUT / f"study_{persons}.duckdb"
        shutil.copyfile(site(persons), work)  # a study writes its cohorts into the CDM: a copy (not timed)
        schemas, target, cleanup = None, str(work), work
    load = os.getloadavg()
    print(f"\n== {engine}: load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at "
          f"{time.strftime('%H:%M UTC', time.gmtime())} ==", flush=True)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        ours = measure(run_mercia, target, str(Path(tmp) / "run"), schemas, children=engine == "spark")
    o = ours["value"]
    t = o["timings"]
    print(f"demo study (sglt2_heart_failure, SACRO) on {persons:,} persons, {engine}; cohorts "
          + ", ".join(f"{c}: {n:,}" for c, n in zip(o["cohorts"]["cohort_id"], o["cohorts"]["persons"], strict=True))
          + " persons")
    print("Mercia phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()))
    jvm = f", child processes (the JVM) peak RSS {ours['peak_child_rss_mib']:,.0f} MiB" if engine == "spark" else ""
    print(f"Mercia run_study {t['total']:.2f} s; process {ours['seconds']:.1f} s (with imports), "
          f"peak RSS {ours['peak_rss_mib']:,.0f} MiB{jvm}")
    if engine == "spark":
        print(f"load average now {os.getloadavg()[0]:.1f}", flush=True)
        return o
    peer = measure(run_peer, target, schemas)
    if cleanup is not None:
        cleanup.unlink(missing_ok=True)
    p = peer["value"]
    mercia_s = sum(t[k] for k in PEER_PHASES)
    peer_s = p["export_s"] + p["survival_s"] + p["incidence_s"]
    print(f"peer    export {p['export_s']:.2f} s ({p['exported_rows']:,} rows) + lifelines KM/Cox/PH "
          f"{p['survival_s']:.2f} s + pandas incidence {p['incidence_s']:.2f} s = {peer_s:.2f} s; "
          f"peak RSS {peer['peak_rss_mib']:,.0f} MiB")
    print(f"ratio   Mercia ({' + '.join(PEER_PHASES)}) {mercia_s:.2f} s / peer {peer_s:.2f} s = "
          f"{mercia_s / peer_s:.2f}")
    problems = compare(o, p)
    withheld = sorted(k for k, v in o["cox_coef"].items() if v != v)
    if withheld:
        print(f"Cox terms withheld by disclosure control (compared only where released): {withheld}")
    print("results: Cox coefficients, KM counts and incidence totals agree with the peer" if not problems
          else f"results DIFFER: {problems}")
    # Issue 4: < 60 s at 1M; issue 14: < 5 minutes and < 8 GiB at 10M (DuckDB).
    limit_s, limit_mib = (300, 8 * 1024) if persons >= 10_000_000 else (60, None)
    ok = t["total"] < limit_s and (limit_mib is None or ours["peak_rss_mib"] < limit_mib)
    peak = f" and {limit_mib // 1024} GiB" if limit_mib else ""
    print(f"target (< {limit_s} s{peak} at {persons:,} persons): {'met' if ok else 'NOT met'} ({t['total']:.1f} s, "
          f"{ours['peak_rss_mib']:,.0f} MiB); load average now {os.getloadavg()[0]:.1f}", flush=True)
    return o


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--engine", nargs="+", choices=ENGINES, default=["duckdb"],
                    help="engines to run the study on, in turn (their released tables are compared)")
    ap.add_argument("--pg-url", default=os.environ.get("MERCIA_BENCH_PG_URL"),
                    help="PostgreSQL server for --engine postgres (default $MERCIA_BENCH_PG_URL)")
    args = ap.parse_args()
    if "postgres" in args.engine and not args.pg_url:
        ap.error("--engine postgres: give --pg-url postgresql://user@host:port/db (or set MERCIA_BENCH_PG_URL)")
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    runs = {e: run_engine(e, args.persons, args.pg_url) for e in args.engine}
    if len(runs) > 1:
        (first, a), *rest = runs.items()
        for other, b in rest:
            differ = sorted(k for k in a["released"].keys() | b["released"].keys()
                            if a["released"].get(k) != b["released"].get(k))
            print(f"released tables, {first} vs {other}: "
                  + (f"all {len(a['released'])} identical" if not differ else f"DIFFER in {differ}"))


if __name__ == "__main__":
    main()
