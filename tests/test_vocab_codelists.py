"""OpenCodelists CSV downloads into concept sets (issue 13, item 7), checked against a pandas oracle.

The CSV files in tests/data/opencodelists are written for these tests in the shapes OpenCodelists
downloads take (``code,term`` with CRLF line ends; dm+d's ``code,term,dmd_id,dmd_type,bnf_code`` and the
older ``dmd_type,dmd_id,dmd_name,bnf_code``; an uploaded CTV3 list with its own column names). Their
SNOMED codes are real (they are in OHDSI's Eunomia vocabulary); the ICD-10, Read and dm+d source
concepts are test rows added to Eunomia's vocabulary here (ids from 2,000,000,000), each mapped by a
'Maps to' row to a real Eunomia standard concept, so the mapping logic is tested against known answers.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cdm.load import load_folder
from mercia.errors import VocabularyError
from mercia.vocab.codelists import code_variants, map_codelist, read_codelist
from mercia.vocab.concept_sets import ConceptSet, resolve_concept_set

DATA = Path(__file__).parent / "data" / "opencodelists"
FIXTURE = 2_000_000_000

# (id, code, name, vocabulary, standard, maps to [(target, invalid_reason)])
SOURCE_ROWS = [
    (FIXTURE + 1, "K92.2", "Gastrointestinal haemorrhage, unspecified", "ICD10", None, [(192671, None)]),
    (FIXTURE + 2, "I21.9", "Acute myocardial infarction, unspecified", "ICD10", None, [(4329847, None)]),
    (FIXTURE + 3, "I10", "Essential (primary) hypertension", "ICD10", None, [(FIXTURE + 99, None)]),
    (FIXTURE + 4, "R69", "Illness, unspecified", "ICD10", None, []),
    (FIXTURE + 5, "K25", "Gastric ulcer", "ICD10", None, [(192671, "D")]),  # a deprecated mapping only
    (FIXTURE + 10, "39695211000001102", "Celecoxib 200mg capsules", "dm+d", None, [(1118088, None)]),
    (FIXTURE + 11, "42291011000001104", "Diclofenac sodium 75mg gastro-resistant tablets", "dm+d", None,
     [(40162359, None)]),
    (FIXTURE + 20, "J68..00", "Gastrointestinal haemorrhage", "Read", None, [(192671, None)]),
    (FIXTURE + 21, "G30..00", "Acute myocardial infarction", "Read", None, [(4329847, None), (FIXTURE + 99, None)]),
    (FIXTURE + 99, "59621000", "Essential hypertension (test row)", "SNOMED", "S", []),
]


def _add_fixture_vocabulary(cdm: Cdm) -> None:
    day, end = dt.date(2000, 1, 1), dt.date(2099, 12, 31)
    concepts = pd.DataFrame([{
        "concept_id": cid, "concept_name": name, "domain_id": "Condition" if vocab != "dm+d" else "Drug",
        "vocabulary_id": vocab, "concept_class_id": "test", "standard_concept": std, "concept_code": code,
        "valid_start_date": day, "valid_end_date": end, "invalid_reason": None} for cid, code, name, vocab, std, _ in
        SOURCE_ROWS])
    rels = pd.DataFrame([{
        "concept_id_1": cid, "concept_id_2": target, "relationship_id": "Maps to", "valid_start_date": day,
        "valid_end_date": end, "invalid_reason": inv} for cid, *_, maps in SOURCE_ROWS for target, inv in maps])
    cdm.insert_arrow("concept", pa.Table.from_pandas(concepts, preserve_index=False))
    cdm.insert_arrow("concept_relationship", pa.Table.from_pandas(rels, preserve_index=False))


@pytest.fixture(scope="module")
def cdm(eunomia_dir: Path) -> Iterator[Cdm]:
    handle = Cdm.open()
    load_folder(handle, eunomia_dir)
    _add_fixture_vocabulary(handle)
    yield handle
    handle.close()


# ---- the oracle: the same mapping written again in pandas ------------------------------------------
VOCAB = {"snomedct": "SNOMED", "icd10": "ICD10", "dmd": "dm+d", "ctv3": "Read", "readv2": "Read"}


def oracle(cdm: Cdm, csv_path: Path, code_col: str, system: str) -> tuple[dict[str, set[int]], set[str]]:
    concept = cdm.fetch_arrow("SELECT * FROM concept").to_pandas()
    rel = cdm.fetch_arrow("SELECT * FROM concept_relationship").to_pandas()
    codes = pd.read_csv(csv_path, dtype=str)[code_col].str.strip()
    voc = concept[concept["vocabulary_id"] == VOCAB[system]]
    std = set(concept.loc[concept["standard_concept"] == "S", "concept_id"])
    maps = rel[(rel["relationship_id"] == "Maps to") & rel["invalid_reason"].isna() & rel["concept_id_2"].isin(std)]
    mapped, unmapped = {}, set()
    for code in codes:
        spellings = [code]
        if system == "icd10":
            bare = code.rstrip("X") if len(code) == 4 else code
            spellings += [bare, bare[:3] + "." + bare[3:]] if len(bare) > 3 else [bare]
        if system in ("readv2", "ctv3"):
            spellings.append(code + "00")
        rows = voc[voc["concept_code"].isin(spellings)]
        targets: set[int] = set()
        for _, r in rows.iterrows():
            if r["standard_concept"] == "S" and r["invalid_reason"] is None:
                targets.add(int(r["concept_id"]))
            else:
                targets |= set(maps.loc[maps["concept_id_1"] == r["concept_id"], "concept_id_2"].astype(int))
        if targets:
            mapped[code] = targets
        else:
            unmapped.add(code)
    return mapped, unmapped


CASES = [
    ("snomedct-gi-bleed.csv", "code", "snomedct", {"999999999999"}),
    ("icd10-gi-bleed.csv", "code", "icd10", {"R69", "K25", "Z999"}),
    ("dmd-nsaids.csv", "code", "dmd", {"3000011000001101"}),
    ("dmd-nsaids-old.csv", "dmd_id", "dmd", set()),
    ("readv2-gi-bleed.csv", "code", "readv2", {"J6z.."}),
    ("ctv3-gi-bleed.csv", "CTV3ID", "ctv3", {"XaBL1"}),
]


@pytest.mark.parametrize(("name", "code_col", "system", "unmapped"), CASES)
def test_codelists_map_as_the_oracle_maps_them(cdm, name, code_col, system, unmapped):
    entries = read_codelist(DATA / name)
    mapping = map_codelist(cdm, entries, system)
    want_mapped, want_unmapped = oracle(cdm, DATA / name, code_col, system)
    assert {m.code: set(m.concept_ids) for m in mapping.mapped} == want_mapped
    assert {u.code for u in mapping.unmapped} == want_unmapped == unmapped
    assert set(mapping.concepts) == set().union(*want_mapped.values()) if want_mapped else not mapping.concepts
    # Unmapped codes keep their terms, and say why.
    df = pd.read_csv(DATA / name, dtype=str)
    term_col = next(c for c in ("term", "dmd_name", "CTV3PreferredTermDesc") if c in df.columns)
    terms = dict(zip(df[code_col], df[term_col], strict=True))
    for u in mapping.unmapped:
        assert u.term == terms[u.code] and u.reason


def test_known_answers(cdm):
    icd = map_codelist(cdm, read_codelist(DATA / "icd10-gi-bleed.csv"), "icd10")
    assert {m.code: m.concept_ids for m in icd.mapped} == {
        "K922": (192671,), "I219": (4329847,), "I10X": (FIXTURE + 99,)}
    reasons = {u.code: u.reason for u in icd.unmapped}
    assert "no valid 'Maps to'" in reasons["R69"] and "no valid 'Maps to'" in reasons["K25"]
    assert "not in the ICD10 vocabulary" in reasons["Z999"]
    read = map_codelist(cdm, read_codelist(DATA / "readv2-gi-bleed.csv"), "readv2")
    assert {m.code: m.concept_ids for m in read.mapped} == {"J68..": (192671,), "G30..": (4329847, FIXTURE + 99)}
    snomed = map_codelist(cdm, read_codelist(DATA / "snomedct-gi-bleed.csv"), "snomedct")
    assert sorted(snomed.concepts) == sorted([260139, 192671, 4329847])


def test_the_concept_set_is_atlas_json_that_mercia_resolves(cdm, tmp_path):
    mapping = map_codelist(cdm, read_codelist(DATA / "dmd-nsaids.csv"), "dmd")
    cs_json = mapping.concept_set(name="NSAIDs (dm+d)", id=3)
    assert cs_json["expression"]["items"][0]["concept"]["CONCEPT_ID"] == 1118088
    assert cs_json["expression"]["items"][0]["concept"]["VOCABULARY_ID"] == "RxNorm"
    cs = ConceptSet.from_atlas(json.loads(json.dumps(cs_json)))
    assert cs.id == 3 and cs.name == "NSAIDs (dm+d)"
    assert resolve_concept_set(cdm, cs) == [1118088, 40162359]


def test_code_variants():
    assert code_variants("icd10", "K922") == ["K922", "K92.2"]
    assert code_variants("icd10", "I10X") == ["I10X", "I10", "I10.X"]
    assert code_variants("icd10", "K92.2") == ["K92.2", "K922"]
    assert code_variants("readv2", "J68..") == ["J68..", "J68..00"]
    assert code_variants("snomedct", "74474003") == ["74474003"]


def test_bad_input_is_one_clear_line(cdm, tmp_path):
    with pytest.raises(VocabularyError, match="--system: 'icd9' is not one of snomedct, icd10, dmd, ctv3, readv2"):
        map_codelist(cdm, read_codelist(DATA / "icd10-gi-bleed.csv"), "icd9")
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(VocabularyError, match=r"no code column found.*foo, bar.*--code-column"):
        read_codelist(bad)
    assert [e.code for e in read_codelist(bad, code_column="foo")] == ["1"]
    with pytest.raises(VocabularyError, match="--code-column: 'baz' is not a column"):
        read_codelist(bad, code_column="baz")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(VocabularyError, match="is empty"):
        read_codelist(empty)
    with pytest.raises(VocabularyError, match="no file at"):
        read_codelist(tmp_path / "missing.csv")


def test_a_vocabulary_the_cdm_lacks_is_said_so(cdm, tmp_path):
    mapping = map_codelist(cdm, read_codelist(DATA / "snomedct-gi-bleed.csv"), "snomedct")
    assert mapping.vocabulary_loaded
    # A CDM whose vocabulary has no dm+d concept at all: every code unmapped, and the reason said once.
    with Cdm.open() as bare:
        bare.create_tables(["concept"])
        empty = map_codelist(bare, read_codelist(DATA / "dmd-nsaids.csv"), "dmd")
    assert not empty.vocabulary_loaded and len(empty.unmapped) == 3


def test_system_aliases(cdm):
    entries = read_codelist(DATA / "dmd-nsaids-old.csv")
    assert [m.code for m in map_codelist(cdm, entries, "dm+d").mapped] == ["39695211000001102", "42291011000001104"]


def test_cli_import_codelist(tmp_path, eunomia_dir: Path):
    from mercia.cli import app

    db = tmp_path / "eu.duckdb"
    with Cdm.open(db) as handle:
        load_folder(handle, eunomia_dir)
        _add_fixture_vocabulary(handle)
    out, unmapped = tmp_path / "gi.json", tmp_path / "unmapped.csv"
    r = CliRunner().invoke(app, ["concept", "import-codelist", str(DATA / "icd10-gi-bleed.csv"), "--system", "icd10",
                                 "--cdm", str(db), "--out", str(out), "--name", "GI bleed", "--unmapped",
                                 str(unmapped)])
    assert r.exit_code == 0, r.output
    assert "3 of 6 codes mapped" in r.stdout and "3 unmapped code(s)" in r.stdout
    for code in ("R69", "K25", "Z999"):
        assert code in r.stdout
    cs = ConceptSet.from_atlas(json.loads(out.read_text()))
    assert cs.name == "GI bleed" and sorted(i.concept_id for i in cs.items) == [192671, 4329847, FIXTURE + 99]
    rows = pd.read_csv(unmapped, dtype=str)
    assert list(rows.columns) == ["code", "term", "reason"] and set(rows["code"]) == {"R69", "K25", "Z999"}
    r = CliRunner().invoke(app, ["concept", "import-codelist", str(DATA / "icd10-gi-bleed.csv"), "--system", "opcs4",
                                 "--cdm", str(db), "--out", str(out)])
    assert r.exit_code == 1 and "--system" in r.output and "Traceback" not in r.output


@pytest.mark.postgres
def test_codelists_map_the_same_on_postgres(cdm, pg_cdm_factory, eunomia_dir: Path):
    pg = pg_cdm_factory()
    load_folder(pg, eunomia_dir)
    _add_fixture_vocabulary(pg)
    for name, _, system, _ in CASES:
        entries = read_codelist(DATA / name)
        a, b = map_codelist(pg, entries, system), map_codelist(cdm, entries, system)
        assert (a.mapped, a.unmapped, a.concepts) == (b.mapped, b.unmapped, b.concepts), name
