"""The custodian's output check in the node's portal: released results before they leave.

    /portal/held                        the runs whose results are held (node.yaml hold_results)
    /portal/held/{hash}                 one held run: every released table exactly as the hub would
                                        receive it, with Release / Withhold (reason required)
    /portal/held/{hash}/release         POST hash + run + results_sha256 (+ reason)        custodian
    /portal/held/{hash}/withhold        POST hash + run + results_sha256 + reason          custodian

Custodian and admin see the pages, in their projects (another project's study is not found); only a
custodian decides. A decision is `NodeServices.check_output`, the code of the API's POST
studies/{hash}/release and /withhold: the form names the hash and the run the page showed and the
sha256 of the results on it, so what is released is exactly what was read (409 otherwise, as for a
run decided meanwhile). Every decision is in the node's audit log.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures.

import hmac
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mercia.federation.auth import Principal
from mercia.federation.http_common import HASH_PATTERN
from mercia.federation.node.output_check import MAX_REASON, ReasonRequired, results_sha256
from mercia.federation.node.state import StudyRecord, StudyStateError
from mercia.portal.web import PortalWeb, one

ROLES = ("custodian", "admin")
DONE = {"released": "Released", "withheld": "Withheld"}
Hash = Annotated[str, Path(pattern=HASH_PATTERN)]


def numeric_columns(tables: list[dict[str, Any]]) -> dict[str, list[bool]]:
    """Per table, whether each column holds a number in some row (right-aligned on the page)."""
    return {t["name"]: [any(isinstance(row[i], int | float) and not isinstance(row[i], bool) for row in t["rows"])
                        for i in range(len(t["columns"]))] for t in tables}


def add_output_check_pages(app: FastAPI, web: PortalWeb, services: Any) -> None:
    """The output-check routes on the node portal's app."""
    config = services.config
    prefix = web.prefix

    def viewer(request: Request) -> tuple[Any, Principal]:
        session = web.signed_in(request)
        return session, web.with_role(session, *ROLES)

    @app.get("/held", response_class=HTMLResponse)
    def held(request: Request, done: Annotated[str, Query(max_length=10)] = "",
             study: Annotated[str, Query(max_length=64)] = "") -> Response:
        session, principal = viewer(request)
        notice = None
        if done in DONE and study:
            rec = services.store.get(study)
            if rec is not None and principal.in_project(rec.project):
                notice = f"{DONE[done]} the results of {rec.name} ({rec.hash}), run {rec.runs}."
        return web.page(request, "node_held.html", session, title="Results to check", held=services.held(principal),
                        site=config.site, holding=config.hold_results, notice=notice)

    def run_page(request: Request, session: Any, principal: Principal, content_hash: str, *, status_code: int = 200,
                 **extra: Any) -> Response:
        rec, tables, disclosure, manifest = services.held_results(principal, content_hash)
        return web.page(request, "node_held_run.html", session, title=f"Results to check: {rec.name}", rec=rec,
                        tables=tables, numeric=numeric_columns(tables), analyses=manifest.get("analyses") or [],
                        digest=results_sha256(tables, disclosure, manifest), site=config.site,
                        can_decide=principal.role == "custodian", max_reason=MAX_REASON, status_code=status_code,
                        **extra)

    @app.get("/held/{content_hash}", response_class=HTMLResponse)
    def held_run(request: Request, content_hash: Hash) -> Response:
        session, principal = viewer(request)
        page = run_page(request, session, principal, content_hash)
        rec: StudyRecord = services.store.require(content_hash)
        services.audit.append("results.checked", principal.name, hash=content_hash, run=rec.runs, via="portal")
        return page

    async def decision(request: Request, content_hash: str, release: bool) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, "custodian")  # the API's release and withhold: custodian only
        from mercia.federation.node.app import scoped_study

        scoped_study(services.store, principal, content_hash)  # 404 for another project's, as the API
        shown, run_text = one(fields, "hash").strip().lower(), one(fields, "run").strip()
        digest, reason = one(fields, "results_sha256").strip().lower(), one(fields, "reason").strip()
        problem = None
        if not hmac.compare_digest(shown.encode(), content_hash.encode()):
            problem = (f"hash: the form confirms package {shown[:16] or '(none)'}..., not {content_hash[:16]}..., "
                       "the one it was sent for: open the held results again and decide on what they show")
        elif not run_text.isdigit() or not 1 <= int(run_text) <= 2**31:
            problem = "run: the run number the page showed is missing; open the held results again"
        if problem is None:
            try:
                services.check_output(principal, content_hash, int(run_text), release, reason or None,
                                      expected_sha256=digest, via="portal")
            except ReasonRequired as e:
                problem = str(e)
            except StudyStateError as e:  # decided meanwhile, another run, changed results: a stale page
                try:
                    return run_page(request, session, principal, content_hash, status_code=409, message=str(e))
                except StudyStateError:  # no longer held at all
                    return web.error(request, 409, str(e))
            else:
                return RedirectResponse(f"{prefix}/held?done={'released' if release else 'withheld'}"
                                        f"&study={content_hash}", status_code=303)
        return run_page(request, session, principal, content_hash, status_code=400 if problem.startswith(
            ("hash", "run")) else 422, message=problem, reason=reason)

    @app.post("/held/{content_hash}/release", response_class=HTMLResponse)
    async def release(request: Request, content_hash: Hash) -> Response:
        return await decision(request, content_hash, True)

    @app.post("/held/{content_hash}/withhold", response_class=HTMLResponse)
    async def withhold(request: Request, content_hash: Hash) -> Response:
        return await decision(request, content_hash, False)
