"""Concept names in the data-quality outputs: the dashboard and the hub's quality page name each concept
(and unit) from the CDM's own concept table, read here independently with DuckDB, and show the bare id
where the CDM has no concept table or does not hold the concept."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import lxml.html
import pandas as pd
import pytest
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cli import app
from mercia.disclosure import BUILTIN_POLICIES
from mercia.dq.names import NAMES, label
from mercia.federation.node.quality import released_quality
from mercia.synth import DEFAULT_SITES, generate_site

runner = CliRunner()
FAULTS = {"values_out_of_range": 0.05, "events_after_death": 0.1}


def _site(path: Path, *, drop_concepts: bool = False) -> Path:
    with Cdm.open(path) as cdm:
        generate_site(cdm, persons=300, seed=5, profile=DEFAULT_SITES[0], faults=FAULTS)
        if drop_concepts:
            cdm.execute(f"DROP TABLE {cdm.qualified('concept')}")
    return path


def _names_in(path: Path) -> dict[int, str]:
    with duckdb.connect(str(path), read_only=True) as con:
        return dict(con.execute("SELECT concept_id, concept_name FROM concept").fetchall())


def _run(site: Path, out: Path) -> lxml.html.HtmlElement:
    for cmd in ("check", "profile"):
        r = runner.invoke(app, ["dq", cmd, "--cdm", str(site), "--out", str(out)])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["dq", "dashboard", str(out)])
    assert r.exit_code == 0, r.output
    return lxml.html.fromstring((out / "dashboard.html").read_text())


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, lxml.html.HtmlElement]:
    root = tmp_path_factory.mktemp("names")
    site = _site(root / "site.duckdb")
    return site, root / "dq", _run(site, root / "dq")


def test_names_file_holds_the_cdm_names_of_the_results_concepts(named) -> None:
    site, out, _ = named
    stored = pd.read_parquet(out / NAMES)
    vocab = _names_in(site)
    checks = pd.read_parquet(out / "checks.parquet")
    dist = pd.read_parquet(out / "achilles_results_dist.parquet")
    wanted = {int(v) for v in [*checks.conceptId.dropna(), *checks.unitConceptId.dropna()]}
    wanted |= {int(v) for v in dist.loc[dist.analysis_id == 1815, "stratum_1"]}
    assert wanted & set(vocab) <= set(stored.concept_id)  # every results id the CDM names
    assert dict(zip(stored.concept_id, stored.concept_name, strict=True)) == {
        c: vocab[c] for c in stored.concept_id}  # and the names are the CDM's


def test_dashboard_shows_names_beside_ids(named) -> None:
    site, out, page = named
    vocab = _names_in(site)
    checks = pd.read_parquet(out / "checks.parquet")
    bad = checks[(checks.checkLevel == "CONCEPT") & (checks.failed == 1)]
    assert len(bad) > 0  # the planted out-of-range values fail concept-level checks
    (table,) = page.xpath("//table[contains(@class, 'failed')]")
    text = table.text_content()
    for r in bad.itertuples():
        c, u = int(r.conceptId), int(r.unitConceptId)
        assert f"concept {vocab[c]} ({c}), unit {vocab[u]} ({u})" in text
    # the measurement boxes and their table
    titles = " ".join(a.text_content() for a in page.xpath("//table[@class='dist']")[1].xpath(".//td[1]"))
    dist = pd.read_parquet(out / "achilles_results_dist.parquet")
    top = dist[dist.analysis_id == 1815].sort_values("count_value", ascending=False).iloc[0]
    assert f"{vocab[int(top.stratum_1)]} ({int(top.stratum_1)})" in titles
    html = (out / "dashboard.html").read_text()
    assert re.search(re.escape(f"{vocab[int(top.stratum_1)]} ({int(top.stratum_1)}), unit "), html)


def test_without_a_concept_table_the_ids_stay(tmp_path: Path) -> None:
    site = _site(tmp_path / "bare.duckdb", drop_concepts=True)
    page = _run(site, tmp_path / "dq")
    assert not (tmp_path / "dq" / NAMES).exists()
    checks = pd.read_parquet(tmp_path / "dq" / "checks.parquet")
    bad = checks[(checks.checkLevel == "CONCEPT") & (checks.failed == 1)]
    (table,) = page.xpath("//table[contains(@class, 'failed')]")
    for r in bad.itertuples():
        assert f"(concept {int(r.conceptId)}, unit {int(r.unitConceptId)})" in table.text_content()


def test_label_falls_back_to_the_id() -> None:
    names = {3004249: "Systolic blood pressure"}
    assert label(3004249, names) == "Systolic blood pressure (3004249)"
    assert label("3012888", names) == "3012888"  # not in the concept table
    assert label(None, names) == "" and label("", names) == ""


def test_hub_quality_page_names_failed_concepts(named, monkeypatch: pytest.MonkeyPatch) -> None:
    from mercia.federation.hub import quality as hub_quality
    from mercia.report.hub import render_network_quality

    site, _, _ = named
    vocab = _names_in(site)
    with Cdm.open(site, read_only=True) as cdm:
        summary = released_quality(cdm, BUILTIN_POLICIES["opensafely"], site="north")
    summary.pop("policy_key")
    cols = summary["concept_checks"]["columns"]
    rows = [dict(zip(cols, r, strict=True)) for r in summary["concept_checks"]["rows"]]
    assert rows and all(r["conceptName"] == vocab[int(r["conceptId"])] for r in rows)
    assert all(r["unitName"] == (vocab[int(r["unitConceptId"])] if r["unitConceptId"] else "") for r in rows)
    assert any(r["unitName"] for r in rows)
    # the released numbers are untouched by the names: the same as without them
    assert summary["overview"]["overall"]["checks"] == len(summary["checks"]["rows"]) + len(rows)
    monkeypatch.setattr(hub_quality, "_ask_each", lambda store, sites, timeout, ask: [summary])
    answer = hub_quality.quality_across(None, ["north"], "proj")  # type: ignore[arg-type]
    failed = [f for f in answer["failed"] if f["conceptId"]]
    assert failed and all(f["conceptName"] == vocab[int(f["conceptId"])] for f in failed)
    page = lxml.html.fromstring(render_network_quality(answer))
    text = page.text_content()
    for f in failed:
        assert f"{vocab[int(f['conceptId'])]} ({f['conceptId']})" in text
