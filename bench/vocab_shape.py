"""A vocabulary of the full OMOP vocabulary's shape, generated locally and reproducibly from a seed.

A real hub loads Athena's vocabulary (about 6-7 million concepts, 80+ million CONCEPT_ANCESTOR rows,
millions of CONCEPT_RELATIONSHIP and CONCEPT_SYNONYM rows), which cannot be downloaded here. This module
writes a DuckDB file with the same tables and the same SHAPE, for the portal benchmark's concept pages:

- `concepts` generated concepts (ids from GENERATED_BASE up, clear of every real OMOP id the bundled
  subset uses), split over domains and vocabularies by the shares of PLAN (drugs about 55%, RxNorm
  Extension and NDC the largest vocabularies), about half of them standard, a few invalid;
- names of 3-5 words drawn with a skewed (Zipf-like) law from a clinical word list and pseudo-words, so
  that a common word (``tablet``, ``diabetes``) matches many thousands of names and a rare one a handful;
  codes in each vocabulary's style; about 0.4 synonyms per concept;
- every non-standard concept 'Maps to' a standard one of its domain (and 'Mapped from' back); every
  standard concept but a domain's root 'Is a' its parent ('Subsumes' back);
- a deep hierarchy: within each (domain, vocabulary) of standard concepts, concept j's parent is
  j * 4 // 7 (PARENT: about 1.75 children each, log_1.75 of the group's size deep: 25 levels for the
  largest group at full scale), and
  CONCEPT_ANCESTOR holds its transitive closure with each concept itself at level 0, as Athena does:
  about 12 rows per concept over the whole vocabulary at full scale (Athena: 80M / 6.5M, about 12;
  fewer at a reduced scale, the tree being shallower). The root of a group has every concept of the
  group below it; a concept k levels down has about size / 1.75^k.

The real concepts of the base vocabulary (the synthetic sites' bundled subset) are copied unchanged,
with their own ancestry, maps and synonyms, so the portal's pages and the sites' counts still work.
The same (concepts, seed, base) gives the same file: every random choice is an integer hash of the
row number and the seed, computed in SQL (no sampling, no thread-order dependence).

Kept in bench/, not in the product: it is a test load of the hub, not data anyone should search, and
the product ships no generator of fake vocabularies that could be mistaken for a real one.

    .venv/bin/python bench/vocab_shape.py OUT.duckdb --concepts 6500000 [--seed 2026] [--base SITE.duckdb]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

GENERATED_BASE = 100_000_000  # generated concept ids start above this (real OMOP ids used here are < 50M)
VOCAB_TABLES = ("concept", "concept_ancestor", "concept_relationship", "concept_synonym", "vocabulary", "domain",
                "concept_class", "relationship")

# (domain_id, vocabulary_id, concept_class_id, share of the generated concepts, share standard, code style)
# Approximate shares of an Athena download with the usual vocabularies (RxNorm Extension, NDC, SNOMED,
# LOINC, ICD10CM/PCS, CPT4, HCPCS, ATC): drugs ~55%, standard ~50% overall.
PLAN: tuple[tuple[str, str, str, float, float, str], ...] = (
    ("Drug", "RxNorm Extension", "Clinical Drug", 0.30, 0.60, "OMOP"),
    ("Drug", "NDC", "11-digit NDC", 0.16, 0.0, "NDC"),
    ("Drug", "RxNorm", "Clinical Drug", 0.05, 0.90, "NUM"),
    ("Drug", "ATC", "ATC 5th", 0.01, 0.0, "ATC"),
    ("Condition", "SNOMED", "Clinical Finding", 0.05, 0.5, "NUM"),
    ("Condition", "ICD10CM", "5-char billing code", 0.015, 0.0, "ICD"),
    ("Condition", "ICD9CM", "5-dig billing code", 0.003, 0.0, "ICD"),
    ("Procedure", "SNOMED", "Procedure", 0.02, 0.5, "NUM"),
    ("Procedure", "ICD10PCS", "ICD10PCS", 0.08, 0.85, "PCS"),
    ("Procedure", "CPT4", "CPT4", 0.004, 1.0, "NUM"),
    ("Procedure", "HCPCS", "HCPCS", 0.01, 0.8, "PCS"),
    ("Measurement", "LOINC", "Lab Test", 0.06, 0.7, "LOINC"),
    ("Measurement", "SNOMED", "Procedure", 0.01, 0.5, "NUM"),
    ("Observation", "SNOMED", "Observable Entity", 0.06, 0.5, "NUM"),
    ("Observation", "LOINC", "Clinical Observation", 0.03, 0.8, "LOINC"),
    ("Device", "SNOMED", "Physical Object", 0.02, 0.5, "NUM"),
    ("Device", "NDC", "11-digit NDC", 0.02, 0.0, "NDC"),
    ("Spec Anatomic Site", "SNOMED", "Body Structure", 0.04, 0.5, "NUM"),
    ("Meas Value", "SNOMED", "Qualifier Value", 0.018, 0.5, "NUM"),
    ("Unit", "UCUM", "Unit", 0.001, 1.0, "OMOP"),
    ("Metadata", "SNOMED", "Navi Concept", 0.001, 0.0, "NUM"),
)
# Words of names: clinical words (the most frequent first), then pseudo-words. A name's word k is
# WORDS[floor(len * u^SKEW)] for a hashed uniform u: the first words are very common, the last rare.
CLINICAL = ["tablet", "oral", "mg", "injection", "solution", "of", "the", "and", "disorder", "with", "left", "right", "chronic", "acute", "procedure", "capsule", "ml", "structure", "finding", "extended", "release", "hydrochloride", "cream", "topical", "product", "pain", "fracture", "diabetes", "mellitus", "type", "hypertension", "infection", "neoplasm", "malignant", "benign", "syndrome", "cardiac", "renal", "hepatic", "pulmonary", "blood", "serum", "plasma", "urine", "level", "measurement", "test", "assessment", "history", "family", "insulin", "metformin", "heart", "failure", "kidney", "disease", "asthma", "cancer", "carcinoma", "artery", "vein", "bone", "joint", "knee", "hip", "spine", "skin", "eye", "ear", "lung", "liver", "colon", "breast", "prostate", "brain", "nerve", "muscle", "tendon", "ligament", "excision", "repair", "replacement", "biopsy", "imaging", "scan", "ultrasound", "resection", "transplant", "catheter", "stent", "device", "implant", "pump", "syringe", "needle", "dressing", "bandage", "glucose", "cholesterol", "hemoglobin", "sodium", "potassium", "creatinine", "albumin", "protein", "antibody", "antigen", "virus", "bacterial", "fungal", "vaccine", "allergy"]
SYLLABLES = ["ba", "be", "bi", "bo", "bu", "ca", "ce", "ci", "co", "cu", "da", "de", "di", "do", "du", "fa", "fe", "fi", "fo", "fu", "ga", "ge", "gi", "go", "gu", "la", "le", "li", "lo", "lu", "ma", "me", "mi", "mo", "mu", "na", "ne", "ni", "no", "nu", "pa", "pe", "pi", "po", "pu", "ra", "re", "ri", "ro", "ru", "sa", "se", "si", "so", "su", "ta", "te", "ti", "to", "tu", "va", "ve", "vi", "vo", "vu", "za", "ze", "zi", "zo", "zu", "xa", "xe", "xi"]
PSEUDO_WORDS = 20_000
SKEW = 3.0
SYNONYMS_PER_CONCEPT = 0.4  # about one concept in three has one, some two (Athena: 2-3M for 6.5M concepts)
INVALID_SHARE = 0.03  # of the non-standard concepts: invalid_reason 'D' or 'U'
# The parent of standard concept j of a group (j = 1, the root, has none): j * 4 // 7, a tree of about
# 1.75 children per concept, log_1.75(size) deep (24 levels for a group of a million): about 12 ancestor
# rows per concept over a vocabulary of 6.5M concepts, as in Athena (80M / 6.5M).
PARENT = "(({j}) * 4 // 7)"


def words(seed: int) -> list[str]:
    """The word list: CLINICAL, then PSEUDO_WORDS pseudo-words of 3-4 syllables (from the seed)."""
    out = list(CLINICAL)
    seen = set(out)
    k = 0
    while len(out) < len(CLINICAL) + PSEUDO_WORDS:
        x = _mix(k, seed, 7)
        w = "".join(SYLLABLES[(x >> (6 * s)) % len(SYLLABLES)] for s in range(3 + x % 2))
        if w not in seen:
            seen.add(w)
            out.append(w)
        k += 1
    return out


def _mix(i: int, seed: int, salt: int) -> int:
    """The SQL macro `mix` in Python (same arithmetic): a 32-bit hash of (i, seed, salt)."""
    x = (i * 2654435761 + seed * 40503 + salt * 2246822519) % 4294967296
    x = ((x ^ (x >> 15)) * 73244475) % 4294967296
    x = ((x ^ (x >> 13)) * 73244475) % 4294967296
    return x ^ (x >> 16)


MACROS = """
CREATE OR REPLACE TEMP MACRO h0(i, sd, salt) AS ((i * 2654435761 + sd * 40503 + salt * 2246822519) % 4294967296);
CREATE OR REPLACE TEMP MACRO r15(x) AS ((xor(x, x >> 15) * 73244475) % 4294967296);
CREATE OR REPLACE TEMP MACRO r13(x) AS ((xor(x, x >> 13) * 73244475) % 4294967296);
CREATE OR REPLACE TEMP MACRO fin(x) AS (xor(x, x >> 16));
CREATE OR REPLACE TEMP MACRO mix(i, sd, salt) AS (fin(r13(r15(h0(i, sd, salt)))));
CREATE OR REPLACE TEMP MACRO unif(i, sd, salt) AS (mix(i, sd, salt) / 4294967296.0);
"""


def build(out: Path, concepts: int, *, seed: int = 2026, base: Path | None = None, threads: int | None = None
          ) -> dict[str, Any]:
    """Write the vocabulary to `out` (replaced if it exists); return its shape (see `shape`)."""
    import duckdb

    if concepts < len(PLAN):
        raise ValueError(f"concepts: at least {len(PLAN)} (one per domain and vocabulary of PLAN), not {concepts}")
    out = Path(out)
    out.unlink(missing_ok=True)
    con = duckdb.connect(str(out))
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.execute(MACROS)
        _copy_base(con, base)
        _generate(con, concepts, seed)
        con.execute("CHECKPOINT")
        return shape(con)
    finally:
        con.close()


def _copy_base(con: Any, base: Path | None) -> None:
    ddl = {
        "concept": "concept_id BIGINT, concept_name VARCHAR, domain_id VARCHAR, vocabulary_id VARCHAR, "
                   "concept_class_id VARCHAR, standard_concept VARCHAR, concept_code VARCHAR, valid_start_date DATE, "
                   "valid_end_date DATE, invalid_reason VARCHAR",
        "concept_ancestor": "ancestor_concept_id BIGINT, descendant_concept_id BIGINT, "
                            "min_levels_of_separation INTEGER, max_levels_of_separation INTEGER",
        "concept_relationship": "concept_id_1 INTEGER, concept_id_2 INTEGER, relationship_id VARCHAR, "
                                "valid_start_date DATE, valid_end_date DATE, invalid_reason VARCHAR",
        "concept_synonym": "concept_id BIGINT, concept_synonym_name VARCHAR, language_concept_id BIGINT",
    }
    if base is not None:
        con.execute("ATTACH ? AS base (READ_ONLY)", [str(base)])
        have = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'base'").fetchall()}
        for t in VOCAB_TABLES:
            if t in have:
                con.execute(f"CREATE TABLE {t} AS SELECT * FROM base.{t}")
        con.execute("DETACH base")
    for t, cols in ddl.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {t} ({cols})")


def _generate(con: Any, concepts: int, seed: int) -> None:
    sd = int(seed)
    ws = words(sd)
    con.execute("CREATE TEMP TABLE words AS SELECT unnest(range(?)) AS k, unnest(?) AS w", [len(ws), ws])
    plan = []  # (group, domain, vocabulary, class, first row, rows, standard share, code style)
    start = 0
    total_share = sum(p[3] for p in PLAN)
    for g, (domain, vocab, cls, share, std, style) in enumerate(PLAN):
        rows = max(1, round(concepts * share / total_share)) if g < len(PLAN) - 1 else concepts - start
        plan.append((g, domain, vocab, cls, start, rows, std, style))
        start += rows
    con.execute("CREATE TEMP TABLE plan (g INTEGER, domain_id VARCHAR, vocabulary_id VARCHAR, "
                "concept_class_id VARCHAR, first BIGINT, n BIGINT, std DOUBLE, style VARCHAR)")
    con.executemany("INSERT INTO plan VALUES (?, ?, ?, ?, ?, ?, ?, ?)", plan)
    nw = len(ws)
    # g: one row per generated concept: its group, its row number i, whether standard, its local index j
    # among its group's standard concepts (1-based; the tree's position) or among the non-standard ones.
    con.execute(f"""
        CREATE TEMP TABLE g AS
        SELECT i, p.g, p.domain_id, p.vocabulary_id, p.concept_class_id, p.style,
               unif(i, {sd}, 1) < p.std AS std
        FROM range({concepts}) r(i) JOIN plan p ON i >= p.first AND i < p.first + p.n""")
    con.execute("""
        CREATE TEMP TABLE gc AS
        SELECT *, row_number() OVER (PARTITION BY g, std ORDER BY i) AS j FROM g""")

    # names: word list joined per word position (a join, not a correlated subquery per row)
    parts = []
    for k in range(5):
        parts.append(f"w{k}.w")
    joins = "\n".join(
        f"LEFT JOIN words w{k} ON w{k}.k = CAST(floor({nw} * pow(unif(gc.i, {sd}, {10 + k}), {SKEW})) AS BIGINT) "
        f"AND {k} < (3 + mix(gc.i, {sd}, 2) % 3)" for k in range(5))
    name = "concat_ws(' ', " + ", ".join(parts) + ")"
    code = f"""CASE gc.style
        WHEN 'NDC' THEN lpad(CAST(mix(gc.i, {sd}, 3) % 100000000000 AS VARCHAR), 11, '0')
        WHEN 'ICD' THEN chr(65 + CAST(mix(gc.i, {sd}, 3) % 26 AS INTEGER)) || lpad(CAST(mix(gc.i, {sd}, 4) % 100 AS VARCHAR), 2, '0')
                        || '.' || CAST(gc.i % 1000 AS VARCHAR)
        WHEN 'PCS' THEN upper(to_hex(gc.i * 7 + {sd}))
        WHEN 'LOINC' THEN CAST(gc.i AS VARCHAR) || '-' || CAST(gc.i % 10 AS VARCHAR)
        WHEN 'ATC' THEN 'A' || lpad(CAST(gc.i AS VARCHAR), 6, '0')
        WHEN 'OMOP' THEN 'OMOP' || CAST(gc.i AS VARCHAR)
        ELSE CAST(100000000 + gc.i AS VARCHAR) END"""
    invalid = (f"CASE WHEN NOT gc.std AND unif(gc.i, {sd}, 5) < {INVALID_SHARE} "
               f"THEN (CASE WHEN mix(gc.i, {sd}, 6) % 2 = 0 THEN 'D' ELSE 'U' END) END")
    con.execute(f"""
        INSERT INTO concept
        SELECT {GENERATED_BASE} + gc.i, {name}, gc.domain_id, gc.vocabulary_id, gc.concept_class_id,
               CASE WHEN gc.std THEN 'S' WHEN gc.vocabulary_id = 'ATC' THEN 'C' END, {code},
               DATE '1970-01-01', CASE WHEN {invalid} IS NULL THEN DATE '2099-12-31' ELSE DATE '2020-01-01' END,
               {invalid}
        FROM gc {joins}
        ORDER BY gc.i""")
    # the tree: standard concept j of group g has parent PARENT(j) of the same group (j = 1 is the root)
    con.execute("CREATE TEMP TABLE tree AS SELECT g, j, i FROM gc WHERE std")
    con.execute(f"""
        INSERT INTO concept_ancestor
        WITH RECURSIVE up(g, j, a, k) AS (
            SELECT g, j, j, 0 FROM tree
            UNION ALL
            SELECT g, j, {PARENT.format(j="a")}, k + 1 FROM up WHERE a > 1)
        SELECT {GENERATED_BASE} + ta.i, {GENERATED_BASE} + t.i, CAST(up.k AS INTEGER), CAST(up.k AS INTEGER)
        FROM up JOIN tree t ON t.g = up.g AND t.j = up.j JOIN tree ta ON ta.g = up.g AND ta.j = up.a
        ORDER BY 1, 2""")
    # a non-standard concept maps to a standard concept of the first group of its domain with any
    con.execute("""
        CREATE TEMP TABLE target AS
        SELECT p.g, (SELECT min(q.g) FROM plan q WHERE q.domain_id = p.domain_id AND q.std > 0) AS tg FROM plan p""")
    con.execute("CREATE TEMP TABLE size AS SELECT g, count(*) AS sz FROM tree GROUP BY g")
    rel = f"""
        SELECT {GENERATED_BASE} + c.i AS c1, {GENERATED_BASE} + p.i AS c2, 'Is a' AS r
        FROM tree c JOIN tree p ON p.g = c.g AND p.j = {PARENT.format(j="c.j")} WHERE c.j > 1
        UNION ALL
        SELECT {GENERATED_BASE} + n.i, {GENERATED_BASE} + t.i, 'Maps to'
        FROM gc n JOIN target USING (g) JOIN size ON size.g = target.tg
        JOIN tree t ON t.g = target.tg AND t.j = 1 + mix(n.i, {sd}, 8) % size.sz
        WHERE NOT n.std"""
    con.execute(f"CREATE TEMP TABLE rel AS {rel}")
    con.execute("""
        INSERT INTO concept_relationship
        SELECT c1, c2, r, DATE '1970-01-01', DATE '2099-12-31', NULL FROM rel
        UNION ALL
        SELECT c2, c1, CASE r WHEN 'Is a' THEN 'Subsumes' ELSE 'Mapped from' END,
               DATE '1970-01-01', DATE '2099-12-31', NULL FROM rel""")
    # synonyms: a reordering of the name's words plus a word, for SYNONYMS_PER_CONCEPT per concept
    con.execute(f"""
        INSERT INTO concept_synonym
        WITH pick AS (
            SELECT gc.i, s.k, CAST(floor({nw} * pow(unif(gc.i * 2 + s.k, {sd}, 20), {SKEW})) AS BIGINT) AS wk
            FROM gc CROSS JOIN range(2) s(k)
            WHERE unif(gc.i * 2 + s.k, {sd}, 21) < {SYNONYMS_PER_CONCEPT / 2})
        SELECT {GENERATED_BASE} + pick.i, concat_ws(' ', w.w, c.concept_name), 4180186
        FROM pick JOIN words w ON w.k = pick.wk JOIN concept c ON c.concept_id = {GENERATED_BASE} + pick.i
        ORDER BY pick.i, pick.k""")
    for t in ("g", "gc", "tree", "rel", "words", "plan", "target", "size"):
        con.execute(f"DROP TABLE {t}")


def shape(con: Any) -> dict[str, Any]:
    """Counts that describe a vocabulary: concepts, standard share, per domain and vocabulary, ancestor rows
    per concept, deepest level, relationships by kind, synonyms."""
    one = lambda q: con.execute(q).fetchall()[0][0]  # noqa: E731
    n = one("SELECT count(*) FROM concept")
    return {
        "concepts": n,
        "standard": one("SELECT count(*) FROM concept WHERE standard_concept = 'S'"),
        "invalid": one("SELECT count(*) FROM concept WHERE invalid_reason IS NOT NULL"),
        "domains": dict(con.execute("SELECT domain_id, count(*) FROM concept GROUP BY 1 ORDER BY 2 DESC").fetchall()),
        "vocabularies": dict(con.execute(
            "SELECT vocabulary_id, count(*) FROM concept GROUP BY 1 ORDER BY 2 DESC").fetchall()),
        "ancestor_rows": (a := one("SELECT count(*) FROM concept_ancestor")),
        "ancestor_rows_per_concept": round(a / n, 2) if n else 0.0,
        "max_levels": one("SELECT max(max_levels_of_separation) FROM concept_ancestor"),
        "relationships": dict(con.execute(
            "SELECT relationship_id, count(*) FROM concept_relationship GROUP BY 1 ORDER BY 1").fetchall()),
        "synonyms": one("SELECT count(*) FROM concept_synonym"),
    }


def landmarks(path: Path, *, seed: int = 2026, set_size: int = 5000) -> dict[str, Any]:
    """What the benchmark asks of a generated vocabulary: a common word, a rare one and a concept code to
    search; the root of the largest hierarchy (every concept of its group below it); a concept with about
    `set_size` descendants (for a concept set resolving thousands); with how many each matches."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        one = lambda q, p=(): con.execute(q, list(p)).fetchall()[0][0]  # noqa: E731
        group = ("Drug", "RxNorm Extension")  # PLAN's largest standard group
        where = "concept_id >= ? AND domain_id = ? AND vocabulary_id = ? AND standard_concept = 'S'"
        size = one(f"SELECT count(*) FROM concept WHERE {where}", (GENERATED_BASE, *group))
        root = one(f"SELECT min(concept_id) FROM concept WHERE {where}", (GENERATED_BASE, *group))
        # the concept nearest `set_size` descendants among the top of the tree (the first ids of the group)
        tops = con.execute(
            "SELECT ancestor_concept_id, count(*) - 1 AS n FROM concept_ancestor WHERE ancestor_concept_id BETWEEN ? "
            "AND ? GROUP BY 1 ORDER BY abs(n - ?), 1 LIMIT 1", [root, root + 5000, set_size]).fetchall()
        middle = tops[0][0]
        below = lambda c: one("SELECT count(*) - 1 FROM concept_ancestor WHERE ancestor_concept_id = ?", (c,))  # noqa: E731
        ws = words(seed)
        hits = lambda w: one("SELECT count(*) FROM concept WHERE strpos(lower(concept_name), ?) > 0", (w,))  # noqa: E731
        code = one("SELECT concept_code FROM concept WHERE concept_id = ?", (GENERATED_BASE + size // 3,))
        return {"common": "tablet", "common_names": hits("tablet"), "rare": ws[-1], "rare_names": hits(ws[-1]),
                "code": code, "root": root, "root_descendants": below(root), "set_concept": middle,
                "set_descendants": below(middle)}
    finally:
        con.close()


def describe(path: Path) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        return shape(con)
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--concepts", type=int, default=6_500_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--base", type=Path, help="a DuckDB file whose vocabulary tables are copied in first")
    args = ap.parse_args()
    t0 = time.perf_counter()
    s = build(args.out, args.concepts, seed=args.seed, base=args.base)
    print(f"{args.out}: {s} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
