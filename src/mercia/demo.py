"""The demo: a three-site synthetic federation on the embedded engine, the demo study at every site,
and the released site estimates pooled by meta-analysis.

Everything runs in-process on DuckDB files; the node/hub services (federation issue) will carry the
same study over HTTP. Only released (disclosure-controlled) tables are read back for pooling.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mercia.errors import ConfigError

DEMO_SITES = 3
MANIFEST = "federation.json"
DEMO_POLICY = "sacro"
# The released Cox table and its exposure row that the demo pools across sites.
POOLED_TABLE, POOLED_TERM = "cox_adjusted", "treatment"

Progress = Callable[[str, int, int], None]


def build_federation(out: Path, *, persons: int, seed: int, progress: Progress | None = None) -> list[Path]:
    """The demo sites under `out/sites`, generated once per (persons, seed) and reused after.

    Generation goes to a temporary folder that is renamed into place, so an interrupted run never
    leaves a half-written federation behind.
    """
    from mercia.synth import generate_federation

    sites_dir = out / "sites"
    manifest_path = out / MANIFEST
    wanted = {"persons": persons, "seed": seed, "sites": DEMO_SITES}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("params") == wanted and all(Path(p).exists() for p in manifest["databases"]):
            return [Path(p) for p in manifest["databases"]]
    ours = {"sites", "studies", MANIFEST, "summary.json", "pooled.json"}
    if out.exists() and any(p for p in out.iterdir() if p.name not in ours and not p.name.startswith(".sites-")):
        raise ConfigError(f"{out} holds files that are not a Mercia demo; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sites-", dir=out))
    try:
        generated = generate_federation(staging / "sites", persons=persons, sites=DEMO_SITES, seed=seed,
                                        progress=progress)
        if sites_dir.exists():
            shutil.rmtree(sites_dir)
        (staging / "sites").rename(sites_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    databases = [str(sites_dir / p.relative_to(staging / "sites")) for p in generated]
    manifest_path.write_text(json.dumps({"params": wanted, "databases": databases}, indent=2) + "\n")
    return [Path(p) for p in databases]


def released_estimate(tables: dict[str, Any]) -> tuple[float, float] | None:
    """The pooled term's log hazard ratio and SE from a site's released tables, if it was released."""
    table = tables.get(POOLED_TABLE)
    if table is None:
        return None
    rows = table.data[table.data["term"] == POOLED_TERM]
    if rows.empty:
        return None
    coef, se = rows.iloc[0]["coef"], rows.iloc[0]["se"]
    try:
        coef, se = float(coef), float(se)
    except (TypeError, ValueError):  # suppressed cells are missing values
        return None
    return (coef, se) if math.isfinite(coef) and math.isfinite(se) and se > 0 else None


def run_demo(out: Path, *, persons: int = 300_000, seed: int = 2026,
             progress: Progress | None = None) -> dict[str, Any]:
    from mercia.cdm import Cdm
    from mercia.cdm.info import cdm_info
    from mercia.federation.pooling import meta_analyse
    from mercia.study import example_package, run_study

    databases = build_federation(out, persons=persons, seed=seed, progress=progress)
    studies_dir = out / "studies"
    if studies_dir.exists():  # the previous demo's outputs; a study refuses a non-empty folder
        shutil.rmtree(studies_dir)
    package = example_package()
    sites: dict[str, Any] = {}
    estimates: dict[str, tuple[float, float]] = {}
    for db in databases:
        with Cdm.open(db, create=False) as cdm:
            run = run_study(package, cdm, studies_dir / db.stem, site_policy=DEMO_POLICY, site=db.stem,
                            progress=progress)
            sites[db.stem] = {"info": cdm_info(cdm), "report": str(run.report_path.resolve())}
        estimate = released_estimate(run.tables)
        if estimate is not None:
            estimates[db.stem] = estimate
    pooled: dict[str, Any] | None = None
    if estimates:
        names = sorted(estimates)
        meta = meta_analyse([estimates[s][0] for s in names], [estimates[s][1] for s in names],
                            sites=names, ratio=True)
        pooled = {"study": package.name, "content_hash": package.content_hash, "table": POOLED_TABLE,
                  "term": POOLED_TERM, "scale": "log hazard ratio", **meta.to_dict()}
        (out / "pooled.json").write_text(json.dumps(pooled, indent=2, default=_jsonable) + "\n")
    (out / "summary.json").write_text(json.dumps(sites, indent=2, default=str) + "\n")
    return {"out": str(out.resolve()), "study": package.name, "sites": sites, "pooled": pooled,
            "site_estimates": estimates}


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
