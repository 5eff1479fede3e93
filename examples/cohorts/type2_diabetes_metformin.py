"""Adults with type 2 diabetes starting metformin.

Entry: first metformin exposure ever. Required: type 2 diabetes recorded on or before that day, age
18 or over, a year of prior observation, and an HbA1c of 48 mmol/mol or more in the prior year.
Follow-up: while on metformin (gaps up to 30 days bridged), censored at death.
The same cohort in YAML: type2_diabetes_metformin.yaml.
"""

from mercia.cohorts.dsl import cohort, concepts, condition, death, drug, measurement

metformin = concepts("Metformin", ingredients=["metformin"], descendants=True)
t2d = concepts("Type 2 diabetes", conditions=["type2_diabetes"], descendants=True)
hba1c = concepts("HbA1c", measurements=["hba1c"])

COHORT = (
    cohort("Type 2 diabetes, new metformin users")
    .entry(drug(metformin).first())
    .require_prior_observation(days=365)
    .require(condition(t2d).between("all days before", "0 days after"), name="type 2 diabetes on or before index")
    .require_age(min=18, name="aged 18 or over")
    .require(measurement(hba1c).value(min=48).unit("mmol_per_mol").within(days_before=365),
             name="HbA1c >= 48 mmol/mol in the prior year")
    .exit_at_end_of_exposure(gap_days=30)
    .censor_at(death())
)
