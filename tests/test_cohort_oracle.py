"""Mercia's cohorts on OHDSI's Eunomia GiBleed CDM, against OHDSI's numbers and OHDSI's own SQL.

* Reference counts (always run): OHDSI CohortGenerator's results for cohortgenerator/1..4.json and the
  Phenotype Library persons for 417/482/888 (0 for the diabetes definitions 503/957, as Eunomia has
  no diabetes), and CohortGenerator's inclusion statistics for cohort 3.
* Oracle (marked `oracle`, skipped without the oracle venv): identical rows, inclusion statistics and
  masks to Circe's SQL run by ohdsi-circepy on the same data.
* PostgreSQL (marked `postgres`): the same rows on PostgreSQL as on DuckDB.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mercia.cdm import Cdm
from mercia.cohorts.circe import load_circe_file
from mercia.cohorts.compiler import compile_cohort
from mercia.cohorts.generate import CohortResult, cohort_rows, generate_cohorts
from oracle_support import COHORTS_DIR, EUNOMIA_DIR, circe_available, eunomia_duckdb, run_circe

DEFINITIONS = sorted(COHORTS_DIR.glob("*/*.json"))
# (entries, persons) per definition, as OHDSI published them
REFERENCE = {"1": (1800, 1800), "2": (569, 569), "3": (266, 266), "4": (1750, 1750),
             "482": (None, 479), "417": (None, 479), "888": (None, 391), "503": (0, 0), "957": (0, 0)}

pytestmark = pytest.mark.skipif(not EUNOMIA_DIR.is_dir(), reason=f"no Eunomia data at {EUNOMIA_DIR}")


def cohort_id(path: Path) -> int:
    return int(path.stem)


@pytest.fixture(scope="module")
def eunomia(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mercia's own copy (the oracle writes into a separate file: DuckDB allows one writer process)."""
    return eunomia_duckdb(tmp_path_factory.mktemp("mercia"))


@pytest.fixture(scope="module")
def generated(eunomia: Path) -> dict[str, tuple[CohortResult, list[tuple]]]:
    with Cdm.open(eunomia) as cdm:
        defs = [(cohort_id(p), load_circe_file(p)) for p in DEFINITIONS]
        with pytest.warns(UserWarning):  # Eunomia's vocabulary is trimmed: unknown concept ids are reported
            results = generate_cohorts(cdm, defs)
        return {p.stem: (r, cohort_rows(cdm, r.cohort_id)) for p, r in zip(DEFINITIONS, results, strict=True)}


@pytest.mark.parametrize("path", DEFINITIONS, ids=[f"{p.parent.name}/{p.stem}" for p in DEFINITIONS])
def test_reference_counts(generated: dict, path: Path) -> None:
    result, _ = generated[path.stem]
    entries, persons = REFERENCE[path.stem]
    assert result.persons == persons
    if entries is not None:
        assert result.entries == entries


def test_reference_inclusion_stats_of_cohort_3(generated: dict) -> None:
    expected_dir = COHORTS_DIR / "cohortgenerator" / "expected_results"
    with open(expected_dir / "cg_cohort_inc_stats.csv") as f:
        expected = sorted(
            (int(r["rule_sequence"]), int(r["person_count"]), int(r["gain_count"]), int(r["person_total"]),
             int(r["mode_id"]))
            for r in csv.DictReader(f) if r["cohort_definition_id"] == "3")
    result, _ = generated["3"]
    got = sorted((s.rule_sequence, s.person_count, s.gain_count, s.person_total, s.mode_id) for s in result.attrition)
    assert got == expected
    with open(expected_dir / "cg_cohort_inc_result.csv") as f:
        masks = {(int(r["mode_id"]), int(r["inclusion_rule_mask"])): int(r["person_count"])
                 for r in csv.DictReader(f) if r["cohort_definition_id"] == "3"}
    assert result.mask_counts == masks


def test_reference_censor_loss_of_cohort_4(generated: dict) -> None:
    """CohortGenerator: the censor window (from 2000-01-01) drops 50 of 1800 people."""
    assert generated["1"][0].persons - generated["4"][0].persons == 50


@pytest.fixture(scope="module")
def oracle_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not circe_available():
        pytest.skip("Circe oracle venv not available (bash tools/circe_oracle/setup.sh)")
    return eunomia_duckdb(tmp_path_factory.mktemp("oracle"))


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("path", DEFINITIONS, ids=[f"{p.parent.name}/{p.stem}" for p in DEFINITIONS])
def test_same_as_circe(generated: dict, oracle_db: Path, path: Path) -> None:
    oracle = run_circe(oracle_db, path, cohort_id=cohort_id(path))
    result, rows = generated[path.stem]
    expected = sorted((r["subject_id"], r["cohort_start_date"], r["cohort_end_date"]) for r in oracle.rows.to_pylist())
    assert sorted((int(s), a, b) for s, a, b in rows) == expected
    assert (result.persons, result.entries) == (oracle.persons, oracle.entries)
    mine = sorted((s.mode_id, s.rule_sequence, s.person_count, s.gain_count, s.person_total) for s in result.attrition)
    theirs = sorted((s["mode_id"], s["rule_sequence"], s["person_count"], s["gain_count"], s["person_total"])
                    for s in oracle.inclusion_stats)
    assert mine == theirs
    if oracle.inclusion_result:
        assert result.mask_counts == {(r["mode_id"], r["inclusion_rule_mask"]): r["person_count"]
                                      for r in oracle.inclusion_result}


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_rows_equal_duckdb(generated: dict, pg_cdm_factory) -> None:
    from mercia.cdm.load import load_folder

    pg = pg_cdm_factory(version="5.3")
    load_folder(pg, EUNOMIA_DIR, version="5.3")
    with pytest.warns(UserWarning):
        results = generate_cohorts(pg, [(cohort_id(p), load_circe_file(p)) for p in DEFINITIONS])
    for path, res in zip(DEFINITIONS, results, strict=True):
        mine, duck_rows = generated[path.stem]
        assert [(int(s), a, b) for s, a, b in cohort_rows(pg, res.cohort_id)] == [
            (int(s), a, b) for s, a, b in duck_rows], path.stem
        assert (res.persons, res.entries, res.attrition) == (mine.persons, mine.entries, mine.attrition)
    # the single-query form (no temporary tables) agrees on PostgreSQL too, for a small definition
    c = compile_cohort(pg, load_circe_file(COHORTS_DIR / "phenotypelibrary" / "482.json").expression)
    assert len(pg.fetch_all(c.rows_query(), c.params)) == 479
