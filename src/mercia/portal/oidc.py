"""OpenID Connect sign-in for the hub's portal: the authorization-code flow with PKCE, state and nonce.

    GET /portal/sign-in/oidc            a new flow: state, nonce and PKCE verifier kept here, the browser
                                        sent to the provider's authorization endpoint
    GET /portal/sign-in/oidc/callback   the provider's answer: state checked against the browser's cookie
                                        and this hub's record (once), the code exchanged at the token
                                        endpoint with the verifier, the ID token checked, a session made

Configured by hub.yaml's `portal: oidc:` (mercia.federation.hub.config.Oidc). The provider's endpoints come
from its discovery document (`ISSUER/.well-known/openid-configuration`, whose `issuer` must be the one
configured); its keys from `jwks_uri`, fetched again when a token names a key id not yet seen (a key
rotation), at most once a minute.

The ID token is checked with joserfc: its signature against the provider's published keys (asymmetric
algorithms only: never `none`, never a shared-secret HMAC), `iss` equal to the configured issuer, `aud`
holding the client id (and `azp` equal to it when there are several audiences), `exp` in the future and
`iat` present (a minute's leeway for clocks), `nonce` equal to the one this flow sent. The flow's state is
a random 32 bytes, bound to the browser by a cookie of its own and kept here as a hash, usable once and
for ten minutes: a callback with another browser's state, a replayed callback, or a late one is refused.
A replayed authorization code is refused by the provider (and its state is already spent here).

Users. The claim `user_claim` (default `preferred_username`) names the portal user, who must already
exist and be enabled: an admin adds them with their role and projects (the users page or `mercia hub
portal-user-add`), as OHDSI WebAPI's administrators give each signed-in user their roles; the provider
only says who someone is, never what they may do. Anyone else is refused and no account is made.

Sign-out. When the provider's discovery document has an `end_session_endpoint`, signing out of a session
made by single sign-on ends it here and then sends the browser to the provider's sign-out (OpenID
Connect RP-Initiated Logout: `id_token_hint` the session's ID token, `post_logout_redirect_uri` the
portal's sign-in page, `client_id`), so the next sign-in asks for the provider's password again. The ID
token is kept for that only, in the hub's private state file beside the session's hash, and removed at
sign-out. Without that endpoint (or when the provider cannot be read then), and for a password sign-in,
the sign-out is this portal's alone, as before.

Every refusal is the sign-in page's error page with one line naming what was wrong (status 401; 502 when
the provider could not be reached or answered nonsense), no session is made, and the hub's audit log
has a `portal.oidc_refused` line (the reason; no token, code or claim other than the user name).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures.

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, Response
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidKeyIdError, JoseError, MissingClaimError
from joserfc.jwk import KeySet

from mercia.errors import ConfigError, MerciaError
from mercia.federation.sqlite_store import SqliteStore
from mercia.portal.accounts import NAME, Accounts, hash_session_id
from mercia.portal.sign_in import safe_next

STATE_COOKIE = "mercia_oidc_state"
FLOW_SECONDS = 600.0
LEEWAY_SECONDS = 60
# Asymmetric signatures only: `none` and HS* (a secret shared with every client) are refused.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS portal_oidc_flows (
    state_hash TEXT PRIMARY KEY, nonce TEXT NOT NULL, verifier TEXT NOT NULL, next TEXT NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS portal_oidc_sessions (
    id_hash TEXT PRIMARY KEY, id_token TEXT NOT NULL, created REAL NOT NULL);
"""
MAX_SESSION_SECONDS = 7 * 24 * 3600.0  # the longest session hub.yaml allows (portal: session_minutes)


class OidcRefused(MerciaError):
    """The provider's answer, or the browser's callback, fails a check: no session."""

    status_code = 401


class ProviderUnreachable(OidcRefused):
    status_code = 502


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _usable(url: Any) -> bool:
    """An endpoint of the discovery document this hub may use: https, or http on this machine only."""
    u = urlsplit(str(url or ""))
    return u.scheme in ("https", "http") and bool(u.hostname) and (
        u.scheme == "https" or u.hostname in ("127.0.0.1", "localhost", "::1"))


def post_logout_uri(settings: Any, prefix: str) -> str:
    """Where the provider sends the browser after its sign-out: the portal's sign-in page, at the address
    the provider already knows (the callback's): hub.yaml's post_logout_redirect_uri when given."""
    if getattr(settings, "post_logout_redirect_uri", None):
        return str(settings.post_logout_redirect_uri)
    u = urlsplit(settings.redirect_uri)
    path = u.path.removesuffix("/oidc/callback") if u.path.endswith("/oidc/callback") else f"{prefix}/sign-in"
    return u._replace(path=path, query="", fragment="").geturl()


def pkce_challenge(verifier: str) -> str:
    """RFC 7636's S256 code challenge of `verifier`."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode("ascii")


class OidcFlows(SqliteStore):
    """Flows started and not yet finished, in the hub's state file: the state's hash, nonce, verifier."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA, private=True)

    def start(self, nxt: str) -> tuple[str, str, str]:
        """A new flow: (state, nonce, PKCE verifier)."""
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        now = time.time()
        with self._tx() as con:
            con.execute("DELETE FROM portal_oidc_flows WHERE created < ?", (now - FLOW_SECONDS,))
            con.execute("INSERT INTO portal_oidc_flows (state_hash, nonce, verifier, next, created) "
                        "VALUES (?, ?, ?, ?, ?)", (_sha256(state), nonce, verifier, nxt, now))
        return state, nonce, verifier

    def finish(self, state: str) -> tuple[str, str, str]:
        """(nonce, verifier, next) of the live flow with this state, which ends now (usable once)."""
        with self._tx() as con:
            r = con.execute("SELECT * FROM portal_oidc_flows WHERE state_hash = ?", (_sha256(state),)).fetchone()
            con.execute("DELETE FROM portal_oidc_flows WHERE state_hash = ?", (_sha256(state),))
        if r is None or r["created"] < time.time() - FLOW_SECONDS:
            raise OidcRefused("the sign-in's state is unknown, already used or more than ten minutes old: "
                              "start the sign-in again")
        return r["nonce"], r["verifier"], r["next"]

    def remember(self, session_id: str, id_token: str) -> None:
        """The ID token a session was made from, for the provider's sign-out (keyed by the session id's hash)."""
        now = time.time()
        with self._tx() as con:
            con.execute("DELETE FROM portal_oidc_sessions WHERE created < ?", (now - MAX_SESSION_SECONDS,))
            con.execute("INSERT OR REPLACE INTO portal_oidc_sessions (id_hash, id_token, created) VALUES (?, ?, ?)",
                        (hash_session_id(session_id), id_token, now))

    def forget(self, session_id: str) -> str | None:
        """The session's ID token, if it was made by single sign-on; removed now (a session signs out once)."""
        digest = hash_session_id(session_id)
        with self._tx() as con:
            r = con.execute("SELECT id_token FROM portal_oidc_sessions WHERE id_hash = ?", (digest,)).fetchone()
            con.execute("DELETE FROM portal_oidc_sessions WHERE id_hash = ?", (digest,))
        return r["id_token"] if r is not None else None


class OidcClient:
    """This hub as a client of one OpenID Connect provider (`settings`: hub.yaml's portal: oidc:)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0

    # ---- the provider's documents ------------------------------------------------------------------
    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            r = httpx.get(url, timeout=self.settings.timeout_seconds, follow_redirects=False)
            r.raise_for_status()
            data = r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise ProviderUnreachable(f"the sign-in provider's {what} could not be read ({type(e).__name__}): "
                                      "try again later, or sign in with a password") from None
        if not isinstance(data, dict):
            raise ProviderUnreachable(f"the sign-in provider's {what} is not a JSON object")
        return data

    def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (kept for an hour), checked against the configured issuer."""
        with self._lock:
            if self._metadata is not None and time.time() - self._metadata_at < 3600:
                return self._metadata
        issuer = self.settings.issuer
        data = self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery document")
        if data.get("issuer") != issuer:
            raise ProviderUnreachable(f"the sign-in provider's discovery document names issuer "
                                      f"{str(data.get('issuer'))[:200]!r}, not the configured {issuer!r}")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not _usable(data.get(key)):
                raise ProviderUnreachable(f"the sign-in provider's discovery document has no usable {key}")
        with self._lock:
            self._metadata, self._metadata_at = data, time.time()
        return data

    def keys(self, *, refresh: bool = False) -> KeySet:
        """The provider's public keys; fetched again when `refresh` (an unknown key id), once a minute at most."""
        with self._lock:
            if self._keys is not None and (not refresh or time.time() - self._keys_at < 60):
                return self._keys
        data = self._get_json(self.metadata()["jwks_uri"], "key set")
        try:
            keys = KeySet.import_key_set({"keys": [k for k in data.get("keys", []) if k.get("kty") != "oct"]})
        except (JoseError, ValueError, TypeError, AttributeError) as e:
            raise ProviderUnreachable(f"the sign-in provider's key set cannot be read ({e})") from None
        with self._lock:
            self._keys, self._keys_at = keys, time.time()
        return keys

    def client_secret(self) -> str | None:
        """The client secret, from the environment or its file, read when needed (never from hub.yaml)."""
        s = self.settings
        if s.client_secret_env:
            value = os.environ.get(s.client_secret_env)
            if not value:
                raise ConfigError(f"hub.yaml portal: oidc: client_secret_env: the environment variable "
                                  f"{s.client_secret_env} is not set")
            return value
        if s.client_secret_file:
            try:
                return Path(s.client_secret_file).read_text().strip()
            except OSError as e:
                raise ConfigError(f"hub.yaml portal: oidc: client_secret_file cannot be read ({e.strerror})") from None
        return None

    # ---- the flow ----------------------------------------------------------------------------------------
    def authorization_url(self, state: str, nonce: str, verifier: str) -> str:
        s = self.settings
        query = {"response_type": "code", "client_id": s.client_id, "redirect_uri": s.redirect_uri,
                 "scope": " ".join(s.scopes), "state": state, "nonce": nonce,
                 "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"}
        endpoint = self.metadata()["authorization_endpoint"]
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query)

    def exchange(self, code: str, verifier: str) -> str:
        """The ID token the token endpoint gives for `code` (and the PKCE verifier)."""
        s = self.settings
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": s.redirect_uri,
                "code_verifier": verifier, "client_id": s.client_id}
        secret = self.client_secret()
        auth = (s.client_id, secret) if secret is not None else None  # client_secret_basic; else a public client
        try:
            r = httpx.post(self.metadata()["token_endpoint"], data=form, auth=auth,
                           timeout=s.timeout_seconds, follow_redirects=False)
        except httpx.HTTPError as e:
            raise ProviderUnreachable(f"the sign-in provider's token endpoint did not answer ({type(e).__name__})"
                                      ) from None
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code != 200:
            error = str(body.get("error", "")) if isinstance(body, dict) else ""
            raise OidcRefused(f"the sign-in provider refused the authorization code"
                              f"{' (' + error[:100] + ')' if error else ''}: it may have been used already "
                              "or be too old; start the sign-in again")
        token = body.get("id_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise OidcRefused("the sign-in provider's token response holds no ID token (is openid in scopes?)")
        return token

    def end_session_url(self, id_token: str, post_logout_redirect_uri: str) -> str | None:
        """The provider's sign-out (OpenID Connect RP-Initiated Logout 1.0) for a session made from
        `id_token`, coming back to `post_logout_redirect_uri`; None when the provider's discovery document
        has no usable `end_session_endpoint` (or cannot be read now): then the sign-out is this portal's only."""
        try:
            endpoint = self.metadata().get("end_session_endpoint")
        except OidcRefused:
            return None
        if not _usable(endpoint):
            return None
        query = {"id_token_hint": id_token, "post_logout_redirect_uri": post_logout_redirect_uri,
                 "client_id": self.settings.client_id}
        return str(endpoint) + ("&" if "?" in str(endpoint) else "?") + urlencode(query)

    def verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims if its signature, issuer, audience, expiry and nonce are right."""
        s = self.settings
        try:
            try:
                token = jwt.decode(id_token, self.keys(), algorithms=ALGORITHMS)
            except InvalidKeyIdError:
                token = jwt.decode(id_token, self.keys(refresh=True), algorithms=ALGORITHMS)
        except InvalidKeyIdError:
            raise OidcRefused("the ID token is signed by a key the sign-in provider does not publish") from None
        except JoseError as e:
            raise OidcRefused(f"the ID token's signature is not the sign-in provider's ({e.error})") from None
        claims = token.claims
        registry = jwt.JWTClaimsRegistry(
            leeway=LEEWAY_SECONDS, iss={"essential": True, "value": s.issuer},
            aud={"essential": True, "value": s.client_id}, exp={"essential": True}, iat={"essential": True},
            sub={"essential": True})
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise OidcRefused("the ID token has expired: start the sign-in again") from None
        except MissingClaimError as e:
            raise OidcRefused(f"the ID token lacks a claim it must have ({e.description})") from None
        except JoseError as e:
            what = {"iss": "its issuer is not the configured one", "aud": "it was not issued to this hub "
                    "(audience)", "iat": "its issue time is in the future"}
            name = next((k for k in what if repr(k) in str(e)), None)
            raise OidcRefused(f"the ID token is refused: {what.get(name or '', e.error)}") from None
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != s.client_id:
            raise OidcRefused("the ID token is refused: it names several audiences and another authorized party")
        sent = claims.get("nonce")
        if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
            raise OidcRefused("the ID token is refused: its nonce is not this sign-in's (a replayed token?)")
        return dict(claims)


class OidcSignOut:
    """Sign-out at the provider too (sign_in.py's `sign_out_to`): the provider's end-session URL for a
    session made by single sign-on, when its discovery document has an `end_session_endpoint`."""

    def __init__(self, client: OidcClient, flows: OidcFlows, prefix: str) -> None:
        self.client, self.flows, self.prefix = client, flows, prefix

    def __call__(self, session_id: str) -> str | None:
        id_token = self.flows.forget(session_id)
        if id_token is None:  # a password sign-in: nothing to end at the provider
            return None
        return self.client.end_session_url(id_token, post_logout_uri(self.client.settings, self.prefix))


def add_oidc_routes(app: FastAPI, web: Any, accounts: Accounts, settings: Any, audit: Any,
                    prefix: str) -> OidcSignOut:
    """The two OIDC routes on the portal's app (when hub.yaml configures portal: oidc:); the sign-out
    at the provider, for the sign-out route."""
    client = OidcClient(settings)
    flows = OidcFlows(accounts.path)
    cookie_path = f"{prefix}/sign-in/oidc"

    def refused(request: Request, e: OidcRefused, who: str = "-") -> Response:
        audit.append("portal.oidc_refused", who, reason=str(e)[:300],
                     client=request.client.host if request.client else None)
        response = web.error(request, e.status_code, f"Single sign-on refused: {e}")
        response.delete_cookie(STATE_COOKIE, path=cookie_path, httponly=True, secure=web.secure_cookie,
                               samesite="lax")
        return response

    @app.get("/sign-in/oidc")
    def oidc_start(request: Request, next: str = Query("", max_length=500)) -> Response:
        try:
            state, nonce, verifier = flows.start(safe_next(next, prefix))
            url = client.authorization_url(state, nonce, verifier)
        except OidcRefused as e:
            return refused(request, e)
        response = RedirectResponse(url, status_code=303)
        # SameSite=Lax: sent back on the provider's top-level redirect to the callback, not on cross-site POSTs.
        response.set_cookie(STATE_COOKIE, state, max_age=int(FLOW_SECONDS), path=cookie_path, httponly=True,
                            secure=web.secure_cookie, samesite="lax")
        return response

    @app.get("/sign-in/oidc/callback")
    def oidc_callback(request: Request, code: str = Query("", max_length=4096),
                      state: str = Query("", max_length=200), error: str = Query("", max_length=200)) -> Response:
        try:
            if error:
                raise OidcRefused(f"the sign-in provider answered {error[:100]!r} (sign-in cancelled or refused there)")
            held = request.cookies.get(STATE_COOKIE, "")
            if not state or not code:
                raise OidcRefused("the provider's answer lacks its code or state: start the sign-in again")
            if not held or not hmac.compare_digest(held.encode(), state.encode()):
                raise OidcRefused("the sign-in's state does not match this browser's: start the sign-in again")
            nonce, verifier, nxt = flows.finish(state)
            id_token = client.exchange(code, verifier)
            claims = client.verify(id_token, nonce)
        except OidcRefused as e:
            return refused(request, e)
        except MerciaError as e:  # the hub's own configuration (a missing secret): the operator's to fix
            raise HTTPException(500, detail=str(e)) from None
        name = claims.get(settings.user_claim)
        if not isinstance(name, str) or not NAME.match(name):
            return refused(request, OidcRefused(f"the ID token's {settings.user_claim!r} claim is not a portal "
                                                "user name"))
        user = accounts.user(name)
        if user is None or user.disabled:
            return refused(request, OidcRefused(f"{name} has no enabled account on this portal: ask an admin of "
                                                "the hub to add you (with your role and projects)"), name)
        session_id, session = accounts.start_session(name)
        flows.remember(session_id, id_token)  # the id_token_hint of the provider's sign-out
        audit.append("portal.signed_in", name, role=session.user.role, method="oidc")
        response = RedirectResponse(nxt, status_code=303)
        web.set_session_cookie(response, session_id, int(accounts.session_seconds))
        response.delete_cookie(STATE_COOKIE, path=cookie_path, httponly=True, secure=web.secure_cookie,
                               samesite="lax")
        return response

    return OidcSignOut(client, flows, prefix)
