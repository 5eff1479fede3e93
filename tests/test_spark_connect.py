"""Spark Connect: a CDM on a Spark Connect server (`--cdm sc://host:port`) gives DuckDB's cohorts and the
demo study's released tables.

The server is pyspark's own (`SparkConnectServer`, in the jars pyspark ships), started on 127.0.0.1 on a
free port for this module and stopped afterwards; its log is in the module's temporary folder. The client
is this process, which knows nothing of the server's files: the CDM is loaded through the connection
(`load_folder`, as `mercia cdm load --cdm sc://...` loads it) into the server's own warehouse.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from conftest import require_spark
from mercia.cdm import Cdm
from mercia.cdm.export import export_parquet
from mercia.cdm.load import load_folder
from mercia.study import example_package, run_study
from mercia.synth import DEFAULT_SITES, generate_site
from test_study_engines import assert_same_tables, released

pytestmark = pytest.mark.spark

PERSONS = 3000
SEED = 7
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _require_connect_client() -> None:
    try:
        import google.rpc  # noqa: F401
        import grpc  # noqa: F401
        import grpc_status  # noqa: F401
        import zstandard  # noqa: F401
    except ImportError as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but pyspark's connect client is missing ({e}): install mercia[spark]")
        pytest.skip(f"pyspark's connect client is not installed ({e}): pip install -e '.[spark]'")


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Spark Connect server of this module (local[2], one JVM), its URL; stopped when the module ends."""
    require_spark()
    _require_connect_client()
    import pyspark

    home = Path(pyspark.__file__).parent
    if not any((home / "jars").glob("spark-connect_*.jar")):
        pytest.fail(f"pyspark at {home} ships no Spark Connect server jar")
    root = tmp_path_factory.mktemp("spark-connect")
    port = _free_port()
    conf = {
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.sql.warehouse.dir": str(root / "warehouse"),
        "spark.sql.session.timeZone": "UTC",
        # The catalogue's metastore (Derby) in the temporary folder, not in the working directory.
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={root}",
    }
    cmd = [str(home / "bin" / "spark-submit"), "--class", SERVER_CLASS, "--name", "mercia-test-connect",
           "--master", "local[2]"]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_CONNECT_MODE": "0",
           "SPARK_LOG_DIR": str(root), "SPARK_PID_DIR": str(root)}
    env.pop("SPARK_REMOTE", None)
    log_path = root / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the Spark Connect server exited with {proc.returncode}: "
                            f"{log_path.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the Spark Connect server did not listen on {port} in 180 s: "
                            f"{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("connect-site")
    db = root / "site.duckdb"
    with Cdm.open(db) as cdm:
        generate_site(cdm, persons=PERSONS, seed=SEED, profile=DEFAULT_SITES[0])
        export_parquet(cdm, root / "parquet")
    return {"duckdb": db, "parquet": root / "parquet"}


def _cohort_sizes(cdm: Cdm) -> list[tuple[int, int, int]]:
    """(study cohort id, rows, persons) of each cohort a study generated, by the package's numbering."""
    r = cdm.results_schema
    return sorted((int(a), int(b), int(c)) for a, b, c in cdm.fetch_all(
        f"SELECT s.study_cohort_id, COUNT(*), COUNT(DISTINCT c.subject_id) FROM {r}.cohort c "
        f"JOIN {r}.study_cohort s ON s.cohort_definition_id = c.cohort_definition_id GROUP BY 1"))


def test_demo_study_through_spark_connect_releases_the_duckdb_tables(connect_url: str, site: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    with Cdm.open(site["duckdb"]) as duck:
        want_run = run_study(example_package(), duck, tmp_path / "duck", site_policy="sacro", site="site")
        want_cohorts = _cohort_sizes(duck)
    with Cdm.open(connect_url, cdm_schema="cdm", results_schema="results") as cdm:
        assert cdm.dialect == "spark" and cdm.target == connect_url
        load_folder(cdm, site["parquet"])
        cdm.create_tables()  # the tables the site has empty
        assert cdm.row_count("person") == PERSONS
        run = run_study(example_package(), cdm, tmp_path / "connect", site_policy="sacro", site="site")
        # Each analysis as on DuckDB (there the adjusted Cox model is singular at this size: not run on both).
        assert [(a["name"], a["status"]) for a in run.manifest["analyses"]] == \
            [(a["name"], a["status"]) for a in want_run.manifest["analyses"]]
        got_cohorts = _cohort_sizes(cdm)
    assert got_cohorts == want_cohorts and all(n > 0 for _, n, _ in want_cohorts)
    got, want = released(tmp_path / "connect"), released(tmp_path / "duck")
    assert_same_tables(got, want)
    assert any(len(df) for df in want.values())
    # The tables live in the server's catalogue: a second connection finds them (a cluster's CDM).
    with Cdm.open(connect_url, cdm_schema="cdm", create=False) as again:
        assert again.row_count("person") == PERSONS
        persons = again.fetch_arrow("SELECT person_id FROM cdm.person").to_pandas()
    want_ids = pd.read_parquet(site["parquet"] / "person.parquet", columns=["person_id"])
    assert sorted(persons["person_id"]) == sorted(want_ids["person_id"])



def test_a_connect_target_opens_beside_a_local_session(spark: object, connect_url: str) -> None:
    """A process running a local Spark session (a node, a notebook, this test run) opens an sc:// target
    too, and its local session goes on working: pyspark's generic builder refuses a remote session there
    (SESSION_ALREADY_EXIST) and, once it made one, marks the process Connect-only."""
    with Cdm.open(connect_url, cdm_schema="beside", results_schema="beside_results") as cdm:
        assert cdm.fetch_all("SELECT 40 + 2") == [(42,)]
        assert type(cdm.engine.spark).__module__.startswith("pyspark.sql.connect")
    assert spark.sql("SELECT 1").collect()[0][0] == 1  # type: ignore[attr-defined]
    assert "SPARK_CONNECT_MODE_ENABLED" not in os.environ
    from pyspark.sql import SparkSession

    assert SparkSession.builder.getOrCreate() is spark  # still the local session
