"""The node's portal, for the site's data custodian: the approval queue, each package, the audit log,
the released results.

    /portal/                            the queue: studies pending approval, then every other study
    /portal/sign-in                     GET the form, POST name + password (lockout after repeated failures)
    /portal/sign-out                    POST
    /portal/studies/{hash}              a package: what it will run, what it can release, the difference
                                        from earlier versions of the same study (?against=HASH), its YAML
    /portal/studies/{hash}/approve      POST hash + reason: approve exactly this hash         custodian
    /portal/studies/{hash}/reject       POST hash + reason (required): reject it             custodian
    /portal/studies/{hash}/results      a finished study's released tables, as the hub gets them
    /portal/audit                       the audit log, verified (whole, or broken at entry N); newest first
    /portal/held, /portal/held/{hash}   results held for the custodian's output check, released or withheld
                                        (mercia.portal.node_output_check)

Roles: custodian and admin see every page, in their projects (a study of another project is not
found, as in the API); only a custodian decides. Accounts are the node's own (state_dir/portal.sqlite,
`mercia node portal-user-add`), a user acting as `Principal(name, role, projects)`, exactly as a node
token of that role and those projects. A decision is `NodeServices.decide`, the code the API's POST
studies/{hash}/approve and /reject run; the form carries the hash the page showed, which must be the
hash it is sent to, and a study no longer pending (decided meanwhile, by the CLI say) is refused (409).
The results are `NodeServices.released_results`, what GET studies/{hash}/results sends: released tables
only. Every sign-in and decision is in the node's audit log.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures.

import hmac
import json
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mercia.federation.auth import Principal
from mercia.federation.http_common import HASH_PATTERN
from mercia.federation.node.state import StudyRecord, StudyStateError
from mercia.portal.accounts import accounts_for
from mercia.portal.node_output_check import add_output_check_pages
from mercia.portal.node_review import (
    STUDY_TABLES,
    AuditChecker,
    audit_view,
    package_diff,
    package_yaml,
    release_plan,
    released_shapes,
    what_it_runs,
)
from mercia.portal.sign_in import add_sign_in_routes
from mercia.portal.web import PortalWeb, one

NODE_PORTAL_ROLES = ("custodian", "admin")
NAV = [("Approval queue", "/", NODE_PORTAL_ROLES), ("Results to check", "/held", NODE_PORTAL_ROLES),
       ("Audit log", "/audit", NODE_PORTAL_ROLES)]
MAX_REASON = 2000
DECIDED = {"approved": "Approved", "rejected": "Rejected"}


def cell(value: Any) -> str:
    """A released value as the page shows it: numbers exactly as the API's JSON carries them."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return str(value)


def create_node_portal(services: Any, *, prefix: str = "/portal") -> FastAPI:
    """The node's portal as an app to mount at `prefix` (mercia.federation.node.app does)."""
    config = services.config
    accounts = accounts_for(config.state_dir / "portal.sqlite", config.portal, roles=NODE_PORTAL_ROLES)
    web = PortalWeb(accounts, secure_cookie=config.portal.secure_cookie, title=f"Mercia node {config.site}",
                    prefix=prefix, nav=NAV)
    web.env.filters["cell"] = cell
    app = web.app()
    app.state.accounts = accounts
    audit = services.audit
    store = services.store
    checker = AuditChecker(services.audit.path)  # checks only what was added since the last view

    def viewer(request: Request) -> tuple[Any, Principal]:
        session = web.signed_in(request)
        return session, web.with_role(session, *NODE_PORTAL_ROLES)

    def visible(principal: Principal) -> list[StudyRecord]:
        return [r for r in store.list() if principal.in_project(r.project)]

    def study_of(principal: Principal, content_hash: str) -> StudyRecord:
        from mercia.federation.node.app import scoped_study

        return scoped_study(store, principal, content_hash)  # 404 for another project's, as the API

    # ---- sign-in, sign-out ------------------------------------------------------------------------------
    add_sign_in_routes(app, web, accounts, audit, prefix, template="node_sign_in.html",
                       extra=lambda: {"site": config.site})

    # ---- the queue ----------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def queue(request: Request) -> Response:
        session, principal = viewer(request)
        studies = visible(principal)
        pending = [r for r in studies if r.status == "pending_approval"]
        others = sorted((r for r in studies if r.status != "pending_approval"), key=lambda r: r.updated_at,
                        reverse=True)
        return web.page(request, "node_queue.html", session, title="Approval queue", pending=pending,
                        others=others, site=config.site)

    # ---- a package ------------------------------------------------------------------------------------------
    Hash = Annotated[str, Path(pattern=HASH_PATTERN)]

    def earlier_versions(principal: Principal, rec: StudyRecord) -> list[StudyRecord]:
        """Other packages of the same study (its name) in the viewer's projects, submitted before it,
        newest first."""
        same = [r for r in visible(principal) if r.name == rec.name and r.hash != rec.hash
                and (r.submitted_at, r.hash) < (rec.submitted_at, rec.hash)]
        return sorted(same, key=lambda r: (r.submitted_at, r.hash), reverse=True)

    def shapes(principal: Principal, needed: set[str]) -> dict[str, tuple[str, list[tuple[str, list[str]]]]]:
        """Per analysis type in `needed`, the tables (names, columns) the newest finished study of the
        viewer's projects released with it here (read until each is found)."""
        out: dict[str, tuple[str, list[tuple[str, list[str]]]]] = {}
        done = sorted((r for r in visible(principal) if r.status == "finished"), key=lambda r: r.updated_at,
                      reverse=True)
        for r in done:
            if needed <= out.keys():
                break
            try:
                tables, _, manifest = services.released_results(r.hash)
            except (OSError, ValueError):
                continue
            for kind, found in released_shapes(tables, manifest).items():
                out.setdefault(kind, (r.name, found))
        return out

    def study_page(request: Request, session: Any, principal: Principal, rec: StudyRecord, *, against: str = "",
                   status_code: int = 200, **extra: Any) -> Response:
        from mercia.study.package import StudyPackage

        canonical = store.package(rec.hash)
        pkg = StudyPackage.from_canonical(canonical)
        text = package_yaml(canonical)
        earlier = earlier_versions(principal, rec)
        base = next((r for r in earlier if r.hash == against), None) if against else (earlier[0] if earlier else None)
        if against and base is None:
            raise HTTPException(400, detail=f"against: {against[:16]}... is not an earlier version of "
                                            f"{rec.name!r} at this node; choose one from the list")
        diff = (package_diff(package_yaml(store.package(base.hash)), text, f"{base.hash[:12]} ({base.submitted_at})",
                             f"{rec.hash[:12]} ({rec.submitted_at})") if base is not None else None)
        needed = {STUDY_TABLES} | {a.type_name() for a in pkg.analyses}
        release = release_plan(pkg, shapes(principal, needed), config.site_policy, config.federated_rounds)
        return web.page(request, "node_study.html", session, title=f"Study {rec.name}", rec=rec, yaml_text=text,
                        runs=what_it_runs(pkg), release=release,
                        description=canonical.get("description"), earlier=earlier, base=base, diff=diff,
                        can_decide=principal.role == "custodian" and rec.status == "pending_approval",
                        max_reason=MAX_REASON, status_code=status_code, **extra)

    @app.get("/studies/{content_hash}", response_class=HTMLResponse)
    def study(request: Request, content_hash: Hash, against: Annotated[str, Query(max_length=64)] = "",
              done: Annotated[str, Query(max_length=10)] = "") -> Response:
        session, principal = viewer(request)
        rec = study_of(principal, content_hash)
        notice = f"{DECIDED[done]} {rec.hash}." if done in DECIDED else None
        return study_page(request, session, principal, rec, against=against, notice=notice)

    async def decision(request: Request, content_hash: str, approve: bool) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, "custodian")  # the API's approve and reject: custodian only
        rec = study_of(principal, content_hash)
        shown, reason = one(fields, "hash").strip().lower(), one(fields, "reason").strip()
        problem = None
        if not hmac.compare_digest(shown.encode(), content_hash.encode()):
            problem = (f"hash: the form confirms package {shown[:16] or '(none)'}..., not {content_hash[:16]}..., "
                       "the one it was sent for: open the package again and decide on what it shows")
        elif len(reason) > MAX_REASON:
            problem = f"reason: at most {MAX_REASON} characters (this one has {len(reason)})"
        elif not approve and not reason:
            problem = "reason: say why the package is rejected (the hub shows it to the researcher)"
        if problem is not None:
            return study_page(request, session, principal, rec, status_code=400, message=problem)
        try:
            services.decide(principal, content_hash, approve, reason or None, via="portal")
        except StudyStateError as e:  # decided meanwhile (another custodian, the CLI): a stale page
            return study_page(request, session, principal, study_of(principal, content_hash), status_code=409,
                              message=str(e))
        return RedirectResponse(f"{prefix}/studies/{content_hash}?done={'approved' if approve else 'rejected'}",
                                status_code=303)

    @app.post("/studies/{content_hash}/approve", response_class=HTMLResponse)
    async def approve(request: Request, content_hash: Hash) -> Response:
        return await decision(request, content_hash, True)

    @app.post("/studies/{content_hash}/reject", response_class=HTMLResponse)
    async def reject(request: Request, content_hash: Hash) -> Response:
        return await decision(request, content_hash, False)

    # ---- released results --------------------------------------------------------------------------------------
    @app.get("/studies/{content_hash}/results", response_class=HTMLResponse)
    def results(request: Request, content_hash: Hash) -> Response:
        session, principal = viewer(request)
        rec = study_of(principal, content_hash)
        if rec.status != "finished":
            raise HTTPException(409, detail=f"study {rec.name} ({content_hash[:12]}) is {rec.status}; its released "
                                            "results are here when it is finished")
        tables, _disclosure, manifest = services.released_results(content_hash)
        numeric = {t["name"]: [any(isinstance(row[i], int | float) and not isinstance(row[i], bool)
                                   for row in t["rows"]) for i in range(len(t["columns"]))] for t in tables}
        return web.page(request, "node_results.html", session, title=f"Released results: {rec.name}", rec=rec,
                        tables=tables, numeric=numeric, analyses=manifest.get("analyses") or [], site=config.site)

    add_output_check_pages(app, web, services)

    # ---- the audit log ------------------------------------------------------------------------------------------
    @app.get("/audit", response_class=HTMLResponse)
    def audit_log(request: Request, before: Annotated[int | None, Query(ge=1, le=2**53)] = None,
                  requests: Annotated[str, Query(max_length=1)] = "") -> Response:
        session, _principal = viewer(request)
        view = audit_view(services.audit.path, before=before, include_requests=requests == "1", checker=checker)
        return web.page(request, "node_audit.html", session, title="Audit log", view=view,
                        requests=requests == "1", before=before)

    return app
