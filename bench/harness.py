"""Shared benchmark plumbing: run a measured function in a fresh process, report wall time and peak RSS.

A fresh process per measurement keeps peak memory honest (ru_maxrss never goes down within a process).
Benchmarks print their figures and the ratio against the named peer; results go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import multiprocessing as mp
import platform
import resource
import time
from collections.abc import Callable
from typing import Any


def _peak_rss_mib() -> float:
    """This process's peak resident memory. On Linux the memory map's own high-water mark (VmHWM): a
    spawned child's ru_maxrss also holds the parent's resident size at the fork before the exec, so a
    big parent would set a floor under every child's figure."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(fn: Callable[..., Any], args: tuple, kwargs: dict, queue: Any) -> None:
    try:
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
        peak_mib = _peak_rss_mib()
        queue.put({"ok": True, "seconds": seconds, "peak_rss_mib": peak_mib, "value": value})
    except BaseException as e:  # report, never hang the parent
        queue.put({"ok": False, "error": f"{type(e).__name__}: {e}"})


def measure(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run fn(*args, **kwargs) in a spawned process; return seconds, peak_rss_mib and fn's return value."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, kwargs, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if not result["ok"]:
        raise RuntimeError(result["error"])
    return result


def machine() -> str:
    import os

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, Python {platform.python_version()}"
