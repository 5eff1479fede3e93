"""Characterization (Table 1): for each person's first entry into a cohort (index = cohort start), age at
index (index year - year of birth) with its mean and SD, 5-year age groups and sex, and per window of
days before index the persons with at least one record of each concept (both window ends inclusive)."""

from __future__ import annotations

from mercia.analyses import CharacterizationSettings, characterize
from mercia.disclosure import DisclosurePolicy

from .case import EXACT, Case

TITLE = "Characterization"

TABLES = {
    "person": """
        person_id | gender_concept_id | year_of_birth
        1         | 8507              | 1970
        2         | 8532              | 1980
        3         | 8532              | 1990
        4         | 8507              | 1955
    """,
    "cohort": """
        cohort_definition_id | subject_id | cohort_start_date | cohort_end_date
        1                    | 1          | 2020-01-01        | 2020-01-31
        1                    | 1          | 2021-01-01        | 2021-01-31
        1                    | 2          | 2020-06-01        | 2020-06-30
        1                    | 3          | 2020-03-01        | 2020-03-31
    """,
    "condition_occurrence": """
        person_id | condition_concept_id | condition_start_date
        1         | 201                  | 2019-12-15
        2         | 201                  | 2019-07-01
        3         | 201                  | 2015-01-01
        2         | 202                  | 2020-06-01
        1         | 202                  | 2020-01-02
        4         | 201                  | 2020-01-01
    """,
    "concept": """
        concept_id | concept_name | domain_id
        201        | Asthma       | Condition
        202        | Cough        | Condition
    """,
}

SETTINGS = CharacterizationSettings(domains=["condition"], measurement_values=False)
MEASUREMENTS = {**TABLES, "measurement": """
        person_id | measurement_concept_id | measurement_date | value_as_number | unit_concept_id
        1         | 3000                   | 2019-06-01       | 5.0             | 8840
        1         | 3000                   | 2019-12-01       | 7.0             | 8840
        2         | 3000                   | 2020-05-01       | 4.0             | 8840
        3         | 3000                   | 2018-01-01       | 6.0             | 8840
        3         | 3000                   | 2020-03-02       | 9.0             | 8840
    """}
VALUES = CharacterizationSettings(domains=["measurement"], measurement_values=True)
THRESHOLD_1 = DisclosurePolicy(name="threshold 1", threshold=1, rounding_base=1)


def _runner(policy: DisclosurePolicy, settings: CharacterizationSettings = SETTINGS):
    def run(cdm):
        return {k: v.data for k, v in characterize(cdm, [1], settings).release(policy).items()}
    return run


CASES = [
    Case(
        id="table1",
        title="demographics, age and conditions per window",
        tables=TABLES,
        call="characterize(cdm, [1], settings)",
        settings=SETTINGS,
        run=_runner(EXACT),
        why="First entries: person 1 on 2020-01-01 (aged 2020 - 1970 = 50), person 2 on 2020-06-01 (40), "
            "person 3 on 2020-03-01 (30); person 1's second entry and person 4 (no entry) are not counted. "
            "Age: mean 40, sample SD sqrt((10^2 + 0 + 10^2) / 2) = 10. Asthma (201) is 17 days before person "
            "1's index, 336 days before person 2's and 5 years before person 3's: 1 person in -30..0, 2 in "
            "-365..0, 3 any time prior. Cough (202) is on person 2's index day (in every window); person "
            "1's is the day after index, not counted.",
        expected={
            "table1_demographics": """
                cohort_id | variable  | level  | n | percent
                1         | age_group | 30-34  | 1 | 33.333
                1         | age_group | 40-44  | 1 | 33.333
                1         | age_group | 50-54  | 1 | 33.333
                1         | sex       | Female | 2 | 66.667
                1         | sex       | Male   | 1 | 33.333
                1         | age_group | Total  | 3 | 100.000
                1         | sex       | Total  | 3 | 100.000
            """,
            "table1_age": """
                cohort_id | n | age_mean | age_sd
                1         | 3 | 40.000   | 10.000
            """,
            "table1_covariates": """
                cohort_id | window    | concept_id | concept_name | n | n_cohort | percent
                1         | -365..0   | 201        | Asthma       | 2 | 3        | 66.667
                1         | -365..0   | 202        | Cough        | 1 | 3        | 33.333
                1         | -30..0    | 201        | Asthma       | 1 | 3        | 33.333
                1         | -30..0    | 202        | Cough        | 1 | 3        | 33.333
                1         | any prior | 201        | Asthma       | 3 | 3        | 100.000
                1         | any prior | 202        | Cough        | 1 | 3        | 33.333
            """,
        },
    ),
    Case(
        id="measurement_values",
        title="measurement values: each person's latest value in the window",
        tables=MEASUREMENTS,
        call="characterize(cdm, [1], settings)",
        settings=VALUES,
        run=_runner(EXACT, VALUES),
        why="-365..0: person 1's latest value is 7.0 (2019-12-01; the 5.0 is older), person 2's 4.0; person "
            "3's 6.0 is older than a year and her 9.0 is the day after index. n 2, mean 5.5, sample SD "
            "sqrt((1.5^2 + 1.5^2) / 1) = 2.121. Any time prior adds person 3's 6.0: mean 17 / 3 = 5.667, SD "
            "sqrt((1.333^2 + 1.667^2 + 0.333^2) / 2) = 1.528. Both values of -30..0 would be 31 days "
            "before index: no row.",
        expected={
            "table1_measurements": """
                cohort_id | window    | concept_id | unit_concept_id | n | mean  | sd
                1         | -365..0   | 3000       | 8840            | 2 | 5.500 | 2.121
                1         | any prior | 3000       | 8840            | 3 | 5.667 | 1.528
            """,
            "table1_covariates": """
                cohort_id | window    | domain      | concept_id | n
                1         | -365..0   | measurement | 3000       | 2
                1         | any prior | measurement | 3000       | 3
            """,
        },
    ),
    Case(
        id="suppressed",
        title="under a threshold of 1, the rows resting on one person go",
        tables=TABLES,
        call="characterize(cdm, [1], settings)",
        settings=SETTINGS,
        policy=THRESHOLD_1,
        run=_runner(THRESHOLD_1),
        why="Counts of 1 are suppressed; a concept's row exists only because someone has it, so rows whose "
            "count is suppressed are dropped, as are the age bands and the sex holding one person each (the "
            "totals stay).",
        expected={
            "table1_demographics": """
                cohort_id | variable  | level  | n
                1         | sex       | Female | 2
                1         | age_group | Total  | 3
                1         | sex       | Total  | 3
            """,
            "table1_covariates": """
                cohort_id | window    | concept_id | concept_name | n | n_cohort
                1         | -365..0   | 201        | Asthma       | 2 | 3
                1         | any prior | 201        | Asthma       | 3 | 3
            """,
        },
    ),
]
