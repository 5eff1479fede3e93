"""Which study each generated cohort belongs to: cohort ids of their own per study, listing, deletion.

A study package numbers its cohorts 1, 2, ... (or as its author chose); two packages would clash in one
CDM's cohort table. As OHDSI's CohortGenerator keeps a study's cohorts in a results schema under the
ids that study gives them, each package here gets a block of `BLOCK` ids of its own, derived from its
content hash (the first free block in a sequence the hash picks, so the same package gets the same ids
in every CDM where that block is free), and its cohorts are stored there. The `study_cohort` table in
the results schema records, for each stored id, the study, its package hash, the cohort's key and its
id in the package; running the same package again reuses its ids (its cohorts are replaced).

Analyses read a study's cohorts by the package's own ids through `Cdm.cohort_view` (`study_cohorts`),
so results and manifests are numbered as the package numbers them, at every site.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cohorts.compiler import lit
from mercia.cohorts.stats import STATS_TABLES, definition_ids_in, stats_table
from mercia.errors import CohortDefinitionError
from mercia.limits import MAX_LIST

if TYPE_CHECKING:
    from mercia.study.package import StudyPackage

TABLE = "study_cohort"
BLOCK = 1_000  # ids per study: at least the most cohorts a package may hold
BLOCKS = 999_999  # blocks 1..BLOCKS: ids 1,000 to 999,999,999 (an OMOP INTEGER column holds them)
assert BLOCK >= MAX_LIST
_COLUMNS = [("cohort_definition_id", "BIGINT"), ("study_name", "VARCHAR"), ("package_hash", "VARCHAR"),
            ("cohort_key", "VARCHAR"), ("study_cohort_id", "BIGINT")]
_SYNTAX_PREFIX = "mercia-cohort-sha256:"  # as generate.py writes cohort_definition_syntax


def _table(cdm: Cdm) -> exp.Table:
    return stats_table(cdm, TABLE)


def _exists(cdm: Cdm, name: str) -> bool:
    return cdm.engine.table_columns(cdm.results_schema, name) is not None


def _create(cdm: Cdm) -> None:
    cdm.create_schemas()
    schema = exp.Schema(this=_table(cdm), expressions=[
        exp.ColumnDef(this=exp.to_identifier(c), kind=exp.DataType.build(t)) for c, t in _COLUMNS])
    cdm.execute(exp.Create(this=schema, kind="TABLE", exists=True))


def _recorded(cdm: Cdm, package_hash: str) -> dict[int, int]:
    """Package cohort id -> stored id, for the package with this hash (empty if never run here)."""
    if not _exists(cdm, TABLE):
        return {}
    q = (exp.select("study_cohort_id", "cohort_definition_id").from_(_table(cdm))
         .where(exp.EQ(this=exp.column("package_hash"), expression=exp.Placeholder(this="h"))))
    return {int(s): int(d) for s, d in cdm.fetch_all(q, {"h": package_hash})}


def _block_used(cdm: Cdm, base: int) -> bool:
    """Whether any stored cohort, definition or record has an id in [base, base + BLOCK)."""
    ids = exp.column("cohort_definition_id")
    where = exp.Between(this=ids, low=lit(base), high=lit(base + BLOCK - 1))
    tables = [cdm.table("cohort") if cdm.table_exists("cohort") else None,
              cdm.table("cohort_definition") if cdm.table_exists("cohort_definition") else None,
              _table(cdm) if _exists(cdm, TABLE) else None]
    for t in tables:
        if t is not None and cdm.scalar(exp.select(exp.Count(this=exp.Star())).from_(t).where(where.copy())):
            return True
    return False


def study_ids(cdm: Cdm, pkg: StudyPackage) -> dict[int, int]:
    """Package cohort id -> the id its rows are stored under in this CDM: the ids recorded for this
    package when it ran here before, else a free block derived from its hash (not recorded yet: see
    `record`)."""
    own = sorted(pkg.cohort_ids.values())
    recorded = _recorded(cdm, pkg.content_hash)
    if recorded and set(recorded) == set(own):
        return recorded
    start = int(pkg.content_hash[:15], 16)
    for k in range(BLOCKS):
        base = ((start + k) % BLOCKS + 1) * BLOCK
        if not _block_used(cdm, base):
            return {sid: base + i for i, sid in enumerate(own)}
    raise CohortDefinitionError(  # pragma: no cover - a billion cohorts
        "no free block of cohort ids is left in this CDM; delete cohorts with `mercia cohort delete`")


def record(cdm: Cdm, pkg: StudyPackage, ids: dict[int, int]) -> None:
    """Record which study and package cohort each stored id of `ids` belongs to (replacing any
    earlier record of those ids)."""
    keys = {v: k for k, v in pkg.cohort_ids.items()}
    rows = [(db, pkg.name, pkg.content_hash, keys[own], own) for own, db in sorted(ids.items())]
    with cdm.transaction():
        _create(cdm)
        _delete_rows(cdm, TABLE, sorted(ids.values()))
        params = {f"r{i}_{j}": v for i, row in enumerate(rows) for j, v in enumerate(row)}
        values = exp.Values(expressions=[exp.Tuple(expressions=[exp.Placeholder(this=f"r{i}_{j}")
                                                                for j in range(len(row))])
                                         for i, row in enumerate(rows)])
        cdm.execute(exp.insert(values, _table(cdm), columns=[c for c, _ in _COLUMNS]), params)


@contextmanager
def study_cohorts(cdm: Cdm, pkg: StudyPackage) -> Iterator[Cdm]:
    """Inside: `cdm` reads the study's generated cohorts by the package's own ids (see the module)."""
    ids = _recorded(cdm, pkg.content_hash)
    missing = sorted(set(pkg.cohort_ids.values()) - set(ids))
    if missing:
        raise CohortDefinitionError(
            f"the cohorts of study {pkg.name!r} are not generated in this CDM; run the study first")
    with cdm.cohort_view(ids):
        yield cdm


# ---- listing and deleting --------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredCohort:
    """One cohort in a CDM's results schema, as `mercia cohort list` shows it."""

    cohort_id: int
    name: str | None
    study: str | None  # None: generated on its own (`mercia cohort run`), not by a study
    package_hash: str | None
    cohort_key: str | None
    definition_hash: str | None
    persons: int  # exact: this is the user's own CDM, nothing here leaves it
    entries: int


def list_cohorts(cdm: Cdm) -> list[StoredCohort]:
    """Every cohort id in the results schema's cohort_definition, cohort or study_cohort table."""
    names: dict[int, tuple[str | None, str | None]] = {}
    if cdm.table_exists("cohort_definition"):
        q = exp.select("cohort_definition_id", "cohort_definition_name", "cohort_definition_syntax").from_(
            cdm.table("cohort_definition"))
        for cid, name, syntax in cdm.fetch_all(q):
            h = None
            if syntax and syntax.startswith(_SYNTAX_PREFIX):
                h = syntax[len(_SYNTAX_PREFIX):].split("\n", 1)[0]
            names[int(cid)] = (name, h)
    studies: dict[int, tuple[str, str, str]] = {}
    if _exists(cdm, TABLE):
        q = exp.select("cohort_definition_id", "study_name", "package_hash", "cohort_key").from_(_table(cdm))
        studies = {int(r[0]): (r[1], r[2], r[3]) for r in cdm.fetch_all(q)}
    counts: dict[int, tuple[int, int]] = {}
    if cdm.table_exists("cohort"):
        q = (exp.select("cohort_definition_id",
                        exp.Count(this=exp.Distinct(expressions=[exp.column("subject_id")])),
                        exp.Count(this=exp.Star()))
             .from_(cdm.table("cohort")).group_by("cohort_definition_id"))
        counts = {int(c): (int(p), int(e)) for c, p, e in cdm.fetch_all(q)}
    out = []
    for cid in sorted(set(names) | set(studies) | set(counts)):
        name, h = names.get(cid, (None, None))
        study, package_hash, key = studies.get(cid, (None, None, None))
        persons, entries = counts.get(cid, (0, 0))
        out.append(StoredCohort(cid, name, study, package_hash, key, h, persons, entries))
    return out


def delete_cohorts(cdm: Cdm, ids: list[int]) -> list[int]:
    """Delete these cohorts: their rows, definitions, generation statistics and study records, all or
    nothing. Every id must be a cohort of this CDM."""
    wanted = sorted(set(ids))
    known = {c.cohort_id for c in list_cohorts(cdm)}
    unknown = [i for i in wanted if i not in known]
    if unknown:
        shown = ", ".join(map(str, unknown))
        raise CohortDefinitionError(
            f"no cohort with id {shown} in this CDM; `mercia cohort list` shows the cohorts it holds")
    if not wanted:
        return []
    with cdm.transaction():
        for name in ("cohort", "cohort_definition"):
            if cdm.table_exists(name):
                _delete_rows(cdm, name, wanted)
        for name in [*STATS_TABLES, TABLE]:
            if _exists(cdm, name):
                _delete_rows(cdm, name, wanted)
    return wanted


def _delete_rows(cdm: Cdm, name: str, ids: list[int]) -> None:
    table = cdm.table(name) if name in cdm.spec.tables else stats_table(cdm, name)
    cdm.delete(table, definition_ids_in(ids))  # Spark, without DELETE: the other rows kept, the table overwritten
