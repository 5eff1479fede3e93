"""Concept names for the data-quality results: looked up in the CDM's own concept table, when it has one.

The check and profile results hold concept ids (a concept-level check's concept and unit; a profile's
concept strata). `mercia dq check` and `mercia dq profile` write the names of those ids next to their
results (`concept_names.parquet`: concept_id, concept_name), read from the CDM's concept table, so the
dashboard, which reads only the folder, can show a name beside each id. A CDM without a concept table, or
a concept it does not hold, leaves the id alone (the dashboard shows the id).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from sqlglot import exp

from mercia.cdm import Cdm

NAMES = "concept_names.parquet"
_BATCH = 500  # ids per statement (bound parameters)


def _ids(values: Iterable[Any]) -> set[int]:
    out = set()
    for v in values:
        try:
            if v is not None and not pd.isna(v) and str(v).strip() != "":
                out.add(int(float(v)))
        except (TypeError, ValueError):  # a stratum that is not an id
            continue
    return out


def check_concepts(results: pd.DataFrame) -> set[int]:
    """The concept and unit ids of the concept-level checks."""
    return _ids([*results.get("conceptId", []), *results.get("unitConceptId", [])])


def profile_concepts(results: pd.DataFrame, results_dist: pd.DataFrame) -> set[int]:
    """The ids in the profile's concept strata (those the analyses name `*concept_id`)."""
    from mercia.dq.profile import ANALYSES

    out: set[int] = set()
    for a in ANALYSES:
        for i, name in enumerate(a.strata, start=1):
            if not name.endswith("concept_id"):
                continue
            for df in (results, results_dist):
                col = f"stratum_{i}"
                if len(df) and col in df.columns and "analysis_id" in df.columns:
                    out |= _ids(df.loc[df.analysis_id == a.analysis_id, col])
    return out


def concept_names(cdm: Cdm, ids: Iterable[int]) -> dict[int, str]:
    """id -> concept_name from the CDM's concept table; {} when it has none."""
    todo = sorted(set(ids))
    if not todo or not cdm.table_exists("concept"):
        return {}
    out: dict[int, str] = {}
    for start in range(0, len(todo), _BATCH):
        chunk = todo[start:start + _BATCH]
        params = {f"c{i}": v for i, v in enumerate(chunk)}
        q = (exp.select(exp.column("concept_id"), exp.column("concept_name")).from_(cdm.table("concept"))
             .where(exp.In(this=exp.column("concept_id"), expressions=[exp.Placeholder(this=k) for k in params])))
        out.update({int(c): str(n) for c, n in cdm.fetch_all(q, params) if n is not None})
    return out


def write_names(names: dict[int, str], out_dir: str | Path) -> Path | None:
    """Add `names` to the folder's concept_names.parquet (check and profile may share a folder)."""
    if not names:
        return None
    path = Path(out_dir) / NAMES
    merged = {**read_names(out_dir), **names}
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"concept_id": list(merged), "concept_name": list(merged.values())}).astype(
        {"concept_id": "int64"}).sort_values("concept_id").to_parquet(path, index=False)
    return path


def read_names(*folders: str | Path | None) -> dict[int, str]:
    out: dict[int, str] = {}
    for folder in folders:
        if folder is not None and (Path(folder) / NAMES).is_file():
            df = pd.read_parquet(Path(folder) / NAMES)
            out.update(zip(df.concept_id.astype("int64").tolist(), df.concept_name.astype(str).tolist(), strict=True))
    return out


def label(concept_id: Any, names: dict[int, str]) -> str:
    """'name (id)' when the name is known, else the id; '' for no id."""
    ids = _ids([concept_id])
    if not ids:
        return ""
    cid = ids.pop()
    return f"{names[cid]} ({cid})" if cid in names else str(cid)
