"""Build the bundled vocabulary subset in src/mercia/vocab/data/ (Athena format).

Run from the repository root, naming the two inputs (Eunomia GiBleed as Parquet files, and a folder
of OHDSI cohort JSONs):

    python -m mercia.vocab.build_subset --eunomia DIR --cohorts DIR [--out DIR]

It is a maintainer's tool: it reads OHDSI's Eunomia GiBleed vocabulary and the concept sets of the
OHDSI cohort JSONs, adds the concepts of `mercia.vocab.catalog`, and writes the files that
`load_bundled_vocabulary` loads. The output depends only on its inputs (rows are sorted), so a
rebuild from the same inputs gives byte-identical files.

What goes in, and why each part can be trusted:
- every Eunomia concept, relationship, synonym, vocabulary, domain and relationship type, as OHDSI
  published them;
- every concept named in a cohort JSON concept set (those carry id, name, domain, vocabulary,
  class, code and standard flag as ATLAS exported them from Athena);
- every catalog concept (see catalog.py for which ids are confirmed);
- CONCEPT_ANCESTOR: Eunomia's real rows between included concepts, plus the subsumptions in
  `EXTRA_IS_A` (each a real SNOMED / ATC relation) and the drug ancestry in `EXTRA_ANCESTRY`, closed
  transitively, with a self row for every
  standard or classification concept as OMOP has;
- CONCEPT_RELATIONSHIP: Eunomia's rows, plus 'Maps to' / 'Mapped from' from every standard concept
  to itself (OMOP's convention, which makes 'include mapped' return the standard concept too).
CONCEPT_CLASS is rebuilt from the classes in use (Eunomia ships it empty); the concept ids of
concept classes and of the 'Type Concept' vocabulary are not known here and are 0.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from mercia.vocab import catalog

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_START = "19700101"
DEFAULT_END = "20991231"

# (descendant, ancestor) subsumptions added to Eunomia's. Each is a real relation in SNOMED CT or
# ATC; they give the catalog and cohort-file concepts a hierarchy to test descendants against.
EXTRA_IS_A: tuple[tuple[int, int], ...] = (
    # Type 2 / type 1 diabetes are diabetes mellitus.
    (201826, 201820),
    (201254, 201820),
    # Disorder due to type 2 diabetes is a type 2 diabetes; its complications sit below it.
    (443732, 201826),
    (376065, 443732),
    (443729, 443732),
    # The same for type 1.
    (435216, 201254),
    (200687, 435216),
    (4224254, 435216),
    (4225656, 435216),
    (4227210, 435216),
    (4228112, 435216),
    (4295011, 201254),
    (201531, 201254),
    # Diabetic complications are diabetes mellitus in SNOMED.
    (192279, 201820),
    (200687, 192279),
    (443735, 201820),
    (443767, 201820),
    # Peptic ulcer hierarchy (the GI-bleeding phenotypes exclude these).
    (4265600, 4027663),
    (4198381, 4027663),
    (4291028, 4027663),
    (4248429, 4265600),
    (4248429, 4291028),
    (4209746, 4198381),
    (4209746, 4291028),
    # ATC 3rd level A10B "blood glucose lowering drugs, excl. insulins" above its ingredients.
    (1503297, 21600744),
    (19059796, 21600744),
    (45774751, 21600744),
    (44785829, 21600744),
)

# (ancestor, descendant, min, max) drug ancestry Eunomia lacks although its concepts are real RxNorm
# products of these ingredients. Levels follow the pattern of Eunomia's own ingredient -> clinical
# drug rows (2, 3), one more for the branded drug; they are approximations, not OHDSI's numbers.
EXTRA_ANCESTRY: tuple[tuple[int, int, int, int], ...] = (
    (1124300, 40162359, 2, 3),  # diclofenac -> Diclofenac Sodium 75 MG Delayed Release Oral Tablet
    (1118084, 1118088, 3, 4),  # celecoxib -> celecoxib 200 MG Oral Capsule [Celebrex]
)

CONCEPT_COLUMNS = (
    "concept_id",
    "concept_name",
    "domain_id",
    "vocabulary_id",
    "concept_class_id",
    "standard_concept",
    "concept_code",
    "valid_start_date",
    "valid_end_date",
    "invalid_reason",
)


def _athena_date(value: object) -> str:
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    return str(value)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.date):
        return _athena_date(value)
    text = str(value)
    # Athena files are tab-separated with quoting off: a tab or newline in a value would break the row.
    if any(ch in text for ch in "\t\r\n"):
        raise ValueError(f"value {text!r} holds a tab or newline; it cannot be written in Athena format")
    return text


def _write(path: Path, header: Iterable[str], rows: Iterable[Iterable[object]]) -> int:
    n = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n", escapechar=None)
        w.writerow(list(header))
        for row in rows:
            w.writerow([_cell(v) for v in row])
            n += 1
    return n


def _read(folder: Path, table: str) -> list[dict]:
    return pq.read_table(folder / f"{table}.parquet").to_pylist()


def _cohort_concepts(cohorts: Path) -> dict[int, tuple]:
    out: dict[int, tuple] = {}
    for path in sorted(cohorts.rglob("*.json")):
        doc = json.loads(path.read_text())
        for cs in doc.get("ConceptSets", []) if isinstance(doc, dict) else []:
            for item in cs.get("expression", {}).get("items", []):
                c = item["concept"]
                invalid = c.get("INVALID_REASON")
                out[int(c["CONCEPT_ID"])] = (
                    int(c["CONCEPT_ID"]),
                    c["CONCEPT_NAME"],
                    c["DOMAIN_ID"],
                    c["VOCABULARY_ID"],
                    c["CONCEPT_CLASS_ID"],
                    c.get("STANDARD_CONCEPT") or None,
                    c["CONCEPT_CODE"],
                    DEFAULT_START,
                    DEFAULT_END,
                    None if invalid in (None, "", "V") else invalid,
                )
    return out


def _closure(
    known: dict[tuple[int, int], tuple[int, int]], edges: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], tuple[int, int]]:
    """Transitive closure of ancestor pairs (ancestor, descendant) -> (min, max) levels.

    Pairs already known from OHDSI keep their levels (they were computed on the full vocabulary);
    derived pairs take the shortest and longest path through what is known here.
    """
    pairs = dict(known)
    fixed = set(known)
    for child, parent in edges:
        if (parent, child) not in pairs:
            pairs[(parent, child)] = (1, 1)
    changed = True
    while changed:
        changed = False
        by_ancestor: dict[int, list[tuple[int, tuple[int, int]]]] = {}
        for (a, d), lv in pairs.items():
            by_ancestor.setdefault(a, []).append((d, lv))
        for (a, b), (mn1, mx1) in list(pairs.items()):
            if a == b:
                continue
            for c, (mn2, mx2) in by_ancestor.get(b, []):
                if b == c or a == c:
                    continue
                key = (a, c)
                cand = (mn1 + mn2, mx1 + mx2)
                if key in fixed:
                    continue
                old = pairs.get(key)
                new = cand if old is None else (min(old[0], cand[0]), max(old[1], cand[1]))
                if new != old:
                    pairs[key] = new
                    changed = True
    return pairs


def build(eunomia: Path, cohorts: Path, out: Path = DATA_DIR) -> dict[str, int]:
    """Write the subset to `out`; returns the row count of each file written."""
    out.mkdir(parents=True, exist_ok=True)
    concepts: dict[int, tuple] = {}
    for c in catalog.all_concepts():
        concepts[c.concept_id] = (
            c.concept_id,
            c.name,
            c.domain_id,
            c.vocabulary_id,
            c.concept_class_id,
            "S" if c.standard else None,
            c.concept_code,
            DEFAULT_START,
            DEFAULT_END,
            None,
        )
    concepts.update(_cohort_concepts(cohorts))
    for r in _read(eunomia, "concept"):
        concepts[r["concept_id"]] = tuple(r[k] for k in CONCEPT_COLUMNS)

    for c in catalog.all_concepts():
        have = concepts[c.concept_id]
        if (have[1], have[2], have[3]) != (c.name, c.domain_id, c.vocabulary_id):
            raise ValueError(f"catalog concept {c.concept_id} {c.name!r} disagrees with OHDSI's {have[1:4]}")

    ids = set(concepts)
    in_hierarchy = {cid for cid, row in concepts.items() if row[5] in ("S", "C")}
    known = {
        (r["ancestor_concept_id"], r["descendant_concept_id"]): (
            r["min_levels_of_separation"],
            r["max_levels_of_separation"],
        )
        for r in _read(eunomia, "concept_ancestor")
        if r["ancestor_concept_id"] in ids and r["descendant_concept_id"] in ids
    }
    for cid in in_hierarchy:
        known.setdefault((cid, cid), (0, 0))
    missing = ({x for edge in EXTRA_IS_A for x in edge} | {x for r in EXTRA_ANCESTRY for x in r[:2]}) - ids
    if missing:
        raise ValueError(f"EXTRA_IS_A names concepts not in the subset: {sorted(missing)}")
    for a, d, mn, mx in EXTRA_ANCESTRY:
        known.setdefault((a, d), (mn, mx))
    ancestors = _closure(known, EXTRA_IS_A)

    relationships: dict[tuple[int, int, str], tuple] = {}
    for r in _read(eunomia, "concept_relationship"):
        if r["concept_id_1"] in ids and r["concept_id_2"] in ids:
            relationships[(r["concept_id_1"], r["concept_id_2"], r["relationship_id"])] = (
                r["concept_id_1"],
                r["concept_id_2"],
                r["relationship_id"],
                r["valid_start_date"],
                r["valid_end_date"],
                r["invalid_reason"],
            )
    for cid, row in concepts.items():
        if row[5] == "S":
            for rel in ("Maps to", "Mapped from"):
                relationships.setdefault((cid, cid, rel), (cid, cid, rel, DEFAULT_START, DEFAULT_END, None))

    counts: dict[str, int] = {}
    counts["CONCEPT.csv"] = _write(
        out / "CONCEPT.csv", CONCEPT_COLUMNS, (concepts[k] for k in sorted(concepts))
    )
    counts["CONCEPT_ANCESTOR.csv"] = _write(
        out / "CONCEPT_ANCESTOR.csv",
        (
            "ancestor_concept_id",
            "descendant_concept_id",
            "min_levels_of_separation",
            "max_levels_of_separation",
        ),
        ((a, d, mn, mx) for (a, d), (mn, mx) in sorted(ancestors.items())),
    )
    counts["CONCEPT_RELATIONSHIP.csv"] = _write(
        out / "CONCEPT_RELATIONSHIP.csv",
        (
            "concept_id_1",
            "concept_id_2",
            "relationship_id",
            "valid_start_date",
            "valid_end_date",
            "invalid_reason",
        ),
        (relationships[k] for k in sorted(relationships)),
    )
    synonyms = sorted(
        {
            (r["concept_id"], r["concept_synonym_name"], r["language_concept_id"])
            for r in _read(eunomia, "concept_synonym")
            if r["concept_id"] in ids
        }
    )
    counts["CONCEPT_SYNONYM.csv"] = _write(
        out / "CONCEPT_SYNONYM.csv", ("concept_id", "concept_synonym_name", "language_concept_id"), synonyms
    )
    vocab_rows = {
        r["vocabulary_id"]: (
            r["vocabulary_id"],
            r["vocabulary_name"],
            r["vocabulary_reference"],
            r["vocabulary_version"],
            r["vocabulary_concept_id"],
        )
        for r in _read(eunomia, "vocabulary")
    }
    used = {row[3] for row in concepts.values()}
    for vid in used:
        vocab_rows.setdefault(vid, (vid, vid, None, None, 0))
    # Only the vocabularies our concepts use. Eunomia leaves the reference empty for OMOP's own
    # vocabularies (Gender, Visit, ...), which CDM v5.3 forbids; Athena's value for those is
    # "OMOP generated".
    vocab_rows = {
        vid: (r[0], r[1], r[2] or "OMOP generated", r[3], r[4])
        for vid, r in vocab_rows.items()
        if vid in used
    }
    counts["VOCABULARY.csv"] = _write(
        out / "VOCABULARY.csv",
        (
            "vocabulary_id",
            "vocabulary_name",
            "vocabulary_reference",
            "vocabulary_version",
            "vocabulary_concept_id",
        ),
        (vocab_rows[k] for k in sorted(vocab_rows)),
    )
    domain_rows = {
        r["domain_id"]: (r["domain_id"], r["domain_name"], r["domain_concept_id"])
        for r in _read(eunomia, "domain")
    }
    for row in concepts.values():
        domain_rows.setdefault(row[2], (row[2], row[2], 0))
    counts["DOMAIN.csv"] = _write(
        out / "DOMAIN.csv",
        ("domain_id", "domain_name", "domain_concept_id"),
        (domain_rows[k] for k in sorted(domain_rows)),
    )
    classes = sorted({row[4] for row in concepts.values()})
    counts["CONCEPT_CLASS.csv"] = _write(
        out / "CONCEPT_CLASS.csv",
        ("concept_class_id", "concept_class_name", "concept_class_concept_id"),
        ((c, c, 0) for c in classes),
    )

    def flag(v: object) -> str:
        # Eunomia stores these flags as '1.0' / '0.0'; the CDM column is varchar(1).
        return "1" if str(v).startswith("1") else "0"

    rel_types = sorted(
        (
            r["relationship_id"],
            r["relationship_name"],
            flag(r["is_hierarchical"]),
            flag(r["defines_ancestry"]),
            r["reverse_relationship_id"],
            r["relationship_concept_id"],
        )
        for r in _read(eunomia, "relationship")
    )
    counts["RELATIONSHIP.csv"] = _write(
        out / "RELATIONSHIP.csv",
        (
            "relationship_id",
            "relationship_name",
            "is_hierarchical",
            "defines_ancestry",
            "reverse_relationship_id",
            "relationship_concept_id",
        ),
        rel_types,
    )
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eunomia", type=Path, required=True, help="folder of Eunomia GiBleed's Parquet files")
    p.add_argument("--cohorts", type=Path, required=True, help="folder of OHDSI cohort JSONs")
    p.add_argument("--out", type=Path, default=DATA_DIR)
    a = p.parse_args(argv)
    for name, n in build(a.eunomia, a.cohorts, a.out).items():
        print(f"{name}: {n} rows")


if __name__ == "__main__":
    main()
