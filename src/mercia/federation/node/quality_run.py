"""The custodian's data-quality run from the command line (`mercia node quality-run`).

Two ways, as the custodian's situation gives:

- `ask_node`: ask the running node to start a run (`POST /api/v1/quality/run` with a custodian or admin
  token); it runs in the node's background exactly as the HTTP route starts it. A running node holds a
  DuckDB CDM open, so asking it is the way while it runs.
- `run_here`: run it on this machine as the node does (the node's CDM from node.yaml, the same release
  under the site's policy, the same stored summary in `state_dir/quality/summary.json` and the same audit
  records), in the foreground: for a node that is not running (or a CDM on PostgreSQL). A node started
  afterwards, or running, answers the new summary at once (it reads the stored one on every question).
"""

from __future__ import annotations

import getpass
from typing import Any

import httpx

from mercia.errors import MerciaError
from mercia.federation.audit import AuditLog
from mercia.federation.node.config import NodeConfig
from mercia.federation.node.quality import QualityStore, released_quality

API = "/api/v1"


class QualityRunError(MerciaError):
    """A request the node refused or could not be made: one line saying what to do."""


def _actor() -> str:
    try:
        return f"custodian:{getpass.getuser()}"
    except Exception:  # no user name in this environment (containers)
        return "custodian:local"


def ask_node(url: str, token: str, *, timeout: float = 30.0, verify: Any = True) -> dict[str, Any]:
    """Ask the node at `url` to start a run; its answer (site, started, running, last_run_date)."""
    if not url.startswith(("http://", "https://")):
        raise QualityRunError(f"--node {url!r}: give the node's URL, http(s)://host:port")
    if not token:
        raise QualityRunError("--token: give a custodian or admin token of the node (mercia node token NAME "
                              "--role custodian)")
    try:
        r = httpx.post(url.rstrip("/") + API + "/quality/run", timeout=timeout, verify=verify,
                       headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as e:
        raise QualityRunError(f"the node at {url} did not answer ({type(e).__name__}: {e})") from None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:300]
        raise QualityRunError(f"the node answered {r.status_code}: {detail}")
    answer = r.json()
    if not isinstance(answer, dict) or "started" not in answer:
        raise QualityRunError(f"{url} answered something other than a Mercia node's run ({r.text[:120]!r})")
    return answer


def run_here(config: NodeConfig, *, progress: Any = None) -> dict[str, Any]:
    """Run the checks and trends on the node's CDM, release and store the summary as the node does;
    the released summary. Audited like a run the node starts (quality.started, then released or failed)."""
    from mercia.cdm import Cdm

    store = QualityStore(config.state_dir)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    audit = AuditLog(config.state_dir / "audit.jsonl")
    actor = _actor()
    try:
        cdm = Cdm.open(config.cdm, create=False, read_only=True, cdm_schema=config.cdm_schema,
                       vocab_schema=config.vocab_schema, results_schema=config.results_schema)
    except Exception as e:  # a DuckDB file a running node holds: ask that node instead
        if "could not set lock" in str(e).lower():
            raise QualityRunError(f"the CDM {config.cdm} is held by another process (a running node?): ask the "
                                  "node to run the checks, mercia node quality-run --node URL --token TOKEN") from None
        raise
    audit.append("quality.started", actor, via="cli")
    try:
        with cdm:
            summary = released_quality(cdm, config.site_policy, site=config.site, progress=progress)
    except Exception as e:
        audit.append("quality.failed", actor, error=type(e).__name__, via="cli")
        raise
    store.save(summary)
    audit.append("quality.released", actor, run_date=summary["run_date"], policy=summary["policy"],
                 overview=summary["overview"]["overall"], via="cli")
    return summary
