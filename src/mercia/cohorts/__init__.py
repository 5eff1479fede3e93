"""Cohorts: the cohort model, the OHDSI Circe (ATLAS JSON) importer, the compiler and generation."""

from mercia.cohorts.circe import from_circe_json, load_circe_file, parse_circe, to_circe_dict
from mercia.cohorts.compiler import CompiledCohort, compile_cohort
from mercia.cohorts.generate import CohortResult, InclusionRuleStat, generate_cohorts
from mercia.cohorts.model import CohortDefinition, CohortExpression

__all__ = [
    "CohortDefinition",
    "CohortExpression",
    "CohortResult",
    "CompiledCohort",
    "InclusionRuleStat",
    "compile_cohort",
    "from_circe_json",
    "generate_cohorts",
    "load_circe_file",
    "parse_circe",
    "to_circe_dict",
]
