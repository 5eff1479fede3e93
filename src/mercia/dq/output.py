"""Write a check run: `checks.parquet` (one row per check instance) and `dq-results.json` in the shape of
DataQualityDashboard's results file (startTimestamp, endTimestamp, executionTime, executionTimeSeconds,
CheckResults, Metadata, Overview), which DQD's viewer (`DataQualityDashboard::viewDqDashboard`) opens.

These files are for the site's custodian: they stay at the site (numbers about the site's own rows, not
released through `mercia.disclosure`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from mercia.dq.runner import CheckRun

PARQUET = "checks.parquet"
JSON = "dq-results.json"
DQD_VERSION = "2.6.0"  # the DQD results format these files follow


def overview(results: pd.DataFrame) -> dict[str, Any]:
    """DQD's Overview counts (summarizeResults.R)."""
    r = results
    failed = r.failed == 1
    error = r.isError == 1
    passed = r.passed == 1
    total = len(r)
    overall_failed = int(failed.sum())
    n_passed = total - overall_failed

    def by(cat: str, mask: pd.Series | None = None) -> int:
        m = r.category == cat
        return int((m & mask).sum()) if mask is not None else int(m.sum())

    decided = n_passed + overall_failed
    return {
        "countTotal": total, "countPassed": n_passed, "countErrorFailed": int(error.sum()),
        "countThresholdFailed": int((failed & ~error).sum()), "countOverallFailed": overall_failed,
        "percentPassed": round(n_passed / decided * 100, 2) if decided else 0.0,
        "percentFailed": round(overall_failed / decided * 100, 2) if decided else 0.0,
        "countTotalPlausibility": by("Plausibility"), "countTotalConformance": by("Conformance"),
        "countTotalCompleteness": by("Completeness"),
        "countFailedPlausibility": by("Plausibility", failed), "countFailedConformance": by("Conformance", failed),
        "countFailedCompleteness": by("Completeness", failed),
        "countPassedPlausibility": by("Plausibility", passed), "countPassedConformance": by("Conformance", passed),
        "countPassedCompleteness": by("Completeness", passed),
    }


def _clean(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v


def results_json(run: CheckRun, source_name: str) -> dict[str, Any]:
    seconds = (run.end - run.start).total_seconds()
    rows = [{k: _clean(v) for k, v in row.items()} for row in run.results.to_dict(orient="records")]
    metadata = [{"cdmSourceName": source_name, "cdmSourceAbbreviation": source_name, "cdmVersion": run.cdm_version,
                 "dqdVersion": DQD_VERSION, "generator": "mercia dq check"}]
    return {
        "startTimestamp": run.start.strftime("%Y-%m-%d %H:%M:%S"),
        "endTimestamp": run.end.strftime("%Y-%m-%d %H:%M:%S"),
        "executionTime": f"{seconds:.0f} secs",
        "executionTimeSeconds": seconds,
        "CheckResults": rows,
        "Metadata": metadata,
        "Overview": overview(run.results),
    }


def write_results(run: CheckRun, out_dir: str | Path, *, source_name: str = "cdm") -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parquet = out / PARQUET
    run.results.to_parquet(parquet, index=False)
    js = out / JSON
    js.write_text(json.dumps(results_json(run, source_name), indent=1) + "\n")
    return {"parquet": parquet, "json": js}
