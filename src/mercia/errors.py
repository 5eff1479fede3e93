"""Errors a user can cause. Each says what was wrong and how to fix it.

The CLI prints them as one line without a traceback; HTTP services return them as 4xx.
"""

from __future__ import annotations

from typing import Any


class MerciaError(Exception):
    """Base class for every error a user can cause (bad input, bad configuration)."""


class ConfigError(MerciaError):
    """A target, option or configuration value is invalid."""


class CdmError(MerciaError):
    """A CDM cannot be opened, or does not have the shape expected."""


class LoadError(CdmError):
    """A file could not be loaded into a CDM; the message names file, line and column."""


class VocabularyError(MerciaError):
    """A vocabulary file or concept reference is invalid."""


class CohortDefinitionError(MerciaError):
    """A cohort definition is invalid; the message names the element and its path."""


class StudyError(MerciaError):
    """A study package is invalid or cannot run."""


class DisclosureError(MerciaError):
    """A disclosure policy is invalid or weaker than the site minimum."""


def field_problems(e: Any) -> list[str]:
    """A pydantic ValidationError as a user reads it: one `field.path: message` per problem, the allowed
    values of a field with a fixed set, and none of pydantic's names for the branches of a union.

    A field that takes a name or a mapping (`policy: opensafely` or `policy: {threshold: ...}`) fails in
    both branches; only the branch the input was meant for is kept (a name: the allowed names; a
    mapping: what is wrong inside it).
    """
    items = []
    for err in e.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or "(" in p))]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        items.append((path, err))
    named = {path for path, err in items if err["type"] == "literal_error" and isinstance(err.get("input"), str)}
    out = []
    for path, err in items:
        kind, given = err["type"], err.get("input")
        if kind == "literal_error" and isinstance(given, dict | list):
            continue  # a mapping was meant: its own errors say what is wrong
        if kind != "literal_error" and path in named:
            continue  # a name was meant: the other branches' complaints say nothing about it
        if kind == "literal_error":
            expected = str((err.get("ctx") or {}).get("expected", ""))
            allowed = ", ".join(x.strip().strip("'") for x in expected.replace(" or ", ", ").split(",") if x.strip())
            msg = f"{given!r} is not allowed (allowed: {allowed})"
        elif kind == "extra_forbidden":
            msg = "unknown field (check the spelling against the reference)"
        elif kind == "missing":
            msg = "required, missing"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
        out.append(f"{path or '(top level)'}: {msg}")
    return out
