"""Reading ATLAS concept-set JSON for the portal's import (mercia.portal.concept_sets.parse_atlas), fast:
no hub. The portal's own HTTP flow (upload, paste, vocabulary check, all-or-nothing) is in
test_portal_concept_sets.py.

Every concept set of the ATLAS cohort JSON in the shared test data (OHDSI CohortGenerator's and
Phenotype Library's files) is read as the cohort reader reads it (mercia.vocab.concept_sets, a separate
reader) and as plain JSON; the export (atlas_expression) read back gives the same items.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mercia.portal.concept_sets import (
    ConceptSetError,
    ImportedSet,
    Item,
    PortalConceptSet,
    atlas_expression,
    parse_atlas,
)
from mercia.vocab.concept_sets import ConceptSet
from shared_data import COHORTS

FILES = sorted(COHORTS.glob("*/*.json"))


def test_the_shared_atlas_files_are_there() -> None:
    assert len(FILES) >= 9, f"the shared test data is missing: {COHORTS}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_concept_set_of_an_ohdsi_cohort_reads_as_the_cohort_reader_reads_it(path: Path) -> None:
    cohort = json.loads(path.read_text())
    got = parse_atlas(path.read_text())
    assert [s.name for s in got] == [c["name"] for c in cohort["ConceptSets"]]
    for mine, raw in zip(got, cohort["ConceptSets"], strict=True):
        theirs = ConceptSet.from_atlas(raw)
        assert [(i.concept_id, i.is_excluded, i.include_descendants, i.include_mapped) for i in mine.items] == \
            [(i.concept_id, i.is_excluded, i.include_descendants, i.include_mapped) for i in theirs.items]
        # and each set alone, as {"id", "name", "expression"} and as its bare expression
        assert parse_atlas(json.dumps(raw)) == [ImportedSet(mine.name, mine.items, "the concept set " + repr(
            mine.name[:60]))]
        assert parse_atlas(json.dumps(raw["expression"]))[0].items == mine.items


def test_export_then_parse_is_the_identity() -> None:
    items = (Item(201826, include_descendants=True, include_mapped=True), Item(443732, is_excluded=True),
             Item(192671, include_mapped=True), Item(4, is_excluded=True, include_descendants=True))
    cs = PortalConceptSet(1, "p", "rosa", "x", items)
    concepts = {201826: {"concept_name": "Type 2 diabetes mellitus", "standard_concept": "S", "invalid_reason": None,
                         "concept_code": "44054006", "domain_id": "Condition", "vocabulary_id": "SNOMED",
                         "concept_class_id": "Clinical Finding"}}
    assert parse_atlas(json.dumps(atlas_expression(cs, concepts))) == [ImportedSet("", items, "")]


@pytest.mark.parametrize(("text", "words"), [
    ("{", "ATLAS JSON: not JSON (line 1 column 2"),
    ("5", "ATLAS JSON: expected ATLAS concept-set JSON"),
    ("[]", "concept sets: the JSON holds no concept set"),
    ('{"items": 3}', 'items: expected a list of {"concept": ...} items'),
    ('{"items": [1]}', 'items[0]: expected {"concept": {"CONCEPT_ID": ...}'),
    ('{"items": [{"concept": {"CONCEPT_ID": true}}]}', "items[0].concept.CONCEPT_ID: 'True' is not a concept id"),
    ('{"items": [{"concept": {"CONCEPT_ID": 0}}]}', "items[0].concept.CONCEPT_ID: '0' is not a concept id"),
    ('{"items": [{"concept": {"CONCEPT_ID": 5}, "includeMapped": 1}]}', "items[0].includeMapped: '1' is not true or false"),
    ('{"name": "q", "expression": 3}', "the concept set 'q': expression: expected an object with a list \"items\""),
    ('{"ConceptSets": [{"name": "a", "expression": {"items": []}}, 7]}', "ConceptSets[1]: expected a concept set"),
    (json.dumps([{"name": "a", "expression": {"items": []}}] * 51), "concept sets: at most 50 concept sets at once"),
])
def test_bad_json_is_one_line_naming_the_item(text: str, words: str) -> None:
    with pytest.raises(ConceptSetError) as e:
        parse_atlas(text)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_flag_left_out_or_null_is_false() -> None:
    got = parse_atlas('{"items": [{"concept": {"CONCEPT_ID": "201826"}, "isExcluded": null}]}')
    assert got[0].items == (Item(201826),)
