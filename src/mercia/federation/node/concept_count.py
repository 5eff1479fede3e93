"""A concept's released persons count at a node: how many persons have a record of it (or a descendant).

This is an interactive count, and so a differencing channel like feasibility counts: with exact counts,
a researcher who asks for a parent concept with and without its descendants learns whether the one
person recorded with a rare child concept is there. So it gets the same defences as feasibility counts
(node/feasibility.py, node/privacy_budget.py): two-sided geometric noise at `epsilon_per_query` (one
person changes the count by at most one: sensitivity 1), then the site policy's threshold and rounding
through `release`; each distinct question (concept, descendants or not, policy, epoch) costs the asker
epsilon from the same per-researcher budget as feasibility counts, and is answered once: a repeat, by
anyone, gets the very same number at no cost.

Records of a concept (ATLAS's RC and, with descendants, DRC) are a second, separate question, asked
only when wanted (`released_concept_records`). A person may have any number of records, so a count of
records has no bound on what one person changes, and noise scaled for persons would not hide a person
with 1,000 records. So each person's records are counted up to `concept_records_cap` (k, a node
setting, default 10): replacing one person's data then moves the clipped sum by at most k
(sensitivity k), and the noise is two-sided geometric at epsilon_per_query with sensitivity k, then the
same `release`. It is a question of its own (its own label and kept answer, the cap in its identity)
and is charged epsilon_per_query of its own: by sequential composition persons and records together
cost 2 x epsilon (Dwork & Roth, Theorem 3.14). Answering both from one charge would need splitting
epsilon between them, which would change the persons count everyone has been given for the same
question; so the records are paid for, and the persons answer stays what it was.
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
from mercia.federation.node.feasibility import released_count
from mercia.federation.node.privacy_budget import FeasibilityPrivacy
from mercia.vocab.search import concept_persons, concept_records

__all__ = ["concept_count_label", "concept_records_label", "released_concept_count", "released_concept_records"]


def concept_count_label(concept_id: int, descendants: bool, policy: DisclosurePolicy,
                        privacy: FeasibilityPrivacy) -> str:
    """The identity of one distinct concept-count question; its noise and its kept answer hang on it."""
    policy_key = hashlib.sha256(policy.model_dump_json().encode()).hexdigest()
    return f"concept|{int(concept_id)}|{'descendants' if descendants else 'exact'}|{policy_key}|{privacy.epoch}"


def concept_records_label(concept_id: int, descendants: bool, policy: DisclosurePolicy,
                          privacy: FeasibilityPrivacy) -> str:
    """The identity of one distinct concept-records question: the cap per person is part of it (a new cap
    is a new question, with new noise, at a new cost)."""
    policy_key = hashlib.sha256(policy.model_dump_json().encode()).hexdigest()
    return (f"concept-records|{int(concept_id)}|{'descendants' if descendants else 'exact'}|"
            f"cap={privacy.concept_records_cap}|{policy_key}|{privacy.epoch}")


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
    persons = released_count(table.data.iloc[0]["persons"])
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


def released_concept_records(cdm: Cdm, concept_id: int, descendants: bool, policy: DisclosurePolicy, *,
                             site: str, privacy: FeasibilityPrivacy, noise_key: bytes, label: str,
                             at_least: int = 0) -> dict[str, Any]:
    """The released records of the concept, at most `privacy.concept_records_cap` counted per person
    (noised at sensitivity cap, then the policy), and how it was made. `at_least`: the persons count
    already released for the same concept (every person counted has a record, so fewer records than
    persons would only be noise showing); a released number, so using it is post-processing."""
    if not _known(cdm, concept_id):
        raise VocabularyError(f"concept_id: {int(concept_id)} is not in this site's vocabulary")
    cap = privacy.concept_records_cap
    exact = concept_records(cdm, concept_id, descendants=descendants, cap=cap)
    # One person's data replaced moves the clipped sum by at most `cap`: the noise is scaled to it.
    z = two_sided_geometric(noise_key, f"{label}|records", 1, epsilon=privacy.epsilon_per_query,
                            sensitivity=float(cap))[0]
    noisy = max(0, int(at_least), exact + z)
    log = DisclosureLog()
    table = release(ResultTable(
        name="concept_records", kind="counts", dimensions=["concept_id"], count_columns=["records"],
        data=pd.DataFrame([(str(int(concept_id)), noisy)], columns=["concept_id", "records"]).astype(
            {"records": "int64"})), policy, site=site, log=log)
    return {
        "records": released_count(table.data.iloc[0]["records"]),
        "records_per_person_counted": cap,
        "disclosure": json.loads(log.to_json(public=True)),
        "privacy": {
            "mechanism": ("two-sided geometric (discrete Laplace) noise at sensitivity "
                          f"{cap} (records counted up to {cap} per person), then the policy's threshold and "
                          "rounding"),
            "epsilon": privacy.epsilon_per_query,
            "records_noise_sd": round(noise_sd(privacy.epsilon_per_query, float(cap)), 1),
        },
    }

