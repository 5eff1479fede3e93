"""The hub's portal pages: sign-in, concepts (search, a concept, the sites' released counts), admin.

    /portal/                        home (signed in)
    /portal/sign-in                 GET the form, POST name + password (lockout after repeated failures)
    /portal/sign-in/oidc            GET: OpenID Connect sign-in, when hub.yaml configures it (oidc.py);
                                    .../callback the provider's answer
    /portal/sign-out                POST (and on to the OIDC provider's sign-out, when it has one)
    /portal/concepts                search: text, domain, vocabulary, standard only     researcher, admin
    /portal/concepts/{id}           a concept; POST .../counts: each site's released persons (and records)
    /portal/concept-sets            concept sets: build, resolve, released counts, ATLAS JSON
                                    (concept_set_pages.py)                               researcher, admin
    /portal/cohorts                 paste/upload/build a definition; POST: checked, YAML, released counts
                                    and attrition per site (cohort_pages.py)            researcher, admin
    /portal/trials                  a trial's feasibility per site: funnel, what-if, breakdowns, projection
                                    (trial_pages.py)                                    researcher, admin
    /portal/studies                 list, compose (YAML and hash), submit, status per site, pooled report,
                                    released results as CSV/Parquet (study_pages.py)    researcher, admin
    /portal/admin/users             users: list, POST add                                admin
    /portal/admin/users/{name}      POST change role/projects/disabled; POST .../password: reset
    /portal/admin/projects          projects: list, POST add or change                   admin
    /portal/admin/tokens            API tokens: list, POST create (shown once); POST .../{name}/revoke

Every permission is the API's: a user acts as `Principal(name, role, projects)` and each page calls the
checks and the `HubServices` methods the API's routes call (`check_role`, `require_project`,
`require_grant`, `concept_counts`, `feasibility`, `trial_feasibility`, `issue_token`, `save_project`), so a portal user may do exactly what
an API token of that role and those projects may. The numbers shown are the nodes' released answers,
as `POST /api/v1/concepts/count` returns them. Every action is in the hub's audit log.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures.

import secrets
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, Response

from mercia.errors import MerciaError
from mercia.federation.auth import ALL_PROJECTS, HUB_ROLES, Principal, require_grant, require_project
from mercia.portal.accounts import AccountError, accounts_for, check_name
from mercia.portal.cohort_pages import add_cohort_pages
from mercia.portal.concept_set_pages import add_concept_set_pages
from mercia.portal.oidc import add_oidc_routes
from mercia.portal.sign_in import add_sign_in_routes
from mercia.portal.study_pages import add_study_pages
from mercia.portal.trial_pages import add_trial_pages
from mercia.portal.web import PortalWeb, one

ANY_ROLE = HUB_ROLES
NAV = [("Home", "/", ANY_ROLE), ("Concepts", "/concepts", ("researcher", "admin")),
       ("Concept sets", "/concept-sets", ("researcher", "admin")), ("Cohorts", "/cohorts", ("researcher", "admin")),
       ("Studies", "/studies", ("researcher", "admin")), ("Trials", "/trials", ("researcher", "admin")),
       ("Users", "/admin/users", ("admin",)), ("Projects", "/admin/projects", ("admin",)),
       ("API tokens", "/admin/tokens", ("admin",))]


def _projects(fields: dict[str, list[str]]) -> list[str]:
    """Projects from the form: checked boxes and/or a comma-separated text field."""
    out = [p for p in fields.get("projects", []) if p]
    out += [p.strip() for p in one(fields, "projects_text").split(",") if p.strip()]
    return sorted(set(out))


def create_portal(services: Any, *, prefix: str = "/portal") -> FastAPI:
    """The hub's portal as an app to mount at `prefix` (mercia.federation.hub.app does)."""
    config = services.config
    accounts = accounts_for(config.state_dir / "hub.sqlite", config.portal)
    web = PortalWeb(accounts, secure_cookie=config.portal.secure_cookie, title="Mercia hub", prefix=prefix, nav=NAV)
    app = web.app()
    app.state.accounts = accounts
    audit = services.audit
    store = services.store

    def my_projects(principal: Principal) -> list[str]:
        return [p["name"] for p in store.projects() if principal.in_project(p["name"])]

    # ---- home, sign-in, sign-out ---------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        session = web.signed_in(request)
        principal = session.user.principal()
        return web.page(request, "home.html", session, title="Home", projects=my_projects(principal))

    # OpenID Connect sign-in (oidc.py), and sign-out at the provider when it offers one
    oidc = add_oidc_routes(app, web, accounts, config.portal.oidc, audit, prefix) if config.portal.oidc else None
    add_sign_in_routes(app, web, accounts, audit, prefix, template="sign_in.html", sign_out_to=oidc,
                       extra=lambda: {"oidc_label": config.portal.oidc.label if config.portal.oidc else None})

    # ---- concepts --------------------------------------------------------------------------------------
    @app.get("/concepts", response_class=HTMLResponse)
    def concepts(request: Request,
                 text: Annotated[str, Query(max_length=200)] = "",
                 domain: Annotated[str, Query(max_length=50)] = "",
                 vocabulary: Annotated[str, Query(max_length=50)] = "",
                 standard: Annotated[str, Query(max_length=5)] = "",
                 added: Annotated[int | None, Query(ge=0, le=2_147_483_647)] = None,
                 to: Annotated[int | None, Query(ge=1, le=2**62)] = None) -> Response:
        session = web.signed_in(request)
        principal = web.with_role(session, "researcher", "admin")
        vocab = services.vocabulary
        facets = vocab.facets() if vocab.configured else {"domain_id": [], "vocabulary_id": []}
        hits: list[dict[str, Any]] | None = None
        message = None
        if text.strip():
            try:
                hits = vocab.search(text, domain=domain, vocabulary=vocabulary, standard=bool(standard), limit=100)
            except MerciaError as e:
                message = str(e)
        elif not vocab.configured:
            message = ("This hub has no vocabulary to search: its operator sets portal: vocabulary: in hub.yaml "
                       "to a DuckDB file or postgresql:// URL holding the OMOP vocabulary tables.")
        sets = editable_sets(principal)  # "Add to a concept set" on each result (concept_set_pages.py)
        return web.page(request, "concepts.html", session, title="Concepts", text=text, domain=domain,
                        vocabulary=vocabulary, standard=standard, facets=facets, hits=hits, message=message,
                        concept_sets=sets, notice=added_notice(sets, added, to), chosen_set=to)

    def added_notice(sets: list[Any], concept_id: int | None, set_id: int | None) -> str | None:
        """The confirmation after "Add to a concept set" from the results, from the set itself."""
        cs = next((s for s in sets if s.id == set_id), None)
        item = next((i for i in cs.items if i.concept_id == concept_id), None) if cs else None
        if cs is None or item is None:
            return None
        name = services.vocabulary.concepts([item.concept_id]).get(item.concept_id, {}).get("concept_name") \
            if services.vocabulary.configured else None
        what = f"{name} ({item.concept_id})" if name else f"concept {item.concept_id}"
        return f"Added {what}{' with its descendants' if item.include_descendants else ''} to concept set {cs.name}."

    def concept_page(request: Request, session: Any, concept_id: int, **extra: Any) -> Response:
        principal = web.with_role(session, "researcher", "admin")
        details = services.vocabulary.details(concept_id)
        return web.page(request, "concept.html", session, title=details["concept"]["concept_name"], d=details,
                        projects=my_projects(principal), concept_sets=editable_sets(principal), **extra)

    ConceptId = Annotated[int, Path(ge=0, le=2_147_483_647)]

    @app.get("/concepts/{concept_id}", response_class=HTMLResponse)
    def concept(request: Request, concept_id: ConceptId) -> Response:
        return concept_page(request, web.signed_in(request), concept_id)

    @app.post("/concepts/{concept_id}/counts", response_class=HTMLResponse)
    async def concept_counts(request: Request, concept_id: ConceptId) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        project = one(fields, "project")
        descendants = one(fields, "descendants") == "1"
        records = one(fields, "records") == "1"
        answer = services.concept_counts(principal, concept_id, descendants, project, records=records)
        return concept_page(request, session, concept_id, counts=answer, project=project)

    # ---- concept sets (concept_set_pages.py), cohorts (cohort_pages.py) ----------------------------------
    editable_sets = add_concept_set_pages(app, web, services, my_projects)
    app.state.saved_cohorts = add_cohort_pages(app, web, services, my_projects)
    # ---- trials (trial_pages.py) ------------------------------------------------------------------------
    app.state.trial_answers = add_trial_pages(app, web, services, my_projects)

    # ---- studies (study_pages.py) -----------------------------------------------------------------------
    add_study_pages(app, web, services, my_projects)

    # ---- admin: users ------------------------------------------------------------------------------------
    def admin(request: Request) -> tuple[Any, Principal]:
        session = web.signed_in(request)
        return session, web.with_role(session, "admin")

    def manages(principal: Principal, projects: tuple[str, ...] | list[str]) -> bool:
        try:
            require_grant(principal, projects)
        except HTTPException:
            return False
        return True

    def users_page(request: Request, session: Any, principal: Principal, *, status_code: int = 200,
                   **extra: Any) -> Response:
        users = [u for u in accounts.users() if manages(principal, u.projects)]
        return web.page(request, "users.html", session, title="Users", users=users, roles=HUB_ROLES,
                        projects=my_projects(principal), all_projects=ALL_PROJECTS in principal.projects,
                        status_code=status_code, **extra)

    @app.get("/admin/users", response_class=HTMLResponse)
    def users(request: Request) -> Response:
        session, principal = admin(request)
        return users_page(request, session, principal)

    @app.post("/admin/users", response_class=HTMLResponse)
    async def user_add(request: Request) -> Response:
        session, principal = admin(request)
        fields = await web.form(request, session)
        name, role, projects = one(fields, "name").strip(), one(fields, "role"), _projects(fields)
        require_grant(principal, projects)
        try:
            accounts.add_user(name, role, projects, one(fields, "password"))
        except AccountError as e:
            return users_page(request, session, principal, status_code=400, message=str(e),
                              form={"name": name, "role": role, "projects": projects})
        audit.append("portal.user_added", principal.name, user=name, role=role, projects=projects)
        return users_page(request, session, principal, notice=f"Added {name} ({role}).")

    def managed_user(principal: Principal, name: str) -> Any:
        user = accounts.user(name)
        if user is None or not manages(principal, user.projects):
            # as for a user who does not exist: a scoped admin learns nothing of other projects' users
            raise HTTPException(404, detail=f"no user named {name!r} in the projects you administer")
        return user

    UserName = Annotated[str, Path(max_length=128)]

    @app.get("/admin/users/{name}", response_class=HTMLResponse)
    def user_page(request: Request, name: UserName) -> Response:
        session, principal = admin(request)
        user = managed_user(principal, name)
        return web.page(request, "user.html", session, title=f"User {user.name}", u=user, roles=HUB_ROLES,
                        projects=sorted(set(my_projects(principal)) | set(user.projects)),
                        all_projects=ALL_PROJECTS in principal.projects)

    @app.post("/admin/users/{name}", response_class=HTMLResponse)
    async def user_change(request: Request, name: UserName) -> Response:
        session, principal = admin(request)
        fields = await web.form(request, session)
        user = managed_user(principal, name)
        role, projects, disabled = one(fields, "role"), _projects(fields), one(fields, "disabled") == "1"
        require_grant(principal, projects)
        if name == principal.name and (disabled or role != user.role or set(projects) != set(user.projects)):
            raise AccountError("you cannot disable your own account or change your own role or projects: "
                               "ask another admin")
        user = accounts.update_user(name, role=role, projects=projects, disabled=disabled)
        audit.append("portal.user_changed", principal.name, user=name, role=role, projects=list(user.projects),
                     disabled=disabled)
        return web.page(request, "user.html", session, title=f"User {user.name}", u=user, roles=HUB_ROLES,
                        projects=sorted(set(my_projects(principal)) | set(user.projects)),
                        all_projects=ALL_PROJECTS in principal.projects, notice="Saved; their sessions ended.")

    @app.post("/admin/users/{name}/password", response_class=HTMLResponse)
    async def user_password(request: Request, name: UserName) -> Response:
        session, principal = admin(request)
        fields = await web.form(request, session)
        user = managed_user(principal, name)
        password = one(fields, "password") or secrets.token_urlsafe(12)
        shown = None if one(fields, "password") else password
        accounts.set_password(name, password)
        audit.append("portal.password_reset", principal.name, user=name)
        return web.page(request, "user.html", session, title=f"User {user.name}", u=user, roles=HUB_ROLES,
                        projects=sorted(set(my_projects(principal)) | set(user.projects)),
                        all_projects=ALL_PROJECTS in principal.projects, new_password=shown,
                        notice="Password reset; their sessions ended and any lockout is cleared.")

    # ---- admin: projects -----------------------------------------------------------------------------------
    def projects_page(request: Request, session: Any, principal: Principal, *, status_code: int = 200,
                      **extra: Any) -> Response:
        projects = [p for p in store.projects() if principal.in_project(p["name"])]
        return web.page(request, "projects.html", session, title="Projects", projects_list=projects,
                        nodes=[n.name for n in store.nodes()], status_code=status_code, **extra)

    @app.get("/admin/projects", response_class=HTMLResponse)
    def projects(request: Request) -> Response:
        session, principal = admin(request)
        return projects_page(request, session, principal)

    @app.post("/admin/projects", response_class=HTMLResponse)
    async def project_save(request: Request) -> Response:
        session, principal = admin(request)
        fields = await web.form(request, session)
        name, sites = one(fields, "name").strip(), sorted({s for s in fields.get("sites", []) if s})
        require_project(principal, name)
        try:
            check_name(name)
            if not sites:
                raise AccountError("sites: choose at least one site for the project")
            services.save_project(principal, name, sites)
        except MerciaError as e:
            return projects_page(request, session, principal, status_code=400, message=str(e))
        return projects_page(request, session, principal, notice=f"Saved project {name}: {', '.join(sites)}.")

    # ---- admin: API tokens -----------------------------------------------------------------------------------
    def tokens_page(request: Request, session: Any, principal: Principal, *, status_code: int = 200,
                    **extra: Any) -> Response:
        held = [p for p in services.tokens.principals() if p.role in HUB_ROLES and manages(principal, p.projects)]
        return web.page(request, "tokens.html", session, title="API tokens", tokens=held, roles=HUB_ROLES,
                        projects=my_projects(principal), all_projects=ALL_PROJECTS in principal.projects,
                        status_code=status_code, **extra)

    @app.get("/admin/tokens", response_class=HTMLResponse)
    def tokens(request: Request) -> Response:
        session, principal = admin(request)
        return tokens_page(request, session, principal)

    @app.post("/admin/tokens", response_class=HTMLResponse)
    async def token_create(request: Request) -> Response:
        session, principal = admin(request)
        fields = await web.form(request, session)
        name, role, projects = one(fields, "name").strip(), one(fields, "role"), _projects(fields)
        try:
            token = services.issue_token(principal, name, role, projects)
        except MerciaError as e:
            return tokens_page(request, session, principal, status_code=400, message=str(e))
        return tokens_page(request, session, principal, new_token={"name": name, "token": token})

    @app.post("/admin/tokens/{name}/revoke", response_class=HTMLResponse)
    async def token_revoke(request: Request, name: UserName) -> Response:
        session, principal = admin(request)
        await web.form(request, session)
        services.revoke_token(principal, name)
        return tokens_page(request, session, principal, notice=f"Revoked the token of {name}.")

    return app

