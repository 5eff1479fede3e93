"""Faults, over real HTTP with real processes: a node killed (SIGKILL) mid-study and restarted, a slow
node (frozen with SIGSTOP, so the hub's calls time out), and a node down when the study is submitted.

In each the hub shows the site's state, retries with back-off, never counts a site twice, and the
audit chains of the nodes and the hub verify afterwards.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from federation_support import PROJECT, Federation, NodeServer, make_site, small_study
from mercia.federation.audit import read_records, verify_log

pytestmark = pytest.mark.slow  # three servers, studies run, processes killed and restarted

NODE_TIMEOUT = 3.0  # the hub gives up on a silent node after this, then backs off


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("faults")
    # Site a is bigger so that its study runs long enough to be killed mid-run.
    sites = {"a": make_site(root / "a.duckdb", persons=20_000, seed=11, first_person_id=1),
             "b": make_site(root / "b.duckdb", persons=3000, seed=12, first_person_id=5_000_001)}
    federation = Federation(root, sites)
    data = yaml.safe_load(federation.hub.config_path.read_text())
    data["node_timeout_seconds"] = NODE_TIMEOUT
    federation.hub.config_path.write_text(yaml.safe_dump(data))
    with federation:
        yield federation


def events(path: os.PathLike[str], content_hash: str, event: str) -> list[dict[str, Any]]:
    return [r for r in read_records(path) if r["event"] == event and r["details"].get("hash") == content_hash]


def site_state(status: dict[str, Any], site: str) -> dict[str, Any]:
    return next(s for s in status["sites"] if s["site"] == site)


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def node_status(node: NodeServer, content_hash: str) -> str | None:
    with node.client("hub") as c:
        r = c.get(f"/api/v1/studies/{content_hash}")
    return r.json()["status"] if r.status_code == 200 else None


def assert_chains_verify(fed: Federation) -> None:
    for path in [n.state_dir / "audit.jsonl" for n in fed.nodes.values()] + [fed.hub.state_dir / "audit.jsonl"]:
        v = verify_log(path)
        assert v.ok, (path, v.problems[:5])


def assert_released_once(fed: Federation, content_hash: str, sites: list[str]) -> None:
    for site in sites:
        node = fed.nodes[site]
        assert len(events(node.state_dir / "audit.jsonl", content_hash, "release")) == 1, site
    hub_audit = fed.hub.state_dir / "audit.jsonl"
    collected = [r["details"]["site"] for r in events(hub_audit, content_hash, "results.collected")]
    assert sorted(collected) == sorted(sites), collected
    with fed.client() as client:
        res = client.results(content_hash)
    assert sorted(res["sites"]) == sorted(sites)


def test_a_node_killed_mid_study_resumes_and_releases_once(fed):
    pkg = small_study("killed mid-run")
    h = pkg.content_hash
    a = fed.nodes["a"]
    with fed.client() as client:
        client.submit(pkg, project=PROJECT)
        fed.approve_all(h)
        wait_for(lambda: node_status(a, h) == "running", 120, "site a to start running")
        a.kill()  # SIGKILL mid-run: no clean shutdown, a staging folder and a 'running' row left behind
        status = wait_for(lambda: (s := client.status(h)) and not site_state(s, "a")["reachable"] and s, 30,
                          "the hub to see site a down")
        assert status["status"] == "open"
        assert site_state(status, "a")["attempts"] >= 1 and site_state(status, "a")["last_error"]
        a.start()  # same port, same state folder
        final = client.wait(h, timeout=240)
    assert final["status"] == "closed"
    assert {s["site"]: s["status"] for s in final["sites"]} == {"a": "collected", "b": "collected"}
    node_a_audit = a.state_dir / "audit.jsonl"
    assert len(events(node_a_audit, h, "run.started")) == 2  # the interrupted run, then the re-run
    assert len(events(node_a_audit, h, "study.requeued")) == 1
    with a.client("hub") as c:
        assert c.get(f"/api/v1/studies/{h}").json()["runs"] == 2
    assert not list((a.state_dir / "results").glob(f".{h}.partial-*"))  # no staging left behind
    assert_released_once(fed, h, ["a", "b"])
    assert_chains_verify(fed)


def test_a_slow_node_is_shown_retried_and_then_collected(fed):
    pkg = small_study("slow node")
    h = pkg.content_hash
    b = fed.nodes["b"]
    assert b.proc is not None
    os.kill(b.proc.pid, signal.SIGSTOP)  # b accepts connections but answers nothing: calls time out
    try:
        with fed.client() as client:
            client.submit(pkg, project=PROJECT)
            fed.nodes["a"].wait_status(h, {"pending_approval"})
            fed.nodes["a"].approve(h)
            status = wait_for(lambda: (s := client.status(h)) and site_state(s, "a")["status"] == "collected"
                              and site_state(s, "b")["attempts"] >= 2 and s, 180, "a collected, b retried")
            slow = site_state(status, "b")
            assert status["status"] == "open" and not slow["reachable"] and slow["status"] == "queued"
            assert "timed out" in slow["last_error"].lower() or "timeout" in slow["last_error"].lower(), slow
            attempts_then = slow["attempts"]
            time.sleep(2.5)
            # Back-off: the waits double (0.2 s, 0.4 s, ... capped at 2 s, each plus a 3 s timeout).
            assert site_state(client.status(h), "b")["attempts"] <= attempts_then + 2
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    with fed.client() as client:
        b.wait_status(h, {"pending_approval"}, timeout=60)
        b.approve(h)
        final = client.wait(h, timeout=240)
    assert {s["site"]: s["status"] for s in final["sites"]} == {"a": "collected", "b": "collected"}
    assert_released_once(fed, h, ["a", "b"])
    assert_chains_verify(fed)


def test_a_node_down_at_submission_is_excluded_when_the_study_is_closed(fed):
    pkg = small_study("node down at submission")
    h = pkg.content_hash
    b = fed.nodes["b"]
    b.stop()
    try:
        with fed.client() as client:
            client.submit(pkg, project=PROJECT)
            fed.nodes["a"].wait_status(h, {"pending_approval"})
            fed.nodes["a"].approve(h)
            status = wait_for(lambda: (s := client.status(h)) and site_state(s, "a")["status"] == "collected"
                              and site_state(s, "b")["attempts"] >= 3 and s, 180, "a collected, b retried")
            down = site_state(status, "b")
            assert status["status"] == "open"  # the hub waits for b ...
            assert down["status"] == "queued" and not down["reachable"] and down["last_error"]
            t0, n0 = time.monotonic(), down["attempts"]
            time.sleep(4)
            n1 = site_state(client.status(h), "b")["attempts"]
            # ... retrying with back-off (0.8 s, 1.6 s, then 2 s, each with jitter of +-25%), not hammering
            # the dead node (without back-off the dispatcher's 0.2 s passes would make about 20 attempts).
            assert n0 < n1 <= n0 + int(time.monotonic() - t0) + 1, (n0, n1)
            closed = client.close_study(h)  # the researcher: finish with the sites that answered
            assert closed["status"] == "closed"
            assert {s["site"]: s["status"] for s in closed["sites"]} == {"a": "collected", "b": "excluded"}
            res = client.results(h)
            assert sorted(res["sites"]) == ["a"]
    finally:
        b.start()
    # b is back: the closed study is not sent to it, and nothing of b is ever counted.
    time.sleep(2)
    assert node_status(b, h) is None
    with fed.client() as client:
        assert sorted(client.results(h)["sites"]) == ["a"]
        assert site_state(client.status(h), "b")["status"] == "excluded"
    hub_audit = fed.hub.state_dir / "audit.jsonl"
    assert [r["details"]["site"] for r in events(hub_audit, h, "results.collected")] == ["a"]
    closes = events(hub_audit, h, "study.closed")
    assert len(closes) == 1 and closes[0]["details"]["excluded"] == ["b"]
    assert_chains_verify(fed)
