"""Cohorts on Apache Spark: the OHDSI CohortGenerator definitions on Eunomia give the rows DuckDB gives.

Runs with MERCIA_TEST_SPARK=1 (pyspark and Java 17 needed; CI installs them). In CI a missing pyspark
is a failure, not a skip, so the Spark tests cannot silently stop running. One Spark session serves
the whole module: starting one takes several seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mercia.cdm import Cdm
from mercia.cdm.load import load_folder
from mercia.cohorts.circe import load_circe_file
from mercia.cohorts.compiler import bound, compile_cohort
from mercia.cohorts.generate import cohort_rows, generate_cohorts
from mercia.cohorts.model import CohortDefinition
from shared_data import COHORTS

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[1]
CG_IDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def definitions() -> dict[int, CohortDefinition]:
    cg = COHORTS / "cohortgenerator"
    if not cg.is_dir():
        pytest.fail(f"OHDSI CohortGenerator definitions not found at {cg}")
    return {i: load_circe_file(cg / f"{i}.json") for i in CG_IDS}


@pytest.fixture(scope="module")
def spark_cdm(spark: object, eunomia_dir: Path) -> Cdm:
    # External tables over the Parquet files: nothing is copied, and the CDM tables stay read-only.
    spark.sql("CREATE DATABASE IF NOT EXISTS eunomia")  # type: ignore[attr-defined]
    for p in sorted(eunomia_dir.glob("*.parquet")):
        if not spark.catalog.tableExists(f"eunomia.{p.stem}"):  # type: ignore[attr-defined]
            spark.catalog.createTable(f"eunomia.{p.stem}", path=str(p), source="parquet")  # type: ignore[attr-defined]
    return Cdm.from_spark(spark, cdm_schema="eunomia", results_schema="mercia_results")


@pytest.fixture(scope="module")
def duck(eunomia_dir: Path, definitions: dict[int, CohortDefinition]) -> Iterator[Cdm]:
    cdm = Cdm.open()
    load_folder(cdm, eunomia_dir)
    generate_cohorts(cdm, list(definitions.items()))
    yield cdm
    cdm.close()


def _sorted(rows: list[tuple]) -> list[tuple]:
    return sorted((int(s), a, b) for s, a, b in rows)


@pytest.mark.parametrize("cid", CG_IDS)
def test_cohort_rows_match_duckdb(spark_cdm: Cdm, duck: Cdm, definitions: dict[int, CohortDefinition],
                                  cid: int) -> None:
    compiled = compile_cohort(spark_cdm, definitions[cid].expression)
    q = compiled.rows_query()
    on_spark = _sorted(spark_cdm.fetch_all(q, bound(q, compiled.params)))
    assert on_spark == _sorted(cohort_rows(duck, cid))
    assert on_spark  # OHDSI's counts: 1,800 / 569 / 266 / 1,750


def test_inclusion_rule_masks_match_duckdb(spark_cdm: Cdm, duck: Cdm, definitions: dict[int, CohortDefinition]) -> None:
    def masks(cdm: Cdm) -> list[tuple[int, int, int]]:
        c = compile_cohort(cdm, definitions[3].expression)
        q = c.mask_counts_query()
        return sorted((int(a), int(b), int(n)) for a, b, n in cdm.fetch_all(q, bound(q, c.params)))

    assert masks(spark_cdm) == masks(duck)


def test_generate_cohorts_on_spark(spark_cdm: Cdm, duck: Cdm, definitions: dict[int, CohortDefinition]) -> None:
    try:
        results = generate_cohorts(spark_cdm, list(definitions.items()))
    except Exception as e:
        # Known gap, and only this one: generate_cohorts replaces a cohort's rows with DELETE, which
        # Spark's (non-Delta) Parquet tables do not support. Any other failure fails the test.
        if "does not support DELETE" in str(e):
            pytest.xfail("generate_cohorts needs a Spark path (partitioned cohort table + INSERT OVERWRITE)")
        raise
    assert [(r.persons, r.entries) for r in results] == [(1800, 1800), (569, 569), (266, 266), (1750, 1750)]
    for cid in CG_IDS:
        assert _sorted(cohort_rows(spark_cdm, cid)) == _sorted(cohort_rows(duck, cid))


def test_dsl_cohort_on_spark(spark_cdm: Cdm, duck: Cdm) -> None:
    # The cohort language's definitions compile for Spark like any other.
    from mercia.cohorts.dsl import cohort, concepts, condition, drug

    nsaid = concepts("NSAIDs", ingredients=["celecoxib", "diclofenac"], descendants=True)
    bleed = concepts("GI bleed", conditions=["gi_bleeding"], descendants=True)
    d = (cohort("New NSAID users").entry(drug(nsaid).first()).require_prior_observation(days=365)
         .exclude(condition(bleed).within(days_before=365)).exit_at_end_of_exposure(gap_days=30)).build()

    def rows(cdm: Cdm) -> list[tuple]:
        c = compile_cohort(cdm, d.expression)
        q = c.rows_query()
        return _sorted(cdm.fetch_all(q, bound(q, c.params)))

    on_spark = rows(spark_cdm)
    assert on_spark and on_spark == rows(duck)
