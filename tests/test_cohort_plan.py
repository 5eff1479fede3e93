"""generate_cohorts' plans: rendered once per definition, steps shared across a run, same rows as alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mercia.cdm import Cdm
from mercia.cdm.engines import engine_class
from mercia.cohorts import generate as generate_module
from mercia.cohorts.circe import from_circe_json
from mercia.cohorts.compiler import compile_cohort
from mercia.cohorts.generate import cohort_rows, generate_cohorts
from mercia.cohorts.plan import PLANS, PlanCache, plan_cohort
from mercia.errors import CohortDefinitionError
from test_cohort_world import COND, DRUG, cohort, correlated, ends_at, group, load_world, window

A = {"ConditionOccurrence": {"CodesetId": COND["id"]}}
DRUG_BEFORE = correlated({"DrugExposure": {"CodesetId": DRUG["id"]}}, window(None, 0), at_least=1)


@pytest.fixture
def world(any_cdm: Cdm) -> Iterator[Cdm]:
    PLANS.clear()  # each test sees a first run
    yield load_world(any_cdm)
    PLANS.clear()


def definition(name: str, rules: list[dict[str, Any]] | None = None, **primary: Any) -> Any:
    criterion = {"ConditionOccurrence": {"CodesetId": COND["id"], **primary}}
    return from_circe_json(cohort(criterion, EndStrategy=ends_at(offset=30), InclusionRules=rules or []), name=name)


def rule(name: str, *criteria: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"name": name, "expression": group(*criteria, **kw)}


def statements(cdm: Cdm, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the SQL text of every statement run from now on, on this CDM's connection and on the other
    connections generate_cohorts opens to the same database (DuckDB)."""
    seen: list[str] = []
    engine_type = type(cdm.engine)
    real = engine_type.execute

    def execute(self: Any, sql: str, params: dict[str, Any] | None = None) -> None:
        seen.append(sql)
        real(self, sql, params)

    monkeypatch.setattr(engine_type, "execute", execute)
    return seen


def creates(sql: list[str], step: str) -> int:
    """How many statements created the temporary table of this step."""
    return sum(1 for s in sql if s.startswith("CREATE") and s.split(" AS ", 1)[0].endswith(f"_{step}"))


def test_a_set_gives_the_rows_each_definition_gives_alone(world: Cdm) -> None:
    defs = [
        (1, definition("all events")),
        (2, definition("drug before", [rule("drug", DRUG_BEFORE)])),
        (3, definition("adult, drug before", [rule("adult", demographics=[{"Age": {"Value": 18, "Op": "gte"}}]),
                                              rule("drug", DRUG_BEFORE)])),
        (4, definition("first only", First=True)),
        (5, definition("after 2002", OccurrenceStartDate={"Value": "2002-01-01", "Op": "gt"})),
    ]
    together = generate_cohorts(world, defs)
    rows_together = {cid: cohort_rows(world, cid) for cid, _ in defs}
    for (cid, d), res in zip(defs, together, strict=True):
        PLANS.clear()
        (alone,) = generate_cohorts(world, [(cid, d)])
        assert cohort_rows(world, cid) == rows_together[cid]
        assert (alone.persons, alone.entries, alone.mask_counts) == (res.persons, res.entries, res.mask_counts)
    assert [r.cohort_id for r in together] == [1, 2, 3, 4, 5]  # results in the order given
    assert rows_together[1] and rows_together[5] and rows_together[1] != rows_together[5]


def test_shared_steps_run_once(world: Cdm, monkeypatch: pytest.MonkeyPatch) -> None:
    sql = statements(world, monkeypatch)
    generate_cohorts(world, [(1, definition("plain")), (2, definition("drug before", [rule("drug", DRUG_BEFORE)])),
                             (3, definition("after 2002", OccurrenceStartDate={"Value": "2002-01-01", "Op": "gt"})),
                             (4, definition("plain, again"))])
    # cohorts 1, 2 and 4 share concept sets and primary events; 3's date (a bound value) makes its own
    assert creates(sql, "cohort_primary_events") == 2
    # DuckDB runs 1, 2, 4 on one connection and 3 on either: the concept sets once per connection
    assert creates(sql, "codesets") == 1 if world.dialect == "postgres" else creates(sql, "codesets") in (1, 2)
    assert sum(1 for s in sql if s.startswith("INSERT INTO") and "cohort_definition_id, subject_id" in s) == 4
    # and every temporary table is gone afterwards
    left = world.fetch_all("SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'mercia_tmp_%'")
    assert left == []


def test_a_definition_is_compiled_once_per_process(world: Cdm, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = generate_module.compile_cohort

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_module, "compile_cohort", counting)
    d = definition("plain", [rule("drug", DRUG_BEFORE)])
    (first,) = generate_cohorts(world, [(1, d)])
    (again,) = generate_cohorts(world, [(1, d)])
    (other_id,) = generate_cohorts(world, [(7, definition("plain, another name", [rule("drug", DRUG_BEFORE)]))])
    assert len(calls) == 1  # the same expression (name aside) under any id: one compilation
    assert first.mask_counts == again.mask_counts == other_id.mask_counts
    assert cohort_rows(world, 1) == cohort_rows(world, 7)
    generate_cohorts(world, [(8, definition("first", First=True))])
    assert len(calls) == 2


def test_a_failing_step_leaves_no_temporary_tables_and_no_rows(world: Cdm) -> None:
    broken = from_circe_json(cohort({"Specimen": {}}), name="needs specimen")  # the world has no specimen table
    with pytest.raises(Exception):  # noqa: B017 - the engine's own error type
        generate_cohorts(world, [(1, definition("plain")), (2, broken)])
    assert cohort_rows(world, 1) == []
    if world.dialect == "duckdb":
        left = world.fetch_all("SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'mercia_tmp_%'")
        assert left == []
    generate_cohorts(world, [(1, definition("plain"))])  # and the next run is unaffected
    assert cohort_rows(world, 1)


def test_plans_bind_the_cohort_id_and_dates_never_write_them() -> None:
    cdm = Cdm.open()
    try:
        d = definition("dated", OccurrenceStartDate={"Value": "2002-01-01", "Op": "gt"})
        plan = plan_cohort(compile_cohort(cdm, d.expression), cdm.engine, cdm.table("cohort"))
        texts = [s.create.sql for s in plan.steps] + [plan.insert.sql]
        assert not any("2002" in t for t in texts)
        assert "cohort_id" in plan.insert.param_names
        assert plan.values(42)["cohort_id"] == 42
        assert {n for s in plan.steps for n in s.create.param_names} == set(plan.params)
    finally:
        cdm.close()


def test_no_plan_for_engines_without_temporary_tables() -> None:
    cdm = Cdm.open()
    try:
        compiled = compile_cohort(cdm, definition("plain").expression)
        with pytest.raises(ValueError, match="no temporary-table plan for engine 'spark'"):
            plan_cohort(compiled, engine_class("spark"), cdm.table("cohort"))
    finally:
        cdm.close()


def test_the_plan_cache_is_bounded_and_least_recently_used_goes_first() -> None:
    cache = PlanCache(size=2)
    cdm = Cdm.open()
    try:
        plans = [plan_cohort(compile_cohort(cdm, definition(f"d{i}").expression), cdm.engine, cdm.table("cohort"))
                 for i in range(3)]
    finally:
        cdm.close()
    cache.put(("a",), plans[0])
    cache.put(("b",), plans[1])
    assert cache.get(("a",)) is plans[0]  # a is now the most recently used
    cache.put(("c",), plans[2])
    assert cache.get(("b",)) is None and cache.get(("a",)) is plans[0] and cache.get(("c",)) is plans[2]


def test_hostile_names_stay_data_in_a_set(world: Cdm) -> None:
    hostile = "x'); DROP TABLE person; --"
    results = generate_cohorts(world, [(1, definition(hostile, [rule(hostile, DRUG_BEFORE)])),
                                       (2, definition("plain"))])
    assert results[0].name == hostile and results[0].attrition[0].name == hostile
    assert world.row_count("person") == 3
    names = sorted(r[0] for r in world.fetch_all("SELECT cohort_definition_name FROM "
                                                 + world.qualified("cohort_definition")))
    assert names == sorted([hostile, "plain"])


def test_duckdb_runs_cohorts_on_other_connections_with_the_rows_of_one(
        world: Cdm, monkeypatch: pytest.MonkeyPatch) -> None:
    if world.dialect != "duckdb":
        pytest.skip("parallel connections are DuckDB's")
    from mercia.cdm.engines.duckdb import DuckDBEngine

    opened: list[int] = []
    threads_seen: list[int] = []
    real = DuckDBEngine.another_connection

    def counting(self: DuckDBEngine) -> DuckDBEngine:
        opened.append(1)
        other = real(self)
        real_execute = other.execute

        def execute(sql: str, params: dict | None = None) -> None:
            threads_seen.append(other.threads)
            real_execute(sql, params)

        other.execute = execute  # type: ignore[method-assign]
        return other

    monkeypatch.setattr(DuckDBEngine, "another_connection", counting)
    defs = [(1, definition("plain")), (2, definition("drug before", [rule("drug", DRUG_BEFORE)])),
            (3, definition("first only", First=True)),
            (4, definition("after 2002", OccurrenceStartDate={"Value": "2002-01-01", "Op": "gt"}))]
    assert isinstance(world.engine, DuckDBEngine)
    world.engine.threads = 4
    parallel = generate_cohorts(world, defs)
    assert len(opened) == DuckDBEngine.parallel_connections
    # DuckDB's threads shared out among the connections while they ran (a connection done leaves its
    # share to those still computing), and given back after
    share = 4 // DuckDBEngine.parallel_connections
    assert threads_seen[0] == share and set(threads_seen) <= {share, 4}
    assert world.engine.threads == 4
    rows = {cid: cohort_rows(world, cid) for cid, _ in defs}
    with world.transaction():  # a caller's open transaction: other connections could not see its work
        in_one = generate_cohorts(world, defs)
    assert len(opened) == DuckDBEngine.parallel_connections  # so this run stayed on the caller's connection
    assert {cid: cohort_rows(world, cid) for cid, _ in defs} == rows
    assert [(r.persons, r.entries, r.mask_counts) for r in parallel] == [
        (r.persons, r.entries, r.mask_counts) for r in in_one]
    assert rows[1] and rows[4] and rows[1] != rows[4]


def test_a_definition_that_does_not_compile_stops_the_run_and_writes_nothing(world: Cdm) -> None:
    generate_cohorts(world, [(1, definition("plain"))])
    before = cohort_rows(world, 1)
    threads = getattr(world.engine, "threads", None)
    undefined = from_circe_json(cohort({"DrugExposure": {"CodesetId": 99}}), name="undefined concept set")
    with pytest.raises(CohortDefinitionError, match=r"cohort 9 \('undefined concept set'\).*concept set 99"):
        generate_cohorts(world, [(1, definition("plain")), (2, definition("first only", First=True)),
                                 (9, undefined)])
    assert cohort_rows(world, 1) == before and cohort_rows(world, 2) == []
    assert getattr(world.engine, "threads", None) == threads  # DuckDB's setting given back after a failure


def test_a_connection_failing_after_the_writes_began_leaves_every_table_as_it_was(
        world: Cdm, monkeypatch: pytest.MonkeyPatch) -> None:
    if world.dialect != "duckdb":
        pytest.skip("parallel connections are DuckDB's")
    import threading

    from mercia.cohorts.stats import read_stats

    with_rule = definition("drug before", [rule("drug", DRUG_BEFORE)])
    generate_cohorts(world, [(1, definition("plain")), (2, with_rule)])
    before = ({cid: cohort_rows(world, cid) for cid in (1, 2)}, {cid: read_stats(world, cid) for cid in (1, 2)},
              world.fetch_all("SELECT * FROM " + world.qualified("cohort_definition") + " ORDER BY 1"))
    writes_began = threading.Event()
    real_insert, real_run = generate_module._insert_definition_rows, generate_module._run_plan

    def insert_definition_rows(*args: Any) -> None:
        real_insert(*args)
        writes_began.set()

    def run_plan(db: Any, temp: Any, cohort_id: int, plan: Any) -> Any:
        if cohort_id == 2:  # fails once this run's old rows are deleted and its definitions written
            assert writes_began.wait(30)
            raise RuntimeError("connection lost")
        return real_run(db, temp, cohort_id, plan)

    monkeypatch.setattr(generate_module, "_insert_definition_rows", insert_definition_rows)
    monkeypatch.setattr(generate_module, "_run_plan", run_plan)
    with pytest.raises(RuntimeError, match="connection lost"):
        generate_cohorts(world, [(1, definition("plain")), (2, with_rule)])
    assert writes_began.is_set()
    after = ({cid: cohort_rows(world, cid) for cid in (1, 2)}, {cid: read_stats(world, cid) for cid in (1, 2)},
             world.fetch_all("SELECT * FROM " + world.qualified("cohort_definition") + " ORDER BY 1"))
    assert after == before and before[0][1] and before[1][2]["cohort_inclusion_stats"]


def test_a_read_only_duckdb_cdm_gets_its_own_error_and_keeps_its_threads(tmp_path: Any) -> None:
    path = tmp_path / "site.duckdb"
    with Cdm.open(path) as cdm:
        load_world(cdm)
    with Cdm.open(path, create=False, read_only=True) as cdm:
        threads = cdm.engine.threads  # type: ignore[attr-defined]
        # the first write, made while the other connections compute, fails; that error is the one raised
        with pytest.raises(Exception, match="read-only"):
            generate_cohorts(cdm, [(1, definition("plain")), (2, definition("first only", First=True))])
        assert cdm.engine.threads == threads  # type: ignore[attr-defined]
        assert cohort_rows(cdm, 1) == []


def test_a_one_criterion_rule_reads_its_events_directly_with_the_same_counts(world: Cdm) -> None:
    """A rule of one criterion (ALL or ANY) over the qualified events is that criterion's events: no join
    back to the events and regroup per rule. The same rules as "at least 1 of 1" keep the regrouping form
    (Circe's), and must give the same rows and masks, with a person-level demographic and a nested
    correlated criterion (whose events may repeat) beside them."""
    adult = {"Age": {"Value": 18, "Op": "gte"}}
    nested = correlated({"DrugExposure": {"CodesetId": DRUG["id"], "CorrelatedCriteria": group(DRUG_BEFORE)}},
                        window(None, 0), at_least=1)
    rules = [("drug", [DRUG_BEFORE], {}), ("adult", [], {"demographics": [adult]}), ("nested", [nested], {})]
    direct = definition("direct", [rule(n, *c, type_=t, **kw) for (n, c, kw), t in zip(rules, ("ALL", "ANY", "ALL"),
                                                                                          strict=True)])
    regroup = definition("regroup", [rule(n, *c, type_="AT_LEAST", count=1, **kw) for n, c, kw in rules])
    sql = {name: dict(compile_cohort(world, d.expression).ctes)["cohort_inclusion_events"].sql()
           for name, d in (("direct", direct), ("regroup", regroup))}
    assert sql["direct"].count("COUNT(CQ.index_id)") == 1  # only the nested group over repeatable events
    assert sql["regroup"].count("COUNT(CQ.index_id)") == 4
    a, b = generate_cohorts(world, [(1, direct), (2, regroup)])
    assert cohort_rows(world, 1) == cohort_rows(world, 2) != []
    assert a.mask_counts == b.mask_counts and len({m for (_, m) in a.mask_counts}) > 2
