"""Circe's generation statistics, written where Circe (with generateStats on) writes them.

Five tables in the results schema, with OHDSI's columns (CohortGenerator's DDL) and Circe's meaning:

* ``cohort_inclusion`` (cohort_definition_id, rule_sequence, name, description): the rules, as WebAPI
  and CohortGenerator write them (Circe's SQL itself never fills it).
* ``cohort_inclusion_result`` (cohort_definition_id, inclusion_rule_mask, person_count, mode_id): the
  number of qualified events (mode 0), or of persons by their best event (mode 1), per bitmask of the
  rules they meet (cohortInclusionAnalysis.sql).
* ``cohort_inclusion_stats`` (cohort_definition_id, rule_sequence, person_count, gain_count,
  person_total, mode_id): per rule, how many meet it, how many meet every rule but it, and the total.
* ``cohort_summary_stats`` (cohort_definition_id, base_count, final_count, mode_id): before and after
  the rules.
* ``cohort_censor_stats`` (cohort_definition_id, lost_count): persons the censor window removed
  (cohortCensoredStats.sql: distinct persons before it minus distinct persons after), for definitions
  with a censor window.

The arithmetic on the per-mask counts lives here, once: `inclusion_stats` (per rule: meeting it, meeting
every rule but it; before and after the rules) and `attrition_stages` / `remaining_after_rules` (the
attrition view: what is left after rules 1..j in turn), which generation, the CLI, the study runner
and feasibility counts all use; `rules_met` reads one mask (a trial's candidates, per person).

As in Circe, the inclusion tables get rows only for definitions with inclusion rules. Unlike Circe,
which leaves an id's old inclusion rows in place when its new definition has no rules, every table's
rows for the generated ids are replaced, in the transaction that replaces the cohort's rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cohorts.compiler import lit
from mercia.cohorts.model import CohortDefinition

STATS_TABLES: dict[str, list[tuple[str, str]]] = {
    "cohort_inclusion": [("cohort_definition_id", "BIGINT"), ("rule_sequence", "INT"), ("name", "VARCHAR(255)"),
                         ("description", "VARCHAR(1000)")],
    "cohort_inclusion_result": [("cohort_definition_id", "BIGINT"), ("inclusion_rule_mask", "BIGINT"),
                                ("person_count", "BIGINT"), ("mode_id", "INT")],
    "cohort_inclusion_stats": [("cohort_definition_id", "BIGINT"), ("rule_sequence", "INT"), ("person_count", "BIGINT"),
                               ("gain_count", "BIGINT"), ("person_total", "BIGINT"), ("mode_id", "INT")],
    "cohort_summary_stats": [("cohort_definition_id", "BIGINT"), ("base_count", "BIGINT"), ("final_count", "BIGINT"),
                             ("mode_id", "INT")],
    "cohort_censor_stats": [("cohort_definition_id", "BIGINT"), ("lost_count", "BIGINT")],
}


@dataclass(frozen=True)
class GeneratedStats:
    """What one generated definition contributes to the five tables."""

    cohort_id: int
    definition: CohortDefinition
    mask_counts: dict[tuple[int, int], int]  # (mode_id, inclusion_rule_mask) -> count
    censor_lost: int | None  # None: the definition has no censor window


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


MaskCounts = Mapping[tuple[int, int], int]  # (mode_id, inclusion_rule_mask) -> count


def _masks(mask_counts: MaskCounts, mode: int) -> dict[int, int]:
    return {mask: n for (md, mask), n in sorted(mask_counts.items()) if md == mode}


def inclusion_stats(
    mask_counts: MaskCounts, rule_names: list[str]
) -> tuple[list[InclusionRuleStat], list[SummaryStat]]:
    """Circe's cohortInclusionAnalysis from the per-mask counts (bit i of a mask: rule i is met)."""
    stats: list[InclusionRuleStat] = []
    summary: list[SummaryStat] = []
    all_bits = 2 ** len(rule_names) - 1
    for mode in (0, 1):
        masks = _masks(mask_counts, mode)
        total = sum(masks.values())
        summary.append(SummaryStat(mode_id=mode, base_count=total, final_count=masks.get(all_bits, 0)))
        for i, name in enumerate(rule_names):
            stats.append(InclusionRuleStat(
                rule_sequence=i, name=name, mode_id=mode, person_total=total,
                person_count=sum(n for mask, n in masks.items() if mask & (1 << i)),
                gain_count=masks.get(all_bits - (1 << i), 0),
            ))
    return stats, summary


def rules_met(mask: int, rules: int) -> list[bool]:
    """[i]: whether rule i is met in an inclusion-rule mask (bit i), for rules 0 .. rules-1."""
    return [bool(mask >> i & 1) for i in range(rules)]


def attrition_stages(mask_counts: MaskCounts, mode: int, rules: int) -> list[int]:
    """The attrition as buckets: [j] counts those meeting rules 1..j but not rule j+1 (j = 0 .. rules;
    the last bucket meets every rule). Each event or person is in exactly one bucket."""
    stage = [0] * (rules + 1)
    for mask, n in _masks(mask_counts, mode).items():
        j = 0
        while j < rules and mask >> j & 1:
            j += 1
        stage[j] += n
    return stage


def remaining_after_rules(mask_counts: MaskCounts, mode: int, rules: int) -> list[int]:
    """[j]: how many are left after applying rules 1..j+1 in turn (ATLAS's attrition view)."""
    stage = attrition_stages(mask_counts, mode, rules)
    return [sum(stage[j + 1:]) for j in range(rules)]


def stats_table(cdm: Cdm, name: str) -> exp.Table:
    return exp.Table(this=exp.to_identifier(name), db=exp.to_identifier(cdm.results_schema))


def create_stats_tables(cdm: Cdm) -> None:
    """The five tables in the results schema, where missing (CREATE TABLE IF NOT EXISTS)."""
    for name, columns in STATS_TABLES.items():
        schema = exp.Schema(this=stats_table(cdm, name), expressions=[
            exp.ColumnDef(this=exp.to_identifier(c), kind=exp.DataType.build(t)) for c, t in columns])
        cdm.execute(exp.Create(this=schema, kind="TABLE", exists=True))


def rows_for(g: GeneratedStats) -> dict[str, list[tuple[Any, ...]]]:
    """The rows one definition writes, per table (Circe's arithmetic: see the module docstring)."""
    rules = g.definition.expression.inclusion_rules
    out: dict[str, list[tuple[Any, ...]]] = {name: [] for name in STATS_TABLES}
    if g.censor_lost is not None:
        out["cohort_censor_stats"].append((g.cohort_id, g.censor_lost))
    if not rules:
        return out
    out["cohort_inclusion"] = [(g.cohort_id, i, r.name, r.description) for i, r in enumerate(rules)]
    for mode in (0, 1):
        out["cohort_inclusion_result"] += [(g.cohort_id, mask, n, mode) for mask, n in _masks(g.mask_counts, mode).items()]
    per_rule, summary = inclusion_stats(g.mask_counts, [r.name for r in rules])
    out["cohort_inclusion_stats"] = [(g.cohort_id, s.rule_sequence, s.person_count, s.gain_count, s.person_total,
                                      s.mode_id) for s in per_rule]
    out["cohort_summary_stats"] = [(g.cohort_id, s.base_count, s.final_count, s.mode_id) for s in summary]
    return out


def definition_ids_in(ids: list[int]) -> exp.Expression:
    """cohort_definition_id IN (ids): the rows of these cohorts in any of the results tables."""
    return exp.In(this=exp.column("cohort_definition_id"), expressions=[lit(i) for i in ids])


def clear_stats(cdm: Cdm, ids: list[int]) -> None:
    """The five tables made where missing, these ids' rows deleted (inside the generation's transaction;
    it needs no generated cohort, so it can run while they are computed). Then insert_stats."""
    if not ids:
        return
    create_stats_tables(cdm)
    for name in STATS_TABLES:
        cdm.execute(exp.delete(stats_table(cdm, name), where=definition_ids_in(ids)))


def insert_stats(cdm: Cdm, generated: list[GeneratedStats]) -> None:
    """The generated definitions' rows inserted (after clear_stats, in the same transaction)."""
    per_table: dict[str, list[tuple[Any, ...]]] = {name: [] for name in STATS_TABLES}
    for g in generated:
        for name, rows in rows_for(g).items():
            per_table[name] += rows
    for name, columns in STATS_TABLES.items():
        rows = per_table[name]
        if not rows:
            continue
        # Values bound, never SQL text (rule names and descriptions are user text).
        params = {f"s{i}_{j}": v for i, row in enumerate(rows) for j, v in enumerate(row)}
        values = exp.Values(expressions=[exp.Tuple(expressions=[exp.Placeholder(this=f"s{i}_{j}") for j in range(len(row))])
                                         for i, row in enumerate(rows)])
        cdm.execute(exp.insert(values, stats_table(cdm, name), columns=[c for c, _ in columns]), params)


def read_stats(cdm: Cdm, cohort_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """One cohort's rows of the five tables, sorted, without the cohort id (for tests and reports)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for name, columns in STATS_TABLES.items():
        cols = [c for c, _ in columns if c != "cohort_definition_id"]
        q = (exp.select(*cols).from_(stats_table(cdm, name))
             .where(exp.EQ(this=exp.column("cohort_definition_id"), expression=lit(cohort_id))))
        out[name] = sorted(tuple(r) for r in cdm.fetch_all(q))
    return out
