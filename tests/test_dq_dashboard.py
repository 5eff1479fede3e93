"""The data-quality dashboard's content against the check and profile results it is built from: every
number on the page is the results' (the overview counted independently here with pandas, the failed
checks, every check of the drill-down, the profile's plots and tables), and the CLI's bad input."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import lxml.html
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cli import app
from mercia.dq import run_checks
from mercia.dq.output import write_results
from mercia.dq.profile import run_profile, write_profile
from mercia.report.dq import (
    birth_years_figure,
    load_folder,
    measurement_figure,
    observation_length_figure,
    records_by_month_figure,
    render_dashboard,
)
from mercia.synth import DEFAULT_SITES, generate_site

FAULTS = {"events_after_death": 0.1, "end_before_start": 0.05, "values_out_of_range": 0.05,
          "orphan_foreign_keys": 0.01, "missing_required_fields": 0.02}


@cache
def _folder(root: str) -> Path:
    out = Path(root) / "dq"
    with Cdm.open() as cdm:
        generate_site(cdm, persons=300, seed=11, profile=DEFAULT_SITES[0], faults=FAULTS)
        write_results(run_checks(cdm), out, source_name="northgate")
        write_profile(run_profile(cdm), out)
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(str(tmp_path_factory.mktemp("dqdash")))


@pytest.fixture(scope="module")
def page(folder: Path) -> lxml.html.HtmlElement:
    return lxml.html.fromstring(render_dashboard(load_folder(folder)))


@pytest.fixture(scope="module")
def checks(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "checks.parquet")


def _rows(table: lxml.html.HtmlElement) -> list[list[str]]:
    return [[c.text_content().strip() for c in tr] for tr in table.xpath("./tbody/tr")]


def _int(text: str) -> int | None:
    return None if text == "—" else int(text.replace(",", ""))


def test_overview_counts_are_the_checks(page: lxml.html.HtmlElement, checks: pd.DataFrame) -> None:
    (table,) = page.xpath("//table[@class='overview']")
    got = {}
    category = None
    for cells in _rows(table):
        if len(cells) == 7:
            category, cells = cells[0], cells[1:]
        got[(category, cells[0])] = cells[1:]
    # independently: a check is exactly one of not applicable / error / failed / passed
    na = checks.notApplicable == 1
    err = (checks.isError == 1) & ~na
    fail = (checks.failed == 1) & ~na & ~err
    ok = (checks.passed == 1)
    assert (na.astype(int) + err + fail + ok == 1).all()
    assert len(got) == 12  # 4 categories (with Total) by 3 contexts (with Total)
    for cat in ["Conformance", "Completeness", "Plausibility", "Total"]:
        for ctx in ["Verification", "Validation", "Total"]:
            m = pd.Series(True, index=checks.index)
            if cat != "Total":
                m &= checks.category == cat
            if ctx != "Total":
                m &= checks.context == ctx
            p, f, e, n = int((m & ok).sum()), int((m & fail).sum()), int((m & err).sum()), int((m & na).sum())
            pct = f"{100 * p / (p + f + e):.2f}" if p + f + e else "—"
            assert got[(cat, ctx)] == [f"{p:,}", f"{f:,}", f"{e:,}", f"{n:,}", pct], (cat, ctx)
    total = got[("Total", "Total")]
    assert _int(total[0]) + _int(total[1]) + _int(total[2]) + _int(total[3]) == len(checks)  # type: ignore[operator]


def test_overview_agrees_with_dqd_json(page: lxml.html.HtmlElement, folder: Path) -> None:
    ov = json.loads((folder / "dq-results.json").read_text())["Overview"]
    (table,) = page.xpath("//table[@class='overview']")
    rows = _rows(table)
    total = rows[-1][1:]  # Total, Total
    assert _int(total[1]) == ov["countThresholdFailed"] and _int(total[2]) == ov["countErrorFailed"]
    for cat, cells in ((r[0], r[1:]) for r in rows if len(r) == 7 and r[0] != "Total"):
        # each category's Total row is two rows below its first
        i = rows.index([cat, *cells])
        assert _int(rows[i + 2][2]) == ov[f"countFailed{cat}"]
        assert _int(rows[i + 2][1]) == ov[f"countPassed{cat}"]


def test_failed_checks_table_is_the_failed_checks(page: lxml.html.HtmlElement, checks: pd.DataFrame) -> None:
    (table,) = page.xpath("//table[contains(@class, 'failed')]")
    rows = _rows(table)
    bad = checks[((checks.failed == 1) | (checks.isError == 1)) & (checks.notApplicable == 0)]
    assert len(rows) == len(bad) > 0
    want = sorted((r.checkName, str(r.cdmTableName) + (f".{r.cdmFieldName}" if r.cdmFieldName else "")
                   + (f" (concept {r.conceptId}" + (f", unit {r.unitConceptId})" if r.unitConceptId else ")")
                      if r.conceptId else ""),
                   f"{int(r.numViolatedRows):,}", f"{int(r.numDenominatorRows):,}",
                   f"{100 * r.pctViolatedRows:.2f}", f"{r.thresholdValue:g}") for r in bad.itertuples())
    got = sorted((r[1], r[4], r[5], r[6], r[7], r[8]) for r in rows)
    assert got == want
    # failed first: ordered by % violated, largest first
    pct = [float(r[7]) for r in rows]
    assert pct == sorted(pct, reverse=True)
    # every planted fault's check is there
    names = {r[1] for r in rows}
    assert {"plausibleDuringLife", "plausibleStartBeforeEnd", "plausibleValueHigh", "isForeignKey",
            "isRequired"} <= names


def test_drilldown_holds_every_check_once_under_its_table_and_field(page: lxml.html.HtmlElement,
                                                                     checks: pd.DataFrame) -> None:
    seen = 0
    for details in page.xpath("//details[contains(@class, 'table') or contains(@class, 'field')]"):
        for table in details.xpath("./table"):
            rows = _rows(table)
            anchor = details.get("id")
            if anchor.startswith("t-"):
                sub = checks[(checks.cdmTableName.str.lower() == anchor[2:]) & checks.cdmFieldName.isna()]
            else:
                t = details.getparent().get("id")[2:]
                sub = checks[(checks.cdmTableName.str.lower() == t)
                             & (checks.cdmFieldName.str.lower() == anchor[len(f"f-{t}-"):])]
            assert len(rows) == len(sub) > 0, anchor
            want = sorted((r.checkName, "" if pd.isna(r.numViolatedRows) else f"{int(r.numViolatedRows):,}",
                           "" if pd.isna(r.numDenominatorRows) else f"{int(r.numDenominatorRows):,}",
                           "—" if pd.isna(r.pctViolatedRows) else f"{100 * r.pctViolatedRows:.2f}",
                           f"{r.thresholdValue:g}") for r in sub.itertuples())
            got = sorted((r[1], "" if r[4] == "—" else r[4], "" if r[5] == "—" else r[5], r[6], r[7]) for r in rows)
            assert got == want, anchor
            seen += len(rows)
    assert seen == len(checks)


def test_summary_line_counts(page: lxml.html.HtmlElement, checks: pd.DataFrame) -> None:
    text = page.xpath("//body/p")[0].text_content()
    na = int(checks.notApplicable.sum())
    assert re.search(rf"{len(checks):,} checks: {int(checks.failed.sum()):,} failed", text)
    assert f"{na:,} not applicable" in text and f"{int(checks.passed.sum()):,} passed" in text
    assert "<script src" not in lxml.html.tostring(page, encoding="unicode")  # nothing fetched


def test_profile_plots_are_the_profile(folder: Path) -> None:
    res = pd.read_parquet(folder / "achilles_results.parquet")
    dist = pd.read_parquet(folder / "achilles_results_dist.parquet")
    # trends: per domain, records per month = analysis x20
    fig = records_by_month_figure(res)
    for trace in fig.data:
        aid = {"visit_occurrence": 220, "condition_occurrence": 420, "drug_exposure": 720,
               "measurement": 1820}[trace.name]
        r = res[res.analysis_id == aid].sort_values("stratum_1")
        months = [f"{int(m[:4])}-{int(m[4:]):02d}" for m in r.stratum_1]
        assert [pd.Timestamp(x).strftime("%Y-%m") for x in trace.x] == months
        assert list(trace.y) == r.count_value.tolist()
    assert {t.name for t in fig.data} == {"visit_occurrence", "condition_occurrence", "drug_exposure", "measurement"}
    # persons by year of birth = analysis 3
    (bar,) = birth_years_figure(res).data
    r = res[res.analysis_id == 3]
    assert dict(zip(bar.x, bar.y, strict=True)) == dict(zip(r.stratum_1.astype(int), r.count_value, strict=True))
    assert sum(bar.y) == int(res.loc[res.analysis_id == 1, "count_value"].iloc[0])
    # boxes from the percentiles
    (box,) = observation_length_figure(dist).data
    d = dist[dist.analysis_id == 105].iloc[0]
    assert (box.q1[0], box.median[0], box.q3[0], box.lowerfence[0], box.upperfence[0]) == (
        d.p25_value, d.median_value, d.p75_value, d.p10_value, d.p90_value)
    m = dist[dist.analysis_id == 1815]
    boxes = measurement_figure(dist).data
    assert len(boxes) == min(len(m), 20)
    for b in boxes:
        concept, unit = re.match(r"concept (\d+), unit (\d+)", b.name).groups()  # type: ignore[union-attr]
        row = m[(m.stratum_1 == concept) & (m.stratum_2 == unit)].iloc[0]
        assert (b.q1[0], b.median[0], b.q3[0], b.mean[0]) == (row.p25_value, row.median_value, row.p75_value,
                                                               row.avg_value)


def test_profile_tables_are_the_profile(page: lxml.html.HtmlElement, folder: Path) -> None:
    dist = pd.read_parquet(folder / "achilles_results_dist.parquet")
    tables = page.xpath("//table[@class='dist']")
    assert len(tables) == 2
    (obs,) = _rows(tables[0])
    d = dist[dist.analysis_id == 105].iloc[0]
    cols = ["min_value", "p10_value", "p25_value", "median_value", "p75_value", "p90_value", "max_value", "avg_value"]
    assert _int(obs[0]) == d.count_value
    assert np.allclose([float(x) for x in obs[1:]], [d[c] for c in cols], rtol=1e-5)
    m = dist[dist.analysis_id == 1815].set_index(["stratum_1", "stratum_2"])
    for row in _rows(tables[1]):
        want = m.loc[(row[0], row[1])]
        assert _int(row[2]) == want.count_value
        assert np.allclose([float(x) for x in row[3:]], [want[c] for c in cols], rtol=1e-5)


def test_cli_dashboard(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "d.html"
    r = CliRunner().invoke(app, ["dq", "dashboard", str(folder), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and out.read_text().count("<h2") == 4
    # a check folder without a profile: the page says how to add one
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("checks.parquet", "dq-results.json"):
        (bare / f).write_bytes((folder / f).read_bytes())
    r = CliRunner().invoke(app, ["dq", "dashboard", str(bare)])
    assert r.exit_code == 0, r.output
    assert "No profile in this folder" in (bare / "dashboard.html").read_text()
    # and with the profile given apart
    r = CliRunner().invoke(app, ["dq", "dashboard", str(bare), "--profile", str(folder), "--out", str(out)])
    assert r.exit_code == 0 and "Records per month" in out.read_text()


def test_cli_dashboard_bad_folders(folder: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["dq", "dashboard", str(tmp_path)])
    assert r.exit_code == 1 and "holds no checks.parquet" in r.output and "Traceback" not in r.output
    (tmp_path / "checks.parquet").write_bytes((folder / "checks.parquet").read_bytes())
    r = CliRunner().invoke(app, ["dq", "dashboard", str(tmp_path), "--profile", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "holds no achilles_results.parquet" in r.output


def test_an_error_is_shown_apart_with_its_message(folder: Path, checks: pd.DataFrame) -> None:
    """A check whose SQL failed (none on a healthy site, so one is made here): counted as an error, not a
    failure, listed among the failed checks, and its message shown under its field."""
    data = load_folder(folder)
    i = checks.index[(checks.checkName == "isRequired") & (checks.cdmTableName == "PERSON")
                     & (checks.cdmFieldName == "YEAR_OF_BIRTH")][0]
    c = data.checks
    c.loc[i, ["isError", "failed", "passed"]] = [1, 0, 0]
    c.loc[i, ["error", "numViolatedRows", "numDenominatorRows", "pctViolatedRows"]] = ["boom: no such column", None,
                                                                                     None, None]
    page = lxml.html.fromstring(render_dashboard(data))
    total = _rows(page.xpath("//table[@class='overview']")[0])[-1]
    assert _int(total[3]) == 1 and _int(total[2]) == int(checks.failed.sum())
    failed = _rows(page.xpath("//table[contains(@class, 'failed')]")[0])
    assert ["error", "isRequired"] in [r[:2] for r in failed]
    field = _rows(page.xpath("//details[@id='f-person-year_of_birth']/table")[0])
    row = next(r for r in field if r[1] == "isRequired")
    assert row[0] == "error" and row[-1] == "boom: no such column" and row[4:7] == ["—", "—", "—"]
