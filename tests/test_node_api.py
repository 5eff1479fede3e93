"""The node over real HTTP on 127.0.0.1: submit -> pending -> approve -> finished -> results, and
everything it must refuse. One node server (a subprocess) over a small synthetic site per module."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from federation_support import MERCIA, PROJECT, HubKey, NodeServer, make_site, small_study, submit_body
from mercia.disclosure import BUILTIN_POLICIES
from mercia.study import StudyPackage

API = "/api/v1"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> HubKey:
    return HubKey(tmp_path_factory.mktemp("hubkey"))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, key: HubKey) -> Iterator[NodeServer]:
    folder = tmp_path_factory.mktemp("node")
    site = make_site(folder / "site.duckdb", persons=3000, seed=1)
    with NodeServer(folder / "node", cdm=site, hub_key=key, site="alpha") as server:
        yield server


def _variant(name: str) -> StudyPackage:
    return small_study(name)


def test_health_says_ok_and_nothing_else(node: NodeServer) -> None:
    r = httpx.get(f"{node.url}/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_submit_approve_run_results(node: NodeServer, key: HubKey) -> None:
    pkg = _variant("lifecycle")
    h = pkg.content_hash
    with node.client("hub") as hub:
        r = hub.post(f"{API}/studies", json=submit_body(pkg, key))
        assert r.status_code == 202 and r.json()["status"] == "pending_approval"
        assert hub.get(f"{API}/studies/{h}/results").status_code == 409
        # resubmitting is idempotent: the same study, still pending, one row
        assert hub.post(f"{API}/studies", json=submit_body(pkg, key)).json()["status"] == "pending_approval"
    with node.client("custodian") as c:
        listed = c.get(f"{API}/studies", params={"status": "pending_approval"}).json()["studies"]
        assert [s["hash"] for s in listed].count(h) == 1
        r = c.post(f"{API}/studies/{h}/approve", json={"reason": "checked"})
        assert r.status_code == 200 and r.json()["status"] == "approved" and r.json()["decided_by"] == "custodian-alpha"
        assert c.post(f"{API}/studies/{h}/approve").status_code == 409  # decided already
    done = node.wait_status(h, {"finished", "failed"})
    assert done["status"] == "finished", done
    assert done["runs"] == 1 and done["released_at"] is not None
    with node.client("hub") as hub:
        res = hub.get(f"{API}/studies/{h}/results")
        assert res.status_code == 200
        body = res.json()
        names = {t["name"] for t in body["tables"]}
        assert {"cohort_counts", "attrition_sglt2", "new_users_by_year"} <= names
        assert body["manifest"]["package_hash"] == h and body["manifest"]["site"] == "alpha"
        assert body["disclosure"]["entries"]
        for t in body["tables"]:
            assert t["policy"]["name"] == "opensafely"  # the site's policy, as the package asked none
            assert not {"person_id", "subject_id"} & set(t["columns"])
        # resubmitting a finished study does not run it again
        again = hub.post(f"{API}/studies", json=submit_body(pkg, key)).json()
        assert again["status"] == "finished" and again["runs"] == 1


def test_unapproved_package_never_runs(node: NodeServer, key: HubKey) -> None:
    pkg = _variant("never approved")
    with node.client("hub") as hub:
        assert hub.post(f"{API}/studies", json=submit_body(pkg, key)).status_code == 202
        time.sleep(2.0)  # several worker polls
        rec = hub.get(f"{API}/studies/{pkg.content_hash}").json()
        assert rec["status"] == "pending_approval" and rec["runs"] == 0
        assert hub.get(f"{API}/studies/{pkg.content_hash}/results").status_code == 409
    assert not (node.state_dir / "results" / pkg.content_hash).exists()


def test_rejected_package_never_runs(node: NodeServer, key: HubKey) -> None:
    pkg = _variant("rejected")
    with node.client("hub") as hub:
        hub.post(f"{API}/studies", json=submit_body(pkg, key))
    with node.client("custodian") as c:
        assert c.post(f"{API}/studies/{pkg.content_hash}/reject", json={"reason": "no"}).json()["status"] == "rejected"
    time.sleep(1.0)
    with node.client("hub") as hub:
        rec = hub.get(f"{API}/studies/{pkg.content_hash}").json()
    assert rec["status"] == "rejected" and rec["runs"] == 0 and rec["reason"] == "no"


def test_tampered_package_is_refused(node: NodeServer, key: HubKey) -> None:
    pkg = _variant("tampered")
    body = submit_body(pkg, key)
    body["package"]["cohorts"]["sglt2"]["definition"]["name"] = "something else"  # changed after hashing
    with node.client("hub") as hub:
        r = hub.post(f"{API}/studies", json=body)
        assert r.status_code == 400 and "does not match its hash" in r.json()["detail"]
        assert hub.get(f"{API}/studies/{pkg.content_hash}").status_code == 404


def test_package_not_signed_by_the_trusted_hub_is_refused(node: NodeServer, tmp_path: Path) -> None:
    other = HubKey(tmp_path / "other-hub")
    pkg = _variant("wrong signer")
    with node.client("hub") as hub:
        r = hub.post(f"{API}/studies", json=submit_body(pkg, other, sites=[node.site]))
        assert r.status_code == 403 and "signature" in r.json()["detail"]
        body = submit_body(pkg, other, sites=[node.site])
        body["signature"] = "not base64 at all!"
        assert hub.post(f"{API}/studies", json=body).status_code == 403
        assert hub.get(f"{API}/studies/{pkg.content_hash}").status_code == 404


def test_package_weaker_than_site_policy_is_refused(node: NodeServer, key: HubKey) -> None:
    canonical = _variant("weak policy").canonical()
    weak = BUILTIN_POLICIES["opensafely"].model_dump(mode="json")
    weak.update(name="weak", threshold=2)
    canonical["disclosure"] = weak
    pkg = StudyPackage.from_canonical(canonical)
    with node.client("hub") as hub:
        r = hub.post(f"{API}/studies", json=submit_body(pkg, key))
    assert r.status_code == 400 and "weaker" in r.json()["detail"].lower()


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/studies"), ("POST", "/studies"), ("GET", f"/studies/{'0' * 64}"),
    ("POST", f"/studies/{'0' * 64}/approve"), ("GET", f"/studies/{'0' * 64}/results"), ("POST", "/feasibility"),
    ("POST", f"/studies/{'0' * 64}/rounds"),
])
def test_every_api_route_needs_a_token(node: NodeServer, method: str, path: str) -> None:
    r = httpx.request(method, f"{node.url}{API}{path}", json={})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = httpx.request(method, f"{node.url}{API}{path}", json={}, headers={"Authorization": "Bearer mct_wrong"})
    assert r.status_code == 401


def test_roles_are_enforced(node: NodeServer, key: HubKey) -> None:
    pkg = _variant("roles")
    with node.client("researcher") as researcher:
        assert researcher.post(f"{API}/studies", json=submit_body(pkg, key)).status_code == 403
        assert researcher.get(f"{API}/studies").status_code == 403
    with node.client("hub") as hub:
        hub.post(f"{API}/studies", json=submit_body(pkg, key))
        assert hub.post(f"{API}/studies/{pkg.content_hash}/approve").status_code == 403  # only the custodian
    with node.client("custodian") as c:
        assert c.get(f"{API}/studies/{pkg.content_hash}/results").status_code == 403
        c.post(f"{API}/studies/{pkg.content_hash}/reject")


def test_bad_requests_are_4xx_with_a_message(node: NodeServer, key: HubKey) -> None:
    pkg = _variant("bad requests")
    with node.client("hub") as hub:
        for body in ({}, {"package": {}, "hash": "x"}, {**submit_body(pkg, key), "extra": 1},
                     {**submit_body(pkg, key), "package": {"name": "no cohorts"}}):
            r = hub.post(f"{API}/studies", json=body)
            assert 400 <= r.status_code < 500 and r.json()["detail"]
        assert hub.get(f"{API}/studies/not-a-hash").status_code == 422
        assert hub.get(f"{API}/studies/{'0' * 64}").status_code == 404
        r = hub.post(f"{API}/feasibility", json={"definition": {"name": "x"}, "project": PROJECT})
        assert r.status_code == 400 and r.json()["detail"]


def test_feasibility_count_is_the_study_count_within_its_noise(node: NodeServer, key: HubKey) -> None:
    pkg = _variant("feasibility reference")
    with node.client("hub") as hub:
        hub.post(f"{API}/studies", json=submit_body(pkg, key))
    node.approve(pkg.content_hash)
    assert node.wait_status(pkg.content_hash, {"finished", "failed"})["status"] == "finished"
    with node.client("hub") as hub:
        tables = {t["name"]: t for t in hub.get(f"{API}/studies/{pkg.content_hash}/results").json()["tables"]}
    counts = tables["cohort_counts"]
    i_key, i_persons = counts["columns"].index("cohort"), counts["columns"].index("persons")
    study_persons = {row[i_key]: row[i_persons] for row in counts["rows"]}
    definition = pkg.canonical()["cohorts"]["gliclazide"]["definition"]
    with node.client("researcher") as researcher:
        r = researcher.post(f"{API}/feasibility", json={"definition": definition, "project": PROJECT})
        assert r.status_code == 200, r.text
        answer = r.json()
        # Differentially private: the study's count plus noise of the stated spread, then the same
        # policy's rounding (6 SDs: the geometric tail beyond is below 1 in 4,000).
        # The node's noise key is random per run, so the noisy count may fall under the threshold and be
        # suppressed (None): then the true count must lie within the same band above the threshold.
        sd = answer["privacy"]["persons_noise_sd"]
        threshold = BUILTIN_POLICIES["opensafely"].threshold
        true_persons = study_persons["gliclazide"]
        assert true_persons is not None
        if answer["persons"] is None:
            assert true_persons <= threshold + 6 * sd + 5
        else:
            assert abs(answer["persons"] - true_persons) <= 6 * sd + 5
        assert answer["attrition"]["rows"][-1][0] == "final cohort"
        # a researcher outside the project is refused
        r = researcher.post(f"{API}/feasibility", json={"definition": definition, "project": "elsewhere"})
        assert r.status_code == 403


def test_regression_rounds_need_a_finished_study(node: NodeServer, key: HubKey) -> None:
    pkg = _variant("rounds pending")
    with node.client("hub") as hub:
        hub.post(f"{API}/studies", json=submit_body(pkg, key))
        r = hub.post(f"{API}/studies/{pkg.content_hash}/rounds",
                     json={"analysis": "cox_adjusted", "model": "cox", "beta": [0.0] * 7})
        assert r.status_code == 409


def test_custodian_approves_from_the_command_line(node: NodeServer, key: HubKey) -> None:
    pkg = _variant("approved on the command line")
    with node.client("hub") as hub:
        hub.post(f"{API}/studies", json=submit_body(pkg, key))
    listed = subprocess.run([MERCIA, "node", "list", "--config", str(node.config_path)], capture_output=True,
                            text=True, check=True)
    assert pkg.content_hash[:16] in listed.stdout
    subprocess.run([MERCIA, "node", "approve", pkg.content_hash[:20], "--config", str(node.config_path)],
                   check=True, capture_output=True)
    assert node.wait_status(pkg.content_hash, {"finished", "failed"})["status"] == "finished"
    bad = subprocess.run([MERCIA, "node", "approve", "ffff", "--config", str(node.config_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "match" in bad.stderr


def test_audit_log_records_the_work_and_verifies(node: NodeServer) -> None:
    from mercia.federation.audit import verify_log

    log = node.state_dir / "audit.jsonl"
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    for e in ("node.started", "study.received", "study.approved", "run.started", "release", "results.sent",
              "request"):
        assert e in events, e
    assert verify_log(log).ok
