"""Run the catalogue's checks on a CDM: one scan per table for the checks that read only that table, one
query per check that joins another, then DQD's threshold and not-applicable rules.

Each result row has DataQualityDashboard's field names (`numViolatedRows`, `pctViolatedRows`,
`numDenominatorRows`, `thresholdValue`, `failed`, `passed`, `isError`, `notApplicable`, ...), so the same rows
are written as Parquet and as the JSON DQD's viewer reads (`mercia.dq.output`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.dq.catalogue import REQUIRED_TABLES, Check, catalogue
from mercia.dq.sql import Agg, Binder, Part, Scalar, parts
from mercia.errors import CdmError

Progress = Callable[[str, int, int], None]

# Tables a check reads besides its own, by check name.
_READS = {"fkDomain": ("concept",), "fkClass": ("concept",), "isStandardValidConcept": ("concept",),
          "plausibleDuringLife": ("death",), "plausibleAfterBirth": ("person",), "plausibleGender": ("person",),
          "measurePersonCompleteness": ("person",), "withinVisitDates": ("visit_occurrence",)}
NO_SQL = ("cdmTable", "cdmField")


@dataclass
class CheckRun:
    """The results of one run: one row per check instance, and when it ran."""
    results: pd.DataFrame
    start: dt.datetime
    end: dt.datetime
    cdm_version: str

    @property
    def failed(self) -> pd.DataFrame:
        return self.results[self.results["failed"] == 1]


def require_tables(cdm: Cdm) -> None:
    missing = [t for t in REQUIRED_TABLES if not cdm.table_exists(t)]
    if missing:
        raise CdmError(f"data-quality checks need the CDM table(s) {', '.join(missing)}, missing from schema "
                       f"{cdm.cdm_schema!r}; load them or give the schema that holds them (--cdm-schema)")


def _needs(check: Check, cdm: Cdm) -> tuple[list[str], list[tuple[str, str]]]:
    """The tables and (table, field)s a check reads."""
    tables = [check.table, *_READS.get(check.name, ())]
    if check.name == "isForeignKey":
        tables.append(check.param("fk_table"))
    fields = [] if check.field is None else [(check.table, check.field)]
    for key in ("end_field", "concept_field"):
        if check.param(key):
            fields.append((check.table, check.param(key)))
    if check.level == "CONCEPT" and check.table == "measurement":
        fields += [("measurement", "unit_concept_id"), ("measurement", "measurement_concept_id")]
    return tables, fields


def run_checks(cdm: Cdm, *, today: dt.date | None = None, progress: Progress | None = None,
               checks: list[Check] | None = None) -> CheckRun:
    """Run every check of the catalogue for the CDM's version (or `checks`) and evaluate them."""
    require_tables(cdm)
    start = dt.datetime.now(dt.UTC)
    today = today or dt.date.today()
    checks = catalogue(cdm.spec) if checks is None else checks
    columns: dict[str, set[str] | None] = {}

    def cols(table: str) -> set[str] | None:
        if table not in columns:
            found = cdm.columns(table)
            columns[table] = None if found is None else {c.lower() for c in found}
        return columns[table]

    rows: list[dict[str, Any]] = []
    bind = Binder()
    pending: list[tuple[int, Part, Part]] = []
    for check in checks:
        row = _row(check)
        rows.append(row)
        own = cols(check.table)
        if check.name == "cdmTable":
            row.update(numViolatedRows=0 if own is not None else 1, numDenominatorRows=1,
                       pctViolatedRows=0.0 if own is not None else 1.0)
            continue
        if own is None:
            row["notApplicableReason"] = f"Table {check.table.upper()} does not exist."
            continue
        if check.name == "cdmField":
            row.update(numViolatedRows=0 if check.field in own else 1, numDenominatorRows=1,
                       pctViolatedRows=0.0 if check.field in own else 1.0)
            continue
        tables, fields = _needs(check, cdm)
        absent = next((t for t in tables if cols(t) is None), None)
        if absent is not None:
            row["notApplicableReason"] = f"Table {absent.upper()} does not exist."
            continue
        gone = next(((t, f) for t, f in fields if f not in (cols(t) or set())), None)
        if gone is not None:
            row["notApplicableReason"] = f"Field {gone[0].upper()}.{gone[1].upper()} does not exist."
            continue
        num, den = parts(check, cdm, bind, today)
        pending.append((len(rows) - 1, num, den))
    _execute(cdm, checks, rows, pending, progress)
    results = evaluate(pd.DataFrame(rows))
    return CheckRun(results=results, start=start, end=dt.datetime.now(dt.UTC), cdm_version=cdm.version)


def _row(check: Check) -> dict[str, Any]:
    t = check.type
    return {
        "checkId": check.check_id, "checkName": check.name, "checkLevel": check.level,
        "checkDescription": check.description(), "cdmTableName": check.table.upper(),
        "cdmFieldName": None if check.field is None else check.field.upper(),
        "conceptId": None if check.concept_id is None else str(check.concept_id),
        "unitConceptId": None if check.unit_concept_id is None else str(check.unit_concept_id),
        "category": t.category, "subcategory": t.subcategory, "context": t.context, "severity": t.severity,
        "thresholdValue": float(check.threshold), "numViolatedRows": None, "pctViolatedRows": None,
        "numDenominatorRows": None, "executionTime": None, "queryText": None, "warning": None, "error": None,
        "notApplicableReason": None, "notesValue": None,
    }


def _execute(cdm: Cdm, checks: list[Check], rows: list[dict[str, Any]], pending: list[tuple[int, Part, Part]],
             progress: Progress | None) -> None:
    """Fill numerators and denominators: the aggregates of each table in one statement, each scalar alone."""
    aggs: dict[str, list[Agg]] = {}
    for i, num, den in pending:
        for p in (num, den):
            if isinstance(p, Agg):
                aggs.setdefault(checks[i].table, []).append(p)
    values: dict[int, Any] = {}  # id(part) -> value or exception
    total = len(aggs) + sum(isinstance(p, Scalar) for _, n, d in pending for p in (n, d))
    done = 0
    step = "data-quality checks"
    times: dict[int, float] = {}
    for table, parts_ in aggs.items():
        t0 = time.perf_counter()
        _run_aggregates(cdm, table, parts_, values)
        for p in parts_:
            times[id(p)] = (time.perf_counter() - t0) / len(parts_)
        done += 1
        if progress:
            progress(step, done, total)
    # Scalars whose answer the aggregates already give, exactly, are not run: every violation these
    # checks count needs a value in the checked field, so a table without rows or a field without values
    # has none (0), as has a check whose aggregate denominator is 0 (the violations are among those rows).
    # Identical queries (the same denominator for every date field of a table) run once.
    nulls = _field_nulls(checks, pending, values)
    cache: dict[tuple[str, str], Any] = {}
    for i, num, den in pending:
        check = checks[i]
        for p in (num, den):
            if not isinstance(p, Scalar):
                continue
            t0 = time.perf_counter()
            if p is num and _surely_none(check, den, nulls, values):
                values[id(p)] = 0
            else:
                key = (cdm.render(p.select), repr(sorted(p.params.items())))
                if key not in cache:
                    try:
                        cache[key] = _int(cdm.scalar(p.select, p.params or None))
                    except Exception as e:  # a check whose SQL fails is reported, as DQD does, not fatal
                        cache[key] = e
                values[id(p)] = cache[key]
            times[id(p)] = time.perf_counter() - t0
            done += 1
            if progress:
                progress(step, done, total)
    for i, num, den in pending:
        row = rows[i]
        n, d = values[id(num)], values[id(den)]
        row["executionTime"] = f"{times[id(num)] + times[id(den)]:.4f} secs"
        row["queryText"] = _text(cdm, num)
        err = next((v for v in (n, d) if isinstance(v, Exception)), None)
        if err is not None:
            row["error"] = _message(err)
            continue
        row["numViolatedRows"], row["numDenominatorRows"] = n, d
        row["pctViolatedRows"] = 0.0 if d == 0 else n / d


# Checks whose violations all have a value in the checked field (a NULL never violates them).
_NEEDS_VALUE = {"isForeignKey", "fkDomain", "fkClass", "isStandardValidConcept", "sourceValueCompleteness",
                "plausibleDuringLife", "plausibleAfterBirth", "withinVisitDates", "plausibleGender"}


def _field_nulls(checks: list[Check], pending: list[tuple[int, Part, Part]],
                 values: dict[int, Any]) -> dict[tuple[str, str], tuple[Any, Any]]:
    """(NULLs, rows) of each field, from its measureValueCompleteness aggregates."""
    out = {}
    for i, num, den in pending:
        if checks[i].name == "measureValueCompleteness":
            out[(checks[i].table, checks[i].field)] = (values.get(id(num)), values.get(id(den)))
    return out


def _surely_none(check: Check, den: Part, nulls: dict[tuple[str, str], tuple[Any, Any]],
                 values: dict[int, Any]) -> bool:
    if check.name not in _NEEDS_VALUE:
        return False
    if isinstance(den, Agg) and values.get(id(den)) == 0:
        return True
    n, rows = nulls.get((check.table, check.field or ""), (None, None))
    return isinstance(n, int) and isinstance(rows, int) and n == rows


def _run_aggregates(cdm: Cdm, table: str, parts_: list[Agg], values: dict[int, Any]) -> None:
    # Identical aggregates are computed once: those without parameters (COUNT(*), a field's non-NULL
    # count), and those equal once their parameters' values are put in (the denominator of a concept's
    # low and high value checks).
    unique: dict[str, int] = {}
    exprs: list[exp.Expression] = []
    params: dict[str, Any] = {}
    slot: dict[int, int] = {}
    for p in parts_:
        key = p.expr.sql() if not p.params else _valued(p)
        if key not in unique:
            unique[key] = len(exprs)
            exprs.append(p.expr.copy().as_(f"a{len(exprs)}"))
            params.update(p.params)
        slot[id(p)] = unique[key]
    select = exp.select(*exprs).from_(cdm.table(table, alias="t"))
    try:
        got = cdm.fetch_all(select, params or None)[0]
        for p in parts_:
            values[id(p)] = _int(got[slot[id(p)]])
    except Exception:
        # Find which aggregates fail: each alone.
        for p in parts_:
            try:
                values[id(p)] = _int(cdm.scalar(exp.select(p.expr.copy()).from_(cdm.table(table, alias="t")),
                                                p.params or None))
            except Exception as e:
                values[id(p)] = e


def _valued(p: Agg) -> str:
    """The aggregate's SQL with each parameter's value in place of its name: equal for equal aggregates."""
    def put(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Placeholder) and node.name in p.params:
            return exp.Literal.string(repr(p.params[node.name]))
        return node
    return "$" + p.expr.transform(put).sql()


def _int(v: Any) -> int:
    return 0 if v is None else int(v)


def _text(cdm: Cdm, part: Part) -> str:
    if isinstance(part, Scalar):
        return cdm.render(part.select)
    return cdm.render(part.expr)


def _message(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:500]


def evaluate(results: pd.DataFrame) -> pd.DataFrame:
    """DQD's evaluation: failed by threshold (any violation for a threshold of 0), errors apart, then the
    not-applicable rules (missing or empty table, missing or empty field, concept not present)."""
    r = results.copy()
    num = pd.to_numeric(r["numViolatedRows"])
    pct = pd.to_numeric(r["pctViolatedRows"])
    th = r["thresholdValue"].astype(float)
    is_error = r["error"].notna()
    failed = (~is_error) & num.notna() & (((th == 0) & (num > 0)) | ((th > 0) & (pct * 100 > th)))
    # cdmTable/cdmField fail for a missing table or field (DQD treats that error as a failure).
    r["isError"] = is_error.astype(int)
    r["failed"] = failed.astype(int)

    table_missing = set(r.loc[(r.checkName == "cdmTable") & (r.failed == 1), "cdmTableName"])
    field_missing = set(zip(*[r.loc[(r.checkName == "cdmField") & (r.failed == 1), c]
                              for c in ("cdmTableName", "cdmFieldName")], strict=True))
    mvc = r[r.checkName == "measureValueCompleteness"]
    table_empty = set(mvc.loc[mvc.numDenominatorRows == 0, "cdmTableName"])
    field_empty = set(zip(mvc.loc[mvc.numDenominatorRows == mvc.numViolatedRows, "cdmTableName"],
                          mvc.loc[mvc.numDenominatorRows == mvc.numViolatedRows, "cdmFieldName"], strict=True))

    na = []
    reasons = []
    for row in r.itertuples(index=False):
        reason = row.notApplicableReason
        name, table, fld = row.checkName, row.cdmTableName, row.cdmFieldName
        if name == "cdmTable":
            reason = None
        elif table in table_missing:
            reason = reason or f"Table {table} does not exist."
        elif name == "measurePersonCompleteness":
            reason = reason if isinstance(reason, str) else None
        elif name == "cdmField":
            reason = None
        elif (table, fld) in field_missing:
            reason = f"Field {table}.{fld} does not exist."
        elif row.isError == 1:
            reason = None
        elif table in table_empty:
            reason = f"Table {table} is empty."
        elif name == "measureValueCompleteness":
            reason = None
        elif (table, fld) in field_empty:
            reason = f"Field {table}.{fld} is not populated."
        elif row.checkLevel == "CONCEPT" and row.numDenominatorRows == 0:
            reason = (f"{fld}={row.conceptId} is missing from the {table} table." if row.unitConceptId is None else
                      f"Combination of {fld}={row.conceptId}, unitConceptId={row.unitConceptId} and "
                      f"VALUE_AS_NUMBER IS NOT NULL is missing from the {table} table.")
        elif not isinstance(reason, str):
            reason = None
        na.append(int(reason is not None))
        reasons.append(reason)
    r["notApplicable"] = na
    r["notApplicableReason"] = reasons
    r.loc[r.notApplicable == 1, "failed"] = 0
    r["passed"] = ((r.failed == 0) & (r.isError == 0) & (r.notApplicable == 0)).astype(int)
    for c in ("numViolatedRows", "numDenominatorRows"):
        r[c] = pd.array(r[c], dtype="Int64")
    r["pctViolatedRows"] = pd.to_numeric(r["pctViolatedRows"]).astype(float)
    return r
