"""The era collapse (Circe's CollapseSettings): persons with one row pass through, the others are merged.

The cohort rows of a person with a single row are that row (its pad is added and taken off again), so
the compiler sends only the rows of persons with more than one through the ordered window passes. Checked
against a collapse written here in Python over random rows (one and several per person, touching,
overlapping, apart, era pads 0 and 30), and that DuckDB's ordered windows see only the several-row persons.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import pyarrow as pa
import pytest
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cohorts.circe import from_circe_json
from mercia.cohorts.compiler import compile_cohort
from mercia.cohorts.generate import cohort_rows, generate_cohorts
from test_cohort_world import COND, cohort, ends_at, load_world

START = dt.date(2001, 1, 1)
OFFSET = 10  # each event's row ends 10 days after it starts


def random_conditions(seed: int) -> tuple[list[dict], dict[int, list[dt.date]]]:
    """Condition 100 rows for persons 1-3 of the world's observation (1 and 3 have several), plus many
    extra persons given an observation period of their own; the start dates per person."""
    rng = random.Random(seed)
    rows, starts = [], {}
    for person in range(100, 160):
        n = rng.choice([1, 1, 1, 2, 3, 5])
        days = sorted(rng.sample(range(0, 400), n))
        starts[person] = [START + dt.timedelta(days=d) for d in days]
        for i, d in enumerate(starts[person]):
            rows.append({"condition_occurrence_id": person * 100 + i, "person_id": person, "condition_concept_id": 100,
                         "condition_start_date": d, "condition_end_date": None, "condition_type_concept_id": 0})
    return rows, starts


def reference_eras(starts: dict[int, list[dt.date]], pad: int) -> list[tuple]:
    """Circe's era collapse in plain Python: (person, start, end) rows, each ending OFFSET days after its
    start, merged where the padded spans touch or overlap."""
    out = []
    for person, days in starts.items():
        spans = sorted((d, d + dt.timedelta(days=OFFSET)) for d in days)
        era_start, era_end = spans[0]
        for s, e in spans[1:]:
            if s <= era_end + dt.timedelta(days=pad):
                era_end = max(era_end, e)
            else:
                out.append((person, era_start, era_end))
                era_start, era_end = s, e
        out.append((person, era_start, era_end))
    return sorted(out)


def world_with(cdm: Cdm, seed: int) -> tuple[Cdm, dict[int, list[dt.date]]]:
    load_world(cdm)
    rows, starts = random_conditions(seed)
    persons = sorted(starts)
    cdm.insert_arrow("person", pa.table({"person_id": persons, "gender_concept_id": [8507] * len(persons),
                                         "year_of_birth": [1970] * len(persons), "race_concept_id": [0] * len(persons),
                                         "ethnicity_concept_id": [0] * len(persons)}))
    cdm.insert_arrow("observation_period", pa.table({
        "observation_period_id": [1000 + p for p in persons], "person_id": persons,
        "observation_period_start_date": [dt.date(2000, 1, 1)] * len(persons),
        "observation_period_end_date": [dt.date(2010, 12, 31)] * len(persons), "period_type_concept_id": [0] * len(persons)}))
    cdm.insert_arrow("condition_occurrence", pa.table({k: [r[k] for r in rows] for k in rows[0]}))
    return cdm, starts


def definition(pad: int) -> object:
    # The world's own persons 1-3 match condition 100 too; only the added persons are compared.
    return from_circe_json(cohort({"ConditionOccurrence": {"CodesetId": COND["id"]}}, EndStrategy=ends_at(offset=OFFSET),
                                  era_pad=pad), name=f"eras pad {pad}")


@pytest.mark.parametrize("pad", [0, 30])
@pytest.mark.parametrize("seed", [1, 2])
def test_eras_match_a_reference_collapse(any_cdm: Cdm, pad: int, seed: int) -> None:
    cdm, starts = world_with(any_cdm, seed)
    assert {len(v) for v in starts.values()} > {1}  # persons with one row and with several
    generate_cohorts(cdm, [(7, definition(pad))])
    got = sorted((int(p), s, e) for p, s, e in cohort_rows(cdm, 7) if int(p) >= 100)
    assert got == reference_eras(starts, pad)


def window_rows(profile: object) -> list[int]:
    """The rows each WINDOW operator of a DuckDB JSON profile produced (any nesting of its operator tree)."""
    out, stack = [], [profile]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            kind = str(node.get("type") or node.get("operator_type") or node.get("name") or "")
            if "WINDOW" in kind.upper():
                out.append(int(node.get("intermediate_rows", node.get("operator_cardinality", -1))))
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
    return out


def test_only_persons_with_several_rows_go_through_the_ordered_windows(tmp_path: Path) -> None:
    cdm, _ = world_with(Cdm.open(tmp_path / "w.duckdb"), 3)
    with cdm:
        compiled = compile_cohort(cdm, definition(0).expression)
        assert not compiled.params
        con = cdm.engine.con
        # The rows entering the era step (cohort_rows): all of them, and those of persons with several.
        per_person = compiled.over_pipeline(exp.select("person_id", exp.Count(this=exp.Star()).as_("n"))
                                            .from_("cohort_rows").group_by("person_id"))
        total, multi = con.execute(f"SELECT sum(n), sum(n) FILTER (WHERE n > 1) FROM ({per_person.sql('duckdb')})").fetchone()
        assert 0 < multi < total
        profile_file = tmp_path / "profile.json"
        con.execute("PRAGMA enable_profiling = 'json'")
        con.execute(f"PRAGMA profiling_output = '{profile_file}'")
        assert con.execute(compiled.sql("duckdb")).fetchall()
        con.execute("PRAGMA disable_profiling")
        windows = window_rows(json.loads(profile_file.read_text()))
        # The count per person sees every row; the era's two ordered passes only the several-row persons'
        # (before, both saw every row).
        assert windows.count(multi) == 2, windows
        assert windows.count(total) == 1, windows
