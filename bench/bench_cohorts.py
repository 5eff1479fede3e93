"""Cohort generation: Mercia's compiler vs OHDSI's Circe SQL (ohdsi-circepy) on the same DuckDB CDM.

    .venv/bin/python bench/bench_cohorts.py [--persons 100000 1000000] [--repeat 3] [--skip-oracle]
    .venv/bin/python bench/bench_cohorts.py --eunomia-copies 400 [--repeat 3]

For each population size a synthetic site is made with mercia.synth (cached as
bench/out/synth_<persons>.duckdb, gitignored) and these definitions are generated on it:

* the 9 Circe definitions in the shared data's cohorts/ folder (tests/shared_data.py; OHDSI CohortGenerator tests, Phenotype Library);
* 4 of our own on the synthetic vocabulary (new metformin users, T2DM with HbA1c > 58 mmol/mol, AF on
  anticoagulants, long statin eras with hypertension), written as Circe JSON to bench/out/defs/.

With ``--eunomia-copies N`` the population is instead OHDSI's Eunomia GiBleed sample replicated N times
(person ids offset by 10,000 and record ids by 1,000,000 per copy; cached as eunomia_x<N>.duckdb), data
shaped unlike Mercia's own, and only the 9 shared definitions run. The cached files go to bench/out, or
to the folder named by $MERCIA_BENCH_OUT (a 10M-person site takes about 5 GiB).

Mercia: one ``generate_cohorts`` call for the whole set (compile, render, insert into the cohort table,
counts, inclusion masks), in one fresh process (bench/harness.py), timed in total; its Python part
(compile_cohort and rendering each plan, from an empty plan cache) is timed on its own in the same process
after. Circe: run_circe.py in the oracle venv on the same file, one definition at a time, timed on its
SQL alone (rendering and translation excluded, so the comparison favours Circe). The two sides take
turns, `--repeat` times each, each run starting with the database file read once into the operating
system's file cache (read_through), and their medians are compared (wall times on this shared two-core machine
move by a fifth from run to run). Rows are compared per cohort. Figures are printed and written to
bench/out/bench_cohorts_<persons>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# Where the cached sites and the figures go: bench/out, or the folder in MERCIA_BENCH_OUT (a 10M-person site
# is 4-5 GiB: keep it outside the repository).
OUT = Path(os.environ.get("MERCIA_BENCH_OUT") or BENCH / "out")
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))

SEED = 20261125  # the synthetic population's seed: part of the benchmark's definition


def database(persons: int) -> Path:
    """The cached synthetic site of this size, made on first use."""
    path = OUT / f"synth_{persons}.duckdb"
    if path.exists():
        return path
    from mercia.cdm import Cdm
    from mercia.synth import DEFAULT_SITES, generate_site

    OUT.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # a half-written file is never taken for a cache hit
    partial.unlink(missing_ok=True)
    t0 = time.perf_counter()
    cdm = Cdm.open(partial)
    try:
        generate_site(cdm, persons=persons, seed=SEED, profile=DEFAULT_SITES[0])
    finally:
        cdm.close()
    partial.rename(path)
    print(f"generated {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


# Eunomia replicated: ids of copy k are the original's plus k times these (Eunomia's largest person_id is
# 5,343 and its largest record or visit id 355,951, so copies never collide).
EUNOMIA_PERSON_STEP = 10_000
EUNOMIA_RECORD_STEP = 1_000_000


def eunomia_database(copies: int) -> Path:
    """OHDSI's Eunomia GiBleed sample replicated `copies` times into one DuckDB file (cached), with plain
    duckdb (independent of Mercia's loader, as the oracle tests' Eunomia is): in copy k every person id is
    offset by k * 10,000 and every record, visit and era id by k * 1,000,000; the vocabulary and the other
    tables are Eunomia's, once. 400 copies make 1,077,600 persons."""
    import duckdb

    from oracle_support import EUNOMIA_DIR

    path = OUT / f"eunomia_x{copies}.duckdb"
    if path.exists():
        return path
    files = sorted(EUNOMIA_DIR.glob("*.parquet"))
    if not files:
        raise SystemExit(f"--eunomia-copies: no Eunomia Parquet files in {EUNOMIA_DIR}")
    OUT.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    t0 = time.perf_counter()
    con = duckdb.connect(str(partial))
    try:
        for f in files:
            cols = [r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(f)]).fetchall()]
            if "person_id" not in cols:
                con.execute(f'CREATE TABLE main."{f.stem}" AS SELECT * FROM read_parquet(?)', [str(f)])
                continue
            # The table's own id, the visit it points to and the visit before it (0 or NULL: no visit, kept).
            own = {f"{f.stem}_id", "visit_occurrence_id", "preceding_visit_occurrence_id"}
            shifted = []
            for c in cols:
                if c == "person_id":
                    shifted.append(f"person_id + k * {EUNOMIA_PERSON_STEP} AS person_id")
                elif c in own:
                    shifted.append(f'CASE WHEN "{c}" > 0 THEN "{c}" + k * {EUNOMIA_RECORD_STEP} ELSE "{c}" END AS "{c}"')
                else:
                    shifted.append(f'"{c}"')
            con.execute(
                f'CREATE TABLE main."{f.stem}" AS SELECT {", ".join(shifted)} FROM read_parquet(?), '
                f"range({int(copies)}) AS r(k) ORDER BY k, person_id",
                [str(f)],
            )
        con.execute("CHECKPOINT")
    finally:
        con.close()
    partial.rename(path)
    print(f"made {path.name} ({copies} copies of Eunomia) in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


# ---- definitions -----------------------------------------------------------------------------------
def _items(*concepts: tuple[int, str], descendants: bool = True) -> dict[str, Any]:
    return {"items": [{"concept": {"CONCEPT_ID": c, "CONCEPT_NAME": n}, "isExcluded": False,
                       "includeDescendants": descendants, "includeMapped": False} for c, n in concepts]}


def _window(start: int | None, end: int | None) -> dict[str, Any]:
    def bound(days: int | None, side: int) -> dict[str, Any]:
        return {"Coeff": side} if days is None else {"Days": abs(days), "Coeff": -1 if days < 0 else 1}

    return {"Start": bound(start, -1), "End": bound(end, 1)}


def own_definitions() -> dict[str, dict[str, Any]]:
    """Our definitions, as Circe JSON, on the concepts mercia.synth writes (ids from the catalog)."""
    from mercia.vocab import catalog as c

    def ing(k: str) -> tuple[int, str]:
        return c.DRUG_INGREDIENTS[k].concept_id, k

    def cond(k: str) -> tuple[int, str]:
        return c.CONDITIONS[k].concept_id, k

    def cs(id_: int, name: str, *concepts: tuple[int, str]) -> dict[str, Any]:
        return {"id": id_, "name": name, "expression": _items(*concepts)}

    def at_least(n: int, criteria: dict[str, Any], window: dict[str, Any]) -> dict[str, Any]:
        return {"Criteria": criteria, "StartWindow": window, "Occurrence": {"Type": 2, "Count": n}}

    def exactly_none(criteria: dict[str, Any], window: dict[str, Any]) -> dict[str, Any]:
        return {"Criteria": criteria, "StartWindow": window, "Occurrence": {"Type": 0, "Count": 0}}

    def rule(name: str, *criteria: dict[str, Any], demographic: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {"name": name, "expression": {"Type": "ALL", "CriteriaList": list(criteria),
                                             "DemographicCriteriaList": demographic or [], "Groups": []}}

    hba1c = c.MEASUREMENTS["hba1c"].concept_id
    mmol_mol = c.UNITS["mmol_per_mol"].concept_id
    return {
        "new_metformin_users": {
            "ConceptSets": [cs(1, "metformin", ing("metformin")), cs(2, "type 2 diabetes", cond("type2_diabetes"))],
            "PrimaryCriteria": {"CriteriaList": [{"DrugExposure": {"CodesetId": 1, "First": True}}],
                                "ObservationWindow": {"PriorDays": 365, "PostDays": 0},
                                "PrimaryCriteriaLimit": {"Type": "First"}},
            "InclusionRules": [
                rule("adult", demographic=[{"Age": {"Value": 18, "Op": "gte"}}]),
                rule("T2DM before", at_least(1, {"ConditionOccurrence": {"CodesetId": 2}}, _window(None, 0))),
            ],
            "EndStrategy": {"CustomEra": {"DrugCodesetId": 1, "GapDays": 30, "Offset": 0}},
            "CollapseSettings": {"CollapseType": "ERA", "EraPad": 0},
        },
        "t2dm_hba1c_over_58": {
            "ConceptSets": [cs(1, "type 2 diabetes", cond("type2_diabetes")),
                            {"id": 2, "name": "HbA1c", "expression": _items((hba1c, "HbA1c"), descendants=False)}],
            "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 1, "First": True}}],
                                "ObservationWindow": {"PriorDays": 0, "PostDays": 0},
                                "PrimaryCriteriaLimit": {"Type": "First"}},
            "InclusionRules": [rule("HbA1c > 58 mmol/mol within a year", at_least(1, {"Measurement": {
                "CodesetId": 2, "ValueAsNumber": {"Value": 58, "Op": "gt"},
                "Unit": [{"CONCEPT_ID": mmol_mol, "CONCEPT_NAME": "mmol/mol"}]}}, _window(-365, 30)))],
            "CollapseSettings": {"CollapseType": "ERA", "EraPad": 0},
        },
        "af_on_anticoagulants": {
            "ConceptSets": [cs(1, "atrial fibrillation", cond("atrial_fibrillation")),
                            cs(2, "anticoagulants", ing("warfarin"), ing("apixaban"), ing("rivaroxaban")),
                            cs(3, "GI bleeding", cond("gi_bleeding"))],
            "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 1}}],
                                "ObservationWindow": {"PriorDays": 180, "PostDays": 0},
                                "PrimaryCriteriaLimit": {"Type": "All"}},
            "QualifiedLimit": {"Type": "All"}, "ExpressionLimit": {"Type": "All"},
            "InclusionRules": [
                rule("anticoagulant within 90 days", at_least(1, {"DrugExposure": {"CodesetId": 2}}, _window(0, 90))),
                rule("no prior GI bleed", exactly_none({"ConditionOccurrence": {"CodesetId": 3}}, _window(None, -1))),
            ],
            "EndStrategy": {"DateOffset": {"DateField": "StartDate", "Offset": 365}},
            "CensoringCriteria": [{"ConditionOccurrence": {"CodesetId": 3}}],
            "CollapseSettings": {"CollapseType": "ERA", "EraPad": 30},
        },
        "statin_eras_with_hypertension": {
            "ConceptSets": [cs(1, "statins", ing("atorvastatin"), ing("simvastatin")),
                            cs(2, "hypertension", cond("hypertension"))],
            "PrimaryCriteria": {"CriteriaList": [{"DrugEra": {"CodesetId": 1, "EraLength": {"Value": 180, "Op": "gte"}}}],
                                "ObservationWindow": {"PriorDays": 0, "PostDays": 0},
                                "PrimaryCriteriaLimit": {"Type": "All"}},
            "AdditionalCriteria": {"Type": "ANY", "CriteriaList": [
                at_least(1, {"ConditionOccurrence": {"CodesetId": 2}}, _window(None, 0))],
                "DemographicCriteriaList": [], "Groups": []},
            "QualifiedLimit": {"Type": "All"}, "ExpressionLimit": {"Type": "All"},
            "InclusionRules": [],
            "CollapseSettings": {"CollapseType": "ERA", "EraPad": 0},
        },
    }


def definitions(own: bool = True) -> list[tuple[int, str, Path]]:
    """(cohort_id, name, Circe JSON file): the shared definitions, then ours (ids 1001...) unless own=False."""
    from oracle_support import COHORTS_DIR

    out = [(int(p.stem), f"{p.parent.name}/{p.stem}", p) for p in sorted(COHORTS_DIR.glob("*/*.json"))]
    if not own:
        return out
    defs_dir = OUT / "defs"
    defs_dir.mkdir(parents=True, exist_ok=True)
    for i, (name, d) in enumerate(own_definitions().items()):
        path = defs_dir / f"{name}.json"
        path.write_text(json.dumps(d, indent=1) + "\n", encoding="utf-8")
        out.append((1001 + i, f"own/{name}", path))
    return out


# ---- the two runs -----------------------------------------------------------------------------------
def run_mercia(db: str, defs: list[tuple[int, str, str]], connections: int | None = None) -> dict[str, Any]:
    """In a fresh process: the Python part alone, then the whole set in one generate_cohorts call.
    `connections`: DuckDB's parallel connections for this run (None: the engine's own, 2); 1 computes
    on one connection with all of DuckDB's threads."""
    import resource

    from mercia.cdm import Cdm
    from mercia.cdm.engines.duckdb import DuckDBEngine

    if connections is not None:
        DuckDBEngine.parallel_connections = connections  # this benchmark process only
    from mercia.cohorts.circe import load_circe_file
    from mercia.cohorts.compiler import compile_cohort
    from mercia.cohorts.generate import cohort_rows, generate_cohorts
    from mercia.cohorts.plan import PLANS, plan_cohort

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    rows: dict[int, list[tuple[int, str, str]]] = {}
    warnings.simplefilter("ignore")  # unknown concept ids of the shared definitions: expected here
    with Cdm.open(db, results_schema="mercia") as cdm:
        cdm.execute("CREATE SCHEMA IF NOT EXISTS mercia")
        parsed = [(cid, load_circe_file(path)) for cid, _, path in defs]
        t0, c0 = time.perf_counter(), cpu()
        results = generate_cohorts(cdm, parsed)  # first in the process: it pays the imports and cold caches
        total_s, cpu_s = time.perf_counter() - t0, cpu() - c0
        PLANS.clear()  # then the Python part alone, from an empty plan cache as the run above had
        t0 = time.perf_counter()
        for _, d in parsed:
            plan_cohort(compile_cohort(cdm, d.expression), cdm.engine, cdm.table("cohort"))
        python_s = time.perf_counter() - t0
        for cid, _ in parsed:
            rows[cid] = [(int(s), str(a), str(b)) for s, a, b in cohort_rows(cdm, cid)]
    return {"total_s": total_s, "cpu_s": cpu_s, "python_s": python_s, "rows": rows,
            "counts": {r.cohort_id: (r.persons, r.entries) for r in results}}


def run_oracle(db: Path, defs: list[tuple[int, str, Path]]) -> dict[int, Any]:
    from oracle_support import run_circe

    out = {}
    for cid, name, path in defs:
        t0 = time.perf_counter()
        res = run_circe(db, path, cid, results_schema="circe", timeout=3600)
        out[cid] = {"seconds": res.seconds, "wall": time.perf_counter() - t0,
                    "rows": [(int(r["subject_id"]), str(r["cohort_start_date"]), str(r["cohort_end_date"]))
                             for r in res.rows.to_pylist()]}
        print(f"  circe {name}: {res.seconds:.2f} s SQL ({out[cid]['wall']:.0f} s with rendering)", flush=True)
    return out


def read_through(path: Path) -> None:
    """Read the database file once, so each side starts with it in the operating system's file cache.

    Without this the first side to run after the file was written or evicted reads it from disk and the
    other side then finds it cached. Mercia ran first, so its first run paid the reads alone: Eunomia
    x400 3.76 s, then 1.85 and 1.95 s; at 10M persons a run on an uncached file reads all 3 GB of it
    from disk (0.05 GB cached), and the 10M figure was one run of each side. Both sides still start
    with DuckDB's own buffers empty (a fresh process for Mercia, a fresh connection per definition for
    Circe)."""
    with open(path, "rb", buffering=0) as f:
        while f.read(16 << 20):
            pass


def bench(persons: int, skip_oracle: bool, repeat: int, eunomia_copies: int = 0,
          connections: int | None = None) -> dict[str, Any]:
    """One population: the synthetic site of `persons`, or (eunomia_copies > 0) Eunomia replicated, where
    only the nine shared definitions run (ours name concepts of Mercia's synthetic vocabulary)."""
    import statistics

    import duckdb
    from harness import machine, measure

    if eunomia_copies:
        db = eunomia_database(eunomia_copies)
        defs = definitions(own=False)
        con = duckdb.connect(str(db), read_only=True)
        persons = con.execute("SELECT COUNT(*) FROM person").fetchall()[0][0]
        con.close()
        label = f"eunomia_x{eunomia_copies}"
    else:
        db = database(persons)
        defs = definitions()
        label = str(persons)
    on = f"{connections} connection(s)" if connections else "the engine's connections"
    print(f"\n== {persons:,} persons: {len(defs)} cohorts on {db.name}, each side {repeat} time(s); Mercia on "
          f"{on}; load average {os.getloadavg()[0]:.1f} ==", flush=True)
    # The two sides take turns, so a slow spell of the machine falls on both; the medians are compared.
    runs, circe_runs = [], []
    for _ in range(repeat):
        read_through(db)
        runs.append(measure(run_mercia, str(db), [(cid, name, str(p)) for cid, name, p in defs], connections))
        if not skip_oracle:
            read_through(db)
            circe_runs.append(run_oracle(db, defs))
    mercia_totals = [r["value"]["total_s"] for r in runs]
    m = sorted(runs, key=lambda r: r["value"]["total_s"])[len(runs) // 2]  # the median run
    mercia = m["value"]
    circe_totals = [sum(c[cid]["seconds"] for cid, _, _ in defs) for c in circe_runs]
    oracle = circe_runs[sorted(range(len(circe_runs)), key=circe_totals.__getitem__)[len(circe_runs) // 2]] \
        if circe_runs else {}  # the median run
    per = []
    for cid, name, _ in defs:
        mine = sorted(tuple(r) for r in mercia["rows"][cid])
        row: dict[str, Any] = {"cohort_id": cid, "name": name, "entries": len(mine),
                               "persons": len({r[0] for r in mine})}
        if oracle:
            theirs = sorted(tuple(r) for r in oracle[cid]["rows"])
            row.update(circe_s=oracle[cid]["seconds"], circe_entries=len(theirs),
                       circe_persons=len({r[0] for r in theirs}))
            row["same_rows"] = mine == theirs
            row["same_counts"] = (row["entries"], row["persons"]) == (len(theirs), row["circe_persons"])
        per.append(row)
    # Each turn's two runs share the machine's state of the moment: their ratio varies less than either
    # side's time (Circe's median moves by a third from one quiet run to the next).
    paired = [a / b for a, b in zip(mercia_totals, circe_totals, strict=True) if b] if circe_totals else []
    if len(runs) > 1:
        print(f"Mercia totals (s): {', '.join(f'{t:.2f}' for t in mercia_totals)}; median {statistics.median(mercia_totals):.2f}")
        if circe_totals:
            print(f"Circe totals (s):  {', '.join(f'{t:.2f}' for t in circe_totals)}; median {statistics.median(circe_totals):.2f}")
            print(f"Mercia / Circe per turn: {', '.join(f'{r:.2f}' for r in paired)}; "
                  f"median {statistics.median(paired):.2f}")
    total_m = mercia["total_s"]
    total_c = sum(r.get("circe_s", 0.0) for r in per)
    ratio = total_m / total_c if total_c else float("nan")
    print(f"{'cohort':42} {'persons':>9} {'entries':>9} {'Circe s':>9}  rows")
    for r in per:
        same = "" if not oracle else ("same" if r["same_rows"] else ("counts only" if r["same_counts"] else "DIFFER"))
        print(f"{r['name']:42} {r['persons']:>9,} {r['entries']:>9,} {r.get('circe_s', float('nan')):>9.2f}  {same}")
    identical = sum(bool(r.get("same_rows")) for r in per)
    print(f"Mercia total {total_m:.2f} s (one generate_cohorts call, {len(defs)} cohorts; process CPU "
          f"{mercia['cpu_s']:.2f} s), of which Python compile + render {mercia['python_s']:.2f} s")
    if oracle:
        print(f"Circe total {total_c:.2f} s (SQL only)   Mercia / Circe = {ratio:.2f}   "
              f"rows identical: {identical} / {len(per)}")
    else:
        print("Circe not run (--skip-oracle): no ratio, rows not compared")
    print(f"Mercia process (median run): {m['seconds']:.1f} s wall incl. parsing and reading rows back, "
          f"peak RSS {m['peak_rss_mib']:.0f} MiB; load average now {os.getloadavg()[0]:.1f}")
    result = {"persons": persons, "population": label, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "load_average": os.getloadavg(), "mercia_total_s": total_m, "mercia_cpu_s": mercia["cpu_s"],
              "mercia_python_s": mercia["python_s"], "circe_total_s": total_c, "ratio": ratio,
              "rows_identical": identical if oracle else None, "mercia_peak_rss_mib": m["peak_rss_mib"],
              "repeat": repeat, "connections": connections, "mercia_totals_s": mercia_totals, "circe_totals_s": circe_totals,
              "paired_ratio_median": statistics.median(paired) if len(paired) > 1 else None,
              "cohorts": per}
    (OUT / f"bench_cohorts_{label}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--skip-oracle", action="store_true", help="time Mercia only")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side; the medians are compared")
    ap.add_argument("--eunomia-copies", type=int, default=0, metavar="N",
                    help="instead of the synthetic sites: OHDSI's Eunomia replicated N times (400: 1,077,600 "
                    "persons), ids offset per copy; the nine shared definitions")
    ap.add_argument("--connections", type=int, metavar="N",
                    help="Mercia's parallel DuckDB connections (default: the engine's own, 2; 1: one "
                    "connection with all of DuckDB's threads)")
    args = ap.parse_args()
    if args.eunomia_copies < 0:
        ap.error("--eunomia-copies: a whole number of copies, 1 or more")
    if args.connections is not None and args.connections < 1:
        ap.error("--connections: a whole number of connections, 1 or more")
    if args.eunomia_copies:
        bench(0, args.skip_oracle, args.repeat, args.eunomia_copies, args.connections)
        return
    for n in args.persons:
        bench(n, args.skip_oracle, args.repeat, connections=args.connections)


if __name__ == "__main__":
    main()
