"""The node's study queue: idempotent on the hash, one decision per study, one release per hash,
and studies interrupted by a stop go back to the queue."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mercia.federation.node.state import NodeStore, StudyStateError, UnknownStudyError

H1, H2 = "a" * 64, "b" * 64


def _submit(store: NodeStore, h: str = H1, approved: bool = False):
    return store.submit(h, name="s", project="p", requested_by="r", package={"x": 1}, signature="sig",
                        approved=approved)


def test_submit_is_idempotent_on_hash(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "q.sqlite")
    rec, created = _submit(store)
    assert created and rec.status == "pending_approval" and rec.runs == 0
    store.decide(H1, approve=True, actor="c")
    again, created = _submit(store)
    assert not created and again.status == "approved"  # the current status, not a new study
    assert len(store.list()) == 1


def test_decisions_only_on_pending(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "q.sqlite")
    _submit(store)
    assert store.decide(H1, approve=False, actor="c", reason="no").status == "rejected"
    with pytest.raises(StudyStateError, match="only a pending study"):
        store.decide(H1, approve=True, actor="c")
    with pytest.raises(UnknownStudyError):
        store.decide(H2, approve=True, actor="c")
    assert store.claim_next() is None  # a rejected study never runs


def test_claim_finish_release_once_and_requeue(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "q.sqlite")
    _submit(store, approved=True)
    rec = store.claim_next()
    assert rec is not None and rec.status == "running" and rec.runs == 1
    assert store.claim_next() is None
    # the node stops mid-run: at the next start the study is approved again and re-runs
    assert NodeStore(tmp_path / "q.sqlite").requeue_interrupted() == [H1]
    rec = store.claim_next()
    assert rec is not None and rec.runs == 2
    assert store.finish(H1, tables=3) is True
    assert store.finish(H1, tables=3) is False  # a second release of the same hash is refused
    rec = store.require(H1)
    assert rec.status == "finished" and rec.released_at is not None


def test_concurrent_claims_take_each_study_once(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "q.sqlite")
    hashes = [f"{i:064x}" for i in range(20)]
    for h in hashes:
        _submit(store, h, approved=True)
    claimed: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        s = NodeStore(tmp_path / "q.sqlite")  # another connection, as another thread or process
        while (rec := s.claim_next()) is not None:
            with lock:
                claimed.append(rec.hash)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(hashes)


def test_unknown_status_filter(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "q.sqlite")
    with pytest.raises(Exception, match="unknown status"):
        store.list("done")
