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


class _DescendantsPeak:
    """The peak of the summed resident memory of this process's descendants (Spark's driver JVM), sampled
    every half second from /proc: the JVM is not waited for by Python, so RUSAGE_CHILDREN misses it."""

    def __init__(self) -> None:
        import threading

        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import os

        me = os.getpid()
        while not self._stop.wait(0.5):
            parents: dict[int, int] = {}
            rss: dict[int, int] = {}
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as f:
                        fields = dict(line.split(":", 1) for line in f if ":" in line)
                except OSError:
                    continue
                parents[int(entry)] = int(fields.get("PPid", "0").strip() or 0)
                rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
            total = 0
            for pid in rss:
                p = parents.get(pid, 0)
                while p and p != me:
                    p = parents.get(p, 0)
                if p == me:
                    total += rss[pid]
            self.peak_kib = max(self.peak_kib, total)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def _child(fn: Callable[..., Any], args: tuple, kwargs: dict, queue: Any, children: bool) -> None:
    try:
        descendants = _DescendantsPeak() if children else None
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
        result = {"ok": True, "seconds": seconds, "peak_rss_mib": _peak_rss_mib(), "value": value}
        if descendants is not None:
            result["peak_child_rss_mib"] = descendants.stop()
        queue.put(result)
    except BaseException as e:  # report, never hang the parent
        queue.put({"ok": False, "error": f"{type(e).__name__}: {e}"})


def measure(fn: Callable[..., Any], *args: Any, children: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Run fn(*args, **kwargs) in a spawned process; return seconds, peak_rss_mib and fn's return value;
    with `children`, also peak_child_rss_mib (sampled from /proc by a thread, so only when asked)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, kwargs, queue, children))
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
