"""New users of celecoxib: the comparator, written in the Python form of the cohort language."""

from mercia.cohorts.dsl import cohort, concepts, drug

celecoxib = concepts("Celecoxib", ingredients=["celecoxib"], descendants=True)
diclofenac = concepts("Diclofenac", ingredients=["diclofenac"], descendants=True)

COHORT = (
    cohort("Celecoxib new users", "First celecoxib exposure ever, 365 days of prior observation, no prior diclofenac")
    .entry(drug(celecoxib).first())
    .require_prior_observation(days=365)
    .exclude(drug(diclofenac).between("all days before", "1 days before"), name="no diclofenac before")
    .exit_at_end_of_exposure(gap_days=30)
)
