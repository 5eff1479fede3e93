"""`prediction`: a patient-level prediction model of an outcome in a target cohort, internally validated.
The report's "Prediction models" group is defined here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from mercia.analyses import AnalysisResult
from mercia.analyses.prediction import PredictionSettings, prediction
from mercia.report.html import ReportGroup, Section, esc, fmt, table_html
from mercia.study.kinds.base import AnalysisKind, Key

if TYPE_CHECKING:
    from mercia.cdm import Cdm
    from mercia.report.study import StudyReport

PREDICTION = ReportGroup(id="prediction", title="Prediction models", nav="Prediction", order=50, nav_break=True)


class PredictionAnalysis(AnalysisKind):
    """Patient-level prediction: a model of `outcome` in `target`, internally validated."""

    listing_order: ClassVar[int] = 80
    report_groups: ClassVar[tuple[ReportGroup, ...]] = (PREDICTION,)

    type: Literal["prediction"]
    target: Key = Field(description="key of the cohort whose entries are predicted for (index = its start)")
    outcome: Key = Field(description="key of the outcome cohort predicted (an entry starting in time at risk)")
    settings: PredictionSettings = Field(
        PredictionSettings(), description="population, covariates, model, split and evaluation"
    )

    def cohorts_used(self) -> list[str]:
        return [self.target, self.outcome]

    def run(self, cdm: Cdm, ids: dict[str, int], *, name: str) -> AnalysisResult:
        return prediction(cdm, ids[self.target], ids[self.outcome], self.settings, name=name)

    def report(self, r: StudyReport) -> list[Section]:
        m = model_section(r, self.table_prefix())
        info = f"; {esc(m['info'])}" if m["info"] else ""
        tables = "".join(f"<h4>{esc(title)}</h4>{t}" for title, t in m["tables"])
        return [Section(PREDICTION, f"\n<h3>{esc(m['title'])} <small>({esc(m['status'])}{info})</small></h3>\n"
                                    f"{''.join(m['plots'])}\n{tables}\n")]


def model_section(r: StudyReport, prefix: str) -> dict[str, Any]:
    """The model's status, its figures (ROC, calibration) and its released tables."""
    from mercia.report.prediction_plots import prediction_figures

    perf = r.tables.get(f"{prefix}_performance")
    info = (perf.model_info or {}) if perf is not None else {}
    return {
        "title": prefix,
        "status": perf.status if perf is not None else "not run",
        "info": ", ".join(f"{k} {fmt(v)}" for k, v in info.items()),
        "plots": prediction_figures(
            r.data(f"{prefix}_risk_strata"), r.data(f"{prefix}_performance"), prefix, r.plots.html
        ),
        "tables": [
            (title, table_html(d, 3))
            for title, d in (
                ("Performance", r.data(f"{prefix}_performance")),
                ("Attrition", r.data(f"{prefix}_attrition")),
                ("Risk strata", r.data(f"{prefix}_risk_strata")),
                ("Coefficients", r.data(f"{prefix}_coefficients")),
            )
            if d is not None
        ],
    }
