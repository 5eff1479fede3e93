"""The node's study queue and release records: SQLite (WAL) in the node's state folder.

One row per study, keyed by the package's content hash, so a resubmitted package is the same study
and can never run twice. A release is recorded once per hash, in the same transaction that marks the
study finished. With node.yaml `hold_results`, a finished run is 'held' instead: its released tables
are written but not served, and the release is recorded only when the custodian releases them
('finished'); withheld results ('withheld') never leave. The API, the worker and `mercia node approve` (another process) share the file: WAL
lets them read while one writes, and every change is a single short transaction.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict

from mercia.errors import MerciaError
from mercia.federation.sqlite_store import SqliteStore, timestamp

StudyStatusValue = Literal["pending_approval", "approved", "running", "held", "finished", "failed", "rejected",
                           "withheld"]
STATUSES: tuple[str, ...] = get_args(StudyStatusValue)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    project TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    package TEXT NOT NULL,
    signature TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    decided_by TEXT,
    reason TEXT,
    error TEXT,
    runs INTEGER NOT NULL DEFAULT 0,
    output_checked_by TEXT,
    output_reason TEXT
);
CREATE TABLE IF NOT EXISTS releases (
    hash TEXT PRIMARY KEY REFERENCES studies(hash),
    released_at TEXT NOT NULL,
    tables INTEGER NOT NULL
);
"""
# Columns added after the first release: a queue file written before them gets them (NULL) on open.
_ADDED_COLUMNS = {"output_checked_by": "TEXT", "output_reason": "TEXT"}


class StudyStateError(MerciaError):
    """A study is not in a state that allows the request (e.g. approving a finished study)."""

    status_code = 409


class UnknownStudyError(MerciaError):
    status_code = 404


class StudyRecord(BaseModel):
    """A study in the queue, as the API shows it (its StudyStatus): no package, no data."""

    model_config = ConfigDict(frozen=True)

    hash: str
    name: str
    project: str
    requested_by: str
    status: StudyStatusValue
    submitted_at: str
    updated_at: str
    decided_by: str | None
    reason: str | None
    error: str | None
    runs: int
    released_at: str | None
    output_checked_by: str | None = None  # the custodian who released or withheld a held run's results
    output_reason: str | None = None  # their reason; for withheld results, what the researcher reads

    def public(self) -> dict[str, Any]:
        """The status record the API returns."""
        return self.model_dump()


class NodeStore(SqliteStore):
    """The queue. Thread-safe (one connection per thread); safe across processes (SQLite locking)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA)
        con = self._con()
        have = {r["name"] for r in con.execute("PRAGMA table_info(studies)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:  # names and types from the fixed mapping above
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it meanwhile
                    con.execute(f"ALTER TABLE studies ADD COLUMN {column} {kind}")

    # ---- reading ---------------------------------------------------------------------------------
    _SELECT = (
        "SELECT s.*, r.released_at FROM studies s LEFT JOIN releases r ON r.hash = s.hash"
    )

    @staticmethod
    def _record(row: sqlite3.Row) -> StudyRecord:
        return StudyRecord(
            hash=row["hash"], name=row["name"], project=row["project"], requested_by=row["requested_by"],
            status=row["status"], submitted_at=row["submitted_at"], updated_at=row["updated_at"],
            decided_by=row["decided_by"], reason=row["reason"], error=row["error"], runs=row["runs"],
            released_at=row["released_at"], output_checked_by=row["output_checked_by"],
            output_reason=row["output_reason"],
        )

    def get(self, content_hash: str) -> StudyRecord | None:
        row = self._con().execute(self._SELECT + " WHERE s.hash = ?", (content_hash,)).fetchone()
        return self._record(row) if row else None

    def require(self, content_hash: str) -> StudyRecord:
        rec = self.get(content_hash)
        if rec is None:
            raise UnknownStudyError(f"no study with hash {content_hash!r} at this node; list them with GET studies")
        return rec

    def list(self, status: str | None = None) -> list[StudyRecord]:
        if status is not None and status not in STATUSES:
            raise MerciaError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        q = self._SELECT + (" WHERE s.status = ?" if status else "") + " ORDER BY s.submitted_at, s.hash"
        return [self._record(r) for r in self._con().execute(q, (status,) if status else ())]

    def package(self, content_hash: str) -> dict[str, Any]:
        row = self._con().execute("SELECT package FROM studies WHERE hash = ?", (content_hash,)).fetchone()
        if row is None:
            raise UnknownStudyError(f"no study with hash {content_hash!r} at this node")
        return json.loads(row["package"])

    # ---- changing --------------------------------------------------------------------------------
    def submit(self, content_hash: str, *, name: str, project: str, requested_by: str,
               package: dict[str, Any], signature: str, approved: bool) -> tuple[StudyRecord, bool]:
        """Queue a study; (record, created). A hash already here is returned as it is (idempotent)."""
        now = timestamp()
        with self._tx() as con:
            cur = con.execute(
                "INSERT OR IGNORE INTO studies (hash, name, project, requested_by, package, signature, status, "
                "submitted_at, updated_at, decided_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (content_hash, name, project, requested_by, json.dumps(package, sort_keys=True), signature,
                 "approved" if approved else "pending_approval", now, now, "auto-approve" if approved else None),
            )
            created = cur.rowcount == 1
        return self.require(content_hash), created

    def decide(self, content_hash: str, *, approve: bool, actor: str, reason: str | None = None) -> StudyRecord:
        """The custodian's decision on a pending study."""
        with self._tx() as con:
            row = con.execute("SELECT status FROM studies WHERE hash = ?", (content_hash,)).fetchone()
            if row is None:
                raise UnknownStudyError(f"no study with hash {content_hash!r} at this node")
            if row["status"] != "pending_approval":
                raise StudyStateError(
                    f"study {content_hash[:12]} is {row['status']}, not pending_approval; only a pending "
                    "study can be approved or rejected"
                )
            con.execute(
                "UPDATE studies SET status = ?, decided_by = ?, reason = ?, updated_at = ? WHERE hash = ?",
                ("approved" if approve else "rejected", actor, reason, timestamp(), content_hash),
            )
        return self.require(content_hash)

    def claim_next(self) -> StudyRecord | None:
        """The oldest approved study, now marked running (one claimant wins)."""
        with self._tx() as con:
            row = con.execute(
                "SELECT hash FROM studies WHERE status = 'approved' ORDER BY updated_at, hash LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            con.execute(
                "UPDATE studies SET status = 'running', runs = runs + 1, error = NULL, updated_at = ? "
                "WHERE hash = ?",
                (timestamp(), row["hash"]),
            )
        return self.require(row["hash"])

    def finish(self, content_hash: str, *, tables: int) -> bool:
        """Mark finished and record the release; False if it was already released (never twice)."""
        now = timestamp()
        with self._tx() as con:
            recorded = _record_release(con, content_hash, now, tables)
            con.execute("UPDATE studies SET status = 'finished', updated_at = ? WHERE hash = ?",
                        (now, content_hash))
            return recorded

    def hold(self, content_hash: str) -> None:
        """A run ended with its released tables written, held for the custodian's output check: not
        served and no release recorded until `check_output` releases them."""
        with self._tx() as con:
            con.execute("UPDATE studies SET status = 'held', updated_at = ? WHERE hash = ?",
                        (timestamp(), content_hash))

    def check_output(self, content_hash: str, *, run: int, release: bool, actor: str, reason: str | None,
                     tables: int) -> tuple[StudyRecord, bool]:
        """The custodian's output check of exactly this held run: released (then 'finished', the release
        recorded once, as after an unheld run) or withheld (terminal). (record, release recorded now)."""
        now = timestamp()
        with self._tx() as con:
            row = con.execute("SELECT status, runs FROM studies WHERE hash = ?", (content_hash,)).fetchone()
            if row is None:
                raise UnknownStudyError(f"no study with hash {content_hash!r} at this node")
            if row["status"] != "held":
                raise StudyStateError(
                    f"study {content_hash[:12]} is {row['status']}, not held; only a held run's results can be "
                    "released or withheld")
            if row["runs"] != run:
                raise StudyStateError(
                    f"run: study {content_hash[:12]} holds the results of run {row['runs']}, not run {run}; "
                    "check the results of the run it holds")
            recorded = release and _record_release(con, content_hash, now, tables)
            con.execute(
                "UPDATE studies SET status = ?, output_checked_by = ?, output_reason = ?, updated_at = ? "
                "WHERE hash = ?", ("finished" if release else "withheld", actor, reason, now, content_hash))
        return self.require(content_hash), recorded

    def fail(self, content_hash: str, error: str) -> None:
        with self._tx() as con:
            con.execute("UPDATE studies SET status = 'failed', error = ?, updated_at = ? WHERE hash = ?",
                        (error, timestamp(), content_hash))

    def requeue_interrupted(self) -> list[str]:
        """Studies left 'running' by a stopped node go back to 'approved' (they re-run from scratch)."""
        with self._tx() as con:
            hashes = [r["hash"] for r in con.execute("SELECT hash FROM studies WHERE status = 'running'")]
            con.execute("UPDATE studies SET status = 'approved', updated_at = ? WHERE status = 'running'",
                        (timestamp(),))
        return hashes


def _record_release(con: sqlite3.Connection, content_hash: str, now: str, tables: int) -> bool:
    """Record the release of a study's results in the caller's transaction; False if it was recorded
    before (a hash is released once, whether its run was held or not)."""
    cur = con.execute("INSERT OR IGNORE INTO releases (hash, released_at, tables) VALUES (?, ?, ?)",
                      (content_hash, now, tables))
    return cur.rowcount == 1
