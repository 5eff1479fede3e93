"""The portal's released counts per site are the nodes' released answers, over real HTTP (issue 17).

A hub and two nodes on 127.0.0.1. A researcher signed in to the portal asks a concept's persons count
at the sites of their project; every number on the page must be the one the node itself releases for
that question (asked directly of the node) and the one the hub's API gives a token of the same role and
project: the portal adds no number of its own. The question is charged to the researcher's own privacy
budget at each site (`hub/<name>`), as through the API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from federation_support import PROJECT, Federation, make_site
from test_portal import PASSWORD, T, Visitor, add_user

pytestmark = pytest.mark.slow  # a hub and two nodes as processes

T2D = 201826


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("portalcounts")
    sites = {"east": make_site(root / "east.duckdb", persons=1500, seed=31),
             "west": make_site(root / "west.duckdb", persons=1500, seed=32, first_person_id=50_001)}
    federation = Federation(root, sites)
    data = yaml.safe_load(federation.hub.config_path.read_text())
    data["portal"] = {"vocabulary": str(make_site(root / "vocabulary.duckdb", persons=1500, seed=31))}
    federation.hub.config_path.write_text(yaml.safe_dump(data))
    with federation:
        add_user(federation.hub, "rosa", "researcher", [PROJECT])
        yield federation


def _page_counts(html: str) -> dict[str, int | None]:
    table = html.split('id="released-counts"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<th scope="row">([^<]+)</th><td class="num">([^<]+)</td>', table)
    return {site: (None if value == "–" else int(value)) for site, value in rows}


def _node_answer(fed: Federation, site: str, concept_id: int, descendants: bool,
                 records: bool = False) -> dict[str, Any]:
    with fed.nodes[site].client("researcher") as c:
        r = c.post("/api/v1/concepts/count", json={"concept_id": concept_id, "descendants": descendants,
                                                   "project": PROJECT, "records": records})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("descendants", [True, False])
def test_the_pages_counts_are_the_released_counts(fed: Federation, descendants: bool) -> None:
    v = Visitor(fed.hub.url)
    try:
        assert v.sign_in("rosa").status_code == 303
        form = {"project": PROJECT, **({"descendants": "1"} if descendants else {})}
        r = v.post(f"/portal/concepts/{T2D}/counts", form)
        assert r.status_code == 200, T(r)
        shown = _page_counts(r.text)
    finally:
        v.close()
    assert sorted(shown) == ["east", "west"]
    # the API, asked by a token of the same role and project
    with fed.admin() as admin:
        token = admin.add_user("rosa-api", "researcher", [PROJECT])["token"]
    api = httpx.post(f"{fed.hub.url}/api/v1/concepts/count", headers={"Authorization": f"Bearer {token}"},
                     json={"concept_id": T2D, "descendants": descendants, "project": PROJECT}, timeout=60).json()
    for a in api["sites"]:
        node = _node_answer(fed, a["site"], T2D, descendants)
        assert shown[a["site"]] == a["persons"] == node["persons"]
        assert shown[a["site"]] is not None and shown[a["site"]] % 5 == 0  # opensafely rounding
    # rosa's own budget at each node was charged, through the hub's attestation
    for node in fed.nodes.values():
        lines = [json.loads(x) for x in (node.state_dir / "audit.jsonl").read_text().splitlines()]
        assert any(x.get("event") == "concept_count.released" and x["details"].get("budget_of") == "hub/rosa"
                   for x in lines)
    hub_events = [json.loads(x) for x in (fed.hub.state_dir / "audit.jsonl").read_text().splitlines()]
    assert any(e["event"] == "concept_count.asked" and e["actor"] == "rosa" for e in hub_events)


def _page_records(html: str) -> dict[str, int | None]:
    table = html.split('id="released-counts"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<th scope="row">([^<]+)</th><td class="num">[^<]+</td><td class="num records">([^<]+)</td>',
                      table)
    return {site: (None if value == "–" else int(value)) for site, value in rows}


def test_records_on_the_page_are_the_released_records(fed: Federation) -> None:
    """Records too: every number in the table is the API's released persons or records, and the page
    says each person's records are counted up to the sites' cap."""
    v = Visitor(fed.hub.url)
    try:
        assert v.sign_in("rosa").status_code == 303
        r = v.post(f"/portal/concepts/{T2D}/counts", {"project": PROJECT, "descendants": "1", "records": "1"})
        assert r.status_code == 200, T(r)
        persons, records = _page_counts(r.text), _page_records(r.text)
        # without the box, no records are asked and none shown
        plain = v.post(f"/portal/concepts/{T2D}/counts", {"project": PROJECT, "descendants": "1"})
        assert 'class="num records"' not in plain.text and "records-cap" not in plain.text
    finally:
        v.close()
    assert sorted(records) == ["east", "west"]
    with fed.admin() as admin:
        token = admin.add_user("rosa-api-records", "researcher", [PROJECT])["token"]
    api = httpx.post(f"{fed.hub.url}/api/v1/concepts/count", headers={"Authorization": f"Bearer {token}"},
                     json={"concept_id": T2D, "descendants": True, "project": PROJECT, "records": True},
                     timeout=60).json()
    released = []
    for a in api["sites"]:
        assert (persons[a["site"]], records[a["site"]]) == (a["persons"], a["records"])
        assert a["records"] is not None and a["records"] % 5 == 0
        released += [a["persons"], a["records"]]
    table = r.text.split('id="released-counts"', 1)[1].split("</table>", 1)[0]
    numbers = [int(x) for x in re.findall(r'<td class="num(?: records)?">(\d+)</td>', table)]
    assert sorted(numbers) == sorted(released)
    cap = re.search(r'id="records-cap">([^<]+)<', r.text).group(1)  # type: ignore[union-attr]
    assert "counted up to 10 per person" in " ".join(cap.split())


def test_password_is_not_logged(fed: Federation) -> None:
    for path in [fed.hub.state_dir / "audit.jsonl", fed.hub.folder / "server.log"]:
        assert PASSWORD not in path.read_text()


@pytest.mark.browser
def test_the_counts_in_the_browser(fed: Federation, chromium: Any, artifacts_dir: Any) -> None:
    """A researcher asks the sites from the concept's page in Chromium; every number in the counts table
    is the site's released answer (or the budget the site says it has charged), and the page passes
    axe-core."""
    from test_portal_browser import check_a11y, sign_in

    ctx = chromium.new_context(viewport={"width": 1280, "height": 900}, base_url=fed.hub.url, bypass_csp=True)
    try:
        page = ctx.new_page()
        sign_in(page, "rosa")
        page.goto(f"/portal/concepts/{T2D}")
        page.get_by_role("button", name="Ask the sites").click()
        page.wait_for_url(f"**/portal/concepts/{T2D}/counts")
        table = page.locator("#released-counts")
        rows = [[c.inner_text() for c in row.locator("th, td").all()] for row in table.locator("tbody tr").all()]
        caption = table.locator("caption").inner_text()
        page.screenshot(path=str(artifacts_dir / "portal-concept-counts.png"), full_page=True)
        check_a11y(page, "concept counts")
    finally:
        ctx.close()
    assert sorted(r[0] for r in rows) == sorted(fed.nodes)
    for site, persons, records, note in rows:  # records are asked by default (the box is checked)
        node = _node_answer(fed, site, T2D, True, records=True)
        assert persons == str(node["persons"]) and records == str(node["records"])
        spent = f"{node['privacy']['spent']:.2f}"
        assert re.findall(r"\d+(?:\.\d+)?", note) == [spent], note
    assert re.findall(r"\d+", caption.replace("Type 2 diabetes", "")) == []
