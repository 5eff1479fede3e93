"""Analyses: each a function (CDM, cohort ids, settings) -> AnalysisResult of un-released ResultTables.

Every table must pass `mercia.disclosure.release()` before it leaves the site.

- incidence: `incidence` (with CohortIncidence time-at-risk windows, `TimeAtRisk`), `prevalence`,
  `cohort_entries` (rates per 1,000 person-years, exact Poisson and Wilson CIs)
- survival: `kaplan_meier`, `cox_model`, and for federated Cox `cox_data`, `cox_site_summary`,
  `newton_raphson`
- characterization: `characterize` (Table 1), `compare_cohorts` (with standardized mean differences)
"""

from mercia.analyses.characterization import CharacterizationSettings, Window, characterize, compare_cohorts
from mercia.analyses.incidence import (
    IncidenceSettings,
    PrevalenceSettings,
    TimeAtRisk,
    cohort_entries,
    incidence,
    prevalence,
)
from mercia.analyses.result import AnalysisResult
from mercia.analyses.survival import (
    CovariateSpec,
    CoxSettings,
    SurvivalSettings,
    cox_data,
    cox_model,
    cox_site_summary,
    kaplan_meier,
    newton_raphson,
)

__all__ = [
    "AnalysisResult",
    "CharacterizationSettings",
    "CovariateSpec",
    "CoxSettings",
    "IncidenceSettings",
    "PrevalenceSettings",
    "SurvivalSettings",
    "TimeAtRisk",
    "Window",
    "characterize",
    "cohort_entries",
    "compare_cohorts",
    "cox_data",
    "cox_model",
    "cox_site_summary",
    "incidence",
    "kaplan_meier",
    "newton_raphson",
    "prevalence",
]
