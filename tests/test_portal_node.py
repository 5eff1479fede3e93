"""The node's custodian portal over real HTTP on 127.0.0.1 (issue 17, item 5).

A node (`mercia node serve`, a process) over a synthetic site; packages submitted as the hub does
(signed with the hub's key): version 1 of a study, approved through the API and run to the end; its
version 2 (one setting changed) and another study, both pending; a study of another project. Portal
users made in the node's state as `mercia node portal-user-add` makes them (the command is tested on
its own below): a custodian of project 'proj', a custodian of every project, an admin.

Each route is asked by every kind of visitor: not signed in (the sign-in page), the admin (sees, never
decides), the custodian; refusals as the API gives them (403 for a role, 404 for another project's
study). A decision is by hash: the hash the form carries must be the one it is posted to, a rejection
needs its reason, a study decided meanwhile is refused (409); the decision is the API's (status,
decided_by, reason, audit record). The released-results page shows every number of the released tables
as GET studies/{hash}/results sends them, and no other; the audit page says whether the hash chain holds
and, when an entry was edited, which.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from federation_support import MERCIA, HubKey, NodeServer, make_site, small_study, submit_body
from test_portal import PASSWORD, T, Visitor

OTHER = "other"


def node_accounts(node: NodeServer) -> Any:
    from mercia.federation.node import load_node_config
    from mercia.portal.accounts import accounts_for
    from mercia.portal.node_pages import NODE_PORTAL_ROLES

    cfg = load_node_config(node.config_path)
    return accounts_for(cfg.state_dir / "portal.sqlite", cfg.portal, roles=NODE_PORTAL_ROLES)


def study_v2(name: str = "small test study") -> Any:
    """Version 2 of the small study: entries per month instead of per year, nothing else changed."""
    from mercia.study import StudyPackage

    canonical = small_study(name).canonical()
    for a in canonical["analyses"]:
        if a["type"] == "cohort_entries":
            a["interval"] = "month"
    return StudyPackage.from_canonical(canonical)


def submit(node: NodeServer, key: HubKey, pkg: Any, project: str = "proj") -> str:
    with node.client("hub") as c:
        r = c.post("/api/v1/studies", json=submit_body(pkg, key, project=project))
        assert r.status_code == 202, r.text
    return str(pkg.content_hash)


class Node:
    def __init__(self, server: NodeServer, key: HubKey, v1: str, v2: str, other_study: str, foreign: str) -> None:
        self.server, self.key, self.v1, self.v2, self.other_study, self.foreign = server, key, v1, v2, other_study, foreign
        self.url = server.url

    def status(self, h: str) -> dict[str, Any]:
        with self.server.client("custodian") as c:
            return c.get(f"/api/v1/studies/{h}").json()

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (self.server.state_dir / "audit.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("portal-node")
    key = HubKey(root / "hubkey")
    server = NodeServer(root / "node", cdm=make_site(root / "site.duckdb", persons=3000, seed=1), hub_key=key,
                        site="leeds")
    with server:
        v1 = submit(server, key, small_study())
        server.approve(v1)
        server.wait_status(v1, {"finished"}, timeout=240)
        v2 = submit(server, key, study_v2())
        other_study = submit(server, key, small_study("another study"))
        foreign = submit(server, key, small_study("a study of another project"), project=OTHER)
        acc = node_accounts(server)
        for name, role, projects in (("cal", "custodian", ["proj"]), ("cat", "custodian", ["*"]),
                                     ("adam", "admin", ["*"])):
            acc.add_user(name, role, projects, PASSWORD)
        yield Node(server, key, v1, v2, other_study, foreign)


@pytest.fixture
def visitor(node: Node) -> Iterator[Any]:
    made: list[Visitor] = []

    def make(name: str | None = None) -> Visitor:
        v = Visitor(node.url)
        made.append(v)
        if name is not None:
            r = v.sign_in(name)
            assert r.status_code == 303, r.text
        return v

    yield make
    for v in made:
        v.close()


def gets(node: Node) -> list[str]:
    return ["/portal/", f"/portal/studies/{node.v2}", f"/portal/studies/{node.v2}?against={node.v1}",
            f"/portal/studies/{node.v1}/results", "/portal/audit", "/portal/audit?requests=1"]


def posts(node: Node) -> list[tuple[str, dict[str, str]]]:
    return [(f"/portal/studies/{node.other_study}/approve", {"hash": node.other_study, "reason": "fine"}),
            (f"/portal/studies/{node.other_study}/reject", {"hash": node.other_study, "reason": "no"}),
            ("/portal/sign-out", {})]


# ---- who may see what ----------------------------------------------------------------------------------------
def test_not_signed_in_goes_to_the_sign_in_page(node: Node, visitor: Any) -> None:
    for path in gets(node):
        r = visitor().get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/portal/sign-in")
        if path != "/portal/":
            assert "next=" in r.headers["location"]
    for path, data in posts(node):
        r = visitor().post(path, data, csrf=False)
        assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in", path
    assert node.status(node.other_study)["status"] == "pending_approval"


def test_each_page_for_the_custodian_and_the_admin(node: Node, visitor: Any) -> None:
    for who in ("cal", "adam"):
        v = visitor(who)
        for path in gets(node):
            r = v.get(path)
            assert r.status_code == 200, (who, path, r.text[:500])
            assert r.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in r.headers["content-security-policy"]
            assert r.headers["cache-control"] == "no-store"
            assert "<main" in r.text and 'class="skip-link"' in r.text


def test_the_admin_sees_but_cannot_decide(node: Node, visitor: Any) -> None:
    adam = visitor("adam")
    page = adam.get(f"/portal/studies/{node.other_study}")
    assert page.status_code == 200 and "Approve this hash" not in page.text
    for path, data in posts(node)[:2]:
        r = adam.post(path, data)
        assert r.status_code == 403, path
        assert "has role 'admin'; this needs role 'custodian'" in T(r)  # the API's own message
    assert node.status(node.other_study)["status"] == "pending_approval"


def test_another_projects_study_is_not_found(node: Node, visitor: Any) -> None:
    cal = visitor("cal")
    queue = cal.get("/portal/").text
    assert node.v2 in queue and node.other_study in queue and node.foreign not in queue
    for path in (f"/portal/studies/{node.foreign}", f"/portal/studies/{node.foreign}/results"):
        r = cal.get(path)
        assert r.status_code == 404 and "no study with hash" in T(r)
    r = cal.post(f"/portal/studies/{node.foreign}/approve", {"hash": node.foreign, "reason": ""})
    assert r.status_code == 404
    assert node.status(node.foreign)["status"] == "pending_approval"
    # a custodian of every project sees it
    assert node.foreign in visitor("cat").get("/portal/").text


def test_an_expired_session_signs_in_again(node: Node, visitor: Any) -> None:
    v = visitor("cal")
    assert v.get("/portal/audit").status_code == 200
    node_accounts(node.server).expire_sessions_of("cal")
    r = v.get("/portal/audit")
    assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in?next=%2Fportal%2Faudit&ended=1"
    assert "Your session has ended" in T(v.get(r.headers["location"]))
    v.jar["mercia_session"] = "stale"
    r = v.post(f"/portal/studies/{node.other_study}/approve", {"csrf": "x", "hash": node.other_study})
    assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in?ended=1"
    assert node.status(node.other_study)["status"] == "pending_approval"


def test_a_post_without_or_with_a_wrong_csrf_token_is_refused(node: Node, visitor: Any) -> None:
    cal, other = visitor("cal"), visitor("cal")
    for path, data in posts(node):
        for token in (None, "", other.csrf, cal.csrf[:-2] + "xx"):
            body = dict(data)
            if token is not None:
                body["csrf"] = token
            r = cal.post(path, body, csrf=False)
            assert r.status_code == 403, (path, token)
            assert "security token is missing or wrong" in T(r)
        # a JSON body (no form at all) is refused the same way
        r = cal.request("POST", path, json=data)
        assert r.status_code == 403
    assert node.status(node.other_study)["status"] == "pending_approval"
    assert cal.get("/portal/").status_code == 200  # still signed in


def test_sign_in_refusals_are_audited(node: Node, visitor: Any) -> None:
    r = visitor().sign_in("cal", "not the password")
    assert r.status_code == 401 and "the name or the password is wrong" in T(r)
    v = visitor()
    page = v.get("/portal/sign-in")
    assert "mercia node portal-user-add" in T(page)
    r = v.post("/portal/sign-in", {"name": "cal", "password": PASSWORD}, csrf=False)
    assert r.status_code == 403 and "mercia_session" not in v.jar
    events = [(e["event"], e["actor"]) for e in node.audit()]
    assert ("portal.sign_in_failed", "cal") in events and ("portal.signed_in", "cal") in events


def test_password_spraying_from_one_address_is_blocked_at_the_node(tmp_path: Path) -> None:
    """The node's sign-in is the hub's (portal/sign_in.py): failures from one address across names block the
    address, even for a right password; the name itself is not locked (the limit here: 4 failures)."""
    key = HubKey(tmp_path / "hubkey")
    server = NodeServer(tmp_path / "node", cdm=make_site(tmp_path / "site.duckdb", persons=300, seed=2), hub_key=key,
                        site="york", portal={"max_client_failures": 4, "secure_cookie": False})
    with server:
        node_accounts(server).add_user("cal", "custodian", ["proj"], PASSWORD)
        v = Visitor(server.url)
        try:
            for i in range(4):
                assert v.sign_in(f"guess{i}", "Spring2026!spray").status_code == 401
            r = v.sign_in("cal", PASSWORD)
            assert r.status_code == 429 and "too many failed sign-ins from your address" in T(r)
            assert "mercia_session" not in v.jar
        finally:
            v.close()
        session_id, _ = node_accounts(server).sign_in("cal", PASSWORD, "10.0.0.2")
        assert session_id


def test_bad_input_is_one_line(node: Node, visitor: Any) -> None:
    cal = visitor("cal")
    r = cal.get("/portal/studies/not-a-hash")
    assert r.status_code == 422 and "content_hash" in T(r)
    r = cal.get(f"/portal/studies/{'0' * 64}")
    assert r.status_code == 404 and "no study with hash" in T(r)
    r = cal.get(f"/portal/studies/{node.v2}", params={"against": node.other_study})
    assert r.status_code == 400 and "against: " in T(r) and "is not an earlier version" in T(r)
    r = cal.get(f"/portal/studies/{node.v1}", params={"against": node.v2})  # later, not earlier
    assert r.status_code == 400
    r = cal.get(f"/portal/studies/{node.other_study}/results")
    assert r.status_code == 409 and "pending_approval; its released results are here when it is finished" in T(r)
    assert cal.get("/portal/audit", params={"before": "0"}).status_code == 422
    assert cal.get("/portal/audit", params={"before": "x"}).status_code == 422
    for r in (cal.get("/portal/studies/not-a-hash"), cal.get("/portal/audit", params={"before": "x"})):
        assert "Traceback" not in r.text


# ---- the queue and a package ---------------------------------------------------------------------------------------
def test_the_queue_lists_pending_packages_first(node: Node, visitor: Any) -> None:
    page = visitor("cal").get("/portal/").text
    pending = page[page.index('id="pending"'):page.index('id="others"')]
    assert node.v2[:16] in pending and node.v1[:16] not in pending
    assert f'href="/portal/studies/{node.v2}"' in pending
    assert f'href="/portal/studies/{node.v1}/results"' in page  # finished: its results


def test_a_package_shows_what_it_runs_and_can_release(node: Node, visitor: Any) -> None:
    from mercia.study import StudyPackage

    page = T(visitor("cal").get(f"/portal/studies/{node.v2}"))
    pkg = StudyPackage.from_canonical(study_v2().canonical())
    assert node.v2 in page and "Approve this hash" in page
    for key, cohort_id in pkg.cohort_ids.items():
        assert f"<code>{key}</code></td><td>{cohort_id}</td><td>{pkg.cohort_name(key)}</td>" in page
    for a in pkg.analyses:
        assert f"<td><code>{a.table_prefix()}</code></td><td>{a.type_name()}</td>" in page
    assert "interval: month" in page and "ties: efron" in page  # the settings
    # the policy its numbers pass: the site's (opensafely), as the package asks for none
    from mercia.disclosure import BUILTIN_POLICIES

    policy = BUILTIN_POLICIES["opensafely"]
    assert f"<dt>threshold</dt><dd>{policy.threshold}</dd>" in page
    assert f"<dt>rounding base</dt><dd>{policy.rounding_base}</dd>" in page
    # the shapes: the tables version 1 released (names and columns, as the API sends them)
    with node.server.client("hub") as c:
        released = c.get(f"/api/v1/studies/{node.v1}/results").json()
    for t in released["tables"]:
        assert f"<td><code>{t['name']}</code></td><td>{', '.join(t['columns'])}</td>" in page
    assert "federated regression rounds" in page  # the Cox analysis


def test_the_difference_from_the_earlier_version(node: Node, visitor: Any) -> None:
    cal = visitor("cal")
    page = T(cal.get(f"/portal/studies/{node.v2}"))
    lines = re.findall(r'<span class="diff-(add|del)">([^<]*)</span>', page)
    # exactly the one setting changed, nothing else
    assert [(k, t.strip()) for k, t in lines] == [("del", "-  interval: year"), ("add", "+  interval: month")]
    assert f'<option value="{node.v1}" selected>' in page
    assert T(cal.get(f"/portal/studies/{node.v2}", params={"against": node.v1})) == page
    # the first version has none; another study's name has none either
    assert "No earlier version of study “small test study”" in T(cal.get(f"/portal/studies/{node.v1}"))
    assert "No earlier version of study “another study”" in T(cal.get(f"/portal/studies/{node.other_study}"))


def test_the_package_yaml_is_the_package(node: Node, visitor: Any) -> None:
    import html

    import yaml

    page = visitor("cal").get(f"/portal/studies/{node.v2}").text
    text = html.unescape(re.search(r'<pre class="code" id="package-yaml"[^>]*>(.*?)</pre>', page, re.S).group(1))
    shown = yaml.safe_load(text)
    canonical = study_v2().canonical()
    assert shown["name"] == canonical["name"] and shown["analyses"] == canonical["analyses"]
    # each cohort in the cohort language reads back to the package's definition
    from mercia.cohorts.model import CohortDefinition
    from mercia.cohorts.yaml_reader import from_dict as definition_from_dict

    for k, c in canonical["cohorts"].items():
        assert shown["cohorts"][k]["id"] == c["id"]
        assert definition_from_dict(shown["cohorts"][k]["definition"]) == CohortDefinition.model_validate(
            c["definition"])


# ---- decisions by hash --------------------------------------------------------------------------------------------
def test_approve_and_reject_by_hash(node: Node, visitor: Any) -> None:
    cal = visitor("cal")
    # the hash in the form must be the one it is sent to
    for shown in ("", node.v2, node.other_study[:-1] + "0"):
        r = cal.post(f"/portal/studies/{node.other_study}/reject", {"hash": shown, "reason": "not this"})
        assert r.status_code == 400 and "hash: the form confirms package" in T(r), shown
    # a rejection needs its reason; a reason has a limit
    r = cal.post(f"/portal/studies/{node.other_study}/reject", {"hash": node.other_study, "reason": "  "})
    assert r.status_code == 400 and "reason: say why the package is rejected" in T(r)
    r = cal.post(f"/portal/studies/{node.other_study}/approve", {"hash": node.other_study, "reason": "x" * 2001})
    assert r.status_code == 400 and "reason: at most 2000 characters" in T(r)
    assert node.status(node.other_study)["status"] == "pending_approval"
    # reject with a reason
    r = cal.post(f"/portal/studies/{node.other_study}/reject",
                 {"hash": node.other_study, "reason": "asks for more than the protocol"})
    assert r.status_code == 303 and r.headers["location"] == f"/portal/studies/{node.other_study}?done=rejected"
    assert f"Rejected {node.other_study}." in T(cal.get(r.headers["location"]))
    s = node.status(node.other_study)
    assert (s["status"], s["decided_by"], s["reason"]) == ("rejected", "cal", "asks for more than the protocol")
    rec = [e for e in node.audit() if e["event"] == "study.rejected" and e["details"]["hash"] == node.other_study]
    assert rec and rec[-1]["actor"] == "cal" and rec[-1]["details"]["via"] == "portal"
    # the page a second custodian still had open is stale now: refused, nothing changes
    r = visitor("cat").post(f"/portal/studies/{node.other_study}/approve", {"hash": node.other_study})
    assert r.status_code == 409 and "is rejected, not pending_approval" in T(r)
    assert node.status(node.other_study)["status"] == "rejected"
    # approve version 2: it runs, as an approval through the API would
    r = cal.post(f"/portal/studies/{node.v2}/approve", {"hash": node.v2, "reason": ""})
    assert r.status_code == 303
    assert node.server.wait_status(node.v2, {"finished", "running", "approved"})["decided_by"] == "cal"
    assert any(e["event"] == "study.approved" and e["details"]["hash"] == node.v2 and e["actor"] == "cal"
               for e in node.audit())


# ---- released results --------------------------------------------------------------------------------------------
class Cells(HTMLParser):
    """The released tables of a results page: {table name: [[cell text, ...], ...]}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: str | None = None
        self.in_body = self.in_cell = False
        self.row: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and "released" in (a.get("class") or ""):
            self.current = a["data-table"]
            self.tables[self.current] = []
        elif self.current and tag == "tbody":
            self.in_body = True
        elif self.current and self.in_body and tag == "tr":
            self.row = []
        elif self.current and self.in_body and tag == "td":
            self.in_cell = True
            self.row.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self.in_cell = False
        elif tag == "tr" and self.current and self.in_body:
            self.tables[self.current].append(self.row)
        elif tag == "tbody":
            self.in_body = False
        elif tag == "table":
            self.current = None

    def handle_data(self, data: str) -> None:
        if self.in_cell:
            self.row[-1] += data


def test_every_number_on_the_results_page_is_a_released_one(node: Node, visitor: Any) -> None:
    page = visitor("cal").get(f"/portal/studies/{node.v1}/results")
    assert page.status_code == 200
    with node.server.client("hub") as c:
        sent = c.get(f"/api/v1/studies/{node.v1}/results").json()  # what leaves, from the API
    parser = Cells()
    parser.feed(page.text)
    assert sorted(parser.tables) == sorted(t["name"] for t in sent["tables"]) and sent["tables"]
    numbers = 0
    for t in sent["tables"]:
        shown = parser.tables[t["name"]]
        if not t["rows"]:
            assert shown == [["No rows released"]]
            continue
        assert len(shown) == len(t["rows"])
        for got, row in zip(shown, t["rows"], strict=True):
            # each cell, in order, as the API's JSON has it (written out here, not with the page's cell())
            assert got == ["–" if v is None else json.dumps(v) if isinstance(v, int | float) else str(v)
                           for v in row]
            for text, v in zip(got, row, strict=True):
                if isinstance(v, int | float) and not isinstance(v, bool):
                    assert float(text) == v
                    numbers += 1
    assert numbers > 0
    # and no number elsewhere on the page (outside those cells: names, statuses, the hash, dates)
    body = page.text[page.text.index("<main"):page.text.index("</main>")]
    outside = re.sub(r'<table class="released".*?</table>', " ", body, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", outside)
    stray = [w for w in re.findall(r"[A-Za-z0-9_.:+-]+", text) if re.fullmatch(r"-?\d+(\.\d+)?(e[+-]?\d+)?", w)]
    assert stray == [], stray


# ---- the audit log ------------------------------------------------------------------------------------------------
def test_the_audit_log_verified_then_broken_at_the_edited_entry(node: Node, visitor: Any) -> None:
    cal = visitor("cal")
    page = T(cal.get("/portal/audit"))
    records = node.audit()
    assert "Verified: all" in page
    assert "study.approved" in page and "portal.signed_in" in page
    assert ">request<" not in page  # HTTP request lines only when asked for
    assert ">request<" in T(cal.get("/portal/audit", params={"requests": "1"}))
    # the run's error text (it can quote values read from rows) is not shown
    path = node.server.state_dir / "audit.jsonl"
    raw = path.read_text().splitlines(keepends=True)
    target = next(i for i, r in enumerate(records) if r["event"] == "study.received")
    edited = json.loads(raw[target])
    edited["details"]["requested_by"] = "someone else"
    original = raw[target]
    raw[target] = json.dumps(edited, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(raw))
    try:
        page = T(cal.get("/portal/audit"))
        n = records[target]["seq"]
        assert f"Broken at entry {n}" in page and "hash does not match its content" in page
        from mercia.federation.audit import verify_log

        assert not verify_log(path).ok  # the independent check agrees
    finally:
        now = path.read_text().splitlines(keepends=True)
        now[target] = original
        path.write_text("".join(now))
    assert "Verified: all" in T(cal.get("/portal/audit"))


def test_audit_pages_go_back_in_time(tmp_path: Path) -> None:
    from mercia.federation.audit import AuditLog
    from mercia.portal.node_review import audit_view

    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(7):
        log.append("request", "http", path="/x")
        log.append("study.received", "hub", hash=f"{i:064d}")
        log.append("run.failed", "node", hash=f"{i:064d}", error="ValueError: value 1234 in a row")
    first = audit_view(log.path, page=5)
    assert first.ok and first.records == 21 and [e["seq"] for e in first.entries] == [21, 20, 18, 17, 15]
    assert all("1234" not in e["details"] for e in first.entries)  # error text stays in the file
    second = audit_view(log.path, before=first.older, page=5)
    assert [e["seq"] for e in second.entries] == [14, 12, 11, 9, 8]
    with_requests = audit_view(log.path, page=3, include_requests=True)
    assert [e["seq"] for e in with_requests.entries] == [21, 20, 19]
    empty = audit_view(tmp_path / "none.jsonl")
    assert empty.ok and empty.records == 0 and empty.entries == []


# ---- the command -------------------------------------------------------------------------------------------------
def test_node_portal_user_add(node: Node) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MERCIA, "node", "portal-user-add", *args, "--config", str(node.server.config_path),
                               "--password-stdin"], input=PASSWORD + "\n", capture_output=True, text=True,
                              timeout=120)

    r = run("cora", "--project", "proj")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "portal user cora (custodian; projects proj)"
    user = node_accounts(node.server).user("cora")
    assert user is not None and user.role == "custodian" and user.projects == ("proj",)
    r = run("rex", "--role", "researcher")
    assert r.returncode == 1
    assert r.stderr.strip() == "error: role 'researcher' is not one of custodian, admin"
    r = run("cora")
    assert r.returncode == 1 and "a user named 'cora' exists" in r.stderr
    # cora signs in over HTTP
    v = Visitor(node.url)
    try:
        assert v.sign_in("cora").status_code == 303
        assert v.get("/portal/").status_code == 200
    finally:
        v.close()


def test_the_api_decides_with_the_same_code(node: Node) -> None:
    """The API's approve and reject still answer as before (NodeServices.decide behind both)."""
    third = submit(node.server, node.key, small_study("third study"))
    with node.server.client("custodian") as c:
        r = c.post(f"/api/v1/studies/{third}/reject", json={"reason": "no"})
        assert r.status_code == 200 and r.json()["status"] == "rejected" and r.json()["reason"] == "no"
        r = c.post(f"/api/v1/studies/{third}/approve")
        assert r.status_code == 409 and "not pending_approval" in r.text
    with httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {node.server.tokens['admin']}"}) as c:
        assert c.post(f"/api/v1/studies/{third}/approve").status_code == 403


def test_the_portals_incremental_check_agrees_with_verify_log(tmp_path: Path) -> None:
    """The audit page checks only what was added since its last view, unless anything before changed:
    after each append, edit and repair it says what `verify_log` (the full check) says."""
    from mercia.federation.audit import AuditLog, verify_log
    from mercia.portal.node_review import AuditChecker, audit_view

    log = AuditLog(tmp_path / "audit.jsonl")
    checker = AuditChecker(log.path)

    def agree() -> Any:
        full = verify_log(log.path)
        view = audit_view(log.path, checker=checker)
        assert (view.ok, view.records, view.head, view.problems) == (full.ok, full.records, full.head,
                                                                      full.problems[:20])
        return view

    for i in range(5):
        log.append("study.received", "hub", hash=f"{i:064d}")
    assert agree().ok
    log.append("study.approved", "cal", hash=f"{1:064d}")
    assert agree().records == 6
    raw = log.path.read_text().splitlines(keepends=True)
    original = raw[1]
    raw[1] = raw[1].replace('"study.received"', '"study.rejected"')  # an edit inside the checked part
    log.path.write_text("".join(raw))
    view = agree()
    assert not view.ok and view.broken_at == 2
    raw[1] = original
    log.path.write_text("".join(raw))
    assert agree().ok
    log.append("release", "node", hash=f"{1:064d}", tables=3)
    with open(log.path, "a") as f:  # a write cut off: the complete lines are checked, the tail reported
        f.write('{"seq": 8')
    view = audit_view(log.path, checker=checker)
    assert not view.ok and view.records == 7 and view.broken_at == 8
    assert "the last line is incomplete" in view.problems[0]
