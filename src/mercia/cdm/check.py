"""Does a target hold an OMOP CDM where we were told to look? One line naming the schema and what is missing.

An empty DuckDB file, or `--cdm-schema omop` on a database whose tables are in `main`, opens without
complaint; without this check the first query fails deep inside (a database error and a traceback) or,
worse, a summary reports 0 persons. Commands that read a CDM call `require_cdm` right after opening it.
"""

from __future__ import annotations

from sqlglot import exp

from mercia.cdm.handle import Cdm
from mercia.errors import CdmError

# The tables without which a database is not an OMOP CDM (what OHDSI tools ask for first).
CORE_CDM_TABLES = ("person", "observation_period")
# The vocabulary tables that cohorts and analyses read (concept sets, descendants, mapped source codes).
CORE_VOCAB_TABLES = ("concept", "concept_ancestor", "concept_relationship")


def missing_tables(cdm: Cdm, tables: tuple[str, ...] | list[str]) -> list[str]:
    """Those of `tables` that the CDM does not have in the schema each belongs to, in the order given."""
    return [t for t in tables if not cdm.table_exists(t)]


def require_cdm(cdm: Cdm, *, clinical: bool = True, vocabulary: bool = False) -> None:
    """Raise CdmError unless the CDM has its core clinical tables and (with `vocabulary`) the vocabulary's;
    `clinical=False, vocabulary=True` asks for a vocabulary alone (concept search needs no patients).

    The message names each schema looked in and the tables missing there, and, when another schema of
    the database does have a `person` table, suggests it."""
    wanted = (list(CORE_CDM_TABLES) if clinical else []) + (list(CORE_VOCAB_TABLES) if vocabulary else [])
    missing = missing_tables(cdm, wanted)
    if not missing:
        return
    by_schema: dict[str, list[str]] = {}
    for t in missing:
        by_schema.setdefault(cdm.schema_of(t), []).append(t)
    where = "; ".join(f"schema {s!r} lacks {', '.join(ts)}" for s, ts in by_schema.items())
    core_missing = any(t in CORE_CDM_TABLES for t in missing)
    what = "no OMOP CDM" if core_missing else "an OMOP CDM without its vocabulary" if clinical else "no OMOP vocabulary"
    hint = _elsewhere(cdm) if core_missing else None
    fix = (f"the tables are in schema {hint!r}: give --cdm-schema {hint}" if hint else
           "load one with `mercia cdm load` (or the vocabulary from Athena), or give the schema that holds it "
           "(--cdm-schema, --vocab-schema)")
    raise CdmError(f"{what} at {_target(cdm)}: {where}; {fix}")


def _target(cdm: Cdm) -> str:
    from mercia.cdm.engines import redact

    return repr(redact(cdm.target)) if cdm.target else "this target"


def _elsewhere(cdm: Cdm) -> str | None:
    """Another schema of the database holding a `person` table, if the engine can say (not Spark)."""
    if not cdm.engine.has_information_schema:
        return None
    q = (
        exp.select(exp.column("table_schema"))
        .from_(exp.table_("tables", db="information_schema"))
        .where(exp.func("lower", exp.column("table_name")).eq(exp.Placeholder(this="t")))
        .order_by(exp.column("table_schema"))
    )
    try:
        schemas = [r[0] for r in cdm.fetch_all(q, {"t": "person"})]
    except Exception:  # a catalogue the engine will not show: no hint, the message stands without it
        return None
    others = [s for s in schemas if s != cdm.cdm_schema]
    return others[0] if len(others) == 1 else None
