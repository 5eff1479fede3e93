"""Generate cohorts into a CDM's results schema: the `cohort` rows and their `cohort_definition`.

All definitions of one call are generated in one transaction: a definition's old rows are replaced
by its new ones, and on any error the cohort tables are exactly as before.
"""

from __future__ import annotations

import datetime as dt
import secrets
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cohorts.compiler import CompiledCohort, bound, compile_cohort, lit
from mercia.cohorts.model import CohortDefinition
from mercia.errors import CohortDefinitionError

# The OMOP concept for "cohort" definitions (definition_type_concept_id / subject_concept_id unknown = 0).
_SYNTAX_PREFIX = "mercia-cohort-sha256:"


class InclusionRuleStat(BaseModel):
    """One row of ATLAS's inclusion statistics (Circe's cohort_inclusion_stats)."""

    rule_sequence: int
    name: str
    person_count: int  # events (mode 0) or persons (mode 1) meeting this rule
    gain_count: int  # ... meeting every rule but this one: what dropping the rule would add
    person_total: int  # events or persons before the rules
    mode_id: int  # 0: all qualified events, 1: each person's best event


class SummaryStat(BaseModel):
    mode_id: int
    base_count: int
    final_count: int


class CohortResult(BaseModel):
    cohort_id: int
    name: str
    persons: int
    entries: int
    attrition: list[InclusionRuleStat] = Field(default_factory=list)
    summary: list[SummaryStat] = Field(default_factory=list)
    # (mode_id, inclusion_rule_mask) -> count, as Circe's cohort_inclusion_result
    mask_counts: dict[tuple[int, int], int] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    definition_hash: str = ""


class UnknownConceptWarning(UserWarning):
    """A concept set names concept ids the CDM's vocabulary does not have (they match nothing)."""


def inclusion_stats(
    mask_counts: dict[tuple[int, int], int], rule_names: list[str]
) -> tuple[list[InclusionRuleStat], list[SummaryStat]]:
    """Circe's cohortInclusionAnalysis from the per-mask counts."""
    n = len(rule_names)
    stats: list[InclusionRuleStat] = []
    summary: list[SummaryStat] = []
    all_bits = 2**n - 1
    for mode in (0, 1):
        masks = {mask: c for (md, mask), c in mask_counts.items() if md == mode}
        total = sum(masks.values())
        summary.append(SummaryStat(mode_id=mode, base_count=total, final_count=masks.get(all_bits, 0)))
        for i, name in enumerate(rule_names):
            stats.append(InclusionRuleStat(
                rule_sequence=i, name=name, mode_id=mode, person_total=total,
                person_count=sum(c for mask, c in masks.items() if mask & (1 << i)),
                gain_count=masks.get(all_bits - (1 << i), 0),
            ))
    return stats, summary


def _concept_ids(definition: CohortDefinition) -> list[int]:
    return [i.concept.concept_id for cs in definition.expression.concept_sets for i in cs.expression.items]


def _unknown_concepts(cdm: Cdm, definition: CohortDefinition) -> list[str]:
    from mercia.vocab.concept_sets import unknown_concept_ids

    ids = _concept_ids(definition)
    if not ids or not cdm.table_exists("concept"):
        return []
    unknown = set(unknown_concept_ids(cdm, ids))
    out = []
    for cs in definition.expression.concept_sets:
        missing = sorted({i.concept.concept_id for i in cs.expression.items} & unknown)
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            out.append(
                f"concept set {cs.id} ({cs.name!r}): concept id(s) {shown} are not in this CDM's vocabulary "
                "and match nothing"
            )
    return out


def _existing_definitions(cdm: Cdm, ids: list[int]) -> dict[int, tuple[str, str | None]]:
    q = (exp.select("cohort_definition_id", "cohort_definition_name", "cohort_definition_syntax")
         .from_(cdm.table("cohort_definition"))
         .where(exp.In(this=exp.column("cohort_definition_id"), expressions=[lit(i) for i in ids])))
    return {int(r[0]): (r[1], r[2]) for r in cdm.fetch_all(q)}


def _syntax(definition: CohortDefinition) -> str:
    # The hash first, so a reader can compare without parsing; the definition itself follows.
    return f"{_SYNTAX_PREFIX}{definition.definition_hash()}\n{definition.to_json()}"


def generate_cohorts(cdm: Cdm, definitions: list[tuple[int, CohortDefinition]]) -> list[CohortResult]:
    """Generate each (cohort_id, definition) into the results `cohort` table, in one transaction."""
    ids = [cid for cid, _ in definitions]
    for cid in ids:
        if not isinstance(cid, int) or isinstance(cid, bool) or cid < 0:
            raise CohortDefinitionError(f"cohort id {cid!r}: a cohort id is a non-negative integer")
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise CohortDefinitionError(f"cohort id(s) {dupes} given to more than one definition in this run")
    if not definitions:
        return []
    compiled: list[tuple[int, CohortDefinition, CompiledCohort, list[str]]] = []
    for cid, d in definitions:
        try:
            c = compile_cohort(cdm, d.expression)
        except CohortDefinitionError as e:
            raise CohortDefinitionError(f"cohort {cid} ({d.name!r}): {e}") from None
        compiled.append((cid, d, c, _unknown_concepts(cdm, d)))

    if not (cdm.table_exists("cohort") and cdm.table_exists("cohort_definition")):
        cdm.create_tables(["cohort", "cohort_definition"])
    existing = _existing_definitions(cdm, ids)
    for cid, d, _, _ in compiled:
        if cid in existing:
            name, syntax = existing[cid]
            same_hash = (syntax or "").startswith(_SYNTAX_PREFIX + d.definition_hash())
            if name != d.name or not same_hash:
                raise CohortDefinitionError(
                    f"cohort id {cid} is already used by another definition ({name!r}) in this CDM's "
                    f"cohort_definition table; choose another id, or delete cohort {cid} first"
                )

    results: list[CohortResult] = []
    cohort = cdm.table("cohort")
    with cdm.transaction():
        for cid, d, c, warns in compiled:
            for w in warns:
                warnings.warn(f"cohort {cid} ({d.name!r}): {w}", UnknownConceptWarning, stacklevel=2)
            where_id = exp.EQ(this=exp.column("cohort_definition_id"), expression=lit(cid))
            if cdm.dialect != "spark":
                cdm.execute(exp.delete(cohort.copy(), where=where_id.copy()))
            masks: dict[tuple[int, int], int] = {}
            with _materialised(cdm, c, cid) as (rows, mask_query):
                if cdm.dialect == "spark":
                    insert = _overwrite_partition(cohort.copy(), cid, rows)
                else:
                    insert = exp.insert(
                        rows.select(lit(cid).as_("cohort_definition_id"), append=False).select(
                            "subject_id", "cohort_start_date", "cohort_end_date"),
                        cohort.copy(),
                        columns=["cohort_definition_id", "subject_id", "cohort_start_date", "cohort_end_date"],
                    )
                cdm.execute(insert, bound(insert, c.params))
                if c.rule_count:
                    for mode, mask, n in cdm.fetch_all(mask_query, bound(mask_query, c.params)):
                        masks[(int(mode), int(mask))] = int(n)
            persons, entries = cdm.fetch_all(
                exp.select(exp.Count(this=exp.Distinct(expressions=[exp.column("subject_id")])),
                           exp.Count(this=exp.Star())).from_(cohort.copy()).where(where_id.copy()))[0]
            stats, summary = inclusion_stats(masks, c.rule_names) if c.rule_count else ([], [])
            _delete_definition_row(cdm, cid, where_id)
            cdm.insert_arrow("cohort_definition", pa.table({
                "cohort_definition_id": [cid],
                "cohort_definition_name": [d.name],
                "cohort_definition_description": [d.description],
                "definition_type_concept_id": [0],
                "cohort_definition_syntax": [_syntax(d)],
                "subject_concept_id": [0],
                "cohort_initiation_date": [dt.date.today()],
            }))
            results.append(CohortResult(
                cohort_id=cid, name=d.name, persons=int(persons), entries=int(entries), attrition=stats,
                summary=summary, mask_counts=masks, warnings=warns, definition_hash=d.definition_hash(),
            ))
    return results


def _overwrite_partition(cohort: exp.Table, cohort_id: int, rows: exp.Select) -> exp.Insert:
    """Spark: replace one cohort's rows by overwriting its partition (Spark's file tables cannot DELETE).

    Spark has no transactions, so on Spark a failed run is not all-or-nothing across definitions.
    """
    cohort.set("partition", exp.Partition(expressions=[
        exp.EQ(this=exp.column("cohort_definition_id"), expression=lit(cohort_id))]))
    select = rows.select("subject_id", "cohort_start_date", "cohort_end_date", append=False)
    return exp.Insert(this=cohort, expression=select, overwrite=True)


def _delete_definition_row(cdm: Cdm, cohort_id: int, where_id: exp.Expression) -> None:
    if cdm.dialect != "spark":
        cdm.execute(exp.delete(cdm.table("cohort_definition"), where=where_id.copy()))
        return
    # cohort_definition is small: read the other rows, then overwrite the table with them.
    others = cdm.fetch_arrow(exp.select("*").from_(cdm.table("cohort_definition")).where(
        exp.not_(where_id.copy())))
    cdm.engine.overwrite_arrow(cdm.qualified("cohort_definition"), others)


@contextmanager
def _materialised(cdm: Cdm, c: CompiledCohort, cohort_id: int) -> Iterator[tuple[exp.Select, exp.Select]]:
    """The rows and mask-count queries, over temporary tables where the engine has them.

    On DuckDB and PostgreSQL each step of the pipeline becomes an analysed temporary table (see
    CompiledCohort.steps); elsewhere (Spark) the single CTE query runs as it is.
    """
    if cdm.dialect not in ("duckdb", "postgres"):
        yield c.rows_query(), c.mask_counts_query()
        return
    steps = c.steps(f"mercia_tmp_{cohort_id}_{secrets.token_hex(4)}_")
    try:
        for stmt in steps.creates:
            cdm.execute(stmt, bound(stmt, c.params))
        yield steps.rows, steps.mask_counts
    finally:
        # After a failure PostgreSQL refuses statements until rollback, which drops the tables anyway.
        for stmt in steps.drops:
            with suppress(Exception):
                cdm.execute(stmt)


def cohort_rows(cdm: Cdm, cohort_id: int) -> list[tuple[Any, ...]]:
    """(subject_id, cohort_start_date, cohort_end_date) of one generated cohort, sorted."""
    q = (exp.select("subject_id", "cohort_start_date", "cohort_end_date").from_(cdm.table("cohort"))
         .where(exp.EQ(this=exp.column("cohort_definition_id"), expression=lit(cohort_id)))
         .order_by("subject_id", "cohort_start_date", "cohort_end_date"))
    return cdm.fetch_all(q)
