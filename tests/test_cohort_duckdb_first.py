"""DuckDB's 'first event per person' by ARG_MIN selects exactly the rows Circe's ROW_NUMBER() form selects."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cdm.engines import engine_class
from mercia.cdm.engines.duckdb_first import _sort_key, rewrite_first_rows
from mercia.cohorts.circe import from_circe_json
from mercia.cohorts.compiler import bound, compile_cohort
from mercia.cohorts.generate import cohort_rows, generate_cohorts
from mercia.cohorts.plan import PLANS, plan_cohort
from test_cohort_world import DRUG, cohort, correlated, ends_at, group, load_world, window

DRUG_ID = 200  # DRUG's concept
FIRST_DRUG = {"DrugExposure": {"CodesetId": DRUG["id"], "First": True}}


@pytest.fixture(scope="module")
def world() -> Iterator[Cdm]:
    cdm = load_world(Cdm.open())
    yield cdm
    cdm.close()


def first_drug_cohort(**criterion: object) -> object:
    return from_circe_json(cohort({"DrugExposure": {"CodesetId": DRUG["id"], "First": True, **criterion}},
                                  EndStrategy=ends_at(offset=1)), name="first drug")


def by_window(cdm: Cdm, definition: object) -> list[tuple]:
    """The rows of the compiled single query, which keeps the ROW_NUMBER() window."""
    compiled = compile_cohort(cdm, definition.expression)  # type: ignore[attr-defined]
    q = compiled.rows_query()
    return sorted(tuple(r) for r in cdm.fetch_all(q, bound(q, compiled.params)))


def set_drug_exposures(cdm: Cdm, rows: list[tuple[int, int, dt.date | None]]) -> None:
    cdm.execute(exp.delete(cdm.table("drug_exposure")))
    if rows:
        cdm.insert_arrow("drug_exposure", pa.table({
            "drug_exposure_id": [i for _, i, _ in rows], "person_id": [p for p, _, _ in rows],
            "drug_concept_id": [DRUG_ID] * len(rows), "drug_exposure_start_date": [d for _, _, d in rows],
            "drug_exposure_end_date": [d for _, _, d in rows], "drug_type_concept_id": [0] * len(rows),
        }))


# (person, drug_exposure_id, start date): ids may repeat, days often coincide, and person 2's 2000 dates
# fall outside their observation period (their first row is then dropped after it is chosen)
exposures = st.lists(st.tuples(
    st.integers(1, 3), st.integers(1, 40),
    st.dates(dt.date(2000, 1, 1), dt.date(2000, 1, 8)) | st.dates(dt.date(2005, 1, 1), dt.date(2005, 1, 8)),
), max_size=25)


@pytest.mark.slow  # about 0.2 s an example (0.7 s on a loaded machine)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=exposures, age=st.sampled_from([None, 30, 60]))
def test_first_rows_by_aggregate_are_those_of_the_window(world: Cdm, rows: list, age: int | None) -> None:
    # duplicate ids, same-day events and persons with several observation periods all occur in the draws
    set_drug_exposures(world, rows)
    definition = first_drug_cohort(**({} if age is None else {"Age": {"Value": age, "Op": "lt"}}))
    cohort_id = {None: 1, 30: 2, 60: 3}[age]  # one id per definition: an id keeps its definition
    PLANS.clear()
    generate_cohorts(world, [(cohort_id, definition)])
    assert sorted(tuple(r) for r in cohort_rows(world, cohort_id)) == by_window(world, definition)


def test_the_first_is_taken_before_the_other_filters(world: Cdm) -> None:
    # person 1's first exposure is in 2000 (age 50); filtering age < 52 after First keeps it,
    # filtering age >= 52 after First drops the person (Circe's order), never picks the 2005 one
    set_drug_exposures(world, [(1, 1, dt.date(2000, 1, 5)), (1, 2, dt.date(2005, 1, 5))])
    young = first_drug_cohort(Age={"Value": 52, "Op": "lt"})
    older = first_drug_cohort(Age={"Value": 52, "Op": "gte"})
    PLANS.clear()
    generate_cohorts(world, [(11, young), (12, older)])
    assert [r[1] for r in cohort_rows(world, 11)] == [dt.date(2000, 1, 5)]
    assert cohort_rows(world, 12) == []


def test_only_the_first_row_window_is_rewritten(world: Cdm) -> None:
    d = from_circe_json(cohort(FIRST_DRUG, limit="First", InclusionRules=[{"name": "drug", "expression": group(
        correlated({"DrugExposure": {"CodesetId": DRUG["id"], "First": True}}, window(None, 0), at_least=1))}]),
        name="first twice")
    compiled = compile_cohort(world, d.expression)
    windows_before = sum(1 for _, body in compiled.ctes for _ in body.find_all(exp.RowNumber))
    rewritten = sum(rewrite_first_rows(body) for _, body in compiled.ctes)
    windows_after = sum(1 for _, body in compiled.ctes for _ in body.find_all(exp.RowNumber))
    # the two criteria with First; the primary events' numbering and the limits keep their windows
    assert rewritten == 2 and windows_after == windows_before - 2 and windows_after > 0
    sql = [body.sql(dialect="duckdb") for _, body in compiled.ctes]
    assert sum(s.count("ARG_MIN(de.rowid") for s in sql) == 2


def test_other_engines_keep_the_window(world: Cdm) -> None:
    pg = plan_cohort(compile_cohort(world, first_drug_cohort().expression), engine_class("postgres"), world.table("cohort"))
    assert not any("ARG_MIN" in s.create.sql.upper() for s in pg.steps)
    duck = plan_cohort(compile_cohort(world, first_drug_cohort().expression), engine_class("duckdb"), world.table("cohort"))
    assert any("ARG_MIN" in s.create.sql.upper() for s in duck.steps)


# (person, date as a day number or NULL, id or NULL): NULLs and ties in both columns are common
keyed_rows = st.lists(st.tuples(st.integers(1, 4), st.none() | st.integers(-3, 3), st.none() | st.integers(-3, 3)),
                      min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(rows=keyed_rows)
def test_sort_key_of_the_aggregate_orders_as_the_window(rows: list[tuple[int, int | None, int | None]]) -> None:
    # The rewrite's ARG_MIN key, on the window's ORDER BY of two nullable columns, picks a row whose
    # (date, id) is that of the window's row number 1 (rows equal in both are interchangeable).
    window = exp.Window(this=exp.RowNumber(), partition_by=[exp.column("person_id", "t")], order=exp.Order(
        expressions=[exp.Ordered(this=exp.column(c, "t"), nulls_first=True) for c in ("d", "i")]))
    key = _sort_key(window).sql(dialect="duckdb")
    con = duckdb.connect()  # the SQL alone: a plain table with a rowid, as a CDM table has
    try:
        con.execute("CREATE TABLE t (person_id INTEGER, d INTEGER, i INTEGER)")
        con.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
        by_aggregate = con.execute(
            f"SELECT t.person_id, t.d, t.i FROM t WHERE t.rowid IN (SELECT ARG_MIN(t.rowid, {key}) FROM t "
            "GROUP BY t.person_id) ORDER BY 1").fetchall()
        by_window = con.execute(
            f"SELECT person_id, d, i FROM (SELECT t.*, {window.sql(dialect='duckdb')} AS n FROM t) "
            "WHERE n = 1 ORDER BY 1").fetchall()
    finally:
        con.close()
    assert [tuple(r) for r in by_aggregate] == [tuple(r) for r in by_window]
