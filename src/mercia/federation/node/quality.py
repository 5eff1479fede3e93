"""A node's data-quality summary: the site's DQD-style checks and Achilles-style monthly trends, released.

A check run reads every table of the CDM (minutes on a large one), so the node does not run it per
request: the custodian or an admin starts a run (`POST /quality/run`, or `quality_at_start: true` in
node.yaml runs one when the node starts and holds none), the node releases its summary once and keeps
it (`state_dir/quality/summary.json`), and every `GET /quality` is answered from that stored summary,
the same bytes for every asker until the next run. The data do not change between two answers, so
asking again, or asking in another project, learns nothing new.

What the summary releases, all through `mercia.disclosure.release` under the site's policy:
- table- and field-level checks (`checks`): each check's status (pass, fail, not_applicable, error,
  from DQD's evaluation at the site) and its violated and denominator rows, both only where both pass
  the policy's small-count rules (suppressed and rounded by `release`, then both withheld if either was
  suppressed: a numerator of 3 violated rows is a small count about persons' records);
- concept-level checks (`concept_checks`): a row only where its denominator (records of the concept)
  is released (`data_levels`: whether a concept appears at all depends on counts above the threshold
  only), with the same rule for its numbers;
- trends (`trends`): records per calendar month per domain (Achilles analyses 220, 420, 620, 720, 820,
  1820), a month shown only where its count is released.
`pctViolatedRows` and the overview (pass rates per category) are computed from released values only.
Error messages, query text and the exact counts stay at the site (`mercia dq check` writes them there).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import pandas as pd
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.disclosure import DisclosureLog, DisclosurePolicy, ReleasedTable, ResultTable, release
from mercia.dq import run_checks
from mercia.dq.profile import Analysis, _grouped, _month, run_profile

__all__ = ["CATEGORIES", "TRENDS", "QualityStore", "overview", "released_quality"]

logger = logging.getLogger("mercia.node")

CATEGORIES = ("Conformance", "Completeness", "Plausibility")
# Achilles's "number of records by start month" per domain: (analysis id, domain, table, start field)
TRENDS = ((220, "visit", "visit_occurrence", "visit_start_date"),
          (420, "condition", "condition_occurrence", "condition_start_date"),
          (620, "procedure", "procedure_occurrence", "procedure_date"),
          (720, "drug", "drug_exposure", "drug_exposure_start_date"),
          (820, "observation", "observation", "observation_date"),
          (1820, "measurement", "measurement", "measurement_date"))
_LABELS = ["checkId", "checkName", "category", "subcategory", "context", "cdmTableName", "cdmFieldName",
           "conceptId", "unitConceptId", "status"]
_NUMBERS = ["numViolatedRows", "numDenominatorRows"]


def _status(r: pd.DataFrame) -> pd.Series:
    out = pd.Series("pass", index=r.index, dtype="object")
    out[r["failed"] == 1] = "fail"
    out[r["notApplicable"] == 1] = "not_applicable"
    out[r["isError"] == 1] = "error"
    return out


def _check_table(results: pd.DataFrame, name: str, concept: bool) -> ResultTable:
    r = results[(results["checkLevel"] == "CONCEPT") == concept].copy()
    r["status"] = _status(r)
    data = r[_LABELS].astype("object").where(r[_LABELS].notna(), "").astype(str)
    for c in _NUMBERS:
        data[c] = pd.to_numeric(r[c]).fillna(0).astype("int64").to_numpy()
    # Concept rows exist only where their denominator is released; table and field rows are fixed by the
    # catalogue and the CDM's version, before any data are read.
    return ResultTable(name=name, kind="counts", dimensions=_LABELS, count_columns=_NUMBERS, data=data,
                       data_levels=["conceptId"] if concept else [],
                       presence_counts=["numDenominatorRows"] if concept else None)


def _both_or_neither(table: ReleasedTable) -> dict[str, Any]:
    """The released table as JSON rows (labels, numerator, denominator, percentage), with numerator and
    denominator withheld together and the percentage recomputed from the released pair."""
    d = table.to_dict()
    at = {c: k for k, c in enumerate(d["columns"])}
    rows = []
    for row in d["rows"]:
        num, den = row[at["numViolatedRows"]], row[at["numDenominatorRows"]]
        if num is None or den is None:
            num = den = None
        rows.append([*(row[at[c]] for c in _LABELS), num, den, None if num is None or not den else round(num / den, 6)])
    return {**d, "columns": [*_LABELS, *_NUMBERS, "pctViolatedRows"], "rows": rows}


def _named(cdm: Cdm, table: dict[str, Any]) -> dict[str, Any]:
    """The released concept rows with the names of their concept and unit from the site's concept table
    (labels from the vocabulary, added after release: no number changes); '' where the site has none."""
    from mercia.dq.names import concept_names

    at = {c: k for k, c in enumerate(table["columns"])}
    ids = {v for r in table["rows"] for v in (r[at["conceptId"]], r[at["unitConceptId"]]) if str(v).isdigit()}
    names = concept_names(cdm, {int(v) for v in ids})

    def name(v: Any) -> str:
        return names.get(int(v), "") if str(v).isdigit() else ""

    rows = [[*r, name(r[at["conceptId"]]), name(r[at["unitConceptId"]])] for r in table["rows"]]
    return {**table, "columns": [*table["columns"], "conceptName", "unitName"], "rows": rows}


def _trend_table(cdm: Cdm) -> ResultTable:
    todo = [Analysis(aid, f"Number of {table} records by start month", table, _grouped(table, [_month(col)],
                     exp.Count(this=exp.Star())), strata=("calendar month",)) for aid, _, table, col in TRENDS]
    prof = run_profile(cdm, analyses=todo)
    domain = {aid: d for aid, d, _, _ in TRENDS}
    res = prof.results
    if res.empty:
        data = pd.DataFrame({"domain": pd.Series([], dtype=str), "month": pd.Series([], dtype=str),
                             "records": pd.Series([], dtype="int64")})
    else:
        res = res[res["stratum_1"].notna()]
        ym = res["stratum_1"].astype(int)
        data = pd.DataFrame({"domain": res["analysis_id"].map(domain).to_numpy(),
                             "month": [f"{v // 100:04d}-{v % 100:02d}" for v in ym],
                             "records": res["count_value"].astype("int64").to_numpy()})
        data = data.sort_values(["domain", "month"], kind="stable").reset_index(drop=True)
    return ResultTable(name="dq_trends", kind="counts", dimensions=["domain", "month"], count_columns=["records"],
                       data=data, data_levels=["month"])


def overview(checks: dict[str, Any]) -> dict[str, Any]:
    """Counts of released checks by status, overall and per category, and the pass rate: passed checks
    over those that were evaluated (passed, failed or in error; not-applicable ones left out), in
    percent. Built from the released rows only."""
    cols = checks["columns"]
    ci, si = cols.index("category"), cols.index("status")

    def count(rows: list[list[Any]]) -> dict[str, Any]:
        n = {s: sum(r[si] == s for r in rows) for s in ("pass", "fail", "not_applicable", "error")}
        decided = n["pass"] + n["fail"] + n["error"]
        return {"checks": len(rows), "passed": n["pass"], "failed": n["fail"], "not_applicable": n["not_applicable"],
                "errors": n["error"], "pass_rate": round(100 * n["pass"] / decided, 2) if decided else None}

    rows = checks["rows"]
    return {"overall": count(rows), **{c: count([r for r in rows if r[ci] == c]) for c in CATEGORIES}}


def released_quality(cdm: Cdm, policy: DisclosurePolicy, *, site: str, today: dt.date | None = None,
                     progress: Any = None) -> dict[str, Any]:
    """Run the checks and the trends on the CDM and release the summary under `policy`."""
    run = run_checks(cdm, today=today, progress=progress)
    log = DisclosureLog()
    checks = _both_or_neither(release(_check_table(run.results, "dq_checks", False), policy, site=site, log=log))
    concepts = _named(cdm, _both_or_neither(release(_check_table(run.results, "dq_concept_checks", True), policy,
                                                    site=site, log=log)))
    trends = release(_trend_table(cdm), policy, site=site, log=log).to_dict()
    width = len(checks["columns"])  # the concept rows' names come after the columns both share
    both = {"columns": checks["columns"], "rows": checks["rows"] + [r[:width] for r in concepts["rows"]]}
    return {
        "site": site,
        "run_date": run.end.date().isoformat(),
        "cdm_version": run.cdm_version,
        "policy": policy.rule_summary(),
        "overview": overview(both),
        "checks": checks,
        "concept_checks": concepts,
        "trends": trends,
        # What was rounded, suppressed and dropped, per table (the per-cell entries stay at the site).
        "disclosure": {"summary": json.loads(log.to_json(public=True))["summary"]},
        "policy_key": policy_key(policy),  # kept in the store, never answered (QualityStore.summary)
    }


def policy_key(policy: DisclosurePolicy) -> str:
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()


class QualityStore:
    """The stored released summary and the one run that may be going on."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / "quality"
        self.path = self.folder / "summary.json"
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None
        self.last_error: str | None = None

    def summary(self, policy: DisclosurePolicy) -> dict[str, Any] | None:
        """The stored summary if it was released under `policy` (the site's policy now): one released
        under another (say, before node.yaml was made stricter) is not answered; run again."""
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if stored.pop("policy_key", None) != policy_key(policy):
            return None
        return stored

    @property
    def running(self) -> bool:
        return self._running is not None and self._running.is_alive()

    def save(self, summary: dict[str, Any]) -> None:
        """Replace the stored summary (atomically: a reader sees the old one or the new one)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(summary, f)
        os.replace(tmp, self.path)

    def start(self, compute: Any, on_done: Any) -> bool:
        """Start a run in the background unless one is going on; True if this call started it."""
        with self._lock:
            if self.running:
                return False

            def work() -> None:
                try:
                    summary = compute()
                    self.save(summary)
                    self.last_error = None
                    on_done(summary, None)
                except Exception as e:  # kept at the site: the log and the audit, never an answer
                    logger.exception("data-quality run failed")
                    self.last_error = type(e).__name__
                    on_done(None, type(e).__name__)

            self._running = threading.Thread(target=work, name="mercia-quality", daemon=True)
            self._running.start()
            return True

    def wait(self, timeout: float | None = None) -> None:
        t = self._running
        if t is not None:
            t.join(timeout)
