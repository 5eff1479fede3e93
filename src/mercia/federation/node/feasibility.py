"""Feasibility counts: how many persons (and entries) a cohort definition finds, released.

The definition is compiled to one read-only query (the CTE form; nothing is written to the CDM, so a
count answers while a study runs). Persons and entries after each inclusion rule come from the
compiler's per-mask counts, as a study's attrition table does, and the whole table passes
`release()` with the site's policy: small counts are suppressed or rounded like any other result.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pandas as pd
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cohorts.compiler import CompiledCohort, bound, compile_cohort
from mercia.cohorts.model import CohortDefinition
from mercia.disclosure import DisclosureLog, DisclosurePolicy, ResultTable, release
from mercia.errors import CohortDefinitionError, MerciaError


def parse_definition(definition: dict[str, Any]) -> CohortDefinition:
    """A cohort definition sent as data: Mercia's model form (with `expression`) or the cohort language."""
    from mercia.cohorts import dsl

    if not isinstance(definition, dict) or not definition:
        raise CohortDefinitionError("definition: give a cohort definition (a mapping in the cohort language)")
    try:
        if "expression" in definition:
            return CohortDefinition.from_dict(definition)
        return dsl.from_dict(definition)
    except MerciaError:
        raise
    except Exception as e:  # pydantic and friends: still the user's definition at fault
        raise CohortDefinitionError(f"definition: {e}") from None


@contextmanager
def _pipeline(cdm: Cdm, compiled: CompiledCohort) -> Iterator[tuple[exp.Select, exp.Select]]:
    """The rows and mask-count queries. On DuckDB and PostgreSQL the pipeline's steps become
    temporary tables (connection-local: nothing is written to the CDM) that both counts read, which
    is faster than running the CTE chain twice; elsewhere (Spark) the CTE queries as they are."""
    if cdm.dialect not in ("duckdb", "postgres"):
        yield compiled.rows_query(), compiled.mask_counts_query()
        return
    steps = compiled.steps(f"mercia_feas_{secrets.token_hex(6)}_")
    try:
        for stmt in steps.creates:
            cdm.execute(stmt, bound(stmt, compiled.params))
        yield steps.rows, steps.mask_counts
    finally:
        for stmt in steps.drops:
            with suppress(Exception):  # after a failure PostgreSQL drops them with the rollback
                cdm.execute(stmt)


def feasibility_count(cdm: Cdm, definition: CohortDefinition, policy: DisclosurePolicy, *, site: str) -> dict[str, Any]:
    try:
        compiled = compile_cohort(cdm, definition.expression)
    except MerciaError:
        raise
    except Exception as e:  # a definition the model accepted but the compiler cannot take: the sender's
        raise CohortDefinitionError(f"definition: cannot be compiled ({type(e).__name__})") from None
    steps: list[tuple[str, int, int]] = []
    with _pipeline(cdm, compiled) as (rows_query, mask_q):
        count_q = exp.select(
            exp.Count(this=exp.Distinct(expressions=[exp.column("subject_id")])).as_("persons"),
            exp.Count(this=exp.Star()).as_("entries"),
        ).from_(rows_query.subquery("c"))
        persons, entries = cdm.fetch_all(count_q, bound(count_q, compiled.params))[0]
        masks = ({(int(m), int(k)): int(n) for m, k, n in cdm.fetch_all(mask_q, bound(mask_q, compiled.params))}
                 if compiled.rule_count else {})
    if compiled.rule_count:
        initial = [sum(n for (md, _), n in masks.items() if md == mode) for mode in (1, 0)]
        steps.append(("initial events", initial[0], initial[1]))
        for i, name in enumerate(compiled.rule_names):
            need = (1 << (i + 1)) - 1
            left = [sum(n for (md, k), n in masks.items() if md == mode and k & need == need) for mode in (1, 0)]
            steps.append((f"{i + 1}. {name}", left[0], left[1]))
    final = ("final cohort", int(persons), int(entries))
    if steps and (final[1] > steps[-1][1] or final[2] > steps[-1][2]):
        steps = []  # era collapsing merged entries: keep the table a valid attrition sequence
    steps.append(final)
    df = pd.DataFrame(steps, columns=["step", "persons", "entries"]).astype({"persons": "int64", "entries": "int64"})
    table = ResultTable(name="feasibility", kind="counts", data=df, dimensions=["step"],
                        count_columns=["persons", "entries"], sequential=True)
    log = DisclosureLog()
    released = release(table, policy, site=site, log=log)
    data = released.data
    last = data.iloc[-1]
    return {
        "site": site,
        "definition_hash": definition.definition_hash(),
        "persons": _count(last["persons"]),
        "entries": _count(last["entries"]),
        "attrition": released.to_dict(),
        "disclosure": json.loads(log.to_json(public=True)),
    }


def _count(v: Any) -> int | None:
    """A released count, or None where disclosure control suppressed it."""
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    return int(v)

