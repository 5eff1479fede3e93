"""Build the packaged CDM table specifications from OHDSI's official CSVs.

Run: python tools/build_cdm_spec.py ../shared/data/cdm_spec
Writes src/mercia/cdm/specs/cdm_v5.3.json and cdm_v5.4.json (OHDSI CommonDataModel, Apache-2.0).
Only the structural columns are kept (name, type, required, keys); the prose stays upstream.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

# The results tables are not in every release's CSV (v5.3 lacks `cohort`); they are fixed by OHDSI
# convention, so we add them where missing.
COHORT_FIELDS = [
    {"name": "cohort_definition_id", "type": "integer", "required": True, "pk": False},
    {"name": "subject_id", "type": "integer", "required": True, "pk": False},
    {"name": "cohort_start_date", "type": "date", "required": True, "pk": False},
    {"name": "cohort_end_date", "type": "date", "required": True, "pk": False},
]


def build(spec_dir: Path, version: str) -> dict:
    tables: dict[str, dict] = {}
    with open(spec_dir / f"OMOP_CDMv{version}_Table_Level.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            name = row["cdmTableName"].strip().lower()
            tables[name] = {"schema": row["schema"].strip().upper(), "fields": []}
    with open(spec_dir / f"OMOP_CDMv{version}_Field_Level.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            table = row["cdmTableName"].strip().lower()
            field = {
                "name": row["cdmFieldName"].strip().lower().strip('"'),
                "type": row["cdmDatatype"].strip().lower(),
                "required": row["isRequired"].strip().lower() == "yes",
                "pk": row["isPrimaryKey"].strip().lower() == "yes",
            }
            if row["isForeignKey"].strip().lower() == "yes" and row["fkTableName"] not in ("", "NA"):
                field["fk"] = [row["fkTableName"].strip().lower(), row["fkFieldName"].strip().lower()]
            tables.setdefault(table, {"schema": "CDM", "fields": []})["fields"].append(field)
    if "cohort" not in tables:
        tables["cohort"] = {"schema": "RESULTS", "fields": COHORT_FIELDS}
    for name in ("cohort", "cohort_definition"):
        if name in tables:
            tables[name]["schema"] = "RESULTS"
    return {"version": version, "tables": tables}


def main() -> None:
    spec_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cdm_spec")
    out = Path(__file__).resolve().parent.parent / "src" / "mercia" / "cdm" / "specs"
    for version in ("5.3", "5.4"):
        spec = build(spec_dir, version)
        (out / f"cdm_v{version}.json").write_text(json.dumps(spec, indent=1) + "\n")
        print(version, len(spec["tables"]), "tables")


if __name__ == "__main__":
    main()
