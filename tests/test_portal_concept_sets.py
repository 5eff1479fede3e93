"""Concept sets in the portal (issue 17, item 2), over real HTTP: a hub and two nodes on 127.0.0.1.

A researcher builds a set as in ATLAS (from the set's own search and from a concept's page; exclude,
descendants, mapped), sees what it resolves to (checked here against plain SQL on the vocabulary file,
written from OHDSI's definition, not Mercia's resolver), asks the sites for the persons with a record of
the set (every number the node's own released answer to the same question), downloads it as ATLAS
JSON (read back by Mercia's ATLAS reader), and sends it to the cohorts page. Also: who sees and who
changes a set, CSRF, and bad input (one line naming the field, never a 5xx).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from federation_support import PROJECT, Federation, make_site
from test_portal import T, Visitor, add_user, audit_events

pytestmark = pytest.mark.slow  # a hub and two nodes as processes

T2D = 201826  # type 2 diabetes mellitus
T2D_KETO = 443732  # a descendant of T2D in the bundled vocabulary (checked below)
GI_BLEED = 192671  # an ICD-10 code maps to it in the bundled vocabulary
GI_BLEED_ICD = 35208414


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("portalsets")
    sites = {"east": make_site(root / "east.duckdb", persons=1500, seed=41),
             "west": make_site(root / "west.duckdb", persons=1500, seed=42, first_person_id=50_001)}
    federation = Federation(root, sites)
    vocabulary = make_site(root / "vocabulary.duckdb", persons=200, seed=41)
    data = yaml.safe_load(federation.hub.config_path.read_text())
    data["portal"] = {"vocabulary": str(vocabulary)}
    federation.hub.config_path.write_text(yaml.safe_dump(data))
    federation.vocabulary = vocabulary  # type: ignore[attr-defined]
    with federation:
        with federation.admin() as admin:
            admin.add_project("elsewhere", ["west"])
        add_user(federation.hub, "rosa", "researcher", [PROJECT])
        add_user(federation.hub, "ravi", "researcher", [PROJECT])
        add_user(federation.hub, "olga", "researcher", ["elsewhere"])
        yield federation


@pytest.fixture
def visitor(fed: Federation) -> Iterator[Any]:
    made: list[Visitor] = []

    def make(name: str | None = None) -> Visitor:
        v = Visitor(fed.hub.url)
        made.append(v)
        if name:
            assert v.sign_in(name).status_code == 303
        return v

    yield make
    for v in made:
        v.close()


def new_set(v: Visitor, name: str = "Diabetes") -> int:
    r = v.post("/portal/concept-sets", {"name": name, "project": PROJECT})
    assert r.status_code == 303, T(r)[:2000]
    return int(r.headers["location"].rsplit("/", 1)[1])


def table_ids(page: str, table: str) -> list[int]:
    part = page.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    return [int(x) for x in re.findall(r"<tr><td>.*?</td><td>(\d+)</td>", part)]


def reference(vocabulary: Path, items: list[tuple[int, bool, bool, bool]]) -> list[int]:
    """OHDSI's resolution in plain SQL (items: concept, excluded, descendants, mapped)."""
    con = duckdb.connect(str(vocabulary), read_only=True)

    def part(chosen: list[tuple[int, bool, bool, bool]]) -> set[int]:
        out: set[int] = set()
        for cid, _, desc, mapped in chosen:
            found = {r[0] for r in con.execute("SELECT concept_id FROM concept WHERE concept_id = ?", [cid]).fetchall()}
            if desc:
                found |= {r[0] for r in con.execute(
                    "SELECT c.concept_id FROM concept_ancestor a JOIN concept c ON c.concept_id = a.descendant_concept_id "
                    "WHERE a.ancestor_concept_id = ? AND c.invalid_reason IS NULL", [cid]).fetchall()}
            if mapped:
                for std in list(found):
                    found |= {r[0] for r in con.execute(
                        "SELECT concept_id_1 FROM concept_relationship WHERE concept_id_2 = ? AND relationship_id = "
                        "'Maps to' AND invalid_reason IS NULL", [std]).fetchall()}
            out |= found
        return out

    try:
        return sorted(part([i for i in items if not i[1]]) - part([i for i in items if i[1]]))
    finally:
        con.close()


# ---- building a set and what it resolves to ------------------------------------------------------------
def test_build_a_set_and_see_what_it_resolves_to(fed: Federation, visitor: Any) -> None:
    rosa = visitor("rosa")
    set_id = new_set(rosa)
    # from the set's own search, with descendants
    found = rosa.get(f"/portal/concept-sets/{set_id}?text=type 2 diabetes")
    assert found.status_code == 200 and str(T2D) in found.text
    r = rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(T2D), "descendants": "1"})
    assert r.status_code == 303
    # from a concept's page: the set is chosen there; excluded
    page = rosa.get(f"/portal/concepts/{T2D_KETO}")
    assert 'action="/portal/concept-sets/add"' in page.text and f'<option value="{set_id}">' in page.text
    r = rosa.post("/portal/concept-sets/add", {"set": str(set_id), "concept_id": str(T2D_KETO), "excluded": "1"})
    assert r.status_code == 303
    page = rosa.get(f"/portal/concept-sets/{set_id}").text
    assert table_ids(page, "set-items") == [T2D, T2D_KETO]
    assert T2D_KETO in reference(fed.vocabulary, [(T2D, False, True, False)])  # it is a descendant
    want = reference(fed.vocabulary, [(T2D, False, True, False), (T2D_KETO, True, False, False)])
    assert len(want) > 1 and T2D_KETO not in want
    assert table_ids(page, "set-resolved") == want
    # another concept; then the flags changed on the set's page: include mapped, keep the exclusion
    assert rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(GI_BLEED)}).status_code == 303
    r = rosa.post(f"/portal/concept-sets/{set_id}/save", {
        "name": "Diabetes, mapped", f"descendants_{T2D}": "1", f"mapped_{T2D}": "1", f"excluded_{T2D_KETO}": "1",
        f"mapped_{GI_BLEED}": "1"})
    assert r.status_code == 200 and "Saved." in T(r)
    want = reference(fed.vocabulary, [(T2D, False, True, True), (T2D_KETO, True, False, False),
                                      (GI_BLEED, False, False, True)])
    assert table_ids(r.text, "set-resolved") == want
    assert GI_BLEED_ICD in want  # the mapped source code
    # removed
    r = rosa.post(f"/portal/concept-sets/{set_id}/save", {"name": "Diabetes, mapped", f"descendants_{T2D}": "1",
                                                          f"remove_{T2D_KETO}": "1", f"remove_{GI_BLEED}": "1"})
    assert table_ids(r.text, "set-items") == [T2D]
    assert table_ids(r.text, "set-resolved") == reference(fed.vocabulary, [(T2D, False, True, False)])
    assert any(e["event"] == "portal.concept_set_changed" and e["actor"] == "rosa" for e in audit_events(fed.hub))


def test_the_atlas_export_reads_back(fed: Federation, visitor: Any) -> None:
    from mercia.cohorts.model import ConceptSetExpression
    from mercia.vocab.concept_sets import ConceptSet

    rosa = visitor("rosa")
    set_id = new_set(rosa, "Export me")
    rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(T2D), "descendants": "1", "mapped": "1"})
    rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(T2D_KETO), "excluded": "1"})
    r = rosa.get(f"/portal/concept-sets/{set_id}/atlas.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert 'filename="Export-me.json"' in r.headers["content-disposition"]
    body = r.json()
    assert [(i["concept"]["CONCEPT_ID"], i["isExcluded"], i["includeDescendants"], i["includeMapped"])
            for i in body["items"]] == [(T2D, False, True, True), (T2D_KETO, True, False, False)]
    con = duckdb.connect(str(fed.vocabulary), read_only=True)
    name, code, vocab = con.execute("SELECT concept_name, concept_code, vocabulary_id FROM concept WHERE concept_id = ?",
                                    [T2D]).fetchone()
    con.close()
    c = body["items"][0]["concept"]
    assert (c["CONCEPT_NAME"], c["CONCEPT_CODE"], c["VOCABULARY_ID"], c["STANDARD_CONCEPT"]) == (name, code, vocab, "S")
    back = ConceptSet.from_atlas({"id": 1, "name": "x", "expression": body})
    assert [(i.concept_id, i.is_excluded, i.include_descendants, i.include_mapped) for i in back.items] == \
        [(T2D, False, True, True), (T2D_KETO, True, False, False)]
    ConceptSetExpression.model_validate(body)  # and by the cohort model's reader


# ---- counts ----------------------------------------------------------------------------------------------
def node_answer(fed: Federation, site: str, definition: dict[str, Any]) -> dict[str, Any]:
    with fed.nodes[site].client("researcher") as c:
        r = c.post("/api/v1/feasibility", json={"definition": definition, "project": PROJECT})
    assert r.status_code == 200, r.text
    return r.json()


def shown_counts(page: str) -> dict[str, int | None]:
    part = page.split('id="set-counts"', 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r'<tr><th scope="row">([^<]+)</th><td class="num">([^<]+)</td>', part)
    return {site: None if v == "–" else int(v) for site, v in rows}


def test_the_counts_are_the_sites_released_answers(fed: Federation, visitor: Any) -> None:
    from mercia.cohorts.loader import definition_from_text
    from mercia.portal.concept_sets import ConceptSetStore, record_cohort

    rosa = visitor("rosa")
    set_id = new_set(rosa, "T2D for counts")
    rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(T2D), "descendants": "1"})
    r = rosa.post(f"/portal/concept-sets/{set_id}/counts", {})
    assert r.status_code == 200, T(r)[:3000]
    shown = shown_counts(r.text)
    assert sorted(shown) == ["east", "west"]
    cs = ConceptSetStore(fed.hub.state_dir / "hub.sqlite").get(set_id)
    definition = definition_from_text(json.dumps(record_cohort(cs)), "json", name=cs.name).to_dict()
    for site, persons in shown.items():
        node = node_answer(fed, site, definition)
        assert persons == node["persons"] and persons is not None and persons > 0 and persons % 5 == 0
    total = re.search(r'<tfoot><tr><th scope="row">All sites</th><td class="num">(\d+)</td>', r.text)
    assert total and int(total.group(1)) == sum(v for v in shown.values() if v is not None)
    asked = [e for e in audit_events(fed.hub) if e["event"] == "feasibility.asked" and e["actor"] == "rosa"]
    assert asked and asked[-1]["details"]["project"] == PROJECT
    # a set with only excluded concepts is not asked
    empty = new_set(rosa, "Nothing")
    rosa.post(f"/portal/concept-sets/{empty}/items", {"concept_id": str(T2D), "excluded": "1"})
    r = rosa.post(f"/portal/concept-sets/{empty}/counts", {})
    assert r.status_code == 400 and "items: add at least one concept that is not excluded" in T(r)


def test_use_in_a_cohort(fed: Federation, visitor: Any) -> None:
    rosa = visitor("rosa")
    set_id = new_set(rosa, "For a cohort")
    rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(T2D), "descendants": "1"})
    page = rosa.get(f"/portal/concept-sets/{set_id}").text
    m = re.search(r'name="definition" value="([^"]+)"', page)
    assert m
    import html

    r = rosa.post("/portal/cohorts", {"definition": html.unescape(m.group(1)), "project": PROJECT, "action": "check"})
    assert r.status_code == 200 and "The definition is valid" in T(r)
    shown = T(r).split('id="cohort-yaml"', 1)[1].split("</pre>", 1)[0]
    assert f"include: [{T2D}]\n    descendants: true" in shown and "- {condition: for_a_cohort}" in shown


# ---- who, CSRF, bad input ------------------------------------------------------------------------------------
def test_who_sees_and_who_changes_a_set(fed: Federation, visitor: Any) -> None:
    rosa, ravi, olga = visitor("rosa"), visitor("ravi"), visitor("olga")
    set_id = new_set(rosa, "Rosa's")
    assert visitor().get(f"/portal/concept-sets/{set_id}").status_code == 303  # not signed in
    # another project's researcher: not found, as if it did not exist; not in their list
    for path in (f"/portal/concept-sets/{set_id}", f"/portal/concept-sets/{set_id}/atlas.json"):
        r = olga.get(path)
        assert r.status_code == 404 and f"no concept set {set_id} in your projects" in T(r)
    assert "Rosa&#39;s" not in olga.get("/portal/concept-sets").text
    r = olga.post(f"/portal/concept-sets/{set_id}/counts", {})
    assert r.status_code == 404
    # a member of the project sees it, cannot change it
    page = ravi.get(f"/portal/concept-sets/{set_id}")
    assert page.status_code == 200 and "Save the set" not in page.text
    before = rosa.get(f"/portal/concept-sets/{set_id}/atlas.json").json()
    for path, form in ((f"/portal/concept-sets/{set_id}/items", {"concept_id": str(T2D)}),
                       ("/portal/concept-sets/add", {"set": str(set_id), "concept_id": str(T2D)}),
                       (f"/portal/concept-sets/{set_id}/save", {"name": "mine now"}),
                       (f"/portal/concept-sets/{set_id}/delete", {})):
        r = ravi.post(path, form)
        assert r.status_code == 403 and "only its author or an admin" in T(r), path
    assert rosa.get(f"/portal/concept-sets/{set_id}/atlas.json").json() == before
    # a new set in a project one is not in
    r = olga.post("/portal/concept-sets", {"name": "x", "project": PROJECT})
    assert r.status_code == 403 and f"not a member of project '{PROJECT}'" in T(r)
    # the author deletes it
    r = rosa.post(f"/portal/concept-sets/{set_id}/delete", {})
    assert r.status_code == 200 and "Deleted concept set" in T(r)
    assert rosa.get(f"/portal/concept-sets/{set_id}").status_code == 404


def test_csrf_is_checked(fed: Federation, visitor: Any) -> None:
    rosa, other = visitor("rosa"), visitor("rosa")
    set_id = new_set(rosa, "CSRF")
    for path, form in (("/portal/concept-sets", {"name": "y", "project": PROJECT}),
                       (f"/portal/concept-sets/{set_id}/items", {"concept_id": str(T2D)}),
                       ("/portal/concept-sets/add", {"set": str(set_id), "concept_id": str(T2D)}),
                       (f"/portal/concept-sets/{set_id}/save", {"name": "z"}),
                       (f"/portal/concept-sets/{set_id}/counts", {}),
                       (f"/portal/concept-sets/{set_id}/delete", {})):
        for token in (None, other.csrf):
            r = rosa.post(path, form if token is None else {**form, "csrf": token}, csrf=False)
            assert r.status_code == 403 and "security token" in T(r), path
    assert rosa.get(f"/portal/concept-sets/{set_id}/atlas.json").json() == {"items": []}


@pytest.mark.parametrize(("path", "form", "status", "words"), [
    ("/portal/concept-sets", {"name": "", "project": PROJECT}, 400, "name: give 1 to 200 characters"),
    ("/portal/concept-sets", {"name": "x" * 201, "project": PROJECT}, 400, "name: give 1 to 200 characters"),
    ("/portal/concept-sets", {"name": "ok", "project": ""}, 403, "not a member of project"),
    ("{set}/items", {"concept_id": "abc"}, 400, "concept_id: 'abc' is not a concept id"),
    ("{set}/items", {"concept_id": "-5"}, 400, "concept_id: '-5' is not a concept id"),
    ("{set}/items", {"concept_id": "999999999"}, 400, "concept_id: 999999999 is not in the hub's vocabulary"),
    ("/portal/concept-sets/add", {"set": "x", "concept_id": str(T2D)}, 400, "set: 'x' is not a concept set id"),
    ("/portal/concept-sets/add", {"set": "987654", "concept_id": str(T2D)}, 404, "no concept set 987654"),
    ("{set}/save", {"name": "\x01"}, 400, "name: give 1 to 200 characters"),
    ("/portal/concept-sets/0/counts", {}, 422, "set_id"),
    ("/portal/concept-sets/abc/save", {}, 422, "set_id"),
])
def test_bad_input_is_one_clear_line(fed: Federation, visitor: Any, path: str, form: dict[str, str], status: int,
                                     words: str) -> None:
    rosa = visitor("rosa")
    set_id = new_set(rosa, "Bad input")
    r = rosa.post(path.replace("{set}", f"/portal/concept-sets/{set_id}"), form)
    assert r.status_code == status and words in T(r), T(r)[:3000]
    assert "Traceback" not in r.text


def test_a_bad_set_id_in_a_get_is_a_page(fed: Federation, visitor: Any) -> None:
    rosa = visitor("rosa")
    assert rosa.get("/portal/concept-sets/0").status_code == 422
    r = rosa.get("/portal/concept-sets/123456789")
    assert r.status_code == 404 and "no concept set 123456789" in T(r)
    r = rosa.get("/portal/concept-sets/1?text=" + "x" * 201)
    assert r.status_code == 422 and "text" in T(r)


@pytest.mark.browser
def test_build_a_set_and_see_its_counts_in_the_browser(fed: Federation, chromium: Any, artifacts_dir: Any) -> None:
    """In Chromium: make a set, add T2D from the set's search, exclude a descendant from its concept
    page, see the resolved concepts, ask the sites; the numbers are the nodes' released answers; each
    page passes axe-core; screenshots kept."""
    from mercia.cohorts.loader import definition_from_text
    from mercia.portal.concept_sets import ConceptSetStore, record_cohort
    from test_portal_browser import check_a11y, sign_in

    ctx = chromium.new_context(viewport={"width": 1280, "height": 900}, base_url=fed.hub.url, bypass_csp=True)
    try:
        page = ctx.new_page()
        sign_in(page, "rosa")
        page.get_by_role("link", name="Concept sets").first.click()
        page.wait_for_url("**/portal/concept-sets")
        page.fill("#set-name", "Type 2 diabetes (browser)")
        page.get_by_role("button", name="Create").click()
        page.wait_for_url(re.compile(r".*/portal/concept-sets/\d+$"))
        set_id = int(page.url.rsplit("/", 1)[1])
        page.fill("#add-text", "type 2 diabetes")
        page.keyboard.press("Enter")
        page.wait_for_selector("#set-hits")
        page.screenshot(path=str(artifacts_dir / "portal-concept-set-search.png"), full_page=True)
        check_a11y(page, "concept set search")
        page.locator("#set-hits tbody tr", has=page.locator(f"td:text-is('{T2D}')")).get_by_role(
            "button", name=re.compile("^Add ")).click()
        page.wait_for_url(f"**/portal/concept-sets/{set_id}")
        page.goto(f"/portal/concepts/{T2D_KETO}")
        page.select_option("#add-set", str(set_id))
        page.uncheck("#add-descendants")
        page.check("#add-excluded")
        page.screenshot(path=str(artifacts_dir / "portal-concept-add-to-set.png"), full_page=True)
        check_a11y(page, "concept page, add to a set")
        page.locator("form[action$='/concept-sets/add']").get_by_role("button", name="Add").click()
        page.wait_for_url(f"**/portal/concept-sets/{set_id}")
        items = [int(x) for x in page.locator("#set-items tbody tr td:nth-child(2)").all_inner_texts()]
        resolved = [int(x) for x in page.locator("#set-resolved tbody tr td:nth-child(2)").all_inner_texts()]
        page.get_by_role("button", name="Ask the sites").click()
        page.wait_for_selector("#set-counts")
        rows = [[c.inner_text() for c in row.locator("th, td").all()]
                for row in page.locator("#set-counts tbody tr").all()]
        page.screenshot(path=str(artifacts_dir / "portal-concept-set-counts.png"), full_page=True)
        check_a11y(page, "concept set counts")
    finally:
        ctx.close()
    assert items == [T2D, T2D_KETO]
    assert resolved == reference(fed.vocabulary, [(T2D, False, True, False), (T2D_KETO, True, False, False)])
    cs = ConceptSetStore(fed.hub.state_dir / "hub.sqlite").get(set_id)
    definition = definition_from_text(json.dumps(record_cohort(cs)), "json", name=cs.name).to_dict()
    assert sorted(r[0] for r in rows) == ["east", "west"]
    for site, persons, _ in rows:
        assert persons == str(node_answer(fed, site, definition)["persons"])
