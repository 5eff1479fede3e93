"""The data-quality dashboard in a real browser (Debian's Chromium driven by Playwright), built by the CLI
from a small synthetic site with planted faults: it draws every plot with nothing from the network, logs
no console error, fits 1280 and 800 px windows, sorts and filters the failed checks, and opens a table's
and a field's checks from a failed check's link. Screenshots go to the artefacts folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from test_report_browser import _MEASURE, NARROW

pytestmark = pytest.mark.browser

FAULTS = {"events_after_death": 0.1, "end_before_start": 0.05, "values_out_of_range": 0.05,
          "orphan_foreign_keys": 0.01}


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from mercia.cdm import Cdm
    from mercia.cli import app
    from mercia.synth import DEFAULT_SITES, generate_site

    root = tmp_path_factory.mktemp("dq-dash")
    db = root / "site.duckdb"
    with Cdm.open(db) as cdm:
        truth = generate_site(cdm, persons=500, seed=7, profile=DEFAULT_SITES[0], faults=FAULTS)
    runner = CliRunner()
    for args in (["dq", "check", "--cdm", str(db), "--out", str(root / "dq")],
                 ["dq", "profile", "--cdm", str(db), "--out", str(root / "dq")],
                 ["dq", "dashboard", str(root / "dq")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    return root / "dq" / "dashboard.html", truth


@pytest.fixture(scope="module")
def page(chromium: Any, dashboard: tuple[Path, dict], artifacts_dir: Path) -> Any:
    path, _ = dashboard
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri(), wait_until="load")
    page.wait_for_function("() => [...document.querySelectorAll('.plotly-graph-div')]"
                           ".every(gd => gd.querySelector('svg.main-svg'))", timeout=20_000)
    page.screenshot(path=str(artifacts_dir / "dq-dashboard.png"), full_page=True)
    page.errors, page.requests = errors, requests  # type: ignore[attr-defined]
    yield page
    page.close()


def test_draws_every_plot_without_errors_or_network(page: Any) -> None:
    seen = page.evaluate(_MEASURE)
    assert page.errors == []
    assert [u for u in page.requests if not u.startswith("file:")] == []
    labels = [p["label"] for p in seen["plots"]]
    assert labels == ["Records per month, by domain", "Persons by year of birth",
                      "Length of the first observation period (days)", "Measurement values, by concept and unit"]
    assert all(p["drawn"] for p in seen["plots"])
    assert seen["unlabelled"] == []
    trends = next(p for p in seen["plots"] if p["label"].startswith("Records per month"))
    assert {"condition_occurrence", "drug_exposure", "measurement", "visit_occurrence"} <= set(trends["traces"])


@pytest.mark.parametrize("width", [1280, NARROW])
def test_fits_the_window(page: Any, artifacts_dir: Path, width: int) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    page.wait_for_timeout(300)
    # open every table and field: the drill-down's tables must fit too
    page.evaluate("() => document.querySelectorAll('details').forEach(d => d.open = true)")
    seen = page.evaluate(_MEASURE)
    if width == NARROW:
        page.screenshot(path=str(artifacts_dir / "dq-dashboard-narrow.png"), full_page=False)
    page.evaluate("() => document.querySelectorAll('details').forEach(d => d.open = false)")
    page.set_viewport_size({"width": 1280, "height": 900})
    width_px, client = seen["scroll"]
    assert width_px <= client, f"the page is {width_px}px wide in a {client}px window"
    assert seen["over"] == []


def _failed_rows(page: Any) -> list[list[str]]:
    return page.evaluate("() => [...document.querySelectorAll('table.failed tbody tr')].filter(r => !r.hidden)"
                         ".map(r => [...r.cells].map(c => c.textContent))")


def test_failed_checks_are_the_planted_faults_and_sort_and_filter(page: Any, dashboard: tuple[Path, dict]) -> None:
    _, truth = dashboard
    rows = _failed_rows(page)
    checks = {r[1] for r in rows}
    assert {f["check"]["name"] for f in truth["planted_faults"]} <= checks
    # sort by % violated, by keyboard: focus the header's button and press Enter
    head = page.locator("table.failed thead button", has_text="% violated")
    head.focus()
    page.keyboard.press("Enter")
    pct = [float(r[7]) for r in _failed_rows(page)]
    assert pct == sorted(pct)
    page.keyboard.press("Enter")
    pct = [float(r[7]) for r in _failed_rows(page)]
    assert pct == sorted(pct, reverse=True)
    assert page.locator("table.failed th", has_text="% violated").get_attribute("aria-sort") == "descending"
    # filter: by text, then by category
    page.fill("#filter-text", "plausiblevaluehigh")
    shown = _failed_rows(page)
    assert shown and all(r[1] == "plausibleValueHigh" for r in shown)
    page.fill("#filter-text", "")
    page.select_option("#filter-category", "Conformance")
    shown = _failed_rows(page)
    assert shown and all(r[2].startswith("Conformance") for r in shown)
    assert page.locator("#filter-count").text_content() == f"{len(shown)} shown"
    page.select_option("#filter-category", "")
    assert len(_failed_rows(page)) == len(rows)


def test_a_failed_check_links_to_its_field(page: Any, artifacts_dir: Path) -> None:
    link = page.locator("table.failed a", has_text="DRUG_EXPOSURE.drug_exposure_start_date").first
    link.focus()
    page.keyboard.press("Enter")
    page.wait_for_timeout(200)
    field = page.locator("#f-drug_exposure-drug_exposure_start_date")
    assert field.evaluate("d => d.open") and page.locator("#t-drug_exposure").evaluate("d => d.open")
    rows = field.locator("table tbody tr")
    assert rows.count() > 0 and "plausibleStartBeforeEnd" in field.inner_text()
    field.screenshot(path=str(artifacts_dir / "dq-dashboard-field.png"))
    # a field's summary opens and closes by keyboard
    for target in ("#t-person", "#f-person-year_of_birth"):
        page.locator(f"{target} > summary").focus()
        page.keyboard.press("Enter")
        assert page.locator(target).evaluate("d => d.open")
