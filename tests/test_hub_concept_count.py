"""A researcher's concept counts through the hub (issue 13, item 7), over real HTTP on 127.0.0.1.

The hub asks each node of the project `POST /concepts/count` for the researcher it authenticated, with
its signed attestation (federation/attestation.py), as it does feasibility counts: each node charges
that researcher's privacy budget (not the hub's, not a name from the request). Checked here: each
site's count is the node's own released answer to the question; a researcher outside the project, or
asking at a site outside it, is refused; the eleventh distinct question (epsilon 0.1 each, budget 1.0)
is refused at every site while another researcher is still answered; and the command line
(`mercia client concept-count`, `mercia concept show --hub`) prints those released counts.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from federation_support import MERCIA, PROJECT, Federation, make_site

pytestmark = pytest.mark.slow  # a hub and two nodes as processes

API = "/api/v1"
T2D = 201826  # type 2 diabetes mellitus: recorded at both synthetic sites


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    import duckdb

    root = tmp_path_factory.mktemp("hubconcepts")
    sites = {"east": make_site(root / "east.duckdb", persons=1500, seed=31),
             "west": make_site(root / "west.duckdb", persons=1500, seed=32, first_person_id=50_001)}
    con = duckdb.connect(str(sites["east"]), read_only=True)
    try:  # concepts of the bundled vocabulary (the same at every synthetic site), for distinct questions
        concepts = [r[0] for r in con.execute(
            "SELECT concept_id FROM concept WHERE standard_concept = 'S' AND domain_id = 'Condition' "
            "AND concept_id <> ? ORDER BY concept_id LIMIT 12", [T2D]).fetchall()]
    finally:
        con.close()
    assert len(concepts) == 12
    federation = Federation(root, sites)
    federation.concepts = concepts  # type: ignore[attr-defined]
    federation.vocabulary = make_site(root / "vocabulary.duckdb", persons=1500, seed=31)  # type: ignore[attr-defined]
    with federation:
        yield federation


def _researcher(fed: Federation, name: str, projects: list[str] | None = None) -> Any:
    with fed.admin() as admin:
        token = admin.add_user(name, "researcher", projects or [PROJECT])["token"]
    return fed.hub.client(token), token


def _node_answer(fed: Federation, site: str, concept_id: int, descendants: bool) -> dict[str, Any]:
    """The node's own answer to the question, asked directly with a researcher token it issued."""
    node = fed.nodes[site]
    with node.client("researcher") as c:
        r = c.post(f"{API}/concepts/count", json={"concept_id": concept_id, "descendants": descendants,
                                                  "project": PROJECT})
    assert r.status_code == 200, r.text
    return r.json()


def test_each_sites_count_is_the_nodes_released_answer(fed: Federation) -> None:
    client, _ = _researcher(fed, "alice2")
    with client as c:
        for descendants in (True, False):
            answer = c.concept_count(T2D, project=PROJECT, descendants=descendants)
            assert answer["concept_id"] == T2D and answer["descendants"] is descendants
            assert sorted(a["site"] for a in answer["sites"]) == ["east", "west"]
            for a in answer["sites"]:
                assert a["error"] is None, a
                assert a["privacy"]["charged"] and a["privacy"]["spent"] == pytest.approx(
                    0.2 if not descendants else 0.1)
                node = _node_answer(fed, a["site"], T2D, descendants)
                assert a["persons"] == node["persons"]  # one released answer per question, whoever asks
                assert a["persons"] is not None and a["persons"] % 5 == 0  # opensafely: rounded to 5
    # Each node charged alice2 (as the hub's researcher), not the hub as one, and audited it.
    for node in fed.nodes.values():
        lines = [json.loads(x) for x in (node.state_dir / "audit.jsonl").read_text().splitlines()]
        released = [x for x in lines if x.get("event") == "concept_count.released"
                    and x["details"].get("budget_of") == "hub/alice2"]
        assert len(released) == 2, [x for x in lines if x.get("event") == "concept_count.released"]


def test_records_through_the_hub_are_the_nodes_released_records_with_the_cap(fed: Federation) -> None:
    """With `records`, each site's answer carries the node's released records and its cap; the hub asks
    with an attestation of that question, and each node charges the researcher for both questions."""
    client, token = _researcher(fed, "rita")
    with client as c:
        answer = c.concept_count(T2D, project=PROJECT, records=True)
        assert answer["records"] is True
        for a in answer["sites"]:
            assert a["error"] is None, a
            assert a["records_per_person_counted"] == 10
            assert a["privacy"]["spent"] == pytest.approx(0.2) and a["privacy"]["epsilon_charged"] == pytest.approx(0.2)
            node = fed.nodes[a["site"]]
            with node.client("researcher") as n:
                r = n.post(f"{API}/concepts/count", json={"concept_id": T2D, "project": PROJECT, "records": True})
            assert r.status_code == 200, r.text
            assert (a["records"], a["persons"]) == (r.json()["records"], r.json()["persons"])
            assert a["records"] is not None and a["records"] % 5 == 0  # opensafely rounding, as persons
        r = c._http.post(f"{API}/concepts/count", json={"concept_id": T2D, "project": PROJECT, "records": [1]})
        assert r.status_code == 422 and "records" in r.text, r.text
    hub_events = [json.loads(x) for x in (fed.hub.state_dir / "audit.jsonl").read_text().splitlines()]
    asked = [e for e in hub_events if e["event"] == "concept_count.asked" and e["actor"] == "rita"]
    assert sorted(asked[0]["details"]["record_counts"]) == sorted([a["site"], a["records"]] for a in answer["sites"])
    # the command line: a records column, and the cap in the caption (a repeat: the same numbers, free)
    r = _run(fed, "client", "concept-count", str(T2D), "--project", PROJECT, "--records", token=token)
    assert r.returncode == 0, r.stderr
    rows = {line.split("│")[1].strip(): [x.strip() for x in line.split("│")[2:4]] for line in r.stdout.splitlines()
            if line.count("│") >= 5 and line.split("│")[1].strip() in ("east", "west")}
    assert rows == {a["site"]: [f"{a['persons']:,}", f"{a['records']:,}"] for a in answer["sites"]}, r.stdout
    assert "records counted up to 10 per person" in " ".join(r.stdout.split())


def test_a_researcher_outside_the_project_is_refused(fed: Federation) -> None:
    client, _ = _researcher(fed, "olga", ["elsewhere"])
    with client as c:
        r = c._http.post(f"{API}/concepts/count", json={"concept_id": T2D, "project": PROJECT})
        assert r.status_code == 403 and "not a member of project" in r.json()["detail"], r.text
    client, _ = _researcher(fed, "pat")
    with client as c:
        r = c._http.post(f"{API}/concepts/count", json={"concept_id": T2D, "project": PROJECT, "sites": ["north"]})
        assert r.status_code == 403 and "not in project" in r.json()["detail"], r.text
        # The hub never forwards a name from the request: the researcher is the one it authenticated.
        r = c._http.post(f"{API}/concepts/count", json={"concept_id": T2D, "project": PROJECT, "requested_by": "x"})
        assert r.status_code == 422, r.text
        r = c._http.post(f"{API}/concepts/count", json={"concept_id": -1, "project": PROJECT})
        assert r.status_code == 422 and "concept_id" in r.text
    r = httpx.post(f"{fed.hub.url}{API}/concepts/count", json={"concept_id": T2D, "project": PROJECT})
    assert r.status_code == 401


def test_the_budget_is_charged_per_researcher_per_site(fed: Federation) -> None:
    """Ten distinct questions spend a researcher's budget at each site (epsilon 0.1 of 1.0 each); the
    eleventh is refused at every site, a repeat is still answered at no cost, and another researcher's
    budget is their own."""
    concepts = fed.concepts  # type: ignore[attr-defined]
    client, _ = _researcher(fed, "bob")
    with client as c:
        first = c.concept_count(concepts[0], project=PROJECT)
        for k in range(1, 10):
            answer = c.concept_count(concepts[k], project=PROJECT)
            for a in answer["sites"]:
                assert a["error"] is None and a["privacy"]["charged"], a
                assert a["privacy"]["spent"] == pytest.approx(0.1 * (k + 1))
        eleventh = c.concept_count(concepts[10], project=PROJECT)
        for a in eleventh["sites"]:
            assert a["persons"] is None and "privacy budget" in a["error"] and "hub/bob" in a["error"], a
        again = c.concept_count(concepts[0], project=PROJECT)
        assert [a["persons"] for a in again["sites"]] == [a["persons"] for a in first["sites"]]
        assert not any(a["privacy"]["charged"] for a in again["sites"])
        # Feasibility counts through the hub draw on the same budget.
        d = {"name": "x", "concepts": {"t2d": {"include": [T2D]}}, "entry": [{"condition": "t2d"}]}
        for a in c.feasibility(d, project=PROJECT)["sites"]:
            assert "privacy budget" in a["error"], a
    client, _ = _researcher(fed, "carol")
    with client as c:
        for a in c.concept_count(concepts[10], project=PROJECT)["sites"]:
            assert a["error"] is None and a["privacy"]["spent"] == pytest.approx(0.1), a


def _run(fed: Federation, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MERCIA_HUB": fed.hub.url, "MERCIA_TOKEN": token, "COLUMNS": "200"}
    return subprocess.run([MERCIA, *args], capture_output=True, text=True, env=env, timeout=300)


def test_the_command_line_prints_each_sites_released_count(fed: Federation) -> None:
    client, token = _researcher(fed, "dana")
    with client as c:
        answer = {a["site"]: a["persons"] for a in c.concept_count(T2D, project=PROJECT)["sites"]}
    r = _run(fed, "client", "concept-count", str(T2D), "--project", PROJECT, token=token)
    assert r.returncode == 0, r.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in r.stdout.splitlines()
            if line.count("│") >= 4 and line.split("│")[1].strip() in answer}
    assert rows == {site: f"{n:,}" for site, n in answer.items()}, r.stdout
    assert f"Persons with concept {T2D} or a descendant, at each site" in " ".join(r.stdout.split())
    # The same counts in `mercia concept show --hub` (the vocabulary read from a local CDM), in place of
    # the local CDM's exact record counts.
    show = [MERCIA, "concept", "show", str(T2D), "--cdm", str(fed.vocabulary), "--hub", fed.hub.url,  # type: ignore[attr-defined]
            "--project", PROJECT, "--descendants", "2"]
    r = subprocess.run(show, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "MERCIA_TOKEN": token, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "Type 2 diabetes mellitus" in r.stdout and "Records in this CDM" not in r.stdout
    for site, n in answer.items():
        assert any(site in line and f"{n:,}" in line for line in r.stdout.splitlines()), r.stdout
    r = subprocess.run([*show, "--format", "json"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "MERCIA_TOKEN": token})
    data = json.loads(r.stdout)
    assert "record_counts" not in data
    assert {a["site"]: a["persons"] for a in data["released_counts"]["sites"]} == answer
    # --exact asks the other question (and --hub needs --project, in one line).
    r = subprocess.run([*show[:-4], "--exact", "--project", PROJECT, "--format", "json"], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "MERCIA_TOKEN": token})
    assert json.loads(r.stdout)["released_counts"]["descendants"] is False
    r = subprocess.run(show[:8], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "MERCIA_TOKEN": token})
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: --hub needs --project (the project whose sites to ask) and --token (or MERCIA_TOKEN)"], r.stderr
