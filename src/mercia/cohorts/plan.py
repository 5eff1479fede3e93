"""A compiled cohort as the statements one engine runs, rendered once and cached per definition.

generate_cohorts runs each cohort as: create some temporary tables, insert the cohort's rows into the
results `cohort` table, read the inclusion-rule mask counts; the temporary tables are dropped at the end
of the run. A step whose statement and inputs are those of a step already materialised in the run (the
same concept sets and primary criteria in several definitions, say) is not run again. Which steps of
the compiled pipeline (CompiledCohort.ctes) become temporary tables depends on the engine:

* PostgreSQL: every step, analysed. It cannot estimate a CTE's rows and re-runs correlated subqueries
  per row, so materialised, analysed steps keep every join a hash join (see CompiledCohort.steps).
* DuckDB: only the concept sets (read by every criterion), the primary events and, when the definition
  has inclusion rules, the masked events (read by both the insert and the mask counts). The other steps
  stay CTEs inside those statements, where DuckDB's optimiser sees the whole chain and materialises what
  is read twice by itself. A criterion's First is found by an aggregate rather than a window there
  (see duckdb_first). For the 13 definitions of bench/bench_cohorts.py that is 74 statements where one
  temporary table per step took 497 (no ANALYZE either: DuckDB keeps its statistics up to date on
  insert), and about two thirds of the process CPU time at 100,000 persons.

Compiling and rendering a definition costs about 30 ms of Python, a fair share of the run at 100,000
persons, so the rendered plan is cached in this process, keyed by the definition's content hash, the
dialect and the schemas the CDM's tables live in; the cohort id is a bound parameter, so the same
definition under another id reuses the plan.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from mercia.cohorts.compiler import CompiledCohort
from mercia.cohorts.duckdb_first import rewrite_first_rows

# Temporary tables live in the session; the token keeps them apart from anything else in it (a user's
# own temporary tables, Circe's), and is fixed per process so a cached plan's names stay valid.
_TEMP_PREFIX = f"mercia_tmp_{secrets.token_hex(4)}_"
# The bound parameter that carries the cohort id into the insert (compiled parameters are d1, d2, ...).
COHORT_ID_PARAM = "cohort_id"
_COHORT_COLUMNS = ["cohort_definition_id", "subject_id", "cohort_start_date", "cohort_end_date"]
# DuckDB: the steps worth a temporary table (see the module docstring).
_DUCKDB_MATERIALISED = ("codesets", "cohort_primary_events", "cohort_masked_events")
_CACHE_SIZE = 512


@dataclass(frozen=True)
class Statement:
    """One rendered statement and the names of the parameters it binds."""

    sql: str
    param_names: tuple[str, ...] = ()

    def bind(self, values: dict[str, Any]) -> dict[str, Any] | None:
        """The statement's parameters (DuckDB rejects unused named parameters, so only those)."""
        return {name: values[name] for name in self.param_names} or None


@dataclass(frozen=True)
class TempStep:
    """A step materialised as a temporary table: its name, the statements that fill it, what it reads."""

    table: str
    create: Statement
    analyse: Statement | None  # PostgreSQL: statistics for the planner
    reads: tuple[str, ...]  # the temporary tables its create reads (their contents decide this one's)
    drop: Statement


@dataclass(frozen=True)
class CohortPlan:
    """A cohort's statements for one engine: fill `steps`, run `insert`, read `mask_counts`, drop `steps`."""

    steps: tuple[TempStep, ...]
    insert: Statement  # binds COHORT_ID_PARAM
    mask_counts: Statement | None  # None: the definition has no inclusion rules
    params: dict[str, Any]  # the compiled parameters (dates), by name
    rule_names: tuple[str, ...]

    def values(self, cohort_id: int) -> dict[str, Any]:
        return {**self.params, COHORT_ID_PARAM: cohort_id}


def plan_cohort(compiled: CompiledCohort, dialect: str, cohort_table: exp.Table) -> CohortPlan:
    """The statements that generate `compiled` into `cohort_table` on a DuckDB or PostgreSQL engine.

    The compiled trees are renamed in place and rendered, not copied (copying them costs as much as
    rendering): `compiled` is spent afterwards.
    """
    if dialect == "duckdb":
        wanted = set(_DUCKDB_MATERIALISED)
        if not compiled.rule_count:
            wanted.discard("cohort_masked_events")  # read only by the insert then
        analyse = False
    elif dialect == "postgres":
        wanted = {name for name, _ in compiled.ctes}
        analyse = True
    else:
        raise ValueError(f"plan_cohort: no temporary-table plan for dialect {dialect!r}")
    bodies = dict(compiled.ctes)
    order = [name for name, _ in compiled.ctes]
    temp = {name: f"{_TEMP_PREFIX}{name}" for name in order if name in wanted}
    reads = _reads_and_rename(compiled.ctes, temp)
    if dialect == "duckdb":
        for body in bodies.values():
            rewrite_first_rows(body)
    placed: set[str] = set()  # steps already inlined into a statement

    def with_inlined(query: exp.Select, needs: set[str]) -> tuple[exp.Select, tuple[str, ...]]:
        """`query` with the non-materialised steps it reads (directly or through others) as CTEs, and
        the temporary tables it reads in the end."""
        inlined: set[str] = set()
        inputs: set[str] = set()
        stack = list(needs)
        while stack:
            name = stack.pop()
            if name in temp:
                inputs.add(temp[name])
                continue
            if name in inlined:
                continue
            inlined.add(name)
            stack.extend(reads[name])
        for name in order:
            if name in inlined:
                # A step inlined into a second statement is copied: rendering may rewrite a tree in place.
                body = bodies[name].copy() if name in placed else bodies[name]
                placed.add(name)
                query = query.with_(name, as_=body, copy=False)
        return query, tuple(sorted(inputs))

    def render(tree: exp.Expression) -> Statement:
        names = tuple(dict.fromkeys(p.name for p in tree.find_all(exp.Placeholder)))
        # copy=False: the tree is spent here, and copying it first costs a third of rendering.
        return Statement(tree.sql(dialect=dialect, copy=False), names)

    steps: list[TempStep] = []
    for name in order:
        if name not in temp:
            continue
        body, inputs = with_inlined(bodies[name], reads[name])
        table = exp.Table(this=exp.to_identifier(temp[name]))
        create = render(exp.Create(this=table, kind="TABLE", expression=body,
                                   properties=exp.Properties(expressions=[exp.TemporaryProperty()])))
        steps.append(TempStep(
            table=temp[name], create=create, reads=inputs,
            analyse=render(exp.Analyze(tables=[table.copy()])) if analyse else None,
            drop=render(exp.Drop(tables=[table.copy()], kind="TABLE", exists=True)),
        ))

    def step(name: str) -> str:
        return temp.get(name, name)

    # Typed, so PostgreSQL need not infer the parameter's type from the column it lands in.
    cohort_id = exp.Cast(this=exp.Placeholder(this=COHORT_ID_PARAM), to=exp.DataType.build("BIGINT"))
    rows = exp.select(cohort_id, "subject_id", "cohort_start_date", "cohort_end_date",
                      copy=False).from_(step("cohort_out"), copy=False)
    insert = exp.insert(with_inlined(rows, {"cohort_out"})[0], cohort_table, columns=_COHORT_COLUMNS)
    mask_counts = None
    if compiled.rule_count:
        masks = exp.select("mode_id", "inclusion_rule_mask", "person_count", copy=False).from_(
            step("cohort_mask_counts"), copy=False)
        mask_counts = render(with_inlined(masks, {"cohort_mask_counts"})[0])
    return CohortPlan(steps=tuple(steps), insert=render(insert), mask_counts=mask_counts,
                      params=dict(compiled.params), rule_names=tuple(compiled.rule_names))


def _reads_and_rename(ctes: list[tuple[str, exp.Select]], temp: dict[str, str]) -> dict[str, set[str]]:
    """For each step, the earlier steps its body reads (a step is read as a table without a schema);
    references to materialised steps are renamed to their temporary tables on the way (one walk)."""
    names = {name for name, _ in ctes}
    reads: dict[str, set[str]] = {}
    for name, body in ctes:
        read = reads[name] = set()
        for t in body.find_all(exp.Table):
            if not t.args.get("db") and t.name in names:
                read.add(t.name)
                if t.name in temp:
                    t.set("this", exp.to_identifier(temp[t.name]))
    return reads


class PlanCache:
    """Rendered plans by key, least recently used dropped first (a process has a bounded set of them).

    Thread-safe: a node may generate cohorts for several studies at once."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self.size = size
        self._plans: OrderedDict[tuple[Any, ...], CohortPlan] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> CohortPlan | None:
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
            return plan

    def put(self, key: tuple[Any, ...], plan: CohortPlan) -> None:
        with self._lock:
            self._plans[key] = plan
            self._plans.move_to_end(key)
            while len(self._plans) > self.size:
                self._plans.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()


PLANS = PlanCache()
