"""docs/reference/data-quality-checks.md, written from the catalogue
(`python -m mercia.dq.catalogue_doc`)."""

from __future__ import annotations

import re
from collections import Counter

from mercia.cdm.spec import SUPPORTED_VERSIONS, cdm_spec
from mercia.dq.catalogue import (
    CHECK_TYPES_BY_LEVEL,
    CONCEPT_GENDER,
    CONCEPT_RANGES,
    CONCEPT_THRESHOLD,
    CONCEPT_UNITS,
    catalogue,
)
from mercia.dq.concepts import GENDER_TABLE, UNIT_NAMES


def _unit(unit: int) -> str:
    return f"{unit} ({UNIT_NAMES[unit]})" if unit in UNIT_NAMES else str(unit)


def catalogue_markdown() -> str:
    checks = {v: catalogue(cdm_spec(v)) for v in SUPPORTED_VERSIONS}
    lines = [
        "# Data-quality checks",
        "",
        "Generated from `mercia.dq.catalogue` by `python -m mercia.dq.catalogue_doc`; do not edit by hand.",
        "",
        "The check types, their names, their Kahn categories and their default thresholds are those of OHDSI's",
        "[DataQualityDashboard](https://github.com/OHDSI/DataQualityDashboard) (DQD). Mercia derives the check",
        "instances from its own CDM specification (every table of the CDM schema; the vocabulary tables are not",
        "checked). A check fails when its percentage of violated rows is above its threshold, or, for a",
        "threshold of 0, when any row violates it. `mercia dq check` runs them ([how-to](../how-to/check-data-quality.md)).",
        "",
        "## Check types",
        "",
        "| check | level | context | category | subcategory | instances (v5.4 / v5.3) | what it counts |",
        "|---|---|---|---|---|---|---|",
    ]
    counts = {v: Counter((c.name, c.level) for c in cs) for v, cs in checks.items()}
    for (name, level), t in CHECK_TYPES_BY_LEVEL.items():
        n = " / ".join(str(counts[v][(name, level)]) for v in ("5.4", "5.3"))
        what = re.sub(r"\{(\w+)\}", lambda m: f"`{m.group(1).upper()}`", t.description)
        lines.append(f"| `{name}` | {level} | {t.context} | {t.category} | {t.subcategory or '–'} | {n} | {what} |")
    total = " / ".join(str(len(checks[v])) for v in ("5.4", "5.3"))
    lines += ["", f"Check instances in all: {total}.", "",
              "## Field-level instances (CDM v5.4)", "",
              "| table | field | checks (threshold %) |", "|---|---|---|"]
    by_field: dict[tuple[str, str], list[str]] = {}
    for c in checks["5.4"]:
        if c.level == "FIELD" and c.name not in ("cdmField", "measureValueCompleteness", "cdmDatatype"):
            by_field.setdefault((c.table, c.field or ""), []).append(f"`{c.name}` ({c.threshold:g})")
    for (table, field), names in by_field.items():
        lines.append(f"| {table} | {field} | {', '.join(names)} |")
    lines += ["", "Every field also has `cdmField` and `measureValueCompleteness` (threshold 0 for required fields,",
              "100 for the others); every integer field has `cdmDatatype` (0).", "",
              "## Concept-level instances", "",
              "Mercia's own table (`mercia.dq.concepts`, written from clinical knowledge; the source of each group",
              f"of limits is given there), threshold {CONCEPT_THRESHOLD}%: {len(CONCEPT_UNITS)} measurements with",
              f"{len(CONCEPT_RANGES)} ranges by unit, and {len(CONCEPT_GENDER)} sex-specific concepts.", "",
              "`plausibleValueLow` / `plausibleValueHigh` (by measurement and unit):", "",
              "| concept | unit | measurement | low | high |", "|---|---|---|---|---|"]
    for (concept, unit), (label, low, high) in CONCEPT_RANGES.items():
        lines.append(f"| {concept} | {_unit(unit)} | {label} | {low:g} | {high:g} |")
    lines += ["", "| concept | plausible units (`plausibleUnitConceptIds`) |", "|---|---|"]
    for concept, (label, units) in CONCEPT_UNITS.items():
        lines.append(f"| {concept} {label} | {', '.join(_unit(u) for u in units)} |")
    lines += ["", "| concept | domain (table) | plausible gender (`plausibleGender`) |", "|---|---|---|"]
    for concept, (label, gender, domain) in CONCEPT_GENDER.items():
        lines.append(f"| {concept} {label} | {domain} ({GENDER_TABLE[domain][0]}) | {gender} |")
    lines += ["", "The profiles of `mercia dq profile` (Achilles's analyses) are listed in the",
              "[profile reference](data-quality-profiles.md)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(catalogue_markdown(), end="")
