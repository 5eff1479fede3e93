"""Query plumbing over a `Cdm` for analyses and features: SQL templates parsed into sqlglot trees, bound parameters, results.

Analyses write their queries as constant SQL text in DuckDB's dialect (never formatted with user
values); `build()` parses it into a sqlglot tree, points CDM table names at the handle's schemas, and
lets the engine rewrite what its dialect needs (`Engine.transform`: PostgreSQL's make_date and
intervals). User values travel as named placeholders (`$name`) bound at execution; small integer lists
from validated settings (age bands, calendar years) become VALUES literals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import sqlglot
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.errors import StudyError

Values = tuple[Sequence[str], Sequence[Sequence[Any]]]


def _literal(v: Any) -> exp.Expression:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"VALUES literal must be a number, not {type(v).__name__}")
    if v < 0:
        return exp.Neg(this=exp.Literal.number(str(-v)))
    return exp.Literal.number(str(v))


def values_table(name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> exp.Expression:
    """A VALUES list as a derived table; numbers only (they come from validated settings)."""
    if not rows:
        raise ValueError(f"VALUES table {name} has no rows")
    tuples = [exp.Tuple(expressions=[_literal(v) for v in row]) for row in rows]
    return exp.Values(
        expressions=tuples,
        alias=exp.TableAlias(this=exp.to_identifier(name), columns=[exp.to_identifier(c) for c in columns]),
    )


def build(template: str, cdm: Cdm, values: dict[str, Values] | None = None) -> exp.Expression:
    """Parse a constant SQL template into a tree for `cdm`.

    Unqualified table names that are CDM tables (and not CTEs of the template) become the handle's
    qualified tables; names in `values` become VALUES lists.
    """
    tree = sqlglot.parse_one(template, read="duckdb")
    ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
    values = values or {}
    for t in list(tree.find_all(exp.Table)):
        if t.args.get("db") or t.name in ctes:
            continue
        alias = t.alias or None
        if t.name in values:
            cols, rows = values[t.name]
            t.replace(values_table(alias or t.name, cols, rows))
        elif t.name in cdm.spec.tables:
            t.replace(cdm.table(t.name, alias=alias or t.name))
    return cdm.engine.transform(tree)


def bound(tree: exp.Expression, params: dict[str, Any]) -> dict[str, Any] | None:
    """The parameters one statement uses (DuckDB rejects unused named parameters)."""
    used = {p.name for p in tree.find_all(exp.Placeholder)}
    return {k: v for k, v in params.items() if k in used} or None


def fetch_df(cdm: Cdm, tree: exp.Expression, params: dict[str, Any] | None = None) -> pd.DataFrame:
    return cdm.fetch_arrow(tree, bound(tree, params or {})).to_pandas()


def check_cohort_id(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StudyError(f"{what} {value!r}: a cohort id is a non-negative integer")
    return value


def require_tables(cdm: Cdm, names: Sequence[str], analysis: str) -> None:
    missing = [n for n in names if not cdm.table_exists(n)]
    if missing:
        raise StudyError(
            f"{analysis} needs the CDM table(s) {', '.join(missing)}, which this CDM does not have; "
            "load them (and generate the cohorts) first"
        )


# Clinical domains: (table, concept column, date column) of the records a covariate looks for.
DOMAINS: dict[str, tuple[str, str, str]] = {
    "condition": ("condition_occurrence", "condition_concept_id", "condition_start_date"),
    "drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
    "procedure": ("procedure_occurrence", "procedure_concept_id", "procedure_date"),
    "measurement": ("measurement", "measurement_concept_id", "measurement_date"),
    "observation": ("observation", "observation_concept_id", "observation_date"),
}
