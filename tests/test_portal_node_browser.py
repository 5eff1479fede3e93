"""The custodian's portal in a real browser (Debian's Chromium driven by Playwright) against a node on
127.0.0.1 (issue 17, item 5).

Packages reach the node as the hub sends them (signed with the hub's key): version 1 of a study,
approved and run; its version 2 and another study, pending. The custodian signs in by keyboard, sees
the queue, opens version 2 and reads its difference from version 1, approves it, rejects the other
with a reason, sees the audit log verified and reads the released results of version 1, whose every
number is the released tables' (as GET studies/{hash}/results sends them). Every page is checked with
axe-core (no serious or critical violation); screenshots go to the artefacts folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation_support import HubKey, NodeServer, make_site, small_study
from test_portal import PASSWORD
from test_portal_browser import check_a11y, sign_in
from test_portal_node import node_accounts, study_v2, submit

pytestmark = pytest.mark.browser


class Site:
    def __init__(self, server: NodeServer, v1: str, v2: str, other: str) -> None:
        self.server, self.v1, self.v2, self.other = server, v1, v2, other


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("portal-node-browser")
    key = HubKey(root / "hubkey")
    server = NodeServer(root / "node", cdm=make_site(root / "site.duckdb", persons=3000, seed=1), hub_key=key,
                        site="leeds")
    with server:
        v1 = submit(server, key, small_study())
        server.approve(v1)
        server.wait_status(v1, {"finished"}, timeout=240)
        v2 = submit(server, key, study_v2())
        other = submit(server, key, small_study("another study"))
        node_accounts(server).add_user("cal", "custodian", ["*"], PASSWORD)
        node_accounts(server).add_user("adam", "admin", ["*"], PASSWORD)
        yield Site(server, v1, v2, other)


@contextlib.contextmanager
def watched_context(chromium: Any, base_url: str) -> Iterator[Any]:
    """A browser context on a node's portal that records its requests and console errors, and fails if
    anything was fetched from elsewhere."""
    # bypass_csp: the test injects axe-core (the hub's browser test checks the policy itself)
    ctx = chromium.new_context(viewport={"width": 1280, "height": 900}, base_url=base_url, bypass_csp=True)
    ctx.requests = []  # type: ignore[attr-defined]
    ctx.errors = []  # type: ignore[attr-defined]
    ctx.on("request", lambda r: ctx.requests.append(r.url))
    ctx.on("console", lambda m: ctx.errors.append(m.text) if m.type == "error" else None)
    yield ctx
    assert [u for u in ctx.requests if not u.startswith(base_url)] == []  # nothing from elsewhere
    ctx.close()


@pytest.fixture
def context(chromium: Any, site: Site) -> Iterator[Any]:
    with watched_context(chromium, site.server.url) as ctx:
        yield ctx


def shot(page: Any, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"node-portal-{name}.png"), full_page=True)
    check_a11y(page, name)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), (name, page.evaluate(
        "[...document.querySelectorAll('main *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1"
        " && !e.closest('.table-wrap, pre')).slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + e.id)"))


def test_the_custodian_reviews_decides_and_reads_the_results(context: Any, site: Site, artifacts_dir: Path) -> None:
    page = context.new_page()
    sign_in(page, "cal", artifacts_dir, shot="node-portal-sign-in")
    # the queue: the two pending packages
    pending = page.locator("#pending")
    assert pending.get_by_role("link", name="small test study").is_visible()
    assert pending.get_by_role("link", name="another study").is_visible()
    shot(page, artifacts_dir, "queue")
    # version 2 and its difference from version 1
    pending.get_by_role("link", name="small test study").click()
    page.wait_for_url(f"**/portal/studies/{site.v2}")
    assert page.locator("#study-hash").inner_text() == site.v2
    diff = page.locator("#diff")
    assert diff.locator(".diff-del").all_inner_texts() == ["-  interval: year"]
    assert diff.locator(".diff-add").all_inner_texts() == ["+  interval: month"]
    assert page.locator("#analyses").get_by_text("cox_adjusted").is_visible()
    assert page.locator("#policy").is_visible()
    shot(page, artifacts_dir, "package")
    page.set_viewport_size({"width": 400, "height": 900})  # narrow: nothing wider than the page
    shot(page, artifacts_dir, "package-narrow")
    page.set_viewport_size({"width": 1280, "height": 900})
    # approve it
    page.get_by_label("Reason").fill("as in the protocol, version 2")
    page.get_by_role("button", name="Approve this hash").click()
    page.wait_for_url(f"**/portal/studies/{site.v2}?done=approved")
    assert page.get_by_role("status").inner_text() == f"Approved {site.v2}."
    assert page.get_by_role("button", name="Approve this hash").count() == 0
    shot(page, artifacts_dir, "approved")
    # reject the other, with a reason (without one the page says so first)
    page.goto("/portal/")
    page.locator("#pending").get_by_role("link", name="another study").click()
    page.get_by_role("button", name="Reject this hash").click()
    page.wait_for_load_state()
    assert "reason: say why the package is rejected" in page.get_by_role("alert").inner_text()
    shot(page, artifacts_dir, "reject-without-reason")
    assert context.errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    context.errors.clear()  # that page's status, as intended
    page.get_by_label("Reason").fill("outcome definition not agreed with the site")
    page.get_by_role("button", name="Reject this hash").click()
    page.wait_for_url(f"**/portal/studies/{site.other}?done=rejected")
    assert "rejected" in page.locator("dl.fields").first.inner_text()
    assert "outcome definition not agreed with the site" in page.locator("dl.fields").first.inner_text()
    with site.server.client("custodian") as c:
        assert c.get(f"/api/v1/studies/{site.other}").json()["status"] == "rejected"
        assert c.get(f"/api/v1/studies/{site.v2}").json()["status"] in ("approved", "running", "finished")
    # the audit log, verified
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    page.wait_for_url("**/portal/audit")
    assert page.locator("#verification").inner_text().startswith("Verified: all")
    assert page.locator("#audit").get_by_text("study.rejected").first.is_visible()
    shot(page, artifacts_dir, "audit")
    # the released results of version 1: every number the released tables'
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Approval queue").click()
    page.locator(f'a[href="/portal/studies/{site.v1}/results"]').click()  # v2 may be finished too by now
    page.wait_for_url(f"**/portal/studies/{site.v1}/results")
    with site.server.client("hub") as c:
        sent = c.get(f"/api/v1/studies/{site.v1}/results").json()
    from mercia.portal.node_pages import cell

    for t in sent["tables"]:
        rows = page.locator(f'table[data-table="{t["name"]}"] tbody tr')
        if not t["rows"]:
            continue
        assert rows.count() == len(t["rows"])
        for i, row in enumerate(t["rows"]):
            assert rows.nth(i).locator("td").all_inner_texts() == [cell(v) for v in row], (t["name"], i)
    shot(page, artifacts_dir, "results")
    assert context.errors == []


def test_refusals_in_the_browser(context: Any, site: Site, artifacts_dir: Path) -> None:
    page = context.new_page()
    sign_in(page, "adam")  # an admin sees the queue but has no decision form
    page.goto(f"/portal/studies/{site.v1}")
    assert page.get_by_role("button", name="Approve this hash").count() == 0
    node_accounts(site.server).expire_sessions_of("adam")
    page.goto("/portal/audit")
    assert "/portal/sign-in?next=" in page.url
    assert page.get_by_role("status").inner_text() == "Your session has ended: sign in again."
    shot(page, artifacts_dir, "expired")
    r = page.goto("/portal/studies/" + "0" * 64)
    assert "/portal/sign-in" in page.url and r is not None
