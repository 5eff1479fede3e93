"""The reports in a real browser (Debian's Chromium driven by Playwright): the tutorial's study report,
the same study with a comparative cohort analysis, and the demo's reports (one site's, and the hub's
pooled report, built by the hub's own renderer from the three sites' released tables).

Each page must: draw every plot (plotly.js embedded, nothing from the network), log no console error,
not overflow sideways (the page, and every table and plot), and give every plot an accessible name.
Then the specific things a new user saw wrong: forest-plot ticks, age-group order, "∞", ids and days
with decimals, empty sections, cohort ids for names, the pooled forest plot. Full-page screenshots
go to the artefacts folder (tests/artifacts/ or $MERCIA_TEST_ARTIFACTS) for a person to look at.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from federation_support import make_site

# One worker builds the reports once (scripts/test.sh runs pytest with --dist loadfile).
pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorials" / "first-study.md"
PERSONS_PER_SITE = 50_000  # the smallest demo federation where a site releases the adjusted Cox model
SITES = ["northgate", "fenwold", "ashby"]
NARROW = 800  # px: a second, narrow window every page must fit too


def tutorial_package(folder: Path) -> Path:
    """The tutorial's study.yaml and gliclazide.yaml, exactly as the tutorial shows them."""
    blocks = re.findall(r"```yaml\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    study = next(b for b in blocks if b.startswith("name: SGLT2"))
    glic = next(b for b in blocks if b.startswith("name: Gliclazide"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.yaml").write_text(study)
    (folder / "gliclazide.yaml").write_text(glic)
    return folder / "study.yaml"


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from mercia.cdm import Cdm
    from mercia.federation.hub.pool import pool_results
    from mercia.report.hub import render_pooled_report
    from mercia.study import example_package
    from mercia.study.package import StudyPackage, load_package
    from mercia.study.runner import run_study

    root = tmp_path_factory.mktemp("browser")
    sites = {name: make_site(root / "sites" / f"{name}.duckdb", persons=PERSONS_PER_SITE, seed=2026, profile=i,
                             first_person_id=1 + i * PERSONS_PER_SITE) for i, name in enumerate(SITES)}
    out: dict[str, Path] = {}
    # The tutorial, at the OpenSAFELY policy as it says; then with a comparative cohort analysis added.
    study = tutorial_package(root / "my_study")
    with Cdm.open(sites["northgate"]) as cdm:
        run_study(load_package(study), cdm, root / "tutorial", site_policy="opensafely")
        data = yaml.safe_load(study.read_text())
        data["analyses"].append({"type": "cohort_method", "name": "cm", "target": "sglt2",
                                 "comparator": "gliclazide", "outcomes": ["hf_admission"]})
        run_study(StudyPackage.from_dict(data, base_dir=study.parent), cdm, root / "cohort_method",
                  site_policy="opensafely")
    out["tutorial"] = root / "tutorial" / "report.html"
    out["cohort_method"] = root / "cohort_method" / "report.html"
    # The demo study at three sites under SACRO, pooled by the hub's code.
    pkg = example_package()
    results: dict[str, Any] = {}
    for name, db in sites.items():
        with Cdm.open(db) as cdm:
            run = run_study(pkg, cdm, root / "demo" / name, site_policy="sacro", site=name)
        results[name] = {"tables": [t.to_dict() for t in run.tables.values()]}
    out["demo_site"] = root / "demo" / "ashby" / "report.html"
    pooled = pool_results(results)
    assert pooled["tables"], "no site released a model: the pooled report would have no forest plot"
    meta = {"name": pkg.name, "hash": pkg.content_hash, "project": "demo", "submitted_by": "researcher",
            "submitted_at": "2026-12-07T12:00:00+00:00", "status": "closed"}
    html = render_pooled_report(meta, [{"site": s, "status": "collected"} for s in SITES], pooled)
    out["demo_pooled"] = root / "demo" / "pooled.html"
    out["demo_pooled"].write_text(html, encoding="utf-8")
    return out


# What every page is measured by, in the browser.
_MEASURE = """() => {
  const doc = document.documentElement, body = document.body.getBoundingClientRect();
  const right = body.right - parseFloat(getComputedStyle(document.body).paddingRight);  // the content box
  const over = [];
  for (const el of document.querySelectorAll('table, figure, .plotly-graph-div, pre, img, svg')) {
    if (el.closest('.plotly-graph-div') && !el.classList.contains('plotly-graph-div')) continue;
    const r = el.getBoundingClientRect();
    if (r.right > right + 1 || el.scrollWidth > el.clientWidth + 1)
      over.push(el.tagName + ' ' + (el.getAttribute('aria-label') || el.textContent.slice(0, 60)));
  }
  const unlabelled = [];
  for (const el of document.querySelectorAll('.plotly-graph-div, img, svg')) {
    if (el.closest('.plotly-graph-div') && !el.classList.contains('plotly-graph-div')) continue;
    const box = el.getBoundingClientRect();
    if (box.width * box.height === 0 || box.right <= 0 || box.bottom <= 0) continue;  // not shown (plotly's
    // text-measuring svg sits off-screen)
    const fig = el.closest('figure');
    const name = el.getAttribute('aria-label') || el.getAttribute('alt') || el.querySelector(':scope > title')
      || (fig && (fig.getAttribute('aria-label') || fig.querySelector('figcaption')));
    if (!name) unlabelled.push(el.tagName + ' ' + el.id);
  }
  const plots = [...document.querySelectorAll('.plotly-graph-div')].map(gd => ({
    label: (gd.closest('figure') || gd).getAttribute('aria-label') || '',
    drawn: !!gd.querySelector('svg.main-svg'),
    traces: (gd.data || []).map(t => t.name || ''),
    ticks: [...gd.querySelectorAll('.xtick text')].map(t => t.textContent),
    area: gd._fullLayout ? gd._fullLayout._size.w / gd._fullLayout.width : null,  // share of the width plotted
  }));
  const tables = [...document.querySelectorAll('table')].map(t => ({
    head: [...t.querySelectorAll('thead th')].map(th => th.textContent),
    rows: [...t.querySelectorAll('tbody tr')].map(tr => [...tr.children].map(td => td.textContent)),
  }));
  const sections = [...document.querySelectorAll('h2')].map(h => h.textContent);
  return {scroll: [doc.scrollWidth, doc.clientWidth], over, unlabelled, plots, tables, sections,
          text: document.body.innerText};
}"""


@pytest.fixture(scope="module")
def pages(chromium: Any, reports: dict[str, Path], artifacts_dir: Path) -> dict[str, dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for name, path in reports.items():
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        requests: list[str] = []
        page.on("request", lambda r, requests=requests: requests.append(r.url))
        page.goto(path.as_uri(), wait_until="load")
        page.wait_for_function("() => [...document.querySelectorAll('.plotly-graph-div')]"
                               ".every(gd => gd.querySelector('svg.main-svg'))", timeout=20_000)
        page.screenshot(path=str(artifacts_dir / f"report-{name}.png"), full_page=True)
        seen[name] = {**page.evaluate(_MEASURE), "errors": errors,
                      "requests": [u for u in requests if not u.startswith("file:")]}
        # A narrow window (half a laptop screen): the page must still fit, plots re-laid out.
        page.set_viewport_size({"width": NARROW, "height": 900})
        page.wait_for_timeout(300)
        narrow = page.evaluate(_MEASURE)
        seen[name]["narrow"] = {"scroll": narrow["scroll"], "over": narrow["over"]}
        page.close()
    return seen


NAMES = ["tutorial", "cohort_method", "demo_site", "demo_pooled"]


@pytest.mark.parametrize("name", NAMES)
def test_page_draws_every_plot_without_errors_or_network(pages: dict[str, dict[str, Any]], name: str) -> None:
    page = pages[name]
    assert page["errors"] == []
    assert page["requests"] == []  # nothing loaded from anywhere but the file itself
    assert page["plots"] and all(p["drawn"] for p in page["plots"])


@pytest.mark.parametrize("name", NAMES)
def test_page_does_not_overflow_sideways(pages: dict[str, dict[str, Any]], name: str) -> None:
    for page in (pages[name], pages[name]["narrow"]):
        width, client = page["scroll"]
        assert width <= client, f"the page is {width}px wide in a {client}px window"
        assert page["over"] == []


@pytest.mark.parametrize("name", NAMES)
def test_every_plot_has_an_accessible_name(pages: dict[str, dict[str, Any]], name: str) -> None:
    assert pages[name]["unlabelled"] == []
    assert all(p["label"] for p in pages[name]["plots"])


@pytest.mark.parametrize("name", NAMES)
def test_no_infinity_no_empty_sections(pages: dict[str, dict[str, Any]], name: str) -> None:
    page = pages[name]
    assert "∞" not in page["text"]
    assert "in this study." not in page["text"]  # the old "No prediction model in this study."
    if name != "demo_pooled":
        assert "Prediction models" not in page["sections"]


@pytest.mark.parametrize("name", NAMES)
def test_ids_and_days_are_whole_numbers(pages: dict[str, dict[str, Any]], name: str) -> None:
    whole = re.compile(r"(^|_)(id|days|subjects|events|persons|entries|n)(_|$)|^n_")
    checked = 0
    for t in pages[name]["tables"]:
        for i, h in enumerate(t["head"]):
            if whole.search(h):
                for row in t["rows"]:
                    assert "." not in row[i], (h, row)
                    checked += 1
    assert checked or name == "demo_pooled"  # the pooled report has no id or count columns


def _forest_ticks(page: dict[str, Any], label: str) -> list[str]:
    plots = [p for p in page["plots"] if label in p["label"]]
    assert plots, [p["label"] for p in page["plots"]]
    return plots[0]["ticks"]


@pytest.mark.parametrize(("name", "label"), [("demo_pooled", "per-site and pooled"),
                                             ("demo_site", "hazard ratios")])
def test_forest_plot_axis_reads_as_ratios(pages: dict[str, dict[str, Any]], name: str, label: str) -> None:
    """Ticks are ratios in increasing order with 1 among them, never the bare mantissas of a log
    axis's minor ticks ("4 5 6 7 8 9 1 2 3")."""
    ticks = _forest_ticks(pages[name], label)
    values = [float(t) for t in ticks]
    assert values == sorted(values) and len(set(values)) == len(values) >= 3, ticks
    assert 1.0 in values


def test_smd_plot_leaves_the_width_to_the_data(pages: dict[str, dict[str, Any]]) -> None:
    """The balance plot's axis labels took 80% of its width; now the plotting area has most of it."""
    for name in ("tutorial", "demo_site"):
        smd = next(p for p in pages[name]["plots"] if p["label"].startswith("Standardized mean differences"))
        assert smd["area"] >= 0.5, smd["area"]


def test_age_groups_in_natural_order(pages: dict[str, dict[str, Any]]) -> None:
    for name in ("tutorial", "demo_site"):
        for t in pages[name]["tables"]:
            if "level" in t["head"]:
                ages = [r[1] for r in t["rows"] if r[0] == "age_group"]
                starts = [int(re.match(r"\d+", a).group()) for a in ages]  # type: ignore[union-attr]
                assert len(starts) > 3 and starts == sorted(starts), ages
            if "age_group" in t["head"]:
                col = t["head"].index("age_group")
                labels = list(dict.fromkeys(r[col] for r in t["rows"]))
                nums = [int(re.match(r"\d+", a).group()) for a in labels if a != "Total"]  # type: ignore[union-attr]
                assert nums == sorted(nums), labels


def test_new_users_by_year_shows_cohort_names(pages: dict[str, dict[str, Any]]) -> None:
    table = next(t for t in pages["demo_site"]["tables"] if t["head"][:2] == ["cohort", "period"])
    assert {r[0] for r in table["rows"]} == {"sglt2 (SGLT2 inhibitor new users)", "gliclazide (Gliclazide new users)"}
    assert "cohort_id" not in table["head"]


def test_pooled_report_has_a_forest_of_sites_and_pooled(pages: dict[str, dict[str, Any]]) -> None:
    forest = next(p for p in pages["demo_pooled"]["plots"] if "per-site and pooled" in p["label"])
    assert {"site", "pooled"} <= set(forest["traces"])


def test_km_numbers_at_risk_are_not_carried_forward(pages: dict[str, dict[str, Any]]) -> None:
    """Between released steps the number at risk is a range, not the start count repeated."""
    for name in ("tutorial", "demo_site"):
        risk = next(t for t in pages[name]["tables"] if t["head"][:2] == ["cohort", "day 0"])
        cells = [c for r in risk["rows"] for c in r[2:]]
        assert any("–" in c or "≤" in c for c in cells), risk
        assert "median (days)" in pages[name]["text"]


def test_incidence_plots_mark_suppressed_strata(pages: dict[str, dict[str, Any]]) -> None:
    """Where the incidence table holds suppressed rows, the plots carry a 'suppressed' series."""
    page = pages["tutorial"]
    table = next(t for t in page["tables"] if "rate_per_1000py" in t["head"])
    assert any("—" in r for r in table["rows"])
    incidence = [p for p in page["plots"] if "incidence by" in p["label"]]
    assert incidence and any("suppressed (not released)" in p["traces"] for p in incidence)
    by_year = next(p for p in incidence if "calendar year" in p["label"])
    assert any(t.startswith("age group") for t in by_year["traces"])  # strata, not only the margin
