"""`incidence`: incidence rates of an outcome per 1,000 person-years (by age group, sex, calendar year,
time-at-risk window), with exact Poisson intervals; its report plots and tables rates recomputed from
the released events and person-time. The report's "Incidence and prevalence" group is defined here."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, field_validator

from mercia.analyses import AnalysisResult, IncidenceSettings, incidence
from mercia.analyses.incidence import rate_ci
from mercia.report.html import (
    COLOURS,
    TOTAL,
    ReportGroup,
    Section,
    esc,
    natural_key,
    natural_order,
    num,
    table_html,
)
from mercia.study.kinds.base import AnalysisKind, Key, no_ids

if TYPE_CHECKING:
    from mercia.cdm import Cdm
    from mercia.report.study import StudyReport

INCIDENCE = ReportGroup(id="incidence", title="Incidence and prevalence", nav="Incidence", order=20,
                        slots=("incidence", "prevalence", "other"), nav_break=True)


class IncidenceAnalysis(AnalysisKind):
    """Incidence rates of an outcome per 1,000 person-years, with exact Poisson confidence intervals."""

    listing_order: ClassVar[int] = 40
    report_groups: ClassVar[tuple[ReportGroup, ...]] = (INCIDENCE,)
    # The settings are validated by this model (without its cohort ids, which come from the keys).
    SETTINGS_MODEL: ClassVar[type[BaseModel]] = IncidenceSettings
    SETTINGS_EXCLUDE: ClassVar[tuple[str, ...]] = ("outcome_cohort_id", "denominator_cohort_id")

    type: Literal["incidence"]
    outcome: Key = Field(description="key of the outcome cohort: its entries' start dates are the events")
    denominator: Key | None = Field(
        None,
        description="key of the cohort whose time (each entry, within observation) is at risk; "
        "None: the whole observed population (every observation period)",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="the incidence settings; every one has a default"
    )

    @field_validator("settings")
    @classmethod
    def _settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        no_ids(v, "incidence", {"outcome_cohort_id": "outcome", "denominator_cohort_id": "denominator"})
        # Validated (and defaults filled in) with placeholder ids; the real ids come at run time.
        out = IncidenceSettings(**v, outcome_cohort_id=0).model_dump(
            mode="json", exclude={"outcome_cohort_id", "denominator_cohort_id"}
        )
        # Settings added later are left out at their defaults, so an approved package keeps its hash.
        for k, default in (("time_at_risk", []), ("clean_window_days", None)):
            if out[k] == default:
                del out[k]
        return out

    def cohorts_used(self) -> list[str]:
        return [self.outcome, *([self.denominator] if self.denominator else [])]

    def build(self, ids: dict[str, int]) -> IncidenceSettings:
        return IncidenceSettings(
            **self.settings,
            outcome_cohort_id=ids[self.outcome],
            denominator_cohort_id=ids[self.denominator] if self.denominator else None,
        )

    def run(self, cdm: Cdm, ids: dict[str, int], *, name: str) -> AnalysisResult:
        return incidence(cdm, self.build(ids), name=name)

    def report(self, r: StudyReport) -> list[Section]:
        p = self.table_prefix()
        tar = ["tar"] if self.settings.get("time_at_risk") else []  # a dimension: one level per window
        t = incidence_tables(r, p, [*tar, *self.settings["by"]], float(self.settings["alpha"]))
        return [Section(INCIDENCE, f"\n<h3>{esc(t['title'])}</h3>\n{r.population(p)}\n{''.join(t['plots'])}\n"
                                   f"{t['table']}\n", slot="incidence")]


def incidence_tables(r: StudyReport, prefix: str, by: list[str], alpha: float) -> dict[str, Any]:
    """Rates and their CIs recomputed from released events and person-time: a plot per dimension
    (age group, calendar year, sex) and the table (its margins only when it is long)."""
    df = r.data(prefix)
    out: dict[str, Any] = {"title": prefix, "plots": [], "table": ""}
    if df is None or df.empty:
        out["table"] = '<p class="empty">No rows released (nobody at risk, or all suppressed).</p>'
        return out
    d = df.copy()
    ev, py = num(d["n_events"]), num(d["person_years"])
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
            out["plots"].append(r.plots.html(fig))
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
    out["table"] = table_html(shown)
    return out


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
        rate, lo, hi = num(g["rate_per_1000py"]), num(g["ci_lower"]), num(g["ci_upper"])
        ev = num(g["n_events"])
        released = ~np.isnan(rate)
        has = released & (ev > 0)
        zero = released & (ev == 0)
        order = np.argsort(x)
        colour = COLOURS[k % len(COLOURS)]
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

