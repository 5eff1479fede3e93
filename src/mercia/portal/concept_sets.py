"""Concept sets built in the portal: kept per project and author in the hub's state file, exported as
ATLAS concept-set JSON, and turned into a cohort definition whose count is "persons with a record".

    store = ConceptSetStore(state_dir / "hub.sqlite")
    cs = store.create("proj", "rosa", "Type 2 diabetes")
    store.save(cs.id, name=..., items=[Item(201826, include_descendants=True), ...])
    atlas_expression(cs, concepts)   # {"items": [{"concept": {...}, "isExcluded": ..., ...}]} as ATLAS exports it
    parse_atlas(text)                # the inverse: ATLAS concept-set JSON (or a cohort's ConceptSets) -> sets
    store.create_many("proj", "rosa", [ImportedSet("GI bleed", (Item(192671, include_descendants=True),))])
    record_cohort(cs)                # an ATLAS/Circe cohort: the first record of the set in any domain

A set belongs to one project: every member of the project sees it; its author and the project's admins
change it. Items carry OHDSI's three flags (exclude, include descendants, include mapped), resolved as
Circe resolves them (mercia.vocab.concept_sets) against the hub's vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mercia.errors import MerciaError
from mercia.federation.sqlite_store import SqliteStore, timestamp

MAX_ITEMS = 500
MAX_NAME = 200
MAX_IMPORTED_SETS = 50  # a cohort's ConceptSets imported at once
ATLAS_FLAGS = (("isExcluded", "is_excluded"), ("includeDescendants", "include_descendants"),
               ("includeMapped", "include_mapped"))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS portal_concept_sets (
    id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL, owner TEXT NOT NULL, name TEXT NOT NULL,
    items TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS portal_concept_sets_project ON portal_concept_sets (project);
"""

# The domains whose records the count looks for, as Circe criteria (each with the set as its codeset).
RECORD_CRITERIA = ("ConditionOccurrence", "DrugExposure", "ProcedureOccurrence", "Measurement", "Observation",
                   "DeviceExposure", "VisitOccurrence")


class ConceptSetError(MerciaError):
    """Bad input to a concept set (its name, an item)."""


class ConceptSetNotFound(MerciaError):
    status_code = 404


@dataclass(frozen=True)
class Item:
    concept_id: int
    is_excluded: bool = False
    include_descendants: bool = False
    include_mapped: bool = False


@dataclass(frozen=True)
class PortalConceptSet:
    id: int
    project: str
    owner: str
    name: str
    items: tuple[Item, ...] = field(default_factory=tuple)
    created_at: str = ""
    updated_at: str = ""

    def item_dicts(self) -> list[dict[str, Any]]:
        return [asdict(i) for i in self.items]


def check_set_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or any(ord(ch) < 32 for ch in name):
        raise ConceptSetError(f"name: give 1 to {MAX_NAME} characters (no control characters)")
    return name


def check_concept_id(value: Any) -> int:
    text = str(value).strip()
    if not text.isdigit() or not 0 < int(text) <= 2_147_483_647:
        raise ConceptSetError(f"concept_id: {text[:20]!r} is not a concept id (a whole number from 1 to 2147483647)")
    return int(text)


class ConceptSetStore(SqliteStore):
    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA)

    @staticmethod
    def _row(r: Any) -> PortalConceptSet:
        return PortalConceptSet(r["id"], r["project"], r["owner"], r["name"],
                                tuple(Item(**i) for i in json.loads(r["items"])), r["created_at"], r["updated_at"])

    def in_projects(self, projects: list[str]) -> list[PortalConceptSet]:
        if not projects:
            return []
        marks = ",".join("?" * len(projects))
        return [self._row(r) for r in self._con().execute(
            f"SELECT * FROM portal_concept_sets WHERE project IN ({marks}) ORDER BY project, name, id", projects)]

    def get(self, set_id: int) -> PortalConceptSet:
        r = self._con().execute("SELECT * FROM portal_concept_sets WHERE id = ?", (set_id,)).fetchone()
        if r is None:
            raise ConceptSetNotFound(f"no concept set {set_id} in your projects")
        return self._row(r)

    def create(self, project: str, owner: str, name: str) -> PortalConceptSet:
        now = timestamp()
        with self._tx() as con:
            cur = con.execute("INSERT INTO portal_concept_sets (project, owner, name, items, created_at, updated_at) "
                              "VALUES (?, ?, ?, '[]', ?, ?)", (project, owner, check_set_name(name), now, now))
            set_id = int(cur.lastrowid or 0)
        return self.get(set_id)

    def save(self, set_id: int, *, name: str, items: list[Item]) -> PortalConceptSet:
        if len(items) > MAX_ITEMS:
            raise ConceptSetError(f"items: a concept set holds at most {MAX_ITEMS} concepts")
        unique = list({i.concept_id: i for i in items}.values())
        with self._tx() as con:
            con.execute("UPDATE portal_concept_sets SET name = ?, items = ?, updated_at = ? WHERE id = ?",
                        (check_set_name(name), json.dumps([asdict(i) for i in unique]), timestamp(), set_id))
        return self.get(set_id)

    def create_many(self, project: str, owner: str, sets: list[ImportedSet]) -> list[PortalConceptSet]:
        """New sets with their items, all in one transaction: every one is saved, or none."""
        for one_set in sets:
            check_set_name(one_set.name)
            if len(one_set.items) > MAX_ITEMS:
                raise ConceptSetError(f"items: a concept set holds at most {MAX_ITEMS} concepts")
        now = timestamp()
        ids = []
        with self._tx() as con:
            for one_set in sets:
                unique = list({i.concept_id: i for i in one_set.items}.values())
                cur = con.execute(
                    "INSERT INTO portal_concept_sets (project, owner, name, items, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (project, owner, check_set_name(one_set.name), json.dumps([asdict(i) for i in unique]), now, now))
                ids.append(int(cur.lastrowid or 0))
        return [self.get(i) for i in ids]

    def delete(self, set_id: int) -> None:
        with self._tx() as con:
            con.execute("DELETE FROM portal_concept_sets WHERE id = ?", (set_id,))


def _standard_caption(code: str | None) -> str:
    return {"S": "Standard", "C": "Classification"}.get(code or "", "Non-Standard")


def atlas_expression(cs: PortalConceptSet, concepts: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The set's expression as ATLAS exports it (its "items", each with the CONCEPT fields in capitals)."""
    items = []
    for i in cs.items:
        c = concepts.get(i.concept_id, {})
        concept: dict[str, Any] = {"CONCEPT_ID": i.concept_id}
        if c:
            concept.update({
                "CONCEPT_NAME": c["concept_name"], "STANDARD_CONCEPT": c["standard_concept"] or "N",
                "STANDARD_CONCEPT_CAPTION": _standard_caption(c["standard_concept"]),
                "INVALID_REASON": c["invalid_reason"] or "V",
                "INVALID_REASON_CAPTION": "Valid" if not c["invalid_reason"] else "Invalid",
                "CONCEPT_CODE": c["concept_code"], "DOMAIN_ID": c["domain_id"], "VOCABULARY_ID": c["vocabulary_id"],
                "CONCEPT_CLASS_ID": c["concept_class_id"]})
        items.append({"concept": concept, "isExcluded": i.is_excluded, "includeDescendants": i.include_descendants,
                      "includeMapped": i.include_mapped})
    return {"items": items}


@dataclass(frozen=True)
class ImportedSet:
    """One concept set read from ATLAS JSON: its name there ("" when the JSON gives none) and its items;
    `where` names it in messages (e.g. "ConceptSets[2] 'HbA1c'")."""
    name: str
    items: tuple[Item, ...]
    where: str = ""


def _atlas_items(expression: Any, label: str) -> tuple[Item, ...]:
    where = f"{label}: " if label else ""
    if not isinstance(expression, dict) or not isinstance(expression.get("items"), list):
        raise ConceptSetError(f"{where}expression: expected an object with a list \"items\" (ATLAS concept-set "
                              "JSON)" if label else "items: expected a list of {\"concept\": ...} items")
    raw_items = expression["items"]
    if len(raw_items) > MAX_ITEMS:
        raise ConceptSetError(f"{where}items: a concept set holds at most {MAX_ITEMS} concepts, this one "
                              f"{len(raw_items)}")
    items = []
    for k, raw in enumerate(raw_items):
        at = f"{where}items[{k}]"
        concept = raw.get("concept") if isinstance(raw, dict) else None
        if not isinstance(concept, dict) or "CONCEPT_ID" not in concept:
            raise ConceptSetError(f"{at}: expected {{\"concept\": {{\"CONCEPT_ID\": ...}}, \"isExcluded\": ..., "
                                  "\"includeDescendants\": ..., \"includeMapped\": ...}")
        cid = concept["CONCEPT_ID"]
        if isinstance(cid, bool) or not isinstance(cid, int | str):
            raise ConceptSetError(f"{at}.concept.CONCEPT_ID: {str(cid)[:20]!r} is not a concept id (a whole number "
                                  "from 1 to 2147483647)")
        try:
            concept_id = check_concept_id(cid)
        except ConceptSetError:
            raise ConceptSetError(f"{at}.concept.CONCEPT_ID: {str(cid)[:20]!r} is not a concept id (a whole number "
                                  "from 1 to 2147483647)") from None
        flags = {}
        for atlas, ours in ATLAS_FLAGS:
            value = raw.get(atlas, False)  # ATLAS leaves a false flag out of some exports
            if value is None:
                value = False
            if not isinstance(value, bool):
                raise ConceptSetError(f"{at}.{atlas}: {str(value)[:20]!r} is not true or false")
            flags[ours] = value
        items.append(Item(concept_id, **flags))
    return tuple(items)


def parse_atlas(text: str) -> list[ImportedSet]:
    """Concept sets from ATLAS JSON, the inverse of `atlas_expression`. Accepted: a concept-set
    expression as ATLAS exports it ({"items": [...]}); a concept set with its expression
    ({"name": ..., "expression": {"items": [...]}}, as in a cohort's ConceptSets); a cohort definition
    (its every ConceptSets entry); a list of concept sets. Every item is checked; the first bad one is
    named in the ConceptSetError, and nothing is returned."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        detail = f"line {e.lineno} column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else "too deep"
        raise ConceptSetError(f"ATLAS JSON: not JSON ({detail})") from None
    if isinstance(data, dict) and "items" in data:
        return [ImportedSet("", _atlas_items(data, ""), "")]
    if isinstance(data, dict) and "expression" in data:
        entries, where = [data], "the concept set"
    elif isinstance(data, dict) and isinstance(data.get("ConceptSets", data.get("conceptSets")), list):
        entries, where = data.get("ConceptSets", data.get("conceptSets")), "ConceptSets"
    elif isinstance(data, list):
        entries, where = data, "concept sets"
    else:
        raise ConceptSetError("ATLAS JSON: expected ATLAS concept-set JSON: {\"items\": [...]}, a concept set "
                              "{\"name\": ..., \"expression\": {\"items\": [...]}}, or a cohort definition with "
                              "\"ConceptSets\"")
    if not entries:
        raise ConceptSetError(f"{where}: the JSON holds no concept set")
    if len(entries) > MAX_IMPORTED_SETS:
        raise ConceptSetError(f"{where}: at most {MAX_IMPORTED_SETS} concept sets at once, this JSON has {len(entries)}")
    out = []
    for k, entry in enumerate(entries):
        label = where if where == "the concept set" else f"{where}[{k}]"
        if not isinstance(entry, dict):
            raise ConceptSetError(f"{label}: expected a concept set {{\"name\": ..., \"expression\": {{\"items\": [...]}}}}")
        name = entry.get("name")
        name = name.strip()[:MAX_NAME] if isinstance(name, str) else ""
        if name:
            label += f" {name[:60]!r}"
        out.append(ImportedSet(name, _atlas_items(entry.get("expression"), label), label))
    return out


def record_cohort(cs: PortalConceptSet) -> dict[str, Any]:
    """An ATLAS/Circe cohort whose persons are those with a record of the set in any of RECORD_CRITERIA's
    domains (within an observation period): the question "how many persons have a record of the set"."""
    return {
        "ConceptSets": [{"id": 0, "name": cs.name, "expression": atlas_expression(cs, {})}],
        "PrimaryCriteria": {"CriteriaList": [{k: {"CodesetId": 0}} for k in RECORD_CRITERIA],
                            "ObservationWindow": {"PriorDays": 0, "PostDays": 0},
                            "PrimaryCriteriaLimit": {"Type": "First"}},
        "QualifiedLimit": {"Type": "First"}, "ExpressionLimit": {"Type": "First"},
        "InclusionRules": [], "CensoringCriteria": [], "CollapseSettings": {"CollapseType": "ERA", "EraPad": 0},
    }
