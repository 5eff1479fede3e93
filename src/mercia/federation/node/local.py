"""The custodian's commands on the node's own machine (no HTTP): list, approve, reject, and the output
check of held results (held, release, withhold).

They change the node's SQLite queue directly (a running node's worker sees an approval within its
poll interval) and write the same audit records as the API does.
"""

from __future__ import annotations

import getpass

from mercia.federation.audit import AuditLog
from mercia.federation.node.config import NodeConfig
from mercia.federation.node.state import NodeStore, StudyRecord


def _actor() -> str:
    try:
        return f"custodian:{getpass.getuser()}"
    except Exception:  # no user name in this environment (containers)
        return "custodian:local"


def _open(config: NodeConfig) -> tuple[NodeStore, AuditLog]:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    return NodeStore(config.state_dir / "node.sqlite"), AuditLog(config.state_dir / "audit.jsonl")


def list_studies(config: NodeConfig, status: str | None = None) -> list[StudyRecord]:
    store, _ = _open(config)
    return store.list(status)


def resolve_hash(store: NodeStore, prefix: str) -> str:
    """A full hash from a unique prefix (custodians read short hashes)."""
    from mercia.federation.node.state import UnknownStudyError

    matches = [r.hash for r in store.list() if r.hash.startswith(prefix.lower())] if prefix else []
    if len(matches) != 1:
        raise UnknownStudyError(
            f"{'no' if not matches else len(matches)} studies match {prefix!r}; give more of the hash "
            "(mercia node list shows them)"
        )
    return matches[0]


def decide(config: NodeConfig, hash_prefix: str, *, approve: bool, reason: str | None = None) -> StudyRecord:
    store, audit = _open(config)
    content_hash = resolve_hash(store, hash_prefix)
    actor = _actor()
    rec = store.decide(content_hash, approve=approve, actor=actor, reason=reason)
    audit.append("study.approved" if approve else "study.rejected", actor, hash=content_hash, reason=reason,
                 via="cli")
    return rec


def held(config: NodeConfig) -> list[StudyRecord]:
    """The runs whose released results wait for the custodian's output check, oldest first."""
    from mercia.federation.node.output_check import held_runs

    store, _ = _open(config)
    return held_runs(store)


def check_output(config: NodeConfig, hash_prefix: str, *, run: int, release: bool,
                 reason: str | None = None) -> StudyRecord:
    """Release or withhold a held run's results (node/output_check.py), as the API and the portal do."""
    from mercia.federation.node.output_check import decide_output, read_results

    store, audit = _open(config)
    rec = store.require(resolve_hash(store, hash_prefix))
    return decide_output(store, audit, _actor(), rec, run=run, release=release, reason=reason,
                         results=lambda h: read_results(config.state_dir, h), via="cli")
