"""New users of NSAIDs (celecoxib or diclofenac) with no GI bleed in the year before.

Run it:  mercia cohort run examples/cohorts/new_nsaid_users.py --cdm my_cdm.duckdb
The same cohort in YAML: new_nsaid_users.yaml.
"""

from mercia.cohorts.dsl import cohort, concepts, condition, drug

nsaid = concepts("NSAIDs", ingredients=["celecoxib", "diclofenac"], descendants=True)
gi_bleed = concepts("GI bleed", conditions=["gi_bleeding"], descendants=True)

COHORT = (
    cohort("New NSAID users", "First NSAID exposure ever, a year of prior observation, no GI bleed in that year")
    .entry(drug(nsaid).first())  # first exposure ever
    .require_prior_observation(days=365)
    .exclude(condition(gi_bleed).within(days_before=365), name="no GI bleed in the prior year")
    .exit_at_end_of_exposure(gap_days=30)  # continuous exposure, gaps of up to 30 days bridged
)
