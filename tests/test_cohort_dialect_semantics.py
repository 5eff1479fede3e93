"""The SQL printed for engines CI cannot run (Trino, BigQuery, Snowflake, SQL Server) selects the same rows.

No engine for these four can be run in CI from the package registries (PyPI has their Python clients only),
so their SQL is checked by meaning rather than by text: for each definition of the golden set, the
``mercia cohort sql --dialect D`` query (the final SELECT of the cohort's rows: no temp tables or other
statements, so nothing needs leaving out) is

1. rendered in D with D's own placeholders (``?``, ``@d1``, ``:1``),
2. given its bound values as D date literals, found with D's tokenizer (a ``?`` gets the value at its
   position, ``:i`` value i, ``@name`` the value of that name),
3. read back with sqlglot as D and written as DuckDB SQL, and
4. run on the Eunomia CDM in DuckDB; the rows must equal those of the DuckDB query, bound parameters and all.

A date function, an interval, a cast or a placeholder rendered wrongly for D changes the rows, or makes the
SQL fail to parse or run, and the test fails. What it cannot catch: a construct sqlglot both prints and
reads wrongly for D in the same way (the round trip is sqlglot's in both directions); the text goldens in
test_cohort_render.py show every change to the printed SQL for review.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokens import TokenType

from mercia.cohorts.compiler import compile_cohort
from mercia.cohorts.loader import SchemaTables
from mercia.cohorts.model import CohortDefinition
from mercia.cohorts.render import RenderedSql, render
from oracle_support import eunomia_duckdb
from test_cohort_render import DEFINITIONS, GOLDEN_DIALECTS


def with_literal_values(r: RenderedSql) -> str:
    """`r.sql` with each placeholder replaced by its value as a D date literal, read with D's tokenizer."""
    tokens = Dialect.get_or_raise(r.dialect).tokenize(r.sql)
    spans: list[tuple[int, int, object]] = []
    position = 0
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        adjacent = nxt is not None and nxt.start == tok.end + 1
        if r.style == "qmark" and tok.token_type == TokenType.PLACEHOLDER:
            assert isinstance(r.params, list)
            spans.append((tok.start, tok.end + 1, r.params[position]))
            position += 1
        elif r.style == "numeric" and tok.token_type == TokenType.COLON and adjacent and nxt.token_type == TokenType.NUMBER:
            assert isinstance(r.params, list)
            spans.append((tok.start, nxt.end + 1, r.params[int(nxt.text) - 1]))
        elif r.style == "at" and tok.token_type == TokenType.PARAMETER and adjacent:
            assert isinstance(r.params, dict)
            spans.append((tok.start, nxt.end + 1, r.params[nxt.text]))
    if r.style == "qmark":
        assert position == len(r.params), "every ? has a value, and every value a ?"
    out, at = [], 0
    for start, end, value in spans:
        assert isinstance(value, dt.date), value
        out += [r.sql[at:start], f"CAST('{value.isoformat()}' AS DATE)"]
        at = end
    out.append(r.sql[at:])
    return "".join(out)


@pytest.fixture(scope="module")
def eunomia(eunomia_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(eunomia_duckdb(tmp_path_factory.mktemp("eunomia"))), read_only=True)
    yield con
    con.close()


def _compiled(definition: CohortDefinition) -> tuple[exp.Select, dict]:
    c = compile_cohort(SchemaTables("main", "main"), definition.expression)  # eunomia_duckdb's tables
    return c.rows_query(), c.params


_native: dict[str, list[tuple]] = {}


def native_rows(con: duckdb.DuckDBPyConnection, name: str) -> list[tuple]:
    if name not in _native:
        tree, params = _compiled(DEFINITIONS[name])
        r = render(tree, params, "duckdb")
        _native[name] = sorted(con.execute(r.sql, r.params).fetchall())
    return _native[name]


def round_trip_rows(con: duckdb.DuckDBPyConnection, definition: CohortDefinition, dialect: str) -> list[tuple]:
    tree, params = _compiled(definition)
    text = with_literal_values(render(tree, params, dialect, pretty=True))
    back = sqlglot.parse_one(text, read=dialect)
    assert not list(back.find_all(exp.Placeholder, exp.Parameter)), "a placeholder was left without its value"
    return sorted(con.execute(back.sql(dialect="duckdb")).fetchall())


@pytest.mark.parametrize("dialect", GOLDEN_DIALECTS)
@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_dialect_sql_selects_the_duckdb_rows(eunomia: duckdb.DuckDBPyConnection, name: str, dialect: str) -> None:
    assert round_trip_rows(eunomia, DEFINITIONS[name], dialect) == native_rows(eunomia, name)


def test_the_comparison_is_not_of_empty_results(eunomia: duckdb.DuckDBPyConnection) -> None:
    """Most definitions select people on Eunomia, and the one with study-period dates selects some."""
    sizes = {name: len(native_rows(eunomia, name)) for name in DEFINITIONS}
    assert sum(n > 0 for n in sizes.values()) >= 8, sizes
    dated = [n for n, d in DEFINITIONS.items() if len(_compiled(d)[1]) >= 2]
    assert dated and all(sizes[n] > 0 for n in dated), sizes


def test_help_and_readme_say_which_dialects_are_not_executed() -> None:
    from typer.testing import CliRunner

    from mercia.cli import app

    out = " ".join(CliRunner().invoke(app, ["cohort", "sql", "--help"]).output.split())
    assert "Executed in CI: duckdb, postgres, spark." in out, out
    assert "Trino, BigQuery, Snowflake and SQL Server (tsql): SQL generated, not executed in CI" in out, out
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8").split())
    assert "Trino, BigQuery, Snowflake and SQL Server: SQL generated, not executed in CI" in readme
