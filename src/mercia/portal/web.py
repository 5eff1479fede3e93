"""What every portal page shares, at the hub or (later) at a node: templates, sessions, CSRF, errors.

    portal = PortalWeb(accounts, secure_cookie=True, title="Mercia hub")
    app = portal.app()                        # a FastAPI app to mount at /portal, with its static files
    session = portal.signed_in(request)       # or a redirect to the sign-in page
    principal = portal.with_role(session, "researcher", "admin")   # or the 403 page
    form = await portal.form(request, session)                     # a POST's fields, CSRF-checked (or 403)
    return portal.page(request, "concepts.html", session, title="Concepts", ...)

Pages are rendered on the server (Jinja2, autoescaped); styles and the one small script are files of
this package served under /portal/static: nothing comes from another origin, and the Content Security
Policy says so. Forms are URL-encoded, or multipart when they carry a file (a cohort or trial uploaded
without JavaScript): both read here, at most MAX_FORM_BYTES, with files as UTF-8 text.

The session cookie is HttpOnly, SameSite=Lax and (unless configured off) Secure, and holds only the
random session id. CSRF: a signed-in form carries its session's token (bound to the session in the
store); the sign-in form, before there is a session, a random token that must equal the one in a
second cookie (double submit). A POST without the right token is the 403 page, before anything runs.
"""

from __future__ import annotations

import hmac
import time
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from mercia.errors import MerciaError
from mercia.federation.auth import Principal, check_role
from mercia.portal.accounts import Accounts, Session

HERE = Path(__file__).parent
MAX_FORM_BYTES = 2_000_000  # a form with an uploaded file: a large ATLAS export is ~100 kB
MAX_FORM_FIELDS = 200
FILE_SUFFIX = ".filename"  # a file field's name in the fields read: its text under the name, its name here
SESSION_COOKIE = "mercia_session"
SIGNIN_CSRF_COOKIE = "mercia_signin_csrf"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class NeedSignIn(Exception):
    """No live session: the handler sends the browser to the sign-in page (and back afterwards)."""


class PortalWeb:
    def __init__(self, accounts: Accounts, *, secure_cookie: bool = True, title: str = "Mercia",
                 prefix: str = "/portal", nav: list[tuple[str, str, tuple[str, ...]]] | None = None) -> None:
        self.accounts = accounts
        self.secure_cookie = secure_cookie
        self.title = title
        self.prefix = prefix
        # (label, path under prefix, roles that see it)
        self.nav = nav or []
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)

    # ---- the app -------------------------------------------------------------------------------------
    def app(self) -> FastAPI:
        app = FastAPI(title=self.title + " portal", docs_url=None, redoc_url=None, openapi_url=None)
        app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

        @app.middleware("http")
        async def _headers(request: Request, call_next: Any) -> Any:
            started = time.perf_counter()
            response = await call_next(request)
            # The time this server took (handler and rendering; a streamed body's sending not included),
            # as browsers' developer tools show it: bench/bench_portal.py reads it.
            response.headers["Server-Timing"] = f"app;dur={1000 * (time.perf_counter() - started):.1f}"
            for k, v in SECURITY_HEADERS.items():
                if k == "Cache-Control" and request.url.path.startswith(f"{self.prefix}/static/"):
                    continue
                response.headers.setdefault(k, v)
            return response

        @app.exception_handler(NeedSignIn)
        async def _sign_in(request: Request, e: NeedSignIn) -> Response:
            path = request.url.path
            target = path + (f"?{request.url.query}" if request.url.query else "")
            query = [] if request.method != "GET" or path == f"{self.prefix}/" else [f"next={quote(target, safe='')}"]
            ended = bool(request.cookies.get(SESSION_COOKIE))  # a session that was there has ended
            if ended:
                query.append("ended=1")
            response = RedirectResponse(f"{self.prefix}/sign-in" + ("?" + "&".join(query) if query else ""),
                                        status_code=303)
            if ended:
                self.clear_session_cookie(response)
            return response

        @app.exception_handler(HTTPException)
        async def _http_error(request: Request, e: HTTPException) -> Response:
            return self.error(request, e.status_code, str(e.detail))

        @app.exception_handler(MerciaError)
        async def _user_error(request: Request, e: MerciaError) -> Response:
            return self.error(request, getattr(e, "status_code", 400), str(e))

        @app.exception_handler(RequestValidationError)
        async def _invalid(request: Request, e: RequestValidationError) -> Response:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'][1:]))}: {err['msg']}" for err in e.errors()[:5])
            return self.error(request, 422, f"invalid request: {problems}")

        return app

    # ---- rendering -----------------------------------------------------------------------------------
    def page(self, request: Request, template: str, session: Session | None, *, status_code: int = 200,
             **context: Any) -> HTMLResponse:
        principal = session.user.principal() if session else None
        nav = [(label, f"{self.prefix}{path}") for label, path, roles in self.nav
               if principal is not None and principal.role in roles]
        html = self.env.get_template(template).render(
            request=request, session=session, user=session.user if session else None, csrf=session.csrf if session
            else None, prefix=self.prefix, site_title=self.title, nav=nav, current=request.url.path, **context)
        return HTMLResponse(html, status_code=status_code)

    def error(self, request: Request, status_code: int, message: str) -> HTMLResponse:
        titles = {400: "That did not work", 401: "Sign-in refused", 403: "Not allowed", 404: "Not found",
                  409: "Not yet", 413: "Too large", 422: "Check the form", 429: "Too many attempts"}
        session = self.session_of(request)
        return self.page(request, "error.html", session, status_code=status_code,
                         title=titles.get(status_code, "Something went wrong"), message=message, code=status_code)

    # ---- sessions --------------------------------------------------------------------------------------
    def session_of(self, request: Request) -> Session | None:
        return self.accounts.session(request.cookies.get(SESSION_COOKIE))

    def signed_in(self, request: Request) -> Session:
        session = self.session_of(request)
        if session is None:
            raise NeedSignIn()
        return session

    @staticmethod
    def with_role(session: Session, *roles: str) -> Principal:
        """The session's principal if its role is one of `roles` (the API's check), else the 403 page."""
        return check_role(session.user.principal(), *roles)

    def set_session_cookie(self, response: Response, session_id: str, max_age: int) -> None:
        response.set_cookie(SESSION_COOKIE, session_id, max_age=max_age, path="/", httponly=True,
                            secure=self.secure_cookie, samesite="lax")

    def clear_session_cookie(self, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, secure=self.secure_cookie, samesite="lax")

    # ---- forms and CSRF ----------------------------------------------------------------------------------
    @staticmethod
    async def _fields(request: Request) -> dict[str, list[str]]:
        content_type = request.headers.get("content-type", "")
        kind = content_type.split(";")[0].strip().lower()
        if kind not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            return {}  # not one of the portal's forms: it has no token, so the caller's check refuses it
        too_large = HTTPException(413, detail=f"the form is larger than {MAX_FORM_BYTES // 1_000_000} MB: "
                                              "send a smaller file")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise too_large
        if kind == "multipart/form-data":
            return read_multipart(content_type, bytes(body))
        try:
            return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except (UnicodeDecodeError, ValueError):
            raise HTTPException(400, detail="the form could not be read") from None

    async def form(self, request: Request, session: Session) -> dict[str, list[str]]:
        """A signed-in POST's fields, after checking its CSRF token against the session's (403 if not)."""
        fields = await self._fields(request)
        sent = (fields.get("csrf") or [""])[0]
        if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise HTTPException(403, detail="the form's security token is missing or wrong: reload the page "
                                            "and send the form again")
        return fields

    def set_sign_in_token(self, response: Response, token: str) -> None:
        """The sign-in form's double-submit token, also in a cookie of its own."""
        response.set_cookie(SIGNIN_CSRF_COOKIE, token, max_age=3600, path=f"{self.prefix}/sign-in", httponly=True,
                            secure=self.secure_cookie, samesite="strict")

    async def sign_in_form(self, request: Request) -> dict[str, list[str]]:
        """The sign-in POST's fields, with its token equal to the sign-in cookie's (403 if not)."""
        fields = await self._fields(request)
        sent = (fields.get("csrf") or [""])[0]
        held = request.cookies.get(SIGNIN_CSRF_COOKIE, "")
        if not sent or not held or not hmac.compare_digest(sent.encode(), held.encode()):
            raise HTTPException(403, detail="the form's security token is missing or wrong: reload the sign-in "
                                            "page and try again")
        return fields


def one(fields: dict[str, list[str]], name: str, default: str = "") -> str:
    """A form field's single value (the first one sent)."""
    return (fields.get(name) or [default])[0]


def read_multipart(content_type: str, body: bytes) -> dict[str, list[str]]:
    """A multipart/form-data body's fields (already bounded in size by the caller), with the standard
    library's MIME parser: text fields as text, a file as its UTF-8 text under the field's name and its
    file name under name + FILE_SUFFIX; a file input left empty is no value. Anything else is a 400."""
    if "boundary=" not in content_type.lower():
        raise HTTPException(400, detail="the form could not be read (multipart without a boundary)")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise HTTPException(400, detail="the form could not be read")
    fields: dict[str, list[str]] = {}
    parts = list(message.iter_parts())
    if len(parts) > MAX_FORM_FIELDS:
        raise HTTPException(400, detail=f"the form has more than {MAX_FORM_FIELDS} fields")
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            continue
        filename = part.get_filename()
        raw = part.get_payload(decode=True) or b""
        if filename is not None and not filename and not raw:
            continue  # a file input with no file chosen
        try:
            text = raw.decode("utf-8-sig" if filename is not None else "utf-8")
        except UnicodeDecodeError:
            raise HTTPException(400, detail=f"{name}: the file is not UTF-8 text (upload the .yaml or .json "
                                            "file itself)") from None
        fields.setdefault(name, []).append(text)
        if filename is not None:
            fields.setdefault(name + FILE_SUFFIX, []).append(Path(filename).name[:200])
    return fields


def upload_or_text(fields: dict[str, list[str]], file_field: str, text_field: str) -> str:
    """The uploaded file's text when a file was sent, else the text box's: the form's one definition."""
    uploaded = fields.get(file_field)
    if uploaded and uploaded[0].strip():
        return uploaded[0]
    return one(fields, text_field)
