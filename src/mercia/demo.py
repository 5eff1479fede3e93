"""The demo: a three-site synthetic federation on the embedded engine, and what runs on it.

Until studies and federation land, the demo builds the sites and summarises each one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mercia.errors import ConfigError

DEMO_SITES = 3
MANIFEST = "federation.json"


def build_federation(out: Path, *, persons: int, seed: int,
                     progress: Callable[[str, int, int], None] | None = None) -> list[Path]:
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
    if out.exists() and any(p for p in out.iterdir() if p.name not in ("sites", MANIFEST)):
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


def run_demo(out: Path, *, persons: int = 30_000, seed: int = 2026,
             progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    from mercia.cdm import Cdm
    from mercia.cdm.info import cdm_info

    databases = build_federation(out, persons=persons, seed=seed, progress=progress)
    sites: dict[str, Any] = {}
    for db in databases:
        if db.suffix != ".duckdb":
            continue
        with Cdm.open(db, create=False, read_only=True) as cdm:
            sites[db.stem] = cdm_info(cdm)
    (out / "summary.json").write_text(json.dumps(sites, indent=2, default=str) + "\n")
    return {"out": str(out.resolve()), "sites": sites}
