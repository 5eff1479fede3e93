"""The pooled report: one HTML page per study at the hub, from released numbers only.

Per site: its status and its released model estimates; pooled: fixed-effect and DerSimonian-Laird
estimates with I² for every released model term, with a forest plot of each site's and the pooled
ratios per model (plotly.js embedded once, nothing loaded from the network), and any federated
regression fits. Tables and figures are drawn as in the study report (`mercia.report.html`), so both
read the same way.
"""

from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd

from mercia.report.forest import forest_figure
from mercia.report.html import Plots, table_html

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3;overflow-wrap:break-word}th,td{text-align:left}th.num,td.num{text-align:right}
td.num{white-space:nowrap}table{max-width:100%}.note{color:#8a5a00}code{font-size:.9em;word-break:break-all}
figure.plot{margin:.5em 0 1em}
@media (max-width:960px){table{font-size:.76rem}th,td{padding:.15rem .25rem}th{overflow-wrap:anywhere}}
"""


def _exp(v: Any) -> float:
    return math.exp(v) if isinstance(v, int | float) and math.isfinite(v) else float("nan")


def _pooled_forest(table: str, rows: list[dict[str, Any]]) -> Any:
    """Per-site and pooled ratios of every term of one released model, grouped by term."""
    rows = [r for r in rows if all(math.isfinite(r[k]) and r[k] > 0 for k in ("ratio", "lower", "upper"))]
    return forest_figure(
        [f"{r['term']} · {r['source']}" for r in rows],
        [r["ratio"] for r in rows],
        [r["lower"] for r in rows],
        [r["upper"] for r in rows],
        title=f"{table}: per-site and pooled ratios (95% CI)",
        axis_title="ratio (log scale)",
        groups=["pooled" if r["source"].startswith("pooled") else "site" for r in rows],
        symbols={"site": "square", "pooled": "diamond-wide"},
    )


def quality_status_html(status: list[dict[str, Any]]) -> str:
    """Each site's data-quality status in one table row: the day of its run, pass rate, failed checks."""
    df = pd.DataFrame([{"site": s["site"], "DQ run": s["run_date"] or "", "pass rate %": s["pass_rate"],
                        "failed checks": s["failed_checks"], "note": s.get("error") or ""} for s in status])
    return table_html(df)


_SIDE = {"site": "site", "run_date": "DQ run", "pass_rate": "pass rate %", "pass_rate_conformance": "conformance %",
         "pass_rate_completeness": "completeness %", "pass_rate_plausibility": "plausibility %", "checks": "checks",
         "passed": "passed", "failed_checks": "failed", "not_applicable": "not applicable", "errors": "errors",
         "error": "note"}
# Headers wrap between words only (never inside one), dates never wrap; the failed checks' identifiers
# wrap at their <wbr>s.
_QUALITY_STYLE = ("th{overflow-wrap:normal!important}th,td{padding:.25em .4em}td:nth-child(2){white-space:nowrap}"
                  "table.failed td{white-space:normal}"
                  "@media (max-width:960px){th,td{padding:.15rem .2rem}}")
_COUNTS = ("checks", "passed", "failed", "not applicable", "errors")


def _sites_frame(sites: list[dict[str, Any]]) -> pd.DataFrame:
    """The sites side by side under readable headers; counts whole, a site without a summary says why."""
    df = pd.DataFrame([{c: s.get(c) for c in _SIDE} for s in sites], columns=list(_SIDE)).rename(columns=_SIDE)
    for c in _COUNTS:
        df[c] = pd.array([None if v is None or pd.isna(v) else int(v) for v in df[c]], dtype="Int64")
    df["note"] = df["note"].fillna("")
    return df if df["note"].astype(bool).any() else df.drop(columns="note")


def _failed_html(failed: list[dict[str, Any]]) -> str:
    """The sites' failed checks, worst first per site: a table and field may wrap at their underscores, a
    concept shows as 'name (id)' where the site named it, a count the site withheld as a dash."""
    from mercia.report.dq import wbr

    def count(v: Any) -> str:
        return "—" if v is None else f"{int(v):,}"

    def key(f: dict[str, Any]) -> tuple[Any, ...]:
        pct = f.get("pctViolatedRows")
        return (str(f["site"]), -(pct if pct is not None else -1), str(f["checkName"]), str(f["cdmTableName"]))

    rows = []
    for f in sorted(failed, key=key):
        where = str(f["cdmTableName"]).lower() + (f".{str(f['cdmFieldName']).lower()}" if f.get("cdmFieldName") else "")
        cid, name = f.get("conceptId") or "", f.get("conceptName") or ""
        concept = f"{name} ({cid})" if name and cid else str(cid)
        pct = f.get("pctViolatedRows")
        rows.append(f"<tr><td>{html.escape(str(f['site']))}</td><td>{wbr(f['checkName'])}</td>"
                    f"<td>{html.escape(str(f['category']))}</td><td>{wbr(where)}</td><td>{html.escape(concept)}</td>"
                    f"<td class=num>{count(f.get('numViolatedRows'))}</td>"
                    f"<td class=num>{count(f.get('numDenominatorRows'))}</td>"
                    f"<td class=num>{'—' if pct is None else f'{100 * pct:.2f}'}</td></tr>")
    head = ("<tr><th>site</th><th>check</th><th>category</th><th>table.field</th><th>concept</th>"
            "<th class=num>violated rows</th><th class=num>rows checked</th><th class=num>% violated</th></tr>")
    return f'<table class="failed"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def render_network_quality(answer: dict[str, Any]) -> str:
    """The hub's data-quality page of a project: the sites side by side (pass rates per category, failed
    checks) and each domain's released records per month by site, from the sites' released summaries."""
    import plotly.graph_objects as go

    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<link rel='icon' href='data:,'><title>Data quality: "
             f"{e(answer['project'])}</title><style>{_STYLE}{_QUALITY_STYLE}</style></head><body>",
             f"<h1>Data quality across project {e(answer['project'])}</h1>",
             "<p>Every number here was released by a site's disclosure control: a count it suppressed shows "
             "as a dash, and concept-level checks appear only where the site released their denominator. "
             "Pass rate: passed checks over those passed, failed or in error (not applicable ones left out).</p>",
             "<h2>Sites side by side</h2>"]
    parts.append(table_html(_sites_frame(answer["sites"])))
    parts.append("<h2>Failed checks</h2>")
    parts.append(_failed_html(answer["failed"]) if answer["failed"] else "<p>No site has a failed check.</p>")
    parts.append("<h2>Records per month</h2>")
    trends = pd.DataFrame(answer["trends"], columns=["site", "domain", "month", "records"])
    plots = Plots()
    for domain, d in trends.groupby("domain", sort=True):
        fig = go.Figure([go.Scatter(x=g["month"], y=g["records"], mode="lines+markers", name=str(site))
                         for site, g in d.groupby("site", sort=True)])
        fig.update_layout(title=f"{domain}: released records per month", xaxis_title="month",
                          yaxis_title="records", height=320, margin={"t": 40, "b": 40})
        parts.append(plots.html(fig))
    if trends.empty:
        parts.append("<p>No site released a monthly count.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_pooled_report(study: dict[str, Any], sites: list[dict[str, Any]], pooled: dict[str, Any],
                         federated: list[dict[str, Any]] | None = None,
                         quality: list[dict[str, Any]] | None = None) -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{e(study['name'])}: pooled "
             "results</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>{e(study['name'])}</h1>",
             f"<p>Package <code>{e(study['hash'])}</code>, project {e(study['project'])}, submitted by "
             f"{e(study['submitted_by'])} at {e(study['submitted_at'])}; status {e(study['status'])}.</p>",
             "<p>Every number here was released by a site's disclosure control; the hub only pools them.</p>",
             "<h2>Sites</h2>"]
    site_df = pd.DataFrame([{"site": s["site"], "status": s["status"], "note": s.get("last_error") or s.get("detail")
                             or ""} for s in sites])
    parts.append(table_html(site_df))
    if quality is not None:
        parts.append("<h2>Data quality of the sites</h2>")
        parts.append(quality_status_html(quality))
    parts.append("<h2>Meta-analysis of released estimates</h2>")
    if not pooled.get("tables"):
        parts.append("<p>No site released a model estimate to pool.</p>")
    plots = Plots()
    for table, terms in pooled.get("tables", {}).items():
        rows = []
        for term, m in terms.items():
            for site, est, se in zip(m["sites"], m["estimates"], m["se"], strict=True):
                rows.append({"term": term, "source": site, "ratio": _exp(est), "lower": _exp(est - 1.96 * se),
                             "upper": _exp(est + 1.96 * se), "I²": None})
            for kind in ("fixed", "random"):
                p = m[kind]
                rows.append({"term": term, "source": f"pooled, {kind} effect", "ratio": _exp(p["estimate"]),
                             "lower": _exp(p["ci_lower"]), "upper": _exp(p["ci_upper"]),
                             "I²": m["i2"] if kind == "random" else None})
        parts.append(f"<h3>{e(table)}</h3>")
        if any(math.isfinite(r["ratio"]) for r in rows):
            parts.append(plots.html(_pooled_forest(table, rows)))
        parts.append(table_html(pd.DataFrame(rows)))
    for note in pooled.get("notes", []):
        parts.append(f"<p class='note'>{e(note)}</p>")
    if pooled.get("excluded"):
        parts.append(f"<p class='note'>Closed without: {e(', '.join(pooled['excluded']))}.</p>")
    for fit in federated or []:
        parts.append(f"<h2>Federated {e(fit['model'])} model on {e(fit['analysis'])} "
                     f"(exact, {len(fit['sites'])} sites)</h2>")
        s = fit["summary"]
        parts.append(table_html(pd.DataFrame(s["rows"], columns=s["columns"]), digits=3))
        parts.append(f"<p>{fit['n']:,} rows, {fit['n_events']:,} events, {fit['iterations']} Newton rounds; "
                     f"converged: {fit['converged']}.</p>")
        for site, why in fit.get("left_out", {}).items():
            parts.append(f"<p class='note'>left out: {e(site)}: {e(why)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
