"""Load an OHDSI Athena vocabulary download into a CDM's vocabulary tables.

Athena ships one tab-separated file per table (CONCEPT.csv, CONCEPT_ANCESTOR.csv, ...), quoting off,
dates as YYYYMMDD, empty fields for nulls. Every file is checked cell by cell against the CDM
specification before its rows are written; the first bad cell stops the load with an error naming
file, line and column, and the whole load runs in one transaction so a failure leaves the
vocabulary tables exactly as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cdm.spec import FieldSpec, TableSpec
from mercia.errors import VocabularyError

# Loaded in this order: small reference tables first, the large hierarchy last.
ATHENA_TABLES: tuple[str, ...] = (
    "vocabulary",
    "domain",
    "concept_class",
    "relationship",
    "concept",
    "concept_synonym",
    "concept_relationship",
    "drug_strength",
    "concept_ancestor",
)
_REQUIRED_FILES = ("concept",)

_INT = r"^[+-]?[0-9]+$"
_FLOAT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_INT32 = (-(2**31), 2**31 - 1)


def athena_files(folder: str | Path) -> dict[str, Path]:
    """The Athena files present in `folder`, by CDM table name (file names matched in any case)."""
    root = Path(folder)
    if not root.is_dir():
        raise VocabularyError(f"Athena folder {str(root)!r} does not exist or is not a folder")
    by_lower = {p.name.lower(): p for p in root.iterdir() if p.is_file()}
    found = {t: by_lower[f"{t}.csv"] for t in ATHENA_TABLES if f"{t}.csv" in by_lower}
    missing = [f"{t.upper()}.csv" for t in _REQUIRED_FILES if t not in found]
    if missing:
        raise VocabularyError(
            f"Athena folder {str(root)!r} has no {', '.join(missing)}; point to the unzipped Athena download"
        )
    return found


def _header(path: Path) -> list[str]:
    with path.open("rb") as f:
        first = f.readline()
    if not first.strip():
        raise VocabularyError(f"{path.name}: the file is empty; expected a header line naming the columns")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise VocabularyError(f"{path.name}, line 1: the header is not UTF-8 text") from e
    return [c.strip().lower() for c in text.rstrip("\r\n").split("\t")]


def _bad(path: Path, line: int, column: str, problem: str, value: object | None = None) -> VocabularyError:
    shown = "" if value is None else f" (value {value!r})"
    return VocabularyError(
        f"{path.name}, line {line}, column {column}: {problem}{shown}; correct the file or download it again from Athena"
    )


def _first(mask: pa.ChunkedArray | pa.Array) -> int | None:
    idx = pc.index(pc.fill_null(mask, False), True).as_py()
    return None if idx < 0 else idx


def _convert(
    path: Path, f: FieldSpec, col: pa.ChunkedArray | pa.Array, line0: int
) -> pa.ChunkedArray | pa.Array:
    """Check and convert one column of strings to its CDM type; raises at the first bad cell.

    `line0` is the file line of the column's first value.
    """
    empty = pc.equal(pc.utf8_length(col), 0)
    if f.required:
        i = _first(empty)
        if i is not None:
            raise _bad(path, line0 + i, f.name, "a value is required here but the field is empty")
    target = f.arrow_type()
    nonempty = pc.invert(empty)
    t = f.type
    if t in ("integer", "bigint", "float"):
        pattern = _FLOAT if t == "float" else _INT
        i = _first(pc.and_(nonempty, pc.invert(pc.match_substring_regex(col, pattern))))
        if i is not None:
            raise _bad(
                path,
                line0 + i,
                f.name,
                f"expected {'a number' if t == 'float' else 'a whole number'}",
                col[i].as_py(),
            )
        values = pc.if_else(empty, pa.scalar(None, pa.string()), col)
        if t == "float":
            return pc.cast(values, pa.float64())
        try:
            ints = pc.cast(values, pa.int64())
        except pa.ArrowInvalid as e:  # beyond 64 bits
            raise VocabularyError(f"{path.name}, column {f.name}: a number is too large ({e})") from e
        if target == pa.int32():
            out = pc.or_(pc.less(ints, _INT32[0]), pc.greater(ints, _INT32[1]))
            i = _first(out)
            if i is not None:
                raise _bad(
                    path, line0 + i, f.name, "number out of range for a 32-bit integer", col[i].as_py()
                )
        return pc.cast(ints, target)
    if t in ("date", "datetime"):
        # Athena writes YYYYMMDD; ISO dates (YYYY-MM-DD) from other exports are accepted too.
        compact = pc.replace_substring_regex(col, r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$", r"\1\2\3")
        shape_ok = pc.match_substring_regex(compact, r"^[0-9]{8}$")
        parsed = pc.strptime(pc.if_else(shape_ok, compact, pa.scalar("19700101")), format="%Y%m%d", unit="s")
        # Arrow's parser rolls 20230231 over to 3 March; a round trip catches impossible dates.
        same = pc.equal(pc.strftime(parsed, format="%Y%m%d"), compact)
        i = _first(pc.and_(nonempty, pc.invert(pc.and_(shape_ok, same))))
        if i is not None:
            raise _bad(path, line0 + i, f.name, "expected a date as YYYYMMDD", col[i].as_py())
        dates = pc.if_else(empty, pa.scalar(None, pa.timestamp("s")), parsed)
        return pc.cast(dates, target)
    # varchar(n) / varchar(max)
    if t.startswith("varchar(") and t != "varchar(max)":
        limit = int(t[len("varchar(") : -1])
        i = _first(pc.greater(pc.utf8_length(col), limit))
        if i is not None:
            raise _bad(
                path,
                line0 + i,
                f.name,
                f"text longer than the {limit} characters the CDM allows",
                col[i].as_py(),
            )
    return pc.if_else(empty, pa.scalar(None, pa.string()), col)


def iter_athena_file(path: str | Path, spec: TableSpec, *, block_size: int = 32 << 20) -> Iterator[pa.Table]:
    """Read and check one Athena file a block at a time (memory stays bounded on Athena's largest
    files); yields Arrow tables with the spec's columns and types."""
    path = Path(path)
    names = _header(path)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise VocabularyError(
            f"{path.name}, line 1: column(s) {', '.join(dupes)} appear more than once in the header"
        )
    unknown = [n for n in names if n not in spec.column_names]
    if unknown:
        raise VocabularyError(
            f"{path.name}, line 1: unknown column(s) {', '.join(unknown)}; "
            f"table {spec.name} has {', '.join(spec.column_names)}"
        )
    missing = [f.name for f in spec.fields if f.required and f.name not in names]
    if missing:
        raise VocabularyError(
            f"{path.name}, line 1: required column(s) {', '.join(missing)} missing from the header"
        )

    bad_rows: list[tuple[int | None, str, int, int]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad_rows.append((row.number, row.text, row.expected_columns, row.actual_columns))
        return "skip"

    def check_rows() -> None:
        if bad_rows:
            number, text, expected, actual = bad_rows[0]
            line = number if number is not None else _line_of(path, text)
            raise VocabularyError(
                f"{path.name}, line {line}: expected {expected} tab-separated fields, found {actual}; "
                "correct the file or download it again from Athena"
            )

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=block_size),
            parse_options=pacsv.ParseOptions(
                delimiter="\t", quote_char=False, escape_char=False, invalid_row_handler=on_invalid
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        line0 = 2
        for batch in reader:
            check_rows()
            columns = []
            for f in spec.fields:
                if f.name in names:
                    columns.append(_convert(path, f, batch.column(f.name), line0))
                else:
                    columns.append(pa.nulls(batch.num_rows, f.arrow_type()))
            line0 += batch.num_rows
            yield pa.Table.from_arrays(columns, schema=spec.arrow_schema())
        check_rows()
    except pa.ArrowInvalid as e:
        raise VocabularyError(f"{path.name}: cannot be read as a tab-separated Athena file ({e})") from e


def read_athena_file(path: str | Path, spec: TableSpec) -> pa.Table:
    """Read and check one whole Athena file; an Arrow table with the spec's columns and types."""
    batches = list(iter_athena_file(path, spec))
    if not batches:
        return spec.arrow_schema().empty_table()
    return pa.concat_tables(batches)


def _line_of(path: Path, text: str) -> int | str:
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if line.rstrip("\r\n") == text:
                return n
    return "?"


def load_athena(
    cdm: Cdm, folder: str | Path, *, replace: bool = False, tables: list[str] | None = None
) -> dict[str, int]:
    """Load the Athena files in `folder` into `cdm`'s vocabulary tables; returns rows loaded per table.

    All files load in one transaction. A table that already holds rows is an error unless
    `replace=True`, which empties it first (inside the same transaction).
    """
    files = athena_files(folder)
    if tables is not None:
        files = {t: p for t, p in files.items() if t in {x.lower() for x in tables}}
    counts: dict[str, int] = {}
    with cdm.transaction():
        cdm.create_tables([t for t in ATHENA_TABLES if t in files])
        for table, path in files.items():
            existing = cdm.row_count(table)
            if existing and not replace:
                raise VocabularyError(
                    f"table {table} already holds {existing} row{'' if existing == 1 else 's'}; load into an empty vocabulary or pass "
                    "replace=True to replace it"
                )
            if existing:
                cdm.execute(exp.Delete(this=cdm.table(table)))
            counts[table] = 0
            for data in iter_athena_file(path, cdm.spec.table(table)):
                cdm.insert_arrow(table, data)
                counts[table] += data.num_rows
    return counts


BUNDLED_DIR = Path(__file__).parent / "data"


def load_bundled_vocabulary(cdm: Cdm, *, replace: bool = False) -> dict[str, int]:
    """Load Mercia's bundled vocabulary subset (Eunomia's concepts, the catalog, cohort concept sets)."""
    return load_athena(cdm, BUNDLED_DIR, replace=replace)
