"""Each analysis states its population: the `{name}_attrition` table of incidence, Kaplan-Meier and Cox
(persons after each rule), checked on a hand-made world whose every person is there for one rule,
against the rows the models themselves use, and through release()."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from mercia.analyses.incidence import IncidenceSettings, incidence
from mercia.analyses.survival import CoxSettings, SurvivalSettings, cox_data, cox_model, kaplan_meier
from mercia.disclosure import OPENSAFELY, DisclosureLog, DisclosurePolicy, release
from test_analyses_support import FEMALE, MALE, load

D0 = dt.date(2015, 1, 1)


def d(n: int) -> dt.date:
    return D0 + dt.timedelta(days=n)


def world() -> dict:
    """Target (1): persons 1-7 on day 100 (person 1 again on day 300); comparator (2): persons 5, 6, 8
    on day 150. Person 4's entry is before her observation starts (day 200); person 7's observation
    ends on day 120; person 2 has the outcome (3) on day 50, before index; persons 3, 6, 8 after.
    Person 1 is born in 2000, the others in 1970."""
    n = 8
    ops = [(p, d(200) if p == 4 else d(0), d(120) if p == 7 else d(900)) for p in range(1, n + 1)]
    rows = [(1, p, d(100), d(300)) for p in range(1, 8)] + [(1, 1, d(300), d(400))]
    rows += [(2, p, d(150), d(350)) for p in (5, 6, 8)]
    rows += [(3, 2, d(50), d(50)), (3, 3, d(400), d(400)), (3, 8, d(500), d(500)), (3, 6, d(600), d(600))]
    return {
        "persons": pd.DataFrame({"person_id": range(1, n + 1), "gender_concept_id": [MALE, FEMALE] * 4,
                                 "year_of_birth": [2000] + [1970] * (n - 1), "month_of_birth": [1] * n,
                                 "day_of_birth": [1] * n}),
        "observation_periods": pd.DataFrame(ops, columns=["person_id", "observation_period_start_date",
                                                          "observation_period_end_date"]),
        "cohorts": pd.DataFrame(rows, columns=["cohort_definition_id", "subject_id", "cohort_start_date",
                                               "cohort_end_date"]),
    }


LOOSE = DisclosurePolicy(name="loose", threshold=0, rounding_base=1, secondary_suppression=False)


def steps(table) -> list[tuple]:
    return [tuple(r) for r in table.data.itertuples(index=False)]


@pytest.fixture
def cdm(cdm_factory):
    return load(cdm_factory(), **world())


def test_kaplan_meier_population(cdm):
    s = SurvivalSettings(tar_start=30, exclude_prior_outcome=True)
    res = kaplan_meier(cdm, [1], 3, s)
    # 7 persons; person 4 has no entry in observation; person 7's time at risk (from day 130) starts
    # after her observation ends; person 2 had the outcome before it.
    assert steps(res["km_attrition"]) == [
        ("1. persons in the cohort", 7), ("2. first entry in an observation period", 6),
        ("3. time at risk ends on or after it starts", 5), ("4. persons with the outcome before time at risk removed", 4),
    ]
    # The last step is the persons the curve starts with.
    assert int(res["km_summary"].data["n_persons"].iloc[0]) == 4
    # Without the rule, no step for it.
    plain = kaplan_meier(cdm, [1], 3, SurvivalSettings(tar_start=30))["km_attrition"]
    assert [r[0] for r in steps(plain)][-1] == "3. time at risk ends on or after it starts"


def test_cox_population_names_the_persons_in_both_cohorts(cdm):
    s = CoxSettings(survival=SurvivalSettings(tar_start=30, exclude_prior_outcome=True), age=False, sex=False,
                    ph_test=False)
    res = cox_model(cdm, 1, 2, 3, s)
    assert steps(res["cox_attrition"]) == [
        ("1. persons in the cohort", 7, 3), ("2. first entry in an observation period", 6, 3),
        ("3. time at risk ends on or after it starts", 5, 3),
        ("4. persons with the outcome before time at risk removed", 4, 3),
        ("5. persons in both target and comparator removed", 2, 1),
    ]
    # The last step is the rows the model is fitted on (persons 5 and 6 are in both cohorts).
    data = cox_data(cdm, 1, 2, 3, s)
    assert [int((data.X[:, 0] == 1).sum()), int((data.X[:, 0] == 0).sum())] == [2, 1]


def test_incidence_population(cdm):
    s = IncidenceSettings(outcome_cohort_id=3, denominator_cohort_id=1, age_groups=[(0, 30)], by=["age_group"])
    res = incidence(cdm, s)
    assert steps(res["incidence_attrition"]) == [
        ("1. persons in the denominator cohort", 7), ("2. entry in an observation period", 6),
        ("3. days in an entry after washout_days and in the study window", 6),
        ("4. persons with the outcome before time at risk removed", 5),
        ("5. time at risk in an age group", 1),
    ]
    assert int(res["incidence"].data["n_persons"].iloc[0]) == 1


def test_population_tables_are_released_like_any_count(cdm):
    res = cox_model(cdm, 1, 2, 3, CoxSettings(age=False, sex=False, ph_test=False))
    table = res["cox_attrition"]
    assert table.sequential and table.dimensions == ["step"]
    loose = release(table, LOOSE, log=DisclosureLog()).data
    assert loose["n_target"].tolist() == table.data["n_target"].tolist()
    # Under OpenSAFELY (threshold 7) every count here is small: the steps stay, their counts do not.
    strict = release(table, OPENSAFELY, log=DisclosureLog()).data
    assert strict["step"].tolist() == table.data["step"].tolist()
    assert strict[["n_target", "n_comparator"]].isna().all().all()
    assert np.array_equal(loose["step"], strict["step"])


def test_the_report_prints_a_population_line_per_analysis_and_arm() -> None:
    """From released tables only: the incidence table's one column, a KM table's column per target
    (named by the package's cohort), and the cohort method's table per outcome; suppressed counts are
    dashes."""
    from mercia.analyses.population import population_table
    from mercia.report.study import StudyReport
    from mercia.study.package import StudyPackage

    c = {"name": "Hypertension", "concepts": {"c": {"name": "c", "conditions": ["hypertension"]}},
         "entry": [{"condition": "c"}]}
    pkg = StudyPackage.from_dict({"name": "x", "cohorts": {"htn": {"definition": c}},
                                  "analyses": [{"type": "cohort_entries", "cohorts": ["htn"]}]})
    cid = pkg.cohort_ids["htn"]
    made = [
        population_table("km_attrition", ["persons in the cohort", "first entry in an observation period"],
                         {f"cohort_{cid}": [120, 3]}),
        population_table("cm_attrition_gi_bleed", ["original cohorts", "removed persons in both cohorts"],
                         {"n_target": [200, 150], "n_comparator": [300, 250]}),
    ]
    policy = DisclosurePolicy(name="p", threshold=5, rounding_base=1)
    tables = {t.name: release(t, policy, log=DisclosureLog()) for t in made}
    b = StudyReport(pkg, tables, DisclosureLog(), policy, {})
    km = b.population("km")
    assert km.count('<p class="population">') == 1
    assert "Population (htn (Hypertension)): persons in the cohort <b>120</b> → first entry in an observation period <b>—</b>" in km
    cm = b.population("cm")
    assert cm.count('<p class="population">') == 2
    assert "Population (outcome gi_bleed, target): original cohorts <b>200</b> → removed persons in both cohorts <b>150</b>" in cm
    assert b.population("other") == ""
