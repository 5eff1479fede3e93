"""The OMOP CDM table specifications as data: one source of truth for DDL, loaders and checks.

The JSON files beside this module are generated from OHDSI's official CSVs by tools/build_cdm_spec.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import pyarrow as pa
from sqlglot import exp

from mercia.errors import CdmError

SUPPORTED_VERSIONS = ("5.3", "5.4")
DEFAULT_VERSION = "5.4"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str  # as in the OHDSI spec: integer, bigint, float, date, datetime, varchar(n), varchar(max)
    required: bool
    primary_key: bool
    foreign_key: tuple[str, str] | None

    @property
    def is_id(self) -> bool:
        return self.type == "integer" and self.name.endswith("_id")

    def sql_type(self) -> exp.DataType:
        """The column's type as a sqlglot DataType (dialect-neutral)."""
        t = self.type
        if t == "integer":
            # Row and concept ids overflow 32 bits at national scale; OHDSI's own DDL allows BIGINT.
            return exp.DataType.build("BIGINT" if self.is_id else "INTEGER")
        if t == "bigint":
            return exp.DataType.build("BIGINT")
        if t == "float":
            return exp.DataType.build("DOUBLE")
        if t == "date":
            return exp.DataType.build("DATE")
        if t == "datetime":
            return exp.DataType.build("TIMESTAMP")
        m = re.fullmatch(r"varchar\((\d+|max)\)", t)
        if m:
            return exp.DataType.build("VARCHAR" if m.group(1) == "max" else f"VARCHAR({m.group(1)})")
        raise CdmError(f"unknown CDM datatype {t!r} for field {self.name}")

    def arrow_type(self) -> pa.DataType:
        t = self.type
        if t == "integer":
            return pa.int64() if self.is_id else pa.int32()
        if t == "bigint":
            return pa.int64()
        if t == "float":
            return pa.float64()
        if t == "date":
            return pa.date32()
        if t == "datetime":
            return pa.timestamp("us")
        return pa.string()


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema_role: str  # CDM | VOCAB | RESULTS
    fields: tuple[FieldSpec, ...]

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise CdmError(f"table {self.name} has no column {name!r}")

    @property
    def column_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(f.name, f.arrow_type(), nullable=not f.required) for f in self.fields])


@dataclass(frozen=True)
class CdmSpec:
    version: str
    tables: dict[str, TableSpec]

    def table(self, name: str) -> TableSpec:
        key = name.lower()
        if key not in self.tables:
            raise CdmError(
                f"unknown CDM table {name!r} (CDM v{self.version} has: {', '.join(sorted(self.tables))})"
            )
        return self.tables[key]


@cache
def cdm_spec(version: str = DEFAULT_VERSION) -> CdmSpec:
    if version not in SUPPORTED_VERSIONS:
        raise CdmError(f"unsupported CDM version {version!r}; supported: {', '.join(SUPPORTED_VERSIONS)}")
    raw = json.loads(resources.files("mercia.cdm").joinpath(f"specs/cdm_v{version}.json").read_text())
    tables = {
        name: TableSpec(
            name=name,
            schema_role=t["schema"],
            fields=tuple(
                FieldSpec(
                    name=f["name"],
                    type=f["type"],
                    required=f["required"],
                    primary_key=f["pk"],
                    foreign_key=tuple(f["fk"]) if "fk" in f else None,
                )
                for f in t["fields"]
            ),
        )
        for name, t in raw["tables"].items()
    }
    return CdmSpec(version=version, tables=tables)
