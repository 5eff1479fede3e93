"""Ctrl-C during a write: taken at the next safe point, so the transaction rolls back whole.

A KeyboardInterrupt raised in the middle of a database driver's call (or of the rollback it sets off)
can leave the connection in a state where the rollback itself fails, or, arriving during COMMIT, be
reported as a failure of a write that was in fact committed. Inside `deferred_interrupt()` SIGINT only
sets a flag; the writer calls `check()` between statements and before it commits, which raises
`Interrupted` (a KeyboardInterrupt) there, where the transaction's rollback is clean.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """Ctrl-C was pressed during a write; it was rolled back."""


class InterruptFlag:
    def __init__(self) -> None:
        self.requested = False

    def check(self) -> None:
        if self.requested:
            raise Interrupted()


@contextmanager
def deferred_interrupt() -> Iterator[InterruptFlag]:
    """SIGINT sets the flag instead of raising (in the main thread; elsewhere signals do not arrive)."""
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        flag.requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
