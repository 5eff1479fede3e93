"""Load a folder of CSV or Parquet files into a CDM, all or nothing.

Every file is read and checked against the CDM spec before anything is written, so a bad file is
reported with its name, line and column and the CDM is left exactly as it was. The checks run on
whole Arrow columns (fast); only when a column fails does a bisection find the first bad row, so
the happy path stays vectorised and the error path still names the line.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlglot import exp

from mercia.cdm.engines import local_path
from mercia.cdm.handle import Cdm
from mercia.cdm.interrupt import InterruptFlag, deferred_interrupt
from mercia.cdm.spec import SUPPORTED_VERSIONS, FieldSpec, TableSpec, cdm_spec
from mercia.errors import LoadError

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")

# Tables whose presence alone tells the version: 5.3 dropped from 5.4, or new in 5.4.
_ONLY_53 = {"attribute_definition"}
_ONLY_54 = {"episode", "episode_event"}


@dataclass
class _Source:
    path: Path
    table: str
    kind: str  # "csv" | "parquet"

    @property
    def name(self) -> str:
        return self.path.name


MODES = ("new", "append", "replace")


def load_folder(cdm: Cdm, folder: str | Path, *, version: str | None = None, mode: str = "new",
                interrupt: InterruptFlag | None = None) -> dict[str, int]:
    """Load every CSV/Parquet file in `folder` into `cdm`; returns rows loaded per table.

    File names are CDM table names in any case (`PERSON.csv`, `person.parquet`). CSV files may be
    comma or tab separated, with headers in any case and ISO or `YYYYMMDD` dates. The CDM version
    comes from `version`, else from the files' columns (5.3 `admitting_source_concept_id` against
    5.4 `admitted_from_concept_id`), else from the CDM. Tables are created as needed.

    `mode` says what happens to tables the files fill that already hold rows: "new" (the default)
    refuses to load into them, "append" adds the rows, refusing rows whose primary key (for a table
    without one: the whole row) is already there or repeats in the file, "replace" empties them
    first. The whole load is one transaction: on any error, or Ctrl-C (`Interrupted`), nothing is
    written.
    """
    if mode not in MODES:
        raise LoadError(f"unknown load mode {mode!r}: use one of {', '.join(MODES)}")
    # Ctrl-C only sets a flag, checked between steps: by default DuckDB turns a Ctrl-C during a statement
    # into its own error ("Query interrupted"), which reads as a failed load, and a KeyboardInterrupt
    # raised mid-statement elsewhere (or during COMMIT) leaves what was written to chance.
    # (`interrupt`: a caller's flag, when the caller defers Ctrl-C already.)
    if interrupt is not None:
        return _load(cdm, Path(folder), version, mode, interrupt)
    with deferred_interrupt() as flag:
        return _load(cdm, Path(folder), version, mode, flag)


def _load(cdm: Cdm, folder: Path, version: str | None, mode: str, interrupt: InterruptFlag) -> dict[str, int]:
    interrupt.check()
    sources = _list_sources(folder)
    headers = {s.table: _header(s) for s in sources}
    v = _choose_version(cdm, headers, version)
    spec = cdm_spec(v)
    for s in sources:
        if s.table not in spec.tables:
            raise LoadError(
                f"{s.name}: {s.table!r} is not a table of OMOP CDM v{v}; rename the file to one of "
                f"{', '.join(sorted(spec.tables))} or remove it from the folder"
            )
    held = _rows_held(cdm, [t for t in spec.tables if t in headers])
    if held and mode == "new":
        shown = ", ".join(f"{t} ({n:,} row{'s' if n != 1 else ''})" for t, n in list(held.items())[:3])
        more = f" and {len(held) - 3} more" if len(held) > 3 else ""
        raise LoadError(
            f"the CDM already holds data in tables the files fill: {shown}{more}; loading again would add "
            "every row a second time. Use --mode append to add the rows (repeated primary keys are refused) "
            "or --mode replace to empty those tables first"
        )
    # Read and check everything first: the database is touched only once all files are known good.
    # In the spec's order (person first, the vocabulary after the clinical tables), as messages list them.
    order = list(spec.tables)
    tables: dict[str, pa.Table] = {}
    for s in sorted(sources, key=lambda s: order.index(s.table)):
        interrupt.check()
        tables[s.table] = _read(s, spec.table(s.table))
    interrupt.check()
    if cdm.version != v:
        cdm.set_version(v)
    with cdm.transaction():
        cdm.create_tables(list(tables))
        repeated: dict[str, tuple[int, list[str] | None]] = {}
        for name, data in tables.items():
            interrupt.check()
            table_spec = spec.table(name)
            key = [f.name for f in table_spec.fields if f.primary_key] or None
            check = mode == "append" and name in held
            before = _surplus(cdm, name, key or table_spec.column_names) if check else 0
            if mode == "replace" and name in held:
                cdm.delete(cdm.table(name), exp.true())  # Spark, without DELETE: the table overwritten
            cdm.insert_arrow(name, data)
            if check:
                interrupt.check()
                extra = _surplus(cdm, name, key or table_spec.column_names) - before
                if extra:
                    repeated[name] = (extra, key)
        if repeated:
            raise LoadError(_repeated_message(repeated))
        interrupt.check()  # the last point at which Ctrl-C undoes the load; after it, the load stands
    return {name: data.num_rows for name, data in tables.items()}


def load_target(target: str | Path, folder: str | Path, *, cdm_schema: str | None = None,
                vocab_schema: str | None = None, results_schema: str | None = None, version: str | None = None,
                mode: str = "new") -> dict[str, int]:
    """Open `target` (a .duckdb path, created if missing, or a postgresql:// URL), `load_folder` into
    it, close it. A DuckDB file this call created is removed again if the load fails or is
    interrupted, so a failed first load leaves no empty database behind."""
    path = local_path(target)
    new_file = path is not None and not path.exists()
    try:
        # Deferred from the start: opening the CDM runs DuckDB statements too.
        with deferred_interrupt() as interrupt:
            cdm = Cdm.open(target, cdm_schema=cdm_schema, vocab_schema=vocab_schema,
                           results_schema=results_schema, create=True)
            try:
                return load_folder(cdm, folder, version=version, mode=mode, interrupt=interrupt)
            finally:
                cdm.close()  # a committed load is not reported as interrupted while closing
    except BaseException:
        if new_file and path is not None:
            for leftover in (path, path.with_name(path.name + ".wal")):
                leftover.unlink(missing_ok=True)
        raise


def _rows_held(cdm: Cdm, names: list[str]) -> dict[str, int]:
    """Tables among `names` that exist and hold rows, with their row counts (exact: a local check)."""
    held = {}
    for name in names:
        if name in cdm.spec.tables and cdm.table_exists(name):
            n = cdm.row_count(name)
            if n:
                held[name] = n
    return held


def _surplus(cdm: Cdm, name: str, key: list[str]) -> int:
    """Rows beyond the first of each key value: SUM(n - 1) over the key's groups of more than one."""
    cols = [exp.column(c, quoted=True) for c in key]
    n = exp.Count(this=exp.Star())
    groups = (exp.select(n.copy().as_("n")).from_(cdm.table(name)).group_by(*cols)
              .having(exp.GT(this=n.copy(), expression=exp.Literal.number(1))))
    q = exp.select(exp.Coalesce(this=exp.Sum(this=exp.Sub(this=exp.column("n"), expression=exp.Literal.number(1))),
                                expressions=[exp.Literal.number(0)])).from_(groups.subquery("g"))
    return int(cdm.scalar(q) or 0)


def _repeated_message(repeated: dict[str, tuple[int, list[str] | None]]) -> str:
    parts = []
    for name, (extra, key) in list(repeated.items())[:3]:
        rows = f"{extra:,} row{'s' if extra != 1 else ''}"
        parts.append(f"{name}: {rows} whose {', '.join(key)} is already in the CDM or repeated in the files" if key
                     else f"{name}: {rows} identical to rows already in the CDM or in the files")
    more = f"; and {len(repeated) - 3} more tables" if len(repeated) > 3 else ""
    return (f"duplicate rows refused, nothing was written: {'; '.join(parts)}{more}. Append only rows that "
            "are not loaded yet, or use --mode replace")


# ---- files ---------------------------------------------------------------------------------------
def _list_sources(folder: Path) -> list[_Source]:
    if not folder.exists():
        raise LoadError(f"folder {str(folder)!r} does not exist; give the folder holding the CDM files")
    if not folder.is_dir():
        raise LoadError(f"{str(folder)!r} is not a folder; give the folder holding the CDM files")
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as e:
        raise LoadError(f"cannot read folder {str(folder)!r}: {e.strerror}; check its permissions") from e
    sources: list[_Source] = []
    seen: dict[str, Path] = {}
    for p in entries:
        suffix = p.suffix.lower()
        if suffix in CSV_SUFFIXES:
            kind = "csv"
        elif suffix in PARQUET_SUFFIXES:
            kind = "parquet"
        else:
            continue
        table = p.stem.lower()
        if table in seen:
            raise LoadError(
                f"{p.name} and {seen[table].name} are both table {table!r}; keep one of them in the folder"
            )
        seen[table] = p
        sources.append(_Source(p, table, kind))
    if not sources:
        raise LoadError(
            f"folder {str(folder)!r} holds no .csv, .tsv or .parquet files; put one file per CDM table there"
        )
    return sources


def _header(s: _Source) -> list[str]:
    """The file's column names, lower case (CDM names are lower case; exports vary)."""
    try:
        if s.kind == "parquet":
            names = pq.read_schema(s.path).names
        else:
            with open(s.path, encoding="utf-8-sig", newline="") as fh:
                first = fh.readline()
            if not first.strip():
                raise LoadError(
                    f"{s.name}, line 1: the header row is empty; the first line must name the columns"
                )
            delimiter = _delimiter(s.path, first)
            names = next(csv.reader([first], **_csv_kwargs(delimiter, _quoted(delimiter, first))))
    except pa.ArrowInvalid as e:
        raise LoadError(f"{s.name}: not a readable Parquet file ({e}); re-export it") from e
    except OSError as e:
        raise LoadError(f"cannot read {s.name}: {e.strerror or e}; check the file's permissions") from e
    except UnicodeDecodeError as e:
        raise LoadError(f"{s.name}, line 1: not UTF-8 text ({e.reason}); save the file as UTF-8") from e
    return [n.strip().lower() for n in names]


def _delimiter(path: Path, header_line: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    # OHDSI tools write both; a header line never holds a data value, so counting is reliable.
    return "\t" if header_line.count("\t") > header_line.count(",") else ","


def _quoted(delimiter: str, header_line: str) -> bool:
    """Whether quotes delimit values. Tab-separated OHDSI files (Athena's vocabulary among them) do not
    quote, and their text holds bare quotes (a concept name like 'Tablet 5" long'); a tab file quotes
    only when its header does."""
    return delimiter == "," or header_line.lstrip("\ufeff").startswith('"')


def _csv_kwargs(delimiter: str, quoted: bool) -> dict:
    return {"delimiter": delimiter} if quoted else {"delimiter": delimiter, "quoting": csv.QUOTE_NONE}


def _choose_version(cdm: Cdm, headers: dict[str, list[str]], version: str | None) -> str:
    if version is not None:
        if version not in SUPPORTED_VERSIONS:
            raise LoadError(
                f"unsupported CDM version {version!r}; use one of {', '.join(SUPPORTED_VERSIONS)}"
            )
        detected = version
    else:
        detected = _detect_version(headers) or cdm.version
    if detected != cdm.version and any(cdm.table_exists(t) for t in cdm.spec.tables):
        raise LoadError(
            f"the files are CDM v{detected} but the CDM already holds v{cdm.version} tables; "
            f"load into an empty CDM or convert the files to v{cdm.version}"
        )
    return detected


def _detect_version(headers: dict[str, list[str]]) -> str | None:
    visit = headers.get("visit_occurrence", [])
    if "admitted_from_concept_id" in visit or _ONLY_54 & set(headers):
        return "5.4"
    if "admitting_source_concept_id" in visit or _ONLY_53 & set(headers):
        return "5.3"
    return None


# ---- reading and checking ------------------------------------------------------------------------
def _read(s: _Source, spec: TableSpec) -> pa.Table:
    header = _header(s)
    _check_header(s, header, spec)
    raw = _read_parquet(s) if s.kind == "parquet" else _read_csv(s, header)
    return _conform(s, raw, spec)


def _check_header(s: _Source, header: list[str], spec: TableSpec) -> None:
    where = f"{s.name}, line 1" if s.kind == "csv" else s.name
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise LoadError(f"{where}, column {name}: the column appears twice; keep one")
        seen.add(name)
        if name not in spec.column_names:
            raise LoadError(
                f"{where}, column {name}: not a column of {spec.name}; remove it or fix its name "
                f"({spec.name} has {', '.join(spec.column_names)})"
            )
    for f in spec.fields:
        if f.required and f.name not in seen:
            raise LoadError(f"{where}, column {f.name}: required column of {spec.name} is missing; add it")


def _read_parquet(s: _Source) -> pa.Table:
    try:
        t = pq.read_table(s.path)
    except (pa.ArrowInvalid, OSError) as e:
        raise LoadError(f"{s.name}: not a readable Parquet file ({e}); re-export it") from e
    return t.rename_columns([n.strip().lower() for n in t.column_names])


def _read_csv(s: _Source, header: list[str]) -> pa.Table:
    with open(s.path, encoding="utf-8-sig", newline="") as fh:
        first = fh.readline()
    delimiter = _delimiter(s.path, first)
    quoted = _quoted(delimiter, first)
    try:
        # Everything as text: types are checked per column below so that errors can name a line.
        table = pacsv.read_csv(
            s.path,
            read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char='"' if quoted else False, newlines_in_values=quoted
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()),
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError):
        # Arrow's parse errors carry no line number (and quote the row, which may be a person's data);
        # re-read with the csv module to find the line.
        raise _locate_csv_problem(s, delimiter, quoted, len(header)) or LoadError(
            f"{s.name}: cannot parse the file as {'tab' if delimiter == chr(9) else 'comma'}-separated text"
        ) from None
    if quoted and _odd_quotes(s.path):
        # Arrow takes a quote left open at the end of the file as a value running to the end.
        raise _locate_csv_problem(s, delimiter, quoted, len(header)) or LoadError(
            f"{s.name}: a quote is never closed; the file may be truncated"
        )
    return table


def _odd_quotes(path: Path) -> bool:
    """Quotes come in pairs in well-formed CSV (an escaped quote is doubled), so an odd count means one
    is left open. Counting bytes is cheap next to parsing."""
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            n += chunk.count(b'"')
    return n % 2 == 1


def _locate_csv_problem(s: _Source, delimiter: str, quoted: bool, width: int) -> LoadError | None:
    try:
        with open(s.path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, strict=True, **_csv_kwargs(delimiter, quoted))
            next(reader, None)
            start = 2
            for row in reader:
                if row and len(row) != width:
                    what = "too few" if len(row) < width else "too many"
                    return LoadError(
                        f"{s.name}, line {start}: {what} fields ({len(row)}, the header has {width}); "
                        f"the file may be truncated or a value may hold an unquoted "
                        f"{'tab' if delimiter == chr(9) else 'comma'}"
                    )
                start = reader.line_num + 1
    except csv.Error as e:
        return LoadError(
            f"{s.name}, line {start}: {e} (an unterminated quote, or the file is truncated); fix the quoting"
        )
    except UnicodeDecodeError as e:
        return LoadError(f"{s.name}: not UTF-8 text ({e.reason}); save the file as UTF-8")
    return None


def _row_to_line(s: _Source, row: int) -> str:
    """'line N' for CSV (header = line 1, values may span lines), 'row N' for Parquet."""
    if s.kind == "parquet":
        return f"row {row + 1}"
    with open(s.path, encoding="utf-8-sig", newline="") as fh:
        first = fh.readline()
        fh.seek(0)
        delimiter = _delimiter(s.path, first)
        reader = csv.reader(fh, **_csv_kwargs(delimiter, _quoted(delimiter, first)))
        next(reader, None)
        start = reader.line_num + 1
        i = 0
        for rec in reader:
            if rec:  # Arrow skips empty lines too
                if i == row:
                    return f"line {start}"
                i += 1
            start = reader.line_num + 1
    return f"line {row + 2}"


_INT_FRACTION = r"^([+-]?\d+)\.0*$"
_YYYYMMDD = r"^(\d{4})(\d{2})(\d{2})"
_DATE_WITH_TIME = r"^(\d{4}-\d{2}-\d{2})[ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?$"


def _text_caster(f: FieldSpec) -> Callable[[pa.Array], pa.Array]:
    """A function from a text column to the field's type; it raises ArrowInvalid on a bad value."""
    target = f.arrow_type()
    t = f.type
    if t in ("integer", "bigint"):

        def cast_int(a: pa.Array) -> pa.Array:
            a = pc.utf8_trim_whitespace(a)
            # Some exporters (pandas) write nullable integers as '12.0'.
            return pc.cast(pc.replace_substring_regex(a, _INT_FRACTION, r"\1"), target)

        return _fast_first(target, cast_int)
    if t == "float":
        return _fast_first(target, lambda a: pc.cast(pc.utf8_trim_whitespace(a), target))
    if t == "date":

        def cast_date(a: pa.Array) -> pa.Array:
            a = pc.utf8_trim_whitespace(a)
            a = pc.replace_substring_regex(a, _YYYYMMDD + "$", r"\1-\2-\3")  # Athena style
            a = pc.replace_substring_regex(a, _DATE_WITH_TIME, r"\1")  # a date written as a datetime
            return pc.cast(a, target)

        return _fast_first(target, cast_date)
    if t == "datetime":

        def cast_ts(a: pa.Array) -> pa.Array:
            a = pc.utf8_trim_whitespace(a)
            a = pc.replace_substring_regex(a, _YYYYMMDD + r"($|[ T].*$)", r"\1-\2-\3\4")
            return pc.cast(a, target)

        return _fast_first(target, cast_ts)
    # varchar lengths are not checked: real OHDSI data exceed them (Eunomia's relationship.is_hierarchical
    # holds '0.0' in a varchar(1)), and the DDL leaves text unbounded so that every engine accepts the same data.
    return lambda a: a


def _fast_first(
    target: pa.DataType, lenient: Callable[[pa.Array], pa.Array]
) -> Callable[[pa.Array], pa.Array]:
    """Most columns are clean: a plain cast is several times faster than the regex clean-up, so try it
    first and fall back to the lenient path (which accepts the same values and more)."""

    def cast(a: pa.Array) -> pa.Array:
        try:
            return pc.cast(a, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return lenient(a)

    return cast


def _first_bad(values: pa.Array, caster: Callable[[pa.Array], pa.Array]) -> int:
    """Index of the first value the caster rejects (the whole array is known to fail): bisection,
    about two passes over the data in all."""
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            caster(values.slice(lo, mid - lo))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
        else:
            lo = mid
    return lo


def _conform(s: _Source, raw: pa.Table, spec: TableSpec) -> pa.Table:
    columns = []
    for f in spec.fields:
        if f.name not in raw.column_names:
            columns.append(pa.nulls(raw.num_rows, f.arrow_type()))
            continue
        col = raw.column(f.name).combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        is_text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
        if is_text:
            caster = _text_caster(f)
        elif f.type == "date" and pa.types.is_timestamp(col.type):
            caster = _timestamp_to_date
        else:
            target = f.arrow_type()

            # Sub-microsecond digits of a timestamp are dropped, not an error: the CDM keeps microseconds.
            lossy = pa.types.is_timestamp(col.type) and f.type == "datetime"

            def caster(a: pa.Array, target: pa.DataType = target, lossy: bool = lossy) -> pa.Array:
                return pc.cast(a, target, safe=not lossy)

        try:
            out = caster(col)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            i = _first_bad(col, caster)
            # A clinical table's cell may be a person's data (a date of birth, a source identifier), and
            # messages leave the node in logs and HTTP replies: only public vocabulary values are shown.
            if spec.schema_role == "VOCAB":
                value = str(col[i].as_py())
                what = repr(value if len(value) <= 40 else value[:40] + "…")
            else:
                what = "the value"
            raise LoadError(
                f"{s.name}, {_row_to_line(s, i)}, column {f.name}: {what} is not a valid {f.type}{_type_hint(f)}"
            ) from None  # Arrow's message quotes the value
        if f.required and out.null_count:
            i = pc.index(pc.is_null(out), True).as_py()
            raise LoadError(
                f"{s.name}, {_row_to_line(s, i)}, column {f.name}: empty value in a required column; "
                f"give every row a value"
            )
        columns.append(out)
    return pa.Table.from_arrays(columns, schema=spec.arrow_schema())


def _timestamp_to_date(a: pa.Array) -> pa.Array:
    # A date column exported as a timestamp: the date part is the CDM value.
    return pc.cast(pc.floor_temporal(a, unit="day"), pa.date32())


def _type_hint(f: FieldSpec) -> str:
    if f.type in ("integer", "bigint"):
        return "; use a whole number"
    if f.type == "float":
        return "; use a number"
    if f.type == "date":
        return "; use YYYY-MM-DD or YYYYMMDD"
    if f.type == "datetime":
        return "; use YYYY-MM-DD HH:MM:SS"
    return ""
