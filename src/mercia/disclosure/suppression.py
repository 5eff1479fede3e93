"""Primary and secondary cell suppression on additive tables.

A table is a set of cells (interior cells, subtotals, totals) and additive relations `total = sum(parts)`
between them. This covers 1-way tables with a total, n-way tables with margins, hierarchical totals
(region > practice), and attrition chains (each step = next step + the patients it excluded, where the
excluded counts are *hidden* cells: never published, but an attacker can compute them by subtraction).

Why not acro: acro flags small cells of one crosstab but does no secondary suppression, so a released
margin minus the released cells gives back a suppressed cell. Its settings are also process-wide module
globals and it configures logging on import, which a node serving several studies cannot share.

Algorithm (deterministic):
1. Primary: published cells in 1..threshold (and zeros if disclosive) are suppressed. Hidden cells
   in that range are *sensitive*: they must not become exactly computable either.
2. Quick pass: while some relation has exactly one unknown cell (suppressed or hidden), that cell
   follows by subtraction, so suppress the best complement in that relation (smallest positive
   interior value first; totals and zeros last: a zero can only move up, so it protects one side).
3. Audit: for every suppressed published cell and every sensitive hidden cell, solve two linear
   programmes (min and max of the cell given the released cells, the relations and x >= 0). An
   interval narrower than 1 pins the integer down. The quick pass is not enough on its own: in a
   2-way table two protected blocks joined by one suppressed cell have two suppressions in every row
   and column, yet the joining cell follows from the margins. For the first exposed cell, suppress the
   best complement among released cells sharing a relation with it or with the unknown cells linked to
   it, then re-run 2-3. Each round suppresses one more cell, so this ends (with everything
   suppressed every interval is [0, inf)).
The result is correct (every suppressed cell has a feasible interval of width >= 1, the check the
tests repeat independently) but not minimal: optimal complementary suppression is NP-hard in general.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog

Relation = tuple[int, tuple[int, ...]]  # (total cell, part cells)


@dataclass
class CellStructure:
    """Cells with their true values and the additive relations between them."""

    values: list[int]
    is_total: list[bool]
    published: list[bool]
    relations: list[Relation] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.values)
        if not (len(self.is_total) == len(self.published) == n):
            raise ValueError("values, is_total and published must have one entry per cell")
        self._by_cell: list[list[int]] = [[] for _ in range(n)]
        for r, (tot, parts) in enumerate(self.relations):
            for c in (tot, *parts):
                self._by_cell[c].append(r)

    def relation_cells(self, r: int) -> tuple[int, ...]:
        tot, parts = self.relations[r]
        return (tot, *parts)

    def relations_of(self, cell: int) -> list[int]:
        return self._by_cell[cell]


def is_small(value: int, threshold: int, zeros_disclosive: bool) -> bool:
    return (1 <= value <= threshold) or (zeros_disclosive and value == 0)


def feasible_interval(structure: CellStructure, unknown: set[int], cell: int) -> tuple[float, float]:
    """[min, max] of `cell` over all non-negative values of the unknown cells that satisfy every
    relation, the other cells being fixed at their true (released) values. max may be inf."""
    if cell not in unknown:
        v = float(structure.values[cell])
        return v, v
    return _optimum(structure, unknown, cell, 1.0), _optimum(structure, unknown, cell, -1.0)


def is_protected(structure: CellStructure, unknown: set[int], cell: int) -> bool:
    """Whether the feasible interval of `cell` is at least 1 wide. The true value is feasible, so
    one LP suffices when the minimum is already 1 below it (halves the work on most cells)."""
    if cell not in unknown:
        return False
    alone = _alone_in_one_relation(structure, unknown, cell)
    if alone is not None:
        return alone
    lo = _optimum(structure, unknown, cell, 1.0)
    if structure.values[cell] - lo >= 1 - 1e-9:
        return True
    return _optimum(structure, unknown, cell, -1.0) - lo >= 1 - 1e-9


def _alone_in_one_relation(structure: CellStructure, unknown: set[int], cell: int) -> bool | None:
    """The answer of `is_protected` without linear programming when `cell` is in no relation, or it
    and every unknown cell of its relation belong to that one relation only (a one-way table and its total; a Table 1 level within
    its variable): then the unknowns are tied by nothing but `total = sum(parts)` and x >= 0. None when
    the cell is linked further (n-way margins, hierarchies), where the LP decides.

    - `cell` is in no relation (a table without margins): [0, inf).
    - `cell` is a part and the total is unknown: the total absorbs any value, so [0, inf).
    - `cell` is the total: fixed by its parts unless one of them is unknown too.
    - `cell` is a part and the total is known: the unknown parts share S = total - known parts; with
      two or more of them each lies anywhere in [0, S], with one it is S exactly.
    """
    rels = structure.relations_of(cell)
    if not rels:
        return True  # in no sum at all (a table without margins): nothing bounds it but x >= 0
    if len(rels) != 1:
        return None
    tot, parts = structure.relations[rels[0]]
    if any(c in unknown and len(structure.relations_of(c)) != 1 for c in (tot, *parts)):
        return None
    unknown_parts = [p for p in parts if p in unknown]
    if cell == tot:
        return bool(unknown_parts)
    if tot in unknown:
        return True
    share = sum(structure.values[p] for p in unknown_parts)
    return len(unknown_parts) >= 2 and share >= 1


def _optimum(structure: CellStructure, unknown: set[int], cell: int, sign: float) -> float:
    """min (sign=1) or max (sign=-1) of `cell` subject to the relations, known cells fixed, x >= 0."""
    idx = sorted(unknown)
    col = {c: i for i, c in enumerate(idx)}
    rows: list[np.ndarray] = []
    rhs: list[float] = []
    for tot, parts in structure.relations:
        row = np.zeros(len(idx))
        b = 0.0
        touches = False
        for c, a in [(tot, 1.0), *((p, -1.0) for p in parts)]:
            if c in col:
                row[col[c]] += a
                touches = True
            else:
                b -= a * structure.values[c]
        if touches:
            rows.append(row)
            rhs.append(b)
    c_vec = np.zeros(len(idx))
    c_vec[col[cell]] = sign
    res = linprog(
        c_vec,
        A_eq=np.array(rows) if rows else None,
        b_eq=np.array(rhs) if rows else None,
        bounds=(0, None),
        method="highs",
    )
    if res.status == 3:  # unbounded: only possible when maximising
        return float("inf")
    if res.status != 0:  # cannot happen with consistent true values; answer "pinned" to stay safe
        return float(structure.values[cell])
    return float(sign * res.fun)


@dataclass
class SuppressionResult:
    primary: set[int]
    secondary: set[int]

    @property
    def suppressed(self) -> set[int]:
        return self.primary | self.secondary


def _complement_key(structure: CellStructure, c: int) -> tuple[bool, bool, int, int]:
    v = structure.values[c]
    return (structure.is_total[c], v == 0, v, c)


def suppress(
    structure: CellStructure, *, threshold: int, zeros_disclosive: bool, secondary: bool,
    forced: Collection[int] = (),
) -> SuppressionResult:
    """Primary suppression (small cells, and `forced` ones: cells hidden for a reason outside this column,
    such as their row's persons being suppressed), then, if asked, secondary suppression until every
    suppressed cell is protected."""
    n = len(structure.values)
    primary = {
        c
        for c in range(n)
        if structure.published[c] and is_small(structure.values[c], threshold, zeros_disclosive)
    } | {c for c in forced if structure.published[c]}
    result = SuppressionResult(primary=primary, secondary=set())
    if not secondary:
        return result
    hidden = {c for c in range(n) if not structure.published[c]}
    sensitive_hidden = {c for c in hidden if is_small(structure.values[c], threshold, zeros_disclosive)}
    if not primary and not sensitive_hidden:
        return result

    def unknown() -> set[int]:
        return result.suppressed | hidden

    def add(c: int) -> None:
        result.secondary.add(c)

    # Suppressing one more cell only frees a value that was fixed, so every earlier feasible table
    # stays feasible and intervals can only widen: a cell found protected stays protected.
    protected: set[int] = set()
    while True:
        _quick_pass(structure, unknown, add)
        unk = unknown()
        targets = sorted((result.suppressed | sensitive_hidden) - protected)
        exposed = None
        for t in targets:
            if not is_protected(structure, unk, t):
                exposed = t
                break
            protected.add(t)
        if exposed is None:
            return result
        cand = _candidates_near(structure, unk, exposed)
        if not cand:  # everything linked is already suppressed; widen to any released cell
            cand = [c for c in range(n) if structure.published[c] and c not in unk]
        if not cand:
            return result  # nothing left to suppress; cannot happen (all unknown => unbounded)
        add(min(cand, key=lambda c: _complement_key(structure, c)))


def _quick_pass(
    structure: CellStructure, unknown: Callable[[], set[int]], add: Callable[[int], None]
) -> None:
    changed = True
    while changed:
        changed = False
        unk = unknown()
        for r in range(len(structure.relations)):
            cells = structure.relation_cells(r)
            unknown_here = [c for c in cells if c in unk]
            if len(unknown_here) != 1:
                continue
            released = [c for c in cells if c not in unk and structure.published[c]]
            if not released:
                continue
            add(min(released, key=lambda c: _complement_key(structure, c)))
            changed = True
            unk = unknown()


def _candidates_near(structure: CellStructure, unk: set[int], cell: int) -> list[int]:
    """Released cells sharing a relation with `cell` or with the unknown cells connected to it."""
    seen = {cell}
    frontier = [cell]
    while frontier:
        c = frontier.pop()
        for r in structure.relations_of(c):
            for o in structure.relation_cells(r):
                if o in unk and o not in seen:
                    seen.add(o)
                    frontier.append(o)
    cand: set[int] = set()
    for c in seen:
        for r in structure.relations_of(c):
            cand.update(o for o in structure.relation_cells(r) if o not in unk and structure.published[o])
    # Prefer cells in relations with the exposed cell itself (they break its subtraction directly).
    direct = {o for r in structure.relations_of(cell) for o in structure.relation_cells(r)} & cand
    return sorted(direct) if direct else sorted(cand)
