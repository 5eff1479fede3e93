"""The audit trail: an append-only, hash-chained log of every request, approval, run and release.

One record per line (JSON Lines). Each record holds

    seq        1, 2, 3, ... with no gaps
    time       UTC, ISO 8601 with microseconds
    event      what happened ("study.received", "study.approved", "release", ...)
    actor      who did it (a principal name, or "node"/"hub" for the service itself)
    details    a small JSON object saying what it was about (hashes, names, statuses, counts of tables)
    prev_hash  the previous record's hash ("0" * 64 for the first record)
    hash       sha256 of the canonical JSON of the six fields above

so editing any field of any record changes its hash, and the next record's `prev_hash` no longer
matches; deleting, inserting or reordering records breaks the `seq` run and the chain. What the chain
alone cannot show is a cut tail (the last records removed) or a wholesale rewrite of the file by
someone who recomputes every hash: against those, keep the head (`AuditLog.head()`, or the last line
of `mercia audit verify`) somewhere the writer cannot edit, e.g. at the hub, and verify with that
anchor (`verify_log(path, anchor=...)`); the anchored record must still be there, unchanged.
docs/security.md says more.

Appends are serialised across threads (a lock) and processes (`fcntl.flock` on the log itself), and
each record is written with one `write` call and fsync'd before `append` returns.

The log is for facts about the work, never for the data: `append` refuses details that look
row-level (keys such as person_id or date of birth, or long lists, see `_check_details`). That is a
backstop; the caller's duty is to log hashes, names and statuses only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mercia.errors import MerciaError

GENESIS_HASH = "0" * 64
RECORD_FIELDS = ("seq", "time", "event", "actor", "details", "prev_hash", "hash")

# Keys that only row-level data would carry. Lower-cased, compared against every key at any depth.
ROW_LEVEL_KEYS = frozenset({
    "person_id", "subject_id", "person_source_value", "birth_datetime", "date_of_birth", "dob",
    "year_of_birth", "month_of_birth", "day_of_birth", "rows", "records",
})
# A list this long in an audit record is a table, not a fact about the work.
MAX_LIST_ITEMS = 100
MAX_RECORD_BYTES = 64 * 1024


class AuditError(MerciaError):
    """An audit record cannot be written (bad details), or the log cannot be read."""


def canonical_json(value: Any) -> str:
    """The one serialisation the hashes are taken over: sorted keys, no spaces, UTF-8 text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def record_hash(record: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of every field of the record except `hash` itself."""
    body = {k: record[k] for k in RECORD_FIELDS if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def _check_details(value: Any, path: str = "details") -> None:
    """Refuse details that look like row-level data (see ROW_LEVEL_KEYS and MAX_LIST_ITEMS)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditError(f"audit {path} has a non-string key {key!r}: use string keys")
            if key.lower() in ROW_LEVEL_KEYS:
                raise AuditError(f"audit {path}.{key} looks like row-level data: log hashes, names and "
                                 "statuses, never rows or person identifiers")
            _check_details(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        if len(value) > MAX_LIST_ITEMS:
            raise AuditError(f"audit {path} is a list of {len(value)} items (at most {MAX_LIST_ITEMS}): "
                             "an audit record holds facts about the work, not tables")
        for i, item in enumerate(value):
            _check_details(item, f"{path}[{i}]")
    elif not (value is None or isinstance(value, str | int | float | bool)):
        raise AuditError(f"audit {path} holds a {type(value).__name__}: use JSON values (str, number, "
                         "bool, null, list, dict)")


def _last_line(f: Any) -> bytes:
    """The last complete line of a binary file open for reading (b"" when empty)."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    if end == 0:
        return b""
    block = 4096
    pos = end
    buf = b""
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        buf = f.read(step) + buf
        # The final byte is the newline ending the last record; look for the one before it.
        if buf.count(b"\n") >= 2 or pos == 0:
            break
    if not buf.endswith(b"\n"):
        raise AuditError(f"the audit log {getattr(f, 'name', '')} ends in an incomplete record (a write was "
                         "cut off); run `mercia audit verify` on it and keep a copy before repairing it")
    return buf[:-1].rsplit(b"\n", 1)[-1]


class AuditLog:
    """An append-only, hash-chained JSON Lines log at `path` (created on first append)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, event: str, actor: str, **details: Any) -> dict[str, Any]:
        """Write one record after the current head and return it (with its seq and hash)."""
        if not isinstance(event, str) or not event:
            raise AuditError("an audit record needs a non-empty event name")
        if not isinstance(actor, str) or not actor:
            raise AuditError("an audit record needs a non-empty actor (who did it)")
        _check_details(details)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                last = _last_line(f)
                if last:
                    try:
                        prev = json.loads(last)
                        seq, prev_hash = int(prev["seq"]) + 1, str(prev["hash"])
                    except (ValueError, KeyError, TypeError) as e:
                        raise AuditError(f"the last record of the audit log {self.path} is unreadable ({e}); "
                                         "run `mercia audit verify` on it") from None
                else:
                    seq, prev_hash = 1, GENESIS_HASH
                record: dict[str, Any] = {
                    "seq": seq, "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                    "event": event, "actor": actor, "details": details, "prev_hash": prev_hash,
                }
                try:
                    record["hash"] = record_hash(record)
                    line = (canonical_json(record) + "\n").encode("utf-8")
                except ValueError as e:  # NaN or infinity
                    raise AuditError(f"audit details are not valid JSON ({e})") from None
                if len(line) > MAX_RECORD_BYTES:
                    raise AuditError(f"an audit record of {len(line)} bytes is too large (at most "
                                     f"{MAX_RECORD_BYTES}): log hashes and names, not data")
                f.seek(0, os.SEEK_END)
                f.write(line)  # one write: a record is never interleaved with another's
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return record

    def head(self) -> dict[str, Any]:
        """The anchor to keep elsewhere: {"seq", "hash"} of the last record ({0, GENESIS_HASH} if empty)."""
        if not self.path.exists():
            return {"seq": 0, "hash": GENESIS_HASH}
        with open(self.path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            try:
                last = _last_line(f)
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        if not last:
            return {"seq": 0, "hash": GENESIS_HASH}
        rec = json.loads(last)
        return {"seq": int(rec["seq"]), "hash": str(rec["hash"])}

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record, in file order (unverified: use `verify_log` to check them)."""
        yield from read_records(self.path)


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Parse each line of a log; raises AuditError at the first line that is not a JSON object."""
    p = Path(path)
    if not p.exists():
        return
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise AuditError(f"{p}: line {n} is not JSON ({e})") from None
            if not isinstance(rec, dict):
                raise AuditError(f"{p}: line {n} is not a record")
            yield rec


@dataclass
class AuditVerification:
    ok: bool
    records: int
    problems: list[str] = field(default_factory=list)
    head: dict[str, Any] = field(default_factory=lambda: {"seq": 0, "hash": GENESIS_HASH})


@dataclass
class ChainCheck:
    """Where a check of the chain has got to: resumable, so a log that only grew is checked from where
    the last check stopped (`check_lines`); `by_seq` (each record's hash by seq, for anchors) is kept
    only when asked for."""

    prev_hash: str = GENESIS_HASH
    expected_seq: int = 1
    count: int = 0
    problems: list[str] = field(default_factory=list)
    by_seq: dict[int, str] | None = None


def check_lines(data: bytes, state: ChainCheck) -> None:
    """Check each complete line of `data` (records following those `state` has seen) and advance it."""
    for raw in data.splitlines():
        state.count += 1
        n = state.count
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            state.problems.append(f"line {n}: not a JSON record ({e})")
            state.prev_hash = "?"  # the chain is broken here; the next record will say so too
            state.expected_seq += 1
            continue
        if not isinstance(rec, dict) or set(rec) != set(RECORD_FIELDS):
            keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
            state.problems.append(f"line {n}: fields are {keys}, expected {sorted(RECORD_FIELDS)}")
            state.prev_hash = rec.get("hash", "?") if isinstance(rec, dict) else "?"
            state.expected_seq += 1
            continue
        seq = rec["seq"]
        if seq != state.expected_seq:
            state.problems.append(f"line {n}: seq is {seq}, expected {state.expected_seq} (a record was deleted, "
                                  "inserted or moved)")
        if rec["prev_hash"] != state.prev_hash:
            state.problems.append(f"line {n} (seq {seq}): prev_hash does not match the record before it "
                                  "(a record before it was edited, deleted, inserted or moved)")
        try:
            actual = record_hash(rec)
        except (TypeError, ValueError) as e:
            actual = f"unhashable: {e}"
        if actual != rec["hash"]:
            state.problems.append(f"line {n} (seq {seq}): hash does not match its content (the record was edited)")
        if isinstance(seq, int):
            if state.by_seq is not None:
                state.by_seq[seq] = rec["hash"]
            state.expected_seq = seq + 1
        else:
            state.expected_seq += 1
        state.prev_hash = rec["hash"]


def verify_log(path: str | Path, anchor: dict[str, Any] | None = None) -> AuditVerification:
    """Check every record of the log at `path`: its fields, its hash, its seq and its link to the one
    before. With `anchor` ({"seq", "hash"} kept elsewhere, e.g. an earlier `AuditLog.head()`), also check
    the anchored record is still there unchanged, which detects a cut tail or a rewritten chain."""
    p = Path(path)
    if not p.exists():
        return AuditVerification(False, 0, [f"{p}: no such audit log"])
    with open(p, "rb") as f:
        data = f.read()
    state = ChainCheck(by_seq={})
    if data and not data.endswith(b"\n"):
        state.problems.append("the last line is incomplete (a cut-off write or an edit)")
    check_lines(data, state)
    problems, count, by_seq = state.problems, state.count, state.by_seq or {}
    if anchor is not None:
        a_seq, a_hash = anchor.get("seq"), anchor.get("hash")
        if a_seq == 0:
            pass  # an empty log's anchor holds nothing to check
        elif a_seq not in by_seq:
            problems.append(f"anchor: record seq {a_seq} is missing (the log was cut back to {count} records)")
        elif by_seq[a_seq] != a_hash:
            problems.append(f"anchor: record seq {a_seq} has hash {by_seq[a_seq][:16]}..., the anchor says "
                            f"{str(a_hash)[:16]}... (the chain was rewritten)")
    head = {"seq": count, "hash": state.prev_hash} if count else {"seq": 0, "hash": GENESIS_HASH}
    return AuditVerification(not problems, count, problems, head)
