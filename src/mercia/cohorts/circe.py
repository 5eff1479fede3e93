"""Import OHDSI Circe cohort expressions: the JSON ATLAS exports and the Phenotype Library holds.

The model's aliases are Circe's element names, so import is validation: every element must be one
Mercia understands, otherwise the error names it and its JSON path, e.g.
``$.InclusionRules[2].expression.CriteriaList[0].Criteria.ConditionOccurrence.StopReasn: unknown element``.
Every element of Circe-BE 1.12's model imports; the few whose Circe SQL reads a column or table OMOP
CDM 5.3/5.4 do not have are refused when compiled, e.g. ``$.PrimaryCriteria.CriteriaList[0].DrugExposure.
EffectiveDrugDose: not supported (Circe-BE filters drug_exposure.effective_drug_dose, a column CDM 5.3/5.4
do not have)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mercia.cohorts.model import CohortDefinition, CohortExpression, validation_error
from mercia.errors import CohortDefinitionError
from mercia.limits import json_problem


def parse_circe(data: str | bytes | dict[str, Any]) -> CohortExpression:
    """A Circe CohortExpression (JSON text or the parsed object) as Mercia's model."""
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise CohortDefinitionError(
                f"$: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
            ) from None
    if not isinstance(data, dict):
        raise CohortDefinitionError(f"$: a Circe cohort expression is a JSON object, not {type(data).__name__}")
    problem = json_problem(data)
    if problem:
        raise CohortDefinitionError(problem)
    # ATLAS's "export" wraps the expression with the definition's id and name; accept both shapes.
    if "expression" in data and "PrimaryCriteria" not in data:
        inner = data["expression"]
        if isinstance(inner, str):
            return parse_circe(inner)
        data = inner
        if not isinstance(data, dict):
            raise CohortDefinitionError("$.expression: a Circe cohort expression is a JSON object")
    try:
        return CohortExpression.model_validate(data, by_alias=True)
    except ValidationError as e:
        raise validation_error(e) from None


def from_circe_json(
    data: str | bytes | dict[str, Any], name: str | None = None, description: str | None = None
) -> CohortDefinition:
    """A CohortDefinition from Circe JSON. The name defaults to the export's name or the expression's title."""
    raw: Any = data
    if isinstance(data, str | bytes):
        try:
            raw = json.loads(data)
        except json.JSONDecodeError as e:
            raise CohortDefinitionError(
                f"$: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
            ) from None
    expression = parse_circe(raw)
    if name is None and isinstance(raw, dict):
        name = raw.get("name") if "PrimaryCriteria" not in raw else raw.get("Title")
    return CohortDefinition(name=name or "unnamed cohort", description=description, expression=expression)


def load_circe_file(path: str | Path, name: str | None = None) -> CohortDefinition:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise CohortDefinitionError(f"cannot read cohort definition {str(p)!r}: {e.strerror}") from None
    try:
        return from_circe_json(text, name=name or p.stem)
    except CohortDefinitionError as e:
        raise CohortDefinitionError(f"{p.name}: {e}") from None


def to_circe_dict(expression: CohortExpression) -> dict[str, Any]:
    """The expression in Circe's own element names (for ATLAS or the OHDSI tools)."""
    return expression.model_dump(mode="json", by_alias=True, exclude_none=True)
