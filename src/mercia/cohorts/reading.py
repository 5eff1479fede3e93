"""A cohort computed to be read, not stored: its inclusion-rule mask counts and its rows, for counts
that leave the site only as released numbers (trial feasibility, feasibility counts).

The same pipeline generate_cohorts runs (mercia.cohorts.plan: the steps the engine materialises, its
node rewrites, rendered once per process and cached by the definition's content hash), with the rows
inserted into a temporary table of the connection instead of the results `cohort` table; all of it is
dropped afterwards. Engines without temporary tables (Spark) read the compiled CTE queries.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cohorts.compiler import CompiledCohort, bound, compile_cohort
from mercia.cohorts.model import CohortDefinition
from mercia.cohorts.plan import PLANS, CohortPlan, plan_cohort
from mercia.errors import CohortDefinitionError, MerciaError

# The connection's own temporary table for a cohort's rows (fixed per process, so a cached plan's
# insert stays valid; temporary tables are per connection, and a node reads on a connection of its own).
_ROWS_TABLE = f"mercia_read_{secrets.token_hex(4)}_rows"


def _plan(cdm: Cdm, definition: CohortDefinition) -> CohortPlan:
    """The definition's rendered plan (mercia.cohorts.plan), inserting into _ROWS_TABLE, from this
    process's plan cache when the same definition was planned for the same dialect and schemas before
    (a node asked the same question again; generate_cohorts keys its plans the same way)."""
    key = (definition.definition_hash(), cdm.dialect, cdm.cdm_schema, cdm.vocab_schema, cdm.results_schema,
           cdm.version, _ROWS_TABLE)
    plan = PLANS.get(key)
    if plan is None:
        plan = plan_cohort(_compile(cdm, definition), cdm.engine, exp.Table(this=exp.to_identifier(_ROWS_TABLE)))
        PLANS.put(key, plan)
    return plan


def _compile(cdm: Cdm, definition: CohortDefinition) -> CompiledCohort:
    try:
        return compile_cohort(cdm, definition.expression)
    except MerciaError:
        raise
    except Exception as e:  # a definition the model accepted but the compiler cannot take
        raise CohortDefinitionError(f"definition: cannot be compiled ({type(e).__name__})") from None


@contextmanager
def cohort_for_reading(cdm: Cdm, definition: CohortDefinition
                       ) -> Iterator[tuple[list[str], dict[tuple[int, int], int], exp.Expression, dict[str, Any]]]:
    """The rule names, the mask counts, the rows (a table or a query) and the parameters a read of them binds.

    Where the engine has temporary tables, the cohort's plan (mercia.cohorts.plan: the engine's choice
    of steps materialised, its node rewrites, rendered once per process) fills them and inserts the rows
    into a temporary table of their own (connection-local, nothing written to the CDM), which the
    grouped read takes. Otherwise (Spark) the rows and mask counts are the compiled CTE queries."""
    if not cdm.engine.supports_temp_tables:
        compiled = _compile(cdm, definition)
        mask_q = compiled.mask_counts_query()
        masks = ({(int(md), int(k)): int(n) for md, k, n in cdm.fetch_all(mask_q, bound(mask_q, compiled.params))}
                 if compiled.rule_count else {})
        yield list(compiled.rule_names), masks, compiled.rows_query(), compiled.params
        return
    plan = _plan(cdm, definition)
    values = plan.values(0)
    rows = exp.Table(this=exp.to_identifier(_ROWS_TABLE))
    columns = [exp.ColumnDef(this=exp.to_identifier(c), kind=exp.DataType.build(t))
               for c, t in (("cohort_definition_id", "BIGINT"), ("subject_id", "BIGINT"),
                            ("cohort_start_date", "DATE"), ("cohort_end_date", "DATE"))]
    drops = [step.drop.sql for step in reversed(plan.steps)]
    drops.append(cdm.render(exp.Drop(tables=[rows.copy()], kind="TABLE", exists=True)))
    try:
        cdm.execute(exp.Create(this=exp.Schema(this=rows.copy(), expressions=columns), kind="TABLE",
                               properties=exp.Properties(expressions=[exp.TemporaryProperty()])))
        for step in plan.steps:
            cdm.execute(step.create.sql, step.create.bind(values))
            if step.analyse is not None:
                cdm.execute(step.analyse.sql)
        cdm.execute(plan.insert.sql, plan.insert.bind(values))
        masks: dict[tuple[int, int], int] = {}
        if plan.mask_counts is not None:
            masks = {(int(md), int(k)): int(n)
                     for md, k, n in cdm.fetch_all(plan.mask_counts.sql, plan.mask_counts.bind(values))}
        yield list(plan.rule_names), masks, rows, {}
    finally:
        for sql in drops:
            with suppress(Exception):
                cdm.execute(sql)
