"""The analysis spec suite (as ehrQL's tests/spec/): per operation, small input tables written inline, the
settings, the disclosure policy and the expected released output. tests/test_analysis_spec.py runs every
case on DuckDB, PostgreSQL and Spark; `python -m tests.spec.render` writes the same cases as
docs/reference/analysis-spec.md.

Each module of OPERATIONS has a docstring (the operation's introduction), TITLE and CASES.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .case import Case

OPERATIONS = [
    "characterization",
    "incidence",
    "prevalence",
    "kaplan_meier",
    "cox",
    "features",
    "cohort_method",
    "prediction_population",
    "feasibility",
]


def modules() -> list[ModuleType]:
    return [importlib.import_module(f"{__name__}.{name}") for name in OPERATIONS]


def all_cases() -> list[tuple[str, Case]]:
    """(id, case) for every case: id is `operation/case`."""
    out = []
    for name, mod in zip(OPERATIONS, modules(), strict=True):
        ids = [c.id for c in mod.CASES]
        if len(set(ids)) != len(ids) or not all(ids):
            raise ValueError(f"spec {name}: give every case a distinct id (got {ids})")
        out += [(f"{name}/{c.id}", c) for c in mod.CASES]
    return out
