"""Schema round trip on every engine: the DDL from the spec gives every table with the spec's columns,
types and NOT NULLs, and a row of every table goes in and comes back unchanged."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pyarrow as pa
import pytest
from sqlglot import exp

from mercia.cdm import Cdm, FieldSpec

# information_schema.columns.data_type for each spec type, per engine (text is unbounded: see handle.py).
EXPECTED_TYPE = {
    "duckdb": {"id": "BIGINT", "integer": "INTEGER", "bigint": "BIGINT", "float": "DOUBLE", "date": "DATE",
               "datetime": "TIMESTAMP", "text": "VARCHAR"},
    "postgres": {"id": "bigint", "integer": "integer", "bigint": "bigint", "float": "double precision",
                 "date": "date", "datetime": "timestamp without time zone", "text": "character varying"},
}  # fmt: skip


def kind(f: FieldSpec) -> str:
    if f.is_id:
        return "id"
    return f.type if f.type in ("integer", "bigint", "float", "date", "datetime") else "text"


def sample(f: FieldSpec) -> object:
    return {
        "id": 123456789012,  # beyond 32 bits: ids must be BIGINT
        "integer": 7,
        "bigint": 9876543210,
        "float": 1.5,
        "date": dt.date(2020, 2, 29),
        "datetime": dt.datetime(2020, 2, 29, 13, 45, 7),
        "text": "x",  # one character fits every varchar(n)
    }[kind(f)]


def catalog(cdm: Cdm, table: str) -> dict[str, tuple[str, str]]:
    cols = exp.to_table("information_schema.columns")
    q = (
        exp.select("column_name", "data_type", "is_nullable")
        .from_(cols)
        .where(exp.column("table_schema").eq(exp.Placeholder(this="s")))
        .where(exp.column("table_name").eq(exp.Placeholder(this="t")))
    )
    return {r[0]: (r[1], r[2]) for r in cdm.fetch_all(q, {"s": cdm.schema_of(table), "t": table})}


@pytest.mark.parametrize("version", ["5.3", "5.4"])
def test_schema_round_trip(version: str, cdm_factory: Callable[..., Cdm]) -> None:
    cdm = cdm_factory(version=version)
    cdm.create_tables()
    assert cdm.version == version
    types = EXPECTED_TYPE[cdm.dialect]
    for name, spec in cdm.spec.tables.items():
        assert cdm.table_exists(name), name
        found = catalog(cdm, name)
        assert list(found) == spec.column_names, name
        for f in spec.fields:
            data_type, nullable = found[f.name]
            assert data_type.lower() == types[kind(f)].lower(), (name, f.name, data_type)
            assert nullable == ("NO" if f.required else "YES"), (name, f.name)

        row = pa.table({f.name: pa.array([sample(f)], f.arrow_type()) for f in spec.fields})
        cdm.insert_arrow(name, row)
        back = cdm.conform(name, cdm.fetch_arrow(exp.select("*").from_(cdm.table(name))))
        assert back.to_pylist() == row.to_pylist(), name


def test_opening_detects_version_from_tables(cdm_factory: Callable[..., Cdm]) -> None:
    cdm = cdm_factory(version="5.3")
    cdm.create_tables(["visit_occurrence"])
    assert Cdm(cdm.engine, cdm_schema=cdm.cdm_schema).version == "5.3"
