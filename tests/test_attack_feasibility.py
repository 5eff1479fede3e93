"""Feasibility differencing (issue 12, item 5): the attacks, run as an attacker would, over real HTTP.

A researcher who knows one person well enough to write a criterion that selects only them (here: the
exact start and end of their observation period) asks counts that differ by that person:

- SACRO-policy site (exact counts above 9): hypertension; hypertension plus the target as an extra
  entry event; hypertension plus the target only if they have type 2 diabetes. Before the defence the
  last two counts differed by exactly one or not at all: the attribute, every time.
- OpenSAFELY-policy site (threshold 7, rounding to 5): bisect a date filter on hypertension to where the
  rounded count jumps (the true count then sits just below a rounding edge), then add the target with
  the attribute: the rounded count jumps again exactly when the target has it.

Each attack runs against many targets, each with a researcher of its own (so each gets a full privacy
budget), and its accuracy must be close to guessing: within three binomial standard errors of 50%.
With the defence (differentially private counts, node/feasibility.py) the attacks' own queries fit the
budget, and the best any attack could do is e^eps/(1+e^eps) = 0.73 for the default budget eps = 1.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from federation_support import PROJECT, HubServer, NodeServer, make_site
from mercia.cohorts.canonical import canonical_hash
from mercia.cohorts.dsl import cohort, concepts, condition, definition_to_dict, observation_period
from mercia.federation.attestation import attest
from mercia.federation.auth import TokenStore, query_key

API = "/api/v1"
PERSONS, SEED = 3000, 1
TARGETS_PER_CLASS = 30  # 60 targets per attack: the binomial SE of an accuracy near 1/2 is 0.065

HTN = concepts("Hypertension", "hypertension", descendants=True)
T2D = concepts("Type 2 diabetes", "type2_diabetes", descendants=True)


# ---- the attacker's definitions ------------------------------------------------------------------
def _target_event(start: dt.date, end: dt.date, with_t2d: bool):  # type: ignore[no-untyped-def]
    e = observation_period().filter(period_start_date={"value": start.isoformat(), "op": "eq"},
                                    period_end_date={"value": end.isoformat(), "op": "eq"})
    return e.where(condition(T2D).between(None, None)) if with_t2d else e


def hypertension(before: dt.date | None = None, target: tuple[dt.date, dt.date] | None = None,
                 with_t2d: bool = False) -> dict[str, Any]:
    h = condition(HTN)
    if before is not None:
        h = h.filter(occurrence_start_date={"value": before.isoformat(), "op": "lte"})
    events = [h] if target is None else [h, _target_event(*target, with_t2d)]
    return definition_to_dict(cohort("attack").entry(*events).build())


def ground_truth(db: Path) -> list[tuple[tuple[dt.date, dt.date], bool]]:
    """Targets (their observation period, whether they have type 2 diabetes in it), read with the CDM
    directly before the nodes open it: persons with one observation period that no one else shares
    and no hypertension (so adding them changes the count), half with the attribute, half without."""
    import duckdb

    from mercia.cdm import Cdm
    from mercia.cohorts.compiler import bound, compile_cohort

    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT o.person_id, o.observation_period_start_date, o.observation_period_end_date "
            "FROM observation_period o JOIN (SELECT observation_period_start_date s, observation_period_end_date e "
            "FROM observation_period GROUP BY 1, 2 HAVING count(*) = 1) u "
            "ON o.observation_period_start_date = u.s AND o.observation_period_end_date = u.e "
            "WHERE o.person_id IN (SELECT person_id FROM observation_period GROUP BY 1 HAVING count(*) = 1) "
            "ORDER BY o.person_id").fetchall()
    finally:
        con.close()
    with Cdm.open(db, create=False) as cdm:
        def members(d: dict[str, Any]) -> set[int]:
            from mercia.cohorts.dsl import from_dict

            compiled = compile_cohort(cdm, from_dict(d).expression)
            q = compiled.rows_query()
            return {int(r[0]) for r in cdm.fetch_all(q, bound(q, compiled.params))}

        with_htn = members(hypertension())
        with_t2d = members(definition_to_dict(cohort("t2d").entry(
            observation_period().where(condition(T2D).between(None, None))).build()))
    candidates = [((s, e), pid in with_t2d) for pid, s, e in rows if pid not in with_htn]
    rng = random.Random(12)
    rng.shuffle(candidates)
    yes = [c for c in candidates if c[1]][:TARGETS_PER_CLASS]
    no = [c for c in candidates if not c[1]][:TARGETS_PER_CLASS]
    assert len(yes) == len(no) == TARGETS_PER_CLASS, "the site has too few distinct targets"
    return yes + no


# ---- servers --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("feasattack")
    sacro_db = make_site(root / "sacro.duckdb", persons=PERSONS, seed=SEED)
    os_db = make_site(root / "os.duckdb", persons=PERSONS, seed=SEED)
    targets = ground_truth(sacro_db)
    hub = HubServer(root / "hub")
    nodes = {
        "sacro": NodeServer(root / "node_sacro", cdm=sacro_db, hub_key=hub.key, site="sacro", policy="sacro",
                            count_limits={"per_window": 600, "window_seconds": 60, "near_identical": 2}),
        "os": NodeServer(root / "node_os", cdm=os_db, hub_key=hub.key, site="os", policy="opensafely"),
    }
    for i, node in enumerate(nodes.values()):
        # A fixed noise key per node (as a node makes on first use, but known): the attacks' accuracies
        # are then the same on every run, not a fresh draw that fails one run in a few hundred.
        node.state_dir.mkdir(parents=True, exist_ok=True)
        (node.state_dir / "feasibility_noise.key").write_text(f"{i + 1:02x}" * 32)
    servers = [*nodes.values(), hub]
    try:
        for s in servers:
            s.launch()
        for s in servers:
            s.wait_ready()
        with hub.client(hub.admin_token) as admin:
            for name, node in nodes.items():
                admin.add_node(name, node.url, node.tokens["hub"])
            admin.add_project(PROJECT, sorted(nodes))
            yield {"hub": hub, "nodes": nodes, "targets": targets, "admin": admin}
    finally:
        for s in servers:
            s.stop()


class Researcher:
    """A researcher at the hub with a token of their own (a fresh budget at every site)."""

    def __init__(self, world: dict[str, Any], name: str) -> None:
        hub = world["hub"]
        token = world["admin"].add_user(name, "researcher", [PROJECT])["token"]
        self.http = httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
        self.refused = 0

    def count(self, site: str, definition: dict[str, Any]) -> int | None:
        """The site's released persons count (0 where suppressed); None when the site refused."""
        r = self.http.post(f"{API}/feasibility", json={"definition": definition, "project": PROJECT,
                                                       "sites": [site]})
        assert r.status_code == 200, r.text
        answer = r.json()["sites"][0]
        if "error" in answer:
            assert "privacy budget" in answer["error"], answer["error"]
            self.refused += 1
            return None
        return answer["persons"] or 0

    def close(self) -> None:
        self.http.close()


def _accuracy(guesses: list[bool], truth: list[bool]) -> tuple[float, float]:
    n = len(truth)
    acc = sum(g == t for g, t in zip(guesses, truth, strict=True)) / n
    return acc, math.sqrt(0.25 / n)


def _coin(i: int) -> bool:
    return random.Random(1000 + i).random() < 0.5


@pytest.mark.slow
def test_sacro_differencing_attack_is_no_better_than_guessing(world):
    targets = world["targets"]
    guesses, truth = [], []
    for i, (target, has_t2d) in enumerate(targets):
        r = Researcher(world, f"sacro-attacker-{i}")
        try:
            base = r.count("sacro", hypertension())
            plus = r.count("sacro", hypertension(target=target))
            plus_if = r.count("sacro", hypertension(target=target, with_t2d=True))
        finally:
            r.close()
        if None in (base, plus, plus_if):
            guess = _coin(i)  # refused: the attacker can only guess
        else:
            assert base is not None and plus is not None and plus_if is not None
            guess = plus_if > (base + plus) / 2  # exact counts: plus_if is plus with the attribute, base without
        guesses.append(guess)
        truth.append(has_t2d)
    acc, se = _accuracy(guesses, truth)
    assert abs(acc - 0.5) <= 3 * se, f"the attack's accuracy is {acc:.2f} over {len(truth)} targets"


@pytest.mark.slow
def test_opensafely_bisecting_attack_is_no_better_than_guessing(world):
    """The bisection does not depend on the target, so a team does it once and each member then asks
    about one target: stronger than one researcher alone (the team has a budget per member)."""
    targets = world["targets"]
    lo, hi = dt.date(2017, 1, 1), dt.date(2017, 1, 1) + dt.timedelta(days=128)
    scout = Researcher(world, "os-scout")
    try:
        edge = scout.count("os", hypertension(before=lo))
        while edge is not None and (hi - lo).days > 1:  # 7 halvings of 128 days
            mid = lo + (hi - lo) / 2
            c = scout.count("os", hypertension(before=mid))
            if c is None:
                edge = None
            elif c > edge:
                hi = mid
            else:
                lo = mid
    finally:
        scout.close()
    assert scout.refused == 0  # the bisection fits one researcher's budget
    # `lo` is the last day the rounded count had not yet jumped: the true count is one below the
    # rounding edge, so one more person (the target, if they have the attribute) crosses it.
    guesses, truth = [], []
    for i, (target, has_t2d) in enumerate(targets):
        r = Researcher(world, f"os-attacker-{i}")
        try:
            c = r.count("os", hypertension(before=lo, target=target, with_t2d=True))
        finally:
            r.close()
        guesses.append(_coin(i) if c is None or edge is None else c > edge)
        truth.append(has_t2d)
    acc, se = _accuracy(guesses, truth)
    assert abs(acc - 0.5) <= 3 * se, f"the attack's accuracy is {acc:.2f} over {len(truth)} targets"


# ---- canonical form: renaming is not a new question ------------------------------------------------
def _model_form(definition: dict[str, Any]) -> dict[str, Any]:
    from mercia.cohorts.dsl import from_dict

    return from_dict(definition).to_dict()


def _renumbered(d: dict[str, Any], new_id: int, new_name: str) -> dict[str, Any]:
    """The same definition with its concept set renumbered and renamed, an unused set added first and
    the cohort renamed: what an attacker sends to dodge a lockout keyed on the raw JSON."""
    d = json.loads(json.dumps(d))

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for k in list(v):
                if k == "codeset_id" and isinstance(v[k], int):
                    v[k] = new_id
                else:
                    walk(v[k])
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(d["expression"]["primary_criteria"])
    sets = d["expression"]["concept_sets"]
    assert len(sets) == 1
    sets[0]["id"], sets[0]["name"] = new_id, new_name
    unused = {"id": new_id + 1, "name": "decoy", "expression": {"items": [{"concept": {"concept_id": 201826}}]}}
    d["expression"]["concept_sets"] = [unused, *sets]
    d["name"], d["description"] = f"renamed {new_name}", "a new description"
    return d


def test_the_canonical_form_ignores_names_numbering_and_order():
    base = _model_form(hypertension(before=dt.date(2019, 5, 1)))
    renamed = _renumbered(base, 7, "blood pressure")
    assert json.dumps(base, sort_keys=True) != json.dumps(renamed, sort_keys=True)
    from mercia.cohorts.model import CohortDefinition

    a, b = CohortDefinition.from_dict(base), CohortDefinition.from_dict(renamed)
    assert a.definition_hash() != b.definition_hash()  # the old identity told them apart
    assert canonical_hash(a) == canonical_hash(b)
    assert query_key(base) == query_key(renamed) == query_key(hypertension(before=dt.date(2019, 5, 1)))
    # A change of meaning is a new question.
    assert query_key(hypertension(before=dt.date(2019, 5, 2))) != query_key(base)


def test_renamed_keys_and_reordered_members_in_the_cohort_language_are_the_same_question():
    def written(htn_key: str, t2d_key: str, rule_name: str, reverse: bool) -> dict[str, Any]:
        members = [{"condition": t2d_key, "between": ["365 days before", "0 days after"]}, {"age": {"min": 40}}]
        sets = {htn_key: {"name": htn_key.title(), "conditions": ["hypertension"], "descendants": True},
                t2d_key: {"name": "T2D", "conditions": ["type2_diabetes"], "descendants": True}}
        return {"name": f"cohort {rule_name}",
                "concepts": dict(reversed(sets.items())) if reverse else sets,
                "entry": [{"condition": htn_key}],
                "inclusion_rules": [{"name": rule_name, "require": members[::-1] if reverse else members}]}

    a = written("hypertension", "type_2_diabetes", "diabetic adults", False)
    b = written("bp", "sugar", "anything at all", True)
    assert query_key(a) == query_key(b)
    c = written("bp", "sugar", "anything at all", True)
    c["inclusion_rules"][0]["require"][0] = {"age": {"min": 41}}
    assert query_key(c) != query_key(a)


@pytest.mark.slow
def test_renamed_concept_sets_hit_the_same_answer_and_the_same_lockout(world):
    node = world["nodes"]["sacro"]  # near_identical: 2
    token = TokenStore(node.folder / "tokens.json").issue("renamer", "researcher", [PROJECT])
    base = _model_form(hypertension(before=dt.date(2020, 3, 1)))
    with httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        first = c.post(f"{API}/feasibility", json={"definition": base, "project": PROJECT})
        second = c.post(f"{API}/feasibility", json={"definition": _renumbered(base, 5, "bp"), "project": PROJECT})
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        a, b = first.json(), second.json()
        assert a["definition_hash"] == b["definition_hash"]
        assert (a["persons"], a["entries"], a["attrition"]) == (b["persons"], b["entries"], b["attrition"])
        assert a["privacy"]["charged"] and not b["privacy"]["charged"]  # the same question: no new cost
        third = c.post(f"{API}/feasibility", json={"definition": _renumbered(base, 9, "hypertension again"),
                                                   "project": PROJECT})
        assert third.status_code == 429 and "locked out" in third.json()["detail"]


# ---- whose budget -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_invented_requested_by_gets_no_fresh_budget(world):
    node, hub = world["nodes"]["sacro"], world["hub"]
    d = hypertension(before=dt.date(2021, 6, 1))
    with node.client("hub") as h:
        for name in ("invented-1", "invented-2"):
            r = h.post(f"{API}/feasibility", json={"definition": d, "project": PROJECT, "requested_by": name})
            assert r.status_code == 403 and "attestation" in r.json()["detail"], r.text
        forged = {"expires": int(dt.datetime.now().timestamp()) + 60, "signature": "AAAA" * 22}
        r = h.post(f"{API}/feasibility", json={"definition": d, "project": PROJECT, "requested_by": "invented-3",
                                               "attestation": forged})
        assert r.status_code == 403
        # The hub's real attestation for one researcher is not one for another, nor for another definition.
        signed = attest(hub.key.private, "alice", PROJECT, d)
        r = h.post(f"{API}/feasibility", json={"definition": d, "project": PROJECT, "requested_by": "mallory",
                                               "attestation": signed})
        assert r.status_code == 403
        other = hypertension(before=dt.date(2021, 6, 2))
        r = h.post(f"{API}/feasibility", json={"definition": other, "project": PROJECT, "requested_by": "alice",
                                               "attestation": signed})
        assert r.status_code == 403
        r = h.post(f"{API}/feasibility", json={"definition": d, "project": PROJECT, "requested_by": "alice",
                                               "attestation": signed})
        assert r.status_code == 200 and r.json()["privacy"]["charged"], r.text
    # The hub itself never forwards a name from the request.
    with httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {hub.admin_token}"}) as admin:
        r = admin.post(f"{API}/feasibility", json={"definition": d, "project": PROJECT, "requested_by": "x"})
        assert r.status_code == 422
    # A researcher's own token spends their own budget, whatever requested_by says; when it is spent,
    # the refusal names the budget, and a question asked before is still answered.
    token = TokenStore(node.folder / "tokens.json").issue("spender", "researcher", [PROJECT])
    with httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        budget = None
        for day in range(1, 40):
            r = c.post(f"{API}/feasibility", json={"definition": hypertension(before=dt.date(2018, 1, day % 28 + 1)
                                                                              + dt.timedelta(days=400 * (day // 28))),
                                                   "project": PROJECT})
            if r.status_code == 429:
                budget = r.json()["detail"]
                break
            assert r.status_code == 200, r.text
        assert budget is not None and "privacy budget" in budget and "spender" in budget
        assert day == 11  # epsilon 0.1 per definition, 1.0 in all
        r = c.post(f"{API}/feasibility", json={"definition": hypertension(before=dt.date(2030, 1, 1)),
                                               "project": PROJECT, "requested_by": "someone-else"})
        assert r.status_code == 429 and "spender" in r.json()["detail"]
        r = c.post(f"{API}/feasibility", json={"definition": hypertension(before=dt.date(2018, 1, 2)),
                                               "project": PROJECT})
        assert r.status_code == 200 and not r.json()["privacy"]["charged"]


# ---- repeats ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_repeat_gets_the_same_answer_at_no_cost_even_after_a_restart(world):
    node = world["nodes"]["os"]
    token = TokenStore(node.folder / "tokens.json").issue("repeater", "researcher", [PROJECT])
    d = hypertension(before=dt.date(2022, 2, 1))

    def ask(definition: dict[str, Any]) -> dict[str, Any]:
        with httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
            r = c.post(f"{API}/feasibility", json={"definition": definition, "project": PROJECT})
            assert r.status_code == 200, r.text
            return r.json()

    first = ask(d)
    assert first["privacy"]["charged"] and first["privacy"]["spent"] == pytest.approx(0.1)
    again = ask(d)
    assert {k: v for k, v in again.items() if k != "privacy"} == {k: v for k, v in first.items() if k != "privacy"}
    assert not again["privacy"]["charged"] and again["privacy"]["spent"] == pytest.approx(0.1)
    node.stop()
    node.start()
    after = ask(d)
    assert after["persons"] == first["persons"] and after["attrition"] == first["attrition"]
    assert not after["privacy"]["charged"] and after["privacy"]["spent"] == pytest.approx(0.1)
    assert ask(hypertension(before=dt.date(2022, 2, 2)))["privacy"]["spent"] == pytest.approx(0.2)


# ---- the mechanism and the residual risk, in numbers --------------------------------------------------
def test_the_noise_is_two_sided_geometric_with_the_stated_spread():
    from mercia.disclosure.noise import noise_sd, two_sided_geometric

    z = np.array(two_sided_geometric(b"k" * 32, "spread", 20_000, epsilon=0.5, sensitivity=1.0))
    sd = noise_sd(0.5, 1.0)
    assert abs(z.mean()) < 4 * sd / math.sqrt(len(z))
    assert z.std() == pytest.approx(sd, rel=0.05)
    alpha = math.exp(-0.5)
    assert np.mean(z == 0) == pytest.approx((1 - alpha) / (1 + alpha), abs=0.01)  # P(Z = 0)
    # Derived, not drawn: the same label gives the same noise, another label other noise.
    assert two_sided_geometric(b"k" * 32, "q", 5, epsilon=0.1, sensitivity=2) == \
        two_sided_geometric(b"k" * 32, "q", 5, epsilon=0.1, sensitivity=2)
    assert two_sided_geometric(b"k" * 32, "q", 5, epsilon=0.1, sensitivity=2) != \
        two_sided_geometric(b"k" * 32, "r", 5, epsilon=0.1, sensitivity=2)


def test_the_best_attack_within_the_budget_stays_under_the_bound():
    """The residual risk: an attacker who spends the whole default budget (ten questions at epsilon
    0.1) on one person's attribute, each question's count one higher when the person has it, and
    combines them optimally (the likelihood ratio of two-sided geometric noise is a function of the sum
    of |x - n| differences). The bound is e/(1+e) = 0.731; the simulated optimum lies below it."""
    from mercia.disclosure.noise import attribute_accuracy_bound
    from mercia.federation.node.privacy_budget import FeasibilityPrivacy

    settings = FeasibilityPrivacy()
    k = settings.queries_per_researcher
    eps = settings.epsilon_per_query  # all of it on the one count, the attacker's best case
    bound = attribute_accuracy_bound(settings.budget)
    assert k == 10 and bound == pytest.approx(0.731, abs=1e-3)
    rng = np.random.default_rng(5)
    trials = 200_000
    alpha = math.exp(-eps)
    bit = rng.integers(0, 2, trials)
    noise = rng.geometric(1 - alpha, (trials, k)) - rng.geometric(1 - alpha, (trials, k))
    x = bit[:, None] + noise  # the true count is 0 or 1 above the known rest
    # log-likelihood ratio of "has it" over "has not": sum of (|x| - |x - 1|) * eps
    llr = (np.abs(x) - np.abs(x - 1)).sum(axis=1)
    guess = np.where(llr == 0, rng.integers(0, 2, trials), llr > 0)
    acc = float(np.mean(guess == bit))
    se = math.sqrt(acc * (1 - acc) / trials)
    assert acc <= bound + 3 * se
    assert acc > 0.55  # the simulation has power: the attacker does learn something, within the bound
