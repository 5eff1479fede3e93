"""The Cdm handle: opening targets, bound parameters, transactions, identifiers."""

from __future__ import annotations

import pyarrow as pa
import pytest
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.errors import CdmError, ConfigError


def person_rows(ids: list[int]) -> pa.Table:
    return pa.table({
        "person_id": ids,
        "gender_concept_id": [8507] * len(ids),
        "year_of_birth": [1950 + i for i in range(len(ids))],
        "race_concept_id": [0] * len(ids),
        "ethnicity_concept_id": [0] * len(ids),
    })


def test_in_memory_cdm_has_every_spec_table():
    cdm = Cdm.open(None)
    cdm.create_tables()
    for name, spec in cdm.spec.tables.items():
        assert cdm.columns(name) == spec.column_names


def test_parameters_are_bound_not_pasted():
    cdm = Cdm.open(None)
    cdm.create_tables()
    cdm.insert_arrow("person", person_rows([1, 2]))
    hostile = "1; DROP TABLE person; --"
    q = exp.select("person_id").from_(cdm.table("person")).where(
        exp.column("person_source_value").eq(exp.Placeholder(this="v")))
    assert hostile not in cdm.render(q)
    assert cdm.fetch_all(q, {"v": hostile}) == []
    assert cdm.row_count("person") == 2


def test_transaction_rolls_back_everything():
    cdm = Cdm.open(None)
    cdm.create_tables()
    cdm.insert_arrow("person", person_rows([1]))
    with pytest.raises(RuntimeError), cdm.transaction():
        cdm.insert_arrow("person", person_rows([2, 3]))
        with cdm.transaction():  # nested joins the outer one
            cdm.insert_arrow("person", person_rows([4]))
        raise RuntimeError("boom")
    assert cdm.row_count("person") == 1


def test_conform_rejects_unknown_and_missing_columns():
    cdm = Cdm.open(None)
    with pytest.raises(CdmError, match="unknown column"):
        cdm.conform("person", person_rows([1]).append_column("shoe_size", pa.array([42])))
    with pytest.raises(CdmError, match="required column gender_concept_id"):
        cdm.conform("person", person_rows([1]).drop_columns(["gender_concept_id"]))
    with pytest.raises(CdmError, match="unknown CDM table"):
        cdm.conform("persons", person_rows([1]))


@pytest.mark.parametrize("schema", ["cdm; drop", "a.b", "x y", ""])
def test_schema_names_must_be_identifiers(schema):
    with pytest.raises(ConfigError, match="invalid"):
        Cdm.open(None, cdm_schema=schema)


def test_bad_targets(tmp_path):
    with pytest.raises(ConfigError, match="unsupported CDM target"):
        Cdm.open("mysql://x/y")
    with pytest.raises(ConfigError, match="is a folder"):
        Cdm.open(tmp_path)
    with pytest.raises(CdmError, match="file not found"):
        Cdm.open(tmp_path / "absent.duckdb", create=False)
    with pytest.raises(ConfigError, match="does not exist"):
        Cdm.open(tmp_path / "no" / "such.duckdb")
    junk = tmp_path / "junk.duckdb"
    junk.write_text("not a database")
    with pytest.raises(CdmError, match="cannot open DuckDB"):
        Cdm.open(junk)


def test_version_detection(tmp_path):
    for version in ("5.3", "5.4"):
        path = tmp_path / f"v{version}.duckdb"
        with Cdm.open(path, version=version) as cdm:
            cdm.create_tables()
        with Cdm.open(path, create=False) as cdm:
            assert cdm.version == version
