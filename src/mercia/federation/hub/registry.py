"""The hub's registry: nodes, projects, studies, each site's progress and each site's results.

SQLite (WAL) in the hub's state folder. A site's results are stored once per (study hash, site):
the insert is ignored if they are already there, so a retried or repeated collection can never count
a site twice. The node tokens here are the hub's credentials towards each node (it must present
them, so they are kept as given; the file is private to the hub, mode 0600). The tokens that users
present to the hub are in the hub's token file, hashed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mercia.errors import ConfigError, MerciaError
from mercia.federation.sqlite_store import SqliteStore, timestamp

# Site states at the hub: the node's own study statuses, and the hub's view of the link.
NODE_STATUSES = ("pending_approval", "approved", "running", "held", "finished", "failed", "rejected", "withheld")
SITE_STATUSES = ("queued", *NODE_STATUSES, "collected", "excluded")
# A site in one of these needs nothing more from the dispatcher.
TERMINAL = frozenset({"collected", "failed", "rejected", "withheld", "excluded"})
# ... of which these end without results: closing a study leaves them as they are.
ANSWERED = ("collected", "failed", "rejected", "withheld")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY, url TEXT NOT NULL, token TEXT NOT NULL, verify TEXT, added_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS projects (name TEXT PRIMARY KEY, sites TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    hash TEXT PRIMARY KEY, name TEXT NOT NULL, project TEXT NOT NULL, submitted_by TEXT NOT NULL,
    package TEXT NOT NULL, signature TEXT NOT NULL, status TEXT NOT NULL, submitted_at TEXT NOT NULL,
    closed_at TEXT, pooled TEXT);
CREATE TABLE IF NOT EXISTS site_runs (
    hash TEXT NOT NULL, site TEXT NOT NULL, status TEXT NOT NULL, submitted INTEGER NOT NULL DEFAULT 0,
    reachable INTEGER NOT NULL DEFAULT 1, attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL,
    last_error TEXT, detail TEXT, updated_at TEXT NOT NULL, PRIMARY KEY (hash, site));
CREATE TABLE IF NOT EXISTS site_results (
    hash TEXT NOT NULL, site TEXT NOT NULL, received_at TEXT NOT NULL, results TEXT NOT NULL,
    PRIMARY KEY (hash, site));
"""


class NotFoundError(MerciaError):
    status_code = 404


@dataclass(frozen=True)
class Node:
    name: str
    url: str
    token: str
    verify: str | None  # None: the system's CAs; "false": no check (tests); else a CA bundle path

    def httpx_verify(self) -> Any:
        import ssl

        if self.verify is None:
            return True
        return False if self.verify == "false" else ssl.create_default_context(cafile=self.verify)

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url}


@dataclass(frozen=True)
class SiteRun:
    hash: str
    site: str
    status: str
    submitted: bool
    reachable: bool
    attempts: int
    next_try: float
    last_error: str | None
    detail: str | None
    updated_at: str

    def public(self) -> dict[str, Any]:
        return {"site": self.site, "status": self.status, "reachable": self.reachable, "attempts": self.attempts,
                "last_error": self.last_error, "detail": self.detail, "updated_at": self.updated_at}


class HubStore(SqliteStore):
    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA, private=True)  # private: it holds the hub's node tokens

    # ---- nodes and projects ------------------------------------------------------------------------
    def add_node(self, name: str, url: str, token: str, verify: str | None = None) -> Node:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"node URL {url!r}: give http://host:port or https://host:port")
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO nodes (name, url, token, verify, added_at) VALUES (?, ?, ?, ?, ?)",
                        (name, url.rstrip("/"), token, verify, timestamp()))
        return self.node(name)

    def node(self, name: str) -> Node:
        row = self._con().execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no node named {name!r} is registered; register it with mercia hub node add")
        return Node(row["name"], row["url"], row["token"], row["verify"])

    def nodes(self) -> list[Node]:
        return [Node(r["name"], r["url"], r["token"], r["verify"])
                for r in self._con().execute("SELECT * FROM nodes ORDER BY name")]

    def add_project(self, name: str, sites: list[str]) -> dict[str, Any]:
        known = {n.name for n in self.nodes()}
        unknown = sorted(set(sites) - known)
        if unknown:
            raise ConfigError(f"project {name!r}: sites {unknown} are not registered nodes ({sorted(known)})")
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO projects (name, sites) VALUES (?, ?)",
                        (name, json.dumps(sorted(set(sites)))))
        return {"name": name, "sites": sorted(set(sites))}

    def project_sites(self, name: str) -> list[str]:
        row = self._con().execute("SELECT sites FROM projects WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no project named {name!r}; an admin creates it with mercia hub project add")
        return list(json.loads(row["sites"]))

    def projects(self) -> list[dict[str, Any]]:
        return [{"name": r["name"], "sites": json.loads(r["sites"])}
                for r in self._con().execute("SELECT * FROM projects ORDER BY name")]

    # ---- studies -------------------------------------------------------------------------------------
    def add_study(self, content_hash: str, *, name: str, project: str, submitted_by: str,
                  package: dict[str, Any], signature: str, sites: list[str]) -> bool:
        """Record a study and queue it at each site; False if this hash is already here."""
        now = timestamp()
        with self._tx() as con:
            cur = con.execute(
                "INSERT OR IGNORE INTO studies (hash, name, project, submitted_by, package, signature, status, "
                "submitted_at) VALUES (?, ?, ?, ?, ?, ?, 'open', ?)",
                (content_hash, name, project, submitted_by, json.dumps(package, sort_keys=True), signature, now))
            if cur.rowcount == 0:
                return False
            for s in sites:
                con.execute("INSERT INTO site_runs (hash, site, status, next_try, updated_at) VALUES (?, ?, 'queued', 0, ?)",
                            (content_hash, s, now))
        return True

    def study(self, content_hash: str) -> dict[str, Any]:
        row = self._con().execute("SELECT * FROM studies WHERE hash = ?", (content_hash,)).fetchone()
        if row is None:
            raise NotFoundError(f"no study with hash {content_hash!r} at this hub")
        return dict(row)

    def studies(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._con().execute(
            "SELECT hash, name, project, submitted_by, status, submitted_at, closed_at FROM studies "
            "ORDER BY submitted_at")]

    def site_runs(self, content_hash: str) -> list[SiteRun]:
        return [self._run(r) for r in self._con().execute(
            "SELECT * FROM site_runs WHERE hash = ? ORDER BY site", (content_hash,))]

    @staticmethod
    def _run(r: sqlite3.Row) -> SiteRun:
        return SiteRun(r["hash"], r["site"], r["status"], bool(r["submitted"]), bool(r["reachable"]), r["attempts"],
                       r["next_try"], r["last_error"], r["detail"], r["updated_at"])

    def due_runs(self, now: float | None = None) -> list[SiteRun]:
        """Site runs of open studies that need the dispatcher now."""
        now = time.time() if now is None else now
        terminal = ",".join(f"'{s}'" for s in sorted(TERMINAL))  # constants, not user text
        q = (f"SELECT r.* FROM site_runs r JOIN studies s ON s.hash = r.hash WHERE s.status = 'open' "
             f"AND r.status NOT IN ({terminal}) AND r.next_try <= ? ORDER BY r.next_try")
        return [self._run(r) for r in self._con().execute(q, (now,))]

    def update_run(self, content_hash: str, site: str, **fields: Any) -> None:
        allowed = {"status", "submitted", "reachable", "attempts", "next_try", "last_error", "detail"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown site_run fields {bad}")
        cols = ", ".join(f"{k} = ?" for k in fields)  # names from the fixed set above
        with self._tx() as con:
            # Never move a site out of a terminal state (a late answer after close changes nothing).
            con.execute(
                f"UPDATE site_runs SET {cols}, updated_at = ? WHERE hash = ? AND site = ? "
                "AND status NOT IN ('collected', 'excluded')",
                (*fields.values(), timestamp(), content_hash, site))

    def store_results(self, content_hash: str, site: str, results: dict[str, Any]) -> bool:
        """Keep a site's released results once; True if this call stored them."""
        with self._tx() as con:
            row = con.execute("SELECT status FROM site_runs WHERE hash = ? AND site = ?",
                              (content_hash, site)).fetchone()
            if row is None or row["status"] == "excluded":
                return False  # the study was closed without this site: a late answer is not counted
            cur = con.execute("INSERT OR IGNORE INTO site_results (hash, site, received_at, results) VALUES (?, ?, ?, ?)",
                              (content_hash, site, timestamp(), json.dumps(results)))
            con.execute("UPDATE site_runs SET status = 'collected', reachable = 1, last_error = NULL, detail = NULL, "
                        "updated_at = ? WHERE hash = ? AND site = ?", (timestamp(), content_hash, site))
            return cur.rowcount == 1

    def results(self, content_hash: str) -> dict[str, dict[str, Any]]:
        return {r["site"]: json.loads(r["results"]) for r in self._con().execute(
            "SELECT site, results FROM site_results WHERE hash = ? ORDER BY site", (content_hash,))}

    def close(self, content_hash: str, pool: Callable[[dict[str, dict[str, Any]]], dict[str, Any]]
              ) -> tuple[list[str], dict[str, Any]]:
        """Close the study in one transaction: sites still out are excluded (late results are not
        counted), the collected results are pooled by `pool`, and the study is marked closed with
        its pooling, so nobody ever sees a closed study without its pooled results."""
        with self._tx() as con:
            row = con.execute("SELECT status, pooled FROM studies WHERE hash = ?", (content_hash,)).fetchone()
            if row is None:
                raise NotFoundError(f"no study with hash {content_hash!r} at this hub")
            if row["status"] == "closed":
                return [], json.loads(row["pooled"] or "{}")
            answered = ", ".join(f"'{s}'" for s in ANSWERED)  # fixed names above
            excluded = [r["site"] for r in con.execute(
                f"SELECT site FROM site_runs WHERE hash = ? AND status NOT IN ({answered})", (content_hash,))]
            con.execute(f"UPDATE site_runs SET status = 'excluded', updated_at = ? WHERE hash = ? AND "
                        f"status NOT IN ({answered})", (timestamp(), content_hash))
            results = {r["site"]: json.loads(r["results"]) for r in con.execute(
                "SELECT site, results FROM site_results WHERE hash = ? ORDER BY site", (content_hash,))}
            pooled = {**pool(results), "excluded": excluded}
            con.execute("UPDATE studies SET status = 'closed', closed_at = ?, pooled = ? WHERE hash = ?",
                        (timestamp(), json.dumps(pooled), content_hash))
        return excluded, pooled
