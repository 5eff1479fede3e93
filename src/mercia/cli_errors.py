"""The `mercia` command's one error boundary: what a user sees when something they gave is wrong.

Every command runs inside `boundary()` (the top-level group's `invoke`, so commands added later get it
too):

- a `MerciaError` is one line, `error: <message>`, and exit code 1;
- a pydantic `ValidationError` that escaped a loader is one line per field, `error: <field.path>: <message>`
  (with the allowed values where the field has a fixed set), and exit code 1;
- a file that cannot be read or written (missing, a folder, exists already, no permission) is one line
  naming it, and a database that refuses a statement one line
  with the database's first line of explanation, both exit code 1;
- Ctrl-C is one line, `interrupted`, and exit code 130 (128 + SIGINT, as shells report it);
- a warning is one line, `warning: <message>`, without the source line Python shows by default.

A command line click cannot parse (an unknown option, a missing argument, a value of the wrong type or
outside its range) is one line too, click's message and where to look (`see mercia cdm info --help`), with
click's exit code 2. The top level's own options are parsed inside the boundary too (`parse_args`), so
`mercia --bogus` is one line like the rest.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from mercia.errors import MerciaError, field_problems

_err = Console(stderr=True)
EXIT_USER_ERROR = 1
EXIT_USAGE = 2  # click's code for a command line it cannot parse
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


def _line(prefix: str, message: str) -> None:
    one = " ".join(str(message).split())  # one line, whatever the message held
    _err.print(f"{prefix} {escape(one)}", highlight=False, soft_wrap=True)


def error_line(message: str) -> None:
    _line("[bold red]error:[/]", message)


def warning_line(message: str) -> None:
    _line("[yellow]warning:[/]", message)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    warning_line(str(message))


def _usage_error(e: BaseException) -> bool:
    """Click's error for a command line it cannot parse (typer may carry its own copy of click, so by name);
    not its request to show a group's help when given no command."""
    names = {c.__name__ for c in type(e).__mro__}
    return "UsageError" in names and "NoArgsIsHelpError" not in names


def _database_error(e: BaseException) -> bool:
    """An error raised by a database driver, not by Mercia's own code (the engines name their drivers)."""
    from mercia.cdm.engines import is_driver_error

    return is_driver_error(e)


@contextmanager
def boundary() -> Iterator[None]:
    """Run a command: user errors, interrupts and warnings become one line each (see the module)."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # restored when the block ends
        try:
            yield
        except MerciaError as e:
            error_line(str(e))
            raise typer.Exit(EXIT_USER_ERROR) from None
        except ValidationError as e:
            for line in field_problems(e):
                error_line(line)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except OSError as e:
            if e.filename is None:  # not about a path the user gave
                raise
            error_line(f"{e.strerror or type(e).__name__}: {e.filename}")
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            _err.print("interrupted", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as e:
            if _usage_error(e):
                ctx = getattr(e, "ctx", None)
                hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
                error_line(f"{e.format_message()}{hint}")  # type: ignore[attr-defined]
                raise typer.Exit(EXIT_USAGE) from None
            if not _database_error(e):
                raise
            if type(e).__name__ == "InterruptException":  # DuckDB's word for Ctrl-C during a statement
                _err.print("interrupted", highlight=False)
                raise typer.Exit(EXIT_INTERRUPTED) from None
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            error_line(f"the database refused a statement: {first}")
            raise typer.Exit(EXIT_USER_ERROR) from None


def user_errors(fn: F) -> F:
    """The boundary around one function (the commands' decorator; the group applies it to all anyway)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with boundary():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class BoundaryGroup(TyperGroup):
    """The top-level command group: its own options are parsed, and every subcommand it invokes runs,
    inside `boundary()`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        with boundary():
            return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        with boundary():
            return super().invoke(ctx)
