"""The study composer's forms, generated from the study package's models, and the package they make.

    forms = analysis_forms()                       # one form per registered analysis type (mercia.study.kinds)
    forms = analysis_forms({"incidence": 2})       # ... and two incidence analyses (a.incidence.*, a.incidence.2.*)
    fields, form = add_copy(fields)                # the composer's "add another analysis of this type"
    data = package_from_form(fields)               # the composer's fields -> a package as data (or StudyError)
    pkg, text = checked_package(data)              # validated by StudyPackage.from_dict: hash and YAML

Each analysis type's fields are read from its pydantic model and its settings model (as the package
reference is, `mercia.study.package_doc`): a field's input follows its type (a number, a date, a
choice of a Literal, yes/no, a set of choices), its hint is its type in words and its `description=`,
and its initial value is its default. A field the form cannot show as one input (a list of windows, a
pair of ages, a model of its own choosing) is a small YAML box holding its default. A field left empty
takes its default; a type added to the registry has its form without any change here. A package may
run a type more than once (two incidence analyses with other settings): each further one is a copy of
the type's form under a.TYPE.N, whose `name` (its tables' prefix) starts as TYPE_N.

A cohort is pasted as the cohort language's YAML or an ATLAS/Circe JSON export (the cohorts page's
reader, `cohort_forms.read_pasted`). Anything wrong is a StudyError naming the field.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from mercia.errors import CohortDefinitionError, MerciaError, StudyError
from mercia.portal.cohort_forms import read_pasted
from mercia.study import kinds
from mercia.study.package import StudyPackage
from mercia.study.package_doc import settings_model, type_text

COHORT_ROWS = 4  # cohorts the composer offers
MAX_COPIES = 5  # analyses of one type the composer offers (a pasted package may have more)
MAX_PACKAGE_TEXT = 2_000_000
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SPLIT = re.compile(r"[\s,;]+")


@dataclass
class Input:
    """One generated input: its form name, its path in the analysis (`settings.survival.censor_at`), the
    widget and what it offers."""

    name: str
    path: tuple[str, ...]
    label: str
    widget: Literal["text", "number", "date", "select", "bool", "choices", "keys", "yaml"]
    hint: str
    required: bool
    value: str = ""
    options: list[str] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)  # choices: the ones ticked
    cast: str = "str"  # int, float, str


@dataclass
class AnalysisForm:
    type: str
    title: str
    inputs: list[Input]
    copy: int = 1  # the first, second, ... analysis of this type in the package
    copies: int = 1  # how many of this type the composer shows

    @property
    def prefix(self) -> str:
        return form_prefix(self.type, self.copy)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without Annotated and None, whether None is allowed)."""
    nullable = False
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if get_origin(annotation) in (typing.Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            nullable = nullable or len(members) < len(get_args(annotation))
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation, nullable


def _default(f: FieldInfo) -> Any:
    if f.default is not PydanticUndefined:
        return f.default
    if f.default_factory is not None:
        return f.default_factory()  # type: ignore[call-arg]
    return PydanticUndefined


def _yaml(value: Any) -> str:
    return yaml.safe_dump(to_jsonable_python(value), default_flow_style=True, sort_keys=False, width=200).strip()


def _is_cohort_key(model: type[BaseModel], name: str) -> bool:
    """A field naming cohorts by key (`target`, `cohorts`, ...): its description says so."""
    return "key" in (model.model_fields[name].description or "") and name not in ("name",)


def _inputs(model: type[BaseModel], prefix: str, path: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[Input]:
    out: list[Input] = []
    for name, f in model.model_fields.items():
        if name in exclude or name == "type":
            continue
        p = (*path, name)
        form_name = f"{prefix}.{'.'.join(p)}"
        inner, _ = _unwrap(f.annotation)
        default = _default(f)
        required = default is PydanticUndefined
        hint = (type_text(f.annotation, list(f.metadata)) + (f": {f.description}" if f.description else "")).replace("`", "")
        label = " › ".join(p)
        shown = "" if required or default is None else default
        origin = get_origin(inner)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            out += _inputs(inner, prefix, p)
            continue
        if _is_cohort_key(model, name) and (inner is str or (origin is list and _unwrap(get_args(inner)[0])[0] is str)):
            out.append(Input(form_name, p, label, "keys" if origin is list else "text",
                             hint + (" (comma-separated keys)" if origin is list else ""), required,
                             ", ".join(shown) if isinstance(shown, list) else str(shown or "")))
            continue
        if inner is bool:
            out.append(Input(form_name, p, label, "bool", hint, required,
                             "" if shown == "" else ("true" if shown else "false")))
        elif inner in (int, float):
            out.append(Input(form_name, p, label, "number", hint, required, "" if shown == "" else str(shown),
                             cast=inner.__name__))
        elif inner is dt.date:
            out.append(Input(form_name, p, label, "date", hint, required, "" if shown == "" else str(shown)))
        elif inner is str:
            out.append(Input(form_name, p, label, "text", hint, required, str(shown)))
        elif origin is Literal and all(isinstance(v, str) for v in get_args(inner)):
            out.append(Input(form_name, p, label, "select", hint, required, str(shown),
                             options=[str(v) for v in get_args(inner)]))
        elif origin is list and get_origin(_unwrap(get_args(inner)[0])[0]) is Literal:
            options = [str(v) for v in get_args(_unwrap(get_args(inner)[0])[0])]
            out.append(Input(form_name, p, label, "choices", hint, required, options=options,
                             chosen=[str(v) for v in (shown or [])]))
        else:
            out.append(Input(form_name, p, label, "yaml", hint + " (YAML)", required,
                             "" if required else _yaml(default)))
    return out


def form_prefix(tag: str, copy: int = 1) -> str:
    """The form names' prefix of an analysis: a.incidence for the first incidence analysis, a.incidence.2
    for the second (no field of a model is named by a number)."""
    return f"a.{tag}" if copy == 1 else f"a.{tag}.{copy}"


def analysis_forms(copies: dict[str, int] | None = None) -> list[AnalysisForm]:
    """One form per registered analysis type, in the registry's order; `copies[type]` forms of a type
    the package runs more than once (each a distinct `name`, by default the type and its number)."""
    forms = []
    for kind in kinds.all_kinds():
        tag = kind.type_name()
        first = (kind.__doc__ or tag).strip().splitlines()[0]
        n = (copies or {}).get(tag, 1)
        for copy in range(1, n + 1):
            prefix = form_prefix(tag, copy)
            inputs = _inputs(kind, prefix, (), ("settings",))  # settings: from its model, below
            s = settings_model(kind)
            if s is not None:
                model, excluded = s
                inputs += _inputs(model, prefix, ("settings",), excluded)
            if copy > 1:
                for i in inputs:
                    if i.path == ("name",):
                        i.value = f"{tag}_{copy}"  # distinct table names, as the package needs
            forms.append(AnalysisForm(tag, first, inputs, copy, n))
    return forms


def copies_from(fields: dict[str, list[str]]) -> dict[str, int]:
    """How many analyses of each type the composer's form shows (its hidden a.TYPE.copies fields)."""
    out = {}
    for tag in kinds.types():
        raw = _one(fields, f"a.{tag}.copies")
        if raw.isdigit() and int(raw) > 1:
            out[tag] = min(int(raw), MAX_COPIES)
    return out


def add_copy(fields: dict[str, list[str]]) -> tuple[dict[str, list[str]], AnalysisForm]:
    """The composer's fields with one more analysis of the type in `add_type`, its inputs at their
    defaults and ticked; StudyError naming the field when the type is unknown or at its limit."""
    tag = _one(fields, "add_type")
    types_ = list(kinds.types())
    if tag not in types_:
        raise StudyError(f"add another: {tag[:100]!r} is not allowed (allowed: {', '.join(types_)})")
    copies = copies_from(fields)
    n = copies.get(tag, 1) + 1
    if n > MAX_COPIES:
        raise StudyError(f"add another: a package here runs at most {MAX_COPIES} {tag} analyses; paste the "
                         "package as YAML below for more")
    copies[tag] = n
    form = next(f for f in analysis_forms(copies) if f.type == tag and f.copy == n)
    out = {**fields, f"a.{tag}.copies": [str(n)], f"{form.prefix}.on": ["1"]}
    for i in form.inputs:
        if i.widget == "choices":
            out[i.name], out[i.name + ".shown"] = list(i.chosen), ["1"]
        else:
            out[i.name] = [i.value]
    return out, form


# ---- reading the composer's form --------------------------------------------------------------------
def _one(fields: dict[str, list[str]], name: str) -> str:
    return (fields.get(name) or [""])[0].strip()


def _value(i: Input, fields: dict[str, list[str]], where: str) -> Any:
    """The field's value from the form, or PydanticUndefined when it is left empty (its default)."""
    label = f"{where}.{'.'.join(i.path)}"
    if i.widget == "choices":
        if _one(fields, i.name + ".shown") != "1":
            return PydanticUndefined
        chosen = [v for v in fields.get(i.name, []) if v]
        bad = [v for v in chosen if v not in i.options]
        if bad:
            raise StudyError(f"{label}: {bad[0]!r} is not allowed (allowed: {', '.join(i.options)})")
        return chosen
    raw = _one(fields, i.name)
    if raw == "":
        return PydanticUndefined
    if i.widget == "bool":
        if raw not in ("true", "false"):
            raise StudyError(f"{label}: {raw!r} is not allowed (allowed: true, false)")
        return raw == "true"
    if i.widget == "number":
        try:
            return int(raw) if i.cast == "int" else float(raw)
        except ValueError:
            kind = "a whole number" if i.cast == "int" else "a number"
            raise StudyError(f"{label}: {raw!r} is not {kind}") from None
    if i.widget == "select" and raw not in i.options:
        raise StudyError(f"{label}: {raw!r} is not allowed (allowed: {', '.join(i.options)})")
    if i.widget == "keys":
        return [w for w in _SPLIT.split(raw) if w]
    if i.widget == "yaml":
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            raise StudyError(f"{label}: not valid YAML{at}") from None
    return raw


def _put(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        target = target.setdefault(p, {})
    target[path[-1]] = value


def read_cohorts(fields: dict[str, list[str]]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The pasted cohorts by key (each a definition as data), and the rows as typed (to show again)."""
    cohorts: dict[str, Any] = {}
    rows = []
    for i in range(1, COHORT_ROWS + 1):
        key, text = _one(fields, f"cohort{i}_key"), (fields.get(f"cohort{i}_definition") or [""])[0]
        rows.append({"key": key, "definition": text})
        if not key and not text.strip():
            continue
        label = f"cohort {i}"
        if not _KEY.match(key):
            raise StudyError(f"{label} key: {key!r} is not a key (letters, digits and underscores, not starting "
                             "with a digit)")
        if key in cohorts:
            raise StudyError(f"{label} key: {key!r} is given twice; give each cohort its own key")
        if not text.strip():
            raise StudyError(f"{label} ({key}) definition: paste its YAML or ATLAS JSON")
        try:
            definition, form = read_pasted(text)
        except CohortDefinitionError as e:
            raise StudyError(f"{label} ({key}) definition: {e}") from None
        # YAML as written (readable in the package); ATLAS JSON as the model it reads to. Either gives
        # the same canonical package, hence the same hash.
        cohorts[key] = {"definition": yaml.safe_load(text) if form == "yaml" else definition.to_dict()}
    if not cohorts:
        raise StudyError("cohorts: paste at least one cohort (a key and its definition)")
    return cohorts, rows


def package_from_form(fields: dict[str, list[str]]) -> dict[str, Any]:
    """The composer's fields as a study package (data); StudyError naming the field when one is wrong."""
    name = _one(fields, "study_name")
    if not name:
        raise StudyError("study name: give the study a name")
    data: dict[str, Any] = {"name": name}
    description = _one(fields, "study_description")
    if description:
        data["description"] = description
    data["cohorts"], _ = read_cohorts(fields)
    analyses = []
    for form in analysis_forms(copies_from(fields)):
        if _one(fields, f"{form.prefix}.on") != "1":
            continue
        a: dict[str, Any] = {"type": form.type}
        for i in form.inputs:
            v = _value(i, fields, f"analysis {form.type}" + (f" #{form.copy}" if form.copy > 1 else ""))
            if v is not PydanticUndefined:
                _put(a, i.path, v)
        analyses.append(a)
    if not analyses:
        raise StudyError("analyses: tick at least one analysis to run")
    data["analyses"] = analyses
    disclosure = _one(fields, "disclosure")
    if disclosure not in ("", "opensafely", "sacro"):
        raise StudyError(f"disclosure: {disclosure!r} is not allowed (allowed: the site's own, opensafely, sacro)")
    if disclosure:
        data["disclosure"] = disclosure
    return data


def read_package_text(text: str) -> dict[str, Any]:
    """A whole package pasted as YAML or JSON (as `mercia study run` reads a file); StudyError if not."""
    from mercia.cohorts import dsl

    if len(text) > MAX_PACKAGE_TEXT:
        raise StudyError(f"package: {len(text)} characters is too long (at most {MAX_PACKAGE_TEXT})")
    if not text.strip():
        raise StudyError("package: paste a study package (YAML or JSON)")
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else dsl.load_yaml(text)
    except json.JSONDecodeError as e:
        raise StudyError(f"package: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except MerciaError as e:
        raise StudyError(f"package: {e}") from None
    if not isinstance(data, dict):
        raise StudyError("package: a study package is a mapping (name:, cohorts:, analyses:, disclosure:)")
    return data


def checked_package(data: dict[str, Any]) -> tuple[StudyPackage, str]:
    """The package validated as the hub validates a submission, and its YAML (what is submitted)."""
    try:
        pkg = StudyPackage.from_dict(data, source="package")
    except MerciaError:
        raise
    except Exception as e:  # odd shapes deep inside a definition: still bad input
        raise StudyError(f"package: it could not be read ({type(e).__name__})") from None
    text = yaml.safe_dump(to_jsonable_python(data), sort_keys=False, allow_unicode=True, width=100)
    return pkg, text
