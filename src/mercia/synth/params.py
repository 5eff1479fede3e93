"""The generative model's parameters, in one place, so truth.json can quote them exactly.

Conventions:
- Chronic conditions: onset age is drawn from a Gompertz cumulative hazard starting at ``a0``,
  H(a) = r * b/c * (exp(c (a - a0)) - 1), where r = exp(linear predictor) holds the person's risk
  factors (sex, BMI per 5 kg/m2 above 27.5, IMD quintile above 3, smoking, ethnicity and the person's
  lifetime propensity to earlier conditions in the list).
- Acute outcomes: Poisson processes (recurrent events) whose rate per person-year on a day is
  exp(log_rate + age * (age - 60) / 10 + sum(coef * x)), age on 1 January of that year and x the
  person's sex, smoking and conditions *recorded* on or before that day, multiplied by the site's
  acute_rate_multiplier and, for planted effects, by a hazard ratio on every day of exposure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DATA_START = "2012-01-01"
DATA_END = "2024-12-31"


@dataclass(frozen=True)
class Chronic:
    key: str
    a0: float
    b: float
    c: float
    sex: str | None = None  # "F" or "M" when only one sex can have it
    coef: dict[str, float] = field(default_factory=dict)
    excess_mortality: float = 0.0  # extra deaths per person-year after onset
    visit: str = "gp"  # where the diagnosis is recorded


# Order matters: a condition may depend on earlier ones.
CHRONIC: tuple[Chronic, ...] = (
    Chronic("type2_diabetes", 18, 6e-4, 0.05,
            coef={"male": 0.25, "bmi": 0.6, "dep": 0.12, "asian": 0.8, "black": 0.5}, excess_mortality=0.006),
    Chronic("hypertension", 20, 2.6e-3, 0.055,
            coef={"male": 0.15, "bmi": 0.3, "dep": 0.05, "black": 0.4, "type2_diabetes": 0.4}),
    Chronic("ckd", 30, 2.0e-4, 0.08,
            coef={"type2_diabetes": 0.8, "hypertension": 0.6, "black": 0.3}, excess_mortality=0.02),
    Chronic("atrial_fibrillation", 40, 1.8e-4, 0.1,
            coef={"male": 0.4, "hypertension": 0.4, "bmi": 0.2}, excess_mortality=0.01),
    Chronic("heart_failure", 40, 3.5e-5, 0.1,
            coef={"male": 0.3, "hypertension": 0.5, "atrial_fibrillation": 0.8, "type2_diabetes": 0.5,
                  "ckd": 0.3, "smoker": 0.3}, excess_mortality=0.08),
    Chronic("copd", 35, 1.5e-4, 0.07, coef={"smoker": 1.8, "dep": 0.2}, excess_mortality=0.03),
    Chronic("asthma", 0, 2.0e-3, 0.001, coef={"dep": 0.1}),
    Chronic("depression", 14, 4.5e-3, 0.004, coef={"male": -0.5, "dep": 0.15}),
    Chronic("breast_cancer", 25, 2.2e-4, 0.06, sex="F", excess_mortality=0.03, visit="outpatient"),
    Chronic("prostate_cancer", 40, 1.35e-4, 0.1, sex="M", coef={"black": 0.6}, excess_mortality=0.03,
            visit="outpatient"),
    Chronic("lung_cancer", 40, 2.5e-5, 0.09, coef={"smoker": 2.0, "dep": 0.1}, excess_mortality=0.35,
            visit="outpatient"),
    Chronic("colorectal_cancer", 35, 9e-5, 0.08, coef={"male": 0.3}, excess_mortality=0.08,
            visit="outpatient"),
    Chronic("osteoarthritis", 35, 2.5e-3, 0.06, coef={"male": -0.3, "bmi": 0.4}),
)
CHRONIC_KEYS = tuple(c.key for c in CHRONIC)

# Background mortality per person-year: h(a) = h30 * exp(c (a - 30)) * exp(coef . x).
MORTALITY = {"h30": 3.5e-4, "c": 0.093, "coef": {"male": 0.35, "dep": 0.08, "smoker": 0.4}}


@dataclass(frozen=True)
class Acute:
    key: str
    log_rate: float  # log events per person-year at age 60, female, no risk factors
    age: float  # log hazard ratio per 10 years of age
    coef: dict[str, float] = field(default_factory=dict)  # male, smoker, recorded conditions
    case_fatality: float = 0.0  # probability of death within 30 days, at age 60
    case_fatality_age: float = 0.0  # log-odds per 10 years
    setting: str = "inpatient"  # inpatient (via A&E), gp, or "mixed" (pneumonia)


ACUTE: tuple[Acute, ...] = (
    Acute("myocardial_infarction", -6.2, 0.5,
          {"male": 0.7, "smoker": 0.6, "type2_diabetes": 0.5, "hypertension": 0.4, "ckd": 0.3},
          case_fatality=0.06, case_fatality_age=0.4),
    Acute("stroke", -6.6, 0.6, {"male": 0.2, "atrial_fibrillation": 1.0, "hypertension": 0.5,
                               "type2_diabetes": 0.3}, case_fatality=0.08, case_fatality_age=0.4),
    Acute("gi_bleeding", -6.5, 0.6, {"male": 0.3, "atrial_fibrillation": 0.8, "ckd": 0.6},
          case_fatality=0.03, case_fatality_age=0.4),
    Acute("hip_fracture", -7.3, 1.0, {"male": -0.6}, case_fatality=0.04, case_fatality_age=0.5),
    Acute("pneumonia", -5.6, 0.6, {"copd": 1.2, "heart_failure": 0.6, "type2_diabetes": 0.3, "smoker": 0.4},
          case_fatality=0.04, case_fatality_age=0.5, setting="mixed"),
    Acute("urinary_tract_infection", -3.6, 0.15, {"male": -1.6, "type2_diabetes": 0.4}, setting="gp"),
    # A hospital admission for heart failure (an inpatient visit with a heart-failure diagnosis).
    Acute("heart_failure_admission", -6.3, 0.6,
          {"male": 0.3, "ckd": 0.7, "hypertension": 0.4, "atrial_fibrillation": 0.9, "heart_failure": 1.6,
           "type2_diabetes": 0.5}, case_fatality=0.05, case_fatality_age=0.4),
)
ACUTE_BY_KEY = {a.key: a for a in ACUTE}

# ---- planted effects ----------------------------------------------------------------------------
# GI bleeding: multiplicative hazard on every exposed day, relative to no NSAID.
NSAID_GI_HR = {"celecoxib": 1.4, "diclofenac": 2.1, "ibuprofen": 1.6, "naproxen": 1.8}
NSAIDS = tuple(NSAID_GI_HR)
# Heart-failure admission: SGLT2 inhibitor exposure multiplies the hazard by 0.7; gliclazide by 1.0.
SGLT2_HF_HR = 0.7
SGLT2S = ("empagliflozin", "dapagliflozin")

# Choice of NSAID at a course's first prescription: multinomial logit, diclofenac the reference.
# age is (age - 65) per year; year is calendar year - 2013 for years after 2013 (MHRA advice on
# diclofenac, June 2013), 0 before.
NSAID_CHOICE = {
    "celecoxib": {"intercept": -0.6, "age": 0.07, "atrial_fibrillation": 1.2, "ckd": 0.9, "year_after_2013": 0.1},
    "diclofenac": {"intercept": 0.0},
    "ibuprofen": {"intercept": -0.1, "age": -0.02, "year_after_2013": 0.1},
    "naproxen": {"intercept": -0.7, "year_after_2013": 0.15},
}
# Choice of second-line diabetes drug (added to metformin): logistic for SGLT2i vs gliclazide.
# Unavailable before 2014 (gliclazide only). year is calendar year - 2019.
SGLT2_CHOICE = {"intercept": -0.5, "year": 0.35, "age": 0.0, "ckd": 1.5, "heart_failure": 1.5,
                "atrial_fibrillation": 1.0, "hypertension": 0.5}
SGLT2_FIRST_YEAR = 2014
