"""Studies on one CDM: each keeps its cohorts under ids of its own in the results schema; `cohort list`
and `cohort delete` show and remove them."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cli import app
from mercia.cohorts import registry
from mercia.cohorts.generate import generate_cohorts
from mercia.study import StudyPackage, run_study
from mercia.synth import DEFAULT_SITES, generate_site

runner = CliRunner()


def cond(name: str, key: str, **event: Any) -> dict[str, Any]:
    return {"name": name, "concepts": {"c": {"name": name, "conditions": [key]}},
            "entry": [{"condition": "c", **event}]}


# Two packages numbering their cohorts alike (1, 2): on one CDM they used to clash.
STUDY_A: dict[str, Any] = {
    "name": "study A",
    "cohorts": {"htn": {"definition": cond("Hypertension", "hypertension", first=True)},
                "t2d": {"definition": cond("Type 2 diabetes", "type2_diabetes", first=True)}},
    "analyses": [{"type": "cohort_entries", "name": "entries", "cohorts": ["htn", "t2d"]},
                 {"type": "characterization", "name": "chars", "cohorts": ["htn", "t2d"]}],
    "disclosure": "opensafely",
}
STUDY_B: dict[str, Any] = {
    "name": "study B",
    "cohorts": {"asthma": {"definition": cond("Asthma", "asthma", first=True)},
                "copd": {"definition": cond("COPD", "copd", first=True)}},
    "analyses": [{"type": "characterization", "name": "chars", "cohorts": ["asthma", "copd"]}],
    "disclosure": "opensafely",
}


@pytest.fixture(scope="module")
def site_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("site") / "site.duckdb"
    with Cdm.open(path) as cdm:
        generate_site(cdm, persons=2000, seed=5, profile=DEFAULT_SITES[0])
    return path


def copy_of(site_file: Path, tmp_path: Path, name: str = "cdm.duckdb") -> Path:
    out = tmp_path / name
    shutil.copy(site_file, out)
    return out


def tables(out: Path) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_parquet(p) for p in sorted((out / "results").glob("*.parquet"))}


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(df.columns), kind="stable").reset_index(drop=True)


def run(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def test_two_packages_and_the_same_package_twice_run_on_one_cdm(site_file: Path, tmp_path: Path) -> None:
    a, b = StudyPackage.from_dict(STUDY_A), StudyPackage.from_dict(STUDY_B)
    assert sorted(a.cohort_ids.values()) == sorted(b.cohort_ids.values()) == [1, 2]
    # The reference: each package alone on its own copy of the CDM.
    alone = {}
    for name, pkg in (("a", a), ("b", b)):
        with Cdm.open(copy_of(site_file, tmp_path, f"{name}.duckdb")) as cdm:
            alone[name] = tables(run_study(pkg, cdm, tmp_path / f"alone_{name}").out_dir)
    shared = copy_of(site_file, tmp_path)
    with Cdm.open(shared) as cdm:
        runs = {"a": run_study(a, cdm, tmp_path / "a1"), "b": run_study(b, cdm, tmp_path / "b1"),
                "a again": run_study(a, cdm, tmp_path / "a2")}
        stored = {c.cohort_id: c for c in registry.list_cohorts(cdm)}
    # Results are numbered as the package numbers them, and equal the package's results alone.
    for name, pkg in (("a", a), ("b", b), ("a again", a)):
        got = tables(runs[name].out_dir)
        want = alone[name[0]]
        assert sorted(got) == sorted(want)
        for t in want:  # row order within ties is the engine's: compare sorted
            pd.testing.assert_frame_equal(_sorted(got[t]), _sorted(want[t]), obj=t)
        assert runs[name].manifest["cohorts"] == {k: {"id": i, "name": pkg.cohort_name(k)}
                                                 for k, i in pkg.cohort_ids.items()}
    # Four cohorts stored (A's replaced, not doubled), under ids that are neither 1 nor 2, each
    # recorded with its study, package and definition hash; persons as generated alone.
    assert len(stored) == 4 and not {1, 2} & set(stored)
    by_study = {(c.study, c.cohort_key): c for c in stored.values()}
    assert set(by_study) == {("study A", "htn"), ("study A", "t2d"), ("study B", "asthma"), ("study B", "copd")}
    for (study, key), c in by_study.items():
        pkg = a if study == "study A" else b
        assert c.package_hash == pkg.content_hash
        assert c.definition_hash == pkg.definitions[key].definition_hash()
        assert c.persons == _generate_alone(site_file, pkg.definitions[key])
    # Stored in the results schema, never in the CDM schema.
    with duckdb.connect(str(shared), read_only=True) as con:
        schemas = {r[0] for r in con.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name IN "
            "('cohort', 'cohort_definition', 'study_cohort')").fetchall()}
    assert schemas == {"results"}


def _generate_alone(site_file: Path, definition: Any) -> int:
    """Persons in one definition's cohort, generated on its own in a copy of the CDM."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "alone.duckdb"
        shutil.copy(site_file, path)
        with Cdm.open(path, results_schema="scratch") as cdm:
            (g,) = generate_cohorts(cdm, [(1, definition)])
    return g.persons


def test_a_block_in_use_is_skipped(site_file: Path, tmp_path: Path) -> None:
    """A cohort generated on its own under an id of the block the package would get: the study
    takes the next block, and both stay."""
    a = StudyPackage.from_dict(STUDY_A)
    path = copy_of(site_file, tmp_path)
    with Cdm.open(path) as cdm:
        first = registry.study_ids(cdm, a)
        squatter = max(first.values()) + 5
        generate_cohorts(cdm, [(squatter, a.definitions["htn"].model_copy(update={"name": "mine"}))])
        ids = registry.study_ids(cdm, a)
        assert not set(ids.values()) & set(first.values())
        run_study(a, cdm, tmp_path / "out")
        stored = {c.cohort_id: c for c in registry.list_cohorts(cdm)}
    assert set(stored) == {squatter, *ids.values()}
    assert stored[squatter].study is None and stored[squatter].name == "mine"


def test_cohort_list_and_delete(site_file: Path, tmp_path: Path) -> None:
    a, b = StudyPackage.from_dict(STUDY_A), StudyPackage.from_dict(STUDY_B)
    path = copy_of(site_file, tmp_path)
    r = run("cohort", "list", "--cdm", path)
    assert r.exit_code == 0, r.stderr
    assert "no cohorts in this CDM" in r.stdout
    with Cdm.open(path) as cdm:
        run_study(a, cdm, tmp_path / "a")
        run_study(b, cdm, tmp_path / "b")
        ids_a = registry.study_ids(cdm, a)
    r = run("cohort", "list", "--cdm", path, "--format", "json")
    assert r.exit_code == 0, r.stderr
    listed = json.loads(r.stdout)
    assert len(listed) == 4
    htn = next(c for c in listed if c["cohort_key"] == "htn")
    assert htn["cohort_id"] == ids_a[a.cohort_ids["htn"]] and htn["study"] == "study A"
    assert htn["name"] == "Hypertension" and htn["persons"] == _generate_alone(site_file, a.definitions["htn"])
    r = run("cohort", "list", "--cdm", path)
    assert r.exit_code == 0, r.stderr
    assert "study A (htn)" in r.stdout and "study B (copd)" in r.stdout
    assert htn["definition_hash"][:12] in r.stdout and f"{htn['persons']:,}" in r.stdout

    # Delete study A's two cohorts: rows, definitions, statistics and records go; B's stay.
    r = run("cohort", "delete", *sorted(ids_a.values()), "--cdm", path)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == f"deleted cohorts {', '.join(map(str, sorted(ids_a.values())))}"
    with duckdb.connect(str(path), read_only=True) as con:
        for table in ("cohort", "cohort_definition", "study_cohort", "cohort_summary_stats"):
            n = con.execute(f"SELECT count(*) FROM results.{table} WHERE cohort_definition_id IN "
                            f"({', '.join(map(str, ids_a.values()))})").fetchone()[0]
            assert n == 0, table
        left = con.execute("SELECT DISTINCT study_name FROM results.study_cohort").fetchall()
        assert left == [("study B",)]
        assert con.execute("SELECT count(*) FROM results.cohort").fetchone()[0] > 0

    # An unknown id: one line naming it, nothing deleted.
    listed_before = json.loads(run("cohort", "list", "--cdm", path, "--format", "json").stdout)
    known = listed_before[0]["cohort_id"]
    r = run("cohort", "delete", known, 424242, "--cdm", path)
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no cohort with id 424242" in lines[0], r.stderr
    assert json.loads(run("cohort", "list", "--cdm", path, "--format", "json").stdout) == listed_before
    # Study A runs again after its cohorts were deleted (new records, same block).
    with Cdm.open(path) as cdm:
        run_study(a, cdm, tmp_path / "a2")
        assert registry.study_ids(cdm, a) == ids_a


def test_a_clash_with_a_cohort_of_ones_own_names_the_delete_command(site_file: Path, tmp_path: Path) -> None:
    path = copy_of(site_file, tmp_path)
    a = StudyPackage.from_dict(STUDY_A)
    with Cdm.open(path) as cdm:
        generate_cohorts(cdm, [(3, a.definitions["htn"])])
    r = run("cohort", "run", _yaml(tmp_path, STUDY_B["cohorts"]["asthma"]["definition"]), "--cdm", path,
            "--cohort-id", "3")
    assert r.exit_code == 1
    assert "mercia cohort delete 3" in r.stderr


def _yaml(tmp_path: Path, definition: dict[str, Any]) -> Path:
    import yaml

    p = tmp_path / "def.yaml"
    p.write_text(yaml.safe_dump(definition))
    return p


@pytest.mark.postgres
def test_two_packages_on_postgresql(pg_url: str, site_file: Path, tmp_path: Path) -> None:
    """On PostgreSQL too: both packages, one of them twice, stored in the results schema under ids of
    their own; the persons match the same packages run on DuckDB; `cohort delete` removes one."""
    import secrets

    schema = "mercia_test_" + secrets.token_hex(6)
    a, b = StudyPackage.from_dict(STUDY_A), StudyPackage.from_dict(STUDY_B)
    try:
        with Cdm.open(pg_url, cdm_schema=schema, results_schema=schema + "_results") as cdm:
            generate_site(cdm, persons=2000, seed=5, profile=DEFAULT_SITES[0])
            for i, pkg in enumerate((a, b, a)):
                run_study(pkg, cdm, tmp_path / f"pg{i}")
            on_pg = {(c.study, c.cohort_key): c for c in registry.list_cohorts(cdm)}
            assert cdm.scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = %(s)s "
                              "AND table_name IN ('cohort', 'cohort_definition')", {"s": schema}) == 0
        with Cdm.open(copy_of(site_file, tmp_path)) as duck:
            for i, pkg in enumerate((a, b)):
                run_study(pkg, duck, tmp_path / f"duck{i}")
            on_duck = {(c.study, c.cohort_key): c for c in registry.list_cohorts(duck)}
        assert len(on_pg) == 4
        assert {k: (c.cohort_id, c.persons, c.entries) for k, c in on_pg.items()} == \
               {k: (c.cohort_id, c.persons, c.entries) for k, c in on_duck.items()}
        url_results = ["--cdm", pg_url, "--cdm-schema", schema, "--results-schema", schema + "_results"]
        gone = on_pg[("study B", "asthma")].cohort_id
        r = run("cohort", "delete", gone, *url_results)
        assert r.exit_code == 0, r.stderr
        listed = json.loads(run("cohort", "list", *url_results, "--format", "json").stdout)
        assert sorted(c["cohort_id"] for c in listed) == sorted(c.cohort_id for c in on_pg.values() if c.cohort_id != gone)
    finally:
        with Cdm.open(pg_url, cdm_schema=schema) as cdm:
            for s in (schema, schema + "_results"):
                cdm.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')


def test_a_definition_in_cohort_definition_alone_is_not_overwritten(site_file: Path, tmp_path: Path) -> None:
    """A site's own row in cohort_definition, with no cohort table yet: generating at its id is refused
    (it was silently replaced when the cohort table did not exist)."""
    import pyarrow as pa

    from mercia.errors import CohortDefinitionError

    a = StudyPackage.from_dict(STUDY_A)
    with Cdm.open(copy_of(site_file, tmp_path)) as cdm:
        cdm.execute("DROP TABLE IF EXISTS " + cdm.qualified("cohort"))
        cdm.insert_arrow("cohort_definition", pa.table({
            "cohort_definition_id": [7], "cohort_definition_name": ["the site's list"],
            "definition_type_concept_id": [0], "subject_concept_id": [0]}))
        assert not cdm.table_exists("cohort")
        with pytest.raises(CohortDefinitionError, match=r"cohort id 7 is already used .*the site's list"):
            generate_cohorts(cdm, [(7, a.definitions["htn"])])
        assert [c.name for c in registry.list_cohorts(cdm)] == ["the site's list"]


def test_study_run_says_where_its_cohorts_are(site_file: Path, tmp_path: Path) -> None:
    import yaml

    path = copy_of(site_file, tmp_path)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(STUDY_A))
    r = run("study", "run", tmp_path / "a.yaml", "--cdm", path, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    with Cdm.open(path, read_only=True) as cdm:
        ids = registry.study_ids(cdm, StudyPackage.from_dict(STUDY_A))
    a = StudyPackage.from_dict(STUDY_A)
    want = ", ".join(f"{k} {ids[a.cohort_ids[k]]}" for k in sorted(a.cohort_ids, key=a.cohort_ids.get))
    assert f"cohorts (in schema results, see mercia cohort list): {want}" in " ".join(r.stdout.split())
