"""Loading Athena downloads: good folders load, bad cells are named by file, line and column, and a
failed load leaves the vocabulary tables as they were."""

from __future__ import annotations

from pathlib import Path

import pytest

from mercia.cdm import Cdm
from mercia.errors import VocabularyError
from mercia.vocab.athena import load_athena

CONCEPT_HEADER = (
    "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\tstandard_concept\t"
    "concept_code\tvalid_start_date\tvalid_end_date\tinvalid_reason"
)
CONCEPT_ROWS = [
    "201820\tDiabetes mellitus\tCondition\tSNOMED\tClinical Finding\tS\t73211009\t19700101\t20991231\t",
    "201826\tType 2 diabetes mellitus\tCondition\tSNOMED\tClinical Finding\tS\t44054006\t19700101\t20991231\t",
    "45533017\tType 2 diabetes mellitus\tCondition\tICD10\tICD10 code\t\tE11\t19700101\t20991231\t",
]
ANCESTOR = [
    "ancestor_concept_id\tdescendant_concept_id\tmin_levels_of_separation\tmax_levels_of_separation",
    "201820\t201820\t0\t0",
    "201826\t201826\t0\t0",
    "201820\t201826\t1\t1",
]
RELATIONSHIP = [
    "concept_id_1\tconcept_id_2\trelationship_id\tvalid_start_date\tvalid_end_date\tinvalid_reason",
    "45533017\t201826\tMaps to\t19700101\t20991231\t",
    "201826\t45533017\tMapped from\t19700101\t20991231\t",
]


def write_folder(folder: Path, concept_rows: list[str] | None = None, header: str = CONCEPT_HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "CONCEPT.csv").write_text("\n".join([header, *(concept_rows or CONCEPT_ROWS)]) + "\n")
    (folder / "CONCEPT_ANCESTOR.csv").write_text("\n".join(ANCESTOR) + "\n")
    (folder / "CONCEPT_RELATIONSHIP.csv").write_text("\n".join(RELATIONSHIP) + "\n")
    (folder / "VOCABULARY.csv").write_text(
        "vocabulary_id\tvocabulary_name\tvocabulary_reference\tvocabulary_version\tvocabulary_concept_id\n"
        "SNOMED\tSystematic Nomenclature of Medicine\t\tv1\t44819097\n"
    )
    return folder


def test_loads_a_folder(any_cdm: Cdm, tmp_path: Path) -> None:
    counts = load_athena(any_cdm, write_folder(tmp_path / "athena"))
    assert counts == {"vocabulary": 1, "concept": 3, "concept_relationship": 2, "concept_ancestor": 3}
    rows = any_cdm.fetch_all(
        "SELECT concept_id, standard_concept, invalid_reason, valid_start_date FROM "
        + any_cdm.qualified("concept")
        + " ORDER BY concept_id"
    )
    assert [(r[0], r[1], r[2], str(r[3])) for r in rows] == [
        (201820, "S", None, "1970-01-01"),
        (201826, "S", None, "1970-01-01"),
        (45533017, None, None, "1970-01-01"),
    ]
    assert any_cdm.scalar("SELECT vocabulary_reference FROM " + any_cdm.qualified("vocabulary")) is None


def test_header_case_order_crlf_and_lowercase_file_names(duck_cdm: Cdm, tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    cols = CONCEPT_HEADER.upper().split("\t")
    order = [1, 0, *range(2, 10)]  # columns in another order
    lines = ["\t".join(cols[i] for i in order)]
    for row in CONCEPT_ROWS:
        cells = row.split("\t")
        lines.append("\t".join(cells[i] for i in order))
    (folder / "concept.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    assert load_athena(duck_cdm, folder) == {"concept": 3}
    assert duck_cdm.scalar("SELECT concept_name FROM main.concept WHERE concept_id = 201826") == (
        "Type 2 diabetes mellitus"
    )


def test_iso_dates_are_accepted(duck_cdm: Cdm, tmp_path: Path) -> None:
    rows = [CONCEPT_ROWS[0].replace("19700101", "1970-01-01")]
    load_athena(duck_cdm, write_folder(tmp_path / "a", rows))
    assert str(duck_cdm.scalar("SELECT valid_start_date FROM main.concept")) == "1970-01-01"


BAD = [
    ("not a whole number", 1, "201826x\tT2\tCondition\tSNOMED\tClinical Finding\tS\t1\t19700101\t20991231\t",
     r"CONCEPT\.csv, line 3, column concept_id: expected a whole number \(value '201826x'\)"),
    ("impossible date", 0, "5\tX\tCondition\tSNOMED\tClinical Finding\tS\t1\t20230231\t20991231\t",
     r"CONCEPT\.csv, line 2, column valid_start_date: expected a date as YYYYMMDD \(value '20230231'\)"),
    ("short date", 2, "5\tX\tCondition\tSNOMED\tClinical Finding\tS\t1\t19700101\t2099123\t",
     r"line 4, column valid_end_date: expected a date"),
    ("empty required", 1, "5\t\tCondition\tSNOMED\tClinical Finding\tS\t1\t19700101\t20991231\t",
     r"line 3, column concept_name: a value is required"),
    ("too few fields", 1, "5\tX\tCondition\tSNOMED",
     r"CONCEPT\.csv, line 3: expected 10 tab-separated fields, found 4"),
    ("too long", 0, "5\tX\tCondition\tSNOMED\tClinical Finding\tSS\t1\t19700101\t20991231\t",
     r"line 2, column standard_concept: text longer than the 1 characters"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "at", "bad_row", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_cell_is_named_and_nothing_is_written(
    any_cdm: Cdm, tmp_path: Path, label: str, at: int, bad_row: str, message: str
) -> None:
    # A vocabulary already in place, then a replacing load that fails part-way: nothing changes.
    load_athena(any_cdm, write_folder(tmp_path / "good"))
    before = {
        t: any_cdm.row_count(t) for t in ("concept", "concept_ancestor", "concept_relationship", "vocabulary")
    }
    rows = list(CONCEPT_ROWS)
    rows.insert(at, bad_row)
    with pytest.raises(VocabularyError, match=message):
        load_athena(any_cdm, write_folder(tmp_path / "bad", rows), replace=True)
    after = {t: any_cdm.row_count(t) for t in before}
    assert after == before
    assert any_cdm.scalar(
        "SELECT concept_name FROM " + any_cdm.qualified("concept") + " WHERE concept_id = 201826"
    )


def test_unknown_and_missing_columns(duck_cdm: Cdm, tmp_path: Path) -> None:
    with pytest.raises(VocabularyError, match=r"CONCEPT\.csv, line 1: unknown column\(s\) colour"):
        load_athena(duck_cdm, write_folder(tmp_path / "a", header=CONCEPT_HEADER + "\tcolour"))
    header = CONCEPT_HEADER.replace("concept_code\t", "")
    rows = ["\t".join(c for i, c in enumerate(r.split("\t")) if i != 6) for r in CONCEPT_ROWS]
    with pytest.raises(VocabularyError, match=r"required column\(s\) concept_code missing"):
        load_athena(duck_cdm, write_folder(tmp_path / "b", rows, header=header))
    assert not duck_cdm.table_exists("concept") or duck_cdm.row_count("concept") == 0


def test_folder_problems(duck_cdm: Cdm, tmp_path: Path) -> None:
    with pytest.raises(VocabularyError, match="does not exist"):
        load_athena(duck_cdm, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VocabularyError, match=r"has no CONCEPT\.csv"):
        load_athena(duck_cdm, tmp_path / "empty")
    folder = write_folder(tmp_path / "blank")
    (folder / "CONCEPT.csv").write_text("")
    with pytest.raises(VocabularyError, match=r"CONCEPT\.csv: the file is empty"):
        load_athena(duck_cdm, folder)


def test_loading_twice_needs_replace(duck_cdm: Cdm, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "a")
    load_athena(duck_cdm, folder)
    with pytest.raises(VocabularyError, match=r"table vocabulary already holds 1 row; .*replace=True"):
        load_athena(duck_cdm, folder)
    assert load_athena(duck_cdm, folder, replace=True)["concept"] == 3
    assert duck_cdm.row_count("concept") == 3


@pytest.mark.parametrize("version", ["5.3", "5.4"])
def test_bundled_vocabulary_loads_on_each_engine_and_cdm_version(cdm_factory, version: str) -> None:
    from mercia.vocab import load_bundled_vocabulary
    from mercia.vocab.athena import BUNDLED_DIR

    cdm = cdm_factory(version=version)
    counts = load_bundled_vocabulary(cdm)
    for name, n in counts.items():
        lines = (BUNDLED_DIR / f"{name.upper()}.csv").read_text().count("\n") - 1
        assert n == lines == cdm.row_count(name), name


def test_line_numbers_hold_across_read_blocks(tmp_path: Path) -> None:
    from mercia.cdm import cdm_spec
    from mercia.vocab.athena import iter_athena_file, read_athena_file

    spec = cdm_spec("5.4").table("concept_ancestor")
    rows = [ANCESTOR[0]] + [f"{i}\t{i}\t0\t0" for i in range(1, 400)]
    path = tmp_path / "CONCEPT_ANCESTOR.csv"
    path.write_text("\n".join(rows) + "\n")
    assert sum(t.num_rows for t in iter_athena_file(path, spec, block_size=512)) == 399
    assert read_athena_file(path, spec).num_rows == 399
    rows[350] = "350\tx\t0\t0"  # file line 351
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(VocabularyError, match=r"line 351, column descendant_concept_id"):
        list(iter_athena_file(path, spec, block_size=512))
    rows[350] = "350\t350\t0"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(VocabularyError, match=r"line 351: expected 4 tab-separated fields, found 3"):
        list(iter_athena_file(path, spec, block_size=512))
