"""Synthetic population: persons/second, rows per table, wall time and peak RSS, each size in a fresh process.

Usage: .venv/bin/python bench/bench_synth.py [persons ...]   (default 100000 300000 1000000)
Target: 1,000,000 persons with all records in a DuckDB file in under 2 minutes, peak RSS under 4 GiB,
cost linear in persons.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import machine, measure


def write_site(persons: int, path: str) -> dict:
    from mercia.cdm import Cdm
    from mercia.synth import DEFAULT_SITES, generate_site

    profile = next(p for p in DEFAULT_SITES if p.name == "riverside")
    cdm = Cdm.open(path)
    try:
        truth = generate_site(cdm, persons=persons, seed=42, profile=profile)
        cdm.execute("CHECKPOINT")
    finally:
        cdm.close()
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds (all threads) are the load-independent figure on a shared machine.
    return {"rows": truth["rows"], "bytes": os.path.getsize(path), "cpu": ru.ru_utime + ru.ru_stime}


def main(sizes: list[int]) -> None:
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    first = None
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(write_site, n, str(Path(tmp) / "site.duckdb"))
        rows = r["value"]["rows"]
        total = sum(rows.values())
        per_m = r["seconds"] / n * 1e6
        first = first or per_m
        print(f"\n{n:>9,} persons: {r['seconds']:6.1f} s wall, {n / r['seconds']:9,.0f} persons/s, "
              f"{total / r['seconds'] / 1e6:5.2f} M rows/s, peak RSS {r['peak_rss_mib']:,.0f} MiB, "
              f"file {r['value']['bytes'] / 2**20:,.0f} MiB, {per_m / first:4.2f}x the first size's cost per person, "
              f"CPU {r['value']['cpu']:,.0f} s, load average now {os.getloadavg()[0]:.1f}")
        for table, k in rows.items():
            print(f"    {table:<22} {k:>12,}")


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1:]] or [100_000, 300_000, 1_000_000])
