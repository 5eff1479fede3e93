"""The hub's dispatcher: carries each open study to its sites and its results back, exactly once.

A thread. Each pass takes the site runs that are due, and for each:
  not yet submitted -> POST the signed package (the node is idempotent on the hash)
  submitted         -> GET its status; when 'finished', GET the released results and store them
                       once per (hash, site); the site becomes 'collected'. 'held' (the node's
                       custodian checks the results before they leave) is polled like 'running';
                       'withheld' ends the site with the custodian's reason and no results
A node that does not answer (or answers 5xx/429) is retried after base * 2^attempts seconds (with
jitter, capped at max_seconds); its status stays what it last was and `reachable` turns false, so
the researcher sees it. A node that says no (4xx) fails that site with the node's message. A study
whose sites are all done (collected, failed, rejected, withheld) is pooled and closed; `close_study` closes it
with the sites that answered when the researcher says so.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any

from mercia.federation.audit import AuditLog
from mercia.federation.background import WakeableLoop
from mercia.federation.hub.config import HubConfig
from mercia.federation.hub.node_link import NodeLink, NodeRefused, NodeUnavailable
from mercia.federation.hub.pool import pool_results
from mercia.federation.hub.registry import TERMINAL, HubStore, SiteRun

logger = logging.getLogger("mercia.hub")
HELD = "the site's custodian is checking the released results before they leave"


class Dispatcher:
    def __init__(self, config: HubConfig, store: HubStore, audit: AuditLog) -> None:
        self.config = config
        self.store = store
        self.audit = audit
        self._loop = WakeableLoop(self._pass_then_wait, name="mercia-hub-dispatcher", what="hub dispatcher",
                                  interval=config.poll_seconds, logger=logger)
        # One pass at a time, and close_study waits for it: a result is never stored after the close.
        self._pass_lock = threading.Lock()

    def start(self) -> None:
        self._loop.start()

    def wake(self) -> None:
        self._loop.wake()

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)

    def _pass_then_wait(self) -> bool:
        self.run_pass()
        return False  # a pass takes every run that is due; the next is due after the poll interval

    def run_pass(self) -> None:
        with self._pass_lock:
            touched = set()
            for run in self.store.due_runs():
                self._advance(run)
                touched.add(run.hash)
            for h in touched:
                self._close_if_done(h)

    def _backoff(self, attempts: int) -> float:
        r = self.config.retry
        delay = min(r.max_seconds, r.base_seconds * 2 ** max(0, attempts - 1))
        return delay * (0.75 + 0.5 * random.random())

    def _advance(self, run: SiteRun) -> None:
        h, site = run.hash, run.site
        try:
            node = self.store.node(site)
        except Exception as e:
            self.store.update_run(h, site, status="failed", last_error=str(e))
            return
        try:
            with NodeLink(node, timeout=self.config.node_timeout_seconds) as link:
                if not run.submitted:
                    study = self.store.study(h)
                    answer = link.submit({"package": json.loads(study["package"]), "hash": h,
                                          "signature": study["signature"], "project": study["project"],
                                          "requested_by": study["submitted_by"]})
                    self.audit.append("study.sent", "hub", hash=h, site=site, node_status=answer["status"])
                    self.store.update_run(h, site, submitted=1)
                else:
                    answer = link.status(h)
                status = answer["status"]
                if status == "finished":
                    results = link.results(h)
                    if self.store.store_results(h, site, results):
                        self.audit.append("results.collected", "hub", hash=h, site=site,
                                          tables=len(results.get("tables", [])))
                    return
                fields: dict[str, Any] = {"status": status, "reachable": 1, "attempts": 0, "last_error": None,
                                          "detail": None, "next_try": time.time() + self.config.poll_seconds}
                if status in ("failed", "rejected"):
                    fields["detail"] = answer.get("error") or answer.get("reason")
                elif status == "withheld":
                    fields["detail"] = answer.get("output_reason")
                elif status == "held":
                    fields["detail"] = HELD
                self.store.update_run(h, site, **fields)
        except NodeUnavailable as e:
            attempts = run.attempts + 1
            self.store.update_run(h, site, reachable=0, attempts=attempts, last_error=str(e),
                                  next_try=time.time() + self._backoff(attempts))
        except NodeRefused as e:
            if e.status == 404 and run.submitted:
                # The node no longer knows the study (its state was reset): send the package again.
                self.store.update_run(h, site, submitted=0, last_error=str(e), next_try=time.time())
                return
            self.store.update_run(h, site, status="failed", last_error=str(e))
            self.audit.append("site.failed", "hub", hash=h, site=site, error=str(e)[:500])

    def _close_if_done(self, content_hash: str) -> None:
        runs = self.store.site_runs(content_hash)
        if runs and all(r.status in TERMINAL for r in runs) and self.store.study(content_hash)["status"] == "open":
            self._close(content_hash, by="hub")

    def _close(self, content_hash: str, by: str) -> dict[str, Any]:
        excluded, pooled = self.store.close(content_hash, pool_results)
        self.audit.append("study.closed", by, hash=content_hash, sites=sorted(pooled["sites"]), excluded=excluded)
        return pooled

    def close_study(self, content_hash: str, by: str) -> dict[str, Any]:
        """Finish now with the sites that answered; sites still out are excluded."""
        with self._pass_lock:
            if self.store.study(content_hash)["status"] != "open":
                return json.loads(self.store.study(content_hash)["pooled"] or "{}")
            return self._close(content_hash, by)
