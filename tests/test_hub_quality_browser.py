"""The hub's data-quality page of a project in a real browser (Debian's Chromium driven by Playwright),
served by a real hub over HTTP on 127.0.0.1 with two nodes side by side. Each custodian starts a run with
`mercia node quality-run`; one site has planted faults (events after death, values out of range). The page
draws every plot with nothing from the network, logs no console error, fits 1280 and 800 px windows,
shows both sites side by side with the numbers of the hub's JSON answer, and names the failed concepts.
Screenshots go to the artefacts folder."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from federation_support import PROJECT, Federation, make_site
from test_report_browser import _MEASURE, NARROW

pytestmark = [pytest.mark.browser, pytest.mark.slow]

API = "/api/v1"


def _faulty_site(path: Path) -> Path:
    from mercia.cdm import Cdm
    from mercia.synth import DEFAULT_SITES, generate_site

    with Cdm.open(path) as cdm:
        generate_site(cdm, persons=1500, seed=43, profile=DEFAULT_SITES[1], first_person_id=50_001,
                      faults={"events_after_death": 0.3, "values_out_of_range": 0.05})
    return path


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    from mercia.cli import app

    root = tmp_path_factory.mktemp("hubqualitybrowser")
    sites = {"northgate": make_site(root / "northgate.duckdb", persons=1500, seed=41),
             "southbank": _faulty_site(root / "southbank.duckdb")}
    with Federation(root, sites) as federation:
        for node in federation.nodes.values():
            r = CliRunner().invoke(app, ["node", "quality-run", "--node", node.url, "--token",
                                         node.tokens["custodian"]], env={"MERCIA_TOKEN": "", "MERCIA_NODE": ""})
            assert r.exit_code == 0 and r.output.startswith("started a data-quality run"), r.output
        for node in federation.nodes.values():
            deadline = time.monotonic() + 240
            with node.client("custodian") as c:
                while c.get(f"{API}/quality", params={"project": PROJECT}).status_code != 200:
                    assert time.monotonic() < deadline, f"no summary at {node.site}"
                    time.sleep(0.5)
        yield federation


@pytest.fixture(scope="module")
def answer(fed: Federation) -> dict[str, Any]:
    with httpx.Client(base_url=fed.hub.url, headers={"Authorization": f"Bearer {fed.researcher_token}"},
                      timeout=120) as c:
        r = c.get(f"{API}/quality", params={"project": PROJECT})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def page(chromium: Any, fed: Federation, artifacts_dir: Path) -> Any:
    page = chromium.new_page(viewport={"width": 1280, "height": 900},
                             extra_http_headers={"Authorization": f"Bearer {fed.researcher_token}"})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    url = f"{fed.hub.url}{API}/quality/report?project={PROJECT}"
    resp = page.goto(url, wait_until="load")
    assert resp is not None and resp.status == 200
    page.wait_for_function("() => [...document.querySelectorAll('.plotly-graph-div')]"
                           ".every(gd => gd.querySelector('svg.main-svg'))", timeout=30_000)
    page.screenshot(path=str(artifacts_dir / "hub-quality.png"), full_page=True)
    page.errors, page.requests, page.url_ = errors, requests, url  # type: ignore[attr-defined]
    yield page
    page.close()


def test_draws_every_plot_without_errors_or_network(page: Any) -> None:
    seen = page.evaluate(_MEASURE)
    assert page.errors == []
    assert [u for u in page.requests if u != page.url_] == []  # the page only: plotly.js is inside it
    assert seen["plots"] and all(p["drawn"] for p in seen["plots"])
    assert seen["unlabelled"] == []
    for p in seen["plots"]:  # every trend plot has both sites
        assert sorted(p["traces"]) == ["northgate", "southbank"], p


@pytest.mark.parametrize("width", [1280, NARROW])
def test_fits_the_window(page: Any, artifacts_dir: Path, width: int) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    page.wait_for_timeout(300)
    seen = page.evaluate(_MEASURE)
    if width == NARROW:
        page.screenshot(path=str(artifacts_dir / "hub-quality-narrow.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    width_px, client = seen["scroll"]
    assert width_px <= client, f"the page is {width_px}px wide in a {client}px window"
    assert seen["over"] == []


def _table(page: Any, heading: str) -> list[list[str]]:
    return page.evaluate(
        """(h) => { const t = [...document.querySelectorAll('h2')].find(x => x.textContent === h)
                      .nextElementSibling;
                    return [[...t.querySelectorAll('thead th')].map(c => c.textContent),
                            ...[...t.querySelectorAll('tbody tr')].map(r => [...r.cells].map(c => c.textContent))]; }""",
        heading)


def _num(text: str) -> float | None:
    return None if text in ("—", "") else float(text.replace(",", ""))


def test_the_sites_side_by_side_are_the_hubs_answer(page: Any, answer: dict[str, Any]) -> None:
    head, *rows = _table(page, "Sites side by side")
    assert [r[0] for r in rows] == ["northgate", "southbank"]
    for row, site in zip(rows, answer["sites"], strict=True):
        cells = dict(zip(head, row, strict=True))
        assert cells["DQ run"] == site["run_date"]
        assert _num(cells["pass rate %"]) == pytest.approx(site["pass_rate"], abs=0.01)
        for name, key in (("conformance %", "pass_rate_conformance"), ("completeness %", "pass_rate_completeness"),
                          ("plausibility %", "pass_rate_plausibility")):
            assert _num(cells[name]) == pytest.approx(site[key], abs=0.01)
        for name, key in (("checks", "checks"), ("passed", "passed"), ("failed", "failed_checks"),
                          ("not applicable", "not_applicable"), ("errors", "errors")):
            assert _num(cells[name]) == site[key], name
    south = next(s for s in answer["sites"] if s["site"] == "southbank")
    north = next(s for s in answer["sites"] if s["site"] == "northgate")
    assert south["failed_checks"] > north["failed_checks"]  # the planted faults


def test_failed_checks_name_their_concepts(page: Any, answer: dict[str, Any]) -> None:
    head, *rows = _table(page, "Failed checks")
    assert len(rows) == len(answer["failed"])
    concept = head.index("concept")
    named = [r for r in rows if r[concept]]
    assert named, "the out-of-range values fail concept-level checks at southbank"
    for r in named:
        f = next(f for f in answer["failed"] if f["site"] == r[0] and f["conceptId"] and r[concept].endswith(
            f"({f['conceptId']})"))
        assert r[concept] == f"{f['conceptName']} ({f['conceptId']})" and f["conceptName"]
