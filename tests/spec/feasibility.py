"""Feasibility counts (a node's answer to "how many persons would this cohort definition find?"): the
persons at each inclusion rule and in the final cohort, and the final cohort's entries, with
differentially private noise (two-sided geometric, derived from the node's secret key and the
question, so a repeated question gets the same answer) and then the policy's threshold and rounding.
Here the key is fixed and epsilon is the largest a node allows (10), at which the noise drawn for
this question is zero: the counts are the true ones."""

from __future__ import annotations

import pandas as pd

from mercia.cohorts.circe import from_circe_json
from mercia.disclosure import DisclosurePolicy
from mercia.federation.node.feasibility import feasibility_count
from mercia.federation.node.privacy_budget import FeasibilityPrivacy

from .case import EXACT, Case

TITLE = "Feasibility counts"

TABLES = {
    "person": """
        person_id | gender_concept_id | year_of_birth
        1         | 8507              | 1960
        2         | 8532              | 1960
        3         | 8532              | 1965
        4         | 8532              | 1990
        5         | 8507              | 1990
        6         | 8532              | 1950
        7         | 8532              | 1950
        8         | 8532              | 1950
    """,
    "observation_period": """
        person_id | observation_period_start_date | observation_period_end_date
        1         | 2015-01-01                    | 2021-12-31
        2         | 2015-01-01                    | 2021-12-31
        3         | 2015-01-01                    | 2021-12-31
        4         | 2015-01-01                    | 2021-12-31
        5         | 2015-01-01                    | 2021-12-31
        6         | 2015-01-01                    | 2021-12-31
        7         | 2015-01-01                    | 2021-12-31
        8         | 2015-01-01                    | 2018-12-31
    """,
    "condition_occurrence": """
        person_id | condition_concept_id | condition_start_date
        1         | 201                  | 2020-01-01
        2         | 201                  | 2020-01-01
        3         | 201                  | 2020-01-01
        3         | 201                  | 2020-05-01
        4         | 201                  | 2020-01-01
        5         | 201                  | 2020-01-01
        6         | 201                  | 2020-01-01
        8         | 201                  | 2020-01-01
    """,
    "concept": """
        concept_id | concept_name | domain_id
        201        | Asthma       | Condition
    """,
}

# An ATLAS (Circe) definition: the first asthma record in observation; aged 50 or more; female.
DEFINITION = {
    "ConceptSets": [{"id": 0, "name": "asthma", "expression": {"items": [
        {"concept": {"CONCEPT_ID": 201, "CONCEPT_NAME": "Asthma"}, "isExcluded": False,
         "includeDescendants": False, "includeMapped": False}]}}],
    "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0}}],
                        "ObservationWindow": {"PriorDays": 0, "PostDays": 0},
                        "PrimaryCriteriaLimit": {"Type": "First"}},
    "QualifiedLimit": {"Type": "First"}, "ExpressionLimit": {"Type": "First"},
    "InclusionRules": [
        {"name": "aged 50 or more", "expression": {
            "Type": "ALL", "CriteriaList": [], "Groups": [],
            "DemographicCriteriaList": [{"Age": {"Value": 50, "Op": "gte"}}]}},
        {"name": "female", "expression": {
            "Type": "ALL", "CriteriaList": [], "Groups": [],
            "DemographicCriteriaList": [{"Gender": [{"CONCEPT_ID": 8532, "CONCEPT_NAME": "FEMALE"}]}]}},
    ],
    "CollapseSettings": {"CollapseType": "ERA", "EraPad": 0},
}
PRIVACY = FeasibilityPrivacy(epsilon_per_query=10)
THRESHOLD_3 = DisclosurePolicy(name="threshold 3", threshold=3, rounding_base=1)


def _runner(policy: DisclosurePolicy):
    def run(cdm):
        out = feasibility_count(cdm, from_circe_json(DEFINITION, name="asthma, 50+, female"), policy, site="spec", privacy=PRIVACY,
                                noise_key=b"mercia-spec-key!" * 2, label="spec")
        return {"feasibility": pd.DataFrame(out["attrition"]["rows"], columns=out["attrition"]["columns"]),
                "counts": pd.DataFrame([{"persons": out["persons"], "entries": out["entries"]}])}
    return run


CASES = [
    Case(
        id="attrition",
        title="persons after each inclusion rule",
        tables=TABLES,
        call="feasibility_count(cdm, definition, policy, privacy=privacy, ...)",
        arguments={"Cohort definition (ATLAS/Circe JSON, as YAML)": DEFINITION},
        settings=PRIVACY,
        run=_runner(EXACT),
        why="Entry events: the first asthma record in observation of persons 1-6 (person 7 has none, person "
            "8's is after her observation ends): 6. Aged 50 or more in 2020: persons 1, 2, 3, 6 (born 1960, "
            "1960, 1965, 1950): 4. Female among them: 2, 3, 6: 3, each with one entry (the first event "
            "only; person 3's second record is no entry).",
        expected={
            "feasibility": """
                step                | persons
                initial events      | 6
                1. aged 50 or more  | 4
                2. female           | 3
                final cohort        | 3
            """,
            "counts": """
                persons | entries
                3       | 3
            """,
        },
    ),
    Case(
        id="suppressed",
        title="under a threshold of 3 the final count is suppressed",
        tables=TABLES,
        call="feasibility_count(cdm, definition, policy, privacy=privacy, ...)",
        arguments={"Cohort definition (ATLAS/Circe JSON, as YAML)": DEFINITION},
        settings=PRIVACY,
        policy=THRESHOLD_3,
        run=_runner(THRESHOLD_3),
        why="3 is in 1..3.",
        expected={
            "feasibility": """
                step                | persons
                initial events      | 6
                1. aged 50 or more  | 4
                2. female           |
                final cohort        |
            """,
            "counts": """
                persons | entries
                        |
            """,
        },
    ),
]
