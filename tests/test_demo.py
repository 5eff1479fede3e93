"""The federated demo: a hub and three nodes as real processes, the demo study end to end, and the
servers stopped afterwards, also when something fails."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from mercia.demo import DemoError, _running, run_demo


def _listening(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=2)
    except httpx.HTTPError:
        return False
    return True


@pytest.mark.slow
def test_demo_runs_the_study_through_hub_and_nodes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_demo(out, persons=3000, seed=7)
    assert set(result["sites"]) == {"ashby", "fenwold", "northgate"}
    assert result["failed_sites"] == {}
    for site, entry in result["sites"].items():
        assert entry["info"]["persons"] == 1000, site
        assert Path(entry["report"]).is_file()  # each site's own report, kept at the node
    report = (out / "report.html").read_text()
    assert result["content_hash"] in report
    results = json.loads((out / "results.json").read_text())
    assert set(results["sites"]) == set(result["sites"])
    summary = json.loads((out / "summary.json").read_text())
    assert not _listening(summary["hub"])  # the servers are gone
    for node_dir in (out / "servers" / "nodes").iterdir():
        from mercia.federation.audit import verify_log

        assert verify_log(node_dir / "state" / "audit.jsonl").ok
    # a second run reuses the sites and starts from fresh server state
    again = run_demo(out, persons=3000, seed=7)
    assert again["content_hash"] == result["content_hash"] and again["failed_sites"] == {}


@pytest.mark.slow  # starts a hub
def test_servers_are_stopped_when_a_start_fails(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="stopped at start"), _running(tmp_path / "logs") as servers:
        servers.start("good-hub", ["hub", "serve", "--config", str(_hub(tmp_path))], _port())
        servers.start("broken-node", ["node", "serve", "--config", str(tmp_path / "missing.yaml")], _port())
        procs = [p for p, _ in servers.procs.values()]
        servers.wait_ready(timeout=120)
    assert all(p.poll() is not None for p in procs)


def test_servers_are_stopped_on_interrupt(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), _running(tmp_path / "logs") as servers:
        url = servers.start("hub", ["hub", "serve", "--config", str(_hub(tmp_path))], _port())
        servers.wait_ready(timeout=120)
        assert _listening(url)
        procs = [p for p, _ in servers.procs.values()]
        raise KeyboardInterrupt  # what Ctrl-C raises in the demo
    assert all(p.poll() is not None for p in procs) and not _listening(url)


def _hub(tmp_path: Path) -> Path:
    from mercia.federation.hub import init_hub

    return init_hub(tmp_path / "hub")[0]


def _port() -> int:
    from mercia.demo import _free_port

    return _free_port()
