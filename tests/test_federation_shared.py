"""The pieces hub and node share: the SQLite state file and the wakeable background loop."""

from __future__ import annotations

import logging
import stat
import threading
import time
from pathlib import Path

import pytest

from mercia.federation.background import WakeableLoop
from mercia.federation.sqlite_store import SqliteStore, timestamp

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite", SCHEMA)
    with store._tx() as con:
        con.execute("INSERT INTO t VALUES ('a', 1)")
    with pytest.raises(RuntimeError), store._tx() as con:
        con.execute("INSERT INTO t VALUES ('b', 2)")
        raise RuntimeError("half way")
    assert [tuple(r) for r in store._con().execute("SELECT k, v FROM t")] == [("a", 1)]
    assert store._con().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_private_file_is_owner_only_and_reopening_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "s.sqlite"
    store = SqliteStore(path, SCHEMA, private=True)
    with store._tx() as con:
        con.execute("INSERT INTO t VALUES ('a', 1)")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = SqliteStore(path, SCHEMA)  # the schema is created only if absent
    assert again._con().execute("SELECT v FROM t WHERE k = 'a'").fetchone()[0] == 1


def test_each_thread_has_its_own_connection(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite", SCHEMA)
    seen: list[object] = []
    t = threading.Thread(target=lambda: seen.append(store._con()))
    t.start()
    t.join()
    assert seen[0] is not store._con()


def test_timestamp_is_utc_to_the_millisecond() -> None:
    assert timestamp().endswith("+00:00") and len(timestamp().split(".")[1]) == len("123+00:00")


def _wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_loop_outlives_a_failing_step_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def step() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("one bad study")
        return False

    loop = WakeableLoop(step, name="t-loop", what="test loop", interval=0.01, logger=logging.getLogger("t"))
    with caplog.at_level(logging.ERROR, logger="t"):
        loop.start()
        try:
            assert _wait_for(lambda: len(calls) >= 3)
        finally:
            loop.stop()
    assert "test loop: unexpected error" in caplog.text


def test_busy_steps_follow_at_once_and_idle_steps_wait_until_woken() -> None:
    remaining = [3]
    calls: list[float] = []

    def step() -> bool:
        calls.append(time.monotonic())
        if remaining[0] > 0:
            remaining[0] -= 1
            return True
        return False

    loop = WakeableLoop(step, name="t-loop", what="test loop", interval=60.0, logger=logging.getLogger("t"))
    loop.start()
    try:
        assert _wait_for(lambda: len(calls) == 4)  # three busy steps, then one that found nothing
        time.sleep(0.2)
        assert len(calls) == 4  # idle: waits the interval (60 s)
        loop.wake()
        assert _wait_for(lambda: len(calls) == 5)
    finally:
        started = time.monotonic()
        loop.stop()
    assert time.monotonic() - started < 5  # stop wakes the wait, it does not sit out the interval
