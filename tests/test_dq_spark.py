"""Data-quality checks on Apache Spark give the numbers DuckDB gives, on OHDSI's Eunomia sample.
Runs with MERCIA_TEST_SPARK=1 (pyspark and Java 17 needed); in CI a missing pyspark is a failure."""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

import pytest

from mercia.cdm import Cdm
from mercia.cdm.load import load_folder
from mercia.dq import run_checks

pytestmark = pytest.mark.spark
TODAY = dt.date(2026, 1, 1)


@pytest.fixture(scope="module")
def spark_cdm(spark: object, eunomia_dir: Path) -> Cdm:
    # External tables over the Parquet files: nothing is copied, and the CDM tables stay read-only.
    spark.sql("CREATE DATABASE IF NOT EXISTS eunomia_dq")  # type: ignore[attr-defined]
    for p in sorted(eunomia_dir.glob("*.parquet")):
        if not spark.catalog.tableExists(f"eunomia_dq.{p.stem}"):  # type: ignore[attr-defined]
            spark.catalog.createTable(f"eunomia_dq.{p.stem}", path=str(p), source="parquet")  # type: ignore[attr-defined]
    return Cdm.from_spark(spark, cdm_schema="eunomia_dq", results_schema="mercia_results")


def test_checks_on_spark_equal_duckdb(spark_cdm: Cdm, eunomia_dir: Path) -> None:
    on_spark = run_checks(spark_cdm, today=TODAY).results.set_index("checkId")
    with Cdm.open() as duck:
        # The same tables as Spark's, no others (a table DuckDB lacks fails cdmTable on both).
        load_folder(duck, eunomia_dir)
        present = {p.stem for p in eunomia_dir.glob("*.parquet")}
        for t in duck.spec.tables:
            if t not in present and duck.table_exists(t):
                duck.execute(f"DROP TABLE {duck.qualified(t)}")
        on_duck = run_checks(duck, today=TODAY).results.set_index("checkId")
    assert on_spark.isError.sum() == 0, on_spark.loc[on_spark.isError == 1, "error"].head().to_dict()
    cols = ["numViolatedRows", "numDenominatorRows", "failed", "notApplicable", "notApplicableReason"]
    assert on_spark[cols].equals(on_duck.loc[on_spark.index, cols])
    assert (on_spark.notApplicable == 0).sum() > 300 and on_spark.failed.sum() > 10


def test_profile_on_spark_equals_duckdb(spark_cdm: Cdm, eunomia_dir: Path) -> None:
    from mercia.dq.profile import run_profile

    on_spark = run_profile(spark_cdm)
    with Cdm.open() as duck:
        load_folder(duck, eunomia_dir)
        on_duck = run_profile(duck)

    def norm(df):
        cols = list(df.columns)
        return df.sort_values(cols).reset_index(drop=True)

    assert norm(on_spark.results).equals(norm(on_duck.results))
    pd_cols = ["analysis_id", "stratum_1", "stratum_2", "count_value"]
    assert norm(on_spark.results_dist[pd_cols]).equals(norm(on_duck.results_dist[pd_cols]))
    assert (on_spark.results_dist.sort_values(pd_cols)["median_value"].to_numpy()
            == on_duck.results_dist.sort_values(pd_cols)["median_value"].to_numpy()).all()


def test_check_types_spec_on_spark(spark: object) -> None:
    """The hand-counted numerators and denominators of every check type (tests/test_dq_spec.py, on DuckDB
    and PostgreSQL there) on Spark too."""
    from test_dq_spec import assert_spec, results_for

    schema = "dq_spec_" + secrets.token_hex(4)
    cdm = Cdm.from_spark(spark, cdm_schema=schema, results_schema=schema)
    try:
        assert_spec(results_for(cdm))
    finally:
        cdm.execute(f"DROP DATABASE IF EXISTS {schema} CASCADE")
