"""The methods benchmark's report: plots (estimates against the truth, coverage by true effect size)
as an HTML page, and a short markdown summary. Site-internal, as the benchmark's tables are."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mercia.report.html import COLOURS, Plots, esc, table_html

if TYPE_CHECKING:
    from mercia.evaluation.methods import BenchmarkResult

NOTICE = ("Site-internal: these results rest on row-level data at this site. Releasing them goes through "
          "the disclosure door (mercia.disclosure.release), as every result that leaves a site does.")


def estimates_figure(est: pd.DataFrame, plots: Plots) -> str:
    """Each control's estimate and 95% CI against its true effect size, one trace per method."""
    import plotly.graph_objects as go

    methods = list(dict.fromkeys(est["method"]))
    sizes = sorted(est["true_effect_size"].unique())
    fig = go.Figure()
    width = 0.6 / max(len(methods), 1)
    for k, m in enumerate(methods):
        d = est[(est["method"] == m) & est["log_rr"].notna()]
        pos = np.searchsorted(sizes, d["true_effect_size"]) + (k - (len(methods) - 1) / 2) * width
        rng = np.random.default_rng(k)
        x = pos + rng.uniform(-width / 3, width / 3, len(d))
        fig.add_trace(go.Scatter(
            x=x, y=d["rr"], mode="markers", name=m, marker={"size": 5, "color": COLOURS[k % len(COLOURS)]},
            error_y={"type": "data", "symmetric": False, "array": d["ci_upper"] - d["rr"],
                     "arrayminus": d["rr"] - d["ci_lower"], "thickness": 0.6, "width": 0},
            text=d["pair"] + ": " + d["negative_control"].astype(str),
            hovertemplate="%{text}<br>RR %{y:.2f}<extra>" + esc(m) + "</extra>"))
    for i, s in enumerate(sizes):
        fig.add_shape(type="line", x0=i - 0.4, x1=i + 0.4, y0=s, y1=s, line={"color": "black", "dash": "dot"})
    fig.update_layout(title="Estimates and 95% CIs against the true effect size (dotted: the truth)", height=480,
                      yaxis={"type": "log", "title": "hazard ratio"},
                      xaxis={"tickvals": list(range(len(sizes))), "ticktext": [f"{s:g}" for s in sizes],
                             "title": "true effect size"})
    return plots.html(fig)


def coverage_figure(metrics: pd.DataFrame, plots: Plots) -> str:
    import plotly.graph_objects as go

    m = metrics[metrics["true_effect_size"] != "all"]
    fig = go.Figure()
    for k, method in enumerate(dict.fromkeys(m["method"])):
        d = m[m["method"] == method]
        fig.add_trace(go.Bar(x=d["true_effect_size"], y=d["coverage"], name=method,
                             marker={"color": COLOURS[k % len(COLOURS)]}))
    fig.add_hline(y=0.95, line_dash="dash", line_color="black")
    fig.update_layout(title="Coverage of the true effect by the 95% CI, by true effect size (dashed: 95%)",
                      barmode="group", height=420, yaxis={"range": [0, 1], "title": "coverage"},
                      xaxis={"title": "true effect size", "type": "category"})
    return plots.html(fig)


def report_html(result: BenchmarkResult) -> str:
    plots = Plots()
    figs = estimates_figure(result.estimates, plots) + coverage_figure(result.metrics, plots)
    notes = "".join(f"<li>{esc(n)}</li>" for n in result.notes)
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(result.config.name)}</title></head><body><main>"
            f"<h1>{esc(result.config.name)}</h1><p>{esc(NOTICE)}</p>"
            f"{'<ul>' + notes + '</ul>' if notes else ''}"
            f"<h2>Metrics per method and true effect size</h2>{table_html(result.metrics)}"
            f"<h2>Plots</h2>{figs}"
            f"<h2>Positive controls</h2>{table_html(result.truth)}</main></body></html>")


def _md_table(df: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "—" if np.isnan(v) else f"{v:.2f}"
        return str(v)

    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "".join("| " + " | ".join(cell(v) for v in row) + " |\n" for row in df.itertuples(index=False))


def summary_markdown(result: BenchmarkResult) -> str:
    est, truth = result.estimates, result.truth
    n_nc = est[est["true_effect_size"] == 1][["pair", "outcome_id"]].drop_duplicates().shape[0]
    n_pc = int((truth["status"] == "injected").sum())  # over all sites when there are several
    overall = result.metrics[result.metrics["true_effect_size"] == "all"].drop(columns="true_effect_size")
    cov = result.metrics.pivot(index="method", columns="true_effect_size", values="coverage").reset_index()
    lines = [f"# {result.config.name}", "", NOTICE, "",
             f"{len(result.config.pairs)} exposure pair(s), {n_nc} negative controls, {n_pc} positive controls"
             + (f" over {truth['site'].nunique()} sites " if "site" in truth else " ") +
             f"(true effect sizes {', '.join(f'{s:g}' for s in result.config.effect_sizes)}).", ""]
    lines += [f"- {n}" for n in result.notes] + ([""] if result.notes else [])
    lines += ["## Metrics over all controls", "", _md_table(overall), "## Coverage by true effect size", "",
              _md_table(cov), "Files: estimates.parquet (and .csv), truth.csv, metrics.csv, metrics_by_pair.csv, "
              "report.html (plots).", ""]
    return "\n".join(lines)
