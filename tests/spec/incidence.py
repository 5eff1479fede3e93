"""Incidence rates: events per 1,000 person-years in a denominator cohort, with OHDSI CohortIncidence's
time-at-risk windows and clean window. Person-time is counted in days, both ends included; released
person-years are rounded to whole years and the rate is recomputed from the released numbers."""

from __future__ import annotations

from mercia.analyses import IncidenceSettings, TimeAtRisk, incidence
from mercia.disclosure import DisclosurePolicy

from .case import EXACT, Case

TITLE = "Incidence"

PERSONS = """
person_id | gender_concept_id | year_of_birth
1         | 8507              | 1970
2         | 8532              | 1980
3         | 8532              | 1990
"""
PERIODS = """
person_id | observation_period_start_date | observation_period_end_date
1         | 2010-01-01                    | 2013-12-31
2         | 2010-01-01                    | 2013-12-31
3         | 2010-01-01                    | 2013-12-31
"""
# Cohort 1 is the denominator, cohort 2 the outcome.
COHORTS = """
cohort_definition_id | subject_id | cohort_start_date | cohort_end_date
1                    | 1          | 2010-01-01        | 2011-12-31
1                    | 2          | 2010-01-01        | 2012-12-31
1                    | 3          | 2010-01-01        | 2010-12-31
2                    | 2          | 2011-01-01        | 2011-01-01
2                    | 3          | 2010-06-30        | 2010-06-30
"""
TABLES = {"person": PERSONS, "observation_period": PERIODS, "cohort": COHORTS}


def _runner(settings: IncidenceSettings, policy: DisclosurePolicy):
    def run(cdm):
        return {k: v.data for k, v in incidence(cdm, settings).release(policy).items()}
    return run


FIRST = IncidenceSettings(denominator_cohort_id=1, outcome_cohort_id=2, by=[])
BY_SEX = IncidenceSettings(denominator_cohort_id=1, outcome_cohort_id=2, by=["sex"])
TAR = IncidenceSettings(
    denominator_cohort_id=1, outcome_cohort_id=2, by=[],
    time_at_risk=[TimeAtRisk(start_with="start", start_offset=0, end_with="start", end_offset=199),
                  TimeAtRisk(start_with="start", start_offset=365, end_with="end", end_offset=0)])

CLEAN_PERSONS = """
person_id | gender_concept_id | year_of_birth
4         | 8507              | 1960
"""
CLEAN_PERIODS = """
person_id | observation_period_start_date | observation_period_end_date
4         | 2010-01-01                    | 2010-12-31
"""
CLEAN_COHORTS = """
cohort_definition_id | subject_id | cohort_start_date | cohort_end_date
1                    | 4          | 2010-01-01        | 2010-12-31
2                    | 4          | 2010-03-01        | 2010-03-10
2                    | 4          | 2010-03-20        | 2010-03-20
2                    | 4          | 2010-06-01        | 2010-06-01
"""
CLEAN_TABLES = {"person": CLEAN_PERSONS, "observation_period": CLEAN_PERIODS, "cohort": CLEAN_COHORTS}


def _repeated(clean: int | None) -> IncidenceSettings:
    return IncidenceSettings(denominator_cohort_id=1, outcome_cohort_id=2, by=[], repeated_events=True,
                             time_at_risk=[TimeAtRisk()], clean_window_days=clean)


THRESHOLD_5 = DisclosurePolicy(name="threshold 5", threshold=5, rounding_base=1)

CASES = [
    Case(
        id="first_events",
        title="first events, a cohort as the denominator",
        tables=TABLES,
        call="incidence(cdm, settings)",
        settings=FIRST,
        run=_runner(FIRST, EXACT),
        why="Person 1: 2010-01-01..2011-12-31, 730 days, no event. Person 2: at risk 2010-01-01 up to and "
            "including the event day 2011-01-01, 366 days; none after a first event. Person 3: 2010-01-01.."
            "2010-06-30, 181 days. 1,277 days / 365.25 = 3.50 person-years, released as 3; 2 events; "
            "2 / 3 x 1,000 = 666.667 per 1,000 person-years. Every person passes every rule.",
        expected={
            "incidence": """
                n_events | n_persons | person_years | incidence_per_1000py
                2        | 3         | 3            | 666.667
            """,
            "incidence_attrition": """
                step                                  | persons
                1. persons in the denominator cohort                            | 3
                2. entry in an observation period                               | 3
                3. days in an entry after washout_days and in the study window  | 3
                4. persons with the outcome before time at risk removed         | 3
                5. time at risk in an age group                                 | 3
            """,
        },
    ),
    Case(
        id="by_sex",
        title="split by sex, with the total",
        tables=TABLES,
        call="incidence(cdm, settings)",
        settings=BY_SEX,
        run=_runner(BY_SEX, EXACT),
        why="Men: person 1 alone, 730 days (2.00 years, released as 2), no event. Women: persons 2 and 3, "
            "366 + 181 = 547 days (1.498 years, released as 1), "
            "2 events: 2,000 per 1,000 person-years. The total is the first example's row, without persons: "
            "distinct persons do not add up over cells (one person can be in several), so totals of them are "
            "not derived.",
        expected={
            "incidence": """
                sex    | n_events | n_persons | person_years | incidence_per_1000py
                Male   | 0        | 1         | 2            | 0.000
                Female | 2        | 2         | 1            | 2000.000
                Total  | 2        |           | 3            | 666.667
            """,
        },
    ),
    Case(
        id="time_at_risk",
        title="two time-at-risk windows, each a level of `tar`",
        tables=TABLES,
        call="incidence(cdm, settings)",
        settings=TAR,
        run=_runner(TAR, EXACT),
        why="start+0..start+199: 200 days each for persons 1 and 2 (person 2's outcome, day 365, is "
            "outside); person 3's outcome on day 180 is an event, 181 days. 581 days = 1.59 years, released "
            "as 2: 1 / 2 x 1,000 = 500. start+365..end+0: person 1 2011-01-01..2011-12-31, 365 days; "
            "person 2's window starts on its outcome day, an event after 1 day; person 3's window would "
            "start after the entry's end, so no time. 366 days, released as 1 year: 1,000.",
        expected={
            "incidence": """
                tar                 | n_events | n_persons | person_years | incidence_per_1000py
                start+0..start+199  | 1        | 3         | 2            | 500.000
                start+365..end+0    | 1        | 2         | 1            | 1000.000
            """,
        },
    ),
    Case(
        id="clean_window",
        title="repeated events with a 30-day clean window",
        tables=CLEAN_TABLES,
        call="incidence(cdm, settings)",
        settings=_repeated(30),
        run=_runner(_repeated(30), EXACT),
        why="Each outcome entry takes the days from its start + 1 to its end + 30 out of the time at risk: "
            "2010-03-02..04-09, 03-21..04-19 and 06-02..07-01. The outcome of 03-20 falls on a day not at "
            "risk and is no event: 2 events (03-01, 06-01). 365 - 49 - 30 = 286 days, released as 1 year.",
        expected={
            "incidence": """
                tar             | n_events | n_persons | person_years | incidence_per_1000py
                start+0..end+0  | 2        | 1         | 1            | 2000.000
            """,
        },
    ),
    Case(
        id="no_clean_window",
        title="... and without it (clean window 0) every outcome after the first's end is an event",
        tables=CLEAN_TABLES,
        call="incidence(cdm, settings)",
        settings=_repeated(None),
        run=_runner(_repeated(None), EXACT),
        why="Only 2010-03-02..03-10 is taken out: the outcomes of 03-01, 03-20 and 06-01 are all events "
            "(356 days, released as 1 year).",
        expected={
            "incidence": """
                tar             | n_events | n_persons | person_years | incidence_per_1000py
                start+0..end+0  | 3        | 1         | 1            | 3000.000
            """,
        },
    ),
    Case(
        id="suppressed",
        title="under a threshold of 5, the small counts and the rate resting on them are suppressed",
        tables=TABLES,
        call="incidence(cdm, settings)",
        settings=FIRST,
        policy=THRESHOLD_5,
        run=_runner(FIRST, THRESHOLD_5),
        why="2 events and 3 persons are both in 1..5.",
        expected={
            "incidence": """
                n_events | n_persons | person_years | incidence_per_1000py
                         |           |              |
            """,
        },
    ),
]
