"""`prevalence`: point and period prevalence of an outcome, with Wilson score intervals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pandas as pd
from pydantic import BaseModel, Field, field_validator

from mercia.analyses import AnalysisResult, PrevalenceSettings, prevalence
from mercia.report.html import ReportGroup, Section, esc, natural_order, table_html
from mercia.study.kinds.base import AnalysisKind, Key, no_ids
from mercia.study.kinds.incidence import INCIDENCE

if TYPE_CHECKING:
    from mercia.cdm import Cdm
    from mercia.report.study import StudyReport


class PrevalenceAnalysis(AnalysisKind):
    """Point and period prevalence of an outcome, as proportions with Wilson score intervals."""

    listing_order: ClassVar[int] = 50
    report_groups: ClassVar[tuple[ReportGroup, ...]] = (INCIDENCE,)
    SETTINGS_MODEL: ClassVar[type[BaseModel]] = PrevalenceSettings
    SETTINGS_EXCLUDE: ClassVar[tuple[str, ...]] = ("outcome_cohort_id", "denominator_cohort_id")

    type: Literal["prevalence"]
    outcome: Key = Field(description="key of the outcome cohort: a case has an entry overlapping the period")
    denominator: Key | None = Field(
        None,
        description="key of the cohort whose members on the date (or in the interval) are the "
        "denominator; None: everyone in observation then",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="the prevalence settings; `points` or `intervals` must be given",
    )

    @field_validator("settings")
    @classmethod
    def _settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        no_ids(v, "prevalence", {"outcome_cohort_id": "outcome", "denominator_cohort_id": "denominator"})
        return PrevalenceSettings(**v, outcome_cohort_id=0).model_dump(
            mode="json", exclude={"outcome_cohort_id", "denominator_cohort_id"}
        )

    def cohorts_used(self) -> list[str]:
        return [self.outcome, *([self.denominator] if self.denominator else [])]

    def build(self, ids: dict[str, int]) -> PrevalenceSettings:
        return PrevalenceSettings(
            **self.settings,
            outcome_cohort_id=ids[self.outcome],
            denominator_cohort_id=ids[self.denominator] if self.denominator else None,
        )

    def run(self, cdm: Cdm, ids: dict[str, int], *, name: str) -> AnalysisResult:
        return prevalence(cdm, self.build(ids), name=name)

    def report(self, r: StudyReport) -> list[Section]:
        p = self.table_prefix()
        d = r.data(p)
        if d is not None and len(d):
            dims = [c for c in ("period", "age_group", "sex") if c in d.columns]
            d = d.sort_values(dims, key=natural_order)
        table = table_html(d if d is not None else pd.DataFrame())
        return [Section(INCIDENCE, f"\n<h3>{esc(p)}</h3>\n{table}\n", slot="prevalence")]
