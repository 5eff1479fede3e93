"""The one attrition arithmetic on inclusion-rule masks (mercia.cohorts.stats), against its definition:
bit i of a mask is rule i met; after rules 1..j in turn, what is left has all of bits 0..j-1 set."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mercia.cohorts.stats import attrition_stages, inclusion_stats, remaining_after_rules


def test_attrition_helpers_match_their_definition():
    rng = np.random.default_rng(1)
    k = 5
    counts = {(mode, int(m)): int(rng.integers(1, 50)) for mode in (0, 1)
              for m in rng.choice(2**k, size=20, replace=False)}
    for mode in (0, 1):
        masks = {m: n for (md, m), n in counts.items() if md == mode}
        # left after rules 1..j+1: every one of those bits set
        want = [sum(n for m, n in masks.items() if m & ((1 << (j + 1)) - 1) == (1 << (j + 1)) - 1)
                for j in range(k)]
        assert remaining_after_rules(counts, mode, k) == want
        stage = attrition_stages(counts, mode, k)
        assert sum(stage) == sum(masks.values()) and stage[k] == masks.get(2**k - 1, 0)
    stats, summary = inclusion_stats(counts, [f"r{i}" for i in range(k)])
    assert [s.mode_id for s in summary] == [0, 1]
    r2 = next(s for s in stats if s.mode_id == 1 and s.rule_sequence == 2)
    ones = {m: n for (md, m), n in counts.items() if md == 1}
    assert r2.person_count == sum(n for m, n in ones.items() if m & 4)
    assert r2.gain_count == ones.get(2**k - 1 - 4, 0)


_BIT_TEST = re.compile(r"mask\w*\s*(>>|&|<<)|(<<|>>|&)\s*\(?1 <<")


def test_no_second_attrition_arithmetic_in_src():
    """Bit tests on inclusion-rule masks live in cohorts/stats.py only (generation, the CLI, the
    study runner and feasibility counts each had their own)."""
    src = Path(__file__).resolve().parents[1] / "src" / "mercia"
    stats_py = src / "cohorts" / "stats.py"
    assert _BIT_TEST.search(stats_py.read_text())  # the pattern sees the one implementation
    found = [f"{p.relative_to(src)}:{i}" for p in sorted(src.rglob("*.py")) if p != stats_py
             for i, line in enumerate(p.read_text().splitlines(), 1) if _BIT_TEST.search(line)]
    assert found == [], f"mask arithmetic outside mercia.cohorts.stats: {found}"
