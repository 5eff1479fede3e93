"""A concept's released record count at a node (issue 17, item 2): capped per person, noised at that cap.

A count of records has no bound on what one person adds: a person with 1,000 records of a rare concept
moves the exact count by 1,000, far above noise scaled for persons. The node counts each person's
records up to `concept_records_cap` (k) and scales the noise to k (node/concept_count.py). Checked
here, against an independent count of the rows in DuckDB:

- the clipped count is sum(min(records of the person, k)), reading every clinical table;
- the differencing attack: two states of a site that differ by one heavy person (1,000 records) give
  released record counts that differ by at most k (the noise is derived from the question, so it is
  the same in both states: the difference is exactly what the person can move), while the raw counts
  differ by 1,000;
- the number passes `release` (the one door): a spy sees the records column go through it, and a
  policy whose threshold is above the count suppresses it;
- the ledger charges both questions of a request together or neither.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import duckdb
import pytest

from federation_support import make_site
from mercia.cdm import Cdm
from mercia.disclosure import SACRO, DisclosurePolicy
from mercia.federation.node import concept_count as cc
from mercia.federation.node.privacy_budget import BudgetExhaustedError, FeasibilityPrivacy, PrivacyLedger

CONCEPT = 2_000_200_001  # a test concept of our own
KEY = bytes.fromhex("3c" * 32)
HEAVY_RECORDS = 1000


def _add_concept(db: Path, per_person: dict[int, int]) -> None:
    """The test concept, and `n` observations of it for each person in `per_person`."""
    con = duckdb.connect(str(db))
    try:
        if not con.execute("SELECT 1 FROM concept WHERE concept_id = ?", [CONCEPT]).fetchone():
            con.execute("INSERT INTO concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id, "
                        "standard_concept, concept_code, valid_start_date, valid_end_date) VALUES "
                        "(?, 'Test records', 'Observation', 'Mercia test', 'Test', 'S', 'R1', DATE '2000-01-01', "
                        "DATE '2099-12-31')", [CONCEPT])
            con.execute("INSERT INTO concept_ancestor VALUES (?, ?, 0, 0)", [CONCEPT, CONCEPT])
        next_obs = int(con.execute("SELECT COALESCE(MAX(observation_id), 0) FROM observation").fetchone()[0]) + 1
        rows = []
        for person, n in per_person.items():
            for _ in range(n):
                rows.append((next_obs, person, CONCEPT))
                next_obs += 1
        con.executemany("INSERT INTO observation (observation_id, person_id, observation_concept_id, observation_date, "
                        "observation_type_concept_id, observation_source_concept_id) "
                        "VALUES (?, ?, ?, DATE '2020-06-01', 32817, 0)", rows)
    finally:
        con.close()


def _raw_and_clipped(db: Path, cap: int) -> tuple[int, int]:
    """Independently of Mercia's query: rows of the concept in observation (where the test puts them)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        per = [r[0] for r in con.execute("SELECT COUNT(*) FROM observation WHERE observation_concept_id = ? "
                                         "GROUP BY person_id", [CONCEPT]).fetchall()]
    finally:
        con.close()
    return sum(per), sum(min(n, cap) for n in per)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two states of one site: `without` and `with_heavy`, the second with one more person holding
    1,000 records of the concept (a person who had none of it before)."""
    root = tmp_path_factory.mktemp("conceptrecords")
    base = make_site(root / "base.duckdb", persons=1500, seed=5)
    con = duckdb.connect(str(base), read_only=True)
    try:
        persons = [r[0] for r in con.execute("SELECT person_id FROM person ORDER BY person_id LIMIT 200").fetchall()]
    finally:
        con.close()
    # 150 ordinary persons with 1 to 4 records each, and a few with 30 (above any sensible cap)
    ordinary = {p: 1 + i % 4 for i, p in enumerate(persons[:150])}
    ordinary.update({p: 30 for p in persons[150:155]})
    without = root / "without.duckdb"
    shutil.copy(base, without)
    _add_concept(without, ordinary)
    with_heavy = root / "with_heavy.duckdb"
    shutil.copy(without, with_heavy)
    _add_concept(with_heavy, {persons[190]: HEAVY_RECORDS})
    return {"without": without, "with_heavy": with_heavy}


def _released(db: Path, privacy: FeasibilityPrivacy, policy: DisclosurePolicy = SACRO) -> dict[str, Any]:
    label = cc.concept_records_label(CONCEPT, True, policy, privacy)
    with Cdm.open(db, read_only=True, create=False) as cdm:
        return cc.released_concept_records(cdm, CONCEPT, True, policy, site="s", privacy=privacy, noise_key=KEY,
                                           label=label)


@pytest.mark.parametrize("cap", [1, 3, 10])
def test_the_clipped_count_is_each_persons_records_up_to_the_cap(sites: dict[str, Any], cap: int) -> None:
    from mercia.vocab.search import concept_records

    for db in sites.values():
        raw, clipped = _raw_and_clipped(db, cap)
        with Cdm.open(db, read_only=True, create=False) as cdm:
            assert concept_records(cdm, CONCEPT, descendants=True, cap=cap) == clipped
            assert concept_records(cdm, CONCEPT, descendants=False, cap=cap) == clipped
        assert raw > clipped or cap >= 30


@pytest.mark.parametrize("cap", [3, 10])
def test_one_heavy_person_moves_the_released_count_by_at_most_the_cap(sites: dict[str, Any], cap: int) -> None:
    privacy = FeasibilityPrivacy(concept_records_cap=cap)
    raw_without, _ = _raw_and_clipped(sites["without"], cap)
    raw_with, _ = _raw_and_clipped(sites["with_heavy"], cap)
    assert raw_with - raw_without == HEAVY_RECORDS  # the raw count shows the person plainly
    a, b = _released(sites["without"], privacy), _released(sites["with_heavy"], privacy)
    assert a["records"] is not None and b["records"] is not None
    diff = b["records"] - a["records"]
    print(f"cap {cap}: released {a['records']} -> {b['records']} (raw {raw_without} -> {raw_with})")
    assert 0 <= diff <= cap, (a["records"], b["records"])  # SACRO releases counts of 10 or more exactly
    assert b["records_per_person_counted"] == cap
    assert f"up to {cap} per person" in b["privacy"]["mechanism"]
    # the noise is real (scaled to the cap), not zero: released differs from the clipped exact count
    _, clipped = _raw_and_clipped(sites["with_heavy"], cap)
    assert b["privacy"]["records_noise_sd"] > cap
    assert b["records"] != clipped or a["records"] != _raw_and_clipped(sites["without"], cap)[1]


def test_the_differencing_attack_over_many_noise_keys(sites: dict[str, Any]) -> None:
    """Under any noise key the two states' released counts differ by at most k; unclipped, by 1,000."""
    privacy = FeasibilityPrivacy()  # the default cap
    assert privacy.concept_records_cap == 10
    label = cc.concept_records_label(CONCEPT, True, SACRO, privacy)
    with (Cdm.open(sites["without"], read_only=True, create=False) as c0,
          Cdm.open(sites["with_heavy"], read_only=True, create=False) as c1):
        for i in range(20):
            key = bytes([i]) * 32
            a = cc.released_concept_records(c0, CONCEPT, True, SACRO, site="s", privacy=privacy, noise_key=key,
                                            label=label)["records"]
            b = cc.released_concept_records(c1, CONCEPT, True, SACRO, site="s", privacy=privacy, noise_key=key,
                                            label=label)["records"]
            if a is not None and b is not None:
                assert 0 <= b - a <= privacy.concept_records_cap, (i, a, b)


def test_the_record_count_passes_release(sites: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, list[str], list[Any]]] = []
    real = cc.release

    def spy(table: Any, policy: Any, **kw: Any) -> Any:
        out = real(table, policy, **kw)
        seen.append((table.name, list(table.count_columns), list(out.data[table.count_columns[0]])))
        return out

    monkeypatch.setattr(cc, "release", spy)
    answer = _released(sites["with_heavy"], FeasibilityPrivacy())
    assert [(name, cols) for name, cols, _ in seen] == [("concept_records", ["records"])]
    assert seen[0][2] == [answer["records"]]
    assert answer["disclosure"]["entries"] or answer["disclosure"]["summary"]
    # a threshold above any count: the released record count is suppressed, never the raw one
    strict = SACRO.model_copy(update={"threshold": 1_000_000})
    assert _released(sites["with_heavy"], FeasibilityPrivacy(), strict)["records"] is None


def test_the_released_persons_count_is_the_floor_of_the_records(sites: dict[str, Any]) -> None:
    privacy = FeasibilityPrivacy()
    label = cc.concept_records_label(CONCEPT, True, SACRO, privacy)
    with Cdm.open(sites["without"], read_only=True, create=False) as cdm:
        free = cc.released_concept_records(cdm, CONCEPT, True, SACRO, site="s", privacy=privacy, noise_key=KEY,
                                           label=label)["records"]
        floored = cc.released_concept_records(cdm, CONCEPT, True, SACRO, site="s", privacy=privacy, noise_key=KEY,
                                              label=label, at_least=free + 100)["records"]
    assert floored == free + 100


def test_the_cap_is_part_of_the_question(sites: dict[str, Any]) -> None:
    a = cc.concept_records_label(CONCEPT, True, SACRO, FeasibilityPrivacy(concept_records_cap=10))
    b = cc.concept_records_label(CONCEPT, True, SACRO, FeasibilityPrivacy(concept_records_cap=5))
    persons = cc.concept_count_label(CONCEPT, True, SACRO, FeasibilityPrivacy())
    assert len({a, b, persons}) == 3
    with pytest.raises(ValueError, match="concept_records_cap"):
        FeasibilityPrivacy(concept_records_cap=0)


def test_both_questions_are_charged_together_or_not_at_all(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    settings = FeasibilityPrivacy(epsilon_per_query=0.1, budget=0.3)
    assert ledger.charge_all("r", ["p1", "r1"], settings) == [True, True]
    assert ledger.spent("r") == pytest.approx(0.2)
    assert ledger.charge_all("r", ["p1", "r1"], settings) == [False, False]  # a repeat is free
    assert ledger.charge_all("r", ["p1"], settings) == [False]
    with pytest.raises(BudgetExhaustedError, match="privacy budget"):
        ledger.charge_all("r", ["p2", "r2"], settings)  # 0.2 more would pass 0.3: nothing charged
    assert ledger.spent("r") == pytest.approx(0.2)
    assert ledger.charge_all("r", ["p1", "r2"], settings) == [False, True]  # only the new one is paid
    assert ledger.spent("r") == pytest.approx(0.3)
    site = FeasibilityPrivacy(epsilon_per_query=0.1, budget=1.0, site_budget=0.4)
    with pytest.raises(BudgetExhaustedError, match="site's privacy budget"):
        ledger.charge_all("other", ["p3", "r3"], site)  # 0.3 released at the site so far: 0.5 > 0.4
    assert ledger.spent("other") == 0
    assert ledger.charge_all("other", ["p1", "r3"], site) == [True, True]  # p1 was released: only r3 is new
