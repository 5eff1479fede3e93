"""Whole studies on every engine: the demo study gives the same released tables on DuckDB, PostgreSQL
and Spark, from the same synthetic site; and a CDM loaded into Spark by `mercia cdm load --cdm spark:FOLDER`
is the CDM that was loaded.

The Spark leg runs with MERCIA_TEST_SPARK=1 and the PostgreSQL leg with MERCIA_TEST_PG_URL (in CI a
missing one fails, never skips). One Spark session serves the module; the Spark CDM is opened by its
target, `spark:FOLDER`, as `mercia study run --cdm` opens it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cdm.export import export_parquet
from mercia.cdm.load import load_folder
from mercia.study import example_package, run_study
from mercia.synth import DEFAULT_SITES, generate_site

# Small enough for Spark on two cores, large enough that every analysis of the demo study releases
# rows (the cohorts are above SACRO's threshold and the Cox model is fitted).
PERSONS = 6000
SEED = 2026


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The site as a DuckDB file and as a folder of Parquet tables (every CDM table, empty ones too)."""
    root = tmp_path_factory.mktemp("site")
    db = root / "site.duckdb"
    with Cdm.open(db) as cdm:
        generate_site(cdm, persons=PERSONS, seed=SEED, profile=DEFAULT_SITES[0])
        export_parquet(cdm, root / "parquet")
    return {"duckdb": db, "parquet": root / "parquet"}


def released(out: Path) -> dict[str, pd.DataFrame]:
    """Each released table, its rows in one order (engines return unordered results in their own)."""
    tables = {}
    for p in sorted((out / "results").glob("*.parquet")):
        df = pd.read_parquet(p)
        tables[p.stem] = df.sort_values(list(df.columns), kind="stable", na_position="last").reset_index(drop=True)
    return tables


def assert_same_tables(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    assert sorted(got) == sorted(want)
    for name, df in want.items():
        # Counts exactly; estimates to 1e-9 relative (sums of doubles in another order on another engine).
        pd.testing.assert_frame_equal(got[name], df, check_dtype=False, check_exact=False, rtol=1e-9,
                                      obj=f"released table {name}")


@pytest.fixture(scope="module")
def on_duckdb(site: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    root = tmp_path_factory.mktemp("duck")
    shutil.copy(site["duckdb"], root / "cdm.duckdb")
    with Cdm.open(root / "cdm.duckdb") as cdm:
        run = run_study(example_package(), cdm, root / "out", site_policy="sacro", site="site")
    statuses = {a["name"]: a["status"] for a in run.manifest["analyses"]}
    assert set(statuses.values()) == {"done"}, statuses  # every analysis ran: the comparison covers them all
    return released(root / "out")


@pytest.mark.postgres
def test_demo_study_on_postgresql_releases_the_duckdb_tables(pg_url: str, site: dict[str, Path],
                                                             on_duckdb: dict[str, pd.DataFrame],
                                                             tmp_path: Path) -> None:
    import secrets

    schema = "mercia_test_" + secrets.token_hex(6)
    try:
        with Cdm.open(pg_url, cdm_schema=schema, results_schema=schema + "_results") as cdm:
            load_folder(cdm, site["parquet"])
            cdm.create_tables()  # the tables the site has empty (no file was exported for them)
            run_study(example_package(), cdm, tmp_path / "out", site_policy="sacro", site="site")
        assert_same_tables(released(tmp_path / "out"), on_duckdb)
    finally:
        with Cdm.open(pg_url, cdm_schema=schema) as cdm:
            for s in (schema, schema + "_results"):
                cdm.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')


# ---- Spark -----------------------------------------------------------------------------------------
def _drop_databases(spark: object, *names: str) -> None:
    for name in names:  # the catalogue is the session's: another test's tables must not be found
        spark.sql(f"DROP DATABASE IF EXISTS {name} CASCADE")  # type: ignore[attr-defined]


@pytest.mark.spark
def test_demo_study_on_spark_releases_the_duckdb_tables(spark: object, site: dict[str, Path],
                                                        on_duckdb: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    folder = tmp_path / "cdm"
    shutil.copytree(site["parquet"], folder)
    _drop_databases(spark, "cdm", "results")
    with Cdm.open(f"spark:{folder}") as cdm:
        assert cdm.dialect == "spark" and cdm.row_count("person") == PERSONS
        run = run_study(example_package(), cdm, tmp_path / "out", site_policy="sacro", site="site")
    assert {a["status"] for a in run.manifest["analyses"]} == {"done"}
    assert_same_tables(released(tmp_path / "out"), on_duckdb)
    # The cohorts stay in the folder (FOLDER/results) for the next session that opens it.
    assert (folder / "results" / "cohort").is_dir()


@pytest.mark.spark
def test_cdm_load_writes_parquet_tables_spark_reads_back(spark: object, site: dict[str, Path],
                                                         tmp_path: Path) -> None:
    from mercia.cli import app

    _drop_databases(spark, "cdm", "results")
    folder = tmp_path / "spark_cdm"
    r = CliRunner().invoke(app, ["cdm", "load", str(site["parquet"]), "--cdm", f"spark:{folder}"])
    assert r.exit_code == 0, r.output
    # Written as Parquet: read by pyarrow alone, no Spark needed.
    written = pd.read_parquet(folder / "person")
    with Cdm.open(site["duckdb"], read_only=True) as duck:
        want = duck.fetch_arrow("SELECT * FROM main.person").to_pandas()
    cols = list(want.columns)
    assert len(written) == PERSONS
    pd.testing.assert_frame_equal(
        written[cols].sort_values("person_id").reset_index(drop=True),
        want.sort_values("person_id").reset_index(drop=True), check_dtype=False)
    # Another session (another process) knows nothing of this one's catalogue: the folder's tables are
    # registered again when it is opened.
    code = ("import sys; from mercia.cdm import Cdm\n"
            "with Cdm.open(sys.argv[1], create=False) as cdm: print(cdm.row_count('drug_exposure'))")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code, f"spark:{folder}"], capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == pd.read_parquet(site["parquet"] / "drug_exposure.parquet").shape[0]
    # --mode replace empties the tables first (Spark has no DELETE: each table is overwritten).
    r = CliRunner().invoke(app, ["cdm", "load", str(site["parquet"]), "--cdm", f"spark:{folder}", "--mode", "replace"])
    assert r.exit_code == 0, r.output
    assert len(pd.read_parquet(folder / "person")) == PERSONS


def test_spark_targets_that_cannot_be_opened_say_why(tmp_path: Path) -> None:
    """Checked before any session starts (no Spark needed)."""
    from mercia.errors import CdmError, ConfigError

    a_file = tmp_path / "x.parquet"
    a_file.write_bytes(b"")
    with pytest.raises(ConfigError, match="give a folder after 'spark:'"):
        Cdm.open("spark:")
    with pytest.raises(ConfigError, match="is a file; give a folder of Parquet tables"):
        Cdm.open(f"spark:{a_file}")
    with pytest.raises(CdmError, match="folder not found"):
        Cdm.open(f"spark:{tmp_path / 'nowhere'}", create=False)
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(ConfigError, match="does not exist"):
        Cdm.open(f"spark:{tmp_path / 'a' / 'b'}")
