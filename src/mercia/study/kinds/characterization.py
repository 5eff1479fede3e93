"""`characterization`: Table 1 of each cohort (demographics; conditions, drugs and measurements
before index). Its report section is the Table 1 group's first slot, shared with `compare_cohorts`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pandas as pd
from pydantic import Field

from mercia import limits
from mercia.analyses import AnalysisResult, CharacterizationSettings, characterize
from mercia.report.html import TOTAL, ReportGroup, Section, esc, fmt, natural_key, num, table_html
from mercia.study.kinds.base import AnalysisKind, Key

if TYPE_CHECKING:
    from mercia.cdm import Cdm
    from mercia.report.study import StudyReport

TABLE1 = ReportGroup(id="table1", title="Table 1", nav="Table 1", order=10, slots=("table1", "smd"), nav_break=True)


class CharacterizationAnalysis(AnalysisKind):
    """Table 1 of each cohort: demographics, and conditions, drugs and measurements before index."""

    listing_order: ClassVar[int] = 10
    report_groups: ClassVar[tuple[ReportGroup, ...]] = (TABLE1,)

    type: Literal["characterization"]
    cohorts: list[Key] = Field(
        min_length=1, max_length=limits.MAX_LIST, description="keys of the cohorts to characterize"
    )
    settings: CharacterizationSettings = Field(
        CharacterizationSettings(), description="what to characterize"
    )

    def cohorts_used(self) -> list[str]:
        return list(self.cohorts)

    def run(self, cdm: Cdm, ids: dict[str, int], *, name: str) -> AnalysisResult:
        return characterize(cdm, [ids[c] for c in self.cohorts], self.settings, name=name)

    def report(self, r: StudyReport) -> list[Section]:
        return [table1_section(r, self.table_prefix())]


def table1(r: StudyReport, prefix: str) -> dict[str, Any]:
    """Table 1 (one column per cohort) and each cohort's most frequent covariates, from released tables."""
    demo = r.data(f"{prefix}_demographics")
    age = r.data(f"{prefix}_age")
    cov = r.data(f"{prefix}_covariates")
    parts: list[str] = []
    if demo is not None and len(demo):
        d = demo[demo["level"] != TOTAL].copy()
        d["cell"] = [
            f"{fmt(n)} ({fmt(p, 1)}%)" if not pd.isna(n) else "—"
            for n, p in zip(d["n"], d["percent"], strict=True)
        ]
        d["cohort"] = [r.label(c) for c in d["cohort_id"]]
        wide = d.pivot_table(index=["variable", "level"], columns="cohort", values="cell", aggfunc="first")
        wide = wide.reset_index()
        wide.columns.name = None
        # Levels in their natural order (age 15-19 before 100-104), not as strings.
        order = sorted(range(len(wide)), key=lambda i: (str(wide["variable"].iat[i]), natural_key(wide["level"].iat[i])))
        wide = wide.iloc[order]
        rows = []
        if age is not None and len(age):
            row: dict[str, Any] = {"variable": "age", "level": "mean (SD)"}
            for a in age.itertuples(index=False):
                row[r.label(a.cohort_id)] = f"{fmt(a.age_mean, 1)} ({fmt(a.age_sd, 1)})"
            rows.append(row)
            row = {"variable": "persons", "level": "n"}
            for a in age.itertuples(index=False):
                row[r.label(a.cohort_id)] = fmt(a.n)
            rows.insert(0, row)
        table = pd.concat([pd.DataFrame(rows), wide], ignore_index=True).fillna("—")
        parts.append(table_html(table))
    top = ""
    if cov is not None and len(cov):
        c = cov.dropna(subset=["n"]).copy()
        # every count suppressed (a small site): no top covariates to show
        c = c[c["window"] == c["window"].iloc[0]] if len(c) else c
        c["n_num"] = num(c["n"])
        frames = []
        for cid, g in c.groupby("cohort_id", sort=True):
            g = g.sort_values("n_num", ascending=False).head(10)
            frames.append(
                pd.DataFrame(
                    {
                        "cohort": r.label(cid),
                        "window": g["window"],
                        "domain": g["domain"],
                        "concept": g["concept_name"],
                        "n": g["n"],
                        "percent": g["percent"],
                    }
                )
            )
        if frames:
            top = table_html(pd.concat(frames, ignore_index=True), 1)
    return {"title": prefix, "table": "".join(parts) or '<p class="empty">No rows released.</p>', "top": top}


def table1_section(r: StudyReport, prefix: str) -> Section:
    t = table1(r, prefix)
    top = f"<h4>Most frequent covariates</h4>{t['top']}" if t["top"] else ""
    return Section(TABLE1, f"\n<h3>{esc(t['title'])}</h3>\n{t['table']}\n{top}\n", slot="table1")
