"""The node's study worker: runs approved studies one at a time, beside the API.

A thread in the node process: DuckDB lets one process hold the file writable, and the API's readers
use connections to the same database, so counts still answer while a study runs. A study found
'running' when the node starts was interrupted (the node stopped mid-run): it goes back to the queue
and re-runs from scratch into a fresh staging folder. Nothing of it had left the node (results are
served only once a study is finished), and the release is recorded once per hash, so a restart never
releases twice. With node.yaml `hold_results`, a run that ends is 'held' instead of 'finished': its
released tables wait, unserved, for the custodian's output check (NodeServices.check_output).

A failed run's status says only one of the codes in `FAILURES`: an error's text can be built from the
data (a count, a value, a concept), so it goes to the node's own log and audit line, never into the
status record the hub and the researcher read.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from pathlib import Path
from typing import Any, Protocol

from mercia.errors import CdmError, CohortDefinitionError, DisclosureError, MerciaError, StudyError
from mercia.federation.background import WakeableLoop
from mercia.federation.node.cdm_access import CdmAccess
from mercia.federation.node.config import NodeConfig
from mercia.federation.node.rounds import has_designs, save_design
from mercia.federation.node.state import NodeStore
from mercia.study.package import StudyPackage

logger = logging.getLogger("mercia.node")


class Audit(Protocol):
    def append(self, event: str, actor: str, **details: Any) -> dict[str, Any]: ...


# The only texts a failed study's status carries (code -> message); none is built from the data.
FAILURES: dict[str, str] = {
    "package_mismatch": "the stored package no longer matches its hash; resubmit it",
    "cohort_definition": "a cohort definition could not be generated at this site; the custodian has the "
                         "details in the node's log",
    "cdm": "the site's CDM could not be read or written for this study; the custodian has the details in "
           "the node's log",
    "disclosure": "a result could not be released under the site's disclosure policy; the custodian has the "
                  "details in the node's log",
    "study": "the study could not be run at this site; the custodian has the details in the node's log",
    "internal": "internal error at the node; the custodian has the details in the node's log",
}


class PackageMismatch(MerciaError):
    """The stored package's hash is not the one it was stored under."""


def failure_code(error: BaseException) -> str:
    """The catalogue code for an error: chosen by its type only, never by its text."""
    if isinstance(error, PackageMismatch):
        return "package_mismatch"
    from mercia.study.runner import CohortGenerationError

    if isinstance(error, CohortDefinitionError | CohortGenerationError):
        return "cohort_definition"
    if isinstance(error, CdmError):
        return "cdm"
    if isinstance(error, DisclosureError):
        return "disclosure"
    if isinstance(error, StudyError | MerciaError):
        return "study"
    return "internal"


def failure_message(code: str) -> str:
    return f"{code}: {FAILURES[code]}"


def results_dir(state_dir: Path, content_hash: str) -> Path:
    return state_dir / "results" / content_hash


def designs_dir(state_dir: Path, content_hash: str) -> Path:
    return state_dir / "designs" / content_hash


class StudyWorker:
    """Claims approved studies from the store and runs them; `wake()` after an approval."""

    def __init__(self, config: NodeConfig, store: NodeStore, cdm: CdmAccess, audit: Audit,
                 *, poll_seconds: float = 0.5) -> None:
        self.config = config
        self.store = store
        self.cdm = cdm
        self.audit = audit
        self.poll_seconds = poll_seconds
        self._loop = WakeableLoop(self.run_next, name="mercia-node-worker", what="node worker",
                                  interval=poll_seconds, logger=logger)

    def start(self) -> None:
        for h in self.store.requeue_interrupted():
            self.audit.append("study.requeued", "node", hash=h, reason="the node stopped while it ran")
        self._loop.start()

    def wake(self) -> None:
        self._loop.wake()

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)

    def run_next(self) -> bool:
        """Run the oldest approved study, if any; True if one ran."""
        rec = self.store.claim_next()
        if rec is None:
            return False
        h = rec.hash
        self.audit.append("run.started", "node", hash=h, run=rec.runs)
        try:
            tables = self._run(h)
        except Exception as e:
            # The detail (a MerciaError's text can quote counts or values read from the rows; a driver's
            # may quote data) stays in this node's log and audit; the status says only the code.
            code = failure_code(e)
            if code == "internal":
                logger.error("study %s failed:\n%s", h, traceback.format_exc())
            else:
                logger.warning("study %s failed (%s): %s", h, code, e)
            self.store.fail(h, failure_message(code))
            self.audit.append("run.failed", "node", hash=h, code=code, error=f"{type(e).__name__}: {e}"[:2000])
            return True
        if self.config.hold_results:  # the custodian checks them first; nothing is released yet
            self.store.hold(h)
            self.audit.append("results.held", "node", hash=h, run=rec.runs, tables=tables)
        elif self.store.finish(h, tables=tables):
            self.audit.append("release", "node", hash=h, tables=tables)
        self.audit.append("run.finished", "node", hash=h, tables=tables)
        return True

    def _run(self, content_hash: str) -> int:
        from mercia.study import run_study

        pkg = StudyPackage.from_canonical(self.store.package(content_hash))
        if pkg.content_hash != content_hash:  # the store is the node's own, but check what runs
            raise PackageMismatch(FAILURES["package_mismatch"])
        state = self.config.state_dir
        out = results_dir(state, content_hash)
        designs = designs_dir(state, content_hash)
        complete = (out / "manifest.json").is_file() and (
            not self.config.federated_rounds or has_designs(pkg, designs))
        if not complete:
            # An interrupted run: start again from nothing (results are written atomically, so a
            # folder here is whole, but the regression rows may be missing).
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(designs, ignore_errors=True)
            for partial in out.parent.glob(f".{content_hash}.partial-*"):
                shutil.rmtree(partial, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            cdm = self.cdm.writer()
            run_study(pkg, cdm, out, site_policy=self.config.site_policy, site=self.config.site)
            if self.config.federated_rounds:
                save_design(cdm, pkg, designs)
        return len(list((out / "results").glob("*.json")))
