"""A small OpenID Connect provider for the tests, on 127.0.0.1 in a thread (written by hand on joserfc).

    /.well-known/openid-configuration   discovery
    /authorize                           GET: as a signed-in user `login_as` (a test parameter, or
                                         `provider.default_user`), redirects to the registered
                                         redirect_uri with a code and the state
    /token                               POST: client_secret_basic, the code once, redirect_uri, PKCE S256
    /jwks                                the public key
    /logout                              GET (when `end_session`): RP-initiated logout; the id_token_hint must
                                         be one it issued to this client, the post_logout_redirect_uri one of
                                         `post_logout_uris`; it records the request and redirects there

It is honest by default; `provider.next_token` changes the next ID token it issues (claims replaced or
removed, another signing key, another header) to play the attacks the hub must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import RSAKey


class Provider:
    def __init__(self, client_id: str, client_secret: str, *, end_session: bool = True) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris: set[str] = set()
        self.end_session = end_session  # whether discovery names an end_session_endpoint
        self.post_logout_uris: set[str] = set()
        self.issued: list[str] = []  # every ID token it issued, in order
        self.logouts: list[dict[str, str]] = []  # the logout requests it accepted
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
        self.codes: dict[str, dict[str, Any]] = {}
        self.next_token: dict[str, Any] = {}
        self.token_requests: list[dict[str, Any]] = []
        self.default_user: str | None = None  # who is signed in at the provider when the test names no one
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Provider:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def metadata(self) -> dict[str, Any]:
        data = {"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"], "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"]}
        if self.end_session:
            data["end_session_endpoint"] = f"{self.issuer}/logout"
        return data

    def id_token(self, grant: dict[str, Any]) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": f"sub-{grant['user']}", "aud": self.client_id,
                                  "exp": now + 300, "iat": now, "nonce": grant["nonce"],
                                  "preferred_username": grant["user"]}
        change, self.next_token = self.next_token, {}
        for k, v in change.get("claims", {}).items():
            if v is None:
                claims.pop(k, None)
            else:
                claims[k] = v
        header = {"alg": "RS256", "kid": "k1", **change.get("header", {})}
        key = change.get("key", self.key)
        if header["alg"] == "HS256":  # signed with the client secret: a symmetric key anyone registered holds
            from joserfc.jwk import OctKey

            return jwt.encode(header, claims, OctKey.import_key(self.client_secret.encode()))
        token = jwt.encode(header, claims, key)
        self.issued.append(token)
        return token

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                u = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                if u.path == "/.well-known/openid-configuration":
                    return self.send(200, provider.metadata())
                if u.path == "/jwks":
                    return self.send(200, {"keys": [provider.key.as_dict(private=False)]})
                if u.path == "/authorize":
                    if q.get("client_id") != provider.client_id or q.get("redirect_uri") not in provider.redirect_uris \
                            or q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" \
                            or "openid" not in q.get("scope", "").split():
                        return self.send(400, {"error": "invalid_request"})
                    code = secrets.token_urlsafe(24)
                    user = q.get("login_as") or provider.default_user
                    if user is None:
                        return self.send(400, {"error": "login_required"})
                    provider.codes[code] = {"user": user, "nonce": q.get("nonce", ""),
                                            "challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"],
                                            "used": False}
                    target = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q.get("state", "")})
                    return self.send(302, headers={"Location": target})
                if u.path == "/logout" and provider.end_session:
                    hint = q.get("id_token_hint", "")
                    try:  # a hint it issued, signed by its key, to this client (expired is fine for a hint)
                        claims = jwt.decode(hint, provider.key).claims
                    except Exception:
                        return self.send(400, {"error": "invalid_request", "error_description": "id_token_hint"})
                    if claims.get("aud") != provider.client_id or q.get("client_id") != provider.client_id \
                            or q.get("post_logout_redirect_uri") not in provider.post_logout_uris:
                        return self.send(400, {"error": "invalid_request"})
                    provider.logouts.append(q)
                    return self.send(302, headers={"Location": q["post_logout_redirect_uri"]})
                return self.send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                if urlsplit(self.path).path != "/token":
                    return self.send(404, {"error": "not_found"})
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                provider.token_requests.append(form)
                basic = base64.b64encode(f"{provider.client_id}:{provider.client_secret}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {basic}":
                    return self.send(401, {"error": "invalid_client"})
                grant = provider.codes.get(form.get("code", ""))
                if form.get("grant_type") != "authorization_code" or grant is None or grant["used"] \
                        or form.get("redirect_uri") != grant["redirect_uri"]:
                    return self.send(400, {"error": "invalid_grant"})
                grant["used"] = True  # a code works once
                verifier = form.get("code_verifier", "")
                challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                if challenge != grant["challenge"]:
                    return self.send(400, {"error": "invalid_grant", "error_description": "PKCE"})
                return self.send(200, {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                                       "expires_in": 300, "id_token": provider.id_token(grant)})

        return Handler
