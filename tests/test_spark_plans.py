"""Every analysis on Spark joins persons by hash, never by nested loop: each statement run on Spark by every
case of the analysis spec suite (characterization, incidence, prevalence, KM, Cox, features, the cohort
method's steps, prediction's population, feasibility) and by the whole demo study on a small synthetic
site (cohort entries and the comparison of cohorts too) is planned by Spark, and no
BroadcastNestedLoopJoin or CartesianProduct of its physical plan compares person ids (or the concept ids
of records: the features' excluded concepts were a NOT IN too).

Why: a `person_id NOT IN (subquery)` is planned by Spark as a null-aware nested-loop join of every outer
row against every row of the subquery, a cost that grows with the product of the two; at 1,000,000
persons the demo study's population incidence took 786 s on Spark for that reason (bench/RESULTS.md).
The plans are taken as a large site's tables would be planned: with broadcast joins off
(spark.sql.autoBroadcastJoinThreshold -1) and without the null-aware broadcast hash join Spark uses for
a NOT IN whose subquery is small enough to broadcast (spark.sql.optimizeNullAwareAntiJoin false): on
the test's small tables a NOT IN is that hash join, at scale it is the nested loop. The joins of a VALUES list (age bands, calendar years) by range
may stay nested loops: they have a few rows and compare dates, not person ids.

Marker spark (MERCIA_TEST_SPARK=1). One Spark session (the session fixture); databases of their own."""

from __future__ import annotations

import contextlib
import io
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from mercia.cdm import Cdm
from spec import all_cases
from spec.tables import load_tables

pytestmark = pytest.mark.spark

# A physical plan's node, as df.explain("formatted") lists them: "(n) Name" and its lines up to a blank one.
_NODE = re.compile(r"^\((\d+)\) ([A-Za-z]+)[^\n]*\n(.*?)(?=\n\n|\Z)", re.M | re.S)
_LOOPS = ("BroadcastNestedLoopJoin", "CartesianProduct")
# Columns whose tables are large: person ids (person_id, a cohort's subject_id) and concept ids of records.
_IDS = re.compile(r"\b(person_id|subject_id|\w*concept_id)#")
_AT_SCALE = {"spark.sql.autoBroadcastJoinThreshold": "-1", "spark.sql.optimizeNullAwareAntiJoin": "false"}


def _query_of(sql: str) -> str | None:
    """The query a statement runs (a SELECT, or the SELECT of a CREATE ... AS / INSERT), None if none."""
    try:
        tree = sqlglot.parse_one(sql, read="spark")
    except sqlglot.errors.ParseError:
        return None
    if isinstance(tree, exp.Create | exp.Insert):
        ctes = tree.args.get("with_")  # WITH ... INSERT INTO t SELECT ...: the SELECT reads the CTEs
        tree = tree.expression
        if ctes is not None and isinstance(tree, exp.Query):
            tree = tree.copy()
            tree.set("with_", ctes.copy())
    if isinstance(tree, exp.Query):
        return tree.sql(dialect="spark")
    return None


def nested_loops_on_persons(spark: Any, sql: str, params: Any, sql_fn: Any = None) -> list[str]:
    """The nested-loop or cartesian joins comparing person or concept ids in the physical plan of `sql`."""
    out = io.StringIO()
    run = sql_fn or spark.sql
    conf = spark.conf
    before = {k: conf.get(k) for k in _AT_SCALE}
    for k, v in _AT_SCALE.items():
        conf.set(k, v)
    try:
        with contextlib.redirect_stdout(out):
            run(sql, args=params).explain("formatted")
    finally:
        for k, v in before.items():
            conf.set(k, v)
    return [f"({n}) {name}: {body}" for n, name, body in _NODE.findall(out.getvalue())
            if name in _LOOPS and _IDS.search(body)]


@contextlib.contextmanager
def planned(spark: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, list[str]]]]:
    """Every query run through the session's `sql` while inside, each with its nested loops on persons
    (planned before it runs, when the tables it reads exist)."""
    seen: list[tuple[str, list[str]]] = []
    real = spark.sql

    def spy(sql: str, args: Any = None, **kw: Any) -> Any:
        query = _query_of(sql)
        if query is not None:
            seen.append((sql, nested_loops_on_persons(spark, query, args, real)))
        return real(sql, args=args, **kw)

    monkeypatch.setattr(spark, "sql", spy)
    try:
        yield seen
    finally:
        monkeypatch.undo()


def _offending(seen: list[tuple[str, list[str]]]) -> list[str]:
    return [f"{sql}\n  -> {loops}" for sql, loops in seen if loops]


def test_the_check_finds_a_person_id_not_in(spark: Any) -> None:
    """The check can fail: a NOT IN over person ids is a nested loop; the NOT EXISTS of it is not."""
    # Nullable ids, as a table's are (Spark turns a NOT IN over non-null columns into a hash anti join).
    for name, n in (("plan_a", 10), ("plan_b", 5)):
        spark.range(n).selectExpr("IF(id >= 0, id, NULL) AS person_id").createOrReplaceTempView(name)
    assert nested_loops_on_persons(
        spark, "SELECT person_id FROM plan_a WHERE person_id NOT IN (SELECT person_id FROM plan_b)", None)
    assert nested_loops_on_persons(
        spark, "SELECT person_id FROM plan_a a WHERE NOT EXISTS "
               "(SELECT 1 FROM plan_b b WHERE b.person_id = a.person_id)", None) == []


@pytest.mark.parametrize("case", [pytest.param(c, id=cid) for cid, c in all_cases()])
def test_spec_case_joins_persons_by_hash_on_spark(spark: Any, case: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    schema = "plans_" + secrets.token_hex(5)
    cdm = Cdm.from_spark(spark, cdm_schema=schema, results_schema=schema)
    try:
        load_tables(cdm, case.input_tables())
        with planned(spark, monkeypatch) as seen:
            case.run(cdm)
        assert seen, "no query was run on Spark"
        bad = _offending(seen)
        assert not bad, "\n\n".join(bad)
    finally:
        cdm.execute(f"DROP DATABASE IF EXISTS {schema} CASCADE")


# As tests/test_study_engines.py (which compares the numbers): the smallest site on which every analysis
# of the demo study runs (at 2,000 persons one does not).
PERSONS = 6000


def test_demo_study_joins_persons_by_hash_on_spark(spark: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from mercia.cdm.export import export_parquet
    from mercia.study import example_package, run_study
    from mercia.synth import DEFAULT_SITES, generate_site

    with Cdm.open(tmp_path / "site.duckdb") as duck:
        generate_site(duck, persons=PERSONS, seed=2026, profile=DEFAULT_SITES[0])
        export_parquet(duck, tmp_path / "parquet")
    folder = tmp_path / "cdm"
    shutil.copytree(tmp_path / "parquet", folder)
    for name in ("cdm", "results"):
        spark.sql(f"DROP DATABASE IF EXISTS {name} CASCADE")
    with Cdm.open(f"spark:{folder}") as cdm, planned(spark, monkeypatch) as seen:
        run = run_study(example_package(), cdm, tmp_path / "out", site_policy="sacro", site="site")
    bad = _offending(seen)
    assert not bad, f"{len(bad)} of {len(seen)} queries:\n\n" + "\n\n".join(bad)
    statuses = {a["name"]: a["status"] for a in run.manifest["analyses"]}
    assert set(statuses.values()) == {"done"}, statuses  # every analysis ran: its statements were planned
