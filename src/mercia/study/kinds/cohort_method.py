"""`cohort_method`: a comparative cohort analysis (OHDSI CohortMethod) of target vs comparator new users,
with negative controls for empirical calibration. The report's "Comparative cohort analyses" group is
defined here; its figures are drawn by `mercia.report.cohort_method_plots` from released tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from mercia import limits
from mercia.analyses import AnalysisResult
from mercia.analyses.cohort_method import CohortMethodSettings
from mercia.analyses.notes import Note, NoteCode
from mercia.report.html import ReportGroup, Section, esc, table_html
from mercia.study.kinds.base import AnalysisKind, Key

if TYPE_CHECKING:
    from typing import Self

    from mercia.cdm import Cdm
    from mercia.report.study import StudyReport

COHORT_METHOD = ReportGroup(id="cohort-method", title="Comparative cohort analyses", nav="Comparative", order=60)


class CohortMethodAnalysis(AnalysisKind):
    """Comparative cohort analysis (OHDSI CohortMethod): target vs comparator new users, a large-scale
    propensity model, matching or stratification, balance, outcome models; negative controls are
    outcome cohorts with no effect, run through the same steps and used to calibrate."""

    listing_order: ClassVar[int] = 90
    report_groups: ClassVar[tuple[ReportGroup, ...]] = (COHORT_METHOD,)

    type: Literal["cohort_method"]
    target: Key = Field(description="key of the target cohort (new users of the drug studied)")
    comparator: Key = Field(description="key of the comparator cohort (new users of the alternative)")
    outcomes: list[Key] = Field(
        min_length=1, max_length=limits.MAX_LIST, description="keys of the outcome cohorts; one estimate each"
    )
    negative_controls: list[Key] = Field(
        default_factory=list, max_length=limits.MAX_LIST,
        description="keys of outcome cohorts believed unaffected by either exposure (true effect 1); "
        "run through the same steps, and with 5 or more estimable the estimates are empirically calibrated",
    )
    settings: CohortMethodSettings = Field(
        CohortMethodSettings(), description="covariates, population, propensity model, adjustment"
    )

    def cohorts_used(self) -> list[str]:
        return [self.target, self.comparator, *self.outcomes, *self.negative_controls]

    def without_small(self, small: set[str]) -> tuple[Self, list[Note]]:
        # A negative control below the threshold is left out (the analysis stands without it); decided
        # from released counts only.
        dropped = [k for k in self.negative_controls if k in small and k not in self.outcomes]
        notes = [Note(NoteCode.NEGATIVE_CONTROL_BELOW_THRESHOLD, cohort=k) for k in dropped]
        if not dropped:
            return self, notes
        return self.model_copy(update={"negative_controls": [k for k in self.negative_controls if k not in dropped]}), notes

    def run(self, cdm: Cdm, ids: dict[str, int], *, name: str) -> AnalysisResult:
        from mercia.analyses.cohort_method import cohort_method

        keys = [*self.outcomes, *[k for k in self.negative_controls if k not in self.outcomes]]
        return cohort_method(cdm, ids[self.target], ids[self.comparator], [ids[k] for k in self.outcomes],
                             self.settings,
                             negative_control_ids=[ids[k] for k in self.negative_controls if k not in self.outcomes],
                             labels={ids[k]: k for k in keys}, name=name)

    def report(self, r: StudyReport) -> list[Section]:
        p = self.table_prefix()
        plots, tables = figures_and_tables(r, p, [*self.outcomes])
        h4 = "".join(f"<h4>{esc(title)}</h4>{t}" for title, t in tables)
        return [Section(COHORT_METHOD, f"\n<h3>{esc(p)}</h3>\n{r.population(p)}\n{''.join(plots)}\n{h4}\n")]


def figures_and_tables(r: StudyReport, prefix: str, outcomes: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The forest plot, the preference-score distributions and each outcome's balance plot; the
    estimates, counts, diagnostics, each outcome's attrition and its least balanced covariates."""
    from mercia.report.cohort_method_plots import balance_figure, forest_figure, preference_figure

    html = r.plots.html
    plots = [forest_figure(r.data(f"{prefix}_estimates"), prefix, html),
             preference_figure(r.data(f"{prefix}_ps_distribution"), prefix, html)]
    plots += [balance_figure(r.data(f"{prefix}_balance_{o}"), f"{prefix} · {o}", html) for o in outcomes]
    tables = []
    for title, name in (("Estimates", "estimates"), ("Subjects, events and days at risk", "counts"),
                        ("Propensity model diagnostics", "ps_diagnostics")):
        d = r.data(f"{prefix}_{name}")
        if d is not None:
            tables.append((title, table_html(d, 3)))
    for o in outcomes:
        att = r.data(f"{prefix}_attrition_{o}")
        if att is not None:
            tables.append((f"Attrition: {o}", table_html(att, 0)))
        bal = r.data(f"{prefix}_balance_{o}")
        if bal is not None and len(bal):
            worst = bal.reindex(bal["before_smd"].abs().sort_values(ascending=False).index).head(20)
            tables.append((f"Balance: {o} (20 covariates least balanced before)",
                           table_html(worst[["covariate_name", "before_smd", "after_smd"]], 3)))
    return [p for p in plots if p], tables
