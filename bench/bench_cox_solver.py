"""The Cox partial likelihood of `mercia.analyses.solvers` on the two workloads that issue 14's
unification slowed down, against lifelines' CoxPHFitter (the named peer) on the stratified one.

    .venv/bin/python bench/bench_cox_solver.py [--repeat 5] [--no-peer]

Workloads (fixed seed, made here):
- stratified: 300,000 rows, 6 terms (3 continuous, 3 binary or 3-level), 8 strata, times in whole days
  up to 10 years (so many tied event times: Efron's handling matters);
- conditional: the cohort method's outcome model, one treatment term over 100,000 matched sets of 3
  (a stratum each), times in whole days up to 1 year.

Timed (CPU seconds, median and minimum of `repeat` runs, in this process): on the stratified workload one
evaluation from scratch (`cox_partial_likelihood`: sort and group, then the sums), one Newton step's
evaluation once the risk sets are made (`CoxRiskSets.likelihood`), and the whole fit (`fit_cox` on a
stratified `CoxData`, Efron ties); lifelines' `CoxPHFitter().fit(..., strata=["stratum"])` on the same
rows (its default Efron ties and stopping rule), and the ratio. On the conditional workload the whole fit
(`fit_cox_strata`, the cohort method's); lifelines is not run on it (a stratum at a time in Python, it
takes minutes on 100,000 strata). CPU time, not wall: the machine this runs on may be shared; the load
average is printed with the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SEED = 20261207
TERMS = ["x_normal_1", "x_normal_2", "x_binary_1", "x_binary_2", "x_normal_3", "x_level"]


def stratified(rows: int = 300_000, strata: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    X = np.column_stack([
        rng.normal(size=rows), rng.normal(size=rows), rng.integers(0, 2, rows), rng.integers(0, 2, rows),
        0.5 * rng.normal(size=rows), rng.integers(0, 3, rows),
    ]).astype(float)
    s = rng.integers(0, strata, rows)
    beta = np.array([0.3, -0.2, 0.5, 0.1, -0.4, 0.2])
    event_time = rng.exponential(np.exp(-(X @ beta) - 0.1 * s) * 2000)
    censor = rng.uniform(0, 3650, rows)
    time_ = np.ceil(np.minimum(event_time, censor))
    return X, time_, (event_time <= censor).astype(float), s


def conditional(sets: int = 100_000, size: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED + 1)
    rows = sets * size
    s = np.repeat(np.arange(sets), size)
    rng.shuffle(s)
    x = (rng.random(rows) < 1 / size).astype(float)
    event_time = rng.exponential(np.exp(-0.26 * x) * 2000)
    censor = rng.uniform(0, 365, rows)
    return x, np.ceil(np.minimum(event_time, censor)), (event_time <= censor).astype(float), s


def cpu_times(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, value = [], None
    for _ in range(repeat):
        t0 = time.process_time()
        value = fn()
        times.append(time.process_time() - t0)
    return times, value


def show(label: str, times: list[float]) -> float:
    med = statistics.median(times)
    print(f"  {label:<46} median {med:7.3f} s   min {min(times):7.3f} s   ({len(times)} runs)")
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-peer", action="store_true", help="skip lifelines")
    args = ap.parse_args()

    from harness import machine

    from mercia.analyses.cohort_method import fit_cox_strata
    from mercia.analyses.solvers import cox_partial_likelihood, cox_risk_sets
    from mercia.analyses.survival import CoxData, fit_cox

    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()}, numpy {np.__version__}")
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")

    X, t, e, s = stratified()
    print(f"\nstratified: {len(t):,} rows, {X.shape[1]} terms, {len(np.unique(s))} strata, "
          f"{int(e.sum()):,} events at {len(np.unique(t)):,} distinct times")
    beta = np.array([0.25, -0.15, 0.45, 0.05, -0.35, 0.15])
    show("one evaluation from scratch", cpu_times(lambda: cox_partial_likelihood(X, t, e, beta, s), args.repeat)[0])
    sets = cox_risk_sets(X, t, e, s)
    show("one Newton step's evaluation (risk sets made)", cpu_times(lambda: sets.likelihood(beta), args.repeat)[0])
    data = CoxData(X, t, e, TERMS, s)
    times, fit = cpu_times(lambda: fit_cox(data), args.repeat)
    ours = show(f"Mercia fit_cox ({fit.iterations} Newton steps)", times)

    if not args.no_peer:
        import lifelines
        import pandas as pd
        from lifelines import CoxPHFitter

        df = pd.DataFrame(X, columns=TERMS).assign(time=t, event=e, stratum=s)
        peer_times, cph = cpu_times(lambda: CoxPHFitter().fit(df, "time", "event", strata=["stratum"]),
                                    max(1, min(args.repeat, 3)))
        peer = show(f"lifelines {lifelines.__version__} CoxPHFitter", peer_times)
        diff = float(np.max(np.abs(cph.params_[TERMS].to_numpy() - fit.coef)))
        print(f"  Mercia / lifelines: {ours / peer:.3f}   (largest coefficient difference {diff:.1e})")

    x, t2, e2, s2 = conditional()
    print(f"\nconditional: {len(t2):,} rows, 1 term, {len(np.unique(s2)):,} strata, {int(e2.sum()):,} events")
    times, est = cpu_times(lambda: fit_cox_strata(x, t2, e2, s2), args.repeat)
    show("Mercia fit_cox_strata (cohort method)", times)
    print(f"  log HR {est.log_rr:.6f}, se {est.se:.6f}")
    print(f"\nload average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
