"""Who may call a node or the hub, what they may do, and which packages a node will run.

Tokens. Every call carries `Authorization: Bearer <token>`. A token is 32 random bytes from `secrets`
(URL-safe base64, prefixed "mct_" so a leaked one is easy to grep for). The token file holds only each
token's sha256: tokens are high-entropy random strings, not passwords, so a fast hash is enough (there
is no dictionary to try; a slow KDF would only slow every request). Lookups compare the hash with every
stored hash by `hmac.compare_digest`, without stopping at a match, so timing does not tell how near a
guess came. Issuing again for a name rotates its token; revoking removes it.

Roles. researcher (submits studies and feasibility queries for their projects), custodian (approves or
rejects studies at their site), admin (manages users, nodes and projects), node and hub (the services,
each with its own token for the other), clinician (a node's own: a trial's candidates at that site,
from the site's network only). A principal's projects is a set of project names, "*" for all.

Signing. The hub signs each package's content hash together with the project, the target sites, the
requester and an expiry (canonical JSON, Ed25519); a node runs only packages whose signature verifies
with the public key of the hub it trusts (configured by the site, out of band) and whose claims name
this package, the project it is submitted under, this node's site, the requester, and a time not past.

Count queries. `CountQueryGuard` is a SHRINE-style limit on feasibility counts: each principal may run
at most `max_queries` per `window_seconds`, and a principal who repeats a near-identical query (the same
`query_key`: the definition with names and descriptions removed, hashed) more than `max_repeats` times
within `repeat_window_seconds` is locked out of count queries for `lockout_seconds` (or until an admin
calls `unlock`). Repeats are what averaging attacks on noisy or rounded counts need.

FastAPI is imported here (not in `mercia.federation`): only the services need this module. Use:

    auth = authenticator(TokenStore(path)); app.state.authenticator = auth
    def approve(p: Annotated[Principal, Depends(auth.require_role("custodian"))]): ...
    def submit(p: Annotated[Principal, Depends(require_role("hub"))]): ...   # via app.state.authenticator

(a module that builds endpoints in a closure over a local `auth` must not use `from __future__ import
annotations`: FastAPI could not resolve the dependency from the string annotation).
"""

# No `from __future__ import annotations`: FastAPI must see the real Annotated dependencies of the
# closures below, which string annotations would hide behind names it cannot resolve.

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mercia.errors import ConfigError, MerciaError

logger = logging.getLogger("mercia.auth")

ROLES = ("researcher", "custodian", "admin", "node", "hub", "clinician")
# The roles that mean something to each service: its routes accept no other. A clinician exists only
# at a node (a trial's candidates, inside the site); the hub never issues or accepts one.
NODE_ROLES = ("hub", "custodian", "researcher", "admin", "clinician")
HUB_ROLES = ("researcher", "admin")
ALL_PROJECTS = "*"
TOKEN_PREFIX = "mct_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ---- tokens -------------------------------------------------------------------------------------
def new_token() -> str:
    """A fresh bearer token: "mct_" and 43 characters of URL-safe base64 (256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """sha256 (hex) of a token: what the token file stores in its place."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user or a service, its role and the projects it may act in."""

    name: str
    role: str
    projects: frozenset[str]

    def in_project(self, project: str) -> bool:
        return ALL_PROJECTS in self.projects or project in self.projects


class TokenStore:
    """Token hashes with their principals, in a JSON file written atomically (temp file + rename).

    The file is re-read whenever it changes on disk, so tokens issued or revoked by the CLI take
    effect in a running service without a restart."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        self._stamp: tuple[int, ...] | None = None

    # Reading ----------------------------------------------------------------------------------
    def _load(self) -> list[dict[str, Any]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._entries, self._stamp = [], None
            return self._entries
        # The inode changes on every atomic replace; times and size catch edits in place.
        stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                entries = data["tokens"]
                for e in entries:
                    if e["role"] not in ROLES or not _HEX64.match(e["token_hash"]):
                        raise ValueError(f"entry {e.get('name')!r} is malformed")
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"the token file {self.path} is not a Mercia token file ({e}); "
                                  "issue tokens with `mercia node token` at a node or "
                                  "`mercia hub user-add` at the hub") from None
            self._entries, self._stamp = entries, stamp
        return self._entries

    def principals(self) -> list[Principal]:
        with self._lock:
            return [self._principal(e) for e in self._load()]

    @staticmethod
    def _principal(entry: dict[str, Any]) -> Principal:
        return Principal(entry["name"], entry["role"], frozenset(entry["projects"]))

    def lookup(self, token: str) -> Principal | None:
        """The principal holding `token`, or None. Compares against every entry (constant time)."""
        if not isinstance(token, str) or not token:
            return None
        digest = hash_token(token)
        found: dict[str, Any] | None = None
        with self._lock:
            for entry in self._load():
                # No early exit: the time taken does not depend on where (or whether) it matched.
                if hmac.compare_digest(entry["token_hash"], digest):
                    found = entry
        return self._principal(found) if found is not None else None

    # Writing ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _edit(self):  # type: ignore[no-untyped-def]
        """Read-modify-write under an exclusive lock shared with other processes, then replace the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._lock, open(lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                self._stamp = None  # always re-read under the lock
                entries = [dict(e) for e in self._load()]
                yield entries
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
                try:
                    with os.fdopen(fd, "w", encoding="utf-8") as f:
                        json.dump({"format": "mercia-tokens/1", "tokens": entries}, f, indent=2)
                        f.flush()
                        os.fsync(f.fileno())
                    os.chmod(tmp, 0o600)
                    os.replace(tmp, self.path)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    raise
                self._stamp = None
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def issue(self, name: str, role: str, projects: Iterable[str] = (), *, roles: Iterable[str] = ROLES) -> str:
        """A new token for `name` (replacing any earlier one: rotation). Returns the token; only its
        hash is stored, so this is the one time it can be seen. `roles` are those the service using
        this file accepts (NODE_ROLES, HUB_ROLES): a token of another role would be refused everywhere."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"principal name {name!r} is invalid: use 1-128 letters, digits and _ . @ -, "
                              "starting with a letter or digit")
        allowed = tuple(r for r in roles if r in ROLES)
        if role not in allowed:
            what = "unknown role" if role not in ROLES else "no route here accepts the role"
            raise ConfigError(f"{what} {role!r}: use one of {', '.join(allowed)}")
        if isinstance(projects, str):
            projects = [projects]
        project_list = sorted(set(projects))
        for p in project_list:
            if not isinstance(p, str) or not (p == ALL_PROJECTS or _NAME.match(p)):
                raise ConfigError(f"project name {p!r} is invalid: use letters, digits and _ . @ -, or * for all")
        token = new_token()
        with self._edit() as entries:
            entries[:] = [e for e in entries if e["name"] != name]
            entries.append({"name": name, "role": role, "projects": project_list,
                            "token_hash": hash_token(token),
                            "issued_at": datetime.now(UTC).isoformat(timespec="seconds")})
        return token

    def revoke(self, name: str) -> None:
        """Remove `name`'s token; its next request is refused (401)."""
        with self._edit() as entries:
            kept = [e for e in entries if e["name"] != name]
            if len(kept) == len(entries):
                raise ConfigError(f"no token is issued to {name!r}; names with tokens: "
                                  f"{', '.join(sorted(e['name'] for e in entries)) or 'none'}")
            entries[:] = kept


# ---- FastAPI dependencies ------------------------------------------------------------------------
bearer_scheme = HTTPBearer(auto_error=False, description="A Mercia token: Authorization: Bearer mct_...")


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": "Bearer"})


class Authenticator:
    """A FastAPI dependency: `Depends(auth)` gives the caller's Principal or answers 401."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    def __call__(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
                 ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
            raise _unauthorized("authentication required: send Authorization: Bearer <token>")
        try:
            principal = self.store.lookup(credentials.credentials)
        except ConfigError:
            # A broken token file is the operator's to fix; the caller learns nothing about it.
            logger.exception("cannot read the token file")
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                detail="the service cannot check tokens right now; try again later") from None
        if principal is None:
            raise _unauthorized("the bearer token is not valid (unknown, revoked or mistyped): ask an admin "
                                "for a new one")
        return principal

    def require_role(self, *roles: str) -> Callable[..., Principal]:
        """A dependency giving the Principal if its role is one of `roles`, else 403."""
        _check_roles(roles)

        def dependency(principal: Annotated[Principal, Depends(self)]) -> Principal:
            return _role_allowed(principal, roles)

        return dependency


def authenticator(store: TokenStore) -> Authenticator:
    """The dependency authenticating a request against `store`. For the module-level `require_role`,
    also set `app.state.authenticator` to it."""
    return Authenticator(store)


def current_principal(request: Request,
                      credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
                      ) -> Principal:
    """Authenticate with the app's `app.state.authenticator` (set by the service at start-up)."""
    auth = getattr(request.app.state, "authenticator", None)
    if not isinstance(auth, Authenticator):
        raise RuntimeError("app.state.authenticator is not set: the service must set it to authenticator(store)")
    return auth(credentials)


def _check_roles(roles: tuple[str, ...]) -> None:
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        raise ValueError(f"require_role needs roles among {ROLES}, got {roles}")


def _role_allowed(principal: Principal, roles: tuple[str, ...]) -> Principal:
    if principal.role not in roles:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail=f"{principal.name} has role {principal.role!r}; this needs role "
                                   f"{' or '.join(repr(r) for r in roles)}")
    return principal


def check_role(principal: Principal, *roles: str) -> Principal:
    """The principal if its role is one of `roles`, else 403: what `require_role` checks, for callers
    that authenticate otherwise (the portal's sessions)."""
    _check_roles(roles)
    return _role_allowed(principal, roles)


def require_grant(principal: Principal, projects: Iterable[str]) -> None:
    """403 unless an admin `principal` may give (or take) these projects: only those they administer,
    and "*" only an admin of every project."""
    outside = [p for p in projects if not principal.in_project(p) or
               (p == ALL_PROJECTS and ALL_PROJECTS not in principal.projects)]
    if outside:
        raise HTTPException(403, detail=f"{principal.name} does not administer projects {outside}")


def require_role(*roles: str) -> Callable[..., Principal]:
    """A dependency giving the Principal (via `app.state.authenticator`) if its role is in `roles`,
    else 403 (or 401 when unauthenticated). `Depends(require_role("custodian", "admin"))`."""
    _check_roles(roles)

    def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        return _role_allowed(principal, roles)

    return dependency


def require_project(principal: Principal, project: str) -> None:
    """403 unless the principal may act in `project`."""
    if not principal.in_project(project):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail=f"{principal.name} is not a member of project {project!r}; ask an admin "
                                   "to add them")


# ---- package signatures -------------------------------------------------------------------------
def _ed25519():  # type: ignore[no-untyped-def]
    # Imported on use: cryptography is an optional dependency (the web extra).
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def generate_signing_key(path: str | Path) -> str:
    """Write a new Ed25519 private key as PEM at `path` (mode 0600, never over an existing file) and
    return its public key as PEM text, for the nodes' configuration."""
    serialization, ed25519 = _ed25519()
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{p} already exists: a signing key is never overwritten (move it away first, "
                          "and give the nodes the new public key)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def public_key_pem(private_pem_path: str | Path) -> str:
    """The public key (PEM) of the private key at `private_pem_path`."""
    serialization, _ = _ed25519()
    key = _load_private(private_pem_path)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def _load_private(private_pem_path: str | Path):  # type: ignore[no-untyped-def]
    serialization, ed25519 = _ed25519()
    try:
        key = serialization.load_pem_private_key(Path(private_pem_path).read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{private_pem_path} is not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{private_pem_path} is not an Ed25519 key: make one with generate_signing_key")
    return key


def _check_hash(content_hash: str) -> str:
    if not isinstance(content_hash, str) or not _HEX64.match(content_hash):
        raise ValueError(f"a content hash is 64 lower-case hex digits, got {content_hash!r}")
    return content_hash


SIGNATURE_FORMAT = "mcs1"
DEFAULT_SIGNATURE_DAYS = 7.0


class SignatureRefused(MerciaError):
    """A package's signature does not authorise this submission here (403). `reason` is the short
    cause kept in the audit log: bad signature, another package, another project, another site,
    another requester, expired."""

    status_code = 403

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SignedClaims:
    """What the hub's signature vouches for: this package, for this project, at these sites, asked by
    this researcher, until `expires_at` (ISO 8601, UTC)."""

    hash: str
    project: str
    sites: tuple[str, ...]
    requested_by: str
    issued_at: str
    expires_at: str

    def to_bytes(self) -> bytes:
        """The canonical JSON that is signed: sorted keys, no spaces, ASCII only."""
        return json.dumps({"format": SIGNATURE_FORMAT, "hash": self.hash, "project": self.project,
                           "sites": list(self.sites), "requested_by": self.requested_by,
                           "issued_at": self.issued_at, "expires_at": self.expires_at},
                          sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64url(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not URL-safe base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _utc_text(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_package(private_pem_path: str | Path, content_hash: str, *, project: str, sites: Iterable[str],
                 requested_by: str, valid_days: float = DEFAULT_SIGNATURE_DAYS,
                 now: datetime | None = None) -> str:
    """The hub's signature of a package for one project, its target sites and the researcher who asked,
    valid for `valid_days`: "mcs1.<claims>.<signature>" (URL-safe base64 of the canonical JSON claims and
    of the Ed25519 signature over them). A node reads the claims from it and checks every one.

    Signing the hash alone let a package signed for one node and project run at another node or under
    another project; the claims bind it to where and for whom it was meant."""
    if not isinstance(project, str) or not _NAME.match(project):
        raise ValueError(f"project name {project!r} is invalid")
    if not isinstance(requested_by, str) or not _NAME.match(requested_by):
        raise ValueError(f"requester name {requested_by!r} is invalid")
    site_list = tuple(sorted(set(sites)))
    # Site names are the nodes' own (node.yaml's site:), checked there; here only that there are some.
    if not site_list or not all(isinstance(s, str) and 0 < len(s) <= 200 for s in site_list):
        raise ValueError(f"a signature names one or more sites, got {site_list!r}")
    if not valid_days > 0:
        raise ValueError(f"a signature must be valid for a positive number of days, got {valid_days!r}")
    issued = now or datetime.now(UTC)
    claims = SignedClaims(hash=_check_hash(content_hash), project=project, sites=site_list,
                          requested_by=requested_by, issued_at=_utc_text(issued),
                          expires_at=_utc_text(issued + timedelta(days=valid_days)))
    message = claims.to_bytes()
    key = _load_private(private_pem_path)
    return f"{SIGNATURE_FORMAT}.{_b64url(message)}.{_b64url(key.sign(message))}"


def _public_key(public_pem: str | bytes):  # type: ignore[no-untyped-def]
    serialization, ed25519 = _ed25519()
    try:
        key = serialization.load_pem_public_key(public_pem.encode("ascii") if isinstance(public_pem, str)
                                                else public_pem)
    except (ValueError, TypeError, UnicodeEncodeError) as e:
        raise ConfigError(f"the trusted hub key is not a PEM public key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError("the trusted hub key is not an Ed25519 public key")
    return key


def read_signature(public_pem: str | bytes, signature: str) -> SignedClaims:
    """The claims of a signature made by the trusted hub, or SignatureRefused("bad signature").
    Nothing in the claims is believed before the Ed25519 signature over their exact bytes verifies.
    A public key that is not Ed25519 PEM is a ConfigError."""
    from cryptography.exceptions import InvalidSignature

    key = _public_key(public_pem)
    refused = SignatureRefused("bad signature", "the package's signature does not verify with the key of the "
                                                "hub this node trusts; only packages signed by that hub run here")
    try:
        fmt, claims_text, sig_text = signature.split(".")
        if fmt != SIGNATURE_FORMAT:
            raise ValueError("unknown signature format")
        message, raw = _unb64url(claims_text), _unb64url(sig_text)
        key.verify(raw, message)
        data = json.loads(message)
        sites = data["sites"]
        if data.get("format") != SIGNATURE_FORMAT or not isinstance(sites, list):
            raise ValueError("malformed claims")
        claims = SignedClaims(hash=data["hash"], project=data["project"], sites=tuple(sites),
                              requested_by=data["requested_by"], issued_at=data["issued_at"],
                              expires_at=data["expires_at"])
        if claims.to_bytes() != message:  # the claims are exactly the canonical form, nothing more
            raise ValueError("claims not canonical")
        if datetime.fromisoformat(claims.expires_at).tzinfo is None:
            raise ValueError("expiry without a time zone")
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error, InvalidSignature):
        raise refused from None
    return claims


def verify_package(public_pem: str | bytes, signature: str, *, content_hash: str, project: str, site: str,
                   requested_by: str, now: datetime | None = None) -> SignedClaims:
    """The claims of `signature` if the trusted hub signed exactly this package, for `project`, for a list
    of sites holding `site` (this node), for `requested_by`, and it has not expired; else
    SignatureRefused with a message saying which. A ConfigError if the public key is not Ed25519 PEM."""
    claims = read_signature(public_pem, signature)
    if claims.hash != content_hash:
        raise SignatureRefused("another package", "the hub's signature is for another package, not this "
                                                  "hash; send the package with its own signature")
    if claims.project != project:
        raise SignatureRefused("another project", f"the package was signed for project {claims.project!r}, "
                                                  f"not {project!r}; submit it under the project it was "
                                                  "signed for")
    if site not in claims.sites:
        raise SignatureRefused("another site", f"the package was signed for sites {list(claims.sites)}, not "
                                               f"this site ({site!r}): a package runs only where the hub sent "
                                               "it (the hub must register this node under its site name)")
    if claims.requested_by != requested_by:
        raise SignatureRefused("another requester", "the package was signed for another requester than "
                                                    f"{requested_by!r}")
    current = now or datetime.now(UTC)
    if current >= datetime.fromisoformat(claims.expires_at):
        raise SignatureRefused("expired", f"the hub's signature expired at {claims.expires_at}; submit the "
                                          "study again at the hub for a fresh signature")
    return claims


# ---- count-query guard ---------------------------------------------------------------------------
class RateLimitedError(MerciaError):
    """Too many count queries (429). `retry_after` is the seconds until one may try again."""

    status_code = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, int(self.retry_after + 0.999)))}


COSMETIC_KEYS = frozenset({"name", "description", "title", "notes"})


def query_key(definition: Any) -> str:
    """The identity of a count query for the lockout: the sha256 of the cohort definition's canonical
    form (mercia.cohorts.canonical: names, concept-set numbering and the order of unordered parts
    removed), so that renaming a query or its concept sets does not make it a new one. Data that is not
    a cohort definition (refused later anyway) is keyed by its JSON with names and descriptions removed."""
    from mercia.cohorts.canonical import canonical_hash, parse_definition
    from mercia.cohorts.model import CohortDefinition

    if isinstance(definition, CohortDefinition):
        return canonical_hash(definition)
    with contextlib.suppress(MerciaError):
        return canonical_hash(parse_definition(definition))

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if not (isinstance(k, str) and k.lower() in COSMETIC_KEYS)}
        if isinstance(v, list | tuple):
            return [strip(x) for x in v]
        return v

    text = json.dumps(strip(definition), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CountQueryGuard:
    """SHRINE-style limits on count queries, per principal (in memory: a restart clears them).

    - rate: at most `max_queries` accepted per sliding `window_seconds`;
    - lockout: the `max_repeats`+1-th query with the same `query_key` within `repeat_window_seconds`
      locks the principal out of all count queries for `lockout_seconds` (or until `unlock`).
    Refused queries do not count towards either limit."""

    def __init__(self, max_queries: int = 60, window_seconds: float = 60.0, max_repeats: int = 5,
                 repeat_window_seconds: float = 86_400.0, lockout_seconds: float = 86_400.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_queries < 1 or max_repeats < 1:
            raise ConfigError("count limits need max_queries >= 1 and max_repeats >= 1")
        if min(window_seconds, repeat_window_seconds, lockout_seconds) <= 0:
            raise ConfigError("count-limit windows and the lockout must be positive numbers of seconds")
        self.max_queries = max_queries
        self.window_seconds = window_seconds
        self.max_repeats = max_repeats
        self.repeat_window_seconds = repeat_window_seconds
        self.lockout_seconds = lockout_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: dict[str, deque[float]] = {}
        self._repeats: dict[tuple[str, str], deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def check(self, principal: Principal | str, query_key: str) -> None:
        """Accept one count query (and record it) or raise RateLimitedError."""
        who = principal.name if isinstance(principal, Principal) else str(principal)
        now = self._clock()
        with self._lock:
            until = self._locked_until.get(who)
            if until is not None:
                if now < until:
                    raise RateLimitedError(
                        f"{who} is locked out of count queries for repeating a near-identical query more "
                        f"than {self.max_repeats} times; ask the site's custodian to unlock", until - now)
                del self._locked_until[who]
            recent = self._recent.setdefault(who, deque())
            while recent and recent[0] <= now - self.window_seconds:
                recent.popleft()
            if len(recent) >= self.max_queries:
                raise RateLimitedError(
                    f"{who} has run {self.max_queries} count queries in {self.window_seconds:g} s; try again "
                    "later", recent[0] + self.window_seconds - now)
            repeats = self._repeats.setdefault((who, query_key), deque())
            while repeats and repeats[0] <= now - self.repeat_window_seconds:
                repeats.popleft()
            if len(repeats) >= self.max_repeats:
                # The repeats stay on record: after the lockout, the same query locks again at once
                # until the old repeats leave their window (unlock() forgets them).
                self._locked_until[who] = now + self.lockout_seconds
                raise RateLimitedError(
                    f"{who} is locked out of count queries: the same query was asked more than "
                    f"{self.max_repeats} times (a pattern of averaging attacks); ask the site's custodian "
                    "to unlock", self.lockout_seconds)
            recent.append(now)
            repeats.append(now)

    def locked(self, principal: Principal | str) -> bool:
        who = principal.name if isinstance(principal, Principal) else str(principal)
        with self._lock:
            until = self._locked_until.get(who)
            return until is not None and self._clock() < until

    def unlock(self, principal: Principal | str) -> None:
        who = principal.name if isinstance(principal, Principal) else str(principal)
        with self._lock:
            self._locked_until.pop(who, None)
            for key in [k for k in self._repeats if k[0] == who]:
                del self._repeats[key]
