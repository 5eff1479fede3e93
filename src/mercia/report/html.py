"""What every report page is made of: tables of released numbers, plotly figures, a page's sections.

Shared by the study report (`mercia.report.study`), the hub's pooled report (`mercia.report.hub`) and
each analysis type's report section (`mercia.study.kinds`), so every page reads the same way. This
module imports nothing else of Mercia: any layer may use it.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import escape

TOTAL = "Total"


class Plots:
    """plotly figures as HTML fragments; the library goes into the first one only. Each figure sits in a
    <figure> whose aria-label names it (its title, or the label given), so no plot is unlabelled."""

    def __init__(self) -> None:
        self.first = True

    def html(self, fig: Any, label: str | None = None) -> str:
        label = label or (fig.layout.title.text if fig.layout.title is not None else None)
        if not label:
            raise ValueError("a report figure needs a title or a label (its accessible name)")
        out = fig.to_html(
            full_html=False,
            include_plotlyjs=self.first,
            include_mathjax=False,
            config={"displaylogo": False, "responsive": True},
        )
        self.first = False
        return f'<figure class="plot" aria-label="{html.escape(label, quote=True)}">{out}</figure>'


# Columns whose values are whole numbers (ids, counts, days, years): shown without decimals even when
# the column is stored as floats (a suppressed cell makes a count column float).
_WHOLE = re.compile(
    r"(^|_)(id|ids|n|count|counts|days|persons|subjects|events|entries|year|years|rows|steps)(_|$)|^n_"
)
# ... of which these are labels, not quantities: no thousands separator (concept 46271022, year 2024).
_LABEL = re.compile(r"(^|_)(id|ids|year)$")


def fmt(v: Any, digits: int = 2) -> str:
    if v is None or v is pd.NA:
        return "—"
    if isinstance(v, float | np.floating):
        if math.isnan(v):
            return "—"
        if math.isinf(v):
            return "∞"
        return f"{v:,.0f}" if digits == 0 else f"{v:.{digits}f}"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    return str(v)


def _fmt_cell(v: Any, digits: int, whole: bool, label: bool) -> str:
    if label and isinstance(v, int | float | np.integer | np.floating) and not pd.isna(v) and math.isfinite(v):
        return str(int(v))
    return fmt(v, 0 if whole else digits)


def _whole_column(name: Any, values: pd.Series) -> bool:
    """True when a column holds whole numbers to be shown as such: an integer dtype, or a name that says
    so (ids, counts, days, years) with every released value whole."""
    if pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_integer_dtype(values):
        return True
    if not pd.api.types.is_numeric_dtype(values) or not _WHOLE.search(str(name).lower()):
        return False
    v = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
    v = v[np.isfinite(v)]
    return bool(np.all(v == np.round(v)))


def natural_key(value: Any) -> tuple[Any, ...]:
    """Sort key that orders the numbers inside labels as numbers ('15-19' before '100-104', '65+' after
    '40-64'), with the Total margin last."""
    text = str(value)
    parts = re.split(r"(\d+)", text)
    return (text == TOTAL, tuple(int(p) if i % 2 else p for i, p in enumerate(parts)))


def natural_order(s: pd.Series) -> pd.Series:
    """Ranks for `sort_values(key=...)`: the natural order of `s`'s labels."""
    rank = {v: i for i, v in enumerate(sorted(s.astype(str).unique(), key=natural_key))}
    return s.astype(str).map(rank)


def _header(name: Any) -> str:
    """A column name that may wrap after its underscores (target_<wbr>days), so wide tables fit."""
    return html.escape(str(name)).replace("_", "_<wbr>")


def table_html(df: pd.DataFrame, digits: int = 2) -> str:
    """A plain HTML table; suppressed cells (missing) show as an em dash. Whole-number columns (ids,
    counts, days) have no decimals; numeric cells are right-aligned (class "num")."""
    if df.empty:
        return '<p class="empty">No rows released.</p>'
    whole = [_whole_column(c, df[c]) for c in df.columns]
    label = [w and bool(_LABEL.search(str(c).lower())) for c, w in zip(df.columns, whole, strict=True)]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    head = "".join(
        f'<th{" class=num" if n else ""}>{_header(c)}</th>' for c, n in zip(df.columns, numeric, strict=True)
    )
    body = []
    for row in df.itertuples(index=False):
        cells = "".join(
            f'<td{" class=num" if n else ""}>{html.escape(_fmt_cell(v, digits, w, lab))}</td>'
            for v, w, lab, n in zip(row, whole, label, numeric, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def num(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").astype(float).to_numpy()


def steps(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The vertices of a right-continuous step function through (t, y): each value held until the next
    time, where it drops."""
    if len(t) == 0:
        return t, y
    x = np.repeat(t, 2)[1:]
    v = np.repeat(y, 2)[:-1]
    return x, v


COLOURS = ["#1f3b73", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def esc(value: Any) -> str:
    """Text for HTML, escaped as the page's template escapes it."""
    return str(escape(value))


@dataclass(frozen=True)
class ReportGroup:
    """A heading of the study report under which analyses' sections appear (`Table 1`, `Cox models`).

    Groups appear in `order`; within a group, sections appear slot by slot (`slots`, e.g. every Table 1
    and then every balance plot), each slot's in the package's order. `nav` is the group's link in the
    page's menu; `nav_break` puts a line break after it in the page's source (as the page always had)."""

    id: str
    title: str
    nav: str
    order: int
    slots: tuple[str, ...] = ("main",)
    nav_break: bool = False


@dataclass(frozen=True)
class Section:
    """One analysis's part of a group: HTML in one of the group's slots."""

    group: ReportGroup
    html: str
    slot: str = "main"
