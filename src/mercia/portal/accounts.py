"""The portal's accounts: users with argon2id password hashes, server-side sessions, failed sign-ins.

In the service's own SQLite state file (the hub's hub.sqlite), in tables of their own.

Passwords are hashed with argon2id (argon2-cffi's defaults: memory-hard, a salt per hash); a hash made
with older parameters is rehashed at the next good sign-in. A user acts as `Principal(name, role,
projects)`: exactly what an API token of that role and those projects is (mercia.federation.auth), so
every permission check is the API's.

Sessions. A session id is 32 random bytes (`secrets`); the browser holds it in a cookie and the store
keeps only its sha256 (like the API's tokens: a random id needs no slow hash). A session ends at sign-out,
`session_minutes` after sign-in, after `idle_minutes` unused, or when its user is disabled, changes role
or projects, or has their password reset. Each session has its own CSRF token, checked on every POST.

Lockout. `max_failures` failed sign-ins for one name within `lockout_minutes` lock that name for
`lockout_minutes` from the last failure, whether or not the account exists (so a lockout does not say
which names exist); a good password is not even checked while locked. An admin's password reset
clears it.

Password spraying (a few guesses at each of many names, under every name's lockout): `max_client_failures`
failed sign-ins from one client address within `lockout_minutes`, whatever the names, block that address
for `lockout_minutes` from its last failure, good passwords included. A good sign-in does not clear the
address's count (one account of the sprayer's own would). Behind a reverse proxy the client address is
the proxy's unless the server is told to trust its forwarded-for header (uvicorn --proxy-headers).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mercia.errors import MerciaError
from mercia.federation.auth import HUB_ROLES, Principal
from mercia.federation.sqlite_store import SqliteStore, timestamp

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
PROJECT = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9_.@-]{0,127})$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS portal_users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, projects TEXT NOT NULL, password_hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS portal_sessions (
    id_hash TEXT PRIMARY KEY, name TEXT NOT NULL, csrf TEXT NOT NULL, created REAL NOT NULL,
    expires REAL NOT NULL, last_seen REAL NOT NULL);
CREATE INDEX IF NOT EXISTS portal_sessions_name ON portal_sessions (name);
CREATE TABLE IF NOT EXISTS portal_failures (name TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS portal_failures_name ON portal_failures (name, at);
CREATE TABLE IF NOT EXISTS portal_client_failures (client TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS portal_client_failures_client ON portal_client_failures (client, at);
"""

_hasher = PasswordHasher()
# Verified against when the name is unknown, so an unknown name takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(MerciaError):
    """Bad input to an account action (a name, role, project or password the rules refuse)."""


class SignInRefused(MerciaError):
    status_code = 401


class LockedOut(SignInRefused):
    status_code = 429


@dataclass(frozen=True)
class User:
    name: str
    role: str
    projects: tuple[str, ...]
    disabled: bool
    created_at: str
    updated_at: str

    def principal(self) -> Principal:
        """What this user may do: the same as an API token of this role and these projects."""
        return Principal(self.name, self.role, frozenset(self.projects))


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    expires: float


def hash_session_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise AccountError(f"name {name!r} is invalid: use 1-128 letters, digits and _ . @ -, starting with a "
                           "letter or digit")
    return name


def check_role(role: str, roles: tuple[str, ...] = HUB_ROLES) -> str:
    if role not in roles:
        raise AccountError(f"role {role!r} is not one of {', '.join(roles)}")
    return role


def check_projects(projects: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    bad = [p for p in projects if not isinstance(p, str) or not PROJECT.match(p)]
    if bad:
        raise AccountError(f"project name {bad[0]!r} is invalid: use letters, digits and _ . @ -, or * for all")
    return tuple(sorted(set(projects)))


def check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"password: use {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


class Accounts(SqliteStore):
    """Users, sessions and failed sign-ins in `path` (the service's state file). `roles`: those the
    service accepts (the hub's researcher and admin; a node's would be auth.NODE_ROLES)."""

    def __init__(self, path: str | Path, *, session_minutes: float = 480.0, idle_minutes: float = 60.0,
                 max_failures: int = 5, lockout_minutes: float = 15.0, max_client_failures: int = 30,
                 roles: tuple[str, ...] = HUB_ROLES) -> None:
        super().__init__(path, _SCHEMA, private=True)
        self.roles = roles
        self.session_seconds = session_minutes * 60.0
        self.idle_seconds = idle_minutes * 60.0
        self.max_failures = max_failures
        self.lockout_seconds = lockout_minutes * 60.0
        self.max_client_failures = max_client_failures

    # ---- users -------------------------------------------------------------------------------------
    @staticmethod
    def _user(r: Any) -> User:
        return User(r["name"], r["role"], tuple(json.loads(r["projects"])), bool(r["disabled"]),
                    r["created_at"], r["updated_at"])

    def users(self) -> list[User]:
        return [self._user(r) for r in self._con().execute("SELECT * FROM portal_users ORDER BY name")]

    def user(self, name: str) -> User | None:
        r = self._con().execute("SELECT * FROM portal_users WHERE name = ?", (name,)).fetchone()
        return self._user(r) if r is not None else None

    def add_user(self, name: str, role: str, projects: list[str] | tuple[str, ...], password: str) -> User:
        """A new account; an existing name is an error (change it with `update_user`)."""
        check_name(name)
        check_role(role, self.roles)
        projects = check_projects(projects)
        digest = _hasher.hash(check_password(password))
        now = timestamp()
        with self._tx() as con:
            if con.execute("SELECT 1 FROM portal_users WHERE name = ?", (name,)).fetchone():
                raise AccountError(f"a user named {name!r} exists: change it on its page instead")
            con.execute("INSERT INTO portal_users (name, role, projects, password_hash, disabled, created_at, "
                        "updated_at) VALUES (?, ?, ?, ?, 0, ?, ?)", (name, role, json.dumps(projects), digest, now, now))
        user = self.user(name)
        assert user is not None
        return user

    def update_user(self, name: str, *, role: str, projects: list[str] | tuple[str, ...], disabled: bool) -> User:
        """Change a user's role, projects or disabled flag; their sessions end (they sign in again)."""
        check_role(role, self.roles)
        projects = check_projects(projects)
        with self._tx() as con:
            n = con.execute("UPDATE portal_users SET role = ?, projects = ?, disabled = ?, updated_at = ? "
                            "WHERE name = ?", (role, json.dumps(projects), int(disabled), timestamp(), name)).rowcount
            if not n:
                raise AccountError(f"no user named {name!r}")
            con.execute("DELETE FROM portal_sessions WHERE name = ?", (name,))
        user = self.user(name)
        assert user is not None
        return user

    def set_password(self, name: str, password: str) -> None:
        """A new password (an admin's reset): ends the user's sessions and clears their lockout."""
        digest = _hasher.hash(check_password(password))
        with self._tx() as con:
            n = con.execute("UPDATE portal_users SET password_hash = ?, updated_at = ? WHERE name = ?",
                            (digest, timestamp(), name)).rowcount
            if not n:
                raise AccountError(f"no user named {name!r}")
            con.execute("DELETE FROM portal_sessions WHERE name = ?", (name,))
            con.execute("DELETE FROM portal_failures WHERE name = ?", (name,))

    # ---- sign-in -----------------------------------------------------------------------------------
    def locked_for(self, name: str, now: float | None = None) -> float:
        """Seconds until `name` may try again (0 when not locked)."""
        now = time.time() if now is None else now
        rows = [r["at"] for r in self._con().execute(
            "SELECT at FROM portal_failures WHERE name = ? AND at > ? ORDER BY at",
            (name, now - self.lockout_seconds))]
        if len(rows) < self.max_failures:
            return 0.0
        return max(0.0, rows[-1] + self.lockout_seconds - now)

    def client_locked_for(self, client: str, now: float | None = None) -> float:
        """Seconds until the client address `client` may try again (0 when not blocked)."""
        now = time.time() if now is None else now
        rows = [r["at"] for r in self._con().execute(
            "SELECT at FROM portal_client_failures WHERE client = ? AND at > ? ORDER BY at",
            (client, now - self.lockout_seconds))]
        if len(rows) < self.max_client_failures:
            return 0.0
        return max(0.0, rows[-1] + self.lockout_seconds - now)

    def sign_in(self, name: str, password: str, client: str | None = None) -> tuple[str, Session]:
        """A new session for `name` if the password is right: (the session id for the cookie, the session).
        Raises LockedOut while the name or the client address is locked, SignInRefused otherwise (one
        message for a wrong password, an unknown name and a disabled account)."""
        now = time.time()
        client = (client or "-")[:100]
        wait = self.client_locked_for(client, now)
        if wait > 0:
            raise LockedOut(f"too many failed sign-ins from your address: try again in {max(1, round(wait / 60))} "
                            "minute(s)")
        if not isinstance(name, str) or not NAME.match(name) or not isinstance(password, str) \
                or len(password) > MAX_PASSWORD:
            self._failed(None, client, now)
            raise SignInRefused("the name or the password is wrong")
        wait = self.locked_for(name, now)
        if wait > 0:
            raise LockedOut(f"too many failed sign-ins for {name}: try again in {max(1, round(wait / 60))} "
                            "minute(s), or ask an admin to reset the password")
        r = self._con().execute("SELECT * FROM portal_users WHERE name = ?", (name,)).fetchone()
        stored = r["password_hash"] if r is not None else _DUMMY_HASH
        try:
            good = _hasher.verify(stored, password) and r is not None and not r["disabled"]
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            good = False
        if not good:
            self._failed(name, client, now)
            raise SignInRefused("the name or the password is wrong")
        with self._tx() as con:
            con.execute("DELETE FROM portal_failures WHERE name = ?", (name,))
            if _hasher.check_needs_rehash(stored):
                con.execute("UPDATE portal_users SET password_hash = ? WHERE name = ?", (_hasher.hash(password), name))
        return self.start_session(name)

    def _failed(self, name: str | None, client: str, now: float) -> None:
        with self._tx() as con:
            if name is not None:
                con.execute("INSERT INTO portal_failures (name, at) VALUES (?, ?)", (name, now))
            con.execute("INSERT INTO portal_client_failures (client, at) VALUES (?, ?)", (client, now))
            con.execute("DELETE FROM portal_failures WHERE at < ?", (now - 24 * 3600,))
            con.execute("DELETE FROM portal_client_failures WHERE at < ?", (now - 24 * 3600,))

    def start_session(self, name: str) -> tuple[str, Session]:
        """A new session for the existing, enabled user `name`, whose identity the caller has checked (a
        password above; an OpenID Connect provider's signed ID token in portal/oidc.py)."""
        now = time.time()
        user = self.user(name)
        if user is None or user.disabled:
            raise SignInRefused(f"no enabled portal user named {name!r}")
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        with self._tx() as con:
            con.execute("DELETE FROM portal_sessions WHERE expires < ?", (now,))
            con.execute("INSERT INTO portal_sessions (id_hash, name, csrf, created, expires, last_seen) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (hash_session_id(session_id), name, csrf, now, now + self.session_seconds, now))
        return session_id, Session(user, csrf, now + self.session_seconds)

    def session(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (unknown, ended, expired, idle too long, user disabled)."""
        if not session_id or len(session_id) > 100:
            return None
        now = time.time()
        digest = hash_session_id(session_id)
        r = self._con().execute(
            "SELECT s.csrf, s.expires, s.last_seen, u.* FROM portal_sessions s JOIN portal_users u "
            "ON u.name = s.name WHERE s.id_hash = ?", (digest,)).fetchone()
        if r is None:  # looked up by the id's hash: the time taken says nothing about the id
            return None
        if r["expires"] <= now or r["last_seen"] + self.idle_seconds <= now or r["disabled"]:
            self.end_session(session_id)
            return None
        if now - r["last_seen"] > 30:  # a write per half minute at most, not per request
            with self._tx() as con:
                con.execute("UPDATE portal_sessions SET last_seen = ? WHERE id_hash = ?", (now, digest))
        return Session(self._user(r), r["csrf"], r["expires"])

    def end_session(self, session_id: str) -> None:
        with self._tx() as con:
            con.execute("DELETE FROM portal_sessions WHERE id_hash = ?", (hash_session_id(session_id),))

    def expire_sessions_of(self, name: str) -> None:
        """End every session of `name` now (what the clock would do at their expiry)."""
        with self._tx() as con:
            con.execute("UPDATE portal_sessions SET expires = ? WHERE name = ?", (time.time() - 1, name))


def accounts_for(state_file: str | Path, settings: Any, roles: tuple[str, ...] = HUB_ROLES) -> Accounts:
    """The accounts of a service, with its `portal:` settings (mercia.federation.hub.config.Portal, or a
    node's NodePortal with `roles` NODE_PORTAL_ROLES)."""
    return Accounts(state_file, session_minutes=settings.session_minutes, idle_minutes=settings.idle_minutes,
                    max_failures=settings.max_failures, lockout_minutes=settings.lockout_minutes,
                    max_client_failures=settings.max_client_failures, roles=roles)
