"""The audit log: every edit, deletion, insertion, reordering and (with an anchor) truncation is found;
appends from many threads and processes make one unbroken chain; row-level details are refused."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mercia.cli import app
from mercia.errors import MerciaError
from mercia.federation.audit import (
    GENESIS_HASH,
    AuditError,
    AuditLog,
    read_records,
    record_hash,
    verify_log,
)


def make_log(path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.append("study.received" if i % 2 else "study.approved", f"user{i}", study="a" * 64, step=i)
    return log


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def write_lines(path: Path, ls: list[str]) -> None:
    path.write_text("".join(ls), encoding="utf-8")


def test_records_chain_and_verify(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = make_log(path, 4)
    recs = list(read_records(path))
    assert [r["seq"] for r in recs] == [1, 2, 3, 4]
    assert recs[0]["prev_hash"] == GENESIS_HASH
    for a, b in itertools.pairwise(recs):
        assert b["prev_hash"] == a["hash"]
    for r in recs:
        assert record_hash(r) == r["hash"]
        assert r["time"].endswith("+00:00")  # UTC
    v = verify_log(path)
    assert v.ok and v.records == 4 and v.problems == []
    assert v.head == log.head() == {"seq": 4, "hash": recs[-1]["hash"]}


def test_empty_and_missing_logs(tmp_path):
    assert AuditLog(tmp_path / "none.jsonl").head() == {"seq": 0, "hash": GENESIS_HASH}
    v = verify_log(tmp_path / "none.jsonl")
    assert not v.ok and "no such audit log" in v.problems[0]
    (tmp_path / "empty.jsonl").write_text("")
    assert verify_log(tmp_path / "empty.jsonl").ok


@pytest.mark.parametrize("field", ["seq", "time", "event", "actor", "details", "prev_hash", "hash"])
def test_editing_any_field_is_detected(tmp_path, field):
    path = tmp_path / "audit.jsonl"
    make_log(path, 5)
    ls = lines(path)
    rec = json.loads(ls[2])
    new = {"seq": 99, "time": "2020-01-01T00:00:00.000000+00:00", "event": "release", "actor": "mallory",
           "details": {"study": "b" * 64, "step": 2}, "prev_hash": "f" * 64, "hash": "e" * 64}[field]
    rec[field] = new
    ls[2] = json.dumps(rec) + "\n"
    write_lines(path, ls)
    v = verify_log(path)
    assert not v.ok
    assert any("line 3" in p for p in v.problems), v.problems


def test_editing_a_record_and_rehashing_it_breaks_the_next_link(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path, 5)
    ls = lines(path)
    rec = json.loads(ls[1])
    rec["actor"] = "mallory"
    rec["hash"] = record_hash(rec)  # a careful forger fixes this record's own hash
    ls[1] = json.dumps(rec) + "\n"
    write_lines(path, ls)
    v = verify_log(path)
    assert not v.ok
    assert any("line 3" in p and "prev_hash" in p for p in v.problems), v.problems


@pytest.mark.parametrize("where", [0, 2, 4])
def test_deleting_a_record_is_detected(tmp_path, where):
    path = tmp_path / "audit.jsonl"
    make_log(path, 5)
    ls = lines(path)
    del ls[where]
    write_lines(path, ls)
    v = verify_log(path)
    if where == 4:
        # The last record gone leaves a valid shorter chain: only an anchor shows it (next test).
        assert v.ok and v.records == 4
    else:
        assert not v.ok and any("seq" in p for p in v.problems), v.problems


def test_reordering_records_is_detected(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path, 5)
    ls = lines(path)
    ls[1], ls[2] = ls[2], ls[1]
    write_lines(path, ls)
    v = verify_log(path)
    assert not v.ok
    assert any("seq is 3, expected 2" in p for p in v.problems), v.problems


def test_inserting_a_forged_record_is_detected(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path, 4)
    ls = lines(path)
    prev = json.loads(ls[1])
    forged = {"seq": 3, "time": prev["time"], "event": "study.approved", "actor": "custodian",
              "details": {"study": "c" * 64}, "prev_hash": prev["hash"]}
    forged["hash"] = record_hash(forged)
    ls.insert(2, json.dumps(forged) + "\n")
    write_lines(path, ls)
    v = verify_log(path)
    assert not v.ok
    # The forged record links correctly, but the original seq 3 after it now has a gap and a bad link.
    assert any("line 4" in p for p in v.problems), v.problems


def test_truncation_is_detected_with_an_anchor(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = make_log(path, 5)
    anchor = log.head()
    write_lines(path, lines(path)[:3])
    assert verify_log(path).ok  # without the anchor the shorter chain looks whole
    v = verify_log(path, anchor=anchor)
    assert not v.ok and any("seq 5 is missing" in p for p in v.problems), v.problems


def test_a_rewritten_chain_is_detected_with_an_anchor(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = make_log(path, 3)
    anchor = log.head()
    # Someone with write access rewrites the whole chain consistently (every hash recomputed).
    recs = list(read_records(path))
    prev = GENESIS_HASH
    out = []
    for r in recs:
        r["actor"] = "mallory"
        r["prev_hash"] = prev
        r["hash"] = prev = record_hash(r)
        out.append(json.dumps(r) + "\n")
    write_lines(path, out)
    assert verify_log(path).ok
    v = verify_log(path, anchor=anchor)
    assert not v.ok and any("rewritten" in p for p in v.problems)
    # An anchor at the (unchanged) head of a longer log still verifies.
    assert verify_log(path, anchor={"seq": 3, "hash": recs[-1]["hash"]}).ok


def test_garbage_line_and_cut_off_tail(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path, 3)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"seq": 4, "ti')  # a write cut off mid-record
    v = verify_log(path)
    assert not v.ok
    assert any("incomplete" in p for p in v.problems)
    with pytest.raises(AuditError, match="incomplete"):
        AuditLog(path).append("x", "y")  # never chain onto a damaged tail


def test_row_level_details_are_refused(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    for details in ({"person_id": 1}, {"result": {"Person_ID": [1, 2]}}, {"x": [{"date_of_birth": "1970-01-01"}]},
                    {"ids": list(range(101))}, {"obj": object()}, {"x": float("nan")}):
        with pytest.raises(AuditError):
            log.append("release", "node", **details)
    with pytest.raises(AuditError, match="too large"):
        log.append("release", "node", blob="x" * 70_000)
    with pytest.raises(AuditError):
        log.append("", "node")
    with pytest.raises(AuditError):
        log.append("release", "")
    assert issubclass(AuditError, MerciaError)
    assert not (tmp_path / "audit.jsonl").exists() or verify_log(tmp_path / "audit.jsonl").records == 0
    log.append("release", "node", tables=["t1", "t2"], persons_released=True)
    assert verify_log(tmp_path / "audit.jsonl").ok


def test_concurrent_appends_from_threads(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)  # one object shared by threads (its lock) ...
    other = AuditLog(path)  # ... and a second object on the same file (the file lock)

    def work(which: AuditLog, t: int) -> None:
        for i in range(25):
            which.append("request", f"t{t}", i=i)

    threads = [threading.Thread(target=work, args=(log if t % 2 else other, t)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    v = verify_log(path)
    assert v.ok, v.problems[:5]
    assert v.records == 200


def _append_many(path: str, who: int) -> None:
    log = AuditLog(path)
    for i in range(30):
        log.append("request", f"proc{who}", i=i)


def test_concurrent_appends_from_processes(tmp_path):
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")  # fast: the test module is already imported
    procs = [ctx.Process(target=_append_many, args=(str(path), k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    v = verify_log(path)
    assert v.ok, v.problems[:5]
    assert v.records == 120
    per = {}
    for r in read_records(path):
        per.setdefault(r["actor"], []).append(r["details"]["i"])
    assert all(v == list(range(30)) for v in per.values()) and len(per) == 4


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 8), data=st.data())
def test_any_single_byte_edit_is_detected(tmp_path_factory, n, data):
    """Whatever byte of whatever record changes (to anything else), verify finds it (or the JSON breaks)."""
    path = tmp_path_factory.mktemp("log") / "audit.jsonl"
    make_log(path, n)
    raw = bytearray(path.read_bytes())
    body_positions = [i for i, b in enumerate(raw) if b != ord("\n")]
    pos = data.draw(st.sampled_from(body_positions))
    new = data.draw(st.integers(32, 126).filter(lambda b: b != raw[pos]))
    raw[pos] = new
    path.write_bytes(bytes(raw))
    v = verify_log(path)
    # Canonical JSON has no insignificant bytes (no spaces, no escapes, no floats here): a changed byte
    # either breaks the JSON or changes a key or value, and so the record's hash or the chain.
    assert not v.ok


runner = CliRunner()


def test_cli_audit_verify(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = make_log(path, 3)
    head = log.head()
    ok = runner.invoke(app, ["audit", "verify", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "3 records" in ok.output and head["hash"] in ok.output
    anchored = runner.invoke(app, ["audit", "verify", str(path), "--anchor", f"{head['seq']}:{head['hash']}"])
    assert anchored.exit_code == 0, anchored.output
    write_lines(path, lines(path)[:2])
    cut = runner.invoke(app, ["audit", "verify", str(path), "--anchor", f"{head['seq']}:{head['hash']}"])
    assert cut.exit_code == 1 and "missing" in cut.output
    ls = lines(path)
    ls[0] = ls[0].replace("user0", "userX")
    write_lines(path, ls)
    bad = runner.invoke(app, ["audit", "verify", str(path)])
    assert bad.exit_code == 1 and "edited" in bad.output and "Traceback" not in bad.output
    badanchor = runner.invoke(app, ["audit", "verify", str(path), "--anchor", "nonsense"])
    assert badanchor.exit_code == 1 and "SEQ:HASH" in badanchor.output
    missing = runner.invoke(app, ["audit", "verify", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 1 and "no such audit log" in missing.output
