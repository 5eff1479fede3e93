"""Where the outside test data (../shared/data: OHDSI's Eunomia sample, cohort definitions) is.

CI lays shared/ beside the clone; a developer checkout has it at /work/shared. MERCIA_SHARED_DATA overrides.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _find() -> Path:
    candidates = [REPO.parent / "shared" / "data", Path("/work/shared/data")]
    if os.environ.get("MERCIA_SHARED_DATA"):
        candidates.insert(0, Path(os.environ["MERCIA_SHARED_DATA"]))
    for cand in candidates:
        if cand.is_dir():
            return cand
    return candidates[0]


SHARED_DATA = _find()
EUNOMIA = SHARED_DATA / "eunomia_gibleed"
COHORTS = SHARED_DATA / "cohorts"
