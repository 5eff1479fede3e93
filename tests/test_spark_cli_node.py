"""The commands on a Spark CDM: `mercia node serve` over `spark:FOLDER` answers over real HTTP on 127.0.0.1
with DuckDB's released tables, and `mercia study run --cdm spark:FOLDER` of a study with a prediction
model (patient-level prediction on Spark) releases DuckDB's tables, model performance included.

Marker spark (MERCIA_TEST_SPARK=1). The node is a subprocess with its own local Spark session; the CLI
runs in this process, on the test session's one Spark session.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conftest import require_spark
from federation_support import HubKey, NodeServer, small_study, submit_body, wait_healthy
from mercia.cdm import Cdm
from mercia.cdm.export import export_parquet
from mercia.study import run_study
from mercia.synth import DEFAULT_SITES, generate_site
from test_study_engines import assert_same_tables, released

pytestmark = pytest.mark.spark

API = "/api/v1"
PERSONS = 3000


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A site where urinary tract infections are common enough to model (as tests/test_prediction_synth.py),
    as a DuckDB file and as a folder of Parquet tables."""
    root = tmp_path_factory.mktemp("spark-cli-site")
    db = root / "site.duckdb"
    profile = DEFAULT_SITES[2].model_copy(update={"acute_rate_multiplier": 6.0})
    with Cdm.open(db) as cdm:
        generate_site(cdm, persons=PERSONS, seed=13, profile=profile)
        export_parquet(cdm, root / "parquet")
    return {"duckdb": db, "parquet": root / "parquet"}


def _condition(name: str, key: str, *, keep_all: bool = False, **event: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "concepts": {"c": {"name": name, "conditions": [key]}},
                         "entry": [{"condition": "c", **event}]}
    if keep_all:
        d.update(keep="all", exit={"after": {"days": 1}})
    return d


PREDICTION_STUDY = {
    "name": "UTI risk",
    "cohorts": {
        "htn": {"id": 1, "definition": _condition("Hypertension", "hypertension", first=True)},
        "uti": {"id": 2, "definition": _condition("UTI", "urinary_tract_infection", keep_all=True)},
    },
    "analyses": [
        {"type": "cohort_entries", "name": "entries", "cohorts": ["htn", "uti"]},
        {"type": "prediction", "name": "uti_model", "target": "htn", "outcome": "uti",
         "settings": {"model": {"type": "lasso_logistic", "c_grid": [0.1, 1.0]}}},
    ],
    "disclosure": "opensafely",
}


def _spark_folder(site: dict[str, Path], where: Path) -> Path:
    folder = where / "cdm"
    shutil.copytree(site["parquet"], folder)
    return folder


def test_node_serve_on_a_spark_folder_releases_the_duckdb_tables(site: dict[str, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    require_spark()
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    pkg = small_study("on spark")
    shutil.copy(site["duckdb"], tmp_path / "duck.duckdb")
    with Cdm.open(tmp_path / "duck.duckdb") as duck:
        run_study(pkg, duck, tmp_path / "duck", site_policy="opensafely", site="alpha")
    want = released(tmp_path / "duck")
    folder = _spark_folder(site, tmp_path)
    key = HubKey(tmp_path / "key")
    node = NodeServer(tmp_path / "node", cdm=f"spark:{folder}", hub_key=key, site="alpha")
    node.launch()
    try:
        # The node opens its CDM before it answers: a Spark session started and the folder's tables registered.
        wait_healthy(node.url, node.proc, timeout=600)
        with node.client("hub") as hub:
            r = hub.post(f"{API}/studies", json=submit_body(pkg, key))
            assert r.status_code == 202, r.text
        node.approve(pkg.content_hash)
        done = node.wait_status(pkg.content_hash, {"finished", "failed"}, timeout=900)
        assert done["status"] == "finished", (done, node.log_text()[-3000:])
        with node.client("hub") as hub:
            res = hub.get(f"{API}/studies/{pkg.content_hash}/results")
        assert res.status_code == 200, res.text
    finally:
        node.stop(timeout=60)
    got = {}
    for t in res.json()["tables"]:
        df = pd.DataFrame(t["rows"], columns=t["columns"])
        got[t["name"]] = df.sort_values(list(df.columns), kind="stable", na_position="last").reset_index(drop=True)
    assert_same_tables(got, want)
    assert len(want["cohort_counts"]) == 3
    assert (folder / "results" / "cohort").is_dir()  # the node's cohorts, kept in the folder


def test_study_run_cli_on_a_spark_folder_with_prediction_releases_the_duckdb_tables(
        spark: object, site: dict[str, Path], tmp_path: Path) -> None:
    from mercia.cli import app

    for name in ("cdm", "results"):  # the session's catalogue: another test's tables must not be found
        spark.sql(f"DROP DATABASE IF EXISTS {name} CASCADE")  # type: ignore[attr-defined]
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(PREDICTION_STUDY))
    shutil.copy(site["duckdb"], tmp_path / "duck.duckdb")
    folder = _spark_folder(site, tmp_path)  # the tables the DuckDB site has empty have no file there
    cli = CliRunner()
    for cdm, out in ((str(tmp_path / "duck.duckdb"), "duck"), (f"spark:{folder}", "spark")):
        r = cli.invoke(app, ["study", "run", str(study), "--cdm", cdm, "--out", str(tmp_path / out),
                             "--site", "s"])
        assert r.exit_code == 0, (cdm, r.output)
    want = released(tmp_path / "duck")
    assert {"uti_model_performance", "uti_model_risk_strata", "uti_model_attrition"} <= set(want)
    assert_same_tables(released(tmp_path / "spark"), want)
