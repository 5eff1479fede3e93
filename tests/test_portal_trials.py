"""The portal's trial pages and the cohort page's saving, censoring and file upload (issue 17, items 3 and 6).

Over real HTTP on 127.0.0.1. With the portal tests' hub (sites that do not answer): who may (a researcher
or admin in their own projects; signed out goes to sign-in; another user's answer is not found), CSRF on
every POST (URL-encoded and multipart), bad input as one 400 line naming the field (never a 5xx), a file
uploaded without JavaScript (multipart, size-limited), a ClinicalTrials.gov record drafted for review,
and saved cohorts (per project, named, listed, reopened). With a hub and two nodes (slow): every number on
the trial answer and cohort pages is a released answer of the API (the disclosure check), and in Chromium
(browser) the funnel, a what-if toggle, and saving, reopening and deleting a cohort.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import test_portal
from federation_support import PROJECT, Federation, HubServer, make_site
from mercia.cohorts import dsl
from mercia.cohorts.loader import load_definition
from mercia.trials.source import load_trial
from test_portal import T, Visitor, add_user, audit_events

hub = test_portal.hub  # projects proj (east) and other (west): nodes that do not answer; users rita, oscar, pa, root
visitor = test_portal.visitor

ROOT = Path(__file__).resolve().parents[1]
TRIAL_YAML = (ROOT / "examples" / "trials" / "hf_sglt2.yaml").read_text()  # a trial.yaml: named criteria
COHORT_TRIAL = (ROOT / "tests" / "data" / "trials" / "hypertension_t2d.yaml").read_text()  # a cohort as a trial
RECORD = (ROOT / "examples" / "trials" / "NCT03036150.json").read_text()  # a ClinicalTrials.gov record
T2D_YAML = (ROOT / "examples" / "cohorts" / "type2_diabetes_metformin.yaml").read_text()


def asked(hub: HubServer, event: str = "trial_feasibility.asked") -> list[dict[str, Any]]:
    return [e for e in audit_events(hub) if e["event"] == event]


def textarea(page: str, name: str) -> str:
    m = re.search(rf'<textarea id="{name}"[^>]*>(.*?)</textarea>', page, re.S)
    assert m, page[:2000]
    return html.unescape(m.group(1))


# ---- who may ------------------------------------------------------------------------------------------
def test_the_trials_page_for_each_role_and_signed_out(visitor: Any) -> None:
    r = visitor().get("/portal/trials")
    assert r.status_code == 303 and r.headers["location"].startswith("/portal/sign-in?next=")
    r = visitor().post("/portal/trials", {"trial": TRIAL_YAML}, csrf=False)
    assert r.status_code == 303 and "/portal/sign-in" in r.headers["location"]
    for who in ("rita", "pa", "root"):
        r = visitor(who).get("/portal/trials")
        assert r.status_code == 200, T(r)
        assert 'enctype="multipart/form-data"' in r.text and 'name="trial_file"' in r.text
        assert 'href="/portal/trials"' in r.text  # in the navigation


def test_a_researcher_asks_only_in_their_own_projects(visitor: Any, hub: HubServer) -> None:
    before = len(asked(hub))
    r = visitor("oscar").post("/portal/trials", {"trial": TRIAL_YAML, "action": "ask", "project": "proj"})
    assert r.status_code == 403 and "not a member of project 'proj'" in T(r)
    assert len(asked(hub)) == before  # refused before any site was asked


@pytest.mark.parametrize("multipart", [False, True])
def test_csrf(visitor: Any, hub: HubServer, multipart: bool) -> None:
    rita, other = visitor("rita"), visitor("rita")
    before = len(asked(hub))
    for path in ("/portal/trials", "/portal/cohorts/save", "/portal/cohorts"):
        for token in (None, "", other.csrf):
            body = {"trial": TRIAL_YAML, "definition": T2D_YAML, "action": "ask", "project": "proj", "save_name": "x"}
            if token is not None:
                body["csrf"] = token
            extra = {"files": {"trial_file": ("t.yaml", TRIAL_YAML.encode())}} if multipart else {}
            r = rita.post(path, body, csrf=False, **extra)
            assert r.status_code == 403 and "security token is missing or wrong" in T(r), (path, token)
    assert len(asked(hub)) == before
    assert ">x</a>" not in rita.get("/portal/cohorts").text  # nothing saved


# ---- reading a trial ----------------------------------------------------------------------------------------
def test_a_pasted_trial_yaml_is_checked_as_the_cli_reads_it(visitor: Any, hub: HubServer, tmp_path: Path) -> None:
    before = len(asked(hub))
    r = visitor("rita").post("/portal/trials", {"trial": TRIAL_YAML, "action": "check", "project": "proj"})
    assert r.status_code == 200, T(r)
    path = tmp_path / "hf_sglt2.yaml"
    path.write_text(TRIAL_YAML)
    expected = load_trial(path)  # as `mercia trial check` reads the file
    shown = [html.unescape(x) for x in re.findall(r"<li>(.*?)</li>", r.text.split('id="trial-criteria"')[1]
                                                  .split("</ol>")[0])]
    assert shown == [x.name for x in expected.cohort.expression.inclusion_rules]
    assert f"{len(shown)} criteria applied, {len(expected.not_applied)} not applied" in T(r)
    assert len(asked(hub)) == before  # check only: no site asked


def test_a_file_uploaded_without_javascript_is_read(visitor: Any) -> None:
    """The form's file, sent with the form (multipart): no script reads it into the box first."""
    rita = visitor("rita")
    r = rita.post("/portal/trials", {"trial": "", "action": "check", "project": "proj"},
                  files={"trial_file": ("hypertension_t2d.yaml", COHORT_TRIAL.encode())})
    assert r.status_code == 200, T(r)
    assert "(cohort YAML): 3 criteria applied" in T(r)
    assert textarea(r.text, "trial") == COHORT_TRIAL
    # the same for a cohort on the cohorts page
    r = rita.post("/portal/cohorts", {"definition": "", "action": "check", "project": "proj"},
                  files={"definition_file": ("t2d.yaml", T2D_YAML.encode())})
    assert r.status_code == 200, T(r)
    assert "The definition is valid (YAML): 3 inclusion rules." in T(r)
    # an empty file input (no file chosen) leaves the text box's definition
    r = rita.post("/portal/cohorts", {"definition": T2D_YAML, "action": "check"},
                  files={"definition_file": ("", b"")})
    assert r.status_code == 200 and "The definition is valid (YAML)" in T(r), T(r)[:2000]


def test_an_upload_too_large_or_not_text_is_one_clear_line(visitor: Any) -> None:
    rita = visitor("rita")
    r = rita.post("/portal/trials", {"action": "check"}, files={"trial_file": ("big.yaml", b"#" * 2_100_000)})
    assert r.status_code == 413 and "larger than 2 MB" in T(r) and "Traceback" not in T(r)
    r = rita.post("/portal/trials", {"action": "check"}, files={"trial_file": ("x.json", b"\xff\xfe\x00bad")})
    assert r.status_code == 400 and "trial_file: the file is not UTF-8 text" in T(r)


def test_a_registry_record_is_drafted_for_review_before_anyone_is_asked(visitor: Any, hub: HubServer) -> None:
    from mercia.trials.importer import import_record
    from mercia.trials.trial_yaml import from_dict, to_dict

    before = len(asked(hub))
    r = visitor("rita").post("/portal/trials", {"action": "ask", "project": "proj"},
                             files={"trial_file": ("NCT03036150.json", RECORD.encode())})
    assert r.status_code == 200, T(r)
    assert "Drafted from the study record" in T(r) and "ClinicalTrials.gov record, drafted" in T(r)
    draft = textarea(r.text, "trial")
    expected = import_record(str(ROOT / "examples" / "trials" / "NCT03036150.json"))  # as `mercia trial import`
    assert to_dict(from_dict(yaml_load(draft))) == to_dict(expected)
    assert len(asked(hub)) == before  # a draft is reviewed first


def yaml_load(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


@pytest.mark.parametrize("change,problem", [
    ({"trial": "   "}, "trial: it is empty"),
    ({"trial": "name: x\ncriteria: ["}, "malformed YAML at line 2"),
    ({"trial": TRIAL_YAML.replace("criteria:", "criteria:\n  - nmae: oops\n    type: inclusion", 1)}, "criteria"),
    ({"trial": TRIAL_YAML.replace("registry_id:", "registry_idd:")}, "registry_idd: unknown field"),
    ({"trial": '{"PrimaryCriteria": '}, "malformed JSON at line 1"),
    ({"trial": '{"studies": []}'}, "is a list of studies"),
    ({"history_months": "lots"}, "months of history: 'lots' is not a whole number from 1 to 240"),
    ({"history_months": "0"}, "months of history: '0' is not a whole number from 1 to 240"),
    ({"target": "-5", "consent": "0.3"}, "persons to recruit: '-5' is not a whole number"),
    ({"target": "100", "consent": "2"}, "share who consent: '2' is not a share above 0 and at most 1"),
    ({"target": "100"}, "persons to recruit and share who consent: give both"),
])
def test_bad_input_is_a_400_naming_the_field(visitor: Any, hub: HubServer, change: dict[str, str], problem: str) -> None:
    before = len(asked(hub))
    r = visitor("rita").post("/portal/trials", {"trial": TRIAL_YAML, "action": "ask", "project": "proj", **change})
    assert r.status_code == 400, T(r)[:3000]
    assert "The trial cannot be read: " in T(r) and problem in T(r), T(r)[:3000]
    assert "Traceback" not in T(r)
    assert len(asked(hub)) == before


# ---- an answer -------------------------------------------------------------------------------------------------
def test_an_answer_is_its_askers_only(visitor: Any, hub: HubServer) -> None:
    rita = visitor("rita")
    r = rita.post("/portal/trials", {"trial": COHORT_TRIAL, "action": "ask", "project": "proj",
                                     "target": "100", "consent": "30%"})
    assert r.status_code == 303, T(r)
    where = r.headers["location"]
    assert re.fullmatch(r"/portal/trials/answers/[A-Za-z0-9_-]{8,40}", where)
    page = rita.get(where)
    assert page.status_code == 200, T(page)
    assert "east" in T(page) and 'id="trial-errors"' in page.text  # the site that does not answer says so
    e = asked(hub)[-1]
    assert (e["actor"], e["details"]["project"], e["details"]["sites"]) == ("rita", "proj", ["east"])
    # another researcher, an admin of the project, signed out: not theirs
    for who in ("oscar", "pa"):
        r = visitor(who).get(where)
        assert r.status_code == 404 and "no such trial answer of yours" in T(r)
    assert visitor().get(where).status_code == 303
    assert rita.get("/portal/trials/answers/nope").status_code == 422  # not an answer's id
    r = rita.get(where + "?whatif=1&apply=x")
    assert r.status_code == 400 and "apply: each value is a criterion's number" in T(r)
    r = rita.post(where + "/without", {"drop": "9"})
    assert r.status_code == 400 and "criteria to drop: 10 is not a criterion of this trial (1 to 3)" in T(r), T(r)
    # two criteria off: a new question, the trial without them, asked of the same sites for the same user
    before = len(asked(hub))
    r = rita.post(where + "/without", {"drop": ["0", "1"]})
    assert r.status_code == 303 and r.headers["location"] != where, T(r)
    assert "without criteria 1, 2" in T(rita.get(r.headers["location"]))
    assert len(asked(hub)) == before + 1 and asked(hub)[-1]["actor"] == "rita"
    assert visitor("oscar").post(where + "/without", {"drop": "1"}).status_code == 404
    r = rita.post(where + "/without", {"drop": "1"}, csrf=False)
    assert r.status_code == 403


# ---- the cohort page: censoring, saving ------------------------------------------------------------------------
def test_the_builder_writes_censoring(visitor: Any) -> None:
    form = {"b_entry_domain": "condition", "b_entry_concepts": "201826", "b_entry_descendants": "1",
            "x_mode": "event", "x_domain": "drug", "x_concepts": "1503297", "x_descendants": "1", "action": "check"}
    r = visitor("rita").post("/portal/cohorts/build", form)
    assert r.status_code == 200, T(r)
    shown = re.search(r'<pre id="cohort-yaml"[^>]*>(.*?)</pre>', r.text, re.S)
    assert shown, T(r)[:3000]
    entry = dsl.concepts("entry concepts", 201826, descendants=True)
    censor = dsl.concepts("censoring concepts", 1503297, descendants=True)
    expected = (dsl.cohort("Portal cohort").entry(dsl.condition(entry)).censor_at(dsl.drug(censor))).build()
    assert dsl.from_yaml(html.unescape(shown.group(1))) == expected
    r = visitor("rita").post("/portal/cohorts/build", {**form, "x_mode": "death"})
    expected = (dsl.cohort("Portal cohort").entry(dsl.condition(entry)).censor_at(dsl.death())).build()
    assert dsl.from_yaml(html.unescape(re.search(r'<pre id="cohort-yaml"[^>]*>(.*?)</pre>', r.text, re.S)
                                       .group(1))) == expected
    for change, problem in (({"x_mode": "later"}, "censoring: 'later' is not a choice; use death or event"),
                            ({"x_concepts": ""}, "censoring concepts: give one or more concept ids"),
                            ({"x_domain": "x"}, "censoring domain: 'x' is not a domain")):
        r = visitor("rita").post("/portal/cohorts/build", {**form, **change})
        assert r.status_code == 400 and problem in T(r), T(r)[:2000]


def test_save_list_and_reopen_a_cohort(visitor: Any, hub: HubServer) -> None:
    rita = visitor("rita")
    r = rita.post("/portal/cohorts/save", {"definition": T2D_YAML, "save_name": "t2d metformin", "project": "proj"})
    assert r.status_code == 200, T(r)
    assert "Saved as t2d metformin in project proj." in T(r)
    listed = rita.get("/portal/cohorts")
    assert 'href="/portal/cohorts/saved?project=proj&amp;name=t2d%20metformin"' in listed.text
    r = rita.get("/portal/cohorts/saved?project=proj&name=t2d%20metformin")
    assert r.status_code == 200, T(r)
    expected = load_definition(ROOT / "examples" / "cohorts" / "type2_diabetes_metformin.yaml")
    assert dsl.from_yaml(textarea(r.text, "definition")) == expected  # reopened: the cohort saved
    assert "Reopened t2d metformin from project proj." in T(r)
    # the store API other pages use
    from mercia.federation.hub import load_hub_config
    from mercia.portal.saved_cohorts import SavedCohorts

    store = SavedCohorts(load_hub_config(hub.config_path).state_dir / "hub.sqlite")
    assert [(c.project, c.name, c.cohort_name, c.saved_by) for c in store.list("proj")] == [
        ("proj", "t2d metformin", expected.name, "rita")]
    assert store.get("proj", "t2d metformin") == expected
    assert any(e["event"] == "portal.cohort_saved" and e["actor"] == "rita" for e in audit_events(hub))
    # another project's researcher: neither listed nor opened nor saved there
    oscar = visitor("oscar")
    assert "t2d metformin" not in oscar.get("/portal/cohorts").text
    r = oscar.get("/portal/cohorts/saved?project=proj&name=t2d%20metformin")
    assert r.status_code == 403 and "not a member of project 'proj'" in T(r)
    r = oscar.post("/portal/cohorts/save", {"definition": T2D_YAML, "save_name": "mine", "project": "proj"})
    assert r.status_code == 403
    r = rita.get("/portal/cohorts/saved?project=proj&name=nothing")
    assert r.status_code == 404 and "no saved cohort 'nothing' in project 'proj'" in T(r)
    for name, problem in (("", "save as: '' is not a name"), ("../x", "save as: '../x' is not a name")):
        r = rita.post("/portal/cohorts/save", {"definition": T2D_YAML, "save_name": name, "project": "proj"})
        assert r.status_code == 400 and problem in T(r), T(r)[:2000]
    r = rita.post("/portal/cohorts/save", {"definition": "name: x\nentry: [", "save_name": "bad", "project": "proj"})
    assert r.status_code == 400 and "The cohort cannot be saved: malformed YAML" in T(r)


def test_delete_a_saved_cohort_by_its_owner_or_an_admin(visitor: Any, hub: HubServer) -> None:
    from mercia.federation.hub import load_hub_config
    from mercia.portal.saved_cohorts import SavedCohorts

    store = SavedCohorts(load_hub_config(hub.config_path).state_dir / "hub.sqlite")
    if accounts_user(hub, "rex") is None:
        add_user(hub, "rex", "researcher", ["proj"])
    rita, rex, pa, oscar = visitor("rita"), visitor("rex"), visitor("pa"), visitor("oscar")
    for name in ("to delete", "by an admin"):
        assert rita.post("/portal/cohorts/save", {"definition": T2D_YAML, "save_name": name,
                                                  "project": "proj"}).status_code == 200
    page = rita.get("/portal/cohorts/saved?project=proj&name=to%20delete").text
    form = re.search(r'<form method="post" action="/portal/cohorts/saved/delete"[^>]*>(.*?)</form>', page, re.S)
    assert form and 'data-confirm="Delete the saved cohort to delete from project proj?' in page
    assert 'name="project" value="proj"' in form.group(1) and 'name="name" value="to delete"' in form.group(1)
    # another researcher of the project sees no button, and is refused when posting anyway
    assert "/cohorts/saved/delete" not in rex.get("/portal/cohorts/saved?project=proj&name=to%20delete").text
    r = rex.post("/portal/cohorts/saved/delete", {"project": "proj", "name": "to delete"})
    assert r.status_code == 403 and "only the user who saved to delete (rita) or an admin may delete it" in T(r)
    # another project's researcher: 403 on the project, before the name is looked at
    r = oscar.post("/portal/cohorts/saved/delete", {"project": "proj", "name": "to delete"})
    assert r.status_code == 403 and "not a member of project 'proj'" in T(r)
    # no CSRF token, or another session's: refused
    for token in (None, rex.csrf):
        body = {"project": "proj", "name": "to delete", **({"csrf": token} if token else {})}
        r = rita.post("/portal/cohorts/saved/delete", body, csrf=False)
        assert r.status_code == 403 and "security token is missing or wrong" in T(r)
    assert [c.name for c in store.list("proj")].count("to delete") == 1
    # its owner deletes it
    r = rita.post("/portal/cohorts/saved/delete", {"project": "proj", "name": "to delete"})
    assert r.status_code == 200 and "Deleted the saved cohort to delete from project proj." in T(r)
    assert "to delete" not in [c.name for c in store.list("proj")]
    assert "to%20delete" not in rita.get("/portal/cohorts").text
    r = rita.post("/portal/cohorts/saved/delete", {"project": "proj", "name": "to delete"})
    assert r.status_code == 404 and "no saved cohort 'to delete' in project 'proj'" in T(r)
    # an admin of the project deletes another user's, and sees the button
    assert "/cohorts/saved/delete" in pa.get("/portal/cohorts/saved?project=proj&name=by%20an%20admin").text
    r = pa.post("/portal/cohorts/saved/delete", {"project": "proj", "name": "by an admin"})
    assert r.status_code == 200 and "by an admin" not in [c.name for c in store.list("proj")]
    deleted = [(e["actor"], e["details"]) for e in audit_events(hub) if e["event"] == "portal.cohort_deleted"]
    assert deleted == [("rita", {"project": "proj", "name": "to delete", "saved_by": "rita"}),
                       ("pa", {"project": "proj", "name": "by an admin", "saved_by": "rita"})]


def accounts_user(hub: HubServer, name: str) -> Any:
    from test_portal import accounts

    return accounts(hub).user(name)


# ---- with a hub and two nodes: every number shown passed disclosure control -----------------------------------
@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("portaltrials")
    sites = {"east": make_site(root / "east.duckdb", persons=3000, seed=1),
             "west": make_site(root / "west.duckdb", persons=3000, seed=12, first_person_id=5_000_001)}
    federation = Federation(root, sites)
    with federation:
        for name in ("tess", "tess2", "tess3"):
            add_user(federation.hub, name, "researcher", [PROJECT])
        yield federation


def table_cells(page: str, table_id: str) -> list[list[str]]:
    table = page.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)]


def num(v: str) -> int | None:
    return None if v in ("–", "") else int(v.replace(",", ""))


def released_numbers(answer: Any) -> set[float]:
    """Every number in the API's answer (released values, the hub's sums and the recruitment model)."""
    out: set[float] = set()
    if isinstance(answer, dict):
        for k, v in answer.items():
            if k not in ("disclosure", "privacy"):
                out |= released_numbers(v)
    elif isinstance(answer, list):
        for v in answer:
            out |= released_numbers(v)
    elif isinstance(answer, (int, float)) and not isinstance(answer, bool):
        out.add(float(answer))
    return out


def result_text(page: str) -> str:
    """The page's main content as text, without the trial's own words (criterion names, month labels)."""
    main = page.split('<main', 1)[1].split("</main>", 1)[0]
    return html.unescape(re.sub(r"<[^>]+>", " ", main))


def check_page_against_api(page: str, api: dict[str, Any], definition_words: str) -> None:
    sites = {s["site"]: s for s in api["sites"]}
    funnel = table_cells(page, "trial-funnel")
    assert funnel[0][1:] == [*sites, "All sites"]
    order = list(sites)
    rows = {r[0]: r[1:] for r in funnel[1:]}
    assert [num(x) for x in rows["Initial events (persons)"]] == [*(sites[s]["initial"] for s in order), None]
    for j, f in enumerate(api["funnel"]):
        row = rows[f"{j + 1}. {f['criterion']}"]
        assert [num(x) for x in row] == [*(sites[s]["funnel"][j]["remaining"] for s in order), f["remaining"]]
    assert [num(x) for x in rows["Eligible"]] == [*(sites[s]["eligible"] for s in order), api["eligible"]]
    what_if = {r[0]: r[1:] for r in table_cells(page, "trial-whatif")[1:]}
    for j, w in enumerate(api["what_if"]):
        assert [num(x) for x in what_if[f"{j + 1}. {w['criterion']}"]] == [
            *(sites[s]["what_if"][j]["gained"] for s in order), w["gained"]]
    for dim in ("age_band", "sex", "ethnicity"):
        cells = {r[0]: r[1:] for r in table_cells(page, f"trial-{dim}")[1:]}
        for level in {c["level"] for s in order for c in sites[s]["breakdowns"][dim]}:
            per = [next((c["persons"] for c in sites[s]["breakdowns"][dim] if c["level"] == level), None) for s in order]
            total = next(c["persons"] for c in api["breakdowns"][dim] if c["level"] == level)
            assert [num(x) for x in cells[level]] == [*per, total]
    # every number anywhere on the page: a released one (or the hub's sum / model of released ones), or
    # one of the question's own words (criterion numbers and names, months, the target and consent)
    allowed = released_numbers(api)
    # the noise each site states for its numbers (its mechanism's public parameters, shown beside them)
    allowed |= {float(v) for s in api["sites"] for k, v in (s.get("privacy") or {}).items() if k.endswith("_noise_sd")}
    # the what-if's one derived number: eligible without criterion j = released eligible + released gain
    for whole in (api, *sites.values()):
        allowed |= {float(whole["eligible"] + w["gained"]) for w in whole["what_if"]
                    if whole["eligible"] is not None and w["gained"] is not None}
    allowed |= {float(x) for x in re.findall(r"\d+(?:\.\d+)?", definition_words)}
    # and the levels' own names (age bands "60-69", "80+"): labels, not counts
    levels = " ".join(c["level"] for dim in api["breakdowns"].values() for c in dim)
    allowed |= {float(x) for x in re.findall(r"\d+", levels)}
    shown = re.findall(r"(?<![\w.-])\d[\d,]*(?:\.\d+)?", result_text(page))
    assert shown
    stray = [x for x in shown if float(x.replace(",", "")) not in allowed]
    text = result_text(page)
    assert stray == [], [(x, text[max(0, text.find(x) - 200):text.find(x) + 50]) for x in stray[:5]]


@pytest.mark.slow
def test_every_number_on_the_trial_pages_is_a_released_answer_of_the_api(fed: Federation) -> None:
    definition = dsl.from_yaml(COHORT_TRIAL).to_dict()
    v = Visitor(fed.hub.url)
    try:
        assert v.sign_in("tess").status_code == 303
        r = v.post("/portal/trials", {"trial": COHORT_TRIAL, "action": "ask", "project": PROJECT,
                                      "history_months": "36", "target": "50", "consent": "0.5"})
        assert r.status_code == 303, T(r)
        where = r.headers["location"]
        page = v.get(where).text
        single = v.get(where + "?whatif=1&apply=0&apply=2").text  # criterion 2 toggled off
        several = v.get(where + "?whatif=1&apply=2").text  # criteria 1 and 2 off: a new question needed
    finally:
        v.close()
    with fed.hub.client(_token(fed, "tess-api")) as c:  # the API, same question: nodes repeat their answer
        api = c.trial_feasibility(definition, project=PROJECT, history_months=36, target=50, consent=0.5)
    assert api["eligible"] is not None and any(s.get("eligible") for s in api["sites"])
    months = " ".join(api["monthly"]["months"])
    numbering = " ".join(str(j + 1) for j in range(len(api["funnel"])))  # criteria 1 to n
    words = COHORT_TRIAL + f" {numbering} 95 36 50 0.5 " + months  # 95% CI; the question asked
    check_page_against_api(page, api, words)
    sds = {s["site"]: s["privacy"]["breakdown_cell_noise_sd"] for s in api["sites"] if s.get("privacy")}
    note = html.unescape(re.sub(r"\s+", " ", page.split('id="trial-breakdown-noise">', 1)[1].split("</p>", 1)[0]))
    assert sds and all(f"{sd} persons at {site}" in note for site, sd in sds.items()), note
    # toggled: eligible without criterion 2 = each site's released eligible plus its released gain
    without = table_cells(single, "trial-without")
    expected = [None if s["eligible"] is None or s["what_if"][1]["gained"] is None
                else s["eligible"] + s["what_if"][1]["gained"] for s in api["sites"]]
    assert [num(x) for x in without[1][1:-1]] == expected
    assert num(without[1][-1]) == api["eligible"] + api["what_if"][1]["gained"]
    check_page_against_api(single, api, words)
    assert 'action="' + where + '/without"' in several and 'id="trial-without"' not in several
    assert re.findall(r'name="drop" value="(\d+)"', several) == ["0", "1"]


def _token(fed: Federation, name: str) -> str:
    with fed.admin() as admin:
        return admin.add_user(name, "researcher", [PROJECT])["token"]


@pytest.mark.slow
def test_a_reopened_cohort_counts_are_the_apis(fed: Federation) -> None:
    """Saved, reopened and counted: every number on the cohort page is a node's released answer."""
    from test_portal_cohorts import check_against_nodes, node_answer, page_numbers

    v = Visitor(fed.hub.url)
    try:
        assert v.sign_in("tess2").status_code == 303
        assert v.post("/portal/cohorts/save", {"definition": T2D_YAML, "save_name": "t2d",
                                               "project": PROJECT}).status_code == 200
        reopened = v.get(f"/portal/cohorts/saved?project={PROJECT}&name=t2d")
        text = textarea(reopened.text, "definition")
        r = v.post("/portal/cohorts", {"definition": text, "action": "count", "project": PROJECT})
        assert r.status_code == 200, T(r)
    finally:
        v.close()
    definition = dsl.from_yaml(text).to_dict()
    check_against_nodes(fed, page_numbers(r.text), definition)
    # every number in the result (outside the definition's own text) is a node's released answer or their sum
    released: set[int] = set()
    for site in fed.nodes:
        node = node_answer(fed, site, definition)
        released |= {v for v in (node["persons"], node["entries"]) if v is not None}
        released |= {p for _, p in node["attrition"]["rows"] if p is not None}
    shown_counts = page_numbers(r.text)
    released |= {v for v in shown_counts["total"] if v is not None}
    result = r.text.split('id="cohort-result"', 1)[1].split('aria-labelledby="saved-h"', 1)[0]
    result = re.sub(r"<pre.*?</pre>|<form.*?</form>", " ", result, flags=re.S)  # the YAML and the save form
    # numbers of the definition itself: in its rule names, and how many rules it has
    words = set(re.findall(r"\d+", text)) | {str(len(definition["expression"]["inclusion_rules"]))}
    stray = [x for x in re.findall(r"(?<![\w.-])\d[\d,]*", html.unescape(re.sub(r"<[^>]+>", " ", result)))
             if int(x.replace(",", "")) not in released and x not in words]
    assert stray == []


# ---- in Chromium ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.browser
def test_trial_funnel_what_if_and_a_saved_cohort_in_chromium(fed: Federation, chromium: Any,
                                                             artifacts_dir: Path, tmp_path: Path) -> None:
    from test_portal_browser import check_a11y, sign_in

    ctx = chromium.new_context(viewport={"width": 1280, "height": 900}, base_url=fed.hub.url, bypass_csp=True)
    errors: list[str] = []
    upload = tmp_path / "hypertension_t2d.yaml"
    upload.write_text(COHORT_TRIAL)
    try:
        page = ctx.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        sign_in(page, "tess3")
        page.get_by_role("link", name="Trials").click()
        page.wait_for_url("**/portal/trials")
        check_a11y(page, "trials")
        page.screenshot(path=str(artifacts_dir / "portal-trials.png"), full_page=True)
        page.get_by_label("Upload a file").set_input_files(str(upload))
        page.get_by_label("Persons to recruit").fill("50")
        page.get_by_label("Share who consent").fill("0.5")
        page.get_by_role("button", name="Check and ask the sites").click()
        page.wait_for_url("**/portal/trials/answers/**")
        page.locator("#trial-funnel").wait_for()
        check_a11y(page, "trial answer")
        page.screenshot(path=str(artifacts_dir / "portal-trial-answer.png"), full_page=True)
        funnel = table_cells(page.content(), "trial-funnel")
        # what-if: untick criterion 2 by keyboard, press Show
        page.get_by_label("2. type 2 diabetes on or before index").focus()
        page.keyboard.press("Space")
        page.get_by_role("button", name="Show").click()
        page.locator("#trial-without").wait_for()
        check_a11y(page, "trial what-if")
        page.screenshot(path=str(artifacts_dir / "portal-trial-whatif.png"), full_page=True)
        without = table_cells(page.content(), "trial-without")
        # a cohort: build, save, reopen from the list
        page.get_by_role("link", name="Cohorts").click()
        page.get_by_label("Definition (YAML or ATLAS JSON)").fill(T2D_YAML)
        page.locator("#paste-h").locator("xpath=..").get_by_role("button", name="Check", exact=True).click()
        page.get_by_label("Save as").fill("t2d browser")
        page.get_by_role("button", name="Save the cohort").click()
        page.get_by_text("Saved as t2d browser in project proj.").wait_for()
        page.goto("/portal/cohorts")
        page.get_by_role("link", name="t2d browser").click()
        page.get_by_text("Reopened t2d browser from project proj.").wait_for()
        check_a11y(page, "cohort reopened")
        page.screenshot(path=str(artifacts_dir / "portal-cohort-reopened.png"), full_page=True)
        reopened = page.locator("#definition").input_value()
        # delete it, confirming in the browser's dialog (dismissed first: nothing happens)
        dialogs: list[str] = []

        def answer(dialog: Any, accept: bool) -> None:
            dialogs.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        page.once("dialog", lambda d: answer(d, False))
        page.get_by_role("button", name="Delete this saved cohort").click()
        page.get_by_text("Reopened t2d browser from project proj.").wait_for()
        page.once("dialog", lambda d: answer(d, True))
        page.get_by_role("button", name="Delete this saved cohort").click()
        page.get_by_text("Deleted the saved cohort t2d browser from project proj.").wait_for()
        assert dialogs == ["Delete the saved cohort t2d browser from project proj? This cannot be undone."] * 2
        assert page.get_by_role("link", name="t2d browser").count() == 0
        check_a11y(page, "cohort deleted")
        page.screenshot(path=str(artifacts_dir / "portal-cohort-deleted.png"), full_page=True)
    finally:
        ctx.close()
    assert errors == []
    with fed.hub.client(_token(fed, "tess3-api")) as c:
        api = c.trial_feasibility(dsl.from_yaml(COHORT_TRIAL).to_dict(), project=PROJECT, target=50, consent=0.5)
    sites = [s["site"] for s in api["sites"]]
    assert funnel[-1] == ["Eligible", *(f"{s['eligible']:,}" if s["eligible"] is not None else "–"
                                        for s in api["sites"]), f"{api['eligible']:,}"]
    assert funnel[0][1:-1] == sites
    gained = [None if s["eligible"] is None or s["what_if"][1]["gained"] is None
              else s["eligible"] + s["what_if"][1]["gained"] for s in api["sites"]]
    assert [num(x) for x in without[1][1:-1]] == gained
    assert dsl.from_yaml(reopened) == load_definition(ROOT / "examples" / "cohorts" / "type2_diabetes_metformin.yaml")
