"""`cohort_entries`: entries and distinct persons entering each cohort per calendar year or month."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from mercia import limits
from mercia.analyses import AnalysisResult, cohort_entries
from mercia.report.html import ReportGroup, Section, esc, table_html
from mercia.study.kinds.base import AnalysisKind, Key
from mercia.study.kinds.incidence import INCIDENCE

if TYPE_CHECKING:
    from mercia.cdm import Cdm
    from mercia.report.study import StudyReport


class CohortEntriesAnalysis(AnalysisKind):
    """Cohort entries and distinct persons entering, per cohort and calendar year or month of entry."""

    listing_order: ClassVar[int] = 30
    report_groups: ClassVar[tuple[ReportGroup, ...]] = (INCIDENCE,)

    type: Literal["cohort_entries"]
    cohorts: list[Key] = Field(
        min_length=1, max_length=limits.MAX_LIST, description="keys of the cohorts to count"
    )
    interval: Literal["year", "month"] = Field(
        "year", description="period entries are counted in: the calendar year or month of cohort start"
    )

    def cohorts_used(self) -> list[str]:
        return list(self.cohorts)

    def run(self, cdm: Cdm, ids: dict[str, int], *, name: str) -> AnalysisResult:
        return cohort_entries(cdm, [ids[c] for c in self.cohorts], self.interval, name=name)

    def report(self, r: StudyReport) -> list[Section]:
        p = self.table_prefix()
        return [Section(INCIDENCE, f"\n<h3>{esc(p)}</h3>\n{table_html(r.with_cohort_names(r.data(p)))}\n",
                        slot="other")]
