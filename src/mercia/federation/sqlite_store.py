"""A state file in SQLite that several threads and processes share: the hub's registry, a node's queue.

WAL lets readers go on while one writer commits; synchronous=FULL makes a commit survive a power cut
(a study's release or a site's results are recorded once, so a lost commit could not be redone
safely). Each thread has its own connection (sqlite3 connections are not shared across threads),
in autocommit mode, so that every change is an explicit, short `BEGIN IMMEDIATE` transaction.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def timestamp() -> str:
    """When a row changed, as the state files record it: UTC, ISO 8601, to the millisecond."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class SqliteStore:
    """Opens (and creates) the file with `schema`; subclasses add the queries of their own tables."""

    def __init__(self, path: str | Path, schema: str, *, private: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._con().executescript(schema)  # idempotent; executescript manages its own transaction
        if private:  # the file holds credentials: only its owner may read it
            os.chmod(self.path, 0o600)

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.row_factory = sqlite3.Row
            self._local.con = con
        return con

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
