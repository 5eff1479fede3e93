"""Cox proportional hazards, target vs comparator: time from index to the first outcome start (censored
at observation end and death), adjusted for sex (term `male`) and optionally age and named covariates;
Efron's ties. The model is released whole or not at all: every term carries the count of the model's
sparsest level, and release() withholds the model when it is small."""

from __future__ import annotations

from mercia.analyses import CoxSettings, cox_model
from mercia.disclosure import DisclosurePolicy

from .case import EXACT, Case

TITLE = "Cox model"

TABLES = {
    "person": """
        person_id | gender_concept_id | year_of_birth
        1         | 8507              | 1970
        2         | 8532              | 1970
        3         | 8507              | 1970
        4         | 8532              | 1970
        5         | 8507              | 1970
        6         | 8507              | 1970
        7         | 8532              | 1970
        8         | 8532              | 1970
    """,
    "observation_period": """
        person_id | observation_period_start_date | observation_period_end_date
        1         | 2019-01-01                    | 2020-12-31
        2         | 2019-01-01                    | 2020-12-31
        3         | 2019-01-01                    | 2020-12-31
        4         | 2019-01-01                    | 2020-01-21
        5         | 2019-01-01                    | 2020-01-07
        6         | 2019-01-01                    | 2020-12-31
        7         | 2019-01-01                    | 2020-12-31
        8         | 2019-01-01                    | 2020-01-31
    """,
    # Cohort 1: target, 2: comparator, 3: outcome.
    "cohort": """
        cohort_definition_id | subject_id | cohort_start_date | cohort_end_date
        1                    | 1          | 2020-01-01        | 2020-01-01
        1                    | 2          | 2020-01-01        | 2020-01-01
        1                    | 3          | 2020-01-01        | 2020-01-01
        1                    | 4          | 2020-01-01        | 2020-01-01
        2                    | 5          | 2020-01-01        | 2020-01-01
        2                    | 6          | 2020-01-01        | 2020-01-01
        2                    | 7          | 2020-01-01        | 2020-01-01
        2                    | 8          | 2020-01-01        | 2020-01-01
        3                    | 1          | 2020-01-06        | 2020-01-06
        3                    | 2          | 2020-01-09        | 2020-01-09
        3                    | 3          | 2020-01-16        | 2020-01-16
        3                    | 6          | 2020-01-16        | 2020-01-16
        3                    | 7          | 2020-01-26        | 2020-01-26
    """,
}

SETTINGS = CoxSettings(age=False, ph_test=False)
# The same persons as (time, event, treatment, male): what the reference (lifelines) is fitted on.
REFERENCE_ROWS = [(5, 1, 1, 1), (8, 1, 1, 0), (15, 1, 1, 1), (20, 0, 1, 0),
                  (6, 0, 0, 1), (15, 1, 0, 1), (25, 1, 0, 0), (30, 0, 0, 0)]
THRESHOLD_2 = DisclosurePolicy(name="threshold 2", threshold=2, rounding_base=1)

_WHY = ("Per person (time in days from index, event): target (5, 1) (8, 1) (15, 1) (20, 0), comparator "
        "(6, 0) (15, 1) (25, 1) (30, 0), with a tie at day 15. lifelines' CoxPHFitter (Efron ties, no "
        "penalty, fit_options precision=1e-12) on these eight rows with treatment and male as covariates "
        "gives these coefficients, standard errors, hazard ratios and 95% intervals; statsmodels' PHReg "
        "(Efron ties) gives the same coefficients and standard errors.")


def _runner(policy: DisclosurePolicy):
    def run(cdm):
        return {k: v.data for k, v in cox_model(cdm, 1, 2, 3, SETTINGS).release(policy).items()}
    return run


CASES = [
    Case(
        id="treatment_and_sex",
        title="treatment and sex, with tied event times",
        tables=TABLES,
        call="cox_model(cdm, 1, 2, 3, settings)",
        settings=SETTINGS,
        run=_runner(EXACT),
        why=_WHY,
        expected={
            "cox": """
                term      | coef  | se    | hr    | hr_lower | hr_upper | p
                treatment | 1.205 | 1.159 | 3.336 | 0.344    | 32.362   | 0.299
                male      | 1.582 | 1.172 | 4.863 | 0.489    | 48.350   | 0.177
            """,
        },
    ),
    Case(
        id="withheld",
        title="under a threshold of 2 the whole model is withheld",
        tables=TABLES,
        call="cox_model(cdm, 1, 2, 3, settings)",
        settings=SETTINGS,
        policy=THRESHOLD_2,
        run=_runner(THRESHOLD_2),
        why="The comparator arm has 2 events: the model rests on a level of 2 persons, in 1..2.",
        expected={
            "cox": """
                term      | coef | se | hr
                treatment |      |    |
                male      |      |    |
            """,
        },
    ),
]
