"""The comparative cohort method, step by step: target (cohort 1) vs comparator (cohort 2) for an
outcome (cohort 3). Covariates at index; the study population (each step a row of the attrition
table); a propensity model (logistic regression of treatment on the covariates, with a normal prior);
greedy 1:1 matching on the logit of the score within a caliper of 0.2 standard deviations; covariate
balance before and after (means, population SDs, standardized mean differences), as OHDSI
CohortMethod does. The example is small enough to work out by hand: one covariate, so the fitted
score of a person is the share treated among persons with the same covariate value."""

from __future__ import annotations

from mercia.analyses.cohort_method import CohortMethodSettings, cohort_method
from mercia.analyses.propensity import PsSettings
from mercia.disclosure import DisclosurePolicy
from mercia.features import CovariateSettings, Window

from .case import EXACT, Case

TITLE = "Cohort method"

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
        8         | 8532              | 1970
        9         | 8507              | 1970
        10        | 8532              | 1970
        11        | 8507              | 1970
        12        | 8532              | 1970
    """,
    "observation_period": """
        person_id | observation_period_start_date | observation_period_end_date
        1         | 2019-01-01                    | 2021-12-31
        2         | 2019-01-01                    | 2021-12-31
        3         | 2019-01-01                    | 2021-12-31
        4         | 2019-01-01                    | 2021-12-31
        5         | 2019-01-01                    | 2021-12-31
        6         | 2019-01-01                    | 2021-12-31
        7         | 2019-01-01                    | 2021-12-31
        8         | 2019-01-01                    | 2021-12-31
        9         | 2019-01-01                    | 2021-12-31
        10        | 2019-01-01                    | 2021-12-31
        11        | 2019-01-01                    | 2021-12-31
        12        | 2019-01-01                    | 2021-12-31
    """,
    # Cohort 1: target (persons 1-6), 2: comparator (7-12), 3: the outcome.
    "cohort": """
        cohort_definition_id | subject_id | cohort_start_date | cohort_end_date
        1                    | 1          | 2020-01-01        | 2020-12-31
        1                    | 2          | 2020-01-01        | 2020-12-31
        1                    | 3          | 2020-01-01        | 2020-12-31
        1                    | 4          | 2020-01-01        | 2020-12-31
        1                    | 5          | 2020-01-01        | 2020-12-31
        1                    | 6          | 2020-01-01        | 2020-12-31
        2                    | 7          | 2020-01-01        | 2020-12-31
        2                    | 8          | 2020-01-01        | 2020-12-31
        2                    | 9          | 2020-01-01        | 2020-12-31
        2                    | 10         | 2020-01-01        | 2020-12-31
        2                    | 11         | 2020-01-01        | 2020-12-31
        2                    | 12         | 2020-01-01        | 2020-12-31
        3                    | 1          | 2020-02-01        | 2020-02-01
        3                    | 7          | 2020-03-01        | 2020-03-01
    """,
    "condition_occurrence": """
        person_id | condition_concept_id | condition_start_date
        1         | 300                  | 2019-12-01
        2         | 300                  | 2019-12-01
        3         | 300                  | 2019-12-01
        4         | 300                  | 2019-12-01
        7         | 300                  | 2019-12-01
        8         | 300                  | 2019-12-01
    """,
}

SETTINGS = CohortMethodSettings(
    covariates=CovariateSettings(
        windows=[Window(kind="long_term", start=-365, end=0)], use_demographics=False, use_drugs=False,
        use_procedures=False, use_measurements=False, use_charlson=False, use_chads2vasc=False, roll_up=False),
    ps=PsSettings(variance=1_000_000.0),
)
THRESHOLD_2 = DisclosurePolicy(name="threshold 2", threshold=2, rounding_base=1)
# The same persons as (covariate 300102, treatment): what the reference (scikit-learn) is fitted on.
REFERENCE_ROWS = [(1, 1)] * 4 + [(0, 1)] * 2 + [(1, 0)] * 2 + [(0, 0)] * 4
# The crude outcome model's rows as (days, event, treatment): time at risk is index + 0 to cohort end + 0,
# 366 days (2020 is a leap year); an event's time is its day - risk start + 1.
CRUDE_ROWS = [(32, 1, 1)] + [(366, 0, 1)] * 5 + [(61, 1, 0)] + [(366, 0, 0)] * 5


def _runner(policy: DisclosurePolicy):
    def run(cdm):
        return {k: v.data for k, v in cohort_method(cdm, 1, 2, [3], SETTINGS).release(policy).items()}
    return run


_WHY = ("Condition 300 (covariate 300102, long term) is recorded for 4 of the 6 target persons and 2 of the "
        "6 comparator persons. With one binary covariate and a weak prior (variance 10^6) the logistic "
        "model is the saturated one: the score is 4/6 = 2/3 with the condition and 2/6 = 1/3 without, so "
        "the intercept is log((1/3)/(2/3)) = -0.693 and the coefficient log(2) - log(1/2) = 1.386 "
        "(scikit-learn's LogisticRegression without penalty on the 12 rows agrees). The AUC: of 36 "
        "target-comparator pairs 16 are ordered right and 16 tied, (16 + 16/2) / 36 = 0.667; every "
        "preference score lies in 0.3..0.7 (equipoise 1). Matching: the logits are +-0.693, their SD "
        "0.724, so the caliper (0.145) keeps matches within a score; 1:1 gives 2 pairs with the "
        "condition and 2 without, 4 + 4 persons. Balance: before, 0.667 vs 0.333, population SDs 0.471 "
        "both, SMD 0.333 / 0.471 = 0.707; after, 0.5 vs 0.5, SMD 0. The crude estimate: a Cox model of "
        "treatment alone on everyone, person 1's outcome on day 32 of the time at risk, person 7's on day "
        "61, the others censored after 366 days; lifelines' CoxPHFitter on these 12 rows gives log HR "
        "0.091 (SE 1.416, HR 1.095, 95% CI 0.068..17.564). Days at risk: 6 x 366 = 2,196 per arm.")

CASES = [
    Case(
        id="ps_matching_balance",
        title="propensity model, matching and balance on one covariate",
        tables=TABLES,
        call="cohort_method(cdm, 1, 2, [3], settings)",
        settings=SETTINGS,
        run=_runner(EXACT),
        why=_WHY,
        expected={
            "cm_attrition_3": """
                step                                                 | n_target | n_comparator
                1. original cohorts (first exposure)                 | 6        | 6
                2. in observation at index with >= 0 days before     | 6        | 6
                3. no prior outcome                                  | 6        | 6
                4. at least 1 day(s) at risk                         | 6        | 6
                5. matched on propensity score                       | 4        | 4
            """,
            "cm_ps_model": """
                covariate_id | coef
                300102       | 1.386
                0            | -0.693
            """,
            "cm_ps_diagnostics": """
                auc   | equipoise
                0.667 | 1.000
            """,
            "cm_balance_3": """
                covariate_id | before_mean_target | before_mean_comparator | before_smd | after_mean_target | after_mean_comparator | after_smd
                300102       | 0.667              | 0.333                  | 0.707      | 0.500             | 0.500                 | 0.000
            """,
            "cm_estimates": """
                outcome_id | adjustment | log_rr | se_log_rr | rr    | ci_lower | ci_upper
                3          | crude      | 0.091  | 1.416     | 1.095 | 0.068    | 17.564
            """,
            "cm_counts": """
                adjustment | target_subjects | comparator_subjects | target_events | comparator_events | target_days | comparator_days
                crude      | 6               | 6                   | 1             | 1                 | 2196        | 2196
            """,
        },
        # Which equal-score persons are matched is not worked out here: the estimate after matching is not shown.
        only_rows={"cm_estimates": {"adjustment": "crude"}, "cm_counts": {"adjustment": "crude"}},
    ),
    Case(
        id="suppressed",
        title="under a threshold of 2, the covariate resting on 2 comparators goes",
        tables=TABLES,
        call="cohort_method(cdm, 1, 2, [3], settings)",
        settings=SETTINGS,
        policy=THRESHOLD_2,
        run=_runner(THRESHOLD_2),
        why="Only 2 comparator persons have the condition: its propensity coefficient and its balance row "
            "rest on 2 persons and are withheld (the rows go: their names would say someone has it).",
        expected={
            "cm_ps_model": """
                covariate_id | coef
                0            | -0.693
            """,
            "cm_balance_3": """
                covariate_id | before_smd
            """,
        },
    ),
]
