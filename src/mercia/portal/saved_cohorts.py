"""Cohort definitions saved in the portal, per project and by name (in the hub's state file).

    cohorts = SavedCohorts(state_dir / "hub.sqlite")
    cohorts.save("diabetes", "t2d-metformin", definition, saved_by="rita")   # adds, or replaces that name
    cohorts.list("diabetes")           # [SavedCohort(project, name, cohort_name, saved_by, saved_at)], by name
    cohorts.get("diabetes", "t2d-metformin")  # the CohortDefinition (NotFoundError if none)
    cohorts.entry("diabetes", "t2d-metformin")  # its SavedCohort: who saved it, when (NotFoundError if none)
    cohorts.delete("diabetes", "t2d-metformin")

A saved cohort belongs to its project: the pages check the caller's project (`require_project`) before
calling any of these, as the API checks a project. The definition is kept in the cohort model's JSON
form and read back by the same reader as any definition (`definition_from_data`), so a cohort reopened
is the cohort saved; other pages (a study's cohorts) pick them with `list` and `get`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mercia.cohorts.loader import definition_from_data
from mercia.cohorts.model import CohortDefinition
from mercia.errors import MerciaError
from mercia.federation.hub.registry import NotFoundError
from mercia.federation.sqlite_store import SqliteStore, timestamp

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,79}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS portal_cohorts (
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    definition TEXT NOT NULL,
    saved_by TEXT NOT NULL,
    saved_at TEXT NOT NULL,
    PRIMARY KEY (project, name)
);
"""


@dataclass(frozen=True)
class SavedCohort:
    project: str
    name: str
    cohort_name: str
    saved_by: str
    saved_at: str


def check_cohort_name(name: str) -> str:
    """A saved cohort's name: 1 to 80 letters, digits, spaces, dots, dashes or underscores."""
    if not NAME.match(name):
        raise MerciaError(f"save as: {name!r} is not a name for a saved cohort (1 to 80 letters, digits, spaces, "
                          "'.', '-' or '_', starting with a letter or digit)")
    return name


class SavedCohorts(SqliteStore):
    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA)

    def save(self, project: str, name: str, definition: CohortDefinition, *, saved_by: str) -> SavedCohort:
        check_cohort_name(name)
        at = timestamp()
        with self._tx() as con:
            con.execute("INSERT INTO portal_cohorts (project, name, definition, saved_by, saved_at) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (project, name) DO UPDATE SET "
                        "definition = excluded.definition, saved_by = excluded.saved_by, saved_at = excluded.saved_at",
                        (project, name, json.dumps(definition.to_dict(), sort_keys=True), saved_by, at))
        return SavedCohort(project, name, definition.name, saved_by, at)

    def list(self, project: str) -> list[SavedCohort]:
        rows = self._con().execute("SELECT project, name, definition, saved_by, saved_at FROM portal_cohorts "
                                   "WHERE project = ? ORDER BY name", (project,)).fetchall()
        return [SavedCohort(r["project"], r["name"], json.loads(r["definition"]).get("name", r["name"]),
                            r["saved_by"], r["saved_at"]) for r in rows]

    def get(self, project: str, name: str) -> CohortDefinition:
        row = self._con().execute("SELECT definition FROM portal_cohorts WHERE project = ? AND name = ?",
                                  (project, name)).fetchone()
        if row is None:
            raise NotFoundError(f"no saved cohort {name!r} in project {project!r}")
        return definition_from_data(json.loads(row["definition"]))

    def entry(self, project: str, name: str) -> SavedCohort:
        row = self._con().execute("SELECT project, name, definition, saved_by, saved_at FROM portal_cohorts "
                                  "WHERE project = ? AND name = ?", (project, name)).fetchone()
        if row is None:
            raise NotFoundError(f"no saved cohort {name!r} in project {project!r}")
        return SavedCohort(row["project"], row["name"], json.loads(row["definition"]).get("name", row["name"]),
                           row["saved_by"], row["saved_at"])

    def delete(self, project: str, name: str) -> None:
        with self._tx() as con:
            gone = con.execute("DELETE FROM portal_cohorts WHERE project = ? AND name = ?", (project, name)).rowcount
        if not gone:
            raise NotFoundError(f"no saved cohort {name!r} in project {project!r}")
