"""The common engine: one connection to one database, running sqlglot trees with bound parameters.

Everything an engine does is here, written once; each engine (`duckdb.py`, `postgres.py`, `spark.py`) is a
small subclass that connects and overrides single hooks and capability flags, as ehrQL's query engines
subclass one base SQL engine. Code above `cdm/` never names an engine: it asks a capability
(`supports_temp_tables`, `parallel_connections`, ...) or calls a hook, and the engine answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import pyarrow as pa
from sqlglot import exp

ParamStyle = Literal["dollar", "pyformat", "colon", "qmark", "numeric", "at"]
# How a cohort plan materialises the compiled pipeline's steps (see mercia.cohorts.plan):
# every step as a temporary table, or only its checkpoints (the steps several statements read).
Materialise = Literal["every step", "checkpoints"]
EVERY_STEP: Materialise = "every step"
CHECKPOINTS: Materialise = "checkpoints"
# A rewrite of one node of a cohort step, in place (True when it rewrote something).
NodeRewrite = Callable[[Any], bool]


class Engine:
    """A database connection that runs SQL of one sqlglot dialect with bound parameters.

    Subclasses connect (their own constructor) and implement the `_execute`, `_fetch_all` and
    `_fetch_arrow` primitives on rendered text; the public methods take a sqlglot tree or text.
    """

    # ---- identity -------------------------------------------------------------------------
    dialect: ClassVar[str]  # the sqlglot dialect its SQL is rendered in
    param_style: ClassVar[ParamStyle]  # how sqlglot prints a named placeholder for this driver
    default_cdm_schema: ClassVar[str] = "cdm"  # where the clinical tables are unless told
    driver_modules: ClassVar[tuple[str, ...]] = ()  # top-level modules whose exceptions are the driver's
    target: str = ""  # what it was opened on (a path, a URL, ":memory:", "spark"), for messages

    # ---- capabilities ---------------------------------------------------------------------
    supports_transactions: ClassVar[bool] = True  # begin/commit/rollback make writes all-or-nothing
    supports_delete: ClassVar[bool] = True  # DELETE ... WHERE on its tables
    supports_temp_tables: ClassVar[bool] = True  # connection-local CREATE TEMPORARY TABLE
    has_information_schema: ClassVar[bool] = True  # information_schema.tables / columns
    not_null_constraints: ClassVar[bool] = True  # NOT NULL on the spec's required columns
    binds_insert_values: ClassVar[bool] = True  # INSERT ... VALUES with bound parameters (else Arrow)
    # Connections that compute at once (each on a thread): more than one when the engine runs statements
    # of different connections in parallel and each sees what another has committed.
    parallel_connections: ClassVar[int] = 1
    # Cohort plans: which steps become temporary tables, whether they are analysed after being filled, and
    # rewrites of single nodes of the steps (by node type) made while the plan is rendered.
    materialise: ClassVar[Materialise] = EVERY_STEP
    analyse_materialised: ClassVar[bool] = False
    step_rewrites: ClassVar[Mapping[type[exp.Expression], NodeRewrite]] = {}

    # ---- rendering ------------------------------------------------------------------------
    @classmethod
    def render(cls, expr: exp.Expression | str) -> str:
        """A tree as this engine's SQL text (its placeholders in the driver's form); text as it is."""
        return expr if isinstance(expr, str) else expr.sql(dialect=cls.dialect)

    def transform(self, tree: exp.Expression) -> exp.Expression:
        """Rewrites this engine needs in a tree parsed from a SQL template written in DuckDB's dialect
        (mercia.cdm.query); none by default."""
        return tree

    # ---- running --------------------------------------------------------------------------
    def _execute(self, sql: str, params: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def _fetch_all(self, sql: str, params: dict[str, Any] | None) -> list[tuple]:
        raise NotImplementedError

    def _fetch_arrow(self, sql: str, params: dict[str, Any] | None) -> pa.Table:
        raise NotImplementedError

    def execute(self, sql: exp.Expression | str, params: dict[str, Any] | None = None) -> None:
        self._execute(self.render(sql), params or None)

    def fetch_all(self, sql: exp.Expression | str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self._fetch_all(self.render(sql), params or None)

    def fetch_arrow(self, sql: exp.Expression | str, params: dict[str, Any] | None = None) -> pa.Table:
        return self._fetch_arrow(self.render(sql), params or None)

    def begin(self) -> None:
        self._execute("BEGIN", None)

    def commit(self) -> None:
        self._execute("COMMIT", None)

    def rollback(self) -> None:
        self._execute("ROLLBACK", None)

    def close(self) -> None:
        pass

    def prepare_schemas(self, cdm_schema: str, vocab_schema: str, results_schema: str) -> None:
        """Make the schemas a handle will use known to the database before it is used (Spark over a folder
        registers the folder's Parquet tables); nothing by default."""

    def add_empty_tables(self, tables: dict[tuple[str, str], pa.Schema]) -> None:
        """Make known, as empty tables of these columns, the (schema, table) pairs a CDM's specification
        has but the database does not (Spark over a folder, whose empty tables leave no Parquet file);
        nothing by default: a database keeps its empty tables."""

    def another_connection(self) -> Engine:
        """A second connection to the same database, for work on another thread: its own transaction and
        temporary tables; it sees what this one has committed."""
        raise NotImplementedError(f"the {self.dialect} engine cannot open a second connection")

    @property
    def threads(self) -> int:
        """The engine's worker threads (an engine that does not set its own reports 1, ignores a setting)."""
        return 1

    @threads.setter
    def threads(self, n: int) -> None:
        pass

    def cap_buffer_pool(self, nbytes: int) -> Callable[[], None] | None:
        """Hold the engine's own cache in this process to about `nbytes` during a long bulk write; return
        how to undo it, or None when there is nothing to cap (an engine keeping its data in another
        process, as PostgreSQL and Spark do)."""
        return None

    # ---- catalogue ------------------------------------------------------------------------
    def table_columns(self, schema: str, table: str) -> list[str] | None:
        """Lower-cased column names of schema.table in order, or None when it does not exist."""
        q = (exp.select("column_name").from_(exp.table_("columns", db="information_schema"))
             .where(exp.and_(exp.column("table_schema").eq(exp.Placeholder(this="s")),
                             exp.column("table_name").eq(exp.Placeholder(this="t"))))
             .order_by("ordinal_position"))
        rows = self.fetch_all(q, {"s": schema, "t": table})
        return [r[0].lower() for r in rows] or None

    # ---- DDL ------------------------------------------------------------------------------
    def create_schema(self, name: str) -> exp.Expression | str:
        return exp.Create(this=exp.Table(this=exp.to_identifier(name)), kind="SCHEMA", exists=True)

    def table_properties(self, table: str) -> exp.Properties | None:
        """Storage properties of a CDM table this engine creates (none by default)."""
        return None

    # ---- writes ---------------------------------------------------------------------------
    def insert_arrow(self, qualified_table: str, data: pa.Table) -> None:
        raise NotImplementedError

    def overwrite_arrow(self, qualified_table: str, data: pa.Table) -> None:
        """Replace every row of a table by `data` (for engines without DELETE; here DELETE then insert)."""
        self._execute(f"DELETE FROM {qualified_table}", None)
        self.insert_arrow(qualified_table, data)

    def replace_rows(self, table: exp.Table, key: str, value: exp.Expression, columns: list[str],
                     rows: exp.Select) -> list[exp.Expression]:
        """The statements that replace the rows of `table` whose `key` is `value` by `rows` (a query
        giving `columns`; `key` is set to `value`): DELETE, then INSERT."""
        delete = exp.delete(table.copy(), where=exp.EQ(this=exp.column(key), expression=value.copy()))
        select = rows.select(value.copy().as_(key), *columns, append=False)
        insert = exp.insert(select, table.copy(), columns=[key, *columns])
        return [delete, insert]
