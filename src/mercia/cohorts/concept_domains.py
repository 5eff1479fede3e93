"""Concept sets used in a criterion of another domain: a drug concept in a condition criterion finds nothing.

OMOP puts each record in the table of its concept's domain, so a ConditionOccurrence criterion whose
concept set holds only drug concepts matches 0 persons, silently (ATLAS does not warn either; like
Circe, the criterion itself still looks only at concept ids, so a CDM that does keep such a record in
that table still finds it). This
module finds, for each definition, the concept set items whose vocabulary domain is not that of a
criterion using the set, with one query on the CDM's CONCEPT table, and says which concept, its name
and its domain.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cohorts.model import (
    CohortDefinition,
    CohortExpression,
    Concept,
    ConceptSet,
    Criteria,
    CustomEraStrategy,
)


class ConceptDomainWarning(UserWarning):
    """A concept set is used in a criterion of a domain its concepts are not in (it matches nothing there)."""


# The domain of the concepts each criterion's concept set selects (Circe's domain criteria; Death, whose
# cause may be of several domains, and the criteria without a concept set are not checked).
CRITERION_DOMAIN = {
    "condition_occurrence": "Condition",
    "condition_era": "Condition",
    "drug_exposure": "Drug",
    "drug_era": "Drug",
    "dose_era": "Drug",
    "procedure_occurrence": "Procedure",
    "measurement": "Measurement",
    "observation": "Observation",
    "device_exposure": "Device",
    "visit_occurrence": "Visit",
    "visit_detail": "Visit",
    "specimen": "Specimen",
}
_SHOWN = 5  # concepts named per message


def criterion_uses(expression: CohortExpression) -> Iterator[tuple[int, str, str]]:
    """(codeset id, criterion name as Circe writes it, expected domain) for each use of a concept set."""
    stack: list[Any] = [expression]
    while stack:
        v = stack.pop()
        if isinstance(v, ConceptSet | Concept):
            continue
        if isinstance(v, Criteria):
            domain = v.domain
            codeset = getattr(v.body, "codeset_id", None)
            if domain in CRITERION_DOMAIN and codeset is not None:
                yield int(codeset), type(v).model_fields[domain].alias or domain, CRITERION_DOMAIN[domain]
        if isinstance(v, CustomEraStrategy):
            yield int(v.drug_codeset_id), "CustomEra", "Drug"
        if isinstance(v, BaseModel):
            stack.extend(getattr(v, name) for name in type(v).model_fields)
        elif isinstance(v, list):
            stack.extend(v)


def in_domain(domain_id: str | None, expected: str) -> bool:
    """Whether a concept of `domain_id` belongs in a criterion of `expected` (old vocabularies have compound
    domains such as 'Condition/Meas' or 'Obs/Procedure': any part that abbreviates `expected` will do)."""
    if not domain_id:
        return True  # no domain recorded: nothing to say
    parts = [p.strip().lower() for p in domain_id.split("/")]
    return any(len(p) >= 3 and expected.lower().startswith(p) for p in parts)


def domain_mismatches(cdm: Cdm, definitions: list[CohortDefinition]) -> list[list[str]]:
    """Per definition, a message for each (concept set, criterion) whose concepts are in another domain."""
    uses = [sorted(set(criterion_uses(d.expression))) for d in definitions]
    sets = [{cs.id: cs for cs in d.expression.concept_sets} for d in definitions]
    ids = sorted({i.concept.concept_id for d_uses, d_sets in zip(uses, sets, strict=True) for cs_id, _, _ in d_uses
                  if cs_id in d_sets for i in d_sets[cs_id].expression.items if not i.is_excluded})
    if not ids or not cdm.table_exists("concept"):
        return [[] for _ in definitions]
    q = (
        exp.select(exp.column("concept_id"), exp.column("concept_name"), exp.column("domain_id"))
        .from_(cdm.table("concept"))
        .where(exp.column("concept_id").isin(*[exp.Placeholder(this=f"c{k}") for k in range(len(ids))]))
    )
    found = {int(r[0]): (r[1], r[2]) for r in cdm.fetch_all(q, {f"c{k}": i for k, i in enumerate(ids)})}
    out: list[list[str]] = []
    for d_uses, d_sets in zip(uses, sets, strict=True):
        messages = []
        for cs_id, criterion, expected in d_uses:
            cs = d_sets.get(cs_id)
            if cs is None:
                continue
            wrong = [(i.concept.concept_id, *found[i.concept.concept_id]) for i in cs.expression.items
                     if not i.is_excluded and i.concept.concept_id in found
                     and not in_domain(found[i.concept.concept_id][1], expected)]
            if not wrong:
                continue
            named = ", ".join(f"{cid} {name!r} (domain {dom})" for cid, name, dom in wrong[:_SHOWN])
            more = f" and {len(wrong) - _SHOWN} more" if len(wrong) > _SHOWN else ""
            which = (f"concept {named} is of another domain, recorded in another table: expect it to match nothing"
                     if len(wrong) == 1 else
                     f"concepts {named}{more} are of other domains, recorded in other tables: expect them to "
                     "match nothing")
            messages.append(
                f"concept set {cs.id} ({cs.name!r}) is used in a {criterion} criterion ({expected} concepts), but "
                f"{which}"
            )
        out.append(messages)
    return out
