"""A node's concept counts (issue 13, item 7) under attack, over real HTTP on 127.0.0.1.

The channel: `POST /concepts/count` gives the persons with a concept, with or without its descendants.
A researcher who knows that one person (the target) is the only one who could carry a rare child
concept C of a parent P asks for P with its descendants and for P alone: with exact counts (the SACRO
policy releases every count of 10 or more exactly) the difference is 1 if the target has C and 0 if
not. The test builds that world for 60 targets (half with C), checks that exact counts would give the
attack every answer, then runs the attack against the node (each target with a researcher of its own,
so each gets a full privacy budget): its accuracy must be within three binomial standard errors of
guessing. The defence is the feasibility counts' (node/concept_count.py): noise, budget, one answer per
distinct question.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from federation_support import PROJECT, HubKey, NodeServer, make_site
from mercia.federation.attestation import attest, concept_question
from mercia.federation.auth import TokenStore

API = "/api/v1"
TARGETS_PER_CLASS = 30
BASE = 2_000_100_000  # test concept ids: P_i = BASE + 2i, C_i = BASE + 2i + 1
PER_PARENT = 20  # persons recorded with each parent concept


def _build_world(db: Path) -> list[tuple[int, int, bool]]:
    """Adds P_i, C_i (C_i a child of P_i) and observations to the site; returns (P_i, C_i, target has C_i)."""
    import duckdb

    rng = random.Random(7)
    con = duckdb.connect(str(db))
    try:
        persons = [r[0] for r in con.execute("SELECT person_id FROM person ORDER BY person_id").fetchall()]
        next_obs = int(con.execute("SELECT COALESCE(MAX(observation_id), 0) FROM observation").fetchone()[0]) + 1
        chosen = rng.sample(persons, 2 * TARGETS_PER_CLASS * (PER_PARENT + 1))
        world = []
        concepts, ancestry, observations = [], [], []
        for i in range(2 * TARGETS_PER_CLASS):
            p, c = BASE + 2 * i, BASE + 2 * i + 1
            has = i % 2 == 0
            group = chosen[i * (PER_PARENT + 1):(i + 1) * (PER_PARENT + 1)]
            target, others = group[0], group[1:]
            concepts += [(p, f"Test parent {i}", "Observation", "Mercia test", "Test", "S", f"P{i}"),
                         (c, f"Test child {i}", "Observation", "Mercia test", "Test", "S", f"C{i}")]
            ancestry += [(p, p, 0, 0), (c, c, 0, 0), (p, c, 1, 1)]
            for person in others:
                observations.append((next_obs, person, p))
                next_obs += 1
            if has:
                observations.append((next_obs, target, c))
                next_obs += 1
            world.append((p, c, has))
        con.executemany("INSERT INTO concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id, "
                        "standard_concept, concept_code, valid_start_date, valid_end_date) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, DATE '2000-01-01', DATE '2099-12-31')", concepts)
        con.executemany("INSERT INTO concept_ancestor VALUES (?, ?, ?, ?)", ancestry)
        con.executemany("INSERT INTO observation (observation_id, person_id, observation_concept_id, observation_date, "
                        "observation_type_concept_id, observation_source_concept_id) "
                        "VALUES (?, ?, ?, DATE '2020-06-01', 32817, 0)", observations)
    finally:
        con.close()
    return world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("conceptattack")
    db = make_site(root / "site.duckdb", persons=3000, seed=1)
    targets = _build_world(db)
    from mercia.cdm import Cdm
    from mercia.vocab.search import concept_persons

    with Cdm.open(db, read_only=True, create=False) as cdm:  # before the node holds the file
        exact = {(p, d): concept_persons(cdm, p, descendants=d) for p, _, _ in targets for d in (False, True)}
    key = HubKey(root / "hubkey")
    node = NodeServer(root / "node", cdm=db, hub_key=key, site="sacro", policy="sacro",
                      count_limits={"per_window": 600, "window_seconds": 60, "near_identical": 2})
    node.state_dir.mkdir(parents=True, exist_ok=True)
    # A fixed noise key (as a node makes on first use, but known): the same accuracies on every run.
    (node.state_dir / "feasibility_noise.key").write_text("5a" * 32)
    with node:
        yield {"node": node, "db": db, "targets": targets, "exact": exact, "key": key}


def _researcher(node: NodeServer, name: str, projects: list[str] | None = None) -> httpx.Client:
    token = TokenStore(node.folder / "tokens.json").issue(name, "researcher", projects or [PROJECT])
    return httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


def _count(c: httpx.Client, concept_id: int, descendants: bool, records: bool = False) -> dict[str, Any]:
    r = c.post(f"{API}/concepts/count", json={"concept_id": concept_id, "descendants": descendants,
                                              "project": PROJECT, **({"records": True} if records else {})})
    assert r.status_code == 200, r.text
    return r.json()


def test_exact_concept_counts_would_reveal_every_target(world):
    """The channel is real: on exact counts the attack is right every time (what the node must not give)."""
    exact = world["exact"]
    for p, _, has in world["targets"]:
        assert exact[(p, False)] == PER_PARENT and (exact[(p, True)] - exact[(p, False)] == 1) == has


@pytest.mark.slow
def test_differencing_two_concept_counts_is_no_better_than_guessing(world):
    node = world["node"]
    guesses, truth = [], []
    for i, (p, _, has) in enumerate(world["targets"]):
        with _researcher(node, f"concept-attacker-{i}") as c:
            a = _count(c, p, True)["persons"] or 0
            b = _count(c, p, False)["persons"] or 0
        guesses.append(a - b >= 1)
        truth.append(has)
    n = len(truth)
    acc = sum(g == t for g, t in zip(guesses, truth, strict=True)) / n
    print(f"concept-count differencing attack: accuracy {acc:.3f} over {n} targets")
    assert abs(acc - 0.5) <= 3 * math.sqrt(0.25 / n), f"the attack's accuracy is {acc:.2f} over {n} targets"


def test_a_repeat_is_the_same_answer_at_no_cost_and_the_budget_is_shared_with_feasibility(world):
    node = world["node"]
    p = world["targets"][0][0]
    with _researcher(node, "repeater") as c:
        first = _count(c, p, True)
        again = _count(c, p, True)
        assert first["persons"] == again["persons"]
        assert first["privacy"]["charged"] and not again["privacy"]["charged"]
        assert again["privacy"]["spent"] == pytest.approx(0.1) and again["privacy"]["budget"] == 1.0
        # Ten distinct questions in all spend the budget; the eleventh is refused, naming it.
        for k in range(1, 10):
            assert _count(c, world["targets"][k][0], True)["privacy"]["charged"]
        r = c.post(f"{API}/concepts/count", json={"concept_id": world["targets"][20][0], "project": PROJECT})
        assert r.status_code == 429 and "privacy budget" in r.json()["detail"], r.text
        # Feasibility counts draw on the same budget.
        d = {"name": "x", "concepts": {"p": {"include": [p]}}, "entry": [{"observation": "p"}]}
        r = c.post(f"{API}/feasibility", json={"definition": d, "project": PROJECT})
        assert r.status_code == 429 and "privacy budget" in r.json()["detail"], r.text
        # A third asking of one question trips the lockout on near-identical repeats, as feasibility does.
        r = c.post(f"{API}/concepts/count", json={"concept_id": p, "descendants": True, "project": PROJECT})
        assert r.status_code == 429 and "locked out" in r.json()["detail"], r.text


def test_scope_roles_and_bad_input(world):
    node = world["node"]
    p = world["targets"][0][0]
    with _researcher(node, "outsider", ["other"]) as c:
        r = c.post(f"{API}/concepts/count", json={"concept_id": p, "project": PROJECT})
        assert r.status_code == 403
    with node.client("custodian") as c:
        assert c.post(f"{API}/concepts/count", json={"concept_id": p, "project": PROJECT}).status_code == 403
    with _researcher(node, "typo") as c:
        r = c.post(f"{API}/concepts/count", json={"concept_id": 999_999_999, "project": PROJECT})
        assert r.status_code == 400 and "concept_id: 999999999 is not in" in r.json()["detail"]
        r = c.post(f"{API}/concepts/count", json={"concept_id": "x", "project": PROJECT})
        assert r.status_code == 422
        ok = _count(c, p, True)
        assert ok["privacy"]["spent"] == pytest.approx(0.1)  # the refused question cost nothing
    audit = (node.state_dir / "audit.jsonl").read_text()
    assert "concept_count.released" in audit


def test_an_answer_holds_no_exact_count(world):
    """What leaves is the released (noised, thresholded) count and the public disclosure log only."""
    node = world["node"]
    p = world["targets"][2][0]
    with _researcher(node, "reader") as c:
        a = _count(c, p, False)
    assert set(a) == {"site", "concept_id", "descendants", "persons", "disclosure", "privacy", "records",
                      "records_per_person_counted", "records_disclosure"}
    assert a["records"] is None and a["records_per_person_counted"] is None  # not asked: not released
    assert a["privacy"]["mechanism"].startswith("two-sided geometric")
    assert a["persons"] is None or a["persons"] >= 10  # SACRO: below 10 is suppressed
    with _researcher(node, "reader-records") as c:
        b = _count(c, p, False, records=True)
    assert b["persons"] == a["persons"]  # the persons answer is the same question's, records or not
    assert b["records"] is None or b["records"] >= 10
    assert b["records_disclosure"]["entries"] or b["records_disclosure"]["summary"]  # it went through release
    assert "up to 10 per person" in b["privacy"]["records"]["mechanism"]


def test_the_hub_names_a_researcher_only_with_its_attestation_of_that_question(world):
    """As for feasibility counts: a hub token naming a researcher gets no fresh budget without the hub's
    signature for that researcher, project and question (concept and descendants or not)."""
    node, key = world["node"], world["key"]
    p, q = world["targets"][3][0], world["targets"][4][0]

    def ask(body: dict[str, Any]) -> httpx.Response:
        with node.client("hub") as h:
            return h.post(f"{API}/concepts/count", json={"project": PROJECT, **body})

    r = ask({"concept_id": p, "descendants": True, "requested_by": "invented"})
    assert r.status_code == 403 and "attestation" in r.json()["detail"], r.text
    signed = attest(key.private, "alice", PROJECT, concept_question(p, True))
    for other in ({"concept_id": p, "descendants": False, "requested_by": "alice"},
                  {"concept_id": q, "descendants": True, "requested_by": "alice"},
                  {"concept_id": p, "descendants": True, "requested_by": "mallory"}):
        r = ask({**other, "attestation": signed})
        assert r.status_code == 403, (other, r.text)
    # A feasibility attestation is not one for a concept count.
    d = {"name": "x", "concepts": {"p": {"include": [p]}}, "entry": [{"observation": "p"}]}
    r = ask({"concept_id": p, "descendants": True, "requested_by": "alice",
             "attestation": attest(key.private, "alice", PROJECT, d)})
    assert r.status_code == 403
    r = ask({"concept_id": p, "descendants": True, "requested_by": "alice", "attestation": signed})
    assert r.status_code == 200 and r.json()["privacy"]["charged"], r.text
    assert r.json()["privacy"]["spent"] == pytest.approx(0.1)  # alice's budget, not the hub's
    records = [json.loads(x) for x in (node.state_dir / "audit.jsonl").read_text().splitlines()]
    assert any(x["event"] == "concept_count.released" and x["details"].get("budget_of") == "hub/alice"
               for x in records)


def test_records_come_with_their_cap_and_a_charge_of_their_own(world):
    """Records are a second question: asked with persons, the request costs 2 x epsilon (both charged
    together); a repeat costs nothing, persons alone afterwards is a repeat, and records asked after
    persons cost one epsilon more. The persons count is the one asked without records."""
    node = world["node"]
    p, q = world["targets"][5][0], world["targets"][6][0]
    with _researcher(node, "records-1") as c:
        first = _count(c, p, True, records=True)
        assert first["records_per_person_counted"] == 10
        # never fewer records than persons (the released persons count is their floor); none beside a
        # suppressed persons count
        assert first["records"] is None if first["persons"] is None else first["records"] >= first["persons"]
        assert first["privacy"]["charged"] and first["privacy"]["epsilon_charged"] == pytest.approx(0.2)
        assert first["privacy"]["spent"] == pytest.approx(0.2)
        assert first["privacy"]["records"]["epsilon"] == pytest.approx(0.1)
        again = _count(c, p, True, records=True)
        assert (again["persons"], again["records"]) == (first["persons"], first["records"])
        assert not again["privacy"]["charged"] and again["privacy"]["spent"] == pytest.approx(0.2)
    with _researcher(node, "records-2") as c:
        persons_only = _count(c, p, True)
        assert persons_only["persons"] == first["persons"] and persons_only["privacy"]["spent"] == pytest.approx(0.1)
        both = _count(c, p, True, records=True)
        assert both["records"] == first["records"] and both["privacy"]["epsilon_charged"] == pytest.approx(0.1)
        assert both["privacy"]["spent"] == pytest.approx(0.2)
    with _researcher(node, "records-3") as c:
        for k in range(7, 14):  # 0.7 spent
            assert _count(c, world["targets"][k][0], True)["privacy"]["charged"]
        assert _count(c, q, True, records=True)["privacy"]["spent"] == pytest.approx(0.9)
        # 0.2 more would pass the budget: refused, and nothing charged (not even the persons part)
        r = c.post(f"{API}/concepts/count", json={"concept_id": world["targets"][14][0], "records": True,
                                                  "project": PROJECT})
        assert r.status_code == 429 and "privacy budget" in r.json()["detail"], r.text
        last = _count(c, world["targets"][14][0], True)  # persons alone still fit
        assert last["privacy"]["spent"] == pytest.approx(1.0)
        # bad input: one line naming the field
        r = c.post(f"{API}/concepts/count", json={"concept_id": p, "records": "many", "project": PROJECT})
        assert r.status_code == 422 and "records" in r.text, r.text
    lines = [json.loads(x) for x in (node.state_dir / "audit.jsonl").read_text().splitlines()]
    mine = [x["details"] for x in lines if x["event"] == "concept_count.released"
            and x["details"].get("budget_of") == "records-1"]
    assert [d.get("epsilon") for d in mine] == [pytest.approx(0.2), 0.0]
    assert mine[0]["record_count"] == first["records"] and mine[0]["record_cap"] == 10


def test_the_hubs_attestation_names_the_records_question(world):
    """An attestation of the persons question does not buy records (which cost more): the hub signs the
    question with its records."""
    node, key = world["node"], world["key"]
    p = world["targets"][15][0]

    def ask(body: dict[str, Any]) -> httpx.Response:
        with node.client("hub") as h:
            return h.post(f"{API}/concepts/count", json={"project": PROJECT, **body})

    persons_only = attest(key.private, "dora", PROJECT, concept_question(p, True))
    r = ask({"concept_id": p, "descendants": True, "records": True, "requested_by": "dora",
             "attestation": persons_only})
    assert r.status_code == 403, r.text
    signed = attest(key.private, "dora", PROJECT, concept_question(p, True, records=True))
    r = ask({"concept_id": p, "descendants": True, "records": True, "requested_by": "dora", "attestation": signed})
    assert r.status_code == 200 and r.json()["records_per_person_counted"] == 10, r.text
    assert r.json()["privacy"]["spent"] == pytest.approx(0.2)
