"""Incidence on Spark joins persons by hash, never by nested loop: every statement `incidence` runs is
planned by Spark and no BroadcastNestedLoopJoin or CartesianProduct of its physical plan compares person
ids. A person-id NOT IN (subquery) is planned by Spark as a null-aware nested-loop join of every
denominator row against every outcome person, so its cost grows with the product of the two: at
1,000,000 persons the demo study's population incidence took 786 s on Spark (bench/RESULTS.md).
The joins of a VALUES list (age bands, calendar years) by range may stay nested loops: they have a few
rows and compare dates.

Marker spark (MERCIA_TEST_SPARK=1). One Spark session (the session fixture), a database of its own."""

from __future__ import annotations

import contextlib
import io
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from mercia.analyses import IncidenceSettings, TimeAtRisk, incidence
from mercia.cdm import Cdm
from spec import incidence as spec_incidence
from spec.tables import load_tables, table

pytestmark = pytest.mark.spark

SETTINGS = {
    "first events": IncidenceSettings(denominator_cohort_id=1, outcome_cohort_id=2, by=["age_group", "sex"]),
    "observed population": IncidenceSettings(outcome_cohort_id=2, washout_days=365,
                                             by=["age_group", "calendar_year"]),
    "time at risk": IncidenceSettings(
        denominator_cohort_id=1, outcome_cohort_id=2, by=["age_group"], repeated_events=True, clean_window_days=10,
        time_at_risk=[TimeAtRisk(start_with="start", start_offset=0, end_with="start", end_offset=199)]),
}
# A physical plan's node, as df.explain("formatted") lists them: "(n) Name" and its lines up to a blank one.
_NODE = re.compile(r"^\((\d+)\) ([A-Za-z]+)[^\n]*\n(.*?)(?=\n\n|\Z)", re.M | re.S)


@pytest.fixture(scope="module")
def cdm(spark: Any) -> Iterator[Cdm]:
    schema = "incplan_" + secrets.token_hex(4)
    handle = Cdm.from_spark(spark, cdm_schema=schema, results_schema=schema)
    load_tables(handle, {k: table(v) for k, v in spec_incidence.TABLES.items()})
    yield handle
    handle.execute(f"DROP DATABASE IF EXISTS {schema} CASCADE")


def _statements(cdm: Cdm, settings: IncidenceSettings, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """The SQL text and parameters of every query `incidence` runs."""
    seen: list[tuple[str, Any]] = []
    engine = cdm.engine
    for name in ("_fetch_all", "_fetch_arrow"):
        real = getattr(engine, name)

        def spy(sql: str, params: Any, real: Any = real) -> Any:
            seen.append((sql, params))
            return real(sql, params)
        monkeypatch.setattr(engine, name, spy)
    incidence(cdm, settings)
    monkeypatch.undo()
    return seen


def _nested_loops_on_persons(spark: Any, sql: str, params: Any) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        spark.sql(sql, args=params).explain("formatted")
    return [f"({n}) {name}: {body}" for n, name, body in _NODE.findall(out.getvalue())
            if name in ("BroadcastNestedLoopJoin", "CartesianProduct") and "person_id" in body]


@pytest.mark.parametrize("what", list(SETTINGS))
def test_incidence_joins_persons_by_hash_on_spark(spark: Any, cdm: Cdm, what: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    statements = _statements(cdm, SETTINGS[what], monkeypatch)
    assert len(statements) >= 3  # the span, the person-time and the attrition queries at least
    for sql, params in statements:
        assert _nested_loops_on_persons(spark, sql, params) == [], sql
