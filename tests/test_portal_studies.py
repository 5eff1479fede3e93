"""The portal's studies pages over real HTTP (issue 17, item 4): a hub and two nodes on 127.0.0.1.

Compose a study in the composer (forms made from the analyses' settings models), check it (its YAML and
content hash, equal to what `StudyPackage` gives), send it to chosen sites, follow each site's status,
have it approved at the nodes by their custodians, read the pooled report and download the released
tables as CSV and Parquet. Every number on the report page is one a site released (or the hub's
meta-analysis of released estimates). Each route is asked with no session, with a role the hub does
not serve, by a researcher of another project, and each POST without its CSRF token. Bad input is a
page naming the field, never a 500.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from federation_support import FEMALE, MALE, PROJECT, Federation, hypertension, make_site
from mercia.study.package import EXAMPLES_DIR
from test_portal import PASSWORD, T, Visitor

# Women and men with a first hypertension diagnosis (pasted as JSON: the model form, as ATLAS exports
# are JSON) and heart-failure admission (pasted as the cohort language's YAML): at 20,000 persons a site
# releases the Cox model of women vs men, so the hub pools it.
WOMEN = json.dumps(hypertension(FEMALE))
MEN = json.dumps(hypertension(MALE))
HF = yaml.safe_dump(yaml.safe_load((EXAMPLES_DIR / "sglt2_heart_failure" / "study.yaml").read_text())
                    ["cohorts"]["hf_admission"]["definition"], sort_keys=False)
PERSONS = 20_000


def compose_fields(name: str = "portal study") -> dict[str, Any]:
    """The composer's fields for a small study: three pasted cohorts, cohort entries, incidence,
    Kaplan-Meier curves and a Cox model."""
    return {
        "study_name": name, "cohort1_key": "women", "cohort1_definition": WOMEN,
        "cohort2_key": "men", "cohort2_definition": MEN, "cohort3_key": "hf", "cohort3_definition": HF,
        "a.cohort_entries.on": "1", "a.cohort_entries.cohorts": "women, men", "a.cohort_entries.interval": "year",
        "a.incidence.on": "1", "a.incidence.outcome": "hf", "a.incidence.settings.washout_days": "0",
        "a.incidence.settings.by.shown": "1", "a.incidence.settings.by": ["calendar_year"],
        "a.kaplan_meier.on": "1", "a.kaplan_meier.targets": "women, men", "a.kaplan_meier.outcome": "hf",
        "a.kaplan_meier.settings.censor_at": "observation_end",
        "a.cox.on": "1", "a.cox.target": "women", "a.cox.comparator": "men", "a.cox.outcome": "hf",
        "a.cox.settings.sex": "false", "a.cox.settings.covariates": "[]", "a.cox.settings.ph_test": "false",
    }


def package_data(name: str = "portal study") -> dict[str, Any]:
    """The same study written as a package by hand."""
    return {
        "name": name,
        "cohorts": {"women": {"definition": hypertension(FEMALE)}, "men": {"definition": hypertension(MALE)},
                    "hf": {"definition": yaml.safe_load(HF)}},
        "analyses": [{"type": "cohort_entries", "cohorts": ["women", "men"]},
                     {"type": "incidence", "outcome": "hf", "settings": {"by": ["calendar_year"]}},
                     {"type": "kaplan_meier", "targets": ["women", "men"], "outcome": "hf"},
                     {"type": "cox", "target": "women", "comparator": "men", "outcome": "hf",
                      "settings": {"sex": False, "covariates": [], "ph_test": False}}],
    }


def expected_package(name: str = "portal study") -> Any:
    """The hand-written package: its hash is what the composer must show."""
    from mercia.study import StudyPackage

    return StudyPackage.from_dict(package_data(name))


def add_portal_user(fed: Federation, name: str, role: str, projects: list[str]) -> None:
    from mercia.federation.auth import ROLES
    from mercia.federation.hub import load_hub_config
    from mercia.portal.accounts import accounts_for

    cfg = load_hub_config(fed.hub.config_path)
    accounts = accounts_for(cfg.state_dir / "hub.sqlite", cfg.portal)
    accounts.roles = ROLES  # so a role the hub serves no page to can exist (the wrong-role refusals)
    accounts.add_user(name, role, projects, PASSWORD)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("portal-studies")
    sites = {"east": make_site(root / "east.duckdb", persons=PERSONS, seed=11),
             "west": make_site(root / "west.duckdb", persons=PERSONS, seed=12, first_person_id=100_000)}
    with Federation(root, sites) as f:
        with f.admin() as admin:
            admin.add_project("other", ["west"])
        for name, role, projects in (("rita", "researcher", [PROJECT]), ("oscar", "researcher", ["other"]),
                                     ("root", "admin", ["*"]), ("clara", "clinician", [PROJECT])):
            add_portal_user(f, name, role, projects)
        yield f


@pytest.fixture
def visitor(fed: Federation) -> Iterator[Any]:
    made: list[Visitor] = []

    def make(name: str | None = None) -> Visitor:
        v = Visitor(fed.hub.url)
        made.append(v)
        if name is not None:
            assert v.sign_in(name).status_code == 303
        return v

    yield make
    for v in made:
        v.close()


def form_of(page: str, action: str) -> dict[str, str]:
    """The hidden fields of the form posting to `action` on `page`."""
    import html

    m = re.search(rf'<form method="post" action="{re.escape(action)}">(.*?)</form>', page, re.S)
    assert m, action
    return {k: html.unescape(v) for k, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', m.group(1))}


def wait_for(check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise TimeoutError("condition not met")


@pytest.fixture(scope="module")
def released(fed: Federation) -> dict[str, Any]:
    """A study composed and sent in the portal by rita, approved at both nodes, closed by the hub: its
    hash and the hub's released results as the API gives them."""
    v = Visitor(fed.hub.url)
    try:
        assert v.sign_in("rita").status_code == 303
        page = v.post("/portal/studies/new", compose_fields())
        assert page.status_code == 200, T(page)[:3000]
        sent = form_of(page.text, "/portal/studies/submit")
        r = v.post("/portal/studies/submit", {**sent, "project": PROJECT, "sites": ["east", "west"]})
        assert r.status_code == 303, T(r)[:3000]
        h = r.headers["location"].split("/")[-1].split("?")[0]
        for node in fed.nodes.values():
            node.wait_status(h, {"pending_approval"})
            node.approve(h)
        wait_for(lambda: "Read the pooled report" in v.get(f"/portal/studies/{h}").text)
    finally:
        v.close()
    results = httpx.get(f"{fed.hub.url}/api/v1/studies/{h}/results", timeout=60,
                        headers={"Authorization": f"Bearer {fed.researcher_token}"}).json()
    return {"hash": h, "results": results}


# ---- composing ----------------------------------------------------------------------------------------
def test_the_composer_has_a_form_per_analysis_type_made_from_its_model(visitor: Any) -> None:
    from mercia.study import kinds

    page = T(visitor("rita").get("/portal/studies/new"))
    for tag in kinds.types():
        assert f'name="a.{tag}.on"' in page, tag
    # fields and defaults read from the settings models: a Literal is a choice, a number its default
    assert 'name="a.kaplan_meier.settings.censor_at"' in page and "<option selected>observation_end</option>" in page
    assert re.search(r'name="a.incidence.settings.washout_days" type="text" inputmode="decimal" value="0"', page)
    assert 'name="a.cox.settings.survival.tar_start"' in page  # a nested settings model, flattened
    assert 'name="a.incidence.settings.age_groups"' in page and "[[0, 17], [18, 39], [40, 64], [65, null]]" in page


def test_a_field_added_to_a_settings_model_appears_in_the_form() -> None:
    """A type registered at run time gets its form with no change to the portal."""
    from typing import Literal

    from pydantic import BaseModel, Field

    from mercia.portal.study_forms import analysis_forms
    from mercia.study import kinds

    class Sizes(BaseModel):
        bins: int = Field(7, ge=1, description="how many bins")
        scale: Literal["linear", "log"] = "log"

    class CohortSizes(kinds.AnalysisKind):
        type: Literal["cohort_sizes_test"]
        cohorts: list[str] = Field(description="keys of the cohorts to size")
        settings: Sizes = Field(default_factory=Sizes)

        def cohorts_used(self) -> list[str]:
            return list(self.cohorts)

    kinds.register(CohortSizes)
    try:
        form = next(f for f in analysis_forms() if f.type == "cohort_sizes_test")
        got = {i.name: (i.widget, i.value, i.options) for i in form.inputs}
        assert got["a.cohort_sizes_test.settings.bins"] == ("number", "7", [])
        assert got["a.cohort_sizes_test.settings.scale"] == ("select", "log", ["linear", "log"])
        assert got["a.cohort_sizes_test.cohorts"][0] == "keys"
    finally:
        kinds.unregister("cohort_sizes_test")


def test_check_shows_the_yaml_and_the_hash_of_the_package(visitor: Any) -> None:
    r = visitor("rita").post("/portal/studies/new", compose_fields("hash check"))
    assert r.status_code == 200, T(r)[:2000]
    page = T(r)
    want = expected_package("hash check")
    assert re.search(r'<code id="package-hash">([0-9a-f]{64})</code>', page).group(1) == want.content_hash
    shown = re.search(r'<pre id="package-yaml"[^>]*>(.*?)</pre>', page, re.S).group(1)
    from mercia.study import StudyPackage

    assert StudyPackage.from_dict(yaml.safe_load(shown)).content_hash == want.content_hash


def test_a_json_cohort_gives_the_same_hash_as_its_yaml(visitor: Any) -> None:
    from mercia.cohorts import dsl

    as_json = json.dumps(dsl.from_dict(yaml.safe_load(HF)).to_dict())
    fields = {**compose_fields("json cohort"), "cohort3_definition": as_json}
    page = T(visitor("rita").post("/portal/studies/new", fields))
    assert expected_package("json cohort").content_hash in page


def test_a_whole_package_pasted_is_checked(visitor: Any) -> None:
    pkg = expected_package("pasted")
    for text in (yaml.safe_dump(package_data("pasted")), json.dumps(package_data("pasted"))):
        r = visitor("rita").post("/portal/studies/package", {"package_text": text})
        assert r.status_code == 200 and pkg.content_hash in T(r)


def test_two_analyses_of_one_type_with_other_settings(visitor: Any) -> None:
    """'Add another' gives a second incidence form (a.incidence.2.*, named incidence_2, at its defaults and
    ticked); the package made has both, as a package written by hand with two incidence analyses."""
    v = visitor("rita")
    r = v.post("/portal/studies/new", {**compose_fields("two incidences"), "action": "add", "add_type": "incidence"})
    assert r.status_code == 200, T(r)[:3000]
    page = r.text
    assert "Added another incidence analysis (#2), named incidence_2" in T(r)
    assert '<input type="hidden" name="a.incidence.copies" value="2">' in page
    assert re.search(r'name="a\.incidence\.2\.on" value="1" checked', page)
    assert re.search(r'name="a\.incidence\.2\.name" type="text" value="incidence_2"', page)
    assert re.search(r'name="a\.incidence\.2\.settings\.washout_days" type="text" inputmode="decimal" value="0"', page)
    assert 'name="a.incidence.settings.washout_days" type="text" inputmode="decimal" value="0"' in page  # kept
    assert "<package" not in page and 'id="package-hash"' not in page  # nothing checked yet
    second = {"a.incidence.copies": "2", "a.incidence.2.on": "1", "a.incidence.2.name": "incidence_washout",
              "a.incidence.2.outcome": "hf", "a.incidence.2.settings.washout_days": "365",
              "a.incidence.2.settings.by.shown": "1", "a.incidence.2.settings.by": ["sex", "age_group"]}
    r = v.post("/portal/studies/new", {**compose_fields("two incidences"), **second})
    assert r.status_code == 200, T(r)[:3000]
    data = package_data("two incidences")
    data["analyses"].insert(2, {"type": "incidence", "name": "incidence_washout", "outcome": "hf",
                                "settings": {"washout_days": 365, "by": ["sex", "age_group"]}})
    from mercia.study import StudyPackage

    want = StudyPackage.from_dict(data)
    assert re.search(r'<code id="package-hash">([0-9a-f]{64})</code>', r.text).group(1) == want.content_hash
    assert "incidence_washout (incidence)" in T(r)
    # the same name twice: the package's own refusal, naming the field
    r = v.post("/portal/studies/new", {**compose_fields("two incidences"), **second, "a.incidence.2.name": ""})
    assert r.status_code == 400 and "analyses ['incidence'] appear more than once; give each a distinct `name:`" in T(r)
    # a wrong value in the second form names it
    r = v.post("/portal/studies/new", {**compose_fields(), **second, "a.incidence.2.settings.washout_days": "x"})
    assert r.status_code == 400 and "analysis incidence #2.settings.washout_days: 'x' is not a whole number" in T(r)
    # the second one unticked: the package has one incidence analysis, as before
    r = v.post("/portal/studies/new", {**compose_fields(), **second, "a.incidence.2.on": ""})
    assert r.status_code == 200 and expected_package().content_hash in r.text


@pytest.mark.parametrize("change,message", [
    ({"add_type": "nothing"}, "add another: 'nothing' is not allowed (allowed: "),
    ({"add_type": "incidence", "a.incidence.copies": "5"}, "add another: a package here runs at most 5 incidence"),
])
def test_adding_an_analysis_of_a_bad_type_names_the_field(visitor: Any, change: dict[str, str], message: str) -> None:
    r = visitor("rita").post("/portal/studies/new", {**compose_fields(), "action": "add", **change})
    assert r.status_code == 400 and message in T(r), T(r)[:3000]


BAD = [
    ({"study_name": ""}, "study name: give the study a name"),
    ({"cohort1_key": "1bad"}, "cohort 1 key: '1bad' is not a key"),
    ({"cohort2_key": "women"}, "cohort 2 key: 'women' is given twice"),
    ({"cohort1_definition": "name: x\nentry: [{condition: nowhere}]\n"}, "cohort 1 (women) definition:"),
    ({"cohort1_definition": '{"expression": 5}'}, "cohort 1 (women) definition:"),
    ({"a.incidence.settings.washout_days": "ten"}, "analysis incidence.settings.washout_days: 'ten' is not a whole number"),
    ({"a.incidence.settings.washout_days": "-3"}, "analyses[1].settings.washout_days"),
    ({"a.kaplan_meier.settings.censor_at": "never"}, "'never' is not allowed (allowed: observation_end, cohort_end)"),
    ({"a.incidence.settings.by": ["weekday"]}, "'weekday' is not allowed (allowed: age_group, sex, calendar_year)"),
    ({"a.incidence.settings.age_groups": "[[0, 17"}, "analysis incidence.settings.age_groups: not valid YAML"),
    ({"a.kaplan_meier.outcome": ""}, "analyses[2].outcome: required, missing"),
    ({"a.kaplan_meier.outcome": "nobody"}, "refers to cohort(s) ['nobody']"),
    ({"a.cohort_entries.on": "", "a.incidence.on": "", "a.kaplan_meier.on": "", "a.cox.on": ""},
     "analyses: tick at least one"),
    ({"a.cox.settings.ties": "exact"}, "'exact' is not allowed (allowed: efron, breslow)"),
    ({"disclosure": "none"}, "disclosure: 'none' is not allowed"),
    ({"cohort1_definition": "- 1\n- 2\n"}, "cohort 1 (women) definition:"),
    ({"a.incidence.settings.age_groups": "hello"}, "analyses[1].settings.age_groups"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_input_is_a_page_naming_the_field(visitor: Any, change: dict[str, Any], message: str) -> None:
    r = visitor("rita").post("/portal/studies/new", {**compose_fields(), **change})
    assert r.status_code == 400, T(r)[:2000]
    page = T(r)
    assert 'class="problem" role="alert"' in page and message in page, re.findall(r'class="problem"[^>]*>(.*?)<', page)
    assert "Traceback" not in page


@pytest.mark.parametrize("text,message", [("", "package: paste a study package"),
                                          ("{not json", "package: malformed JSON at line 1"),
                                          ("- a\n- b\n", "package: a study package is a mapping"),
                                          ("name: x\ncohorts: {}\nanalyses: []\n", "cohorts:"),
                                          ('{"name": "x", "cohorts": {"a": 5}, "analyses": '
                                           '[{"type": "cohort_entries", "cohorts": ["a"]}]}', "cohorts.a")])
def test_a_bad_pasted_package_is_a_page_naming_the_field(visitor: Any, text: str, message: str) -> None:
    r = visitor("rita").post("/portal/studies/package", {"package_text": text})
    assert r.status_code == 400 and message in T(r), T(r)[:2000]


def test_garbage_in_any_generated_field_is_a_page_never_a_500(visitor: Any) -> None:
    from mercia.portal.study_forms import analysis_forms

    v = visitor("rita")
    ticked = {"cohort_entries", "incidence", "kaplan_meier", "cox"}
    for form in analysis_forms():
        if form.type not in ticked:
            continue
        for i in form.inputs:
            for junk in ("{[", "-1e309", "x" * 2000, "[1, {a: b}]"):
                r = v.post("/portal/studies/new", {**compose_fields(), i.name: junk, f"{i.name}.shown": "1"})
                assert r.status_code in (200, 400), (i.name, junk, r.status_code)
                if r.status_code == 400:
                    assert 'class="problem" role="alert"' in r.text


def test_submit_refuses_a_changed_package_a_site_outside_the_project_and_another_project(fed: Federation,
                                                                                         visitor: Any) -> None:
    v = visitor("rita")
    sent = form_of(v.post("/portal/studies/new", compose_fields("refusals")).text, "/portal/studies/submit")
    changed = {**sent, "package_text": sent["package_text"].replace("name: refusals", "name: changed"),
               "project": PROJECT}
    r = v.post("/portal/studies/submit", changed)
    assert r.status_code == 400 and "hash: the package's hash is" in T(r)
    r = v.post("/portal/studies/submit", {**sent, "project": PROJECT, "sites": ["nowhere"]})
    assert r.status_code == 400 and "sites: nowhere not in project proj" in T(r)
    r = v.post("/portal/studies/submit", {**sent, "project": "other"})
    assert r.status_code == 403  # the API's own refusal: rita is not in project other
    assert "not a member" in T(r)
    from mercia.federation.hub.registry import HubStore

    assert "refusals" not in {s["name"] for s in HubStore(Path(fed.hub.state_dir) / "hub.sqlite").studies()}


# ---- the flow -------------------------------------------------------------------------------------------
def test_the_study_is_listed_with_each_sites_status(visitor: Any, released: dict[str, Any]) -> None:
    h = released["hash"]
    page = T(visitor("rita").get("/portal/studies"))
    assert h[:12] in page and "portal study" in page
    assert page.count("east: <span") >= 1 and ">released</span>" in page
    state = T(visitor("rita").get(f"/portal/studies/{h}"))
    assert f'<code id="study-hash">{h}</code>' in state and state.count(">released</span>") == 2
    assert "Read the pooled report" in state


def test_status_follows_the_sites_pending_then_rejected(fed: Federation, visitor: Any) -> None:
    v = visitor("rita")
    sent = form_of(v.post("/portal/studies/new", compose_fields("to be rejected")).text, "/portal/studies/submit")
    r = v.post("/portal/studies/submit", {**sent, "project": PROJECT, "sites": ["east"]})
    h = r.headers["location"].split("/")[-1].split("?")[0]
    assert "Sent:" in T(v.get(r.headers["location"]))
    fed.nodes["east"].wait_status(h, {"pending_approval"})
    wait_for(lambda: ">pending approval</span>" in v.get(f"/portal/studies/{h}").text)
    with fed.nodes["east"].client("custodian") as c:
        assert c.post(f"/api/v1/studies/{h}/reject", json={"reason": "not this one"}).status_code == 200
    def rejected() -> str | None:
        page = T(v.get(f"/portal/studies/{h}"))
        return page if ">rejected</span>" in page else None

    page = wait_for(rejected)
    assert "not this one" in page
    # closed by the hub (every site answered): the report says no site released anything to pool
    report = v.get(f"/portal/studies/{h}/report")
    assert report.status_code == 200 and "No site released a model estimate to pool" in T(report)


def test_an_open_study_has_no_report_yet_and_can_be_closed(fed: Federation, visitor: Any) -> None:
    v = visitor("rita")
    sent = form_of(v.post("/portal/studies/new", compose_fields("closed early")).text, "/portal/studies/submit")
    h = v.post("/portal/studies/submit", {**sent, "project": PROJECT, "sites": ["west"]}).headers["location"]
    h = h.split("/")[-1].split("?")[0]
    r = v.get(f"/portal/studies/{h}/report")
    assert r.status_code == 409 and "still open" in T(r)
    assert v.get(f"/portal/studies/{h}/pooled.csv").status_code == 409
    r = v.post(f"/portal/studies/{h}/close")
    assert r.status_code == 200 and "Closed:" in T(r) and "excluded" in T(r)


def test_the_report_shows_released_results_with_plots(visitor: Any, released: dict[str, Any]) -> None:
    r = visitor("rita").get(f"/portal/studies/{released['hash']}/report")
    assert r.status_code == 200
    page = r.text
    assert "<script" not in page.split("</head>")[1]  # no inline script: the plots are SVG
    assert 'id="km0"' in page and 'id="inc0"' in page  # Kaplan-Meier curves and incidence drawn
    assert page.count('data-toggles="km0-') == 4  # one curve per site and cohort
    assert 'id="forest0"' in page  # the pooled Cox model: each site's ratio and the pooled ones
    assert "treatment · pooled, random" in page
    for site in ("east", "west"):
        assert f"/results/{site}/cohort_counts.csv" in page


def numbers_in(text: str) -> list[str]:
    return re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)


def matches(shown: str, reference: list[float]) -> bool:
    value = float(shown.replace(",", ""))
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return any(abs(round(ref, decimals) - value) < 10 ** -(decimals + 3) for ref in reference)


def released_numbers(results: dict[str, Any]) -> list[float]:
    """Every number the sites released, every number of the hub's pooling, and the exp() of those
    (ratios): the only numbers a result page may show."""
    out: list[float] = []

    def walk(x: Any) -> None:
        if isinstance(x, bool):
            return
        if isinstance(x, int | float) and math.isfinite(x):
            out.append(float(x))
        elif isinstance(x, str):
            out.extend(float(n.replace(",", "")) for n in numbers_in(x))
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for payload in results["sites"].values():
        walk([t["rows"] for t in payload["tables"] if t["status"] == "released"])
    walk(results["pooled"].get("tables", {}))
    out += [math.exp(x) for x in list(out) if abs(x) < 50]
    return out


def test_every_number_on_the_report_is_a_released_one(visitor: Any, released: dict[str, Any]) -> None:
    """Numbers in the result cells and in every plotted point's label: each is a released value (at the
    precision shown) or a ratio of a released estimate."""
    page = visitor("rita").get(f"/portal/studies/{released['hash']}/report").text
    reference = released_numbers(released["results"])
    cells = re.findall(r'<td class="num">([^<]*)</td>', page)
    points = re.findall(r'class="pt"[^>]*><title>([^<]*)</title>', page)
    assert len(cells) > 50 and len(points) > 10
    assert re.search(r'<table id="pooled"', page)  # the meta-analysis is among them
    shown = [n for c in cells for n in numbers_in(c)]
    # a point's label after "site: cohort name: ", without the unit of rates ("per 1,000 person-years")
    shown += [n for p in points for n in numbers_in(p.split(": ", 1)[1].replace("per 1,000 person-years", ""))]
    bad = [n for n in shown if not matches(n, reference)]
    assert bad == [], bad[:20]
    # and the check itself finds a number that was not released
    assert not matches("123457", reference)


def test_download_the_released_tables_as_csv_and_parquet(visitor: Any, released: dict[str, Any]) -> None:
    v = visitor("rita")
    h = released["hash"]
    table = next(t for t in released["results"]["sites"]["east"]["tables"] if t["name"] == "cohort_counts")
    want = pd.DataFrame(table["rows"], columns=table["columns"])
    r = v.get(f"/portal/studies/{h}/results/east/cohort_counts.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(r.text)), want, check_dtype=False)
    r = v.get(f"/portal/studies/{h}/results/east/cohort_counts.parquet")
    assert r.status_code == 200
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(r.content)), want, check_dtype=False)
    r = v.get(f"/portal/studies/{h}/pooled.csv")
    assert r.status_code == 200 and r.text.startswith("model,term,source,estimate")
    # a table the site did not release, or that does not exist: 404; a format not offered: 422
    assert v.get(f"/portal/studies/{h}/results/east/nothing_here.csv").status_code == 404
    assert v.get(f"/portal/studies/{h}/results/east/cohort_counts.xlsx").status_code == 422
    assert v.get(f"/portal/studies/{h}/results/..%2F..%2Fetc/passwd.csv").status_code in (404, 422)


# ---- refusals ------------------------------------------------------------------------------------------
def routes(h: str) -> list[str]:
    return ["/portal/studies", "/portal/studies/new", f"/portal/studies/{h}", f"/portal/studies/{h}/report",
            f"/portal/studies/{h}/results/east/cohort_counts.csv", f"/portal/studies/{h}/pooled.parquet"]


def posts(h: str) -> list[tuple[str, dict[str, Any]]]:
    return [("/portal/studies/new", compose_fields()), ("/portal/studies/package", {"package_text": "name: x"}),
            ("/portal/studies/submit", {"package_text": "name: x", "hash": "0" * 64, "project": PROJECT}),
            (f"/portal/studies/{h}/close", {}), (f"/portal/studies/{h}/federated", {"analysis": "cox", "model": "cox"})]


def test_no_session_goes_to_the_sign_in_page(visitor: Any, released: dict[str, Any]) -> None:
    for path in routes(released["hash"]):
        r = visitor().get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/portal/sign-in?next="), path
    for path, data in posts(released["hash"]):
        r = visitor().post(path, data, csrf=False)
        assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in", path


def test_a_role_the_hub_does_not_serve_gets_the_403_page(visitor: Any, released: dict[str, Any]) -> None:
    v = visitor("clara")
    for path in routes(released["hash"]):
        r = v.get(path)
        assert r.status_code == 403, path
        assert "this needs role" in T(r) and 'class="skip-link"' in T(r), path
    for path, data in posts(released["hash"]):
        assert v.post(path, data).status_code == 403, path


def test_another_projects_researcher_sees_no_study(visitor: Any, released: dict[str, Any]) -> None:
    v = visitor("oscar")
    assert released["hash"][:12] not in v.get("/portal/studies").text
    for path in routes(released["hash"])[2:]:
        r = v.get(path)
        assert r.status_code == 404, path  # as for a hash the hub does not hold, as the API answers
        assert "no study with hash" in T(r)
    assert v.post(f"/portal/studies/{released['hash']}/close").status_code == 404
    r = v.post(f"/portal/studies/{released['hash']}/federated", {"analysis": "cox", "model": "cox"})
    assert r.status_code == 404 and "no study with hash" in T(r)  # as the API answers another project's study
    # an admin of every project sees it
    assert visitor("root").get(f"/portal/studies/{released['hash']}/report").status_code == 200


def test_a_post_without_its_csrf_token_is_refused(visitor: Any, released: dict[str, Any]) -> None:
    v = visitor("rita")
    other = visitor("root")
    for path, data in posts(released["hash"]):
        assert v.post(path, data, csrf=False).status_code == 403, path
        assert v.post(path, {**data, "csrf": other.csrf}).status_code == 403, path  # another session's token
    assert "closed" in T(v.get(f"/portal/studies/{released['hash']}"))


def test_the_portal_and_the_api_list_the_same_studies(fed: Federation, visitor: Any, released: dict[str, Any]
                                                      ) -> None:
    api = httpx.get(f"{fed.hub.url}/api/v1/studies", headers={"Authorization": f"Bearer {fed.researcher_token}"}).json()
    page = visitor("rita").get("/portal/studies").text
    assert {s["hash"][:12] for s in api} == set(re.findall(r'<code class="hash">([0-9a-f]{12})</code>', page))


def test_the_package_on_the_hub_is_the_one_checked(fed: Federation, released: dict[str, Any]) -> None:
    from mercia.federation.hub.registry import HubStore

    study = HubStore(Path(fed.hub.state_dir) / "hub.sqlite").study(released["hash"])
    assert study["hash"] == expected_package().content_hash and study["submitted_by"] == "rita"


# ---- the plots, from released tables ----------------------------------------------------------------------
def model_table(site: str, coef: float, se: float, status: str = "released") -> dict[str, Any]:
    return {"name": "cox_one", "kind": "model", "site": site, "status": status,
            "columns": ["term", "coef", "se"], "rows": [["treatment", coef, se]]}


def test_the_forest_plot_and_pooled_table_show_the_hubs_meta_analysis() -> None:
    """The pooled estimates of released model terms (pool_results, as the hub pools them) are drawn as a
    forest plot with each site's and the pooled ratio, and tabled on the log scale; a blocked table is
    neither pooled nor shown."""
    from mercia.federation.hub.pool import pool_results
    from mercia.portal.study_report import report_view

    sites = {"a": {"tables": [model_table("a", 0.2, 0.1)]}, "b": {"tables": [model_table("b", 0.4, 0.2)]},
             "c": {"tables": [model_table("c", 9.0, 0.1, status="blocked")]}}
    results = {"sites": sites, "pooled": pool_results(sites)}
    view = report_view(results, {})
    (forest,) = view["forest"]
    assert [s["label"] for s in forest["series"]] == ["a", "b", "pooled fixed", "pooled random"]
    titles = re.findall(r"<title>([^<]*)</title>", forest["svg"])
    fixed = results["pooled"]["tables"]["cox_one"]["treatment"]["fixed"]
    assert any(f"ratio {math.exp(fixed['estimate']):.2f}" in t for t in titles), titles
    assert any(t.startswith("treatment · a: ratio 1.22 ") for t in titles)  # exp(0.2)
    assert [r["source"] for r in view["pooled_rows"]] == ["a", "b", "pooled, fixed effect", "pooled, random effect"]
    assert not any("· c" in t for t in titles) and "8103" not in forest["svg"]  # blocked site c: exp(9) nowhere
    assert [t["site"] for t in view["tables"]] == ["a", "b"]


def test_a_suppressed_value_is_a_dash_and_never_a_number() -> None:
    from mercia.portal.study_report import report_view, show

    assert show(None) == "–" and show(float("nan")) == "–" and show(3000) == "3,000" and show(0.05) == "0.05"
    km = {"name": "km", "kind": "survival", "site": "a", "status": "released",
          "columns": ["cohort_id", "time", "n_at_risk", "estimate", "ci_lower", "ci_upper"],
          "rows": [[1, 0.0, 20, 1.0, 1.0, 1.0], [1, 30.0, None, 0.9, 0.8, 0.97]]}
    view = report_view({"sites": {"a": {"tables": [km]}}, "pooled": {}}, {1: "Hypertension"})
    (plot,) = view["km"]
    assert "a: Hypertension: day 30, survival 0.9 (0.8 to 0.97) at risk –" in plot["svg"]


def test_an_incidence_line_breaks_at_a_level_not_released() -> None:
    from mercia.portal.study_report import report_view

    rates = {"name": "inc", "kind": "rates", "site": "a", "status": "released",
             "columns": ["calendar_year", "n_events", "person_years", "incidence_per_1000py"],
             "rows": [["2012", 8, 1000.0, 8.0], ["2013", None, 900.0, None], ["2014", 10, 1000.0, 10.0],
                      ["2015", 12, 1000.0, 12.0]]}
    (plot,) = report_view({"sites": {"a": {"tables": [rates]}}, "pooled": {}}, {})["incidence"]
    d = re.search(r'<path d="([^"]+)" fill="none" stroke-width="1.5"/>', plot["svg"]).group(1)
    assert [c[0] for c in d.split()] == ["M", "M", "L"]  # 2012 alone; 2014 to 2015


# ---- federated regression from the study page ----------------------------------------------------------------
def fit_cells(page: str, table_id: str) -> list[list[str]]:
    """The cells of one fit's table as shown (row header first)."""
    import html

    body = re.search(rf'<table id="{table_id}"[^>]*>.*?<tbody>(.*?)</tbody>', page, re.S)
    assert body, table_id
    return [[html.unescape(c) for c in re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)]


def fit_numbers(fit: dict[str, Any]) -> list[float]:
    """Every number of the API's answer to a fit: the only numbers its part of the page may show."""
    out: list[float] = []

    def walk(x: Any) -> None:
        if isinstance(x, bool):
            return
        if isinstance(x, int | float) and math.isfinite(x):
            out.append(float(x))
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk({k: v for k, v in fit.items() if k not in ("analysis", "model", "sites", "left_out")})
    return out


@pytest.fixture(scope="module")
def fitted(fed: Federation, released: dict[str, Any]) -> dict[str, Any]:
    """The study's Cox model fitted from the study page by rita, and then through the API."""
    v = Visitor(fed.hub.url)
    try:
        assert v.sign_in("rita").status_code == 303
        page = v.get(f"/portal/studies/{released['hash']}").text
        assert 'action="/portal/studies/' + released["hash"] + '/federated"' in page and "<option>cox</option>" in page
        r = v.post(f"/portal/studies/{released['hash']}/federated", {"analysis": "cox", "model": "cox"})
    finally:
        v.close()
    api = httpx.post(f"{fed.hub.url}/api/v1/studies/{released['hash']}/federated", timeout=120,
                     json={"analysis": "cox", "model": "cox"},
                     headers={"Authorization": f"Bearer {fed.researcher_token}"})
    assert api.status_code == 200, api.text
    return {"page": r, "api": api.json()}


def test_a_federated_fit_from_the_study_page_is_the_apis(fed: Federation, released: dict[str, Any],
                                                        fitted: dict[str, Any]) -> None:
    from mercia.portal.study_federated import cell

    r, fit = fitted["page"], fitted["api"]
    assert r.status_code == 200, T(r)[:3000]
    assert fit["converged"] and sorted(fit["sites"]) == ["east", "west"], fit
    assert "Fitted cox as a cox model across east, west." in T(r)
    # the page's table is the API's summary, value for value, as the page prints numbers
    want = [[cell(c, v)[0] for c, v in zip(fit["summary"]["columns"], row, strict=True)]
            for row in fit["summary"]["rows"]]
    assert fit_cells(r.text, "fit-cox-cox") == want
    assert want[0][0] == "treatment"
    # the hub keeps the fit with the results, as the API's answer
    results = httpx.get(f"{fed.hub.url}/api/v1/studies/{released['hash']}/results", timeout=60,
                        headers={"Authorization": f"Bearer {fed.researcher_token}"}).json()
    (kept,) = [f for f in results["federated"] if (f["analysis"], f["model"]) == ("cox", "cox")]
    assert kept["coef"] == fit["coef"] and kept["se"] == fit["se"]
    # audited as the API's fit is, under the portal user's name
    from test_portal import audit_events

    fits = [e for e in audit_events(fed.hub)
            if e["event"] == "federated.fit" and e["details"].get("hash") == released["hash"]]
    assert {e["actor"] for e in fits} >= {"rita", "alice"}
    assert all(e["details"] == {"hash": released["hash"], "analysis": "cox", "model": "cox", "sites": ["east", "west"]}
               for e in fits)


def test_every_number_of_the_fit_on_the_page_is_one_the_api_returned(visitor: Any, released: dict[str, Any],
                                                                      fitted: dict[str, Any]) -> None:
    page = visitor("rita").get(f"/portal/studies/{released['hash']}").text
    section = page.split('id="federated"')[1].split("</section>")[0]
    reference = fit_numbers(fitted["api"])
    shown = re.sub(r"<[^>]+>", " ", section)
    bounds = re.findall(r"&lt; (0\.0001)", section)
    shown = re.sub(r"&lt; 0\.0001", " ", shown)
    shown = shown.replace("95%", " ")  # the column headers' own words
    numbers = numbers_in(shown)
    assert len(numbers) >= 10, shown
    bad = [n for n in numbers if not matches(n, reference)]
    assert bad == [], bad
    p = fitted["api"]["summary"]["columns"].index("p")
    assert len(bounds) == sum(1 for row in fitted["api"]["summary"]["rows"] if row[p] < 0.0001)
    assert not matches("987654", reference)  # the check finds a number that was not returned


@pytest.mark.parametrize("change,status,message", [
    ({"model": "probit"}, 400, "model: 'probit' is not allowed (allowed: cox, logistic, poisson)"),
    ({"model": ""}, 400, "model: '' is not allowed"),
    ({"analysis": "nope"}, 400, "analysis: 'nope' is not allowed (allowed: cox)"),
    ({"analysis": "<script>"}, 400, "analysis: '<script>' is not allowed"),
])
def test_a_bad_federated_choice_is_a_page_naming_the_field(visitor: Any, released: dict[str, Any],
                                                           change: dict[str, str], status: int, message: str) -> None:
    r = visitor("rita").post(f"/portal/studies/{released['hash']}/federated", {"analysis": "cox", "model": "cox",
                                                                               **change})
    assert r.status_code == status and message in T(r), T(r)[:3000]
    assert 'class="problem" role="alert"' in r.text and 'id="federated-form"' in r.text
    assert "<script>" not in r.text.split("</head>")[1]  # escaped


def test_a_fit_no_site_can_answer_is_a_message_on_the_page(fed: Federation, visitor: Any) -> None:
    v = visitor("rita")
    sent = form_of(v.post("/portal/studies/new", compose_fields("nobody finished")).text, "/portal/studies/submit")
    r = v.post("/portal/studies/submit", {**sent, "project": PROJECT, "sites": ["west"]})
    h = r.headers["location"].split("/")[-1].split("?")[0]
    r = v.post(f"/portal/studies/{h}/federated", {"analysis": "cox", "model": "logistic"})
    assert r.status_code == 409, T(r)[:3000]
    assert "The model was not fitted: no site has finished this study yet" in T(r)
    assert 'id="federated-form"' in r.text
    # the API answers the same
    api = httpx.post(f"{fed.hub.url}/api/v1/studies/{h}/federated", json={"analysis": "cox", "model": "logistic"},
                     headers={"Authorization": f"Bearer {fed.researcher_token}"}, timeout=60)
    assert api.status_code == 409 and "no site has finished this study yet" in api.text


def test_a_model_the_sites_do_not_release_is_the_one_fixed_answer(fed: Federation, visitor: Any) -> None:
    """A Cox model adjusted for sex of women vs men (the term `male` is 1 - treatment: no fit exists) is
    refused with the API's one model_refused line, never a 5xx."""
    from mercia.disclosure.model_support import MODEL_REFUSED

    v = visitor("rita")
    fields = {**compose_fields("refused model"), "a.cox.settings.sex": "true"}
    page = v.post("/portal/studies/new", fields)
    assert page.status_code == 200, T(page)[:3000]
    sent = form_of(page.text, "/portal/studies/submit")
    h = v.post("/portal/studies/submit", {**sent, "project": PROJECT, "sites": ["east"]}).headers["location"]
    h = h.split("/")[-1].split("?")[0]
    fed.nodes["east"].wait_status(h, {"pending_approval"})
    fed.nodes["east"].approve(h)
    wait_for(lambda: "Read the pooled report" in v.get(f"/portal/studies/{h}").text)
    r = v.post(f"/portal/studies/{h}/federated", {"analysis": "cox", "model": "cox"})
    assert r.status_code == 422, T(r)[:3000]
    assert f"The model was not fitted: {MODEL_REFUSED}" in T(r)
