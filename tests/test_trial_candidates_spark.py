"""Criteria that count zero, and trial candidates, on Apache Spark: the same events and lists as DuckDB.

Spark 4.1+ let a UNION ALL report its children's partitioning (spark.sql.unionOutputPartitioning), and
with adaptive execution a criteria group over several criteria counting zero came out wrong (an "any
of: no eGFR below 15, no eGFR at all" met by 46 events instead of 300) or failed with "Can't zip RDDs
with unequal numbers of partitions"; the Spark engine turns that setting off (mercia.cdm.engines.spark).
Runs with MERCIA_TEST_SPARK=1, one Spark session for the module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from mercia.cdm import Cdm
from mercia.cohorts import model as m
from mercia.cohorts.compiler import bound, compile_cohort
from mercia.trials.candidates import find_candidates
from mercia.trials.source import load_trial
from test_trial_candidates import EGFR, T2D, TRIAL, load_tables, oracle, random_tables

pytestmark = pytest.mark.spark

YEAR_BEFORE = {"Start": {"Days": 365, "Coeff": -1}, "End": {"Days": 0, "Coeff": 1}}


def _egfr(value: dict[str, Any] | None, occurrence: tuple[int, int]) -> dict[str, Any]:
    body: dict[str, Any] = {"CodesetId": 1, **({"ValueAsNumber": value} if value else {})}
    return {"Criteria": {"Measurement": body}, "StartWindow": YEAR_BEFORE,
            "Occurrence": {"Type": occurrence[0], "Count": occurrence[1]}}


def _concept_set(i: int, concept: int) -> dict[str, Any]:
    return {"id": i, "name": str(concept), "expression": {"items": [{"concept": {"CONCEPT_ID": concept}}]}}


# Entry: the first T2D record. Rule 0: no eGFR below 30 and some eGFR (in the year before); rule 1: no
# eGFR below 30, or no eGFR at all. Occurrence type 0 is "exactly", 2 "at least".
DEFINITION = {
    "ConceptSets": [_concept_set(0, T2D), _concept_set(1, EGFR)],
    "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0, "First": True}}],
                        "ObservationWindow": {"PriorDays": 0, "PostDays": 0}, "PrimaryCriteriaLimit": {"Type": "First"}},
    "InclusionRules": [
        {"name": "some eGFR, none below 30", "expression": {"Type": "ALL", "CriteriaList": [
            _egfr({"Value": 30, "Op": "lt"}, (0, 0)), _egfr(None, (2, 1))]}},
        {"name": "no eGFR below 30, or none at all", "expression": {"Type": "ALL", "Groups": [{"Type": "ANY", "CriteriaList": [
            _egfr({"Value": 30, "Op": "lt"}, (0, 0)), _egfr(None, (0, 0))]}]}},
    ],
}


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return random_tables()


@pytest.fixture(scope="module")
def spark_cdm(spark: Any, tables: dict[str, pd.DataFrame]) -> Cdm:
    for schema in ("cand_cdm", "cand_results"):
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {schema}")
    return load_tables(Cdm.from_spark(spark, cdm_schema="cand_cdm", results_schema="cand_results"), tables)


@pytest.fixture(scope="module")
def duck(tables: dict[str, pd.DataFrame]) -> Any:
    cdm = load_tables(Cdm.open(), tables)
    yield cdm
    cdm.close()


def _run(cdm: Cdm, expression: m.CohortExpression) -> tuple[list[tuple], list[tuple]]:
    c = compile_cohort(cdm, expression)
    rows, masks = c.rows_query(), c.mask_counts_query()
    return (sorted((int(s), str(a), str(b)) for s, a, b in cdm.fetch_all(rows, bound(rows, c.params))),
            sorted((int(a), int(b), int(n)) for a, b, n in cdm.fetch_all(masks, bound(masks, c.params))))


def test_a_group_of_criteria_counting_zero_matches_duckdb(spark_cdm: Cdm, duck: Cdm) -> None:
    expression = m.CohortExpression.model_validate(DEFINITION)
    on_spark, on_duck = _run(spark_cdm, expression), _run(duck, expression)
    rows, masks = on_duck
    # The data has all three kinds of event: an eGFR below 30 (neither rule), no eGFR (rule 1 only),
    # eGFR but none below 30 (both).
    assert rows and {mask for mode, mask, _ in masks if mode == 0} == {0, 2, 3}
    assert on_spark == on_duck


def test_candidates_on_spark_match_the_oracle(spark_cdm: Cdm, tables: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    p = tmp_path / "t2d_test.yaml"
    p.write_text(yaml.safe_dump(TRIAL, sort_keys=False))
    got = [c.to_dict() for c in find_candidates(spark_cdm, load_trial(p)).candidates]
    assert got == oracle(tables) and got

