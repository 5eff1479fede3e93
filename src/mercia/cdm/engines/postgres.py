"""PostgreSQL through psycopg, in OHDSI's schema layout (clinical tables in `cdm`, cohorts in `results`)."""

from __future__ import annotations

import io
import re
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
from sqlglot import exp

from mercia.cdm.engines.base import EVERY_STEP, Engine
from mercia.cdm.engines.transforms import interval_times_unit, make_date
from mercia.errors import CdmError


class PostgresEngine(Engine):
    dialect = "postgres"
    param_style = "pyformat"  # %(name)s, values a dict
    default_cdm_schema = "cdm"
    driver_modules = ("psycopg",)
    # Every step of a cohort becomes a temporary table, analysed: PostgreSQL cannot estimate a CTE's rows
    # and re-runs correlated subqueries per row, so materialised, analysed steps keep every join a hash join.
    materialise = EVERY_STEP
    analyse_materialised = True

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self.target = url
        try:
            self.con = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise CdmError(f"cannot connect to PostgreSQL at {redact(url)}: {e}") from e

    def another_connection(self) -> PostgresEngine:
        return PostgresEngine(self.url)

    def transform(self, tree: exp.Expression) -> exp.Expression:
        """Constructs of the templates' DuckDB dialect that sqlglot does not carry to PostgreSQL
        (tests/test_engine_layer.py::test_template_rewrites_are_the_engines; the age bands of
        tests/test_analyses_incidence.py on PostgreSQL)."""
        return tree.transform(_portable)

    def _run(self, sql: str, params: dict[str, Any] | None):
        # psycopg treats '%' as a parameter marker only when parameters are passed.
        return self.con.execute(sql, params if params else None)

    def _execute(self, sql: str, params: dict[str, Any] | None) -> None:
        self._run(sql, params)

    def _fetch_arrow(self, sql: str, params: dict[str, Any] | None) -> pa.Table:
        cur = self._run(sql, params)
        names = [d.name for d in cur.description or []]
        rows = cur.fetchall()
        return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}) if names else pa.table({})

    def _fetch_all(self, sql: str, params: dict[str, Any] | None) -> list[tuple]:
        cur = self._run(sql, params)
        return cur.fetchall() if cur.description else []

    def insert_arrow(self, qualified_table: str, data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        # COPY of a CSV rendering is far faster than row inserts; NULL is the unquoted empty field.
        buf = io.BytesIO()
        pacsv.write_csv(data, buf, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
        cols = ", ".join(f'"{c}"' for c in data.column_names)
        with self.con.cursor() as cur, cur.copy(f"COPY {qualified_table} ({cols}) FROM STDIN (FORMAT csv)") as cp:
            cp.write(buf.getvalue())

    def close(self) -> None:
        self.con.close()


def _portable(node: exp.Expression) -> exp.Expression:
    return interval_times_unit(make_date(node))


def redact(url: str) -> str:
    """A connection URL without its password, for messages."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
