"""The cohort language: cohort definitions that read like the epidemiologist's sentence.

Python form::

    from mercia.cohorts.dsl import cohort, concepts, condition, drug

    nsaid = concepts("NSAIDs", ingredients=["celecoxib", "diclofenac"], descendants=True)
    gi_bleed = concepts("GI bleed", 192671, descendants=True)
    new_users = (cohort("New NSAID users")
                 .entry(drug(nsaid).first())
                 .require_prior_observation(days=365)
                 .exclude(condition(gi_bleed).within(days_before=365))
                 .exit_at_end_of_exposure(gap_days=30))

YAML form: the same words as keys (``docs/reference/cohort-language.md``). Both build the one cohort
model (``mercia.cohorts.model.CohortDefinition``), so the compiler, the Circe importer and generation
are shared. ``to_yaml`` writes any model in the YAML form (elements the language has no word for go
under ``filters:`` in the model's own field names), and reading it back gives an equal model.

This module is the language's public face; the work is done by three modules, one job each:
``builder`` (the Python form and its words), ``yaml_reader`` (the YAML form to the model) and
``yaml_writer`` (any model to the YAML form).
"""

from __future__ import annotations

from mercia.cohorts.builder import (
    Cohort,
    Concepts,
    Demographic,
    Event,
    Group,
    age,
    all_of,
    any_of,
    at_least_of,
    at_most_of,
    cohort,
    concepts,
    condition,
    condition_era,
    death,
    device,
    dose_era,
    drug,
    drug_era,
    first,
    item,
    location_region,
    measurement,
    observation,
    observation_period,
    payer_plan_period,
    procedure,
    sex,
    specimen,
    visit,
    visit_detail,
)
from mercia.cohorts.yaml_reader import from_dict, from_yaml, load_yaml
from mercia.cohorts.yaml_writer import definition_to_dict, to_yaml

__all__ = [
    "Cohort", "Concepts", "Demographic", "Event", "Group", "age", "all_of", "any_of", "at_least_of",
    "at_most_of", "cohort", "concepts", "condition", "condition_era", "death", "definition_to_dict",
    "device", "dose_era", "drug", "drug_era", "first", "from_dict", "from_yaml", "item", "load_yaml",
    "location_region", "measurement", "observation",
    "observation_period", "payer_plan_period", "procedure", "sex", "specimen", "to_yaml", "visit", "visit_detail",
]
