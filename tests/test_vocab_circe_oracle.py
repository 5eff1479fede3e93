"""Oracle: concept sets resolved by Mercia against the SQL OHDSI's Circe (ohdsi-circepy) generates for
the same expression, on the same DuckDB vocabulary. Needs the oracle venv (tools/circe_oracle)."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from mercia.cdm import Cdm
from mercia.vocab import load_bundled_vocabulary
from mercia.vocab.concept_sets import ConceptSet, ConceptSetItem, resolve_concept_set
from oracle_support import circe_available, circe_python
from shared_data import COHORTS
from test_vocab_concept_sets import ANCESTORS, CASES, CONCEPTS, MAPS, load_vocab

pytestmark = [
    pytest.mark.oracle,
    pytest.mark.slow,
    pytest.mark.skipif(
        not circe_available(), reason="Circe oracle venv not set up (tools/circe_oracle/setup.sh)"
    ),
]

# Runs in the oracle venv: Circe builds each expression's SQL, SqlRender renders and translates it.
CIRCE_SCRIPT = r"""
import json, sys
import duckdb
from circe import sqlrender
from circe.vocabulary.concept import ConceptSetExpression
from circe.vocabulary.concept_set_expression_query_builder import ConceptSetExpressionQueryBuilder
job = json.loads(sys.stdin.read())
con = duckdb.connect(job["db"], read_only=True)
out = []
for items in job["expressions"]:
    expr = ConceptSetExpression.model_validate({"items": items})
    sql = ConceptSetExpressionQueryBuilder().build_expression_query(expr)
    sql = sqlrender.render(sql, vocabulary_database_schema="main")
    sql = sqlrender.translate(sql, "duckdb")
    out.append(sorted(int(r[0]) for r in con.execute(sql).fetchall()))
print(json.dumps(out))
"""


def circe_resolve(db: Path, expressions: list[list[ConceptSetItem]]) -> list[list[int]]:
    payload = {
        "db": str(db),
        "expressions": [
            [
                {
                    "concept": {"CONCEPT_ID": it.concept_id},
                    "isExcluded": it.is_excluded,
                    "includeDescendants": it.include_descendants,
                    "includeMapped": it.include_mapped,
                }
                for it in items
            ]
            for items in expressions
        ],
    }
    done = subprocess.run(
        [str(circe_python()), "-c", CIRCE_SCRIPT],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def compare(db: Path, build, expressions: list[list[ConceptSetItem]]) -> None:
    cdm = Cdm.open(db)
    build(cdm)
    ours = [resolve_concept_set(cdm, ConceptSet(id=1, items=items)) for items in expressions]
    cdm.close()  # the oracle opens the file itself
    theirs = circe_resolve(db, expressions)
    for items, a, b in zip(expressions, ours, theirs, strict=True):
        assert a == b, f"Mercia {a} != Circe {b} for {items}"


def test_hand_made_cases_match_circe(tmp_path: Path) -> None:
    compare(
        tmp_path / "small.duckdb",
        lambda cdm: load_vocab(cdm, CONCEPTS, ANCESTORS, MAPS),
        [items for _, items, _ in CASES if items],
    )


def _random_vocab(rng: random.Random):
    n = rng.randint(2, 12)
    ids = list(range(1, n + 1))
    concepts = {i: rng.choice([None, None, None, "D", "U"]) for i in ids}
    parents = {i: rng.sample(ids[: i - 1], k=min(i - 1, rng.randint(0, 2))) for i in ids}

    def ups(i: int) -> set[int]:
        out = {i}
        for p in parents[i]:
            out |= ups(p)
        return out

    ancestors = {(a, d) for d in ids for a in ups(d)}
    maps = {(s, rng.choice(ids), rng.choice([None, None, "D"])) for s in range(100, 100 + rng.randint(0, 6))}
    concepts.update({s: None for s, _, _ in maps})
    return concepts, ancestors, maps


def _random_items(rng: random.Random) -> list[ConceptSetItem]:
    return [
        ConceptSetItem(
            concept_id=rng.randint(1, 14),
            is_excluded=rng.random() < 0.3,
            include_descendants=rng.random() < 0.5,
            include_mapped=rng.random() < 0.4,
        )
        for _ in range(rng.randint(1, 5))
    ]


@pytest.mark.parametrize("seed", range(6))
def test_random_expressions_match_circe(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    concepts, ancestors, maps = _random_vocab(rng)
    compare(
        tmp_path / "random.duckdb",
        lambda cdm: load_vocab(cdm, concepts, ancestors, maps),
        [_random_items(rng) for _ in range(25)],
    )


def test_cohort_file_concept_sets_on_the_bundled_vocabulary_match_circe(tmp_path: Path) -> None:
    expressions = []
    for path in sorted(COHORTS.rglob("*.json")):
        for cs in json.loads(path.read_text()).get("ConceptSets", []):
            expressions.append(ConceptSet.from_atlas(cs).items)
    assert expressions
    compare(tmp_path / "bundled.duckdb", load_bundled_vocabulary, expressions)
