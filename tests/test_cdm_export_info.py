"""Export to Parquet (and back) and the CDM summary."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from mercia.cdm import Cdm
from mercia.cdm.export import export_parquet
from mercia.cdm.info import cdm_info
from mercia.cdm.load import load_folder
from mercia.errors import CdmError


def contents(cdm: Cdm, table: str) -> pa.Table:
    """A table's rows in a canonical order, typed as the spec says."""
    data = cdm.conform(table, cdm.fetch_arrow(f"SELECT * FROM {cdm.qualified(table)}"))
    return data.sort_by([(c, "ascending") for c in data.column_names])


def test_round_trip_eunomia(eunomia_dir: Path, tmp_path: Path, cdm_factory: Callable[..., Cdm]) -> None:
    first = cdm_factory()
    loaded = load_folder(first, eunomia_dir)
    written = export_parquet(first, tmp_path / "out")
    assert written == {t: n for t, n in loaded.items() if n}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{t}.parquet" for t in written)

    second = cdm_factory()
    assert load_folder(second, tmp_path / "out") == written
    assert second.version == "5.3"
    for table in written:
        assert contents(second, table).equals(contents(first, table)), table


def test_export_refuses_non_empty_folder(tmp_path: Path, duck_cdm: Cdm) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(CdmError, match="the folder is not empty"):
        export_parquet(duck_cdm, tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CdmError, match="it is a file"):
        export_parquet(duck_cdm, tmp_path / "file")


def test_export_skips_empty_tables(tmp_path: Path, duck_cdm: Cdm) -> None:
    duck_cdm.create_tables()
    assert export_parquet(duck_cdm, tmp_path / "new" / "out") == {}
    assert list((tmp_path / "new" / "out").iterdir()) == []


def test_info_eunomia(eunomia_dir: Path, cdm_factory: Callable[..., Cdm]) -> None:
    cdm = cdm_factory()
    load_folder(cdm, eunomia_dir)
    info = cdm_info(cdm)
    assert json.loads(json.dumps(info)) == info  # JSON-serialisable as it stands
    assert info["persons"] == 2694
    assert info["cdm_version"] == "5.3"
    assert info["cdm_source_name"] == "Synthea synthetic health database"
    assert info["vocabulary_version"] == "v5.0 18-JAN-19"
    assert (info["observation_start"], info["observation_end"]) == ("1908-09-22", "2019-07-03")
    assert info["rows"]["drug_exposure"] == 67707
    assert info["rows"]["death"] == 0
    assert "episode" not in info["rows"]  # not a v5.3 table


def test_info_empty_and_fallback_vocabulary_version(duck_cdm: Cdm) -> None:
    info = cdm_info(duck_cdm)
    assert info["rows"] == {} and info["persons"] == 0 and info["observation_start"] is None
    duck_cdm.create_tables(["cdm_source"])
    duck_cdm.insert_arrow(
        "cdm_source",
        pa.table(
            {
                "cdm_source_name": ["Test"],
                "cdm_source_abbreviation": ["T"],
                "cdm_holder": ["h"],
                "source_release_date": [dt.date(2025, 1, 1)],
                "cdm_release_date": [dt.date(2025, 1, 2)],
                "cdm_version_concept_id": [756265],
                "vocabulary_version": ["v5.0 01-JAN-25"],
                "source_description": [None],
                "source_documentation_reference": [None],
            }
        ),
    )
    info = cdm_info(duck_cdm)
    assert info["vocabulary_version"] == "v5.0 01-JAN-25" and info["cdm_source_name"] == "Test"


def test_info_redacts_password() -> None:
    from mercia.cdm.engines import redact

    assert redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
