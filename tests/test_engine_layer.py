"""The engine layer: every engine lives under `mercia.cdm` (one module each, one base), and nothing above
`cdm/` names an engine or branches on a dialect; the hooks and capabilities that replaced those branches."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pyarrow as pa
import pytest
import sqlglot
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cdm.dialects import DIALECTS, PARAM_STYLES
from mercia.cdm.engines import engine_class, is_driver_error, local_path, open_engine
from mercia.cdm.engines.base import Engine
from mercia.cdm.engines.duckdb import DuckDBEngine
from mercia.errors import CdmError, ConfigError

SRC = Path(__file__).resolve().parents[1] / "src" / "mercia"

# What only code under cdm/ may write: a branch on a dialect, an engine's class, a target's scheme, a
# driver's import.
FORBIDDEN = {
    "a branch on a dialect": r"dialect\s*(==|!=)|\.dialect\s+(not\s+)?in\b",
    "an engine class": r"\b(DuckDBEngine|PostgresEngine|SparkEngine)\b",
    "a target's URL scheme": r"""["']://["']""",
    "a driver import": r"^\s*(import|from)\s+(duckdb|_duckdb|psycopg)\b|pyspark",
    "SQL rendered for a named engine": r"""dialect\s*=\s*["'](duckdb|postgres|spark)["']""",
}
# Modules outside cdm/ allowed one of the above, each with its reason. Empty: every engine branch has
# moved under cdm/ (issue 14).
ALLOWED: dict[str, str] = {}


def offenders(root: Path) -> list[str]:
    """Each line of a module outside `root`/cdm that writes one of FORBIDDEN (path:line: what)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("cdm/") or rel in ALLOWED:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for what, pattern in FORBIDDEN.items():
                if re.search(pattern, line):
                    found.append(f"{rel}:{n}: {what}: {line.strip()}")
    return found


def test_no_code_above_cdm_names_an_engine_or_branches_on_a_dialect() -> None:
    assert offenders(SRC) == []
    assert all(reason.strip() for reason in ALLOWED.values())
    assert all((SRC / rel).exists() for rel in ALLOWED), "an allowlisted module no longer exists: drop it"


def test_the_guard_finds_each_kind_of_offence(tmp_path: Path) -> None:
    (tmp_path / "cdm").mkdir()
    (tmp_path / "cdm" / "engine.py").write_text('import duckdb\nif cdm.dialect == "duckdb": pass\n')
    (tmp_path / "cohorts").mkdir()
    (tmp_path / "cohorts" / "gen.py").write_text(
        'if cdm.dialect == "duckdb": pass\nif cdm.dialect not in ("duckdb",): pass\n'
        'from mercia.cdm.engines.duckdb import DuckDBEngine\nremote = "://" in target\nimport psycopg\n'
        'from pyspark.sql import functions\nsql = tree.sql(dialect="spark")\nok = cdm.engine.supports_delete\n')
    found = offenders(tmp_path)
    assert [f.split(":")[1] for f in found] == ["1", "2", "3", "4", "5", "6", "7"]
    assert all(f.startswith("cohorts/gen.py") for f in found)


def test_each_engine_is_a_subclass_of_the_base_in_a_module_of_its_own() -> None:
    for dialect in ("duckdb", "postgres", "spark"):
        cls = engine_class(dialect)
        assert issubclass(cls, Engine) and cls is not Engine and cls.dialect == dialect
        assert cls.__module__ == f"mercia.cdm.engines.{'postgres' if dialect == 'postgres' else dialect}"
    with pytest.raises(ValueError, match="no engine for dialect 'trino'"):
        engine_class("trino")


def test_open_engine_alone_decides_the_engine_from_the_target(tmp_path: Path) -> None:
    memory = open_engine(None)
    assert isinstance(memory, DuckDBEngine) and memory.target == ":memory:"
    memory.close()
    path = tmp_path / "site.duckdb"
    with pytest.raises(CdmError, match="no CDM database at"):
        open_engine(str(path), create=False)
    file = open_engine(str(path))
    assert isinstance(file, DuckDBEngine) and file.target == str(path)
    file.close()
    with pytest.raises(ConfigError, match="unsupported CDM target 'mysql://h/db'"):
        open_engine("mysql://h/db")
    with pytest.raises(ConfigError, match="is a folder"):
        open_engine(str(tmp_path))
    assert local_path(None) is None and local_path(":memory:") is None
    assert local_path("postgresql://u@h/db") is None and local_path("a/site.duckdb") == Path("a/site.duckdb")


def test_postgres_targets_open_the_postgres_engine(pg_url: str) -> None:
    engine = open_engine(pg_url)
    try:
        assert engine.dialect == "postgres" and engine.fetch_all("SELECT 1") == [(1,)]
    finally:
        engine.close()


def test_the_parameter_style_table_takes_the_executed_engines_from_the_engines() -> None:
    from mercia.cli import DIALECTS as CLI_DIALECTS

    assert PARAM_STYLES["duckdb"] == "dollar" and PARAM_STYLES["postgres"] == "pyformat"
    assert PARAM_STYLES["spark"] == "colon" and PARAM_STYLES["tsql"] == "at"
    assert CLI_DIALECTS == DIALECTS
    # each executed engine's style is what sqlglot prints for a named placeholder in its dialect
    printed = {"dollar": "$x", "pyformat": "%(x)s", "colon": ":x"}
    for d in ("duckdb", "postgres", "spark"):
        assert exp.Placeholder(this="x").sql(dialect=d) == printed[engine_class(d).param_style]


def test_template_rewrites_are_the_engines() -> None:
    tree = sqlglot.parse_one("SELECT MAKE_DATE(y, 1, 1) + INTERVAL (k) YEAR FROM t", read="duckdb")
    postgres, duckdb = (object.__new__(engine_class(d)) for d in ("postgres", "duckdb"))  # no connection needed
    assert postgres.transform(tree.copy()).sql(dialect="postgres") == (
        "SELECT MAKE_DATE(y, 1, 1) + (INTERVAL '1 YEAR' * (k)) FROM t")
    assert tree.sql(dialect="postgres") != postgres.transform(tree.copy()).sql(dialect="postgres")
    assert duckdb.transform(tree.copy()) == tree  # DuckDB reads the templates' own dialect as written


def test_the_templates_spark_rewrites() -> None:
    """Spark reads neither an interval of a computed length nor LEAST/GREATEST of one argument."""
    spark = object.__new__(engine_class("spark"))  # no session needed
    tree = sqlglot.parse_one("SELECT CAST(d + INTERVAL (k + 1) YEAR AS DATE), LEAST(e), GREATEST(a, b) FROM t",
                             read="duckdb")
    assert spark.transform(tree.copy()).sql(dialect="spark") == (
        "SELECT CAST(d + (INTERVAL '1' YEAR * (k + 1)) AS DATE), e, GREATEST(a, b) FROM t")
    assert tree.sql(dialect="spark") != spark.transform(tree.copy()).sql(dialect="spark")


def test_spark_targets_are_not_files() -> None:
    assert local_path("spark:data/cdm") is None and local_path("sc://cluster:15002") is None
    with pytest.raises(ConfigError, match=r"spark:FOLDER \(Parquet tables\) or sc://host:port"):
        open_engine("jdbc://somewhere")


def _people(cdm: Cdm) -> None:
    cdm.create_tables(["cohort"])
    cdm.insert_arrow("cohort", pa.table({
        "cohort_definition_id": [1, 1, 2], "subject_id": [10, 11, 20],
        "cohort_start_date": [dt.date(2020, 1, 1)] * 3, "cohort_end_date": [dt.date(2020, 2, 1)] * 3}))


def _rows(cdm: Cdm) -> list[tuple]:
    return cdm.fetch_all(exp.select("cohort_definition_id", "subject_id").from_(cdm.table("cohort")).order_by(
        "cohort_definition_id", "subject_id"))


def test_replace_rows_deletes_and_inserts_one_keys_rows(any_cdm: Cdm) -> None:
    _people(any_cdm)
    new = exp.select(exp.Literal.number(30).as_("subject_id"),
                     exp.cast(exp.Placeholder(this="d"), "DATE").as_("cohort_start_date"),
                     exp.cast(exp.Placeholder(this="d"), "DATE").as_("cohort_end_date"))
    # as the compiler's rows query: the columns selected from the pipeline's last step
    rows = exp.select("subject_id", "cohort_start_date", "cohort_end_date").from_(new.subquery("cohort_out"))
    with any_cdm.transaction():
        any_cdm.replace_rows(any_cdm.table("cohort"), "cohort_definition_id", exp.Literal.number(1),
                             ["subject_id", "cohort_start_date", "cohort_end_date"], rows,
                             {"d": dt.date(2021, 3, 1), "unused": 5})
    assert _rows(any_cdm) == [(1, 30), (2, 20)]


class _NoDeleteDuckDB(DuckDBEngine):
    supports_delete = False


def test_delete_without_delete_keeps_the_other_rows() -> None:
    cdm = Cdm(_NoDeleteDuckDB(None), cdm_schema="main", results_schema="results", target=":memory:")
    try:
        _people(cdm)
        statements: list[str] = []
        real = cdm.engine._execute

        def execute(sql: str, params: dict | None) -> None:
            statements.append(sql)
            real(sql, params)

        cdm.engine._execute = execute  # type: ignore[method-assign]
        cdm.delete(cdm.table("cohort"), exp.column("cohort_definition_id").eq(1))
        assert _rows(cdm) == [(2, 20)]
        # the engine's overwrite, not a DELETE of the matching rows
        assert not any(re.search(r"DELETE FROM .* WHERE", s) for s in statements)
    finally:
        cdm.close()


def test_another_connection_sees_what_was_committed(any_cdm: Cdm) -> None:
    _people(any_cdm)
    other = any_cdm.another_connection()
    try:
        assert other.engine is not any_cdm.engine and other.version == any_cdm.version
        assert other.cdm_schema == any_cdm.cdm_schema and other.results_schema == any_cdm.results_schema
        assert _rows(other) == _rows(any_cdm)
    finally:
        other.close()
    assert _rows(any_cdm)  # closing the second connection left the first open


def test_driver_errors_are_told_from_mercias_own() -> None:
    import duckdb

    with pytest.raises(duckdb.Error) as caught:
        duckdb.connect().execute("SELECT * FROM no_such_table")
    assert is_driver_error(caught.value)
    assert not is_driver_error(CdmError("x")) and not is_driver_error(ValueError("x"))


def test_a_config_files_relative_target_is_relative_to_the_file(tmp_path: Path) -> None:
    from mercia.cdm.engines import resolve_target

    assert resolve_target("site.duckdb", tmp_path) == str(tmp_path.resolve() / "site.duckdb")
    assert resolve_target("spark:parquet", tmp_path) == f"spark:{tmp_path.resolve() / 'parquet'}"
    assert resolve_target("spark:/data/cdm", tmp_path) == "spark:/data/cdm"
    for url in ("postgresql://u@h/db", "sc://cluster:15002", ":memory:"):
        assert resolve_target(url, tmp_path) == url
