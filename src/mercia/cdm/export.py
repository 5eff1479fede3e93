"""Export a CDM as one Parquet file per non-empty table, readable back by `load_folder`."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from sqlglot import exp

from mercia.cdm.handle import Cdm
from mercia.errors import CdmError


def export_parquet(cdm: Cdm, out_dir: str | Path) -> dict[str, int]:
    """Write `<table>.parquet` for every CDM table that exists and has rows; returns rows per file.

    The folder is created if missing and must otherwise be empty, so that an export never mixes with
    (or silently overwrites) other files. Files carry the spec's column types, so a load of the folder
    gives back the same CDM.
    """
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise CdmError(f"cannot export to {str(out)!r}: it is a file; give a folder")
        if any(out.iterdir()):
            raise CdmError(
                f"cannot export to {str(out)!r}: the folder is not empty; give a new or empty folder"
            )
    else:
        try:
            out.mkdir(parents=True)
        except OSError as e:
            raise CdmError(f"cannot create folder {str(out)!r}: {e.strerror or e}") from e
    written: dict[str, int] = {}
    for name in cdm.spec.tables:
        if not cdm.table_exists(name) or cdm.row_count(name) == 0:
            continue
        existing = set(cdm.columns(name) or [])
        spec = cdm.spec.table(name)
        cols = [exp.column(f.name, quoted=True) for f in spec.fields if f.name in existing]
        data = cdm.conform(name, cdm.fetch_arrow(exp.select(*cols).from_(cdm.table(name))))
        # Write under a temporary name and rename, so a failed export leaves no half-written table.
        tmp = out / f".{name}.parquet.partial"
        pq.write_table(data, tmp)
        tmp.rename(out / f"{name}.parquet")
        written[name] = data.num_rows
    return written
