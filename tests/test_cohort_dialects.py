"""Compiled cohorts render, and parse back, in every dialect we target; user text never becomes SQL.

Parsing says nothing about meaning: test_cohort_dialect_semantics.py checks that the SQL for the dialects
not executed in CI selects the rows DuckDB selects.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from mercia.cohorts.circe import from_circe_json, load_circe_file
from mercia.cohorts.compiler import compile_cohort
from oracle_support import COHORTS_DIR
from test_cohort_world import COND, cohort, ends_at, group

DIALECTS = ["duckdb", "postgres", "spark", "trino", "bigquery", "snowflake", "tsql"]
# Rendering is slow-ish (about 0.5 s a tree); these four use every construct the others do.
DEFINITIONS = [p for p in sorted(COHORTS_DIR.glob("*/*.json")) if p.stem in ("3", "4", "888", "957")]


class Tables:
    """Table names without a database: schema `cdm` for everything."""

    def table(self, name: str, alias: str | None = None) -> exp.Table:
        t = exp.Table(this=exp.to_identifier(name), db=exp.to_identifier("cdm"))
        if alias:
            t.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
        return t


@pytest.mark.parametrize("path", DEFINITIONS, ids=[p.stem for p in DEFINITIONS])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_renders_and_parses(path: Path, dialect: str) -> None:
    c = compile_cohort(Tables(), load_circe_file(path).expression)
    sql = c.rows_query().sql(dialect=dialect)
    if path.stem in ("3", "888"):  # parsing back is slow; two definitions cover every construct used
        assert sqlglot.parse_one(sql, read=dialect) is not None
    # the other trees render too (parsing them back as well would double the test's time)
    for tree in (c.mask_counts_query(), *c.steps("tmp_").creates):
        assert tree.sql(dialect=dialect)


def test_dates_and_names_are_never_sql_text() -> None:
    hostile = "x'); DROP TABLE person; --"
    d = from_circe_json(cohort(
        {"ConditionOccurrence": {"CodesetId": COND["id"], "OccurrenceStartDate": {"Value": "2001-02-03", "Op": "gt"}}},
        EndStrategy=ends_at(), CensorWindow={"StartDate": "1999-09-09"},
        InclusionRules=[{"name": hostile, "expression": group(demographics=[{"Age": {"Value": 1, "Op": "gt"}}])}],
    ), name=hostile)
    c = compile_cohort(Tables(), d.expression)
    assert sorted(str(v) for v in c.params.values()) == ["1999-09-09", "2001-02-03"]
    for dialect in DIALECTS:
        sql = c.rows_query().sql(dialect=dialect) + c.mask_counts_query().sql(dialect=dialect)
        assert "2001" not in sql and "1999" not in sql and "DROP" not in sql
