"""`compare_cohorts`: Table 1 of two cohorts side by side, and the standardized mean difference of every
covariate, recomputed in the report from released counts, means and SDs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pandas as pd
from pydantic import Field

from mercia.analyses import AnalysisResult, CharacterizationSettings, compare_cohorts
from mercia.analyses.characterization import smd_binary, smd_continuous
from mercia.report.html import TOTAL, ReportGroup, Section, esc, num, table_html
from mercia.study.kinds.base import AnalysisKind, Key
from mercia.study.kinds.characterization import TABLE1, table1_section

if TYPE_CHECKING:
    from mercia.cdm import Cdm
    from mercia.report.study import StudyReport

SMD_LABEL_CHARS = 48


class CompareCohortsAnalysis(AnalysisKind):
    """Table 1 of two cohorts side by side, with the standardized mean difference of every covariate."""

    listing_order: ClassVar[int] = 20
    report_groups: ClassVar[tuple[ReportGroup, ...]] = (TABLE1,)

    type: Literal["compare_cohorts"]
    target: Key = Field(description="key of the target cohort")
    comparator: Key = Field(description="key of the comparator cohort")
    settings: CharacterizationSettings = Field(
        CharacterizationSettings(), description="what to characterize, as for `characterization`"
    )

    def cohorts_used(self) -> list[str]:
        return [self.target, self.comparator]

    def run(self, cdm: Cdm, ids: dict[str, int], *, name: str) -> AnalysisResult:
        return compare_cohorts(cdm, ids[self.target], ids[self.comparator], self.settings, name=name)

    def report(self, r: StudyReport) -> list[Section]:
        p = self.table_prefix()
        out = [table1_section(r, p)]
        s = smd(r, p, r.ids[self.target], r.ids[self.comparator])
        if s:
            cont = f"<h4>Continuous covariates: released means and SDs</h4>{s['continuous']}" if s["continuous"] else ""
            out.append(Section(
                TABLE1,
                f"\n<h3>Covariate balance: {esc(s['title'])}</h3>\n<p>{esc(s['n_imbalanced'])} of the covariates "
                f"shown have |SMD| &gt; 0.1 ({esc(s['n_binary'])} binary and\n{esc(s['n_continuous'])} continuous "
                f"covariates released; at most 40 shown).</p>\n{s['plot']}\n{cont}\n",
                slot="smd",
            ))
        return out


def unique_short(labels: list[str], most: int) -> list[str]:
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


def binary_smd(r: StudyReport, prefix: str, target: int, comparator: int) -> pd.DataFrame:
    """Binary covariates (demographic levels, concepts per window) from released counts and released
    cohort sizes (never the site-side column)."""
    df = r.data(f"{prefix}_smd")
    age = r.data(f"{prefix}_age")
    empty = pd.DataFrame(columns=["label", "smd", "kind"])
    if df is None or age is None or df.empty or age.empty:
        return empty
    sizes = {int(a.cohort_id): a.n for a in age.itertuples(index=False)}
    nt, nc = sizes.get(target), sizes.get(comparator)
    if nt is None or nc is None or pd.isna(nt) or pd.isna(nc) or not nt or not nc:
        return empty
    d = df.dropna(subset=["n_target", "n_comparator"]).copy()
    d = d[d["concept_name"].astype(str) != TOTAL]
    d["smd"] = smd_binary(num(d["n_target"]) / float(nt), num(d["n_comparator"]) / float(nc))
    d["label"] = [f"{w} · {n}" for w, n in zip(d["window"], d["concept_name"], strict=True)]
    return d.assign(kind="binary")[["label", "smd", "kind"]].dropna(subset=["smd"])


def continuous_smd(r: StudyReport, prefix: str, target: int, comparator: int) -> pd.DataFrame:
    """Age and measurement values: (m1 - m2) / sqrt((s1^2 + s2^2) / 2) from the released means and
    SDs of each cohort (missing where either was withheld by the magnitude rules)."""
    rows: list[dict[str, Any]] = []
    age = r.data(f"{prefix}_age")
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
    meas = r.data(f"{prefix}_measurements")
    if meas is not None and len(meas):
        key = ["window", "concept_id", "concept_name", "unit_concept_id"]
        m = meas.assign(cohort_id=pd.to_numeric(meas["cohort_id"], errors="coerce"))
        t = m[m["cohort_id"] == target].set_index(key)[["mean", "sd"]]
        c = m[m["cohort_id"] == comparator].set_index(key)[["mean", "sd"]]
        both = t.join(c, how="inner", lsuffix="_target", rsuffix="_comparator").reset_index()
        for x in both.itertuples(index=False):
            rows.append(
                {
                    "label": f"{x.window} · {x.concept_name or x.concept_id} (latest value)",
                    "mean_target": x.mean_target,
                    "sd_target": x.sd_target,
                    "mean_comparator": x.mean_comparator,
                    "sd_comparator": x.sd_comparator,
                }
            )
    cols = ["label", "mean_target", "sd_target", "mean_comparator", "sd_comparator"]
    d = pd.DataFrame(rows, columns=cols)
    for c in cols[1:]:
        d[c] = num(d[c])
    d["smd"] = smd_continuous(d["mean_target"], d["sd_target"], d["mean_comparator"], d["sd_comparator"])
    return d.assign(kind="continuous").dropna(subset=["smd"])


def smd(r: StudyReport, prefix: str, target: int, comparator: int) -> dict[str, Any] | None:
    """The balance plot (at most 40 covariates, the least balanced) and the continuous covariates' table."""
    import plotly.graph_objects as go

    binary = binary_smd(r, prefix, target, comparator)
    continuous = continuous_smd(r, prefix, target, comparator)
    d = pd.concat([binary, continuous[["label", "smd", "kind"]]], ignore_index=True)
    if d.empty:
        return None
    d["abs"] = d["smd"].abs()
    d = d.sort_values("abs", ascending=False).head(40).iloc[::-1]
    # Long concept names are shortened on the axis (the full name is in the hover), so the labels
    # leave the plot most of the width; distinct labels stay distinct.
    d["short"] = unique_short([str(x) for x in d["label"]], SMD_LABEL_CHARS)
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
        title=f"Standardized mean differences: {r.label(target)} vs {r.label(comparator)}",
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
        table = table_html(shown, 2)
    return {
        "title": prefix,
        "plot": r.plots.html(fig),
        "n_imbalanced": n_big,
        "n_binary": len(binary),
        "n_continuous": len(continuous),
        "continuous": table,
    }
