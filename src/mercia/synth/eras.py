"""DRUG_ERA and CONDITION_ERA computed in numpy from the rows a chunk generates.

The generator writes eras itself because deriving them in SQL afterwards costs more than generating
the whole population. The rules are OHDSI's, exactly as ``mercia.cdm.eras.derive_eras`` implements
them (tests compare the two tables row for row):

- an interval opens a new era when its start is after every earlier interval's end + pad (intervals
  of one person and concept, in order of start then end);
- condition intervals end on condition_end_date, else the day after they start; pad 30;
- drug intervals (per RxNorm ingredient) first merge into sub-exposures with pad 0, then eras with
  pad 30; gap_days = era length - days the sub-exposures cover; drug_exposure_count counts exposures;
- ids number eras in order of person, concept, era start.
"""

from __future__ import annotations

import numpy as np


def _islands(group: np.ndarray, start: np.ndarray, end: np.ndarray, pad: int) -> np.ndarray:
    """Island number per row; rows must be sorted by (group, start, end)."""
    n = len(group)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.ones(n, dtype=bool)
    first[1:] = group[1:] != group[:-1]
    # Running max of end within a group: offset each group above all earlier ones, then accumulate.
    gid = np.cumsum(first) - 1
    span = int(end.max() - end.min()) + pad + 2
    run = np.maximum.accumulate(gid * span + (end - end.min()))
    prev = np.empty(n, dtype=np.int64)
    prev[1:] = run[:-1] - gid[1:] * span + end.min()
    new = first.copy()
    new[1:] |= start[1:] > prev[1:] + pad
    return np.cumsum(new) - 1


# Sorting packs (person, concept rank, start, end) into one int64: far cheaper than a 4-key lexsort.
_DAY_BITS = 17  # days since 1880-01-01 fit in 17 bits until 2238
_DAY0 = -32872  # 1880-01-01 as days since 1970-01-01


def _sorted(person: np.ndarray, concept: np.ndarray, start: np.ndarray, end: np.ndarray):
    # Concepts are few: rank them through their distinct values (a sort of a handful, not of all rows).
    ids = np.unique(concept[:: max(len(concept) // 4096, 1)])
    ids = np.union1d(ids, concept[~np.isin(concept, ids)])
    rank = np.searchsorted(ids, concept)
    rbits = max(int(len(ids) - 1).bit_length(), 1)
    pbits = max(int(person.max(initial=0)).bit_length(), 1)
    if pbits + rbits + 2 * _DAY_BITS > 63:
        o = np.lexsort((end, start, concept, person))
        return person[o], concept[o], start[o], end[o]
    key = person.astype(np.int64)
    key = (key << rbits) | rank
    key = (key << _DAY_BITS) | (start - _DAY0)
    key = (key << _DAY_BITS) | (end - _DAY0)
    key.sort()
    mask = (1 << _DAY_BITS) - 1
    e = (key & mask) + _DAY0
    s = ((key >> _DAY_BITS) & mask) + _DAY0
    r = (key >> (2 * _DAY_BITS)) & ((1 << rbits) - 1)
    return key >> (2 * _DAY_BITS + rbits), ids[r], s, e


def _group_key(person: np.ndarray, concept: np.ndarray) -> np.ndarray:
    return person.astype(np.int64) * (1 << 31) + concept.astype(np.int64)


def condition_eras(person: np.ndarray, concept: np.ndarray, start: np.ndarray, window: int = 30) -> dict:
    """Condition eras from occurrences with no end date (so each ends the day after it starts)."""
    end = start + 1
    p, c, s, e = _sorted(person, concept, start, end)
    g = _islands(_group_key(p, c), s, e, window)
    cuts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if len(g) else np.zeros(0, dtype=np.int64)
    return {
        "person": p[cuts], "concept": c[cuts],
        "start": np.minimum.reduceat(s, cuts) if len(g) else s[:0],
        "end": np.maximum.reduceat(e, cuts) if len(g) else e[:0],
        "count": np.diff(np.r_[cuts, len(g)]),
    }


def drug_eras(person: np.ndarray, ingredient: np.ndarray, start: np.ndarray, end: np.ndarray,
              window: int = 30) -> dict:
    p, c, s, e = _sorted(person, ingredient, start, end)
    key = _group_key(p, c)
    if len(p) == 0:
        z = np.zeros(0, dtype=np.int64)
        return {"person": z, "concept": z, "start": z, "end": z, "count": z, "gap_days": z}
    # Sub-exposures: overlapping (or touching) exposures, pad 0.
    g = _islands(key, s, e, 0)
    cuts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sp, sc, sk = p[cuts], c[cuts], key[cuts]
    ss, se = np.minimum.reduceat(s, cuts), np.maximum.reduceat(e, cuts)
    scount = np.diff(np.r_[cuts, len(g)])
    # Sub-exposures are already in (group, start) order, and their ends rise with their starts.
    g2 = _islands(sk, ss, se, window)
    cuts2 = np.flatnonzero(np.r_[True, g2[1:] != g2[:-1]])
    es, ee = np.minimum.reduceat(ss, cuts2), np.maximum.reduceat(se, cuts2)
    covered = np.add.reduceat(se - ss, cuts2)
    return {
        "person": sp[cuts2], "concept": sc[cuts2], "start": es, "end": ee,
        "count": np.add.reduceat(scount, cuts2), "gap_days": (ee - es) - covered,
    }
