"""`mercia node quality-run`: the custodian starts a data-quality run from the command line, by asking the
running node over real HTTP on 127.0.0.1, or on the node's own machine as the node does (the same stored
summary, answered by the node afterwards). Bad input is one line naming what to give."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from federation_support import PROJECT, HubKey, NodeServer, free_port, make_site
from mercia.cli import app

runner = CliRunner()
ENV = {"MERCIA_TOKEN": "", "MERCIA_NODE": "", "COLUMNS": "200"}


def cli(*args: str):
    return runner.invoke(app, ["node", "quality-run", *args], env=ENV)


def _released(node: NodeServer, timeout: float = 180.0) -> dict:
    """The node's summary once a run has stored one (GET quality answers 409 before)."""
    deadline = time.monotonic() + timeout
    with node.client("custodian") as c:
        while time.monotonic() < deadline:
            r = c.get("/api/v1/quality", params={"project": PROJECT})
            if r.status_code == 200:
                return r.json()
            assert r.status_code == 409, r.text
            time.sleep(0.5)
    raise TimeoutError("no summary")


@pytest.fixture
def node(tmp_path: Path):
    site = make_site(tmp_path / "site.duckdb", persons=1500, seed=41)
    return NodeServer(tmp_path / "node", cdm=site, hub_key=HubKey(tmp_path / "key"), site="a")


def test_custodian_asks_the_running_node_over_http(node: NodeServer) -> None:
    with node:
        r = cli("--node", node.url, "--token", node.tokens["custodian"])
        assert r.exit_code == 0, r.output
        assert r.output.strip() == ("started a data-quality run at site a (no summary stored yet; the new one "
                                    "replaces it when the run ends)")
        summary = _released(node)
        assert summary["site"] == "a" and summary["overview"]["overall"]["checks"] > 1000
        # a second run: the node says which summary it holds until the new one is stored
        r = cli("--node", node.url, "--token", node.tokens["admin"])
        assert r.exit_code == 0, r.output
        assert re.fullmatch(r"(started a data-quality run|a data-quality run is already going on) at site a "
                            rf"\(the stored summary is from {summary['run_date']}; the new one replaces it "
                            r"when the run ends\)", r.output.strip()), r.output
        events = [json.loads(line)["event"] for line in (node.state_dir / "audit.jsonl").read_text().splitlines()]
        assert events.count("quality.started") >= 1 and "quality.released" in events


def test_bad_requests_are_one_line_each(node: NodeServer) -> None:
    with node:
        for token, status in ((node.tokens["researcher"], 403), (node.tokens["hub"], 403), ("mct_wrong", 401)):
            r = cli("--node", node.url, "--token", token)
            assert r.exit_code == 1 and r.output.startswith(f"error: the node answered {status}: "), r.output
            assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
        with node.client("custodian") as c:  # nothing was started by the refused requests
            assert c.get("/api/v1/quality", params={"project": PROJECT}).status_code == 409
    cases = {
        ("--node", "ftp://127.0.0.1:1", "--token", "t"): "error: --node 'ftp://127.0.0.1:1': give the node's URL, "
                                                          "http(s)://host:port",
        ("--node", "http://127.0.0.1:1"): "error: --token: give a custodian or admin token of the node",
        (): "error: give either --config node.yaml (run here) or --node URL --token TOKEN (ask the running node)",
        ("--node", "http://127.0.0.1:1", "--config", str(node.config_path)): "error: give either --config",
        ("--config", str(node.config_path.with_name("missing.yaml"))): "error: ",
    }
    for args, start in cases.items():
        r = cli(*args)
        assert r.exit_code != 0 and r.output.startswith(start), (args, r.output)
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    url = f"http://127.0.0.1:{free_port()}"  # no one listens there
    r = cli("--node", url, "--token", "t")
    assert r.exit_code == 1 and r.output.startswith(f"error: the node at {url} did not answer ("), r.output


def test_run_here_as_the_node_does_then_the_node_answers_it(node: NodeServer) -> None:
    r = cli("--config", str(node.config_path))
    assert r.exit_code == 0, r.output
    stored = json.loads((node.state_dir / "quality" / "summary.json").read_text())
    o = stored["overview"]["overall"]
    assert r.output.strip() == (
        f"site a, run {stored['run_date']}: {o['checks']:,} checks released, {o['passed']:,} passed, "
        f"{o['failed']:,} failed, {o['errors']:,} errors, {o['not_applicable']:,} not applicable "
        f"(pass rate {o['pass_rate']}%)")
    audit = [json.loads(line) for line in (node.state_dir / "audit.jsonl").read_text().splitlines()]
    assert [e["event"] for e in audit] == ["quality.started", "quality.released"]
    assert all(e["details"]["via"] == "cli" and e["actor"].startswith("custodian:") for e in audit)
    with node:
        answered = _released(node, timeout=10)
        stored.pop("policy_key")
        assert answered == stored  # the node answers exactly what the command stored
        # While the node holds its DuckDB CDM, running here is refused with what to do instead.
        r = cli("--config", str(node.config_path))
        assert r.exit_code == 1 and "held by another process (a running node?)" in r.output, r.output
        assert "mercia node quality-run --node URL --token TOKEN" in r.output


def test_run_here_needs_the_site_cdm(tmp_path: Path) -> None:
    node = NodeServer(tmp_path / "node", cdm=tmp_path / "absent.duckdb", hub_key=HubKey(tmp_path / "key"), site="a")
    r = cli("--config", str(node.config_path))
    assert r.exit_code != 0 and r.output.startswith("error: ") and "Traceback" not in r.output, r.output
    assert not (node.state_dir / "quality" / "summary.json").exists()


def test_the_answer_comes_from_the_node_route(node: NodeServer) -> None:
    # the command's HTTP call is the documented route: the same answer as a plain POST
    with node:
        with httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {node.tokens['custodian']}"}) as c:
            first = c.post("/api/v1/quality/run").json()
        from mercia.federation.node.quality_run import ask_node

        second = ask_node(node.url, node.tokens["custodian"])
        assert set(first) == set(second) == {"site", "started", "running", "last_run_date"}
        assert first["started"] is True and second["site"] == "a"
        _released(node)
