"""A daemon thread that repeats one step until stopped: the hub's dispatcher, the node's study worker.

Between steps it waits `interval` seconds, or less when woken (an approval, a new study), and not at
all when the step says there is more to do at once. An error in a step is logged and the loop goes on:
one bad study must not stop the service for the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class WakeableLoop:
    """`step()` returns True when it did work and the next step should follow without waiting."""

    def __init__(self, step: Callable[[], bool], *, name: str, what: str, interval: float,
                 logger: logging.Logger) -> None:
        self._step = step
        self._name = name  # the thread's name
        self._what = what  # how the log names it
        self._interval = interval
        self._logger = logger
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self._step()
            except Exception:  # keep serving whatever one step does
                self._logger.exception("%s: unexpected error", self._what)
                busy = False
            if not busy:
                self._wake.wait(self._interval)
                self._wake.clear()
