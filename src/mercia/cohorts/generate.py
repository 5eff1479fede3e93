"""Generate cohorts into a CDM's results schema: the `cohort` rows and their `cohort_definition`.

All definitions of one call are generated in one transaction: a definition's old rows are replaced
by its new ones, and on any error the cohort tables are exactly as before.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import queue
import secrets
import threading
import warnings
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
from pydantic import BaseModel, Field
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cdm.engines import Engine
from mercia.cohorts.compiler import CompiledCohort, bound, compile_cohort, lit
from mercia.cohorts.concept_domains import ConceptDomainWarning, domain_mismatches
from mercia.cohorts.model import CohortDefinition
from mercia.cohorts.plan import PLANS, CohortPlan, TempStep, plan_cohort
from mercia.cohorts.stats import (
    GeneratedStats,
    InclusionRuleStat,
    SummaryStat,
    clear_stats,
    definition_ids_in,
    inclusion_stats,
    insert_stats,
)
from mercia.errors import CohortDefinitionError

# The OMOP concept for "cohort" definitions (definition_type_concept_id / subject_concept_id unknown = 0).
_SYNTAX_PREFIX = "mercia-cohort-sha256:"
# On an engine with parallel connections (Engine.parallel_connections, DuckDB's two) cohorts are computed on
# that many connections, each on a thread, while this thread compiles the later definitions. Each
# connection inserts its cohorts' rows into a temporary table of its own (a connection's temporary
# tables are its own), handed to the calling thread when it is done, which inserts them into `cohort` in
# the run's one transaction. Such an engine stages rows that way on the caller's connection too, so the
# plan (cached, with the table its rows go to) is the same either way.
_ROWS_TABLE = f"mercia_tmp_{secrets.token_hex(4)}_cohort_rows"


class CohortResult(BaseModel):
    cohort_id: int
    name: str
    persons: int
    entries: int
    attrition: list[InclusionRuleStat] = Field(default_factory=list)
    summary: list[SummaryStat] = Field(default_factory=list)
    # (mode_id, inclusion_rule_mask) -> count, as Circe's cohort_inclusion_result
    mask_counts: dict[tuple[int, int], int] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    definition_hash: str = ""


class UnknownConceptWarning(UserWarning):
    """A concept set names concept ids the CDM's vocabulary does not have (they match nothing)."""


def _unknown_concepts(cdm: Cdm, definitions: list[CohortDefinition]) -> list[list[str]]:
    """Per definition, a message for each concept set naming ids the vocabulary lacks (one query for all)."""
    from mercia.vocab.concept_sets import unknown_concept_ids

    ids = [i.concept.concept_id for d in definitions for cs in d.expression.concept_sets for i in cs.expression.items]
    if not ids or not cdm.table_exists("concept"):
        return [[] for _ in definitions]
    unknown = set(unknown_concept_ids(cdm, ids))
    out: list[list[str]] = []
    for d in definitions:
        messages = []
        for cs in d.expression.concept_sets:
            missing = sorted({i.concept.concept_id for i in cs.expression.items} & unknown)
            if missing:
                shown = ", ".join(map(str, missing[:20])) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
                messages.append(
                    f"concept set {cs.id} ({cs.name!r}): concept id(s) {shown} are not in this CDM's vocabulary "
                    "and match nothing"
                )
        out.append(messages)
    return out


def _existing_definitions(cdm: Cdm, ids: list[int]) -> dict[int, tuple[str, str | None]]:
    q = (exp.select("cohort_definition_id", "cohort_definition_name", "cohort_definition_syntax")
         .from_(cdm.table("cohort_definition"))
         .where(definition_ids_in(ids)))
    return {int(r[0]): (r[1], r[2]) for r in cdm.fetch_all(q)}


def _syntax(definition: CohortDefinition, definition_hash: str) -> str:
    # The hash first, so a reader can compare without parsing; the definition itself follows.
    return f"{_SYNTAX_PREFIX}{definition_hash}\n{definition.to_json()}"


@dataclass
class _Prepared:
    """One definition of a run, ready to generate: a rendered plan, or (an engine without temporary
    tables) the compiled CTE query."""

    cohort_id: int
    definition: CohortDefinition
    definition_hash: str
    plan: CohortPlan | None
    compiled: CompiledCohort | None

    @property
    def rule_names(self) -> list[str]:
        return list(self.plan.rule_names) if self.plan else self.compiled.rule_names  # type: ignore[union-attr]


def _prepare(cdm: Cdm, cohort_id: int, definition: CohortDefinition, definition_hash: str) -> _Prepared:
    """Compile and render a definition, or take its plan from this process's cache."""
    try:
        if not cdm.engine.supports_temp_tables:
            return _Prepared(cohort_id, definition, definition_hash, None, compile_cohort(cdm, definition.expression))
        # The rows go to the connection's own temporary table (see _ROWS_TABLE) or straight into `cohort`.
        target = _rows_table() if _stages_rows(cdm.engine) else cdm.table("cohort")
        # The plan depends on the definition, the SQL dialect and where each table lives (version: which
        # tables the CDM has, and so their schemas); never on the data or the cohort id (a parameter).
        key = (definition_hash, cdm.dialect, cdm.cdm_schema, cdm.vocab_schema, cdm.results_schema, cdm.version,
               target.name)
        plan = PLANS.get(key)
        if plan is None:
            plan = plan_cohort(compile_cohort(cdm, definition.expression), cdm.engine, target)
            PLANS.put(key, plan)
    except CohortDefinitionError as e:
        raise CohortDefinitionError(f"cohort {cohort_id} ({definition.name!r}): {e}") from None
    return _Prepared(cohort_id, definition, definition_hash, plan, None)


Progress = Callable[[int, int], None]
Counts = dict[int, tuple[int, int]]  # cohort id -> (persons, entries)


@dataclass
class _Checked:
    unknown: dict[int, list[str]]  # cohort id -> warnings about unknown concept ids
    domains: dict[int, list[str]]  # cohort id -> warnings about concepts used in a criterion of another domain
    tables_exist: bool  # cohort and cohort_definition


@dataclass
class _CohortRun:
    """What running one cohort gives besides its rows."""

    masks: dict[tuple[int, int], int]  # (mode, inclusion rule mask) -> events
    before_censor: int | None  # persons before its censor window (None: it has none)


def _in_order(prepared: list[_Prepared], ids: list[int]) -> list[_Prepared]:
    by_id = {p.cohort_id: p for p in prepared}
    return [by_id[cid] for cid in ids]


def _censor_lost(before: int | None, after: int) -> int | None:
    return None if before is None else before - after


def generate_cohorts(cdm: Cdm, definitions: list[tuple[int, CohortDefinition]], *,
                     stats: bool = True, progress: Progress | None = None) -> list[CohortResult]:
    """Generate each (cohort_id, definition) into the results `cohort` table, in one transaction.

    With `stats` (Circe's generateStats) the results schema's cohort_inclusion, cohort_inclusion_result,
    cohort_inclusion_stats, cohort_summary_stats and cohort_censor_stats rows of these ids are replaced
    in the same transaction (mercia.cohorts.stats; not on an engine without DELETE, Spark). `progress(done,
    total)` is called as cohorts are done (from a worker thread on an engine with parallel connections)."""
    ids = [cid for cid, _ in definitions]
    for cid in ids:
        if not isinstance(cid, int) or isinstance(cid, bool) or cid < 0:
            raise CohortDefinitionError(f"cohort id {cid!r}: a cohort id is a non-negative integer")
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise CohortDefinitionError(f"cohort id(s) {dupes} given to more than one definition in this run")
    if not definitions:
        return []
    hashes = {cid: d.definition_hash() for cid, d in definitions}
    with_stats = stats and cdm.engine.supports_delete

    def check() -> _Checked:
        """What needs no cohort computed: unknown concepts, ids used by other definitions. With parallel
        connections this runs while the other connections compute the cohorts."""
        unknown = dict(zip(ids, _unknown_concepts(cdm, [d for _, d in definitions]), strict=True))
        domains = dict(zip(ids, domain_mismatches(cdm, [d for _, d in definitions]), strict=True))
        tables_exist = cdm.table_exists("cohort") and cdm.table_exists("cohort_definition")
        # cohort_definition alone is enough to clash (a site may keep its own list there, with no cohort table)
        existing = _existing_definitions(cdm, ids) if cdm.table_exists("cohort_definition") else {}
        for cid, d in definitions:
            if cid in existing:
                name, syntax = existing[cid]
                if name != d.name or not (syntax or "").startswith(_SYNTAX_PREFIX + hashes[cid]):
                    raise CohortDefinitionError(
                        f"cohort id {cid} is already used by another definition ({name!r}) in this CDM's "
                        f"cohort_definition table; choose another id, or delete it first (`mercia cohort delete {cid}`)"
                    )
        return _Checked(unknown, domains, tables_exist)

    progress = progress or (lambda done, total: None)
    cohort = cdm.table("cohort")

    def begin_writes(prepared: list[_Prepared], checked: _Checked) -> None:
        """In the transaction, what needs no cohort rows: the ids' old rows deleted, their definitions."""
        if not checked.tables_exist:
            cdm.create_tables(["cohort", "cohort_definition"])
        # Planned cohorts' old rows go first; a compiled one replaces its own rows (_run_compiled).
        planned = [p.cohort_id for p in prepared if p.plan is not None]
        if planned:
            cdm.execute(exp.delete(cohort.copy(), where=definition_ids_in(planned)))
        _delete_definition_rows(cdm, ids)
        _insert_definition_rows(cdm, prepared)
        if with_stats:
            clear_stats(cdm, ids)

    def finish_writes(prepared: list[_Prepared], runs: dict[int, _CohortRun], counts: Counts) -> None:
        if with_stats:
            insert_stats(cdm, [GeneratedStats(p.cohort_id, p.definition, runs[p.cohort_id].masks,
                                              _censor_lost(runs[p.cohort_id].before_censor,
                                                           counts.get(p.cohort_id, (0, 0))[0]))
                               for p in prepared])

    if cdm.engine.parallel_connections > 1 and not cdm.in_transaction:
        # Computed outside the transaction on other connections (they cannot see uncommitted work, hence
        # not when the caller holds a transaction open); the writes are made in it on this connection,
        # each connection's rows as soon as it is done.
        engine = cdm.engine
        with cdm.transaction():
            run = _run_parallel(
                cdm, definitions, hashes, progress, check,
                begin_writes=lambda prepared, checked: begin_writes(_in_order(prepared, ids), checked),
                write_rows=lambda rows: engine.insert_arrow(cdm.qualified("cohort"), rows))
            prepared, runs, counts, checked = _in_order(run.prepared, ids), run.runs, run.counts, run.checked
            finish_writes(prepared, runs, counts)
    else:
        prepared = [_prepare(cdm, cid, d, hashes[cid]) for cid, d in definitions]
        checked = check()
        with cdm.transaction():
            begin_writes(prepared, checked)
            runs = _run_all(cdm, prepared, cohort, progress)
            counts = _read_counts(cdm.fetch_all(_counts_query(cohort.copy()).where(definition_ids_in(ids), copy=False)))
            finish_writes(prepared, runs, counts)
    for p in prepared:
        for w in checked.unknown[p.cohort_id]:
            warnings.warn(f"cohort {p.cohort_id} ({p.definition.name!r}): {w}", UnknownConceptWarning, stacklevel=2)
        for w in checked.domains[p.cohort_id]:
            warnings.warn(f"cohort {p.cohort_id} ({p.definition.name!r}): {w}", ConceptDomainWarning, stacklevel=2)
    results: list[CohortResult] = []
    for p in prepared:
        mask_counts = runs[p.cohort_id].masks
        rule_stats, summary = inclusion_stats(mask_counts, p.rule_names) if p.rule_names else ([], [])
        persons, entries = counts.get(p.cohort_id, (0, 0))
        results.append(CohortResult(
            cohort_id=p.cohort_id, name=p.definition.name, persons=persons, entries=entries,
            attrition=rule_stats, summary=summary, mask_counts=mask_counts,
            warnings=checked.unknown[p.cohort_id] + checked.domains[p.cohort_id],
            definition_hash=p.definition_hash,
        ))
    return results


class _Executor(Protocol):
    """A Cdm handle or one engine connection: runs rendered SQL with bound parameters."""

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None: ...
    def fetch_all(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]: ...


class _TempTables:
    """The temporary tables of one connection's run, and the content each holds now: a step whose
    statement, parameter values and inputs match what its table already holds is not run again
    (definitions sharing concept sets and primary criteria share those steps)."""

    def __init__(self, db: _Executor) -> None:
        self.db = db
        self.content: dict[str, str] = {}  # table -> key of what fills it
        self.drops: dict[str, str] = {}  # table -> its DROP statement

    def fill(self, step: TempStep, values: dict[str, Any]) -> None:
        params = step.create.bind(values)
        key = hashlib.sha256(repr((step.create.sql, sorted((params or {}).items()),
                                   [self.content[t] for t in step.reads])).encode()).hexdigest()
        if self.content.get(step.table) == key:
            return
        if step.table in self.content:
            self.db.execute(step.drop.sql)
            del self.content[step.table]
        self.db.execute(step.create.sql, params)
        if step.analyse is not None:
            self.db.execute(step.analyse.sql)
        self.content[step.table] = key
        self.drops[step.table] = step.drop.sql

    def drop_all(self) -> None:
        # After a failure PostgreSQL refuses statements until rollback, which drops the tables anyway.
        for sql in self.drops.values():
            with suppress(Exception):
                self.db.execute(sql)
        self.content.clear()


def _run_plan(db: _Executor, temp: _TempTables, cohort_id: int, plan: CohortPlan) -> _CohortRun:
    """Insert one cohort's rows by its plan; its (mode, mask) -> events counts, its persons before a
    censor window."""
    values = plan.values(cohort_id)
    for step in plan.steps:
        temp.fill(step, values)
    db.execute(plan.insert.sql, plan.insert.bind(values))
    masks: dict[tuple[int, int], int] = {}
    if plan.mask_counts is not None:
        masks = _read_masks(db.fetch_all(plan.mask_counts.sql, plan.mask_counts.bind(values)))
    before_censor = None
    if plan.persons_before_censor is not None:
        ((before_censor,),) = db.fetch_all(plan.persons_before_censor.sql, plan.persons_before_censor.bind(values))
    return _CohortRun(masks, None if before_censor is None else int(before_censor))


def _rows_table() -> exp.Table:
    return exp.Table(this=exp.to_identifier(_ROWS_TABLE))


def _stages_rows(engine: Engine) -> bool:
    """Whether cohort rows are staged in a connection's temporary table (engines with parallel connections)."""
    return engine.parallel_connections > 1


def _rows_table_create(cdm: Cdm) -> str:
    """The CDM's own cohort table (columns, types) as the temporary _ROWS_TABLE."""
    create = cdm.create_table_expr(cdm.spec.table("cohort"))
    create.this.set("this", _rows_table())
    create.set("exists", False)
    create.set("properties", exp.Properties(expressions=[exp.TemporaryProperty()]))
    return cdm.render(create)


def _drop_rows_table(db: _Executor) -> None:
    db.execute(exp.Drop(tables=[_rows_table()], kind="TABLE", exists=True))


def _run_all(cdm: Cdm, prepared: list[_Prepared], cohort: exp.Table, progress: Progress) -> dict[int, _CohortRun]:
    """On this handle's connection, in its transaction: each cohort's rows inserted; what else each gave."""
    runs: dict[int, _CohortRun] = {}
    temp = _TempTables(cdm)
    # Definitions with the same first steps run one after another, so the shared steps run once.
    planned = sorted((p for p in prepared if p.plan is not None),
                     key=lambda p: [s.create.sql for s in p.plan.steps])  # type: ignore[union-attr]
    done = 0
    staged = bool(planned) and _stages_rows(cdm.engine)
    if staged:
        cdm.execute(_rows_table_create(cdm))
    try:
        for p in planned:
            runs[p.cohort_id] = _run_plan(cdm, temp, p.cohort_id, p.plan)  # type: ignore[arg-type]
            done += 1
            progress(done, len(prepared))
        if staged:
            cdm.execute(exp.insert(exp.select("*").from_(_rows_table()), cohort.copy(),
                                   columns=[f.name for f in cdm.spec.table("cohort").fields]))
    finally:
        temp.drop_all()
        if staged:
            with suppress(Exception):
                _drop_rows_table(cdm)
    for p in prepared:
        if p.compiled is not None:
            runs[p.cohort_id] = _run_compiled(cdm, p.cohort_id, p.compiled, cohort)
            done += 1
            progress(done, len(prepared))
    return runs


def _sharing_groups(definitions: list[tuple[int, CohortDefinition]]) -> list[list[tuple[int, CohortDefinition]]]:
    """The definitions in groups with the same concept sets and primary criteria: the first steps of
    their plans are the same, so each group runs on one connection, one after another, sharing them.

    Largest first: the connections take the next group as they come free, so small groups last even
    out their finishing times. A definition's size (its criteria, limits, strategies, without the
    concept sets) is a rough stand-in for its cost, good enough to leave the cheap ones to the end."""
    groups: dict[str, list[tuple[int, CohortDefinition]]] = {}
    size: dict[str, int] = {}
    for cid, d in definitions:
        key = json.dumps(d.expression.model_dump(mode="json", include={"concept_sets", "primary_criteria"},
                                                 exclude_none=True), sort_keys=True)
        groups.setdefault(key, []).append((cid, d))
        size[key] = size.get(key, 0) + len(d.expression.model_dump_json(
            exclude={"concept_sets"}, exclude_none=True, exclude_defaults=True))
    return [groups[k] for k in sorted(groups, key=lambda k: -size[k])]


@dataclass
class _ParallelRun:
    prepared: list[_Prepared]
    runs: dict[int, _CohortRun]
    counts: Counts
    checked: _Checked


def _counts_query(rows: exp.Table) -> exp.Select:
    """Persons and entries per cohort id of a table of cohort rows (in SQL: pyarrow's group_by would
    import pandas, half a second)."""
    return (exp.select("cohort_definition_id", exp.Count(this=exp.Distinct(expressions=[exp.column("subject_id")])),
                       exp.Count(this=exp.Star()))
            .from_(rows, copy=False).group_by("cohort_definition_id", copy=False))


def _read_counts(rows: list[tuple]) -> Counts:
    return {int(c): (int(p), int(e)) for c, p, e in rows}


def _read_masks(rows: list[tuple]) -> dict[tuple[int, int], int]:
    """(mode_id, inclusion_rule_mask) -> events, from a mask counts query's rows."""
    return {(int(mode), int(mask)): int(n) for mode, mask, n in rows}


def _run_parallel(cdm: Cdm, definitions: list[tuple[int, CohortDefinition]], hashes: dict[int, str],
                         progress: Progress, check: Callable[[], _Checked], *,
                         begin_writes: Callable[[list[_Prepared], _Checked], None],
                         write_rows: Callable[[pa.Table], None]) -> _ParallelRun:
    """Each cohort's rows, counts and mask counts, computed on the engine's parallel connections of their
    own while this thread compiles the definitions, runs `check`, then `begin_writes` (the writes that
    need no cohort), and `write_rows` with each connection's rows as soon as that connection is done.
    The connections write nothing outside their temporary tables; this thread makes every write."""
    engine = cdm.engine
    connections = engine.parallel_connections
    work: queue.Queue[list[_Prepared] | None] = queue.Queue()
    done: queue.Queue[pa.Table | None] = queue.Queue()  # one item per connection: its rows, None if failed
    prepared: list[_Prepared] = []
    runs: dict[int, _CohortRun] = {}
    counts: Counts = {}
    errors: list[BaseException] = []
    abandoned = threading.Event()  # this thread failed (a definition that does not compile, a check)
    lock = threading.Lock()

    create_rows = _rows_table_create(cdm)
    threads = engine.threads  # the engine's setting, shared out among the connections and given back after
    running = [connections]  # connections still computing

    def run(db: Engine) -> None:
        temp = _TempTables(db)
        sent = False
        try:
            db.execute(create_rows)
            while (group := work.get()) is not None:
                if errors or abandoned.is_set():
                    continue  # something failed: drain the queue, do nothing more
                for p in group:
                    result = _run_plan(db, temp, p.cohort_id, p.plan)  # type: ignore[arg-type]
                    with lock:
                        runs[p.cohort_id] = result
                        progress(len(runs), len(definitions))
            with lock:  # the connections still computing get this one's share of the engine's threads
                running[0] -= 1
                if running[0]:
                    db.threads = max(1, threads // running[0])
            if not (errors or abandoned.is_set()):
                result_counts = _read_counts(db.fetch_all(_counts_query(_rows_table())))
                with lock:
                    counts.update(result_counts)
                done.put(db.fetch_arrow(exp.select("*").from_(_rows_table())))
                sent = True
        except BaseException as e:  # re-raised in the calling thread
            errors.append(e)
        finally:
            if not sent:
                done.put(None)
            db.close()  # and with the connection its temporary tables

    workers = [threading.Thread(target=run, args=(engine.another_connection(),), name=f"mercia-cohorts-{i}",
                                daemon=True) for i in range(connections)]
    engine.threads = max(1, threads // connections)
    for w in workers:
        w.start()
    ended = False
    try:
        for group in _sharing_groups(definitions):
            if errors:
                break
            ready = [_prepare(cdm, cid, d, hashes[cid]) for cid, d in group]
            prepared += ready
            work.put(ready)
        for _ in workers:
            work.put(None)
        ended = True
        checked = check()
        if not errors:
            begin_writes(prepared, checked)
        for _ in workers:
            rows = done.get()
            if errors or rows is None:
                break
            if rows.num_rows:
                write_rows(rows)
    except BaseException:
        abandoned.set()
        raise
    finally:
        if not ended:
            for _ in workers:
                work.put(None)
        for w in workers:
            w.join()
        engine.threads = threads
    if errors:
        raise errors[0]
    return _ParallelRun(prepared, runs, counts, checked)


def _run_compiled(cdm: Cdm, cohort_id: int, c: CompiledCohort, cohort: exp.Table) -> _CohortRun:
    """Engines without temporary tables (Spark): the single CTE query replaces the cohort's rows (no
    generation statistics there, so no count before the censor window)."""
    cdm.replace_rows(cohort.copy(), "cohort_definition_id", lit(cohort_id),
                     ["subject_id", "cohort_start_date", "cohort_end_date"], c.rows_query(), c.params)
    masks: dict[tuple[int, int], int] = {}
    if c.rule_count:
        mask_query = c.mask_counts_query()
        masks = _read_masks(cdm.fetch_all(mask_query, bound(mask_query, c.params)))
    return _CohortRun(masks, None)


def _insert_definition_rows(cdm: Cdm, prepared: list[_Prepared]) -> None:
    today = dt.date.today()
    rows = [{"cohort_definition_id": p.cohort_id, "cohort_definition_name": p.definition.name,
             "cohort_definition_description": p.definition.description, "definition_type_concept_id": 0,
             "cohort_definition_syntax": _syntax(p.definition, p.definition_hash), "subject_concept_id": 0,
             "cohort_initiation_date": today} for p in prepared]
    cdm.insert_rows("cohort_definition", rows)


def _delete_definition_rows(cdm: Cdm, ids: list[int]) -> None:
    cdm.delete(cdm.table("cohort_definition"), definition_ids_in(ids))


def cohort_rows(cdm: Cdm, cohort_id: int) -> list[tuple[Any, ...]]:
    """(subject_id, cohort_start_date, cohort_end_date) of one generated cohort, sorted."""
    q = (exp.select("subject_id", "cohort_start_date", "cohort_end_date").from_(cdm.table("cohort"))
         .where(exp.EQ(this=exp.column("cohort_definition_id"), expression=lit(cohort_id)))
         .order_by("subject_id", "cohort_start_date", "cohort_end_date"))
    return cdm.fetch_all(q)
