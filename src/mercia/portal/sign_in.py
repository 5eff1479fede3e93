"""Password sign-in and sign-out, the same at the hub's portal and a node's custodian portal.

    add_sign_in_routes(app, web, accounts, audit, prefix, template="sign_in.html", extra=lambda: {...})

GET/POST {prefix}/sign-in and POST {prefix}/sign-out. Failures count per name and per client address
(accounts.py's lockout and spraying limit); every outcome is in the service's audit log under the
`portal.*` events; after sign-in the browser goes back only to a page of this portal.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures.

import secrets
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mercia.portal.accounts import NAME, Accounts, LockedOut, SignInRefused
from mercia.portal.web import SESSION_COOKIE, PortalWeb, one


def safe_next(value: str, prefix: str) -> str:
    """Only a path of this portal (no other host, no scheme): an open redirect otherwise."""
    if value.startswith(prefix + "/") and not value.startswith("//") and "\\" not in value and "\n" not in value:
        return value
    return prefix + "/"


def add_sign_in_routes(app: FastAPI, web: PortalWeb, accounts: Accounts, audit: Any, prefix: str, *,
                       template: str, extra: Callable[[], dict[str, Any]] = dict,
                       sign_out_to: Callable[[str], str | None] | None = None) -> None:
    """The sign-in page (`template`, given `extra()`'s names too), its form and sign-out. `sign_out_to`
    (oidc.py): given the ending session's id, where the browser goes next (the provider's sign-out) or None."""

    def sign_in_page(request: Request, *, message: str | None = None, name: str = "", nxt: str = "",
                     status_code: int = 200, notice: str | None = None) -> Response:
        token = secrets.token_urlsafe(32)
        response = web.page(request, template, None, title="Sign in", message=message, name=name,
                            next=nxt, sign_in_csrf=token, status_code=status_code, notice=notice,
                            lockout=(accounts.max_failures, round(accounts.lockout_seconds / 60)), **extra())
        web.set_sign_in_token(response, token)
        return response

    @app.get("/sign-in", response_class=HTMLResponse)
    def sign_in_get(request: Request, next: Annotated[str, Query(max_length=500)] = "",
                    ended: Annotated[str, Query(max_length=1)] = "") -> Response:
        if web.session_of(request) is not None:
            return RedirectResponse(safe_next(next, prefix), status_code=303)
        return sign_in_page(request, nxt=next, notice="Your session has ended: sign in again." if ended else None)

    @app.post("/sign-in", response_class=HTMLResponse)
    async def sign_in_post(request: Request) -> Response:
        fields = await web.sign_in_form(request)
        name, password, nxt = one(fields, "name").strip(), one(fields, "password"), one(fields, "next")
        who = name if NAME.match(name) else "-"  # the audit log names no text that could not be a user
        client = request.client.host if request.client else None
        try:
            session_id, session = accounts.sign_in(name, password, client)
        except LockedOut as e:
            audit.append("portal.sign_in_locked", who, client=client)
            return sign_in_page(request, message=str(e), name=name, nxt=nxt, status_code=429)
        except SignInRefused as e:
            audit.append("portal.sign_in_failed", who, client=client,
                         locked=accounts.locked_for(name) > 0 if name else False)
            return sign_in_page(request, message=str(e), name=name, nxt=nxt, status_code=401)
        audit.append("portal.signed_in", name, role=session.user.role)
        response = RedirectResponse(safe_next(nxt, prefix), status_code=303)
        web.set_session_cookie(response, session_id, int(accounts.session_seconds))
        return response

    @app.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        session = web.signed_in(request)
        await web.form(request, session)
        session_id = request.cookies.get(SESSION_COOKIE, "")
        accounts.end_session(session_id)
        provider = sign_out_to(session_id) if sign_out_to is not None else None
        audit.append("portal.signed_out", session.user.name, **({"at_provider": True} if provider else {}))
        response = RedirectResponse(provider or f"{prefix}/sign-in", status_code=303)
        web.clear_session_cookie(response)
        return response
