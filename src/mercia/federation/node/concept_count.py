"""A concept's released persons count at a node: how many persons have a record of it (or a descendant).

This is an interactive count, and so a differencing channel like feasibility counts: with exact counts,
a researcher who asks for a parent concept with and without its descendants learns whether the one
person recorded with a rare child concept is there. So it gets the same defences as feasibility counts
(node/feasibility.py, node/privacy_budget.py): two-sided geometric noise at `epsilon_per_query` (one
person changes the count by at most one: sensitivity 1), then the site policy's threshold and rounding
through `release`; each distinct question (concept, descendants or not, policy, epoch) costs the asker
epsilon from the same per-researcher budget as feasibility counts, and is answered once: a repeat, by
anyone, gets the very same number at no cost.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.disclosure import DisclosureLog, DisclosurePolicy, ResultTable, release
from mercia.disclosure.noise import noise_sd, two_sided_geometric
from mercia.errors import VocabularyError
from mercia.federation.node.privacy_budget import FeasibilityPrivacy
from mercia.vocab.search import concept_persons

__all__ = ["concept_count_label", "released_concept_count"]


def concept_count_label(concept_id: int, descendants: bool, policy: DisclosurePolicy,
                        privacy: FeasibilityPrivacy) -> str:
    """The identity of one distinct concept-count question; its noise and its kept answer hang on it."""
    policy_key = hashlib.sha256(policy.model_dump_json().encode()).hexdigest()
    return f"concept|{int(concept_id)}|{'descendants' if descendants else 'exact'}|{policy_key}|{privacy.epoch}"


def _known(cdm: Cdm, concept_id: int) -> bool:
    q = (exp.select(exp.Count(this=exp.Star())).from_(cdm.table("concept"))
         .where(exp.EQ(this=exp.column("concept_id"), expression=exp.Literal.number(int(concept_id)))))
    return bool(cdm.scalar(q))


def released_concept_count(cdm: Cdm, concept_id: int, descendants: bool, policy: DisclosurePolicy, *,
                           site: str, privacy: FeasibilityPrivacy, noise_key: bytes, label: str) -> dict[str, Any]:
    """The released answer: persons with the concept (noised, then the policy), and how it was made."""
    if not _known(cdm, concept_id):
        # The vocabulary is public reference data: saying an id is not in it discloses nothing of persons.
        raise VocabularyError(f"concept_id: {int(concept_id)} is not in this site's vocabulary")
    exact = concept_persons(cdm, concept_id, descendants=descendants)
    z = two_sided_geometric(noise_key, f"{label}|persons", 1, epsilon=privacy.epsilon_per_query, sensitivity=1.0)[0]
    noisy = max(0, exact + z)
    log = DisclosureLog()
    table = release(ResultTable(
        name="concept_count", kind="counts", dimensions=["concept_id"], count_columns=["persons"],
        data=pd.DataFrame([(str(int(concept_id)), noisy)], columns=["concept_id", "persons"]).astype(
            {"persons": "int64"})), policy, site=site, log=log)
    value = table.data.iloc[0]["persons"]
    persons = None if value is None or value is pd.NA or (isinstance(value, float) and value != value) else int(value)
    return {
        "site": site,
        "concept_id": int(concept_id),
        "descendants": bool(descendants),
        "persons": persons,
        "disclosure": json.loads(log.to_json(public=True)),
        "privacy": {
            "mechanism": "two-sided geometric (discrete Laplace) noise, then the policy's threshold and rounding",
            "epsilon": privacy.epsilon_per_query,
            "persons_noise_sd": round(noise_sd(privacy.epsilon_per_query, 1.0), 1),
        },
    }
