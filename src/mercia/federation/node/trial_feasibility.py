"""A node's answer to a trial feasibility question: the trial's counts with differentially private noise.

The counts and their release are mercia.trials.feasibility's (one pipeline; 2k+2 disjoint buckets for
the funnel and what-if, three breakdown partitions and the monthly partition, each noised, then the
site policy). Here: the question's identity and its price. One distinct question (the definition's
canonical form, its criteria's names in order, the history window, the policy, the epoch) is answered
once and kept (node/privacy_budget.py): a repeat, by anyone, gets the very same numbers at no cost,
so there is nothing to average. It costs TRIAL_COST x epsilon_per_query: a count's worth for the
funnel and what-if, one for the breakdowns, one for the monthly history.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mercia.cdm import Cdm
from mercia.cohorts.canonical import canonical_hash
from mercia.cohorts.model import CohortDefinition
from mercia.disclosure import DisclosurePolicy
from mercia.federation.node.privacy_budget import FeasibilityPrivacy
from mercia.trials.feasibility import Noise, count_trial, released_feasibility

TRIAL_COST = 3  # epsilon_per_query units per distinct trial question


def trial_label(definition: CohortDefinition, history_months: int, policy: DisclosurePolicy,
                privacy: FeasibilityPrivacy) -> str:
    """One distinct trial question. The criteria's names are part of it (they label the answer)."""
    names = json.dumps([r.name for r in definition.expression.inclusion_rules])
    policy_key = hashlib.sha256(policy.model_dump_json().encode()).hexdigest()
    return (f"trial|{canonical_hash(definition)}|{hashlib.sha256(names.encode()).hexdigest()}|{history_months}|"
            f"{policy_key}|{privacy.epoch}")


def released_trial(cdm: Cdm, definition: CohortDefinition, policy: DisclosurePolicy, *, site: str, epsilon: float,
                   noise_key: bytes, label: str, history_months: int) -> dict[str, Any]:
    counts = count_trial(cdm, definition, history_months=history_months)
    answer = released_feasibility(counts, policy, trial=definition.name, site=site,
                                  noise=Noise(key=noise_key, label=label, epsilon=epsilon))
    answer["definition_hash"] = canonical_hash(definition)
    return answer
