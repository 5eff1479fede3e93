"""Apache Spark through a SparkSession.

Spark SQL has no multi-statement transactions (`begin`, `commit` and `rollback` do nothing, so writers
stage and swap tables themselves), no DELETE on its file tables (rows are replaced by overwriting a
table or a partition), no temporary tables of a connection and no information_schema.

Three ways in: a session the caller made (`Cdm.from_spark`); `spark:FOLDER`, a local session in this
process over a folder of Parquet CDM tables (`FOLDER/person.parquet` or `FOLDER/person/`, a file or a
folder of parts, each registered as a table of the CDM schema; the results schema's tables are kept in
`FOLDER/results/`, so cohorts written by one run are there for the next); and `sc://host:port`, a Spark
Connect server (a cluster), whose catalogue already holds the tables.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from mercia.cdm.engines.base import Engine
from mercia.cdm.engines.transforms import interval_times_unit, single_argument_extrema
from mercia.errors import CdmError, ConfigError

# Tables partitioned on Spark, and by which column: a cohort's rows are replaced by overwriting its partition.
PARTITIONS = {"cohort": "cohort_definition_id"}
# Session settings the engine needs for correct answers, set on the session it is given.
# spark.sql.unionOutputPartitioning (Spark 4.1+, on by default; SPARK-52921) lets a UNION ALL report its
# children's hash partitioning so that a GROUP BY or join above it skips its shuffle. With adaptive query
# execution the children's shuffles are then coalesced or reused independently, so the union's inputs no
# longer agree partition by partition: a cohort's criteria group over several criteria counting zero (an
# "any of" whose parts are LEFT JOIN + GROUP BY + HAVING COUNT(...) = 0) lost events or failed with "Can't
# zip RDDs with unequal numbers of partitions" (tests/test_trial_candidates_spark.py). Off, the union is a
# plain concatenation followed by a shuffle, as before Spark 4.1.
SESSION_CONF = {"spark.sql.unionOutputPartitioning": "false"}
LOCAL_PREFIX = "spark:"  # spark:FOLDER, a local session over a folder of Parquet tables
CONNECT_PREFIX = "sc://"  # a Spark Connect server
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SparkEngine(Engine):
    dialect = "spark"
    param_style = "colon"  # :name, values a dict (spark.sql(sql, args=...))
    default_cdm_schema = "default"
    driver_modules = ("pyspark", "py4j")
    supports_transactions = False
    supports_delete = False
    supports_temp_tables = False
    has_information_schema = False
    not_null_constraints = False
    binds_insert_values = False

    def __init__(self, session: Any, *, target: str = "spark", folder: Path | None = None,
                 stop_on_close: bool = False) -> None:
        self.spark = session
        self.target = target
        for key, value in SESSION_CONF.items():
            session.conf.set(key, value)
        self.folder = folder
        self._stop_on_close = stop_on_close
        self._warehouse: str | None = None  # a session's scratch warehouse made here, removed on close
        if folder is not None:
            self.default_cdm_schema = "cdm"  # type: ignore[misc]  # the folder's own database

    @classmethod
    def local(cls, target: str, *, create: bool = True) -> SparkEngine:
        """`spark:FOLDER`: a local Spark session over a folder of Parquet CDM tables (created if missing
        and `create`); the session is this process's, made here unless one is running already."""
        folder = Path(target.removeprefix(LOCAL_PREFIX)).expanduser()
        if not str(target.removeprefix(LOCAL_PREFIX)):
            raise ConfigError(f"CDM target {target!r}: give a folder after 'spark:', e.g. spark:data/cdm")
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"CDM target {target!r}: {str(folder)!r} is a file; give a folder of Parquet tables")
        if not folder.exists():
            if not create:
                raise CdmError(f"no CDM at {target!r} (folder not found)")
            if not folder.parent.exists():
                raise ConfigError(f"cannot create {str(folder)!r}: folder {str(folder.parent)!r} does not exist")
            folder.mkdir()
        SparkSession = _session_class(target)
        running = SparkSession.getActiveSession()
        warehouse = None if running else tempfile.mkdtemp(prefix="mercia-spark-warehouse-")
        session = running or (
            SparkSession.builder.master("local[*]").appName("mercia")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.session.timeZone", "UTC")
            # Nothing lasting is kept in the warehouse (the folder's databases have locations of their own).
            .config("spark.sql.warehouse.dir", warehouse)
            .getOrCreate())
        if running is None:
            session.sparkContext.setLogLevel("ERROR")
        engine = cls(session, target=f"{LOCAL_PREFIX}{folder}", folder=folder.resolve(), stop_on_close=running is None)
        engine._warehouse = warehouse
        return engine

    @classmethod
    def connect(cls, url: str) -> SparkEngine:
        """`sc://host:port`: a session of its own on a Spark Connect server (a cluster), closed with the engine.

        Made by the Connect client's own builder: pyspark's generic builder refuses a remote session in a
        process that runs a local one, and marks the whole process as Connect-only once it made one."""
        _session_class(url)  # pyspark itself
        try:
            from pyspark.sql.connect.session import SparkSession as ConnectSession
        except ImportError as e:
            raise ConfigError(f"CDM target {url!r}: Spark Connect needs pyspark's connect client "
                              f"(pip install 'pyspark[connect]'): {e}") from None
        try:
            session = ConnectSession.builder.remote(url).create()
        except ImportError as e:  # grpcio, pandas, zstandard, ... checked when the client starts
            raise ConfigError(f"CDM target {url!r}: Spark Connect needs pyspark's connect client "
                              f"(pip install 'pyspark[connect]'): {e}") from None
        except ValueError as e:  # a malformed sc:// URL
            raise ConfigError(f"CDM target {url!r}: not a Spark Connect URL (sc://host:port): {e}") from None
        return cls(session, target=url, stop_on_close=True)

    def prepare_schemas(self, cdm_schema: str, vocab_schema: str, results_schema: str) -> None:
        """Over a folder: the CDM (and vocabulary) schema is a database located at the folder, each of its
        Parquet tables registered; the results schema one at FOLDER/results, its tables registered too."""
        if self.folder is None:
            return
        for schema in dict.fromkeys((cdm_schema, vocab_schema, results_schema)):
            where = self.folder / "results" if schema == results_schema and schema != cdm_schema else self.folder
            self._register(schema, where, skip={"results"} if where == self.folder else set())

    def _register(self, schema: str, where: Path, skip: set[str]) -> None:
        where.mkdir(exist_ok=True)
        db = exp.to_identifier(schema).sql(dialect="spark")
        location = exp.Literal.string(str(where)).sql(dialect="spark")
        self._execute(f"CREATE DATABASE IF NOT EXISTS {db} LOCATION {location}", None)
        held = Path(self.spark.catalog.getDatabase(schema).locationUri.removeprefix("file:"))
        if held.resolve() != where.resolve():
            raise ConfigError(f"this Spark session's database {schema!r} is at {str(held)!r}, not in {str(where)!r}: "
                              "open one folder per session, or give other schemas (--cdm-schema, --results-schema)")
        for entry in sorted(where.iterdir()):
            name = entry.name.removesuffix(".parquet")
            if name in skip or not _TABLE_NAME.match(name) or (entry.is_dir() and not any(entry.rglob("*.parquet"))):
                continue  # not a table, or one without files (Spark cannot read an empty one's columns)
            if entry.is_file() and entry.suffix != ".parquet":
                continue
            if not self.spark.catalog.tableExists(f"{schema}.{name.lower()}"):
                self._register_table(schema, name.lower(), entry)

    def _register_table(self, schema: str, name: str, entry: Path) -> None:
        table = exp.Table(this=exp.to_identifier(name), db=exp.to_identifier(schema)).sql(dialect="spark")
        path = exp.Literal.string(str(entry)).sql(dialect="spark")
        self._execute(f"CREATE TABLE {table} USING PARQUET LOCATION {path}", None)
        if any(c.isPartition for c in self.spark.catalog.listColumns(f"{schema}.{name}")):
            # The catalogue keeps a partitioned table's partitions: find those in its folder.
            self._execute(f"ALTER TABLE {table} RECOVER PARTITIONS", None)

    def add_empty_tables(self, tables: dict[tuple[str, str], pa.Schema]) -> None:
        """Over a folder that holds a CDM: each table of the specification that the folder lacks, or holds
        without Parquet files (an empty table written by `cdm load`, or left out by `cdm export`), is written
        as a Parquet file of no rows with the specification's columns and types, and registered.

        A file rather than a table known only to this session's catalogue: the folder then reads the same
        in the next process and in other tools (DuckDB, pandas, another Spark), which cannot tell the
        columns of a folder with no files. Tables of the results schema are left alone (they are made, and
        partitioned, when first written). A folder with none of the tables (a new one, before a load) is left
        empty, so that a load of another CDM version still finds it empty."""
        if self.folder is None:
            return
        at_folder = {schema for schema, _ in tables if self._location(schema) == self.folder}
        mine = {key: schema for key, schema in tables.items() if key[0] in at_folder}
        missing = {key: schema for key, schema in mine.items()
                   if not self.spark.catalog.tableExists(f"{key[0]}.{key[1].lower()}")}
        if not missing or len(missing) == len(mine):
            return
        for (db, name), schema in missing.items():
            name = name.lower()
            folder = self.folder / name
            entry = folder if folder.is_dir() else self.folder / f"{name}.parquet"
            if entry.exists() and (entry.is_file() or any(entry.rglob("*.parquet"))):
                continue  # a table there that was not registered (not a CDM one of this name): leave it
            target = folder / "part-00000-empty.parquet" if folder.is_dir() else entry
            tmp = target.with_name(f".{target.name}.partial")
            try:
                pq.write_table(schema.empty_table(), tmp)
                tmp.rename(target)
            except OSError:  # a folder this process may not write: the table stays missing, as before
                tmp.unlink(missing_ok=True)
                continue
            self._register_table(db, name, entry)

    def _location(self, schema: str) -> Path | None:
        if not self.spark.catalog.databaseExists(schema):
            return None
        return Path(self.spark.catalog.getDatabase(schema).locationUri.removeprefix("file:")).resolve()

    def another_connection(self) -> SparkEngine:
        """The same session (Spark runs the queries of several threads of one session)."""
        return SparkEngine(self.spark, target=self.target, folder=self.folder)

    def close(self) -> None:
        if self._stop_on_close:
            self.spark.stop()
        if self._warehouse is not None:
            shutil.rmtree(self._warehouse, ignore_errors=True)

    def transform(self, tree: exp.Expression) -> exp.Expression:
        """Constructs of the templates' DuckDB dialect that sqlglot does not carry to Spark SQL."""
        return tree.transform(_portable)

    def _execute(self, sql: str, params: dict[str, Any] | None) -> None:
        self.spark.sql(sql, args=params).collect()

    def _fetch_arrow(self, sql: str, params: dict[str, Any] | None) -> pa.Table:
        return self.spark.sql(sql, args=params).toArrow()

    def _fetch_all(self, sql: str, params: dict[str, Any] | None) -> list[tuple]:
        return [tuple(r) for r in self.spark.sql(sql, args=params).collect()]

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

    def create_schema(self, name: str) -> str:
        return f"CREATE DATABASE IF NOT EXISTS {exp.to_identifier(name).sql(dialect='spark')}"

    def table_properties(self, table: str) -> exp.Properties | None:
        if table not in PARTITIONS:
            return None
        return exp.Properties(expressions=[
            exp.FileFormatProperty(this=exp.Var(this="PARQUET")),
            exp.PartitionedByProperty(this=exp.Schema(expressions=[exp.to_identifier(PARTITIONS[table])])),
        ])

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

    def replace_rows(self, table: exp.Table, key: str, value: exp.Expression, columns: list[str],
                     rows: exp.Select) -> list[exp.Expression]:
        """One statement: the partition of `key` = `value` overwritten (no DELETE; no transaction either,
        so a failed run is not all-or-nothing across the partitions it wrote; tests/test_cohort_spark.py)."""
        table = table.copy()
        table.set("partition", exp.Partition(expressions=[exp.EQ(this=exp.column(key), expression=value.copy())]))
        return [exp.Insert(this=table, expression=rows.select(*columns, append=False), overwrite=True)]


def _portable(node: exp.Expression) -> exp.Expression:
    return single_argument_extrema(interval_times_unit(node))


def _session_class(target: str) -> Any:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(f"CDM target {target!r} needs pyspark (pip install 'pyspark==4.*') and Java 17") from None
    return SparkSession
