"""Kaplan-Meier: time from index (the target cohort start) to the first outcome cohort start, censored at
the end of the observation period holding index and at death. The released curve has a row at time 0
and one per released step: an event time with its risk set, its events, and the censorings since the
previous step; censorings after the last event are not released. Under a stricter policy, steps pool
event times until each holds enough events (the risk set is the one at the pool's first event), rows
with too few at risk are cut, and the estimate and its log-log interval are recomputed from the
released counts."""

from __future__ import annotations

from mercia.analyses import SurvivalSettings, kaplan_meier
from mercia.disclosure import DisclosurePolicy

from .case import EXACT, Case

TITLE = "Kaplan-Meier"

TABLES = {
    "person": """
        person_id | gender_concept_id | year_of_birth
        1         | 8507              | 1970
        2         | 8532              | 1980
        3         | 8532              | 1990
        4         | 8507              | 1960
        5         | 8507              | 1950
    """,
    "observation_period": """
        person_id | observation_period_start_date | observation_period_end_date
        1         | 2019-01-01                    | 2020-12-31
        2         | 2019-01-01                    | 2020-01-21
        3         | 2019-01-01                    | 2020-12-31
        4         | 2019-01-01                    | 2020-12-31
        5         | 2019-01-01                    | 2020-03-01
    """,
    "death": """
        person_id | death_date
        4         | 2020-01-31
    """,
    "cohort": """
        cohort_definition_id | subject_id | cohort_start_date | cohort_end_date
        1                    | 1          | 2020-01-01        | 2020-01-01
        1                    | 2          | 2020-01-01        | 2020-01-01
        1                    | 3          | 2020-01-01        | 2020-01-01
        1                    | 4          | 2020-01-01        | 2020-01-01
        1                    | 5          | 2020-01-01        | 2020-01-01
        2                    | 1          | 2020-01-11        | 2020-01-11
        2                    | 3          | 2020-01-31        | 2020-01-31
    """,
}

SETTINGS = SurvivalSettings()
# The same persons as (days from index, event): what the reference (lifelines) is fitted on.
REFERENCE_ROWS = [(10, 1), (20, 0), (30, 1), (30, 0), (60, 0)]
COARSE = DisclosurePolicy(name="threshold 1", threshold=1, rounding_base=1)


def _runner(policy: DisclosurePolicy):
    def run(cdm):
        return {k: v.data for k, v in kaplan_meier(cdm, [1], 2, SETTINGS).release(policy).items()}
    return run


CASES = [
    Case(
        id="curve",
        title="events, censoring at observation end and at death, a tie",
        tables=TABLES,
        call="kaplan_meier(cdm, [1], 2, settings)",
        settings=SETTINGS,
        run=_runner(EXACT),
        why="Days from index: person 1 has the outcome on day 10; person 2 leaves observation on day 20; "
            "person 3 has the outcome on day 30, the day person 4 dies (censored: an event counts before a "
            "censoring at the same time); person 5 leaves on day 60. S(10) = 4/5 = 0.8, S(30) = 0.8 x 2/3 = "
            "0.533, with log-log 95% intervals from Greenwood's variance: lifelines' KaplanMeierFitter on "
            "the same five (time, event) rows gives these numbers. The censoring on day 20 is released with "
            "the step of day 30; the one on day 60, after the last event, is not released.",
        expected={
            "km": """
                cohort_id | time | n_at_risk | n_events | n_censored | estimate | ci_lower | ci_upper
                1         | 0    | 5         | 0        | 0          | 1.000    | 1.000    | 1.000
                1         | 10   | 5         | 1        | 0          | 0.800    | 0.204    | 0.969
                1         | 30   | 3         | 1        | 2          | 0.533    | 0.068    | 0.863
            """,
            "km_summary": """
                cohort_id | n_persons | n_events
                1         | 5         | 2
            """,
        },
    ),
    Case(
        id="suppressed",
        title="under a threshold of 1, steps pool at least 2 events and rows need 2 at risk",
        tables=TABLES,
        call="kaplan_meier(cdm, [1], 2, settings)",
        settings=SETTINGS,
        policy=COARSE,
        run=_runner(COARSE),
        why="With threshold 1 a released step holds at least 2 events: the events of days 10 and 30 are one "
            "step at day 30, with the risk set at its first event (5) and the censorings of days 20 and 30; "
            "its estimate is 1 - 2/5 = 0.6.",
        expected={
            "km": """
                cohort_id | time | n_at_risk | n_events | n_censored | estimate
                1         | 0    | 5         | 0        | 0          | 1.000
                1         | 30   | 5         | 2        | 2          | 0.600
            """,
            "km_summary": """
                cohort_id | n_persons | n_events
                1         | 5         | 2
            """,
        },
    ),
]
