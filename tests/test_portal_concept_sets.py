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


# ---- import from ATLAS JSON (the inverse of the export) ------------------------------------------------------
def set_ids(fed: Federation) -> list[int]:
    from mercia.portal.concept_sets import ConceptSetStore

    return [cs.id for cs in ConceptSetStore(fed.hub.state_dir / "hub.sqlite").in_projects([PROJECT, "elsewhere"])]


def flags_of(atlas: dict[str, Any]) -> list[tuple[int, bool, bool, bool]]:
    """(id, excluded, descendants, mapped) of each item of ATLAS JSON, read with no Mercia code; a flag
    ATLAS left out is false."""
    return [(i["concept"]["CONCEPT_ID"], bool(i.get("isExcluded")), bool(i.get("includeDescendants")),
             bool(i.get("includeMapped"))) for i in atlas["items"]]


def test_export_then_import_gives_the_same_set(fed: Federation, visitor: Any) -> None:
    rosa = visitor("rosa")
    set_id = new_set(rosa, "Round trip")
    rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(T2D), "descendants": "1", "mapped": "1"})
    rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(T2D_KETO), "excluded": "1"})
    rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(GI_BLEED), "mapped": "1"})
    exported = rosa.get(f"/portal/concept-sets/{set_id}/atlas.json")
    body = exported.json()
    assert flags_of(body) == [(T2D, False, True, True), (T2D_KETO, True, False, False), (GI_BLEED, False, False, True)]
    # uploaded as the file ATLAS (or this portal) wrote, multipart
    r = rosa.post("/portal/concept-sets/import", {"project": PROJECT},
                  files={"atlas_file": ("Round-trip.json", exported.content, "application/json")})
    assert r.status_code == 303, T(r)[:2000]
    new_id = int(r.headers["location"].rsplit("/", 1)[1])
    assert new_id != set_id
    assert rosa.get(f"/portal/concept-sets/{new_id}/atlas.json").json() == body  # every field, every flag
    page = rosa.get(f"/portal/concept-sets/{new_id}")
    assert "<h1>Concept set: Round-trip</h1>" in page.text  # named after the file
    assert table_ids(page.text, "set-resolved") == table_ids(rosa.get(f"/portal/concept-sets/{set_id}").text,
                                                             "set-resolved")
    # pasted, with a name
    r = rosa.post("/portal/concept-sets/import", {"project": PROJECT, "name": "Pasted", "atlas_text": exported.text})
    assert r.status_code == 303, T(r)[:2000]
    again = int(r.headers["location"].rsplit("/", 1)[1])
    assert rosa.get(f"/portal/concept-sets/{again}/atlas.json").json() == body
    assert "<h1>Concept set: Pasted</h1>" in rosa.get(f"/portal/concept-sets/{again}").text
    assert any(e["event"] == "portal.concept_set_imported" and e["details"]["concept_set"] == again
               for e in audit_events(fed.hub))


def atlas_files() -> list[Path]:
    from shared_data import COHORTS

    return sorted(COHORTS.glob("*/*.json"))


def test_the_ohdsi_concept_sets_import(fed: Federation, visitor: Any) -> None:
    """Every concept set of the ATLAS cohort JSON in the shared data (OHDSI's CohortGenerator tests and
    Phenotype Library): uploaded whole (a cohort: each of its ConceptSets) and as one concept set with
    its expression; each set here has the file's name and items, flag for flag."""
    files = atlas_files()
    assert len(files) >= 9, "the shared test data (cohorts/) is missing"
    rosa = visitor("rosa")
    for path in files:
        cohort = json.loads(path.read_text())
        before = set(set_ids(fed))
        r = rosa.post("/portal/concept-sets/import", {"project": PROJECT},
                      files={"atlas_file": (path.name, path.read_bytes(), "application/json")})
        assert r.status_code in (200, 303), (path, T(r)[:2000])
        created = sorted(set(set_ids(fed)) - before)
        assert len(created) == len(cohort["ConceptSets"]), path
        for set_id, wanted in zip(created, cohort["ConceptSets"], strict=True):
            page = rosa.get(f"/portal/concept-sets/{set_id}").text
            assert f"<h1>Concept set: {wanted['name']}</h1>" in T(rosa.get(f"/portal/concept-sets/{set_id}")), path
            assert flags_of(rosa.get(f"/portal/concept-sets/{set_id}/atlas.json").json()) == \
                flags_of(wanted["expression"]), (path, wanted["name"])
            assert table_ids(page, "set-items") == [i["concept"]["CONCEPT_ID"] for i in wanted["expression"]["items"]]
        if len(created) > 1:
            assert f"Imported {len(created)} concept sets" in T(r)
    # one concept set of a cohort, with its expression, pasted
    one_set = json.loads(files[-1].read_text())["ConceptSets"][-1]
    r = rosa.post("/portal/concept-sets/import", {"project": PROJECT, "atlas_text": json.dumps(one_set)})
    assert r.status_code == 303
    new_id = int(r.headers["location"].rsplit("/", 1)[1])
    assert flags_of(rosa.get(f"/portal/concept-sets/{new_id}/atlas.json").json()) == flags_of(one_set["expression"])


def _gi_with(bad_item: dict[str, Any]) -> str:
    good = {"concept": {"CONCEPT_ID": GI_BLEED}, "isExcluded": False, "includeDescendants": True,
            "includeMapped": False}
    return json.dumps({"ConceptSets": [
        {"id": 0, "name": "fine", "expression": {"items": [good]}},
        {"id": 1, "name": "broken", "expression": {"items": [good, bad_item]}}]})


@pytest.mark.parametrize(("text", "status", "words"), [
    ("", 400, "atlas_file: choose an ATLAS concept-set JSON file"),
    ("{not json", 400, "ATLAS JSON: not JSON (line 1 column 2"),
    ('{"expressionz": 1}', 400, 'ATLAS JSON: expected ATLAS concept-set JSON: {"items": [...]}'),
    ('{"items": 3}', 400, 'items: expected a list of {"concept": ...} items'),
    ('{"items": [{"concept": {"CONCEPT_ID": 201826}}, {"concept": {}}]}', 400, "items[1]: expected {\"concept\""),
    (_gi_with({"concept": {"CONCEPT_ID": "abc"}}), 400,
     "ConceptSets[1] 'broken': items[1].concept.CONCEPT_ID: 'abc' is not a concept id"),
    (_gi_with({"concept": {"CONCEPT_ID": 201826}, "isExcluded": "yes"}), 400,
     "ConceptSets[1] 'broken': items[1].isExcluded: 'yes' is not true or false"),
    (_gi_with({"concept": {"CONCEPT_ID": 999999999}}), 400,
     "ConceptSets[1] 'broken': items[1]: concept 999999999 is not in the hub's vocabulary; nothing was imported"),
    ('{"ConceptSets": []}', 400, "ConceptSets: the JSON holds no concept set"),
    (json.dumps({"items": [{"concept": {"CONCEPT_ID": T2D + k}} for k in range(501)]}), 400,
     "items: a concept set holds at most 500 concepts, this one 501"),
])
def test_a_bad_import_is_one_clear_line_and_saves_nothing(fed: Federation, visitor: Any, text: str, status: int,
                                                          words: str) -> None:
    rosa = visitor("rosa")
    before = set_ids(fed)
    r = rosa.post("/portal/concept-sets/import", {"project": PROJECT, "atlas_text": text})
    assert r.status_code == status and words in T(r), T(r)[:3000]
    assert "Traceback" not in r.text
    assert set_ids(fed) == before  # nothing half-saved: not even the good first set
    if text:
        assert html_escape(text)[:40] in r.text  # the pasted text is kept to correct


def html_escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def test_import_refusals(fed: Federation, visitor: Any) -> None:
    from mercia.portal.web import MAX_FORM_BYTES

    rosa, olga = visitor("rosa"), visitor("olga")
    before = set_ids(fed)
    body = json.dumps({"items": [{"concept": {"CONCEPT_ID": T2D}}]})
    r = olga.post("/portal/concept-sets/import", {"project": PROJECT, "atlas_text": body})
    assert r.status_code == 403 and f"not a member of project '{PROJECT}'" in T(r)
    r = rosa.post("/portal/concept-sets/import", {"project": PROJECT, "atlas_text": body}, csrf=False)
    assert r.status_code == 403 and "security token" in T(r)
    big = b'{"items": [' + b" " * MAX_FORM_BYTES + b"]}"
    r = rosa.post("/portal/concept-sets/import", {"project": PROJECT},
                  files={"atlas_file": ("big.json", big, "application/json")})
    assert r.status_code == 413 and "larger than 2 MB" in T(r)
    assert set_ids(fed) == before


# ---- released persons per concept of a set ---------------------------------------------------------------------
def shown_concept_counts(page: str) -> tuple[list[str], dict[int, list[str]]]:
    table = page.split('id="set-concept-counts"', 1)[1].split("</table>", 1)[0]
    sites = re.findall(r'<th scope="col" class="num">([^<]+)</th>', table)
    rows = {}
    for row in re.findall(r"<tr><th scope=\"row\">.*?</tr>", table.split("<tbody>", 1)[1], flags=re.S):
        cid = int(re.search(r"</th><td>(\d+)</td>", row).group(1))  # type: ignore[union-attr]
        rows[cid] = re.findall(r'<td class="num">([^<]*)</td>', row)
    return sites, rows


def test_per_concept_counts_are_the_released_answers(fed: Federation, visitor: Any) -> None:
    import httpx

    rosa = visitor("rosa")
    set_id = new_set(rosa, "Per concept")
    rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(T2D), "descendants": "1"})
    rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(T2D_KETO), "excluded": "1"})
    rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(GI_BLEED)})
    r = rosa.post(f"/portal/concept-sets/{set_id}/concept-counts", {})
    assert r.status_code == 200, T(r)[:3000]
    sites, rows = shown_concept_counts(r.text)
    assert sites == ["east", "west"] and sorted(rows) == sorted([T2D, T2D_KETO, GI_BLEED])
    assert rows[T2D_KETO] == ["–", "–"] and "excluded from the set: not asked" in T(r)
    # the hub's API, asked by a token of the same role and project (a repeat: the very same released number)
    with fed.admin() as admin:
        token = admin.add_user("rosa-api-sets", "researcher", [PROJECT])["token"]
    released = []
    for cid, descendants in ((T2D, True), (GI_BLEED, False)):
        api = httpx.post(f"{fed.hub.url}/api/v1/concepts/count", headers={"Authorization": f"Bearer {token}"},
                         json={"concept_id": cid, "descendants": descendants, "project": PROJECT}, timeout=60)
        assert api.status_code == 200, api.text
        by_site = {a["site"]: a["persons"] for a in api.json()["sites"]}
        want = ["–" if by_site[s] is None else str(by_site[s]) for s in sites]
        assert rows[cid] == want, (cid, rows[cid], want)
        released += [v for v in by_site.values() if v is not None]
    assert released and all(v % 5 == 0 for v in released)
    # every number in the table is one of those released (ids, in their own column, aside)
    table = r.text.split('id="set-concept-counts"', 1)[1].split("</table>", 1)[0]
    numbers = [int(x) for x in re.findall(r'<td class="num">(\d+)</td>', table)]
    assert sorted(numbers) == sorted(released)
    asked = [e for e in audit_events(fed.hub) if e["event"] == "concept_count.asked" and e["actor"] == "rosa"]
    assert {(e["details"]["concept_id"], e["details"]["descendants"]) for e in asked} >= {(T2D, True),
                                                                                       (GI_BLEED, False)}
    # rosa's own budget at each node was charged, through the hub's attestation
    for node in fed.nodes.values():
        lines = [json.loads(x) for x in (node.state_dir / "audit.jsonl").read_text().splitlines()]
        assert any(x.get("event") == "concept_count.released" and x["details"].get("budget_of") == "hub/rosa"
                   for x in lines)
    # who: another project's researcher does not see the set; CSRF
    olga = visitor("olga")
    assert olga.post(f"/portal/concept-sets/{set_id}/concept-counts", {}).status_code == 404
    r = rosa.post(f"/portal/concept-sets/{set_id}/concept-counts", {}, csrf=False)
    assert r.status_code == 403 and "security token" in T(r)
    # a set with no concept to ask
    empty = new_set(rosa, "Only excluded")
    rosa.post(f"/portal/concept-sets/{empty}/items", {"concept_id": str(T2D), "excluded": "1"})
    r = rosa.post(f"/portal/concept-sets/{empty}/concept-counts", {})
    assert r.status_code == 400 and "items: add at least one concept that is not excluded" in T(r)


def test_per_concept_records_are_the_released_answers(fed: Federation, visitor: Any) -> None:
    """With "Records too", each site's released records stand beside its persons, as the API releases
    them (the same questions: repeats, at no further cost), with the cap said on the page."""
    import httpx

    rosa = visitor("rosa")
    set_id = new_set(rosa, "Per concept records")
    rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(T2D), "descendants": "1"})
    rosa.post(f"/portal/concept-sets/{set_id}/items", {"concept_id": str(GI_BLEED)})
    r = rosa.post(f"/portal/concept-sets/{set_id}/concept-counts", {"records": "1"})
    assert r.status_code == 200, T(r)[:3000]
    sites, persons = shown_concept_counts(r.text)
    table = r.text.split('id="set-concept-counts"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<th scope="col" class="num records">([^<]+)</th>', table) == [f"{s} records" for s in sites]
    records = {int(re.search(r"</th><td>(\d+)</td>", row).group(1)):  # type: ignore[union-attr]
               re.findall(r'<td class="num records">([^<]*)</td>', row)
               for row in re.findall(r"<tr><th scope=\"row\">.*?</tr>", table.split("<tbody>", 1)[1], flags=re.S)}
    with fed.admin() as admin:
        token = admin.add_user("rosa-api-set-records", "researcher", [PROJECT])["token"]
    released = []
    for cid, descendants in ((T2D, True), (GI_BLEED, False)):
        api = httpx.post(f"{fed.hub.url}/api/v1/concepts/count", headers={"Authorization": f"Bearer {token}"},
                         json={"concept_id": cid, "descendants": descendants, "project": PROJECT, "records": True},
                         timeout=60)
        assert api.status_code == 200, api.text
        for a in api.json()["sites"]:
            i = sites.index(a["site"])
            assert persons[cid][i] == ("–" if a["persons"] is None else str(a["persons"])), (cid, a)
            assert records[cid][i] == ("–" if a["records"] is None else str(a["records"])), (cid, a)
            assert a["records_per_person_counted"] == 10
            released += [v for v in (a["persons"], a["records"]) if v is not None]
    numbers = [int(x) for x in re.findall(r'<td class="num(?: records)?">(\d+)</td>', table)]
    assert sorted(numbers) == sorted(released)
    assert "counted up to 10 per person" in " ".join(T(r).split())


# ---- "Add to a concept set" from the concept search's results -----------------------------------------------------
def test_add_to_a_set_from_the_search_results(fed: Federation, visitor: Any) -> None:
    from mercia.portal.concept_sets import ConceptSetStore

    rosa, ravi = visitor("rosa"), visitor("ravi")
    mine = new_set(rosa, "From the search")
    ravis = new_set(ravi, "Ravi's set")
    page = rosa.get("/portal/concepts?text=type 2 diabetes")
    form = page.text.split('id="add-to-set"', 1)[1].split("</form>", 1)[0]
    assert f'<option value="{mine}"' in form and f'<option value="{ravis}"' not in form  # only sets she may change
    assert f'name="concept_id" value="{T2D}"' in form and 'name="search_text" value="type 2 diabetes"' in form
    r = rosa.post("/portal/concept-sets/add", {"set": str(mine), "concept_id": str(T2D), "descendants": "1",
                                               "from": "search", "search_text": "type 2 diabetes",
                                               "search_domain": "Condition", "search_standard": "1"})
    assert r.status_code == 303, T(r)[:2000]
    location = r.headers["location"]
    assert location.startswith("/portal/concepts?") and f"added={T2D}" in location and f"to={mine}" in location
    back = rosa.get(location)
    assert back.status_code == 200
    assert f"Added Type 2 diabetes mellitus ({T2D}) with its descendants to concept set From the search." in T(back)
    assert f'<option value="{mine}" selected>' in back.text and 'value="type 2 diabetes"' in back.text
    assert '<option selected>Condition</option>' in back.text
    items = ConceptSetStore(fed.hub.state_dir / "hub.sqlite").get(mine).items
    assert [(i.concept_id, i.include_descendants, i.is_excluded, i.include_mapped) for i in items] == \
        [(T2D, True, False, False)]
    # without descendants
    rosa.post("/portal/concept-sets/add", {"set": str(mine), "concept_id": str(GI_BLEED), "from": "search",
                                           "search_text": "bleeding"})
    items = ConceptSetStore(fed.hub.state_dir / "hub.sqlite").get(mine).items
    assert [(i.concept_id, i.include_descendants) for i in items] == [(T2D, True), (GI_BLEED, False)]
    # a confirmation is only ever about a set she may change and a concept in it
    assert "Added" not in T(rosa.get(f"/portal/concepts?text=x&added={T2D}&to={ravis}"))
    assert "Added" not in T(rosa.get(f"/portal/concepts?text=x&added={T2D_KETO}&to={mine}"))
    # another user's set: refused, unchanged; another project's: not found; no CSRF token: refused
    r = rosa.post("/portal/concept-sets/add", {"set": str(ravis), "concept_id": str(T2D), "from": "search"})
    assert r.status_code == 403 and "only its author or an admin" in T(r)
    assert ConceptSetStore(fed.hub.state_dir / "hub.sqlite").get(ravis).items == ()
    r = visitor("olga").post("/portal/concept-sets/add", {"set": str(mine), "concept_id": str(T2D), "from": "search"})
    assert r.status_code == 404
    r = rosa.post("/portal/concept-sets/add", {"set": str(mine), "concept_id": str(T2D_KETO), "from": "search"},
                  csrf=False)
    assert r.status_code == 403 and "security token" in T(r)
    assert len(ConceptSetStore(fed.hub.state_dir / "hub.sqlite").get(mine).items) == 2
    # a researcher with no set of her own is told how to make one
    olga_page = visitor("olga").get("/portal/concepts?text=type 2 diabetes")
    assert 'id="add-to-set"' not in olga_page.text and "create a concept set" in olga_page.text


@pytest.mark.browser
def test_import_add_from_search_and_counts_per_concept_in_the_browser(fed: Federation, chromium: Any,
                                                                       artifacts_dir: Any) -> None:
    """In Chromium: import an OHDSI Phenotype Library definition's concept set from its file, see a bad
    paste refused, add a search result to the set by keyboard (Enter on its Add button), ask the sites
    per concept; the numbers are the hub API's released answers; each page passes axe-core."""
    import httpx

    from shared_data import COHORTS
    from test_portal_browser import check_a11y, sign_in

    source = COHORTS / "phenotypelibrary" / "503.json"
    wanted = json.loads(source.read_text())["ConceptSets"][0]
    ctx = chromium.new_context(viewport={"width": 1280, "height": 900}, base_url=fed.hub.url, bypass_csp=True)
    try:
        page = ctx.new_page()
        sign_in(page, "rosa")
        page.goto("/portal/concept-sets")
        page.fill("#import-text", '{"items": [{"concept": {"CONCEPT_ID": 999999999}}]}')
        page.get_by_role("button", name="Import").click()
        problem = page.get_by_role("alert").inner_text()
        page.screenshot(path=str(artifacts_dir / "portal-concept-set-import-refused.png"), full_page=True)
        check_a11y(page, "concept set import refused")
        page.fill("#import-text", "")
        page.set_input_files("#import-file", str(source))
        page.get_by_role("button", name="Import").click()
        page.wait_for_url(re.compile(r".*/portal/concept-sets/\d+$"))
        set_id = int(page.url.rsplit("/", 1)[1])
        title = page.locator("h1").inner_text()
        imported = [int(x) for x in page.locator("#set-items tbody tr td:nth-child(2)").all_inner_texts()]
        page.screenshot(path=str(artifacts_dir / "portal-concept-set-imported.png"), full_page=True)
        check_a11y(page, "imported concept set")
        # the search's results: choose the set and the option by keyboard, Enter on a result's Add
        page.goto("/portal/concepts")
        page.fill("#text", "gastrointestinal hemorrhage")
        page.keyboard.press("Enter")
        page.wait_for_selector("#concept-hits")
        page.select_option("#add-set", str(set_id))
        page.focus("#add-descendants")
        page.keyboard.press("Space")  # off: the concept alone
        page.locator("#concept-hits tbody tr", has=page.locator(f"td:text-is('{GI_BLEED}')")).get_by_role(
            "button", name=re.compile("^Add ")).focus()
        page.screenshot(path=str(artifacts_dir / "portal-concepts-add-to-set.png"), full_page=True)
        check_a11y(page, "concept search with add to a set")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r".*/portal/concepts\?.*added=.*"))
        notice = page.get_by_role("status").inner_text()
        page.screenshot(path=str(artifacts_dir / "portal-concepts-added.png"), full_page=True)
        check_a11y(page, "concept search after adding")
        # released persons per concept
        page.goto(f"/portal/concept-sets/{set_id}")
        page.get_by_role("button", name="Ask each site, per concept").click()
        page.wait_for_selector("#set-concept-counts")
        sites = page.locator("#set-concept-counts thead th.num:not(.records)").all_inner_texts()
        rows = {int(row.locator("td").nth(0).inner_text()): row.locator("td.num:not(.records)").all_inner_texts()
                for row in page.locator("#set-concept-counts tbody tr").all()}
        records = {int(row.locator("td").nth(0).inner_text()): row.locator("td.num.records").all_inner_texts()
                   for row in page.locator("#set-concept-counts tbody tr").all()}  # asked by default
        page.screenshot(path=str(artifacts_dir / "portal-concept-set-per-concept-counts.png"), full_page=True)
        check_a11y(page, "concept set counts per concept")
    finally:
        ctx.close()
    assert "items[0]: concept 999999999 is not in the hub's vocabulary; nothing was imported" in problem
    assert title == f"Concept set: {wanted['name']}"
    assert imported == [i["concept"]["CONCEPT_ID"] for i in wanted["expression"]["items"]]
    assert notice.startswith("Added ") and f"({GI_BLEED}) to concept set {wanted['name']}." in notice
    assert sites == ["east", "west"]
    item = wanted["expression"]["items"][0]
    asked = [(item["concept"]["CONCEPT_ID"], bool(item.get("includeDescendants"))), (GI_BLEED, False)]
    assert sorted(rows) == sorted(cid for cid, _ in asked)
    with fed.admin() as admin:
        token = admin.add_user("rosa-api-browser", "researcher", [PROJECT])["token"]
    for cid, descendants in asked:
        api = httpx.post(f"{fed.hub.url}/api/v1/concepts/count", headers={"Authorization": f"Bearer {token}"},
                         json={"concept_id": cid, "descendants": descendants, "project": PROJECT, "records": True},
                         timeout=60).json()
        by_site = {a["site"]: a["persons"] for a in api["sites"]}
        assert rows[cid] == ["–" if by_site[s] is None else str(by_site[s]) for s in sites], cid
        rec = {a["site"]: a["records"] for a in api["sites"]}
        assert records[cid] == ["–" if rec[s] is None else str(rec[s]) for s in sites], cid
