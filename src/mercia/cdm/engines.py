"""Database engines behind a CDM handle: each runs dialect SQL with bound parameters.

Code above `cdm/` never sees these; it builds sqlglot trees and the handle renders them for the engine.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.csv as pacsv

from mercia.errors import CdmError


class Engine(Protocol):
    dialect: str

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None: ...
    def fetch_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table: ...
    def fetch_all(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]: ...
    def insert_arrow(self, qualified_table: str, data: pa.Table) -> None: ...
    def begin(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def table_columns(self, schema: str, table: str) -> list[str] | None: ...
    def close(self) -> None: ...


def _information_schema_columns(con: Any, schema: str, table: str, s_marker: str, t_marker: str) -> list[str] | None:
    """Lower-cased column names of schema.table in order, or None when it does not exist (DuckDB and
    PostgreSQL share information_schema; only their parameter markers differ)."""
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns "
        f"WHERE table_schema = {s_marker} AND table_name = {t_marker} ORDER BY ordinal_position",
        {"s": schema, "t": table},
    ).fetchall()
    return [r[0].lower() for r in rows] or None


_UNITS = {"B": 1, "BYTES": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _size_bytes(text: str) -> float:
    """DuckDB's rendering of a size ('18.8 GiB', '953.6 MiB') in bytes; infinite when unparseable."""
    parts = text.strip().split()
    try:
        return float(parts[0]) * _UNITS[parts[1].upper()] if len(parts) == 2 else float("inf")
    except (ValueError, KeyError):
        return float("inf")


class DuckDBEngine:
    dialect = "duckdb"

    def __init__(self, path: str | None, read_only: bool = False) -> None:
        import duckdb

        self.path = path
        try:
            con = duckdb.connect(path or ":memory:", read_only=read_only)
        except duckdb.Error as e:  # unreadable, locked or not a DuckDB file
            raise CdmError(f"cannot open DuckDB database {path!r}: {e}") from e
        self._adopt(con)

    def _adopt(self, con: Any) -> None:
        self.con = con
        # DuckDB draws its own progress bar on long statements; ours (rich) is the one users see.
        self.con.execute("SET enable_progress_bar = false")
        self._n = 0

    def another_connection(self) -> DuckDBEngine:
        """A second connection to the same database, for work on another thread: it has its own
        transaction and its own temporary tables, and sees what this one has committed."""
        other = DuckDBEngine.__new__(DuckDBEngine)
        other.path = self.path
        other._adopt(self.con.cursor())
        return other

    @property
    def threads(self) -> int:
        """DuckDB's worker threads: one setting for the whole database, all its connections."""
        return int(self.con.execute("SELECT current_setting('threads')").fetchone()[0])

    @threads.setter
    def threads(self, n: int) -> None:
        # On a cursor of its own: this connection's transaction may have failed (a setting is still given
        # back then, and SET is refused inside a failed transaction).
        cursor = self.con.cursor()
        try:
            cursor.execute(f"SET threads = {int(n)}")  # an int, never caller text
        finally:
            cursor.close()

    def cap_buffer_pool(self, nbytes: int) -> Callable[[], None] | None:
        """Lower DuckDB's memory limit to ``nbytes`` (never raise it) so a long bulk write into a file
        evicts the blocks it has written instead of caching them all (RSS would grow with the file);
        return how to put the limit back. None for an in-memory database, whose data lives nowhere else."""
        if self.path is None:
            return None
        cursor = self.con.cursor()
        try:
            before = str(cursor.execute("SELECT current_setting('memory_limit')").fetchone()[0])
            if _size_bytes(before) <= nbytes:
                return None
            cursor.execute("SET memory_limit = $v", {"v": f"{int(nbytes)}B"})
        finally:
            cursor.close()

        def restore() -> None:
            c = self.con.cursor()
            try:
                # The default exactly; a limit set by hand to DuckDB's rendering of it, which truncates
                # to 0.1 of its unit (so half of that is added back).
                c.execute("RESET memory_limit")
                if str(c.execute("SELECT current_setting('memory_limit')").fetchone()[0]) != before:
                    number, unit = before.split()
                    c.execute("SET memory_limit = $v", {"v": f"{float(number) + 0.05} {unit}"})
            finally:
                c.close()

        return restore

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self.con.execute(sql, params or None)

    def fetch_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        rel = self.con.sql(sql, params=params or None)
        return rel.to_arrow_table() if rel is not None else pa.table({})

    def fetch_all(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self.con.execute(sql, params or None).fetchall()

    def insert_arrow(self, qualified_table: str, data: pa.Table) -> None:
        self._n += 1
        view = f"__mercia_in_{self._n}"
        self.con.register(view, data)
        try:
            cols = ", ".join(f'"{c}"' for c in data.column_names)
            self.con.execute(f"INSERT INTO {qualified_table} ({cols}) SELECT {cols} FROM {view}")
        finally:
            self.con.unregister(view)

    def begin(self) -> None:
        self.con.begin()

    def commit(self) -> None:
        self.con.commit()

    def rollback(self) -> None:
        self.con.rollback()

    def table_columns(self, schema: str, table: str) -> list[str] | None:
        return _information_schema_columns(self.con, schema, table, "$s", "$t")

    def close(self) -> None:
        self.con.close()


class PostgresEngine:
    dialect = "postgres"

    def __init__(self, url: str) -> None:
        import psycopg

        try:
            self.con = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise CdmError(f"cannot connect to PostgreSQL at {_redact(url)}: {e}") from e

    def _run(self, sql: str, params: dict[str, Any] | None):
        # psycopg treats '%' as a parameter marker only when parameters are passed.
        return self.con.execute(sql, params if params else None)

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._run(sql, params)

    def fetch_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        cur = self._run(sql, params)
        names = [d.name for d in cur.description or []]
        rows = cur.fetchall()
        return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}) if names else pa.table({})

    def fetch_all(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
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

    def begin(self) -> None:
        self.con.execute("BEGIN")

    def commit(self) -> None:
        self.con.execute("COMMIT")

    def rollback(self) -> None:
        self.con.execute("ROLLBACK")

    def table_columns(self, schema: str, table: str) -> list[str] | None:
        return _information_schema_columns(self.con, schema, table, "%(s)s", "%(t)s")

    def close(self) -> None:
        self.con.close()


class SparkEngine:
    """Apache Spark through a SparkSession. Spark SQL has no multi-statement transactions: `begin`,
    `commit` and `rollback` are no-ops, so writers must stage and swap tables themselves."""

    dialect = "spark"

    def __init__(self, session: Any) -> None:
        self.spark = session

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self.spark.sql(sql, args=params or None).collect()

    def fetch_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        return self.spark.sql(sql, args=params or None).toArrow()

    def fetch_all(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return [tuple(r) for r in self.spark.sql(sql, args=params or None).collect()]

    def insert_arrow(self, qualified_table: str, data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        target_cols = [f.name for f in self.spark.table(qualified_table).schema.fields]
        df = self.spark.createDataFrame(data.to_pandas())
        for c in target_cols:
            if c not in data.column_names:
                from pyspark.sql import functions as F

                df = df.withColumn(c, F.lit(None))
        df.select(*target_cols).write.insertInto(qualified_table)

    def overwrite_arrow(self, qualified_table: str, data: pa.Table) -> None:
        """Replace every row of a table (Spark has no DELETE on file tables)."""
        target = self.spark.table(qualified_table).schema
        df = self.spark.createDataFrame(data.to_pandas(), schema=target) if data.num_rows else \
            self.spark.createDataFrame([], schema=target)
        df.select(*[f.name for f in target.fields]).write.insertInto(qualified_table, overwrite=True)

    def begin(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def table_columns(self, schema: str, table: str) -> list[str] | None:
        if not self.spark.catalog.tableExists(f"{schema}.{table}"):
            return None
        return [f.name.lower() for f in self.spark.table(f"{schema}.{table}").schema.fields]

    def close(self) -> None:
        pass


def _redact(url: str) -> str:
    """A connection URL without its password, for messages."""
    import re

    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
