"""The studies pages in a real browser (Debian's Chromium driven by Playwright) against a real hub and
two nodes on 127.0.0.1 (issue 17, item 4).

A researcher signs in, composes a small study in the composer (three pasted cohorts, four analyses whose
settings forms are made from their models), checks it and reads its YAML and hash, sends it to both
sites, watches each site's status change as the custodians approve it through the node's API, opens
the pooled report (plots drawn as SVG; a legend button hides a series), and downloads a released table
as CSV, and fits the Cox model by federated regression from the study's page; a second analysis of one
type is added in the composer. Every page is checked with axe-core (no serious or critical violation) and screenshotted into
the artefacts folder; nothing is loaded from another origin and no page logs an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from federation_support import PROJECT, Federation, make_site
from test_portal_browser import check_a11y
from test_portal_studies import HF, MEN, PERSONS, WOMEN, add_portal_user, expected_package

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("portal-studies-browser")
    sites = {"east": make_site(root / "east.duckdb", persons=PERSONS, seed=11),
             "west": make_site(root / "west.duckdb", persons=PERSONS, seed=12, first_person_id=100_000)}
    with Federation(root, sites) as f:
        add_portal_user(f, "rita", "researcher", [PROJECT])
        yield f


@pytest.fixture
def context(chromium: Any, fed: Federation) -> Iterator[Any]:
    # bypass_csp: the test injects axe-core (test_portal_browser checks the policy itself)
    ctx = chromium.new_context(viewport={"width": 1280, "height": 900}, base_url=fed.hub.url, bypass_csp=True,
                               accept_downloads=True)
    ctx.requests = []  # type: ignore[attr-defined]
    ctx.errors = []  # type: ignore[attr-defined]
    ctx.on("request", lambda r: ctx.requests.append(r.url))
    ctx.on("console", lambda m: ctx.errors.append(m.text) if m.type == "error" else None)
    yield ctx
    assert [u for u in ctx.requests if not u.startswith(fed.hub.url)] == []  # nothing from elsewhere
    ctx.close()


def shot(page: Any, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"portal-studies-{name}.png"), full_page=True)
    check_a11y(page, name)


def test_compose_submit_approve_and_read_the_report(context: Any, fed: Federation, artifacts_dir: Path) -> None:
    page = context.new_page()
    page.goto("/portal/sign-in")
    page.fill("#name", "rita")
    page.fill("#password", "correct horse battery staple")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/portal/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Studies").click()
    page.wait_for_url("**/portal/studies")
    shot(page, artifacts_dir, "list-empty")
    page.get_by_role("link", name="Compose a study").click()
    page.wait_for_url("**/portal/studies/new")
    shot(page, artifacts_dir, "composer")

    # compose: name, three cohorts (two pasted as JSON, one as YAML), four analyses
    page.get_by_label("Study name").fill("portal study")
    for n, (key, text) in enumerate((("women", WOMEN), ("men", MEN), ("hf", HF)), start=1):
        page.get_by_label(f"Cohort {n} key").fill(key)
        page.get_by_label(f"Cohort {n} definition (YAML or ATLAS JSON)").fill(text)
    page.locator("summary", has_text="cohort_entries:").click()
    page.get_by_label("Run cohort_entries").check()
    page.locator("#a-cohort_entries-cohorts").fill("women, men")
    page.locator("summary", has_text="incidence:").first.click()
    page.get_by_label("Run incidence").check()
    page.locator("#a-incidence-outcome").fill("hf")
    for dim in ("age_group", "sex"):
        page.locator(f"#a-incidence-settings-by-{dim}").uncheck()
    page.locator("summary", has_text="kaplan_meier:").click()
    page.get_by_label("Run kaplan_meier").check()
    page.locator("#a-kaplan_meier-targets").fill("women, men")
    page.locator("#a-kaplan_meier-outcome").fill("hf")
    page.locator("summary", has_text="cox:").click()
    page.get_by_label("Run cox").check()
    page.locator("#a-cox-target").fill("women")
    page.locator("#a-cox-comparator").fill("men")
    page.locator("#a-cox-outcome").fill("hf")
    page.locator("#a-cox-settings-sex").select_option("false")
    page.locator("#a-cox-settings-ph_test").select_option("false")
    shot(page, artifacts_dir, "composer-filled")

    # a mistake first: the page names the field
    page.locator("#a-kaplan_meier-settings-tar_start").fill("soon")
    page.get_by_role("button", name="Check the package").click()
    page.wait_for_load_state()
    assert "analysis kaplan_meier.settings.tar_start: 'soon' is not a whole number" in \
        page.get_by_role("alert").inner_text()
    shot(page, artifacts_dir, "composer-error")
    # the browser logs the page's status 400 as a failed load: that one, and nothing else
    assert [e for e in context.errors if "status of 400" not in e] == []
    context.errors.clear()
    assert page.locator("#a-kaplan_meier-settings-tar_start").is_visible()  # the analyses ticked stay open
    page.locator("#a-kaplan_meier-settings-tar_start").fill("0")
    page.get_by_role("button", name="Check the package").click()
    page.wait_for_load_state()

    # the YAML and the hash, as StudyPackage makes them
    want = expected_package("portal study").content_hash
    assert page.locator("#package-hash").inner_text() == want
    assert "kaplan_meier" in page.locator("#package-yaml").inner_text()
    shot(page, artifacts_dir, "checked")
    for site in ("east", "west"):
        page.get_by_label(f"{site} ({PROJECT})").check()
    page.get_by_role("button", name="Send to the sites").click()
    page.wait_for_url(f"**/portal/studies/{want}?sent=1")
    assert "Sent:" in page.get_by_role("status").first.inner_text()

    # pending approval at both sites, then approved by each custodian through the node's API
    page.wait_for_function("document.querySelectorAll('.status-pending_approval').length === 2", timeout=60_000)
    shot(page, artifacts_dir, "pending")
    for node in fed.nodes.values():
        node.approve(want)
    # the page refreshes itself; once closed it offers the report
    page.get_by_role("link", name="Read the pooled report").wait_for(timeout=120_000)
    assert page.locator(".status-collected").count() == 2
    shot(page, artifacts_dir, "released")

    page.get_by_role("link", name="Read the pooled report").click()
    page.wait_for_url(f"**/portal/studies/{want}/report")
    assert page.locator("svg#km0").is_visible() and page.locator("svg#inc0").is_visible()
    assert page.locator("svg#forest0").is_visible()  # the pooled Cox model
    rows = page.locator("#pooled tbody tr")
    assert rows.count() % 4 == 0 and rows.count() >= 4  # per term: east, west, pooled fixed and random
    assert rows.filter(has_text="treatment").count() == 4
    shot(page, artifacts_dir, "report")
    # a legend button hides its series (by keyboard)
    toggle = page.locator("button[data-toggles='km0-0']")
    toggle.focus()
    page.keyboard.press("Enter")
    assert toggle.get_attribute("aria-pressed") == "false"
    assert not page.locator("g[data-series='km0-0']").is_visible()
    page.keyboard.press("Enter")
    assert page.locator("g[data-series='km0-0']").is_visible()
    # hover: the point's released value in its title
    title = page.locator("g[data-series='km0-0'] .pt title").first.text_content()
    assert re.match(r"east: (wo)?men with hypertension: day \d+, survival ", title), title

    # download a released table as CSV
    page.locator("summary", has_text="east: cohort_counts").click()
    with page.expect_download() as info:
        page.get_by_role("link", name="Download east cohort_counts as CSV").click()
    path = info.value.path()
    got = pd.read_csv(path)
    assert list(got.columns) == ["cohort_id", "cohort", "cohort_name", "persons", "entries"]
    assert set(got["cohort"]) <= {"women", "men", "hf"}
    shot(page, artifacts_dir, "report-table")

    # federated regression from the study's page: the Cox model across both sites, by keyboard
    page.goto(f"/portal/studies/{want}")
    page.get_by_label("Analysis").select_option("cox")
    page.get_by_label("Model").select_option("cox")
    page.get_by_role("button", name="Fit across the finished sites").focus()
    page.keyboard.press("Enter")
    page.wait_for_load_state()
    page.locator("#fit-cox-cox").wait_for(timeout=120_000)
    assert "Fitted cox as a cox model across east, west." in page.get_by_role("status").first.inner_text()
    assert page.locator("#fit-cox-cox tbody th").first.inner_text() == "treatment"
    shot(page, artifacts_dir, "federated")

    # the list shows the study with each site's status
    page.goto("/portal/studies")
    assert page.locator("#studies").get_by_role("link", name="portal study").is_visible()
    shot(page, artifacts_dir, "list")
    # narrow window: nothing wider than the page
    page.set_viewport_size({"width": 400, "height": 900})
    page.goto(f"/portal/studies/{want}/report")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(page, artifacts_dir, "report-narrow")
    assert context.errors == []


def test_add_a_second_analysis_of_a_type(context: Any, artifacts_dir: Path) -> None:
    page = context.new_page()
    page.goto("/portal/sign-in")
    page.fill("#name", "rita")
    page.fill("#password", "correct horse battery staple")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/portal/")
    page.goto("/portal/studies/new")
    page.get_by_label("Study name").fill("two incidences")
    page.get_by_label("Analysis type").select_option("incidence")
    page.get_by_role("button", name="Add another analysis of this type").click()
    page.wait_for_load_state()
    assert "Added another incidence analysis (#2)" in page.get_by_role("status").first.inner_text()
    assert page.get_by_label("Study name").input_value() == "two incidences"  # what was typed stays
    second = page.locator("details#a-incidence-2")
    assert second.get_attribute("open") is not None and page.get_by_label("Run incidence #2").is_checked()
    assert page.locator("#a-incidence-2-name").input_value() == "incidence_2"
    second.scroll_into_view_if_needed()
    shot(page, artifacts_dir, "composer-two-incidences")
    assert context.errors == []
