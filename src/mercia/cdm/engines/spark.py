"""Apache Spark through a SparkSession.

Spark SQL has no multi-statement transactions (`begin`, `commit` and `rollback` do nothing, so writers
stage and swap tables themselves), no DELETE on its file tables (rows are replaced by overwriting a
table or a partition), no temporary tables of a connection and no information_schema.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from sqlglot import exp

from mercia.cdm.engines.base import Engine

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

    def __init__(self, session: Any) -> None:
        self.spark = session
        self.target = "spark"
        for key, value in SESSION_CONF.items():
            session.conf.set(key, value)

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
