"""Point and period prevalence: for each date (or interval), the persons observed on it (at any time in
it) with enough prior observation, and the cases among them: those with an outcome cohort entry
covering the date (overlapping the interval, or ending up to `lookback_days` before it). The released
percentage is recomputed from the released counts."""

from __future__ import annotations

import datetime as dt

from mercia.analyses import PrevalenceSettings, prevalence
from mercia.disclosure import DisclosurePolicy

from .case import EXACT, Case

TITLE = "Prevalence"

TABLES = {
    "person": """
        person_id | gender_concept_id | year_of_birth
        1         | 8507              | 1970
        2         | 8532              | 1980
        3         | 8532              | 1990
        4         | 8507              | 1960
    """,
    "observation_period": """
        person_id | observation_period_start_date | observation_period_end_date
        1         | 2010-01-01                    | 2010-12-31
        2         | 2010-01-01                    | 2011-12-31
        3         | 2010-08-01                    | 2011-12-31
        4         | 2009-01-01                    | 2010-03-31
    """,
    "cohort": """
        cohort_definition_id | subject_id | cohort_start_date | cohort_end_date
        2                    | 1          | 2010-06-01        | 2010-07-15
        2                    | 2          | 2010-03-01        | 2010-03-31
        2                    | 3          | 2010-09-01        | 2010-09-10
    """,
}

D = dt.date.fromisoformat
BASIC = PrevalenceSettings(outcome_cohort_id=2, by=[], points=[D("2010-07-01")],
                           intervals=[(D("2010-01-01"), D("2010-12-31"))])
LOOKBACK = PrevalenceSettings(outcome_cohort_id=2, by=[], points=[D("2010-07-01")], lookback_days=120)
THRESHOLD_2 = DisclosurePolicy(name="threshold 2", threshold=2, rounding_base=1)


def _runner(settings: PrevalenceSettings, policy: DisclosurePolicy):
    def run(cdm):
        return {k: v.data for k, v in prevalence(cdm, settings).release(policy).items()}
    return run


CASES = [
    Case(
        id="point_and_period",
        title="a point and a period, the observed population as denominator",
        tables=TABLES,
        call="prevalence(cdm, settings)",
        settings=BASIC,
        run=_runner(BASIC, EXACT),
        why="On 2010-07-01 persons 1 and 2 are observed (3 starts in August, 4 left in March); person 1's "
            "entry covers the date: 1 / 2. In 2010 all four are observed at some time and persons 1, 2 and 3 "
            "have an entry in it: 3 / 4.",
        expected={
            "prevalence": """
                period                   | n_cases | n_persons | prevalence_percent
                2010-07-01               | 1       | 2         | 50.0
                2010-01-01..2010-12-31   | 3       | 4         | 75.0
            """,
        },
    ),
    Case(
        id="lookback",
        title="a 120-day lookback makes an entry that ended before the date a case",
        tables=TABLES,
        call="prevalence(cdm, settings)",
        settings=LOOKBACK,
        run=_runner(LOOKBACK, EXACT),
        why="Entries overlapping 2010-03-03..2010-07-01 count: person 2's (ended 2010-03-31) now too: 2 / 2.",
        expected={
            "prevalence": """
                period      | n_cases | n_persons | prevalence_percent
                2010-07-01  | 2       | 2         | 100.0
            """,
        },
    ),
    Case(
        id="suppressed",
        title="under a threshold of 2 the point's counts are suppressed, the period's stay",
        tables=TABLES,
        call="prevalence(cdm, settings)",
        settings=BASIC,
        policy=THRESHOLD_2,
        run=_runner(BASIC, THRESHOLD_2),
        why="1 and 2 are in 1..2; 3 and 4 are not.",
        expected={
            "prevalence": """
                period                   | n_cases | n_persons | prevalence_percent
                2010-07-01               |         |           |
                2010-01-01..2010-12-31   | 3       | 4         | 75.0
            """,
        },
    ),
]
