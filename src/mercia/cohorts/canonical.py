"""The canonical form of a cohort definition: what it selects, without how it was written.

Two definitions that select the same rows by the same logic get the same canonical form, however their
author named, numbered or ordered things. It is the identity of a count query (a node's lockout, its
cache of released answers and its privacy-budget ledger key on it), so that renaming a concept set or
an inclusion rule does not make a "new" query with a fresh answer.

What is removed or normalised, and why it cannot change the rows:

* names, descriptions, titles, the cdm version range and every concept's display fields (name, code,
  vocabulary ...): the compiler reads only concept ids;
* concept-set ids: every reference (`codeset_id`, `drug_codeset_id`) is renumbered by the concept
  set's content, so the numbering the author chose is gone; concept sets nobody references are dropped
  and two sets with the same items become one;
* the order of items in a concept set, of concepts in a concept list (a gender list is an IN list),
  and of the members of a criteria group (ALL/ANY/AT_LEAST/AT_MOST of them does not depend on order).

The order of primary criteria and of inclusion rules is kept: the first decides ties between entry
events on the same day, the second is the order of the attrition steps a count releases.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mercia.cohorts.model import CohortDefinition, CohortExpression

FORMAT = "mercia-canonical-cohort/1"
_REFERENCE_KEYS = frozenset({"codeset_id", "drug_codeset_id"})
_COSMETIC_KEYS = frozenset({"name", "description", "title", "cdm_version_range"})
_CONCEPT_DISPLAY = frozenset({
    "concept_name", "standard_concept", "standard_concept_caption", "invalid_reason", "invalid_reason_caption",
    "concept_code", "domain_id", "vocabulary_id", "concept_class_id", "valid_start_date", "valid_end_date",
})
# The lists of a criteria group whose members are combined by the group's type, never in order. (The
# primary criteria's list is also called criteria_list, but its order breaks ties: it is kept.)
_UNORDERED_LISTS = frozenset({"criteria_list", "demographic_criteria_list", "groups"})
_GROUP_FIELDS = frozenset({"type", "count"}) | _UNORDERED_LISTS


def parse_definition(definition: Any) -> CohortDefinition:
    """A cohort definition sent as data (one reader for node and hub: `loader.definition_from_data`)."""
    from mercia.cohorts.loader import definition_from_data

    return definition_from_data(definition)


def _dumps(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)


def _concept_set_content(cs: dict[str, Any]) -> list[list[Any]]:
    """A concept set as the sorted, de-duplicated list of what the compiler reads from each item."""
    items = {(int(i["concept"]["concept_id"]), bool(i.get("is_excluded", False)),
              bool(i.get("include_descendants", False)), bool(i.get("include_mapped", False)))
             for i in cs.get("expression", {}).get("items", [])}
    return [list(t) for t in sorted(items)]


def _references(v: Any, found: set[int]) -> None:
    if isinstance(v, dict):
        for k, x in v.items():
            if k in _REFERENCE_KEYS and isinstance(x, int):
                found.add(x)
            else:
                _references(x, found)
    elif isinstance(v, list):
        for x in v:
            _references(x, found)


def _normalise(v: Any, renumber: dict[int, int], unordered: bool = False) -> Any:
    if isinstance(v, dict):
        if "concept_id" in v and set(v) - {"concept_id"} <= _CONCEPT_DISPLAY:
            return {"concept_id": v["concept_id"]}
        group = "type" in v and set(v) <= _GROUP_FIELDS
        out = {}
        for k, x in v.items():
            if k in _COSMETIC_KEYS:
                continue
            if k in _REFERENCE_KEYS and isinstance(x, int):
                out[k] = renumber.get(x, -1 - x)  # a reference to no concept set stays unlike any other
            else:
                out[k] = _normalise(x, renumber, group and k in _UNORDERED_LISTS)
        return out
    if isinstance(v, list):
        items = [_normalise(x, renumber) for x in v]
        concepts_only = bool(items) and all(isinstance(x, dict) and set(x) == {"concept_id"} for x in items)
        if unordered or concepts_only:
            # De-duplicated too for concept lists: an IN list with a concept twice is the same IN list.
            ordered = sorted(items, key=_dumps)
            if concepts_only:
                ordered = [x for i, x in enumerate(ordered) if i == 0 or x != ordered[i - 1]]
            return ordered
        return items
    return v


def canonical_expression(expression: CohortExpression) -> dict[str, Any]:
    """The canonical form of an expression, as JSON-ready data (see the module docstring)."""
    d = expression.model_dump(mode="json", exclude_none=True)
    concept_sets = d.pop("concept_sets", [])
    used: set[int] = set()
    _references(d, used)
    content = {cs["id"]: _dumps(_concept_set_content(cs)) for cs in concept_sets if cs["id"] in used}
    # Numbered by content: the same items get the same number whatever id the author gave them.
    numbers = {c: i for i, c in enumerate(sorted(set(content.values())))}
    renumber = {old: numbers[c] for old, c in content.items()}
    body = _normalise(d, renumber)
    body["concept_sets"] = [{"id": i, "items": json.loads(c)} for c, i in sorted(numbers.items(), key=lambda t: t[1])]
    return {"format": FORMAT, "expression": body}


def canonical_hash(definition: CohortDefinition | CohortExpression) -> str:
    """sha256 (hex) of the canonical form: equal for definitions that differ only in names, concept-set
    numbering or the order of unordered parts."""
    expression = definition.expression if isinstance(definition, CohortDefinition) else definition
    return hashlib.sha256(_dumps(canonical_expression(expression)).encode("utf-8")).hexdigest()
