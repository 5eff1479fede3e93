"""Loading into a CDM that holds data (refused, append, replace), Ctrl-C during a load, and a failed
first load leaving no file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cdm.load import load_folder
from mercia.cli import app
from mercia.errors import LoadError
from shared_data import REPO
from test_cdm_load import EUNOMIA_COUNTS, PERSON_HEADER, snapshot, write

runner = CliRunner()


def run(*args: object) -> object:
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---- a CDM that holds data ------------------------------------------------------------------------
def test_loading_eunomia_twice_is_refused(tmp_path: Path, eunomia_dir: Path) -> None:
    db = tmp_path / "cdm.duckdb"
    r = run("cdm", "load", eunomia_dir, "--cdm", db)
    assert r.exit_code == 0, r.stderr
    line = one_line_error(run("cdm", "load", eunomia_dir, "--cdm", db))
    assert "already holds data in tables the files fill: person (2,694 rows), observation_period (5,343 rows)" in line
    assert "--mode append" in line and "--mode replace" in line
    with Cdm.open(db, create=False, read_only=True) as cdm:
        for table, n in EUNOMIA_COUNTS.items():
            assert cdm.row_count(table) == n, table


def test_append_refuses_repeated_keys_naming_table_and_count(
        eunomia_dir: Path, cdm_factory: Callable[..., Cdm]) -> None:
    cdm = cdm_factory()
    load_folder(cdm, eunomia_dir)
    before = snapshot(cdm)
    with pytest.raises(LoadError) as e:
        load_folder(cdm, eunomia_dir, mode="append")
    msg = str(e.value)
    assert "nothing was written" in msg
    # Tables in the spec's order (person first): the first three, then how many more.
    assert msg.startswith("duplicate rows refused, nothing was written: person: 2,694 rows whose person_id is "
                          "already in the CDM or repeated in the files; observation_period: 5,343 rows")
    assert "visit_occurrence: 1,037 rows" in msg and "; and 15 more tables" in msg
    assert snapshot(cdm) == before
    # A table without a primary key: identical rows are the repeats.
    with pytest.raises(LoadError, match="concept_ancestor: 65,690 rows identical to rows already in the CDM"):
        _load_only(cdm, eunomia_dir, "concept_ancestor")
    assert snapshot(cdm) == before


def _load_only(cdm: Cdm, eunomia_dir: Path, table: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / f"{table}.parquet").symlink_to(eunomia_dir / f"{table}.parquet")
        load_folder(cdm, d, mode="append")


def test_append_adds_new_rows_and_counts_repeats_within_the_files(
        tmp_path: Path, cdm_factory: Callable[..., Cdm]) -> None:
    cdm = cdm_factory()
    load_folder(cdm, write(tmp_path / "a", {"person.csv": f"{PERSON_HEADER}\n1,8507,1970,0,0\n2,8532,1980,0,0\n"}))
    assert load_folder(cdm, write(tmp_path / "b", {"person.csv": f"{PERSON_HEADER}\n3,8507,1990,0,0\n"}),
                       mode="append") == {"person": 1}
    assert cdm.row_count("person") == 3
    # One id already there (2), one repeated within the file (4 twice): two rows refused.
    bad = write(tmp_path / "c", {"person.csv": f"{PERSON_HEADER}\n2,8507,1990,0,0\n4,8507,1990,0,0\n"
                                               "4,8532,1991,0,0\n5,8507,1990,0,0\n"})
    with pytest.raises(LoadError, match=r"person: 2 rows whose person_id is already in the CDM or repeated"):
        load_folder(cdm, bad, mode="append")
    assert cdm.row_count("person") == 3
    # A table with no rows yet takes repeats as they come: only tables holding data are checked.
    assert load_folder(cdm, write(tmp_path / "d", {"death.csv": "person_id,death_date,death_type_concept_id\n"
                                                                "1,2020-01-01,0\n"}), mode="append") == {"death": 1}


def test_replace_empties_the_tables_the_files_fill(eunomia_dir: Path, tmp_path: Path,
                                                   cdm_factory: Callable[..., Cdm]) -> None:
    cdm = cdm_factory()
    load_folder(cdm, write(tmp_path / "v", {"person.csv": f"{PERSON_HEADER}\n99999999,8507,1970,0,0\n"}),
                version="5.3")
    counts = load_folder(cdm, eunomia_dir, mode="replace")
    for table, n in EUNOMIA_COUNTS.items():
        assert counts[table] == n and cdm.row_count(table) == n, table
    assert load_folder(cdm, eunomia_dir, mode="replace")["person"] == 2694
    assert cdm.row_count("person") == 2694
    ids = {r[0] for r in cdm.fetch_all("SELECT person_id FROM " + cdm.qualified("person"))}
    assert 99999999 not in ids


def test_unknown_mode_is_one_line() -> None:
    line = one_line_error(run("cdm", "load", ".", "--cdm", ":memory:", "--mode", "merge"))
    assert "unknown load mode 'merge'" in line and "new, append, replace" in line


# ---- a failed first load leaves no file --------------------------------------------------------------
def test_failed_load_into_a_new_file_leaves_no_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad", {"person.csv": f"{PERSON_HEADER}\n1,8507,nineteen,0,0\n"})
    db = tmp_path / "new.duckdb"
    assert "column year_of_birth" in one_line_error(run("cdm", "load", bad, "--cdm", db))
    assert not db.exists() and not list(tmp_path.glob("new.duckdb*"))
    # An existing file stays, whatever happens to the load.
    good = write(tmp_path / "good", {"person.csv": f"{PERSON_HEADER}\n1,8507,1970,0,0\n"})
    assert run("cdm", "load", good, "--cdm", db).exit_code == 0
    one_line_error(run("cdm", "load", bad, "--cdm", db, "--mode", "append"))
    with Cdm.open(db, create=False, read_only=True) as cdm:
        assert cdm.row_count("person") == 1


# ---- Ctrl-C ------------------------------------------------------------------------------------------
# The load runs in a subprocess whose second table insert waits a moment (a hook around
# Cdm.insert_arrow), so that SIGINT arrives mid-transaction, after a table was written.
_SLOW_LOAD = textwrap.dedent("""
    import sys, time
    from mercia.cdm.handle import Cdm
    from mercia.cli import app

    real = Cdm.insert_arrow
    calls = []

    def slow(self, name, data):
        real(self, name, data)
        calls.append(name)
        if len(calls) == 2:
            print("WRITING", flush=True)
            for _ in range(50):
                time.sleep(0.1)

    Cdm.insert_arrow = slow
    sys.argv = ["mercia", *sys.argv[1:]]
    app()
""")


def _interrupted_load(tmp_path: Path, *args: object) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "slow_load.py"
    script.write_text(_SLOW_LOAD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]))
    proc = subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "WRITING", (line, proc.stderr.read() if proc.stderr else "")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, line + out, err)


def _two_tables(folder: Path, first_id: int) -> Path:
    return write(folder, {
        "person.csv": f"{PERSON_HEADER}\n{first_id},8507,1970,0,0\n{first_id + 1},8532,1980,0,0\n",
        "observation_period.csv": "observation_period_id,person_id,observation_period_start_date,"
                                  f"observation_period_end_date,period_type_concept_id\n{first_id},{first_id},"
                                  "2010-01-01,2015-12-31,32817\n",
    })


def test_ctrl_c_during_an_append_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "cdm.duckdb"
    assert run("cdm", "load", _two_tables(tmp_path / "first", 1), "--cdm", db).exit_code == 0
    with Cdm.open(db, create=False, read_only=True) as cdm:
        before = snapshot(cdm)
    done = _interrupted_load(tmp_path, "cdm", "load", _two_tables(tmp_path / "more", 100), "--cdm", db,
                             "--mode", "append")
    assert done.returncode == 130, done
    assert done.stderr.strip() == "interrupted; nothing was written", done.stderr
    with Cdm.open(db, create=False, read_only=True) as cdm:
        assert snapshot(cdm) == before


def test_ctrl_c_during_a_first_load_leaves_no_file(tmp_path: Path) -> None:
    db = tmp_path / "new.duckdb"
    done = _interrupted_load(tmp_path, "cdm", "load", _two_tables(tmp_path / "files", 1), "--cdm", db)
    assert done.returncode == 130, done
    assert done.stderr.strip() == "interrupted; nothing was written", done.stderr
    assert not list(tmp_path.glob("new.duckdb*"))
