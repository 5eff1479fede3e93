"""The hub portal's concept sets: build them as in ATLAS, see what they resolve to, ask the sites.

    /portal/concept-sets                 GET the project's sets; POST a new one (name, project)
    /portal/concept-sets/{id}            GET the set: items with their flags, a search to add concepts,
                                         the resolved concepts; ?text= searches the vocabulary
    /portal/concept-sets/{id}/items      POST add a concept (from the search on the set's page)
    /portal/concept-sets/add             POST add a concept to the set chosen on a concept's page or on
                                         the concept search's results (then back to the search)
    /portal/concept-sets/import          POST ATLAS concept-set JSON (a file or pasted): new set(s)
    /portal/concept-sets/{id}/save       POST the name and every item's flags (exclude, descendants,
                                         mapped) and removals
    /portal/concept-sets/{id}/counts     POST each site's released persons with a record of the set
    /portal/concept-sets/{id}/concept-counts  POST each item's released persons per site
    /portal/concept-sets/{id}/delete     POST
    /portal/concept-sets/{id}/atlas.json GET the expression as ATLAS exports it

Who: researchers and admins, in the set's project (a set of another project is "not found"); its
author and the project's admins change it. Resolution is Circe's (mercia.vocab.concept_sets) on the
hub's vocabulary. Counts: `HubServices.concept_counts` (the API's POST /concepts/count) takes one
concept, so a set is asked as a cohort, "the first record of the set in any domain", through
`HubServices.feasibility` (the API's POST /feasibility): sites checked against the project, the
count-query guard, each node's released answer charged to the researcher's budget there, audited.
The persons of a set are not the sum of its concepts' persons (people have several), so no number is
added up from per-concept counts. "Use in a cohort" sends that same definition to the cohorts page.
Per concept: each item (not excluded; its own "include descendants" flag) is asked through
`HubServices.concept_counts` (the API's POST /concepts/count), exactly as the concept page asks it: the
same guard, budget charge at each node and audit, one question per item, at most MAX_COUNTED_ITEMS;
with "Records too" (`records`), each site's released records too, capped per person at the node.
Import: ATLAS JSON (concept_sets.parse_atlas), every concept id checked against the hub's vocabulary
before anything is saved; all the sets of one file are saved in one transaction, or none.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures.

import json
from pathlib import PurePath
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from mercia.cohorts.loader import definition_from_text
from mercia.errors import MerciaError
from mercia.federation.auth import Principal, RateLimitedError, require_project
from mercia.portal.concept_sets import (
    MAX_NAME,
    ConceptSetError,
    ConceptSetNotFound,
    ConceptSetStore,
    ImportedSet,
    Item,
    PortalConceptSet,
    atlas_expression,
    check_concept_id,
    check_set_name,
    parse_atlas,
    record_cohort,
)
from mercia.portal.web import FILE_SUFFIX, PortalWeb, one, upload_or_text

SetId = Annotated[int, Path(ge=1, le=2**62)]
MAX_COUNTED_ITEMS = 25  # per-concept counts: one question per item, each charged at every site
SEARCH_FIELDS = ("text", "domain", "vocabulary", "standard")  # the concept search a result was added from


def _flag(fields: dict[str, list[str]], name: str) -> bool:
    return one(fields, name) == "1"


def add_concept_set_pages(app: FastAPI, web: PortalWeb, services: Any, my_projects: Any) -> Any:
    """The concept-set routes on the hub portal's app; returns `editable(principal)` for the concept page."""
    store = ConceptSetStore(services.config.state_dir / "hub.sqlite")
    audit = services.audit

    def visible(principal: Principal, set_id: int) -> PortalConceptSet:
        try:
            cs = store.get(set_id)
        except ConceptSetNotFound:
            cs = None
        if cs is None or not principal.in_project(cs.project):
            raise ConceptSetNotFound(f"no concept set {set_id} in your projects")
        return cs

    def may_change(principal: Principal, cs: PortalConceptSet) -> bool:
        return cs.owner == principal.name or principal.role == "admin"

    def changeable(principal: Principal, set_id: int) -> PortalConceptSet:
        cs = visible(principal, set_id)
        if not may_change(principal, cs):
            raise HTTPException(403, detail=f"concept set {cs.name!r} is {cs.owner}'s: only its author or an admin "
                                            f"of project {cs.project} changes it")
        return cs

    def editable(principal: Principal) -> list[PortalConceptSet]:
        return [cs for cs in store.in_projects(my_projects(principal)) if may_change(principal, cs)]

    def list_page(request: Request, session: Any, *, status_code: int = 200, **extra: Any) -> Response:
        principal = web.with_role(session, "researcher", "admin")
        projects = my_projects(principal)
        return web.page(request, "concept_sets.html", session, title="Concept sets", sets=store.in_projects(projects),
                        projects=projects, status_code=status_code, **extra)

    def set_page(request: Request, session: Any, cs: PortalConceptSet, *, status_code: int = 200,
                 text: str = "", **extra: Any) -> Response:
        principal = web.with_role(session, "researcher", "admin")
        vocab = services.vocabulary
        concepts = vocab.concepts([i.concept_id for i in cs.items]) if vocab.configured else {}
        resolved, total = vocab.resolve(cs.item_dicts()) if vocab.configured and cs.items else ([], 0)
        hits = None
        if text.strip() and vocab.configured:
            try:
                hits = vocab.search(text, limit=25)
            except MerciaError as e:
                extra.setdefault("message", str(e))
        definition = json.dumps(record_cohort(cs), indent=1)
        return web.page(request, "concept_set.html", session, title=f"Concept set: {cs.name}", cs=cs,
                        concepts=concepts, resolved=resolved, resolved_total=total, hits=hits, text=text,
                        can_change=may_change(principal, cs), definition=definition, max_counted=MAX_COUNTED_ITEMS,
                        status_code=status_code,
                        **extra)

    @app.get("/concept-sets", response_class=HTMLResponse)
    def concept_sets(request: Request) -> Response:
        return list_page(request, web.signed_in(request))

    @app.post("/concept-sets", response_class=HTMLResponse)
    async def concept_set_create(request: Request) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        project, name = one(fields, "project"), one(fields, "name")
        require_project(principal, project)  # 403 naming the project, as the API does
        try:
            cs = store.create(project, principal.name, check_set_name(name))
        except ConceptSetError as e:
            return list_page(request, session, status_code=400, message=str(e), name=name)
        audit.append("portal.concept_set_created", principal.name, concept_set=cs.id, project=project)
        return RedirectResponse(f"{web.prefix}/concept-sets/{cs.id}", status_code=303)

    @app.get("/concept-sets/{set_id}", response_class=HTMLResponse)
    def concept_set(request: Request, set_id: SetId, text: Annotated[str, Query(max_length=200)] = "") -> Response:
        session = web.signed_in(request)
        principal = web.with_role(session, "researcher", "admin")
        return set_page(request, session, visible(principal, set_id), text=text)

    @app.get("/concept-sets/{set_id}/atlas.json")
    def concept_set_atlas(request: Request, set_id: SetId) -> Response:
        session = web.signed_in(request)
        principal = web.with_role(session, "researcher", "admin")
        cs = visible(principal, set_id)
        body = atlas_expression(cs, services.vocabulary.concepts([i.concept_id for i in cs.items])
                                if services.vocabulary.configured else {})
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in cs.name)[:80] or "concept-set"
        return JSONResponse(body, headers={"Content-Disposition": f'attachment; filename="{safe}.json"'})

    async def add_item(request: Request, set_id: int | None) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        if set_id is None:  # from a concept's page: the set is a field
            raw = one(fields, "set")
            if not raw.isdigit() or not 0 < int(raw) <= 2**62:
                raise ConceptSetError(f"set: {raw[:20]!r} is not a concept set id (choose one of your sets)")
            set_id = int(raw)
        cs = changeable(principal, set_id)
        try:
            concept_id = check_concept_id(one(fields, "concept_id"))
            if services.vocabulary.configured and concept_id not in services.vocabulary.concepts([concept_id]):
                raise ConceptSetError(f"concept_id: {concept_id} is not in the hub's vocabulary")
            item = Item(concept_id, is_excluded=_flag(fields, "excluded"),
                        include_descendants=_flag(fields, "descendants"), include_mapped=_flag(fields, "mapped"))
            cs = store.save(cs.id, name=cs.name, items=[i for i in cs.items if i.concept_id != concept_id] + [item])
        except ConceptSetError as e:
            return set_page(request, session, cs, status_code=400, message=str(e))
        audit.append("portal.concept_set_changed", principal.name, concept_set=cs.id, added=concept_id)
        if one(fields, "from") == "search":  # back to the search results, which say what was added where
            query = {k: one(fields, f"search_{k}")[:200] for k in SEARCH_FIELDS if one(fields, f"search_{k}")}
            query.update({"added": str(concept_id), "to": str(cs.id)})
            return RedirectResponse(f"{web.prefix}/concepts?{urlencode(query)}", status_code=303)
        return RedirectResponse(f"{web.prefix}/concept-sets/{cs.id}", status_code=303)

    def known_in_vocabulary(sets: list[ImportedSet]) -> None:
        """Every imported concept id is in the hub's vocabulary, or a ConceptSetError naming the first item
        that is not (and how many more)."""
        vocab = services.vocabulary
        if not vocab.configured:
            return
        known = vocab.concepts([i.concept_id for s in sets for i in s.items])
        missing = [(s, k, i) for s in sets for k, i in enumerate(s.items) if i.concept_id not in known]
        if missing:
            s, k, i = missing[0]
            more = f" (and {len(missing) - 1} more item{'' if len(missing) == 2 else 's'} like it)" \
                if len(missing) > 1 else ""
            where = f"{s.where}: " if s.where else ""
            raise ConceptSetError(f"{where}items[{k}]: concept {i.concept_id} is not in the hub's vocabulary{more}; "
                                  "nothing was imported")

    @app.post("/concept-sets/import", response_class=HTMLResponse)
    async def concept_set_import(request: Request) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        project, name = one(fields, "project"), one(fields, "name").strip()
        require_project(principal, project)  # 403 naming the project, as the API does
        text = upload_or_text(fields, "atlas_file", "atlas_text")
        file_name = one(fields, "atlas_file" + FILE_SUFFIX)
        try:
            if not text.strip():
                raise ConceptSetError("atlas_file: choose an ATLAS concept-set JSON file, or paste its text in "
                                      "atlas_text")
            sets = parse_atlas(text)
            known_in_vocabulary(sets)
            fallback = PurePath(file_name).stem[:MAX_NAME] if file_name else "Imported concept set"
            sets = [ImportedSet((name if name and len(sets) == 1 else s.name) or fallback, s.items, s.where)
                    for s in sets]
            created = store.create_many(project, principal.name, sets)
        except ConceptSetError as e:
            return list_page(request, session, status_code=400, message=str(e), atlas_text=one(fields, "atlas_text"),
                             import_name=name, import_project=project)
        for cs in created:
            audit.append("portal.concept_set_imported", principal.name, concept_set=cs.id, project=project,
                         items=len(cs.items))
        if len(created) == 1:
            return RedirectResponse(f"{web.prefix}/concept-sets/{created[0].id}", status_code=303)
        return list_page(request, session, notice=f"Imported {len(created)} concept sets: "
                                                  + "; ".join(cs.name for cs in created) + ".")

    @app.post("/concept-sets/add", response_class=HTMLResponse)
    async def concept_set_add_from_concept(request: Request) -> Response:
        return await add_item(request, None)

    @app.post("/concept-sets/{set_id}/items", response_class=HTMLResponse)
    async def concept_set_add(request: Request, set_id: SetId) -> Response:
        return await add_item(request, set_id)

    @app.post("/concept-sets/{set_id}/save", response_class=HTMLResponse)
    async def concept_set_save(request: Request, set_id: SetId) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        cs = changeable(principal, set_id)
        items = [Item(i.concept_id, is_excluded=_flag(fields, f"excluded_{i.concept_id}"),
                      include_descendants=_flag(fields, f"descendants_{i.concept_id}"),
                      include_mapped=_flag(fields, f"mapped_{i.concept_id}"))
                 for i in cs.items if not _flag(fields, f"remove_{i.concept_id}")]
        try:
            cs = store.save(cs.id, name=one(fields, "name"), items=items)
        except ConceptSetError as e:
            return set_page(request, session, cs, status_code=400, message=str(e))
        audit.append("portal.concept_set_changed", principal.name, concept_set=cs.id, items=len(cs.items))
        return set_page(request, session, cs, notice="Saved.")

    @app.post("/concept-sets/{set_id}/delete", response_class=HTMLResponse)
    async def concept_set_delete(request: Request, set_id: SetId) -> Response:
        session = web.signed_in(request)
        await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        cs = changeable(principal, set_id)
        store.delete(cs.id)
        audit.append("portal.concept_set_deleted", principal.name, concept_set=cs.id, project=cs.project)
        return list_page(request, session, notice=f"Deleted concept set {cs.name}.")

    @app.post("/concept-sets/{set_id}/counts", response_class=HTMLResponse)
    async def concept_set_counts(request: Request, set_id: SetId) -> Response:
        session = web.signed_in(request)
        await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        cs = visible(principal, set_id)
        if not [i for i in cs.items if not i.is_excluded]:
            return set_page(request, session, cs, status_code=400,
                            message="items: add at least one concept that is not excluded before asking the sites")
        definition = definition_from_text(json.dumps(record_cohort(cs)), "json", name=cs.name)
        answer = services.feasibility(principal, definition.to_dict(), cs.project)
        return set_page(request, session, cs, counts=answer)

    @app.post("/concept-sets/{set_id}/concept-counts", response_class=HTMLResponse)
    async def concept_set_concept_counts(request: Request, set_id: SetId) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        records = one(fields, "records") == "1"
        principal = web.with_role(session, "researcher", "admin")
        cs = visible(principal, set_id)
        asked = [i for i in cs.items if not i.is_excluded]
        if not asked:
            return set_page(request, session, cs, status_code=400,
                            message="items: add at least one concept that is not excluded before asking the sites")
        rows: list[dict[str, Any]] = []
        stopped = ""
        for item in cs.items:
            row: dict[str, Any] = {"item": item}
            if item.is_excluded:
                row["skipped"] = "excluded from the set: not asked"
            elif stopped:
                row["skipped"] = stopped
            elif len([r for r in rows if "answer" in r or "error" in r]) >= MAX_COUNTED_ITEMS:
                row["skipped"] = f"not asked: at most {MAX_COUNTED_ITEMS} concepts are asked at once"
            else:
                try:  # the concept page's and the API's question: same guard, budget charge, audit
                    row["answer"] = services.concept_counts(principal, item.concept_id, item.include_descendants,
                                                            cs.project, records=records)
                except RateLimitedError as e:
                    row["error"] = str(e)
                    stopped = "not asked: " + str(e)
                except (MerciaError, HTTPException) as e:
                    row["error"] = str(e.detail) if isinstance(e, HTTPException) else str(e)
            rows.append(row)
        sites = sorted({a["site"] for r in rows for a in r.get("answer", {}).get("sites", [])})
        for r in rows:
            r["by_site"] = {a["site"]: a for a in r.get("answer", {}).get("sites", [])}
        caps = sorted({a["records_per_person_counted"] for r in rows for a in r.get("answer", {}).get("sites", [])
                       if a.get("records_per_person_counted")})
        return set_page(request, session, cs, concept_counts={"rows": rows, "sites": sites, "records": records,
                                                              "caps": caps})

    return editable
