"""The node's security invariants over real HTTP (servers on 127.0.0.1, started by the tests).

Each invariant of docs/security.md is pinned here: 401 without a valid token, 403 for the wrong role or
project, 404 for a study of another project, tampered or wrongly signed packages refused, an unapproved package never runs, no response (nor
the audit log, nor the server log) holds a person id or a date of birth, /health says nothing else,
count queries are rate-limited with a SHRINE-style lockout, and HTTPS works when configured.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from federation_support import PROJECT, Federation, HubKey, NodeServer, make_site, small_study, submit_body
from mercia.disclosure import BUILTIN_POLICIES, DisclosurePolicy
from mercia.federation.audit import read_records, verify_log
from mercia.federation.auth import TokenStore
from mercia.study import StudyPackage

# slow: each module starts node servers (several seconds each). The later tests read what the earlier ones
# recorded (every kind of refusal, in the response and audit scans): scripts/test.sh keeps a file on one worker.
pytestmark = pytest.mark.slow

API = "/api/v1"
FIRST_PERSON_ID = 7_300_001  # distinctive ids: a leak is a 7-digit number no count or date could be
PERSONS = 3000
OTHER_HASH = "0" * 64


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fedsec")
    site = make_site(root / "site.duckdb", persons=PERSONS, seed=3, first_person_id=FIRST_PERSON_ID)
    key = HubKey(root / "hubkey")
    node = NodeServer(root / "node", cdm=site, hub_key=key, site="alpha",
                      count_limits={"per_window": 6, "window_seconds": 600, "near_identical": 3})
    store = TokenStore(node.folder / "tokens.json")
    extra = {
        "hub-other": store.issue("hub-other", "hub", ["other"]),
        "researcher-other": store.issue("researcher-other", "researcher", ["other"]),
        "repeater": store.issue("repeater", "researcher", [PROJECT]),
        "busy": store.issue("busy", "researcher", [PROJECT]),
    }
    node.tokens.update(extra)
    ids, births = identifying_values(site)  # read before the node opens (and locks) the DuckDB file
    with node:
        yield {"root": root, "site": site, "key": key, "node": node, "ids": ids, "births": births}


class Recorder:
    """Clients whose every response body is kept, for the person-id scan."""

    def __init__(self, node: NodeServer) -> None:
        self.node = node
        self.bodies: list[tuple[str, int, str]] = []

    def call(self, method: str, path: str, who: str | None = "hub", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.node.tokens[who]}"} if who else {}
        with httpx.Client(base_url=self.node.url, timeout=60, verify=self.node.verify) as c:
            r = c.request(method, path, headers=headers, **kw)
        self.bodies.append((f"{method} {path}", r.status_code, r.text))
        return r


@pytest.fixture(scope="module")
def recorder(world) -> Recorder:
    return Recorder(world["node"])


def definition(pkg: Any, cohort: str = "hf_admission", prior_days: int = 0) -> dict[str, Any]:
    d = json.loads(json.dumps(pkg.canonical()["cohorts"][cohort]["definition"]))
    d["expression"]["primary_criteria"]["observation_window"]["prior_days"] = prior_days
    return d


def audit_events(node: NodeServer, content_hash: str | None = None) -> list[dict[str, Any]]:
    recs = list(read_records(node.state_dir / "audit.jsonl"))
    return [r for r in recs if content_hash is None or r["details"].get("hash") == content_hash]


# ---- /health and authentication -------------------------------------------------------------------
def test_health_reveals_nothing_else(world, recorder):
    r = recorder.call("GET", "/health", who=None)
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert world["node"].site not in r.text
    # Asking with a token reveals no more.
    assert recorder.call("GET", "/health", who="hub").json() == {"status": "ok"}


def routes(node: NodeServer) -> list[tuple[str, str]]:
    schema = httpx.get(node.url + "/openapi.json", verify=node.verify).json()
    out = []
    for path, ops in schema["paths"].items():
        if path == "/health":
            continue
        for method in ops:
            out.append((method.upper(), path.replace("{content_hash}", OTHER_HASH)))
    return out


def test_every_route_but_health_needs_a_valid_token(world, recorder):
    node = world["node"]
    found = routes(node)
    assert {p for _, p in found} >= {f"{API}/studies", f"{API}/feasibility", f"{API}/studies/{OTHER_HASH}/results",
                                     f"{API}/studies/{OTHER_HASH}/approve", f"{API}/studies/{OTHER_HASH}/rounds"}
    for method, path in found:
        body = {} if method == "POST" else None
        r = recorder.call(method, path, who=None, json=body)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers.get("www-authenticate") == "Bearer"
        with httpx.Client(base_url=node.url, verify=node.verify) as c:
            for header in ("Bearer mct_forged_token_0000000000000000000000000000", "Basic YWRtaW46YWRtaW4=",
                           "Bearer", "mct_no_scheme"):
                r = c.request(method, path, headers={"Authorization": header}, json=body)
                assert r.status_code == 401, (method, path, header, r.status_code)


def test_wrong_role_is_refused_with_403(world, recorder):
    key = world["key"]
    pkg = small_study("role test study")
    body = submit_body(pkg, key)
    h = pkg.content_hash
    cases = [
        ("POST", f"{API}/studies", "researcher", body),
        ("POST", f"{API}/studies", "custodian", body),
        ("POST", f"{API}/studies", "admin", body),
        ("GET", f"{API}/studies", "researcher", None),
        ("GET", f"{API}/studies/{h}", "researcher", None),
        ("GET", f"{API}/studies/{h}/results", "custodian", None),
        ("GET", f"{API}/studies/{h}/results", "researcher", None),
        ("POST", f"{API}/studies/{h}/rounds", "custodian", {"analysis": "cox_adjusted", "model": "cox", "beta": [0.0]}),
        ("POST", f"{API}/feasibility", "custodian", {"definition": definition(pkg), "project": PROJECT}),
        ("POST", f"{API}/feasibility", "admin", {"definition": definition(pkg), "project": PROJECT}),
    ]
    for method, path, who, payload in cases:
        r = recorder.call(method, path, who=who, json=payload)
        assert r.status_code == 403, (method, path, who, r.status_code, r.text)
        assert "needs role" in r.json()["detail"] or "feasibility counts for" in r.json()["detail"]
    # Submitted by the hub, the approval itself is a custodian's alone.
    assert recorder.call("POST", f"{API}/studies", json=body).status_code == 202
    for who in ("hub", "researcher", "admin"):
        r = recorder.call("POST", f"{API}/studies/{h}/approve", who=who)
        assert r.status_code == 403, (who, r.text)
        assert recorder.call("POST", f"{API}/studies/{h}/reject", who=who).status_code == 403
    assert recorder.call("GET", f"{API}/studies/{h}").json()["status"] == "pending_approval"


def test_wrong_project_is_refused_with_403_or_404(world, recorder):
    key = world["key"]
    pkg = small_study("project test study")
    r = recorder.call("POST", f"{API}/studies", who="hub-other", json=submit_body(pkg, key))
    assert r.status_code == 403 and "not a member of project 'proj'" in r.json()["detail"]
    assert recorder.call("GET", f"{API}/studies/{pkg.content_hash}").status_code == 404  # nothing was queued
    r = recorder.call("POST", f"{API}/feasibility", who="researcher-other",
                      json={"definition": definition(pkg), "project": PROJECT})
    assert r.status_code == 403 and "not a member" in r.json()["detail"]
    # Asking in one's own project where the study is not: its results stay out of reach, and the study
    # answers as one that does not exist (404), so its existence does not leak either.
    assert recorder.call("POST", f"{API}/studies", json=submit_body(pkg, key)).status_code == 202
    for path in (f"{API}/studies/{pkg.content_hash}/results", f"{API}/studies/{pkg.content_hash}"):
        r = recorder.call("GET", path, who="hub-other")
        assert r.status_code == 404 and "no study with hash" in r.json()["detail"]
    assert pkg.content_hash not in recorder.call("GET", f"{API}/studies", who="hub-other").text


# ---- packages: hash and signature ---------------------------------------------------------------
def test_a_tampered_package_is_refused(world, recorder):
    key, node = world["key"], world["node"]
    pkg = small_study("tamper test study")
    body = submit_body(pkg, key)
    tampered = json.loads(json.dumps(body))
    # After signing, someone widens the study: a different follow-up in the Cox analysis.
    tampered["package"]["analyses"][1]["settings"]["survival"]["tar_end"] = 30
    r = recorder.call("POST", f"{API}/studies", json=tampered)
    assert r.status_code == 400 and "does not match its hash" in r.json()["detail"]
    renamed = json.loads(json.dumps(body))
    renamed["package"]["name"] = "something else"
    assert recorder.call("POST", f"{API}/studies", json=renamed).status_code == 400
    assert recorder.call("GET", f"{API}/studies/{pkg.content_hash}").status_code == 404
    refused = [r for r in audit_events(node, pkg.content_hash) if r["event"] == "study.refused"]
    assert len(refused) == 2 and all(r["details"]["reason"] == "hash mismatch" for r in refused)


def test_a_package_not_signed_by_the_trusted_hub_is_refused(world, recorder):
    key, node = world["key"], world["node"]
    impostor = HubKey(world["root"] / "impostor")
    pkg = small_study("signature test study")
    h = pkg.content_hash
    for signature, detail in ((impostor.sign(h, sites=[node.site]), "signature does not verify"),
                              (key.sign("f" * 64), "signature is for another package"),
                              ("AAAA", "signature does not verify"),
                              (key.sign(h)[:-4] + "AAA", "signature does not verify")):
        body = submit_body(pkg, key)
        body["signature"] = signature
        r = recorder.call("POST", f"{API}/studies", json=body)
        assert r.status_code == 403, r.text
        assert detail in r.json()["detail"]
    assert recorder.call("GET", f"{API}/studies/{h}").status_code == 404
    assert [r["details"]["reason"] for r in audit_events(node, h) if r["event"] == "study.refused"] == [
        "bad signature", "another package", "bad signature", "bad signature"]


# ---- the full study run, then the scans -----------------------------------------------------------
@pytest.fixture(scope="module")
def finished_study(world, recorder) -> Any:
    key, node = world["key"], world["node"]
    pkg = small_study("full run study")
    h = pkg.content_hash
    assert recorder.call("POST", f"{API}/studies", json=submit_body(pkg, key)).status_code == 202
    assert recorder.call("POST", f"{API}/studies", json=submit_body(pkg, key)).json()["status"] in (
        "pending_approval",)  # idempotent: the same study, not a second one
    assert recorder.call("GET", f"{API}/studies/{h}/results").status_code == 409
    assert recorder.call("POST", f"{API}/studies/{h}/approve", who="custodian").json()["status"] in (
        "approved", "running", "finished")
    node.wait_status(h, {"finished", "failed"})
    assert recorder.call("GET", f"{API}/studies/{h}").json()["status"] == "finished"
    assert recorder.call("POST", f"{API}/studies/{h}/approve", who="custodian").status_code == 409
    results = recorder.call("GET", f"{API}/studies/{h}/results")
    assert results.status_code == 200 and results.json()["tables"]
    bad_round = recorder.call("POST", f"{API}/studies/{h}/rounds",
                              json={"analysis": "cox_adjusted", "model": "cox", "beta": [0.0]})
    assert bad_round.status_code == 400
    n_terms = int(re.search(r"give (\d+) finite numbers", bad_round.json()["detail"]).group(1))
    for model, extra in (("cox", 0), ("logistic", 1), ("poisson", 1)):
        r = recorder.call("POST", f"{API}/studies/{h}/rounds",
                          json={"analysis": "cox_adjusted", "model": model, "beta": [0.0] * (n_terms + extra)})
        assert r.status_code in (200, 422), r.text  # 422: the one refusal of a thin model (model_support)
    recorder.call("POST", f"{API}/studies/{h}/rounds", json={"analysis": "nope", "model": "cox", "beta": [0.0]})
    recorder.call("GET", f"{API}/studies")
    recorder.call("GET", f"{API}/studies", who="custodian", params={"status": "finished"})
    recorder.call("GET", f"{API}/studies/{OTHER_HASH}")
    recorder.call("GET", f"{API}/studies/not-a-hash")
    for cohort in ("sglt2", "gliclazide", "hf_admission"):
        assert recorder.call("POST", f"{API}/feasibility", json={"definition": definition(pkg, cohort),
                                                                  "project": PROJECT}).status_code == 200
    recorder.call("POST", f"{API}/feasibility", json={"definition": {"nonsense": 1}, "project": PROJECT})
    recorder.call("POST", f"{API}/feasibility", json={"definition": "not a mapping", "project": PROJECT})
    recorder.call("GET", "/openapi.json", who=None)
    return pkg


def identifying_values(site: Path) -> tuple[set[int], set[str]]:
    con = duckdb.connect(str(site), read_only=True)
    try:
        ids = {int(r[0]) for r in con.execute("SELECT person_id FROM person").fetchall()}
        births = set()
        for y, m, d in con.execute("SELECT year_of_birth, month_of_birth, day_of_birth FROM person "
                                   "WHERE month_of_birth IS NOT NULL AND day_of_birth IS NOT NULL").fetchall():
            births.add(dt.date(int(y), int(m), int(d)).isoformat())
    finally:
        con.close()
    return ids, births


def leaks(text: str, ids: set[int], births: set[str]) -> list[str]:
    found = [m for m in re.findall(r"(?<![\w.])\d{5,}(?![\w])", text) if int(m) in ids]
    found += [m for m in re.findall(r"\d{4}-\d{2}-\d{2}", text) if m in births]
    found += [k for k in ("person_id", "subject_id", "birth_datetime", "year_of_birth") if f'"{k}"' in text]
    return found


def test_the_scan_would_find_a_person_id(world):
    ids, births = world["ids"], world["births"]
    some = min(ids)
    assert some >= FIRST_PERSON_ID and len(ids) == PERSONS
    assert leaks(json.dumps({"rows": [[some, 1]]}), ids, births) == [str(some)]
    assert leaks('{"subject_id": 1}', ids, births) == ["subject_id"]
    if births:
        b = next(iter(births))
        assert leaks(f'{{"dob": "{b}"}}', ids, births) == [b]


def test_no_response_holds_a_person_id_or_a_date_of_birth(world, recorder, finished_study):
    ids, births = world["ids"], world["births"]
    assert len(recorder.bodies) > 30
    statuses = {code for _, code, _ in recorder.bodies}
    assert {200, 202, 400, 401, 403, 404, 409, 422} <= statuses  # successes and every kind of refusal
    for what, code, body in recorder.bodies:
        assert not leaks(body, ids, births), (what, code, leaks(body, ids, births)[:5])
    node = world["node"]
    audit_text = (node.state_dir / "audit.jsonl").read_text()
    assert not leaks(audit_text, ids, births)
    assert not leaks(node.log_text(), ids, births)


def test_the_audit_log_records_every_step_and_verifies(world, recorder, finished_study):
    node = world["node"]
    h = finished_study.content_hash
    events = [r["event"] for r in audit_events(node, h)]
    for step in ("study.received", "study.approved", "run.started", "release", "results.sent"):
        assert step in events, (step, events)
    assert events.count("release") == 1
    rounds_answered = sum(1 for what, code, _ in recorder.bodies if what.endswith(f"{h}/rounds") and code == 200)
    assert events.count("round.released") == rounds_answered
    requests = [r for r in audit_events(node) if r["event"] == "request"]
    assert any(r["details"]["status"] == 401 for r in requests)  # refused requests are recorded too
    v = verify_log(node.state_dir / "audit.jsonl")
    assert v.ok, v.problems


# ---- disclosure: the only door out ----------------------------------------------------------------
def test_every_released_number_passed_the_door_at_least_as_strict_as_the_site(recorder, finished_study):
    site_policy = BUILTIN_POLICIES["opensafely"]  # the node's configured minimum
    results = [json.loads(body) for what, code, body in recorder.bodies
               if code == 200 and what.endswith(f"{finished_study.content_hash}/results")]
    assert results
    tables = [t for r in results for t in r["tables"]]
    assert tables
    for t in tables:
        assert t["status"] in ("released", "blocked"), t["name"]
        assert DisclosurePolicy.model_validate(t["policy"]).at_least_as_strict_as(site_policy), t["name"]
    counts = [json.loads(body) for what, code, body in recorder.bodies if code == 200 and what.endswith("/feasibility")]
    assert counts
    for c in counts:
        assert DisclosurePolicy.model_validate(c["attrition"]["policy"]).at_least_as_strict_as(site_policy)
        assert c["disclosure"]  # the public log of the release


def test_a_package_asking_for_a_weaker_policy_is_refused(world, recorder):
    canonical = small_study("lenient study").canonical()
    lenient = BUILTIN_POLICIES["opensafely"].model_dump(mode="json") | {"name": "lenient", "threshold": 1}
    canonical["disclosure"] = lenient
    pkg = StudyPackage.from_canonical(canonical)
    r = recorder.call("POST", f"{API}/studies", json=submit_body(pkg, world["key"]))
    assert r.status_code == 400 and "weaker than this site's minimum" in r.json()["detail"]
    assert recorder.call("GET", f"{API}/studies/{pkg.content_hash}").status_code == 404


# ---- approval ------------------------------------------------------------------------------------
def test_an_unapproved_or_rejected_package_never_runs(tmp_path):
    site = make_site(tmp_path / "site.duckdb", persons=PERSONS, seed=3, first_person_id=FIRST_PERSON_ID)
    key = HubKey(tmp_path / "hubkey")
    pending, rejected = small_study("never approved"), small_study("rejected study")
    with NodeServer(tmp_path / "node", cdm=site, hub_key=key, site="beta") as node, node.client() as hub, \
            node.client("custodian") as custodian:
        for pkg in (pending, rejected):
            assert hub.post(f"{API}/studies", json=submit_body(pkg, key)).status_code == 202
        r = custodian.post(f"{API}/studies/{rejected.content_hash}/reject", json={"reason": "not in protocol"})
        assert r.json()["status"] == "rejected"
        assert custodian.post(f"{API}/studies/{rejected.content_hash}/approve").status_code == 409
        time.sleep(3)  # the worker polls every 0.5 s: it has had six chances to run them
        for pkg, status in ((pending, "pending_approval"), (rejected, "rejected")):
            rec = hub.get(f"{API}/studies/{pkg.content_hash}").json()
            assert rec["status"] == status and rec["runs"] == 0 and rec["released_at"] is None
            assert hub.get(f"{API}/studies/{pkg.content_hash}/results").status_code == 409
            r = hub.post(f"{API}/studies/{pkg.content_hash}/rounds",
                         json={"analysis": "cox_adjusted", "model": "cox", "beta": [0.0]})
            assert r.status_code == 409
    # The node is stopped: its CDM can be opened to check nothing ran there.
    events = [r["event"] for r in read_records(node.state_dir / "audit.jsonl") if r["event"] not in ("request",)]
    assert "run.started" not in events and "release" not in events
    assert not (node.state_dir / "results" / pending.content_hash).exists()
    assert not (node.state_dir / "results" / rejected.content_hash).exists()
    con = duckdb.connect(str(site), read_only=True)
    try:
        has_cohort = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'cohort' "
                                 "AND table_schema = 'results'"
                                 ).fetchone()[0]
        rows = con.execute("SELECT count(*) FROM results.cohort").fetchone()[0] if has_cohort else 0
    finally:
        con.close()
    assert rows == 0, "a cohort was generated for a package nobody approved"


# ---- count queries -------------------------------------------------------------------------------
def test_count_queries_are_rate_limited_and_repeats_lock_out(world, recorder):
    pkg = small_study()
    same = {"definition": definition(pkg, prior_days=0), "project": PROJECT}
    renamed = json.loads(json.dumps(same))
    renamed["definition"]["name"] = "the same query under another name"
    answers = [recorder.call("POST", f"{API}/feasibility", who="repeater", json=q) for q in (same, renamed, same)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len({a.json()["persons"] for a in answers}) == 1
    locked = recorder.call("POST", f"{API}/feasibility", who="repeater", json=same)
    assert locked.status_code == 429 and "locked out" in locked.json()["detail"]
    assert int(locked.headers["retry-after"]) > 0
    other = {"definition": definition(pkg, prior_days=365), "project": PROJECT}
    assert recorder.call("POST", f"{API}/feasibility", who="repeater", json=other).status_code == 429
    # The rate limit: 6 distinct queries per window, the seventh refused with Retry-After.
    codes = [recorder.call("POST", f"{API}/feasibility", who="busy",
                           json={"definition": definition(pkg, prior_days=30 * i), "project": PROJECT}).status_code
             for i in range(7)]
    assert codes == [200] * 6 + [429]
    # Other principals are not affected.
    assert recorder.call("POST", f"{API}/feasibility", who="researcher", json=other).status_code == 200


def test_feasibility_counts_are_released_not_raw(world, recorder):
    pkg = small_study()
    r = recorder.call("POST", f"{API}/feasibility", who="hub",
                      json={"definition": definition(pkg, "sglt2"), "project": PROJECT})
    assert r.status_code == 200
    answer = r.json()
    assert answer["disclosure"]  # the release log of the count: it went through the door
    persons = answer["persons"]
    assert persons is None or persons % 5 == 0  # opensafely: counts rounded to 5, small ones suppressed


# ---- HTTPS ------------------------------------------------------------------------------------------
def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "node.crt", folder / "node.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_https_when_configured(tmp_path):
    import ssl

    site = make_site(tmp_path / "site.duckdb", persons=PERSONS, seed=3, first_person_id=FIRST_PERSON_ID)
    key = HubKey(tmp_path / "hubkey")
    cert, cert_key = self_signed(tmp_path)
    with NodeServer(tmp_path / "node", cdm=site, hub_key=key, site="gamma", tls=(cert, cert_key)) as node:
        assert node.url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(cert))
        r = httpx.get(node.url + "/health", verify=trusted)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        pkg = small_study("tls study")
        with httpx.Client(base_url=node.url, verify=trusted,
                          headers={"Authorization": f"Bearer {node.tokens['hub']}"}) as c:
            assert c.post(f"{API}/studies", json=submit_body(pkg, key)).status_code == 202
        # A client that does not trust the certificate refuses to talk; plain HTTP gets no answer.
        with pytest.raises(httpx.ConnectError):
            httpx.get(node.url + "/health")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{node.port}/health", timeout=5)


# ---- the hub: the same scan over a whole federated study ----------------------------------------
@pytest.fixture(scope="module")
def hub_world(tmp_path_factory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hubsec")
    site = make_site(root / "site.duckdb", persons=PERSONS, seed=3, first_person_id=FIRST_PERSON_ID)
    ids, births = identifying_values(site)
    with Federation(root, {"alpha": site}) as fed:
        with fed.admin() as admin:
            admin.add_project("other", ["alpha"])
            outsider = admin.add_user("olga", "researcher", ["other"])["token"]
        yield {"fed": fed, "ids": ids, "births": births, "outsider": outsider}


def test_no_hub_response_holds_a_person_id_and_projects_are_walled(hub_world):
    fed, ids, births = hub_world["fed"], hub_world["ids"], hub_world["births"]
    bodies: list[tuple[str, int, str]] = []

    def call(method: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = httpx.request(method, fed.hub.url + path, headers=headers, timeout=120, **kw)
        bodies.append((f"{method} {path}", r.status_code, r.text))
        return r

    alice, olga = fed.researcher_token, hub_world["outsider"]
    pkg = small_study("hub scan study")
    h = pkg.content_hash
    assert call("POST", f"{API}/studies", alice, json={"package": pkg.canonical(), "project": PROJECT}
                ).status_code == 202
    fed.approve_all(h)
    deadline = time.monotonic() + 240
    while call("GET", f"{API}/studies/{h}", alice).json()["status"] != "closed":
        assert time.monotonic() < deadline, "the study did not close"
        time.sleep(0.5)
    assert call("GET", f"{API}/studies/{h}/results", alice).status_code == 200
    assert call("GET", f"{API}/studies/{h}/report", alice).status_code == 200
    call("POST", f"{API}/studies/{h}/federated", alice, json={"analysis": "cox_adjusted", "model": "cox"})
    assert call("POST", f"{API}/feasibility", alice,
                json={"definition": definition(pkg, "sglt2"), "project": PROJECT}).status_code == 200
    call("GET", f"{API}/studies", alice)
    call("GET", f"{API}/nodes", alice)
    # Another project's researcher sees none of it: the study answers as one that does not exist.
    for method, path in (("GET", f"{API}/studies/{h}"), ("GET", f"{API}/studies/{h}/results"),
                         ("GET", f"{API}/studies/{h}/report"), ("POST", f"{API}/studies/{h}/close")):
        r = call(method, path, olga)
        assert r.status_code == 404, (method, path, r.status_code)
    assert h not in call("GET", f"{API}/studies", olga).text
    r = call("POST", f"{API}/feasibility", olga, json={"definition": definition(pkg), "project": PROJECT})
    assert r.status_code == 403
    call("GET", f"{API}/studies/{h}", None)
    assert {200, 202, 401, 403, 404} <= {code for _, code, _ in bodies}
    for what, code, body in bodies:
        assert not leaks(body, ids, births), (what, code, leaks(body, ids, births)[:5])
    assert not leaks((fed.hub.state_dir / "audit.jsonl").read_text(), ids, births)
    assert not leaks(fed.hub.log_text(), ids, births)
    assert verify_log(fed.hub.state_dir / "audit.jsonl").ok
