"""Spec tests: small definitions on a hand-made CDM (tests/test_cohort_world.py), expected rows worked out
by hand from Circe's rules. Each runs on DuckDB and, with MERCIA_TEST_PG_URL set, on PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from mercia.cdm import Cdm
from mercia.cohorts.circe import from_circe_json
from mercia.cohorts.compiler import compile_cohort
from mercia.cohorts.generate import cohort_rows, generate_cohorts
from test_cohort_world import (
    COND,
    COND_FAMILY,
    DRUG,
    INPATIENT,
    LAB,
    cohort,
    correlated,
    ends_at,
    group,
    load_world,
    window,
)

D = dt.date.fromisoformat

A = {"ConditionOccurrence": {"CodesetId": COND["id"]}}
A_FAMILY = {"ConditionOccurrence": {"CodesetId": COND_FAMILY["id"]}}
A_FIRST_EVER = {"ConditionOccurrence": {"CodesetId": COND["id"], "First": True}}
X = {"DrugExposure": {"CodesetId": DRUG["id"]}}
VISIT = {"VisitOccurrence": {"CodesetId": INPATIENT["id"]}}
LAB_M = {"Measurement": {"CodesetId": LAB["id"]}}
AGE_50 = {"Age": {"Value": 50, "Op": "gte"}}
FEMALE = {"Gender": [{"CONCEPT_ID": 8532, "CONCEPT_NAME": "FEMALE"}]}
MALE = {"Gender": [{"CONCEPT_ID": 8507, "CONCEPT_NAME": "MALE"}]}


def rows(*r: tuple[int, str, str]) -> list[tuple[int, dt.date, dt.date]]:
    return sorted((p, D(s), D(e)) for p, s, e in r)


CASES: list[tuple[str, dict[str, Any], list]] = [
    (
        "no end strategy: each event ends at its observation period's end; overlapping eras merge",
        cohort(A),
        rows((1, "2001-03-01", "2010-12-31"), (2, "2005-01-10", "2006-12-31"),
             (3, "2000-12-20", "2000-12-31"), (3, "2002-05-01", "2002-12-31")),
    ),
    (
        "descendants join the concept set; DateOffset EndDate+0; a missing condition end is start+1",
        cohort(A_FAMILY, EndStrategy=ends_at("EndDate")),
        rows((1, "2001-03-01", "2001-03-02"), (1, "2002-06-01", "2002-06-10"), (1, "2003-01-01", "2003-01-02"),
             (2, "2005-01-10", "2005-01-11"), (3, "2000-12-20", "2000-12-21"), (3, "2002-05-01", "2002-05-02")),
    ),
    (
        "primary limit First picks the first event in observation; the offset end is capped at the period end",
        cohort(A, limit="First", EndStrategy=ends_at("StartDate", 30)),
        rows((1, "2001-03-01", "2001-03-31"), (2, "2005-01-10", "2005-02-09"), (3, "2000-12-20", "2000-12-31")),
    ),
    (
        "First on the criterion is the first ever, even outside observation (person 2 loses hers)",
        cohort(A_FIRST_EVER, EndStrategy=ends_at()),
        rows((1, "2001-03-01", "2001-03-01"), (3, "2000-12-20", "2000-12-20")),
    ),
    (
        "primary limit Last",
        cohort(A_FAMILY, limit="Last", EndStrategy=ends_at()),
        rows((1, "2003-01-01", "2003-01-01"), (2, "2005-01-10", "2005-01-10"), (3, "2002-05-01", "2002-05-01")),
    ),
    (
        "observation window: 365 days of prior observation",
        cohort(A, prior=365, EndStrategy=ends_at()),
        rows((1, "2001-03-01", "2001-03-01"), (1, "2002-06-01", "2002-06-01")),
    ),
    (
        "observation window: 365 days of observation after (person 3's periods are too short)",
        cohort(A, post=365, EndStrategy=ends_at()),
        rows((1, "2001-03-01", "2001-03-01"), (1, "2002-06-01", "2002-06-01"), (2, "2005-01-10", "2005-01-10")),
    ),
    (
        "era pad 250 merges eras less than 250 days apart, and the pad comes off the end again",
        cohort(A_FAMILY, EndStrategy=ends_at("EndDate"), era_pad=250),
        rows((1, "2001-03-01", "2001-03-02"), (1, "2002-06-01", "2003-01-02"), (2, "2005-01-10", "2005-01-11"),
             (3, "2000-12-20", "2000-12-21"), (3, "2002-05-01", "2002-05-02")),
    ),
    (
        "additional criteria: a drug in the 30 days up to the index",
        cohort(A, EndStrategy=ends_at(), AdditionalCriteria=group(correlated(X, window(-30, 0), at_least=1))),
        rows((1, "2001-03-01", "2001-03-01")),
    ),
    (
        "correlated criteria nested in the primary criterion act like additional criteria",
        cohort({"ConditionOccurrence": {"CodesetId": COND["id"], "CorrelatedCriteria": group(
            correlated(X, window(-30, 0), at_least=1))}}, EndStrategy=ends_at()),
        rows((1, "2001-03-01", "2001-03-01")),
    ),
    (
        "exactly 0 drugs ever before (an exclusion): only people/events with no earlier drug",
        cohort(A, EndStrategy=ends_at(), InclusionRules=[
            {"name": "no prior drug", "expression": group(correlated(X, window(None, -1), exactly=0))}]),
        rows((2, "2005-01-10", "2005-01-10"), (3, "2000-12-20", "2000-12-20"), (3, "2002-05-01", "2002-05-01")),
    ),
    (
        "at most 1 drug in the 60 days before",
        cohort(A, EndStrategy=ends_at(), AdditionalCriteria=group(correlated(X, window(-60, -1), at_most=1))),
        rows((1, "2001-03-01", "2001-03-01"), (1, "2002-06-01", "2002-06-01"), (2, "2005-01-10", "2005-01-10"),
             (3, "2000-12-20", "2000-12-20"), (3, "2002-05-01", "2002-05-01")),
    ),
    (
        "restrict visit: the visit must be the condition's own",
        cohort(A, EndStrategy=ends_at(), AdditionalCriteria=group(
            correlated(VISIT, window(None, None), at_least=1, RestrictVisit=True))),
        rows((1, "2002-06-01", "2002-06-01")),
    ),
    (
        "start and end windows with UseEventEnd: the index falls inside an inpatient visit",
        cohort(A, EndStrategy=ends_at(), AdditionalCriteria=group(correlated(
            VISIT, window(None, 0), at_least=1, EndWindow=window(0, None, UseEventEnd=True)))),
        rows((1, "2002-06-01", "2002-06-01")),
    ),
    (
        "UseIndexEnd measures the window from the index event's end (2001-03-02 here)",
        cohort(A, limit="First", EndStrategy=ends_at(), AdditionalCriteria=group(
            correlated(LAB_M, window(0, 3, UseIndexEnd=True), at_least=1))),
        rows((1, "2001-03-01", "2001-03-01")),
    ),
    (
        "... and without it, the same window from the index start misses the measurement",
        cohort(A, limit="First", EndStrategy=ends_at(), AdditionalCriteria=group(
            correlated(LAB_M, window(0, 3), at_least=1))),
        [],
    ),
    (
        "measurement value and unit as the primary criterion; no end strategy ends at the period end",
        cohort({"Measurement": {"CodesetId": LAB["id"], "ValueAsNumber": {"Value": 6.5, "Op": "gt"},
                                "Unit": [{"CONCEPT_ID": 8554}]}}),
        rows((1, "2001-03-05", "2010-12-31")),
    ),
    (
        "measurement value between 5 and 6.5",
        cohort({"Measurement": {"CodesetId": LAB["id"], "ValueAsNumber": {"Value": 5, "Op": "bt", "Extent": 6.5}}}),
        rows((2, "2005-02-01", "2006-12-31")),
    ),
    (
        "abnormal measurements: outside the reference range (person 2's 6.0 is below 6.5)",
        cohort({"Measurement": {"CodesetId": LAB["id"], "Abnormal": True}}),
        rows((2, "2005-02-01", "2006-12-31")),
    ),
    (
        "Abnormal false filters nothing",
        cohort({"Measurement": {"CodesetId": LAB["id"], "Abnormal": False}}, limit="First"),
        rows((1, "2001-03-05", "2010-12-31"), (2, "2005-02-01", "2006-12-31")),
    ),
    (
        "demographic inclusion rules: aged 50 or more at index, and male",
        cohort(A, limit="First", EndStrategy=ends_at(), InclusionRules=[
            {"name": "age >= 50", "expression": group(demographics=[AGE_50])},
            {"name": "male", "expression": group(demographics=[MALE])}]),
        rows((1, "2001-03-01", "2001-03-01")),
    ),
    (
        "a group of type ANY over a demographic and a nested group",
        cohort(A, limit="First", EndStrategy=ends_at(), InclusionRules=[
            {"name": "female or 50+", "expression": group(type_="ANY", demographics=[FEMALE],
                                                           groups=[group(demographics=[AGE_50])])}]),
        rows((1, "2001-03-01", "2001-03-01"), (2, "2005-01-10", "2005-01-10")),
    ),
    (
        "AT_LEAST 2 of three criteria",
        cohort(A, limit="First", EndStrategy=ends_at(), InclusionRules=[
            {"name": "2 of 3", "expression": group(correlated(X, window(None, None), at_least=1), type_="AT_LEAST",
                                                    count=2, demographics=[AGE_50, FEMALE])}]),
        rows((1, "2001-03-01", "2001-03-01"), (2, "2005-01-10", "2005-01-10")),
    ),
    (
        "censoring criteria: the episode ends at the first drug on or after the index",
        cohort(A, limit="First", CensoringCriteria=[X]),
        rows((1, "2001-03-01", "2001-03-10"), (2, "2005-01-10", "2006-06-01"), (3, "2000-12-20", "2000-12-31")),
    ),
    (
        "censor window clips the rows and drops those left empty",
        cohort(A, CensorWindow={"StartDate": "2001-01-01", "EndDate": "2005-06-30"}),
        rows((1, "2001-03-01", "2005-06-30"), (2, "2005-01-10", "2005-06-30"), (3, "2002-05-01", "2002-12-31")),
    ),
    (
        "custom era: exposure to the drug, gaps of 30 days or less bridged",
        cohort(X, limit="First", EndStrategy={"CustomEra": {"DrugCodesetId": DRUG["id"], "GapDays": 30, "Offset": 0}}),
        rows((1, "2001-02-01", "2001-04-10"), (2, "2006-06-01", "2006-06-30")),
    ),
    (
        "custom era with a days-supply override of 10 and offset 5: 02-01+10+5 never reaches 03-10",
        cohort(X, limit="First", EndStrategy={"CustomEra": {"DrugCodesetId": DRUG["id"], "GapDays": 0, "Offset": 5,
                                                            "DaysSupplyOverride": 10}}),
        rows((1, "2001-02-01", "2001-02-16"), (2, "2006-06-01", "2006-06-16")),
    ),
    (
        "qualified limit Last applies when there are additional criteria",
        cohort(A_FAMILY, qualified="Last", EndStrategy=ends_at(), AdditionalCriteria=group(demographics=[
            {"Age": {"Value": 0, "Op": "gte"}}])),
        rows((1, "2003-01-01", "2003-01-01"), (2, "2005-01-10", "2005-01-10"), (3, "2002-05-01", "2002-05-01")),
    ),
    (
        "... and is ignored without them (Circe's rule); the expression limit then keeps all",
        cohort(A_FAMILY, qualified="Last", EndStrategy=ends_at(), era_pad=0),
        rows((1, "2001-03-01", "2001-03-01"), (1, "2002-06-01", "2002-06-01"), (1, "2003-01-01", "2003-01-01"),
             (2, "2005-01-10", "2005-01-10"), (3, "2000-12-20", "2000-12-20"), (3, "2002-05-01", "2002-05-01")),
    ),
    (
        "expression limit First applies after inclusion rules",
        cohort(A_FAMILY, expression="First", EndStrategy=ends_at(), InclusionRules=[
            {"name": "after 2002", "expression": group(demographics=[
                {"OccurrenceStartDate": {"Value": "2002-01-01", "Op": "gt"}}])}]),
        rows((1, "2002-06-01", "2002-06-01"), (2, "2005-01-10", "2005-01-10"), (3, "2002-05-01", "2002-05-01")),
    ),
    (
        "distinct count: two different concepts of the family in observation",
        cohort(A, limit="First", EndStrategy=ends_at(), AdditionalCriteria=group(
            correlated(A_FAMILY, window(None, None), at_least=2, distinct=True))),
        rows((1, "2001-03-01", "2001-03-01")),
    ),
    (
        "non-distinct count: two events of the family in the index's observation period",
        cohort(A, limit="First", EndStrategy=ends_at(), AdditionalCriteria=group(
            correlated(A_FAMILY, window(None, None), at_least=2))),
        rows((1, "2001-03-01", "2001-03-01")),
    ),
    (
        "IgnoreObservationPeriod counts events outside the index's observation period too",
        cohort(A, limit="First", EndStrategy=ends_at(), AdditionalCriteria=group(
            correlated(A_FAMILY, window(None, None), at_least=2, IgnoreObservationPeriod=True))),
        rows((1, "2001-03-01", "2001-03-01"), (2, "2005-01-10", "2005-01-10"), (3, "2000-12-20", "2000-12-20")),
    ),
    (
        "occurrence start date range on the criterion (dates are bound parameters)",
        cohort({"ConditionOccurrence": {"CodesetId": COND["id"], "OccurrenceStartDate": {
            "Value": "2002-01-01", "Op": "bt", "Extent": "2004-12-31"}}}, EndStrategy=ends_at()),
        rows((1, "2002-06-01", "2002-06-01"), (3, "2002-05-01", "2002-05-01")),
    ),
    (
        "gender and age on the criterion itself",
        cohort({"ConditionOccurrence": {"CodesetId": COND["id"], "Gender": [{"CONCEPT_ID": 8507}],
                                        "Age": {"Value": 21, "Op": "lt"}}}, EndStrategy=ends_at()),
        rows((3, "2000-12-20", "2000-12-20")),
    ),
    (
        "visit type on a condition: only conditions recorded in an inpatient visit",
        cohort({"ConditionOccurrence": {"CodesetId": COND["id"], "VisitType": [{"CONCEPT_ID": 9201}]}},
               EndStrategy=ends_at()),
        rows((1, "2002-06-01", "2002-06-01")),
    ),
    (
        "a visit as the primary event ends at the visit end with DateOffset EndDate",
        cohort(VISIT, EndStrategy=ends_at("EndDate")),
        rows((1, "2002-06-01", "2002-06-12"), (2, "2005-01-01", "2005-01-05")),
    ),
    (
        "observation periods as primary events, first only",
        cohort({"ObservationPeriod": {"First": True}}),
        rows((1, "2000-01-01", "2010-12-31"), (2, "2005-01-01", "2006-12-31"), (3, "2000-01-01", "2000-12-31")),
    ),
    (
        "a procedure ends, without an end strategy, at the end of observation",
        cohort({"ProcedureOccurrence": {"CodesetId": 5}}),
        rows((1, "2001-05-05", "2010-12-31")),
    ),
    (
        "an observation with a value above 2",
        cohort({"Observation": {"CodesetId": 6, "ValueAsNumber": {"Value": 2, "Op": "gt"}}}),
        rows((2, "2005-03-03", "2006-12-31")),
    ),
    (
        "a device exposure without an end date ends the day after it starts",
        cohort({"DeviceExposure": {"CodesetId": 7}}, EndStrategy=ends_at("EndDate")),
        rows((3, "2002-02-02", "2002-02-03")),
    ),
    (
        "death by cause, as the primary event",
        cohort({"Death": {"CodesetId": 8}}),
        rows((3, "2002-12-01", "2002-12-31")),
    ),
    (
        "no death in the year after (a death in another observation period does not count)",
        cohort(A, EndStrategy=ends_at(), AdditionalCriteria=group(
            correlated({"Death": {}}, window(0, 365), exactly=0))),
        rows((1, "2001-03-01", "2001-03-01"), (1, "2002-06-01", "2002-06-01"), (2, "2005-01-10", "2005-01-10"),
             (3, "2000-12-20", "2000-12-20")),
    ),
    (
        "a condition era of 2+ occurrences lasting over 100 days",
        cohort({"ConditionEra": {"CodesetId": COND["id"], "OccurrenceCount": {"Value": 2, "Op": "gte"},
                                 "EraLength": {"Value": 100, "Op": "gt"}}}, EndStrategy=ends_at("EndDate")),
        rows((1, "2001-03-01", "2002-06-10")),
    ),
    (
        "a drug era with exactly 10 gap days",
        cohort({"DrugEra": {"CodesetId": DRUG["id"], "GapDays": {"Value": 10, "Op": "eq"}}},
               EndStrategy=ends_at("EndDate")),
        rows((1, "2001-02-01", "2001-04-10")),
    ),
    (
        "a visit detail",
        cohort({"VisitDetail": {"CodesetId": INPATIENT["id"]}}, EndStrategy=ends_at("EndDate")),
        rows((1, "2002-06-02", "2002-06-05")),
    ),
    (
        "two primary criteria are a union of events",
        cohort(X, VISIT, limit="First", EndStrategy=ends_at()),
        rows((1, "2001-02-01", "2001-02-01"), (2, "2005-01-01", "2005-01-01")),
    ),
]


@pytest.fixture
def world(any_cdm: Cdm) -> Cdm:
    return load_world(any_cdm)


@pytest.mark.parametrize("case", CASES, ids=[c[0][:60] for c in CASES])
def test_spec(world: Cdm, case: tuple[str, dict, list]) -> None:
    _, definition, expected = case
    c = compile_cohort(world, from_circe_json(definition).expression)
    got = sorted((int(p), s, e) for p, s, e in world.fetch_all(c.rows_query(), c.params))
    assert got == expected
    # the same pipeline as temporary tables (how generate_cohorts runs it) gives the same rows
    (res,) = generate_cohorts(world, [(1, from_circe_json(definition, name="spec"))])
    assert [(int(p), s, e) for p, s, e in cohort_rows(world, 1)] == expected
    assert (res.persons, res.entries) == (len({r[0] for r in expected}), len(expected))


def test_attrition_of_an_exclusion_rule(world: Cdm) -> None:
    """5 qualified events (2 of person 1, 1 of person 2, 2 of person 3); 3 have no prior drug."""
    definition = from_circe_json(cohort(A, EndStrategy=ends_at(), InclusionRules=[
        {"name": "no prior drug", "expression": group(correlated(X, window(None, -1), exactly=0))}]), name="excl")
    (res,) = generate_cohorts(world, [(7, definition)])
    by_mode = {s.mode_id: (s.person_count, s.gain_count, s.person_total) for s in res.attrition}
    assert by_mode[0] == (3, 2, 5)  # events: 3 pass, 2 would be gained without the rule, 5 in all
    assert by_mode[1] == (2, 1, 3)  # persons (best event each): persons 2 and 3 pass, person 1 would be gained
    assert (res.persons, res.entries) == (2, 3)
    assert [(s.mode_id, s.base_count, s.final_count) for s in res.summary] == [(0, 5, 3), (1, 3, 2)]


def test_attrition_of_two_rules(world: Cdm) -> None:
    definition = from_circe_json(cohort(A, limit="First", EndStrategy=ends_at(), InclusionRules=[
        {"name": "age >= 50", "expression": group(demographics=[AGE_50])},
        {"name": "male", "expression": group(demographics=[MALE])}]), name="two rules")
    (res,) = generate_cohorts(world, [(8, definition)])
    # masks: person 1 meets both (3), person 2 neither (0), person 3 only 'male' (2)
    assert res.mask_counts == {(0, 3): 1, (0, 0): 1, (0, 2): 1, (1, 3): 1, (1, 0): 1, (1, 2): 1}
    stats = [(s.rule_sequence, s.name, s.person_count, s.gain_count, s.person_total) for s in res.attrition
             if s.mode_id == 0]
    assert stats == [(0, "age >= 50", 1, 1, 3), (1, "male", 2, 0, 3)]
