"""Concept-level plausibility (mercia.dq.concepts): every range, unit list and sex-specific concept is
checked on a CDM where faults are planted on each of them a known number of times, and a clean CDM
with the same concepts passes every concept-level check. The counts expected are those planted below,
by DQD's rules (a value below the low / above the high limit of its concept and unit; a unit outside the
concept's list, 0 and NULL excepted from the numerator and 0 from the denominator; a record of a
sex-specific concept for a person of the other gender)."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from mercia.cdm import Cdm
from mercia.dq import run_checks
from mercia.dq.catalogue import CONCEPT_GENDER, CONCEPT_RANGES, CONCEPT_UNITS
from mercia.dq.concepts import GENDER_TABLE, MEASURES, SEX_SPECIFIC, UNIT_NAMES

D = dt.date(2015, 6, 1)
TYPE = 32817
MALE, FEMALE = 1, 2  # person ids
NOT_A_UNIT = 9_999_999
VOCAB = Path(__file__).resolve().parents[1] / "src" / "mercia" / "vocab" / "data" / "CONCEPT.csv"


def test_the_table_covers_common_measurements_and_sex_specific_concepts() -> None:
    assert len(MEASURES) >= 60 and len(CONCEPT_RANGES) >= 100 and len(SEX_SPECIFIC) >= 40
    assert len({m.concept_id for m in MEASURES}) == len(MEASURES)
    assert len({c for c, *_ in SEX_SPECIFIC}) == len(SEX_SPECIFIC)
    for m in MEASURES:
        assert m.ranges and all(low < high for low, high in m.ranges.values()), m
        assert set(m.ranges) <= set(UNIT_NAMES), m  # every unit is a named UCUM concept
        assert CONCEPT_UNITS[m.concept_id][1] == tuple(m.ranges)
    assert {domain for _, _, domain, _ in SEX_SPECIFIC} == set(GENDER_TABLE)
    sexes = {sex for _, _, _, sex in SEX_SPECIFIC}
    assert sexes == {"Male", "Female"}
    assert sum(s == "Male" for *_, s in SEX_SPECIFIC) >= 15 and sum(s == "Female" for *_, s in SEX_SPECIFIC) >= 15


def _known_concepts(eunomia_dir: Path | None) -> dict[int, tuple[str, str, str]]:
    """concept_id -> (domain, vocabulary, code) from the bundled vocabulary and, if present, Eunomia's."""
    out: dict[int, tuple[str, str, str]] = {}
    with VOCAB.open(newline="") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            out[int(r["concept_id"])] = (r["domain_id"], r["vocabulary_id"], r["concept_code"])
    if eunomia_dir is not None:
        t = pq.read_table(eunomia_dir / "concept.parquet",
                          columns=["concept_id", "domain_id", "vocabulary_id", "concept_code"]).to_pylist()
        out.update({r["concept_id"]: (r["domain_id"], r["vocabulary_id"], r["concept_code"]) for r in t})
    return out


def test_ids_agree_with_the_vocabularies_that_hold_them(eunomia_dir: Path) -> None:
    known = _known_concepts(eunomia_dir)
    seen = 0
    for m in MEASURES:
        if m.concept_id in known:
            seen += 1
            assert known[m.concept_id][0] == "Measurement", m
        for unit in m.ranges:
            if unit in known:
                assert known[unit] == ("Unit", "UCUM", UNIT_NAMES[unit]), (unit, known[unit])
    for concept, _, domain, _ in SEX_SPECIFIC:
        if concept in known:
            seen += 1
            assert known[concept][0] == domain, concept
    assert seen >= 25  # a good part of the table is in the vocabularies at hand


# ---- a world with every concept of the table ------------------------------------------------------------

def _concept_rows() -> list[dict[str, Any]]:
    ids = {0: ("No matching concept", "Metadata"), 8507: ("MALE", "Gender"), 8532: ("FEMALE", "Gender"),
           TYPE: ("EHR", "Type Concept"), NOT_A_UNIT: ("a unit no measurement is in", "Unit")}
    ids.update({m.concept_id: (m.name, "Measurement") for m in MEASURES})
    ids.update({u: (name, "Unit") for u, name in UNIT_NAMES.items()})
    ids.update({c: (name, domain) for c, name, domain, _ in SEX_SPECIFIC})
    return [{"concept_id": c, "concept_name": n, "domain_id": d, "vocabulary_id": "Test", "concept_class_id": "X",
             "standard_concept": "S", "concept_code": str(c), "valid_start_date": dt.date(1970, 1, 1),
             "valid_end_date": dt.date(2099, 12, 31)} for c, (n, d) in ids.items()]


def _below(low: float) -> float:
    return low - abs(low) * 0.5 - 1


def _above(high: float) -> float:
    return high * 1.5 + 1


def build(cdm: Cdm, faults: bool) -> dict[str, tuple[int, int]]:
    """Write the world; return check id -> (numerator, denominator) as planted."""
    cdm.create_tables()
    rows: dict[str, list[dict[str, Any]]] = {"concept": _concept_rows(), "person": [
        {"person_id": MALE, "gender_concept_id": 8507, "year_of_birth": 1960, "race_concept_id": 0,
         "ethnicity_concept_id": 0},
        {"person_id": FEMALE, "gender_concept_id": 8532, "year_of_birth": 1965, "race_concept_id": 0,
         "ethnicity_concept_id": 0}],
        "observation_period": [{"observation_period_id": p, "person_id": p, "observation_period_start_date":
                                dt.date(2000, 1, 1), "observation_period_end_date": dt.date(2020, 12, 31),
                                "period_type_concept_id": TYPE} for p in (MALE, FEMALE)],
        "measurement": [], "condition_occurrence": [], "procedure_occurrence": []}
    expected: dict[str, tuple[int, int]] = {}

    def measure(concept: int, value: float | None, unit: int | None) -> None:
        rows["measurement"].append({"measurement_id": len(rows["measurement"]) + 1, "person_id": MALE,
                                    "measurement_concept_id": concept, "measurement_date": D,
                                    "measurement_type_concept_id": TYPE, "value_as_number": value,
                                    "unit_concept_id": unit})

    for i, m in enumerate(MEASURES):
        for j, (unit, (low, high)) in enumerate(m.ranges.items()):
            # in range: the middle and both limits (a limit itself is plausible); a row without a value
            values = [(low + high) / 2, low, high, None]
            n_low, n_high = (1 + (i + j) % 2, 1 + i % 3) if faults else (0, 0)
            values += [_below(low)] * n_low + [_above(high)] * n_high
            for v in values:
                measure(m.concept_id, v, unit)
            with_value = len(values) - 1
            expected[f"concept_plausiblevaluelow_measurement_value_as_number_{m.concept_id}_{unit}"] = (
                n_low, with_value)
            expected[f"concept_plausiblevaluehigh_measurement_value_as_number_{m.concept_id}_{unit}"] = (
                n_high, with_value)
        # unit 0 (excepted from both counts) and NULL (in the denominator only)
        measure(m.concept_id, 1.0, 0)
        measure(m.concept_id, 1.0, None)
        n_bad = (1 + i % 2) if faults else 0
        for _ in range(n_bad):
            measure(m.concept_id, 1.0, NOT_A_UNIT)
        den = sum(4 + (1 + (i + j) % 2) + (1 + i % 3) if faults else 4 for j in range(len(m.ranges))) + 1 + n_bad
        expected[f"concept_plausibleunitconceptids_measurement_measurement_concept_id_{m.concept_id}"] = (n_bad, den)

    for i, (concept, _, domain, sex) in enumerate(SEX_SPECIFIC):
        table, fld = GENDER_TABLE[domain]
        right, wrong = (MALE, FEMALE) if sex == "Male" else (FEMALE, MALE)
        n_wrong = (1 + i % 3) if faults else 0
        for person in [right, right] + [wrong] * n_wrong:
            key = "condition_occurrence_id" if table == "condition_occurrence" else "procedure_occurrence_id"
            row = {key: len(rows[table]) + 1, "person_id": person, fld: concept}
            if table == "condition_occurrence":
                row.update(condition_start_date=D, condition_type_concept_id=TYPE)
            else:
                row.update(procedure_date=D, procedure_type_concept_id=TYPE)
            rows[table].append(row)
        expected[f"concept_plausiblegender_{table}_{fld}_{concept}"] = (n_wrong, 2 + n_wrong)
    for table, rs in rows.items():
        cdm.insert_rows(table, rs)
    return expected


def _concept_results(cdm: Cdm):
    r = run_checks(cdm, today=dt.date(2026, 1, 1)).results
    return r[r.checkLevel == "CONCEPT"].set_index("checkId")


def test_planted_faults_on_every_concept_are_found_exactly(any_cdm: Cdm) -> None:
    expected = build(any_cdm, faults=True)
    r = _concept_results(any_cdm)
    assert r.isError.sum() == 0, r.loc[r.isError == 1, "error"].to_dict()
    assert len(expected) == len(r) == 2 * len(CONCEPT_RANGES) + len(CONCEPT_UNITS) + len(CONCEPT_GENDER)
    got = {k: (int(r.at[k, "numViolatedRows"]), int(r.at[k, "numDenominatorRows"])) for k in expected}
    assert got == expected
    # every planted fault is well above the 5% threshold: each check fails
    assert r.failed.sum() == len(r)


def test_a_clean_site_passes_every_concept_level_check(duck_cdm: Cdm) -> None:
    expected = build(duck_cdm, faults=False)
    r = _concept_results(duck_cdm)
    got = {k: (int(r.at[k, "numViolatedRows"]), int(r.at[k, "numDenominatorRows"])) for k in expected}
    assert got == expected
    assert r.failed.sum() == 0 and r.isError.sum() == 0 and r.notApplicable.sum() == 0
    assert r.passed.sum() == len(r)


@pytest.mark.parametrize("share, fails", [(5, False), (6, True)])
def test_the_concept_threshold_is_five_percent(duck_cdm: Cdm, share: int, fails: bool) -> None:
    # 100 heart rates, `share` of them above 300/min: 5% passes, 6% fails (DQD: fails when above)
    duck_cdm.create_tables()
    heart_rate = [{"concept_id": 3027018, "concept_name": "Heart rate", "domain_id": "Measurement",
                      "vocabulary_id": "LOINC", "concept_class_id": "X", "standard_concept": "S",
                      "concept_code": "8867-4", "valid_start_date": dt.date(1970, 1, 1),
                      "valid_end_date": dt.date(2099, 12, 31)}]
    duck_cdm.insert_rows("concept", heart_rate)
    duck_cdm.insert_rows("person", [{"person_id": 1, "gender_concept_id": 8507, "year_of_birth": 1960,
                                     "race_concept_id": 0, "ethnicity_concept_id": 0}])
    duck_cdm.insert_rows("observation_period", [{"observation_period_id": 1, "person_id": 1,
                                                 "observation_period_start_date": dt.date(2000, 1, 1),
                                                 "observation_period_end_date": dt.date(2020, 1, 1),
                                                 "period_type_concept_id": TYPE}])
    duck_cdm.insert_rows("measurement", [
        {"measurement_id": k, "person_id": 1, "measurement_concept_id": 3027018, "measurement_date": D,
         "measurement_type_concept_id": TYPE, "value_as_number": 400 if k < share else 70, "unit_concept_id": 8541}
        for k in range(100)])
    r = _concept_results(duck_cdm)
    row = r.loc["concept_plausiblevaluehigh_measurement_value_as_number_3027018_8541"]
    assert (int(row.numViolatedRows), int(row.numDenominatorRows), bool(row.failed)) == (share, 100, fails)
