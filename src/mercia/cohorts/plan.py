"""A compiled cohort as the statements one engine runs, rendered once and cached per definition.

generate_cohorts runs each cohort as: create some temporary tables, insert the cohort's rows into the
results `cohort` table, read the inclusion-rule mask counts; the temporary tables are dropped at the end
of the run. A step whose statement and inputs are those of a step already materialised in the run (the
same concept sets and primary criteria in several definitions, say) is not run again. Which steps of
the compiled pipeline (CompiledCohort.ctes) become temporary tables is the engine's choice
(`Engine.materialise`, in mercia.cdm.engines):

* every step, analysed when the engine says so (`analyse_materialised`): for planners that cannot
  estimate a CTE's rows (PostgreSQL);
* only the checkpoints: the concept sets (read by every criterion), the primary events, when the
  definition has inclusion rules the masked events (read by both the insert and the mask counts), and
  when it has a censor window the final rows before it (read by the insert and the count of persons it
  censors). The other steps stay CTEs inside those statements, for optimisers that see the whole chain
  (DuckDB).

The engine may also rewrite single nodes of the steps (`Engine.step_rewrites`: DuckDB finds a
criterion's First by an aggregate rather than a window), applied during the one walk over each step.

Compiling and rendering a definition costs about 10 ms of Python (sqlglot's rendering is most of it),
still a fair share of the run at 100,000 persons, so the rendered plan is cached in this process, keyed
by the definition's content hash, the dialect, the schemas the CDM's tables live in and the table the
rows go to; the cohort id is a bound parameter, so the same definition under another id reuses the plan.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from mercia.cdm.engines import EVERY_STEP, Engine
from mercia.cdm.engines.base import NodeRewrite
from mercia.cohorts.compiler import CompiledCohort, sql_type

# Temporary tables live in the session; the token keeps them apart from anything else in it (a user's
# own temporary tables, Circe's), and is fixed per process so a cached plan's names stay valid.
_TEMP_PREFIX = f"mercia_tmp_{secrets.token_hex(4)}_"
# The bound parameter that carries the cohort id into the insert (compiled parameters are d1, d2, ...).
COHORT_ID_PARAM = "cohort_id"
_COHORT_COLUMNS = ["cohort_definition_id", "subject_id", "cohort_start_date", "cohort_end_date"]
# The checkpoints of every definition (see the module docstring); masked events and final rows by definition.
_CHECKPOINTS = ("codesets", "cohort_primary_events")
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
    analyse: Statement | None  # statistics for the planner, where the engine wants them
    reads: tuple[str, ...]  # the temporary tables its create reads (their contents decide this one's)
    drop: Statement


@dataclass(frozen=True)
class CohortPlan:
    """A cohort's statements for one engine: fill `steps`, run `insert`, read `mask_counts`, drop `steps`."""

    steps: tuple[TempStep, ...]
    insert: Statement  # binds COHORT_ID_PARAM
    mask_counts: Statement | None  # None: the definition has no inclusion rules
    persons_before_censor: Statement | None  # the persons before the censor window (None: it has none)
    params: dict[str, Any]  # the compiled parameters (dates), by name
    rule_names: tuple[str, ...]

    def values(self, cohort_id: int) -> dict[str, Any]:
        return {**self.params, COHORT_ID_PARAM: cohort_id}


def plan_cohort(compiled: CompiledCohort, engine: Engine | type[Engine], cohort_table: exp.Table) -> CohortPlan:
    """The statements that generate `compiled` into `cohort_table` on `engine` (an engine, or its class to
    plan without a connection), which must have temporary tables.

    The compiled trees are renamed in place and rendered, not copied (copying them costs as much as
    rendering): `compiled` is spent afterwards.
    """
    if not engine.supports_temp_tables:
        raise ValueError(f"plan_cohort: no temporary-table plan for engine {engine.dialect!r}")
    if engine.materialise == EVERY_STEP:
        wanted = {name for name, _ in compiled.ctes}
    else:
        wanted = set(_CHECKPOINTS)
        if compiled.rule_count:
            wanted.add("cohort_masked_events")  # read by the insert and the mask counts
        if compiled.censored:
            wanted.add("cohort_final")
    analyse = engine.analyse_materialised
    dialect = engine.dialect
    bodies = dict(compiled.ctes)
    order = [name for name, _ in compiled.ctes]
    temp = {name: f"{_TEMP_PREFIX}{name}" for name in order if name in wanted}
    reads, params, rewrites = _scan(compiled.ctes, temp, engine.step_rewrites)
    for rewrite, node in rewrites:
        rewrite(node)
    placed: set[str] = set()  # steps already inlined into a statement

    def with_inlined(query: exp.Select, needs: set[str]) -> tuple[exp.Select, tuple[str, ...], set[str]]:
        """`query` with the non-materialised steps it reads (directly or through others) as CTEs; the
        temporary tables it reads in the end; the parameters those CTEs bind."""
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
        ctes = []
        for name in order:
            if name in inlined:
                # A step inlined into a second statement is copied: rendering may rewrite a tree in place.
                body = bodies[name].copy() if name in placed else bodies[name]
                placed.add(name)
                ctes.append(exp.CTE(this=body, alias=exp.TableAlias(this=exp.to_identifier(name))))
        if ctes:
            query.set("with_", exp.With(expressions=ctes))
        return query, tuple(sorted(inputs)), {p for name in inlined for p in params[name]}

    def render(tree: exp.Expression, param_names: Iterable[str] = ()) -> Statement:
        # copy=False: the tree is spent here, and copying it first costs a third of rendering.
        return Statement(tree.sql(dialect=dialect, copy=False), tuple(sorted(param_names)))

    steps: list[TempStep] = []
    for name in order:
        if name not in temp:
            continue
        body, inputs, used = with_inlined(bodies[name], reads[name])
        table = exp.Table(this=exp.to_identifier(temp[name]))
        create = render(exp.Create(this=table, kind="TABLE", expression=body,
                                   properties=exp.Properties(expressions=[exp.TemporaryProperty()])),
                        used | params[name])
        steps.append(TempStep(
            table=temp[name], create=create, reads=inputs,
            analyse=render(exp.Analyze(tables=[table.copy()])) if analyse else None,
            drop=render(exp.Drop(tables=[table.copy()], kind="TABLE", exists=True)),
        ))

    def select_from(columns: list[exp.Expression], name: str) -> exp.Select:
        source = exp.Table(this=exp.to_identifier(temp.get(name, name)))
        return exp.Select(expressions=columns).from_(source, copy=False)

    # Typed, so PostgreSQL need not infer the parameter's type from the column it lands in.
    cohort_id = exp.Cast(this=exp.Placeholder(this=COHORT_ID_PARAM), to=sql_type("BIGINT"))
    rows, _, used = with_inlined(select_from([cohort_id, *_columns(_COHORT_COLUMNS[1:])], "cohort_out"),
                                 {"cohort_out"})
    insert = exp.Insert(this=exp.Schema(this=cohort_table, expressions=[
        exp.to_identifier(c) for c in _COHORT_COLUMNS]), expression=rows)
    mask_counts = None
    if compiled.rule_count:
        masks, _, mask_params = with_inlined(
            select_from(_columns(["mode_id", "inclusion_rule_mask", "person_count"]), "cohort_mask_counts"),
            {"cohort_mask_counts"})
        mask_counts = render(masks, mask_params)
    persons_before_censor = None
    if compiled.censored:  # Circe's cohort_censor_stats: persons of #final_cohort
        persons = exp.Count(this=exp.Distinct(expressions=[exp.column("person_id")]))
        before, _, censor_params = with_inlined(select_from([persons], "cohort_final"), {"cohort_final"})
        persons_before_censor = render(before, censor_params)
    return CohortPlan(steps=tuple(steps), insert=render(insert, used | {COHORT_ID_PARAM}),
                      mask_counts=mask_counts, persons_before_censor=persons_before_censor,
                      params=dict(compiled.params), rule_names=tuple(compiled.rule_names))


def _columns(names: list[str]) -> list[exp.Expression]:
    return [exp.column(n) for n in names]


def _scan(ctes: list[tuple[str, exp.Select]], temp: dict[str, str],
          step_rewrites: Mapping[type[exp.Expression], NodeRewrite]
          ) -> tuple[dict[str, set[str]], dict[str, set[str]], list[tuple[NodeRewrite, exp.Expression]]]:
    """One walk over each step's body (walks cost a third of planning): the earlier steps it reads (a
    step is read as a table without a schema), renaming those materialised to their temporary tables on
    the way; the parameters it binds; the nodes the engine rewrites, with their rewrite."""
    names = {name for name, _ in ctes}
    reads: dict[str, set[str]] = {}
    params: dict[str, set[str]] = {}
    rewrites: list[tuple[NodeRewrite, exp.Expression]] = []
    for name, body in ctes:
        read = reads[name] = set()
        used = params[name] = set()
        for node in _breadth_first(body):
            if isinstance(node, exp.Placeholder):
                used.add(node.name)
            elif isinstance(node, exp.Table) and not node.args.get("db") and node.name in names:
                read.add(node.name)
                if node.name in temp:
                    node.set("this", exp.to_identifier(temp[node.name]))
            elif step_rewrites and (rewrite := step_rewrites.get(type(node))) is not None:
                rewrites.append((rewrite, node))
    return reads, params, rewrites


def _breadth_first(tree: exp.Expression) -> Iterator[exp.Expression]:
    """Every node of `tree` in Expression.walk()'s order (breadth first), at about half its cost: the
    children are read from the node's args here rather than through a generator per node."""
    queue = deque([tree])
    while queue:
        node = queue.popleft()
        yield node
        for value in node.args.values():
            if isinstance(value, list):
                queue.extend(v for v in value if isinstance(v, exp.Expr))
            elif isinstance(value, exp.Expr):
                queue.append(value)


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
