"""The hub portal's studies: the list, the composer, a study's status per site, its pooled report and
its released results to download.

    /portal/studies                          the studies of the user's projects, each site's status
    /portal/studies/new                      GET the composer; POST: the package checked, its YAML and hash
                                             (action=add: the form with one more analysis of a type)
    /portal/studies/package                  POST a whole package pasted (YAML or JSON): checked, YAML, hash
    /portal/studies/submit                   POST the checked package (its hash again) to chosen sites
    /portal/studies/{hash}                   the study, each site's status; POST .../close
    /portal/studies/{hash}/federated         POST: a federated regression fit (study_federated.py)
    /portal/studies/{hash}/report            the pooled report (plots drawn as SVG) and every released table
    /portal/studies/{hash}/results/{site}/{table}.csv|.parquet     one released table of one site
    /portal/studies/{hash}/pooled.csv|.parquet                     the meta-analysis of released estimates

Researchers and admins, in the study's project. Every page calls the `HubServices` methods the API's
/api/v1/studies routes call (`studies`, `study_state`, `submit_study`, `close_study`, `study_results`,
`federated_fit`),
so the portal may do exactly what an API token of the same role and projects may: a study of another
project is 404 as in the API, a site outside the project 403. Numbers come only from the sites'
released tables and the hub's meta-analysis of them (study_report.py).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures.

import io
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mercia.errors import MerciaError, StudyError
from mercia.federation.auth import Principal
from mercia.portal.study_federated import add_federated_pages, federated_view
from mercia.portal.study_forms import (
    COHORT_ROWS,
    MAX_COPIES,
    add_copy,
    analysis_forms,
    checked_package,
    copies_from,
    package_from_form,
    read_package_text,
)
from mercia.portal.study_report import pooled_frame, released_frame, report_view
from mercia.portal.web import PortalWeb, one

HASH = r"^[0-9a-f]{64}$"
Hash = Annotated[str, Path(pattern=HASH, description="the package's content hash")]
SafeName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")]
TableName = Annotated[str, Path(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")]
Format = Literal["csv", "parquet"]

# A site's status at the hub, in the words a researcher reads.
STATUS_WORDS = {
    "queued": "queued at the hub", "pending_approval": "pending approval", "approved": "approved",
    "running": "running", "held": "held for the custodian's output check",
    "finished": "released (being collected)", "collected": "released",
    "failed": "failed", "rejected": "rejected", "withheld": "withheld by the custodian",
    "excluded": "excluded (study closed without it)",
}


def status_words(status: str) -> str:
    return STATUS_WORDS.get(status, status)


def add_study_pages(app: FastAPI, web: PortalWeb, services: Any, my_projects: Any) -> None:
    """The studies routes on the hub portal's app."""
    store = services.store

    def researcher(request: Request) -> tuple[Any, Principal]:
        session = web.signed_in(request)
        return session, web.with_role(session, "researcher", "admin")

    def project_sites(principal: Principal) -> list[dict[str, Any]]:
        return [p for p in store.projects() if principal.in_project(p["name"])]

    # ---- the list -------------------------------------------------------------------------------------
    @app.get("/studies", response_class=HTMLResponse)
    def studies(request: Request) -> Response:
        session, principal = researcher(request)
        rows = [services.study_state(principal, s["hash"]) for s in reversed(services.studies(principal))]
        return web.page(request, "studies.html", session, title="Studies", studies=rows, words=status_words)

    # ---- composing --------------------------------------------------------------------------------------
    def composer(request: Request, session: Any, principal: Principal, *, status_code: int = 200,
                 **extra: Any) -> Response:
        fields: dict[str, list[str]] = extra.pop("fields", {})
        sent = {k: v for k, v in fields.items() if k != "csrf"}
        cohorts = extra.pop("cohort_rows", None) or [{"key": (sent.get(f"cohort{i}_key") or [""])[0],
                                                       "definition": (sent.get(f"cohort{i}_definition") or [""])[0]}
                                                      for i in range(1, COHORT_ROWS + 1)]
        return web.page(request, "studies_new.html", session, title="Compose a study",
                        forms=analysis_forms(copies_from(sent)), max_copies=MAX_COPIES,
                        cohorts=cohorts, sent=sent, projects=project_sites(principal), status_code=status_code,
                        **extra)

    def preview(request: Request, session: Any, principal: Principal, data: dict[str, Any],
                fields: dict[str, list[str]], **extra: Any) -> Response:
        pkg, text = checked_package(data)
        return composer(request, session, principal, fields=fields, package_yaml=text, package_hash=pkg.content_hash,
                        package_name=pkg.name, analyses=[(a.table_prefix(), a.type) for a in pkg.analyses],
                        **extra)

    @app.get("/studies/new", response_class=HTMLResponse)
    def new(request: Request) -> Response:
        session, principal = researcher(request)
        return composer(request, session, principal)

    @app.post("/studies/new", response_class=HTMLResponse)
    async def new_post(request: Request) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        if one(fields, "action") == "add":  # one more analysis of a type: the form again, nothing checked
            try:
                fields, form = add_copy(fields)
            except StudyError as e:
                return composer(request, session, principal, fields=fields, status_code=400,
                                message=f"No analysis was added: {e}")
            return composer(request, session, principal, fields=fields, added=form.prefix,
                            notice=f"Added another {form.type} analysis (#{form.copy}), named {form.type}_{form.copy}: "
                                   "set it below, then check the package.")
        try:
            data = package_from_form(fields)
            return preview(request, session, principal, data, fields)
        except MerciaError as e:
            return composer(request, session, principal, fields=fields, status_code=400,
                            message=f"The package cannot be made: {e}")

    @app.post("/studies/package", response_class=HTMLResponse)
    async def package_post(request: Request) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        text = (fields.get("package_text") or [""])[0]
        try:
            return preview(request, session, principal, read_package_text(text), {}, pasted=text)
        except MerciaError as e:
            return composer(request, session, principal, status_code=400, pasted=text,
                            message=f"The package cannot be read: {e}")

    @app.post("/studies/submit", response_class=HTMLResponse)
    async def submit(request: Request) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        text, expected, project = (fields.get("package_text") or [""])[0], one(fields, "hash"), one(fields, "project")
        sites = sorted({s for s in fields.get("sites", []) if s}) or None
        try:
            pkg, _ = checked_package(read_package_text(text))
            if pkg.content_hash != expected:
                raise StudyError(f"hash: the package's hash is {pkg.content_hash}, not the {expected[:64] or '(none)'} "
                                 "shown when it was checked; check it again before sending it")
            if not project:
                raise StudyError("project: choose the project the study belongs to")
            mine = {p["name"]: p["sites"] for p in project_sites(principal)}
            if project in mine and sites and set(sites) - set(mine[project]):
                raise StudyError(f"sites: {', '.join(sorted(set(sites) - set(mine[project])))} not in project "
                                 f"{project} (its sites: {', '.join(mine[project])})")
            state = services.submit_study(principal, read_package_text(text), project, sites)
        except StudyError as e:
            return preview_again(request, session, principal, text, f"The study was not sent: {e}")
        return RedirectResponse(f"{web.prefix}/studies/{state['hash']}?sent=1", status_code=303)

    def preview_again(request: Request, session: Any, principal: Principal, text: str, message: str) -> Response:
        try:
            data = read_package_text(text)
            pkg, shown = checked_package(data)
            return composer(request, session, principal, status_code=400, message=message, pasted=text,
                            package_yaml=shown, package_hash=pkg.content_hash, package_name=pkg.name,
                            analyses=[(a.table_prefix(), a.type) for a in pkg.analyses])
        except MerciaError:
            return composer(request, session, principal, status_code=400, message=message, pasted=text)

    # ---- a study ----------------------------------------------------------------------------------------------
    def study_page(request: Request, session: Any, principal: Principal, content_hash: str, *,
                   status_code: int = 200, fed_sent: dict[str, str] | None = None, **extra: Any) -> Response:
        state = services.study_state(principal, content_hash)
        fed = federated_view(services, principal, content_hash, **(fed_sent or {}))
        return web.page(request, "study.html", session, title=state["name"], s=state, words=status_words, fed=fed,
                        status_code=status_code, **extra)

    @app.get("/studies/{content_hash}", response_class=HTMLResponse)
    def study(request: Request, content_hash: Hash, sent: Annotated[str, Query(max_length=1)] = "") -> Response:
        session, principal = researcher(request)
        return study_page(request, session, principal, content_hash,
                          notice="Sent: each site's custodian approves it by its hash before it runs." if sent else None)

    @app.post("/studies/{content_hash}/close", response_class=HTMLResponse)
    async def close(request: Request, content_hash: Hash) -> Response:
        session = web.signed_in(request)
        await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        services.close_study(principal, content_hash)
        return study_page(request, session, principal, content_hash,
                          notice="Closed: the sites that answered are pooled; the others are excluded.")

    add_federated_pages(app, web, services, study_page)  # POST .../federated (study_federated.py)

    def cohort_names(results: dict[str, Any]) -> dict[int, str]:
        names: dict[int, str] = {}
        for payload in results.get("sites", {}).values():
            for t in payload.get("tables", []):
                if t.get("name") == "cohort_counts" and t.get("status") == "released":
                    c = t["columns"]
                    if "cohort_id" in c and "cohort_name" in c:
                        for row in t["rows"]:
                            names[int(row[c.index("cohort_id")])] = str(row[c.index("cohort_name")])
        return names

    @app.get("/studies/{content_hash}/report", response_class=HTMLResponse)
    def report(request: Request, content_hash: Hash) -> Response:
        session, principal = researcher(request)
        state = services.study_state(principal, content_hash)
        results = services.study_results(principal, content_hash)  # 409 while open
        view = report_view(results, cohort_names(results))
        return web.page(request, "study_report.html", session, title=f"{state['name']}: pooled report", s=state,
                        v=view, words=status_words)

    def download(frame: Any, stem: str, fmt: str) -> Response:
        if fmt == "csv":
            return Response(frame.to_csv(index=False), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{stem}.csv"'})
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        return Response(buf.getvalue(), media_type="application/vnd.apache.parquet",
                        headers={"Content-Disposition": f'attachment; filename="{stem}.parquet"'})

    @app.get("/studies/{content_hash}/results/{site}/{table}.{fmt}")
    def result_file(request: Request, content_hash: Hash, site: SafeName, table: TableName, fmt: Format) -> Response:
        _, principal = researcher(request)
        results = services.study_results(principal, content_hash)
        frame = released_frame(results, site, table)
        if frame is None:
            raise HTTPException(404, detail=f"site {site} released no table {table} for this study")
        services.audit.append("portal.result_downloaded", principal.name, hash=content_hash, site=site, table=table,
                              format=fmt)
        return download(frame, f"{content_hash[:12]}-{site}-{table}", fmt)

    @app.get("/studies/{content_hash}/pooled.{fmt}")
    def pooled_file(request: Request, content_hash: Hash, fmt: Format) -> Response:
        _, principal = researcher(request)
        results = services.study_results(principal, content_hash)
        services.audit.append("portal.result_downloaded", principal.name, hash=content_hash, site=None,
                              table="pooled", format=fmt)
        return download(pooled_frame(results["pooled"]), f"{content_hash[:12]}-pooled", fmt)

