"""bench/bench_portal.py finds the portal's pages by itself and reads the server's own time of each.

The benchmark measures every GET page of the portal read from the route table of the app a hub runs
(pages added later are measured without editing it), fills their path parameters from samples and
names what it could not fill; it takes the server's time from the portal's Server-Timing header.
Checked here on a hub app built in-process (no server, no data).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench() -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        import bench_portal
    finally:
        sys.path.remove(str(BENCH))
    return bench_portal


@pytest.fixture(scope="module")
def hub_app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mercia.federation.hub import init_hub, load_hub_config
    from mercia.federation.hub.app import create_app

    config, _, _ = init_hub(tmp_path_factory.mktemp("hub") / "hub")
    return create_app(load_hub_config(config), start_dispatcher=False)


def test_every_get_page_of_the_portal_is_found_in_the_route_table(bench: Any, hub_app: Any) -> None:
    from fastapi.routing import APIRoute
    from starlette.routing import Mount

    routes = bench.get_routes(hub_app)
    # an independent reading: the portal's mount, and its GET routes with the mount's prefix
    mount = next(r for r in hub_app.routes if isinstance(r, Mount) and r.path == "/portal")
    expected = sorted("/portal" + r.path for r in mount.routes if isinstance(r, APIRoute) and "GET" in r.methods)
    assert routes == expected
    for page in ("/portal/", "/portal/sign-in", "/portal/concepts", "/portal/concepts/{concept_id}",
                 "/portal/admin/users/{name}"):
        assert page in routes
    assert "/portal/sign-out" not in routes  # POST only
    assert not [r for r in routes if r.startswith("/api/")]  # the API is the peer, not a page


def test_path_parameters_are_filled_or_named(bench: Any) -> None:
    samples = {"concept_id": "201826", "content_hash": "ab" * 32, "site": "north", "fmt": "csv"}
    assert bench.fill("/portal/concepts/{concept_id}", samples) == ("/portal/concepts/201826", [])
    assert bench.fill("/portal/studies/{content_hash}/results/{site}/{table}.{fmt}", samples) == (
        None, ["table"])
    assert bench.fill("/portal/x/{id:path}/{site}", {"id": "a/b", "site": "s"}) == ("/portal/x/a/b/s", [])
    assert bench.fill("/portal/", {}) == ("/portal/", [])


def test_a_portal_answer_carries_the_servers_own_time(bench: Any, hub_app: Any) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(hub_app)  # no `with`: the hub's services are not started
    r = client.get("/portal/sign-in")
    assert r.status_code == 200
    ms = bench.server_ms(r)
    assert ms is not None and 0 <= ms < 60_000, r.headers.get("server-timing")
    assert r.headers["server-timing"].startswith("app;dur=")
    assert bench.server_ms(client.get("/portal/static/portal.css")) is not None


def test_a_generated_vocabulary_adds_the_pages_a_full_vocabulary_makes_slow(bench: Any, hub_app: Any) -> None:
    lm = {"common": "tablet", "rare": "zuzu", "code": "OMOP7", "root": 100000000, "set_concept": 100000118}
    pages = bench.vocabulary_pages(lm)
    shown = [t + (f"?{q}" if q else "") for t, q in pages]
    assert shown == ["/portal/concepts?text=tablet", "/portal/concepts?text=zuzu", "/portal/concepts?text=OMOP7",
                     "/portal/concepts/{root_id}", "/portal/concepts/{set_concept_id}",
                     "/portal/concept-sets/{big_set_id}"]
    samples = {"root_id": "100000000", "set_concept_id": "100000118", "big_set_id": "3"}
    routes = bench.get_routes(hub_app)
    for template, _ in pages:  # every one is a page of the portal, filled from the samples run() adds
        assert bench.PARAM.sub(lambda m: "{" + m.group(1) + "}", template).replace("root_id", "concept_id").replace(
            "set_concept_id", "concept_id").replace("big_set_id", "set_id") in routes
        assert bench.fill(template, samples)[0] is not None
    assert bench.API_PEERS[("hub", "/portal/concepts?text=zuzu")] == "/api/v1/concepts?text=zuzu"
    assert bench.API_PEERS[("hub", "/portal/concepts/{root_id}")] == "/api/v1/concepts/{root_id}"
