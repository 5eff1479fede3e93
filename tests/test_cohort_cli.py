"""`mercia cohort run | sql | check | convert` on a small DuckDB file CDM (the cohort test world)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sqlglot
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cli import app
from mercia.cohorts.dsl import to_yaml
from mercia.cohorts.generate import cohort_rows
from mercia.cohorts.loader import load_definition
from test_cohort_world import load_world

runner = CliRunner()

A_YAML = """
name: Condition A, all events
concepts:
  a: {include: [100]}
entry:
  - condition: a
keep: all
exit: {after: {days: 0}}
"""

RULES_YAML = """
name: Condition A, no drug X in 30 days, in the 2000s
concepts:
  a: {include: [100], descendants: true}
  x: {include: [200, 999999]}
entry:
  - condition: a
keep: all
inclusion_rules:
  - name: no drug X in the prior 30 days
    exclude: {drug: x, between: [30 days before, 0 days after]}
  - name: male
    require: {sex: male}
study_period: {start: 2000-01-01, end: 2009-12-31}
"""


@pytest.fixture(scope="module")
def defs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("defs")
    (d / "a.yaml").write_text(A_YAML)
    (d / "rules.yaml").write_text(RULES_YAML)
    (d / "bad.yaml").write_text(A_YAML.replace("condition: a", "condition: b"))
    (d / "a.py").write_text(
        "from mercia.cohorts.dsl import cohort, concepts, condition\n"
        "COHORT = cohort('A from Python').entry(condition(concepts('a', 100))).keep('all').exit_after(days=0)\n")
    return {p.stem if p.suffix != ".py" else "py": p for p in d.iterdir()}


@pytest.fixture(scope="module")
def world_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cdm") / "world.duckdb"
    with Cdm.open(path) as cdm:
        load_world(cdm)
    return path


def run(*args: str) -> object:
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---- run ----------------------------------------------------------------------------------------
def test_run_json_writes_cohorts_and_prints_only_json(defs: dict[str, Path], world_file: Path) -> None:
    r = run("cohort", "run", defs["a"], defs["rules"], defs["py"], "--cdm", world_file, "--cohort-id", "5",
            "--format", "json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)  # nothing but JSON on stdout
    assert [o["cohort_id"] for o in out] == [5, 6, 7]
    assert [o["name"] for o in out] == ["Condition A, all events", RULES_YAML.split("\n")[1][6:], "A from Python"]
    a, rules, py = out
    assert (a["persons"], a["entries"]) == (3, 5)  # persons 1, 2, 3 with 2 + 1 + 2 condition-100 events in observation
    assert (py["persons"], py["entries"]) == (a["persons"], a["entries"])
    assert [s["name"] for s in rules["attrition"]] == ["no drug X in the prior 30 days", "male"]
    first, second = rules["attrition"]
    assert first["persons_remaining"] >= second["persons_remaining"] == rules["persons"]
    assert rules["initial"]["events"] >= first["events_remaining"]
    # concept 999999 is not in the vocabulary: a warning on stderr and in the JSON, not an error
    assert any("999999" in w for w in rules["warnings"])
    assert "warning:" in r.stderr and "999999" in r.stderr
    with Cdm.open(world_file, create=False, read_only=True) as cdm:
        assert len(cohort_rows(cdm, 5)) == 5
        assert cdm.scalar("SELECT count(*) FROM results.cohort_definition WHERE cohort_definition_id IN (5, 6, 7)") == 3


def test_run_table_and_results_schema(defs: dict[str, Path], world_file: Path) -> None:
    r = run("cohort", "run", defs["rules"], "--cdm", world_file, "--results-schema", "work", "--cohort-id", "1")
    assert r.exit_code == 0, r.stderr
    assert "cohort 1: Condition A, no drug X in 30 days, in the 2000s" in r.stdout
    assert "persons" in r.stdout and "entries" in r.stdout and "persons remaining" in r.stdout and "male" in r.stdout
    with Cdm.open(world_file, create=False, read_only=True, results_schema="work") as cdm:
        assert cdm.scalar("SELECT count(*) FROM work.cohort_definition") == 1


def test_run_errors_are_one_line_and_change_nothing(defs: dict[str, Path], world_file: Path) -> None:
    with Cdm.open(world_file, create=False, read_only=True) as cdm:
        before = cdm.scalar("SELECT count(*) FROM results.cohort")
    # a bad second definition: the first is not generated either (all files are read first)
    line = one_line_error(run("cohort", "run", defs["a"], defs["bad"], "--cdm", world_file, "--cohort-id", "40"))
    assert "bad.yaml" in line and "'b' is not a concept set" in line
    with Cdm.open(world_file, create=False, read_only=True) as cdm:
        assert cdm.scalar("SELECT count(*) FROM results.cohort") == before
    assert "no CDM database" in one_line_error(run("cohort", "run", defs["a"], "--cdm", world_file.with_name("no.duckdb")))
    assert "unknown format" in one_line_error(run("cohort", "run", defs["a"], "--cdm", world_file, "--format", "xml"))


def test_run_refuses_an_id_taken_by_another_definition(defs: dict[str, Path], world_file: Path) -> None:
    assert run("cohort", "run", defs["a"], "--cdm", world_file, "--cohort-id", "60").exit_code == 0
    line = one_line_error(run("cohort", "run", defs["rules"], "--cdm", world_file, "--cohort-id", "60"))
    assert "cohort id 60 is already used" in line


# ---- sql ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "spark", "trino", "bigquery", "snowflake", "tsql"])
def test_sql_prints_parseable_sql_with_placeholders(defs: dict[str, Path], dialect: str) -> None:
    r = run("cohort", "sql", defs["rules"], "--dialect", dialect, "--cdm-schema", "omop")
    assert r.exit_code == 0, r.stderr
    assert "-- parameter d1 = 2000-01-01 (DATE)" in r.stdout
    body = "\n".join(line for line in r.stdout.splitlines() if not line.startswith("--")).rstrip().rstrip(";")
    tree = sqlglot.parse_one(body, read=dialect)
    assert tree.find(sqlglot.exp.Placeholder, sqlglot.exp.Parameter) is not None
    assert "2000-01-01" not in body  # the date is bound, not written into the SQL
    assert re.search(r"\bomop\W*\.\W*condition_occurrence", body)


def test_sql_errors(defs: dict[str, Path]) -> None:
    assert "unknown dialect 'oracle'" in one_line_error(run("cohort", "sql", defs["a"], "--dialect", "oracle"))
    assert "invalid CDM schema" in one_line_error(run("cohort", "sql", defs["a"], "--cdm-schema", "a;drop"))


# ---- check -------------------------------------------------------------------------------------
def test_check_ok_and_unknown_concepts(defs: dict[str, Path], world_file: Path) -> None:
    r = run("cohort", "check", defs["a"], defs["rules"], defs["py"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("ok: ") == 3
    r = run("cohort", "check", defs["rules"], "--cdm", world_file)
    assert r.exit_code == 0
    assert "999999" in r.stderr and "warning:" in r.stderr


def test_check_reports_each_bad_file(defs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text("{")
    r = run("cohort", "check", defs["bad"], defs["a"], other)
    assert r.exit_code == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "bad.yaml" in errors[0] and "other.json: malformed JSON" in errors[1]
    assert "ok: a.yaml" in r.stdout and "Traceback" not in r.stderr


# ---- convert -----------------------------------------------------------------------------------
def test_convert_to_yaml_and_circe(defs: dict[str, Path], tmp_path: Path) -> None:
    r = run("cohort", "convert", defs["py"])
    assert r.exit_code == 0, r.stderr
    (tmp_path / "back.yaml").write_text(r.stdout)
    assert load_definition(tmp_path / "back.yaml") == load_definition(defs["py"])
    assert r.stdout == to_yaml(load_definition(defs["py"]))
    r = run("cohort", "convert", defs["rules"], "--to", "circe")
    assert r.exit_code == 0 and "PrimaryCriteria" in json.loads(r.stdout)
    (tmp_path / "back.json").write_text(r.stdout)
    assert load_definition(tmp_path / "back.json").expression == load_definition(defs["rules"]).expression
    assert "unknown form" in one_line_error(run("cohort", "convert", defs["a"], "--to", "sql"))
