"""The custodian's output check in a real browser (Debian's Chromium driven by Playwright) against a
node on 127.0.0.1 that holds results (node.yaml hold_results: true; issue 17, item 5).

Two packages reach the node as the hub sends them, are approved and run; both end held. The custodian
signs in by keyboard, opens "Results to check", reads the first run's tables (every number the API's
held results), releases them by keyboard; tries to withhold the second without a reason (the page says
so), then withholds it with one. Each page is checked with axe-core (no serious or critical violation)
and nothing on it is wider than the window; screenshots go to the artefacts folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation_support import HubKey, NodeServer, make_site, small_study
from test_portal import PASSWORD
from test_portal_browser import sign_in
from test_portal_node import node_accounts, submit
from test_portal_node_browser import shot, watched_context

pytestmark = pytest.mark.browser


class Site:
    def __init__(self, server: NodeServer, first: str, second: str) -> None:
        self.server, self.first, self.second = server, first, second


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("output-check-browser")
    key = HubKey(root / "hubkey")
    server = NodeServer(root / "node", cdm=make_site(root / "site.duckdb", persons=3000, seed=1), hub_key=key,
                        site="leeds", hold_results=True)
    with server:
        first = submit(server, key, small_study("first held study"))
        second = submit(server, key, small_study("second held study"))
        for h in (first, second):
            server.approve(h)
        for h in (first, second):
            assert server.wait_status(h, {"held", "failed"}, timeout=300)["status"] == "held"
        node_accounts(server).add_user("cal", "custodian", ["*"], PASSWORD)
        yield Site(server, first, second)


@pytest.fixture
def context(chromium: Any, site: Site) -> Iterator[Any]:
    with watched_context(chromium, site.server.url) as ctx:
        yield ctx


def test_the_custodian_checks_releases_and_withholds(context: Any, site: Site, artifacts_dir: Path) -> None:
    from mercia.portal.node_pages import cell

    page = context.new_page()
    sign_in(page, "cal")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Results to check").click()
    page.wait_for_url("**/portal/held")
    held = page.locator("#held")
    assert held.get_by_role("link", name="Check the results of first held study").is_visible()
    assert held.get_by_role("link", name="Check the results of second held study").is_visible()
    shot(page, artifacts_dir, "held")
    # the first run: every table as the hub would receive it
    held.get_by_role("link", name="Check the results of first held study").click()
    page.wait_for_url(f"**/portal/held/{site.first}")
    with site.server.client("custodian") as c:
        seen = c.get(f"/api/v1/studies/{site.first}/held").json()
    assert page.locator("#results-sha256").inner_text() == seen["results_sha256"]
    assert page.locator("#run").inner_text() == "1"
    checked = 0
    for t in seen["tables"]:
        rows = page.locator(f'table[data-table="{t["name"]}"] tbody tr')
        if not t["rows"]:
            continue
        assert rows.count() == len(t["rows"])
        for i, row in enumerate(t["rows"]):
            assert rows.nth(i).locator("td").all_inner_texts() == [cell(v) for v in row], (t["name"], i)
            checked += 1
    assert checked > 0
    shot(page, artifacts_dir, "held-run")
    page.set_viewport_size({"width": 400, "height": 900})  # narrow: nothing wider than the page
    shot(page, artifacts_dir, "held-run-narrow")
    page.set_viewport_size({"width": 1280, "height": 900})
    # release by keyboard: the reason, then Tab to the Release button, Enter
    page.focus("#reason")
    page.keyboard.type("checked against the protocol")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Release these results"
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/portal/held?done=released&study={site.first}")
    assert page.get_by_role("status").inner_text() == f"Released the results of first held study ({site.first}), run 1."
    assert page.locator("#held").get_by_role("link", name="Check the results of first held study").count() == 0
    shot(page, artifacts_dir, "released")
    with site.server.client("hub") as c:
        sent = c.get(f"/api/v1/studies/{site.first}/results").json()
    assert sent["tables"] == seen["tables"]
    # the second: withhold, first without a reason
    page.locator("#held").get_by_role("link", name="Check the results of second held study").click()
    page.wait_for_url(f"**/portal/held/{site.second}")
    page.get_by_role("button", name="Withhold these results").click()
    page.wait_for_load_state()
    assert "reason: say why the results are withheld" in page.get_by_role("alert").inner_text()
    shot(page, artifacts_dir, "withhold-without-reason")
    assert context.errors == ["Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)"]
    context.errors.clear()  # that page's status, as intended
    page.get_by_label("Reason").fill("attrition_hf_admission: a step the site does not release")
    page.get_by_role("button", name="Withhold these results").click()
    page.wait_for_url(f"**/portal/held?done=withheld&study={site.second}")
    assert page.locator("#held").get_by_text("No results are waiting").is_visible()
    with site.server.client("hub") as c:
        rec = c.get(f"/api/v1/studies/{site.second}").json()
        assert rec["status"] == "withheld" and rec["output_reason"].startswith("attrition_hf_admission")
        assert c.get(f"/api/v1/studies/{site.second}/results").status_code == 409
    # the study's page says who decided, and the audit log has both decisions
    page.goto(f"/portal/studies/{site.second}")
    assert "Results withheld by" in page.locator("dl.fields").first.inner_text()
    shot(page, artifacts_dir, "withheld-study")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    page.wait_for_url("**/portal/audit")
    assert page.locator("#verification").inner_text().startswith("Verified: all")
    assert page.locator("#audit").get_by_text("results.withheld").first.is_visible()
    shot(page, artifacts_dir, "audit-output-check")
    assert context.errors == []
