"""The `mercia` command. Thin: it parses, calls the library, shows progress and prints results.

Errors a user can cause (MerciaError) print one line on stderr and exit 1, without a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mercia.errors import MerciaError

app = typer.Typer(help="Mercia: federated health-data research on the OMOP CDM.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
cdm_app = typer.Typer(help="Load, export and inspect OMOP CDM databases.", no_args_is_help=True)
app.add_typer(cdm_app, name="cdm")

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn MerciaError (and unreadable files) into one clear line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MerciaError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
            err_console.print(f"[bold red]error:[/] {e.strerror}: {e.filename}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


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


TargetOpt = Annotated[str, typer.Option("--cdm", help="A .duckdb path or a postgresql:// URL.")]
CdmSchemaOpt = Annotated[str | None, typer.Option("--cdm-schema", help="Schema of the clinical tables.")]
VocabSchemaOpt = Annotated[str | None, typer.Option("--vocab-schema", help="Schema of the vocabulary tables.")]
ResultsSchemaOpt = Annotated[str | None, typer.Option("--results-schema", help="Schema of the cohort tables.")]


def open_cdm(target: str, cdm_schema: str | None, vocab_schema: str | None, results_schema: str | None,
             *, create: bool = False, read_only: bool = False):
    from mercia.cdm import Cdm

    return Cdm.open(target, cdm_schema=cdm_schema, vocab_schema=vocab_schema, results_schema=results_schema,
                    create=create, read_only=read_only)


# ---- synth -----------------------------------------------------------------------------------
@app.command()
@user_errors
def synth(
    persons: Annotated[int, typer.Option(min=1, help="Persons in all, split across the sites.")] = 10_000,
    sites: Annotated[int, typer.Option(min=1, max=26, help="Number of sites (one DuckDB CDM each).")] = 3,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives identical data.")] = 42,
    out: Annotated[Path, typer.Option(help="Folder to write the site databases into.")] = Path("synth"),
) -> None:
    """Write a synthetic UK population as one OMOP CDM (DuckDB) per site."""
    from mercia.synth import generate_federation

    with progress_bar() as progress:
        paths = generate_federation(out, persons=persons, sites=sites, seed=seed, progress=progress)
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
) -> None:
    """Load a folder of CDM tables into a CDM, all or nothing."""
    from mercia.cdm.load import load_folder

    with open_cdm(cdm, cdm_schema, vocab_schema, results_schema, create=True) as handle:
        counts = load_folder(handle, src, version=version)
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


# ---- demo ------------------------------------------------------------------------------------
@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo federation.")] = Path("demo"),
    persons: Annotated[int, typer.Option(min=300, help="Persons in all, across three sites.")] = 30_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 2026,
) -> None:
    """Build a three-site synthetic federation under ./demo and summarise each site."""
    from mercia.demo import run_demo

    with progress_bar() as progress:
        result = run_demo(out, persons=persons, seed=seed, progress=progress)
    for site, info in result["sites"].items():
        print_info(info, title=f"site {site}")
    console.print(f"[bold]demo output:[/] {result['out']}")


def main() -> None:  # pragma: no cover - console entry point
    app()
