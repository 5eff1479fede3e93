"""A summary of a CDM: what it holds, at a glance, as JSON-serialisable aggregates (no rows)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlglot import exp

from mercia.cdm.handle import Cdm


def cdm_info(cdm: Cdm) -> dict[str, Any]:
    """Persons, observation span, rows per existing table, CDM and vocabulary versions, source name.

    Dates are ISO strings; values that the CDM does not hold are None.
    """
    rows = {name: cdm.row_count(name) for name in cdm.spec.tables if cdm.table_exists(name)}
    source = _cdm_source(cdm) if rows.get("cdm_source") else {}
    start = end = None
    if rows.get("observation_period"):
        op = cdm.table("observation_period")
        start, end = cdm.fetch_all(
            exp.select(
                exp.Min(this=exp.column("observation_period_start_date")),
                exp.Max(this=exp.column("observation_period_end_date")),
            ).from_(op)
        )[0]
    return {
        "target": _redacted_target(cdm),
        "engine": cdm.dialect,
        "cdm_version": cdm.version,
        "cdm_source_name": source.get("cdm_source_name"),
        "cdm_source_abbreviation": source.get("cdm_source_abbreviation"),
        "vocabulary_version": _vocabulary_version(cdm, rows, source),
        "persons": rows.get("person", 0),
        "observation_start": _iso(start),
        "observation_end": _iso(end),
        "rows": rows,
    }


def _cdm_source(cdm: Cdm) -> dict[str, Any]:
    cols = set(cdm.columns("cdm_source") or [])
    wanted = [c for c in ("cdm_source_name", "cdm_source_abbreviation", "vocabulary_version") if c in cols]
    if not wanted:
        return {}
    found = cdm.fetch_all(
        exp.select(*[exp.column(c) for c in wanted]).from_(cdm.table("cdm_source")).limit(1)
    )
    return dict(zip(wanted, found[0], strict=True)) if found else {}


def _vocabulary_version(cdm: Cdm, rows: dict[str, int], source: dict[str, Any]) -> str | None:
    # Athena writes the release into the vocabulary row whose id is 'None'; cdm_source is the fallback.
    if rows.get("vocabulary"):
        q = (
            exp.select(exp.column("vocabulary_version"))
            .from_(cdm.table("vocabulary"))
            .where(exp.column("vocabulary_id").eq(exp.Placeholder(this="vid")))
        )
        version = cdm.scalar(q, {"vid": "None"})
        if version:
            return str(version)
    v = source.get("vocabulary_version")
    return str(v) if v else None


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        value = value.date()
    return value.isoformat()


def _redacted_target(cdm: Cdm) -> str:
    from mercia.cdm.engines import redact

    return redact(cdm.target)
