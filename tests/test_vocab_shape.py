"""bench/vocab_shape.py: a vocabulary of the full OMOP vocabulary's shape, generated from a seed.

Checked at a small scale: the generated tables have the shape the module promises (counts per domain,
standard share, a 'Maps to' for every non-standard concept, a CONCEPT_ANCESTOR that is the transitive
closure of the 'Is a' tree, itself included), the base vocabulary's concepts are kept unchanged, and the
same seed gives the same file's content while another seed gives another.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
CONCEPTS = 3000


@pytest.fixture(scope="module")
def vs() -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        import vocab_shape
    finally:
        sys.path.remove(str(BENCH))
    return vocab_shape


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real vocabulary: the bundled subset the synthetic sites use, in a DuckDB file."""
    from mercia.demo import build_federation

    return build_federation(tmp_path_factory.mktemp("fed"), persons=300, seed=3)[0]


@pytest.fixture(scope="module")
def built(vs: Any, base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("v") / "v.duckdb"
    return out, vs.build(out, CONCEPTS, seed=11, base=base)


def rows(path: Path, sql: str) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_the_shape(vs: Any, base: Path, built: tuple[Path, dict[str, Any]]) -> None:
    path, s = built
    real = rows(base, "SELECT count(*) FROM concept")[0][0]
    assert s["concepts"] == CONCEPTS + real
    gen = f"concept_id >= {vs.GENERATED_BASE}"
    # every group of PLAN is there, in its share (rounded), and drugs are the largest domain
    per = dict(((d, v), n) for d, v, n in rows(path, f"SELECT domain_id, vocabulary_id, count(*) FROM concept "
                                                       f"WHERE {gen} GROUP BY ALL"))
    total = sum(p[3] for p in vs.PLAN)
    for domain, vocab, _, share, _, _ in vs.PLAN:
        assert abs(per[(domain, vocab)] - CONCEPTS * share / total) <= 2, (domain, vocab)
    assert max(s["domains"], key=s["domains"].get) == "Drug"
    standard = rows(path, f"SELECT avg(CASE WHEN standard_concept = 'S' THEN 1 ELSE 0 END) FROM concept WHERE {gen}")
    assert 0.4 < standard[0][0] < 0.6
    # every non-standard concept maps to exactly one standard concept of its domain (if it has any)
    mapped = ", ".join(sorted({f"'{p[0]}'" for p in vs.PLAN if p[4] > 0}))
    unmapped = rows(path, f"""
        SELECT count(*) FROM concept c WHERE {gen} AND c.domain_id IN ({mapped}) AND (c.standard_concept IS NULL
            OR c.standard_concept = 'C') AND (
            SELECT count(*) FROM concept_relationship r JOIN concept t ON t.concept_id = r.concept_id_2
            WHERE r.concept_id_1 = c.concept_id AND r.relationship_id = 'Maps to' AND t.standard_concept = 'S'
              AND t.domain_id = c.domain_id) <> 1""")
    assert unmapped == [(0,)]
    assert s["relationships"]["Maps to"] == s["relationships"]["Mapped from"]
    assert s["relationships"]["Is a"] == s["relationships"]["Subsumes"]
    synonyms = rows(path, f"SELECT count(*) FROM concept_synonym WHERE {gen}")[0][0]
    assert 0.3 < synonyms / CONCEPTS < 0.5
    assert s["max_levels"] >= 8  # a deep tree even at this scale


def test_the_ancestry_is_the_closure_of_the_is_a_tree(vs: Any, built: tuple[Path, dict[str, Any]]) -> None:
    """An independent reading: walk 'Is a' upwards in Python from every generated standard concept."""
    path, _ = built
    parent = dict(rows(path, f"SELECT concept_id_1, concept_id_2 FROM concept_relationship WHERE relationship_id = "
                             f"'Is a' AND concept_id_1 >= {vs.GENERATED_BASE}"))
    standard = [r[0] for r in rows(path, f"SELECT concept_id FROM concept WHERE concept_id >= {vs.GENERATED_BASE} "
                                         f"AND standard_concept = 'S'")]
    expected = set()
    for c in standard:
        a, k = c, 0
        while True:
            expected.add((a, c, k, k))
            if a not in parent:
                break
            a, k = parent[a], k + 1
    got = set(rows(path, f"SELECT * FROM concept_ancestor WHERE descendant_concept_id >= {vs.GENERATED_BASE}"))
    assert got == expected


def test_the_base_vocabulary_is_kept(built: tuple[Path, dict[str, Any]], base: Path, vs: Any) -> None:
    path, _ = built
    for table in ("concept", "concept_ancestor", "concept_relationship", "concept_synonym"):
        col = "concept_id_1" if table == "concept_relationship" else (
            "descendant_concept_id" if table == "concept_ancestor" else "concept_id")
        assert sorted(rows(path, f"SELECT * FROM {table} WHERE {col} < {vs.GENERATED_BASE}"), key=repr) == \
            sorted(rows(base, f"SELECT * FROM {table}"), key=repr), table


def test_the_same_seed_gives_the_same_vocabulary(vs: Any, built: tuple[Path, dict[str, Any]],
                                                 tmp_path: Path, base: Path) -> None:
    path, s = built
    again = vs.build(tmp_path / "again.duckdb", CONCEPTS, seed=11, base=base)
    other = vs.build(tmp_path / "other.duckdb", CONCEPTS, seed=12, base=base)
    assert again == s
    for table in ("concept", "concept_ancestor", "concept_relationship", "concept_synonym"):
        q = f"SELECT * FROM {table} ORDER BY ALL"
        assert rows(tmp_path / "again.duckdb", q) == rows(path, q), table
    names = "SELECT concept_name FROM concept ORDER BY concept_id"
    assert rows(tmp_path / "other.duckdb", names) != rows(path, names)
    assert other["concepts"] == s["concepts"]


def test_the_landmarks(vs: Any, built: tuple[Path, dict[str, Any]]) -> None:
    path, _ = built
    lm = vs.landmarks(path, seed=11, set_size=100)
    assert lm["common_names"] > 10 * max(1, lm["rare_names"])
    assert lm["root_descendants"] > lm["set_descendants"] > 0
    assert abs(lm["set_descendants"] - 100) < 60
    assert rows(path, f"SELECT count(*) FROM concept WHERE concept_code = '{lm['code']}'")[0][0] >= 1


def test_too_few_concepts_is_one_clear_error(vs: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="concepts: at least"):
        vs.build(tmp_path / "x.duckdb", 3)
