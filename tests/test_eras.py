"""DRUG_ERA and CONDITION_ERA by OHDSI's rules: hand-computed cases on every engine, and Eunomia.

Each expected era below is worked out by hand from the rules in mercia.cdm.eras; the comments give
the arithmetic.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cdm.eras import derive_eras
from mercia.cdm.load import load_folder
from mercia.errors import CdmError

D = dt.date
A, B = 1, 2  # RxNorm ingredients
X, Y, UNMAPPED = 10, 11, 12  # X = A + B (combination), Y = A alone, UNMAPPED has no ingredient
COND, COND2 = 100, 101


def insert(cdm: Cdm, table: str, rows: list[dict]) -> None:
    """Raw rows (bypassing the spec's NOT NULL, to model legacy data with empty end dates)."""
    spec = cdm.spec.table(table)
    cols = list(rows[0])
    data = pa.table({c: pa.array([r[c] for r in rows], spec.field(c).arrow_type()) for c in cols})
    cdm.engine.insert_arrow(cdm.qualified(table), data)


def build(cdm: Cdm) -> None:
    cdm.create_tables(["concept", "concept_ancestor", "drug_exposure", "condition_occurrence", "drug_era"])
    # Legacy CDMs (v5.0) allowed an empty drug_exposure_end_date; the era rules handle it.
    cdm.execute(
        f"ALTER TABLE {cdm.qualified('drug_exposure')} ALTER COLUMN drug_exposure_end_date DROP NOT NULL"
    )

    def concept(cid: int, vocab: str, cls: str) -> dict:
        return {"concept_id": cid, "concept_name": f"c{cid}", "domain_id": "Drug", "vocabulary_id": vocab,
                "concept_class_id": cls, "concept_code": str(cid), "valid_start_date": D(2000, 1, 1),
                "valid_end_date": D(2099, 12, 31)}  # fmt: skip

    insert(cdm, "concept", [
        concept(A, "RxNorm", "Ingredient"), concept(B, "RxNorm", "Ingredient"),
        concept(X, "RxNorm", "Clinical Drug"), concept(Y, "RxNorm", "Clinical Drug"),
        concept(UNMAPPED, "RxNorm", "Clinical Drug"), concept(99, "ATC", "ATC 4th"),
    ])  # fmt: skip
    insert(cdm, "concept_ancestor", [
        {"ancestor_concept_id": a, "descendant_concept_id": d, "min_levels_of_separation": int(a != d),
         "max_levels_of_separation": int(a != d)}
        for a, d in [(A, A), (B, B), (A, X), (B, X), (A, Y), (99, UNMAPPED), (99, Y)]
    ])  # fmt: skip

    def exposure(
        i: int, person: int, drug: int, start: dt.date, end: dt.date | None, supply: int | None
    ) -> dict:
        return {"drug_exposure_id": i, "person_id": person, "drug_concept_id": drug,
                "drug_exposure_start_date": start, "drug_exposure_end_date": end, "days_supply": supply,
                "drug_type_concept_id": 32817}  # fmt: skip

    insert(cdm, "drug_exposure", [
        exposure(1, 1, Y, D(2020, 1, 1), D(2020, 1, 10), None),
        exposure(2, 1, Y, D(2020, 1, 5), D(2020, 1, 20), None),  # overlaps 1
        exposure(3, 1, Y, D(2020, 2, 19), None, 10),  # starts 30 days after 01-20; ends start + 10 = 02-29
        exposure(4, 1, Y, D(2020, 3, 31), None, None),  # 31 days after 02-29; ends start + 1
        exposure(5, 1, Y, D(2020, 6, 1), None, 0),  # days_supply 0 counts as none: start + 1
        exposure(6, 2, X, D(2021, 1, 1), D(2021, 1, 31), 30),  # A and B
        exposure(7, 2, Y, D(2021, 1, 15), D(2021, 2, 15), 31),  # A, overlapping 6
        exposure(8, 2, UNMAPPED, D(2021, 1, 1), D(2021, 1, 2), 1),  # no RxNorm ingredient: no era
    ])  # fmt: skip

    def occurrence(i: int, person: int, concept_id: int, start: dt.date, end: dt.date | None) -> dict:
        return {"condition_occurrence_id": i, "person_id": person, "condition_concept_id": concept_id,
                "condition_start_date": start, "condition_end_date": end, "condition_type_concept_id": 32817}  # fmt: skip

    insert(cdm, "condition_occurrence", [
        occurrence(1, 1, COND, D(2020, 1, 1), D(2020, 1, 5)),
        occurrence(2, 1, COND, D(2020, 2, 4), None),  # 30 days after 01-05: joins; ends 02-05
        occurrence(3, 1, COND, D(2020, 3, 7), D(2020, 3, 10)),  # 31 days after 02-05: new era
        occurrence(4, 1, COND2, D(2020, 1, 3), None),  # another concept: its own era, ends start + 1
        occurrence(5, 2, COND, D(2020, 1, 1), D(2020, 12, 31)),
        occurrence(6, 2, COND, D(2020, 3, 1), D(2020, 3, 2)),  # inside 5
        occurrence(7, 2, COND, D(2021, 1, 30), D(2021, 1, 30)),  # 30 days after 12-31: joins
    ])  # fmt: skip
    # A stale row that derivation must replace.
    insert(cdm, "drug_era", [{"drug_era_id": 99, "person_id": 9, "drug_concept_id": A,
                              "drug_era_start_date": D(1999, 1, 1), "drug_era_end_date": D(1999, 1, 2)}])  # fmt: skip


def drug_eras(cdm: Cdm) -> list[tuple]:
    return cdm.fetch_all(
        f"SELECT person_id, drug_concept_id, drug_era_start_date, drug_era_end_date, drug_exposure_count, gap_days "
        f"FROM {cdm.qualified('drug_era')} ORDER BY 1, 2, 3"
    )


def condition_eras(cdm: Cdm) -> list[tuple]:
    return cdm.fetch_all(
        f"SELECT person_id, condition_concept_id, condition_era_start_date, condition_era_end_date, "
        f"condition_occurrence_count FROM {cdm.qualified('condition_era')} ORDER BY 1, 2, 3"
    )


@pytest.fixture
def era_cdm(cdm_factory: Callable[..., Cdm]) -> Cdm:
    cdm = cdm_factory()
    build(cdm)
    return cdm


def test_drug_eras_hand_computed(era_cdm: Cdm) -> None:
    assert derive_eras(era_cdm) == {"drug_era": 5, "condition_era": 4}
    rows = drug_eras(era_cdm)
    assert rows[:3] == [
        # exposures 1-3: sub-exposures 01-01..01-20 (19 days) and 02-19..02-29 (10 days);
        # the era 01-01..02-29 is 59 days, so 59 - 29 = 30 gap days. Exposure 4 starts 31 days on.
        (1, A, D(2020, 1, 1), D(2020, 2, 29), 3, 30),
        (1, A, D(2020, 3, 31), D(2020, 4, 1), 1, 0),
        (1, A, D(2020, 6, 1), D(2020, 6, 2), 1, 0),
    ]
    assert rows[3:] == [
        # exposures 6 (A via X) and 7 (A via Y) overlap: one sub-exposure 01-01..02-15; B from X alone
        (2, A, D(2021, 1, 1), D(2021, 2, 15), 2, 0),
        (2, B, D(2021, 1, 1), D(2021, 1, 31), 1, 0),
    ]
    ids = era_cdm.fetch_all(f"SELECT drug_era_id FROM {era_cdm.qualified('drug_era')} ORDER BY 1")
    assert [i for (i,) in ids] == [1, 2, 3, 4, 5]  # the stale row 99 is gone


def test_condition_eras_hand_computed(era_cdm: Cdm) -> None:
    derive_eras(era_cdm)
    assert condition_eras(era_cdm) == [
        (1, COND, D(2020, 1, 1), D(2020, 2, 5), 2),  # gap of exactly 30 days joins
        (1, COND, D(2020, 3, 7), D(2020, 3, 10), 1),  # gap of 31 days does not
        (1, COND2, D(2020, 1, 3), D(2020, 1, 4), 1),  # empty end date: start + 1
        (2, COND, D(2020, 1, 1), D(2021, 1, 30), 3),  # nested occurrence, then a 30-day gap
    ]


def test_persistence_window_zero(era_cdm: Cdm) -> None:
    derive_eras(era_cdm, persistence_window=0)
    assert condition_eras(era_cdm)[:2] == [
        (1, COND, D(2020, 1, 1), D(2020, 1, 5), 1),
        (1, COND, D(2020, 2, 4), D(2020, 2, 5), 1),
    ]
    # overlapping exposures still merge; touching is not needed
    assert drug_eras(era_cdm)[:2] == [
        (1, A, D(2020, 1, 1), D(2020, 1, 20), 2, 0),
        (1, A, D(2020, 2, 19), D(2020, 2, 29), 1, 0),
    ]


def test_drug_eras_stockpiled(era_cdm: Cdm) -> None:
    derive_eras(era_cdm, drug_era_stockpile=True)
    assert drug_eras(era_cdm) == [
        # 1: 01-01..01-10 (9 days); 2 (15 days) waits for 1: 01-10..01-25; 3: 02-19..02-29 (25-day gap)
        # era 59 days, 9 + 15 + 10 = 34 exposed, 25 gap days
        (1, A, D(2020, 1, 1), D(2020, 2, 29), 3, 25),
        (1, A, D(2020, 3, 31), D(2020, 4, 1), 1, 0),
        (1, A, D(2020, 6, 1), D(2020, 6, 2), 1, 0),
        # 6: 01-01..01-31 (30 days); 7 (31 days) waits: 01-31..03-03
        (2, A, D(2021, 1, 1), D(2021, 3, 3), 2, 0),
        (2, B, D(2021, 1, 1), D(2021, 1, 31), 1, 0),
    ]


def test_bad_window_and_missing_tables(duck_cdm: Cdm) -> None:
    with pytest.raises(CdmError, match="persistence_window must be a whole number"):
        derive_eras(duck_cdm, persistence_window=-1)
    with pytest.raises(
        CdmError, match=r"table\(s\) drug_exposure, concept_ancestor, concept, condition_occurrence missing"
    ):
        derive_eras(duck_cdm)


def test_failure_keeps_old_eras(era_cdm: Cdm, monkeypatch: pytest.MonkeyPatch) -> None:
    before = drug_eras(era_cdm)
    real = era_cdm.execute
    calls = []

    def failing(expr, params=None):  # fail on the condition_era insert, after drug_era was replaced
        calls.append(expr)
        if isinstance(expr, exp.Insert) and "condition_era" in expr.this.sql():
            assert drug_eras(era_cdm) != before  # drug_era already rewritten inside the transaction
            raise RuntimeError("boom")
        return real(expr, params)

    monkeypatch.setattr(era_cdm, "execute", failing)
    with pytest.raises(RuntimeError, match="boom"):
        derive_eras(era_cdm)
    monkeypatch.undo()
    assert drug_eras(era_cdm) == before


# ---- Eunomia: derived eras against the shipped tables ---------------------------------------------
def test_eunomia_eras_match_shipped(eunomia_dir: Path, cdm_factory: Callable[..., Cdm]) -> None:
    """Condition eras: every derived era is in the shipped table; the shipped table has 443 more, all
    with condition_concept_id 0, which no condition occurrence has (Eunomia's ETL built eras before
    its unmapped conditions were dropped). Drug eras: equal in number; all but 8 equal on person,
    ingredient, start, end and exposure count. The 8 are eras where a zero-length exposure starts on
    the same day as a longer one, and the shipped era stops on that day although the longer exposure
    runs on. Shipped gap_days are not comparable: they range from negative to thousands of days."""
    cdm = cdm_factory()
    load_folder(cdm, eunomia_dir)
    q = cdm.qualified
    cdm.execute(f"CREATE TABLE {q('drug_era')}_shipped AS SELECT * FROM {q('drug_era')}")
    cdm.execute(f"CREATE TABLE {q('condition_era')}_shipped AS SELECT * FROM {q('condition_era')}")
    assert derive_eras(cdm) == {"drug_era": 52508, "condition_era": 65276}

    def diff(a: str, b: str, cols: str) -> int:
        return cdm.scalar(
            f"SELECT count(*) FROM (SELECT {cols} FROM {a} EXCEPT ALL SELECT {cols} FROM {b}) AS d"
        )

    ccols = "person_id, condition_concept_id, condition_era_start_date, condition_era_end_date, condition_occurrence_count"
    assert diff(q("condition_era"), f"{q('condition_era')}_shipped", ccols) == 0
    assert diff(f"{q('condition_era')}_shipped", q("condition_era"), ccols) == 443
    assert (
        cdm.scalar(f"SELECT count(*) FROM {q('condition_era')}_shipped WHERE condition_concept_id = 0") == 443
    )
    assert cdm.scalar(f"SELECT count(*) FROM {q('condition_occurrence')} WHERE condition_concept_id = 0") == 0

    dcols = "person_id, drug_concept_id, drug_era_start_date, drug_era_end_date, drug_exposure_count"
    assert diff(q("drug_era"), f"{q('drug_era')}_shipped", dcols) == 8
    assert diff(f"{q('drug_era')}_shipped", q("drug_era"), dcols) == 8
    # The 8 shipped eras all end on their start day; ours start on the same day with the same count.
    odd = cdm.fetch_all(
        f"SELECT person_id, drug_concept_id, drug_era_start_date, drug_exposure_count FROM ("
        f"SELECT {dcols} FROM {q('drug_era')}_shipped EXCEPT ALL SELECT {dcols} FROM {q('drug_era')}) AS d "
        f"WHERE drug_era_start_date = drug_era_end_date ORDER BY 1, 2, 3"
    )
    ours = cdm.fetch_all(
        f"SELECT person_id, drug_concept_id, drug_era_start_date, drug_exposure_count FROM ("
        f"SELECT {dcols} FROM {q('drug_era')} EXCEPT ALL SELECT {dcols} FROM {q('drug_era')}_shipped) AS d "
        f"ORDER BY 1, 2, 3"
    )
    assert len(odd) == 8 and odd == ours
