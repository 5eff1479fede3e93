"""Scope and replay, tried as an attacker would over real HTTP (issue 12, item 6 and the CLI part of 7).

A federation of a hub and two nodes (alpha, beta) on 127.0.0.1. Tokens scoped to another project
("other") try every route on a study of project PROJECT; a package the hub signed for one node, one
project or one requester is replayed at another node, under another project, for another requester
and after its expiry; revoked tokens are tried again; the commands that issue tokens are given roles
that mean nothing where they are used. Each attack succeeded before tokens' projects were checked on
every route and the hub's signature covered more than the content hash.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from federation_support import MERCIA, PROJECT, Federation, NodeServer, make_site, small_study, submit_body
from mercia.federation.auth import TokenStore, read_signature

API = "/api/v1"
OTHER = "other"
NODE_ROLES = ("hub", "custodian", "researcher", "admin")
UNSEEN = "no study with hash"  # the 404 of a hash that does not exist, word for word


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("scope")
    sites = {"alpha": make_site(root / "alpha.duckdb", persons=1500, seed=11),
             "beta": make_site(root / "beta.duckdb", persons=1500, seed=12, first_person_id=50_001)}
    federation = Federation(root, sites)
    for node in federation.nodes.values():
        store = TokenStore(node.folder / "tokens.json")
        for role in NODE_ROLES:  # one token of every role in each project
            for project in (PROJECT, OTHER):
                node.tokens[f"{role}@{project}"] = store.issue(f"{role}-{project}", role, [project])
    with federation:
        with federation.admin() as admin:
            admin.add_project(OTHER, ["beta"])
            federation.hub_tokens = {  # type: ignore[attr-defined]
                f"{role}@{project}": admin.add_user(f"{role}-{project}", role, [project])["token"]
                for role in ("researcher", "admin") for project in (PROJECT, OTHER)}
        yield federation


def call(node: NodeServer, method: str, path: str, who: str, **kw: Any) -> httpx.Response:
    with httpx.Client(base_url=node.url, timeout=60, verify=node.verify,
                      headers={"Authorization": f"Bearer {node.tokens[who]}"}) as c:
        return c.request(method, path, **kw)


def pending_study(fed: Federation, name: str, node: str = "alpha") -> str:
    """A study of PROJECT waiting for approval at `node`, sent there by the hub's own key."""
    pkg = small_study(name)
    n = fed.nodes[node]
    r = call(n, "POST", f"{API}/studies", "hub", json=submit_body(pkg, fed.hub.key, sites=[n.site]))
    assert r.status_code == 202, r.text
    return pkg.content_hash


# ---- cross-project: a custodian, the hub's token, an admin of another project ------------------
def test_a_custodian_of_another_project_cannot_approve_or_reject(fed: Federation) -> None:
    node = fed.nodes["alpha"]
    h = pending_study(fed, "cross-project decision")
    for action in ("approve", "reject"):
        r = call(node, "POST", f"{API}/studies/{h}/{action}", f"custodian@{OTHER}", json={"reason": "mine now"})
        assert r.status_code == 404 and UNSEEN in r.json()["detail"], (action, r.status_code, r.text)
    rec = call(node, "GET", f"{API}/studies/{h}", "hub").json()
    assert rec["status"] == "pending_approval" and rec["decided_by"] is None
    # The project's own custodian still decides.
    r = call(node, "POST", f"{API}/studies/{h}/reject", f"custodian@{PROJECT}", json={"reason": "not now"})
    assert r.status_code == 200 and r.json()["status"] == "rejected"


def test_tokens_of_another_project_neither_list_nor_read_a_study(fed: Federation) -> None:
    node = fed.nodes["alpha"]
    h = pending_study(fed, "cross-project reading")
    missing = "f" * 64
    for role in ("hub", "custodian", "admin"):
        listed = call(node, "GET", f"{API}/studies", f"{role}@{OTHER}")
        assert listed.status_code == 200 and h not in listed.text, role
        assert all(s["project"] == OTHER for s in listed.json()["studies"])
        mine = call(node, "GET", f"{API}/studies", f"{role}@{PROJECT}")
        assert h in [s["hash"] for s in mine.json()["studies"]], role
        # Another project's study answers exactly as a study that does not exist.
        r = call(node, "GET", f"{API}/studies/{h}", f"{role}@{OTHER}")
        absent = call(node, "GET", f"{API}/studies/{missing}", f"{role}@{OTHER}")
        assert r.status_code == absent.status_code == 404, (role, r.status_code)
        assert r.json()["detail"].replace(h, missing) == absent.json()["detail"]
    r = call(node, "GET", f"{API}/studies/{h}/results", f"hub@{OTHER}")
    assert r.status_code == 404 and UNSEEN in r.json()["detail"]
    assert call(node, "GET", f"{API}/studies/{h}/results", f"hub@{PROJECT}").status_code == 409  # not run yet


# ---- replay: another node, another project, another requester, too late -----------------------
def stored_signature(node: NodeServer, content_hash: str) -> str:
    con = sqlite3.connect(node.state_dir / "node.sqlite")
    try:
        return con.execute("SELECT signature FROM studies WHERE hash = ?", (content_hash,)).fetchone()[0]
    finally:
        con.close()


def test_the_hubs_signature_names_project_sites_requester_and_expiry(fed: Federation) -> None:
    pkg = small_study("what the hub signs")
    with fed.client() as alice:
        state = alice.submit(pkg, project=PROJECT, sites=["alpha"])
    alpha = fed.nodes["alpha"]
    alpha.wait_status(state["hash"], {"pending_approval"})
    claims = read_signature(fed.hub.key.public.read_text(), stored_signature(alpha, state["hash"]))
    assert (claims.hash, claims.project, claims.sites, claims.requested_by) == (
        pkg.content_hash, PROJECT, ("alpha",), "alice")
    lifetime = datetime.fromisoformat(claims.expires_at) - datetime.fromisoformat(claims.issued_at)
    assert lifetime == timedelta(days=7)  # hub.yaml's signature_valid_days, by default


def test_a_package_signed_for_one_node_is_refused_at_another(fed: Federation) -> None:
    """The hub sent a study to alpha only; whoever holds what alpha received (alpha's operator, or
    anyone on the path) replays it at beta with a hub token beta issued."""
    pkg = small_study("replayed at another node")
    with fed.client() as alice:
        alice.submit(pkg, project=PROJECT, sites=["alpha"])
    alpha, beta = fed.nodes["alpha"], fed.nodes["beta"]
    h = pkg.content_hash
    alpha.wait_status(h, {"pending_approval"})
    replay = {"package": pkg.canonical(), "hash": h, "signature": stored_signature(alpha, h),
              "project": PROJECT, "requested_by": "alice"}
    r = call(beta, "POST", f"{API}/studies", "hub", json=replay)
    assert r.status_code == 403 and "signed for sites ['alpha'], not this site ('beta')" in r.json()["detail"]
    assert call(beta, "GET", f"{API}/studies/{h}", "hub").status_code == 404  # nothing queued at beta
    refused = [json.loads(line) for line in (beta.state_dir / "audit.jsonl").read_text().splitlines()]
    assert any(e["event"] == "study.refused" and e["details"].get("reason") == "another site" for e in refused)


def test_a_package_signed_for_one_project_is_refused_under_another(fed: Federation) -> None:
    beta = fed.nodes["beta"]
    pkg = small_study("replayed under another project")
    body = submit_body(pkg, fed.hub.key, sites=["beta"])  # signed for PROJECT
    for who in ("hub", f"hub@{OTHER}"):
        r = call(beta, "POST", f"{API}/studies", who, json={**body, "project": OTHER})
        assert r.status_code == 403 and "signed for project 'proj', not 'other'" in r.json()["detail"], r.text
    assert call(beta, "GET", f"{API}/studies/{pkg.content_hash}", "hub").status_code == 404
    # ... and for another requester (the node's per-researcher limits and audit trust that name).
    r = call(beta, "POST", f"{API}/studies", "hub", json={**body, "requested_by": "mallory"})
    assert r.status_code == 403 and "another requester" in r.json()["detail"]


def test_an_expired_signature_is_refused(fed: Federation) -> None:
    beta = fed.nodes["beta"]
    pkg = small_study("signed long ago")
    old = datetime.now(UTC) - timedelta(days=8)
    r = call(beta, "POST", f"{API}/studies", "hub", json=submit_body(pkg, fed.hub.key, sites=["beta"], now=old))
    assert r.status_code == 403 and "expired at" in r.json()["detail"], r.text
    assert call(beta, "GET", f"{API}/studies/{pkg.content_hash}", "hub").status_code == 404
    # The same package freshly signed is accepted: it was the date, not the package.
    r = call(beta, "POST", f"{API}/studies", "hub", json=submit_body(pkg, fed.hub.key, sites=["beta"]))
    assert r.status_code == 202
    # Even a package the node already holds is not confirmed to a stale signature.
    r = call(beta, "POST", f"{API}/studies", "hub", json=submit_body(pkg, fed.hub.key, sites=["beta"], now=old))
    assert r.status_code == 403


# ---- revocation ---------------------------------------------------------------------------------
def test_revoked_tokens_are_refused_at_once(fed: Federation) -> None:
    node = fed.nodes["alpha"]
    issued = subprocess.run([MERCIA, "node", "token", "carol", "--role", "custodian", "--project", PROJECT,
                             "--config", str(node.config_path)], capture_output=True, text=True)
    assert issued.returncode == 0, issued.stderr
    node.tokens["carol"] = issued.stdout.strip()
    assert call(node, "GET", f"{API}/studies", "carol").status_code == 200
    r = subprocess.run([MERCIA, "node", "token-revoke", "carol", "--config", str(node.config_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "revoked" in r.stdout, r.stderr
    r = call(node, "GET", f"{API}/studies", "carol")
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    again = subprocess.run([MERCIA, "node", "token-revoke", "carol", "--config", str(node.config_path)],
                           capture_output=True, text=True)
    assert again.returncode == 1 and "no token is issued to 'carol'" in again.stderr

    hub_config = str(fed.hub.config_path)
    issued = subprocess.run([MERCIA, "hub", "user-add", "rita", "--project", PROJECT, "--config", hub_config],
                            capture_output=True, text=True)
    assert issued.returncode == 0, issued.stderr
    rita = {"Authorization": f"Bearer {issued.stdout.strip()}"}
    assert httpx.get(f"{fed.hub.url}{API}/studies", headers=rita).status_code == 200
    r = subprocess.run([MERCIA, "hub", "user-revoke", "rita", "--config", hub_config], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert httpx.get(f"{fed.hub.url}{API}/studies", headers=rita).status_code == 401


def test_roles_that_mean_nothing_are_refused_when_issuing(fed: Federation) -> None:
    before = (fed.hub.folder / "tokens.json").read_text()
    for role in ("node", "hub", "custodian", "superuser"):
        r = subprocess.run([MERCIA, "hub", "user-add", "nora", "--role", role, "--project", PROJECT,
                            "--config", str(fed.hub.config_path)], capture_output=True, text=True)
        assert r.returncode == 1 and "use one of researcher, admin" in r.stderr, (role, r.stderr)
        assert not r.stdout
    assert json.loads((fed.hub.folder / "tokens.json").read_text()) == json.loads(before)
    node = fed.nodes["beta"]
    r = subprocess.run([MERCIA, "node", "token", "nora", "--role", "node", "--config", str(node.config_path)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "use one of hub, custodian, researcher, admin" in r.stderr
    # The hub's API gives only the hub's roles too.
    r = httpx.post(f"{fed.hub.url}{API}/users", headers={"Authorization": f"Bearer {fed.hub.admin_token}"},
                   json={"name": "nora", "role": "custodian", "projects": [PROJECT]})
    assert r.status_code == 422
    assert json.loads((fed.hub.folder / "tokens.json").read_text()) == json.loads(before)


def test_a_broken_token_file_names_commands_that_exist(tmp_path) -> None:
    from mercia.errors import ConfigError

    path = tmp_path / "tokens.json"
    path.write_text("{}")
    with pytest.raises(ConfigError) as e:
        TokenStore(path).principals()
    message = str(e.value)
    assert "mercia token issue" not in message
    for command in ("mercia node token", "mercia hub user-add"):
        assert command in message
        name = command.split()[1:]
        assert subprocess.run([MERCIA, *name, "--help"], capture_output=True).returncode == 0, command


# ---- the matrix: every node route x role x project ---------------------------------------------
def node_routes(node: NodeServer) -> set[tuple[str, str]]:
    schema = httpx.get(node.url + "/openapi.json", verify=node.verify).json()
    return {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops if p != "/health"}


def test_every_node_route_checks_role_and_project(fed: Federation) -> None:
    node = fed.nodes["alpha"]
    h = pending_study(fed, "the matrix study")
    pkg = small_study("the matrix study")
    fresh = small_study("the matrix submission")
    definition = json.loads(json.dumps(pkg.canonical()["cohorts"]["sglt2"]["definition"]))
    bodies: dict[tuple[str, str], Any] = {
        ("POST", f"{API}/studies"): submit_body(fresh, fed.hub.key, sites=["alpha"]),
        ("POST", f"{API}/studies/{{content_hash}}/approve"): {"reason": "matrix"},
        ("POST", f"{API}/studies/{{content_hash}}/reject"): {"reason": "matrix"},
        ("POST", f"{API}/studies/{{content_hash}}/rounds"): {"analysis": "cox_adjusted", "model": "cox",
                                                            "beta": [0.0]},
        ("POST", f"{API}/feasibility"): {"definition": definition, "project": PROJECT},
        ("POST", f"{API}/concepts/count"): {"concept_id": 201826, "project": PROJECT},
        ("POST", f"{API}/trials/feasibility"): {"definition": definition, "project": PROJECT},

        ("POST", f"{API}/trials/match"): {"person_source_value": "1"},
        ("POST", f"{API}/studies/{{content_hash}}/release"): {"run": 1},
        ("POST", f"{API}/studies/{{content_hash}}/withhold"): {"run": 1, "reason": "matrix"},
    }
    params = {("GET", f"{API}/quality"): {"project": PROJECT}}  # a query string, not a body
    allowed = {  # the roles each route serves (in the caller's projects)
        ("POST", f"{API}/studies"): {"hub"},
        ("GET", f"{API}/studies"): {"hub", "custodian", "admin"},
        ("GET", f"{API}/studies/{{content_hash}}"): {"hub", "custodian", "admin"},
        ("POST", f"{API}/studies/{{content_hash}}/approve"): {"custodian"},
        ("POST", f"{API}/studies/{{content_hash}}/reject"): {"custodian"},
        ("GET", f"{API}/studies/{{content_hash}}/results"): {"hub"},
        ("POST", f"{API}/studies/{{content_hash}}/rounds"): {"hub"},
        ("POST", f"{API}/feasibility"): {"hub", "researcher"},
        ("POST", f"{API}/concepts/count"): {"hub", "researcher"},
        ("POST", f"{API}/trials/feasibility"): {"hub", "researcher"},
        # the released data-quality summary (hub and researcher as feasibility_roles lists them), and
        # starting a run of the checks: site-wide, in no project
        ("GET", f"{API}/quality"): {"hub", "researcher", "custodian", "admin"},
        ("POST", f"{API}/quality/run"): {"custodian", "admin"},

        # a trial's candidates: the clinician only (test_trial_candidates_http.py), none of the roles here
        ("GET", f"{API}/trials/{{trial}}/candidates"): {"clinician"},
        ("POST", f"{API}/trials/match"): {"clinician"},
        # the custodian's output check (node.yaml hold_results): held runs read by the site's custodian
        # and admin, released or withheld by the custodian only (test_node_output_check.py holds runs)
        ("GET", f"{API}/held"): {"custodian", "admin"},
        ("GET", f"{API}/studies/{{content_hash}}/held"): {"custodian", "admin"},
        ("POST", f"{API}/studies/{{content_hash}}/release"): {"custodian"},
        ("POST", f"{API}/studies/{{content_hash}}/withhold"): {"custodian"},
    }
    assert node_routes(node) == set(allowed), "a route was added: say here who may call it"
    decisions = {"approve", "reject"}
    for (method, template), roles in sorted(allowed.items()):
        path = template.replace("{content_hash}", h).replace("{trial}", "t2d")
        for role in NODE_ROLES:
            for project in (OTHER, PROJECT):
                if project == PROJECT and role in roles and path.rsplit("/", 1)[-1] in decisions:
                    continue  # a real decision: made once, below
                r = call(node, method, path, f"{role}@{project}", json=bodies.get((method, template)),
                         params=params.get((method, template)))
                what = (method, template, role, project, r.status_code, r.text[:200])
                if role not in roles:
                    assert r.status_code == 403 and ("needs role" in r.text or "feasibility counts for" in r.text), what
                elif template == f"{API}/quality/run":
                    assert r.status_code == 202 and r.json()["site"] == "alpha", what  # site-wide, any project
                elif project == OTHER:
                    if template in (f"{API}/studies", f"{API}/held") and method == "GET":
                        assert r.status_code == 200 and h not in r.text, what
                    elif "{content_hash}" in template:
                        assert r.status_code == 404 and UNSEEN in r.text, what  # as if it did not exist
                    else:  # submissions and counts for PROJECT
                        assert r.status_code in (403, 404), what
                else:
                    assert r.status_code in (200, 202, 409), what
                    if template == f"{API}/held":
                        assert r.status_code == 200 and h not in r.text, what  # pending: nothing held
                    elif template == f"{API}/quality":
                        assert r.status_code == 200 or "data-quality summary" in r.text, what
                    elif method == "GET" or template.endswith(("/results", "/rounds")):
                        assert h[:12] in r.text, what  # the study itself, or "study <hash> is pending..."
    assert call(node, "GET", f"{API}/studies/{h}", "hub").json()["status"] == "pending_approval"
    r = call(node, "POST", f"{API}/studies/{h}/reject", f"custodian@{PROJECT}", json={"reason": "matrix"})
    assert r.status_code == 200 and r.json()["decided_by"] == f"custodian-{PROJECT}"


# ---- the hub: every study route walls projects off; scoped admins stay in their projects -------
def test_every_hub_route_checks_the_project(fed: Federation) -> None:
    hub = fed.hub
    pkg = small_study("the hub matrix study")
    with fed.client() as alice:
        h = alice.submit(pkg, project=PROJECT)["hash"]

    def hub_call(method: str, path: str, who: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{hub.url}{API}{path}", timeout=60, **kw,
                             headers={"Authorization": f"Bearer {fed.hub_tokens[who]}"})  # type: ignore[attr-defined]

    missing = "e" * 64
    for role in ("researcher", "admin"):
        who = f"{role}@{OTHER}"
        for method, path, body in (("GET", "/studies/{}", None), ("GET", "/studies/{}/results", None),
                                   ("GET", "/studies/{}/report", None), ("POST", "/studies/{}/close", None),
                                   ("POST", "/studies/{}/federated", {"analysis": "cox_adjusted", "model": "cox"})):
            r = hub_call(method, path.format(h), who, json=body)
            absent = hub_call(method, path.format(missing), who, json=body)
            assert r.status_code == absent.status_code == 404, (role, method, path, r.status_code, r.text)
            assert r.json()["detail"].replace(h, missing) == absent.json()["detail"]
        assert h not in hub_call("GET", "/studies", who).text
        for path in ("/quality", "/quality/report"):  # the sites' data quality of a project not theirs
            r = hub_call("GET", path, who, params={"project": PROJECT})
            assert r.status_code == 403 and "not a member" in r.json()["detail"], (path, r.text)
        r = hub_call("POST", "/studies", who, json={"package": pkg.canonical(), "project": PROJECT})
        assert r.status_code == 403 and "not a member" in r.json()["detail"]
        for path, body in (("/feasibility", {"definition": pkg.canonical()["cohorts"]["sglt2"]["definition"]}),
                           ("/concepts/count", {"concept_id": 201826}),
                           ("/trials/feasibility", {"definition": pkg.canonical()["cohorts"]["sglt2"]["definition"]})):
            r = hub_call("POST", path, who, json={**body, "project": PROJECT})
            assert r.status_code == 403 and "not a member" in r.json()["detail"], (path, r.text)
            r = hub_call("POST", path, who, json={**body, "project": OTHER, "sites": ["alpha"]})
            assert r.status_code == 403 and "not in project" in r.json()["detail"], (path, r.text)
        # The same package in the caller's own project is not the other project's study either.
        r = hub_call("POST", "/studies", who, json={"package": pkg.canonical(), "project": OTHER})
        assert r.status_code == 409 and f"'{PROJECT}'" not in r.json()["detail"] and "submitted_by" not in r.text
        assert [n["name"] for n in hub_call("GET", "/nodes", who).json()] == ["beta"]
        assert [p["name"] for p in hub_call("GET", "/projects", who).json()] == [OTHER]
    assert hub_call("GET", f"/studies/{h}", f"researcher@{PROJECT}").json()["status"] == "open"
    # An admin of one project administers that project only.
    admin = f"admin@{OTHER}"
    r = hub_call("POST", "/projects", admin, json={"name": PROJECT, "sites": ["beta"]})
    assert r.status_code == 403
    r = hub_call("POST", "/users", admin, json={"name": "ivan", "role": "researcher", "projects": [PROJECT]})
    assert r.status_code == 403
    r = hub_call("POST", "/users", admin, json={"name": "ivan", "role": "admin", "projects": ["*"]})
    assert r.status_code == 403
    r = hub_call("POST", "/users", admin, json={"name": "admin", "role": "admin", "projects": [OTHER]})
    assert r.status_code == 403  # rotating the hub's own admin away
    r = hub_call("POST", "/nodes", admin, json={"name": "alpha", "url": "http://127.0.0.1:9", "token": "mct_x"})
    assert r.status_code == 403
    r = hub_call("POST", "/users", admin, json={"name": "ivan", "role": "researcher", "projects": [OTHER]})
    assert r.status_code == 201
    with fed.admin() as root:  # nothing above changed the federation
        assert {p["name"]: p["sites"] for p in root._call("GET", "/projects")} == {
            PROJECT: ["alpha", "beta"], OTHER: ["beta"]}
