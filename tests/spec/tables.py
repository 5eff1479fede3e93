"""Small tables written as text, and loading them into a CDM on any engine.

A table is a header line of column names and one line per row, cells separated by `|`:

    person_id | gender_concept_id | year_of_birth
    1         | 8507              | 1970

Cells are integers, decimals, dates (YYYY-MM-DD), text, or empty (NULL). Column names are the OMOP
CDM v5.4 names; required columns left out are filled in (ids numbered 1, 2, ...; concept ids 0; a
missing drug or condition end date is the start date), so a spec shows only what matters to it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

from mercia.cdm import Cdm

_INT = re.compile(r"^-?\d+$")
_FLOAT = re.compile(r"^-?\d+\.\d*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_cell(text: str) -> Any:
    t = text.strip()
    if t == "":
        return None
    if _INT.match(t):
        return int(t)
    if _FLOAT.match(t):
        return float(t)
    if _DATE.match(t):
        return dt.date.fromisoformat(t)
    return t


@dataclass(frozen=True)
class Table:
    """Rows as parsed from text: `columns`, and `rows` of Python values (None for an empty cell)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    cells: tuple[tuple[str, ...], ...]  # the text of each cell, as written (numbers keep their decimals)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows), columns=list(self.columns))


def table(text: str) -> Table:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        raise ValueError("a table needs a header line")
    columns = tuple(c.strip() for c in lines[0].split("|"))
    cells = []
    for ln in lines[1:]:
        parts = tuple(c.strip() for c in ln.split("|"))
        if len(parts) != len(columns):
            raise ValueError(f"row {ln!r} has {len(parts)} cells for {len(columns)} columns {columns}")
        cells.append(parts)
    return Table(columns, tuple(tuple(parse_cell(c) for c in r) for r in cells), tuple(cells))


# Filled in when a table leaves them out (each CDM table's required columns a spec rarely cares about).
_END_FROM_START = {
    "drug_exposure": ("drug_exposure_end_date", "drug_exposure_start_date"),
}


def load_tables(cdm: Cdm, tables: dict[str, Table]) -> Cdm:
    """Create the tables an analysis reads and write the given rows into `cdm`."""
    # Only these besides the given ones (each CREATE is a job on Spark): what every analysis reads.
    names = ["person", "observation_period", "cohort", "death", "concept_ancestor", "concept"]
    cdm.create_tables([*names, *(n for n in tables if n not in names)])
    for name, t in tables.items():
        df = t.frame()
        spec = cdm.spec.table(name)
        for f in spec.fields:
            if f.name in df.columns or not f.required:
                continue
            if name in _END_FROM_START and f.name == _END_FROM_START[name][0]:
                df[f.name] = df[_END_FROM_START[name][1]]
            elif f.name == spec.fields[0].name and f.name.endswith("_id"):
                df[f.name] = range(1, len(df) + 1)
            elif f.name.endswith("concept_id"):
                df[f.name] = 0
            elif f.name == "concept_code":
                df[f.name] = df["concept_id"].astype(str)
            elif f.name in ("domain_id", "vocabulary_id", "concept_class_id"):
                df[f.name] = "Spec"
            elif f.name == "valid_start_date":
                df[f.name] = dt.date(1970, 1, 1)
            elif f.name == "valid_end_date":
                df[f.name] = dt.date(2099, 12, 31)
            elif f.name.endswith("levels_of_separation"):
                df[f.name] = 0
        if len(df):
            cdm.insert_arrow(name, pa.Table.from_pandas(df, preserve_index=False))
    return cdm
