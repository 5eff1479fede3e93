"""The study report: one self-contained HTML file built only from released tables.

Every number shown comes from a `ReleasedTable` (or is recomputed from released numbers with the
analyses' own helpers: rates and their CIs, Kaplan-Meier curves, SMDs). plotly.js is embedded once
in the file, so the report opens offline and loads nothing from the network.
"""

from __future__ import annotations

import html
import json
import math
import re
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from mercia.analyses.characterization import smd_binary, smd_continuous
from mercia.analyses.forest import forest_figure
from mercia.analyses.incidence import rate_ci
from mercia.analyses.survival import km_estimates, median_survival
from mercia.disclosure import DisclosureLog, DisclosurePolicy, ReleasedTable
from mercia.study.package import StudyPackage

TOTAL = "Total"


class _Plots:
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


NOT_REACHED = "not reached"
# Columns whose values are whole numbers (ids, counts, days, years): shown without decimals even when
# the column is stored as floats (a suppressed cell makes a count column float).
_WHOLE = re.compile(
    r"(^|_)(id|ids|n|count|counts|days|persons|subjects|events|entries|year|years|rows|steps)(_|$)|^n_"
)
# ... of which these are labels, not quantities: no thousands separator (concept 46271022, year 2024).
_LABEL = re.compile(r"(^|_)(id|ids|year)$")


def _fmt(v: Any, digits: int = 2) -> str:
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
    return _fmt(v, 0 if whole else digits)


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


def _table_html(df: pd.DataFrame, digits: int = 2) -> str:
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


SMD_LABEL_CHARS = 48


def _unique_short(labels: list[str], most: int) -> list[str]:
    """Each label cut to `most` characters (an ellipsis marks the cut), kept distinct: where two cuts
    collide, the later one keeps more of its end."""
    out: list[str] = []
    seen: set[str] = set()
    for text in labels:
        short = text if len(text) <= most else text[: most - 1].rstrip() + "…"
        if short in seen:
            short = text if len(text) <= most else text[: most // 2 - 1].rstrip() + "…" + text[-(most // 2):]
        k = 2
        base = short
        while short in seen:
            short, k = f"{base} ({k})", k + 1
        seen.add(short)
        out.append(short)
    return out


def _num(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").astype(float).to_numpy()


def _steps(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The vertices of a right-continuous step function through (t, y): each value held until the next
    time, where it drops."""
    if len(t) == 0:
        return t, y
    x = np.repeat(t, 2)[1:]
    v = np.repeat(y, 2)[:-1]
    return x, v


def median_text(v: float) -> str:
    """A median survival time for the report: whole days, "not reached" when the curve (or its bound)
    never falls to 0.5, a dash when unknown."""
    if v is None or pd.isna(v):
        return "—"
    return NOT_REACHED if math.isinf(v) else f"{v:,.0f}"


def at_risk_row(est: pd.DataFrame, times: list[int]) -> dict[str, str]:
    """Persons at risk at each of `times`, from a released curve (steps pooled until they hold enough
    events; each step's `n_at_risk` is the risk set where its pool starts).

    Exact only at day 0 and just after a released step; in between, the censorings inside a pooled step
    are not released, so the number is a range: at most the risk set after the step before, at least
    the one after the step that follows ("290–615"). After the last released step it is at most what
    remained then ("≤ 125")."""
    g = est.sort_values("time").reset_index(drop=True)
    t = g["time"].to_numpy(dtype=float)
    n = g["n_at_risk"].to_numpy(dtype=float)
    left = np.clip(n - g["n_events"].to_numpy(dtype=float) - g["n_censored"].to_numpy(dtype=float), 0, None)
    # after[k]: at risk just after step k: the next step's released risk set, or what the last one leaves
    after = np.append(n[1:], left[-1]) if len(n) else n
    row: dict[str, str] = {}
    for when in times:
        if len(t) == 0:
            cell = "—"
        elif when <= t[0]:
            cell = f"{n[0]:,.0f}"
        else:
            k = int(np.searchsorted(t, when, side="left"))  # first step at or after `when`
            if k >= len(t):
                cell = f"≤ {after[-1]:,.0f}"
            else:
                hi, lo = after[k - 1], after[k]
                cell = f"{hi:,.0f}" if hi == lo else f"{lo:,.0f}–{hi:,.0f}"
        row[f"day {when}"] = cell
    return row


MAX_STRATA_TRACES = 6


def incidence_figure(d: pd.DataFrame, dim: str, by: list[str], title: str) -> Any:
    """Rates by `dim` with 95% CIs, from a table with rate_per_1000py, ci_lower, ci_upper per stratum.

    One series for the Total margin and, when exactly one other dimension has at most six levels, one
    per level of it (rates by calendar year for each age group). Strata with no event are hollow
    markers at 0 without whiskers (their upper bound, set by the person-time alone, is in the hover and
    the table) and do not set the axis; suppressed strata are marked with a grey cross on the axis, so
    a missing point never looks like a missing year. None when there is no stratum to plot."""
    import plotly.graph_objects as go

    others = [o for o in by if o != dim]
    base = d[d[dim].astype(str) != TOTAL]
    for o in others[1:]:
        base = base[base[o].astype(str) == TOTAL]
    if base.empty:
        return None
    levels = sorted(base[dim].astype(str).unique(), key=natural_key)
    pos = {v: i for i, v in enumerate(levels)}
    series: list[tuple[str, pd.DataFrame]] = []
    if others:
        first = others[0]
        total = base[base[first].astype(str) == TOTAL]
        if not total.empty:  # time-at-risk windows have no total across windows: one series per window
            series.append((f"all ({first.replace('_', ' ')} total)", total))
        strata = sorted((x for x in base[first].astype(str).unique() if x != TOTAL), key=natural_key)
        if len(others) == 1 and 0 < len(strata) <= MAX_STRATA_TRACES:
            series += [(f"{first.replace('_', ' ')} {x}", base[base[first].astype(str) == x]) for x in strata]
    else:
        series.append(("all", base))
    if not series:
        return None
    fig = go.Figure()
    width = 0.5 / max(1, len(series))
    top = 0.0
    suppressed_x: list[float] = []
    suppressed_text: list[str] = []
    for k, (name, g) in enumerate(series):
        x = np.array([pos[str(v)] for v in g[dim]], dtype=float) + (k - (len(series) - 1) / 2) * width
        rate, lo, hi = _num(g["rate_per_1000py"]), _num(g["ci_lower"]), _num(g["ci_upper"])
        ev = _num(g["n_events"])
        released = ~np.isnan(rate)
        has = released & (ev > 0)
        zero = released & (ev == 0)
        order = np.argsort(x)
        colour = _COLOURS[k % len(_COLOURS)]
        line = {"color": colour, "width": 1.5 if k == 0 else 1}
        rs = np.where(has, rate, np.nan)[order]
        fig.add_trace(
            go.Scatter(
                x=x[order], y=rs, mode="lines+markers", name=name, legendgroup=name, line=line,
                marker={"size": 8 if k == 0 else 6, "color": colour}, connectgaps=False,
                error_y={"type": "data", "symmetric": False, "array": (hi - rate)[order],
                         "arrayminus": (rate - lo)[order], "color": colour, "thickness": 1},
                customdata=np.stack([g[dim].astype(str).to_numpy()[order], lo[order], hi[order]], axis=-1),
                hovertemplate="%{customdata[0]}: %{y:.2f} (%{customdata[1]:.2f} to %{customdata[2]:.2f})"
                f"<extra>{html.escape(name)}</extra>",
            )
        )
        if zero.any():
            fig.add_trace(
                go.Scatter(
                    x=x[zero], y=np.zeros(int(zero.sum())), mode="markers", name=f"{name}: no events",
                    legendgroup=name, showlegend=False,
                    marker={"size": 8, "color": "white", "line": {"color": colour, "width": 1.5}},
                    customdata=np.stack([g[dim].astype(str).to_numpy()[zero], hi[zero]], axis=-1),
                    hovertemplate="%{customdata[0]}: no events (95% CI upper bound %{customdata[1]:.1f})"
                    f"<extra>{html.escape(name)}</extra>",
                )
            )
        if has.any():
            top = max(top, float(np.nanmax(hi[has])))
        for xv, lab in zip(x[~released], g[dim].astype(str).to_numpy()[~released], strict=True):
            suppressed_x.append(float(xv))
            suppressed_text.append(f"{lab} ({name}): suppressed")
    if suppressed_x:
        fig.add_trace(
            go.Scatter(
                x=suppressed_x, y=[0.0] * len(suppressed_x), mode="markers", name="suppressed (not released)",
                marker={"symbol": "x-thin", "size": 9, "color": "grey", "line": {"width": 1.5, "color": "grey"}},
                text=suppressed_text, hovertemplate="%{text}<extra></extra>",
            )
        )
    if top <= 0:  # no stratum with events: the axis shows the zeros, not bounds set by person-time
        top = 1.0
    fig.update_layout(
        title=title,
        xaxis={"title": dim.replace("_", " "), "tickvals": list(range(len(levels))), "ticktext": levels,
               "range": [-0.6, len(levels) - 0.4]},
        yaxis={"title": "per 1,000 person-years (95% CI)", "range": [-0.04 * top, top * 1.08]},
        height=400,
        margin={"l": 20, "r": 20},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


_COLOURS = ["#1f3b73", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


class _Builder:
    def __init__(
        self,
        pkg: StudyPackage,
        tables: dict[str, ReleasedTable],
        log: DisclosureLog,
        policy: DisclosurePolicy,
        manifest: dict[str, Any],
    ) -> None:
        self.pkg = pkg
        self.tables = tables
        self.log = log
        self.policy = policy
        self.manifest = manifest
        self.plots = _Plots()
        key_of = {v: k for k, v in pkg.cohort_ids.items()}
        self.cohort_label = {cid: f"{key} ({pkg.cohort_name(key)})" for cid, key in key_of.items()}

    def data(self, name: str) -> pd.DataFrame | None:
        t = self.tables.get(name)
        return None if t is None else t.data

    def label(self, cid: Any) -> str:
        try:
            return self.cohort_label.get(int(cid), str(cid))
        except (TypeError, ValueError):
            return str(cid)

    def with_cohort_names(self, df: pd.DataFrame | None) -> pd.DataFrame:
        """`df` with its cohort_id column replaced by the cohorts' keys and names."""
        if df is None:
            return pd.DataFrame()
        if "cohort_id" not in df.columns:
            return df
        out = df.drop(columns=["cohort_id"])
        out.insert(0, "cohort", [self.label(c) for c in df["cohort_id"]])
        return out

    # ---- cohorts -------------------------------------------------------------------------------------
    def cohorts(self) -> dict[str, Any]:
        counts = self.data("cohort_counts")
        attrition = []
        for key in sorted(self.pkg.cohort_ids, key=self.pkg.cohort_ids.get):  # type: ignore[arg-type]
            df = self.data(f"attrition_{key}")
            if df is not None:
                attrition.append(
                    {
                        "title": self.label(self.pkg.cohort_ids[key]),
                        "html": _table_html(df),
                        "plot": self._attrition_plot(df, self.label(self.pkg.cohort_ids[key])),
                    }
                )
        return {
            "counts": _table_html(counts.drop(columns=["cohort"], errors="ignore")) if counts is not None else "",
            "attrition": attrition,
        }

    def _attrition_plot(self, df: pd.DataFrame, title: str) -> str:
        """Persons left after each step as bars, from the released counts; a suppressed step has no
        bar and says so."""
        import plotly.graph_objects as go

        if df.empty or "persons" not in df.columns:
            return ""
        persons = _num(df["persons"])
        steps = [str(x) for x in df["step"]]
        text = ["suppressed" if np.isnan(v) else f"{int(v):,}" for v in persons]
        fig = go.Figure(
            go.Bar(
                x=np.nan_to_num(persons),
                y=steps,
                orientation="h",
                text=text,
                textposition="auto",
                hovertemplate="%{y}: %{text}<extra></extra>",
            )
        )
        fig.update_layout(
            xaxis_title="persons",
            yaxis={"autorange": "reversed"},
            height=90 + 34 * len(steps),
            margin={"l": 20, "r": 20, "t": 20},
            yaxis_automargin=True,
        )
        return self.plots.html(fig, f"Attrition of {title}: persons left after each step")

    # ---- Table 1 -------------------------------------------------------------------------------------
    def table1(self, prefix: str) -> dict[str, Any]:
        demo = self.data(f"{prefix}_demographics")
        age = self.data(f"{prefix}_age")
        cov = self.data(f"{prefix}_covariates")
        parts: list[str] = []
        if demo is not None and len(demo):
            d = demo[demo["level"] != TOTAL].copy()
            d["cell"] = [
                f"{_fmt(n)} ({_fmt(p, 1)}%)" if not pd.isna(n) else "—"
                for n, p in zip(d["n"], d["percent"], strict=True)
            ]
            d["cohort"] = [self.label(c) for c in d["cohort_id"]]
            wide = d.pivot_table(index=["variable", "level"], columns="cohort", values="cell", aggfunc="first")
            wide = wide.reset_index()
            wide.columns.name = None
            # Levels in their natural order (age 15-19 before 100-104), not as strings.
            order = sorted(range(len(wide)), key=lambda i: (str(wide["variable"].iat[i]), natural_key(wide["level"].iat[i])))
            wide = wide.iloc[order]
            rows = []
            if age is not None and len(age):
                row: dict[str, Any] = {"variable": "age", "level": "mean (SD)"}
                for r in age.itertuples(index=False):
                    row[self.label(r.cohort_id)] = f"{_fmt(r.age_mean, 1)} ({_fmt(r.age_sd, 1)})"
                rows.append(row)
                row = {"variable": "persons", "level": "n"}
                for r in age.itertuples(index=False):
                    row[self.label(r.cohort_id)] = _fmt(r.n)
                rows.insert(0, row)
            table = pd.concat([pd.DataFrame(rows), wide], ignore_index=True).fillna("—")
            parts.append(_table_html(table))
        top = ""
        if cov is not None and len(cov):
            c = cov.dropna(subset=["n"]).copy()
            # every count suppressed (a small site): no top covariates to show
            c = c[c["window"] == c["window"].iloc[0]] if len(c) else c
            c["n_num"] = _num(c["n"])
            frames = []
            for cid, g in c.groupby("cohort_id", sort=True):
                g = g.sort_values("n_num", ascending=False).head(10)
                frames.append(
                    pd.DataFrame(
                        {
                            "cohort": self.label(cid),
                            "window": g["window"],
                            "domain": g["domain"],
                            "concept": g["concept_name"],
                            "n": g["n"],
                            "percent": g["percent"],
                        }
                    )
                )
            if frames:
                top = _table_html(pd.concat(frames, ignore_index=True), 1)
        return {"title": prefix, "table": "".join(parts) or '<p class="empty">No rows released.</p>', "top": top}

    # ---- SMD -----------------------------------------------------------------------------------------
    def _binary_smd(self, prefix: str, target: int, comparator: int) -> pd.DataFrame:
        """Binary covariates (demographic levels, concepts per window) from released counts and released
        cohort sizes (never the site-side column)."""
        df = self.data(f"{prefix}_smd")
        age = self.data(f"{prefix}_age")
        empty = pd.DataFrame(columns=["label", "smd", "kind"])
        if df is None or age is None or df.empty or age.empty:
            return empty
        sizes = {int(r.cohort_id): r.n for r in age.itertuples(index=False)}
        nt, nc = sizes.get(target), sizes.get(comparator)
        if nt is None or nc is None or pd.isna(nt) or pd.isna(nc) or not nt or not nc:
            return empty
        d = df.dropna(subset=["n_target", "n_comparator"]).copy()
        d = d[d["concept_name"].astype(str) != TOTAL]
        d["smd"] = smd_binary(_num(d["n_target"]) / float(nt), _num(d["n_comparator"]) / float(nc))
        d["label"] = [f"{w} · {n}" for w, n in zip(d["window"], d["concept_name"], strict=True)]
        return d.assign(kind="binary")[["label", "smd", "kind"]].dropna(subset=["smd"])

    def _continuous_smd(self, prefix: str, target: int, comparator: int) -> pd.DataFrame:
        """Age and measurement values: (m1 - m2) / sqrt((s1^2 + s2^2) / 2) from the released means and
        SDs of each cohort (missing where either was withheld by the magnitude rules)."""
        rows: list[dict[str, Any]] = []
        age = self.data(f"{prefix}_age")
        if age is not None and len(age):
            a = age.assign(cohort_id=pd.to_numeric(age["cohort_id"], errors="coerce")).set_index("cohort_id")
            if target in a.index and comparator in a.index:
                rows.append(
                    {
                        "label": "index · age (years)",
                        "mean_target": a.loc[target, "age_mean"],
                        "sd_target": a.loc[target, "age_sd"],
                        "mean_comparator": a.loc[comparator, "age_mean"],
                        "sd_comparator": a.loc[comparator, "age_sd"],
                    }
                )
        meas = self.data(f"{prefix}_measurements")
        if meas is not None and len(meas):
            key = ["window", "concept_id", "concept_name", "unit_concept_id"]
            m = meas.assign(cohort_id=pd.to_numeric(meas["cohort_id"], errors="coerce"))
            t = m[m["cohort_id"] == target].set_index(key)[["mean", "sd"]]
            c = m[m["cohort_id"] == comparator].set_index(key)[["mean", "sd"]]
            both = t.join(c, how="inner", lsuffix="_target", rsuffix="_comparator").reset_index()
            for r in both.itertuples(index=False):
                rows.append(
                    {
                        "label": f"{r.window} · {r.concept_name or r.concept_id} (latest value)",
                        "mean_target": r.mean_target,
                        "sd_target": r.sd_target,
                        "mean_comparator": r.mean_comparator,
                        "sd_comparator": r.sd_comparator,
                    }
                )
        cols = ["label", "mean_target", "sd_target", "mean_comparator", "sd_comparator"]
        d = pd.DataFrame(rows, columns=cols)
        for c in cols[1:]:
            d[c] = _num(d[c])
        d["smd"] = smd_continuous(d["mean_target"], d["sd_target"], d["mean_comparator"], d["sd_comparator"])
        return d.assign(kind="continuous").dropna(subset=["smd"])

    def smd(self, prefix: str, target: int, comparator: int) -> dict[str, Any] | None:
        import plotly.graph_objects as go

        binary = self._binary_smd(prefix, target, comparator)
        continuous = self._continuous_smd(prefix, target, comparator)
        d = pd.concat([binary, continuous[["label", "smd", "kind"]]], ignore_index=True)
        if d.empty:
            return None
        d["abs"] = d["smd"].abs()
        d = d.sort_values("abs", ascending=False).head(40).iloc[::-1]
        # Long concept names are shortened on the axis (the full name is in the hover), so the labels
        # leave the plot most of the width; distinct labels stay distinct.
        d["short"] = _unique_short([str(x) for x in d["label"]], SMD_LABEL_CHARS)
        fig = go.Figure()
        for kind, symbol in (("binary", "circle"), ("continuous", "diamond")):
            part = d[d["kind"] == kind]
            if len(part):
                fig.add_trace(
                    go.Scatter(
                        x=part["smd"],
                        y=part["short"],
                        customdata=part["label"],
                        mode="markers",
                        name=f"{kind} covariates",
                        marker={"size": 8, "symbol": symbol},
                        hovertemplate="%{customdata}: SMD %{x:.3f}<extra></extra>",
                    )
                )
        for x in (-0.1, 0.1):
            fig.add_vline(x=x, line_dash="dash", line_color="grey")
        fig.update_layout(
            title=f"Standardized mean differences: {self.label(target)} vs {self.label(comparator)}",
            xaxis_title="SMD (binary: proportions; continuous: means and SDs)",
            height=max(350, 18 * len(d) + 150),
            margin={"l": 20, "r": 20},
            yaxis={"categoryorder": "array", "categoryarray": list(d["short"]), "automargin": True},
            legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0},
        )
        n_big = int((d["abs"] > 0.1).sum())
        table = ""
        if len(continuous):
            shown = continuous.rename(
                columns={
                    "label": "covariate",
                    "mean_target": "mean (target)",
                    "sd_target": "SD (target)",
                    "mean_comparator": "mean (comparator)",
                    "sd_comparator": "SD (comparator)",
                    "smd": "SMD",
                }
            ).drop(columns=["kind"])
            table = _table_html(shown, 2)
        return {
            "title": prefix,
            "plot": self.plots.html(fig),
            "n_imbalanced": n_big,
            "n_binary": len(binary),
            "n_continuous": len(continuous),
            "continuous": table,
        }

    # ---- incidence -----------------------------------------------------------------------------------
    def incidence(self, prefix: str, by: list[str], alpha: float) -> dict[str, Any]:

        df = self.data(prefix)
        out: dict[str, Any] = {"title": prefix, "plots": [], "table": ""}
        if df is None or df.empty:
            out["table"] = '<p class="empty">No rows released (nobody at risk, or all suppressed).</p>'
            return out
        d = df.copy()
        ev, py = _num(d["n_events"]), _num(d["person_years"])
        rate, lo, hi = rate_ci(np.nan_to_num(ev), np.nan_to_num(py), 1000.0, alpha)
        ok = ~(np.isnan(ev) | np.isnan(py)) & (py > 0)
        d["rate_per_1000py"] = np.where(ok, rate, np.nan)
        d["ci_lower"] = np.where(ok, lo, np.nan)
        d["ci_upper"] = np.where(ok, hi, np.nan)
        for dim in by:
            if dim not in ("age_group", "calendar_year", "sex"):
                continue
            fig = incidence_figure(d, dim, list(by), f"{prefix}: incidence by {dim.replace('_', ' ')}")
            if fig is not None:
                out["plots"].append(self.plots.html(fig))
        cols = [*by, "n_events", "person_years", "rate_per_1000py", "ci_lower", "ci_upper"]
        shown = d[cols]
        if len(shown) > 60:  # the full cross-classification is in results/; show the margins here
            margin = np.zeros(len(d), dtype=bool)
            for dim in by:
                m = np.ones(len(d), dtype=bool)
                for other in by:
                    if other != dim:
                        m &= (d[other].astype(str) == TOTAL).to_numpy()
                margin |= m
            shown = d.loc[margin, cols]
        shown = shown.sort_values(by, key=natural_order)  # numbers in labels as numbers, totals last
        out["table"] = _table_html(shown)
        return out

    # ---- Kaplan-Meier ----------------------------------------------------------------------------------
    def km(self, prefix: str, alpha: float) -> dict[str, Any]:
        import plotly.graph_objects as go

        df = self.data(prefix)
        out: dict[str, Any] = {"title": prefix, "plot": "", "risk": "", "summary": ""}
        summ = self.data(f"{prefix}_summary")
        if summ is not None:
            s = summ.copy()
            s.insert(0, "cohort", [self.label(c) for c in s["cohort_id"]])
            out["summary"] = _table_html(s.drop(columns=["cohort_id"]))
        if df is None or df.empty:
            out["plot"] = '<p class="empty">No curve released (too few at risk, or nobody followed).</p>'
            return out
        fig = go.Figure()
        grid: list[float] = []
        curves = {}
        for cid, g in df.groupby("cohort_id", sort=True):
            counts = g[["time", "n_at_risk", "n_events", "n_censored"]].astype(float)
            # The curve and its CI recomputed from the released counts only.
            est = km_estimates(counts, alpha)
            curves[cid] = est
            name = self.label(cid)
            t = est["time"].to_numpy()
            fig.add_trace(
                go.Scatter(x=t, y=est["estimate"], mode="lines", line_shape="hv", name=name, legendgroup=name)
            )
            # The CI band as a step-shaped polygon drawn point by point: a reversed path with
            # line_shape "hv" would step the wrong way on the way back and misplace the band.
            sx, su = _steps(t, est["ci_upper"].to_numpy(dtype=float))
            _, sl = _steps(t, est["ci_lower"].to_numpy(dtype=float))
            fig.add_trace(
                go.Scatter(
                    x=np.concatenate([sx, sx[::-1]]),
                    y=np.concatenate([su, sl[::-1]]),
                    fill="toself",
                    line={"width": 0},
                    opacity=0.2,
                    name=f"{name} 95% CI",
                    legendgroup=name,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
            grid.append(float(t.max()))
        fig.update_layout(
            title=f"{prefix}: Kaplan-Meier (95% CI)",
            xaxis_title="days from index",
            yaxis_title="survival probability",
            height=420,
        )
        out["plot"] = self.plots.html(fig)
        # Number at risk at six evenly spaced times, from released risk sets only.
        tmax = max(grid) if grid else 0.0
        times = sorted({round(tmax * k / 5) for k in range(6)})
        rows = [{"cohort": self.label(cid), **at_risk_row(est, times)} for cid, est in curves.items()]
        out["risk"] = _table_html(pd.DataFrame(rows), 0)
        if summ is not None:
            # Median survival and its CI read off the curve recomputed from released counts (the
            # site-side medians are not released): the first time each of the estimate and its bounds
            # is at or below 0.5; "not reached" where the curve never gets there.
            medians = {cid: median_survival(est) for cid, est in curves.items()}
            s = summ.copy()
            s.insert(0, "cohort", [self.label(c) for c in s["cohort_id"]])
            key = pd.to_numeric(s["cohort_id"], errors="coerce")
            nan3 = (math.nan, math.nan, math.nan)
            for i, col in enumerate(("median (days)", "median lower", "median upper")):
                s[col] = [median_text(medians.get(c, nan3)[i]) for c in key]
            out["summary"] = _table_html(s.drop(columns=["cohort_id"]), 0)
        return out

    # ---- Cox -----------------------------------------------------------------------------------------
    def cox(self, prefix: str, target: str, comparator: str) -> dict[str, Any]:
        t = self.tables.get(prefix)
        out: dict[str, Any] = {"title": prefix, "plot": "", "table": "", "status": "", "info": ""}
        if t is None:
            return out
        out["status"] = t.status
        info = t.model_info or {}
        out["info"] = ", ".join(f"{k} {_fmt(v)}" for k, v in info.items())
        df = t.data
        out["table"] = _table_html(df, 3)
        ok = df.dropna(subset=["hr", "hr_lower", "hr_upper"]) if len(df) else df
        if t.status == "blocked" or ok.empty:
            out["plot"] = '<p class="empty">No hazard ratio released (blocked, empty, or suppressed).</p>'
            return out
        labels = [
            f"{x} ({self.pkg.cohort_name(target)} vs {self.pkg.cohort_name(comparator)})" if x == "treatment" else x
            for x in ok["term"]
        ]
        fig = forest_figure(labels, ok["hr"], ok["hr_lower"], ok["hr_upper"],
                            title=f"{prefix}: hazard ratios (95% CI)", axis_title="hazard ratio (log scale)")
        out["plot"] = self.plots.html(fig)
        ph = self.data(f"{prefix}_ph_test")
        if ph is not None and len(ph):
            out["table"] += "<h4>Proportional hazards (Schoenfeld residuals)</h4>" + _table_html(ph, 3)
        return out

    # ---- prediction ----------------------------------------------------------------------------------
    def prediction(self, prefix: str) -> dict[str, Any]:
        from mercia.analyses.prediction.plots import prediction_figures

        perf = self.tables.get(f"{prefix}_performance")
        info = (perf.model_info or {}) if perf is not None else {}
        return {
            "title": prefix,
            "status": perf.status if perf is not None else "not run",
            "info": ", ".join(f"{k} {_fmt(v)}" for k, v in info.items()),
            "plots": prediction_figures(
                self.data(f"{prefix}_risk_strata"), self.data(f"{prefix}_performance"), prefix, self.plots.html
            ),
            "tables": [
                (title, _table_html(d, 3))
                for title, d in (
                    ("Performance", self.data(f"{prefix}_performance")),
                    ("Attrition", self.data(f"{prefix}_attrition")),
                    ("Risk strata", self.data(f"{prefix}_risk_strata")),
                    ("Coefficients", self.data(f"{prefix}_coefficients")),
                )
                if d is not None
            ],
        }

    # ---- population ----------------------------------------------------------------------------------
    def population(self, prefix: str) -> str:
        """One line per count column of the analysis's released attrition table(s) (`{prefix}_attrition`,
        or one per outcome, `{prefix}_attrition_{outcome}`): each rule that shaped the population and
        the persons left after it; suppressed counts show as an em dash."""
        own = f"{prefix}_attrition"
        lines = []
        for name in sorted(n for n in self.tables if n == own or n.startswith(own + "_")):
            df = self.data(name)
            if df is None or "step" not in df.columns or df.empty:
                continue
            outcome = name[len(own) + 1:]
            for col in [c for c in df.columns if c != "step"]:
                who = {"persons": "", "n_target": "target", "n_comparator": "comparator"}.get(
                    col, self.label(col.removeprefix("cohort_")))
                where = ", ".join(x for x in (f"outcome {outcome}" if outcome else "", who) if x)
                chain = " → ".join(
                    f"{html.escape(str(step).split('. ', 1)[-1])} <b>{html.escape(_fmt(v))}</b>"
                    for step, v in zip(df["step"], df[col], strict=True)
                )
                lines.append(f'<p class="population">Population{" (" + html.escape(where) + ")" if where else ""}: '
                             f"{chain}</p>")
        return "".join(lines)

    # ---- disclosure ----------------------------------------------------------------------------------
    def disclosure(self) -> str:
        summ = self.log.summary(public=True)  # private entries (dropped rows) are not counted either
        outcomes = sorted({o for c in summ.values() for o in c})
        rows = [{"table": t, **{o: c.get(o, 0) for o in outcomes}} for t, c in sorted(summ.items())]
        # The log by rule, in its public form (as disclosure.json): primary and secondary suppressions
        # are merged, so the report does not say which suppressed cells were the small ones.
        entries = json.loads(self.log.to_json(public=True, indent=None))["entries"]
        by_rule = pd.DataFrame(entries, columns=["table", "rule", "outcome", "reason"])
        if len(by_rule):
            by_rule = (
                by_rule.groupby(["table", "rule", "outcome", "reason"], sort=True)
                .size()
                .rename("cells")
                .reset_index()
            )
        detail = (
            "<details><summary>The log by table, rule and reason</summary>"
            + _table_html(by_rule)
            + "</details>"
        )
        return _table_html(pd.DataFrame(rows)) + detail


def render_report(
    pkg: StudyPackage,
    tables: dict[str, ReleasedTable],
    log: DisclosureLog,
    policy: DisclosurePolicy,
    manifest: dict[str, Any],
) -> str:
    """The report's HTML. `tables` must all be released tables (checked)."""
    bad = [n for n, t in tables.items() if not isinstance(t, ReleasedTable)]
    if bad:
        from mercia.errors import StudyError

        raise StudyError(f"the report is built from released tables only; {bad} were not released")
    b = _Builder(pkg, tables, log, policy, manifest)
    # Built first: the first figure made carries plotly.js, and the attrition plots come first on the page.
    cohort_section = b.cohorts()
    sections: dict[str, list[Any]] = {"table1": [], "smd": [], "incidence": [], "prevalence": [], "km": [], "cox": [], "prediction": [], "cohort_method": [], "other": []}
    ids = pkg.cohort_ids
    for a in pkg.analyses:
        p = a.table_prefix()
        if a.type in ("characterization", "compare_cohorts"):
            sections["table1"].append(b.table1(p))
            if a.type == "compare_cohorts":
                s = b.smd(p, ids[a.target], ids[a.comparator])
                if s:
                    sections["smd"].append(s)
        elif a.type == "incidence":
            tar = ["tar"] if a.settings.get("time_at_risk") else []  # a dimension: one level per window
            sections["incidence"].append(b.incidence(p, [*tar, *a.settings["by"]], float(a.settings["alpha"])))
        elif a.type == "prevalence":
            d = b.data(p)
            if d is not None and len(d):
                dims = [c for c in ("period", "age_group", "sex") if c in d.columns]
                d = d.sort_values(dims, key=natural_order)
            sections["prevalence"].append({"title": p, "table": _table_html(d if d is not None else pd.DataFrame())})
        elif a.type == "kaplan_meier":
            sections["km"].append(b.km(p, a.alpha))
        elif a.type == "cox":
            sections["cox"].append(b.cox(p, a.target, a.comparator))
        elif a.type == "prediction":
            sections["prediction"].append(b.prediction(p))
        elif a.type == "cohort_method":
            from mercia.analyses.cohort_method_plots import cohort_method_section

            sections["cohort_method"].append(
                cohort_method_section(b.data, p, [*a.outcomes], b.plots.html, _table_html)
            )
        elif a.type == "cohort_entries":
            sections["other"].append({"title": p, "table": _table_html(b.with_cohort_names(b.data(p)))})
    # One block per analysis: the rules that shaped its population, from its released attrition table.
    populations = {a.table_prefix(): b.population(a.table_prefix()) for a in pkg.analyses}
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mercia.study", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    # The site line comes from the manifest's released summary only (persons through release(), the
    # observation span in whole years): no path, no row count, no date.
    summary = manifest.get("site_summary") or {}
    versions = manifest.get("versions", {})
    persons = summary.get("persons")
    years = summary.get("observation_years")
    return env.get_template("report.html.j2").render(
        study=pkg.name,
        description=pkg.spec.description,
        package_hash=pkg.content_hash,
        site=manifest.get("site"),
        policy=policy.rule_summary(),
        cdm={
            "cdm_version": versions.get("cdm") or "—",
            "persons": _fmt(persons) if persons is not None else "— (suppressed)",
            "observation": f"{years} years" if years is not None else "—",
        },
        cohorts=cohort_section,
        notes={where: [n["text"] for n in items] for where, items in manifest.get("notes", {}).items()},
        sections=sections,
        populations=populations,
        disclosure=b.disclosure(),
        versions=manifest.get("versions", {}),
    )
