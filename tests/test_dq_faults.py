"""Planted faults (`mercia synth --faults`) are found exactly by the data-quality checks, and a clean
synthetic site fails only the checks it legitimately fails."""

from __future__ import annotations

import json
from functools import cache

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cli import app
from mercia.dq import run_checks
from mercia.errors import ConfigError
from mercia.synth import DEFAULT_SITES, generate_site
from mercia.synth.faults import FAULTS, parse_faults

PERSONS = 400
PROFILE = DEFAULT_SITES[0]
# What a clean synthetic site fails, and why (each legitimately):
# - measurePersonCompleteness of procedure_occurrence and observation: the generator writes no procedures
#   and no observations, so every person lacks them (100% > DQD's 95%);
# - sourceConceptRecordCompleteness of condition_source_concept_id: the bundled vocabulary holds no ICD-10
#   source concepts, so the generator writes the ICD-10 codes as source values with source concept 0.
CLEAN_FAILURES = {
    "table_measurepersoncompleteness_procedure_occurrence",
    "table_measurepersoncompleteness_observation",
    "field_sourceconceptrecordcompleteness_condition_occurrence_condition_source_concept_id",
}


def _site(seed: int, faults: dict[str, float] | None, cdm: Cdm | None = None) -> tuple[dict, pd.DataFrame]:
    own = cdm is None
    cdm = cdm or Cdm.open()
    try:
        truth = generate_site(cdm, persons=PERSONS, seed=seed, profile=PROFILE, faults=faults)
        return truth, run_checks(cdm).results.set_index("checkId")
    finally:
        if own:
            cdm.close()


@cache
def clean(seed: int) -> pd.DataFrame:
    return _site(seed, None)[1]


def _check_id(check: dict, concept: int | None = None, unit: int | None = None) -> str:
    parts = [check["level"], check["name"], check["table"].upper(), check["field"].upper()]
    parts += [str(x) for x in (concept, unit) if x is not None]
    return "_".join(parts).lower()


def _side_id(effect: dict) -> str:
    if effect["check"] == "measurePersonCompleteness":
        return f"table_measurepersoncompleteness_{effect['table']}"
    return _check_id({"level": "FIELD", "name": effect["check"], "table": effect["table"], "field": effect["field"]})


def assert_found_exactly(truth: dict, faulty: pd.DataFrame, base: pd.DataFrame) -> None:
    """Each fault's check counts exactly its rows (0 on the clean site), each declared side effect moves its
    check by exactly its count, and no other check's numerator moves."""
    expected = {cid: 0 for cid in base.index}
    for f in truth["planted_faults"]:
        if f["check"]["level"] == "CONCEPT":
            for c in f["by_concept"]:
                expected[_check_id(f["check"], c["concept_id"], c["unit_concept_id"])] += c["rows"]
            assert sum(c["rows"] for c in f["by_concept"]) == f["rows"]
        else:
            expected[_check_id(f["check"])] += f["rows"]
        for effect in f["side_effects"]:
            expected[_side_id(effect)] += effect.get("rows", effect.get("distinct_source_values"))
    num_clean = base["numViolatedRows"].fillna(0).astype(int)
    num_fault = faulty["numViolatedRows"].fillna(0).astype(int)
    moved = (num_fault - num_clean).to_dict()
    assert {k: v for k, v in moved.items() if v} == {k: v for k, v in expected.items() if v}
    for f in truth["planted_faults"]:
        if f["check"]["level"] == "FIELD":
            assert num_clean[_check_id(f["check"])] == 0  # the fault's check finds nothing on the clean site


def test_clean_site_fails_only_what_it_legitimately_fails() -> None:
    results = clean(11)
    assert set(results.index[results.failed == 1]) == CLEAN_FAILURES
    assert results.isError.sum() == 0
    assert len(results) > 1500  # the whole catalogue ran


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from([11, 12]),
       rates=st.dictionaries(st.sampled_from(sorted(FAULTS)), st.floats(0.005, 0.5), min_size=1, max_size=7))
def test_planted_faults_found_exactly(seed: int, rates: dict[str, float]) -> None:
    truth, faulty = _site(seed, rates)
    assert {f["fault"] for f in truth["planted_faults"]} == set(rates)
    assert_found_exactly(truth, faulty, clean(seed))


@pytest.mark.postgres
def test_planted_faults_found_exactly_on_postgres(pg_cdm: Cdm) -> None:
    rates = dict.fromkeys(FAULTS, 0.03)
    truth, faulty = _site(11, rates, pg_cdm)
    assert all(f["rows"] > 0 for f in truth["planted_faults"])
    assert_found_exactly(truth, faulty, clean(11))
    assert faulty.isError.sum() == 0


def test_unknown_fault_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError) as e:
        parse_faults("events_after_death=0.1,teleportation=0.2")
    assert "unknown fault 'teleportation'" in str(e.value)
    assert all(name in str(e.value) for name in FAULTS)
    for bad, words in (("end_before_start", "give a rate"), ("end_before_start=2", "outside (0, 1]"),
                       ("end_before_start=x", "not a number")):
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse_faults(bad)


def test_cli_refuses_unknown_fault(tmp_path) -> None:
    r = CliRunner().invoke(app, ["synth", "--persons", "10", "--sites", "1", "--out", str(tmp_path / "s"),
                                 "--faults", "gremlins=0.1"])
    assert r.exit_code == 1
    assert "unknown fault 'gremlins'" in r.output and "events_after_death" in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "s").exists()


def test_cli_writes_planted_faults_into_truth(tmp_path) -> None:
    r = CliRunner().invoke(app, ["synth", "--persons", "200", "--sites", "1", "--seed", "3", "--out",
                                 str(tmp_path / "s"), "--faults", "end_before_start=0.1"])
    assert r.exit_code == 0, r.output
    truth = json.loads(next((tmp_path / "s").glob("*.truth.json")).read_text())
    (fault,) = truth["planted_faults"]
    assert fault["fault"] == "end_before_start" and fault["rows"] > 0
    assert fault["check"] == {"name": "plausibleStartBeforeEnd", "level": "FIELD", "table": "drug_exposure",
                              "field": "drug_exposure_start_date"}
