"""Spec tests of the check types: a small CDM whose rows break each check a known number of times, and the
numerator and denominator each check must give (counted by hand from the rows below, by DQD's rules).
Run on every engine (DuckDB, PostgreSQL; Spark in test_dq_spark.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from mercia.cdm import Cdm
from mercia.dq import run_checks

D = dt.date
TYPE = 32817  # EHR (Type Concept)


def _concept(cid: int, name: str, domain: str, cls: str, standard: str | None) -> dict[str, Any]:
    return {"concept_id": cid, "concept_name": name, "domain_id": domain, "vocabulary_id": "Test",
            "concept_class_id": cls, "standard_concept": standard, "concept_code": str(cid),
            "valid_start_date": D(1970, 1, 1), "valid_end_date": D(2099, 12, 31)}


CONCEPTS = [
    _concept(0, "No matching concept", "Metadata", "Undefined", None),
    _concept(8507, "MALE", "Gender", "Gender", "S"), _concept(8532, "FEMALE", "Gender", "Gender", "S"),
    _concept(201826, "Type 2 diabetes mellitus", "Condition", "Clinical Finding", "S"),
    _concept(4163261, "Malignant tumor of prostate", "Condition", "Clinical Finding", "S"),
    _concept(44814724, "a non-standard condition code", "Condition", "ICD10 code", None),
    _concept(1503297, "Metformin", "Drug", "Ingredient", "S"),
    _concept(1503298, "metformin 500 MG Oral Tablet", "Drug", "Clinical Drug", "S"),
    _concept(TYPE, "EHR", "Type Concept", "Type Concept", "S"),
    _concept(3004249, "Systolic blood pressure", "Measurement", "Clinical Observation", "S"),
    _concept(8876, "millimeter mercury column", "Unit", "Unit", "S"),
    _concept(8554, "percent", "Unit", "Unit", "S"),
    _concept(9201, "Inpatient Visit", "Visit", "Visit", "S"),
]


def _person(pid: int, gender: int, y: int, m: int | None, d: int | None) -> dict[str, Any]:
    return {"person_id": pid, "gender_concept_id": gender, "year_of_birth": y, "month_of_birth": m,
            "day_of_birth": d, "race_concept_id": 0, "ethnicity_concept_id": 0}


def _condition(cid: int, pid: int, concept: int, start: dt.date, end: dt.date | None, visit: int | None,
               source: str) -> dict[str, Any]:
    return {"condition_occurrence_id": cid, "person_id": pid, "condition_concept_id": concept,
            "condition_start_date": start, "condition_end_date": end, "condition_type_concept_id": TYPE,
            "visit_occurrence_id": visit, "condition_source_value": source}


def _drug(did: int, pid: int, start: dt.date, quantity: float, days: int) -> dict[str, Any]:
    return {"drug_exposure_id": did, "person_id": pid, "drug_concept_id": 1503298, "drug_exposure_start_date": start,
            "drug_exposure_end_date": start + dt.timedelta(days=9), "drug_type_concept_id": TYPE,
            "quantity": quantity, "days_supply": days}


def _measurement(mid: int, value: float | None, unit: int | None, kind: int | None = TYPE) -> dict[str, Any]:
    return {"measurement_id": mid, "person_id": 1, "measurement_concept_id": 3004249,
            "measurement_date": D(2015, 1, 1), "measurement_type_concept_id": kind, "value_as_number": value,
            "unit_concept_id": unit}


ROWS: dict[str, list[dict[str, Any]]] = {
    "concept": CONCEPTS,
    # Person 4 is born in 1800 (before 1850); person 3 has no month and day of birth (1 January counts).
    "person": [_person(1, 8507, 1960, 1, 1), _person(2, 8532, 1970, 5, 10), _person(3, 8507, 1980, None, None),
               _person(4, 8532, 1800, 1, 1)],
    "death": [{"person_id": 2, "death_date": D(2020, 1, 1), "death_type_concept_id": TYPE}],
    "observation_period": [
        {"observation_period_id": 1, "person_id": 1, "observation_period_start_date": D(2000, 1, 1),
         "observation_period_end_date": D(2020, 12, 31), "period_type_concept_id": TYPE},
        {"observation_period_id": 2, "person_id": 2, "observation_period_start_date": D(2000, 1, 1),
         "observation_period_end_date": D(2019, 12, 31), "period_type_concept_id": TYPE},
        {"observation_period_id": 3, "person_id": 3, "observation_period_start_date": D(2010, 1, 1),
         "observation_period_end_date": D(2009, 1, 1), "period_type_concept_id": TYPE},  # ends before it starts
    ],
    "visit_occurrence": [
        {"visit_occurrence_id": 1, "person_id": 1, "visit_concept_id": 9201, "visit_start_date": D(2015, 1, 1),
         "visit_end_date": D(2015, 1, 3), "visit_type_concept_id": TYPE},
        {"visit_occurrence_id": 2, "person_id": 2, "visit_concept_id": 9201, "visit_start_date": D(2020, 6, 1),
         "visit_end_date": D(2020, 6, 1), "visit_type_concept_id": TYPE},  # 152 days after death
    ],
    "condition_occurrence": [
        _condition(1, 1, 201826, D(2015, 1, 2), D(2015, 1, 1), 1, "E11"),  # ends the day before it starts
        _condition(2, 1, 201826, D(2015, 2, 1), None, 1, "E11"),  # 29 days after its visit ended
        _condition(3, 2, 4163261, D(2019, 1, 1), None, None, "C61"),  # prostate, in a woman
        _condition(4, 2, 201826, D(2020, 3, 15), None, None, "E11"),  # 74 days after death
        _condition(5, 3, 1503298, D(2015, 1, 1), None, None, "X"),  # a drug concept
        _condition(6, 3, 0, D(2015, 1, 1), None, None, "X1"),  # unmapped
        _condition(7, 1, 44814724, D(2015, 1, 1), None, None, "E11.9"),  # not standard
        _condition(8, 99, 201826, D(2015, 1, 1), None, None, "E11"),  # no such person
        _condition(9, 1, 201826, D(1949, 1, 1), None, None, "E11"),  # before 1950 and before birth (1960)
        _condition(10, 3, 201826, D(1979, 6, 1), None, None, "E11"),  # before birth (1980-01-01)
    ],
    "drug_exposure": [_drug(1, 1, D(2015, 1, 1), 0, 400), _drug(1, 1, D(2015, 2, 1), 10, 10),  # id 1 twice
                      _drug(2, 2, D(2015, 3, 1), 10, 10)],
    "drug_era": [
        {"drug_era_id": 1, "person_id": 1, "drug_concept_id": 1503298, "drug_era_start_date": D(2015, 1, 1),
         "drug_era_end_date": D(2015, 2, 10)},  # a clinical drug, not an ingredient
        {"drug_era_id": 2, "person_id": 1, "drug_concept_id": 1503297, "drug_era_start_date": D(2015, 1, 1),
         "drug_era_end_date": D(2015, 2, 10)},
    ],
    "measurement": [_measurement(1, 120, 8876), _measurement(2, 400, 8876), _measurement(3, 10, 8876),
                    _measurement(4, 12, 8554), _measurement(5, None, 8876), _measurement(6, None, 0, kind=None)],
}

# check id -> (numerator, denominator), by hand from ROWS.
EXPECTED: dict[str, tuple[int, int]] = {
    "field_isforeignkey_condition_occurrence_person_id": (1, 10),
    "field_fkdomain_condition_occurrence_condition_concept_id": (1, 10),
    "field_isstandardvalidconcept_condition_occurrence_condition_concept_id": (1, 10),
    "field_standardconceptrecordcompleteness_condition_occurrence_condition_concept_id": (1, 10),
    "field_sourcevaluecompleteness_condition_occurrence_condition_source_value": (1, 5),
    "field_plausibleduringlife_condition_occurrence_condition_start_date": (1, 2),
    "field_plausibleafterbirth_condition_occurrence_condition_start_date": (2, 10),
    "field_plausiblestartbeforeend_condition_occurrence_condition_start_date": (1, 1),
    "field_withinvisitdates_condition_occurrence_condition_start_date": (1, 2),
    "field_plausiblevaluelow_condition_occurrence_condition_start_date": (1, 10),
    "field_measurevaluecompleteness_condition_occurrence_condition_end_date": (9, 10),
    "concept_plausiblegender_condition_occurrence_condition_concept_id_4163261": (1, 1),
    "table_measurepersoncompleteness_condition_occurrence": (1, 4),
    "field_plausiblevaluelow_person_year_of_birth": (1, 4),
    "field_plausiblestartbeforeend_observation_period_observation_period_start_date": (1, 3),
    "field_plausibleduringlife_visit_occurrence_visit_start_date": (1, 1),
    "field_plausiblevaluehigh_visit_occurrence_visit_start_date": (0, 2),
    "field_isprimarykey_drug_exposure_drug_exposure_id": (2, 3),
    "field_plausiblevaluelow_drug_exposure_quantity": (1, 3),
    "field_plausiblevaluehigh_drug_exposure_days_supply": (1, 3),
    "field_fkclass_drug_era_drug_concept_id": (1, 2),
    "concept_plausiblevaluehigh_measurement_value_as_number_3004249_8876": (1, 3),
    "concept_plausiblevaluelow_measurement_value_as_number_3004249_8876": (1, 3),
    "concept_plausibleunitconceptids_measurement_measurement_concept_id_3004249": (1, 5),
    "field_isrequired_measurement_measurement_type_concept_id": (1, 6),
    "field_standardconceptrecordcompleteness_measurement_unit_concept_id": (1, 6),
    "field_fkdomain_measurement_unit_concept_id": (0, 6),
    "field_cdmdatatype_measurement_measurement_id": (0, 6),
}
# Failed or not, by the thresholds (0 for keys and required fields; 1% and 5% otherwise: those above fail).
PASSING = {"field_plausiblevaluehigh_visit_occurrence_visit_start_date", "field_fkdomain_measurement_unit_concept_id",
           "field_cdmdatatype_measurement_measurement_id",
           "field_measurevaluecompleteness_condition_occurrence_condition_end_date",  # threshold 100
           "table_measurepersoncompleteness_condition_occurrence"}  # 25% of persons, threshold 95%


def build_world(cdm: Cdm) -> None:
    cdm.create_tables()
    cdm.allow_nulls("measurement", "measurement_type_concept_id")
    for table, rows in ROWS.items():
        cdm.insert_rows(table, rows)


def results_for(cdm: Cdm):
    build_world(cdm)
    return run_checks(cdm, today=D(2026, 1, 1)).results.set_index("checkId")


def assert_spec(results) -> None:
    assert results.isError.sum() == 0, results.loc[results.isError == 1, "error"].to_dict()
    got = {k: (int(results.at[k, "numViolatedRows"]), int(results.at[k, "numDenominatorRows"])) for k in EXPECTED}
    assert got == EXPECTED
    for k in EXPECTED:
        assert results.at[k, "failed"] == (0 if k in PASSING else 1), k


def test_check_types_spec(any_cdm: Cdm) -> None:
    assert_spec(results_for(any_cdm))


def test_not_applicable_rules(duck_cdm: Cdm) -> None:
    r = results_for(duck_cdm)
    # An empty table's checks, an unpopulated field's, a concept absent from the data.
    assert r.at["field_isrequired_note_note_id", "notApplicableReason"] == "Table NOTE is empty."
    assert r.at["field_plausiblestartbeforeend_drug_exposure_drug_exposure_start_datetime",
                "notApplicableReason"] == "Field DRUG_EXPOSURE.DRUG_EXPOSURE_START_DATETIME is not populated."
    assert r.at["concept_plausiblevaluehigh_measurement_value_as_number_3038553_9531", "notApplicable"] == 1
    # but measurePersonCompleteness of an empty table still counts (every person lacks it), as in DQD
    row = r.loc["table_measurepersoncompleteness_procedure_occurrence"]
    assert (row.notApplicable, row.numViolatedRows, row.failed) == (0, 4, 1)


@pytest.mark.parametrize("name", ["plausibleDuringLife", "withinVisitDates"])
def test_a_check_reading_a_missing_table_is_not_applicable(duck_cdm: Cdm, name: str) -> None:
    build_world(duck_cdm)
    other = "death" if name == "plausibleDuringLife" else "visit_occurrence"
    duck_cdm.execute(f"DROP TABLE {duck_cdm.qualified(other)}")
    r = run_checks(duck_cdm).results
    row = r[(r.checkName == name) & (r.cdmTableName == "CONDITION_OCCURRENCE")].iloc[0]
    assert row.notApplicable == 1 and row.notApplicableReason == f"Table {other.upper()} does not exist."
