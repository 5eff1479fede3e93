"""The catalog and the bundled vocabulary: ids present with matching names, a well-formed hierarchy,
and a subset that rebuilds byte for byte from its inputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mercia.cdm import Cdm
from mercia.vocab import catalog, load_bundled_vocabulary
from mercia.vocab.athena import BUNDLED_DIR
from mercia.vocab.build_subset import EXTRA_IS_A, build
from shared_data import COHORTS

REQUIRED_KEYS = {
    "GENDER": {"male", "female"},
    "RACE": {"white", "black", "asian", "mixed", "other"},
    "ETHNICITY": {"not_hispanic"},
    "VISITS": {"gp", "outpatient", "inpatient", "emergency"},
    "TYPE_CONCEPTS": {"ehr", "ehr_prescription", "lab", "registration", "death", "era"},
    "CONDITIONS": {
        "type2_diabetes", "hypertension", "ckd", "atrial_fibrillation", "heart_failure", "copd", "asthma",
        "depression", "breast_cancer", "prostate_cancer", "lung_cancer", "colorectal_cancer",
        "myocardial_infarction", "stroke", "gi_bleeding", "hip_fracture", "pneumonia", "urinary_tract_infection",
        "osteoarthritis",
    },
    "DRUG_INGREDIENTS": {
        "metformin", "empagliflozin", "dapagliflozin", "gliclazide", "atorvastatin", "simvastatin", "ramipril",
        "lisinopril", "amlodipine", "bisoprolol", "furosemide", "warfarin", "apixaban", "rivaroxaban", "celecoxib",
        "diclofenac", "ibuprofen", "naproxen", "omeprazole", "lansoprazole", "salbutamol", "sertraline",
        "levothyroxine", "amoxicillin",
    },
    "MEASUREMENTS": {"hba1c", "egfr", "bmi", "systolic_bp", "diastolic_bp", "total_cholesterol", "creatinine"},
    "UNITS": {"percent", "mmol_per_mol", "ml_min_173m2", "kg_m2", "mmhg", "mmol_per_l", "umol_per_l"},
}  # fmt: skip

# Ids the brief gave or that are checked against Eunomia / the cohort files: never to drift.
PINNED = {
    ("GENDER", "male"): 8507, ("GENDER", "female"): 8532, ("RACE", "white"): 8527, ("RACE", "black"): 8516,
    ("RACE", "asian"): 8515, ("ETHNICITY", "not_hispanic"): 38003564, ("VISITS", "gp"): 581477,
    ("VISITS", "outpatient"): 9202, ("VISITS", "inpatient"): 9201, ("VISITS", "emergency"): 9203,
    ("TYPE_CONCEPTS", "ehr"): 32817, ("TYPE_CONCEPTS", "ehr_prescription"): 32838, ("TYPE_CONCEPTS", "lab"): 32856,
    ("CONDITIONS", "type2_diabetes"): 201826, ("CONDITIONS", "atrial_fibrillation"): 313217,
    ("CONDITIONS", "asthma"): 317009, ("CONDITIONS", "myocardial_infarction"): 4329847,
    ("CONDITIONS", "gi_bleeding"): 192671, ("CONDITIONS", "hip_fracture"): 4230399,
    ("CONDITIONS", "pneumonia"): 255848, ("CONDITIONS", "osteoarthritis"): 80180,
    ("DRUG_INGREDIENTS", "metformin"): 1503297, ("DRUG_INGREDIENTS", "atorvastatin"): 1545958,
    ("DRUG_INGREDIENTS", "celecoxib"): 1118084, ("DRUG_INGREDIENTS", "diclofenac"): 1124300,
    ("DRUG_INGREDIENTS", "warfarin"): 1310149, ("DRUG_INGREDIENTS", "salbutamol"): 1154343,
    ("MEASUREMENTS", "hba1c"): 3004410, ("MEASUREMENTS", "creatinine"): 3016723,
    ("UNITS", "percent"): 8554, ("UNITS", "mmhg"): 8876,
}  # fmt: skip


@pytest.fixture(scope="module")
def vocab() -> Iterator[Cdm]:
    cdm = Cdm.open()
    load_bundled_vocabulary(cdm)
    yield cdm
    cdm.close()


def test_required_keys_and_pinned_ids() -> None:
    for group, keys in REQUIRED_KEYS.items():
        assert keys <= set(getattr(catalog, group)), group
    for (group, key), cid in PINNED.items():
        assert getattr(catalog, group)[key].concept_id == cid, (group, key)
    for group in ("CONDITION_SOURCE_CODES",):
        assert set(getattr(catalog, group)) == set(catalog.CONDITIONS)
    assert set(catalog.DRUG_PRODUCTS) == set(catalog.DRUG_INGREDIENTS) == set(catalog.DRUG_SOURCE_CODES)


def test_catalog_concepts_are_in_the_bundle_with_matching_fields(vocab: Cdm) -> None:
    rows = {
        r[0]: r[1:]
        for r in vocab.fetch_all(
            "SELECT concept_id, concept_name, domain_id, vocabulary_id, concept_class_id, concept_code, "
            "standard_concept FROM main.concept"
        )
    }
    for c in catalog.all_concepts():
        assert c.concept_id in rows, c
        name, domain, vocabulary, _klass, _code, standard = rows[c.concept_id]
        assert (name, domain, vocabulary) == (c.name, c.domain_id, c.vocabulary_id), c
        assert (standard == "S") == c.standard, c


def test_domains_fit_their_groups() -> None:
    expect = {
        "CONDITIONS": ("Condition", "SNOMED"), "DRUG_INGREDIENTS": ("Drug", "RxNorm"),
        "MEASUREMENTS": ("Measurement", "LOINC"), "UNITS": ("Unit", "UCUM"), "VISITS": ("Visit", "Visit"),
        "GENDER": ("Gender", "Gender"), "TYPE_CONCEPTS": ("Type Concept", "Type Concept"),
    }  # fmt: skip
    for group, (domain, vocabulary) in expect.items():
        for key, c in getattr(catalog, group).items():
            assert (c.domain_id, c.vocabulary_id) == (domain, vocabulary), (group, key)
    for key, c in catalog.DRUG_INGREDIENTS.items():
        assert c.concept_class_id == "Ingredient", key


def test_products_descend_from_their_ingredient(vocab: Cdm) -> None:
    pairs = set(
        vocab.fetch_all("SELECT ancestor_concept_id, descendant_concept_id FROM main.concept_ancestor")
    )
    for key, product in catalog.DRUG_PRODUCTS.items():
        ingredient = catalog.DRUG_INGREDIENTS[key]
        if product.concept_id != ingredient.concept_id:
            assert (ingredient.concept_id, product.concept_id) in pairs, key


def test_unverified_ids_are_catalog_ids() -> None:
    ids = {c.concept_id for c in catalog.all_concepts()}
    assert ids >= catalog.UNVERIFIED_CONCEPT_IDS


def test_every_eunomia_and_cohort_concept_is_bundled(vocab: Cdm, eunomia_dir: Path) -> None:
    bundled = {r[0] for r in vocab.fetch_all("SELECT concept_id FROM main.concept")}
    eunomia = set(
        pq.read_table(eunomia_dir / "concept.parquet", columns=["concept_id"]).column(0).to_pylist()
    )
    assert eunomia <= bundled
    cohort_ids = set()
    for path in COHORTS.rglob("*.json"):
        for cs in json.loads(path.read_text()).get("ConceptSets", []):
            cohort_ids |= {it["concept"]["CONCEPT_ID"] for it in cs["expression"]["items"]}
    assert cohort_ids <= bundled


# ---- the hierarchy --------------------------------------------------------------------------------


def test_ancestor_table_is_closed_with_self_rows(vocab: Cdm) -> None:
    rows = vocab.fetch_all("SELECT * FROM main.concept_ancestor")
    levels = {(a, d): (mn, mx) for a, d, mn, mx in rows}
    assert len(levels) == len(rows), "duplicate ancestor pairs"
    concepts = dict(vocab.fetch_all("SELECT concept_id, standard_concept FROM main.concept"))
    for a, d in levels:
        assert a in concepts and d in concepts
    in_hierarchy = {cid for cid, s in concepts.items() if s in ("S", "C")}
    for cid in in_hierarchy:
        assert levels.get((cid, cid)) == (0, 0), cid
    for (a, d), (mn, mx) in levels.items():
        assert 0 <= mn <= mx
        assert (mn == 0) == (a == d)
    by_anc: dict[int, set[int]] = {}
    for a, d in levels:
        by_anc.setdefault(a, set()).add(d)
    for (a, b), (mn1, _) in levels.items():
        for c in by_anc.get(b, ()):
            assert (a, c) in levels, f"missing transitive pair {a} -> {c} via {b}"
            assert levels[(a, c)][0] <= mn1 + levels[(b, c)][0]
    for child, parent in EXTRA_IS_A:
        assert (parent, child) in levels


def test_eunomia_ancestor_rows_are_reused_unchanged(vocab: Cdm, eunomia_dir: Path) -> None:
    bundled = {(a, d): (mn, mx) for a, d, mn, mx in vocab.fetch_all("SELECT * FROM main.concept_ancestor")}
    ids = {r[0] for r in vocab.fetch_all("SELECT concept_id FROM main.concept")}
    for r in pq.read_table(eunomia_dir / "concept_ancestor.parquet").to_pylist():
        a, d = r["ancestor_concept_id"], r["descendant_concept_id"]
        if a in ids and d in ids:
            assert bundled[(a, d)] == (r["min_levels_of_separation"], r["max_levels_of_separation"])


def test_source_codes_map_to_standard(vocab: Cdm) -> None:
    maps = set(
        vocab.fetch_all(
            "SELECT concept_id_1, concept_id_2 FROM main.concept_relationship WHERE relationship_id = 'Maps to'"
        )
    )
    assert (35208414, 192671) in maps
    for c in catalog.all_concepts():
        if c.standard:
            assert (c.concept_id, c.concept_id) in maps, c


def test_bundle_rebuilds_identically(tmp_path: Path, eunomia_dir: Path) -> None:
    build(eunomia_dir, COHORTS, tmp_path)
    for committed in sorted(BUNDLED_DIR.glob("*.csv")):
        assert (tmp_path / committed.name).read_bytes() == committed.read_bytes(), committed.name


def test_bundle_is_small() -> None:
    assert sum(p.stat().st_size for p in BUNDLED_DIR.glob("*.csv")) < 5_000_000
