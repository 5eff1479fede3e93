"""The custodian's output check: a run's released results held at the node until released or withheld.

With node.yaml `hold_results: true` a run that ends is 'held' (node/worker.py): its tables are written
to the study's results folder, each having passed `mercia.disclosure.release` as always, but no route
serves them to the hub (GET studies/{hash}/results and regression rounds answer only a 'finished'
study). The custodian reads them here, exactly as the hub would receive them, and decides on exactly
this hash and this run:

    release   -> 'finished': the release is recorded (audit `release`, by the custodian) and the hub
                 collects the very tables the custodian read (`results_sha256` names them)
    withhold  -> 'withheld' (terminal): nothing leaves; the reason (required) is in the status record
                 the hub shows the researcher (`output_reason`); audit `results.withheld`

The API (node/app.py: GET held, GET studies/{hash}/held, POST studies/{hash}/release and /withhold)
and the portal's "Results to check" pages (portal/node_output_check.py) call these same functions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mercia.errors import MerciaError
from mercia.federation.auth import Principal
from mercia.federation.node.state import NodeStore, StudyRecord, StudyStateError
from mercia.federation.node.worker import results_dir

MAX_REASON = 2000
Results = tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]


class ReasonRequired(MerciaError):
    status_code = 422


def read_results(state_dir: Path, content_hash: str) -> Results:
    """A run's released tables, public disclosure log and public manifest, as GET studies/{hash}/results
    sends them once finished (and GET studies/{hash}/held while held)."""
    from mercia.study.runner import public_manifest

    out = results_dir(state_dir, content_hash)
    tables = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    disclosure = json.loads((out / "disclosure.json").read_text())
    # Filtered again at the door: a manifest left by an older version (paths, row counts, free-text
    # notes) leaves only with its released fields.
    manifest = public_manifest(json.loads((out / "manifest.json").read_text()))
    return tables, disclosure, manifest


def results_sha256(tables: list[dict[str, Any]], disclosure: dict[str, Any], manifest: dict[str, Any]) -> str:
    """A digest of the results as the hub receives them (its tables, disclosure log and manifest)."""
    body = json.dumps({"tables": tables, "disclosure": disclosure, "manifest": manifest}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(body.encode()).hexdigest()


def held_runs(store: NodeStore, principal: Principal | None = None) -> list[StudyRecord]:
    """The held runs of the principal's projects (every project for None: the site's own command line),
    oldest first."""
    return sorted((r for r in store.list("held") if principal is None or principal.in_project(r.project)),
                  key=lambda r: (r.updated_at, r.hash))


def require_held(rec: StudyRecord) -> StudyRecord:
    if rec.status != "held":
        raise StudyStateError(f"study {rec.hash[:12]} is {rec.status}, not held: only a held run's results are "
                              "checked here (list them with GET held)")
    return rec


def check_reason(release: bool, reason: str | None) -> str | None:
    """The reason as recorded; a withholding needs one (the researcher reads it instead of results)."""
    text = (reason or "").strip()
    if len(text) > MAX_REASON:
        raise ReasonRequired(f"reason: at most {MAX_REASON} characters (this one has {len(text)})")
    if not release and not text:
        raise ReasonRequired("reason: say why the results are withheld (the hub shows it to the researcher; "
                             "name the table or rule, not its numbers)")
    return text or None


def decide_output(store: NodeStore, audit: Any, actor: str, rec: StudyRecord, *, run: int,
                  release: bool, reason: str | None, results: Callable[[str], Results],
                  expected_sha256: str | None = None, **audited: Any) -> StudyRecord:
    """`actor` releases or withholds the held run `run` of `rec` (the caller checked they may: a
    custodian in its project); recorded in the queue and the audit log. 409 if it is not held, holds another run, or
    (with `expected_sha256`, the digest of the results the custodian read) its results differ."""
    recorded_reason = check_reason(release, reason)
    require_held(rec)
    tables, disclosure, manifest = results(rec.hash)
    digest = results_sha256(tables, disclosure, manifest)
    if expected_sha256 is not None and expected_sha256 != digest:
        raise StudyStateError(f"results_sha256: the held results of study {rec.hash[:12]} are not the ones read "
                              "(their sha256 differs); read them again and decide on what they show")
    new, recorded = store.check_output(rec.hash, run=run, release=release, actor=actor,
                                       reason=recorded_reason, tables=len(tables))
    if release:
        if recorded:
            audit.append("release", actor, hash=rec.hash, run=run, tables=len(tables),
                         results_sha256=digest, reason=recorded_reason, **audited)
    else:
        audit.append("results.withheld", actor, hash=rec.hash, run=run, tables=len(tables),
                     results_sha256=digest, reason=recorded_reason, **audited)
    return new
