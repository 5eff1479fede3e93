"""Loading folders of CSV/Parquet into a CDM: formats, error messages, all-or-nothing, Eunomia."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mercia.cdm import Cdm
from mercia.cdm.load import load_folder
from mercia.errors import LoadError

PERSON_HEADER = "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id"
OBS_HEADER = "observation_period_id,person_id,observation_period_start_date,observation_period_end_date,period_type_concept_id"


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def good_files() -> dict[str, str]:
    return {
        "person.csv": f"{PERSON_HEADER}\n1,8507,1970,0,0\n2,8532,1980,0,0\n",
        "observation_period.csv": f"{OBS_HEADER}\n1,1,2010-01-01,2015-12-31,32817\n2,2,20120301,20200229,32817\n",
    }


def snapshot(cdm: Cdm) -> dict[str, int | None]:
    """Which tables exist and their row counts: what a failed load must leave unchanged."""
    return {t: (cdm.row_count(t) if cdm.table_exists(t) else None) for t in cdm.spec.tables}


# ---- formats --------------------------------------------------------------------------------------
def test_load_csv_comma_iso_and_athena_dates(tmp_path: Path, duck_cdm: Cdm) -> None:
    counts = load_folder(duck_cdm, write(tmp_path / "in", good_files()))
    assert counts == {"observation_period": 2, "person": 2}
    rows = duck_cdm.fetch_all(
        "SELECT person_id, observation_period_start_date, observation_period_end_date "
        "FROM observation_period ORDER BY 1"
    )
    assert rows == [
        (1, dt.date(2010, 1, 1), dt.date(2015, 12, 31)),
        (2, dt.date(2012, 3, 1), dt.date(2020, 2, 29)),
    ]


def test_load_tab_separated_upper_case_names(tmp_path: Path, duck_cdm: Cdm) -> None:
    header = PERSON_HEADER.upper().replace(",", "\t") + "\tPERSON_SOURCE_VALUE\tBIRTH_DATETIME"
    text = f"{header}\n1\t8507\t1970\t0\t0\tP, one\t1970-05-02 10:30:00\n2\t8532\t1980\t0\t0\t\t\n"
    load_folder(duck_cdm, write(tmp_path / "in", {"PERSON.csv": text}))
    rows = duck_cdm.fetch_all("SELECT person_id, person_source_value, birth_datetime FROM person ORDER BY 1")
    assert rows == [(1, "P, one", dt.datetime(1970, 5, 2, 10, 30)), (2, None, None)]


def test_load_quoted_values_with_newlines(tmp_path: Path, duck_cdm: Cdm) -> None:
    text = f'{PERSON_HEADER},person_source_value\n1,8507,1970,0,0,"two\nlines"\n2,8532,1980,0,0,x\n'
    load_folder(duck_cdm, write(tmp_path / "in", {"person.csv": text}))
    assert duck_cdm.fetch_all("SELECT person_source_value FROM person ORDER BY person_id") == [
        ("two\nlines",),
        ("x",),
    ]


def test_load_parquet(tmp_path: Path, duck_cdm: Cdm) -> None:
    (tmp_path / "in").mkdir()
    pq.write_table(
        pa.table(
            {
                "PERSON_ID": [1, 2],
                "gender_concept_id": [8507, 8532],
                "year_of_birth": [1970, 1980],
                "race_concept_id": [0, 0],
                "ethnicity_concept_id": [0, 0],
            }
        ),
        tmp_path / "in" / "Person.parquet",
    )
    assert load_folder(duck_cdm, tmp_path / "in") == {"person": 2}


# ---- version --------------------------------------------------------------------------------------
def test_version_detected_from_visit_columns(tmp_path: Path, duck_cdm: Cdm) -> None:
    visit53 = (
        "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_end_date,"
        "visit_type_concept_id,admitting_source_concept_id\n1,1,9201,2020-01-01,2020-01-02,44818517,0\n"
    )
    load_folder(duck_cdm, write(tmp_path / "in", {"visit_occurrence.csv": visit53}))
    assert duck_cdm.version == "5.3"
    assert "admitting_source_concept_id" in (duck_cdm.columns("visit_occurrence") or [])


def test_version_mismatch_with_existing_tables(tmp_path: Path, duck_cdm: Cdm) -> None:
    duck_cdm.create_tables()  # v5.4
    visit53 = (
        "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_end_date,"
        "visit_type_concept_id,admitting_source_concept_id\n"
    )
    with pytest.raises(LoadError, match=r"v5\.3 but the CDM already holds v5\.4"):
        load_folder(duck_cdm, write(tmp_path / "in", {"visit_occurrence.csv": visit53}))


def test_explicit_version_argument(tmp_path: Path, duck_cdm: Cdm) -> None:
    load_folder(duck_cdm, write(tmp_path / "in", good_files()), version="5.3")
    assert duck_cdm.version == "5.3"
    with pytest.raises(LoadError, match=r"unsupported CDM version '6\.0'"):
        load_folder(duck_cdm, tmp_path / "in", version="6.0")


# ---- errors name file, line and column ------------------------------------------------------------
@pytest.mark.parametrize(
    ("files", "pattern"),
    [
        ({"persons.csv": "a\n1\n"}, r"persons\.csv: 'persons' is not a table of OMOP CDM"),
        (
            {"person.csv": f"{PERSON_HEADER},shoe_size\n1,8507,1970,0,0,9\n"},
            r"person\.csv, line 1, column shoe_size: not a column of person",
        ),
        (
            {"person.csv": "person_id,gender_concept_id,race_concept_id,ethnicity_concept_id\n1,8507,0,0\n"},
            r"person\.csv, line 1, column year_of_birth: required column of person is missing",
        ),
        (
            {"person.csv": f"{PERSON_HEADER}\n1,8507,1970,0,0\n2,8507,abc,0,0\n"},
            r"person\.csv, line 3, column year_of_birth: the value is not a valid integer",
        ),
        (
            {"person.csv": f"{PERSON_HEADER}\n1,8507,1970,0,0\n2,8507,1970.5,0,0\n"},
            r"person\.csv, line 3, column year_of_birth: the value is not a valid integer",
        ),
        (
            {
                "observation_period.csv": f"{OBS_HEADER}\n1,1,2010-01-01,2015-12-31,1\n2,2,2010-01-01,2015-12-31,1\n"
                "3,3,2010-02-30,2015-12-31,1\n"
            },
            r"observation_period\.csv, line 4, column observation_period_start_date: the value is not a valid date",
        ),
        (
            {"observation_period.csv": f"{OBS_HEADER}\n1,1,2010-01-01,31/12/2015,1\n"},
            r"line 2, column observation_period_end_date: the value is not a valid date; use YYYY-MM-DD",
        ),
        (
            {"person.csv": f"{PERSON_HEADER}\n1,8507,1970,0,0\n2,,1980,0,0\n"},
            r"person\.csv, line 3, column gender_concept_id: empty value in a required column",
        ),
        (
            {"person.csv": f"{PERSON_HEADER}\n1,8507,1970,0,0\n2,8507,1980\n"},
            r"person\.csv, line 3: too few fields \(3, the header has 5\)",
        ),
        (
            {"person.csv": f"{PERSON_HEADER}\n1,8507,1970,0,0\n2,8507,1980,0,0,7\n"},
            r"person\.csv, line 3: too many fields",
        ),
        (
            {
                "person.csv": f'{PERSON_HEADER},person_source_value\n1,8507,1970,0,0,a\n2,8507,1980,0,0,"unterminated\n'
            },
            r"person\.csv, line 3: .*unterminated quote",
        ),
        ({"person.csv": "", "death.csv": "person_id\n"}, r"person\.csv, line 1: the header row is empty"),
    ],
)
def test_errors_name_file_line_column(
    tmp_path: Path, duck_cdm: Cdm, files: dict[str, str], pattern: str
) -> None:
    with pytest.raises(LoadError, match=pattern):
        load_folder(duck_cdm, write(tmp_path / "in", files))


def test_line_numbers_count_multiline_values(tmp_path: Path, duck_cdm: Cdm) -> None:
    text = f'{PERSON_HEADER},person_source_value\n1,8507,1970,0,0,"a\nb\nc"\n2,8507,19x0,0,0,d\n'
    with pytest.raises(LoadError, match=r"line 5, column year_of_birth: the value is not"):
        load_folder(duck_cdm, write(tmp_path / "in", {"person.csv": text}))


def test_parquet_errors_name_row(tmp_path: Path, duck_cdm: Cdm) -> None:
    (tmp_path / "in").mkdir()
    pq.write_table(
        pa.table(
            {
                "person_id": ["1", "x"],
                "gender_concept_id": [1, 1],
                "year_of_birth": [1, 1],
                "race_concept_id": [0, 0],
                "ethnicity_concept_id": [0, 0],
            }
        ),
        tmp_path / "in" / "person.parquet",
    )
    with pytest.raises(
        LoadError, match=r"person\.parquet, row 2, column person_id: the value is not a valid integer"
    ):
        load_folder(duck_cdm, tmp_path / "in")


def test_folder_errors(tmp_path: Path, duck_cdm: Cdm) -> None:
    with pytest.raises(LoadError, match="does not exist"):
        load_folder(duck_cdm, tmp_path / "nowhere")
    (tmp_path / "file.csv").write_text("x")
    with pytest.raises(LoadError, match="is not a folder"):
        load_folder(duck_cdm, tmp_path / "file.csv")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(LoadError, match=r"holds no \.csv, \.tsv or \.parquet files"):
        load_folder(duck_cdm, tmp_path / "empty")
    write(tmp_path / "dup", {"person.csv": PERSON_HEADER + "\n", "PERSON.tsv": PERSON_HEADER + "\n"})
    with pytest.raises(LoadError, match="are both table 'person'"):
        load_folder(duck_cdm, tmp_path / "dup")


def test_unreadable_file(tmp_path: Path, duck_cdm: Cdm) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    folder = write(tmp_path / "in", good_files())
    (folder / "person.csv").chmod(0)
    with pytest.raises(LoadError, match=r"cannot read person\.csv"):
        load_folder(duck_cdm, folder)


def test_not_utf8(tmp_path: Path, duck_cdm: Cdm) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "person.csv").write_bytes(
        f"{PERSON_HEADER},person_source_value\n1,8507,1970,0,0,\xe9\n".encode("latin-1")
    )
    with pytest.raises(LoadError, match="not UTF-8"):
        load_folder(duck_cdm, folder)


# ---- all or nothing, on every engine ----------------------------------------------------------------
def test_failed_load_leaves_cdm_unchanged(tmp_path: Path, cdm_factory: Callable[..., Cdm]) -> None:
    cdm = cdm_factory()
    load_folder(cdm, write(tmp_path / "first", {"person.csv": f"{PERSON_HEADER}\n10,8507,1970,0,0\n"}))
    before = snapshot(cdm)
    bad = good_files() | {"death.csv": "person_id,death_date,death_type_concept_id\n1,2020-13-01,0\n"}
    with pytest.raises(LoadError, match=r"death\.csv, line 2, column death_date"):
        load_folder(cdm, write(tmp_path / "bad", bad), mode="append")
    assert snapshot(cdm) == before


def test_failure_while_writing_rolls_back(
    tmp_path: Path, cdm_factory: Callable[..., Cdm], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after some tables were written (here: injected on the second insert) undoes them all."""
    cdm = cdm_factory()
    load_folder(cdm, write(tmp_path / "first", {"person.csv": f"{PERSON_HEADER}\n10,8507,1970,0,0\n"}))
    before = snapshot(cdm)
    real_insert = cdm.insert_arrow
    calls = []

    def failing_insert(name: str, data: pa.Table) -> None:
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        real_insert(name, data)

    monkeypatch.setattr(cdm, "insert_arrow", failing_insert)
    with pytest.raises(RuntimeError, match="disk full"):
        load_folder(cdm, write(tmp_path / "two", good_files()), mode="append")
    assert len(calls) == 2
    assert snapshot(cdm) == before


# ---- Eunomia (OHDSI's GiBleed, CDM v5.3 Parquet) ----------------------------------------------------
EUNOMIA_COUNTS = {
    "person": 2694,
    "observation_period": 5343,
    "visit_occurrence": 1037,
    "condition_occurrence": 65332,
    "drug_exposure": 67707,
    "measurement": 44053,
    "observation": 1477,
    "condition_era": 65719,
    "drug_era": 52508,
    "procedure_occurrence": 37409,
    "concept": 444,
    "concept_ancestor": 65690,
}


def test_load_eunomia(eunomia_dir: Path, cdm_factory: Callable[..., Cdm]) -> None:
    cdm = cdm_factory()
    started = time.perf_counter()
    counts = load_folder(cdm, eunomia_dir)
    seconds = time.perf_counter() - started
    print(f"Eunomia loaded on {cdm.dialect} in {seconds:.2f} s")
    assert cdm.version == "5.3"
    for table, n in EUNOMIA_COUNTS.items():
        assert counts[table] == n, table
        assert cdm.row_count(table) == n, table
    # Tables in the files and in the v5.3 spec load even when empty.
    for table in ("cost", "attribute_definition", "fact_relationship", "note_nlp"):
        assert cdm.table_exists(table) and counts[table] == 0


@pytest.mark.slow
def test_million_rows_load_in_seconds(tmp_path: Path, duck_cdm: Cdm) -> None:
    import pyarrow.csv as pacsv

    n = 1_000_000
    ids = pa.array(range(1, n + 1), pa.int64())
    table = pa.table(
        {
            "observation_period_id": ids,
            "person_id": ids,
            "observation_period_start_date": pa.array([dt.date(2010, 1, 1)] * n),
            "observation_period_end_date": pa.array([dt.date(2020, 1, 1)] * n),
            "period_type_concept_id": pa.array([32817] * n, pa.int64()),
        }
    )
    (tmp_path / "in").mkdir()
    pacsv.write_csv(table, tmp_path / "in" / "observation_period.csv")
    started = time.perf_counter()
    assert load_folder(duck_cdm, tmp_path / "in") == {"observation_period": n}
    assert time.perf_counter() - started < 20


def test_tab_files_without_quoting_keep_bare_quotes(tmp_path: Path, duck_cdm: Cdm) -> None:
    """Athena-style: tab separated, unquoted, YYYYMMDD dates, and a bare quote inside a value."""
    text = (
        "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\tstandard_concept\tconcept_code\t"
        "valid_start_date\tvalid_end_date\tinvalid_reason\n"
        '1\tTablet 5" long\tDrug\tRxNorm\tClinical Drug\tS\t123\t19700101\t20991231\t\n'
    )
    load_folder(duck_cdm, write(tmp_path / "in", {"CONCEPT.csv": text}))
    assert duck_cdm.fetch_all("SELECT concept_name, valid_start_date FROM concept") == [
        ('Tablet 5" long', dt.date(1970, 1, 1))
    ]


def test_quoted_tab_file(tmp_path: Path, duck_cdm: Cdm) -> None:
    header = "\t".join(f'"{c}"' for c in PERSON_HEADER.split(",")) + '\t"person_source_value"'
    text = f'{header}\n1\t8507\t1970\t0\t0\t"a\tb"\n'
    load_folder(duck_cdm, write(tmp_path / "in", {"person.tsv": text}))
    assert duck_cdm.fetch_all("SELECT person_source_value FROM person") == [("a\tb",)]


def test_parquet_dictionary_and_nanosecond_columns(tmp_path: Path, duck_cdm: Cdm) -> None:
    (tmp_path / "in").mkdir()
    table = pa.table(
        {
            "person_id": [1],
            "gender_concept_id": [8507],
            "year_of_birth": [1970],
            "race_concept_id": [0],
            "ethnicity_concept_id": [0],
            "person_source_value": pa.array(["p1"]).dictionary_encode(),
            "birth_datetime": pa.array([1_000_000_000_123_456_789], pa.timestamp("ns")),
        }
    )
    pq.write_table(table, tmp_path / "in" / "person.parquet")
    load_folder(duck_cdm, tmp_path / "in")
    assert duck_cdm.fetch_all("SELECT person_source_value, birth_datetime FROM person") == [
        ("p1", dt.datetime(2001, 9, 9, 1, 46, 40, 123456))
    ]


def test_errors_never_quote_clinical_values(tmp_path: Path, duck_cdm: Cdm) -> None:
    """Error messages leave the node (logs, HTTP); a clinical cell may be a date of birth or an id."""
    text = f"{PERSON_HEADER},birth_datetime\n1,8507,1970,0,0,1970-13-45 SECRET\n"
    with pytest.raises(LoadError) as info:
        load_folder(duck_cdm, write(tmp_path / "in", {"person.csv": text}))
    assert "SECRET" not in str(info.value) and info.value.__cause__ is None
    assert "line 2, column birth_datetime" in str(info.value)
    text = f"{PERSON_HEADER}\n1,8507,1970,0\n1,8507,1971,0,SECRET\n"
    with pytest.raises(LoadError) as info:
        load_folder(duck_cdm, write(tmp_path / "in2", {"person.csv": text}))
    assert "SECRET" not in str(info.value) and "line 2: too few fields" in str(info.value)


def test_vocabulary_errors_show_the_value(tmp_path: Path, duck_cdm: Cdm) -> None:
    text = (
        "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\tstandard_concept\tconcept_code\t"
        "valid_start_date\tvalid_end_date\tinvalid_reason\n"
        "1\tx\tDrug\tRxNorm\tClinical Drug\tS\t123\t19701301\t20991231\t\n"
    )
    with pytest.raises(
        LoadError, match=r"CONCEPT\.csv, line 2, column valid_start_date: '19701301' is not a valid date"
    ):
        load_folder(duck_cdm, write(tmp_path / "in", {"CONCEPT.csv": text}))


def test_unreadable_folder(tmp_path: Path, duck_cdm: Cdm, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permissions cannot be taken from root, who runs these tests in CI: simulate the refusal."""
    folder = write(tmp_path / "in", good_files())

    def refuse(self: Path):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(LoadError, match=r"cannot read folder .*Permission denied; check its permissions"):
        load_folder(duck_cdm, folder)
