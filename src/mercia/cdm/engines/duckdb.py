"""DuckDB: a file or an in-memory database, in this process."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import pyarrow as pa
from sqlglot import exp

from mercia.cdm.engines.base import CHECKPOINTS, Engine, Materialise, NodeRewrite
from mercia.cdm.engines.duckdb_first import rewrite_first_row
from mercia.errors import CdmError, ConfigError

_UNITS = {"B": 1, "BYTES": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _size_bytes(text: str) -> float:
    """DuckDB's rendering of a size ('18.8 GiB', '953.6 MiB') in bytes; infinite when unparseable."""
    parts = text.strip().split()
    try:
        return float(parts[0]) * _UNITS[parts[1].upper()] if len(parts) == 2 else float("inf")
    except (ValueError, KeyError):
        return float("inf")


class DuckDBEngine(Engine):
    dialect = "duckdb"
    param_style = "dollar"  # $name, values a dict
    default_cdm_schema = "main"
    driver_modules = ("duckdb", "_duckdb")
    # Cohorts are generated on this many connections at once, each on a thread. DuckDB runs the statements
    # of different connections in parallel and releases the GIL meanwhile, so the calling thread compiles
    # the later definitions while the first ones run. Most cohort statements are too small for DuckDB to
    # spread one over both cores of a two-core machine; two connections keep both busy (the SQL of the 13
    # bench_cohorts definitions, plans compiled: 100,000 persons 0.63-0.71 s on one connection, 0.40-0.44 s
    # on two; 1,000,000 persons 1.53-1.63 s and 1.10-1.36 s). Three were no faster on two cores. DuckDB's
    # threads are shared out among them for the run: each connection's statements in parallel on two
    # threads as well only added switching (1M persons, fresh processes, medians of five: 1.48 s -> 1.39 s
    # and 1.80 s -> 1.64 s, with 10-15% less CPU).
    parallel_connections = 2  # tests/test_cohort_plan.py::test_duckdb_runs_cohorts_on_other_connections_...
    # Only a cohort's checkpoints become temporary tables; the other steps stay CTEs inside those
    # statements, where DuckDB's optimiser sees the whole chain and materialises what is read twice by
    # itself. For the 13 definitions of bench/bench_cohorts.py that is 74 statements where one temporary
    # table per step took 497, and about two thirds of the process CPU time at 100,000 persons. No
    # ANALYZE either: DuckDB keeps its statistics up to date on insert.
    materialise: ClassVar[Materialise] = CHECKPOINTS
    # A criterion's First by an aggregate rather than a window (duckdb_first; tests/test_cohort_duckdb_first.py).
    step_rewrites: ClassVar[Mapping[type[exp.Expression], NodeRewrite]] = MappingProxyType(
        {exp.RowNumber: rewrite_first_row})

    def __init__(self, path: str | None, read_only: bool = False) -> None:
        import duckdb

        self.path = path
        self.target = path or ":memory:"
        try:
            con = duckdb.connect(path or ":memory:", read_only=read_only)
        except duckdb.Error as e:  # unreadable, locked or not a DuckDB file
            raise CdmError(f"cannot open DuckDB database {path!r}: {e}") from e
        self._adopt(con)

    @classmethod
    def open(cls, target: str, *, create: bool, read_only: bool) -> DuckDBEngine:
        """A DuckDB file (`create=False`: one that does not exist is an error rather than a new database)."""
        path = Path(target)
        if path.is_dir():
            raise ConfigError(f"CDM target {target!r} is a folder; give a .duckdb file path")
        if not path.exists():
            if not create:
                raise CdmError(f"no CDM database at {target!r} (file not found)")
            if not path.parent.exists():
                raise ConfigError(f"cannot create {target!r}: folder {str(path.parent)!r} does not exist")
        return cls(target, read_only=read_only)

    def _adopt(self, con: Any) -> None:
        self.con = con
        # DuckDB draws its own progress bar on long statements; ours (rich) is the one users see.
        self.con.execute("SET enable_progress_bar = false")
        self._n = 0

    def another_connection(self) -> DuckDBEngine:
        """A cursor: a second connection to the same open database (DuckDB lets one process hold a file
        writable and no other process open it, so readers in the process share it this way; MVCC)."""
        other = DuckDBEngine.__new__(DuckDBEngine)
        other.path = self.path
        other.target = self.target
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
        """Lower DuckDB's memory limit to `nbytes` (never raise it) so a long bulk write into a file
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

    def _execute(self, sql: str, params: dict[str, Any] | None) -> None:
        self.con.execute(sql, params)

    def _fetch_arrow(self, sql: str, params: dict[str, Any] | None) -> pa.Table:
        rel = self.con.sql(sql, params=params)
        return rel.to_arrow_table() if rel is not None else pa.table({})

    def _fetch_all(self, sql: str, params: dict[str, Any] | None) -> list[tuple]:
        return self.con.execute(sql, params).fetchall()

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

    def close(self) -> None:
        self.con.close()
