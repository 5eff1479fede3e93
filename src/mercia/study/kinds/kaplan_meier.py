"""`kaplan_meier`: Kaplan-Meier curves of time to an outcome, one per target cohort; the report redraws
each curve, its CI, the numbers at risk and the medians from the released counts alone. The report's
"Kaplan-Meier" group is defined here."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from mercia import limits
from mercia.analyses import AnalysisResult, SurvivalSettings, kaplan_meier
from mercia.analyses.survival import km_estimates, median_survival
from mercia.report.html import ReportGroup, Section, esc, steps, table_html
from mercia.study.kinds.base import AnalysisKind, Key

if TYPE_CHECKING:
    from mercia.cdm import Cdm
    from mercia.report.study import StudyReport

SURVIVAL = ReportGroup(id="survival", title="Kaplan-Meier", nav="Survival", order=30)
NOT_REACHED = "not reached"
_AT_RISK_HINT = (
    '<p class="hint">Exact at day 0 and just after each released step of the curve; in between, the censorings\n'
    "inside a pooled step are not released, so a range gives the numbers after the steps on either side.</p>"
)


class KaplanMeierAnalysis(AnalysisKind):
    """Kaplan-Meier curves of time to an outcome, one per target cohort, with a median per curve."""

    listing_order: ClassVar[int] = 60
    report_groups: ClassVar[tuple[ReportGroup, ...]] = (SURVIVAL,)

    type: Literal["kaplan_meier"]
    targets: list[Key] = Field(
        min_length=1, max_length=limits.MAX_LIST,
        description="keys of the cohorts followed from their start (index); one curve each",
    )
    outcome: Key = Field(description="key of the outcome cohort: its first start in time at risk is the event")
    settings: SurvivalSettings = Field(SurvivalSettings(), description="time at risk and censoring")
    alpha: float = Field(
        0.05, gt=0, lt=1, description="1 - confidence level of the curves' (log-log) intervals: 0.05 gives 95%"
    )

    def cohorts_used(self) -> list[str]:
        return [*self.targets, self.outcome]

    def run(self, cdm: Cdm, ids: dict[str, int], *, name: str) -> AnalysisResult:
        return kaplan_meier(cdm, [ids[c] for c in self.targets], ids[self.outcome], self.settings, alpha=self.alpha,
                            name=name)

    def report(self, r: StudyReport) -> list[Section]:
        p = self.table_prefix()
        k = km(r, p, self.alpha)
        risk = f"<h4>Number at risk</h4>{k['risk']}\n{_AT_RISK_HINT}" if k["risk"] else ""
        return [Section(SURVIVAL, f"\n<h3>{esc(k['title'])}</h3>\n{r.population(p)}\n{k['plot']}\n{risk}\n"
                                  f"{k['summary']}\n")]


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


def km(r: StudyReport, prefix: str, alpha: float) -> dict[str, Any]:
    """The curves with their CIs, the numbers at risk and the medians, from the released curve."""
    import plotly.graph_objects as go

    df = r.data(prefix)
    out: dict[str, Any] = {"title": prefix, "plot": "", "risk": "", "summary": ""}
    summ = r.data(f"{prefix}_summary")
    if summ is not None:
        s = summ.copy()
        s.insert(0, "cohort", [r.label(c) for c in s["cohort_id"]])
        out["summary"] = table_html(s.drop(columns=["cohort_id"]))
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
        name = r.label(cid)
        t = est["time"].to_numpy()
        fig.add_trace(
            go.Scatter(x=t, y=est["estimate"], mode="lines", line_shape="hv", name=name, legendgroup=name)
        )
        # The CI band as a step-shaped polygon drawn point by point: a reversed path with
        # line_shape "hv" would step the wrong way on the way back and misplace the band.
        sx, su = steps(t, est["ci_upper"].to_numpy(dtype=float))
        _, sl = steps(t, est["ci_lower"].to_numpy(dtype=float))
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
    out["plot"] = r.plots.html(fig)
    # Number at risk at six evenly spaced times, from released risk sets only.
    tmax = max(grid) if grid else 0.0
    times = sorted({round(tmax * k / 5) for k in range(6)})
    rows = [{"cohort": r.label(cid), **at_risk_row(est, times)} for cid, est in curves.items()]
    out["risk"] = table_html(pd.DataFrame(rows), 0)
    if summ is not None:
        # Median survival and its CI read off the curve recomputed from released counts (the
        # site-side medians are not released): the first time each of the estimate and its bounds
        # is at or below 0.5; "not reached" where the curve never gets there.
        medians = {cid: median_survival(est) for cid, est in curves.items()}
        s = summ.copy()
        s.insert(0, "cohort", [r.label(c) for c in s["cohort_id"]])
        key = pd.to_numeric(s["cohort_id"], errors="coerce")
        nan3 = (math.nan, math.nan, math.nan)
        for i, col in enumerate(("median (days)", "median lower", "median upper")):
            s[col] = [median_text(medians.get(c, nan3)[i]) for c in key]
        out["summary"] = table_html(s.drop(columns=["cohort_id"]), 0)
    return out
