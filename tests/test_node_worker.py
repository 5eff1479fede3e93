"""The node's worker in-process: an interrupted run is re-run from scratch and released once, a study
that fails says why, and node.yaml errors say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from federation_support import HubKey, make_site, small_study
from mercia.errors import ConfigError
from mercia.federation.audit import AuditLog, verify_log
from mercia.federation.node.cdm_access import CdmAccess
from mercia.federation.node.config import load_node_config
from mercia.federation.node.state import NodeStore
from mercia.federation.node.worker import StudyWorker, designs_dir, results_dir


def _config(tmp_path: Path, **extra: object) -> Path:
    key = HubKey(tmp_path / "key")
    site = make_site(tmp_path / "site.duckdb", persons=3000, seed=1)
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"site": "w", "cdm": str(site), "state_dir": "state", "policy": "opensafely",
                                    "hub_public_key": str(key.public), "tokens": "tokens.json", **extra}))
    return path


def test_interrupted_run_is_rerun_from_scratch_and_released_once(tmp_path: Path) -> None:
    cfg = load_node_config(_config(tmp_path))
    store = NodeStore(cfg.state_dir / "node.sqlite")
    audit = AuditLog(cfg.state_dir / "audit.jsonl")
    pkg = small_study("interrupted")
    h = pkg.content_hash
    store.submit(h, name=pkg.name, project="p", requested_by="r", package=pkg.canonical(), signature="s",
                 approved=True)
    assert store.claim_next() is not None  # running ... and then the node died:
    partial = results_dir(cfg.state_dir, h).parent / f".{h}.partial-abc123"
    partial.mkdir(parents=True)
    (partial / "half-written.json").write_text("{")
    cdm = CdmAccess(cfg)
    worker = StudyWorker(cfg, store, cdm, audit, poll_seconds=0.05)
    try:
        worker.start()  # what a restarted node does first: requeue, then run
        import time

        deadline = time.monotonic() + 120
        while store.require(h).status not in ("finished", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        worker.stop(timeout=60)
        cdm.close()
    rec = store.require(h)
    assert rec.status == "finished" and rec.runs == 2, rec
    assert not partial.exists()
    assert (results_dir(cfg.state_dir, h) / "manifest.json").is_file()
    assert (designs_dir(cfg.state_dir, h) / "cox_adjusted.npz").is_file()
    assert store.finish(h, tables=1) is False  # released already: never again
    events = [r["event"] for r in audit.records()]
    assert events.count("release") == 1 and "study.requeued" in events
    assert verify_log(cfg.state_dir / "audit.jsonl").ok


def test_a_study_that_cannot_run_fails_with_its_reason(tmp_path: Path) -> None:
    cfg = load_node_config(_config(tmp_path))
    store = NodeStore(cfg.state_dir / "node.sqlite")
    audit = AuditLog(cfg.state_dir / "audit.jsonl")
    pkg = small_study("fails")
    store.submit(pkg.content_hash, name=pkg.name, project="p", requested_by="r",
                 package={**pkg.canonical(), "name": "changed after hashing"}, signature="s", approved=True)
    cdm = CdmAccess(cfg)
    try:
        assert StudyWorker(cfg, store, cdm, audit).run_next() is True
    finally:
        cdm.close()
    rec = store.require(pkg.content_hash)
    assert rec.status == "failed" and "no longer matches its hash" in (rec.error or "")
    assert rec.released_at is None


@pytest.mark.parametrize(("content", "message"), [
    ("site: [unclosed", "not valid YAML"),
    ("- a list", "expected a mapping"),
    ("site: x\ncdm: a.duckdb\n", "state_dir"),
    ("site: 'bad name!'\ncdm: a.duckdb\nstate_dir: s\nhub_public_key: k\ntokens: t\n", "site"),
    ("site: x\ncdm: a.duckdb\nstate_dir: s\nhub_public_key: k\ntokens: t\npolicy: lax\n", "policy"),
    ("site: x\ncdm: a.duckdb\nstate_dir: s\nhub_public_key: k\ntokens: t\nsurprise: 1\n", "surprise"),
])
def test_node_config_errors_say_what_to_fix(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_node_config(path)


def test_node_config_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    cfg = load_node_config(_config(tmp_path, tls={"cert": "c.pem", "key": "k.pem"}))
    assert cfg.state_dir == (tmp_path / "state").resolve()
    assert cfg.tls is not None and cfg.tls.cert == (tmp_path / "c.pem").resolve()
    with pytest.raises(ConfigError, match="cannot read the hub's public key"):
        cfg.model_copy(update={"hub_public_key": tmp_path / "nope.pem"}).hub_key_pem()
    with pytest.raises(ConfigError, match="cannot read node config"):
        load_node_config(tmp_path / "missing.yaml")
