"""The hub's fast paths give the answers of the plain queries, on a vocabulary of the full one's shape.

`prepare_search_index` (names, synonyms and codes lowered once, in temporary tables) and the details'
descendants taken with LIMIT and counted with COUNT were added for a full Athena vocabulary
(bench/bench_portal.py --vocabulary-concepts). Here, on a generated vocabulary at a small scale
(bench/vocab_shape.py, with the bundled real concepts inside), every search is asked with and without
the index and must give the same rows in the same order; a concept's details are checked against an
independent reading of CONCEPT_ANCESTOR.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def vocab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from mercia.demo import build_federation

    sys.path.insert(0, str(BENCH))
    try:
        import vocab_shape
    finally:
        sys.path.remove(str(BENCH))
    base = build_federation(tmp_path_factory.mktemp("fed"), persons=300, seed=3)[0]
    out = tmp_path_factory.mktemp("v") / "v.duckdb"
    vocab_shape.build(out, 20_000, seed=5, base=base)
    return out, vocab_shape.landmarks(out, seed=5, set_size=300)


@pytest.fixture(scope="module")
def cdm(vocab: tuple[Path, dict[str, Any]]) -> Any:
    from mercia.cdm import Cdm

    c = Cdm.open(str(vocab[0]), create=False, read_only=True)
    yield c
    c.close()


def terms(cdm: Any, lm: dict[str, Any]) -> list[str]:
    """Common and rare words, codes, exact names and synonyms (any case), prefixes, pieces of words, and
    text that matches nothing."""
    names = [r[0] for r in cdm.fetch_all("SELECT concept_name FROM concept ORDER BY concept_id LIMIT 5")]
    synonym = cdm.fetch_all("SELECT concept_synonym_name FROM concept_synonym ORDER BY concept_id DESC LIMIT 1")[0][0]
    return ["tablet", "TABLET", "diabetes", "Type 2 diabetes", "abet", lm["rare"], lm["code"], lm["code"].upper(),
            "metformin", "oral tab", "e11", "201826", *names, synonym, synonym.upper(), "zzzz no such thing", "a"]


def test_search_through_the_index_gives_the_same_rows_in_the_same_order(cdm: Any, vocab: Any) -> None:
    from mercia.vocab.search import prepare_search_index, search_concepts

    index = prepare_search_index(cdm)
    assert index is not None
    filters: list[dict[str, Any]] = [{}, {"standard": True}, {"domain": "drug"}, {"vocabulary": "SNOMED"},
                                     {"domain": "Condition", "standard": True}]
    compared = 0
    for text in terms(cdm, vocab[1]):
        for f in filters:
            for limit in (1, 100, 1000):
                plain = search_concepts(cdm, text, limit=limit, counts=False, **f)
                fast = search_concepts(cdm, text, limit=limit, counts=False, index=index, **f)
                assert fast == plain, (text, f, limit)
                compared += bool(plain)
    assert compared > 50  # most of the searches found something


def test_exact_and_prefix_matches_first_and_the_substring_scan_only_when_they_are_too_few(
        cdm: Any, vocab: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A common word has `limit` names starting with it: the search reads only those (STARTS_WITH on the
    index sorted by text) and never tests every text for a substring; a piece of a word that begins no
    name needs the substring scan too. Either way the answer is the plain query's."""
    from mercia.vocab.search import prepare_search_index, search_concepts, search_query

    index = prepare_search_index(cdm)
    ran: list[str] = []
    fetch_all = cdm.fetch_all

    def spy(query: Any, params: Any = None) -> Any:
        ran.append(query if isinstance(query, str) else query.sql("duckdb"))
        return fetch_all(query, params)

    near, _ = search_query(cdm, "tablet", limit=100, counts=False, index=index, near_only=True)
    assert "STRPOS" not in near.sql("duckdb").upper()
    for text, substring_scan in (("tablet", False), ("abet", True)):
        plain = search_concepts(cdm, text, limit=100, counts=False)
        assert len(plain) == 100
        monkeypatch.setattr(cdm, "fetch_all", spy)
        ran.clear()
        fast = search_concepts(cdm, text, limit=100, counts=False, index=index)
        monkeypatch.setattr(cdm, "fetch_all", fetch_all)
        assert fast == plain, text
        assert any("STRPOS" in sql.upper() for sql in ran) is substring_scan, (text, ran)
        assert substring_scan or {h.match for h in fast} <= {"exact", "prefix"}
    with pytest.raises(ValueError, match="near_only"):
        search_query(cdm, "tablet", counts=True, index=index, near_only=True)


def test_the_hub_searches_through_the_index(vocab: Any, cdm: Any) -> None:
    from dataclasses import asdict

    from mercia.federation.hub.vocabulary import HubVocabulary
    from mercia.vocab.search import search_concepts

    hub = HubVocabulary(str(vocab[0]))
    try:
        got = hub.search("tablet", limit=100)
        assert hub._index is not None
    finally:
        hub.close()
    want = [{k: v for k, v in asdict(h).items() if k != "record_count"}
            for h in search_concepts(cdm, "tablet", limit=100, counts=False)]
    assert got == want and len(got) == 100


@pytest.mark.parametrize("which", ["root", "set_concept"])
def test_details_take_the_first_descendants_and_count_them_all(cdm: Any, vocab: Any, which: str) -> None:
    from mercia.vocab.search import concept_details

    cid = vocab[1][which]
    below = cdm.fetch_all(f"SELECT descendant_concept_id, min_levels_of_separation FROM concept_ancestor "
                          f"WHERE ancestor_concept_id = {cid} AND descendant_concept_id <> {cid}")
    expected = [c for c, _ in sorted(below, key=lambda r: (r[1], r[0]))]
    for most in (0, 7, 100):
        d = concept_details(cdm, cid, max_descendants=most, counts=False)
        assert d.descendants_total == len(expected) > 100
        assert [x["concept_id"] for x in d.descendants] == expected[:most]
    assert [x["concept_id"] for x in d.ancestors] == [
        a for a, _ in sorted(cdm.fetch_all(f"SELECT ancestor_concept_id, min_levels_of_separation FROM concept_ancestor"
                                           f" WHERE descendant_concept_id = {cid} AND ancestor_concept_id <> {cid}"),
                             key=lambda r: (r[1], r[0]))]


def test_no_index_on_another_database() -> None:
    from mercia.cdm.engines.spark import SparkEngine
    from mercia.vocab.search import prepare_search_index

    class Other:  # a CDM on an engine without connection-local temporary tables (Spark's)
        engine = SparkEngine

    assert prepare_search_index(Other()) is None  # type: ignore[arg-type]
