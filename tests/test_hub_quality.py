"""Data quality across the network (issue 16, item 4), over real HTTP on 127.0.0.1: a hub and two nodes.

Each node runs its checks once (the custodian's `POST /quality/run`) and answers its released summary
from the store. Checked against an independent reference, the checks run here on each site's own
database (`mercia.dq.run_checks`, exact): every released status is the site's, a numerator or
denominator is released only where both are above the policy's threshold (and then rounded as the
policy says), concept-level rows only where the denominator is; the hub's side-by-side view holds the
nodes' answers unchanged and no number that is not in them. West has three condition records planted
after their person's death: that count of 3 is a small count about persons' records and appears
nowhere. Roles, project walls and bad input are refused with the field named.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from federation_support import MERCIA, PROJECT, Federation, make_site
from mercia.disclosure import BUILTIN_POLICIES, round_count

pytestmark = pytest.mark.slow  # a hub and two nodes as processes

API = "/api/v1"
POLICY = BUILTIN_POLICIES["opensafely"]
PLANTED = 3  # condition records moved after their person's death at west


def _plant_events_after_death(site: Path) -> None:
    import duckdb

    con = duckdb.connect(str(site))
    try:
        rows = con.execute(
            "SELECT c.condition_occurrence_id, d.death_date FROM condition_occurrence c "
            "JOIN death d USING (person_id) ORDER BY c.condition_occurrence_id LIMIT ?", [PLANTED]).fetchall()
        assert len(rows) == PLANTED
        for cid, death in rows:
            con.execute("UPDATE condition_occurrence SET condition_start_date = ? + INTERVAL 90 DAY, "
                        "condition_end_date = ? + INTERVAL 91 DAY WHERE condition_occurrence_id = ?",
                        [death, death, cid])
    finally:
        con.close()


def _exact(site: Path) -> Any:
    from mercia.cdm import Cdm
    from mercia.dq import run_checks

    with Cdm.open(site, read_only=True) as cdm:
        return run_checks(cdm).results


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("hubquality")
    sites = {"east": make_site(root / "east.duckdb", persons=1500, seed=41),
             "west": make_site(root / "west.duckdb", persons=1500, seed=42, first_person_id=50_001)}
    _plant_events_after_death(sites["west"])
    federation = Federation(root, sites)
    federation.exact = {name: _exact(path) for name, path in sites.items()}  # type: ignore[attr-defined]
    with federation:
        for node in federation.nodes.values():
            with node.client("custodian") as c:
                r = c.post(f"{API}/quality/run")
                assert r.status_code == 202 and r.json()["site"] == node.site, r.text
        for node in federation.nodes.values():
            _wait_summary(node)
        yield federation


def _wait_summary(node: Any, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with node.client("custodian") as c:
        while time.monotonic() < deadline:
            r = c.get(f"{API}/quality", params={"project": PROJECT})
            if r.status_code == 200:
                return r.json()
            assert r.status_code == 409 and "running now" in r.json()["detail"], r.text
            time.sleep(0.5)
    raise TimeoutError(f"no data-quality summary at {node.site}")


def _node_summary(fed: Federation, site: str, who: str = "researcher") -> dict[str, Any]:
    with fed.nodes[site].client(who) as c:
        r = c.get(f"{API}/quality", params={"project": PROJECT})
    assert r.status_code == 200, r.text
    return r.json()


def _rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(zip(table["columns"], r, strict=True)) for r in table["rows"]]


def _status(r: Any) -> str:
    if r.isError == 1:
        return "error"
    if r.notApplicable == 1:
        return "not_applicable"
    return "fail" if r.failed == 1 else "pass"


def _released(n: int) -> int | None:
    """What the policy makes of an exact count (None: suppressed)."""
    return None if 1 <= n <= POLICY.suppress_up_to or (n == 0 and POLICY.zeros_disclosive) else round_count(n, POLICY.rounding_base)


def test_each_node_releases_its_checks_under_the_policy(fed: Federation) -> None:
    for site, exact in fed.exact.items():  # type: ignore[attr-defined]
        summary = _node_summary(fed, site)
        assert summary["site"] == site and summary["policy"].startswith("opensafely")
        checks = {r["checkId"]: r for r in _rows(summary["checks"])}
        concepts = {r["checkId"]: r for r in _rows(summary["concept_checks"])}
        table_level = exact[exact.checkLevel != "CONCEPT"]
        assert set(checks) == set(table_level.checkId)  # every table and field check, each with its status
        for r in exact.itertuples(index=False):
            got = (concepts if r.checkLevel == "CONCEPT" else checks).get(r.checkId)
            num = None if pd.isna(r.numViolatedRows) else int(r.numViolatedRows)
            den = None if pd.isna(r.numDenominatorRows) else int(r.numDenominatorRows)
            if r.checkLevel == "CONCEPT":
                # a concept row only where its denominator is released
                assert (got is not None) == (den is not None and _released(den) not in (None, 0)), r.checkId
                if got is None:
                    continue
            assert got is not None and got["status"] == _status(r), r.checkId
            both = num is not None and den is not None and None not in (_released(num), _released(den))
            if both:
                assert (got["numViolatedRows"], got["numDenominatorRows"]) == (_released(num), _released(den))
                assert got["pctViolatedRows"] == (round(_released(num) / _released(den), 6)
                                                  if _released(den) else None)
            else:
                assert got["numViolatedRows"] is None and got["numDenominatorRows"] is None, r.checkId
                assert got["pctViolatedRows"] is None
        # the overview counts the released rows' statuses
        rows = list(checks.values()) + list(concepts.values())
        passed = sum(r["status"] == "pass" for r in rows)
        decided = sum(r["status"] in ("pass", "fail", "error") for r in rows)
        assert summary["overview"]["overall"]["passed"] == passed
        assert summary["overview"]["overall"]["pass_rate"] == round(100 * passed / decided, 2)


def test_the_planted_small_numerator_is_suppressed(fed: Federation) -> None:
    exact = fed.exact["west"]  # type: ignore[attr-defined]
    hit = exact[(exact.checkName == "plausibleDuringLife") & (exact.cdmTableName == "CONDITION_OCCURRENCE")
                & (exact.cdmFieldName == "CONDITION_START_DATE")]
    assert len(hit) == 1 and int(hit.iloc[0].numViolatedRows) == PLANTED  # the reference sees the fault
    east = fed.exact["east"]  # type: ignore[attr-defined]
    assert int(east[east.checkId == hit.iloc[0].checkId].iloc[0].numViolatedRows) == 0
    released = {r["checkId"]: r for r in _rows(_node_summary(fed, "west")["checks"])}[hit.iloc[0].checkId]
    assert released["status"] == _status(hit.iloc[0])
    assert released["numViolatedRows"] is None and released["numDenominatorRows"] is None
    east_row = {r["checkId"]: r for r in _rows(_node_summary(fed, "east")["checks"])}[hit.iloc[0].checkId]
    assert east_row["numViolatedRows"] == 0 and east_row["numDenominatorRows"] > POLICY.suppress_up_to


def _numbers(value: Any, out: list[float]) -> list[float]:
    if isinstance(value, bool) or value is None:
        return out
    if isinstance(value, int | float):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _numbers(v, out)
    elif isinstance(value, list):
        for v in value:
            _numbers(v, out)
    return out


def test_the_hub_shows_the_sites_side_by_side_from_their_released_summaries(fed: Federation) -> None:
    with fed.client() as c:
        answer = c.quality(PROJECT)
    assert answer["project"] == PROJECT and [s["site"] for s in answer["sites"]] == ["east", "west"]
    nodes = {site: _node_summary(fed, site) for site in ("east", "west")}
    assert answer["summaries"] == nodes  # each site's summary exactly as the node released it
    for s in answer["sites"]:
        o = nodes[s["site"]]["overview"]
        assert s["error"] is None and s["run_date"] == nodes[s["site"]]["run_date"]
        assert (s["pass_rate"], s["failed_checks"], s["checks"]) == (o["overall"]["pass_rate"], o["overall"]["failed"],
                                                                   o["overall"]["checks"])
        for cat in ("Conformance", "Completeness", "Plausibility"):
            assert s[f"pass_rate_{cat.lower()}"] == o[cat]["pass_rate"]
    failed = {(f["site"], f["checkName"], f["cdmTableName"], f["cdmFieldName"], f["conceptId"]) for f in answer["failed"]}
    want = {(site, r["checkName"], r["cdmTableName"], r["cdmFieldName"], r["conceptId"])
            for site, n in nodes.items() for r in _rows(n["checks"]) + _rows(n["concept_checks"]) if r["status"] == "fail"}
    assert failed == want and want
    trends = {(t["site"], t["domain"], t["month"]): t["records"] for t in answer["trends"]}
    assert trends == {(site, *r[:2]): r[2] for site, n in nodes.items() for r in n["trends"]["rows"]}
    assert {d for _, d, _ in trends} >= {"condition", "drug", "measurement"}

    # No number in the hub's answer that a node did not release; no count in any answer that the
    # policy would not release (1..7, or not a multiple of 5), and so never the planted 3.
    released = set(_numbers(nodes, []))
    side = {k: v for k, v in answer.items() if k != "summaries"}
    assert set(_numbers(side, [])) <= released
    for n in nodes.values():
        for table in (n["checks"], n["concept_checks"], n["trends"]):
            for r in _rows(table):
                for col in ("numViolatedRows", "numDenominatorRows", "records"):
                    v = r.get(col)
                    if v is not None:
                        assert v % POLICY.rounding_base == 0 and not 1 <= v <= POLICY.suppress_up_to, (col, r)


def test_the_page_and_the_command_line(fed: Federation) -> None:
    with httpx.Client(base_url=fed.hub.url, headers={"Authorization": f"Bearer {fed.researcher_token}"},
                      timeout=60) as c:
        page = c.get(f"{API}/quality/report", params={"project": PROJECT})
    assert page.status_code == 200 and "Data quality across project" in page.text
    assert "east" in page.text and "west" in page.text and "released records per month" in page.text
    out = subprocess.run([MERCIA, "client", "quality", "--hub", fed.hub.url, "--token", fed.researcher_token,
                          "--project", PROJECT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Data quality of the sites of" in out.stdout and "east" in out.stdout and "west" in out.stdout
    rate = f"{_node_summary(fed, 'west')['overview']['overall']['pass_rate']:g}"
    assert rate in out.stdout
    js = subprocess.run([MERCIA, "client", "quality", "--hub", fed.hub.url, "--token", fed.researcher_token,
                         "--project", PROJECT, "--json"], capture_output=True, text=True, timeout=120)
    assert json.loads(js.stdout)["summaries"]["west"] == _node_summary(fed, "west")


def test_a_studys_report_shows_each_sites_data_quality(fed: Federation) -> None:
    from federation_support import small_study

    with fed.client() as c:
        h = c.submit(small_study("quality in the report"), project=PROJECT)["hash"]
        fed.approve_all(h)
        c.wait(h, timeout=300)
        html = c.report(h)
    assert "Data quality of the sites" in html
    section = html.split("Data quality of the sites", 1)[1].split("<h2>", 1)[0]
    for site in ("east", "west"):
        s = _node_summary(fed, site)
        assert site in section and s["run_date"] in section
        assert f"{s['overview']['overall']['pass_rate']:.2f}" in section


def test_roles_project_walls_and_bad_input(fed: Federation, tmp_path: Path) -> None:
    node = fed.nodes["west"]
    with fed.admin() as admin:
        outsider = admin.add_user("mallory", "researcher", ["elsewhere"])["token"]
        admin.add_project("elsewhere", ["east"])
    # the hub: another project's researcher is refused, as is a project that does not exist
    with fed.hub.client(outsider) as c:
        with pytest.raises(Exception, match="not a member"):
            c.quality(PROJECT)
        assert [s["site"] for s in c.quality("elsewhere")["sites"]] == ["east"]
    hub = httpx.Client(base_url=fed.hub.url, headers={"Authorization": f"Bearer {fed.researcher_token}"}, timeout=60)
    with hub:
        for params in ({}, {"project": "no such/project"}):
            r = hub.get(f"{API}/quality", params=params)
            assert r.status_code == 422 and "project" in r.text, r.text
    # the node: a token of another project, a role that may not ask, a role that may not run
    from mercia.federation.auth import TokenStore

    store = TokenStore(node.folder / "tokens.json")
    other = store.issue("researcher-elsewhere", "researcher", ["elsewhere"])
    with httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {other}"}, timeout=60) as c:
        r = c.get(f"{API}/quality", params={"project": PROJECT})
        assert r.status_code == 403 and "not a member" in r.json()["detail"]
    for who in ("researcher", "hub"):
        with node.client(who) as c:
            r = c.post(f"{API}/quality/run")
            assert r.status_code == 403 and "needs role" in r.text, r.text
    with node.client("researcher") as c:
        for params in ({}, {"project": "a b"}):
            r = c.get(f"{API}/quality", params=params)
            assert r.status_code == 422 and "project" in r.text, r.text


def test_a_node_runs_its_checks_at_start_only_when_told(tmp_path: Path) -> None:
    from federation_support import HubKey, NodeServer

    key = HubKey(tmp_path / "hub")
    site = make_site(tmp_path / "solo.duckdb", persons=1500, seed=41)
    with NodeServer(tmp_path / "plain", cdm=site, hub_key=key, site="plain") as node, node.client("custodian") as c:
        r = c.get(f"{API}/quality", params={"project": PROJECT})
        assert r.status_code == 409 and "not run yet" in r.json()["detail"] and "POST quality/run" in r.text
    with NodeServer(tmp_path / "eager", cdm=site, hub_key=key, site="eager", quality_at_start=True) as node:
        summary = _wait_summary(node)
        assert summary["site"] == "eager" and summary["overview"]["overall"]["checks"] > 1000
        with node.client("custodian") as c:  # a second run: started, and the stored summary still answered
            r = c.post(f"{API}/quality/run")
            assert r.status_code == 202 and r.json()["last_run_date"] == summary["run_date"]
            assert c.get(f"{API}/quality", params={"project": PROJECT}).status_code == 200
