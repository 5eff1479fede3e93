"""Feasibility counts: how many persons (and entries) a cohort definition finds, released.

The definition runs as the cohort's plan in temporary tables of the reader's connection
(mercia.cohorts.reading; nothing is written to the CDM, so a count answers while a study runs).
Persons after each inclusion rule come from the compiler's per-mask counts, as a study's attrition
table does. Interactive counts are what differencing and tracker attacks use (two definitions that
differ by one person), so the numbers get differentially private noise before the policy's threshold
and rounding (see `feasibility_count`); the route keeps the privacy budget and gives a repeated
question its first answer (node/privacy_budget.py).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cohorts.canonical import canonical_hash, parse_definition
from mercia.cohorts.compiler import bound
from mercia.cohorts.model import CohortDefinition
from mercia.cohorts.reading import cohort_for_reading
from mercia.cohorts.stats import attrition_stages
from mercia.disclosure import DisclosureLog, DisclosurePolicy, ResultTable, release
from mercia.disclosure.noise import noise_sd, two_sided_geometric
from mercia.federation.node.privacy_budget import FeasibilityPrivacy

__all__ = ["feasibility_count", "feasibility_label", "parse_definition"]


def feasibility_label(definition: CohortDefinition, policy: DisclosurePolicy, privacy: FeasibilityPrivacy) -> str:
    """The identity of one distinct question: its canonical form under this policy in this epoch. Its
    noise is derived from it (with the node's noise key) and its first answer is kept under it."""
    policy_key = hashlib.sha256(policy.model_dump_json().encode()).hexdigest()
    return f"{canonical_hash(definition)}|{policy_key}|{privacy.epoch}"


def feasibility_count(cdm: Cdm, definition: CohortDefinition, policy: DisclosurePolicy, *, site: str,
                      privacy: FeasibilityPrivacy, noise_key: bytes, label: str) -> dict[str, Any]:
    """The released answer to one distinct question (`label`: its canonical form, the policy, the epoch).

    The numbers released are differentially private (disclosure/noise.py) at `privacy.epsilon_per_query`
    for the whole answer, then the policy's threshold and rounding apply (post-processing):

    - persons: each person counted falls in exactly one of the buckets "left at rule 1", ..., "left at
      rule k", "passed every rule but not in the final cohort", "in the final cohort" (their best event
      is the one passing most rules, as Circe's attrition counts it, and the final cohort keeps only
      events that passed every rule). Replacing one person's record moves them from one bucket to
      another: L1 sensitivity 2 (1 without rules, where only the final count is released). Each bucket
      gets noise, is clamped at zero, and the attrition rows are sums of the buckets from each step on,
      so they never grow from one step to the next.
    - entries: the final cohort's entries with at most `entries_cap` counted per person (a person can
      have any number of entries; clipped, one person changes the sum by at most the cap).

    Three quarters of the epsilon go to persons, the question a trial planner asks; the rest to entries.
    """
    cap = privacy.entries_cap
    with cohort_for_reading(cdm, definition) as (rule_names, masks, rows, params):
        source = rows.copy().subquery("c") if isinstance(rows, exp.Select) else rows.copy().as_("c")
        per_person = (exp.select(exp.column("subject_id"), exp.Count(this=exp.Star()).as_("n"))
                      .from_(source).group_by(exp.column("subject_id")))
        clipped = exp.Case(ifs=[exp.If(this=exp.GT(this=exp.column("n"), expression=exp.Literal.number(cap)),
                                       true=exp.Literal.number(cap))], default=exp.column("n"))
        count_q = exp.select(exp.Count(this=exp.Star()).as_("persons"),
                             exp.func("COALESCE", exp.Sum(this=clipped), exp.Literal.number(0)).as_("entries")
                             ).from_(per_person.subquery("p"))
        persons, entries = cdm.fetch_all(count_q, bound(count_q, params))[0]
    persons, entries = int(persons), int(entries or 0)
    k = len(rule_names)
    if k:
        stage = attrition_stages(masks, 1, k)  # persons whose best event passed exactly the first j rules
        buckets = [*stage[:k], max(stage[k] - persons, 0), persons]
        sensitivity = 2.0
    else:
        buckets, sensitivity = [persons], 1.0
    eps_persons, eps_entries = 0.75 * privacy.epsilon_per_query, 0.25 * privacy.epsilon_per_query
    z = two_sided_geometric(noise_key, f"{label}|persons", len(buckets), epsilon=eps_persons,
                            sensitivity=sensitivity)
    noisy = [max(0, b + dz) for b, dz in zip(buckets, z, strict=True)]
    final_persons = noisy[-1]
    z_entries = two_sided_geometric(noise_key, f"{label}|entries", 1, epsilon=eps_entries, sensitivity=cap)[0]
    # Every person in the cohort has an entry: fewer entries than persons would only be noise showing.
    final_entries = max(final_persons, entries + z_entries, 0)

    steps: list[tuple[str, int]] = []
    if k:
        steps.append(("initial events", sum(noisy)))
        for i, name in enumerate(rule_names):
            steps.append((f"{i + 1}. {name}", sum(noisy[i + 1:])))
    steps.append(("final cohort", final_persons))
    log = DisclosureLog()
    attrition = release(ResultTable(
        name="feasibility", kind="counts", dimensions=["step"], count_columns=["persons"], sequential=True,
        data=pd.DataFrame(steps, columns=["step", "persons"]).astype({"persons": "int64"})),
        policy, site=site, log=log)
    entries_table = release(ResultTable(
        name="feasibility_entries", kind="counts", dimensions=["step"], count_columns=["entries"],
        data=pd.DataFrame([("final cohort", final_entries)], columns=["step", "entries"]).astype(
            {"entries": "int64"})), policy, site=site, log=log)
    return {
        "site": site,
        "definition_hash": canonical_hash(definition),
        "persons": released_count(attrition.data.iloc[-1]["persons"]),
        "entries": released_count(entries_table.data.iloc[-1]["entries"]),
        "attrition": attrition.to_dict(),
        "disclosure": json.loads(log.to_json(public=True)),
        "privacy": {
            "mechanism": "two-sided geometric (discrete Laplace) noise, then the policy's threshold and rounding",
            "epsilon": privacy.epsilon_per_query,
            "persons_noise_sd": round(noise_sd(eps_persons, sensitivity), 1),
            "entries_per_person_counted": cap,
        },
    }


def released_count(v: Any) -> int | None:
    """A released count, or None where disclosure control suppressed it."""
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    return int(v)

