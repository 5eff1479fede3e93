"""The `mercia` command. Thin: it parses, calls the library, shows progress and prints results.

Errors a user can cause (MerciaError) print one line on stderr and exit 1, without a traceback; Ctrl-C
prints one line and exits 130 (mercia.cli_errors).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mercia.cli_errors import EXIT_INTERRUPTED, BoundaryGroup, user_errors
from mercia.errors import MerciaError

# Every command runs inside one error boundary (mercia.cli_errors): user errors, bad settings, Ctrl-C and
# warnings are one line each, never a traceback.
app = typer.Typer(help="Mercia: federated health-data research on the OMOP CDM.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, cls=BoundaryGroup)
cdm_app = typer.Typer(help="Load, export and inspect OMOP CDM databases.", no_args_is_help=True)
app.add_typer(cdm_app, name="cdm")
cohort_app = typer.Typer(help="Check, compile and generate cohort definitions (.json, .yaml, .py); list and delete cohorts.",
                         no_args_is_help=True)
app.add_typer(cohort_app, name="cohort")

console = Console()
err_console = Console(stderr=True)

@contextmanager
def progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar, handed to the library as a callback(step, done, total)."""
    tasks: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=False, disable=not err_console.is_terminal) as bar:

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            bar.update(tasks[step], completed=done, total=total)

        yield update


TargetOpt = Annotated[str, typer.Option("--cdm", help="A .duckdb path, a postgresql:// URL, spark:FOLDER (Parquet tables) or sc://host:port (Spark Connect).")]
CdmSchemaOpt = Annotated[str | None, typer.Option("--cdm-schema", help="Schema of the clinical tables.")]
VocabSchemaOpt = Annotated[str | None, typer.Option("--vocab-schema", help="Schema of the vocabulary tables.")]
ResultsSchemaOpt = Annotated[str | None, typer.Option("--results-schema", help="Schema of the cohort tables.")]


def open_cdm(target: str, cdm_schema: str | None, vocab_schema: str | None, results_schema: str | None,
             *, create: bool = False, read_only: bool = False, require: str | None = "cdm"):
    """Open a CDM and check what the command needs is there (mercia.cdm.check): `require` "cdm" (the
    clinical core), "vocabulary" (and the vocabulary), "concepts" (a vocabulary alone) or None."""
    from mercia.cdm import Cdm
    from mercia.cdm.check import require_cdm

    handle = Cdm.open(target, cdm_schema=cdm_schema, vocab_schema=vocab_schema, results_schema=results_schema,
                      create=create, read_only=read_only)
    if require is not None:
        try:
            require_cdm(handle, clinical=require != "concepts", vocabulary=require in ("vocabulary", "concepts"))
        except BaseException:
            handle.close()
            raise
    return handle


# ---- synth -----------------------------------------------------------------------------------
@app.command()
@user_errors
def synth(
    persons: Annotated[int, typer.Option(min=1, help="Persons in all, split across the sites.")] = 10_000,
    sites: Annotated[int, typer.Option(min=1, max=26, help="Number of sites (one DuckDB CDM each).")] = 3,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives identical data.")] = 42,
    out: Annotated[Path, typer.Option(help="Folder to write the site databases into.")] = Path("synth"),
    faults: Annotated[str | None, typer.Option(help="Data-quality faults to plant, as name=rate,... (rate: the "
                                               "fraction of candidate rows), written into truth.json.")] = None,
    acute_rate_multiplier: Annotated[float, typer.Option(help="Multiplies every acute-event hazard (hazard ratios "
                                                         "unchanged): more events from fewer persons; > 0, at most 100.")] = 1.0,
    negative_controls: Annotated[int, typer.Option(help="Negative-control outcomes to add (0-103): acute conditions "
                                                   "no drug affects, listed in truth.json.")] = 0,
) -> None:
    """Write a synthetic UK population as one OMOP CDM (DuckDB) per site."""
    from mercia.synth import generate_federation
    from mercia.synth.faults import parse_faults

    planted = parse_faults(faults)
    with progress_bar() as progress:
        paths = generate_federation(out, persons=persons, sites=sites, seed=seed, progress=progress,
                                    faults=planted, acute_rate_multiplier=acute_rate_multiplier,
                                    negative_control_outcomes=negative_controls)
    for p in paths:
        console.print(f"wrote {p}")


# ---- cdm -------------------------------------------------------------------------------------
@cdm_app.command("load")
@user_errors
def cdm_load(
    src: Annotated[Path, typer.Argument(help="Folder of CSV (comma or tab) or Parquet files, one per table.")],
    cdm: TargetOpt,
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
    results_schema: ResultsSchemaOpt = None,
    version: Annotated[str | None, typer.Option(help="CDM version of the files (5.3 or 5.4); detected if unset.")] = None,
    mode: Annotated[str, typer.Option(help="If tables the files fill hold rows already: new (refuse), append "
                                      "(add rows; repeated primary keys refused) or replace (empty them first).")] = "new",
) -> None:
    """Load a folder of CDM tables into a CDM, all or nothing (Ctrl-C included)."""
    try:
        from mercia.cdm.load import load_target

        counts = load_target(cdm, src, cdm_schema=cdm_schema, vocab_schema=vocab_schema,
                             results_schema=results_schema, version=version, mode=mode)
    except KeyboardInterrupt:
        err_console.print("interrupted; nothing was written", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    for table, n in counts.items():
        console.print(f"{table:<28} {n:>12,}")


@cdm_app.command("export")
@user_errors
def cdm_export(
    cdm: TargetOpt,
    out: Annotated[Path, typer.Option(help="Empty or new folder for the Parquet files.")],
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
    results_schema: ResultsSchemaOpt = None,
) -> None:
    """Export every non-empty CDM table to Parquet."""
    from mercia.cdm.export import export_parquet

    with open_cdm(cdm, cdm_schema, vocab_schema, results_schema, read_only=True) as handle:
        counts = export_parquet(handle, out)
    console.print(f"exported {len(counts)} tables, {sum(counts.values()):,} rows to {out}")


@cdm_app.command("info")
@user_errors
def cdm_info_cmd(
    cdm: TargetOpt,
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
    results_schema: ResultsSchemaOpt = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Summarise a CDM: persons, observation span, rows per table, vocabulary version."""
    from mercia.cdm.info import cdm_info

    if format not in ("table", "json"):
        raise MerciaError(f"unknown format {format!r}: use table or json")
    with open_cdm(cdm, cdm_schema, vocab_schema, results_schema, read_only=True) as handle:
        info = cdm_info(handle)
    if format == "json":
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    print_info(info)


def print_info(info: dict[str, Any], title: str | None = None) -> None:
    summary = Table(title=title, show_header=False)
    for key in ("cdm_source_name", "cdm_version", "vocabulary_version", "persons",
                "observation_start", "observation_end"):
        if key in info:
            value = info[key]
            summary.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    console.print(summary)
    rows = Table("table", "rows")
    for table, n in info.get("rows", {}).items():
        if n:
            rows.add_row(table, f"{n:,}")
    console.print(rows)


# ---- cohort ----------------------------------------------------------------------------------
DIALECTS = ("duckdb", "postgres", "spark", "trino", "bigquery", "snowflake", "tsql")
DefsArg = Annotated[list[Path], typer.Argument(help="Cohort definition files: ATLAS .json, .yaml/.yml or .py.")]


def _load_all(paths: list[Path]) -> list[Any]:
    from mercia.cohorts.loader import load_definition

    return [load_definition(p) for p in paths]


def _attrition(result: Any) -> list[dict[str, Any]]:
    """Persons and events left after each inclusion rule in turn (ATLAS's attrition view), from the
    per-bitmask counts: mode 1 counts each person's best event, mode 0 every event."""
    from mercia.cohorts.stats import remaining_after_rules

    rules = [s for s in result.attrition if s.mode_id == 1]
    events = {s.rule_sequence: s for s in result.attrition if s.mode_id == 0}
    left = {mode: remaining_after_rules(result.mask_counts, mode, len(rules)) for mode in (0, 1)}
    out = []
    for s in rules:
        ev = events.get(s.rule_sequence)
        out.append({"rule": s.rule_sequence, "name": s.name, "persons_remaining": left[1][s.rule_sequence],
                    "events_remaining": left[0][s.rule_sequence], "persons_meeting_rule": s.person_count,
                    "events_meeting_rule": ev.person_count if ev else None,
                    "persons_gained_without_rule": s.gain_count})
    return out


def _initial(result: Any) -> dict[str, int] | None:
    base = {s.mode_id: s.base_count for s in result.summary}
    return {"persons": base.get(1, 0), "events": base.get(0, 0)} if base else None


@cohort_app.command("run")
@user_errors
def cohort_run(
    definitions: DefsArg,
    cdm: TargetOpt,
    cohort_id: Annotated[int, typer.Option("--cohort-id", min=0, help="Id of the first cohort; the rest follow.")] = 1,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
    results_schema: ResultsSchemaOpt = None,
) -> None:
    """Generate cohorts into the results schema's cohort table and show persons, entries and attrition."""
    import warnings

    from mercia.cohorts.generate import generate_cohorts

    if format not in ("table", "json"):
        raise MerciaError(f"unknown format {format!r}: use table or json")
    defs = _load_all(definitions)  # every file is read and checked before the database is touched
    with open_cdm(cdm, cdm_schema, vocab_schema, results_schema, require="vocabulary") as handle, \
            progress_bar() as progress, \
            warnings.catch_warnings():
        # Unknown concept ids come back in each result's warnings; they are printed once, below.
        warnings.simplefilter("ignore")
        # One call, one transaction: a failure leaves every cohort as it was.
        progress("generating cohorts", 0, len(defs))
        results = generate_cohorts(handle, [(cohort_id + i, d) for i, d in enumerate(defs)],
                                   progress=lambda done, total: progress("generating cohorts", done, total))
    for path, r in zip(definitions, results, strict=True):
        for w in r.warnings:
            err_console.print(f"[yellow]warning:[/] {path.name}: {w}", highlight=False, soft_wrap=True)
    if format == "json":
        out = [{"cohort_id": r.cohort_id, "name": r.name, "definition": str(p), "persons": r.persons,
                "entries": r.entries, "initial": _initial(r), "attrition": _attrition(r), "warnings": r.warnings,
                "definition_hash": r.definition_hash} for p, r in zip(definitions, results, strict=True)]
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    for r in results:
        console.print(f"[bold]cohort {r.cohort_id}: {r.name}[/]", highlight=False, soft_wrap=True)
        summary = Table(show_header=False)
        summary.add_row("persons", f"{r.persons:,}")
        summary.add_row("entries", f"{r.entries:,}")
        console.print(summary)
        steps = _attrition(r)
        if steps:
            initial = _initial(r) or {"persons": 0, "events": 0}
            t = Table("rule", "persons remaining", "%", "events remaining")
            t.add_row("initial events", f"{initial['persons']:,}", "100.0", f"{initial['events']:,}")
            for s in steps:
                pct = 100.0 * s["persons_remaining"] / initial["persons"] if initial["persons"] else 0.0
                t.add_row(f"{s['rule'] + 1}. {s['name']}", f"{s['persons_remaining']:,}", f"{pct:.1f}",
                          f"{s['events_remaining']:,}")
            console.print(t)


@cohort_app.command("list")
@user_errors
def cohort_list(
    cdm: TargetOpt,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
    results_schema: ResultsSchemaOpt = None,
) -> None:
    """List the cohorts in the results schema: id, name, study, definition hash, persons (exact counts:
    this is your own CDM)."""
    from dataclasses import asdict

    from mercia.cohorts.registry import list_cohorts

    if format not in ("table", "json"):
        raise MerciaError(f"unknown format {format!r}: use table or json")
    with open_cdm(cdm, cdm_schema, vocab_schema, results_schema, read_only=True) as handle:
        cohorts = list_cohorts(handle)
    if format == "json":
        sys.stdout.write(json.dumps([asdict(c) for c in cohorts], indent=2) + "\n")
        return
    if not cohorts:
        console.print("no cohorts in this CDM")
        return
    t = Table("id", "name", "study", "hash")
    t.add_column("persons", justify="right")
    for c in cohorts:
        study = f"{c.study} ({c.cohort_key})" if c.study else "-"
        t.add_row(str(c.cohort_id), c.name or "-", study, (c.definition_hash or "-")[:12], f"{c.persons:,}")
    console.print(t)


@cohort_app.command("delete")
@user_errors
def cohort_delete(
    ids: Annotated[list[int], typer.Argument(help="Cohort ids to delete (see `mercia cohort list`).")],
    cdm: TargetOpt,
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
    results_schema: ResultsSchemaOpt = None,
) -> None:
    """Delete cohorts from the results schema: their rows, definitions, statistics and study records."""
    from mercia.cohorts.registry import delete_cohorts

    with open_cdm(cdm, cdm_schema, vocab_schema, results_schema) as handle:
        deleted = delete_cohorts(handle, ids)
    console.print(f"deleted cohort{'s' if len(deleted) > 1 else ''} {', '.join(map(str, deleted))}")


@cohort_app.command("sql")
@user_errors
def cohort_sql(
    definition: Annotated[Path, typer.Argument(help="A cohort definition: ATLAS .json, .yaml/.yml or .py.")],
    dialect: Annotated[str, typer.Option("--dialect", help=(
        "duckdb, postgres, spark (executed in CI); trino, bigquery, snowflake, tsql (SQL generated, not executed"
        " in CI)."))] = "duckdb",
    cdm_schema: Annotated[str, typer.Option("--cdm-schema", help="Schema of the clinical tables.")] = "cdm",
    vocab_schema: VocabSchemaOpt = None,
    results_schema: ResultsSchemaOpt = None,
    pretty: Annotated[bool, typer.Option("--pretty/--compact", help="One clause per line.")] = True,
) -> None:
    """Print the SQL that selects the cohort's rows (subject_id, cohort_start_date, cohort_end_date).

    Dates from the definition are bound parameters: the SQL holds placeholders, listed in a comment.

    Executed in CI: duckdb, postgres, spark. Trino, BigQuery, Snowflake and SQL Server (tsql): \
SQL generated, not executed in CI; CI reads it back into DuckDB and checks it selects the same rows."""
    from mercia.cohorts.compiler import compile_cohort
    from mercia.cohorts.loader import SchemaTables
    from mercia.cohorts.render import describe_value, render

    if dialect not in DIALECTS:
        raise MerciaError(f"unknown dialect {dialect!r}: use one of {', '.join(DIALECTS)}")
    d = _load_all([definition])[0]
    compiled = compile_cohort(SchemaTables(cdm_schema, vocab_schema, results_schema), d.expression)
    # Placeholders in the dialect's own form (@name for SQL Server and BigQuery, ? for Trino, ...).
    rendered = render(compiled.rows_query(), compiled.params, dialect, pretty=pretty)
    lines = [f"-- cohort: {d.name}".replace("\n", " ")]
    for name in dict.fromkeys(rendered.order):
        lines.append(f"-- parameter {name} = {describe_value(compiled.params[name])}")
    if rendered.style == "qmark" and rendered.order:
        lines.append(f"-- positional parameters (?), in order: {', '.join(rendered.order)}")
    sys.stdout.write("\n".join(lines) + "\n" + rendered.sql + ";\n")


@cohort_app.command("check")
@user_errors
def cohort_check(
    definitions: DefsArg,
    cdm: Annotated[str | None, typer.Option("--cdm", help="Also look the concept ids up in this CDM.")] = None,
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
    results_schema: ResultsSchemaOpt = None,
) -> None:
    """Validate definitions without running them (and, with --cdm, warn of unknown concept ids)."""
    from mercia.cohorts.compiler import compile_cohort
    from mercia.cohorts.loader import SchemaTables, load_definition

    failed = 0
    checked = []
    for p in definitions:
        try:
            d = load_definition(p)
            compile_cohort(SchemaTables(), d.expression)
        except MerciaError as e:
            failed += 1
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            continue
        checked.append((p, d))
    if cdm is not None and checked:
        from mercia.vocab.concept_sets import unknown_concept_ids

        with open_cdm(cdm, cdm_schema, vocab_schema, results_schema, read_only=True,
                      require="vocabulary") as handle:
            if not handle.table_exists("concept"):
                raise MerciaError(f"the CDM at {cdm!r} has no concept table to check concept ids against")
            from mercia.cohorts.concept_domains import domain_mismatches

            for (p, _d), messages in zip(checked, domain_mismatches(handle, [d for _, d in checked]), strict=True):
                for message in messages:
                    err_console.print(f"[yellow]warning:[/] {p.name}: {message}", highlight=False, soft_wrap=True)
            for p, d in checked:
                for cs in d.expression.concept_sets:
                    ids = [i.concept.concept_id for i in cs.expression.items]
                    unknown = unknown_concept_ids(handle, ids)
                    if unknown:
                        err_console.print(
                            f"[yellow]warning:[/] {p.name}: concept set {cs.id} ({cs.name!r}): concept id(s) "
                            f"{', '.join(map(str, unknown))} are not in this CDM's vocabulary and match nothing",
                            highlight=False, soft_wrap=True)
    for p, d in checked:
        x = d.expression
        console.print(f"ok: {p.name}: {d.name!r} ({len(x.concept_sets)} concept sets, "
                      f"{len(x.primary_criteria.criteria_list)} entry events, {len(x.inclusion_rules)} inclusion rules)",
                      highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@cohort_app.command("convert")
@user_errors
def cohort_convert(
    definition: Annotated[Path, typer.Argument(help="A cohort definition: ATLAS .json, .yaml/.yml or .py.")],
    to: Annotated[str, typer.Option("--to", help="yaml (the cohort language), circe (ATLAS JSON) or json (Mercia's model).")] = "yaml",
) -> None:
    """Print a definition in another form, e.g. an ATLAS export as the cohort language's YAML."""
    from mercia.cohorts.circe import to_circe_dict
    from mercia.cohorts.dsl import to_yaml

    d = _load_all([definition])[0]
    if to == "yaml":
        sys.stdout.write(to_yaml(d))
    elif to == "circe":
        sys.stdout.write(json.dumps(to_circe_dict(d.expression), indent=2) + "\n")
    elif to == "json":
        sys.stdout.write(d.to_json() + "\n")
    else:
        raise MerciaError(f"unknown form {to!r}: use yaml, circe or json")


# ---- demo ------------------------------------------------------------------------------------
@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo federation and its outputs.")] = Path("demo"),
    persons: Annotated[int, typer.Option(min=300, help="Persons in all, across three sites.")] = 300_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 2026,
) -> None:
    """Build three synthetic sites under ./demo, start a hub and three nodes on 127.0.0.1, submit the demo
    study, approve it as each custodian, pool the released results and write the report."""
    import math

    from mercia.demo import run_demo

    with progress_bar() as progress:
        result = run_demo(out, persons=persons, seed=seed, progress=progress)
    console.print(f"[bold]{result['study']}[/] at {len(result['sites'])} sites "
                  "(disclosure policy: SACRO; only released numbers are shown)")
    sites = Table("site", "persons", "observation", "HR (95% CI), released")
    for site, entry in result["sites"].items():
        info = entry["info"]
        est = result["site_estimates"].get(site)
        hr = (f"{math.exp(est[0]):.2f} ({math.exp(est[0] - 1.96 * est[1]):.2f}-"
              f"{math.exp(est[0] + 1.96 * est[1]):.2f})") if est else "not released"
        persons, years = info.get("persons"), info.get("observation_years")
        sites.add_row(site, f"{persons:,}" if persons is not None else "suppressed",
                      f"{years} years" if years is not None else "—", hr)
    console.print(sites)
    for site, entry in result["sites"].items():
        console.print(f"report for {site}: {entry['report']}", highlight=False, soft_wrap=True)
    pooled = result["pooled"]
    if pooled:
        for kind in ("fixed", "random"):
            p = pooled[kind]
            console.print(f"pooled HR, {kind} effect: [bold]{math.exp(p['estimate']):.2f}[/] "
                          f"(95% CI {math.exp(p['ci_lower']):.2f}-{math.exp(p['ci_upper']):.2f})")
        console.print(f"heterogeneity: I² = {pooled['i2'] if pooled['i2'] is not None else 'n/a'}, "
                      f"tau² = {pooled['tau2']:.4f}")
    else:
        console.print("no site released an estimate to pool (too few events under the policy)")
    fed = result.get("federated_cox") or {}
    if "terms" in fed and "treatment" in fed["terms"]:
        i = fed["terms"].index("treatment")
        coef, se = fed["coef"][i], fed["se"][i]
        console.print(f"exact federated Cox HR ({len(fed['sites'])} sites, stratified by site): [bold]"
                      f"{math.exp(coef):.2f}[/] (95% CI {math.exp(coef - 1.96 * se):.2f}-"
                      f"{math.exp(coef + 1.96 * se):.2f})")
    elif fed.get("error"):
        console.print(f"federated Cox not fitted: {fed['error']}", highlight=False, soft_wrap=True)
    for site, why in result.get("failed_sites", {}).items():
        console.print(f"[yellow]site {site} did not answer:[/] {why}", highlight=False, soft_wrap=True)
    if result.get("report"):
        console.print(f"[bold]pooled report:[/] {result['report']}", highlight=False, soft_wrap=True)
    console.print(f"[bold]demo output:[/] {result['out']}")



# ---- study -------------------------------------------------------------------------------------
study_app = typer.Typer(help="Run study packages (cohorts + analyses + disclosure policy).", no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("run")
@user_errors
def study_run(
    package: Annotated[Path, typer.Argument(help="The study package (.yaml, .json or .py).")],
    target: TargetOpt,
    out: Annotated[Path, typer.Option("--out", help="A new (or empty) folder for the results.")],
    site_policy: Annotated[str | None, typer.Option(
        "--site-policy", help="The site's minimum disclosure policy: opensafely or sacro.")] = None,
    site: Annotated[str | None, typer.Option("--site", help="The site's name, recorded in the results.")] = None,
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
    results_schema: ResultsSchemaOpt = None,
) -> None:
    """Generate the package's cohorts, run its analyses, release every result and write a report."""
    from mercia.study import load_package, run_study

    pkg = load_package(package)
    with open_cdm(target, cdm_schema, vocab_schema, results_schema, require="vocabulary") as cdm, \
            progress_bar() as progress:
        run = run_study(pkg, cdm, out, site_policy=site_policy, site=site, progress=progress)
    console.print(f"[bold]study:[/] {pkg.name}  [dim]sha256 {run.package_hash}[/]", highlight=False)
    console.print(f"[bold]policy:[/] {run.policy.rule_summary()}", highlight=False)
    for where, notes in run.notes.items():
        for note in notes:
            console.print(f"[yellow]note:[/] {where}: {note}", highlight=False)
    for message in run.local_messages:  # the reasons behind the notes: shown here, never written out
        console.print(f"[dim]local only:[/] {message}", highlight=False, soft_wrap=True)
    console.print(f"[bold]released tables:[/] {len(run.tables)}; report: {run.report_path}", highlight=False)
    stored = ", ".join(f"{k} {i}" for k, i in run.stored_cohorts.items())
    console.print(f"[bold]cohorts[/] (in schema {cdm.results_schema}, see mercia cohort list): {stored}",
                  highlight=False, soft_wrap=True)


# ---- evaluate (methods benchmark) ------------------------------------------------------------
evaluate_app = typer.Typer(help="Evaluate the estimators: negative and injected positive controls, planted effects across seeds.",
                           no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")


@evaluate_app.command("methods")
@user_errors
def evaluate_methods(
    config: Annotated[Path, typer.Argument(help="The benchmark configuration (.yaml).")],
    targets: Annotated[list[str], typer.Option(
        "--cdm", metavar="CDM", help="A .duckdb path, a postgresql:// URL, spark:FOLDER or sc://host:port; repeat "
        "it, once per site, to benchmark every site and the pooled estimates across them (meta-analyses, federated Cox).")],
    out: Annotated[Path, typer.Option("--out", help="A new (or empty) folder for the results.")],
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
    results_schema: ResultsSchemaOpt = None,
) -> None:
    """Inject positive controls, run every estimator on all controls, write estimates, metrics and plots
    (site-internal: releasing them goes through the disclosure door)."""
    from contextlib import ExitStack

    from mercia.evaluation.methods import check_out_dir, load_config, run_methods_benchmark, write_outputs
    from mercia.evaluation.pooled import run_methods_benchmark_sites, site_names

    cfg, base = load_config(config)
    check_out_dir(out)
    with ExitStack() as stack:
        cdms = [stack.enter_context(open_cdm(t, cdm_schema, vocab_schema, results_schema, require="vocabulary"))
                for t in targets]
        progress = stack.enter_context(progress_bar())
        if len(cdms) == 1:
            result = run_methods_benchmark(cdms[0], cfg, base, progress=progress)
        else:
            result = run_methods_benchmark_sites(list(zip(site_names(targets), cdms, strict=True)), cfg, base,
                                                 progress=progress)
    write_outputs(result, out)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    overall = result.metrics[result.metrics["true_effect_size"] == "all"]
    table = Table("method", "coverage", "auc", "mse", "type 1", "type 2", "non-estimable")
    for r in overall.itertuples(index=False):
        table.add_row(r.method, *(f"{v:.2f}" for v in (r.coverage, r.auc, r.mse, r.type1, r.type2, r.non_estimable)))
    console.print(table)
    console.print(f"[bold]results:[/] {out} (site-internal; summary.md, report.html)", highlight=False)


# ---- model -----------------------------------------------------------------------------------
model_app = typer.Typer(help="Apply saved prediction models (external validation).", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("apply")
@user_errors
def model_apply(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="A saved prediction model folder.")],
    target: TargetOpt,
    out: Annotated[Path, typer.Option("--out", help="A new (or empty) folder for the released results.")],
    policy: Annotated[str, typer.Option("--policy", help="The site's disclosure policy: opensafely or sacro.")]
    = "opensafely",
    target_id: Annotated[int | None, typer.Option(
        "--target-id", help="Target cohort id at this site (default: the model's).")] = None,
    outcome_id: Annotated[int | None, typer.Option(
        "--outcome-id", help="Outcome cohort id at this site (default: the model's).")] = None,
    allow_missing: Annotated[bool, typer.Option(
        "--allow-missing-covariates", help="Take covariates this CDM lacks as absent instead of failing.")] = False,
    site: Annotated[str | None, typer.Option("--site", help="The site's name, recorded in the results.")] = None,
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
    results_schema: ResultsSchemaOpt = None,
) -> None:
    """Validate a saved model on this CDM's cohorts; write only released results (AUC, calibration)."""
    from mercia.analyses.prediction import external_validation

    with open_cdm(target, cdm_schema, vocab_schema, results_schema, read_only=True) as cdm:
        manifest = external_validation(model_dir, cdm, out, policy=policy, site=site, target_id=target_id,
                                       outcome_id=outcome_id, allow_missing_covariates=allow_missing)
    for note in manifest["notes"]:
        console.print(f"[yellow]note:[/] {note['text']}", highlight=False, soft_wrap=True)
    import pyarrow.parquet as pq

    for row in pq.read_table(out / "external_performance.parquet").to_pylist():
        if row.get("auc") is not None and row["auc"] == row["auc"]:  # released, not NaN
            console.print(f"external AUC [bold]{row['auc']:.3f}[/] (95% CI {row['auc_lower']:.3f}-"
                          f"{row['auc_upper']:.3f}); calibration slope {row['calibration_slope']:.3f}",
                          highlight=False)
    console.print(f"[bold]released tables:[/] {', '.join(manifest['tables'])} in {out}", highlight=False)


# ---- node ------------------------------------------------------------------------------------
node_app = typer.Typer(help="Run a node beside a site's CDM; the custodian's approvals.", no_args_is_help=True)
app.add_typer(node_app, name="node")
NodeConfigOpt = Annotated[Path, typer.Option("--config", help="The node's node.yaml.")]


@node_app.command("serve")
@user_errors
def node_serve(
    config: NodeConfigOpt,
    cdm: Annotated[str | None, typer.Option("--cdm", help="The CDM target (overrides node.yaml's cdm).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8700,
) -> None:
    """Serve the node's API (HTTPS when node.yaml has tls: cert and key)."""
    from mercia.federation.node import load_node_config
    from mercia.federation.node.app import create_app
    from mercia.federation.serving import serve

    cfg = load_node_config(config, cdm=cdm)
    open_cdm(cfg.cdm, cfg.cdm_schema, cfg.vocab_schema, cfg.results_schema, read_only=True,
             require="vocabulary").close()  # an OMOP CDM is there, or one line saying what is missing
    app_ = create_app(cfg)
    scheme = "https" if cfg.tls else "http"
    err_console.print(f"node {cfg.site} on {scheme}://{host}:{port} (CDM {cfg.cdm})", highlight=False)
    serve(app_, host=host, port=port, cert=cfg.tls.cert if cfg.tls else None, key=cfg.tls.key if cfg.tls else None)


@node_app.command("list")
@user_errors
def node_list(
    config: NodeConfigOpt,
    status: Annotated[str | None, typer.Option(help="Only studies with this status.")] = None,
) -> None:
    """The node's studies and their status."""
    from rich.table import Column

    from mercia.federation.node import load_node_config
    from mercia.federation.node.local import list_studies

    t = Table("study", "project", "requested by", "status", "updated")
    t.columns.insert(0, Column("hash", no_wrap=True, min_width=16))
    for r in list_studies(load_node_config(config), status):
        t.add_row(r.hash[:16], r.name, r.project, r.requested_by, r.status, r.updated_at)
    console.print(t)


def _node_decide(config: Path, content_hash: str, *, approve: bool, reason: str | None) -> None:
    """The custodian's decision on a package, recorded in the node's queue and audit log."""
    from mercia.federation.node import load_node_config
    from mercia.federation.node.local import decide

    rec = decide(load_node_config(config), content_hash, approve=approve, reason=reason)
    console.print(f"{'approved' if approve else 'rejected'} {rec.hash} ({rec.name})", highlight=False)


@node_app.command("approve")
@user_errors
def node_approve(
    content_hash: Annotated[str, typer.Argument(metavar="HASH", help="The package's hash (or a unique prefix).")],
    config: NodeConfigOpt,
    reason: Annotated[str | None, typer.Option(help="A note kept in the audit log.")] = None,
) -> None:
    """Approve exactly this package hash: the node then runs it."""
    _node_decide(config, content_hash, approve=True, reason=reason)


@node_app.command("reject")
@user_errors
def node_reject(
    content_hash: Annotated[str, typer.Argument(metavar="HASH", help="The package's hash (or a unique prefix).")],
    config: NodeConfigOpt,
    reason: Annotated[str | None, typer.Option(help="Why; the hub shows it to the researcher.")] = None,
) -> None:
    """Reject this package hash: it never runs."""
    _node_decide(config, content_hash, approve=False, reason=reason)


# ---- node: the output check of held results (node.yaml hold_results; federation/node/output_check.py)
@node_app.command("held")
@user_errors
def node_held(config: NodeConfigOpt) -> None:
    """The runs whose released results wait for your output check (release or withhold)."""
    from mercia.federation.node import load_node_config
    from mercia.federation.node.local import held

    t = Table("hash", "study", "project", "run", "held since")
    for r in held(load_node_config(config)):
        t.add_row(r.hash[:16], r.name, r.project, str(r.runs), r.updated_at)
    console.print(t)


def _node_check(config: Path, content_hash: str, run: int, *, release: bool, reason: str | None) -> None:
    from mercia.federation.node import load_node_config
    from mercia.federation.node.local import check_output

    rec = check_output(load_node_config(config), content_hash, run=run, release=release, reason=reason)
    console.print(f"{'released' if release else 'withheld'} the results of {rec.hash} ({rec.name}), run {run}",
                  highlight=False, soft_wrap=True)


HeldHash = Annotated[str, typer.Argument(metavar="HASH", help="The package's hash (or a unique prefix).")]
HeldRun = Annotated[int, typer.Option("--run", min=1, help="The held run (as mercia node held lists it).")]


@node_app.command("release")
@user_errors
def node_release(content_hash: HeldHash, config: NodeConfigOpt, run: HeldRun,
                 reason: Annotated[str | None, typer.Option(help="A note kept in the audit log.")] = None) -> None:
    """Release a held run's results: the hub then collects them."""
    _node_check(config, content_hash, run, release=True, reason=reason)


@node_app.command("withhold")
@user_errors
def node_withhold(content_hash: HeldHash, config: NodeConfigOpt, run: HeldRun,
                  reason: Annotated[str, typer.Option(help="Why (required); the hub shows it to the researcher.")]
                  ) -> None:
    """Withhold a held run's results: nothing of the run leaves the site."""
    _node_check(config, content_hash, run, release=False, reason=reason)


@node_app.command("token")
@user_errors
def node_token(
    name: Annotated[str, typer.Argument(help="Who the token is for (the hub, a custodian, a researcher).")],
    config: NodeConfigOpt,
    role: Annotated[str, typer.Option(help="hub, custodian, researcher or admin.")] = "hub",
    project: Annotated[list[str] | None, typer.Option("--project", help="Projects (repeat); * for all.")] = None,
) -> None:
    """Issue (or rotate) a token in the node's token file; printed once, stored only as a hash."""
    from mercia.federation.auth import NODE_ROLES, TokenStore
    from mercia.federation.node import load_node_config

    cfg = load_node_config(config)
    token = TokenStore(cfg.tokens).issue(name, role, project or ["*"], roles=NODE_ROLES)
    sys.stdout.write(token + "\n")


@node_app.command("token-revoke")
@user_errors
def node_token_revoke(
    name: Annotated[str, typer.Argument(help="Whose token to revoke (as given to mercia node token).")],
    config: NodeConfigOpt,
) -> None:
    """Revoke a token in the node's token file: a running node refuses it (401) from its next request."""
    from mercia.federation.auth import TokenStore
    from mercia.federation.node import load_node_config

    TokenStore(load_node_config(config).tokens).revoke(name)
    console.print(f"revoked the token of {name}", highlight=False)


@node_app.command("portal-user-add")
@user_errors
def node_portal_user_add(
    name: Annotated[str, typer.Argument(help="The user's name (they sign in with it).")],
    config: NodeConfigOpt,
    role: Annotated[str, typer.Option(help="custodian or admin.")] = "custodian",
    project: Annotated[list[str] | None, typer.Option("--project", help="A project (repeat); * for all.")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
) -> None:
    """Add a user of the node's custodian portal (/portal) who signs in with a password (asked for)."""
    from mercia.federation.node import load_node_config
    from mercia.portal.accounts import accounts_for
    from mercia.portal.node_pages import NODE_PORTAL_ROLES

    cfg = load_node_config(config)
    _add_portal_user(accounts_for(cfg.state_dir / "portal.sqlite", cfg.portal, roles=NODE_PORTAL_ROLES),
                     name, role, project, password_stdin)


def _add_portal_user(accounts: Any, name: str, role: str, project: list[str] | None, password_stdin: bool) -> None:
    """`hub portal-user-add` and `node portal-user-add`: the password from stdin or asked twice."""
    password = (sys.stdin.readline().rstrip("\n") if password_stdin
                else typer.prompt("password", hide_input=True, confirmation_prompt=True))
    user = accounts.add_user(name, role, project or ["*"], password)
    console.print(f"portal user {user.name} ({user.role}; projects {', '.join(user.projects)})", highlight=False)


@node_app.command("quality-run")
@user_errors
def node_quality_run(
    config: Annotated[Path | None, typer.Option("--config", help="Run here, as the node does, on the CDM of "
                                                "this node.yaml (a node not running, or a CDM on PostgreSQL).")] = None,
    node: Annotated[str | None, typer.Option("--node", envvar="MERCIA_NODE",
                                             help="Or ask the running node at this URL (or MERCIA_NODE).")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="MERCIA_TOKEN",
                                              help="With --node: a custodian or admin token of the node.")] = None,
) -> None:
    """Start a data-quality run of the site's CDM: its released summary replaces the stored one."""
    from mercia.federation.node.quality_run import QualityRunError, ask_node, run_here

    if (config is None) == (node is None):
        raise QualityRunError("give either --config node.yaml (run here) or --node URL --token TOKEN (ask the "
                              "running node)")
    if node is not None:
        a = ask_node(node, token or "")
        when = f"the stored summary is from {a['last_run_date']}" if a["last_run_date"] else "no summary stored yet"
        say = "started a data-quality run" if a["started"] else "a data-quality run is already going on"
        console.print(f"{say} at site {a['site']} ({when}; the new one replaces it when the run ends)",
                      highlight=False, markup=False, soft_wrap=True)
        return
    from mercia.federation.node import load_node_config

    with progress_bar() as bar:
        s = run_here(load_node_config(config), progress=bar)
    o = s["overview"]["overall"]
    console.print(f"site {s['site']}, run {s['run_date']}: {o['checks']:,} checks released, {o['passed']:,} passed, "
                  f"{o['failed']:,} failed, {o['errors']:,} errors, {o['not_applicable']:,} not applicable "
                  f"(pass rate {o['pass_rate']}%)", highlight=False, markup=False, soft_wrap=True)


# ---- hub -------------------------------------------------------------------------------------
hub_app = typer.Typer(help="Run the hub; register nodes, projects and users.", no_args_is_help=True)
app.add_typer(hub_app, name="hub")
HubConfigOpt = Annotated[Path, typer.Option("--config", help="The hub's hub.yaml.")]


@hub_app.command("init")
@user_errors
def hub_init(folder: Annotated[Path, typer.Argument(help="A new folder for the hub.")]) -> None:
    """Create a hub: hub.yaml, its Ed25519 signing key, and an admin token (printed once)."""
    from mercia.federation.hub import init_hub

    config, _public, token = init_hub(folder)
    console.print(f"hub config: {config}\npublic key for the nodes (hub_public_key): {folder / 'hub_public.pem'}",
                  highlight=False)
    console.print(f"admin token (shown once): {token}", highlight=False)


@hub_app.command("serve")
@user_errors
def hub_serve(
    config: HubConfigOpt,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8600,
) -> None:
    """Serve the hub's API (HTTPS when hub.yaml has tls: cert and key)."""
    from mercia.federation.hub import load_hub_config
    from mercia.federation.hub.app import create_app
    from mercia.federation.serving import serve

    cfg = load_hub_config(config)
    app_ = create_app(cfg)
    err_console.print(f"hub on {'https' if cfg.tls else 'http'}://{host}:{port}", highlight=False)
    serve(app_, host=host, port=port, cert=cfg.tls.cert if cfg.tls else None, key=cfg.tls.key if cfg.tls else None)


@hub_app.command("node-add")
@user_errors
def hub_node_add(
    name: Annotated[str, typer.Argument(help="The site's name (as in its node.yaml).")],
    url: Annotated[str, typer.Argument(help="The node's base URL, http(s)://host:port.")],
    config: HubConfigOpt,
    token: Annotated[str, typer.Option(help="The token the node issued to this hub (role hub).")],
    verify: Annotated[str | None, typer.Option(help="A CA bundle for the node's certificate, or 'false'.")] = None,
) -> None:
    """Register (or update) a node."""
    from mercia.federation.hub import HubStore, load_hub_config

    cfg = load_hub_config(config)
    HubStore(cfg.state_dir / "hub.sqlite").add_node(name, url, token, verify)
    console.print(f"node {name} at {url}", highlight=False)


@hub_app.command("project-add")
@user_errors
def hub_project_add(
    name: Annotated[str, typer.Argument(help="The project's name.")],
    config: HubConfigOpt,
    site: Annotated[list[str], typer.Option("--site", help="A site of the project (repeat).")],
) -> None:
    """Create (or change) a project and the sites its studies may run at."""
    from mercia.federation.hub import HubStore, load_hub_config

    cfg = load_hub_config(config)
    p = HubStore(cfg.state_dir / "hub.sqlite").add_project(name, site)
    console.print(f"project {p['name']}: {', '.join(p['sites'])}", highlight=False)


@hub_app.command("user-add")
@user_errors
def hub_user_add(
    name: Annotated[str, typer.Argument(help="The user's name.")],
    config: HubConfigOpt,
    role: Annotated[str, typer.Option(help="researcher or admin.")] = "researcher",
    project: Annotated[list[str] | None, typer.Option("--project", help="A project (repeat); * for all.")] = None,
) -> None:
    """Issue (or rotate) a user's token; printed once, stored only as a hash."""
    from mercia.federation.auth import HUB_ROLES, TokenStore
    from mercia.federation.hub import load_hub_config

    cfg = load_hub_config(config)
    sys.stdout.write(TokenStore(cfg.tokens).issue(name, role, project or [], roles=HUB_ROLES) + "\n")


@hub_app.command("user-revoke")
@user_errors
def hub_user_revoke(
    name: Annotated[str, typer.Argument(help="The user whose token to revoke.")],
    config: HubConfigOpt,
) -> None:
    """Revoke a user's token: a running hub refuses it (401) from its next request."""
    from mercia.federation.auth import TokenStore
    from mercia.federation.hub import load_hub_config

    TokenStore(load_hub_config(config).tokens).revoke(name)
    console.print(f"revoked the token of {name}", highlight=False)


@hub_app.command("portal-user-add")
@user_errors
def hub_portal_user_add(
    name: Annotated[str, typer.Argument(help="The user's name (they sign in with it).")],
    config: HubConfigOpt,
    role: Annotated[str, typer.Option(help="researcher or admin.")] = "admin",
    project: Annotated[list[str] | None, typer.Option("--project", help="A project (repeat); * for all.")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
) -> None:
    """Add a portal user (the first admin, say) who signs in at /portal with a password (asked for)."""
    from mercia.federation.hub import load_hub_config
    from mercia.portal.accounts import accounts_for

    cfg = load_hub_config(config)
    _add_portal_user(accounts_for(cfg.state_dir / "hub.sqlite", cfg.portal), name, role, project, password_stdin)


# ---- client ----------------------------------------------------------------------------------
client_app = typer.Typer(help="Use a hub: submit studies, follow them, get pooled results.", no_args_is_help=True)
app.add_typer(client_app, name="client")
HubUrlOpt = Annotated[str, typer.Option("--hub", envvar="MERCIA_HUB", help="The hub's URL (or MERCIA_HUB).")]
TokenOpt = Annotated[str, typer.Option("--token", envvar="MERCIA_TOKEN", help="Your token (or MERCIA_TOKEN).")]


def _client(hub: str, token: str) -> Any:
    from mercia.federation.client import Client

    return Client(hub, token)


@client_app.command("submit")
@user_errors
def client_submit(
    package: Annotated[Path, typer.Argument(help="The study package (.yaml, .json or .py).")],
    project: Annotated[str, typer.Option(help="The project to run it in.")],
    hub: HubUrlOpt,
    token: TokenOpt,
    site: Annotated[list[str] | None, typer.Option("--site", help="A site (repeat); default all of the project.")] = None,
) -> None:
    """Send a package to sites; prints its hash."""
    with _client(hub, token) as c:
        s = c.submit(package, project=project, sites=site)
    console.print(f"submitted {s['hash']} to {', '.join(x['site'] for x in s['sites'])}", highlight=False)


@client_app.command("status")
@user_errors
def client_status(
    content_hash: Annotated[str, typer.Argument(metavar="HASH")], hub: HubUrlOpt, token: TokenOpt,
) -> None:
    """A study's status at each site."""
    with _client(hub, token) as c:
        s = c.status(content_hash)
    t = Table("site", "status", "reachable", "note")
    for x in s["sites"]:
        t.add_row(x["site"], x["status"], "yes" if x["reachable"] else "no", x["last_error"] or x["detail"] or "")
    console.print(f"{s['name']} ({s['status']})", highlight=False)
    console.print(t)


@client_app.command("close")
@user_errors
def client_close(content_hash: Annotated[str, typer.Argument(metavar="HASH")], hub: HubUrlOpt, token: TokenOpt) -> None:
    """Finish a study with the sites that have answered."""
    with _client(hub, token) as c:
        s = c.close_study(content_hash)
    states = ", ".join(f"{x['site']} ({x['status']})" for x in s["sites"])
    console.print(f"closed; sites: {states}", highlight=False)


@client_app.command("results")
@user_errors
def client_results(
    content_hash: Annotated[str, typer.Argument(metavar="HASH")], hub: HubUrlOpt, token: TokenOpt,
    out: Annotated[Path | None, typer.Option(help="Write results.json and report.html into this folder.")] = None,
) -> None:
    """Pooled results (JSON on stdout, or files with --out)."""
    with _client(hub, token) as c:
        res = c.results(content_hash)
        report = c.report(content_hash) if out else None
    if out is None:
        sys.stdout.write(json.dumps(res, indent=2) + "\n")
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "report.html").write_text(report or "", encoding="utf-8")
    console.print(f"wrote {out / 'results.json'} and {out / 'report.html'}", highlight=False)


@client_app.command("federated")
@user_errors
def client_federated(
    content_hash: Annotated[str, typer.Argument(metavar="HASH")], hub: HubUrlOpt, token: TokenOpt,
    analysis: Annotated[str, typer.Option(help="The study's Cox analysis whose rows the model uses.")],
    model: Annotated[str, typer.Option(help="cox, logistic or poisson.")] = "cox",
) -> None:
    """The exact federated model across the sites that finished (JSON on stdout)."""
    with _client(hub, token) as c:
        fit = c.federated(content_hash, analysis, model)
    sys.stdout.write(json.dumps(fit, indent=2) + "\n")


@client_app.command("feasibility")
@user_errors
def client_feasibility(
    definition: Annotated[Path, typer.Argument(help="A cohort definition: ATLAS .json, .yaml/.yml or .py.")],
    project: Annotated[str, typer.Option(help="The project whose sites to ask.")],
    hub: HubUrlOpt,
    token: TokenOpt,
    site: Annotated[list[str] | None, typer.Option("--site", help="A site (repeat); default all of the project.")] = None,
) -> None:
    """Released persons counts of a cohort definition at each site, and their sum."""
    d = _load_all([definition])[0]
    with _client(hub, token) as c:
        answer = c.feasibility(d.to_dict(), project=project, sites=site)
    t = Table("site", "persons", "note")
    for a in answer["sites"]:
        t.add_row(a["site"], "suppressed" if a.get("persons") is None else f"{a['persons']:,}", a.get("error") or "")
    t.add_row("total (released)", f"{answer['persons']:,}", "")
    console.print(t)


@client_app.command("concept-count")
@user_errors
def client_concept_count(
    concept_id: Annotated[int, typer.Argument(metavar="CONCEPT_ID", help="The OMOP concept_id.")],
    project: Annotated[str, typer.Option(help="The project whose sites to ask.")],
    hub: HubUrlOpt,
    token: TokenOpt,
    descendants: Annotated[bool, typer.Option(
        "--descendants/--exact", help="Persons with the concept or any descendant, or with the concept alone.")] = True,
    site: Annotated[list[str] | None, typer.Option("--site", help="A site (repeat); default all of the project.")] = None,
    records: Annotated[bool, typer.Option(
        "--records", help="Also the released records, each person's counted up to the site's cap (one more "
        "question: charged again).")] = False,
) -> None:
    """Released persons counts of a concept at each site (each question costs your privacy budget there)."""
    with _client(hub, token) as c:
        answer = c.concept_count(concept_id, project=project, descendants=descendants, sites=site, records=records)
    console.print(_site_concept_counts(answer))


def _site_concept_counts(answer: dict[str, Any]) -> Table:
    """Each site's released persons count of a concept, as `Client.concept_count` gives them."""
    what = "or a descendant" if answer["descendants"] else "itself (no descendants)"
    title = f"Persons with concept {answer['concept_id']} {what}, at each site"
    caption = "released counts: noised, then each site's disclosure policy"
    if answer.get("records"):
        caps = sorted({a["records_per_person_counted"] for a in answer["sites"] if a.get("records_per_person_counted")})
        caption += f"; records counted up to {' or '.join(map(str, caps)) or '?'} per person"
    t = Table("site", "persons", *(["records"] if answer.get("records") else []), "budget left", "note", title=title,
              caption=caption, min_width=max(len(title), len(caption)))
    for a in answer["sites"]:
        left = (a.get("privacy") or {}).get("left")
        persons, recs = (("not released" if a.get("error") else "suppressed") if a.get(k) is None else f"{a[k]:,}"
                         for k in ("persons", "records"))
        t.add_row(a["site"], persons, *([recs] if answer.get("records") else []), "" if left is None else f"{left:g}",
                  a.get("error") or "")
    return t


@client_app.command("quality")
@user_errors
def client_quality(
    project: Annotated[str, typer.Option(help="The project whose sites to show.")],
    hub: HubUrlOpt,
    token: TokenOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print the hub's whole answer as JSON.")] = False,
) -> None:
    """The released data-quality summaries of the sites of a project, side by side (pass rates, failed checks)."""
    with _client(hub, token) as c:
        answer = c.quality(project)
    if as_json:
        print(json.dumps(answer, indent=1))
        return
    t = Table("site", "DQ run", "pass rate %", "conformance", "completeness", "plausibility", "failed checks",
              "note", title=f"Data quality of the sites of {project}",
              caption="from each site's released summary; pass rate: passed over passed, failed and error")
    pct = lambda v: "" if v is None else f"{v:g}"  # noqa: E731
    for s in answer["sites"]:
        t.add_row(s["site"], s["run_date"] or "", pct(s["pass_rate"]), pct(s.get("pass_rate_conformance")),
                  pct(s.get("pass_rate_completeness")), pct(s.get("pass_rate_plausibility")),
                  "" if s["failed_checks"] is None else str(s["failed_checks"]), s.get("error") or "")
    console.print(t)


# ---- audit -------------------------------------------------------------------------------------
audit_app = typer.Typer(help="Check the hash-chained audit logs of nodes and the hub.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
@user_errors
def audit_verify(
    path: Annotated[Path, typer.Argument(help="The audit log (JSON Lines) to check.")],
    anchor: Annotated[str | None, typer.Option(
        "--anchor", help="SEQ:HASH of a head kept elsewhere; detects a cut tail or a rewritten chain.")] = None,
) -> None:
    """Check every record's hash and link; exit 0 if intact, 1 listing each problem."""
    from mercia.federation.audit import verify_log

    anchor_head = None
    if anchor is not None:
        seq, _, head_hash = anchor.partition(":")
        if not seq.isdigit() or len(head_hash) != 64:
            raise MerciaError(f"--anchor {anchor!r} is not SEQ:HASH (a record number, a colon, 64 hex digits)")
        anchor_head = {"seq": int(seq), "hash": head_hash.lower()}
    result = verify_log(path, anchor=anchor_head)
    if not result.ok:
        for problem in result.problems:
            err_console.print(f"[bold red]problem:[/] {problem}", highlight=False, soft_wrap=True)
        err_console.print(f"{path}: {len(result.problems)} problem(s) in {result.records} records",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"ok: {result.records} records, chain intact; head {result.head['seq']}:{result.head['hash']}",
                  highlight=False, soft_wrap=True)


# ---- concept -----------------------------------------------------------------------------------
concept_app = typer.Typer(help="Find concepts in a CDM vocabulary; import OpenCodelists codelists.",
                          no_args_is_help=True)
app.add_typer(concept_app, name="concept")
FormatOpt = Annotated[str, typer.Option("--format", help="table or json")]


def _format(value: str) -> str:
    if value not in ("table", "json"):
        raise MerciaError(f"--format: {value!r} is not one of table, json")
    return value


@concept_app.command("search")
@user_errors
def concept_search(
    text: Annotated[str, typer.Argument(help="Words in the concept's name or synonyms, or its exact code.")],
    cdm: TargetOpt,
    domain: Annotated[str | None, typer.Option("--domain", help="Only this domain (Condition, Drug, ...).")] = None,
    vocabulary: Annotated[str | None, typer.Option("--vocabulary", help="Only this vocabulary (SNOMED, ...).")] = None,
    standard: Annotated[bool, typer.Option("--standard", help="Only standard concepts.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many results.")] = 50,
    format: FormatOpt = "table",
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
) -> None:
    """Search concepts by name, synonym or code; best match first, then most records in this CDM."""
    from dataclasses import asdict

    from mercia.vocab.search import search_concepts

    _format(format)
    with open_cdm(cdm, cdm_schema, vocab_schema, None, read_only=True, require="concepts") as handle:
        hits = search_concepts(handle, text, domain=domain, vocabulary=vocabulary, standard=standard, limit=limit)
    if format == "json":
        sys.stdout.write(json.dumps([asdict(h) for h in hits], indent=2) + "\n")
        return
    t = Table("concept_id", "name", "domain", "vocabulary", "code", "std", "match", "records",
              title=f"{len(hits)} concept(s) matching {text!r}",
              caption="records: rows of this CDM's clinical tables with the concept (exact local counts)")
    for h in hits:
        t.add_row(str(h.concept_id), h.concept_name, h.domain_id, h.vocabulary_id, h.concept_code,
                  h.standard_concept or "", h.match, f"{h.record_count:,}")
    console.print(t)


def _concept_table(title: str, rows: list[dict[str, Any]], levels: bool = False) -> Table | str:
    if not rows:
        return f"{title}: none"
    t = Table("concept_id", "name", "vocabulary", "code", "std", *(["levels"] if levels else []), title=title)
    for r in rows:
        lv = [f"{r['min_levels']}" + (f"-{r['max_levels']}" if r["max_levels"] != r["min_levels"] else "")
              ] if levels else []
        t.add_row(str(r["concept_id"]), r["concept_name"] or "(not in this CDM's CONCEPT table)",
                  r["vocabulary_id"] or "", r["concept_code"] or "", r["standard_concept"] or "",
                  *lv)
    return t


@concept_app.command("show")
@user_errors
def concept_show(
    concept_id: Annotated[int, typer.Argument(metavar="ID", help="The concept_id.")],
    cdm: TargetOpt,
    descendants: Annotated[int, typer.Option("--descendants", min=0, help="Show at most this many.")] = 50,
    format: FormatOpt = "table",
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
    hub: Annotated[str | None, typer.Option("--hub", help=(
        "Instead of this CDM's record counts, each site's released persons count from this hub "
        "(costs your privacy budget at each site)."))] = None,
    project: Annotated[str | None, typer.Option("--project", help="With --hub: the project whose sites to ask.")
                       ] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="MERCIA_TOKEN",
                                              help="With --hub: your token (or MERCIA_TOKEN).")] = None,
    exact: Annotated[bool, typer.Option("--exact", help="With --hub: count the concept alone, not its descendants.")
                     ] = False,
) -> None:
    """One concept: fields, synonyms, 'Maps to' and mapped-from, ancestors and descendants, record counts
    (with --hub: each site's released persons count instead)."""
    from dataclasses import asdict

    from mercia.vocab.search import concept_details

    _format(format)
    if hub is not None and (not project or not token):
        raise MerciaError("--hub needs --project (the project whose sites to ask) and --token (or MERCIA_TOKEN)")
    with open_cdm(cdm, cdm_schema, vocab_schema, None, read_only=True, require="concepts") as handle:
        d = concept_details(handle, concept_id, max_descendants=descendants, counts=hub is None)
    released = None
    if hub is not None:
        with _client(hub, token or "") as c:
            released = c.concept_count(concept_id, project=project or "", descendants=not exact)
    if format == "json":
        data = asdict(d)
        if released is not None:
            data.pop("record_counts")
            data["released_counts"] = released
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    fields = Table(show_header=False, title=f"concept {concept_id}")
    for k, v in d.concept.items():
        fields.add_row(k, "" if v is None else str(v))
    fields.add_row("synonyms", "; ".join(d.synonyms))
    console.print(fields)
    console.print(_concept_table("Maps to", d.maps_to))
    console.print(_concept_table("Mapped from", d.mapped_from))
    console.print(_concept_table("Ancestors", d.ancestors, levels=True))
    shown = f" (first {len(d.descendants)} of {d.descendants_total})" if d.descendants_total > len(d.descendants) else ""
    console.print(_concept_table(f"Descendants{shown}", d.descendants, levels=True))
    if released is not None:
        console.print(_site_concept_counts(released))
        return
    if not d.record_counts:
        console.print("Records in this CDM: none")
        return
    t = Table("table", "records with it as concept", "as source concept",
              title="Records in this CDM (exact local counts)")
    for r in d.record_counts:
        t.add_row(r["table"], f"{r['as_concept']:,}", f"{r['as_source']:,}")
    console.print(t)


@concept_app.command("import-codelist")
@user_errors
def concept_import_codelist(
    csv_file: Annotated[Path, typer.Argument(metavar="CSV", help="An OpenCodelists CSV download.")],
    system: Annotated[str, typer.Option("--system", help="Its coding system: snomedct, icd10, dmd, ctv3 or readv2.")],
    cdm: TargetOpt,
    out: Annotated[Path, typer.Option("--out", help="Where to write the ATLAS concept set JSON.")],
    name: Annotated[str | None, typer.Option("--name", help="The concept set's name (default: the file's).")] = None,
    code_column: Annotated[str | None, typer.Option("--code-column", help="The codes' column, if not found.")] = None,
    term_column: Annotated[str | None, typer.Option("--term-column", help="The terms' column, if not found.")] = None,
    unmapped: Annotated[Path | None, typer.Option("--unmapped", help="Also write unmapped codes to this CSV.")] = None,
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
) -> None:
    """Map a codelist to standard concepts through the CDM's vocabulary; write a concept set, list the rest."""
    import csv as csv_module

    from mercia.vocab.codelists import map_codelist, read_codelist

    entries = read_codelist(csv_file, code_column=code_column, term_column=term_column)
    with open_cdm(cdm, cdm_schema, vocab_schema, None, read_only=True, require="concepts") as handle:
        mapping = map_codelist(handle, entries, system)
    out.write_text(json.dumps(mapping.concept_set(name=name or csv_file.stem), indent=2) + "\n")
    console.print(f"{len(mapping.mapped)} of {len(entries)} codes mapped ({mapping.vocabulary_id} -> "
                  f"{len(mapping.concepts)} standard concepts); concept set written to {out}",
                  highlight=False, soft_wrap=True)
    if not mapping.vocabulary_loaded:
        err_console.print(f"[bold yellow]note:[/] this CDM's vocabulary holds no {mapping.vocabulary_id} concepts: "
                          f"load OHDSI Athena's vocabularies with {mapping.vocabulary_id} to map these codes",
                          highlight=False, soft_wrap=True)
    if unmapped is not None:
        with unmapped.open("w", newline="") as f:
            w = csv_module.writer(f)
            w.writerow(["code", "term", "reason"])
            w.writerows([u.code, u.term, u.reason] for u in mapping.unmapped)
    if mapping.unmapped:
        t = Table("code", "term", "reason", title=f"{len(mapping.unmapped)} unmapped code(s)")
        for u in mapping.unmapped:
            t.add_row(u.code, u.term, u.reason)
        console.print(t)


# ---- trial -------------------------------------------------------------------------------------
trial_app = typer.Typer(help="Clinical trials: eligibility as named criteria, import from ClinicalTrials.gov, "
                        "feasibility across sites, recruitment, candidates inside a site.",
                        no_args_is_help=True)
app.add_typer(trial_app, name="trial")


@trial_app.command("import")
@user_errors
def trial_import(
    record: Annotated[Path, typer.Argument(help="A ClinicalTrials.gov study record (API v2 JSON), a local file.")],
    out: Annotated[Path, typer.Option("--out", help="The draft trial.yaml to write.")],
    cdm: Annotated[str | None, typer.Option("--cdm", help=(
        "Look concepts up in this CDM's vocabulary (default: Mercia's bundled vocabulary)."))] = None,
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
) -> None:
    """Draft a trial.yaml from a study record: structured fields and text items as criteria, each with its
    source text and a status (mapped, needs_review, not_computable) to review."""
    from mercia.trials.importer import import_record, summary
    from mercia.trials.trial_yaml import to_yaml

    if cdm is None:
        trial = import_record(str(record))
    else:
        with open_cdm(cdm, cdm_schema, vocab_schema, None, read_only=True, require="concepts") as handle:
            trial = import_record(str(record), handle)
    header = (f"# Draft eligibility of {trial.registry_id}, imported by `mercia trial import`.\n"
              "# Review every criterion: fix or confirm those with status needs_review and set them to mapped;\n"
              "# only mapped criteria are applied. Reference: docs/reference/trial-yaml.md\n")
    out.write_text(to_yaml(trial, header), encoding="utf-8")
    n = summary(trial)
    console.print(f"wrote {out}: {len(trial.criteria)} criteria, {n['mapped']} mapped, {n['needs_review']} to review, "
                  f"{n['not_computable']} not computable", highlight=False, soft_wrap=True)


@trial_app.command("check")
@user_errors
def trial_check(
    trial: Annotated[Path, typer.Argument(help="A trial.yaml (or a cohort definition).")],
    cohort: Annotated[Path | None, typer.Option("--cohort", help=(
        "Also write the compiled cohort here: .yaml (the cohort language) or .json (ATLAS/Circe), "
        "for the cohort commands and OHDSI tools."))] = None,
) -> None:
    """Check a trial: print its criteria as the cohort's inclusion rules, and those not applied."""
    from mercia.trials.source import load_trial

    t = load_trial(trial)
    if cohort is not None:
        from mercia.cohorts.circe import to_circe_dict
        from mercia.cohorts.dsl import to_yaml as cohort_yaml

        if cohort.suffix.lower() not in (".yaml", ".yml", ".json"):
            raise MerciaError(f"--cohort: {cohort.name!r} must end in .yaml, .yml or .json")
        cohort.write_text(json.dumps(to_circe_dict(t.cohort.expression), indent=2) + "\n"
                          if cohort.suffix.lower() == ".json" else cohort_yaml(t.cohort), encoding="utf-8")
    rules = t.cohort.expression.inclusion_rules
    console.print(f"{t.name}: {len(rules)} criteria applied, {len(t.not_applied)} not applied", highlight=False,
                  soft_wrap=True)
    for i, r in enumerate(rules, 1):
        console.print(f"  {i}. {r.name}", highlight=False, soft_wrap=True, markup=False)
    for name in t.not_applied:
        console.print(f"  not applied: {name}", highlight=False, soft_wrap=True, markup=False)


@trial_app.command("feasibility")
@user_errors
def trial_feasibility(
    trial: Annotated[Path, typer.Argument(help="The trial: a cohort definition whose inclusion rules are the criteria.")],
    cdm: Annotated[str | None, typer.Option("--cdm", help="Locally: a .duckdb path or a postgresql:// URL.")] = None,
    hub: Annotated[str | None, typer.Option("--hub", envvar="MERCIA_HUB", help="Across sites: the hub's URL.")] = None,
    project: Annotated[str | None, typer.Option(help="Across sites: the project whose sites to ask.")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="MERCIA_TOKEN", help="Your hub token.")] = None,
    site: Annotated[list[str] | None, typer.Option("--site", help="A site (repeat); default all of the project.")] = None,
    site_policy: Annotated[str, typer.Option("--site-policy", help="Locally: the disclosure policy, opensafely or sacro.")] = "opensafely",
    history_months: Annotated[int, typer.Option(min=1, max=240, help="Months of incident eligibility.")] = 36,
    target: Annotated[int | None, typer.Option(min=1, help="Persons to recruit, for the projection.")] = None,
    consent: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Share of eligible expected to consent.")] = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    report: Annotated[Path | None, typer.Option("--report", help="Write the HTML feasibility report here.")] = None,
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
) -> None:
    """Eligible persons, the funnel, what-if removal of each criterion, breakdowns and recruitment projection."""
    from mercia.trials.source import load_trial

    if format not in ("table", "json"):
        raise MerciaError(f"--format: unknown format {format!r}; use table or json")
    if (cdm is None) == (hub is None):
        raise MerciaError("give --cdm (one CDM, locally) or --hub with --project (across sites), not both")
    if (target is None) != (consent is None):
        raise MerciaError("--target and --consent go together: the projection needs both")
    t = load_trial(trial)
    if hub is not None:
        if not project or not token:
            raise MerciaError("--hub needs --project and --token (or MERCIA_TOKEN)")
        with _client(hub, token) as c:
            answer = c.trial_feasibility(t.cohort.to_dict(), project=project, sites=site, history_months=history_months,
                                         not_applied=list(t.not_applied), target=target, consent=consent)
    else:
        from mercia.study.package import policy_from_name
        from mercia.trials.feasibility import local_feasibility
        from mercia.trials.recruitment import projection

        assert cdm is not None
        with open_cdm(cdm, cdm_schema, vocab_schema, None, read_only=True, require="vocabulary") as handle:
            answer = local_feasibility(handle, t.cohort, policy_from_name(site_policy), trial=t.name,
                                       not_applied=t.not_applied, history_months=history_months)
        answer["recruitment"] = projection(answer["monthly"], target, consent)
    if report is not None:
        from mercia.report.trial import render_feasibility_report

        report.write_text(render_feasibility_report(answer), encoding="utf-8")
        err_console.print(f"wrote {report}", highlight=False)
    if format == "json":
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
        return
    _print_trial_feasibility(answer)


def _print_trial_feasibility(answer: dict[str, Any]) -> None:
    sites = [a for a in answer.get("sites", [answer]) if "error" not in a]
    n = lambda v: "suppressed" if v is None else f"{v:,}"  # noqa: E731
    t = Table("criterion", *[f"remaining ({a.get('site') or 'local'})" for a in sites], "gained if removed",
              title=f"{answer['trial']}: eligible {n(answer['eligible'])}")
    for j, f in enumerate(answer["funnel"]):
        t.add_row(f"{j + 1}. {f['criterion']}", *[n(a["funnel"][j]["remaining"]) for a in sites],
                  n(answer["what_if"][j]["gained"]))
    console.print(t)
    for a in answer.get("sites", []):
        if "error" in a:
            err_console.print(f"{a['site']}: {a['error']}", highlight=False, soft_wrap=True)
    for dim, cells in answer["breakdowns"].items():
        console.print(f"{dim}: " + ", ".join(f"{c['level']} {n(c['persons'])}" for c in cells), highlight=False)
    rec = answer.get("recruitment") or {}
    if "model" in rec:
        m = rec["model"]
        console.print(f"newly eligible per month: {m['rate_per_month']:.1f} (95% CI {m['rate_ci'][0]:.1f} to "
                      f"{m['rate_ci'][1]:.1f}; {m['family']}{', seasonal' if m['seasonal'] else ''})", highlight=False)
    if "projection" in rec:
        p = rec["projection"]
        console.print(f"months to recruit {p['target']:,} at consent {p['consent']:g}: {p['median_months']:g} "
                      f"(95% interval {p['interval_months'][0]:g} to {p['interval_months'][1]:g}; "
                      f"N/(rate x consent) = {p['expected_months']:g})", highlight=False)
    elif "error" in rec:
        console.print(f"recruitment: {rec['error']}", highlight=False, soft_wrap=True)
    for item in answer.get("not_applied") or []:
        console.print(f"not applied: {item}", highlight=False, soft_wrap=True)


TrialFormatOpt = Annotated[str, typer.Option("--format", help="table, json or csv")]


def _trial_format(value: str) -> str:
    if value not in ("table", "json", "csv"):
        raise MerciaError(f"--format: {value!r} is not one of table, json, csv")
    return value


@trial_app.command("candidates")
@user_errors
def trial_candidates(
    trial: Annotated[str, typer.Argument(metavar="TRIAL", help="A trial file, or a trial's name in node.yaml's trials folder.")],
    config: NodeConfigOpt,
    format: TrialFormatOpt = "table",
) -> None:
    """The site's candidates for a trial (row-level: stays at the site; audited in the node's log)."""
    from mercia.federation.node import load_node_config
    from mercia.federation.node.trial_lookup import local_candidates
    from mercia.trials.candidates import candidates_csv

    _trial_format(format)
    found = local_candidates(load_node_config(config), trial)
    if format != "table":
        sys.stdout.write(json.dumps(found.to_dict(), indent=2) + "\n" if format == "json" else candidates_csv(found.candidates))
        return
    number = {c.name: str(i + 1) for i, c in enumerate(found.criteria)}
    t = Table("person_source_value", "age", "index date", "meets", "missing data",
              title=f"{len(found.candidates)} candidate(s) for {found.trial}")
    for c in found.candidates:
        t.add_row(c.person_source_value or f"(person_id {c.person_id})", str(c.age), c.index_date,
                  " ".join(number[n] for n in c.meets), " ".join(number[n] for n in c.missing))
    console.print(t)
    for c in found.criteria:
        console.print(f"{number[c.name]}. {c.name}" + (f" (missing data: {c.missing_means})" if c.missing_means else ""),
                      highlight=False, soft_wrap=True, markup=False)
    if found.not_applied:
        console.print("not applied: " + "; ".join(found.not_applied), highlight=False, soft_wrap=True, markup=False)


@trial_app.command("match")
@user_errors
def trial_match(
    person: Annotated[str, typer.Argument(metavar="PERSON", help="The person's person_source_value.")],
    config: NodeConfigOpt,
    format: TrialFormatOpt = "table",
) -> None:
    """The trials of node.yaml's trials folder a person is a candidate for (audited; the person is not)."""
    from mercia.federation.node import load_node_config
    from mercia.federation.node.trial_lookup import local_match
    from mercia.trials.candidates import matches_csv

    _trial_format(format)
    searched, matches = local_match(load_node_config(config), person)
    if format != "table":
        sys.stdout.write(json.dumps({"trials_searched": searched, "matches": [m.to_dict() for m in matches]}, indent=2)
                         + "\n" if format == "json" else matches_csv(matches))
        return
    t = Table("trial", "age", "index date", "meets", "missing data", title=f"{len(matches)} of {searched} trial(s)")
    for m in matches:
        t.add_row(m.trial if m.trial_name in ("", m.trial) else f"{m.trial} ({m.trial_name})", str(m.candidate.age), m.candidate.index_date, "; ".join(m.candidate.meets),
                  "; ".join(m.candidate.missing))
    console.print(t)


# ---- dq (data quality) ------------------------------------------------------------------------
dq_app = typer.Typer(help="Data quality: DataQualityDashboard-style checks of a whole CDM.", no_args_is_help=True)
app.add_typer(dq_app, name="dq")


@dq_app.command("check")
@user_errors
def dq_check(
    cdm: TargetOpt,
    out: Annotated[Path, typer.Option(help="Folder for checks.parquet and dq-results.json (DQD's viewer format).")],
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
    results_schema: ResultsSchemaOpt = None,
) -> None:
    """Run the data-quality checks (DQD's check types and thresholds) and write their results."""
    from mercia.dq import run_checks
    from mercia.dq.names import check_concepts, concept_names, write_names
    from mercia.dq.output import write_results

    with (open_cdm(cdm, cdm_schema, vocab_schema, results_schema, read_only=True, require=None) as handle,
          progress_bar() as progress):
        run = run_checks(handle, progress=progress)
        names = concept_names(handle, check_concepts(run.results))
    from mercia.cdm.engines import local_path

    path = local_path(cdm)
    paths = write_results(run, out, source_name=path.stem if path is not None else "cdm")
    files = [str(f) for f in (paths["parquet"], paths["json"], write_names(names, out)) if f is not None]
    r = run.results
    console.print(f"{len(r):,} checks: {int(r.passed.sum()):,} passed, {int(r.failed.sum()):,} failed, "
                  f"{int(r.isError.sum()):,} errors, {int(r.notApplicable.sum()):,} not applicable", highlight=False)
    for row in r[r.failed == 1].itertuples():
        console.print(f"FAILED {row.checkId}: {row.numViolatedRows:,} of {row.numDenominatorRows:,} "
                      f"({100 * row.pctViolatedRows:.2f}% > {row.thresholdValue:g}%)", highlight=False, soft_wrap=True)
    console.print(f"wrote {', '.join(files[:-1])} and {files[-1]}", highlight=False, soft_wrap=True)


@dq_app.command("profile")
@user_errors
def dq_profile(
    cdm: TargetOpt,
    out: Annotated[Path, typer.Option(help="Folder for achilles_results(.parquet), achilles_results_dist, "
                                      "achilles_analyses.")],
    cdm_schema: CdmSchemaOpt = None,
    vocab_schema: VocabSchemaOpt = None,
    results_schema: ResultsSchemaOpt = None,
) -> None:
    """Profile a CDM: Achilles's most-read analyses under its analysis ids."""
    from mercia.dq.names import concept_names, profile_concepts, write_names
    from mercia.dq.profile import run_profile, write_profile

    with (open_cdm(cdm, cdm_schema, vocab_schema, results_schema, read_only=True, require=None) as handle,
          progress_bar() as progress):
        profile = run_profile(handle, progress=progress)
        names = concept_names(handle, profile_concepts(profile.results, profile.results_dist))
    a = profile.analyses
    console.print(f"{int((a.status == 'done').sum())} analyses done, {int((a.status == 'absent').sum())} absent "
                  f"(tables missing): {len(profile.results):,} count rows, {len(profile.results_dist):,} "
                  "distribution rows", highlight=False)
    for p in [*write_profile(profile, out), write_names(names, out)]:
        if p is not None:
            console.print(f"wrote {p}", highlight=False, soft_wrap=True)


@dq_app.command("dashboard")
@user_errors
def dq_dashboard(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="The folder `mercia dq check --out` wrote.")],
    profile: Annotated[Path | None, typer.Option(help="The folder `mercia dq profile --out` wrote "
                                                    "(default: DIR, when it holds a profile).")] = None,
    out: Annotated[Path | None, typer.Option(help="The HTML file to write (default: DIR/dashboard.html).")] = None,
) -> None:
    """Write the data-quality dashboard: one self-contained HTML file of the checks (and the profile)."""
    from mercia.report.dq import write_dashboard

    console.print(f"wrote {write_dashboard(folder, out, profile)}", highlight=False, soft_wrap=True)


# ---- evaluate (methods benchmark: many seeds) ---------------------------------------------------


@evaluate_app.command("seeds")
@user_errors
def evaluate_seeds(
    out: Annotated[Path, typer.Option(help="New or empty folder for the tables and the plot.")] = Path("seeds"),
    seeds: Annotated[int, typer.Option(min=1, max=10_000, help="Seeds: one synthetic site each.")] = 20,
    first_seed: Annotated[int, typer.Option(min=0, help="The first seed; the others follow it.")] = 1,
    persons: Annotated[int, typer.Option(min=500, max=10_000_000, help="Persons per site.")] = 200_000,
    acute_rate_multiplier: Annotated[float, typer.Option(help="Multiplies every acute hazard (> 0, at most 100): "
                                                         "events enough from fewer persons.")] = 50.0,
    profiles: Annotated[str, typer.Option(help="Site profiles (case-mixes), comma-separated, taken in turn "
                                          "by seed.")] = "riverside",
    effects: Annotated[str, typer.Option(help="Planted effects, comma-separated.")] = "nsaid_gi_bleeding,sglt2_hf_admission",
    policy: Annotated[str, typer.Option(help="Disclosure policy the estimates are released under.")] = "opensafely",
) -> None:
    """Regenerate synthetic sites across seeds, estimate their planted effects (crude and PS-matched Cox),
    and report coverage and bias per estimator (mercia.evaluation.seeds)."""
    import time

    from mercia.evaluation import seeds as ev

    settings = ev.seeds_settings(seeds=seeds, first_seed=first_seed, persons=persons,
                                 acute_rate_multiplier=acute_rate_multiplier,
                                 profiles=tuple(x.strip() for x in profiles.split(",") if x.strip()),
                                 effects=tuple(x.strip() for x in effects.split(",") if x.strip()), policy=policy)
    ev.check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "seeds_estimates.partial.csv"  # the seeds done so far, while the run goes on
    t0 = time.perf_counter()
    with progress_bar() as progress:
        est = ev.run_seeds(settings, progress=progress, on_seed=lambda done: done.to_csv(partial, index=False))
    partial.unlink(missing_ok=True)
    summary = ev.summarise(est)
    ev.write_outputs(est, summary, out, settings, time.perf_counter() - t0)
    table = Table("effect", "estimator", "estimable", "coverage", "mean bias (log HR)", "MC SE", "CI width (log)",
                  "excl. 1", "marginal HR", "coverage (marginal)", "bias (marginal)")

    def f(v: float, d: int = 3) -> str:
        return "-" if v != v else f"{v:.{d}f}"  # NaN (nothing estimable) prints as -

    for r in summary.itertuples():
        table.add_row(str(r.effect), str(r.estimator), f"{r.estimable}/{r.seeds}", f(r.coverage, 2),
                      f(r.mean_bias_log_hr), f(r.bias_mc_se), f(r.mean_ci_width_log, 2), f(r.share_excluding_1, 2),
                      f(r.mean_marginal_hr), f(r.coverage_marginal, 2), f(r.mean_bias_log_hr_marginal))
    console.print(table)
    console.print(f"wrote {out}/seeds_estimates.csv, seeds_summary.csv (and .parquet), seeds.png",
                  highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover - console entry point
    app()
