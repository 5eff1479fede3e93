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


# ---- Circe's statistics tables (generateStats), against CohortGenerator and circepy ------------------
CG_IDS = [1, 2, 3, 4]


def _csv_rows(name: str, columns: list[str]) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = {}
    with open(COHORTS_DIR / "cohortgenerator" / "expected_results" / name) as f:
        for r in csv.DictReader(f):
            row = tuple(int(r[c]) if r[c].lstrip("-").isdigit() else (r[c] or None) for c in columns)
            out.setdefault(int(r["cohort_definition_id"]), []).append(row)
    return {k: sorted(v) for k, v in out.items()}


def test_stats_tables_match_cohortgenerator(eunomia: Path, generated: dict) -> None:
    """The five tables as OHDSI's CohortGenerator wrote them for cohortgenerator/1..4 on Eunomia."""
    from mercia.cohorts.stats import read_stats

    expected = {
        "cohort_inclusion": _csv_rows("cg_cohort_inclusion.csv", ["rule_sequence", "name", "description"]),
        "cohort_inclusion_result": _csv_rows("cg_cohort_inc_result.csv", ["inclusion_rule_mask", "person_count", "mode_id"]),
        "cohort_inclusion_stats": _csv_rows("cg_cohort_inc_stats.csv", ["rule_sequence", "person_count", "gain_count",
                                                                        "person_total", "mode_id"]),
        "cohort_summary_stats": _csv_rows("cg_cohort_summary_stats.csv", ["base_count", "final_count", "mode_id"]),
        "cohort_censor_stats": _csv_rows("cg_cohort_censor_stats.csv", ["lost_count"]),
    }
    with Cdm.open(eunomia, read_only=True) as cdm:
        for cid in CG_IDS:
            got = read_stats(cdm, cid)
            for table, by_id in expected.items():
                assert got[table] == by_id.get(cid, []), (cid, table)
    assert expected["cohort_censor_stats"][4] == [(50,)]  # the check has teeth: cohort 4 lost 50 persons


@pytest.mark.oracle
@pytest.mark.slow
def test_stats_tables_match_circe(eunomia: Path, generated: dict, oracle_db: Path) -> None:
    """The same tables as Circe's own SQL writes them (run by circepy) for the shared definitions."""
    from mercia.cohorts.stats import read_stats

    with Cdm.open(eunomia, read_only=True) as cdm:
        mine = {p.stem: read_stats(cdm, cohort_id(p)) for p in DEFINITIONS}
    for path in DEFINITIONS:
        oracle = run_circe(oracle_db, path, cohort_id=cohort_id(path), results_schema="circe_stats")
        got = mine[path.stem]
        assert got["cohort_inclusion_result"] == sorted(
            (r["inclusion_rule_mask"], r["person_count"], r["mode_id"]) for r in oracle.inclusion_result), path.stem
        assert got["cohort_inclusion_stats"] == sorted(
            (s["rule_sequence"], s["person_count"], s["gain_count"], s["person_total"], s["mode_id"])
            for s in oracle.inclusion_stats), path.stem
        assert got["cohort_summary_stats"] == sorted(
            (s["base_count"], s["final_count"], s["mode_id"]) for s in oracle.summary_stats), path.stem
        assert got["cohort_censor_stats"] == sorted((s["lost_count"],) for s in oracle.censor_stats), path.stem


def test_stats_replaced_with_the_cohort(tmp_path: Path) -> None:
    """A regenerated id's rows are replaced, rule-less definitions leave no stale inclusion rows, other
    ids keep theirs, and stats=False writes nothing."""
    from mercia.cohorts.stats import read_stats

    db = eunomia_duckdb(tmp_path)
    defs = {cid: load_circe_file(COHORTS_DIR / "cohortgenerator" / f"{cid}.json") for cid in (1, 3)}
    with Cdm.open(db) as cdm:
        generate_cohorts(cdm, [(7, defs[3]), (8, defs[3])])
        assert len(read_stats(cdm, 7)["cohort_inclusion"]) == 2
        # id 7 now holds a definition without rules: its inclusion rows go, id 8's stay
        renamed = defs[1].model_copy(update={"name": defs[3].name})
        cdm.execute("DELETE FROM results.cohort_definition WHERE cohort_definition_id = 7")
        generate_cohorts(cdm, [(7, renamed)])
        assert all(rows == [] for rows in read_stats(cdm, 7).values())
        assert read_stats(cdm, 8)["cohort_summary_stats"] == [(1800, 266, 0), (1800, 266, 1)]
        generate_cohorts(cdm, [(9, defs[3])], stats=False)
        assert all(rows == [] for rows in read_stats(cdm, 9).values())
