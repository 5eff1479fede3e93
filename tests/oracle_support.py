"""Test-side access to the Circe oracle: OHDSI's own cohort SQL, run on a DuckDB CDM.

Runs in Mercia's MAIN venv and never imports circe: the oracle lives in its own venv (ohdsi-circepy
pins sqlglot < 30.18 and pulls ibis), made by tools/circe_oracle/setup.sh, and is called here in a
long-lived subprocess running tools/circe_oracle/run_circe.py --serve.

    from oracle_support import circe_available, eunomia_duckdb, run_circe

    cdm = eunomia_duckdb(tmp_path)
    res = run_circe(cdm, Path(".../3.json"), cohort_id=3)
    res.persons, res.entries, res.rows, res.inclusion_stats

The oracle python is $MERCIA_CIRCE_PYTHON if set, else <repo>/.venv-oracle/bin/python.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_CIRCE = REPO_ROOT / "tools" / "circe_oracle" / "run_circe.py"
SETUP_SH = REPO_ROOT / "tools" / "circe_oracle" / "setup.sh"


from shared_data import SHARED_DATA  # noqa: E402  (one locator for ../shared/data)

EUNOMIA_DIR = SHARED_DATA / "eunomia_gibleed"
COHORTS_DIR = SHARED_DATA / "cohorts"


def circe_python() -> Path:
    env = os.environ.get("MERCIA_CIRCE_PYTHON")
    if env:
        return Path(env)
    return REPO_ROOT / ".venv-oracle" / "bin" / "python"


def circe_available() -> bool:
    """True when the oracle venv's python exists (set it up with tools/circe_oracle/setup.sh)."""
    py = circe_python()
    return py.is_file() and os.access(py, os.X_OK)


CIRCE_UNAVAILABLE_REASON = (
    f"Circe oracle venv not found ({circe_python()}); run `bash tools/circe_oracle/setup.sh` "
    "or set MERCIA_CIRCE_PYTHON to a python with ohdsi-circepy and duckdb==2.0.1"
)


@dataclass(frozen=True)
class OracleResult:
    """What OHDSI's Circe SQL produced for one cohort definition."""

    cohort_id: int
    rows: pa.Table  # subject_id, cohort_start_date, cohort_end_date; sorted by all three
    persons: int
    entries: int
    # One dict per (mode_id, rule_sequence): rule_sequence, person_count, gain_count, person_total, mode_id.
    inclusion_stats: list[dict[str, Any]]
    # One dict per (mode_id, mask): inclusion_rule_mask, person_count, mode_id.
    inclusion_result: list[dict[str, Any]]
    seconds: float  # wall time of the Circe SQL alone (not rendering, not process start)
    summary_stats: list[dict[str, Any]] = field(default_factory=list)
    censor_stats: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)  # the whole JSON run_circe.py wrote

    def stats_by_mode(self, mode_id: int) -> list[tuple[int, int, int, int]]:
        """(rule_sequence, person_count, gain_count, person_total) for one mode, in rule order."""
        return [
            (s["rule_sequence"], s["person_count"], s["gain_count"], s["person_total"])
            for s in self.inclusion_stats
            if s["mode_id"] == mode_id
        ]

    def masks_by_mode(self, mode_id: int) -> dict[int, int]:
        return {
            r["inclusion_rule_mask"]: r["person_count"]
            for r in self.inclusion_result
            if r["mode_id"] == mode_id
        }


class OracleError(RuntimeError):
    pass


class OracleServer:
    """One long-lived ``run_circe.py --serve`` process: importing circe costs 5-10 s, so a test
    session starts it once (``server()``) and sends it one definition at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [str(circe_python()), str(RUN_CIRCE), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        self.lock = threading.Lock()

    def call(self, argv: list[str], timeout: float = 600) -> dict[str, Any]:
        """run_circe.py's main(argv) in the server: {"rc": 0, "stdout": ...} or {"rc": n, "error": ...}."""
        with self.lock:
            assert self.proc.stdin and self.proc.stdout
            # A run that hangs is killed (and the reply is then empty) rather than stalling the session.
            watchdog = threading.Timer(timeout, self.proc.kill)
            watchdog.start()
            try:
                self.proc.stdin.write(json.dumps(argv) + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            finally:
                watchdog.cancel()
        if not line:
            raise OracleError(f"the Circe oracle process died (or ran longer than {timeout:.0f} s) on {argv}")
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_SERVER: OracleServer | None = None


def server() -> OracleServer:
    """The session's oracle process, started on first use (and again if it died), closed at exit."""
    global _SERVER
    if not circe_available():
        raise OracleError(CIRCE_UNAVAILABLE_REASON)
    if _SERVER is None or not _SERVER.alive():
        _SERVER = OracleServer()
        atexit.register(_SERVER.close)
    return _SERVER


def run_circe(
    cdm_path: Path,
    json_path: Path,
    cohort_id: int,
    results_schema: str = "circe",
    *,
    cdm_schema: str = "main",
    vocab_schema: str = "main",
    out_dir: Path | None = None,
    timeout: float = 600,
) -> OracleResult:
    """Run OHDSI's Circe SQL for one definition on a DuckDB CDM file, in the oracle venv.

    The DuckDB file must not be open for writing in this process (DuckDB allows one writer process).
    Only `results_schema` of the file is written to; the CDM tables are checked unchanged. Runs in the
    session's one oracle process (``server()``), which opens and closes the file for each call.
    """
    if not circe_available():
        raise OracleError(CIRCE_UNAVAILABLE_REASON)
    with tempfile.TemporaryDirectory(prefix="circe-oracle-") as tmp:
        out = (out_dir or Path(tmp)) / f"circe_{results_schema}_{cohort_id}.parquet"
        argv = [
            "--cdm", str(cdm_path),
            "--cdm-schema", cdm_schema,
            "--vocab-schema", vocab_schema,
            "--results-schema", results_schema,
            "--json", str(json_path),
            "--cohort-id", str(cohort_id),
            "--out", str(out),
        ]  # fmt: skip
        reply = server().call(argv, timeout=timeout)
        if reply["rc"] != 0:
            raise OracleError(
                f"run_circe.py failed ({reply['rc']}) for {json_path} on {cdm_path}:\n"
                f"{reply.get('error', '')[-4000:]}\n{reply.get('stdout', '')[-2000:]}"
            )
        report = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
        # read_table memory-maps nothing here, but read it fully before the temp dir goes away.
        rows = pq.read_table(out).combine_chunks()
    return OracleResult(
        cohort_id=cohort_id,
        rows=rows,
        persons=int(report["persons"]),
        entries=int(report["entries"]),
        inclusion_stats=report["inclusion_stats"],
        inclusion_result=report["inclusion_result"],
        seconds=float(report["seconds"]),
        summary_stats=report.get("summary_stats", []),
        censor_stats=report.get("censor_stats", []),
        report=report,
    )


def eunomia_duckdb(tmp_path: Path, name: str = "eunomia.duckdb") -> Path:
    """Build a DuckDB CDM from the Eunomia GiBleed Parquet files, with plain duckdb.

    Deliberately independent of Mercia's own loader, so a loader bug cannot hide in both the oracle's
    input and Mercia's. Tables land in schema main, one per Parquet file, with the files' column types.
    """
    import duckdb

    files = sorted(EUNOMIA_DIR.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Eunomia Parquet files in {EUNOMIA_DIR}")
    db = Path(tmp_path) / name
    con = duckdb.connect(str(db))
    try:
        for f in files:
            con.execute(f'CREATE OR REPLACE TABLE main."{f.stem}" AS SELECT * FROM read_parquet(?)', [str(f)])
    finally:
        # Close before returning: the oracle subprocess needs to open the file for writing.
        con.close()
    return db
