"""Docstrings that list a settings model's fields, so that `help(Model)` says what each one means.

    @field_docs
    class SurvivalSettings(BaseModel):
        \"\"\"Time at risk and censoring.\"\"\"
        tar_start: int = Field(0, description="first day at risk, days after index")

`help(SurvivalSettings)` then shows, under the model's own docstring, each field with its default
and its `description=`; the fields are read from the model, so a new field appears by itself.
(docs/reference/study-package.md is written from the same descriptions.)
"""

from __future__ import annotations

import inspect
import textwrap
from typing import TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=type[BaseModel])
FIELDS_HEADING = "Fields (name, default: meaning):"


def _default(value: object) -> str:
    if isinstance(value, BaseModel):
        return f"{type(value).__name__}()"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fields_text(model: type[BaseModel]) -> str:
    """The fields section: one entry per field, wrapped to 100 columns."""
    lines = [FIELDS_HEADING]
    for name, f in model.model_fields.items():
        default = "required" if f.is_required() else f"default {_default(f.get_default(call_default_factory=True))}"
        entry = f"{name}, {default}: {' '.join((f.description or '').split())}".rstrip(": ")
        lines.append(textwrap.fill(entry, 100, initial_indent="    ", subsequent_indent="        ",
                                   break_on_hyphens=False, break_long_words=False))
    return "\n".join(lines)


def own_doc(model: type) -> str:
    """The model's docstring as written, without the fields section."""
    doc = model.__dict__.get("__doc__") or ""
    return inspect.cleandoc(doc).split(FIELDS_HEADING)[0].strip()


def field_docs(model: M) -> M:
    """Append the fields section to `model`'s docstring (a class decorator)."""
    model.__doc__ = (own_doc(model) + "\n\n" + fields_text(model)).strip()
    return model
