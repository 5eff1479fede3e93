"""Data-quality checks on a whole synthetic site: check instances, wall time, peak RSS.

    .venv/bin/python bench/bench_dq.py [--persons 1000000] [--db PATH] [--part both|checks|profiles]

Data: the cached synthetic site of bench/bench_cohorts.py (bench/out/synth_<persons>.duckdb, seed 20261125,
made on first use), or --db. Every check of the catalogue (`mercia.dq.run_checks`) runs on DuckDB in a fresh
process; the database is opened read-only.
Target (issue 16): profiles (`mercia.dq.profile.run_profile`) and all checks on 1,000,000 persons in under
5 minutes, each measured in its own fresh process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import machine, measure


def run(path: str) -> dict:
    from mercia.cdm import Cdm
    from mercia.dq import run_checks

    with Cdm.open(path, read_only=True, create=False) as cdm:
        rows = {t: cdm.row_count(t) for t in ("person", "condition_occurrence", "drug_exposure", "measurement",
                                             "visit_occurrence")}
        r = run_checks(cdm).results
    return {"checks": len(r), "ran": int((r.notApplicable == 0).sum()), "failed": int(r.failed.sum()),
            "errors": int(r.isError.sum()), "not_applicable": int(r.notApplicable.sum()), "rows": rows,
            "failed_ids": sorted(r.loc[r.failed == 1, "checkId"])}


def profile(path: str) -> dict:
    from mercia.cdm import Cdm
    from mercia.dq.profile import run_profile

    with Cdm.open(path, read_only=True, create=False) as cdm:
        p = run_profile(cdm)
    return {"analyses": int((p.analyses.status == "done").sum()), "rows": len(p.results) + len(p.results_dist)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path)
    ap.add_argument("--part", choices=("both", "checks", "profiles"), default="both",
                    help="run the checks, the profiles or both (default)")
    args = ap.parse_args()
    if args.db is None:
        from bench_cohorts import database

        args.db = database(args.persons)
    print(f"machine: {machine()}; uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    seconds = 0.0
    if args.part in ("both", "checks"):
        r = measure(run, str(args.db))
        seconds += r["seconds"]
        v = r["value"]
        print(f"{v['rows']['person']:,} persons ({', '.join(f'{k} {n:,}' for k, n in v['rows'].items() if k != 'person')})")
        print(f"{v['checks']:,} check instances ({v['ran']:,} run, {v['not_applicable']:,} not applicable), "
              f"{v['failed']} failed, {v['errors']} errors: {r['seconds']:.1f} s wall, peak RSS {r['peak_rss_mib']:,.0f} MiB; "
              f"load average now {os.getloadavg()[0]:.1f}")
        for cid in v["failed_ids"]:
            print(f"    failed: {cid}")
    if args.part in ("both", "profiles"):
        pr = measure(profile, str(args.db))
        seconds += pr["seconds"]
        print(f"profiles: {pr['value']['analyses']} analyses, {pr['value']['rows']:,} result rows: {pr['seconds']:.1f} s "
              f"wall, peak RSS {pr['peak_rss_mib']:,.0f} MiB; load average now {os.getloadavg()[0]:.1f}")
    if args.part == "both":
        print(f"target (< 5 min for profiles and checks at 1,000,000 persons): {seconds / 60:.1f} min")

if __name__ == "__main__":
    main()
