"""One spec case: input tables as text, the settings, the policy, and the expected released output.

`Case.check(got)` compares released tables with the expected ones: only the columns the expected
table lists, every row (in any order). A number matches when it rounds to the digits written (`1.386`
matches 1.3862...; an integer matches exactly); an empty cell is a suppressed or missing value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from mercia.cdm import Cdm
from mercia.disclosure import DisclosurePolicy

from .tables import Table, table

# The policy most cases release under: nothing suppressed or rounded, so the numbers are exact. Person-time
# is still released in whole years (a policy's exposure rounding is at least 1 year).
EXACT = DisclosurePolicy(name="exact (test)", threshold=0, rounding_base=1, magnitude_min_interval=0)


@dataclass(frozen=True)
class Case:
    """`run(cdm)` runs the operation on a CDM holding `tables` and returns its released tables."""

    title: str
    tables: dict[str, str]
    call: str  # the call, as a reader would write it
    run: Callable[[Cdm], dict[str, pd.DataFrame]]
    expected: dict[str, str]
    settings: BaseModel | None = None
    policy: DisclosurePolicy | None = EXACT
    why: str = ""  # how the expected numbers were worked out
    site_only: tuple[str, ...] = ()  # expected tables that are row-level and never leave the site
    arguments: dict[str, Any] = field(default_factory=dict)  # other inputs shown in the docs, by label
    # Expected tables that show only some released rows: table -> {column: value} the rows shown have.
    only_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    id: str = field(default="")

    def input_tables(self) -> dict[str, Table]:
        return {name: table(text) for name, text in self.tables.items()}

    def expected_tables(self) -> dict[str, Table]:
        return {name: table(text) for name, text in self.expected.items()}

    def check(self, got: dict[str, pd.DataFrame]) -> None:
        problems = []
        for name, want in self.expected_tables().items():
            if name not in got:
                problems.append(f"table {name}: not in the output (got {sorted(got)})")
                continue
            frame = got[name]
            for col, value in self.only_rows.get(name, {}).items():
                frame = frame[frame[col] == value]
            problems += compare(name, want, frame)
        assert not problems, "\n".join(problems)


def _decimals(cell: str) -> int | None:
    """Digits after the point of a written number, None for a non-number."""
    try:
        float(cell)
    except ValueError:
        return None
    return len(cell.split(".")[1]) if "." in cell else 0


def _blank(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))


def _render(v: Any, decimals: int | None) -> str:
    """A released value written as the expected table would write it."""
    if _blank(v):
        return ""
    if hasattr(v, "isoformat"):
        return v.isoformat()[:10]
    if isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_):
        x = float(v)
        if decimals is None:
            return str(int(x)) if x.is_integer() else repr(x)
        text = f"{x:.{decimals}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"
    return str(v)


def compare(name: str, want: Table, got: pd.DataFrame) -> list[str]:
    missing = [c for c in want.columns if c not in got.columns]
    if missing:
        return [f"table {name}: no column(s) {missing} (has {list(got.columns)})"]
    decimals = []
    for j, _ in enumerate(want.columns):
        ds = [d for d in (_decimals(r[j]) for r in want.cells) if d is not None]
        decimals.append(max(ds) if ds else None)
    rows = [tuple(_render(v, d) for v, d in zip(r, decimals, strict=True))
            for r in got[list(want.columns)].itertuples(index=False)]
    expected = [tuple(r) for r in want.cells]
    if sorted(rows) == sorted(expected):
        return []
    header = " | ".join(want.columns)
    return [f"table {name}: released rows differ\n  expected:\n    {header}\n"
            + "\n".join("    " + " | ".join(r) for r in expected)
            + "\n  released:\n" + "\n".join("    " + " | ".join(r) for r in rows)]
