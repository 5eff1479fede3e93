#!/usr/bin/env python3
"""Run OHDSI's own cohort SQL (Circe-BE, via ohdsi-circepy) on a DuckDB CDM: Mercia's oracle.

This script runs INSIDE the oracle venv (/work/main/.venv-oracle, made by setup.sh), never in
Mercia's main venv: ohdsi-circepy pins sqlglot < 30.18 and pulls ibis, which Mercia must not inherit.
Mercia's tests call it through tests/oracle_support.py.

Pipeline, as OHDSI documents it (and as /work/shared/data/README.md describes):
  cohort_expression_from_json -> build_cohort_query(expr, BuildExpressionQueryOptions(generate_stats))
  -> sqlrender.render -> sqlrender.translate(sql, "duckdb") -> sqlrender.split_sql -> execute one by one.

Writes go only to the results schema (the cohort table and the Circe statistics tables) and to
connection-local TEMP tables; every write target is checked before anything runs, and the CDM tables'
row counts are compared before and after.

Outputs:
  OUT.parquet  cohort rows (subject_id, cohort_start_date, cohort_end_date), sorted
  OUT.json     counts, inclusion statistics and masks, summary/censor stats, SQL wall time, versions
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.metadata as md
import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import duckdb

# Results tables as OHDSI's CohortGenerator / WebAPI create them (column names and order are what the
# Circe SQL inserts into; types follow CohortGenerator's DDL). CREATE IF NOT EXISTS keeps earlier runs'
# rows for other cohort ids, exactly like a shared OHDSI results schema.
RESULTS_DDL = {
    "cohort": """(
        cohort_definition_id BIGINT NOT NULL,
        subject_id BIGINT NOT NULL,
        cohort_start_date DATE NOT NULL,
        cohort_end_date DATE NOT NULL)""",
    "cohort_inclusion": """(
        cohort_definition_id BIGINT NOT NULL,
        rule_sequence INTEGER NOT NULL,
        name VARCHAR,
        description VARCHAR)""",
    "cohort_inclusion_result": """(
        cohort_definition_id BIGINT NOT NULL,
        inclusion_rule_mask BIGINT NOT NULL,
        person_count BIGINT NOT NULL,
        mode_id INTEGER)""",
    "cohort_inclusion_stats": """(
        cohort_definition_id BIGINT NOT NULL,
        rule_sequence INTEGER NOT NULL,
        person_count BIGINT NOT NULL,
        gain_count BIGINT NOT NULL,
        person_total BIGINT NOT NULL,
        mode_id INTEGER)""",
    "cohort_summary_stats": """(
        cohort_definition_id BIGINT NOT NULL,
        base_count BIGINT NOT NULL,
        final_count BIGINT NOT NULL,
        mode_id INTEGER)""",
    "cohort_censor_stats": """(
        cohort_definition_id BIGINT NOT NULL,
        lost_count BIGINT NOT NULL)""",
}

_IDENT = r"[A-Za-z_][\w$]*"
_WRITE_RE = re.compile(
    rf"\b(?:insert\s+into|delete\s+from|update|truncate\s+table|drop\s+table(?:\s+if\s+exists)?|"
    rf"alter\s+table|create\s+(?:or\s+replace\s+)?(?:temp(?:orary)?\s+)?table(?:\s+if\s+not\s+exists)?)"
    rf"\s+((?:{_IDENT}\.)?{_IDENT})",
    re.IGNORECASE,
)
_CREATE_TEMP_RE = re.compile(rf"\bcreate\s+temp(?:orary)?\s+table\s+({_IDENT})", re.IGNORECASE)


def restore_censor_stats(sql: str, expression: Any, results_schema: str, cohort_id: int) -> tuple[str, int]:
    """Put back Circe-BE's censored-stats insert, which ohdsi-circepy 0.3.0 leaves out.

    Circe-BE (Java) fills @cohortCensoredStatsQuery whenever the CensorWindow has a start or end date:
    people in #final_cohort minus distinct subjects written to the cohort table (CohortGenerator's
    expected cohort_censor_stats for Eunomia cohort 4, lost_count 50, comes from it). circepy emits the
    DELETE but not the INSERT. The statement is added in T-SQL, before translation, so it goes through
    the same SqlRender translation as the rest. A future circepy that emits it is left alone.
    """
    window = getattr(expression, "censor_window", None)
    if window is None or not (window.start_date or window.end_date):
        return sql, 0
    table = f"{results_schema}.cohort_censor_stats"
    if re.search(rf"insert\s+into\s+{re.escape(table)}\b", sql, re.IGNORECASE):
        return sql, 0
    delete = re.search(rf"delete\s+from\s+{re.escape(table)}\s+where[^;]*;", sql, re.IGNORECASE)
    if delete is None:
        raise SystemExit("censor window set but no cohort_censor_stats section found in Circe's SQL")
    insert = (
        f"\ninsert into {table} (cohort_definition_id, lost_count)\n"
        f"select {cohort_id} as cohort_definition_id, coalesce(fc.n_people - tc.n_subjects, 0) as lost_count\n"
        "from (select count_big(distinct person_id) as n_people from #final_cohort) fc,\n"
        f"     (select count_big(distinct subject_id) as n_subjects from {results_schema}.cohort c\n"
        f"      where c.cohort_definition_id = {cohort_id}) tc;\n"
    )
    return sql[: delete.end()] + insert + sql[delete.end() :], 1


_SPECIMEN_BLOCK = re.compile(r"-- Begin Specimen Criteria\n.*?-- End Specimen Criteria", re.DOTALL)
# circepy 0.3.0's specimen template vs Circe-BE's specimen.sql: exact text of the port -> Java's form.
_SPECIMEN_PARITY = [
    # The port lists columns including s.visit_occurrence_id, which the SPECIMEN table has in neither
    # CDM 5.3 nor 5.4 (so every Specimen criterion fails to bind), and omits specimen_type_concept_id
    # and the *_source_value columns its own filters may use. Circe-BE selects s.*.
    (
        "SELECT s.person_id, s.specimen_id, s.specimen_concept_id, s.specimen_date, s.visit_occurrence_id, "
        "s.quantity, s.unit_concept_id, s.anatomic_site_concept_id, s.disease_status_concept_id, "
        "s.specimen_source_id",
        "SELECT s.*",
    ),
    # Circe-BE: no visit on a specimen, and end_date one day after specimen_date (as the port already
    # does for procedures, conditions and devices).
    ("C.specimen_date as end_date,", "DATEADD(day,1,C.specimen_date) as end_date,"),
    (
        "C.visit_occurrence_id, C.specimen_date as sort_date",
        "CAST(NULL as bigint) as visit_occurrence_id, C.specimen_date as sort_date",
    ),
]


def specimen_parity(sql: str) -> tuple[str, int]:
    """Make ohdsi-circepy 0.3.0's Specimen criteria SQL match Circe-BE's specimen.sql (see above)."""
    count = 0

    def fix(m: re.Match[str]) -> str:
        nonlocal count
        block = m.group(0)
        for old, new in _SPECIMEN_PARITY:
            if old in block:
                block = block.replace(old, new)
                count += 1
        return block

    return _SPECIMEN_BLOCK.sub(fix, sql), count


def build_sql(json_text: str, args: argparse.Namespace) -> tuple[str, dict[str, int]]:
    """Render and translate OHDSI's SQL for one definition; returns it and the fix-ups applied."""
    sql, applied = render_sql(json_text, args)
    return translate_cached(sql), applied


def render_sql(json_text: str, args: argparse.Namespace) -> tuple[str, dict[str, int]]:
    """OHDSI's SQL for one definition in SqlRender's SQL Server dialect (before translation)."""
    import circe
    from circe import sqlrender
    from circe.cohortdefinition.cohort_expression_query_builder import BuildExpressionQueryOptions

    expression = circe.cohort_expression_from_json(json_text)
    options = BuildExpressionQueryOptions()
    options.cdm_schema = args.cdm_schema
    options.vocabulary_schema = args.vocab_schema
    options.result_schema = args.results_schema
    # Circe (Java and this port) replaces the whole "@target_database_schema.@target_cohort_table" with
    # target_table, so it is given schema-qualified, as WebAPI does; a bare 'cohort' would resolve to
    # the CDM schema and write there.
    options.target_table = f"{args.results_schema}.cohort"
    options.cohort_id = args.cohort_id
    options.generate_stats = True
    sql = circe.build_cohort_query(expression, options)
    # The options above already substitute every parameter; render() still has to run because it
    # evaluates SqlRender's {cond}?{then}:{else} blocks. The named parameters are passed anyway so a
    # future circepy that leaves them in still renders the same thing.
    sql = sqlrender.render(
        sql,
        cdm_database_schema=args.cdm_schema,
        vocabulary_database_schema=args.vocab_schema,
        results_database_schema=args.results_schema,
        target_database_schema=args.results_schema,
        target_cohort_table="cohort",
        target_cohort_id=args.cohort_id,
    )
    leftover = sorted(set(re.findall(r"@\w+", sql)))
    if leftover:
        raise SystemExit(f"unrendered SqlRender parameters left in the SQL: {leftover}")
    applied: dict[str, int] = {}
    sql, n = restore_censor_stats(sql, expression, args.results_schema, args.cohort_id)
    if n:
        applied["restore_censor_stats"] = n
    sql, n = specimen_parity(sql)
    if n:
        applied["specimen_parity"] = n
    return sql, applied


REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def _cache_dir() -> Path | None:
    """Where translated statements are kept: $MERCIA_CIRCE_CACHE, else <repo>/.cache/circe-sql.

    The folder is inside the checkout (so CI can keep it between runs with its cache action) and
    ignores itself in git. Set $MERCIA_CIRCE_CACHE to an empty string to turn the cache off.
    """
    env = os.environ.get("MERCIA_CIRCE_CACHE")
    if env is not None:
        return Path(env) if env else None  # set but empty: no cache
    return REPO_ROOT / ".cache" / "circe-sql"


def _cache_path(cache: Path | None, statement: str) -> Path | None:
    if cache is None:
        return None
    key = hashlib.sha256(f"{md.version('ohdsi-circepy')}\0duckdb\0{statement}".encode()).hexdigest()
    return cache / key[:2] / f"{key}.sql"


def _cache_write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ignore = REPO_ROOT / ".cache" / ".gitignore"
        if path.is_relative_to(ignore.parent) and not ignore.exists():
            ignore.write_text("*\n", encoding="utf-8")  # the cache ignores itself, as the oracle venv does
        # Write then rename, so a parallel run never reads a half-written file.
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only or full cache only costs speed


_TOKENIZER_MEMOISED = False


def _memoise_tokenizer() -> None:
    """Let translate() tokenise each string once, not once per replacement pattern.

    tokenize_sql is a pure function of its string and its callers only read the tokens, so the
    translation is unchanged (tests/test_oracle_harness.py checks it), in about a third of the time.
    """
    global _TOKENIZER_MEMOISED
    if not _TOKENIZER_MEMOISED:
        from circe.sqlrender import translator

        translator.tokenize_sql = functools.lru_cache(maxsize=8)(translator.tokenize_sql)
        _TOKENIZER_MEMOISED = True


def translate_statement(statement: str, *, memoise: bool = True) -> str:
    """One statement as sqlrender.translate(statement + ";", "duckdb") gives it, memoised on disk."""
    from circe import sqlrender

    if memoise:
        _memoise_tokenizer()
    statement = statement.strip().rstrip(";").rstrip()
    # The ';' goes on a line of its own when the statement ends in a comment (it would be commented out).
    statement += "\n;" if "--" in statement.rsplit("\n", 1)[-1] else ";"
    path = _cache_path(_cache_dir(), statement)
    if path is not None and path.is_file():
        return path.read_text(encoding="utf-8")
    translated = sqlrender.translate(statement, "duckdb")
    if path is not None:
        _cache_write(path, translated)
    return translated


def translate_cached(sql: str) -> str:
    """sqlrender.translate(sql, "duckdb"), one statement at a time, each memoised on disk.

    circepy's pure-Python SqlRender port re-tokenises the whole script for every replacement pattern,
    so translating a script costs the square of its length: 10-20 s for a small random definition,
    minutes for the largest Phenotype Library ones. SqlRender's patterns never reach across a
    statement's end (each ends at a ';' or inside one statement), so translating statement by
    statement gives the same statements, comments aside (checked by
    tests/test_oracle_harness.py::test_translation_by_statement_is_identical), about ten times
    faster; and most statements (the statistics, the clean-up) recur in every definition, so the
    on-disk cache, keyed by the statement's text and the circepy version, serves them after the
    first run.
    """
    from circe import sqlrender

    statements = [s for s in (x.strip() for x in sqlrender.split_sql(sql)) if s and s != ";"]
    return "\n".join(translate_statement(s) for s in statements) + "\n"


# DuckDB 2.0 fix-ups applied to the translated statements. Each entry is (name, regex, replacement,
# reason). Keep this list minimal: each one must leave the SQL's meaning unchanged.
FIXUPS: list[tuple[str, re.Pattern[str], str, str]] = []


def apply_fixups(statements: list[str]) -> tuple[list[str], dict[str, int]]:
    applied: dict[str, int] = {}
    out = []
    for stmt in statements:
        for name, pattern, repl, _why in FIXUPS:
            stmt, n = pattern.subn(repl, stmt)
            if n:
                applied[name] = applied.get(name, 0) + n
        out.append(stmt)
    return out, applied


def check_write_targets(statements: list[str], results_schema: str) -> None:
    """Refuse to run if any statement would write outside the results schema or our temp tables."""
    temp_tables = {m.lower() for s in statements for m in _CREATE_TEMP_RE.findall(s)}
    for stmt in statements:
        # Comments can hold words like "update"; strip them before looking for write targets.
        code = re.sub(r"--[^\n]*", "", stmt)
        for target in _WRITE_RE.findall(code):
            t = target.lower()
            if "." in t:
                if t.split(".", 1)[0] != results_schema.lower():
                    raise SystemExit(f"refusing to run: statement writes to {target}:\n{stmt}")
            elif t not in temp_tables:
                raise SystemExit(f"refusing to run: statement writes to non-temp table {target}:\n{stmt}")


def cdm_fingerprint(con: duckdb.DuckDBPyConnection, schema: str) -> dict[str, int]:
    names = [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = ? AND NOT temporary "
            "AND database_name = current_database() ORDER BY 1",
            [schema],
        ).fetchall()
    ]
    return {n: con.execute(f'SELECT count(*) FROM "{schema}"."{n}"').fetchone()[0] for n in names}


def rows_as_dicts(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cdm", required=True, type=Path, help="DuckDB database file holding the CDM")
    ap.add_argument("--cdm-schema", default="main")
    ap.add_argument("--vocab-schema", default="main")
    ap.add_argument("--results-schema", default="circe")
    ap.add_argument("--json", required=True, type=Path, help="Circe cohort expression (ATLAS export)")
    ap.add_argument("--cohort-id", required=True, type=int)
    ap.add_argument("--out", type=Path, help="Parquet file for the cohort rows (JSON written beside it)")
    ap.add_argument("--sql-only", action="store_true", help="print the DuckDB SQL and exit")
    args = ap.parse_args(argv)

    if args.results_schema.lower() in (args.cdm_schema.lower(), args.vocab_schema.lower()):
        ap.error("--results-schema must differ from the CDM and vocabulary schemas (the CDM is read-only)")
    if not re.fullmatch(_IDENT, args.results_schema):
        ap.error("--results-schema must be a plain identifier")

    from circe import sqlrender

    t0 = time.perf_counter()
    translated, fixups_applied = build_sql(args.json.read_text(encoding="utf-8"), args)
    statements = [s for s in (x.strip() for x in sqlrender.split_sql(translated)) if s and s != ";"]
    statements, applied = apply_fixups(statements)
    fixups_applied.update(applied)
    render_seconds = time.perf_counter() - t0
    check_write_targets(statements, args.results_schema)

    if args.sql_only:
        sys.stdout.write(";\n".join(s.rstrip(";") for s in statements) + ";\n")
        return 0

    if not args.cdm.exists():
        ap.error(f"no such DuckDB file: {args.cdm}")
    out = args.out or Path(f"circe_cohort_{args.cohort_id}.parquet")
    out.parent.mkdir(parents=True, exist_ok=True)

    con = duckdb.connect(str(args.cdm))
    try:
        before = cdm_fingerprint(con, args.cdm_schema)
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {args.results_schema}")
        for table, cols in RESULTS_DDL.items():
            con.execute(f"CREATE TABLE IF NOT EXISTS {args.results_schema}.{table} {cols}")
        # Circe never fills cohort_inclusion (WebAPI/CohortGenerator do, from the JSON); do the same so
        # the rule names travel with the statistics.
        con.execute(
            f"DELETE FROM {args.results_schema}.cohort_inclusion WHERE cohort_definition_id = ?",
            [args.cohort_id],
        )
        rules = json.loads(args.json.read_text(encoding="utf-8")).get("InclusionRules") or []
        for seq, rule in enumerate(rules):
            con.execute(
                f"INSERT INTO {args.results_schema}.cohort_inclusion VALUES (?, ?, ?, ?)",
                [args.cohort_id, seq, rule.get("name"), rule.get("description")],
            )

        t1 = time.perf_counter()
        for i, stmt in enumerate(statements):
            try:
                # DuckDB 2.0 keeps an unread result open on the connection; drain it before the next one.
                con.execute(stmt).fetchall()
            except duckdb.Error as e:
                raise SystemExit(f"statement {i + 1}/{len(statements)} failed: {e}\n---\n{stmt}") from e
        sql_seconds = time.perf_counter() - t1

        rs = args.results_schema
        cid = [args.cohort_id]
        # cohort_id is an int from argparse, so inlining it is safe; con.sql avoids DB-API's extra copy.
        rows = con.sql(
            f"SELECT subject_id, cohort_start_date, cohort_end_date FROM {rs}.cohort "
            f"WHERE cohort_definition_id = {int(args.cohort_id)} "
            "ORDER BY subject_id, cohort_start_date, cohort_end_date"
        ).to_arrow_table()
        import pyarrow.parquet as pq

        pq.write_table(rows, out)
        persons, entries = con.execute(
            f"SELECT count(DISTINCT subject_id), count(*) FROM {rs}.cohort WHERE cohort_definition_id = ?",
            cid,
        ).fetchone()
        report = {
            "cohort_id": args.cohort_id,
            "definition": str(args.json),
            "cdm": str(args.cdm),
            "results_schema": rs,
            "persons": persons,
            "entries": entries,
            "inclusion_rules": [{"rule_sequence": i, "name": r.get("name")} for i, r in enumerate(rules)],
            "inclusion_stats": rows_as_dicts(
                con,
                f"SELECT rule_sequence, person_count, gain_count, person_total, mode_id "
                f"FROM {rs}.cohort_inclusion_stats WHERE cohort_definition_id = ? ORDER BY mode_id, rule_sequence",
                cid,
            ),
            "inclusion_result": rows_as_dicts(
                con,
                f"SELECT inclusion_rule_mask, person_count, mode_id FROM {rs}.cohort_inclusion_result "
                "WHERE cohort_definition_id = ? ORDER BY mode_id, inclusion_rule_mask",
                cid,
            ),
            "summary_stats": rows_as_dicts(
                con,
                f"SELECT base_count, final_count, mode_id FROM {rs}.cohort_summary_stats "
                "WHERE cohort_definition_id = ? ORDER BY mode_id",
                cid,
            ),
            "censor_stats": rows_as_dicts(
                con,
                f"SELECT lost_count FROM {rs}.cohort_censor_stats WHERE cohort_definition_id = ?",
                cid,
            ),
            "seconds": sql_seconds,
            "render_seconds": render_seconds,
            "statements": len(statements),
            "fixups_applied": fixups_applied,
            "versions": {p: md.version(p) for p in ("ohdsi-circepy", "duckdb", "sqlglot")},
        }
        after = cdm_fingerprint(con, args.cdm_schema)
        if after != before:
            raise SystemExit(f"CDM schema {args.cdm_schema} changed during the run: {before} -> {after}")
    finally:
        con.close()

    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("cohort_id", "persons", "entries", "seconds")}))
    return 0


def serve() -> int:
    """Run main() once per line of stdin (a JSON list of arguments); one JSON reply per line on stdout.

    Importing circe costs 5-10 s (it pulls ibis); a test session that runs hundreds of definitions
    keeps one process (tests/oracle_support.py's OracleServer) instead of starting one per definition.
    Reply: {"rc": 0, "stdout": ...} or {"rc": n, "error": ...}.
    """
    import traceback

    for line in sys.stdin:
        argv = json.loads(line)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(argv)
            reply: dict[str, Any] = {"rc": rc or 0, "stdout": out.getvalue()}
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) and e.code else 1
            reply = {"rc": code, "error": (e.code if isinstance(e.code, str) else "") + err.getvalue()}
        except BaseException:  # the reply carries any failure; the server keeps serving
            reply = {"rc": 1, "error": traceback.format_exc() + err.getvalue()}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main())
