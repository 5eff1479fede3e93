"""Concept set resolution: hand-made vocabularies with known answers, an independent Python model
of Circe's rules, and random expressions on random hierarchies checked against that model."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercia.cdm import Cdm
from mercia.vocab import load_bundled_vocabulary
from mercia.vocab.concept_sets import (
    ConceptSet,
    ConceptSetItem,
    concept_set_query,
    resolve_concept_set,
    unknown_concept_ids,
)

START, END = dt.date(1970, 1, 1), dt.date(2099, 12, 31)


def load_vocab(
    cdm: Cdm,
    concepts: dict[int, str | None],
    ancestors: Iterable[tuple[int, int]],
    maps: Iterable[tuple[int, int, str | None]],
) -> None:
    """concepts: id -> invalid_reason; ancestors: (ancestor, descendant) incl. self rows;
    maps: (source, standard, invalid_reason) 'Maps to' rows."""
    ids = sorted(concepts)
    cdm.create_tables(["concept", "concept_ancestor", "concept_relationship"])
    cdm.insert_arrow(
        "concept",
        pa.table(
            {
                "concept_id": ids,
                "concept_name": [f"c{i}" for i in ids],
                "domain_id": ["Condition"] * len(ids),
                "vocabulary_id": ["SNOMED"] * len(ids),
                "concept_class_id": ["Clinical Finding"] * len(ids),
                "standard_concept": ["S"] * len(ids),
                "concept_code": [str(i) for i in ids],
                "valid_start_date": [START] * len(ids),
                "valid_end_date": [END] * len(ids),
                "invalid_reason": [concepts[i] for i in ids],
            }
        ),
    )
    anc = sorted(set(ancestors))
    cdm.insert_arrow(
        "concept_ancestor",
        pa.table(
            {
                "ancestor_concept_id": [a for a, _ in anc],
                "descendant_concept_id": [d for _, d in anc],
                "min_levels_of_separation": [0 if a == d else 1 for a, d in anc],
                "max_levels_of_separation": [0 if a == d else 1 for a, d in anc],
            }
        ),
    )
    rels = sorted(set(maps), key=lambda r: (r[0], r[1]))
    cdm.insert_arrow(
        "concept_relationship",
        pa.table(
            {
                "concept_id_1": [s for s, _, _ in rels],
                "concept_id_2": [t for _, t, _ in rels],
                "relationship_id": ["Maps to"] * len(rels),
                "valid_start_date": [START] * len(rels),
                "valid_end_date": [END] * len(rels),
                "invalid_reason": [inv for _, _, inv in rels],
            },
            schema=pa.schema(
                [
                    ("concept_id_1", pa.int64()),
                    ("concept_id_2", pa.int64()),
                    ("relationship_id", pa.string()),
                    ("valid_start_date", pa.date32()),
                    ("valid_end_date", pa.date32()),
                    ("invalid_reason", pa.string()),
                ]
            ),
        ),
    )


def circe_model(
    concepts: dict[int, str | None],
    ancestors: set[tuple[int, int]],
    maps: set[tuple[int, int, str | None]],
    items: list[ConceptSetItem],
) -> set[int]:
    """Circe's rules written out over Python sets, independent of the SQL under test."""

    def valid_descendants(roots: set[int]) -> set[int]:
        return {d for a, d in ancestors if a in roots and d in concepts and concepts[d] is None}

    def part(chosen: list[ConceptSetItem]) -> set[int]:
        if not chosen:
            return set()
        direct = {i.concept_id for i in chosen}
        desc = {i.concept_id for i in chosen if i.include_descendants}
        out = {c for c in direct if c in concepts} | valid_descendants(desc)
        m = {i.concept_id for i in chosen if i.include_mapped}
        md = {i.concept_id for i in chosen if i.include_mapped and i.include_descendants}
        if m or md:
            base = {c for c in m if c in concepts} | valid_descendants(md)
            out |= {s for s, t, inv in maps if t in base and inv is None}
        return out

    return part([i for i in items if not i.is_excluded]) - part([i for i in items if i.is_excluded])


# 1 root; 2 under 1; 3 under 2; 4 under 1 but invalid ('D'); 5 alone.
# Sources: 10 -> 3, 11 -> 1, 12 -> 2 (relationship invalid), 13 -> 4.
CONCEPTS = {1: None, 2: None, 3: None, 4: "D", 5: None, 10: None, 11: None, 12: None, 13: None}
ANCESTORS = {(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (1, 2), (1, 3), (2, 3), (1, 4)}
MAPS = {(10, 3, None), (11, 1, None), (12, 2, "D"), (13, 4, None)}


def item(cid: int, *, x: bool = False, d: bool = False, m: bool = False) -> ConceptSetItem:
    return ConceptSetItem(concept_id=cid, is_excluded=x, include_descendants=d, include_mapped=m)


CASES = [
    ("descendants drop invalid concepts", [item(1, d=True)], {1, 2, 3}),
    ("a directly named invalid concept stays", [item(4)], {4}),
    ("no descendants without the flag", [item(1)], {1}),
    ("exclusion with descendants", [item(1, d=True), item(2, x=True, d=True)], {1}),
    ("exclusion without descendants", [item(1, d=True), item(2, x=True)], {1, 3}),
    ("mapped adds source codes of valid maps", [item(1, d=True, m=True)], {1, 2, 3, 10, 11}),
    ("mapped without descendants maps the concept only", [item(1, m=True)], {1, 11}),
    ("mapped from an invalid named concept", [item(4, m=True)], {4, 13}),
    (
        "excluded mapped removes the sources too",
        [item(1, d=True, m=True), item(3, x=True, m=True)],
        {1, 2, 11},
    ),
    ("unknown ids resolve to nothing", [item(999, d=True, m=True)], set()),
    ("only exclusions give nothing", [item(1, x=True, d=True)], set()),
    ("empty set", [], set()),
    ("several roots", [item(5), item(2, d=True)], {2, 3, 5}),
]


@pytest.fixture
def small_vocab(any_cdm: Cdm) -> Cdm:
    load_vocab(any_cdm, CONCEPTS, ANCESTORS, MAPS)
    return any_cdm


@pytest.mark.parametrize(("label", "items", "expected"), CASES, ids=[c[0] for c in CASES])
def test_hand_made_cases(
    small_vocab: Cdm, label: str, items: list[ConceptSetItem], expected: set[int]
) -> None:
    cs = ConceptSet(id=1, items=items)
    assert circe_model(CONCEPTS, ANCESTORS, MAPS, items) == expected, (
        "the model itself disagrees with the case"
    )
    assert resolve_concept_set(small_vocab, cs) == sorted(expected)


def test_query_nests_as_a_subquery(small_vocab: Cdm) -> None:
    from sqlglot import exp

    q = concept_set_query(small_vocab, ConceptSet(id=1, items=[item(1, d=True, m=True), item(2, x=True)]))
    outer = exp.select(exp.Count(this=exp.Star())).from_(q.subquery("cs"))
    assert small_vocab.scalar(outer) == 4  # {1, 3, 10, 11}
    assert "?" not in q.sql(dialect="duckdb") and "%s" not in q.sql(dialect="postgres")


def test_unknown_concept_ids(small_vocab: Cdm) -> None:
    assert unknown_concept_ids(small_vocab, [3, 999, 1, 999, 7]) == [999, 7]
    assert unknown_concept_ids(small_vocab, []) == []


def test_from_atlas_reads_cohort_json_concept_sets() -> None:
    obj = {
        "id": 3,
        "name": "x",
        "expression": {
            "items": [
                {"concept": {"CONCEPT_ID": 201826}, "includeDescendants": True},
                {"concept": {"CONCEPT_ID": 443732}, "isExcluded": True, "includeMapped": True},
            ]
        },
    }
    cs = ConceptSet.from_atlas(obj)
    assert cs.id == 3 and cs.items == [item(201826, d=True), item(443732, x=True, m=True)]


def test_from_atlas_rejects_a_malformed_item() -> None:
    from mercia.errors import VocabularyError

    with pytest.raises(VocabularyError, match="CONCEPT_ID"):
        ConceptSet.from_atlas({"id": 1, "name": "bad", "expression": {"items": [{"concept": {}}]}})


def test_bundled_vocabulary_type2_diabetes(duck_cdm: Cdm) -> None:
    load_bundled_vocabulary(duck_cdm)
    t2 = resolve_concept_set(duck_cdm, ConceptSet(id=1, items=[item(201826, d=True)]))
    assert {201826, 443732, 376065, 443729} <= set(t2)
    assert 201254 not in t2
    gi = resolve_concept_set(duck_cdm, ConceptSet(id=2, items=[item(192671, m=True)]))
    assert gi == [192671, 35208414]  # ICD10CM K92.2 maps to it in Eunomia's vocabulary


# ---- generative: random hierarchies and expressions against the model ---------------------------


@st.composite
def vocabularies(draw: st.DrawFn) -> tuple[dict[int, str | None], set[tuple[int, int]], set]:
    n = draw(st.integers(2, 9))
    ids = list(range(1, n + 1))
    concepts = {i: draw(st.sampled_from([None, None, None, "D", "U"])) for i in ids}
    parents = {
        i: draw(st.lists(st.sampled_from(ids[: i - 1]), max_size=2, unique=True)) if i > 1 else []
        for i in ids
    }

    def ups(i: int) -> set[int]:
        out = {i}
        for p in parents[i]:
            out |= ups(p)
        return out

    ancestors = {(a, d) for d in ids for a in ups(d)}
    sources = list(range(100, 100 + draw(st.integers(0, 5))))
    maps = {(s, draw(st.sampled_from(ids)), draw(st.sampled_from([None, None, "D"]))) for s in sources}
    return concepts, ancestors, maps


@st.composite
def expressions(draw: st.DrawFn) -> list[ConceptSetItem]:
    return draw(
        st.lists(
            st.builds(
                ConceptSetItem,
                concept_id=st.integers(1, 11),
                is_excluded=st.booleans(),
                include_descendants=st.booleans(),
                include_mapped=st.booleans(),
            ),
            max_size=5,
        )
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vocab=vocabularies(), items=expressions())
def test_random_expressions_match_the_model(
    cdm_factory: Callable[..., Cdm], vocab: tuple, items: list[ConceptSetItem]
) -> None:
    concepts, ancestors, maps = vocab
    cdm = cdm_factory()
    load_vocab(cdm, {**concepts, **{s: None for s, _, _ in maps}}, ancestors, maps)
    expected = circe_model({**concepts, **{s: None for s, _, _ in maps}}, ancestors, maps, items)
    assert resolve_concept_set(cdm, ConceptSet(id=1, items=items)) == sorted(expected)


def test_codesets_query_tags_each_set(small_vocab: Cdm) -> None:
    from mercia.vocab.concept_sets import codesets_query

    sets = [ConceptSet(id=7, items=[item(1, d=True)]), ConceptSet(id=9, items=[item(3, m=True)])]
    rows = sorted(small_vocab.fetch_all(codesets_query(small_vocab, sets)))
    assert rows == [(7, 1), (7, 2), (7, 3), (9, 3), (9, 10)]
    assert small_vocab.fetch_all(codesets_query(small_vocab, [])) == []
