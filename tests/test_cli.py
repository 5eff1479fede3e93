"""The `mercia` command: one clear line for every user error, machine-readable output where asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cli import app
from shared_data import EUNOMIA

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), result.output
    assert fragment in result.output, result.output


def write_csv(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


PERSON_CSV = "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id\n1,8507,1950,0,0\n"


def test_load_then_info_json(tmp_path):
    src = tmp_path / "src"
    write_csv(src, "person.csv", PERSON_CSV)
    write_csv(src, "observation_period.csv",
              "observation_period_id,person_id,observation_period_start_date,observation_period_end_date,"
              "period_type_concept_id\n1,1,2010-01-01,2020-12-31,32817\n")
    db = tmp_path / "cdm.duckdb"
    result = run("cdm", "load", str(src), "--cdm", str(db))
    assert result.exit_code == 0, result.output
    info = run("cdm", "info", "--cdm", str(db), "--format", "json")
    assert info.exit_code == 0, info.output
    data = json.loads(info.stdout)
    assert data["persons"] == 1
    assert data["observation_start"] == "2010-01-01"
    assert data["rows"]["observation_period"] == 1


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("person.csv", "person_id,gender_concept_id,year_of_birth,race_concept_id\n1,8507,1950,0\n", "ethnicity_concept_id"),
        ("person.csv", PERSON_CSV.replace("1950", "nineteen"), "year_of_birth"),
        ("persons.csv", PERSON_CSV, "persons"),
        ("person.csv", PERSON_CSV + "2,8532\n", "line 3"),
    ],
    ids=["missing-column", "wrong-type", "unknown-table", "truncated"],
)
def test_bad_load_is_one_line_and_changes_nothing(tmp_path, name, text, fragment):
    db = tmp_path / "cdm.duckdb"
    with Cdm.open(db) as cdm:
        cdm.create_tables(["person"])
        cdm.insert_arrow("person", Cdm.open(None).fetch_arrow(
            "SELECT 99::BIGINT AS person_id, 8532::BIGINT AS gender_concept_id, 1980 AS year_of_birth, "
            "0::BIGINT AS race_concept_id, 0::BIGINT AS ethnicity_concept_id"))
    write_csv(tmp_path / "src", name, text)
    assert_one_line_error(run("cdm", "load", str(tmp_path / "src"), "--cdm", str(db), "--mode", "append"), fragment)
    with Cdm.open(db, create=False) as cdm:
        assert cdm.fetch_all("SELECT person_id FROM main.person") == [(99,)]


def test_unreadable_and_missing_targets(tmp_path):
    assert_one_line_error(run("cdm", "info", "--cdm", str(tmp_path / "absent.duckdb")), "not found")
    assert_one_line_error(run("cdm", "info", "--cdm", "mysql://h/db"), "unsupported CDM target")
    assert_one_line_error(run("cdm", "load", str(tmp_path / "nowhere"), "--cdm", str(tmp_path / "x.duckdb")),
                          "nowhere")


def test_unknown_output_format(tmp_path):
    db = tmp_path / "a.duckdb"
    Cdm.open(db).close()
    assert_one_line_error(run("cdm", "info", "--cdm", str(db), "--format", "xml"), "unknown format")


def test_bad_schema_option_is_refused(tmp_path):
    result = run("cdm", "info", "--cdm", str(tmp_path / "a.duckdb"), "--cdm-schema", "x; DROP TABLE person")
    assert result.exit_code == 1
    assert "Traceback" not in result.output


@pytest.mark.skipif(not EUNOMIA.is_dir(), reason="no Eunomia sample data")
def test_export_refuses_non_empty_folder(tmp_path):
    db = tmp_path / "e.duckdb"
    assert run("cdm", "load", str(EUNOMIA), "--cdm", str(db)).exit_code == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(run("cdm", "export", "--cdm", str(db), "--out", str(out)), str(out))
    assert (out / "keep.txt").read_text() == "mine"
    fresh = tmp_path / "fresh"
    result = run("cdm", "export", "--cdm", str(db), "--out", str(fresh))
    assert result.exit_code == 0, result.output
    assert (fresh / "person.parquet").exists()
