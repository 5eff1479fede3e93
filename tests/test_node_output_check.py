"""The custodian's output check (issue 17, item 5: "released results before they leave"), end to end.

A hub and two nodes on 127.0.0.1 (processes), both with `hold_results: true`. The researcher submits a
study at the hub; each site's custodian approves it; each run ends 'held': its released tables are
written, no route serves them to the hub or a researcher, and the hub shows the site as 'held'. Then
the refusals: a release by the admin, the hub, a researcher, a custodian of another project or of the
other node; a withholding without a reason; an unknown hash, another run, results other than those
read. Then north's custodian reads the held results in the portal (every number the API's) and
releases them there; south's withholds them through the API with a reason. The hub collects from
north exactly the tables the custodian read, shows south 'withheld' with the reason and no tables, and
closes the study; both nodes' audit chains verify, with each decision's line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from federation_support import PROJECT, Federation, make_site, small_study
from mercia.federation.audit import verify_log
from test_portal import PASSWORD, Visitor
from test_portal import accounts as hub_accounts
from test_portal_node import Cells, node_accounts

API = "/api/v1"
WITHHOLD_REASON = "cohort_counts: the site does not release counts of this outcome this year"


class Held:
    def __init__(self, fed: Federation, h: str, extra: dict[str, dict[str, str]]) -> None:
        self.fed, self.h, self.extra = fed, h, extra
        self.seen: dict[str, Any] = {}  # what north's custodian read (GET studies/{hash}/held)

    def client(self, site: str, who: str) -> httpx.Client:
        node = self.fed.nodes[site]
        token = self.extra[site][who] if who in self.extra[site] else node.tokens[who]
        return httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def status(self, site: str) -> dict[str, Any]:
        with self.client(site, "custodian") as c:
            return c.get(f"{API}/studies/{self.h}").json()

    def audit(self, site: str) -> list[dict[str, Any]]:
        path = self.fed.nodes[site].state_dir / "audit.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()]

    def events(self, site: str, event: str) -> list[dict[str, Any]]:
        return [r for r in self.audit(site) if r["event"] == event and r["details"].get("hash") == self.h]

    def events_hub(self, event: str) -> list[dict[str, Any]]:
        path = self.fed.hub.state_dir / "audit.jsonl"
        return [r for x in path.read_text().splitlines() if (r := json.loads(x))["event"] == event
                and r["details"].get("hash") == self.h]

    def hub_page(self) -> str:
        """The study's page in the hub's portal, as the researcher reads it."""
        v = Visitor(self.fed.hub.url)
        try:
            assert v.sign_in("rita").status_code == 303
            r = v.get(f"/portal/studies/{self.h}")
            assert r.status_code == 200, r.text
            return r.text
        finally:
            v.close()


def wait_for(predicate: Any, timeout: float = 120.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Held]:
    from mercia.federation.auth import TokenStore

    root = tmp_path_factory.mktemp("output-check")
    sites = {"north": make_site(root / "north.duckdb", persons=3000, seed=1),
             "south": make_site(root / "south.duckdb", persons=3000, seed=2, first_person_id=100_000)}
    fed = Federation(root, sites, node_config={"hold_results": True})
    extra: dict[str, dict[str, str]] = {}
    for site in sites:  # tokens the running node reads from its token file
        store = TokenStore(root / f"node_{site}" / "tokens.json")
        extra[site] = {"other-custodian": store.issue(f"custodian-other-{site}", "custodian", ["other"])}
    extra["north"]["south-custodian"] = fed.nodes["south"].tokens["custodian"]
    with fed:
        node_accounts(fed.nodes["north"]).add_user("cal", "custodian", [PROJECT], PASSWORD)
        node_accounts(fed.nodes["north"]).add_user("adam", "admin", ["*"], PASSWORD)
        hub_accounts(fed.hub).add_user("rita", "researcher", [PROJECT], PASSWORD)
        with fed.client() as client:
            h = client.submit(small_study("held study"), project=PROJECT)["hash"]
        fed.approve_all(h)
        for node in fed.nodes.values():
            assert node.wait_status(h, {"held", "failed", "finished"}, timeout=300)["status"] == "held"
        yield Held(fed, h, extra)


# ---- held ------------------------------------------------------------------------------------------------------------
def test_a_finished_run_is_held_and_the_hub_shows_it(held: Held) -> None:
    for site in ("north", "south"):
        rec = held.status(site)
        assert rec["status"] == "held" and rec["runs"] == 1 and rec["released_at"] is None, rec
        assert [e["details"]["run"] for e in held.events(site, "results.held")] == [1]
        assert held.events(site, "release") == []  # nothing released yet
    from mercia.federation.hub.dispatcher import HELD

    def both_held() -> Any:
        with held.fed.client() as client:
            s = client.status(held.h)
        return s if {x["status"] for x in s["sites"]} == {"held"} else None

    s = wait_for(both_held, what="the hub shows both sites held")
    assert s["status"] == "open" and {x["detail"] for x in s["sites"]} == {HELD}
    page = held.hub_page()
    assert page.count("held for the custodian&#39;s output check") == 2, page


def test_held_results_leave_by_no_route(held: Held) -> None:
    """Every node route about a study, and GET held, asked with the hub's token and a researcher's."""
    with held.client("north", "hub") as c:
        spec = c.get("/openapi.json").json()
    bodies = {"release": {"run": 1, "reason": "x"}, "withhold": {"run": 1, "reason": "x"},
              "rounds": {"analysis": "cox_adjusted", "model": "cox", "beta": [0.0]}}
    tried = 0
    for path, methods in spec["paths"].items():
        if "{content_hash}" not in path and path != f"{API}/held":
            continue
        for method in methods:
            url = path.replace("{content_hash}", held.h)
            body = bodies.get(path.rsplit("/", 1)[-1]) if method == "post" else None
            for who in ("hub", "researcher"):
                with held.client("north", who) as c:
                    r = c.request(method.upper(), url, json=body)
                tried += 1
                text = r.text
                assert "cohort_counts" not in text and '"tables"' not in text and '"score"' not in text, (path, who)
                assert r.status_code in ((200,) if path == f"{API}/studies/{{content_hash}}" and who == "hub"
                                         else (403, 409)), (method, path, who, r.status_code, text)
    assert tried >= 2 * 7
    with held.client("north", "hub") as c:
        r = c.get(f"{API}/studies/{held.h}/results")
        assert r.status_code == 409 and "output check" in r.json()["detail"]
    # the portal's pages serve no one without a portal session (a bearer token is not one)
    with held.client("north", "hub") as c:
        for page in (f"/portal/held/{held.h}", f"/portal/studies/{held.h}/results", "/portal/held"):
            r = c.get(page, follow_redirects=False)
            assert r.status_code == 303 and "/portal/sign-in" in r.headers["location"], page
    # and the researcher at the hub has nothing yet
    with held.fed.client() as client, pytest.raises(Exception, match="409"):
        client.results(held.h)


def test_only_a_custodian_of_the_project_at_this_node_decides(held: Held) -> None:
    expected = {"admin": 403, "hub": 403, "researcher": 403, "other-custodian": 404, "south-custodian": 401}
    for who, code in expected.items():
        for action, body in (("release", {"run": 1}), ("withhold", {"run": 1, "reason": "no"})):
            with held.client("north", who) as c:
                r = c.post(f"{API}/studies/{held.h}/{action}", json=body)
            assert r.status_code == code, (who, action, r.text)
        with held.client("north", who) as c:
            assert c.get(f"{API}/studies/{held.h}/held").status_code in ((200,) if who == "admin" else (403, 404, 401))
    assert held.status("north")["status"] == "held"


def test_bad_decisions_are_one_clear_line(held: Held) -> None:
    with held.client("north", "custodian") as c:
        r = c.post(f"{API}/studies/{held.h}/withhold", json={"run": 1})
        assert r.status_code == 422 and "reason" in r.json()["detail"], r.text
        r = c.post(f"{API}/studies/{held.h}/withhold", json={"run": 1, "reason": "   "})
        assert r.status_code == 422 and r.json()["detail"].startswith("reason:"), r.text
        r = c.post(f"{API}/studies/{'0' * 64}/release", json={"run": 1})
        assert r.status_code == 404 and "no study" in r.json()["detail"]
        r = c.post(f"{API}/studies/{held.h}/release", json={"run": 2})
        assert r.status_code == 409 and r.json()["detail"].startswith("run:"), r.text
        r = c.post(f"{API}/studies/{held.h}/release", json={"run": 1, "results_sha256": "0" * 64})
        assert r.status_code == 409 and r.json()["detail"].startswith("results_sha256:"), r.text
        r = c.post(f"{API}/studies/{held.h}/release", json={"reason": "fine"})
        assert r.status_code == 422 and "run" in r.json()["detail"], r.text
    assert held.status("north")["status"] == "held"
    assert held.events("north", "release") == [] and held.events("north", "results.withheld") == []


def test_the_portal_refuses_what_the_api_refuses(held: Held) -> None:
    url = held.fed.nodes["north"].url
    with held.client("north", "custodian") as c:
        digest = c.get(f"{API}/studies/{held.h}/held").json()["results_sha256"]
    form = {"hash": held.h, "run": "1", "results_sha256": digest, "reason": ""}
    admin = Visitor(url)
    cal = Visitor(url)
    try:
        assert admin.sign_in("adam").status_code == 303
        page = admin.get(f"/portal/held/{held.h}")
        assert page.status_code == 200 and "Release these results" not in page.text  # sees, cannot decide
        assert admin.post(f"/portal/held/{held.h}/release", form).status_code == 403
        assert cal.sign_in("cal").status_code == 303
        assert cal.post(f"/portal/held/{held.h}/release", form, csrf=False).status_code == 403  # no CSRF token
        r = cal.post(f"/portal/held/{held.h}/withhold", form)  # no reason
        assert r.status_code == 422 and "reason: say why the results are withheld" in r.text
        r = cal.post(f"/portal/held/{held.h}/release", {**form, "hash": "f" * 64})
        assert r.status_code == 400 and "hash: the form confirms package ffff" in r.text
        r = cal.post(f"/portal/held/{held.h}/release", {**form, "run": "2"})
        assert r.status_code == 409 and "run: study" in r.text
    finally:
        admin.close()
        cal.close()
    assert held.status("north")["status"] == "held"


# ---- the decisions ---------------------------------------------------------------------------------------------------
def test_the_custodian_reads_then_releases_and_the_hub_gets_exactly_those_tables(held: Held) -> None:
    north_url = held.fed.nodes["north"].url
    with held.client("north", "custodian") as c:
        listed = c.get(f"{API}/held").json()
        seen = c.get(f"{API}/studies/{held.h}/held").json()
    assert [(x["hash"], x["run"]) for x in listed["held"]] == [(held.h, 1)]
    assert sorted(listed["held"][0]["tables"]) == sorted(t["name"] for t in seen["tables"]) and seen["tables"]
    cal = Visitor(north_url)
    try:
        assert cal.sign_in("cal").status_code == 303
        assert held.h in cal.get("/portal/held").text
        page = cal.get(f"/portal/held/{held.h}")
        assert page.status_code == 200
        parser = Cells()
        parser.feed(page.text)
        assert sorted(parser.tables) == sorted(t["name"] for t in seen["tables"])
        numbers = 0
        for t in seen["tables"]:
            shown = parser.tables[t["name"]]
            if not t["rows"]:
                assert shown == [["No rows released"]]
                continue
            for got, row in zip(shown, t["rows"], strict=True):
                assert got == ["–" if v is None else json.dumps(v) if isinstance(v, int | float) else str(v)
                               for v in row]
                numbers += sum(isinstance(v, int | float) and not isinstance(v, bool) for v in row)
        assert numbers > 0
        assert seen["results_sha256"] in page.text and 'name="run" value="1"' in page.text
        r = cal.post(f"/portal/held/{held.h}/release", {"hash": held.h, "run": "1",
                                                        "results_sha256": seen["results_sha256"],
                                                        "reason": "checked against the protocol"})
        assert r.status_code == 303 and r.headers["location"] == f"/portal/held?done=released&study={held.h}"
        assert "Released the results of held study" in cal.get(r.headers["location"]).text
    finally:
        cal.close()
    rec = held.status("north")
    assert rec["status"] == "finished" and rec["output_checked_by"] == "cal" and rec["released_at"] is not None
    # south's custodian withholds through the API
    with held.client("south", "custodian") as c:
        run = c.get(f"{API}/held").json()["held"][0]["run"]
        r = c.post(f"{API}/studies/{held.h}/withhold", json={"run": run, "reason": WITHHOLD_REASON})
        assert r.status_code == 200 and r.json()["status"] == "withheld", r.text
        assert r.json()["output_reason"] == WITHHOLD_REASON
        # decided: neither decision again
        for action in ("release", "withhold"):
            again = c.post(f"{API}/studies/{held.h}/{action}", json={"run": run, "reason": "again"})
            assert again.status_code == 409 and "withheld, not held" in again.json()["detail"]
    with held.client("south", "hub") as c:
        r = c.get(f"{API}/studies/{held.h}/results")
        assert r.status_code == 409 and WITHHOLD_REASON in r.json()["detail"] and "cohort_counts" in WITHHOLD_REASON
    with held.client("north", "custodian") as c:
        again = c.post(f"{API}/studies/{held.h}/release", json={"run": 1})
        assert again.status_code == 409 and "finished, not held" in again.json()["detail"]
        assert c.get(f"{API}/held").json()["held"] == []

    # the hub: north collected (exactly the tables read), south withheld with its reason, study closed
    def closed() -> Any:
        with held.fed.client() as client:
            s = client.status(held.h)
        return s if s["status"] == "closed" else None

    s = wait_for(closed, what="the hub closes the study")
    sites = {x["site"]: x for x in s["sites"]}
    assert sites["north"]["status"] == "collected" and sites["north"]["detail"] is None  # no longer "held"
    assert sites["south"]["status"] == "withheld" and sites["south"]["detail"] == WITHHOLD_REASON
    with held.fed.client() as client:
        res = client.results(held.h)
    assert sorted(res["sites"]) == ["north"]
    got = res["sites"]["north"]
    assert got["tables"] == seen["tables"]  # every number, as the custodian read it
    assert got["disclosure"] == seen["disclosure"] and got["manifest"] == seen["manifest"]
    from mercia.federation.node.output_check import results_sha256

    assert results_sha256(got["tables"], got["disclosure"], got["manifest"]) == seen["results_sha256"]

    # the audit: each decision once, naming the hash, the run and the results; both chains whole
    [release] = held.events("north", "release")
    assert release["actor"] == "cal" and release["details"]["run"] == 1 and release["details"]["via"] == "portal"
    assert release["details"]["results_sha256"] == seen["results_sha256"]
    [withheld] = held.events("south", "results.withheld")
    assert withheld["actor"] == "custodian-south" and withheld["details"]["reason"] == WITHHOLD_REASON
    assert held.events("south", "release") == []
    assert [e["details"]["site"] for e in held.events_hub("results.collected")] == ["north"]
    for path in [n.state_dir / "audit.jsonl" for n in held.fed.nodes.values()] + [
            held.fed.hub.state_dir / "audit.jsonl"]:
        v = verify_log(path)
        assert v.ok, (path, v.problems[:3])
    page = held.hub_page()
    assert "withheld by the custodian" in page and WITHHOLD_REASON in page and "released" in page



# ---- the CLI, on the node's machine ------------------------------------------------------------------------------------
def test_the_cli_lists_releases_and_withholds_held_runs(tmp_path: Path) -> None:
    """`mercia node held | release | withhold` on a node's state (two held runs written as a run leaves
    them), with the same checks and audit lines as the API; the queue file of an older version (without
    the output-check columns) opens as it is."""
    import sqlite3
    import subprocess

    import yaml

    from federation_support import MERCIA, HubKey
    from mercia.federation.node.state import NodeStore
    from mercia.federation.node.worker import results_dir

    key = HubKey(tmp_path / "key")
    site = make_site(tmp_path / "site.duckdb", persons=3000, seed=1)
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"site": "w", "cdm": str(site), "state_dir": "state", "policy": "opensafely",
                                   "hub_public_key": str(key.public), "tokens": "tokens.json", "hold_results": True}))
    state = tmp_path / "state"
    state.mkdir()
    old = sqlite3.connect(state / "node.sqlite")  # the queue as an older node wrote it
    old.executescript("CREATE TABLE studies (hash TEXT PRIMARY KEY, name TEXT NOT NULL, project TEXT NOT NULL, "
                      "requested_by TEXT NOT NULL, package TEXT NOT NULL, signature TEXT NOT NULL, status TEXT NOT "
                      "NULL, submitted_at TEXT NOT NULL, updated_at TEXT NOT NULL, decided_by TEXT, reason TEXT, "
                      "error TEXT, runs INTEGER NOT NULL DEFAULT 0);")
    old.close()
    store = NodeStore(state / "node.sqlite")
    hashes = []
    for name in ("one", "two"):
        pkg = small_study(name)
        h = pkg.content_hash
        store.submit(h, name=name, project="p", requested_by="r", package=pkg.canonical(), signature="s", approved=True)
        assert store.claim_next() is not None
        out = results_dir(state, h)
        (out / "results").mkdir(parents=True)
        (out / "results" / "cohort_counts.json").write_text(json.dumps(
            {"name": "cohort_counts", "columns": ["cohort", "persons"], "rows": [["a", 15]]}))
        (out / "disclosure.json").write_text("{}")
        (out / "manifest.json").write_text(json.dumps({"package_hash": h}))
        store.hold(h)
        hashes.append(h)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MERCIA, "node", *args, "--config", str(cfg)], capture_output=True, text=True,
                              timeout=120)

    listed = run("held")
    assert listed.returncode == 0 and hashes[0][:16] in listed.stdout and hashes[1][:16] in listed.stdout
    r = run("withhold", hashes[1][:12], "--run", "1", "--reason", " ")
    assert r.returncode != 0 and "reason: say why the results are withheld" in r.stderr and "Traceback" not in r.stderr
    r = run("release", hashes[0][:12], "--run", "2")
    assert r.returncode != 0 and "run: study" in r.stderr
    r = run("release", hashes[0][:12], "--run", "1")
    assert r.returncode == 0 and f"released the results of {hashes[0]} (one), run 1" in r.stdout, r.stderr
    r = run("withhold", hashes[1][:12], "--run", "1", "--reason", "cohort_counts: not this year")
    assert r.returncode == 0 and "withheld the results" in r.stdout, r.stderr
    r = run("release", hashes[1][:12], "--run", "1")
    assert r.returncode != 0 and "is withheld, not held" in r.stderr
    assert store.require(hashes[0]).status == "finished" and store.require(hashes[0]).released_at is not None
    rec = store.require(hashes[1])
    assert rec.status == "withheld" and rec.output_reason == "cohort_counts: not this year" and rec.released_at is None
    lines = [json.loads(x) for x in (state / "audit.jsonl").read_text().splitlines()]
    assert [(x["event"], x["details"]["hash"], x["details"]["via"]) for x in lines] == [
        ("release", hashes[0], "cli"), ("results.withheld", hashes[1], "cli")]
    assert verify_log(state / "audit.jsonl").ok


def test_hold_results_is_off_unless_set_and_a_bad_value_is_one_line(tmp_path: Path) -> None:
    import yaml

    from mercia.errors import ConfigError
    from mercia.federation.node.config import load_node_config

    base = {"site": "w", "cdm": "site.duckdb", "state_dir": "state", "hub_public_key": "k.pem", "tokens": "t.json"}
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(base))
    assert load_node_config(tmp_path / "node.yaml").hold_results is False  # results leave on approval, as before
    (tmp_path / "node.yaml").write_text(yaml.safe_dump({**base, "hold_results": True}))
    assert load_node_config(tmp_path / "node.yaml").hold_results is True
    (tmp_path / "node.yaml").write_text(yaml.safe_dump({**base, "hold_results": "sometimes"}))
    with pytest.raises(ConfigError, match="hold_results") as e:
        load_node_config(tmp_path / "node.yaml")
    assert "\n" not in str(e.value).strip(), str(e.value)
