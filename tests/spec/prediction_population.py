"""Prediction's study population (PatientLevelPrediction's `createStudyPopulation`): target cohort
entries (index = entry start), a time at risk from `risk_window_start` days after the start anchor to
`risk_window_end` days after the end anchor, cut at the end of observation, and the label: an outcome
start inside the time at risk. Then, each a row of the released attrition table: no outcome before
time at risk, and enough days at risk (persons with the outcome kept regardless). The population's
rows stay at the site (`population`, shown here to explain the attrition); the attrition is released."""

from __future__ import annotations

from mercia.analyses.prediction.analysis import attrition_table
from mercia.analyses.prediction.population import PopulationSettings, build_population
from mercia.disclosure import DisclosureLog, DisclosurePolicy, release

from .case import EXACT, Case

TITLE = "Prediction population"

TABLES = {
    "person": """
        person_id | gender_concept_id | year_of_birth
        1         | 8507              | 1970
        2         | 8532              | 1970
        3         | 8507              | 1970
        4         | 8532              | 1970
        5         | 8507              | 1970
        6         | 8532              | 1970
        7         | 8507              | 1970
    """,
    "observation_period": """
        person_id | observation_period_start_date | observation_period_end_date
        1         | 2015-01-01                    | 2021-12-31
        2         | 2015-01-01                    | 2020-06-30
        3         | 2015-01-01                    | 2020-03-31
        4         | 2015-01-01                    | 2021-12-31
        5         | 2015-01-01                    | 2021-12-31
        6         | 2015-01-01                    | 2021-12-31
        7         | 2015-01-01                    | 2021-12-31
    """,
    # Cohort 1: the target, 2: the outcome.
    "cohort": """
        cohort_definition_id | subject_id | cohort_start_date | cohort_end_date
        1                    | 1          | 2020-01-01        | 2020-01-01
        1                    | 2          | 2020-01-01        | 2020-01-01
        1                    | 3          | 2020-01-01        | 2020-01-01
        1                    | 4          | 2020-01-01        | 2020-01-01
        1                    | 5          | 2020-01-01        | 2020-01-01
        1                    | 5          | 2020-07-01        | 2020-07-01
        1                    | 6          | 2020-01-01        | 2020-01-01
        1                    | 7          | 2020-01-01        | 2020-01-01
        2                    | 1          | 2020-06-01        | 2020-06-01
        2                    | 3          | 2020-03-01        | 2020-03-01
        2                    | 4          | 2019-06-01        | 2019-06-01
        2                    | 6          | 2020-01-01        | 2020-01-01
        2                    | 7          | 2021-01-01        | 2021-01-01
    """,
}

DEFAULTS = PopulationSettings()
FIRST_ONLY = PopulationSettings(first_exposure_only=True, include_all_outcomes=False)
THRESHOLD_2 = DisclosurePolicy(name="threshold 2", threshold=2, rounding_base=1)


def _runner(settings: PopulationSettings, policy: DisclosurePolicy):
    def run(cdm):
        pop, attrition = build_population(cdm, 1, 2, settings)
        released = release(attrition_table("plp", attrition), policy, log=DisclosureLog())
        return {"population": pop, "plp_attrition": released.data}
    return run


CASES = [
    Case(
        id="defaults",
        title="PLP's defaults: a year at risk from the day after index",
        tables=TABLES,
        call="build_population(cdm, 1, 2, settings)",
        settings=DEFAULTS,
        site_only=("population",),
        run=_runner(DEFAULTS, EXACT),
        why="Time at risk is days 1..365 after index, cut at observation end. Person 1's outcome is on day "
            "152. Person 2's observation ends on day 181: 180 days at risk, under 364, and no outcome, so "
            "dropped. Person 3's ends on day 90 but the outcome on day 60 keeps her. Person 4's outcome is "
            "before index and person 6's on the index day, before time at risk starts: both removed. Person "
            "5's two entries both stay (not first exposure only). Person 7's outcome on day 366 is after "
            "the window: label 0.",
        expected={
            "population": """
                person_id | cohort_start_date | outcome | tar_start | tar_end | days_to_event
                1         | 2020-01-01        | 1       | 1         | 365     | 152
                3         | 2020-01-01        | 1       | 1         | 90      | 60
                5         | 2020-01-01        | 0       | 1         | 365     |
                5         | 2020-07-01        | 0       | 1         | 365     |
                7         | 2020-01-01        | 0       | 1         | 365     |
            """,
            "plp_attrition": """
                step                                          | n_entries | n_persons | n_outcomes
                target cohort entries in observation          | 8         | 7         | 2
                no outcome before time at risk                | 6         | 5         | 2
                non-outcome entries with 364+ days at risk    | 5         | 4         | 2
            """,
        },
    ),
    Case(
        id="first_exposure_only",
        title="first entries only, and every entry needs 364 days at risk",
        tables=TABLES,
        call="build_population(cdm, 1, 2, settings)",
        settings=FIRST_ONLY,
        site_only=("population",),
        run=_runner(FIRST_ONLY, EXACT),
        why="Person 5's second entry goes at the first-entry step; without include_all_outcomes person 3's "
            "90 days at risk are too few even with the outcome.",
        expected={
            "plp_attrition": """
                step                                  | n_entries | n_persons | n_outcomes
                target cohort entries in observation  | 8         | 7         | 2
                first entry per person                | 7         | 7         | 2
                no outcome before time at risk        | 5         | 5         | 2
                entries with 364+ days at risk        | 3         | 3         | 1
            """,
        },
    ),
    Case(
        id="suppressed",
        title="under a threshold of 2 the outcome counts are suppressed",
        tables=TABLES,
        call="build_population(cdm, 1, 2, settings)",
        settings=DEFAULTS,
        policy=THRESHOLD_2,
        site_only=("population",),
        run=_runner(DEFAULTS, THRESHOLD_2),
        why="2 outcomes at each step are in 1..2.",
        expected={
            "plp_attrition": """
                step                                          | n_entries | n_persons | n_outcomes
                target cohort entries in observation          | 8         | 7         |
                no outcome before time at risk                | 6         | 5         |
                non-outcome entries with 364+ days at risk    | 5         | 4         |
            """,
        },
    ),
]
