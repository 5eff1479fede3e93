"""The CDM handle: one connection, its dialect, and where each table lives.

Everything above `cdm/` talks to a database through a `Cdm`: it builds sqlglot trees, the handle
renders them in the engine's dialect with bound parameters, and resolves table names to schemas.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

from mercia.cdm.engines import Engine, open_engine, spark_engine
from mercia.cdm.spec import DEFAULT_VERSION, CdmSpec, TableSpec, cdm_spec
from mercia.errors import CdmError, ConfigError

# Where cohorts and their statistics live unless told otherwise, apart from the clinical tables (OHDSI's
# layout: cohorts in a results or work schema, never mixed into the CDM schema).
RESULTS_SCHEMA = "results"

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _default(value: str | None, default: str) -> str:
    return default if value is None else value


def _check_ident(kind: str, name: str) -> str:
    # Schema names come from users (CLI options, URLs); they become identifiers, so only plain names pass.
    if not _IDENT.match(name):
        raise ConfigError(f"invalid {kind} {name!r}: use letters, digits and underscores only")
    return name


class Cdm:
    """An OMOP CDM in one database: DuckDB (file or memory), PostgreSQL or Spark."""

    def __init__(
        self,
        engine: Engine,
        *,
        cdm_schema: str,
        vocab_schema: str | None = None,
        results_schema: str | None = None,
        version: str | None = None,
        target: str = "",
    ) -> None:
        self.engine = engine
        self.cdm_schema = _check_ident("CDM schema", cdm_schema)
        self.vocab_schema = _check_ident("vocabulary schema", _default(vocab_schema, cdm_schema))
        self.results_schema = _check_ident("results schema", _default(results_schema, cdm_schema))
        self.target = target
        self._tx_depth = 0
        # While `cohort_view` is open: study cohort id -> the id its rows are stored under.
        self._cohort_view: dict[int, int] | None = None
        # sqlglot loads a dialect's module on first use (a tenth of a second for DuckDB's): every statement
        # of this handle is rendered in it, so load it with the connection, not inside the first query.
        Dialect.get_or_raise(engine.dialect)
        self.version = version or self._detect_version() or DEFAULT_VERSION
        self.spec: CdmSpec = cdm_spec(self.version)

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        target: str | Path | None = None,
        *,
        cdm_schema: str | None = None,
        vocab_schema: str | None = None,
        results_schema: str | None = None,
        version: str | None = None,
        create: bool = True,
        read_only: bool = False,
    ) -> Cdm:
        """Open a CDM. `target` is None (in-memory DuckDB), a `.duckdb` path, a `postgresql://` URL,
        `spark:FOLDER` (Parquet tables) or `sc://host:port` (Spark Connect); `mercia.cdm.engines.open_engine`
        decides which engine opens it.

        With `create=False` a DuckDB file that does not exist is an error rather than a new database.
        """
        engine = open_engine(target, create=create, read_only=read_only)
        cdm_s = _check_ident("CDM schema", _default(cdm_schema, engine.default_cdm_schema))
        results_s = _check_ident("results schema", _default(results_schema, RESULTS_SCHEMA))
        try:
            engine.prepare_schemas(cdm_s, _check_ident("vocabulary schema", _default(vocab_schema, cdm_s)), results_s)
        except BaseException:
            engine.close()
            raise
        cdm = cls(
            engine,
            cdm_schema=cdm_s,
            vocab_schema=vocab_schema,
            results_schema=results_s,
            version=version,
            target=engine.target,
        )
        try:
            # A CDM's empty tables exist on every engine (Spark over a folder keeps no file for them).
            engine.add_empty_tables({(cdm.schema_of(name), name): t.arrow_schema()
                                     for name, t in cdm.spec.tables.items() if t.schema_role != "RESULTS"})
        except BaseException:
            engine.close()
            raise
        return cdm

    @classmethod
    def from_spark(
        cls,
        session: Any,
        *,
        cdm_schema: str = "default",
        vocab_schema: str | None = None,
        results_schema: str | None = None,
        version: str | None = None,
    ) -> Cdm:
        return cls(
            spark_engine(session),
            cdm_schema=cdm_schema,
            vocab_schema=vocab_schema,
            results_schema=results_schema,
            version=version,
            target="spark",
        )

    def set_version(self, version: str) -> None:
        """Switch the CDM version this handle speaks (a loader does this for an empty CDM whose files
        turn out to be another version). The caller checks that no tables of the old version exist."""
        self.spec = cdm_spec(version)
        self.version = version

    def close(self) -> None:
        self.engine.close()

    def another_connection(self) -> Cdm:
        """A handle on a second connection to the same database, with this one's schemas and version: for
        reads on another thread while this one writes (DuckDB: a cursor; PostgreSQL: a new connection)."""
        return Cdm(self.engine.another_connection(), cdm_schema=self.cdm_schema, vocab_schema=self.vocab_schema,
                   results_schema=self.results_schema, version=self.version, target=self.target)

    def __enter__(self) -> Cdm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- naming -----------------------------------------------------------------------------
    @property
    def dialect(self) -> str:
        return self.engine.dialect

    def schema_of(self, table: str) -> str:
        role = self.spec.table(table).schema_role if table.lower() in self.spec.tables else "CDM"
        return {"VOCAB": self.vocab_schema, "RESULTS": self.results_schema}.get(role, self.cdm_schema)

    def table(self, name: str, alias: str | None = None) -> exp.Table:
        """A CDM table as a sqlglot Table, qualified with the schema it lives in (inside `cohort_view`,
        `cohort` is a subquery showing the study's cohorts under the study's own ids)."""
        if self._cohort_view is not None and name.lower() == "cohort":
            return self._cohort_subquery(alias or "cohort")  # type: ignore[return-value]
        t = exp.Table(this=exp.to_identifier(name.lower()), db=exp.to_identifier(self.schema_of(name)))
        if alias:
            t.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
        return t

    def _cohort_subquery(self, alias: str) -> exp.Subquery:
        assert self._cohort_view is not None
        stored = exp.column("cohort_definition_id", table="c")
        ids = sorted(self._cohort_view.items())
        select = exp.select(
            exp.Case(this=stored, ifs=[exp.If(this=exp.Literal.number(db), true=exp.Literal.number(own))
                                      for own, db in ids]).as_("cohort_definition_id"),
            *(exp.column(c, table="c") for c in ("subject_id", "cohort_start_date", "cohort_end_date")),
        ).from_(exp.Table(this=exp.to_identifier("cohort"), db=exp.to_identifier(self.schema_of("cohort")),
                          alias=exp.TableAlias(this=exp.to_identifier("c"))))
        select = select.where(stored.copy().isin(*(exp.Literal.number(db) for _, db in ids)) if ids else exp.false())
        return select.subquery(alias)

    @contextmanager
    def cohort_view(self, ids: dict[int, int]) -> Iterator[Cdm]:
        """Reads of `cohort` see only the cohorts stored under the ids `ids` maps to, each under its key:
        a study's analyses read its cohorts by the study's own ids while they are stored under ids of
        their own in the results schema (`mercia.cohorts.registry`). For reading only."""
        for own, db in ids.items():
            for v in (own, db):
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise ValueError(f"cohort id {v!r}: a cohort id is a non-negative integer")
        before = self._cohort_view
        self._cohort_view = dict(ids)
        try:
            yield self
        finally:
            self._cohort_view = before

    def qualified(self, name: str) -> str:
        return self.table(name).sql(dialect=self.dialect)

    # ---- running ----------------------------------------------------------------------------
    def render(self, expr: exp.Expression | str) -> str:
        return self.engine.render(expr)

    def execute(self, expr: exp.Expression | str, params: dict[str, Any] | None = None) -> None:
        self.engine.execute(self.render(expr), params)

    def fetch_arrow(self, expr: exp.Expression | str, params: dict[str, Any] | None = None) -> pa.Table:
        return self.engine.fetch_arrow(self.render(expr), params)

    def fetch_all(self, expr: exp.Expression | str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self.engine.fetch_all(self.render(expr), params)

    def scalar(self, expr: exp.Expression | str, params: dict[str, Any] | None = None) -> Any:
        rows = self.fetch_all(expr, params)
        return rows[0][0] if rows else None

    @property
    def in_transaction(self) -> bool:
        """Inside `transaction()`: what this handle wrote is not yet visible to other connections."""
        return self._tx_depth > 0

    @contextmanager
    def transaction(self) -> Iterator[Cdm]:
        """All-or-nothing. Nested uses join the outer transaction."""
        if self._tx_depth:
            self._tx_depth += 1
            try:
                yield self
            finally:
                self._tx_depth -= 1
            return
        self.engine.begin()
        self._tx_depth = 1
        try:
            yield self
        except BaseException:
            self._tx_depth = 0
            self.engine.rollback()
            raise
        self._tx_depth = 0
        self.engine.commit()

    # ---- schema -----------------------------------------------------------------------------
    def create_schemas(self) -> None:
        for s in {self.cdm_schema, self.vocab_schema, self.results_schema}:
            self.execute(self.engine.create_schema(s))

    def create_table_expr(self, spec: TableSpec) -> exp.Create:
        columns = []
        for f in spec.fields:
            constraints = []
            if f.required and self.engine.not_null_constraints:
                constraints.append(exp.ColumnConstraint(kind=exp.NotNullColumnConstraint()))
            kind = f.sql_type()
            if kind.this == exp.DataType.Type.VARCHAR:
                # Text is unbounded: real OHDSI data exceed the spec's lengths (Eunomia puts '0.0' in the
                # varchar(1) relationship.is_hierarchical); DuckDB ignores lengths, PostgreSQL would reject
                # the row, and engines must accept the same data.
                kind = exp.DataType.build("VARCHAR")
            columns.append(
                exp.ColumnDef(this=exp.to_identifier(f.name, quoted=True), kind=kind, constraints=constraints)
            )
        create = exp.Create(
            this=exp.Schema(this=self.table(spec.name), expressions=columns), kind="TABLE", exists=True
        )
        properties = self.engine.table_properties(spec.name)
        if properties is not None:  # Spark: cohort partitioned by its id (no DELETE there; see SparkEngine)
            create.set("properties", properties)
        return create

    def create_tables(self, tables: list[str] | None = None) -> None:
        """Create the CDM tables that do not exist yet (all of them by default)."""
        names = tables or list(self.spec.tables)
        with self.transaction():
            self.create_schemas()
            for name in names:
                self.execute(self.create_table_expr(self.spec.table(name)))

    def allow_nulls(self, name: str, column: str) -> None:
        """Let a required column of an existing table hold NULLs (drop its NOT NULL constraint, on engines
        that have them): for data that must break the specification on purpose (`mercia synth --faults`)."""
        if not self.engine.not_null_constraints:
            return
        self.spec.table(name).field(column)  # a spec column, or a CdmError
        self.execute(exp.Alter(this=self.table(name), kind="TABLE",
                               actions=[exp.AlterColumn(this=exp.to_identifier(column, quoted=True), drop=True,
                                                        allow_null=True)]))

    def table_exists(self, name: str) -> bool:
        return self.engine.table_columns(self.schema_of(name), name.lower()) is not None

    def columns(self, name: str) -> list[str] | None:
        return self.engine.table_columns(self.schema_of(name), name.lower())

    def row_count(self, name: str) -> int:
        return int(self.scalar(exp.select(exp.Count(this=exp.Star())).from_(self.table(name))))

    def _detect_version(self) -> str | None:
        try:
            if self.engine.table_columns(self.cdm_schema, "episode") is not None:
                return "5.4"
            visit = self.engine.table_columns(self.cdm_schema, "visit_occurrence")
        except Exception:
            return None
        if visit is None:
            return None
        return "5.4" if "admitted_from_concept_id" in visit else "5.3"

    # ---- bulk writes ------------------------------------------------------------------------
    def conform(self, name: str, data: pa.Table, *, fill_missing: bool = True) -> pa.Table:
        """Arrange `data` as the spec table: columns by name (any case), missing nullable ones null
        (left out with ``fill_missing=False``), values cast to the spec types. Unknown or missing
        required columns are errors."""
        spec = self.spec.table(name)
        by_lower = {c.lower(): c for c in data.column_names}
        unknown = sorted(set(by_lower) - set(spec.column_names))
        if unknown:
            raise CdmError(f"table {name}: unknown column(s) {', '.join(unknown)}")
        arrays, fields, schema = [], [], spec.arrow_schema()
        for f in spec.fields:
            if f.name in by_lower:
                col = data.column(by_lower[f.name])
                try:
                    col = pc.cast(col, f.arrow_type())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise CdmError(f"table {name}, column {f.name}: cannot read as {f.type}: {e}") from e
            elif f.required:
                raise CdmError(f"table {name}: required column {f.name} is missing")
            elif fill_missing:
                col = pa.nulls(data.num_rows, f.arrow_type())
            else:
                continue
            arrays.append(col)
            fields.append(schema.field(f.name))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    @contextmanager
    def bounded_bulk_write(self, nbytes: int) -> Iterator[Cdm]:
        """Hold the engine's own cache to about ``nbytes`` while a long bulk write runs, so the process's
        memory does not grow with the data written (DuckDB files: the buffer pool; other engines keep
        their data in another process and need nothing)."""
        restore = self.engine.cap_buffer_pool(nbytes)
        try:
            yield self
        finally:
            if restore is not None:
                restore()

    def insert_arrow(self, name: str, data: pa.Table) -> None:
        """Append rows to a CDM table (created if missing); the table's other columns are left NULL (its
        engine fills them; building an Arrow column of nulls for each was about 7% of the CPU time of
        writing a synthetic site)."""
        conformed = self.conform(name, data, fill_missing=False)
        if not self.table_exists(name):
            self.create_tables([name])
        existing = self.columns(name) or []
        keep = [c for c in conformed.column_names if c in existing]
        self.engine.insert_arrow(self.qualified(name), conformed.select(keep))

    def insert_rows(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Append a few rows (dicts by column) to a CDM table: bound parameters in one INSERT ... VALUES
        (registering Arrow costs DuckDB a pandas import, about a second), or as Arrow where the engine
        cannot bind them there."""
        if not rows:
            return
        if not self.engine.binds_insert_values:
            self.insert_arrow(name, pa.Table.from_pylist(rows))
            return
        columns = list(rows[0])
        params = {f"v{i}_{j}": value for i, row in enumerate(rows) for j, value in enumerate(row.values())}
        values = exp.Values(expressions=[exp.Tuple(expressions=[exp.Placeholder(this=f"v{i}_{j}")
                                                                for j in range(len(columns))])
                                         for i in range(len(rows))])
        self.execute(exp.insert(values, self.table(name), columns=columns), params)

    def delete(self, table: exp.Table, where: exp.Expression) -> None:
        """Delete the rows of `table` matching `where`; on an engine without DELETE (Spark), the other rows
        are read and the table overwritten with them (for small tables: cohort_definition, statistics)."""
        if self.engine.supports_delete:
            self.execute(exp.delete(table, where=where))
            return
        others = self.fetch_arrow(exp.select("*").from_(table).where(exp.not_(where)))
        self.engine.overwrite_arrow(self.render(table), others)

    def replace_rows(self, table: exp.Table, key: str, value: exp.Expression, columns: list[str],
                     rows: exp.Select, params: dict[str, Any] | None = None) -> None:
        """Replace the rows of `table` whose `key` is `value` by `rows` (a query giving `columns`), as the
        engine does it (DELETE and INSERT; Spark overwrites the partition)."""
        for statement in self.engine.replace_rows(table, key, value, columns, rows):
            used = {p.name for p in statement.find_all(exp.Placeholder)}
            self.execute(statement, {k: v for k, v in (params or {}).items() if k in used} or None)
