"""Synthetic generation, this code against an earlier commit's, in the same script: wall, CPU, peak RSS and
how long the simulating thread waited for the writers (and the writers for it).

Usage: .venv/bin/python bench/bench_synth_overlap.py [--before REV] [--repeat K] [persons ...]
  (default 1000000; --before: also run each size with the src/ tree of git revision REV; runs alternate
  this code / REV, each in a fresh process. The two-writer trial of bench/RESULTS.md: check out 2f76531
  and give --before 85e222f)
Target (issue 14): 10,000,000 persons in under 10 minutes on 2 cores, i.e. about 60 s wall per million.
One site (riverside, seed 42) in a fresh DuckDB file, then CHECKPOINT, as bench/bench_synth.py writes it.
The machine's load average is printed beside each run: on a shared machine wall time follows the load,
CPU time much less.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run in the child: the queue between the simulating thread and the writer(s) timed from outside, so the
# same body measures any version of mercia.synth.site that uses queue.Queue.
CHILD = r"""
import json, queue, resource, sys, tempfile, threading, time
from collections import defaultdict
from pathlib import Path
from mercia.cdm import Cdm
from mercia.synth import DEFAULT_SITES, generate_site
from mercia.synth import site as S

waits = defaultdict(float)

class TimedQueue(queue.Queue):
    def put(self, item, *a, **k):
        t = time.perf_counter(); super().put(item, *a, **k); waits["simulation waiting for writers"] += time.perf_counter() - t
    def get(self, *a, **k):
        t = time.perf_counter(); r = super().get(*a, **k)
        waits[threading.current_thread().name + " waiting for simulation"] += time.perf_counter() - t
        return r

class TimedModule:
    Queue = TimedQueue

S.queue = TimedModule
profile = next(p for p in DEFAULT_SITES if p.name == "riverside")
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "site.duckdb"
    cdm = Cdm.open(path)
    t0 = time.perf_counter()
    truth = generate_site(cdm, persons=int(sys.argv[1]), seed=42, profile=profile)
    cdm.execute("CHECKPOINT")
    cdm.close()
    wall = time.perf_counter() - t0
    size = path.stat().st_size
ru = resource.getrusage(resource.RUSAGE_SELF)
with open("/proc/self/status") as f:
    peak = next(int(x.split()[1]) / 1024 for x in f if x.startswith("VmHWM:"))
print(json.dumps({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "peak_rss_mib": peak, "bytes": size,
                  "rows": sum(truth["rows"].values()), "waits": dict(waits)}))
"""


def run(persons: int, src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(persons)], env=env, check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    before = argv[argv.index("--before") + 1] if "--before" in argv else None
    repeat = int(argv[argv.index("--repeat") + 1]) if "--repeat" in argv else 1
    skip = {i + 1 for i, a in enumerate(argv) if a in ("--before", "--repeat")}
    sizes = [int(a) for i, a in enumerate(argv) if not a.startswith("--") and i not in skip] or [1_000_000]
    with tempfile.TemporaryDirectory() as tmp:
        trees = [("this code", ROOT / "src")]
        if before:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", before, "src"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            trees.append((f"at {before}", Path(tmp) / "src"))
        for n in sizes:
            for _ in range(repeat):
                for label, src in trees:
                    load = os.getloadavg()
                    r = run(n, src)
                    waits = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(r["waits"].items()))
                    print(f"{n:>11,} persons, {label:<16} {r['wall']:7.1f} s wall, CPU {r['cpu']:6.1f} s, "
                          f"peak RSS {r['peak_rss_mib']:6,.0f} MiB, {r['rows'] / 1e6:6.1f} M rows, "
                          f"file {r['bytes'] / 2**20:5,.0f} MiB; load average {load[0]:.1f} before, "
                          f"{os.getloadavg()[0]:.1f} after; {waits}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
