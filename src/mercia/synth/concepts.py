"""Concept ids the generator writes, looked up once from ``mercia.vocab.catalog`` (never hard-coded)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from mercia.errors import VocabularyError
from mercia.synth.params import ACUTE, CHRONIC_KEYS

# Drugs in a fixed order: a drug's index in this tuple is its code inside the generator.
DRUG_KEYS: tuple[str, ...] = (
    "metformin", "empagliflozin", "dapagliflozin", "gliclazide", "atorvastatin", "simvastatin", "ramipril",
    "lisinopril", "amlodipine", "bisoprolol", "furosemide", "warfarin", "apixaban", "rivaroxaban",
    "celecoxib", "diclofenac", "ibuprofen", "naproxen", "omeprazole", "lansoprazole", "salbutamol",
    "sertraline", "levothyroxine", "amoxicillin",
)
DRUG = {k: i for i, k in enumerate(DRUG_KEYS)}

# Condition codes inside the generator: chronic conditions first, then acute outcomes.
ACUTE_CONDITION = {a.key: ("heart_failure" if a.key == "heart_failure_admission" else a.key) for a in ACUTE}
CONDITION_KEYS: tuple[str, ...] = CHRONIC_KEYS + tuple(ACUTE_CONDITION[a.key] for a in ACUTE)

MEASUREMENT_KEYS: tuple[str, ...] = (
    "systolic_bp", "diastolic_bp", "bmi", "hba1c", "egfr", "creatinine", "total_cholesterol",
)
MEASUREMENT_UNIT = {
    "systolic_bp": "mmhg", "diastolic_bp": "mmhg", "bmi": "kg_m2", "hba1c": "mmol_per_mol",
    "egfr": "ml_min_173m2", "creatinine": "umol_per_l", "total_cholesterol": "mmol_per_l",
}
VISIT_KEYS: tuple[str, ...] = ("gp", "outpatient", "inpatient", "emergency")


@dataclass(frozen=True)
class ConceptTables:
    gender: dict[str, int]
    race: list[int]  # by race index white, black, asian, mixed, other
    race_source: list[str]
    not_hispanic: int
    visit: np.ndarray  # by visit type index
    visit_source: list[str]
    type_ehr: int
    type_prescription: int
    type_lab: int
    type_registration: int
    type_death: int
    condition: np.ndarray  # by condition code
    condition_source: list[str]
    condition_source_concept: np.ndarray
    drug: np.ndarray  # clinical product by drug code
    drug_ingredient: np.ndarray
    drug_source: list[str]
    drug_source_concept: np.ndarray
    measurement: np.ndarray
    measurement_source: list[str]
    unit: np.ndarray
    unit_source: list[str]


def _get(group: dict, key: str, what: str):
    try:
        return group[key]
    except KeyError:
        raise VocabularyError(f"mercia.vocab.catalog has no {what} {key!r}; the synthetic generator needs it") from None


@cache
def concept_tables() -> ConceptTables:
    from mercia.vocab import catalog as c

    return ConceptTables(
        gender={k: _get(c.GENDER, k, "gender").concept_id for k in ("male", "female")},
        race=[_get(c.RACE, k, "race").concept_id for k in ("white", "black", "asian", "mixed", "other")],
        race_source=["White", "Black", "Asian", "Mixed", "Other"],
        not_hispanic=_get(c.ETHNICITY, "not_hispanic", "ethnicity").concept_id,
        visit=np.array([_get(c.VISITS, k, "visit").concept_id for k in VISIT_KEYS], dtype=np.int64),
        visit_source=list(VISIT_KEYS),
        type_ehr=_get(c.TYPE_CONCEPTS, "ehr", "type concept").concept_id,
        type_prescription=_get(c.TYPE_CONCEPTS, "ehr_prescription", "type concept").concept_id,
        type_lab=_get(c.TYPE_CONCEPTS, "lab", "type concept").concept_id,
        type_registration=_get(c.TYPE_CONCEPTS, "registration", "type concept").concept_id,
        type_death=_get(c.TYPE_CONCEPTS, "death", "type concept").concept_id,
        condition=np.array([_get(c.CONDITIONS, k, "condition").concept_id for k in CONDITION_KEYS], np.int64),
        condition_source=[_get(c.CONDITION_SOURCE_CODES, k, "condition source code").code for k in CONDITION_KEYS],
        condition_source_concept=np.array(
            [_get(c.CONDITION_SOURCE_CODES, k, "condition source code").concept_id for k in CONDITION_KEYS], np.int64
        ),
        drug=np.array([_get(c.DRUG_PRODUCTS, k, "drug product").concept_id for k in DRUG_KEYS], np.int64),
        drug_ingredient=np.array([_get(c.DRUG_INGREDIENTS, k, "drug ingredient").concept_id for k in DRUG_KEYS],
                                 np.int64),
        drug_source=[_get(c.DRUG_SOURCE_CODES, k, "drug source code").code for k in DRUG_KEYS],
        drug_source_concept=np.array(
            [_get(c.DRUG_SOURCE_CODES, k, "drug source code").concept_id for k in DRUG_KEYS], np.int64
        ),
        measurement=np.array([_get(c.MEASUREMENTS, k, "measurement").concept_id for k in MEASUREMENT_KEYS],
                             np.int64),
        measurement_source=[_get(c.MEASUREMENTS, k, "measurement").concept_code for k in MEASUREMENT_KEYS],
        unit=np.array([_get(c.UNITS, MEASUREMENT_UNIT[k], "unit").concept_id for k in MEASUREMENT_KEYS], np.int64),
        unit_source=[_get(c.UNITS, MEASUREMENT_UNIT[k], "unit").concept_code for k in MEASUREMENT_KEYS],
    )
