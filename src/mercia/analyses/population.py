"""An analysis's population: the persons that entered it and the rules that shaped it, as a table.

Every analysis that follows persons (incidence, Kaplan-Meier, Cox, the cohort method) returns a
`{name}_attrition` table: one row per step, in order (the first the cohorts' persons, the last the
persons analysed), each step's persons a subset of the step before's. The step labels are fixed words
naming a rule of the analysis ("persons in both target and comparator removed"), never anything read
from the data; the counts go through `release()` as any attrition table does (sequential: small counts
and the differences that would give them back are suppressed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from mercia.disclosure import ResultTable


def population_table(name: str, steps: Sequence[str], counts: Mapping[str, Sequence[int]]) -> ResultTable:
    """`{name}` (counts, sequential): the column `step` ('1. persons in the cohort', ...) and one count
    column per entry of `counts` (e.g. persons, or n_target and n_comparator), a value per step."""
    data = pd.DataFrame({"step": [f"{i + 1}. {s}" for i, s in enumerate(steps)]})
    for col, values in counts.items():
        if len(values) != len(steps):
            raise ValueError(f"{name}: {col} has {len(values)} values for {len(steps)} steps")
        data[col] = pd.Series([int(v) for v in values], dtype="int64")
    return ResultTable(name=name, kind="counts", data=data, dimensions=["step"],
                       count_columns=list(counts), sequential=True)
