"""The hub portal's cohorts page: paste, upload or build a definition, see it checked, its YAML, and the
sites' released counts with the attrition by inclusion rule.

    /portal/cohorts         GET the page; POST a pasted/uploaded definition (action=check or count)
    /portal/cohorts/build   POST the criteria builder's form (action=check or count)
    /portal/cohorts/save    POST a checked definition, saved by name in a project (saved_cohorts.py)
    /portal/cohorts/saved   GET ?project=P&name=N: a saved cohort reopened (checked, its YAML, to count)
    /portal/cohorts/saved/delete   POST project, name: deleted, by the user who saved it or an admin

A file is uploaded with the form itself (multipart, read by web.py), so uploading needs no script.

The counts are `HubServices.feasibility`, the code path of the API's POST /api/v1/feasibility: the
sites checked against the project, the count-query guard, each node asked for the signed-in researcher
(charged to their privacy budget there), the question audited. Every number shown is a node's
released answer, or the hub's sum of those. A definition that cannot be read is the page again with
status 400 and the reader's message naming the field.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures.

import json
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from mercia.cohorts.model import CohortDefinition
from mercia.errors import CohortDefinitionError, MerciaError
from mercia.federation.auth import Principal, require_project
from mercia.portal.cohort_forms import (
    CRITERIA_ROWS,
    DOMAINS,
    MAX_TEXT,
    build_from_form,
    read_pasted,
    yaml_view,
)
from mercia.portal.saved_cohorts import SavedCohort, SavedCohorts, check_cohort_name
from mercia.portal.web import PortalWeb, one, upload_or_text


def attrition_table(answer: dict[str, Any]) -> dict[str, Any]:
    """The sites' released attrition side by side: steps (in the first answering site's order) by site;
    None where a site suppressed a step or did not answer."""
    sites = [a["site"] for a in answer["sites"]]
    per_site: dict[str, dict[str, Any]] = {}
    steps: list[str] = []
    for a in answer["sites"]:
        table = a.get("attrition") or {}
        columns = table.get("columns") or []
        if "step" not in columns or "persons" not in columns:
            continue
        i, j = columns.index("step"), columns.index("persons")
        per_site[a["site"]] = {row[i]: row[j] for row in table.get("rows") or []}
        steps += [row[i] for row in table.get("rows") or [] if row[i] not in steps]
    return {"sites": sites, "rows": [(s, [per_site.get(site, {}).get(s) for site in sites]) for s in steps]}


def add_cohort_pages(app: FastAPI, web: PortalWeb, services: Any, my_projects: Any) -> SavedCohorts:
    """The cohorts routes on the hub portal's app; returns the store of saved cohorts."""
    saved = SavedCohorts(services.config.state_dir / "hub.sqlite")

    def page(request: Request, session: Any, *, status_code: int = 200, **extra: Any) -> Response:
        principal = web.with_role(session, "researcher", "admin")
        projects = my_projects(principal)
        return web.page(request, "cohorts.html", session, title="Cohorts", projects=projects,
                        domains=list(DOMAINS), rows=range(1, CRITERIA_ROWS + 1), max_text=MAX_TEXT,
                        saved=[c for p in projects for c in saved.list(p)], status_code=status_code, **extra)

    def answer(request: Request, session: Any, fields: dict[str, list[str]], definition: CohortDefinition,
               **extra: Any) -> Response:
        principal = web.with_role(session, "researcher", "admin")
        project = one(fields, "project")
        text, not_yaml = yaml_view(definition)
        counts = None
        if one(fields, "action") == "count":
            counts = services.feasibility(principal, definition.to_dict(), project)
        return page(request, session, definition=definition, yaml_text=text, not_yaml=not_yaml, counts=counts,
                    attrition=attrition_table(counts) if counts else None, project=project,
                    rules=[r.name for r in definition.expression.inclusion_rules], **extra)

    @app.get("/cohorts", response_class=HTMLResponse)
    def cohorts(request: Request) -> Response:
        return page(request, web.signed_in(request))

    @app.post("/cohorts", response_class=HTMLResponse)
    async def cohorts_post(request: Request) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        web.with_role(session, "researcher", "admin")
        text = upload_or_text(fields, "definition_file", "definition")
        try:
            definition, form = read_pasted(text)
        except CohortDefinitionError as e:
            return page(request, session, status_code=400, message=f"The definition cannot be read: {e}",
                        text=text, project=one(fields, "project"))
        return answer(request, session, fields, definition, text=text, form=form)

    @app.post("/cohorts/build", response_class=HTMLResponse)
    async def cohorts_build(request: Request) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        web.with_role(session, "researcher", "admin")
        b = {k: v[0] for k, v in fields.items() if k != "csrf" and v}
        try:
            definition = build_from_form(fields)
        except CohortDefinitionError as e:
            return page(request, session, status_code=400, message=f"The cohort cannot be built: {e}", b=b,
                        project=one(fields, "project"))
        text, _ = yaml_view(definition)
        return answer(request, session, fields, definition, b=b, text=text or "", built=True)

    @app.post("/cohorts/save", response_class=HTMLResponse)
    async def cohorts_save(request: Request) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        project, name, text = one(fields, "project"), one(fields, "save_name").strip(), one(fields, "definition")
        require_project(principal, project)  # as the API checks a project: 403 outside one's own
        try:
            check_cohort_name(name)
            definition, form = read_pasted(text)
        except MerciaError as e:
            return page(request, session, status_code=400, message=f"The cohort cannot be saved: {e}", text=text,
                        project=project)
        saved.save(project, name, definition, saved_by=principal.name)
        services.audit.append("portal.cohort_saved", principal.name, project=project, name=name)
        return answer(request, session, {"project": [project]}, definition, text=text, form=form,
                      notice=f"Saved as {name} in project {project}.")

    @app.get("/cohorts/saved", response_class=HTMLResponse)
    def cohorts_saved(request: Request, project: Annotated[str, Query(max_length=128)],
                      name: Annotated[str, Query(max_length=128)]) -> Response:
        session = web.signed_in(request)
        principal = web.with_role(session, "researcher", "admin")
        require_project(principal, project)
        definition = saved.get(project, name)
        entry = saved.entry(project, name)
        text, _ = yaml_view(definition)
        return answer(request, session, {"project": [project]}, definition,
                      text=text or json.dumps(definition.to_dict(), indent=2), saved_name=name,
                      saved_entry=entry if may_delete(principal, entry) else None,
                      notice=f"Reopened {name} from project {project}.")

    def may_delete(principal: Principal, entry: SavedCohort) -> bool:
        """Its owner, or an admin of its project (the caller's project is checked before)."""
        return principal.name == entry.saved_by or principal.role == "admin"

    @app.post("/cohorts/saved/delete", response_class=HTMLResponse)
    async def cohorts_saved_delete(request: Request) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        project, name = one(fields, "project"), one(fields, "name")
        require_project(principal, project)  # 403 outside one's own projects, as for saving
        entry = saved.entry(project, name)  # 404 if there is none
        if not may_delete(principal, entry):
            raise HTTPException(403, detail=f"only the user who saved {name} ({entry.saved_by}) or an admin may "
                                            f"delete it; {principal.name} is a {principal.role}")
        saved.delete(project, name)
        services.audit.append("portal.cohort_deleted", principal.name, project=project, name=name,
                              saved_by=entry.saved_by)
        return page(request, session, project=project, notice=f"Deleted the saved cohort {name} from project {project}.")

    return saved
