"""A CDM's empty tables exist on Spark over a folder as they do on DuckDB: `cdm load --cdm spark:FOLDER` and
`cdm export` leave no Parquet file for a table of no rows, and a later process opening `spark:FOLDER` finds
the table all the same (an empty Parquet file with the specification's columns is written and registered).

Marker spark (MERCIA_TEST_SPARK=1). One Spark session for the module (the session fixture); a "fresh
process" is modelled by opening the folder under database names this session has not seen, so that only
the folder's files say which tables there are."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pytest
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cdm.export import export_parquet
from mercia.cdm.load import load_target
from mercia.synth import DEFAULT_SITES, generate_site

pytestmark = pytest.mark.spark
PERSONS = 40


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic CDM, exported from DuckDB: `procedure_occurrence` has no rows, so no file."""
    out = tmp_path_factory.mktemp("spark-empty") / "parquet"
    with Cdm.open() as cdm:
        generate_site(cdm, persons=PERSONS, seed=3, profile=DEFAULT_SITES[0])
        assert cdm.row_count("procedure_occurrence") == 0
        export_parquet(cdm, out)
    assert not (out / "procedure_occurrence.parquet").exists()
    return out


def _check_empty_procedures(folder: Path, schema: str) -> None:
    with Cdm.open(f"spark:{folder}", cdm_schema=schema, results_schema=f"{schema}_results") as cdm:
        spec = cdm.spec.table("procedure_occurrence")
        assert cdm.table_exists("procedure_occurrence")
        assert cdm.columns("procedure_occurrence") == spec.column_names
        assert cdm.row_count("procedure_occurrence") == 0
        # A join on it works: every person is without a procedure.
        p, po = cdm.table("person", "p"), cdm.table("procedure_occurrence", "po")
        q = (exp.select(exp.Count(this=exp.Star())).from_(p)
             .join(po, on=exp.column("person_id", "p").eq(exp.column("person_id", "po")), join_type="left")
             .where(exp.column("procedure_occurrence_id", "po").is_(exp.null())))
        assert int(cdm.scalar(q)) == PERSONS
        types = dict(zip(cdm.columns("procedure_occurrence") or [],
                         [f.dataType.simpleString() for f in
                          cdm.engine.spark.table(f"{schema}.procedure_occurrence").schema.fields], strict=True))  # type: ignore[attr-defined]
        assert types["procedure_occurrence_id"] == "bigint" and types["procedure_date"] == "date"
    # Readable by another tool: the folder now holds the empty table's columns in a Parquet file.
    found = [e for e in (folder / "procedure_occurrence.parquet", folder / "procedure_occurrence") if e.exists()]
    assert len(found) == 1
    table = ds.dataset(found[0], format="parquet").to_table()
    assert table.num_rows == 0 and table.column_names == spec.column_names


def test_an_exported_folder_opened_as_spark_has_its_empty_tables(spark: object, exported: Path,
                                                                 tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "cdm"
    shutil.copytree(exported, folder)
    _check_empty_procedures(folder, "empty_export")


def test_a_spark_folder_loaded_with_an_empty_table_has_it_in_the_next_process(spark: object, exported: Path,
                                                                             tmp_path: Path) -> None:
    folder = tmp_path / "cdm"
    load_target(f"spark:{folder}", exported, cdm_schema="empty_load", results_schema="empty_load_results")
    assert not any((folder / "procedure_occurrence").rglob("*.parquet"))  # the load wrote no file for it
    _check_empty_procedures(folder, "empty_load_again")
