"""truth.json: what was planted, stated exactly enough for an analysis to be checked against it."""

from __future__ import annotations

from typing import Any

from mercia.synth import params as P
from mercia.synth.concepts import DRUG, concept_tables
from mercia.synth.profiles import SiteProfile

TRUTH_VERSION = 1

TIME_AT_RISK = (
    "On treatment: the hazard ratio applies on every day from the drug_exposure_start_date of a course's "
    "first prescription to the drug_exposure_end_date of its last (inclusive), gaps between its "
    "prescriptions included. Within a course prescriptions follow each other with gaps of 0-14 days; "
    "courses of the same drug in one person are more than 60 days apart, so OHDSI drug_era (30-day "
    "persistence window) rebuilds courses exactly. Courses end at the end of the observation period "
    "(deregistration or death). Outside courses the multiplier is 1."
)

HAZARD_MODEL = (
    "Events are a Poisson process (recurrent) whose rate per person-year on day t is "
    "exp(log_rate + age_per_decade*(age-60)/10 + sum(coef*x)) * acute_rate_multiplier * HR(t), where "
    "age = whole-day age in years on 1 January of t's calendar year, x_condition = 1 when the "
    "condition's first record (the GP or outpatient diagnosis of the chronic condition) is on or before "
    "t, x_male = 1 for men, x_smoker = ever smoked (not recorded in the CDM), and HR(t) is the planted "
    "hazard ratio of the exposure course covering t (1 outside courses). The rate is constant between "
    "changes of these, so event days are exact draws of that process. An event is fatal (death within "
    "30 days, inside the observation period) with probability logistic(logit(case_fatality) + "
    "case_fatality_age*(age-60)/10), age on the event day; nothing is recorded after death."
)


def _acute_spec(a: P.Acute) -> dict[str, Any]:
    return {"log_rate": a.log_rate, "rate_at_60_per_1000py": round(1000 * 2.718281828459045 ** a.log_rate, 4),
            "age_per_decade": a.age, "coef": dict(a.coef), "case_fatality": a.case_fatality,
            "case_fatality_age": a.case_fatality_age, "setting": a.setting}


def _cond(key: str) -> dict[str, Any]:
    from mercia.vocab import catalog as c

    concept = c.CONDITIONS[key]
    src = c.CONDITION_SOURCE_CODES[key]
    return {"name": key, "concept_id": concept.concept_id, "concept_name": concept.name,
            "source_vocabulary": src.vocabulary_id, "source_code": src.code}


def _drug(key: str) -> dict[str, Any]:
    ct = concept_tables()
    return {"name": key, "ingredient_concept_id": int(ct.drug_ingredient[DRUG[key]]),
            "drug_concept_id": int(ct.drug[DRUG[key]]), "drug_source_value": ct.drug_source[DRUG[key]]}


def _age_sex() -> list[dict[str, Any]]:
    from mercia.vocab import catalog as c

    return [{"name": "age", "definition": "years on the course's start day; log-hazard linear in age "
             "(coefficient per decade in baseline_hazard.age_per_decade)"},
            {"name": "sex", "definition": "person.gender_concept_id",
             "concept_ids": {k: v.concept_id for k, v in c.GENDER.items()}}]


def _rate_ratio(stats: dict[str, float], a: list[str], b: list[str], tag: str) -> dict[str, Any]:
    def rate(names: list[str]) -> tuple[float, float]:
        ev = sum(stats.get(f"{n}.{tag}_events_exposed", 0.0) for n in names)
        py = sum(stats.get(f"{n}.exposed_days", 0.0) for n in names) / 365.25
        return ev, py

    ea, pa_ = rate(a)
    eb, pb = rate(b)
    rr = (ea / pa_) / (eb / pb) if pa_ > 0 and pb > 0 and ea > 0 and eb > 0 else None
    return {"target_events": ea, "target_person_years": round(pa_, 1), "comparator_events": eb,
            "comparator_person_years": round(pb, 1), "crude_rate_ratio": None if rr is None else round(rr, 3)}


def build_truth(*, profile: SiteProfile, seed: int, persons: int, first_person_id: int,
                stats: dict[str, float], rows: dict[str, int],
                marginal: dict[str, Any] | None = None) -> dict[str, Any]:
    gi = P.ACUTE_BY_KEY["gi_bleeding"]
    hf = P.ACUTE_BY_KEY["heart_failure_admission"]
    nsaid = {
        "id": "nsaid_gi_bleeding",
        "description": "NSAID courses multiply the GI-bleeding hazard while exposed; diclofenac vs celecoxib HR 1.5.",
        "outcome": {**_cond("gi_bleeding"), "definition": "condition_occurrence of gi_bleeding "
                    "(recorded at an inpatient visit reached through an A&E visit)", "recurrent": True},
        "exposures": [{**_drug(k), "hazard_ratio_vs_unexposed": hr} for k, hr in P.NSAID_GI_HR.items()],
        "contrast": {"target": "diclofenac", "comparator": "celecoxib",
                     "hazard_ratio": round(P.NSAID_GI_HR["diclofenac"] / P.NSAID_GI_HR["celecoxib"], 6)},
        "population": "persons with osteoarthritis; 60% get an NSAID course starting Exp(mean 180 d) after "
                      "the diagnosis record; 50% of them a second course of the same drug later",
        "comparator_definition": "new users: first course of diclofenac vs first course of celecoxib "
                                 "(no NSAID before); each person only ever uses one NSAID",
        "time_at_risk": TIME_AT_RISK,
        "baseline_hazard": _acute_spec(gi),
        "confounders": [*_age_sex(), _cond("atrial_fibrillation"), _cond("ckd")],
        "treatment_assignment": {
            "model": "multinomial logit at the course's first prescription, diclofenac the reference; "
                     "age = (age-65) in years; year_after_2013 = max(year-2013, 0); celecoxib also gets "
                     "the site's celecoxib_preference",
            "coef": P.NSAID_CHOICE, "site_celecoxib_preference": profile.celecoxib_preference},
        "expected_bias": "celecoxib is channelled to older patients and those with AF or CKD, who bleed "
                         "more: the crude diclofenac-vs-celecoxib ratio is below 1.5; adjusting for age, "
                         "sex, AF and CKD recovers it (calendar year changes the choice but not the outcome).",
        "recommended_analysis": "new-user cohort of first diclofenac vs first celecoxib courses, on-treatment "
                                "time at risk, first GI bleed; Cox PH with age (linear), sex, AF and CKD "
                                "recorded on or before the course start",
        "realised": _rate_ratio(stats, ["diclofenac"], ["celecoxib"], "gi_bleeding"),
    }
    sglt2 = {
        "id": "sglt2_hf_admission",
        "description": "SGLT2 inhibitors (empagliflozin, dapagliflozin) multiply the heart-failure "
                       "admission hazard by 0.7 while exposed; gliclazide by 1.0.",
        "outcome": {**_cond("heart_failure"), "definition": "condition_occurrence of heart_failure linked "
                    "(visit_occurrence_id) to an inpatient visit; GP/outpatient heart-failure records are "
                    "the chronic diagnosis, not the outcome", "recurrent": True},
        "exposures": [{**_drug(k), "hazard_ratio_vs_unexposed": P.SGLT2_HF_HR} for k in P.SGLT2S]
                     + [{**_drug("gliclazide"), "hazard_ratio_vs_unexposed": 1.0}],
        "contrast": {"target": "sglt2_inhibitor", "comparator": "gliclazide", "hazard_ratio": P.SGLT2_HF_HR},
        "population": "type 2 diabetes on metformin (85% start within 90 d of the diagnosis record); 60% add "
                      "a second-line drug Exp(mean 3.5 y) after starting metformin while still on it",
        "comparator_definition": "new users of a second-line drug added to metformin: first SGLT2 inhibitor "
                                 "course vs first gliclazide course; each person only ever uses one",
        "time_at_risk": TIME_AT_RISK,
        "baseline_hazard": _acute_spec(hf),
        "confounders": [*_age_sex(), _cond("ckd"), _cond("hypertension"),
                        _cond("atrial_fibrillation"), _cond("heart_failure"), _cond("type2_diabetes")],
        "treatment_assignment": {
            "model": "logistic P(SGLT2i) at the second-line start: intercept + site sglt2_uptake + "
                     "year*(year-2019) + age*(age-60) + coef*condition recorded; 0 before "
                     f"{P.SGLT2_FIRST_YEAR}; empagliflozin 55%, dapagliflozin 45%",
            "coef": P.SGLT2_CHOICE, "site_sglt2_uptake": profile.sglt2_uptake},
        "expected_bias": "SGLT2 inhibitors are channelled to patients with CKD, heart failure, AF and "
                         "hypertension, who are admitted more: the crude ratio is above 0.7 (towards or past "
                         "1); adjusting for the listed confounders recovers 0.7.",
        "recommended_analysis": "new-user cohort of first SGLT2i vs first gliclazide courses, on-treatment "
                                "time at risk, first heart-failure admission; Cox PH with age (linear), sex, "
                                "CKD, hypertension, AF and heart failure recorded (GP/outpatient) on or before "
                                "the course start",
        "realised": _rate_ratio(stats, list(P.SGLT2S), ["gliclazide"], "heart_failure_admission"),
    }
    if marginal:
        from mercia.synth.marginal import CONTRASTS, marginal_truth

        by_id = {c.effect: c for c in CONTRASTS}
        for effect in (nsaid, sglt2):
            # The contrast's hazard_ratio is conditional on the covariates; what a PS-matched analysis
            # estimates is marginal (the hazard ratio is not collapsible): both are stated.
            effect["contrast"]["hazard_ratio_scale"] = "conditional on the covariates of the hazard model"
            effect["contrast"]["marginal_in_treated"] = marginal_truth(marginal, by_id[effect["id"]])
    negative_controls = [
        {"exposure": _drug(d)["name"], "ingredient_concept_id": _drug(d)["ingredient_concept_id"],
         "outcome": _cond(o)["name"], "outcome_concept_id": _cond(o)["concept_id"], "hazard_ratio": 1.0}
        for d, o in (("omeprazole", "hip_fracture"), ("levothyroxine", "pneumonia"),
                     ("sertraline", "myocardial_infarction"), ("atorvastatin", "gi_bleeding"),
                     ("amlodipine", "hip_fracture"), ("salbutamol", "gi_bleeding"))
    ]
    return {
        "truth_version": TRUTH_VERSION,
        "generator": "mercia.synth",
        "site": profile.name,
        "description": profile.description,
        "seed": seed,
        "persons": persons,
        "person_id_range": [first_person_id, first_person_id + persons - 1],
        "cdm_version": "5.4",
        "data_window": [P.DATA_START, P.DATA_END],
        "profile": profile.model_dump(mode="json"),
        "planted_effects": [nsaid, sglt2],
        "negative_controls": {"note": "no drug other than those in planted_effects has any effect on any "
                              "outcome; these pairs are confounded by design but have true HR 1",
                              "pairs": negative_controls},
        "acute_hazard_model": HAZARD_MODEL,
        "acute_outcomes": {a.key: _acute_spec(a) for a in P.ACUTE},
        "chronic_conditions": {
            "model": "onset age ~ Gompertz: r*b/c*(exp(c*(age-a0))-1) = Exp(1), r = exp(sum coef*x); bmi per "
                     "5 kg/m2 above 27.5, dep = IMD quintile - 3, earlier conditions as lifetime flags. "
                     "Recorded at onset if observed, else at the next registration check (0-60 days after "
                     "registration) if registered later, else never.",
            "conditions": {c.key: {**_cond(c.key), "a0": c.a0, "b": c.b, "c": c.c, "sex": c.sex,
                                   "coef": dict(c.coef), "excess_mortality_per_year": c.excess_mortality}
                           for c in P.CHRONIC},
        },
        "prevalence_targets": {
            "type2_diabetes_adults": [0.05, 0.09], "hypertension_adults": [0.22, 0.32],
            "ckd_adults": [0.03, 0.09], "atrial_fibrillation_all": [0.015, 0.04],
            "copd_adults": [0.015, 0.05], "asthma_all": [0.05, 0.12],
            "note": "recorded prevalence among persons observed on 2020-01-01; ranges, since sites differ",
        },
        "mortality": P.MORTALITY,
        "observation": "GP registration periods inside the data window; some persons leave and come back "
                       "(two periods); every record lies inside a period; periods end at death.",
        "nhs_numbers": "person_source_value: synthetic 10-digit NHS numbers starting with 9 (not an issued "
                       "range) with valid modulus-11 check digits; unique across a federation",
        "eras": "drug_era and condition_era written by the generator by OHDSI's rules (persistence "
                "window 30 days), identical to mercia.cdm.eras.derive_eras",
        "realised_counts": {k: v for k, v in stats.items()},
        "rows": rows,
    }
