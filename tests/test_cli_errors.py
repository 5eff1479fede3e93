"""What a new user sees when something is wrong: one line, never a traceback (issue 13, item 3).

Each case runs the real `mercia` command in a subprocess, as a user would: an empty DuckDB, a schema
without a CDM, a misspelt policy, an unknown concept, a drug concept used as a condition, Ctrl-C. The
sweep runs every command of the CLI with bad arguments.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import typer
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

import mercia
from mercia.cli import app
from mercia.cli_errors import EXIT_INTERRUPTED, boundary
from mercia.synth import generate_federation

REPO = Path(__file__).resolve().parents[1]
SGLT2_STUDY = REPO / "examples" / "studies" / "sglt2_heart_failure" / "study.yaml"
MERCIA = str(Path(sys.executable).parent / "mercia")
# The subprocess runs the same code as this test process (a worktree's src/ when PYTHONPATH points there).
SRC = str(Path(mercia.__file__).resolve().parents[1])
METFORMIN = 1503297  # an RxNorm ingredient: domain Drug


def run_mercia(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "COLUMNS": "80"}
    return subprocess.run([MERCIA, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def assert_one_error_line(r: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    err = lines(r.stderr)
    assert len(err) == 1 and err[0].startswith("error: "), r.stderr
    assert not r.stdout.strip(), r.stdout  # no summary, no "persons 0"
    for f in fragments:
        assert f in err[0], (f, err[0])
    return err[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (db,) = generate_federation(tmp_path_factory.mktemp("site"), persons=400, sites=1, seed=13)
    return Path(db)


@pytest.fixture
def empty_duckdb(tmp_path: Path) -> Path:
    path = tmp_path / "empty.duckdb"
    duckdb.connect(str(path)).close()
    return path


PACKAGE = """\
name: a small study
cohorts:
  t2d:
    id: {cohort_id}
    definition:
      name: type 2 diabetes
      concepts:
        t2d: {{name: T2D, conditions: [type2_diabetes], descendants: true}}
        other: {{name: not a concept, include: [999999999]}}
      entry:
        - condition: t2d
        - condition: other
analyses:
  - type: cohort_entries
    name: entries
    cohorts: [t2d]
disclosure: {policy}
"""


# ---- no OMOP CDM where we were told to look ---------------------------------------------------
def test_study_run_on_an_empty_duckdb(tmp_path, empty_duckdb):
    r = run_mercia("study", "run", SGLT2_STUDY, "--cdm", empty_duckdb, "--out", tmp_path / "out", cwd=tmp_path)
    assert_one_error_line(r, "no OMOP CDM", "empty.duckdb", "schema 'main'", "person", "observation_period",
                          "concept")
    assert not (tmp_path / "out").exists()


def test_cohort_run_in_a_schema_without_a_cdm(tmp_path, site):
    definition = REPO / "examples" / "cohorts" / "new_nsaid_users.yaml"
    r = run_mercia("cohort", "run", definition, "--cdm", site, "--cdm-schema", "omop", cwd=tmp_path)
    assert_one_error_line(r, "schema 'omop'", "person, observation_period", "give --cdm-schema main")


def test_cdm_info_on_an_empty_file(tmp_path, empty_duckdb):
    r = run_mercia("cdm", "info", "--cdm", empty_duckdb, cwd=tmp_path)
    assert_one_error_line(r, "no OMOP CDM", "schema 'main'", "person, observation_period")


def test_node_serve_beside_an_empty_duckdb(tmp_path, empty_duckdb):
    (tmp_path / "hub_public.pem").write_text("")
    (tmp_path / "node.yaml").write_text(f"site: north\ncdm: {empty_duckdb.name}\nstate_dir: state\n"
                                        "hub_public_key: hub_public.pem\ntokens: tokens.json\n")
    # Before the check the node served (and this timed out); now it stops before listening.
    r = run_mercia("node", "serve", "--config", "node.yaml", "--port", "0", cwd=tmp_path, timeout=60)
    assert_one_error_line(r, "no OMOP CDM", "schema 'main'", "person, observation_period", "concept")


def test_cdm_info_on_a_cdm_still_answers(tmp_path, site):
    r = run_mercia("cdm", "info", "--cdm", site, "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '"persons": 400' in r.stdout


def test_a_database_that_refuses_a_statement_is_one_line(tmp_path):
    # The tables are there by name (the check passes) but not their columns: DuckDB refuses the query.
    con = duckdb.connect(str(tmp_path / "hollow.duckdb"))
    for table in ("person", "observation_period", "concept", "concept_ancestor", "concept_relationship"):
        con.execute(f"CREATE TABLE {table} (x INTEGER)")
    con.close()
    definition = REPO / "examples" / "cohorts" / "new_nsaid_users.yaml"
    r = run_mercia("cohort", "run", definition, "--cdm", "hollow.duckdb", cwd=tmp_path)
    assert_one_error_line(r, "the database refused a statement: Binder Error", "concept_id")


# ---- bad settings: one line naming the field and the allowed values -----------------------------
def test_a_misspelt_policy_lists_the_allowed_ones(tmp_path, site):
    (tmp_path / "study.yaml").write_text(PACKAGE.format(cohort_id=41, policy="opensafe"))
    r = run_mercia("study", "run", "study.yaml", "--cdm", site, "--out", "out", cwd=tmp_path)
    line = assert_one_error_line(r, "disclosure", "'opensafe'", "allowed: opensafely, sacro")
    assert "DisclosurePolicy" not in line and "Input should be" not in line


def test_a_validation_error_is_one_line_per_field_with_the_allowed_values(capsys):
    from typing import Literal

    class Settings(BaseModel):
        model_config = {"extra": "forbid"}
        format: Literal["table", "json"]
        rows: int

    with pytest.raises(typer.Exit) as exit_, boundary():
        Settings.model_validate({"format": "xml", "rows": "many", "colour": 1})
    assert exit_.value.exit_code == 1
    err = lines(capsys.readouterr().err)
    assert err == [
        "error: format: 'xml' is not allowed (allowed: table, json)",
        "error: rows: Input should be a valid integer, unable to parse string as an integer",
        "error: colour: unknown field (check the spelling against the reference)",
    ]
    with pytest.raises(ValidationError):  # outside the boundary nothing is swallowed
        Settings.model_validate({})


# ---- warnings: one line, no source line ---------------------------------------------------------
def test_an_unknown_concept_warning_is_one_line(tmp_path, site):
    (tmp_path / "study.yaml").write_text(PACKAGE.format(cohort_id=42, policy="opensafely"))
    r = run_mercia("study", "run", "study.yaml", "--cdm", site, "--out", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    err = lines(r.stderr)
    assert len(err) == 1, r.stderr
    assert err[0].startswith("warning: cohort 42 ('type 2 diabetes'): concept set"), err[0]
    assert "999999999" in err[0]
    for source in ("UnknownConceptWarning", ".py:", "warnings.warn", "generate_cohorts("):
        assert source not in r.stderr


def test_a_drug_concept_used_as_a_condition_warns_naming_its_domain(tmp_path, site):
    (tmp_path / "metformin.yaml").write_text(
        "name: metformin as a condition\n"
        "concepts:\n  met: {name: Metformin, ingredients: [metformin], descendants: true}\n"
        "entry:\n  - condition: met\n")
    r = run_mercia("cohort", "run", "metformin.yaml", "--cdm", site, "--cohort-id", "43", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    err = lines(r.stderr)
    assert len(err) == 1, r.stderr
    assert err[0].startswith("warning: metformin.yaml: concept set 0 ('Metformin') is used in a ConditionOccurrence"), err
    assert f"{METFORMIN} 'metformin' (domain Drug)" in err[0]


# ---- Ctrl-C -------------------------------------------------------------------------------------
@pytest.mark.parametrize("after", [0.0, 1.0], ids=["as-the-file-appears", "while-writing"])
def test_ctrl_c_is_one_line_and_exit_130(tmp_path, after):
    """Ctrl-C as synth creates its site's database (DuckDB still opening it) and while it writes the
    tables: one line, exit 130, and the half-written `.partial` file (and its WAL) removed."""
    env = {**os.environ, "PYTHONPATH": SRC}
    out = tmp_path / "synth"
    proc = subprocess.Popen([MERCIA, "synth", "--persons", "3000000", "--sites", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*.partial")):  # writing the site's database: well inside the command
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(after)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, (stdout, stderr)
    assert lines(stderr) == ["interrupted"], stderr
    assert "Traceback" not in stdout + stderr
    assert sorted(p.name for p in out.iterdir()) == []  # nothing half-written left behind


# ---- the sweep: every command, bad arguments, no traceback ---------------------------------------
def _leaves(cmd, path=()):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _leaves(sub, (*path, name))
    else:
        yield path, cmd


COMMANDS = list(_leaves(typer.main.get_command(app)))


def _bad_args(cmd) -> list[str]:
    """Every required parameter given something wrong: a malformed YAML file, an empty DuckDB, a hub
    that does not answer; a command with none required (synth, demo) a negative number of persons."""
    special = {"hub": "http://127.0.0.1:9", "cdm": "empty.duckdb", "target": "empty.duckdb", "out": "out"}
    args: list[str] = []
    for p in cmd.params:
        if not p.required:
            continue
        value = special.get(p.name, "bad.yaml")
        args += [value] if p.param_type_name == "argument" else [p.opts[0], value]
    return args or ["--persons", "-5"]


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_with_bad_arguments_fails_without_a_traceback(tmp_path, monkeypatch, path, cmd):
    monkeypatch.chdir(tmp_path)
    duckdb.connect("empty.duckdb").close()
    Path("bad.yaml").write_text("name: [unclosed\n  - : :\n")
    result = CliRunner().invoke(app, [*path, *_bad_args(cmd)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code in (1, 2), (result.exit_code, result.output)
    if path != ("audit", "verify"):  # (that one lists each problem of the log it checks)
        assert len(lines(result.stderr)) == 1 and result.stderr.startswith("error: "), result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["cdm", "info"], "error: Missing option '--cdm'. (see mercia cdm info --help)"),
     (["synth", "--persons", "0"], "error: Invalid value for '--persons'"),
     (["cohort", "sql", "x.yaml", "--no-such-option"], "error: No such option: --no-such-option"),
     (["cdm", "no-such-command"], "error: No such command 'no-such-command'. (see mercia cdm --help)"),
     (["--bogus"], "error: No such option: --bogus (see mercia --help)"),
     (["--bogus", "cdm", "info"], "error: No such option: --bogus (see mercia --help)")],
    ids=["missing option", "out of range", "unknown option", "unknown command", "unknown top-level option",
         "unknown top-level option before a command"],
)
def test_a_command_line_click_cannot_parse_is_one_line(tmp_path, args, expected):
    r = run_mercia(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert lines(r.stderr) == [lines(r.stderr)[0]] and r.stderr.startswith(expected), r.stderr


def test_a_group_without_a_command_still_shows_its_help(tmp_path):
    r = run_mercia("cdm", cwd=tmp_path)
    assert "Load, export and inspect OMOP CDM databases." in r.stdout + r.stderr
    assert "error:" not in r.stdout + r.stderr
