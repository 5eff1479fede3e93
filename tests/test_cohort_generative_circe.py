"""Generative cohort tests against OHDSI's Circe SQL: random valid definitions on a dense random CDM.

* ``test_random_definitions_match_circe`` (marked ``oracle``): for each random definition, Mercia's rows
  (subject_id, start, end), counts, inclusion statistics and mask counts equal those of OHDSI's Circe SQL
  (ohdsi-circepy) run on the same data. Where the oracle disagrees with ITSELF on rows (Circe picks
  among tied events in no fixed order; see /work/shared/data/README.md), only counts and inclusion
  statistics are compared, and the example is reported as a tie case.
* ``test_random_definitions_same_on_postgres`` (marked ``postgres``): identical rows and masks on
  DuckDB and PostgreSQL for the same random definitions.
* ``test_known_compiler_bugs``: minimal definitions (shrunk by hypothesis) where Mercia and Circe
  disagree and Circe-BE's SQL says Circe is right; ``xfail(strict=True)`` so a fix shows up.

MERCIA_GENERATIVE_EXAMPLES sets the number of random definitions (default 15 against the oracle, 60 on
PostgreSQL); MERCIA_GENERATIVE_SKIP=Abnormal,... leaves elements out of the draws (to look past a known
bug). The definitions and the data come from tests/cohort_strategies.py. (The compiler's own generative
test, single query vs temporary tables, is tests/test_cohort_generative.py.)

The oracle is ohdsi-circepy 0.3.0, a port of Circe-BE; where the two differ Circe-BE decides. The
strategies steer clear of the port's known defects and of elements Circe-BE does not have; see
tests/cohort_strategies.py. The defects, each checked against Circe-BE's source (OHDSI/circe-be):

* IsExclusion dropped on most '...CS' filters (Circe-BE: BuilderUtils.getCodesetInExpression writes
  "not in"); invalid SQL for a distinct count nested in a criterion's correlated criteria.
* An empty CorrelatedCriteria group on a criterion: Circe-BE ignores it
  (CohortExpressionQueryBuilder.processCorrelatedCriteria: ``!CorrelatedCriteria.isEmpty()``), circepy
  wraps the criterion anyway (``if criteria.correlated_criteria:`` is true for any group), which drops
  the criterion's events outside an observation period. Found by the derandomised sweep (2026-11-26).
* An EndWindow without UseEventEnd: Circe-BE compares the event's END date
  (getWindowedCriteriaQuery: ``useEventEnd == null || useEventEnd``, "for backwards compatibility"),
  circepy's CriteriaGroup reader sets a missing UseEventEnd to false, so it compares the start date.
  Found by the derandomised sweep (2026-11-26).

* DateAdjustment on VisitOccurrence/DeviceExposure: circepy always adjusts from the END date (its
  builders compare StartWith with "START_DATE", its model holds "start_date"); the draws adjust other
  domains only; and circepy keeps adjusted events that end before they start, which Circe-BE drops
  (the draws never invert). Both found by the sweep once DateAdjustment was drawn; pinned in
  tests/test_cohort_circe_elements.py.

``test_known_circepy_defects`` pins each with a minimal definition (``xfail(strict=True)``: it passes,
and so fails, once circepy is fixed), and ``test_circepy_defects_read_as_circe_be`` checks Mercia's
reading against the oracle on the Circe-BE-equivalent definition.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, note, reject, settings

from cohort_strategies import CONCEPT_SETS, cohort_expressions, load_world
from mercia.cdm import Cdm
from mercia.cohorts.circe import parse_circe
from mercia.cohorts.compiler import compile_cohort
from mercia.cohorts.generate import inclusion_stats
from oracle_support import circe_available, server

EXAMPLES = int(os.environ.get("MERCIA_GENERATIVE_EXAMPLES", "0")) or None
SETTINGS: dict[str, Any] = {"deadline": None, "suppress_health_check": list(HealthCheck), "print_blob": True}

Row = tuple[int, dt.date, dt.date]


# ---- the two sides ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    rows: list[Row]
    persons: int
    entries: int
    stats: list[tuple[int, int, int, int, int]]  # (mode, rule, person_count, gain_count, person_total)
    masks: dict[tuple[int, int], int]  # (mode, mask) -> count


def mercia_outcome(cdm: Cdm, definition: dict[str, Any]) -> Outcome:
    """Mercia's answer without writing anything (the world is shared by every example)."""
    c = compile_cohort(cdm, parse_circe(definition))
    rows = sorted((int(s), a, b) for s, a, b in cdm.fetch_all(c.rows_query(), c.params))
    masks: dict[tuple[int, int], int] = {}
    stats: list[tuple[int, int, int, int, int]] = []
    if c.rule_count:
        masks = {(int(md), int(mk)): int(n) for md, mk, n in cdm.fetch_all(c.mask_counts_query(), c.params)}
        attrition, _ = inclusion_stats(masks, c.rule_names)
        stats = sorted((s.mode_id, s.rule_sequence, s.person_count, s.gain_count, s.person_total) for s in attrition)
    return Outcome(rows, len({r[0] for r in rows}), len(rows), stats, masks)


class OracleFailed(RuntimeError):
    """ohdsi-circepy could not build or run SQL for a definition (a limit of the port, not of Mercia)."""


class Oracle:
    """Circe's Outcome for one definition at a time, from the session's oracle process."""

    def __init__(self, db: Path, work: Path) -> None:
        self.db, self.work = db, work
        self.n = 0

    def _call(self, argv: list[str]) -> dict[str, Any]:
        return server().call(argv)

    def _write(self, definition: dict[str, Any]) -> Path:
        self.n += 1
        path = self.work / f"def_{self.n}.json"
        path.write_text(json.dumps(definition, indent=1), encoding="utf-8")
        return path

    def sql(self, definition: dict[str, Any]) -> str:
        """The translated DuckDB SQL (run_circe.py --sql-only)."""
        path = self._write(definition)
        reply = self._call(["--cdm", str(self.db), "--json", str(path), "--cohort-id", "1", "--sql-only"])
        assert reply["rc"] == 0, reply
        return reply["stdout"]

    def run(self, definition: dict[str, Any]) -> Outcome:
        path = self._write(definition)
        out = self.work / f"circe_{self.n}.parquet"  # its report goes to circe_N.json, beside def_N.json
        # A fresh cohort id per run: Circe leaves an id's old inclusion statistics in place when the new
        # definition has no inclusion rules, so reusing an id would mix two definitions' statistics.
        reply = self._call(["--cdm", str(self.db), "--results-schema", "circe", "--json", str(path),
                            "--cohort-id", str(self.n), "--out", str(out)])
        if reply["rc"] != 0:
            raise OracleFailed(f"Circe oracle failed on {path}:\n{reply.get('error', '')[-4000:]}")
        report = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
        rows = sorted((int(r["subject_id"]), r["cohort_start_date"], r["cohort_end_date"])
                      for r in pq.read_table(out).to_pylist())
        stats = sorted((s["mode_id"], s["rule_sequence"], s["person_count"], s["gain_count"], s["person_total"])
                       for s in report["inclusion_stats"])
        masks = {(int(r["mode_id"]), int(r["inclusion_rule_mask"])): int(r["person_count"])
                 for r in report["inclusion_result"]}
        return Outcome(rows, int(report["persons"]), int(report["entries"]), stats, masks)


@pytest.fixture(scope="module")
def duck_world() -> Iterator[Cdm]:
    """Mercia's copy of the dense world, in memory (the oracle writes to its own file)."""
    cdm = load_world(Cdm.open(None))
    yield cdm
    cdm.close()


TIE_CASES: list[str] = []
ORACLE_FAILURES: list[str] = []


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oracle]:
    if not circe_available():
        pytest.skip("Circe oracle venv not available (bash tools/circe_oracle/setup.sh)")
    work = tmp_path_factory.mktemp("generative_oracle")
    db = work / "world.duckdb"
    with Cdm.open(db) as cdm:
        load_world(cdm)
    o = Oracle(db, work)
    yield o
    # Visible with -s: how many examples hit ties or an oracle failure (neither fails the test).
    print(f"\ngenerative oracle: {o.n} oracle runs, {len(TIE_CASES)} tie case(s), "
          f"{len(ORACLE_FAILURES)} oracle failure(s): {sorted(set(ORACLE_FAILURES))}")


def compare_with_oracle(duck_world: Cdm, oracle: Oracle, definition: dict[str, Any], *, generated: bool = True) -> None:
    mine = mercia_outcome(duck_world, definition)
    try:
        theirs = oracle.run(definition)
    except OracleFailed as e:
        if not generated:
            raise
        # ohdsi-circepy 0.3.0 emits invalid SQL for a few valid definitions (e.g. a distinct count in a
        # criterion nested under another criterion's correlated criteria: "Referenced table A not
        # found"). There is no oracle answer to compare with, so the example is discarded and logged.
        ORACLE_FAILURES.append(next((ln for ln in str(e).splitlines() if "Error" in ln), str(e))[-200:])
        reject()
    if generated:
        note(f"Mercia {mine.persons} persons/{mine.entries} entries, Circe {theirs.persons}/{theirs.entries}")
    if mine.rows != theirs.rows:
        # Run the oracle again: if Circe's own rows change, the definition picks among tied events and
        # only counts and inclusion statistics are meaningful (README caution).
        again = [oracle.run(definition) for _ in range(2)]
        if any(a.rows != theirs.rows for a in again):
            TIE_CASES.append(json.dumps(definition))
            assert (mine.persons, mine.entries) == (theirs.persons, theirs.entries)
            if all(a.stats == theirs.stats for a in again):
                assert mine.stats == theirs.stats
            return
        only_mine = sorted(set(mine.rows) - set(theirs.rows))[:10]
        only_theirs = sorted(set(theirs.rows) - set(mine.rows))[:10]
        raise AssertionError(f"rows differ: only Mercia {only_mine}; only Circe {only_theirs}")
    assert (mine.persons, mine.entries) == (theirs.persons, theirs.entries)
    assert mine.stats == theirs.stats
    assert mine.masks == theirs.masks


@pytest.mark.oracle
@pytest.mark.slow
@settings(max_examples=EXAMPLES or 15, **SETTINGS)
@given(definition=cohort_expressions())
def test_random_definitions_match_circe(duck_world: Cdm, oracle: Oracle, definition: dict[str, Any]) -> None:
    compare_with_oracle(duck_world, oracle, definition)


# ---- DuckDB vs PostgreSQL ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_world(pg_url: str) -> Iterator[Cdm]:
    schema = "mercia_gen_" + secrets.token_hex(6)
    cdm = Cdm.open(pg_url, cdm_schema=schema, vocab_schema=schema, results_schema=schema)
    try:
        load_world(cdm)
        yield cdm
    finally:
        with contextlib.suppress(Exception):
            cdm.engine.rollback()
        cdm.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        cdm.close()


@pytest.mark.postgres
@settings(max_examples=EXAMPLES or 60, **SETTINGS)
@given(definition=cohort_expressions())
def test_random_definitions_same_on_postgres(duck_world: Cdm, pg_world: Cdm, definition: dict[str, Any]) -> None:
    duck = mercia_outcome(duck_world, definition)
    pg = mercia_outcome(pg_world, definition)
    assert pg.rows == duck.rows
    assert pg.masks == duck.masks


def test_strategies_build_valid_definitions() -> None:
    """Every draw is a valid Mercia definition (cheap; runs without the oracle)."""

    @settings(max_examples=50, **SETTINGS)
    @given(definition=cohort_expressions())
    def check(definition: dict[str, Any]) -> None:
        x = parse_circe(definition)
        assert len(x.concept_sets) == len(CONCEPT_SETS)

    check()


# ---- confirmed discrepancies, minimised ----------------------------------------------------------
def _definition(*primary: dict[str, Any], **extra: Any) -> dict[str, Any]:
    # circepy needs the ObservationWindow spelled out (ATLAS always writes it).
    return {"ConceptSets": CONCEPT_SETS, "PrimaryCriteria": {
        "CriteriaList": list(primary), "ObservationWindow": {"PriorDays": 0, "PostDays": 0},
        "PrimaryCriteriaLimit": {"Type": "All"}}, **extra}


KNOWN_BUGS = [
    pytest.param(
        _definition({"Measurement": {"Abnormal": True}}),
        marks=pytest.mark.skip(reason=(
            "fixed in the compiler (Abnormal is handled before target()); the oracle cannot check it: "
            "circepy's Abnormal SQL fails ('C' has no value_as_concept_id). Covered by "
            "tests/test_cohort_spec.py (abnormal cases)")),
        id="measurement-abnormal-true"),
    pytest.param(
        _definition({"Measurement": {"CodesetId": 6, "Abnormal": False}}),
        marks=pytest.mark.skip(reason=(
            "fixed in the compiler (Abnormal is handled before target()); the oracle cannot check it: "
            "circepy's Abnormal SQL fails ('C' has no value_as_concept_id). Covered by "
            "tests/test_cohort_spec.py (abnormal cases)")),
        id="measurement-abnormal-false"),
    pytest.param(
        _definition({"DrugEra": {"CodesetId": 5, "EraLength": {"Value": 100, "Op": "lt"},
                                 "GapDays": {"Value": 5, "Op": "!eq"}}}),
        id="drug-era-gap-days"),
]


@pytest.mark.oracle
@pytest.mark.parametrize("definition", KNOWN_BUGS)
def test_known_compiler_bugs(duck_world: Cdm, oracle: Oracle, definition: dict[str, Any]) -> None:
    compare_with_oracle(duck_world, oracle, definition, generated=False)


# Circe-BE parity: DrugExposureSqlBuilder applies OccurrenceEndDate to C.start_date
# (buildDateRangeClause("C.start_date", criteria.occurrenceEndDate)); ATLAS/WebAPI results follow it, and so
# does Mercia. circepy (the oracle) applies it to the end date, so this case is checked by hand, not by it.
def test_drug_exposure_occurrence_end_date_as_circe_be(duck_world: Cdm) -> None:
    day = "2005-09-26"  # person 6 has drug exposures starting that day in observation; none ends that day
    definition = _definition({"DrugExposure": {"OccurrenceEndDate": {"Value": day, "Op": "eq"}}})
    definition.update(QualifiedLimit={"Type": "All"}, ExpressionLimit={"Type": "All"},
                      EndStrategy={"DateOffset": {"DateField": "StartDate", "Offset": 0}})
    # Circe-BE: the exposures STARTING on that day (in an observation period), one day long.
    starts = duck_world.fetch_all(
        "SELECT de.person_id, de.drug_exposure_start_date FROM drug_exposure de JOIN observation_period op "
        "ON op.person_id = de.person_id AND de.drug_exposure_start_date BETWEEN op.observation_period_start_date "
        f"AND op.observation_period_end_date WHERE de.drug_exposure_start_date = DATE '{day}'")
    expected = sorted({(int(p), d, d) for p, d in starts})
    assert expected, "the world should have exposures starting that day"
    assert mercia_outcome(duck_world, definition).rows == expected


# ---- ohdsi-circepy defects (Circe-BE decides; see the module docstring) -----------------------------
def _with_rule(rule: dict[str, Any]) -> dict[str, Any]:
    definition = _definition({"DrugEra": {"CodesetId": 4}}, QualifiedLimit={"Type": "All"},
                             ExpressionLimit={"Type": "All"})
    definition["InclusionRules"] = [{"name": "rule", "expression": {
        "Type": "ALL", "CriteriaList": [rule], "DemographicCriteriaList": [], "Groups": []}}]
    return definition


_EMPTY_GROUP = {"Type": "ALL", "CriteriaList": [], "DemographicCriteriaList": [], "Groups": []}
_ALL_TIME = {"Start": {"Coeff": -1}, "End": {"Coeff": 1}}
_UP_TO_INDEX = {"Start": {"Coeff": -1}, "End": {"Days": 0, "Coeff": 1}}
# (definition circepy reads wrongly, the same definition as Circe-BE reads it, id)
CIRCEPY_DEFECTS = [
    (_with_rule({"Criteria": {"ConditionOccurrence": {"First": True, "CorrelatedCriteria": _EMPTY_GROUP}},
                 "StartWindow": _ALL_TIME, "Occurrence": {"Type": 1, "Count": 0}, "IgnoreObservationPeriod": True}),
     _with_rule({"Criteria": {"ConditionOccurrence": {"First": True}},
                 "StartWindow": _ALL_TIME, "Occurrence": {"Type": 1, "Count": 0}, "IgnoreObservationPeriod": True}),
     "empty-correlated-criteria"),
    (_with_rule({"Criteria": {"ConditionOccurrence": {"First": True}}, "StartWindow": _UP_TO_INDEX,
                 "EndWindow": _UP_TO_INDEX, "Occurrence": {"Type": 0, "Count": 0}, "IgnoreObservationPeriod": True}),
     _with_rule({"Criteria": {"ConditionOccurrence": {"First": True}}, "StartWindow": _UP_TO_INDEX,
                 "EndWindow": {**_UP_TO_INDEX, "UseEventEnd": True}, "Occurrence": {"Type": 0, "Count": 0},
                 "IgnoreObservationPeriod": True}),
     "end-window-use-event-end-missing"),
]


@pytest.mark.oracle
@pytest.mark.parametrize("definition", [
    pytest.param(d, marks=pytest.mark.xfail(strict=True, reason="ohdsi-circepy 0.3.0 differs from Circe-BE"), id=i)
    for d, _, i in CIRCEPY_DEFECTS])
def test_known_circepy_defects(duck_world: Cdm, oracle: Oracle, definition: dict[str, Any]) -> None:
    compare_with_oracle(duck_world, oracle, definition, generated=False)


@pytest.mark.oracle
@pytest.mark.parametrize(("definition", "as_circe_be"), [pytest.param(d, e, id=i) for d, e, i in CIRCEPY_DEFECTS])
def test_circepy_defects_read_as_circe_be(duck_world: Cdm, oracle: Oracle, definition: dict[str, Any],
                                          as_circe_be: dict[str, Any]) -> None:
    """Mercia's answer to the definition circepy misreads is Circe's answer to its Circe-BE reading."""
    mine = mercia_outcome(duck_world, definition)
    theirs = oracle.run(as_circe_be)
    assert mine.entries > 0 or mine.stats, "the case should select something or have statistics"
    assert mine.rows == theirs.rows
    assert mine.stats == theirs.stats
    assert mine.masks == theirs.masks
