"""Report figures of a comparative cohort analysis, drawn from its *released* tables only:
preference-score distributions, covariate balance before vs after, and a forest plot (the section they
go in is the `cohort_method` type's, `mercia.study.kinds.cohort_method`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from mercia.analyses.balance import SMD_THRESHOLD


def preference_figure(dist: pd.DataFrame | None, prefix: str, html: Callable[[object], str]) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if dist is None or dist.empty:
        return ""
    pops = list(dict.fromkeys(dist["population"]))
    fig = make_subplots(rows=1, cols=len(pops), subplot_titles=pops, shared_yaxes=True)
    for k, pop in enumerate(pops, start=1):
        for arm, colour in (("target", "#1f77b4"), ("comparator", "#d62728")):
            d = dist[(dist["population"] == pop) & (dist["arm"] == arm)]
            n = pd.to_numeric(d["n"], errors="coerce")
            share = n / n.sum() if n.sum() else n  # suppressed bins (NaN) are gaps
            mids = [np.mean([float(x) for x in b.split("-")]) for b in d["preference_bin"]]
            fig.add_trace(go.Scatter(x=mids, y=share, mode="lines", fill="tozeroy", name=arm, line={"color": colour},
                                     showlegend=k == 1), row=1, col=k)
        fig.add_vrect(x0=0.3, x1=0.7, fillcolor="grey", opacity=0.1, line_width=0, row=1, col=k)
    fig.update_layout(title=f"{prefix}: preference score distribution (shaded: equipoise 0.3-0.7)", height=340)
    fig.update_xaxes(title_text="preference score", range=[0, 1])
    return html(fig)


def balance_figure(bal: pd.DataFrame | None, title: str, html: Callable[[object], str]) -> str:
    import plotly.graph_objects as go

    if bal is None or bal.empty:
        return ""
    d = bal.dropna(subset=["before_smd", "after_smd"])
    if d.empty:
        return ""
    x, y = d["before_smd"].abs(), d["after_smd"].abs()
    top = float(max(x.max(), y.max(), SMD_THRESHOLD) * 1.05)
    fig = go.Figure(go.Scattergl(x=x, y=y, mode="markers", text=d["covariate_name"], marker={"size": 5, "opacity": 0.6},
                                 hovertemplate="%{text}<br>before %{x:.3f}<br>after %{y:.3f}<extra></extra>"))
    fig.add_hline(y=SMD_THRESHOLD, line_dash="dash", line_color="red")
    fig.add_shape(type="line", x0=0, y0=0, x1=top, y1=top, line={"color": "grey", "dash": "dot"})
    fig.update_layout(title=f"{title}: |SMD| before vs after ({len(d)} covariates; {int((y > SMD_THRESHOLD).sum())} "
                      f"above {SMD_THRESHOLD} after)", xaxis_title="|SMD| before", yaxis_title="|SMD| after",
                      height=420, xaxis_range=[0, top], yaxis_range=[0, top])
    return html(fig)


def forest_figure(est: pd.DataFrame | None, prefix: str, html: Callable[[object], str]) -> str:
    from mercia.report.forest import forest_figure as forest

    if est is None or est.empty:
        return ""
    d = est.dropna(subset=["rr", "ci_lower", "ci_upper"])
    if d.empty:
        return '<p class="empty">No estimate released (suppressed, blocked, or not estimable).</p>'
    labels = [f"{o} ({t.replace('_', ' ')}) · {a}" for o, t, a in zip(d["outcome"], d["outcome_type"], d["adjustment"],
                                                                         strict=True)]
    rows: list[str] = []
    est_: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    groups: list[str] = []
    cal = {"calibrated_log_rr", "calibrated_ci_lower", "calibrated_ci_upper"} <= set(d.columns)
    for label, r in zip(labels, d.itertuples(index=False), strict=True):
        rows.append(label)
        est_.append(float(r.rr))
        lo.append(float(r.ci_lower))
        hi.append(float(r.ci_upper))
        groups.append("estimate")
        if cal and not pd.isna(r.calibrated_log_rr) and not pd.isna(r.calibrated_ci_lower) \
                and not pd.isna(r.calibrated_ci_upper):
            rows.append(f"{label} · calibrated")
            est_.append(float(np.exp(r.calibrated_log_rr)))
            lo.append(float(r.calibrated_ci_lower))
            hi.append(float(r.calibrated_ci_upper))
            groups.append("calibrated")
    fig = forest(rows, est_, lo, hi, title=f"{prefix}: relative risks (95% CI)",
                 axis_title="hazard / rate ratio (log scale)", groups=groups,
                 symbols={"estimate": "square", "calibrated": "diamond"})
    return html(fig)
