"""The study pages' pooled report: released tables, and plots drawn on the server as SVG.

    view = report_view(results)        # results: HubServices.study_results (pooled + each site's released tables)
    view["km"], view["incidence"], view["forest"]   # plots: {"title", "svg", "series"}
    frame = released_frame(results, site, table)    # one released table as pandas, for CSV/Parquet

Only what the sites released is read (the hub's stored results and its meta-analysis of them); a table a
site did not release (status other than "released") is not shown or offered. Plots are SVG made here,
with each point's value in its <title> (the browser shows it on hover) and one <g data-series=...> per
series that the portal's script shows or hides from the legend's buttons: no script of another origin,
none inline, nothing the Content Security Policy forbids. The report of `mercia.report.hub` draws with
plotly's script written into the page, which that policy refuses; the figures here show the same numbers.
"""

from __future__ import annotations

import math
from html import escape
from statistics import NormalDist
from typing import Any

import pandas as pd

from mercia.report.html import COLOURS, TOTAL, natural_key

W, H = 640, 320
L, R, T, B = 64, 16, 16, 48  # margins


def show(v: Any) -> str:
    """A released value as the pages print it: – for suppressed (null), whole numbers with thousands
    separators, others to 2 decimals (1 above 100, 4 below 1)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        digits = 1 if abs(v) >= 100 else 2 if abs(v) >= 1 else 4
        text = f"{v:,.{digits}f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    return str(v)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# ---- the released tables --------------------------------------------------------------------------------
def released_tables(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every released table of every site: {site, name, kind, columns, rows}."""
    out = []
    for site, payload in sorted(results.get("sites", {}).items()):
        for t in payload.get("tables", []):
            if t.get("status") != "released":
                continue
            out.append({"site": site, "name": t["name"], "kind": t.get("kind", ""), "columns": t["columns"],
                        "rows": t["rows"]})
    return out


def released_frame(results: dict[str, Any], site: str, table: str) -> pd.DataFrame | None:
    for t in released_tables(results):
        if t["site"] == site and t["name"] == table:
            return pd.DataFrame(t["rows"], columns=t["columns"])
    return None


def _z(m: dict[str, Any]) -> float:
    """The normal quantile of the pooling's confidence level (the sites' own, 95% by default)."""
    return NormalDist().inv_cdf(1 - float(m.get("alpha") or 0.05) / 2)


def _exp(v: Any) -> float | None:
    return math.exp(v) if isinstance(v, int | float) and math.isfinite(v) and abs(v) < 700 else None


POOLED_COLUMNS = ["model", "term", "source", "estimate", "se", "ci_lower", "ci_upper", "ratio", "ratio_lower",
                  "ratio_upper", "i2"]


def pooled_rows(pooled: dict[str, Any]) -> list[dict[str, Any]]:
    """The meta-analysis as rows: per table and term, each site's released estimate (coefficient and
    standard error; its interval as the site computes it, coef ± z·se) and the pooled fixed- and
    random-effect estimates, on the log scale as pooled and as ratios."""
    rows = []
    for table, terms in pooled.get("tables", {}).items():
        for term, m in terms.items():
            z = _z(m)
            for site, est, se in zip(m["sites"], m["estimates"], m["se"], strict=True):
                lo, hi = est - z * se, est + z * se
                rows.append({"model": table, "term": term, "source": site, "estimate": est, "se": se,
                             "ci_lower": lo, "ci_upper": hi, "ratio": _exp(est), "ratio_lower": _exp(lo),
                             "ratio_upper": _exp(hi), "i2": None})
            for kind in ("fixed", "random"):
                p = m[kind]
                rows.append({"model": table, "term": term, "source": f"pooled, {kind} effect",
                             "estimate": p["estimate"], "se": p["se"], "ci_lower": p["ci_lower"],
                             "ci_upper": p["ci_upper"], "ratio": _exp(p["estimate"]),
                             "ratio_lower": _exp(p["ci_lower"]), "ratio_upper": _exp(p["ci_upper"]),
                             "i2": m["i2"] if kind == "random" else None})
    return rows


def pooled_frame(pooled: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(pooled_rows(pooled), columns=POOLED_COLUMNS)


# ---- SVG ----------------------------------------------------------------------------------------------
def _ticks(low: float, high: float, n: int = 5) -> list[float]:
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step) + 1)]


class _Canvas:
    def __init__(self, x0: float, x1: float, y0: float, y1: float, *, log_x: bool = False) -> None:
        self.x0, self.x1, self.y0, self.y1 = x0, x1 if x1 > x0 else x0 + 1, y0, y1 if y1 > y0 else y0 + 1
        self.parts: list[str] = []
        self.log_x = log_x

    def x(self, v: float) -> float:
        return L + (v - self.x0) / (self.x1 - self.x0) * (W - L - R)

    def y(self, v: float) -> float:
        return H - B - (v - self.y0) / (self.y1 - self.y0) * (H - T - B)

    def axes(self, x_label: str, y_label: str, x_ticks: list[tuple[float, str]], y_ticks: list[tuple[float, str]]
             ) -> None:
        p = self.parts
        p.append(f'<g class="axis" aria-hidden="true"><line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" '
                 f'stroke="#4a5360"/><line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#4a5360"/>')
        for v, label in x_ticks:
            x = self.x(v)
            p.append(f'<line x1="{x:.1f}" y1="{H - B}" x2="{x:.1f}" y2="{H - B + 5}" stroke="#4a5360"/>'
                     f'<text class="tick" x="{x:.1f}" y="{H - B + 18}" text-anchor="middle">{escape(label)}</text>')
        for v, label in y_ticks:
            y = self.y(v)
            p.append(f'<line x1="{L - 5}" y1="{y:.1f}" x2="{W - R}" y2="{y:.1f}" stroke="#e3e7eb"/>'
                     f'<text class="tick" x="{L - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        p.append(f'<text x="{(L + W - R) / 2:.0f}" y="{H - 8}" text-anchor="middle">{escape(x_label)}</text>'
                 f'<text x="14" y="{(T + H - B) / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(T + H - B) / 2:.0f})">{escape(y_label)}</text></g>')

    def svg(self, plot_id: str, title: str) -> str:
        return (f'<svg id="{plot_id}" class="plot" viewBox="0 0 {W} {H}" role="img" aria-labelledby="{plot_id}-t" '
                f'xmlns="http://www.w3.org/2000/svg"><title id="{plot_id}-t">{escape(title)}</title>'
                + "".join(self.parts) + "</svg>")


def _point(x: float, y: float, colour: str, title: str, shape: str = "circle") -> str:
    t = f"<title>{escape(title)}</title>"
    if shape == "square":
        return f'<rect class="pt" x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{colour}">{t}</rect>'
    if shape == "diamond":
        return (f'<polygon class="pt" points="{x:.1f},{y - 6:.1f} {x + 7:.1f},{y:.1f} {x:.1f},{y + 6:.1f} '
                f'{x - 7:.1f},{y:.1f}" fill="{colour}">{t}</polygon>')
    return f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}">{t}</circle>'


def _series(sid: str, colour: str, body: str) -> str:
    return f'<g data-series="{escape(sid)}" stroke="{colour}">{body}</g>'


def km_plot(tables: list[dict[str, Any]], name: str, plot_id: str, cohort_names: dict[int, str]) -> dict[str, Any] | None:
    """Kaplan-Meier curves of a released `survival` table: one step line per site and cohort."""
    curves = []
    for t in tables:
        if t["name"] != name or t["kind"] != "survival":
            continue
        c = t["columns"]
        need = {"cohort_id", "time", "estimate"}
        if not need <= set(c):
            continue
        df = pd.DataFrame(t["rows"], columns=c)
        for cid, g in df.groupby("cohort_id", sort=True):
            g = g[g["time"].notna() & g["estimate"].notna()].sort_values("time")
            if not g.empty:
                curves.append((t["site"], int(cid), g))
    if not curves:
        return None
    tmax = max(float(g["time"].max()) for _, _, g in curves) or 1.0
    cv = _Canvas(0, tmax, 0, 1)
    cv.axes("days after index", "survival", [(v, show(v)) for v in _ticks(0, tmax)],
            [(v, show(v)) for v in (0, 0.25, 0.5, 0.75, 1)])
    series = []
    for k, (site, cid, g) in enumerate(curves):
        colour = COLOURS[k % len(COLOURS)]
        label = f"{site}: {cohort_names.get(cid, f'cohort {cid}')}"
        sid = f"{plot_id}-{k}"
        xs, ys = [float(v) for v in g["time"]], [float(v) for v in g["estimate"]]
        path = f"M{cv.x(xs[0]):.1f},{cv.y(ys[0]):.1f}"
        for i in range(1, len(xs)):
            path += f" H{cv.x(xs[i]):.1f} V{cv.y(ys[i]):.1f}"
        dots = []
        for _, row in g.iterrows():
            bits = [f"{label}: day {show(row['time'])}, survival {show(row['estimate'])}"]
            if "ci_lower" in g and "ci_upper" in g:
                bits.append(f"({show(row['ci_lower'])} to {show(row['ci_upper'])})")
            if "n_at_risk" in g:
                bits.append(f"at risk {show(row['n_at_risk'])}")
            dots.append(_point(cv.x(float(row["time"])), cv.y(float(row["estimate"])), colour, " ".join(bits)))
        cv.parts.append(_series(sid, colour, f'<path d="{path}" fill="none" stroke-width="2"/>' + "".join(dots)))
        series.append({"id": sid, "label": label, "colour": colour})
    return {"id": plot_id, "title": f"{name}: Kaplan-Meier curves by site", "svg": cv.svg(plot_id, f"{name}: "
            "Kaplan-Meier curves by site"), "series": series}


RATE = "incidence_per_1000py"
_MEASURES = {"n_persons", "n_events", "person_years", RATE, "ci_lower", "ci_upper", "n_outcomes", "n_cases"}


def incidence_plot(tables: list[dict[str, Any]], name: str, plot_id: str) -> dict[str, Any] | None:
    """Released incidence rates per 1,000 person-years by calendar year (or the first dimension), the
    other dimensions at their totals: one series per site."""
    found = [t for t in tables if t["name"] == name and RATE in t["columns"]]
    if not found:
        return None
    dims = [c for c in found[0]["columns"] if c not in _MEASURES]
    if not dims:
        return None
    dim = "calendar_year" if "calendar_year" in dims else dims[0]
    lines = []
    seen: set[str] = set()  # every level of the axis, released or not (a suppressed year keeps its place)
    for t in found:
        df = pd.DataFrame(t["rows"], columns=t["columns"])
        for other in dims:
            if other != dim:
                df = df[df[other].astype(str) == TOTAL]
        df = df[df[dim].astype(str) != TOTAL]
        seen |= {str(v) for v in df[dim]}
        df = df[df[RATE].notna()]
        if not df.empty:
            lines.append((t["site"], df))
    if not lines:
        return None
    levels = sorted(seen, key=natural_key)
    pos = {v: i for i, v in enumerate(levels)}
    top = max(float(df[RATE].max()) for _, df in lines) or 1.0
    cv = _Canvas(-0.5, len(levels) - 0.5, 0, top * 1.1)
    step = max(1, math.ceil(len(levels) / 12))
    cv.axes(dim.replace("_", " "), "per 1,000 person-years", [(pos[v], v) for v in levels[::step]],
            [(v, show(v)) for v in _ticks(0, top * 1.1)])
    series = []
    for k, (site, df) in enumerate(lines):
        colour = COLOURS[k % len(COLOURS)]
        sid = f"{plot_id}-{k}"
        df = df.assign(_x=[pos[str(v)] for v in df[dim]]).sort_values("_x")
        pts = [(cv.x(x), cv.y(float(r))) for x, r in zip(df["_x"], df[RATE], strict=True)]
        # a level the site did not release (suppressed, or nobody at risk) breaks the line: no segment
        # is drawn across it, so a missing year never looks like a value between its neighbours
        xs = list(df["_x"])
        path = " ".join(f"{'M' if i == 0 or xs[i] - xs[i - 1] > 1 else 'L'}{x:.1f},{y:.1f}"
                        for i, (x, y) in enumerate(pts))
        dots = [_point(x, y, colour, f"{site}, {dim.replace('_', ' ')} {v}: {show(r)} per 1,000 person-years "
                       f"({show(e)} events in {show(py)} person-years)")
                for (x, y), v, r, e, py in zip(pts, df[dim], df[RATE], df.get("n_events", [None] * len(df)),
                                                df.get("person_years", [None] * len(df)), strict=True)]
        cv.parts.append(_series(sid, colour, f'<path d="{path}" fill="none" stroke-width="1.5"/>' + "".join(dots)))
        series.append({"id": sid, "label": site, "colour": colour})
    title = f"{name}: incidence per 1,000 person-years by {dim.replace('_', ' ')}"
    return {"id": plot_id, "title": title, "svg": cv.svg(plot_id, title), "series": series}


def forest_plot(pooled: dict[str, Any], table: str, plot_id: str) -> dict[str, Any] | None:
    """Per-site and pooled ratios (95% CI) of every term of one pooled model, on a log axis."""
    rows = []
    for r in pooled_rows(pooled):
        if r["model"] != table:
            continue
        pooled_row = r["source"].startswith("pooled")
        short = r["source"].removesuffix(" effect")  # "east", or "pooled, fixed"
        rows.append((f"{r['term']} · {short}", r["estimate"], r["ci_lower"], r["ci_upper"],
                     "diamond" if pooled_row else "square", short.replace(",", "") if pooled_row else short))
    rows = [r for r in rows if all(isinstance(v, int | float) and math.isfinite(v) for v in r[1:4])]
    if not rows:
        return None
    lo, hi = min(min(r[2] for r in rows), 0.0), max(max(r[3] for r in rows), 0.0)
    pad = (hi - lo) * 0.05 or 0.1
    height = max(H, T + B + 22 * len(rows))
    global_h = H
    cv = _Canvas(lo - pad, hi + pad, 0, len(rows))
    # one row per estimate, top to bottom
    cv.y = lambda v: T + (v + 0.5) * (height - T - B) / len(rows)  # type: ignore[method-assign]
    ratios = [0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 4, 5, 10]
    ticks = [(math.log(r), show(float(r))) for r in ratios if lo - pad <= math.log(r) <= hi + pad]
    parts = cv.parts
    parts.append(f'<g class="axis" aria-hidden="true"><line x1="{L + 150}" y1="{height - B}" x2="{W - R}" '
                 f'y2="{height - B}" stroke="#4a5360"/>')
    cv.x = lambda v: L + 150 + (v - cv.x0) / (cv.x1 - cv.x0) * (W - L - 150 - R)  # type: ignore[method-assign]
    for v, label in ticks:
        parts.append(f'<line x1="{cv.x(v):.1f}" y1="{T}" x2="{cv.x(v):.1f}" y2="{height - B + 5}" '
                     f'stroke="{"#4a5360" if label == "1" else "#e3e7eb"}"/>'
                     f'<text class="tick" x="{cv.x(v):.1f}" y="{height - B + 18}" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{(L + 150 + W - R) / 2:.0f}" y="{height - 8}" text-anchor="middle">ratio '
                 '(log scale)</text></g>')
    series: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[str]] = {}
    for i, (label, est, low, high, shape, group) in enumerate(rows):
        if group not in series:
            series[group] = {"id": f"{plot_id}-{len(series)}", "label": group,
                             "colour": COLOURS[len(series) % len(COLOURS)]}
        s = series[group]
        y = cv.y(i)
        title = (f"{label}: ratio {show(math.exp(est))} ({show(math.exp(low))} to {show(math.exp(high))}); "
                 f"log {show(est)}")
        groups.setdefault(group, []).append(
            f'<text x="{L + 144}" y="{y + 4:.1f}" text-anchor="end" stroke="none" fill="#1b1f24">{escape(label)}</text>'
            f'<line x1="{cv.x(low):.1f}" y1="{y:.1f}" x2="{cv.x(high):.1f}" y2="{y:.1f}" stroke-width="2"/>'
            + _point(cv.x(est), y, s["colour"], title, shape))
    for group, body in groups.items():
        parts.append(_series(series[group]["id"], series[group]["colour"], "".join(body)))
    title = f"{table}: per-site and pooled ratios (95% CI)"
    svg = cv.svg(plot_id, title).replace(f'viewBox="0 0 {W} {global_h}"', f'viewBox="0 0 {W} {height}"')
    return {"id": plot_id, "title": title, "svg": svg, "series": list(series.values())}


def report_view(results: dict[str, Any], cohort_names: dict[int, str]) -> dict[str, Any]:
    """Everything the report page shows, from released results only."""
    tables = released_tables(results)
    pooled = results.get("pooled", {})
    km, inc = [], []
    for i, n in enumerate(sorted({t["name"] for t in tables if t["kind"] == "survival"})):
        p = km_plot(tables, n, f"km{i}", cohort_names)
        if p:
            km.append(p)
    for i, n in enumerate(sorted({t["name"] for t in tables if RATE in t["columns"]})):
        p = incidence_plot(tables, n, f"inc{i}")
        if p:
            inc.append(p)
    forest = [p for i, n in enumerate(sorted(pooled.get("tables", {}))) if (p := forest_plot(pooled, n, f"forest{i}"))]
    shown = [{**t, "cells": [[(show(v), is_number(v)) for v in row] for row in t["rows"]]} for t in tables]
    # I² is a pooled row's only: blank (not a dash, which means suppressed) on a site's row
    prows = [{**r, "cells": [("" if r[k] is None and k == "i2" else show(r[k]), is_number(r[k]))
                             for k in ("estimate", "se", "ratio", "ratio_lower", "ratio_upper", "i2")]}
             for r in pooled_rows(pooled)]
    return {"tables": shown, "km": km, "incidence": inc, "forest": forest, "pooled_rows": prows,
            "notes": pooled.get("notes", []), "excluded": pooled.get("excluded", []),
            "sites": sorted(results.get("sites", {}))}
