"""The node's HTTP API (FastAPI): studies in, released results out, nothing row-level at all.

Every route but /health needs a bearer token (see mercia.federation.auth). What each role may do:

    hub         submit studies, read their status and released results, ask regression rounds,
                ask feasibility counts (if `feasibility_roles` lists it)
    custodian   list studies, approve or reject one by its content hash; with `hold_results`, read
                each run's released results before they leave and release or withhold them
    researcher  feasibility counts only, in their projects, if the site allows it
    admin       list studies and read their status
    quality     the released data-quality summary: custodian and admin, and hub and researcher where
                `feasibility_roles` lists them, in their projects; custodian and admin start a run
    clinician   a trial's candidates and the trials a person may join: row-level, so only from the
                site's own networks (node.yaml clinician_networks), never proxied (node/trial_lookup.py)

Every role acts only in its token's projects: a study of another project is listed to no one and
answers 404 to everything, as if it did not exist.

No route returns a package's rows or anything built from rows but released tables: results are read
from the study's results folder, which `run_study` fills only with tables that passed `release()`.
With node.yaml `hold_results`, a run's results are 'held' until the custodian's output check
(node/output_check.py): only custodian and admin read them, and the hub only once released.
The one exception is the clinician's trial look-ups above, which answer inside the site only.

Under /portal the node serves its custodian's web pages (mercia.portal.node_pages), with accounts of
their own; they decide and read results through the same NodeServices methods as these routes.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' Annotated types.

import functools
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from mercia.disclosure.model_support import ModelRefused
from mercia.errors import MerciaError, StudyError
from mercia.federation import attestation
from mercia.federation.audit import AuditLog
from mercia.federation.auth import (
    CountQueryGuard,
    Principal,
    SignatureRefused,
    TokenStore,
    authenticator,
    require_project,
    verify_package,
)
from mercia.federation.auth import query_key as count_query_key
from mercia.federation.http_common import (
    API,
    ERRORS,
    HASH_PATTERN,
    NAME_PATTERN,
    HashParam,
    Health,
    RequestBody,
    install_error_handlers,
    install_request_limits,
    service_lifespan,
)
from mercia.federation.node.cdm_access import CdmAccess
from mercia.federation.node.concept_count import (
    concept_count_label,
    concept_records_label,
    released_concept_count,
    released_concept_records,
)
from mercia.federation.node.config import NodeConfig
from mercia.federation.node.count_cache import ReleasedCountCache
from mercia.federation.node.feasibility import feasibility_count, feasibility_label, parse_definition
from mercia.federation.node.output_check import (
    MAX_REASON,
    decide_output,
    held_runs,
    read_results,
    require_held,
    results_sha256,
)
from mercia.federation.node.privacy_budget import FeasibilityPrivacy, PrivacyLedger
from mercia.federation.node.quality import QualityStore, released_quality
from mercia.federation.node.rounds import load_design, released_round
from mercia.federation.node.state import NodeStore, StudyRecord, StudyStatusValue, UnknownStudyError
from mercia.federation.node.trial_feasibility import TRIAL_COST, released_trial, trial_label
from mercia.federation.node.trial_lookup import (
    TRIAL_NAME_PATTERN,
    all_trials,
    audit_candidates,
    audit_refused,
    matched,
    peer_allowed,
    proxied,
    trial_by_name,
)
from mercia.federation.node.worker import StudyWorker, designs_dir, results_dir
from mercia.study.package import StudyPackage
from mercia.trials.candidates import find_candidates

logger = logging.getLogger("mercia.node")

COUNT_THREADS = 4  # feasibility counts at once: each is a DuckDB query (itself multi-threaded) plus Python


# ---- request and response models ----------------------------------------------------------------
class SubmitStudy(RequestBody):
    package: dict[str, Any] = Field(description="the package's canonical form (StudyPackage.canonical())")
    hash: str = Field(pattern=HASH_PATTERN, description="sha256 of the canonical JSON; the node recomputes it")
    signature: str = Field(min_length=1, max_length=24_000, description=(
        "the hub's signature (mercia.federation.auth.sign_package): the hash, project, target sites, "
        "requester and expiry it vouches for, and its Ed25519 signature over them"))
    project: str = Field(pattern=NAME_PATTERN)
    requested_by: str = Field(pattern=NAME_PATTERN, description="the researcher who submitted it at the hub")


class Decision(RequestBody):
    reason: str | None = Field(None, max_length=2000)


class StudyStatus(StudyRecord):
    pass  # the store's record is the API's answer; this names it in the API's schema


class StudyList(BaseModel):
    site: str
    studies: list[StudyStatus]


class StudyResults(BaseModel):
    hash: str
    site: str
    tables: list[dict[str, Any]] = Field(description="ReleasedTable.to_dict() of every released table")
    disclosure: dict[str, Any] = Field(description="the public disclosure log of the run (summary, entries)")
    manifest: dict[str, Any]


class HeldRun(BaseModel):
    hash: str
    name: str
    project: str
    requested_by: str
    run: int = Field(description="the run whose results are held (the decision names it)")
    held_at: str
    tables: list[str] = Field(description="the names of its released tables")


class HeldList(BaseModel):
    site: str
    held: list[HeldRun]


class HeldResults(StudyResults):
    run: int = Field(description="the run whose results these are")
    results_sha256: str = Field(description="sha256 of these tables, disclosure log and manifest as the hub would "
                                            "receive them (the audit line of the release names it)")


class ReleaseDecision(RequestBody):
    run: int = Field(ge=1, description="the held run being released (as GET held names it)")
    reason: str | None = Field(None, max_length=MAX_REASON, description="a note kept in the audit log")
    results_sha256: str | None = Field(None, pattern=HASH_PATTERN, description=(
        "the results_sha256 of the results read (GET studies/{hash}/held): 409 if they differ now"))


class WithholdDecision(RequestBody):
    run: int = Field(ge=1, description="the held run being withheld (as GET held names it)")
    reason: str = Field(min_length=1, max_length=MAX_REASON, description=(
        "why (required): the hub shows it to the researcher instead of the results; name the table or "
        "rule, not its numbers"))


class Attestation(RequestBody):
    expires: int = Field(description="unix time after which the attestation is void")
    signature: str = Field(min_length=1, max_length=200, description="the hub's Ed25519 signature, base64")


class FeasibilityQuery(RequestBody):
    definition: dict[str, Any] = Field(description="a cohort definition (cohort language or Mercia's model form)")
    project: str = Field(pattern=NAME_PATTERN)
    requested_by: str | None = Field(None, pattern=NAME_PATTERN, description=(
        "the researcher a hub asks for (hub role only, with the hub's attestation): the count limits and "
        "the privacy budget apply to each researcher, not to the hub as one"))
    attestation: Attestation | None = Field(None, description=(
        "the hub's signature that it authenticated `requested_by` for this definition (federation/attestation.py)"))


class FeasibilityAnswer(BaseModel):
    site: str
    definition_hash: str
    persons: int | None = Field(description="released persons count; null where suppressed")
    entries: int | None
    attrition: dict[str, Any]
    disclosure: dict[str, Any]
    privacy: dict[str, Any] = Field(description=(
        "the differential privacy of the numbers: mechanism, epsilon, and the asker's budget spent and left"))


class TrialFeasibilityQuery(RequestBody):
    definition: dict[str, Any] = Field(description="the trial's cohort definition: its inclusion rules are the criteria")
    history_months: int = Field(36, ge=1, le=240, description="months of incident eligibility released")
    project: str = Field(pattern=NAME_PATTERN)
    requested_by: str | None = Field(None, pattern=NAME_PATTERN, description=(
        "the researcher a hub asks for (hub role only, with the hub's attestation of this question)"))
    attestation: Attestation | None = Field(None, description=(
        "the hub's signature that it authenticated `requested_by` for this question (trial_question)"))


class TrialFeasibilityAnswer(BaseModel):
    trial: str
    site: str
    eligible: int | None = Field(description="released eligible persons; null where suppressed")
    initial: int | None
    funnel: list[dict[str, Any]] = Field(description="per criterion in order: persons remaining after it")
    what_if: list[dict[str, Any]] = Field(description="per criterion: eligible persons gained if it were removed")
    breakdowns: dict[str, list[dict[str, Any]]]
    monthly: dict[str, Any] = Field(description="newly eligible persons per month (incident eligibility)")
    disclosure: dict[str, Any]
    policy: str
    privacy: dict[str, Any]


class ConceptCountQuery(RequestBody):
    concept_id: int = Field(ge=0, le=2_147_483_647, description="an OMOP concept_id in the site's vocabulary")
    descendants: bool = Field(True, description="count persons with the concept or any of its descendants")
    records: bool = Field(False, description=(
        "also release the records of the concept, at most feasibility_privacy.concept_records_cap counted per "
        "person: a second question, charged epsilon_per_query of its own"))
    project: str = Field(pattern=NAME_PATTERN)
    requested_by: str | None = Field(None, pattern=NAME_PATTERN, description=(
        "the researcher a hub asks for (hub role only, with the hub's attestation): the count limits and "
        "the privacy budget apply to each researcher, not to the hub as one"))
    attestation: Attestation | None = Field(None, description=(
        "the hub's signature that it authenticated `requested_by` for this concept question "
        "(federation/attestation.py)"))


class ConceptCountAnswer(BaseModel):
    site: str
    concept_id: int
    descendants: bool
    persons: int | None = Field(description="released persons count (noised, then the site policy); null where "
                                            "suppressed")
    disclosure: dict[str, Any]
    records: int | None = Field(None, description=(
        "released records of the concept, at most `records_per_person_counted` per person (noised at that "
        "sensitivity, then the site policy); null where suppressed or not asked (`records` false)"))
    records_per_person_counted: int | None = Field(None, description=(
        "the cap: a person's records beyond it are not in `records` (null when records were not asked)"))
    records_disclosure: dict[str, Any] | None = Field(None, description="the release log of `records`")
    privacy: dict[str, Any] = Field(description=(
        "the differential privacy of the number: mechanism, epsilon, and the asker's budget spent and left"))


class RoundQuery(RequestBody):
    analysis: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=100)
    model: Literal["cox", "logistic", "poisson"]
    beta: list[float] = Field(min_length=1, max_length=200)


class RoundAnswer(BaseModel):
    site: str
    model: str
    terms: list[str]
    beta: list[float]
    score: list[float]
    information: list[list[float]]
    loglik: float
    n: int = Field(description="released (rounded) rows")
    n_events: int = Field(description="released (rounded) events")
    policy: dict[str, Any]


class CandidateAnswer(BaseModel):
    site: str
    trial: str = Field(description="the trial's file name in the site's trials folder, as the route addresses it")
    trial_name: str = Field(description="the trial's display name (a trial.yaml's name)")
    criteria: list[dict[str, Any]] = Field(description="each criterion's name and what 'missing data' means for it")
    not_applied: list[str] = Field(description="criteria of the trial not applied (still to review)")
    persons: int = Field(description="how many candidates are listed")
    candidates: list[dict[str, Any]] = Field(description=(
        "person_source_value, person_id, age (at the index event), index_date, the criteria met and those "
        "with missing data; persons failing a criterion are not listed"))


class MatchQuery(RequestBody):
    person_source_value: str = Field(min_length=1, max_length=256, description="the site's own patient identifier")


class MatchAnswer(BaseModel):
    site: str
    trials_searched: int
    matches: list[dict[str, Any]] = Field(description="each trial the person fails no criterion of: the trial "
                                                      "(its file name, as /trials/{trial}/candidates takes it) "
                                                      "and its display name, the criteria met and those with "
                                                      "missing data")


class QualitySummary(BaseModel):
    site: str
    run_date: str = Field(description="the day the checks ran (UTC)")
    cdm_version: str
    policy: str = Field(description="the site policy every number below passed")
    overview: dict[str, Any] = Field(description="released checks by status, overall and per category, and "
                                                 "the pass rate (passed over passed, failed and error, in percent)")
    checks: dict[str, Any] = Field(description="table- and field-level checks: columns and rows; numerator and "
                                               "denominator null unless both were released")
    concept_checks: dict[str, Any] = Field(description="concept-level checks, only those whose denominator "
                                                       "was released")
    trends: dict[str, Any] = Field(description="released records per calendar month per domain")
    disclosure: dict[str, Any]


class QualityRun(BaseModel):
    site: str
    started: bool = Field(description="false if a run was already going on")
    running: bool
    last_run_date: str | None = Field(description="the day of the stored summary's run, if any")


# ---- the app ----------------------------------------------------------------------------------------
class NodeServices:
    """What the routes share: the queue, the audit log, the CDM, the worker and the count guard."""

    def __init__(self, config: NodeConfig, *, start_worker: bool = True) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = NodeStore(config.state_dir / "node.sqlite")
        self.audit = AuditLog(config.state_dir / "audit.jsonl")
        self.tokens = TokenStore(config.tokens)
        self.hub_key = config.hub_key_pem()
        self.cdm = CdmAccess(config)
        limits = config.count_limits
        self.guard = CountQueryGuard(max_queries=limits.per_window, window_seconds=limits.window_seconds,
                                     max_repeats=limits.near_identical)
        self.counts = ReleasedCountCache(config.count_cache_seconds)
        self.ledger = PrivacyLedger(config.state_dir)
        self.quality = QualityStore(config.state_dir)
        self.worker = StudyWorker(config, self.store, self.cdm, self.audit)
        self._start_worker = start_worker
        # Regression rounds load a study's rows from disk once, then keep them while rounds go on.
        self._designs: dict[tuple[str, str], Any] = {}
        self._designs_lock = threading.Lock()

    def start(self) -> None:
        self.cdm.writer()  # open the CDM now: a wrong target fails at start, not at the first study
        if self._start_worker:
            self.worker.start()
        self.audit.append("node.started", "node", site=self.config.site)
        if self.config.quality_at_start and self.quality.summary(self.config.site_policy) is None:
            self.run_quality("node")

    def run_quality(self, actor: str) -> bool:
        """Start a data-quality run in the background (unless one is going on); audited at start and end."""
        def compute() -> dict[str, Any]:
            with self.cdm.reader() as cdm:
                return released_quality(cdm, self.config.site_policy, site=self.config.site)

        def done(summary: dict[str, Any] | None, error: str | None) -> None:
            if summary is not None:
                self.audit.append("quality.released", actor, run_date=summary["run_date"], policy=summary["policy"],
                                  overview=summary["overview"]["overall"])
            else:
                self.audit.append("quality.failed", actor, error=error)

        started = self.quality.start(compute, done)
        if started:
            self.audit.append("quality.started", actor)
        return started

    def stop(self) -> None:
        self.worker.stop()
        self.audit.append("node.stopped", "node", site=self.config.site)

    def decide(self, principal: Principal, content_hash: str, approve: bool, reason: str | None,
               **audited: Any) -> StudyRecord:
        """The custodian's decision on exactly this hash, in their projects only (the API's approve and
        reject, and the portal's): recorded in the queue and the audit log; an approval wakes the worker.
        A study not pending approval (decided already, or running) is refused (409)."""
        scoped_study(self.store, principal, content_hash)
        rec = self.store.decide(content_hash, approve=approve, actor=principal.name, reason=reason)
        self.audit.append("study.approved" if approve else "study.rejected", principal.name,
                          hash=content_hash, reason=reason, **audited)
        if approve:
            self.worker.wake()
        return rec

    def released_results(self, content_hash: str) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        """A finished study's released tables, public disclosure log and public manifest, exactly as
        GET studies/{hash}/results sends them (the portal shows the same)."""
        return read_results(self.config.state_dir, content_hash)

    def held(self, principal: Principal) -> list[tuple[StudyRecord, list[str]]]:
        """The held runs of the principal's projects with their tables' names (GET held, the portal's list)."""
        out = []
        for rec in held_runs(self.store, principal):
            folder = results_dir(self.config.state_dir, rec.hash) / "results"
            out.append((rec, [p.stem for p in sorted(folder.glob("*.json"))]))
        return out

    def held_results(self, principal: Principal, content_hash: str
                     ) -> tuple[StudyRecord, list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        """A held run's results exactly as GET studies/{hash}/results would send them once released; in
        the principal's projects (404 otherwise), 409 unless held."""
        rec = require_held(scoped_study(self.store, principal, content_hash))
        return (rec, *self.released_results(content_hash))

    def check_output(self, principal: Principal, content_hash: str, run: int, release: bool, reason: str | None,
                     expected_sha256: str | None = None, **audited: Any) -> StudyRecord:
        """The custodian's output check of exactly this hash and run (the API's release and withhold, and
        the portal's): recorded in the queue and the audit log (node/output_check.py)."""
        rec = scoped_study(self.store, principal, content_hash)
        return decide_output(self.store, self.audit, principal.name, rec, run=run, release=release, reason=reason,
                             results=self.released_results, expected_sha256=expected_sha256, **audited)

    def design(self, content_hash: str, analysis: str) -> Any:
        key = (content_hash, analysis)
        with self._designs_lock:
            if key not in self._designs:
                pkg = StudyPackage.from_canonical(self.store.package(content_hash))
                self._designs[key] = load_design(pkg, designs_dir(self.config.state_dir, content_hash), analysis)
            return self._designs[key]


def read_package(data: dict[str, Any]) -> StudyPackage:
    """A package sent as data; anything that is not a valid package is the sender's error (400)."""
    try:
        return StudyPackage.from_canonical(data)
    except MerciaError:
        raise
    except Exception as e:  # odd shapes deep inside a definition: still bad input, never a 500
        raise StudyError(f"the package could not be read ({type(e).__name__}); send StudyPackage.canonical()") from None


def _analysis_status(out: Any, analysis: str) -> str | None:
    """An analysis's status in a finished study's manifest (None if the manifest does not list it)."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return next((a.get("status") for a in manifest.get("analyses", []) if a.get("name") == analysis), None)


def _status(rec: StudyRecord) -> StudyStatus:
    return StudyStatus(**rec.public())


def scoped_study(store: NodeStore, principal: Principal, content_hash: str) -> StudyRecord:
    """The study if the principal may act in its project. A study of another project answers exactly as
    one that does not exist (404): a token scoped to one project learns nothing of another's studies."""
    rec = store.get(content_hash)
    if rec is None or not principal.in_project(rec.project):
        raise UnknownStudyError(f"no study with hash {content_hash!r} at this node; list them with GET studies")
    return rec


def create_app(config: NodeConfig, *, start_worker: bool = True) -> FastAPI:
    services = NodeServices(config, start_worker=start_worker)
    auth = authenticator(services.tokens)

    app = FastAPI(title=f"Mercia node ({config.site})", version="1", lifespan=service_lifespan(services),
                  description="A Mercia node beside one site's OMOP CDM. Only released aggregates leave it.")
    app.state.services = services
    app.state.authenticator = auth

    install_error_handlers(app)
    install_request_limits(app)

    # Made on first use: a limiter needs the running event loop.
    audit_threads: dict[str, Any] = {}
    count_threads: dict[str, Any] = {}
    privacy = config.feasibility_privacy

    async def budgeted_answer(who: str, key: str, cost: FeasibilityPrivacy, count: Callable[[], dict[str, Any]],
                              audit: Callable[[dict[str, Any], bool], None]) -> dict[str, Any]:
        """The one path of every noised count (feasibility, trials, concepts): charge the asker's budget,
        answer from the kept answer or count once, refund if nothing was released, audit, and say what is
        left of the budget.

        Counts run COUNT_THREADS at a time, first come first served, on threads of their own. In the
        shared pool (40 threads) a burst of counts took every thread, and each request's other steps
        (its auth dependency, its audit line) queued behind the whole burst: no answer came out until
        nearly all were done. Bounded here, the rest of the API stays responsive under load. A
        question counted recently, or being counted now, is answered from that one count."""
        answers, charged = await budgeted_answers(who, [(key, count)], cost)
        await anyio.to_thread.run_sync(audit, answers[0], charged[0], limiter=count_threads["audit"])
        return await with_budget(who, answers[0], charged[0])

    async def budgeted_answers(who: str, parts: list[tuple[str, Callable[[], dict[str, Any]]]],
                               cost: FeasibilityPrivacy) -> tuple[list[dict[str, Any]], list[bool]]:
        """`budgeted_answer` for a request made of several distinct questions (a concept's persons and its
        records): every one charged in one transaction, all or none (429 names the budget), each answered
        from its kept answer or counted once, and every new charge refunded if any fails (nothing is
        released then). Gives the answers and which were charged now; the caller audits."""
        if "limiter" not in count_threads:
            count_threads["limiter"] = anyio.CapacityLimiter(COUNT_THREADS)
            count_threads["audit"] = anyio.CapacityLimiter(2)
        small = count_threads["audit"]
        keys = [key for key, _ in parts]
        # Charged before counting, in one transaction: concurrent questions cannot overspend together.
        charged = await anyio.to_thread.run_sync(services.ledger.charge_all, who, keys, cost, limiter=small)
        answers: list[dict[str, Any]] = []
        try:
            for key, count in parts:
                answer = await anyio.to_thread.run_sync(services.ledger.answer, key, limiter=small)
                if answer is None:
                    answer = await services.counts.answer(
                        key, lambda count=count: anyio.to_thread.run_sync(count, limiter=count_threads["limiter"]))
                answers.append(answer)
        except BaseException:
            for key, was_charged in zip(keys, charged, strict=True):
                if was_charged:  # nothing was released: the question costs nothing
                    await anyio.to_thread.run_sync(services.ledger.refund, who, key, limiter=small)
            raise
        return answers, charged

    async def with_budget(who: str, answer: dict[str, Any], charged: bool) -> dict[str, Any]:
        """The answer with what is left of the asker's budget."""
        spent = await anyio.to_thread.run_sync(services.ledger.spent, who, limiter=count_threads["audit"])
        return {**answer, "privacy": {**answer["privacy"], "budget": privacy.budget, "spent": round(spent, 9),
                                      "left": round(max(privacy.budget - spent, 0.0), 9), "charged": charged}}

    @app.middleware("http")
    async def _audit_requests(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        if request.url.path != "/health":
            # fsync'd append: off the event loop, so one slow disk write does not stall every request;
            # on threads of its own, since in the shared pool it would queue behind every request still
            # waiting for a thread, holding each finished response until that whole queue drained.
            if "limiter" not in audit_threads:
                audit_threads["limiter"] = anyio.CapacityLimiter(4)
            await anyio.to_thread.run_sync(functools.partial(
                services.audit.append, "request", "http", method=request.method, path=request.url.path[:200],
                status=response.status_code, client=request.client.host if request.client else None),
                limiter=audit_threads["limiter"])
        return response

    def role(*roles: str) -> Any:
        return Depends(auth.require_role(*roles))

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> Health:
        """Liveness only: says nothing about the site, its studies or its data."""
        return Health(status="ok")

    @app.post(f"{API}/studies", status_code=202, response_model=StudyStatus, responses=ERRORS, tags=["studies"])
    def submit_study(body: SubmitStudy, principal: Annotated[Principal, role("hub")]) -> StudyStatus:
        """Queue a signed package for the custodian's approval (idempotent on its hash). Role: hub.

        The node recomputes the hash (400 if the package does not match it), checks the hub's signature
        and what it vouches for: this hash, this project, this site among its targets, this requester,
        not expired (403 naming which failed), and the package's disclosure policy against the site
        minimum (400 if weaker)."""
        require_project(principal, body.project)
        # Hash and signature are checked on every submission, a repeated one too: a resubmission
        # changes nothing, but a tampered one is refused as such.
        pkg = read_package(body.package)
        if pkg.content_hash != body.hash:
            services.audit.append("study.refused", principal.name, hash=body.hash, reason="hash mismatch")
            raise HTTPException(400, detail=(
                "the package does not match its hash (it was changed after hashing, or the hash is wrong); "
                "submit the package exactly as the hub hashed and signed it"))
        try:
            verify_package(services.hub_key, body.signature, content_hash=body.hash, project=body.project,
                           site=config.site, requested_by=body.requested_by)
        except SignatureRefused as e:
            services.audit.append("study.refused", principal.name, hash=body.hash, reason=e.reason)
            raise HTTPException(403, detail=str(e)) from None
        existing = services.store.get(body.hash)
        if existing is not None:
            if existing.project != body.project:
                # One hash, one study: the same package signed again for another project is not a
                # second study, and the first one's record is not this caller's to see.
                raise HTTPException(409, detail="this package is already held at this node under another "
                                                "project; change the package (e.g. its name) to submit it here")
            return _status(existing)
        pkg.effective_policy(config.site_policy)  # a package asking for less than the site minimum: 400
        auto = body.hash in config.auto_approve.studies
        rec, created = services.store.submit(
            body.hash, name=pkg.name, project=body.project, requested_by=body.requested_by,
            package=pkg.canonical(), signature=body.signature, approved=auto)
        if created:
            services.audit.append("study.received", principal.name, hash=body.hash, project=body.project,
                                  requested_by=body.requested_by, name=pkg.name)
            if auto:
                services.audit.append("study.approved", "auto-approve", hash=body.hash)
                services.worker.wake()
        return _status(rec)

    @app.get(f"{API}/studies", response_model=StudyList, responses=ERRORS, tags=["studies"])
    def list_studies(principal: Annotated[Principal, role("custodian", "hub", "admin")],
                     status_filter: Annotated[StudyStatusValue | None, Query(alias="status")] = None) -> StudyList:
        """The studies of the caller's projects at this node (status records only). Roles: custodian, hub,
        admin."""
        return StudyList(site=config.site, studies=[_status(r) for r in services.store.list(status_filter)
                                                    if principal.in_project(r.project)])

    @app.get(f"{API}/studies/{{content_hash}}", response_model=StudyStatus, responses=ERRORS, tags=["studies"])
    def study_status(content_hash: HashParam,
                     principal: Annotated[Principal, role("custodian", "hub", "admin")]) -> StudyStatus:
        """One study's status record (no package, no data). Roles: custodian, hub, admin; 404 for a
        study of a project the caller is not in, as for one that does not exist."""
        return _status(scoped_study(services.store, principal, content_hash))

    def decide(content_hash: str, principal: Principal, approve: bool, reason: str | None) -> StudyStatus:
        return _status(services.decide(principal, content_hash, approve, reason))

    @app.post(f"{API}/studies/{{content_hash}}/approve", response_model=StudyStatus, responses=ERRORS,
              tags=["studies"])
    def approve_study(content_hash: HashParam, principal: Annotated[Principal, role("custodian")],
                      body: Decision | None = None) -> StudyStatus:
        """The custodian approves exactly this hash: the package then runs. Role: custodian."""
        return decide(content_hash, principal, True, body.reason if body else None)

    @app.post(f"{API}/studies/{{content_hash}}/reject", response_model=StudyStatus, responses=ERRORS,
              tags=["studies"])
    def reject_study(content_hash: HashParam, principal: Annotated[Principal, role("custodian")],
                     body: Decision | None = None) -> StudyStatus:
        """The custodian rejects this hash: it never runs. Role: custodian."""
        return decide(content_hash, principal, False, body.reason if body else None)

    @app.get(f"{API}/studies/{{content_hash}}/results", response_model=StudyResults, responses=ERRORS,
             tags=["studies"])
    def study_results(content_hash: HashParam, principal: Annotated[Principal, role("hub")]) -> StudyResults:
        """The released tables, the public disclosure log and the manifest; 409 until finished (and while
        held for the custodian's output check, or for good once withheld, with their reason). Role: hub."""
        rec = scoped_study(services.store, principal, content_hash)
        if rec.status != "finished":
            after = {"held": "; its results wait for the custodian's output check",
                     "withheld": f"; the custodian withheld its results: {rec.output_reason}"}
            raise HTTPException(409, detail=f"study {content_hash[:12]} is {rec.status}"
                                            f"{after.get(rec.status, '; results come when it is finished')}")
        tables, disclosure, manifest = services.released_results(content_hash)
        services.audit.append("results.sent", principal.name, hash=content_hash, tables=len(tables))
        return StudyResults(hash=content_hash, site=config.site, tables=tables,
                            disclosure=disclosure,
                            manifest=manifest)

    @app.get(f"{API}/held", response_model=HeldList, responses=ERRORS, tags=["output check"])
    def list_held(principal: Annotated[Principal, role("custodian", "admin")]) -> HeldList:
        """The runs whose released results wait for the custodian's output check (node.yaml
        hold_results), oldest first, in the caller's projects: each run and its tables' names. Roles:
        custodian, admin."""
        return HeldList(site=config.site, held=[
            HeldRun(hash=r.hash, name=r.name, project=r.project, requested_by=r.requested_by, run=r.runs,
                    held_at=r.updated_at, tables=names) for r, names in services.held(principal)])

    @app.get(f"{API}/studies/{{content_hash}}/held", response_model=HeldResults, responses=ERRORS,
             tags=["output check"])
    def held_results(content_hash: HashParam, principal: Annotated[Principal, role("custodian", "admin")]
                     ) -> HeldResults:
        """A held run's released tables, public disclosure log and manifest, exactly as the hub receives
        them once released, and their sha256; 409 unless the study is held. Roles: custodian, admin (the
        hub reads results only with GET studies/{hash}/results, once released)."""
        rec, tables, disclosure, manifest = services.held_results(principal, content_hash)
        services.audit.append("results.checked", principal.name, hash=content_hash, run=rec.runs, tables=len(tables))
        return HeldResults(hash=content_hash, site=config.site, run=rec.runs, tables=tables, disclosure=disclosure,
                           manifest=manifest, results_sha256=results_sha256(tables, disclosure, manifest))

    @app.post(f"{API}/studies/{{content_hash}}/release", response_model=StudyStatus, responses=ERRORS,
              tags=["output check"])
    def release_held(content_hash: HashParam, body: ReleaseDecision,
                     principal: Annotated[Principal, role("custodian")]) -> StudyStatus:
        """The custodian releases the held results of exactly this hash and run: the study is then
        finished and the hub collects them. 409 if it is not held or holds another run. Role: custodian."""
        return _status(services.check_output(principal, content_hash, body.run, True, body.reason,
                                             body.results_sha256))

    @app.post(f"{API}/studies/{{content_hash}}/withhold", response_model=StudyStatus, responses=ERRORS,
              tags=["output check"])
    def withhold_held(content_hash: HashParam, body: WithholdDecision,
                      principal: Annotated[Principal, role("custodian")]) -> StudyStatus:
        """The custodian withholds the held results of exactly this hash and run, with a reason: the
        study is then withheld (final); nothing of it leaves, and the hub shows the reason to the
        researcher. 409 if it is not held or holds another run. Role: custodian."""
        return _status(services.check_output(principal, content_hash, body.run, False, body.reason))

    @app.post(f"{API}/studies/{{content_hash}}/rounds", response_model=RoundAnswer, responses=ERRORS,
              tags=["regression"])
    def regression_round(content_hash: HashParam, body: RoundQuery,
                         principal: Annotated[Principal, role("hub")]) -> RoundAnswer:
        """This site's released score and information at the hub's coefficients (federated GLM and Cox).
        Role: hub. Only for a finished study, on one of its Cox analyses (see node/rounds.py). A model
        with a small level (persons, events or non-events) is refused from the first round with one fixed
        422 `model_refused` answer; counts in the answer are released (rounded) ones."""
        rec = scoped_study(services.store, principal, content_hash)
        if not config.federated_rounds:
            raise HTTPException(403, detail="this site does not answer regression rounds (federated_rounds: false)")
        if rec.status != "finished":
            raise HTTPException(409, detail=f"study {content_hash[:12]} is {rec.status}; regression rounds run on "
                                            "a finished study's rows")
        if _analysis_status(results_dir(config.state_dir, content_hash), body.analysis) == "below_threshold":
            # The study released only 'below threshold' for this analysis (decided from its released
            # cohort counts): its rounds release nothing either, with the one answer every refused or
            # non-converging model gets, the same at 0 or 1 person.
            raise ModelRefused()
        design = services.design(content_hash, body.analysis)
        pkg_policy = StudyPackage.from_canonical(services.store.package(content_hash)).effective_policy(
            config.site_policy)
        answer = released_round(design, body.model, body.beta, pkg_policy, site=config.site, min_count=max(
            10, pkg_policy.suppress_up_to + 1))
        services.audit.append("round.released", principal.name, hash=content_hash, analysis=body.analysis,
                              model=body.model)
        return RoundAnswer(**answer)

    @app.post(f"{API}/feasibility", response_model=FeasibilityAnswer, responses=ERRORS, tags=["feasibility"])
    async def feasibility(body: FeasibilityQuery, principal: Annotated[Principal, role("hub", "researcher")]
                          ) -> FeasibilityAnswer:
        """The released persons count and attrition of a cohort definition, with differentially private
        noise. Roles: those in the site's feasibility_roles (hub, researcher), when the custodian allows
        automatic counts. Each distinct definition (canonical form) costs the asker epsilon from their
        privacy budget at this site (429 when spent); a repeat gets the same answer at no cost. Also
        rate-limited per asker, with a lockout after repeats of one query (429)."""
        if principal.role not in config.feasibility_roles:
            raise HTTPException(403, detail=f"this site answers feasibility counts for "
                                            f"{', '.join(config.feasibility_roles)} only")
        require_project(principal, body.project)
        if not config.auto_approve.feasibility:
            raise HTTPException(403, detail="this site's custodian has not allowed automatic feasibility counts "
                                            "(auto_approve.feasibility in node.yaml)")

        definition = parse_definition(body.definition)
        who = budget_holder(principal, body.project, body.requested_by, body.attestation, body.definition)
        services.guard.check(who, count_query_key(definition))  # the canonical form too
        # One distinct question: its canonical form under this policy in this epoch. Its noise is derived
        # from it and its first answer kept, so asking again (renamed, reordered, by anyone) changes nothing.
        label = feasibility_label(definition, config.site_policy, privacy)
        key = hashlib.sha256(label.encode()).hexdigest()

        def count() -> dict[str, Any]:
            with services.cdm.reader() as cdm:
                answer = feasibility_count(cdm, definition, config.site_policy, site=config.site, privacy=privacy,
                                           noise_key=services.ledger.noise_key(), label=label)
            return services.ledger.keep(key, privacy.epsilon_per_query, answer)

        def audit(answer: dict[str, Any], charged: bool) -> None:
            services.audit.append("feasibility.released", principal.name, project=body.project, budget_of=who,
                                  definition_hash=answer["definition_hash"], persons=answer["persons"],
                                  epsilon=privacy.epsilon_per_query if charged else 0.0)

        return FeasibilityAnswer(**await budgeted_answer(who, key, privacy, count, audit))

    @app.post(f"{API}/trials/feasibility", response_model=TrialFeasibilityAnswer, responses=ERRORS,
              tags=["feasibility"])
    async def trial_feasibility(body: TrialFeasibilityQuery, principal: Annotated[Principal, role("hub", "researcher")]
                                ) -> TrialFeasibilityAnswer:
        """A trial's released feasibility: eligible persons, the funnel criterion by criterion, the what-if
        gain of removing each criterion, breakdowns by age band, sex and ethnicity, and newly eligible
        persons per month, all with differentially private noise on disjoint buckets, then the site policy
        (node/trial_feasibility.py). Roles: those in the site's feasibility_roles (hub, researcher), when
        the custodian allows automatic counts; the same walls as feasibility counts (project, rate
        limits, the hub's attestation). Each distinct question costs the asker 3 x epsilon_per_query
        from their budget at this site (429 when spent); a repeat gets the same answer at no cost."""
        if principal.role not in config.feasibility_roles:
            raise HTTPException(403, detail=f"this site answers feasibility counts for "
                                            f"{', '.join(config.feasibility_roles)} only")
        require_project(principal, body.project)
        if not config.auto_approve.feasibility:
            raise HTTPException(403, detail="this site's custodian has not allowed automatic feasibility counts "
                                            "(auto_approve.feasibility in node.yaml)")
        definition = parse_definition(body.definition)
        who = budget_holder(principal, body.project, body.requested_by, body.attestation,
                            attestation.trial_question(body.definition, body.history_months))
        services.guard.check(who, "trial:" + count_query_key(definition))
        cost = privacy.model_copy(update={"epsilon_per_query": TRIAL_COST * privacy.epsilon_per_query})
        label = trial_label(definition, body.history_months, config.site_policy, privacy)
        key = hashlib.sha256(label.encode()).hexdigest()

        def count() -> dict[str, Any]:
            with services.cdm.reader() as cdm:
                answer = released_trial(cdm, definition, config.site_policy, site=config.site,
                                        epsilon=cost.epsilon_per_query, noise_key=services.ledger.noise_key(),
                                        label=label, history_months=body.history_months)
            return services.ledger.keep(key, cost.epsilon_per_query, answer)

        def audit(answer: dict[str, Any], charged: bool) -> None:
            services.audit.append("trial_feasibility.released", principal.name, project=body.project, budget_of=who,
                                  definition_hash=answer["definition_hash"], eligible=answer["eligible"],
                                  epsilon=cost.epsilon_per_query if charged else 0.0)

        answer = await budgeted_answer(who, key, cost, count, audit)
        answer["trial"] = definition.name  # the kept answer may carry an earlier asker's name
        answer.pop("definition_hash", None)
        return TrialFeasibilityAnswer(**answer)

    @app.post(f"{API}/concepts/count", response_model=ConceptCountAnswer, responses=ERRORS, tags=["feasibility"])
    async def concept_count(body: ConceptCountQuery, principal: Annotated[Principal, role("hub", "researcher")]
                            ) -> ConceptCountAnswer:
        """The released number of persons with a record of a concept (with its descendants by default) in
        any clinical table, with differentially private noise, then the site policy. Roles: those in the
        site's feasibility_roles (hub, researcher), when the custodian allows automatic counts. The same
        defences as feasibility counts (node/concept_count.py): the same per-asker privacy budget (each
        distinct question costs epsilon; a repeat gets the same answer at no cost; 429 when spent), rate
        limits and lockout; 400 for a concept id not in the site's vocabulary. The hub asks for the
        researcher it authenticated (`requested_by` with its attestation), as for feasibility counts.
        With `records`, also the released records of the concept, each person's counted up to the site's
        cap (`records_per_person_counted`) with noise scaled to that cap: a second distinct question,
        charged epsilon of its own (both charged together or neither)."""
        if principal.role not in config.feasibility_roles:
            raise HTTPException(403, detail=f"this site answers feasibility counts for "
                                            f"{', '.join(config.feasibility_roles)} only")
        require_project(principal, body.project)
        if not config.auto_approve.feasibility:
            raise HTTPException(403, detail="this site's custodian has not allowed automatic counts "
                                            "(auto_approve.feasibility in node.yaml)")
        who = budget_holder(principal, body.project, body.requested_by, body.attestation,
                            attestation.concept_question(body.concept_id, body.descendants, body.records))
        services.guard.check(who, f"concept:{body.concept_id}:{int(body.descendants)}")
        label = concept_count_label(body.concept_id, body.descendants, config.site_policy, privacy)
        key = hashlib.sha256(label.encode()).hexdigest()

        def count() -> dict[str, Any]:
            with services.cdm.reader() as cdm:
                answer = released_concept_count(cdm, body.concept_id, body.descendants, config.site_policy,
                                                site=config.site, privacy=privacy,
                                                noise_key=services.ledger.noise_key(), label=label)
            return services.ledger.keep(key, privacy.epsilon_per_query, answer)

        parts: list[tuple[str, Callable[[], dict[str, Any]]]] = [(key, count)]
        if body.records:  # a second distinct question, kept and charged on its own (node/concept_count.py)
            records_label = concept_records_label(body.concept_id, body.descendants, config.site_policy, privacy)
            records_key = hashlib.sha256(records_label.encode()).hexdigest()

            def count_records() -> dict[str, Any]:
                # The persons answer is kept before this runs (the parts are answered in order): its
                # released number is the floor of the records, never the exact count or its noise.
                persons = (services.ledger.answer(key) or {}).get("persons") or 0
                with services.cdm.reader() as cdm:
                    answer = released_concept_records(cdm, body.concept_id, body.descendants, config.site_policy,
                                                      site=config.site, privacy=privacy,
                                                      noise_key=services.ledger.noise_key(), label=records_label,
                                                      at_least=persons)
                return services.ledger.keep(records_key, privacy.epsilon_per_query, answer)

            parts.append((records_key, count_records))
        answers, charged = await budgeted_answers(who, parts, privacy)
        answer = dict(answers[0])
        if body.records:
            rec = answers[1]
            # Where the persons count is suppressed, so are its records (withholding more is always safe;
            # a record count beside a blank persons count would only invite guessing). The charge stands
            # either way: a charge that depended on the data would itself tell something.
            answer.update(records=rec["records"] if answer["persons"] is not None else None,
                          records_per_person_counted=rec["records_per_person_counted"],
                          records_disclosure=rec["disclosure"],
                          privacy={**answer["privacy"], "records": rec["privacy"]})
        epsilon = privacy.epsilon_per_query * sum(charged)
        await anyio.to_thread.run_sync(functools.partial(
            services.audit.append, "concept_count.released", principal.name, project=body.project, budget_of=who,
            concept_id=body.concept_id, descendants=body.descendants, persons=answer["persons"],
            **({"record_count": answer["records"], "record_cap": answer["records_per_person_counted"]}
               if body.records else {}),
            epsilon=epsilon), limiter=count_threads["audit"])
        answer = await with_budget(who, answer, any(charged))
        answer["privacy"]["epsilon_charged"] = epsilon
        return ConceptCountAnswer(**answer)

    @app.get(f"{API}/quality", response_model=QualitySummary, responses=ERRORS, tags=["quality"])
    def quality(project: Annotated[str, Query(pattern=NAME_PATTERN, description="a project of the caller")],
                principal: Annotated[Principal, role("custodian", "admin", "hub", "researcher")]) -> QualitySummary:
        """The site's released data-quality summary (node/quality.py): each check's status, its violated
        and denominator rows only where both pass the site policy, concept-level checks only where their
        denominator is released, records per month per domain, pass rates per category, and the day of
        the run. Answered from the stored summary of the last run (409 before the first): the same for
        every caller until the next run. Roles: custodian and admin, and hub and researcher where the
        site's feasibility_roles lists them; in the caller's projects (403 otherwise)."""
        if principal.role in ("hub", "researcher") and principal.role not in config.feasibility_roles:
            raise HTTPException(403, detail=f"this site answers data-quality summaries for custodian, admin, "
                                            f"{', '.join(config.feasibility_roles)} only (feasibility_roles)")
        require_project(principal, project)
        summary = services.quality.summary(config.site_policy)
        if summary is None:
            state = "running now" if services.quality.running else "not run yet under the site's current policy"
            raise HTTPException(409, detail=f"no data-quality summary at this site yet ({state}); the custodian "
                                            "starts a run with POST quality/run")
        services.audit.append("quality.sent", principal.name, project=project, run_date=summary["run_date"])
        return QualitySummary(**summary)

    @app.post(f"{API}/quality/run", status_code=202, response_model=QualityRun, responses=ERRORS, tags=["quality"])
    def quality_run(principal: Annotated[Principal, role("custodian", "admin")]) -> QualityRun:
        """Start a data-quality run of the site's CDM in the background (every check and the monthly
        trends; minutes on a large CDM); its released summary replaces the stored one when done, and
        until then the previous one is answered. One run at a time: asking during a run starts none.
        Roles: custodian, admin (a site-wide action, in no project)."""
        started = services.run_quality(principal.name)
        summary = services.quality.summary(config.site_policy)
        return QualityRun(site=config.site, started=started, running=services.quality.running,
                          last_run_date=summary["run_date"] if summary else None)

    def on_site_network(request: Request, principal: Principal) -> None:
        """403 unless the request came straight (no proxy headers) from a network node.yaml allows."""
        host = request.client.host if request.client else None
        if proxied(list(request.headers.keys())):
            audit_refused(services.audit, principal.name, "proxied request")
            raise HTTPException(403, detail="trial look-ups are answered only to requests made straight from "
                                            "the site's network, not through a proxy")
        if not peer_allowed(host, config.clinician_networks):
            audit_refused(services.audit, principal.name, "outside clinician_networks")
            raise HTTPException(403, detail="trial look-ups are answered only on the site's own network "
                                            "(node.yaml clinician_networks)")

    @app.get(f"{API}/trials/{{trial}}/candidates", response_model=CandidateAnswer, responses=ERRORS, tags=["trials"])
    def trial_candidates(trial: Annotated[str, PathParam(pattern=TRIAL_NAME_PATTERN)], request: Request,
                         principal: Annotated[Principal, role("clinician")]) -> CandidateAnswer:
        """The site's candidates for a trial of its trials folder: each person failing no criterion, with
        the criteria met and those with missing data. Role: clinician, from the site's own networks
        only (node.yaml clinician_networks, default this host), never through a proxy or the hub.
        Audited with who, which trial and how many persons, never the persons."""
        on_site_network(request, principal)
        t = trial_by_name(config, trial)
        with services.cdm.reader() as cdm:
            found = find_candidates(cdm, t)
        audit_candidates(services.audit, principal.name, t.ref, len(found.candidates), via="http")
        return CandidateAnswer(site=config.site, **found.to_dict())

    @app.post(f"{API}/trials/match", response_model=MatchAnswer, responses=ERRORS, tags=["trials"])
    def trial_match(body: MatchQuery, request: Request,
                    principal: Annotated[Principal, role("clinician")]) -> MatchAnswer:
        """The trials of the site's trials folder a person (person_source_value, sent in the body so it is
        in no URL or log) fails no criterion of, with the criteria met and those with missing data; 404
        for a person not in the CDM. Role: clinician, from the site's own networks only, as candidates.
        Audited with who and how many trials, never the person."""
        on_site_network(request, principal)
        trials = all_trials(config)
        with services.cdm.reader() as cdm:
            matches = matched(cdm, body.person_source_value, trials, services.audit, principal.name, via="http")
        return MatchAnswer(site=config.site, trials_searched=len(trials), matches=[m.to_dict() for m in matches])

    def budget_holder(principal: Principal, project: str, requested_by: str | None,
                      signed_by_hub: Attestation | None, question: Any) -> str:
        """Whose privacy budget (and count limits) a question spends. A researcher's own token: theirs. The
        hub: the researcher it names, only with its signed attestation that it authenticated them for
        this very question (a feasibility definition, or `attestation.concept_question`), so holding the
        hub's token does not mint a fresh budget per invented name; the hub asking for itself: the hub's
        one budget."""
        if principal.role != "hub":
            return principal.name
        if requested_by is None:
            return principal.name
        signed = signed_by_hub.model_dump() if signed_by_hub is not None else None
        if not attestation.verify(services.hub_key, signed, requested_by, project, question):
            services.audit.append("feasibility.refused", principal.name, requested_by=requested_by,
                                  reason="no valid attestation")
            raise HTTPException(403, detail="requested_by needs the hub's attestation: a signature, with the key "
                                            "this node trusts, that the hub authenticated that researcher for "
                                            "this question and project (expired or missing here)")
        return f"{principal.name}/{requested_by}"

    # The custodian's portal (mercia.portal) sits above the federation layer: imported here, as the hub
    # mounts its own, so the API's module does not depend on it at import time.
    from mercia.portal.node_pages import create_node_portal

    app.mount("/portal", create_node_portal(services))
    return app

