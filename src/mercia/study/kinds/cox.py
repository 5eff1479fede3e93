"""`cox`: a Cox proportional-hazards model of time to an outcome, target vs comparator, adjusted as set.

Its federated form: a node keeps the rows the model was fitted on (treatment, age, sex, covariates,
time, event) for the hub's exact federated Cox, logistic and Poisson rounds (`federation/node/rounds.py`).
The report's "Cox models" group is defined here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from mercia.analyses import AnalysisResult, CoxSettings, cox_model
from mercia.report.forest import forest_figure
from mercia.report.html import ReportGroup, Section, esc, fmt, table_html
from mercia.study.kinds.base import AnalysisKind, Key

if TYPE_CHECKING:
    from mercia.analyses.survival import CoxData
    from mercia.cdm import Cdm
    from mercia.report.study import StudyReport

COX = ReportGroup(id="cox", title="Cox models", nav="Cox", order=40, nav_break=True)


class CoxAnalysis(AnalysisKind):
    """A Cox proportional-hazards model of time to an outcome, target vs comparator, adjusted as set."""

    listing_order: ClassVar[int] = 70
    report_groups: ClassVar[tuple[ReportGroup, ...]] = (COX,)
    federated: ClassVar[bool] = True

    type: Literal["cox"]
    target: Key = Field(description="key of the target cohort (treatment = 1)")
    comparator: Key = Field(description="key of the comparator cohort (treatment = 0)")
    outcome: Key = Field(description="key of the outcome cohort: its first start in time at risk is the event")
    settings: CoxSettings = Field(CoxSettings(), description="time at risk, adjustment and fitting")

    def cohorts_used(self) -> list[str]:
        return [self.target, self.comparator, self.outcome]

    def run(self, cdm: Cdm, ids: dict[str, int], *, name: str) -> AnalysisResult:
        return cox_model(cdm, ids[self.target], ids[self.comparator], ids[self.outcome], self.settings, name=name)

    def report(self, r: StudyReport) -> list[Section]:
        c = cox(r, self.table_prefix(), self.target, self.comparator)
        info = f"; {esc(c['info'])}" if c["info"] else ""
        return [Section(COX, f"\n<h3>{esc(c['title'])} <small>({esc(c['status'])}{info})</small></h3>\n"
                             f"{r.population(self.table_prefix())}\n{c['plot']}\n{c['table']}\n")]

    # ---- the federated form: the rows of the model, kept at the node ------------------------------
    def regression_rows(self, cdm: Cdm, ids: dict[str, int]) -> CoxData:
        from mercia.analyses.survival import cox_data

        return cox_data(cdm, ids[self.target], ids[self.comparator], ids[self.outcome], self.settings)

    def regression_terms(self) -> list[str]:
        s = self.settings
        return ["treatment", *(["age"] if s.age else []), *(["male"] if s.sex else []), *(c.name for c in s.covariates)]

    def regression_ties(self) -> Literal["efron", "breslow"]:
        return self.settings.ties


def cox(r: StudyReport, prefix: str, target: str, comparator: str) -> dict[str, Any]:
    """The released model table, its forest plot and the proportional-hazards test."""
    t = r.tables.get(prefix)
    out: dict[str, Any] = {"title": prefix, "plot": "", "table": "", "status": "", "info": ""}
    if t is None:
        return out
    out["status"] = t.status
    info = t.model_info or {}
    out["info"] = ", ".join(f"{k} {fmt(v)}" for k, v in info.items())
    df = t.data
    out["table"] = table_html(df, 3)
    ok = df.dropna(subset=["hr", "hr_lower", "hr_upper"]) if len(df) else df
    if t.status == "blocked" or ok.empty:
        out["plot"] = '<p class="empty">No hazard ratio released (blocked, empty, or suppressed).</p>'
        return out
    labels = [
        f"{x} ({r.pkg.cohort_name(target)} vs {r.pkg.cohort_name(comparator)})" if x == "treatment" else x
        for x in ok["term"]
    ]
    fig = forest_figure(labels, ok["hr"], ok["hr_lower"], ok["hr_upper"],
                        title=f"{prefix}: hazard ratios (95% CI)", axis_title="hazard ratio (log scale)")
    out["plot"] = r.plots.html(fig)
    ph = r.data(f"{prefix}_ph_test")
    if ph is not None and len(ph):
        out["table"] += "<h4>Proportional hazards (Schoenfeld residuals)</h4>" + table_html(ph, 3)
    return out
