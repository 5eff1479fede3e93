"""A small hand-made CDM and Circe-JSON builders for the cohort spec tests (tests/test_cohort_*.py); it holds no tests itself.

Three people, dates chosen so each construct of a cohort definition changes the answer:

person 1  male, born 1950   observation 2000-01-01 .. 2010-12-31
          condition 100 on 2001-03-01 (no end), 2002-06-01 .. 2002-06-10 (in visit 11),
          condition 101 (a child of 100) on 2003-01-01
          drug 200 2001-02-01 .. 2001-02-28 and 2001-03-10 .. 2001-04-10
          measurement 300 on 2001-03-05, 7.0 percent (unit 8554)
          visit 11 (inpatient, 9201) 2002-06-01 .. 2002-06-12
person 2  female, born 1990 observation 2005-01-01 .. 2006-12-31
          condition 100 on 2004-01-01 (before observation) and 2005-01-10
          drug 200 2006-06-01 .. 2006-06-30
          measurement 300 on 2005-02-01, 6.0 percent
          visit 21 (inpatient) 2005-01-01 .. 2005-01-05
person 3  male, born 1980   observation 2000-01-01 .. 2000-12-31 and 2002-01-01 .. 2002-12-31
          condition 100 on 2000-12-20 and 2002-05-01
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa

from mercia.cdm import Cdm

D = dt.date.fromisoformat

CONCEPTS = {100: "Condition A", 101: "Condition A, child", 200: "Drug X", 300: "Lab M", 9201: "Inpatient Visit",
            8507: "MALE", 8532: "FEMALE", 8554: "percent", 400: "Procedure P", 500: "Observation O",
            600: "Device V", 700: "Cause of death K"}
ANCESTRY = [(100, 101)]  # (ancestor, descendant); every concept is also its own ancestor

TABLES: dict[str, list[dict[str, Any]]] = {
    "person": [
        {"person_id": 1, "gender_concept_id": 8507, "year_of_birth": 1950, "race_concept_id": 0, "ethnicity_concept_id": 0},
        {"person_id": 2, "gender_concept_id": 8532, "year_of_birth": 1990, "race_concept_id": 0, "ethnicity_concept_id": 0},
        {"person_id": 3, "gender_concept_id": 8507, "year_of_birth": 1980, "race_concept_id": 0, "ethnicity_concept_id": 0},
    ],
    "observation_period": [
        {"observation_period_id": 1, "person_id": 1, "observation_period_start_date": D("2000-01-01"),
         "observation_period_end_date": D("2010-12-31"), "period_type_concept_id": 0},
        {"observation_period_id": 2, "person_id": 2, "observation_period_start_date": D("2005-01-01"),
         "observation_period_end_date": D("2006-12-31"), "period_type_concept_id": 0},
        {"observation_period_id": 3, "person_id": 3, "observation_period_start_date": D("2000-01-01"),
         "observation_period_end_date": D("2000-12-31"), "period_type_concept_id": 0},
        {"observation_period_id": 4, "person_id": 3, "observation_period_start_date": D("2002-01-01"),
         "observation_period_end_date": D("2002-12-31"), "period_type_concept_id": 0},
    ],
    "condition_occurrence": [
        {"condition_occurrence_id": 1, "person_id": 1, "condition_concept_id": 100,
         "condition_start_date": D("2001-03-01"), "condition_end_date": None, "condition_type_concept_id": 0},
        {"condition_occurrence_id": 2, "person_id": 1, "condition_concept_id": 100,
         "condition_start_date": D("2002-06-01"), "condition_end_date": D("2002-06-10"),
         "condition_type_concept_id": 0, "visit_occurrence_id": 11},
        {"condition_occurrence_id": 3, "person_id": 1, "condition_concept_id": 101,
         "condition_start_date": D("2003-01-01"), "condition_end_date": None, "condition_type_concept_id": 0},
        {"condition_occurrence_id": 4, "person_id": 2, "condition_concept_id": 100,
         "condition_start_date": D("2004-01-01"), "condition_end_date": None, "condition_type_concept_id": 0},
        {"condition_occurrence_id": 5, "person_id": 2, "condition_concept_id": 100,
         "condition_start_date": D("2005-01-10"), "condition_end_date": None, "condition_type_concept_id": 0},
        {"condition_occurrence_id": 6, "person_id": 3, "condition_concept_id": 100,
         "condition_start_date": D("2000-12-20"), "condition_end_date": None, "condition_type_concept_id": 0},
        {"condition_occurrence_id": 7, "person_id": 3, "condition_concept_id": 100,
         "condition_start_date": D("2002-05-01"), "condition_end_date": None, "condition_type_concept_id": 0},
    ],
    "drug_exposure": [
        {"drug_exposure_id": 1, "person_id": 1, "drug_concept_id": 200, "drug_exposure_start_date": D("2001-02-01"),
         "drug_exposure_end_date": D("2001-02-28"), "drug_type_concept_id": 0},
        {"drug_exposure_id": 2, "person_id": 1, "drug_concept_id": 200, "drug_exposure_start_date": D("2001-03-10"),
         "drug_exposure_end_date": D("2001-04-10"), "drug_type_concept_id": 0, "days_supply": 30},
        {"drug_exposure_id": 3, "person_id": 2, "drug_concept_id": 200, "drug_exposure_start_date": D("2006-06-01"),
         "drug_exposure_end_date": D("2006-06-30"), "drug_type_concept_id": 0},
    ],
    "measurement": [
        {"measurement_id": 1, "person_id": 1, "measurement_concept_id": 300, "measurement_date": D("2001-03-05"),
         "measurement_type_concept_id": 0, "value_as_number": 7.0, "unit_concept_id": 8554},
        {"measurement_id": 2, "person_id": 2, "measurement_concept_id": 300, "measurement_date": D("2005-02-01"),
         "measurement_type_concept_id": 0, "value_as_number": 6.0, "unit_concept_id": 8554,
         "range_low": 6.5, "range_high": 9.0},
    ],
    # one row in each remaining domain (no specimen table: a test relies on its absence)
    "procedure_occurrence": [
        {"procedure_occurrence_id": 1, "person_id": 1, "procedure_concept_id": 400, "procedure_date": D("2001-05-05"),
         "procedure_type_concept_id": 0},
    ],
    "observation": [
        {"observation_id": 1, "person_id": 2, "observation_concept_id": 500, "observation_date": D("2005-03-03"),
         "observation_type_concept_id": 0, "value_as_number": 3.0},
    ],
    "device_exposure": [
        {"device_exposure_id": 1, "person_id": 3, "device_concept_id": 600,
         "device_exposure_start_date": D("2002-02-02"), "device_type_concept_id": 0},
    ],
    "death": [{"person_id": 3, "death_date": D("2002-12-01"), "cause_concept_id": 700}],
    "condition_era": [
        {"condition_era_id": 1, "person_id": 1, "condition_concept_id": 100,
         "condition_era_start_date": D("2001-03-01"), "condition_era_end_date": D("2002-06-10"),
         "condition_occurrence_count": 2},
    ],
    "drug_era": [
        {"drug_era_id": 1, "person_id": 1, "drug_concept_id": 200, "drug_era_start_date": D("2001-02-01"),
         "drug_era_end_date": D("2001-04-10"), "drug_exposure_count": 2, "gap_days": 10},
    ],
    "visit_detail": [
        {"visit_detail_id": 111, "person_id": 1, "visit_detail_concept_id": 9201,
         "visit_detail_start_date": D("2002-06-02"), "visit_detail_end_date": D("2002-06-05"),
         "visit_detail_type_concept_id": 0, "visit_occurrence_id": 11},
    ],
    "visit_occurrence": [
        {"visit_occurrence_id": 11, "person_id": 1, "visit_concept_id": 9201, "visit_start_date": D("2002-06-01"),
         "visit_end_date": D("2002-06-12"), "visit_type_concept_id": 0},
        {"visit_occurrence_id": 21, "person_id": 2, "visit_concept_id": 9201, "visit_start_date": D("2005-01-01"),
         "visit_end_date": D("2005-01-05"), "visit_type_concept_id": 0},
    ],
}


def _rows(rows: list[dict[str, Any]]) -> pa.Table:
    cols = sorted({k for r in rows for k in r}, key=lambda k: next(i for i, r in enumerate(rows) if k in r))
    return pa.table({c: [r.get(c) for r in rows] for c in cols})


def load_world(cdm: Cdm) -> Cdm:
    tables = [*TABLES, "concept", "concept_ancestor", "concept_relationship", "cohort", "cohort_definition"]
    cdm.create_tables(tables)
    for name, rows in TABLES.items():
        cdm.insert_arrow(name, _rows(rows))
    cdm.insert_arrow("concept", pa.table({
        "concept_id": list(CONCEPTS), "concept_name": list(CONCEPTS.values()),
        "domain_id": ["x"] * len(CONCEPTS), "vocabulary_id": ["x"] * len(CONCEPTS),
        "concept_class_id": ["x"] * len(CONCEPTS), "concept_code": [str(c) for c in CONCEPTS],
        "valid_start_date": [D("1970-01-01")] * len(CONCEPTS), "valid_end_date": [D("2099-12-31")] * len(CONCEPTS),
    }))
    pairs = [(c, c) for c in CONCEPTS] + ANCESTRY
    cdm.insert_arrow("concept_ancestor", pa.table({
        "ancestor_concept_id": [a for a, _ in pairs], "descendant_concept_id": [d for _, d in pairs],
        "min_levels_of_separation": [0 if a == d else 1 for a, d in pairs],
        "max_levels_of_separation": [0 if a == d else 1 for a, d in pairs],
    }))
    return cdm


# ---- Circe JSON builders: definitions read as ATLAS writes them ---------------------------------
def concept_set(id_: int, *concept_ids: int, descendants: bool = False, name: str | None = None) -> dict:
    return {"id": id_, "name": name or f"set {id_}", "expression": {"items": [
        {"concept": {"CONCEPT_ID": c, "CONCEPT_NAME": CONCEPTS.get(c, "?")}, "isExcluded": False,
         "includeDescendants": descendants, "includeMapped": False} for c in concept_ids]}}


COND = concept_set(0, 100)  # condition A itself
COND_FAMILY = concept_set(1, 100, descendants=True)  # condition A and its child
DRUG = concept_set(2, 200)
LAB = concept_set(3, 300)
INPATIENT = concept_set(4, 9201)
PROC = concept_set(5, 400)
OBS = concept_set(6, 500)
DEVICE = concept_set(7, 600)
DEATH_CAUSE = concept_set(8, 700)
SETS = [COND, COND_FAMILY, DRUG, LAB, INPATIENT, PROC, OBS, DEVICE, DEATH_CAUSE]


def window(start: int | None, end: int | None, **flags: bool) -> dict:
    """Days relative to the index: negative before, positive after; None unbounded on that side."""

    def bound(days: int | None, side: int) -> dict:
        if days is None:
            return {"Coeff": side}
        return {"Days": abs(days), "Coeff": -1 if days < 0 else 1}

    w: dict[str, Any] = {"Start": bound(start, -1), "End": bound(end, 1)}
    w.update({k: v for k, v in flags.items()})
    return w


def correlated(criteria: dict, start_window: dict, *, at_least: int | None = None, exactly: int | None = None,
               at_most: int | None = None, distinct: bool = False, **extra: Any) -> dict:
    kind, count = next((k, v) for k, v in ((2, at_least), (0, exactly), (1, at_most)) if v is not None)
    return {"Criteria": criteria, "StartWindow": start_window,
            "Occurrence": {"Type": kind, "Count": count, "IsDistinct": distinct}, **extra}


def group(*criteria: dict, type_: str = "ALL", count: int | None = None, demographics: list | None = None,
          groups: list | None = None) -> dict:
    g: dict[str, Any] = {"Type": type_, "CriteriaList": list(criteria),
                         "DemographicCriteriaList": demographics or [], "Groups": groups or []}
    if count is not None:
        g["Count"] = count
    return g


def cohort(*primary: dict, limit: str = "All", qualified: str = "All", expression: str = "All",
           prior: int = 0, post: int = 0, **parts: Any) -> dict:
    return {"ConceptSets": SETS,
            "PrimaryCriteria": {"CriteriaList": list(primary),
                                "ObservationWindow": {"PriorDays": prior, "PostDays": post},
                                "PrimaryCriteriaLimit": {"Type": limit}},
            "QualifiedLimit": {"Type": qualified}, "ExpressionLimit": {"Type": expression},
            "CollapseSettings": {"CollapseType": "ERA", "EraPad": parts.pop("era_pad", 0)}, **parts}


def ends_at(field: str = "StartDate", offset: int = 0) -> dict:
    return {"DateOffset": {"DateField": field, "Offset": offset}}
