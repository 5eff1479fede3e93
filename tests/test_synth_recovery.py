"""A Cox model on the synthetic data recovers the planted hazard ratios once it adjusts for the
confounders truth.json names, and the crude model does not."""

from __future__ import annotations

import numpy as np
import pytest

from mercia.cdm import Cdm
from mercia.synth import DEFAULT_SITES, generate_site
from mercia.vocab import catalog as cat

lifelines = pytest.importorskip("lifelines")

pytestmark = pytest.mark.slow


def new_user_cohort(cdm: Cdm, target: list[str], comparator: list[str], outcome_sql: str,
                    confounders: list[str]):
    """First course (drug_era-like, 30-day persistence) of a target or comparator drug; time from its
    start to the first outcome inside it, else censored at its end. Covariates on the start day."""
    t_ids = ", ".join(str(cat.DRUG_PRODUCTS[d].concept_id) for d in target)
    all_ids = ", ".join(str(cat.DRUG_PRODUCTS[d].concept_id) for d in target + comparator)
    ip = cat.VISITS["inpatient"].concept_id
    cov = ", ".join(
        f"""EXISTS (SELECT 1 FROM condition_occurrence x JOIN visit_occurrence v USING (visit_occurrence_id)
            WHERE x.person_id = c.person_id AND x.condition_concept_id = {cat.CONDITIONS[k].concept_id}
            AND v.visit_concept_id <> {ip} AND x.condition_start_date <= c.s)::INT AS {k}"""
        for k in confounders
    )
    rows = cdm.fetch_arrow(f"""
        WITH rx AS (SELECT person_id, drug_concept_id, drug_exposure_start_date s, drug_exposure_end_date e,
                    SUM(new) OVER (PARTITION BY person_id ORDER BY drug_exposure_start_date ROWS UNBOUNDED PRECEDING) course
             FROM (SELECT *, CASE WHEN drug_exposure_start_date > MAX(drug_exposure_end_date) OVER (
                     PARTITION BY person_id ORDER BY drug_exposure_start_date
                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) + 30 THEN 1 ELSE 0 END new
                   FROM drug_exposure WHERE drug_concept_id IN ({all_ids}))),
        c AS (SELECT person_id, ANY_VALUE(drug_concept_id) drug, MIN(s) s, MAX(e) e FROM rx WHERE course <= 1 GROUP BY 1),
        ev AS ({outcome_sql}),
        first_ev AS (SELECT c.person_id, MIN(ev.d) d FROM c JOIN ev ON ev.person_id = c.person_id
                     AND ev.d BETWEEN c.s AND c.e GROUP BY 1)
        SELECT (c.drug IN ({t_ids}))::INT AS treated,
               COALESCE(f.d, c.e) - c.s + 1 AS time, (f.d IS NOT NULL)::INT AS event,
               (year(c.s) - p.year_of_birth - 60) / 10.0 AS age10,
               (p.gender_concept_id = {cat.GENDER['male'].concept_id})::INT AS male, {cov}
        FROM c JOIN person p USING (person_id) LEFT JOIN first_ev f USING (person_id)""")
    return rows.to_pandas()


def cox_hr(df, covariates: list[str]) -> tuple[float, float, float]:
    fit = lifelines.CoxPHFitter().fit(df[["time", "event", "treated", *covariates]], "time", "event")
    s = fit.summary.loc["treated"]
    return float(np.exp(s["coef"])), float(s["exp(coef) lower 95%"]), float(s["exp(coef) upper 95%"])


@pytest.fixture(scope="module")
def site():
    profile = next(p for p in DEFAULT_SITES if p.name == "fenwold").model_copy(update={"acute_rate_multiplier": 8.0})
    cdm = Cdm.open(None)
    truth = generate_site(cdm, persons=120_000, seed=21, profile=profile)
    yield cdm, truth
    cdm.close()


def test_cox_recovers_nsaid_gi_bleeding_hr(site):
    cdm, truth = site
    eff = next(e for e in truth["planted_effects"] if e["id"] == "nsaid_gi_bleeding")
    gi = cat.CONDITIONS["gi_bleeding"].concept_id
    df = new_user_cohort(cdm, ["diclofenac"], ["celecoxib"],
                         f"SELECT person_id, condition_start_date d FROM condition_occurrence WHERE condition_concept_id = {gi}",
                         ["atrial_fibrillation", "ckd"])
    crude, _, _ = cox_hr(df, [])
    adj, lo, hi = cox_hr(df, ["age10", "male", "atrial_fibrillation", "ckd"])
    planted = eff["contrast"]["hazard_ratio"]
    assert lo < planted < hi, (adj, lo, hi)
    assert crude < planted and abs(np.log(crude / planted)) > abs(np.log(adj / planted))


def test_cox_recovers_sglt2_hf_admission_hr(site):
    cdm, truth = site
    eff = next(e for e in truth["planted_effects"] if e["id"] == "sglt2_hf_admission")
    hf = cat.CONDITIONS["heart_failure"].concept_id
    ip = cat.VISITS["inpatient"].concept_id
    conf = ["ckd", "hypertension", "atrial_fibrillation", "heart_failure"]
    df = new_user_cohort(cdm, ["empagliflozin", "dapagliflozin"], ["gliclazide"], f"""
        SELECT c.person_id, c.condition_start_date d FROM condition_occurrence c JOIN visit_occurrence v
        USING (visit_occurrence_id) WHERE c.condition_concept_id = {hf} AND v.visit_concept_id = {ip}""", conf)
    crude, _, _ = cox_hr(df, [])
    adj, lo, hi = cox_hr(df, ["age10", "male", *conf])
    planted = eff["contrast"]["hazard_ratio"]
    assert lo < planted < hi, (adj, lo, hi)
    assert crude > planted and abs(np.log(crude / planted)) > abs(np.log(adj / planted))
