"""The hub over real HTTP with two small nodes: who may do what, a node that is down (status shown,
retried with back-off, the study finished with the site that answered, its late result not counted),
and the Python client's errors."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from federation_support import PROJECT, Federation, make_site, small_study
from mercia.federation.auth import TokenStore
from mercia.federation.client import Client, ClientError

API = "/api/v1"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    folder = tmp_path_factory.mktemp("hubapi")
    sites = {"north": make_site(folder / "north.duckdb", persons=3000, seed=1),
             "south": make_site(folder / "south.duckdb", persons=3000, seed=2, profile=1, first_person_id=100_000)}
    with Federation(folder, sites) as f:
        yield f


def test_health_only(fed: Federation) -> None:
    assert httpx.get(f"{fed.hub.url}/health").json() == {"status": "ok"}


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/studies"), ("POST", "/studies"), ("GET", f"/studies/{'0' * 64}"), ("POST", "/feasibility"),
    ("GET", f"/studies/{'0' * 64}/results"), ("POST", f"/studies/{'0' * 64}/close"), ("GET", "/nodes"),
    ("POST", "/nodes"), ("POST", "/users"), ("POST", "/projects"),
])
def test_unauthenticated_requests_are_refused(fed: Federation, method: str, path: str) -> None:
    assert httpx.request(method, f"{fed.hub.url}{API}{path}", json={}).status_code == 401


def test_roles_and_projects_are_enforced(fed: Federation) -> None:
    with fed.admin() as admin:
        outsider = admin.add_user("mallory", "researcher", ["another"])["token"]
        with pytest.raises(ClientError) as e:  # no hub route accepts a custodian: the hub issues none
            admin.add_user("carol", "custodian", [PROJECT])
        assert e.value.status == 422
    # A custodian token put in the hub's token file by other means is still refused by every hub route.
    custodian = TokenStore(fed.hub.folder / "tokens.json").issue("carol", "custodian", [PROJECT])
    pkg = small_study("roles at the hub")
    with fed.hub.client(outsider) as c:
        with pytest.raises(ClientError) as e:
            c.submit(pkg, project=PROJECT)
        assert e.value.status == 403 and "not a member" in str(e.value)
    with fed.hub.client(custodian) as c:
        with pytest.raises(ClientError) as e:
            c.submit(pkg, project=PROJECT)
        assert e.value.status == 403
    with fed.client() as c:  # a researcher may not administer
        with pytest.raises(ClientError) as e:
            c.add_user("eve", "admin", ["*"])
        assert e.value.status == 403
        with pytest.raises(ClientError) as e:
            c.submit(pkg, project=PROJECT, sites=["north", "nowhere"])
        assert e.value.status == 403
        state = c.submit(pkg, project=PROJECT)
    with fed.hub.client(outsider) as c:  # another project's study is not visible, nor is its existence
        with pytest.raises(ClientError) as e:
            c.status(state["hash"])
        assert e.value.status == 404
        assert all(s["hash"] != state["hash"] for s in c.studies())


def test_study_lifecycle_and_idempotent_submission(fed: Federation) -> None:
    pkg = small_study("hub lifecycle")
    with fed.client() as c:
        first = c.submit(pkg, project=PROJECT)
        again = c.submit(pkg, project=PROJECT)
        assert first["hash"] == again["hash"] == pkg.content_hash
        with pytest.raises(ClientError) as e:
            c.results(pkg.content_hash)
        assert e.value.status == 409
        fed.approve_all(pkg.content_hash)
        closed = c.wait(pkg.content_hash, timeout=180)
        assert {s["site"]: s["status"] for s in closed["sites"]} == {"north": "collected", "south": "collected"}
        res = c.results(pkg.content_hash)
        # a closed study always has its pooling (it is written in the same transaction as the close)
        assert res["pooled"]["sites"] == ["north", "south"] and res["pooled"]["excluded"] == []
        assert set(res["sites"]) == {"north", "south"}
        assert "cohort_counts" in {t["name"] for t in res["sites"]["north"]["tables"]}


def test_node_down_is_shown_retried_and_left_out_when_closed(fed: Federation) -> None:
    south = fed.nodes["south"]
    pkg = small_study("south is down")
    south.kill()
    try:
        with fed.client() as c:
            c.submit(pkg, project=PROJECT)
            fed.nodes["north"].wait_status(pkg.content_hash, {"pending_approval"})
            fed.nodes["north"].approve(pkg.content_hash)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                sites = {s["site"]: s for s in c.status(pkg.content_hash)["sites"]}
                if sites["north"]["status"] == "collected" and sites["south"]["attempts"] >= 3:
                    break
                time.sleep(0.3)
            assert sites["north"]["status"] == "collected"
            down = sites["south"]
            assert not down["reachable"] and down["attempts"] >= 3 and "did not answer" in down["last_error"]
            assert down["status"] == "queued"
            # back-off: the attempts grow far slower than the hub's poll interval would allow
            t0, a0 = time.monotonic(), down["attempts"]
            time.sleep(2.0)
            a1 = {s["site"]: s for s in c.status(pkg.content_hash)["sites"]}["south"]["attempts"]
            assert a1 - a0 <= 3, (a0, a1, time.monotonic() - t0)
            closed = c.close_study(pkg.content_hash)
            assert {s["site"]: s["status"] for s in closed["sites"]} == {"north": "collected", "south": "excluded"}
            res = c.results(pkg.content_hash)
            assert set(res["sites"]) == {"north"} and res["pooled"]["excluded"] == ["south"]
    finally:
        south.start()
    # the late site comes back: the closed study does not count it
    time.sleep(1.5)
    con = sqlite3.connect(fed.hub.state_dir / "hub.sqlite")
    rows = con.execute("SELECT site FROM site_results WHERE hash = ?", (pkg.content_hash,)).fetchall()
    assert rows == [("north",)]


def test_client_errors_say_what_is_wrong(fed: Federation) -> None:
    with pytest.raises(ClientError, match="http"):
        Client("hub.example.org", "mct_x")
    with pytest.raises(ClientError, match="no token"):
        Client(fed.hub.url, "")
    with Client(fed.hub.url, "mct_not_a_token") as c:
        with pytest.raises(ClientError) as e:
            c.studies()
        assert e.value.status == 401
    with Client("http://127.0.0.1:9", "mct_x", timeout=2) as c, pytest.raises(ClientError, match="did not answer"):
        c.studies()
    with fed.client() as c:
        with pytest.raises(ClientError) as e:
            c.submit({"name": "no cohorts"}, project=PROJECT)
        assert e.value.status == 400
        with pytest.raises(ClientError) as e:
            c.status("0" * 64)
        assert e.value.status == 404
