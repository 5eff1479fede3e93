"""Where the cohort benchmark's time goes: process CPU and wall per statement, Mercia's plans and Circe's SQL.

    .venv/bin/python bench/profile_cohort_steps.py FILE.duckdb [--threads N] [--circe] [--only NAME]

FILE is a site bench/bench_cohorts.py made (synth_<persons>.duckdb, eunomia_x<N>.duckdb; the 13 definitions
on a synthetic site, the 9 shared ones on Eunomia). It is written to (a scratch schema, dropped after, and
Circe's results schema): profile a copy. For each definition, on one connection in this process, Mercia's
plan runs step by step (the checkpoint tables, the insert, the mask counts, the censor count), each
statement timed in wall and in this process's CPU (DuckDB's threads included); with --circe, Circe's
statements (rendered by run_circe.py --sql-only in the oracle venv) run the same way on a fresh
connection per definition, as the benchmark runs them. Process CPU is the figure to compare on a shared
machine: wall time moves with the load, CPU much less (both are printed, with the load average).

Unlike bench_cohorts.py nothing here is parallel: one definition after another, no step shared between
definitions, so the sums are the SQL's own cost, not generate_cohorts' wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(con: Any, sql: str, params: dict[str, Any] | None = None) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), cpu()
    con.execute(sql, params).fetchall()
    return time.perf_counter() - t0, cpu() - c0


def mercia_steps(db: Path, defs: list[tuple[int, str, Path]], threads: int | None) -> None:
    from mercia.cdm import Cdm
    from mercia.cohorts.circe import load_circe_file
    from mercia.cohorts.compiler import compile_cohort
    from mercia.cohorts.plan import plan_cohort

    total_w = total_c = 0.0
    with Cdm.open(db, results_schema="mercia_profile") as cdm:
        cdm.execute("CREATE SCHEMA IF NOT EXISTS mercia_profile")
        cdm.create_tables(["cohort"])
        con = cdm.engine.con  # the plan's SQL is DuckDB's: run it on the engine's connection
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        try:
            for cid, name, path in defs:
                plan = plan_cohort(compile_cohort(cdm, load_circe_file(path).expression), cdm.engine,
                                   cdm.table("cohort"))
                values = plan.values(cid)
                steps = [(s.table.split("_", 3)[-1], s.create) for s in plan.steps] + [("insert", plan.insert)]
                steps += [(label, s) for label, s in (("masks", plan.mask_counts),
                                                      ("censor", plan.persons_before_censor)) if s is not None]
                times = [(label, *timed(con, s.sql, s.bind(values))) for label, s in steps]
                for s in plan.steps:
                    con.execute(s.drop.sql)
                w, c = sum(t[1] for t in times), sum(t[2] for t in times)
                total_w, total_c = total_w + w, total_c + c
                print(f"mercia {name:34} wall {w:6.2f} cpu {c:6.2f} | "
                      + ", ".join(f"{label} {tw:.2f}/{tc:.2f}" for label, tw, tc in times), flush=True)
        finally:
            con.execute("DROP SCHEMA mercia_profile CASCADE")
    print(f"mercia total wall {total_w:.2f} s, cpu {total_c:.2f} s; load {os.getloadavg()[0]:.1f}", flush=True)


def circe_steps(db: Path, defs: list[tuple[int, str, Path]], threads: int | None) -> None:
    import duckdb

    from oracle_support import CIRCE_UNAVAILABLE_REASON, circe_available, circe_python

    if not circe_available():
        raise SystemExit(f"--circe: {CIRCE_UNAVAILABLE_REASON}")
    run_circe = BENCH.parent / "tools" / "circe_oracle" / "run_circe.py"
    sys.path.insert(0, str(run_circe.parent))
    from run_circe import RESULTS_DDL  # the results tables Circe's SQL writes to (plain DDL, no circe import)

    total_w = total_c = 0.0
    for cid, name, path in defs:
        sql = subprocess.run([str(circe_python()), str(run_circe), "--cdm", str(db), "--json", str(path),
                              "--cohort-id", str(cid), "--sql-only"], check=True, capture_output=True,
                             text=True).stdout
        statements = [s.strip() for s in sql.split(";\n") if s.strip()]
        con = duckdb.connect(str(db))  # a fresh connection per definition, as run_circe.py has
        try:
            if threads:
                con.execute(f"SET threads = {int(threads)}")
            con.execute("CREATE SCHEMA IF NOT EXISTS circe")
            for table, cols in RESULTS_DDL.items():
                con.execute(f"CREATE TABLE IF NOT EXISTS circe.{table} {cols}")
            times = [(s, *timed(con, s)) for s in statements]
        finally:
            con.close()
        w, c = sum(t[1] for t in times), sum(t[2] for t in times)
        total_w, total_c = total_w + w, total_c + c
        top = sorted(times, key=lambda t: -t[2])[:3]
        print(f"circe  {name:34} wall {w:6.2f} cpu {c:6.2f} ({len(statements)} statements) | costliest: "
              + ", ".join(f"{' '.join(s.split()[:4])[:40]} {tw:.2f}/{tc:.2f}" for s, tw, tc in top), flush=True)
    print(f"circe  total wall {total_w:.2f} s, cpu {total_c:.2f} s; load {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("db", type=Path, help="a site bench_cohorts.py made (a copy: it is written to)")
    ap.add_argument("--threads", type=int, help="DuckDB threads (default: DuckDB's own, all cores)")
    ap.add_argument("--circe", action="store_true", help="Circe's statements too (needs the oracle venv)")
    ap.add_argument("--only", help="only definitions whose name contains this")
    args = ap.parse_args()
    if not args.db.exists():
        ap.error(f"db: no such file {args.db}")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads: a whole number, 1 or more")
    from bench_cohorts import definitions

    warnings.simplefilter("ignore")  # unknown concept ids of the shared definitions: expected here
    defs = definitions(own=not args.db.name.startswith("eunomia"))
    defs = [d for d in defs if args.only is None or args.only in d[1]]
    print(f"{args.db.name}: {len(defs)} definitions; load average {os.getloadavg()[0]:.1f}", flush=True)
    mercia_steps(args.db, defs, args.threads)
    if args.circe:
        circe_steps(args.db, defs, args.threads)


if __name__ == "__main__":
    main()
