"""docs/reference/study-package.md, written from the study-package models.

    python -m mercia.study.package_doc > docs/reference/study-package.md

Every table is read from the pydantic models (`StudySpec`, `CohortRef`, each registered analysis
type (`mercia.study.kinds`) and its settings models, `DisclosurePolicy`): field names, types, constraints,
defaults and each field's `description=`. A field added to a model appears here without any change
to this module; a test keeps the file in step with the code and every field described.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from mercia import limits
from mercia.model_doc import own_doc

HEADER = """# Study package reference

Generated from the package models by `python -m mercia.study.package_doc`; a test keeps it in step
with the code. For a first package see the [tutorial](../tutorials/first-study.md); the examples are
`examples/studies/`.

A study package is one YAML or JSON file (or a Python file setting `STUDY` to the same mapping) with
four parts: a `name`, the `cohorts`, the `analyses` that use them, and the `disclosure` policy every
result must pass. Unknown keys are refused with a one-line error naming the key, at every level.
Settings left out take the defaults below, and the package's hash (what a site approves) is taken
with every default spelled out, so a default is part of what was approved.

In the tables, a setting's path is written as in the file: `settings.survival.tar_end` is
`tar_end:` inside `survival:` inside the analysis's `settings:`; `windows[].name` is the `name:` of
each item of the list `windows:`. Days are whole days relative to index (a cohort entry's start
date) unless the text says otherwise; negative days are before index. "null" is YAML's `null` (or
leaving the key out where its default is null).
"""


# ------------------------------------------------------------------------------------------ the models


def analysis_models() -> list[type[BaseModel]]:
    """Each analysis type's model, in the registry's order (`mercia.study.kinds`)."""
    from mercia.study import kinds

    return list(kinds.all_kinds())


def settings_model(analysis: type[BaseModel]) -> tuple[type[BaseModel], tuple[str, ...]] | None:
    """The model an analysis's `settings:` is validated by, and the fields the package sets itself."""
    declared = getattr(analysis, "SETTINGS_MODEL", None)
    if declared is not None:
        return declared, tuple(getattr(analysis, "SETTINGS_EXCLUDE", ()))
    f = analysis.model_fields.get("settings")
    if f is not None and isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
        return f.annotation, ()
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Models an annotation holds: itself, list items, union members (in order)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for a in get_args(annotation):
        if isinstance(a, FieldInfo):
            continue
        out += _models_in(a)
    return out


def documented_models() -> list[type[BaseModel]]:
    """Every model a package is made of (each once): what the reference describes."""
    from mercia.disclosure import DisclosurePolicy
    from mercia.study.package import CohortRef, StudySpec

    seen: list[type[BaseModel]] = []
    analyses = analysis_models()

    def walk(m: type[BaseModel], exclude: tuple[str, ...] = ()) -> None:
        if m in seen:
            return
        seen.append(m)
        for name, f in m.model_fields.items():
            if name in exclude:
                continue
            for sub in _models_in(f.annotation):
                if sub in analyses:
                    continue  # the analyses, walked below
                walk(sub)

    walk(StudySpec)
    walk(CohortRef)
    for a in analysis_models():
        walk(a)
        s = settings_model(a)
        if s is not None:
            walk(*s)
    walk(DisclosurePolicy)
    return seen


def documented_fields() -> Iterator[tuple[type[BaseModel], str, FieldInfo]]:
    """(model, field name, field) of every field the reference lists."""
    excluded: dict[type[BaseModel], tuple[str, ...]] = {}
    for a in analysis_models():
        excluded[a] = ("type",)  # an analysis's section heading is its type
        s = settings_model(a)
        if s is not None and s[1]:
            excluded[s[0]] = s[1]
    for m in documented_models():
        for name, f in m.model_fields.items():
            if name not in excluded.get(m, ()):
                yield m, name, f


# ---------------------------------------------------------------------------------------- rendering


def _num(v: float | int) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int) or float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:g}"


def _constraints(meta: list[Any], what: str) -> str:
    """Bounds and lengths in words: `0 to 99,999`, `above 0, below 1`, `1 to 1,000 items`."""
    lo: tuple[str, Any] | None = None
    hi: tuple[str, Any] | None = None
    min_len = max_len = None
    parts: list[str] = []
    for c in meta:
        if getattr(c, "ge", None) == limits.MIN_INT64 or getattr(c, "le", None) == limits.MAX_INT64:
            continue  # any 64-bit integer: no bound worth a reader's time
        if isinstance(c, at.Ge):
            lo = ("ge", c.ge)
        elif isinstance(c, at.Gt):
            lo = ("gt", c.gt)
        elif isinstance(c, at.Le):
            hi = ("le", c.le)
        elif isinstance(c, at.Lt):
            hi = ("lt", c.lt)
        elif isinstance(c, at.MinLen):
            min_len = c.min_length
        elif isinstance(c, at.MaxLen):
            max_len = c.max_length
        elif getattr(c, "pattern", None):
            parts.append(f"matching `{c.pattern}`")
    if lo and hi and lo[0] == "ge" and hi[0] == "le":
        parts.insert(0, f"{_num(lo[1])} to {_num(hi[1])}")
    else:
        words = {"ge": "{} or more", "gt": "above {}", "le": "up to {}", "lt": "below {}"}
        parts[:0] = [words[b[0]].format(_num(b[1])) for b in (lo, hi) if b is not None]
    unit = "characters" if what == "text" else "items"
    if min_len and max_len:
        parts.append(f"{_num(min_len)} to {_num(max_len)} {unit}")
    elif max_len:
        parts.append(f"at most {_num(max_len)} {unit}")
    elif min_len:
        parts.append(f"at least {_num(min_len)} {unit}")
    return ", ".join(parts)


def type_text(annotation: Any, meta: list[Any] | None = None) -> str:
    """A field's type and allowed values, in words."""
    meta = list(meta or [])
    if get_origin(annotation) is Annotated:
        inner, *extra = get_args(annotation)
        for e in extra:
            if isinstance(e, FieldInfo):
                meta += e.metadata
            else:
                meta.append(e)
        return type_text(inner, meta)
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        nullable = len(members) < len(get_args(annotation))
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if models and len(models) == len(members) and all("type" in m.model_fields for m in models):
            tags = [get_args(m.model_fields["type"].annotation)[0] for m in models]
            text = "mapping with `type:` " + " or ".join(f"`{t}`" for t in tags)
        else:
            text = " or ".join(type_text(m, meta if len(members) == 1 else None) for m in members)
        return text + (" or null" if nullable else "")
    if origin is Literal:
        values = get_args(annotation)
        return f"`{values[0]}`" if len(values) == 1 else "one of " + ", ".join(f"`{v}`" for v in values)
    if origin is list:
        (item,) = get_args(annotation)
        c = _constraints(meta, "list")
        return f"list of {type_text(item)}" + (f" ({c})" if c else "")
    if origin is tuple:
        return "[" + ", ".join(type_text(a) for a in get_args(annotation)) + "]"
    if origin is dict:
        key, value = get_args(annotation)
        c = _constraints(meta, "list")
        return f"mapping of {type_text(key)} to {type_text(value)}" + (f" ({c})" if c else "")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    names = {bool: "true or false", int: "integer", float: "number", str: "text", dt.date: "date (YYYY-MM-DD)"}
    what = names.get(annotation, getattr(annotation, "__name__", str(annotation)))
    if annotation is Any:
        what = "any"
    c = _constraints(meta, "text" if annotation is str else "number")
    return what + (f" ({c})" if c else "")


def _short(v: Any) -> Any:
    if isinstance(v, float) and len(repr(v)) > 8:
        return float(f"{v:.4g}")
    if isinstance(v, list):
        return [_short(x) for x in v]
    if isinstance(v, dict):
        return {k: _short(x) for k, x in v.items()}
    return v


def default_text(f: FieldInfo) -> str:
    if f.is_required():
        return "required"
    v = f.get_default(call_default_factory=True)
    if isinstance(v, BaseModel):
        tag = getattr(v, "type", None)
        return f"`type: {tag}` with the defaults below" if tag else "(the defaults below)"
    if v is PydanticUndefined:
        return "required"
    exact = to_jsonable_python(v)
    shown = _short(exact)
    # Long floats are shown to 4 significant digits, marked as such.
    return ("≈ " if shown != exact else "") + f"`{json.dumps(shown, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _meaning(f: FieldInfo) -> str:
    # The reference is read by package authors, who write YAML's null where Python has None.
    return re.sub(r"\bNone\b", "null", f.description or "")


def field_rows(model: type[BaseModel], prefix: str = "", exclude: tuple[str, ...] = (), note: str = "") -> list[str]:
    """Table rows of a model's fields, and of the models nested in them (as dotted paths); `note`
    starts each meaning (which branch of a union the rows belong to)."""
    rows = []
    for name, f in model.model_fields.items():
        if name in exclude:
            continue
        path = f"{prefix}{name}"
        rows.append(
            f"| `{path}` | {_cell(type_text(f.annotation, f.metadata))} | {_cell(default_text(f))} "
            f"| {_cell(note + _meaning(f))} |"
        )
        nested = _models_in(f.annotation)
        sub_prefix = f"{path}{'[]' if get_origin(f.annotation) is list else ''}."
        for sub in nested:
            sub_note = note
            if len(nested) > 1 and "type" in sub.model_fields:
                sub_note += f"(`type: {get_args(sub.model_fields['type'].annotation)[0]}`) "
            rows += field_rows(sub, sub_prefix, note=sub_note)
    return rows


def _table(rows: list[str]) -> list[str]:
    return ["| setting | type and allowed values | default | meaning |", "|---|---|---|---|", *rows]


def _doc(model: type[BaseModel]) -> str:
    return " ".join(own_doc(model).split())


COHORT_FORMS = """A cohort is given in exactly one of two ways:

- `definition:` inline, in the [cohort language](cohort-language.md) (`name:`, `concepts:`,
  `entry:`, `inclusion_rules:`, `exit:` ...), or in Mercia's model form (a mapping with `expression`,
  as a package's canonical form, `package.json` in a results folder, holds it);
- `file:` a path relative to the package file: `.json` (an ATLAS/OHDSI Circe export, either the bare
  expression or ATLAS's definition export, or Mercia's model form), `.yaml`/`.yml` (the cohort
  language), or `.py` (Python code setting `COHORT` to a cohort built with `mercia.cohorts.dsl`).
  An absolute path is refused, so the package travels; a package sent as data (to a hub) embeds
  every definition instead.

Cohort ids are given with `id:` or assigned 1, 2, ... in the sorted order of the keys; reordering the
file changes nothing."""


def _analysis_section(a: type[BaseModel]) -> list[str]:
    tag = get_args(a.model_fields["type"].annotation)[0]
    out = [f"### `{tag}`", "", _doc(a), ""]
    s = settings_model(a)
    rows = field_rows(a, exclude=("type", "settings"))
    if "settings" in a.model_fields:
        f = a.model_fields["settings"]
        rows.append(f"| `settings` | mapping | {_cell(default_text(f) if s is None else '(the defaults below)')} "
                    f"| {_cell(_meaning(f))} |")
        if s is not None:
            model, exclude = s
            rows += field_rows(model, "settings.", exclude)
    out += [*_table(rows), ""]
    return out


def _policy_section() -> list[str]:
    from mercia.disclosure import BUILTIN_POLICIES, DisclosurePolicy

    out = ["## Disclosure policy", "",
           "`disclosure:` is the name of a built-in policy or a policy written out with the fields below. "
           "A site runs a package under the package's policy only if it is at least as strict as the "
           "site's own minimum in every field; otherwise the run is refused before anything runs.", "",
           _doc(DisclosurePolicy), "",
           *_table(field_rows(DisclosurePolicy)), "",
           "The built-in policies:", ""]
    names = sorted(BUILTIN_POLICIES)
    out += ["| field | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
    for field in DisclosurePolicy.model_fields:
        if field == "name":
            continue
        vals = [json.dumps(to_jsonable_python(getattr(BUILTIN_POLICIES[n], field))) for n in names]
        out.append(f"| `{field}` | " + " | ".join(f"`{v}`" for v in vals) + " |")
    return [*out, ""]


def study_package_markdown() -> str:
    from mercia.study.package import PACKAGE_FORMAT, CohortRef, StudySpec

    out = [HEADER, "## The package", "", _doc(StudySpec), "",
           *_table([f"| `format` | `{PACKAGE_FORMAT}` | `null` | the package format; optional |",
                    *field_rows(StudySpec, exclude=("cohorts", "analyses", "disclosure"))]),
           "", "and `cohorts`, `analyses` and `disclosure`, described below.", "",
           "## Cohorts", "", "`cohorts:` is a mapping of " + _cell(_meaning(StudySpec.model_fields["cohorts"]))
           + ".", "", COHORT_FORMS, "", *_table(field_rows(CohortRef, "cohorts.<key>.")), "",
           "## Analyses", "", "`analyses:` is a list: " + _cell(_meaning(StudySpec.model_fields["analyses"]))
           + ". Every analysis may have a `name:` that prefixes its result tables. The types:", ""]
    models = analysis_models()
    out.append(", ".join(f"`{get_args(a.model_fields['type'].annotation)[0]}`" for a in models) + ".")
    out.append("")
    for a in models:
        out += _analysis_section(a)
    out += _policy_section()
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(study_package_markdown())
