"""The data-quality checks against numerators and denominators computed independently with pandas on
OHDSI's Eunomia sample, on DuckDB and PostgreSQL; bad input; the results files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cdm.load import load_folder
from mercia.cli import app
from mercia.dq import run_checks
from mercia.dq.output import write_results
from mercia.errors import CdmError


def _read(folder: Path, table: str) -> pd.DataFrame:
    return pd.read_parquet(folder / f"{table}.parquet")


def _expected(folder: Path) -> dict[str, tuple[int, int]]:
    """(numerator, denominator) of several checks, by pandas from the Parquet files, not by SQL."""
    person, de = _read(folder, "person"), _read(folder, "drug_exposure")
    co, vo = _read(folder, "condition_occurrence"), _read(folder, "visit_occurrence")
    concept, ce = _read(folder, "concept"), _read(folder, "condition_era")
    exp: dict[str, tuple[int, int]] = {}
    dup = de["drug_exposure_id"].duplicated(keep=False)
    exp["field_isprimarykey_drug_exposure_drug_exposure_id"] = (int(dup.sum()), len(de))
    exp["field_plausiblevaluelow_drug_exposure_days_supply"] = (
        int((de["days_supply"] < 1).sum()), int(de["days_supply"].notna().sum()))
    exp["field_isforeignkey_person_race_concept_id"] = (
        int((~person["race_concept_id"].isin(concept["concept_id"])).sum()), len(person))
    exp["field_standardconceptrecordcompleteness_condition_era_condition_concept_id"] = (
        int((ce["condition_concept_id"] == 0).sum()), len(ce))
    both = de["drug_exposure_start_date"].notna() & de["drug_exposure_end_date"].notna()
    late = pd.to_datetime(de["drug_exposure_start_date"]) > pd.to_datetime(de["drug_exposure_end_date"])
    exp["field_plausiblestartbeforeend_drug_exposure_drug_exposure_start_date"] = (int((both & late).sum()),
                                                                                 int(both.sum()))
    j = de.merge(vo[["visit_occurrence_id", "visit_start_date", "visit_end_date"]], on="visit_occurrence_id")
    day = pd.to_datetime(j["drug_exposure_start_date"])
    outside = (day < pd.to_datetime(j["visit_start_date"]) - pd.Timedelta(days=7)) | (
        day > pd.to_datetime(j["visit_end_date"]) + pd.Timedelta(days=7))
    exp["field_withinvisitdates_drug_exposure_drug_exposure_start_date"] = (int(outside.sum()), len(j))
    exp["table_measurepersoncompleteness_drug_exposure"] = (
        int((~person["person_id"].isin(de["person_id"])).sum()), len(person))
    births = pd.to_datetime(pd.DataFrame({"year": person["year_of_birth"],
                                          "month": person["month_of_birth"].fillna(1),
                                          "day": person["day_of_birth"].fillna(1)}))
    birth = pd.to_datetime(person["birth_datetime"]).dt.normalize().fillna(births)
    j = co.merge(pd.DataFrame({"person_id": person["person_id"], "birth": birth}), on="person_id")
    exp["field_plausibleafterbirth_condition_occurrence_condition_start_date"] = (
        int((pd.to_datetime(j["condition_start_date"]) < j["birth"]).sum()), int(co["condition_start_date"].notna().sum()))
    std = concept.set_index("concept_id")
    j = co.merge(std[["standard_concept", "invalid_reason"]], left_on="condition_concept_id", right_index=True)
    bad = (j["condition_concept_id"] != 0) & ((j["standard_concept"] != "S") | j["invalid_reason"].notna())
    exp["field_isstandardvalidconcept_condition_occurrence_condition_concept_id"] = (
        int(bad.sum()), int(co["condition_concept_id"].notna().sum()))
    exp["field_measurevaluecompleteness_condition_occurrence_condition_end_date"] = (
        int(co["condition_end_date"].isna().sum()), len(co))
    return exp


@pytest.fixture(scope="module")
def expected(eunomia_dir: Path) -> dict[str, tuple[int, int]]:
    return _expected(eunomia_dir)


def test_eunomia_checks_match_pandas(eunomia_dir: Path, expected: dict[str, tuple[int, int]],
                                     cdm_factory: Callable[..., Cdm]) -> None:
    cdm = cdm_factory()
    load_folder(cdm, eunomia_dir)
    results = run_checks(cdm).results.set_index("checkId")
    assert results.isError.sum() == 0, results.loc[results.isError == 1, "error"].head().to_dict()
    got = {k: (int(results.at[k, "numViolatedRows"]), int(results.at[k, "numDenominatorRows"])) for k in expected}
    assert got == expected
    # Some of these are real findings on Eunomia (nonzero), so the comparison is not 0 == 0 throughout.
    assert sum(n for n, _ in expected.values()) > 1000
    assert results.at["field_isprimarykey_drug_exposure_drug_exposure_id", "failed"] == 1


def test_missing_required_table_is_one_clear_error(duck_cdm: Cdm) -> None:
    duck_cdm.create_tables(["person"])
    with pytest.raises(CdmError, match=r"need the CDM table\(s\) observation_period, missing from schema 'main'"):
        run_checks(duck_cdm)


def test_missing_optional_tables_are_not_applicable(duck_cdm: Cdm) -> None:
    duck_cdm.create_tables(["person", "observation_period", "concept"])
    duck_cdm.insert_rows("person", [{"person_id": 1, "gender_concept_id": 8507, "year_of_birth": 1970,
                                     "race_concept_id": 0, "ethnicity_concept_id": 0}])
    r = run_checks(duck_cdm).results.set_index("checkId")
    assert r.at["table_cdmtable_drug_exposure", "failed"] == 1  # DQD: a missing table fails cdmTable
    drug = r[(r.cdmTableName == "DRUG_EXPOSURE") & (r.checkName != "cdmTable")]
    assert len(drug) > 20 and (drug.notApplicable == 1).all() and (drug.failed == 0).all()
    assert set(drug.notApplicableReason) == {"Table DRUG_EXPOSURE does not exist."}
    # Person's own checks ran; one reading death (absent) is not applicable for that reason.
    assert r.at["field_isrequired_person_person_id", "passed"] == 1
    assert r.at["field_plausibleduringlife_observation_period_observation_period_start_date",
                "notApplicableReason"] == "Table OBSERVATION_PERIOD is empty."
    assert r.isError.sum() == 0


def test_results_files_in_dqd_shape(duck_cdm: Cdm, tmp_path: Path) -> None:
    duck_cdm.create_tables(["person", "observation_period"])
    duck_cdm.insert_rows("person", [{"person_id": 1, "gender_concept_id": 8507, "year_of_birth": 1800,
                                     "race_concept_id": 0, "ethnicity_concept_id": 0}])
    run = run_checks(duck_cdm)
    paths = write_results(run, tmp_path, source_name="test")
    doc = json.loads(paths["json"].read_text())
    assert set(doc) == {"startTimestamp", "endTimestamp", "executionTime", "executionTimeSeconds", "CheckResults",
                        "Metadata", "Overview"}
    row = next(r for r in doc["CheckResults"] if r["checkId"] == "field_plausiblevaluelow_person_year_of_birth")
    assert (row["numViolatedRows"], row["numDenominatorRows"], row["pctViolatedRows"], row["failed"]) == (1, 1, 1.0, 1)
    for key in ("checkName", "checkLevel", "checkDescription", "cdmTableName", "cdmFieldName", "conceptId",
                "unitConceptId", "category", "subcategory", "context", "thresholdValue", "notApplicable",
                "notApplicableReason", "isError", "passed", "error", "queryText", "executionTime"):
        assert key in row
    ov = doc["Overview"]
    assert ov["countTotal"] == len(doc["CheckResults"]) == len(pd.read_parquet(paths["parquet"]))
    assert ov["countOverallFailed"] == sum(r["failed"] for r in doc["CheckResults"]) >= 1
    assert ov["countPassed"] + ov["countOverallFailed"] == ov["countTotal"]


def test_cli_dq_check(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["dq", "check", "--cdm", str(tmp_path / "none.duckdb"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    db = tmp_path / "site.duckdb"
    with Cdm.open(db) as cdm:
        cdm.create_tables(["person"])
    r = runner.invoke(app, ["dq", "check", "--cdm", str(db), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1].startswith("error: data-quality checks need the CDM table(s) "
                                                        "observation_period")


def test_check_catalogue_reference_is_up_to_date() -> None:
    from mercia.dq.catalogue_doc import catalogue_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "reference" / "data-quality-checks.md"
    assert doc.read_text() == catalogue_markdown(), (
        "docs/reference/data-quality-checks.md is stale: regenerate it with "
        "`python -m mercia.dq.catalogue_doc > docs/reference/data-quality-checks.md`")
