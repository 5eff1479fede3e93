"""A custom era end strategy over drug exposures matched by their drug concept, their source concept, or both.

Circe's drug target is the UNION ALL of the exposures whose drug concept is in the codeset and those
whose source concept is: an exposure matching both is there twice. Mercia takes each such exposure once
(the era's two window passes sort half the rows where source concepts are the standard ones, as in
Mercia's synthetic sites). ``test_each_exposure_is_in_the_era_target_once`` checks that; the oracle test
checks the cohort's rows still equal Circe's on a world made to hit every case the argument in
compiler.custom_era rests on: exposures matching by both concepts, by the source concept only, exact
copies of exposures, exposures ending before they start, with gaps and offsets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlglot import exp

from cohort_strategies import CONCEPT_SETS, load_world
from mercia.cdm import Cdm
from mercia.cohorts.circe import parse_circe
from mercia.cohorts.compiler import compile_cohort
from oracle_support import circe_available, run_circe

DRUG_X = 4  # concept set 4: drug X's products (200, 201) through the ingredient 210; 202 is drug Y

WORLD_SQL = [
    # A third of the exposures carry their drug concept as source concept too (both match for drug X).
    "UPDATE drug_exposure SET drug_source_concept_id = drug_concept_id WHERE drug_exposure_id % 3 = 0",
    # Some of drug Y's exposures have a drug X source concept: matched by the source concept only.
    "UPDATE drug_exposure SET drug_source_concept_id = 200 WHERE drug_exposure_id % 3 = 1 AND drug_concept_id = 202",
    # Some exposures end before they start (their era of their own ends before it starts).
    "UPDATE drug_exposure SET drug_exposure_end_date = drug_exposure_start_date - 45 WHERE drug_exposure_id % 7 = 0",
    # Exact copies of a fifth of the exposures (another id, everything else the same).
    "INSERT INTO drug_exposure SELECT * REPLACE (drug_exposure_id + 1000000 AS drug_exposure_id) FROM drug_exposure "
    "WHERE drug_exposure_id % 5 = 0",
]


def load(cdm: Cdm) -> Cdm:
    load_world(cdm)
    for sql in WORLD_SQL:
        cdm.execute(sql)
    return cdm


def definition(primary: dict[str, Any], era: dict[str, Any]) -> dict[str, Any]:
    return {"ConceptSets": CONCEPT_SETS, "PrimaryCriteria": {
        "CriteriaList": [primary], "ObservationWindow": {"PriorDays": 0, "PostDays": 0},
        "PrimaryCriteriaLimit": {"Type": "All"}}, "QualifiedLimit": {"Type": "All"},
        "ExpressionLimit": {"Type": "All"}, "InclusionRules": [],
        "EndStrategy": {"CustomEra": {"DrugCodesetId": DRUG_X, **era}},
        "CollapseSettings": {"CollapseType": "ERA", "EraPad": 0}}


CASES = [
    ("drug-starts-gap-30", definition({"DrugExposure": {"CodesetId": DRUG_X}}, {"GapDays": 30, "Offset": 0})),
    ("drug-starts-gap-0-offset-7", definition({"DrugExposure": {"CodesetId": DRUG_X}}, {"GapDays": 0, "Offset": 7})),
    ("any-drug-gap-10-offset-minus-5", definition({"DrugExposure": {}}, {"GapDays": 10, "Offset": -5})),
    ("conditions-supply-override", definition({"ConditionOccurrence": {"CodesetId": 0}},
                                              {"GapDays": 30, "Offset": 0, "DaysSupplyOverride": 14})),
]


@pytest.fixture(scope="module")
def world() -> Iterator[Cdm]:
    cdm = load(Cdm.open(None))
    yield cdm
    cdm.close()


def test_the_world_has_every_case(world: Cdm) -> None:
    """Not vacuous: drug X exposures matching by both concepts, by the source only, copies, inverted ends."""
    ((both, source_only, copies, inverted),) = world.fetch_all(
        "SELECT count(*) FILTER (WHERE drug_concept_id IN (200, 201) AND drug_source_concept_id IN (200, 201)), "
        "count(*) FILTER (WHERE drug_concept_id = 202 AND drug_source_concept_id = 200), "
        "count(*) FILTER (WHERE drug_exposure_id > 1000000 AND drug_concept_id IN (200, 201)), "
        "count(*) FILTER (WHERE drug_exposure_end_date < drug_exposure_start_date AND drug_concept_id IN (200, 201)) "
        "FROM drug_exposure")
    assert min(both, source_only, copies, inverted) > 0


def _era_target(cdm: Cdm, d: dict[str, Any]) -> list[tuple]:
    c = compile_cohort(cdm, parse_circe(d))
    (name,) = [n for n, _ in c.ctes if n.startswith("era_drug_target")]
    q = c.over_pipeline(exp.select("person_id", "start_date", "end_date").from_(exp.to_identifier(name)))
    return sorted(cdm.fetch_all(q, c.params))


def test_each_exposure_is_in_the_era_target_once(world: Cdm) -> None:
    """The drug target holds each exposure of the cohort's persons matching by either concept once (as an
    independent query says), not twice when both its concepts match."""
    d = CASES[0][1]
    expected = sorted(world.fetch_all(
        "SELECT person_id, drug_exposure_start_date, COALESCE(drug_exposure_end_date, "
        "CAST(drug_exposure_start_date + CAST(days_supply AS INTEGER) AS DATE), CAST(drug_exposure_start_date + 1 AS DATE)) "
        "FROM drug_exposure WHERE (drug_concept_id IN (200, 201) OR drug_source_concept_id IN (200, 201)) "
        "AND person_id IN (SELECT de.person_id FROM drug_exposure de JOIN observation_period op "
        "ON op.person_id = de.person_id AND de.drug_exposure_start_date BETWEEN op.observation_period_start_date "
        "AND op.observation_period_end_date WHERE de.drug_concept_id IN (200, 201))"))
    assert expected
    assert _era_target(world, d) == expected


@pytest.fixture(scope="module")
def oracle_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not circe_available():
        pytest.skip("Circe oracle venv not available (bash tools/circe_oracle/setup.sh)")
    path = tmp_path_factory.mktemp("custom_era") / "world.duckdb"
    with Cdm.open(path) as cdm:
        load(cdm)
    return path


@pytest.mark.oracle
@pytest.mark.parametrize(("case_id", "d"), CASES, ids=[c for c, _ in CASES])
def test_custom_era_rows_match_circe(world: Cdm, oracle_world: Path, tmp_path: Path, case_id: str,
                                     d: dict[str, Any]) -> None:
    path = tmp_path / f"{case_id}.json"
    path.write_text(json.dumps(d), encoding="utf-8")
    oracle = run_circe(oracle_world, path, cohort_id=CASES.index((case_id, d)) + 1)
    c = compile_cohort(world, parse_circe(d))
    mine = sorted((int(s), a, b) for s, a, b in world.fetch_all(c.rows_query(), c.params))
    assert mine
    assert mine == sorted((r["subject_id"], r["cohort_start_date"], r["cohort_end_date"]) for r in oracle.rows.to_pylist())
