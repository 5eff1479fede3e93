"""Generative tests: random definitions over the hand-made CDM. The single-query form and the
temporary-table steps must agree, and PostgreSQL must agree with DuckDB (when a server is set)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercia.cdm import Cdm
from mercia.cohorts.circe import from_circe_json
from mercia.cohorts.compiler import compile_cohort
from mercia.cohorts.generate import cohort_rows, generate_cohorts
from test_cohort_world import (
    COND,
    COND_FAMILY,
    DRUG,
    INPATIENT,
    LAB,
    cohort,
    correlated,
    group,
    load_world,
    window,
)

CRITERIA = [
    {"ConditionOccurrence": {"CodesetId": COND["id"]}},
    {"ConditionOccurrence": {"CodesetId": COND_FAMILY["id"]}},
    {"ConditionOccurrence": {"CodesetId": COND["id"], "First": True}},
    {"DrugExposure": {"CodesetId": DRUG["id"]}},
    {"VisitOccurrence": {"CodesetId": INPATIENT["id"]}},
    {"Measurement": {"CodesetId": LAB["id"]}},
    {"ObservationPeriod": {}},
    {"ProcedureOccurrence": {"CodesetId": 5}},
    {"Death": {}},
]
DAYS = st.sampled_from([None, 0, 1, 7, 30, 365, 1000])


@st.composite
def windows(draw: st.DrawFn, **flags: bool) -> dict:
    a, b = draw(DAYS), draw(DAYS)
    sa, sb = draw(st.sampled_from([-1, 1])), draw(st.sampled_from([-1, 1]))
    lo = None if a is None else sa * a
    hi = None if b is None else sb * b
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    extra = {k: draw(st.booleans()) for k in flags}
    return window(lo, hi, **extra)


@st.composite
def correlateds(draw: st.DrawFn) -> dict:
    kind = draw(st.sampled_from(["at_least", "exactly", "at_most"]))
    extra = {"RestrictVisit": draw(st.booleans()), "IgnoreObservationPeriod": draw(st.booleans())}
    if draw(st.booleans()):
        extra["EndWindow"] = draw(windows(UseEventEnd=True, UseIndexEnd=True))
    return correlated(draw(st.sampled_from(CRITERIA)), draw(windows(UseEventEnd=True, UseIndexEnd=True)),
                      **{kind: draw(st.integers(0, 2))}, distinct=draw(st.booleans()), **extra)


@st.composite
def groups(draw: st.DrawFn, depth: int = 0) -> dict:
    demographics = draw(st.lists(st.sampled_from([
        {"Age": {"Value": 50, "Op": "gte"}}, {"Gender": [{"CONCEPT_ID": 8507}]},
        {"OccurrenceStartDate": {"Value": "2002-01-01", "Op": "lt"}}]), max_size=1))
    subgroups = [draw(groups(depth + 1))] if depth == 0 and draw(st.booleans()) else []
    criteria = draw(st.lists(correlateds(), min_size=0 if (demographics or subgroups) else 1, max_size=2))
    type_ = draw(st.sampled_from(["ALL", "ANY", "AT_LEAST", "AT_MOST"]))
    count = draw(st.integers(0, 2)) if type_.startswith("AT_") else None
    return group(*criteria, type_=type_, count=count, demographics=demographics, groups=subgroups)


@st.composite
def definitions(draw: st.DrawFn) -> dict:
    parts: dict = {}
    end = draw(st.sampled_from(["none", "offset", "era"]))
    if end == "offset":
        parts["EndStrategy"] = {"DateOffset": {"DateField": draw(st.sampled_from(["StartDate", "EndDate"])),
                                               "Offset": draw(st.sampled_from([-3, 0, 30, 400]))}}
    elif end == "era":
        parts["EndStrategy"] = {"CustomEra": {"DrugCodesetId": DRUG["id"], "GapDays": draw(st.sampled_from([0, 30])),
                                              "Offset": draw(st.sampled_from([0, 7]))}}
    if draw(st.booleans()):
        parts["AdditionalCriteria"] = draw(groups())
    parts["InclusionRules"] = [{"name": f"rule {i}", "expression": draw(groups())}
                               for i in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        parts["CensoringCriteria"] = [draw(st.sampled_from(CRITERIA))]
    if draw(st.booleans()):
        parts["CensorWindow"] = {"StartDate": "2001-01-01", "EndDate": "2005-12-31"}
    limits = st.sampled_from(["First", "All", "Last"])
    return cohort(*draw(st.lists(st.sampled_from(CRITERIA), min_size=1, max_size=2)),
                  limit=draw(limits), qualified=draw(limits), expression=draw(limits),
                  prior=draw(st.sampled_from([0, 30, 365])), post=draw(st.sampled_from([0, 30])),
                  era_pad=draw(st.sampled_from([0, 30, 400])), **parts)


@pytest.fixture(scope="module")
def worlds() -> Iterator[list[Cdm]]:
    cdms = [load_world(Cdm.open())]
    url = os.environ.get("MERCIA_TEST_PG_URL")
    schema = None
    if url:
        import secrets

        schema = "mercia_test_gen_" + secrets.token_hex(4)
        cdms.append(load_world(Cdm.open(url, cdm_schema=schema, vocab_schema=schema, results_schema=schema)))
    yield cdms
    for cdm in cdms[1:]:
        cdm.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    for cdm in cdms:
        cdm.close()


def run_both_ways(cdm: Cdm, definition: dict) -> list[tuple]:
    d = from_circe_json(definition, name="generated")
    c = compile_cohort(cdm, d.expression)
    single = sorted((int(p), s, e) for p, s, e in cdm.fetch_all(c.rows_query(), c.params))
    (res,) = generate_cohorts(cdm, [(1, d)])
    stepped = [(int(p), s, e) for p, s, e in cohort_rows(cdm, 1)]
    assert single == stepped
    cdm.execute("DELETE FROM " + cdm.qualified("cohort_definition"))  # each example is a new definition
    return [*stepped, ("masks", sorted(res.mask_counts.items()))]


@settings(max_examples=int(os.environ.get("MERCIA_COHORT_EXAMPLES", "15")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(definition=definitions())
def test_engines_and_forms_agree(worlds: list[Cdm], definition: dict) -> None:
    results = [run_both_ways(cdm, definition) for cdm in worlds]
    for other in results[1:]:
        assert other == results[0]
