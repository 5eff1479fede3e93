"""docs/how-to/use-from-python.md runs as written: its ```python blocks, in order, in one namespace,
in a fresh folder; a block followed by a ```text block prints exactly that text."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mercia.disclosure import ReleasedTable, ResultTable

DOC = Path(__file__).resolve().parents[1] / "docs" / "how-to" / "use-from-python.md"
_BLOCK = re.compile(r"```python\n(.*?)```\n(?:```text\n(.*?)```)?", re.S)


def blocks(text: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]


def test_the_extractor_finds_every_block() -> None:
    text = DOC.read_text()
    assert len(blocks(text)) == text.count("```python") >= 6


def test_the_python_how_to_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ns: dict[str, object] = {"__name__": "__howto__"}
    for i, (code, expected) in enumerate(blocks(DOC.read_text())):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"use-from-python.md block {i + 1}", "exec"), ns)
        if expected is not None:
            assert out.getvalue() == expected, f"block {i + 1} prints something else than the doc shows"

    # Local results are exact ResultTables; released ones passed the door and are rounded to 5.
    assert isinstance(ns["rates"].tables["incidence"], ResultTable)  # type: ignore[attr-defined]
    local = ns["local"]
    assert isinstance(local, pd.DataFrame) and (local["n_events"] > 0).any()
    df, arrow = ns["df"], ns["arrow"]
    assert isinstance(df, pd.DataFrame) and isinstance(arrow, pa.Table)
    assert arrow.num_rows == len(df) and arrow.column_names == list(df.columns)
    assert all(isinstance(t, ReleasedTable) for t in ns["released"].values())  # type: ignore[attr-defined]
    for col in ("n_persons", "n_events"):
        shown = df[col].dropna().astype(int)
        assert (shown % 5 == 0).all(), f"released {col} not rounded to 5: {list(shown)}"
    # Suppression happened where the exact count is small, and nowhere else.
    exact = local.set_index("age_group")["n_events"]
    for _, row in df[df["age_group"] != "Total"].iterrows():
        assert pd.isna(row["n_events"]) == (1 <= exact[row["age_group"]] <= 7)
    # The released rate is the released events over the released person-time.
    ok = df.dropna(subset=["n_events", "person_years"])
    ok = ok[ok["person_years"] > 0]
    assert (abs(ok["incidence_per_1000py"] - 1000 * ok["n_events"] / ok["person_years"]) < 1e-9).all()
    # What was written for sending is the released curve.
    assert pq.read_table(tmp_path / "km.parquet").equals(ns["curves"])  # type: ignore[arg-type]
    run = ns["run"]
    assert all(isinstance(t, ReleasedTable) for t in run.tables.values())  # type: ignore[attr-defined]
    assert run.report_path.is_file() and len(run.package_hash) == 64  # type: ignore[attr-defined]
