"""The feasibility report: one self-contained HTML file from a released trial feasibility answer.

The study report's conventions: every number shown is a released one (suppressed shows as "—"),
plotly.js is embedded once (the report opens offline), each figure sits in a <figure> whose aria-label
names it, and text is escaped (jinja2 autoescape). Sections: the funnel per site (bars), the what-if
table, the breakdowns, and the recruitment projection (newly eligible per month, and the cumulative
consented recruits with their 95% band) per site and pooled.
"""

from __future__ import annotations

import html
from typing import Any

import jinja2

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ trial }} — Mercia trial feasibility report</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
         padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
  h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.5rem; }
  table { border-collapse: collapse; margin: 0.6rem 0 1.2rem; font-size: 0.88rem; max-width: 100%; }
  th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
  th { background: #f2f2f2; } td.num, th.num { text-align: right; white-space: nowrap; }
  figure.plot { margin: 0.5rem 0 1rem; }
  .note { color: #7a4b00; background: #fff7e6; padding: 0.3rem 0.6rem; border-left: 3px solid #e0a000; }
  nav a { margin-right: 1rem; }
</style>
</head>
<body>
<h1>{{ trial }}: feasibility</h1>
<nav><a href="#funnel">Funnel</a><a href="#what-if">What if</a><a href="#breakdowns">Breakdowns</a>
<a href="#recruitment">Recruitment</a></nav>
<table class="meta">
<tr><td>sites</td><td>{{ sites | join(", ") }}</td></tr>
<tr><td>eligible persons (released{% if sites|length > 1 %}, total{% endif %})</td><td class="num">{{ eligible }}</td></tr>
<tr><td>how the numbers were released</td><td>{{ privacy }}</td></tr>
</table>
<p class="note">Every number in this report was released under each site's disclosure policy: suppressed
numbers show as —{% if sites|length > 1 %}, and totals add the numbers the sites released{% endif %}.</p>
{% if not_applied %}<h3>Not applied</h3><p>These items of the trial were not counted (still to review):</p>
<ul>{% for n in not_applied %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}

<h2 id="funnel">Funnel</h2>
{{ funnel_table | safe }}
{% for f in funnel_plots %}{{ f | safe }}{% endfor %}

<h2 id="what-if">What if a criterion were removed</h2>
<p>Eligible persons gained if each criterion alone were dropped (persons meeting every other criterion).</p>
{{ what_if_table | safe }}

<h2 id="breakdowns">Breakdowns of the eligible</h2>
{% for b in breakdowns %}<h3>{{ b.title }}</h3>{{ b.table | safe }}{% endfor %}

<h2 id="recruitment">Recruitment projection</h2>
{{ recruitment_table | safe }}
{% for f in recruitment_plots %}{{ f | safe }}{% endfor %}
<p class="hint">Model: Poisson GLM of newly eligible persons per month (negative binomial when the
Cameron-Trivedi test finds overdispersion at p &lt; 0.05; a 12-month harmonic pair kept when it lowers the
AIC by more than 2); months to target by simulation from the fitted model with the consent rate given.</p>
</body>
</html>
"""


def _n(v: Any) -> str:
    return "—" if v is None else f"{int(v):,}"


def _table(header: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    head = "".join(f'<th{" class=num" if i >= numeric_from else ""}>{html.escape(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(
        f'<td{" class=num" if i >= numeric_from else ""}>{html.escape(str(c))}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Plots:
    def __init__(self) -> None:
        self.first = True

    def html(self, fig: Any, label: str) -> str:
        out = fig.to_html(full_html=False, include_plotlyjs=self.first, include_mathjax=False,
                          config={"displaylogo": False, "responsive": True})
        self.first = False
        return f'<figure class="plot" aria-label="{html.escape(label, quote=True)}">{out}</figure>'


def _sites(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-site answers that released numbers (a local answer is its own one site)."""
    if "sites" in answer:
        return [a for a in answer["sites"] if "error" not in a]
    return [{**answer, "site": answer.get("site") or "local"}]


def render_feasibility_report(answer: dict[str, Any]) -> str:
    """The report's HTML from `local_feasibility` (plus its recruitment) or the hub's answer."""
    import plotly.graph_objects as go

    plots = _Plots()
    sites = _sites(answer)
    names = [f["criterion"] for f in answer["funnel"]]
    multi = "sites" in answer
    # Funnel: one column per site (and the total).
    header = ["criterion", *[s["site"] for s in sites], *(["total"] if multi else [])]
    rows = [["initial events", *[_n(s.get("initial")) for s in sites], *([""] if multi else [])]]
    for j, n in enumerate(names):
        rows.append([f"{j + 1}. {n}", *[_n(s["funnel"][j]["remaining"]) for s in sites],
                     *([_n(answer["funnel"][j]["remaining"])] if multi else [])])
    rows.append(["eligible", *[_n(s.get("eligible")) for s in sites], *([_n(answer["eligible"])] if multi else [])])
    funnel_plots = []
    for s in sites:
        steps = ["initial events", *[f"{j + 1}. {n}" for j, n in enumerate(names)], "eligible"]
        vals = [s.get("initial"), *[f["remaining"] for f in s["funnel"]], s.get("eligible")]
        fig = go.Figure(go.Bar(x=[v or 0 for v in vals], y=steps, orientation="h",
                               text=["suppressed" if v is None else f"{v:,}" for v in vals], textposition="auto"))
        title = f"Funnel at {s['site']}"
        fig.update_layout(title=title, xaxis_title="persons remaining", yaxis={"autorange": "reversed"},
                          height=120 + 34 * len(steps), margin={"l": 10, "r": 10, "t": 50, "b": 40})
        funnel_plots.append(plots.html(fig, title))
    what_if = _table(["criterion removed", *[s["site"] for s in sites], *(["total"] if multi else [])],
                     [[f"{j + 1}. {n}", *[_n(s["what_if"][j]["gained"]) for s in sites],
                       *([_n(answer["what_if"][j]["gained"])] if multi else [])] for j, n in enumerate(names)])
    breakdowns = []
    for dim, title in (("age_band", "Age band at first eligibility"), ("sex", "Sex"), ("ethnicity", "Ethnicity")):
        levels: list[str] = []
        for s in sites:
            levels += [c["level"] for c in s["breakdowns"].get(dim, []) if c["level"] not in levels]
        cells = [{c["level"]: c["persons"] for c in s["breakdowns"].get(dim, [])} for s in sites]
        breakdowns.append({"title": title, "table": _table(
            [dim.replace("_", " "), *[s["site"] for s in sites]], [[lv, *[_n(c.get(lv)) for c in cells]] for lv in levels])})
    # Recruitment: per site, and pooled when several.
    rec_rows, rec_plots = [], []
    parts = [(s["site"], s.get("recruitment"), s["monthly"]) for s in sites]
    if multi:
        parts.append(("pooled", answer.get("recruitment"), answer.get("monthly")))
    elif answer.get("recruitment") is not None:
        parts = [(sites[0]["site"], answer["recruitment"], answer["monthly"])]
    for name, rec, monthly in parts:
        if not rec:
            continue
        if "error" in rec:
            rec_rows.append([name, rec["error"], "", "", ""])
            continue
        m, p = rec["model"], rec.get("projection")
        rec_rows.append([name, f"{m['family']}{', seasonal' if m['seasonal'] else ''}",
                         f"{m['rate_per_month']:.1f} ({m['rate_ci'][0]:.1f} to {m['rate_ci'][1]:.1f})",
                         "" if p is None else f"{p['median_months']:g} ({p['interval_months'][0]:g} to "
                                              f"{p['interval_months'][1]:g})",
                         "" if p is None else f"{p['expected_months']:g}"])
        if monthly:
            fig = go.Figure(go.Bar(x=monthly["months"], y=[v or 0 for v in monthly["persons"]], name="newly eligible"))
            title = f"Newly eligible persons per month at {name}"
            fig.update_layout(title=title, yaxis_title="persons", height=320, margin={"t": 50, "b": 40})
            rec_plots.append(plots.html(fig, title))
        if p is not None:
            c = p["curve"]
            fig = go.Figure([
                go.Scatter(x=c["month"], y=c["high"], line={"width": 0}, showlegend=False, hoverinfo="skip"),
                go.Scatter(x=c["month"], y=c["low"], fill="tonexty", line={"width": 0}, name="95% band"),
                go.Scatter(x=c["month"], y=c["median"], name="median"),
            ])
            fig.add_hline(y=p["target"], line_dash="dot", annotation_text=f"target {p['target']:,}")
            title = f"Consented recruits at {name} (consent {p['consent']:g})"
            fig.update_layout(title=title, xaxis_title="months from start", yaxis_title="recruits", height=360,
                              margin={"t": 50, "b": 40})
            rec_plots.append(plots.html(fig, title))
    recruitment_table = _table(["site", "model", "newly eligible per month (95% CI)",
                                "months to target: median (95% interval)", "expected months N/(λc)"], rec_rows) \
        if rec_rows else "<p>No recruitment model (no released monthly history).</p>"
    first = sites[0] if sites else {}
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_TEMPLATE).render(
        trial=answer.get("trial") or "trial", sites=[s["site"] for s in sites], eligible=_n(answer.get("eligible")),
        privacy=(first.get("privacy") or {}).get("mechanism", ""), not_applied=answer.get("not_applied") or [],
        funnel_table=_table(header, rows), funnel_plots=funnel_plots, what_if_table=what_if, breakdowns=breakdowns,
        recruitment_table=recruitment_table, recruitment_plots=rec_plots)
