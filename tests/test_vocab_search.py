"""Concept search and concept details (issue 13, item 7) against an independent oracle: pandas over the
same vocabulary and clinical tables (OHDSI's Eunomia GiBleed sample, and Mercia's bundled vocabulary)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cdm.load import load_folder
from mercia.errors import VocabularyError
from mercia.vocab.search import (
    DOMAIN_TABLES,
    concept_details,
    concept_persons,
    prepare_search_index,
    search_concepts,
)


# ---- the oracle ---------------------------------------------------------------------------------
class Oracle:
    """Concept search and details written again in pandas, straight from the tables' Parquet files."""

    def __init__(self, folder: Path) -> None:
        def read(name: str) -> pd.DataFrame | None:
            p = folder / f"{name}.parquet"
            return pd.read_parquet(p) if p.exists() else None

        self.concept = read("concept")
        self.synonym = read("concept_synonym")
        self.ancestor = read("concept_ancestor")
        self.rel = read("concept_relationship")
        self.tables = {t: (read(t), col, src) for t, col, src in DOMAIN_TABLES if read(t) is not None}

    def record_counts(self) -> pd.Series:
        parts = [df[col] for df, col, _ in self.tables.values() if len(df)]
        return pd.concat(parts).value_counts() if parts else pd.Series(dtype="int64")

    def search(self, text: str, domain: str | None = None, vocabulary: str | None = None,
               standard: bool = False) -> list[tuple[int, str, int]]:
        q = text.strip().lower()
        names = [self.concept[["concept_id", "concept_name"]].rename(columns={"concept_name": "t"})]
        if self.synonym is not None:
            names.append(self.synonym[["concept_id", "concept_synonym_name"]].rename(
                columns={"concept_synonym_name": "t"}))
        best: dict[int, int] = {}
        for df in names:
            for cid, t in zip(df["concept_id"], df["t"].str.lower(), strict=True):
                pos = t.find(q)
                if pos < 0:
                    continue
                rank = 0 if t == q else 1 if pos == 0 else 2
                best[int(cid)] = min(best.get(int(cid), 9), rank)
        for cid in self.concept.loc[self.concept["concept_code"].str.lower() == q, "concept_id"]:
            best[int(cid)] = 0
        c = self.concept.set_index("concept_id")
        counts = self.record_counts()
        out = []
        for cid, rank in best.items():
            row = c.loc[cid]
            if domain and row["domain_id"].lower() != domain.lower():
                continue
            if vocabulary and row["vocabulary_id"].lower() != vocabulary.lower():
                continue
            if standard and row["standard_concept"] != "S":
                continue
            out.append((cid, ["exact", "prefix", "substring"][rank], int(counts.get(cid, 0))))
        return sorted(out, key=lambda x: (["exact", "prefix", "substring"].index(x[1]), -x[2], x[0]))

    def persons(self, cid: int, descendants: bool) -> int:
        ids = {cid}
        if descendants:
            ids |= set(self.ancestor.loc[self.ancestor["ancestor_concept_id"] == cid, "descendant_concept_id"])
        people: set[int] = set()
        for df, col, _ in self.tables.values():
            if "person_id" in df.columns:
                people |= set(df.loc[df[col].isin(ids), "person_id"])
        return len(people)


@pytest.fixture(scope="module")
def eunomia(eunomia_dir: Path) -> Iterator[tuple[Cdm, Oracle]]:
    cdm = Cdm.open()
    load_folder(cdm, eunomia_dir)
    yield cdm, Oracle(eunomia_dir)
    cdm.close()


QUERIES = [
    ("hemorrhage", {}),
    ("bleed", {}),
    ("K92.2", {}),  # an exact code (ICD10CM, non-standard)
    ("k92.2", {}),  # codes match case-insensitively
    ("74474003", {}),  # SNOMED code of Gastrointestinal hemorrhage
    ("celecoxib", {}),
    ("Tablet", {"domain": "Drug"}),
    ("tablet", {"vocabulary": "rxnorm", "standard": True}),
    ("visit", {}),
    ("a", {"domain": "Condition"}),  # most condition concepts: the order by record count matters
    ("pain", {"standard": True}),
    ("%", {}),  # LIKE wildcards are ordinary characters here
    ("_", {}),
    ("'; DROP TABLE concept; --", {}),
]


@pytest.mark.parametrize(("text", "filters"), QUERIES)
def test_search_matches_the_pandas_oracle_on_eunomia(eunomia, text, filters):
    cdm, oracle = eunomia
    got = [(h.concept_id, h.match, h.record_count) for h in search_concepts(cdm, text, limit=1000, **filters)]
    assert got == oracle.search(text, **filters)


def test_search_order_is_exact_then_prefix_then_substring_then_records(eunomia):
    cdm, oracle = eunomia
    hits = search_concepts(cdm, "a", domain="Condition", limit=1000)
    assert {h.match for h in hits} >= {"prefix", "substring"}
    keys = [(["exact", "prefix", "substring"].index(h.match), -h.record_count, h.concept_id) for h in hits]
    assert keys == sorted(keys)
    assert any(h.record_count > 0 for h in hits) and any(h.record_count == 0 for h in hits)
    top = search_concepts(cdm, "Gastrointestinal hemorrhage", limit=3)
    assert top[0].concept_id == 192671 and top[0].match == "exact" and top[0].record_count == 479
    # A synonym found it too: "GI bleeding" is a synonym of 192671 only.
    syn = search_concepts(cdm, "GI bleeding")
    assert [h.concept_id for h in syn] == [192671] and syn[0].match == "exact"
    assert search_concepts(cdm, "'; DROP TABLE concept; --") == []
    assert cdm.row_count("concept") == len(oracle.concept)


def test_search_limit_and_bad_input(eunomia):
    cdm, _ = eunomia
    assert len(search_concepts(cdm, "a", limit=5)) == 5
    with pytest.raises(VocabularyError, match="search text"):
        search_concepts(cdm, "   ")
    with pytest.raises(VocabularyError, match="limit"):
        search_concepts(cdm, "a", limit=0)


@pytest.mark.parametrize("cid", [192671, 35208414, 1118084, 40162359, 9201])
def test_show_matches_the_pandas_oracle(eunomia, cid):
    cdm, o = eunomia
    d = concept_details(cdm, cid, max_descendants=10_000)
    row = o.concept.set_index("concept_id").loc[cid]
    assert d.concept["concept_name"] == row["concept_name"] and d.concept["vocabulary_id"] == row["vocabulary_id"]
    syn = set(o.synonym.loc[o.synonym["concept_id"] == cid, "concept_synonym_name"]) - {row["concept_name"]}
    assert d.synonyms == sorted(syn)
    r = o.rel[(o.rel["relationship_id"] == "Maps to") & o.rel["invalid_reason"].isna()]
    known = set(o.concept["concept_id"])
    maps_to = {int(x) for x in r.loc[r["concept_id_1"] == cid, "concept_id_2"] if x != cid and x in known}
    mapped_from = {int(x) for x in r.loc[r["concept_id_2"] == cid, "concept_id_1"] if x != cid and x in known}
    assert {m["concept_id"] for m in d.maps_to} == maps_to
    assert {m["concept_id"] for m in d.mapped_from} == mapped_from
    a = o.ancestor
    up = a[(a["descendant_concept_id"] == cid) & (a["ancestor_concept_id"] != cid)]
    down = a[(a["ancestor_concept_id"] == cid) & (a["descendant_concept_id"] != cid)]
    assert {(x["concept_id"], x["min_levels"], x["max_levels"]) for x in d.ancestors} == set(zip(
        up["ancestor_concept_id"].astype(int), up["min_levels_of_separation"].astype(int),
        up["max_levels_of_separation"].astype(int), strict=True))
    assert d.descendants_total == len(down)
    assert {x["concept_id"] for x in d.descendants} == set(down["descendant_concept_id"].astype(int))
    want = []
    for t, (df, col, src) in o.tables.items():
        n_c = int((df[col] == cid).sum())
        n_s = int((df[src] == cid).sum()) if src and src in df.columns else 0
        if n_c or n_s:
            want.append({"table": t, "as_concept": n_c, "as_source": n_s})
    assert d.record_counts == want


def test_show_an_unknown_concept_is_one_clear_error(eunomia):
    cdm, _ = eunomia
    with pytest.raises(VocabularyError, match="concept id: 999999999 is not in"):
        concept_details(cdm, 999_999_999)


@pytest.mark.parametrize("cid", [192671, 1118084, 9201, 4329847, 21500574])
@pytest.mark.parametrize("descendants", [False, True])
def test_person_counts_match_the_oracle(eunomia, cid, descendants):
    cdm, o = eunomia
    assert concept_persons(cdm, cid, descendants=descendants) == o.persons(cid, descendants)


def test_person_counts_with_descendants_count_more(eunomia):
    cdm, o = eunomia
    # 21500574 is an ancestor (a drug class) of celecoxib in Eunomia's CONCEPT_ANCESTOR.
    assert concept_persons(cdm, 21500574, descendants=False) == 0
    assert concept_persons(cdm, 21500574, descendants=True) == o.persons(21500574, True) > 0


# ---- on the synthetic population (the bundled vocabulary) -----------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Iterator[Cdm]:
    from federation_support import make_site

    db = make_site(tmp_path_factory.mktemp("synth") / "site.duckdb", persons=3000, seed=1)
    with Cdm.open(db, read_only=True) as cdm:
        yield cdm


def test_search_on_the_bundled_vocabulary_finds_hierarchy(synthetic):
    cdm = synthetic
    hits = search_concepts(cdm, "diabetes", domain="Condition", standard=True)
    ids = [h.concept_id for h in hits]
    assert 201826 in ids and 201820 in ids  # type 2 diabetes, diabetes mellitus
    t2d = next(h for h in hits if h.concept_id == 201826)
    assert t2d.record_count > 0
    d = concept_details(cdm, 201820)
    assert 201826 in {x["concept_id"] for x in d.descendants}
    assert all(x["min_levels"] >= 1 for x in d.descendants)
    assert concept_persons(cdm, 201820, descendants=True) >= concept_persons(cdm, 201826, descendants=False) > 0


# ---- PostgreSQL ------------------------------------------------------------------------------------
@pytest.mark.postgres
def test_search_and_show_agree_on_postgres(eunomia, pg_cdm_factory: Callable[..., Cdm], eunomia_dir: Path):
    duck, o = eunomia
    pg = pg_cdm_factory()
    load_folder(pg, eunomia_dir)
    for text, filters in QUERIES:
        got = [(h.concept_id, h.match, h.record_count) for h in search_concepts(pg, text, limit=1000, **filters)]
        assert got == o.search(text, **filters), text
    for cid in (192671, 1118084):
        assert concept_details(pg, cid) == concept_details(duck, cid)
        assert concept_persons(pg, cid, descendants=True) == o.persons(cid, True)
    # the hub's search index (names, synonyms and codes lowered once) is built on PostgreSQL too
    index = prepare_search_index(pg)
    assert index is not None
    for text, filters in QUERIES:
        plain = search_concepts(pg, text, limit=1000, counts=False, **filters)
        assert search_concepts(pg, text, limit=1000, counts=False, index=index, **filters) == plain, text


# ---- the command ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eunomia_db(tmp_path_factory, eunomia_dir: Path) -> Path:
    db = tmp_path_factory.mktemp("eu") / "eunomia.duckdb"
    with Cdm.open(db) as cdm:
        load_folder(cdm, eunomia_dir)
    return db


def test_cli_search_and_show(eunomia_db: Path):
    import json

    from mercia.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["concept", "search", "hemorrhage", "--cdm", str(eunomia_db), "--format", "json"])
    assert r.exit_code == 0, r.output
    assert [h["concept_id"] for h in json.loads(r.stdout)] == [192671, 35208414]
    r = runner.invoke(app, ["concept", "search", "hemorrhage", "--cdm", str(eunomia_db), "--standard"])
    assert r.exit_code == 0 and "192671" in r.stdout and "35208414" not in r.stdout
    r = runner.invoke(app, ["concept", "show", "192671", "--cdm", str(eunomia_db)])
    assert r.exit_code == 0, r.output
    assert "35208414" in r.stdout and "condition_occurrence" in r.stdout and "Mapped from" in r.stdout
    assert "exact local counts" in r.stdout
    r = runner.invoke(app, ["concept", "show", "192671", "--cdm", str(eunomia_db), "--format", "json"])
    shown = json.loads(r.stdout)
    assert "GI bleeding" in shown["synonyms"] and shown["mapped_from"][0]["concept_id"] == 35208414
    assert shown["record_counts"] == [{"table": "condition_occurrence", "as_concept": 479, "as_source": 0}]
    r = runner.invoke(app, ["concept", "show", "12", "--cdm", str(eunomia_db)])
    assert r.exit_code == 1 and "concept id: 12 is not in" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["concept", "search", "x", "--cdm", str(eunomia_db), "--format", "xml"])
    assert r.exit_code == 1 and "--format" in r.output
