"""One count per definition in flight, and released answers kept for a while in memory.

A feasibility count is a whole cohort query (about a second of CPU on 1,000,000 persons), and the same
definitions are asked again and again: by many researchers, and by the hub for each of them.
Concurrent requests for a definition whose count is running wait for that one count instead of each
running it. The answer that counts is the one the privacy ledger keeps (node/privacy_budget.py): a
distinct question is answered once, with its noise, and every repeat gets that answer; this cache only
saves reading it back for `ttl_seconds`. Rate limits and the lockout (auth.CountQueryGuard), the
privacy budget and the audit line still apply to every request.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

Answer = dict[str, Any]


class ReleasedCountCache:
    """Must be used from one event loop (the node's): the bookkeeping needs no locks there."""

    def __init__(self, ttl_seconds: float, max_entries: int = 1024) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self.computed = 0  # counts actually run (for tests and the benchmark)
        self._done: OrderedDict[str, tuple[float, Answer]] = OrderedDict()
        self._running: dict[str, asyncio.Task[Answer]] = {}

    async def answer(self, key: str, compute: Callable[[], Awaitable[Answer]]) -> Answer:
        hit = self._done.get(key)
        if hit is not None:
            if time.monotonic() - hit[0] < self.ttl_seconds:
                return hit[1]
            del self._done[key]
        task = self._running.get(key)
        if task is None:
            self.computed += 1
            # A task of its own: a waiting request that disconnects cancels its wait, not the count.
            task = asyncio.ensure_future(compute())
            self._running[key] = task
            task.add_done_callback(lambda t, k=key: self._finished(k, t))
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Task[Answer]) -> None:
        self._running.pop(key, None)
        if task.cancelled() or task.exception() is not None or self.ttl_seconds <= 0:
            return  # failures are not kept: the next request tries again
        self._done[key] = (time.monotonic(), task.result())
        while len(self._done) > self.max_entries:
            self._done.popitem(last=False)
