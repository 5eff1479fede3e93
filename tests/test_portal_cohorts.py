"""The portal's cohorts page over real HTTP on 127.0.0.1 (issue 17, item 3).

A researcher pastes (or uploads) a cohort as the cohort language's YAML or an ATLAS/Circe JSON export,
or fills in the criteria builder; the page checks it with the readers the CLI uses, shows its YAML, and
asks the sites of the researcher's project for their released counts and attrition by the hub's own
feasibility code path. Here: who may ask (a researcher in their own projects only), CSRF, definitions
that cannot be read (400, naming the problem, never a 5xx), the builder's cohort against the same cohort
built with the cohort language by hand; with a hub and two nodes (slow), every number on the page
against the nodes' released answers; and in Chromium (browser), paste a definition and see the counts.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import test_portal
from federation_support import PROJECT, Federation, HubServer, make_site
from mercia.cohorts import dsl
from mercia.cohorts.loader import load_definition
from test_portal import T, Visitor, add_user, audit_events

hub = test_portal.hub  # the fixtures: a hub with projects proj (east) and other (west), users rita, oscar, ...
visitor = test_portal.visitor

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "cohorts"
T2D_YAML = (EXAMPLES / "type2_diabetes_metformin.yaml").read_text()
ATLAS_JSON = (EXAMPLES / "gi_bleed_atlas.json").read_text()


def yaml_shown(page: str) -> str:
    m = re.search(r'<pre id="cohort-yaml"[^>]*>(.*?)</pre>', page, re.S)
    assert m, page[:3000]
    return html.unescape(m.group(1))


# ---- who may ---------------------------------------------------------------------------------------
def test_the_page_for_each_role_and_signed_out(visitor: Any) -> None:
    r = visitor().get("/portal/cohorts")
    assert r.status_code == 303 and r.headers["location"].startswith("/portal/sign-in?next=")
    for who in ("rita", "pa", "root"):
        r = visitor(who).get("/portal/cohorts")
        assert r.status_code == 200, r.text
        assert 'id="definition"' in r.text and 'action="/portal/cohorts/build"' in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]


def test_a_researcher_counts_only_in_their_own_projects(visitor: Any, hub: HubServer) -> None:
    form = {"definition": T2D_YAML, "action": "count"}
    r = visitor("oscar").post("/portal/cohorts", {**form, "project": "proj"})
    assert r.status_code == 403 and "not a member of project 'proj'" in T(r)
    r = visitor("rita").post("/portal/cohorts/build", {"b_entry_concepts": "201826", "b_entry_domain": "condition",
                                                       "action": "count", "project": "other"})
    assert r.status_code == 403 and "not a member of project 'other'" in T(r)
    asked = [e for e in audit_events(hub) if e["event"] == "feasibility.asked"]
    assert asked == []  # refused before any site was asked
    # in their own project: each of its sites is asked (here a node that does not answer: its reason shown)
    r = visitor("rita").post("/portal/cohorts", {**form, "project": "proj"})
    assert r.status_code == 200, T(r)
    rows = re.findall(r'<tr><th scope="row">([^<]+)</th><td class="num">([^<]+)</td>', r.text.split(
        'id="cohort-counts"', 1)[1].split("</tbody>", 1)[0])
    assert rows == [("east", "–")]
    asked = [e for e in audit_events(hub) if e["event"] == "feasibility.asked"]
    assert [(e["actor"], e["details"]["project"], e["details"]["sites"]) for e in asked] == [("rita", "proj", ["east"])]


@pytest.mark.parametrize("path", ["/portal/cohorts", "/portal/cohorts/build"])
def test_csrf(visitor: Any, hub: HubServer, path: str) -> None:
    rita, other = visitor("rita"), visitor("rita")
    body = {"definition": T2D_YAML, "b_entry_concepts": "201826", "action": "count", "project": "proj"}
    before = len(audit_events(hub))
    for token in (None, "", other.csrf, rita.csrf[:-2] + "xx"):
        r = rita.post(path, body if token is None else {**body, "csrf": token}, csrf=False)
        assert r.status_code == 403 and "security token is missing or wrong" in T(r)
    assert [e for e in audit_events(hub)[before:] if e["event"] == "feasibility.asked"] == []


# ---- reading a definition ------------------------------------------------------------------------------
def test_a_pasted_yaml_is_checked_and_shown_in_yaml(visitor: Any) -> None:
    r = visitor("rita").post("/portal/cohorts", {"definition": T2D_YAML, "action": "check", "project": "proj"})
    assert r.status_code == 200, T(r)
    expected = load_definition(EXAMPLES / "type2_diabetes_metformin.yaml")  # as the CLI reads the file
    assert yaml_shown(r.text) == dsl.to_yaml(expected)
    assert dsl.from_yaml(yaml_shown(r.text)) == expected
    assert "The definition is valid (YAML): 3 inclusion rules." in T(r)
    assert 'id="cohort-counts"' not in r.text  # check only: no site asked


def test_an_atlas_json_is_read_as_the_cli_reads_it(visitor: Any) -> None:
    r = visitor("rita").post("/portal/cohorts", {"definition": ATLAS_JSON, "action": "check", "project": "proj"})
    assert r.status_code == 200, T(r)
    expected = load_definition(EXAMPLES / "gi_bleed_atlas.json")
    assert "(ATLAS/Circe JSON)" in T(r)
    assert yaml_shown(r.text) == dsl.to_yaml(expected.model_copy(update={"name": "cohort"}))  # unnamed export


@pytest.mark.parametrize("text,problem", [
    ("name: x\nentry: [", "malformed YAML at line 2"),
    ('{"PrimaryCriteria": ', "malformed JSON at line 1 column 21"),
    (T2D_YAML.replace("inclusion_rules:", "inclusion_rulez:"), "$.inclusion_rulez: unknown key (did you mean 'inclusion_rules'?)"),
    (T2D_YAML.replace("prior_days: 365", "prior_days: many"), "prior_days"),
    ('{"PrimaryCriteria": {"CriteriaList": "x"}}', "CriteriaList"),
    ("   ", "the definition is empty"),
    ("- just\n- a list\n", "definition"),
])
def test_a_definition_that_cannot_be_read_is_a_400_naming_the_problem(visitor: Any, text: str, problem: str) -> None:
    r = visitor("rita").post("/portal/cohorts", {"definition": text, "action": "count", "project": "proj"})
    assert r.status_code == 400, T(r)
    shown = T(r)
    assert "The definition cannot be read: " in shown and problem in shown, shown[:3000]
    assert "Traceback" not in shown
    assert html.unescape(re.search(r'<textarea id="definition"[^>]*>(.*?)</textarea>', r.text, re.S).group(1)) == text


# ---- the criteria builder -------------------------------------------------------------------------------
BUILDER = {"b_name": "T2D on metformin", "b_entry_domain": "condition", "b_entry_concepts": "201826",
           "b_entry_descendants": "1", "b_entry_first": "1", "b_age_min": "40", "b_prior_days": "365",
           "c1_mode": "has", "c1_domain": "drug", "c1_concepts": "1503297", "c1_descendants": "1",
           "c1_start": "-365", "c1_end": "0", "c1_min": "2",
           "c2_mode": "has_not", "c2_domain": "condition", "c2_concepts": "192671, 4280942", "c2_start": "-30",
           "c2_end": "", "b_exit": "days", "b_exit_days": "365"}


def by_hand() -> Any:
    """The builder's cohort written with the cohort language's Python form."""
    entry = dsl.concepts("entry concepts", 201826, descendants=True)
    metformin = dsl.concepts("criterion 1 concepts", 1503297, descendants=True)
    bleed = dsl.concepts("criterion 2 concepts", 192671, 4280942)
    return (dsl.cohort("T2D on metformin").entry(dsl.condition(entry).first())
            .require_observation(prior_days=365)
            .require_age(min=40, name="age at entry")
            .require(dsl.drug(metformin).between(-365, 0).at_least(2),
                     name="criterion 1: has drug 1503297 from day -365 to day 0, at least 2 times")
            .exclude(dsl.condition(bleed).between(-30, None),
                     name="criterion 2: has no condition 192671, 4280942 from day -30 to day +inf")
            .exit_after(days=365)).build()


def test_the_builder_writes_the_cohort_language(visitor: Any) -> None:
    r = visitor("rita").post("/portal/cohorts/build", {**BUILDER, "action": "check", "project": "proj"})
    assert r.status_code == 200, T(r)
    assert dsl.from_yaml(yaml_shown(r.text)) == by_hand()
    assert yaml_shown(r.text) == dsl.to_yaml(by_hand())
    # the form keeps what was typed, and the YAML is in the paste box to edit further
    assert 'value="1503297"' in r.text and 'value="has_not" selected' in r.text
    box = html.unescape(re.search(r'<textarea id="definition"[^>]*>(.*?)</textarea>', r.text, re.S).group(1))
    assert dsl.from_yaml(box) == by_hand()


def test_a_builder_without_criteria_exits_at_the_end_of_observation(visitor: Any) -> None:
    form = {"b_entry_domain": "drug", "b_entry_concepts": "1503297", "b_exit": "observation", "action": "check"}
    r = visitor("rita").post("/portal/cohorts/build", form)
    assert r.status_code == 200, T(r)
    expected = dsl.cohort("Portal cohort").entry(dsl.drug(dsl.concepts("entry concepts", 1503297))).build()
    assert dsl.from_yaml(yaml_shown(r.text)) == expected


@pytest.mark.parametrize("change,problem", [
    ({"b_entry_concepts": "201826, 12x"}, "entry concepts: '12x' is not a concept id"),
    ({"b_entry_concepts": ""}, "entry concepts: give one or more concept ids"),
    ({"b_entry_domain": "cake"}, "entry domain: 'cake' is not a domain; use one of condition, drug"),
    ({"b_age_min": "70", "b_age_max": "30"}, "age at entry: the minimum 70 is above the maximum 30"),
    ({"b_prior_days": "-3"}, "observation before entry (days): -3 is out of range (0 to 36500)"),
    ({"c1_start": "10", "c1_end": "-10"}, "criterion 1 window: its start 10 is after its end -10"),
    ({"c1_min": "two"}, "criterion 1 at least (times): 'two' is not a whole number"),
    ({"c2_mode": "maybe"}, "criterion 2: 'maybe' is not a choice; use has or has_not"),
    ({"b_exit_days": ""}, "exit after (days): give the number of days after entry"),
])
def test_a_builder_form_that_cannot_be_built_is_a_400_naming_the_field(visitor: Any, change: dict[str, str],
                                                                      problem: str) -> None:
    r = visitor("rita").post("/portal/cohorts/build", {**BUILDER, **change, "action": "count", "project": "proj"})
    assert r.status_code == 400, T(r)
    assert "The cohort cannot be built: " + problem in T(r), T(r)[:3000]


# ---- with a hub and two nodes: the page's numbers are the nodes' released answers ---------------------------
@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("portalcohorts")
    sites = {"east": make_site(root / "east.duckdb", persons=1500, seed=31),
             "west": make_site(root / "west.duckdb", persons=1500, seed=32, first_person_id=50_001)}
    federation = Federation(root, sites)
    data = yaml.safe_load(federation.hub.config_path.read_text())
    data["portal"] = {"vocabulary": str(make_site(root / "vocabulary.duckdb", persons=1500, seed=31))}
    federation.hub.config_path.write_text(yaml.safe_dump(data))
    with federation:
        add_user(federation.hub, "rosa", "researcher", [PROJECT])
        yield federation


def page_numbers(page: str) -> dict[str, Any]:
    """Every number of the counts and attrition tables, as the page shows them."""
    def cells(table_id: str) -> list[list[str]]:
        table = page.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
        return [[html.unescape(c) for c in re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", row)]
                for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)]

    def num(v: str) -> int | None:
        return None if v == "–" else int(v)

    counts = cells("cohort-counts")
    attrition = cells("cohort-attrition")
    sites = attrition[0][1:]
    return {"sites": {r[0]: (num(r[1]), num(r[2])) for r in counts[1:] if r[0] != "All sites"},
            "total": next((num(r[1]), num(r[2])) for r in counts if r[0] == "All sites"),
            "attrition": {site: [(r[0], num(r[1 + i])) for r in attrition[1:]] for i, site in enumerate(sites)}}


def node_answer(fed: Federation, site: str, definition: dict[str, Any]) -> dict[str, Any]:
    with fed.nodes[site].client("researcher") as c:
        r = c.post("/api/v1/feasibility", json={"definition": definition, "project": PROJECT})
    assert r.status_code == 200, r.text
    return r.json()


def check_against_nodes(fed: Federation, shown: dict[str, Any], definition: dict[str, Any]) -> None:
    assert sorted(shown["sites"]) == sorted(shown["attrition"]) == sorted(fed.nodes)
    released = []
    for site in fed.nodes:
        node = node_answer(fed, site, definition)
        assert shown["sites"][site] == (node["persons"], node["entries"])
        steps = [(step, persons) for step, persons in node["attrition"]["rows"]]
        assert shown["attrition"][site] == steps
        assert len(steps) >= 3  # initial events, the rules, the final cohort
        released.append(node)
    assert any(p for n in released for _, p in n["attrition"]["rows"])  # not all suppressed or zero
    counted = [n for n in released if n["persons"] is not None]
    # the total adds up the sites that released persons; with none (noise can take both small sites
    # below the threshold) there is no total to show
    assert shown["total"] == ((sum(n["persons"] for n in counted),
                               sum(n["entries"] for n in counted if n["entries"] is not None))
                              if counted else (None, None))


@pytest.mark.slow
def test_every_number_on_the_page_is_a_nodes_released_answer(fed: Federation) -> None:
    v = Visitor(fed.hub.url)
    try:
        assert v.sign_in("rosa").status_code == 303
        r = v.post("/portal/cohorts", {"definition": T2D_YAML, "action": "count", "project": PROJECT})
        assert r.status_code == 200, T(r)
        shown = page_numbers(r.text)
        b = v.post("/portal/cohorts/build", {**BUILDER, "c1_min": "1", "c1_start": "-3650", "c1_end": "3650", "b_age_min": "18",
                                               "action": "count", "project": PROJECT})
        assert b.status_code == 200, T(b)
        built = page_numbers(b.text)
    finally:
        v.close()
    check_against_nodes(fed, shown, load_definition(EXAMPLES / "type2_diabetes_metformin.yaml").to_dict())
    check_against_nodes(fed, built, dsl.from_yaml(yaml_shown(b.text)).to_dict())
    # charged to rosa's own budget at each node, through the hub's attestation; asked as the API asks
    for node in fed.nodes.values():
        lines = [json.loads(x) for x in (node.state_dir / "audit.jsonl").read_text().splitlines()]
        assert any(x.get("event", "").startswith("feasibility") and x["details"].get("budget_of") == "hub/rosa"
                   for x in lines), [x.get("event") for x in lines][-10:]
    hub_events = [json.loads(x) for x in (fed.hub.state_dir / "audit.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "feasibility.asked" and e["actor"] == "rosa" for e in hub_events) == 2


@pytest.mark.slow
@pytest.mark.browser
def test_paste_a_definition_and_see_the_counts_in_chromium(fed: Federation, chromium: Any, artifacts_dir: Any) -> None:
    """Paste the YAML, ask the sites (the form), then edit it with "Ask again as I edit" on: the script
    sends the changed definition and the page's numbers are again the nodes' released answers."""
    from test_portal_browser import check_a11y, sign_in

    add_user(fed.hub, "rosa2", "researcher", [PROJECT])
    ctx = chromium.new_context(viewport={"width": 1280, "height": 900}, base_url=fed.hub.url, bypass_csp=True)
    errors: list[str] = []
    try:
        page = ctx.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        sign_in(page, "rosa2")
        page.goto("/portal/cohorts")
        page.screenshot(path=str(artifacts_dir / "portal-cohorts.png"), full_page=True)
        check_a11y(page, "cohorts")
        page.get_by_label("Definition (YAML or ATLAS JSON)").fill(T2D_YAML)
        page.locator("#paste-h").locator("xpath=..").get_by_role("button", name="Check and ask the sites").click()
        page.wait_for_url("**/portal/cohorts")
        page.locator("#cohort-attrition").wait_for()
        first = page_numbers(page.content())
        page.screenshot(path=str(artifacts_dir / "portal-cohort-counts.png"), full_page=True)
        check_a11y(page, "cohort counts")
        # live: tick the box, change the definition, wait for the script's answer
        page.locator("#paste-live").check()
        edited = T2D_YAML.replace("prior_days: 365", "prior_days: 180")
        page.locator("#definition").fill(edited)
        page.wait_for_function("document.querySelector('#cohort-yaml') && "
                               "document.querySelector('#cohort-yaml').textContent.includes('prior_days: 180')",
                               timeout=60_000)
        page.locator("#cohort-attrition").wait_for()
        live = page_numbers(page.content())
        page.screenshot(path=str(artifacts_dir / "portal-cohort-live.png"), full_page=True)
        check_a11y(page, "cohort live counts")
    finally:
        ctx.close()
    assert errors == []
    check_against_nodes(fed, first, load_definition(EXAMPLES / "type2_diabetes_metformin.yaml").to_dict())
    check_against_nodes(fed, live, dsl.from_yaml(edited).to_dict())


# ---- the loader's text entry point -------------------------------------------------------------------------
def test_definition_from_text_reads_as_the_files_are_read() -> None:
    from mercia.cohorts.loader import definition_from_text
    from mercia.errors import CohortDefinitionError

    assert definition_from_text(T2D_YAML, "yaml") == load_definition(EXAMPLES / "type2_diabetes_metformin.yaml")
    assert definition_from_text(ATLAS_JSON, "json", name="gi_bleed_atlas") == load_definition(
        EXAMPLES / "gi_bleed_atlas.json")
    model_yaml = load_definition(EXAMPLES / "new_nsaid_users.yaml").to_yaml()  # the model's own YAML
    assert definition_from_text(model_yaml, "yaml") == load_definition(EXAMPLES / "new_nsaid_users.yaml")
    for text, form, problem in (("x: 1", "toml", "form: 'toml' is not a form"), ("\n", "yaml", "is empty")):
        with pytest.raises(CohortDefinitionError, match=problem):
            definition_from_text(text, form)
