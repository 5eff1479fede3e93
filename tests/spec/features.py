"""Features (covariates, FeatureExtraction-style): for each person's first entry into a cohort
(index = cohort start), one value per covariate. Covariate ids are `concept_id * 1000 + analysis_id`
(condition occurrence: 102 in the long-term window, 104 in the short-term one); demographics are
gender (`concept * 1000 + 1`), age (1002), 5-year age group (`(group + 1) * 1000 + 3`), index year
(`year * 1000 + 6`) and month (`month * 1000 + 7`) and days of prior observation (1008).

Covariate values are row-level data: they stay at the site and leave only as aggregates (balance
tables, model coefficients) that pass `release()`. So these examples show the values themselves (one
row per non-zero value) and no policy; `min_persons` is what drops rare covariates before any model."""

from __future__ import annotations

import pandas as pd

from mercia.features import CovariateSettings, Window, build_covariates

from .case import Case

TITLE = "Features"

TABLES = {
    "person": """
        person_id | gender_concept_id | year_of_birth
        1         | 8507              | 1970
        2         | 8532              | 1980
    """,
    "observation_period": """
        person_id | observation_period_start_date | observation_period_end_date
        1         | 2015-01-01                    | 2021-12-31
        2         | 2015-01-01                    | 2021-12-31
    """,
    "cohort": """
        cohort_definition_id | subject_id | cohort_start_date | cohort_end_date
        1                    | 1          | 2020-01-01        | 2020-01-31
        1                    | 2          | 2020-06-01        | 2020-06-30
    """,
    "condition_occurrence": """
        person_id | condition_concept_id | condition_start_date
        1         | 201                  | 2019-12-20
        1         | 202                  | 2019-03-01
        2         | 201                  | 2019-01-01
        2         | 203                  | 2020-06-01
        2         | 201                  | 2020-06-02
    """,
    # 203 is a kind of 202.
    "concept_ancestor": """
        ancestor_concept_id | descendant_concept_id
        202                 | 202
        202                 | 203
        201                 | 201
        203                 | 203
    """,
}

_NONE = dict(use_demographics=False, use_conditions=False, use_drugs=False, use_procedures=False,
             use_measurements=False, use_charlson=False, use_chads2vasc=False, roll_up=False)
WINDOWS = [Window(kind="long_term", start=-365, end=0), Window(kind="short_term", start=-30, end=0)]
CONDITIONS = CovariateSettings(**{**_NONE, "use_conditions": True}, windows=WINDOWS)
DEMOGRAPHICS = CovariateSettings(**{**_NONE, "use_demographics": True}, windows=WINDOWS)
EXCLUDED = CovariateSettings(**{**_NONE, "use_conditions": True}, windows=WINDOWS, excluded_concept_ids=[202])
MIN_PERSONS = CovariateSettings(**{**_NONE, "use_conditions": True}, windows=WINDOWS, min_persons=2)


def _runner(settings: CovariateSettings):
    def run(cdm):
        cd = build_covariates(cdm, [1], settings)
        coo = cd.X.tocoo()
        values = pd.DataFrame({
            "person_id": cd.rows["person_id"].to_numpy()[coo.row],
            "covariate_id": cd.covariate_ids[coo.col],
            "value": coo.data,
        })
        return {"covariates": values}
    return run


CASES = [
    Case(
        id="conditions",
        title="conditions in two windows",
        tables=TABLES,
        call="build_covariates(cdm, [1], settings)",
        settings=CONDITIONS,
        policy=None,
        site_only=("covariates",),
        run=_runner(CONDITIONS),
        why="Person 1 (index 2020-01-01): 201 twelve days before (both windows), 202 306 days before "
            "(long term only). Person 2 (index 2020-06-01): 201 517 days before and one day after (neither "
            "counts), 203 on the index day (both windows).",
        expected={
            "covariates": """
                person_id | covariate_id | value
                1         | 201102       | 1
                1         | 201104       | 1
                1         | 202102       | 1
                2         | 203102       | 1
                2         | 203104       | 1
            """,
        },
    ),
    Case(
        id="demographics",
        title="demographics",
        tables=TABLES,
        call="build_covariates(cdm, [1], settings)",
        settings=DEMOGRAPHICS,
        policy=None,
        site_only=("covariates",),
        run=_runner(DEMOGRAPHICS),
        why="Person 1: male (8507001), aged 2020 - 1970 = 50 (1002), age group 50-54 (11003), index year "
            "2020 (2020006) and month 1 (1007), 1,826 days observed before index (2015-01-01 to "
            "2020-01-01). Person 2: female, 40, group 40-44 (9003), June (6007), 1,826 + 152 = 1,978 days.",
        expected={
            "covariates": """
                person_id | covariate_id | value
                1         | 8507001      | 1
                1         | 1002         | 50
                1         | 11003        | 1
                1         | 2020006      | 1
                1         | 1007         | 1
                1         | 1008         | 1826
                2         | 8532001      | 1
                2         | 1002         | 40
                2         | 9003         | 1
                2         | 2020006      | 1
                2         | 6007         | 1
                2         | 1008         | 1978
            """,
        },
    ),
    Case(
        id="excluded",
        title="an excluded concept takes its descendants with it",
        tables=TABLES,
        call="build_covariates(cdm, [1], settings)",
        settings=EXCLUDED,
        policy=None,
        site_only=("covariates",),
        run=_runner(EXCLUDED),
        why="Excluding 202 also drops 203, a descendant of 202 in concept_ancestor.",
        expected={
            "covariates": """
                person_id | covariate_id | value
                1         | 201102       | 1
                1         | 201104       | 1
            """,
        },
    ),
    Case(
        id="min_persons",
        title="covariates non-zero in fewer than `min_persons` rows are dropped",
        tables=TABLES,
        call="build_covariates(cdm, [1], settings)",
        settings=MIN_PERSONS,
        policy=None,
        site_only=("covariates",),
        run=_runner(MIN_PERSONS),
        why="Every condition covariate above is non-zero for one person only: none is kept.",
        expected={
            "covariates": """
                person_id | covariate_id | value
            """,
        },
    ),
]
