"""Limits on what a user may send: numbers, lengths, nesting and request size, each set once here.

A value past a limit is the sender's error (a 4xx naming the field), never a crash deeper down: a day
offset of 2**31 overflowed DuckDB's INT32 date arithmetic, groups nested 200 deep overflowed Python's
stack in the SQL generator, and a lone UTF-16 surrogate could not be written to the audit log. Two
layers use these numbers:

* ``json_problem`` checks any parsed JSON/YAML document for what no part of Mercia can take: nesting
  deeper than ``MAX_JSON_DEPTH``, text that is not encodable as UTF-8 (lone surrogates, which JSON's
  ``\\ud800`` escapes produce), NaN or infinite numbers, integers outside 64 bits. Every HTTP request
  body (``http_common.RequestBody``) and every cohort definition read from data passes it first.
* The cohort model (``mercia.cohorts.model``) types its fields with the bounds below (days, values,
  ids, counts, lengths, list sizes, group depth), and the cohort language checks the same bounds where
  it reads the words, so its errors name the user's own keys.
"""

from __future__ import annotations

import math
from typing import Any

# Days in windows, offsets, gaps and observation requirements: 99,999 (273 years) covers every real
# window and ATLAS's habit of writing 99999 for "any time", and keeps date arithmetic (a date plus a
# few such offsets) inside INT32 and inside every engine's date range (Spark's starts at year 1).
MAX_DAYS = 99_999
# Bounds of a numeric range (ages, lab values, quantities, lengths): finite and at most 1e9 in size,
# so the compiler's 4-decimal literals fit a DECIMAL(38) on DuckDB and Spark.
MAX_RANGE_VALUE = 1e9
# Occurrence and group counts, concept set ids and the codeset ids that refer to them: Circe's Java
# int, and SQL INTEGER on every engine.
MAX_INT32 = 2**31 - 1
# Concept ids: Circe's Java long, SQL BIGINT.
MIN_INT64, MAX_INT64 = -(2**63), 2**63 - 1
# Text: names (cohort, concept set, inclusion rule) and any other text (descriptions, filters).
MAX_NAME = 1_000
MAX_TEXT = 20_000
# Lists: concepts in one concept set, and any other list (criteria, groups, concept sets, rules).
MAX_CONCEPT_SET_ITEMS = 20_000
MAX_LIST = 1_000
# Groups inside groups (inclusion rules, correlated criteria), counted along any path from the top.
MAX_GROUP_DEPTH = 20
# Containers inside containers in one JSON document. A definition at the group limit (each group level
# is up to five JSON levels when nested through a criterion's correlated criteria) inside a study
# package inside a request stays well under it.
MAX_JSON_DEPTH = 128
# Iterations of a model fit and boosting rounds in study settings: enough for any fit that converges
# (the defaults are 100 to 1,000), not so many that one study holds a site's CPU for days.
MAX_ITERATIONS = 100_000
# One HTTP request body, in bytes (a study package with every cohort inline is a few hundred KB).
MAX_BODY_BYTES = 16 * 2**20


def short_path(path: str, keep: int = 160) -> str:
    """A JSON path cut in the middle when long (a path 128 levels deep is kilobytes of text)."""
    return path if len(path) <= keep else f"{path[: keep // 2]}...{path[-keep // 2:]}"


def _key(path: str, k: Any) -> str:
    return f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}"


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_problem(value: Any, path: str = "$") -> str | None:
    """The first thing (in document order) in a parsed JSON document that no part of Mercia can take, as
    "<JSON path>: <what is wrong>", or None. Walks iteratively (a deep document cannot overflow it)."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        v, p, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return f"{short_path(p)}: nested more than {MAX_JSON_DEPTH} levels deep"
            items = list(v.items() if isinstance(v, dict) else enumerate(v))
            for k, _ in items:
                if isinstance(k, str) and not _encodable(k):
                    return f"{p}: a key is not valid Unicode text (it holds a lone UTF-16 surrogate)"
            # Reversed onto the stack: the first problem reported is the first in the document.
            stack.extend((x, _key(p, k), depth + 1) for k, x in reversed(items))
        elif isinstance(v, str):
            if not _encodable(v):
                return f"{p}: not valid Unicode text (it holds a lone UTF-16 surrogate)"
        elif isinstance(v, bool):
            continue
        elif isinstance(v, int):
            if not MIN_INT64 <= v <= MAX_INT64:
                return f"{p}: integer out of range (at most 64 bits: {MIN_INT64} to {MAX_INT64})"
        elif isinstance(v, float) and not math.isfinite(v):
            return f"{p}: {v} is not a number Mercia takes (NaN and infinity are not allowed)"
    return None
