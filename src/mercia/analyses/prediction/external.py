"""External validation as a site runs it: apply a saved model, release the results, write them.

`external_validation(model_dir, cdm, out_dir, policy=...)` is what `mercia model apply` calls. The
tables of `apply_model` pass `mercia.disclosure.release()` under the site's policy; only the released
tables are written (Parquet and JSON each), with the disclosure log (public form) and a manifest
naming the model (its manifest's sha256), the policy and the notes. Predictions never are.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mercia.analyses.prediction.model_io import MANIFEST, apply_model
from mercia.cdm import Cdm
from mercia.disclosure import BUILTIN_POLICIES, DisclosureLog, DisclosurePolicy, ReleasedTable, release
from mercia.errors import StudyError


def _policy(policy: DisclosurePolicy | str) -> DisclosurePolicy:
    if isinstance(policy, DisclosurePolicy):
        return policy
    if policy not in BUILTIN_POLICIES:
        raise StudyError(f"unknown disclosure policy {policy!r}; use one of {', '.join(sorted(BUILTIN_POLICIES))}")
    return BUILTIN_POLICIES[policy]


def _write(table: ReleasedTable, out: Path) -> None:
    data = table.data.copy()
    for c in data.columns:
        # a margin's 'Total' label sits among other labels; Parquet wants one type per column
        if data[c].dtype == object and data[c].map(type).nunique() > 1:
            data[c] = data[c].map(lambda v: None if v is None or v is pd.NA else str(v))
    pq.write_table(pa.Table.from_pandas(data, preserve_index=False), out / f"{table.name}.parquet")
    (out / f"{table.name}.json").write_text(json.dumps(table.to_dict(), indent=1, default=str) + "\n")


def external_validation(
    model_dir: str | Path,
    cdm: Cdm,
    out_dir: str | Path,
    *,
    policy: DisclosurePolicy | str = "opensafely",
    site: str | None = None,
    target_id: int | None = None,
    outcome_id: int | None = None,
    allow_missing_covariates: bool = False,
) -> dict[str, Any]:
    """Apply the model at this site and write its released validation results to a new `out_dir`;
    return the manifest written there."""
    pol = _policy(policy)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StudyError(f"output {str(out)!r} exists and is not an empty folder; choose a new folder")
    run = apply_model(
        model_dir,
        cdm,
        target_id=target_id,
        outcome_id=outcome_id,
        allow_missing_covariates=allow_missing_covariates,
    )
    log = DisclosureLog()
    released = {name: release(t, pol, site=site, log=log) for name, t in run.result.tables.items()}
    out.mkdir(parents=True, exist_ok=True)
    for t in released.values():
        _write(t, out)
    (out / "disclosure.json").write_text(log.to_json(public=True) + "\n")
    model_manifest = Path(model_dir) / MANIFEST
    manifest = {
        "model_manifest_sha256": hashlib.sha256(model_manifest.read_bytes()).hexdigest(),
        "site": site,
        "policy": pol.model_dump(mode="json"),
        "policy_summary": pol.rule_summary(),
        "tables": {n: t.status for n, t in sorted(released.items())},
        "notes": run.result.notes.to_list(),
        "run": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
