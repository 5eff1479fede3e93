"""What a model rests on, level by level, and the one answer given when a model is not released.

A regression coefficient of a 0/1 term is a contrast between the persons with and without it. When
one of those groups is a handful of persons, or holds a handful of events (or non-events), the
coefficient, its standard error, a proportional-hazards test of it, even whether the fit converges,
describe those persons: with a one-person target arm, a Cox coefficient exists when that person had
the event and diverges when not. So a model is released whole or not at all:

    min_level_count(X, event) <= policy.suppress_up_to   ->   no estimate of that model leaves

where `min_level_count` is the smallest of: events and non-events overall, and, for every 0/1 term,
the persons, events and non-events in each of its two levels (continuous terms such as age have no
levels; they are covered by the overall counts).

Every refusal, and every fit that does not converge, is answered with the same `MODEL_REFUSED`
message and HTTP status, so the answer does not tell which rule (or which person) caused it.
"""

from __future__ import annotations

import numpy as np

from mercia.errors import DisclosureError

__all__ = [
    "MODEL_REFUSED",
    "MODEL_REFUSED_STATUS",
    "ModelRefused",
    "is_supported",
    "min_level_count",
    "support_count",
]

MODEL_REFUSED = (
    "model_refused: no estimate of this model is released. A term or the outcome has too few persons, "
    "events or non-events in one of its levels at a site, or the fit does not converge; the answer is "
    "the same whatever the reason. Merge or drop sparse terms, or widen the cohorts."
)
MODEL_REFUSED_STATUS = 422


class ModelRefused(DisclosureError):
    """A model that is not released (too little support, or no convergence): always the same message."""

    status_code = MODEL_REFUSED_STATUS
    code = "model_refused"

    def __init__(self) -> None:
        super().__init__(MODEL_REFUSED)


def _binary(col: np.ndarray) -> bool:
    return bool(np.isin(col, (0.0, 1.0)).all())


def min_level_count(X: np.ndarray, event: np.ndarray) -> int:
    """The fewest persons, events or non-events in any level of any 0/1 column of `X`, or overall.

    `X` holds the model's terms without an intercept (an intercept is one constant level, not a
    contrast); a constant 0/1 column has an empty level and gives 0. `event` is the outcome per row
    (0/1, or a count: a row with a count above 0 is a row with events).
    """
    X = np.asarray(X, dtype=float)
    has = np.asarray(event, dtype=float) > 0
    n = len(has)
    if n == 0:
        return 0
    counts = [int(has.sum()), int(n - has.sum())]
    for j in range(X.shape[1] if X.ndim == 2 else 0):
        col = X[:, j]
        if not _binary(col):
            continue
        for level in (0.0, 1.0):
            inside = col == level
            ev = int((inside & has).sum())
            counts += [int(inside.sum()), ev, int(inside.sum()) - ev]
    return min(counts)


def support_count(X: np.ndarray, event: np.ndarray, *, converged: bool = True) -> int:
    """`min_level_count`, made a count column that `release()` withholds whenever it should.

    A result table carries it on every row of a model (count column `min_level_count`), so release()
    withholds every term together. An empty level (0) or a fit that did not converge is given as 1:
    a zero is released under policies that do not treat zeros as disclosive, and 1 is small under
    every policy with a threshold.
    """
    m = min_level_count(X, event)
    return 1 if m == 0 or not converged else m


def is_supported(count: int, suppress_up_to: int) -> bool:
    """True when a model whose smallest level holds `count` may be released (0 never may)."""
    return count > suppress_up_to
