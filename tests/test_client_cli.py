"""The researcher's and the admin's command line against a real hub and node: mercia hub ... and
mercia client ..., with MERCIA_HUB / MERCIA_TOKEN from the environment."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from federation_support import MERCIA, PROJECT, Federation, make_site, small_study


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    folder = tmp_path_factory.mktemp("cli")
    with Federation(folder, {"solo": make_site(folder / "solo.duckdb", persons=3000, seed=3)}) as f:
        yield f


def _run(fed: Federation, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MERCIA_HUB": fed.hub.url, "MERCIA_TOKEN": token or fed.researcher_token,
           "COLUMNS": "200"}
    return subprocess.run([MERCIA, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow  # a hub and a node as processes, and a study
def test_submit_status_results_from_the_command_line(fed: Federation, tmp_path: Path) -> None:
    pkg = small_study("from the command line")
    package_file = tmp_path / "study.json"
    package_file.write_text(json.dumps(pkg.canonical()))
    r = _run(fed, "client", "submit", str(package_file), "--project", PROJECT)
    assert r.returncode == 0, r.stderr
    assert pkg.content_hash in r.stdout
    fed.approve_all(pkg.content_hash)
    with fed.client() as c:
        c.wait(pkg.content_hash, timeout=180)
    r = _run(fed, "client", "status", pkg.content_hash)
    assert r.returncode == 0 and "collected" in r.stdout and "closed" in r.stdout
    r = _run(fed, "client", "results", pkg.content_hash, "--out", str(tmp_path / "res"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "res" / "results.json").read_text())["hash"] == pkg.content_hash
    assert pkg.content_hash in (tmp_path / "res" / "report.html").read_text()


@pytest.mark.slow  # a hub and a node as processes, and a study
def test_feasibility_from_the_command_line(fed: Federation, tmp_path: Path) -> None:
    definition = small_study().canonical()["cohorts"]["gliclazide"]["definition"]
    path = tmp_path / "gliclazide.json"
    path.write_text(json.dumps(definition))
    r = _run(fed, "client", "feasibility", str(path), "--project", PROJECT)
    assert r.returncode == 0, r.stderr
    assert "solo" in r.stdout and "total (released)" in r.stdout


@pytest.mark.slow  # a hub and a node as processes, and a study
def test_client_errors_are_one_line(fed: Federation, tmp_path: Path) -> None:
    r = _run(fed, "client", "status", "0" * 64)
    assert r.returncode == 1 and "404" in r.stderr and "Traceback" not in r.stderr
    r = _run(fed, "client", "status", "0" * 64, token="mct_wrong")
    assert r.returncode == 1 and "401" in r.stderr


def test_hub_admin_commands(tmp_path: Path) -> None:
    r = subprocess.run([MERCIA, "hub", "init", str(tmp_path / "hub")], capture_output=True, text=True)
    assert r.returncode == 0 and "admin token" in r.stdout
    config = tmp_path / "hub" / "hub.yaml"
    assert yaml.safe_load(config.read_text())["signing_key"] == "hub_signing.pem"
    assert (tmp_path / "hub" / "hub_signing.pem").stat().st_mode & 0o777 == 0o600
    again = subprocess.run([MERCIA, "hub", "init", str(tmp_path / "hub")], capture_output=True, text=True)
    assert again.returncode == 1 and "already holds a hub" in again.stderr
    r = subprocess.run([MERCIA, "hub", "node-add", "leeds", "http://127.0.0.1:9", "--config", str(config),
                        "--token", "mct_x"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([MERCIA, "hub", "project-add", "p1", "--site", "leeds", "--config", str(config)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "leeds" in r.stdout
    r = subprocess.run([MERCIA, "hub", "project-add", "p2", "--site", "york", "--config", str(config)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "not registered" in r.stderr
    r = subprocess.run([MERCIA, "hub", "user-add", "alice", "--project", "p1", "--config", str(config)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("mct_")
    tokens = json.loads((tmp_path / "hub" / "tokens.json").read_text())
    assert r.stdout.strip() not in json.dumps(tokens)  # stored hashed
    r = subprocess.run([MERCIA, "hub", "node-add", "york", "ftp://x", "--config", str(config), "--token", "t"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "http" in r.stderr
