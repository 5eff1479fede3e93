"""Trial feasibility differencing (issue 15, item 3): the attack, run as an attacker would, over real HTTP.

A researcher who knows one person well enough to select them alone (the exact start and end of their
observation period, unique at the site; they have no hypertension) wants to learn whether that person
has type 2 diabetes. They ask two near-identical trials, both entered by hypertension or by the target:

- trial A, criteria [has hypertension, has type 2 diabetes]: the what-if gain of dropping "has
  hypertension" counts the entrants with type 2 diabetes but no hypertension, i.e. the target exactly
  when they have it;
- trial B, criteria [has hypertension, aged 0 or over]: the same gain counts the target always.

With exact numbers gain(A) = gain(B) exactly when the target has the attribute (and the funnels of A
and B differ by one person at the second step in the same case): the attack is right every time, shown
below on the site's exact counts. Through the node, each gain is a noisy bucket of its own answer (not a
difference of two released counts), and a what-if or funnel difference across A and B differences
independent noise. Each target gets a researcher of their own (a full budget at the site); the two
trials cost 2 x 3 x 0.1 = 0.6 of it, so the best any attack can do is e^0.6 / (1 + e^0.6) = 0.646.
The attack's accuracy over 60 targets must be within three binomial standard errors of guessing, and
below that bound plus three standard errors.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from federation_support import PROJECT, HubServer, NodeServer, make_site
from mercia.cohorts.dsl import age, cohort, condition, definition_to_dict, from_dict
from mercia.disclosure import DisclosurePolicy
from mercia.disclosure.noise import attribute_accuracy_bound
from mercia.trials.feasibility import count_trial, released_feasibility
from test_attack_feasibility import HTN, PERSONS, SEED, T2D, _target_event, ground_truth

API = "/api/v1"
EXACT = DisclosurePolicy(name="exact", threshold=0, zeros_disclosive=False, rounding_base=1,
                         secondary_suppression=False)


def trial(target: tuple[Any, Any], with_t2d_criterion: bool) -> dict[str, Any]:
    c = (cohort("trial").entry(condition(HTN), _target_event(*target, False))
         .require(condition(HTN).between(None, None), name="has hypertension"))
    c = (c.require(condition(T2D).between(None, None), name="has type 2 diabetes") if with_t2d_criterion
         else c.require(age(min=0), name="aged 0 or over"))
    return definition_to_dict(c.build())


def guess(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """The attacker's guess from the two answers: the gains of dropping 'has hypertension', and the
    funnels' second steps, agree (gain) or differ by one (funnel) when the target has the attribute."""
    ga, gb = a["what_if"][0]["gained"], b["what_if"][0]["gained"]
    if ga is None and gb is None:
        return None
    return abs((ga or 0) - (gb or 0)) < abs((ga or 0) + 1 - (gb or 0))  # nearer "equal" than "one fewer in A"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("trialattack")
    db = make_site(root / "site.duckdb", persons=PERSONS, seed=SEED)
    exact_db = make_site(root / "exact.duckdb", persons=PERSONS, seed=SEED)
    targets = ground_truth(exact_db)
    hub = HubServer(root / "hub")
    node = NodeServer(root / "node", cdm=db, hub_key=hub.key, site="sacro", policy="sacro",
                      count_limits={"per_window": 600, "window_seconds": 60, "near_identical": 2})
    node.state_dir.mkdir(parents=True, exist_ok=True)
    (node.state_dir / "feasibility_noise.key").write_text("07" * 32)  # fixed: the same accuracy every run
    try:
        for s in (node, hub):
            s.launch()
        for s in (node, hub):
            s.wait_ready()
        with hub.client(hub.admin_token) as admin:
            admin.add_node("sacro", node.url, node.tokens["hub"])
            admin.add_project(PROJECT, ["sacro"])
            yield {"hub": hub, "admin": admin, "targets": targets, "exact_db": exact_db}
    finally:
        for s in (hub, node):
            s.stop()


@pytest.mark.slow
def test_the_attack_works_on_exact_numbers(world):
    """Without the defence (exact counts, no threshold) the attack is right for every target."""
    from mercia.cdm import Cdm

    targets = world["targets"][:6] + world["targets"][-6:]
    with Cdm.open(world["exact_db"], read_only=True) as cdm:
        def answer(d: dict[str, Any]) -> dict[str, Any]:
            return released_feasibility(count_trial(cdm, from_dict(d)), EXACT, trial="t", site=None, noise=None)

        right = [guess(answer(trial(t, True)), answer(trial(t, False))) == has for t, has in targets]
    assert all(right)


@pytest.mark.slow
def test_differencing_two_near_identical_trials_is_no_better_than_guessing(world):
    hub = world["hub"]
    guesses, truth = [], []
    for i, (target, has_t2d) in enumerate(world["targets"]):
        token = world["admin"].add_user(f"trial-attacker-{i}", "researcher", [PROJECT])["token"]
        with httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            answers = []
            for with_t2d in (True, False):
                r = http.post(f"{API}/trials/feasibility", json={"definition": trial(target, with_t2d),
                                                                 "project": PROJECT})
                assert r.status_code == 200, r.text
                site = r.json()["sites"][0]
                assert "error" not in site, site  # both trials fit one researcher's budget
                answers.append(site)
        g = guess(*answers)
        guesses.append(random.Random(1000 + i).random() < 0.5 if g is None else g)
        truth.append(has_t2d)
    n = len(truth)
    acc = sum(g == t for g, t in zip(guesses, truth, strict=True)) / n
    se = math.sqrt(0.25 / n)
    bound = attribute_accuracy_bound(2 * 3 * 0.1)
    print(f"trial differencing attack: accuracy {acc:.3f} over {n} targets (bound {bound:.3f})")
    assert abs(acc - 0.5) <= 3 * se, f"the attack's accuracy is {acc:.2f} over {n} targets"
    assert acc <= bound + 3 * se
