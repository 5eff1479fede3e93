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

from mercia.cdm.engines import DuckDBEngine, Engine, PostgresEngine, SparkEngine
from mercia.cdm.spec import DEFAULT_VERSION, CdmSpec, TableSpec, cdm_spec
from mercia.errors import CdmError, ConfigError

# Tables partitioned on Spark, and by which column (see create_table_expr).
SPARK_PARTITIONS = {"cohort": "cohort_definition_id"}

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
        """Open a CDM. `target` is None (in-memory DuckDB), a `.duckdb` path, or a `postgresql://` URL.

        With `create=False` a DuckDB file that does not exist is an error rather than a new database.
        """
        if target is None or str(target) == ":memory:":
            return cls(
                DuckDBEngine(None),
                cdm_schema=_default(cdm_schema, "main"),
                vocab_schema=vocab_schema,
                results_schema=_default(results_schema, RESULTS_SCHEMA),
                version=version,
                target=":memory:",
            )
        t = str(target)
        if t.startswith(("postgresql://", "postgres://")):
            engine: Engine = PostgresEngine(t)
            cdm_s = _default(cdm_schema, "cdm")
            return cls(
                engine,
                cdm_schema=cdm_s,
                vocab_schema=_default(vocab_schema, cdm_s),
                results_schema=_default(results_schema, RESULTS_SCHEMA),
                version=version,
                target=t,
            )
        if "://" in t:
            raise ConfigError(f"unsupported CDM target {t!r}: give a .duckdb path or a postgresql:// URL")
        path = Path(t)
        if path.is_dir():
            raise ConfigError(f"CDM target {t!r} is a folder; give a .duckdb file path")
        if not path.exists():
            if not create:
                raise CdmError(f"no CDM database at {t!r} (file not found)")
            if not path.parent.exists():
                raise ConfigError(f"cannot create {t!r}: folder {str(path.parent)!r} does not exist")
        return cls(
            DuckDBEngine(t, read_only=read_only),
            cdm_schema=_default(cdm_schema, "main"),
            vocab_schema=vocab_schema,
            results_schema=_default(results_schema, RESULTS_SCHEMA),
            version=version,
            target=t,
        )

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
            SparkEngine(session),
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
        if isinstance(expr, str):
            return expr
        return expr.sql(dialect=self.dialect)

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
        if self.dialect == "spark":
            for s in {self.cdm_schema, self.vocab_schema, self.results_schema}:
                self.execute(f"CREATE DATABASE IF NOT EXISTS {exp.to_identifier(s).sql(dialect='spark')}")
            return
        for s in {self.cdm_schema, self.vocab_schema, self.results_schema}:
            self.execute(exp.Create(this=exp.Table(this=exp.to_identifier(s)), kind="SCHEMA", exists=True))

    def create_table_expr(self, spec: TableSpec) -> exp.Create:
        columns = []
        for f in spec.fields:
            constraints = []
            if f.required and self.dialect != "spark":
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
        if self.dialect == "spark" and spec.name in SPARK_PARTITIONS:
            # Spark's file tables cannot DELETE; a cohort's rows are replaced by overwriting its partition.
            create.set("properties", exp.Properties(expressions=[
                exp.FileFormatProperty(this=exp.Var(this="PARQUET")),
                exp.PartitionedByProperty(this=exp.Schema(
                    expressions=[exp.to_identifier(SPARK_PARTITIONS[spec.name])])),
            ]))
        return create

    def create_tables(self, tables: list[str] | None = None) -> None:
        """Create the CDM tables that do not exist yet (all of them by default)."""
        names = tables or list(self.spec.tables)
        with self.transaction():
            self.create_schemas()
            for name in names:
                self.execute(self.create_table_expr(self.spec.table(name)))

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
    def conform(self, name: str, data: pa.Table) -> pa.Table:
        """Arrange `data` as the spec table: columns by name (any case), missing nullable ones null,
        values cast to the spec types. Unknown or missing required columns are errors."""
        spec = self.spec.table(name)
        by_lower = {c.lower(): c for c in data.column_names}
        unknown = sorted(set(by_lower) - set(spec.column_names))
        if unknown:
            raise CdmError(f"table {name}: unknown column(s) {', '.join(unknown)}")
        arrays = []
        for f in spec.fields:
            if f.name in by_lower:
                col = data.column(by_lower[f.name])
                try:
                    col = pc.cast(col, f.arrow_type())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise CdmError(f"table {name}, column {f.name}: cannot read as {f.type}: {e}") from e
            elif f.required:
                raise CdmError(f"table {name}: required column {f.name} is missing")
            else:
                col = pa.nulls(data.num_rows, f.arrow_type())
            arrays.append(col)
        return pa.Table.from_arrays(arrays, schema=spec.arrow_schema())

    @contextmanager
    def bounded_bulk_write(self, nbytes: int) -> Iterator[Cdm]:
        """Hold the engine's own cache to about ``nbytes`` while a long bulk write runs, so the process's
        memory does not grow with the data written (DuckDB files: the buffer pool; other engines keep
        their data in another process and need nothing)."""
        cap = getattr(self.engine, "cap_buffer_pool", None)
        restore = cap(nbytes) if cap is not None else None
        try:
            yield self
        finally:
            if restore is not None:
                restore()

    def insert_arrow(self, name: str, data: pa.Table) -> None:
        """Append rows to a CDM table (created if missing)."""
        conformed = self.conform(name, data)
        if not self.table_exists(name):
            self.create_tables([name])
        existing = self.columns(name) or []
        keep = [c for c in conformed.column_names if c in existing]
        self.engine.insert_arrow(self.qualified(name), conformed.select(keep))
