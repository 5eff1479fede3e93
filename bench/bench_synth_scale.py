"""Synthetic population at scale: wall time, CPU and peak RSS at 1M and 2M persons (10M on request).

Usage: .venv/bin/python bench/bench_synth_scale.py [--10m] [--old] [persons ...]
  (default sizes 1000000 2000000; --10m adds 10000000; --old also runs each size up to 2M with the
  database cache unbounded, as the generator was before issue 14)
Target (issue 14): 10,000,000 persons generated in under 10 minutes and under 6 GiB peak memory (2 cores);
cost linear in persons. One site (riverside, seed 42) in one DuckDB file, each size in a fresh process.

Peer: the generator before issue 14 (commit 3bb515b), measured on this machine with the same script body
(bench/RESULTS.md). It cannot write 10,000,000 persons (its NHS-number scheme stops at person_id 9,999,999),
so at 10M the ratio is against the straight line through its 1M and 2M figures, labelled as such.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_synth
from harness import machine, measure

# The generator before issue 14, this machine, 2026-12-07 (load average 8-10 from other jobs):
# persons -> (wall s, CPU s, peak RSS MiB).
BEFORE = {1_000_000: (184.1, 74.0, 2066.0), 2_000_000: (413.3, 146.0, 2733.0)}


def before_at(n: int) -> tuple[tuple[float, float, float] | None, str]:
    if n in BEFORE:
        return BEFORE[n], "measured"
    (n1, a), (n2, b) = sorted(BEFORE.items())
    if n < n2:
        return None, "not measured"
    line = tuple(x + (y - x) * (n - n1) / (n2 - n1) for x, y in zip(a, b, strict=True))
    return (line[0], line[1], line[2]), "extrapolated linearly from its 1M and 2M figures"


def write_site(persons: int, path: str, bounded: bool) -> dict:
    """bench_synth's site write (same profile and seed), with the database cache left unbounded when asked."""
    from mercia.synth import site as site_mod

    if not bounded:
        site_mod.DB_MEMORY = 1 << 62  # no cap: DuckDB's default (80% of RAM), as before issue 14
    written = bench_synth.write_site(persons, path)
    return {**written, "rows": sum(written["rows"].values())}


def run(n: int, bounded: bool) -> tuple[float, float, float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(write_site, n, str(Path(tmp) / "site.duckdb"), bounded)
    return r["seconds"], r["value"]["cpu"], r["peak_rss_mib"], r["value"]


def main(argv: list[str]) -> None:
    sizes = [int(x) for x in argv if not x.startswith("--")] or [1_000_000, 2_000_000]
    if "--10m" in argv:
        sizes.append(10_000_000)
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    first = None
    for n in sizes:
        wall, cpu, peak, v = run(n, True)
        first = first or cpu / n
        before, how = before_at(n)
        if before is None:
            print(f"    the generator before issue 14 was not measured at {n:,} persons")
            continue
        bw, bc, bp = before
        print(f"\n{n:>11,} persons: {wall:7.1f} s wall, CPU {cpu:6.0f} s, peak RSS {peak:6,.0f} MiB, "
              f"{v['rows'] / 1e6:6.1f} M rows, file {v['bytes'] / 2**20:6,.0f} MiB, "
              f"CPU per person {cpu / n / first:4.2f}x the first size's; load average now {os.getloadavg()[0]:.1f}")
        print(f"    vs the generator before issue 14 ({how}: {bw:.0f} s wall, {bc:.0f} s CPU, {bp:,.0f} MiB): "
              f"peak RSS {peak / bp:4.2f}x, CPU {cpu / bc:4.2f}x, wall {wall / bw:4.2f}x")
        if "--old" in argv and n <= 2_000_000:
            ow, oc, op, _ = run(n, False)
            print(f"    same script, database cache unbounded: {ow:7.1f} s wall, CPU {oc:6.0f} s, "
                  f"peak RSS {op:6,.0f} MiB (bounded/unbounded peak {peak / op:4.2f}x)")


if __name__ == "__main__":
    main(sys.argv[1:])
