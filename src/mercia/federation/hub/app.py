"""The hub's HTTP API (FastAPI): researchers submit studies to sites, follow them, get pooled results.

    researcher  submit a package to sites of a project they belong to; status; pooled results and
                report; close a study with the sites that answered; federated regression; counts
                (feasibility counts of a cohort definition, persons counts of a concept)
                and the sites' data-quality summaries side by side
    admin       everything a researcher can, in every project, plus nodes, projects and users

The hub never sees rows: it stores what nodes released and pools it.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' Annotated types.

import json
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, field_validator

from mercia.cohorts.loader import definition_from_data
from mercia.errors import MerciaError, StudyError
from mercia.federation.audit import AuditLog
from mercia.federation.auth import (
    ALL_PROJECTS,
    HUB_ROLES,
    CountQueryGuard,
    Principal,
    TokenStore,
    authenticator,
    require_grant,
    require_project,
    sign_package,
)
from mercia.federation.auth import query_key as count_query_key
from mercia.federation.http_common import (
    API,
    ERRORS,
    NAME_PATTERN,
    HashParam,
    Health,
    RequestBody,
    install_error_handlers,
    install_request_limits,
    service_lifespan,
)
from mercia.federation.hub.config import HubConfig
from mercia.federation.hub.dispatcher import Dispatcher
from mercia.federation.hub.federated import (
    concept_count_across,
    feasibility_across,
    federated_fit,
    trial_feasibility_across,
)
from mercia.federation.hub.quality import quality_across
from mercia.federation.hub.registry import HubStore, NotFoundError
from mercia.federation.hub.vocabulary import HubVocabulary
from mercia.report.hub import render_network_quality, render_pooled_report
from mercia.study.package import StudyPackage

Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class SubmitStudy(RequestBody):
    package: dict[str, Any] = Field(description="a study package as data (cohorts inline; no file: paths)")
    project: Name
    sites: list[Name] | None = Field(None, min_length=1, max_length=100,
                                     description="sites to run at; default every site of the project")


class SiteState(BaseModel):
    site: str
    status: str
    reachable: bool
    attempts: int
    last_error: str | None
    detail: str | None
    updated_at: str


class StudyState(BaseModel):
    hash: str
    name: str
    project: str
    submitted_by: str
    status: Literal["open", "closed"]
    submitted_at: str
    closed_at: str | None
    sites: list[SiteState]


class StudySummary(BaseModel):
    hash: str
    name: str
    project: str
    submitted_by: str
    status: str
    submitted_at: str
    closed_at: str | None


class StudyResults(BaseModel):
    hash: str
    status: str
    pooled: dict[str, Any]
    sites: dict[str, Any] = Field(description="each site's released tables, disclosure log and manifest")
    federated: list[dict[str, Any]]


class FederatedQuery(RequestBody):
    analysis: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=100)
    model: Literal["cox", "logistic", "poisson"]


class FeasibilityQuery(RequestBody):
    definition: dict[str, Any]
    project: Name
    sites: list[Name] | None = Field(None, min_length=1, max_length=100)

    @field_validator("definition")
    @classmethod
    def _readable(cls, v: dict[str, Any]) -> dict[str, Any]:
        # Read here, so a definition no node could take is the researcher's 422 naming the element,
        # before any node is asked (and before it counts against anyone's limits).
        try:
            definition_from_data(v)
        except MerciaError as e:
            raise ValueError(str(e)) from None
        return v


class TrialFeasibilityQuery(FeasibilityQuery):
    history_months: int = Field(36, ge=1, le=240, description="months of incident eligibility each site releases")
    not_applied: list[str] = Field(default_factory=list, max_length=200, description=(
        "the trial's items not applied (a draft's items still to review): listed in the answer, not counted"))
    target: int | None = Field(None, ge=1, le=10_000_000, description="persons to recruit, for the projection")
    consent: float | None = Field(None, gt=0, le=1, description="share of eligible persons expected to consent")


class ConceptCountQuery(RequestBody):
    concept_id: int = Field(ge=0, le=2_147_483_647, description="an OMOP concept_id")
    descendants: bool = Field(True, description="count persons with the concept or any of its descendants")
    records: bool = Field(False, description=(
        "also ask each site for the concept's records, each person's counted up to the site's cap: a "
        "second question, charged to your budget at each site on its own"))
    project: Name
    sites: list[Name] | None = Field(None, min_length=1, max_length=100,
                                     description="sites to ask; default every site of the project")


class SiteConceptCount(BaseModel):
    site: str
    persons: int | None = Field(None, description="the site's released persons count; null where suppressed "
                                                  "or where the site did not answer (then `error` says why)")
    records: int | None = Field(None, description=(
        "the site's released records of the concept, at most `records_per_person_counted` per person; null "
        "where suppressed, not asked, or where the site did not answer"))
    records_per_person_counted: int | None = Field(None, description=(
        "the site's cap on records counted per person (its noise is scaled to it); null when not asked"))
    privacy: dict[str, Any] | None = Field(None, description="the node's account of the noise and of the "
                                                             "researcher's budget at the site")
    disclosure: dict[str, Any] | None = None
    error: str | None = Field(None, description="the site's refusal (its privacy budget spent, say) or why "
                                                "it did not answer")


class ConceptCounts(BaseModel):
    concept_id: int
    descendants: bool
    records: bool = False
    sites: list[SiteConceptCount]


class ConceptHit(BaseModel):
    concept_id: int
    concept_name: str
    domain_id: str
    vocabulary_id: str
    concept_class_id: str
    standard_concept: str | None
    concept_code: str
    invalid_reason: str | None
    match: Literal["exact", "prefix", "substring"]


class ConceptDetailsOut(BaseModel):
    concept: dict[str, Any]
    synonyms: list[str]
    maps_to: list[dict[str, Any]]
    mapped_from: list[dict[str, Any]]
    ancestors: list[dict[str, Any]] = Field(description="with min_levels and max_levels of separation")
    descendants: list[dict[str, Any]]
    descendants_total: int


class NodeIn(RequestBody):
    name: Name
    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=500)
    token: str = Field(min_length=1, max_length=500)
    verify: str | None = Field(None, max_length=500, description="'false' (no TLS check) or a CA bundle path")


class NodeOut(BaseModel):
    name: str
    url: str


class ProjectIn(RequestBody):
    name: Name
    sites: list[Name] = Field(min_length=1, max_length=100)


class ProjectOut(BaseModel):
    name: str
    sites: list[str]


class UserIn(RequestBody):
    name: Name
    role: Literal["researcher", "admin"]  # auth.HUB_ROLES: no hub route accepts another role
    projects: list[Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_.@-]{0,127})$")]] = Field(
        default_factory=list, max_length=100)


class UserToken(BaseModel):
    name: str
    role: str
    token: str = Field(description="shown once; the hub keeps only its hash")


class HubServices:
    def __init__(self, config: HubConfig, *, start_dispatcher: bool = True) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = HubStore(config.state_dir / "hub.sqlite")
        self.audit = AuditLog(config.state_dir / "audit.jsonl")
        self.tokens = TokenStore(config.tokens)
        self.guard = CountQueryGuard()
        self.dispatcher = Dispatcher(config, self.store, self.audit)
        self.vocabulary = HubVocabulary(config.portal.vocabulary, config.portal.vocabulary_schema)
        self._start_dispatcher = start_dispatcher

    def start(self) -> None:
        if self._start_dispatcher:
            self.dispatcher.start()
        self.audit.append("hub.started", "hub")

    def stop(self) -> None:
        self.dispatcher.stop()
        self.vocabulary.close()
        self.audit.append("hub.stopped", "hub")

    def asked_sites(self, principal: Principal, project: str, asked: list[str] | None, *,
                    name_project_sites: bool = False) -> list[str]:
        """The sites a request goes to: those asked (default: all of the project), each in the project
        the caller acts in (403 naming those outside it)."""
        require_project(principal, project)
        project_sites = self.store.project_sites(project)
        sites = sorted(set(asked)) if asked else project_sites
        outside = sorted(set(sites) - set(project_sites))
        if outside:
            detail = f"sites {outside} are not in project {project!r}"
            raise HTTPException(403, detail=detail + (f" (its sites: {project_sites})" if name_project_sites else ""))
        return sites

    def concept_counts(self, principal: Principal, concept_id: int, descendants: bool, project: str,
                       asked: list[str] | None = None, records: bool = False) -> dict[str, Any]:
        """Each asked site's released persons count of a concept, for `principal` (the API's
        POST /concepts/count and the portal's concept page): the sites checked against the project, the
        count-query guard, each node asked with the hub's attestation, and the question audited."""
        sites = self.asked_sites(principal, project, asked)
        self.guard.check(principal, f"concept:{concept_id}:{int(descendants)}")
        answer = concept_count_across(self.store, sites, concept_id, descendants, project,
                                      requested_by=principal.name, signing_key=self.config.signing_key,
                                      timeout=self.config.node_timeout_seconds, records=records)
        self.audit.append("concept_count.asked", principal.name, project=project, sites=sites,
                          concept_id=concept_id, descendants=descendants,
                          persons=[[a["site"], a.get("persons")] for a in answer["sites"]],
                          **({"record_counts": [[a["site"], a.get("records")] for a in answer["sites"]]} if records else {}))
        return answer

    def feasibility(self, principal: Principal, definition: dict[str, Any], project: str,
                    asked: list[str] | None = None) -> dict[str, Any]:
        """Each asked site's released persons count and attrition of a cohort definition, and their sum,
        for `principal` (the API's POST /feasibility and the portal's cohort page): the sites checked
        against the project, the count-query guard, each node asked with the hub's attestation (so it
        charges that researcher's privacy budget), and the question audited."""
        sites = self.asked_sites(principal, project, asked)
        self.guard.check(principal, count_query_key(definition))
        # The researcher is the one this hub authenticated: the request names none (its model forbids it).
        answer = feasibility_across(self.store, sites, definition, project, requested_by=principal.name,
                                    signing_key=self.config.signing_key, timeout=self.config.node_timeout_seconds)
        self.audit.append("feasibility.asked", principal.name, project=project, sites=sites,
                          persons=answer["persons"])
        return answer

    def trial_feasibility(self, principal: Principal, definition: dict[str, Any], project: str,
                          asked: list[str] | None = None, *, history_months: int = 36,
                          not_applied: list[str] | None = None, target: int | None = None,
                          consent: float | None = None) -> dict[str, Any]:
        """A trial's released feasibility at each asked site and in total, for `principal` (the API's
        POST /trials/feasibility and the portal's trial pages): the sites checked against the project, the
        count-query guard, each node asked with the hub's attestation (charging that researcher's budget
        there), and the question audited."""
        sites = self.asked_sites(principal, project, asked)
        self.guard.check(principal, "trial:" + count_query_key(definition))
        answer = trial_feasibility_across(
            self.store, sites, definition, project, requested_by=principal.name,
            signing_key=self.config.signing_key, history_months=history_months, not_applied=not_applied,
            target=target, consent=consent, timeout=self.config.node_timeout_seconds)
        self.audit.append("trial_feasibility.asked", principal.name, project=project, sites=sites,
                          eligible=answer["eligible"])
        return answer

    # ---- administration (the API's admin routes and the portal's admin pages) ---------------------
    def issue_token(self, principal: Principal, name: str, role: str, projects: list[str]) -> str:
        """Issue (or rotate) `name`'s API token for an admin `principal`, audited; the token is returned
        once. A scoped admin grants only projects they administer and rotates no existing account."""
        require_grant(principal, projects)
        if ALL_PROJECTS not in principal.projects and name in {p.name for p in self.tokens.principals()}:
            # Reissuing replaces the account: a scoped admin could lock out a wider one (the hub's admin).
            raise HTTPException(403, detail=f"{principal.name} administers some projects only and may not "
                                            f"rotate the existing account {name!r}")
        token = self.tokens.issue(name, role, projects, roles=HUB_ROLES)
        self.audit.append("user.token_issued", principal.name, user=name, role=role, projects=projects)
        return token

    def revoke_token(self, principal: Principal, name: str) -> None:
        """Revoke `name`'s API token for an admin `principal` who administers all its projects, audited."""
        held = next((p for p in self.tokens.principals() if p.name == name), None)
        if held is None:
            raise NotFoundError(f"no token is issued to {name!r}")
        require_grant(principal, sorted(held.projects))
        self.tokens.revoke(name)
        self.audit.append("user.token_revoked", principal.name, user=name)

    def save_project(self, principal: Principal, name: str, sites: list[str]) -> dict[str, Any]:
        """Create or change a project for an admin of it (or of every project), audited."""
        require_project(principal, name)
        p = self.store.add_project(name, sites)
        self.audit.append("project.saved", principal.name, project=name, sites=p["sites"])
        return p

    # ---- studies (the API's /studies routes and the portal's study pages) ----------------------------
    def studies(self, principal: Principal) -> list[dict[str, Any]]:
        """The studies of the caller's projects (GET /studies)."""
        return [s for s in self.store.studies() if principal.in_project(s["project"])]

    def visible_study(self, principal: Principal, content_hash: str) -> dict[str, Any]:
        """The study if the caller is in its project; otherwise 404 exactly as for a hash the hub does
        not hold, so a researcher of one project learns nothing of another's studies."""
        try:
            study = self.store.study(content_hash)
        except NotFoundError:
            study = None
        if study is None or not principal.in_project(study["project"]):
            raise NotFoundError(f"no study with hash {content_hash!r} at this hub")
        return study

    def study_state(self, principal: Principal, content_hash: str) -> dict[str, Any]:
        """The study and each site's status (GET /studies/{hash})."""
        self.visible_study(principal, content_hash)
        s = self.store.study(content_hash)
        return {"hash": s["hash"], "name": s["name"], "project": s["project"], "submitted_by": s["submitted_by"],
                "status": s["status"], "submitted_at": s["submitted_at"], "closed_at": s["closed_at"],
                "sites": [r.public() for r in self.store.site_runs(content_hash)]}

    def submit_study(self, principal: Principal, package: dict[str, Any], project: str,
                     asked: list[str] | None = None) -> dict[str, Any]:
        """Hash and sign the package and send it to the chosen sites of the project (POST /studies;
        idempotent on hash); the study's state."""
        sites = self.asked_sites(principal, project, asked, name_project_sites=True)
        try:
            pkg = StudyPackage.from_dict(package, source="submitted package")
        except MerciaError:
            raise
        except Exception as e:  # odd shapes deep inside a definition: still bad input, never a 500
            raise StudyError(f"the package could not be read ({type(e).__name__}); check it with "
                             "mercia study run on a local CDM first") from None
        h = pkg.content_hash
        if not sites:
            raise HTTPException(400, detail=f"project {project!r} has no sites to send the study to")
        # The signature binds the package to this project, these sites and this researcher, for a
        # limited time: a node refuses it anywhere else, under another project, or once it expires.
        signature = sign_package(self.config.signing_key, h, project=project, sites=sites,
                                 requested_by=principal.name, valid_days=self.config.signature_valid_days)
        created = self.store.add_study(h, name=pkg.name, project=project, submitted_by=principal.name,
                                       package=pkg.canonical(), signature=signature, sites=sites)
        if created:
            self.audit.append("study.submitted", principal.name, hash=h, project=project, sites=sites)
            self.dispatcher.wake()
        elif self.store.study(h)["project"] != project:
            # One hash, one study: the other project's record is not this caller's to see.
            raise HTTPException(409, detail="this exact package is already a study of another project; change "
                                            "the package (e.g. its name) to submit it in this one")
        return self.study_state(principal, h)

    def close_study(self, principal: Principal, content_hash: str) -> dict[str, Any]:
        """Finish now with the sites that answered (POST /studies/{hash}/close)."""
        self.visible_study(principal, content_hash)
        self.dispatcher.close_study(content_hash, by=principal.name)
        return self.study_state(principal, content_hash)

    def study_results(self, principal: Principal, content_hash: str) -> dict[str, Any]:
        """Pooled estimates and every site's released tables (GET /studies/{hash}/results); 409 while
        the study is open."""
        study = self.visible_study(principal, content_hash)
        if study["status"] != "closed":
            raise HTTPException(409, detail="the study is still open: results come when every site has answered, "
                                            "or close it with the sites that answered (POST .../close)")
        return {"hash": content_hash, "status": study["status"], "pooled": json.loads(study["pooled"] or "{}"),
                "sites": self.store.results(content_hash), "federated": self.federated(content_hash)}

    def federated_analyses(self, principal: Principal, content_hash: str) -> list[str]:
        """The names (table prefixes) of the study's analyses that federated regression can fit, for a
        caller who may see the study."""
        study = self.visible_study(principal, content_hash)
        pkg = StudyPackage.from_canonical(json.loads(study["package"]))
        return [a.table_prefix() for a in pkg.analyses if a.federated]

    def federated_fit(self, principal: Principal, content_hash: str, analysis: str, model: str) -> dict[str, Any]:
        """Fit `model` exactly across the finished sites of a study the caller may see (the API's POST
        /studies/{hash}/federated and the portal's study page): the fit kept with the study's results
        and the question audited. A model no site releases, or that does not converge, is the one
        `ModelRefused`; no finished site, or a site lost during the fit, a `FederatedError`."""
        self.visible_study(principal, content_hash)
        fit = federated_fit(self.store, content_hash, analysis, model, timeout=self.config.node_timeout_seconds)
        self.add_federated(content_hash, fit)
        self.audit.append("federated.fit", principal.name, hash=content_hash, analysis=analysis, model=model,
                          sites=fit["sites"])
        return fit

    def federated(self, content_hash: str) -> list[dict[str, Any]]:
        path = self.config.state_dir / "federated" / f"{content_hash}.json"
        return json.loads(path.read_text()) if path.exists() else []

    def add_federated(self, content_hash: str, fit: dict[str, Any]) -> None:
        import os
        import tempfile

        folder = self.config.state_dir / "federated"
        folder.mkdir(parents=True, exist_ok=True)
        fits = [f for f in self.federated(content_hash)
                if (f["analysis"], f["model"]) != (fit["analysis"], fit["model"])] + [fit]
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(fits, f)
        os.replace(tmp, folder / f"{content_hash}.json")


def create_app(config: HubConfig, *, start_dispatcher: bool = True) -> FastAPI:
    services = HubServices(config, start_dispatcher=start_dispatcher)
    auth = authenticator(services.tokens)
    store = services.store

    app = FastAPI(title="Mercia hub", version="1", lifespan=service_lifespan(services),
                  description="Submit study packages to sites, follow them, and pool what they release.")
    app.state.services = services
    app.state.authenticator = auth

    install_error_handlers(app)
    install_request_limits(app)

    def asked_sites(principal: Principal, project: str, asked: list[str] | None, *,
                    name_project_sites: bool = False) -> list[str]:
        return services.asked_sites(principal, project, asked, name_project_sites=name_project_sites)

    @app.middleware("http")
    async def _audit_requests(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        if request.url.path != "/health":
            await run_in_threadpool(services.audit.append, "request", "http", method=request.method,
                                    path=request.url.path[:200], status=response.status_code,
                                    client=request.client.host if request.client else None)
        return response

    def role(*roles: str) -> Any:
        return Depends(auth.require_role(*roles))

    def visible(principal: Principal, content_hash: str) -> dict[str, Any]:
        return services.visible_study(principal, content_hash)

    def require_all_projects(principal: Principal, what: str) -> None:
        if ALL_PROJECTS not in principal.projects:
            raise HTTPException(403, detail=f"{what} needs an admin of every project (*); {principal.name} "
                                            f"administers {sorted(principal.projects)} only")

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> Health:
        """Liveness only."""
        return Health(status="ok")

    @app.post(f"{API}/studies", status_code=202, response_model=StudyState, responses=ERRORS, tags=["studies"])
    def submit(body: SubmitStudy, principal: Annotated[Principal, role("researcher", "admin")]) -> StudyState:
        """Hash and sign the package and send it to the chosen sites of the project (idempotent on hash).
        Roles: researcher (in the project), admin."""
        return StudyState(**services.submit_study(principal, body.package, body.project, body.sites))

    @app.get(f"{API}/studies", response_model=list[StudySummary], responses=ERRORS, tags=["studies"])
    def list_studies(principal: Annotated[Principal, role("researcher", "admin")]) -> list[StudySummary]:
        """The studies of the caller's projects. Roles: researcher, admin."""
        return [StudySummary(**s) for s in services.studies(principal)]

    @app.get(f"{API}/studies/{{content_hash}}", response_model=StudyState, responses=ERRORS, tags=["studies"])
    def study_state(content_hash: HashParam, principal: Annotated[Principal, role("researcher", "admin")]
                    ) -> StudyState:
        """The study and each site's status (including whether the site's node is answering).
        Roles: researcher (in the project), admin."""
        return StudyState(**services.study_state(principal, content_hash))

    @app.post(f"{API}/studies/{{content_hash}}/close", response_model=StudyState, responses=ERRORS,
              tags=["studies"])
    def close(content_hash: HashParam, principal: Annotated[Principal, role("researcher", "admin")]) -> StudyState:
        """Finish now with the sites that answered; the others are excluded (their late results are not
        used). Roles: researcher (in the project), admin."""
        return StudyState(**services.close_study(principal, content_hash))

    @app.get(f"{API}/studies/{{content_hash}}/results", response_model=StudyResults, responses=ERRORS,
             tags=["studies"])
    def results(content_hash: HashParam, principal: Annotated[Principal, role("researcher", "admin")]
                ) -> StudyResults:
        """Pooled estimates and every site's released tables; 409 while the study is open.
        Roles: researcher (in the project), admin."""
        return StudyResults(**services.study_results(principal, content_hash))

    # The report is HTML but its errors are JSON: say so, or the errors are documented as text/html.
    @app.get(f"{API}/studies/{{content_hash}}/report", response_class=HTMLResponse, tags=["studies"],
             responses={code: {**spec, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
                        for code, spec in ERRORS.items()})
    def report(content_hash: HashParam, principal: Annotated[Principal, role("researcher", "admin")]) -> HTMLResponse:
        """The pooled report (HTML); 409 while the study is open. Roles: researcher (in the project), admin."""
        study = visible(principal, content_hash)
        if study["status"] != "closed":
            raise HTTPException(409, detail="the study is still open; the pooled report comes when it is closed")
        runs = [r.public() for r in store.site_runs(content_hash)]
        # Each site that ran it: its data-quality status now (run day, pass rate, failed checks).
        ran = [r["site"] for r in runs if r["status"] == "collected"]
        quality = quality_across(store, ran, study["project"], timeout=config.node_timeout_seconds)["sites"]
        html = render_pooled_report(study, runs, json.loads(study["pooled"] or "{}"), services.federated(content_hash),
                                    quality=quality)
        return HTMLResponse(html)

    @app.post(f"{API}/studies/{{content_hash}}/federated", response_model=dict[str, Any], responses=ERRORS,
              tags=["regression"])
    def federated(content_hash: HashParam, body: FederatedQuery,
                  principal: Annotated[Principal, role("researcher", "admin")]) -> dict[str, Any]:
        """Fit the model exactly across the finished sites (Newton-Raphson on their score and information).
        Roles: researcher (in the project), admin. When no site releases the model, or the fit does not
        converge, the answer is one fixed 422 `model_refused`, the same whatever the reason."""
        return services.federated_fit(principal, content_hash, body.analysis, body.model)

    @app.post(f"{API}/feasibility", response_model=dict[str, Any], responses=ERRORS, tags=["feasibility"])
    def feasibility(body: FeasibilityQuery, principal: Annotated[Principal, role("researcher", "admin")]
                    ) -> dict[str, Any]:
        """Released persons counts of a cohort definition at each site of the project, and their sum.
        Roles: researcher (in the project), admin; rate-limited with a lockout after repeats (429)."""
        return services.feasibility(principal, body.definition, body.project, body.sites)

    @app.post(f"{API}/trials/feasibility", response_model=dict[str, Any], responses=ERRORS, tags=["feasibility"])
    def trial_feasibility(body: TrialFeasibilityQuery, principal: Annotated[Principal, role("researcher", "admin")]
                          ) -> dict[str, Any]:
        """A trial's released feasibility at each site of the project and in total: eligible persons, the
        funnel criterion by criterion, the what-if gain of removing each criterion, breakdowns by age band,
        sex and ethnicity, newly eligible persons per month, and from those released monthly counts the
        recruitment model and (with `target` and `consent`) the months to reach the target, per site and
        pooled. Each node charges the caller's privacy budget there (a site that refuses gives its reason
        in `error`). Roles: researcher (in the project), admin; rate-limited with a lockout after repeats
        (429); a site not in the project is 403."""
        return services.trial_feasibility(principal, body.definition, body.project, body.sites,
                                          history_months=body.history_months, not_applied=body.not_applied,
                                          target=body.target, consent=body.consent)

    @app.get(f"{API}/concepts", response_model=list[ConceptHit], responses=ERRORS, tags=["concepts"])
    def concept_search(
        text: Annotated[str, Query(min_length=1, max_length=200, description="words of a name or synonym, or a code")],
        principal: Annotated[Principal, role("researcher", "admin")],
        domain: Annotated[str | None, Query(max_length=50, description="only this domain")] = None,
        vocabulary: Annotated[str | None, Query(max_length=50, description="only this vocabulary")] = None,
        standard: Annotated[bool, Query(description="only standard concepts")] = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[ConceptHit]:
        """Concepts of the hub's vocabulary (hub.yaml `portal: vocabulary:`) matching `text`, best match
        first: an exact name, synonym or code, then a prefix, then a substring. No counts (the sites'
        released counts are POST /concepts/count). Roles: researcher, admin; 404 when the hub has no
        vocabulary."""
        return [ConceptHit(**h) for h in services.vocabulary.search(
            text, domain=domain, vocabulary=vocabulary, standard=standard, limit=limit)]

    @app.get(f"{API}/concepts/{{concept_id}}", response_model=ConceptDetailsOut, responses=ERRORS, tags=["concepts"])
    def concept_show(concept_id: Annotated[int, Path(ge=0, le=2_147_483_647, description="an OMOP concept_id")],
                     principal: Annotated[Principal, role("researcher", "admin")]) -> ConceptDetailsOut:
        """One concept of the hub's vocabulary: its fields, synonyms, the concepts it maps to and from,
        its ancestors and (the first 100 of) its descendants. Roles: researcher, admin."""
        return ConceptDetailsOut(**services.vocabulary.details(concept_id))

    @app.post(f"{API}/concepts/count", response_model=ConceptCounts, responses=ERRORS, tags=["feasibility"])
    def concept_count(body: ConceptCountQuery, principal: Annotated[Principal, role("researcher", "admin")]
                      ) -> ConceptCounts:
        """Each site's released number of persons with a record of a concept (with its descendants by
        default), asked for the caller: each node charges the caller's privacy budget at that site, as for
        feasibility counts, and says so in `privacy`; a site that refuses (its budget spent, a concept not
        in its vocabulary) gives its reason in `error`. With `records`, each site also releases the
        concept's records, each person's counted up to the site's cap (`records_per_person_counted`): one
        more question, charged at each site. Roles: researcher (in the project), admin;
        rate-limited with a lockout after repeats (429)."""
        answer = services.concept_counts(principal, body.concept_id, body.descendants, body.project, body.sites,
                                         records=body.records)
        return ConceptCounts(concept_id=answer["concept_id"], descendants=answer["descendants"],
                             records=answer["records"],
                             sites=[SiteConceptCount(**{k: a.get(k) for k in SiteConceptCount.model_fields})
                                    for a in answer["sites"]])

    def quality_sites(principal: Principal, project: str) -> list[str]:
        require_project(principal, project)
        return store.project_sites(project)

    @app.get(f"{API}/quality", response_model=dict[str, Any], responses=ERRORS, tags=["quality"])
    def quality(project: Annotated[str, Query(pattern=NAME_PATTERN, description="the project whose sites to show")],
                principal: Annotated[Principal, role("researcher", "admin")]) -> dict[str, Any]:
        """The data-quality summaries of the project's sites side by side (federation/hub/quality.py):
        per site the day of its run, pass rates overall and per category, counts of checks by status;
        every failed check with its released numbers; released records per month per domain; and each
        site's released summary as it sent it. A site without a summary, or that did not answer, gives
        its reason in `error`. Roles: researcher (in the project), admin."""
        sites = quality_sites(principal, project)
        answer = quality_across(store, sites, project, timeout=config.node_timeout_seconds)
        services.audit.append("quality.asked", principal.name, project=project, sites=sites)
        return answer

    @app.get(f"{API}/quality/report", response_class=HTMLResponse, tags=["quality"],
             responses={code: {**spec, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
                        for code, spec in ERRORS.items()})
    def quality_report(project: Annotated[str, Query(pattern=NAME_PATTERN, description="the project")],
                       principal: Annotated[Principal, role("researcher", "admin")]) -> HTMLResponse:
        """The same side by side as an HTML page, with each domain's records per month by site plotted.
        Roles: researcher (in the project), admin."""
        sites = quality_sites(principal, project)
        answer = quality_across(store, sites, project, timeout=config.node_timeout_seconds)
        services.audit.append("quality.asked", principal.name, project=project, sites=sites, page=True)
        return HTMLResponse(render_network_quality(answer))

    # ---- administration -------------------------------------------------------------------------------
    @app.post(f"{API}/nodes", response_model=NodeOut, status_code=201, responses=ERRORS, tags=["admin"])
    def add_node(body: NodeIn, principal: Annotated[Principal, role("admin")]) -> NodeOut:
        """Register (or update) a node and the token the hub presents to it. Role: admin of every project
        (a node serves them all)."""
        require_all_projects(principal, "registering a node")
        node = store.add_node(body.name, body.url, body.token, body.verify)
        services.audit.append("node.registered", principal.name, node=body.name, url=body.url)
        return NodeOut(**node.public())

    @app.get(f"{API}/nodes", response_model=list[NodeOut], responses=ERRORS, tags=["admin"])
    def list_nodes(principal: Annotated[Principal, role("admin", "researcher")]) -> list[NodeOut]:
        """Registered nodes of the caller's projects (names and URLs; never their tokens). Roles: admin,
        researcher."""
        mine = {s for p in store.projects() if principal.in_project(p["name"]) for s in p["sites"]}
        return [NodeOut(**n.public()) for n in store.nodes()
                if ALL_PROJECTS in principal.projects or n.name in mine]

    @app.post(f"{API}/projects", response_model=ProjectOut, status_code=201, responses=ERRORS, tags=["admin"])
    def add_project(body: ProjectIn, principal: Annotated[Principal, role("admin")]) -> ProjectOut:
        """Create or change a project and its sites. Role: admin (of that project, or of every project)."""
        return ProjectOut(**services.save_project(principal, body.name, body.sites))

    @app.get(f"{API}/projects", response_model=list[ProjectOut], responses=ERRORS, tags=["admin"])
    def list_projects(principal: Annotated[Principal, role("admin", "researcher")]) -> list[ProjectOut]:
        """The caller's projects. Roles: admin, researcher."""
        return [ProjectOut(**p) for p in store.projects() if principal.in_project(p["name"])]

    @app.post(f"{API}/users", response_model=UserToken, status_code=201, responses=ERRORS, tags=["admin"])
    def add_user(body: UserIn, principal: Annotated[Principal, role("admin")]) -> UserToken:
        """Issue (or rotate) a user's token, shown once; the hub keeps its hash. Role: admin, for projects
        they administer (only an admin of every project gives "*")."""
        token = services.issue_token(principal, body.name, body.role, body.projects)
        return UserToken(name=body.name, role=body.role, token=token)

    # The portal's pages (mercia.portal) sit above the federation layer: imported here, as run_study imports
    # its report, so the API's module does not depend on them at import time.
    from mercia.portal import create_portal

    app.mount("/portal", create_portal(services))
    return app
