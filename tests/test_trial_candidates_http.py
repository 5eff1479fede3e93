"""A trial's candidates over real HTTP on 127.0.0.1 (issue 15, item 5): only the node's clinician, only
from the site's own networks, never through a proxy or the hub; every look-up audited.

The site's persons get person source values of their own ("MRN-<id>"), so any response holding one is
found by a pattern: the clinician's answer must hold them (the pattern works), and no other answer of
any route of the node's or the hub's API, to any role, may.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from federation_support import MERCIA, PROJECT, Federation, NodeServer, make_site, small_study
from mercia.cdm import Cdm
from mercia.trials.candidates import find_candidates
from mercia.trials.source import load_trial

API = "/api/v1"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cohorts" / "type2_diabetes_metformin.yaml"
PSV = re.compile(r"MRN-\d+")
CANDIDATE_ROUTES = {("GET", f"{API}/trials/{{trial}}/candidates"), ("POST", f"{API}/trials/match")}


def site_with_source_values(path: Path, seed: int) -> Path:
    make_site(path, persons=1500, seed=seed)
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE person SET person_source_value = 'MRN-' || CAST(person_id AS VARCHAR)")
    return path


def trials_dir(root: Path) -> Path:
    d = root / "trials"
    d.mkdir(exist_ok=True)
    shutil.copyfile(EXAMPLE, d / "t2d.yaml")
    return d


def clinician_token(node: NodeServer) -> str:
    """Issued as a site does it: `mercia node token NAME --config node.yaml --role clinician`."""
    out = subprocess.run([MERCIA, "node", "token", "dr-jones", "--config", str(node.config_path), "--role",
                          "clinician"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return site_with_source_values(tmp_path_factory.mktemp("trial_site") / "alpha.duckdb", seed=31)


@pytest.fixture(scope="module")
def expected(site: Path) -> dict[str, Any]:
    """The candidates computed locally by the library, before any server: what the clinician should get."""
    with Cdm.open(site, read_only=True) as cdm:
        return find_candidates(cdm, load_trial(EXAMPLE)).to_dict()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, site: Path, expected: dict[str, Any]) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("trial_http")
    federation = Federation(root, {"alpha": site}, node_config={"trials": str(trials_dir(root))})
    node = federation.nodes["alpha"]
    node.tokens["clinician"] = clinician_token(node)
    with federation:
        yield federation


def call(node: NodeServer, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{node.url}{path}", headers={"Authorization": f"Bearer {token}", **kw.pop("headers", {})},
                         timeout=120, **kw)


def audit(node: NodeServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (node.state_dir / "audit.jsonl").read_text().splitlines()]


def test_the_clinician_gets_the_candidates_and_each_look_up_is_audited(fed: Federation, expected: dict[str, Any]
                                                                       ) -> None:
    node = fed.nodes["alpha"]
    token = node.tokens["clinician"]
    r = call(node, "GET", f"{API}/trials/t2d/candidates", token)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["site"] == "alpha" and answer["persons"] == len(expected["candidates"]) > 0
    assert answer["candidates"] == expected["candidates"]
    assert PSV.search(r.text)  # the pattern the walk below looks for is there in the clinician's answer
    listed = expected["candidates"][0]
    r = call(node, "POST", f"{API}/trials/match", token, json={"person_source_value": listed["person_source_value"]})
    assert r.status_code == 200, r.text
    assert r.json()["matches"] == [{"trial": "t2d", "trial_name": "t2d", **listed,
                                    "not_applied": []}]
    r = call(node, "POST", f"{API}/trials/match", token, json={"person_source_value": "MRN-no-such-person"})
    assert r.status_code == 404 and "no person with this person_source_value" in r.json()["detail"]
    r = call(node, "GET", f"{API}/trials/nope/candidates", token)
    assert r.status_code == 404 and "no trial named 'nope'" in r.json()["detail"]

    records = audit(node)
    looked = [a for a in records if a["event"] in ("trial.candidates", "trial.match")]
    assert [(a["actor"], a["event"], a["details"]) for a in looked[-3:]] == [
        ("dr-jones", "trial.candidates", {"trial": "t2d", "persons": len(expected["candidates"]), "via": "http"}),
        ("dr-jones", "trial.match", {"trials_searched": 1, "trials_listed": 1, "person_found": True, "via": "http"}),
        ("dr-jones", "trial.match", {"trials_searched": 1, "trials_listed": None, "person_found": False,
                                     "via": "http"})]
    assert not PSV.search((node.state_dir / "audit.jsonl").read_text())  # who and how many, never whom


@pytest.mark.parametrize("role", ["hub", "custodian", "researcher", "admin"])
def test_every_other_role_is_refused(fed: Federation, role: str) -> None:
    node = fed.nodes["alpha"]
    for method, path, body in (("GET", f"{API}/trials/t2d/candidates", None),
                               ("POST", f"{API}/trials/match", {"person_source_value": "MRN-1"})):
        r = call(node, method, path, node.tokens[role], json=body)
        assert r.status_code == 403 and "needs role 'clinician'" in r.json()["detail"], (role, path, r.text)
        assert not PSV.search(r.text)


def test_a_proxied_request_is_refused(fed: Federation) -> None:
    node = fed.nodes["alpha"]
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP", "Via"):
        value = "for=127.0.0.1" if header == "Forwarded" else "127.0.0.1"
        r = call(node, "GET", f"{API}/trials/t2d/candidates", node.tokens["clinician"], headers={header: value})
        assert r.status_code == 403 and "not through a proxy" in r.json()["detail"], (header, r.text)
        assert not PSV.search(r.text)
    assert audit(node)[-2]["details"] == {"reason": "proxied request"}


def test_a_request_from_outside_the_allowed_networks_is_refused(tmp_path: Path, fed: Federation) -> None:
    site = site_with_source_values(tmp_path / "gamma.duckdb", seed=31)
    with NodeServer(tmp_path / "gamma", cdm=site, hub_key=fed.hub.key, site="gamma",
                    trials=str(trials_dir(tmp_path)), clinician_networks=["10.0.0.0/8", "fd00::/8"]) as node:
        token = clinician_token(node)
        for method, path, body in (("GET", f"{API}/trials/t2d/candidates", None),
                                   ("POST", f"{API}/trials/match", {"person_source_value": "MRN-1"})):
            r = call(node, method, path, token, json=body)
            assert r.status_code == 403 and "site's own network" in r.json()["detail"], r.text
            assert not PSV.search(r.text)
        refused = [a for a in audit(node) if a["event"] == "trial.refused"]
        assert [(a["actor"], a["details"]) for a in refused] == [
            ("dr-jones", {"reason": "outside clinician_networks"})] * 2


def test_the_hub_issues_no_clinician(fed: Federation) -> None:
    with fed.admin() as admin, pytest.raises(Exception, match=r"422|clinician"):
        admin.add_user("dr-who", "clinician", [PROJECT])
    out = subprocess.run([MERCIA, "hub", "user-add", "dr-who", "--config", str(fed.hub.config_path), "--role",
                          "clinician"], capture_output=True, text=True)
    assert out.returncode == 1 and "no route here accepts the role 'clinician'" in out.stderr


# ---- the walk: every route of both APIs, every role ----------------------------------------------------
def _example(schema: dict[str, Any], components: dict[str, Any], values: dict[str, Any], name: str = "") -> Any:
    """A value the schema accepts where it can: required fields only, names from `values`."""
    if "$ref" in schema:
        return _example(components[schema["$ref"].rsplit("/", 1)[-1]], components, values, name)
    if name in values:
        return values[name]
    if "anyOf" in schema:
        return _example(next(s for s in schema["anyOf"] if s.get("type") != "null"), components, values, name)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: _example(p, components, values, k) for k, p in schema.get("properties", {}).items()
                if k in schema.get("required", [])}
    if kind == "array":
        return [_example(schema.get("items", {}), components, values)] * max(1, schema.get("minItems", 1))
    return {"integer": 1, "number": 0.5, "boolean": True}.get(kind or "", "x")


def _operations(base: str, verify: Any = True) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    doc = httpx.get(f"{base}/openapi.json", verify=verify, timeout=30).json()
    ops = [(m.upper(), p, op, doc.get("components", {}).get("schemas", {}))
           for p, item in doc["paths"].items() for m, op in item.items()]
    return sorted(ops, key=lambda o: (o[0] != "GET", o[1].endswith("/close"), o[1]))  # reads first, close last


def test_no_route_gives_candidates_to_anyone_but_the_clinician(fed: Federation, expected: dict[str, Any]) -> None:
    node, hub = fed.nodes["alpha"], fed.hub
    trial_cohort = load_trial(EXAMPLE).cohort.to_dict()
    pkg = small_study("the walk study")
    with fed.client() as alice:
        h = alice.submit(pkg, project=PROJECT)["hash"]
    fed.approve_all(h)
    node.wait_status(h, {"finished"}, timeout=300)
    psv = expected["candidates"][0]["person_source_value"]
    values = {"content_hash": h, "hash": h, "trial": "t2d", "project": PROJECT, "person_source_value": psv,
              "definition": trial_cohort, "concept_id": 201826, "analysis": "cox_adjusted", "model": "cox",
              "package": pkg.canonical(), "sites": ["alpha"], "role": "researcher", "name": "walker",
              "url": node.url, "token": node.tokens["hub"], "projects": [PROJECT]}
    hub_tokens = {"researcher": fed.researcher_token, "admin": hub.admin_token,
                  **{f"node {r}": t for r, t in node.tokens.items()}}
    checked: set[tuple[str, str, str, str]] = set()
    served: set[tuple[str, str]] = set()
    statuses: dict[tuple[str, str, str, str], int] = {}
    for service, base, tokens in (("node", node.url, node.tokens), ("hub", hub.url, hub_tokens)):
        for method, path, op, components in _operations(base):
            url_path = path
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    url_path = url_path.replace("{" + p["name"] + "}", str(values.get(p["name"], "x")))
            query = {p["name"]: values.get(p["name"], _example(p.get("schema", {}), components, values))
                     for p in op.get("parameters", []) if p["in"] == "query" and p.get("required")}
            body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            body = _example(body_schema, components, values) if body_schema else None
            for who, token in tokens.items():
                r = call(node if service == "node" else hub, method, url_path, token, json=body, params=query)
                checked.add((service, method, path, who))
                statuses[(service, method, path, who)] = r.status_code
                if service == "node" and (method, path) in CANDIDATE_ROUTES and who == "clinician":
                    assert r.status_code == 200 and PSV.search(r.text), (path, r.status_code, r.text[:300])
                    served.add((method, path))
                    continue
                found = PSV.search(r.text)
                assert not found, (service, method, path, who, r.status_code, found and found.group())
    assert served == CANDIDATE_ROUTES  # both row-level routes were reached, and only by the clinician
    node_paths = {(m, p) for s, m, p, _ in checked if s == "node"}
    assert node_paths >= CANDIDATE_ROUTES and len(node_paths) >= 10
    # The walk reached the routes' real answers, not only refusals: released results, counts, lists.
    for key in (("node", "POST", f"{API}/feasibility", "researcher"), ("node", "GET", f"{API}/studies", "hub"),
                ("node", "GET", f"{API}/studies/{{content_hash}}/results", "hub"),
                ("hub", "GET", f"{API}/studies/{{content_hash}}/results", "researcher"),
                ("hub", "GET", f"{API}/studies/{{content_hash}}/report", "researcher"),
                ("hub", "POST", f"{API}/feasibility", "researcher"), ("hub", "GET", f"{API}/nodes", "admin")):
        assert statuses[key] == 200, (key, statuses[key])
    hub_paths = {p for s, _, p, _ in checked if s == "hub"}
    assert not any("trial" in p and "candidate" in p for p in hub_paths)  # the hub has no such route
