"""``trial.yaml`` read and written: the file form of ``mercia.trials.model.Trial``.

Every error is one line naming the field at fault (``criteria[2].status: ...``); unknown keys are
refused with a suggestion, as in the cohort language.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from mercia.cohorts.yaml_reader import load_yaml
from mercia.errors import CohortDefinitionError
from mercia.limits import json_problem
from mercia.trials.model import INDEX_KEYS, STATUSES, TYPES, Criterion, Trial

TOP_KEYS = ("name", "registry_id", "title", "description", "concepts", "index", "criteria")
CRITERION_KEYS = ("name", "type", "rule", "status", "source_text", "note")


def _fail(path: str, msg: str) -> CohortDefinitionError:
    return CohortDefinitionError(f"{path}: {msg}")


def _unknown(d: dict[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for k in d:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(f"{path}.{k}".lstrip("."), f"unknown field{hint}; allowed: {', '.join(allowed)}")


def _text(v: Any, path: str, required: bool = False) -> str | None:
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip():
        raise _fail(path, "required: text" if v is None else f"expected text, got {type(v).__name__}")
    return v


def is_trial_data(data: Any) -> bool:
    """True for a parsed ``trial.yaml`` (it has ``criteria:``), false for a cohort definition."""
    return isinstance(data, dict) and "criteria" in data


def from_dict(data: Any) -> Trial:
    """A trial from parsed YAML; the cohort it compiles to is checked too, so a bad rule fails here."""
    problem = json_problem(data)
    if problem:
        raise CohortDefinitionError(problem)
    if not isinstance(data, dict):
        raise CohortDefinitionError("trial: expected a mapping with name:, index:, criteria:")
    _unknown(data, TOP_KEYS, "")
    name = _text(data.get("name"), "name", required=True)
    concepts = data.get("concepts") or {}
    if not isinstance(concepts, dict):
        raise _fail("concepts", "expected a mapping of concept sets (key: {name:, include: [...]})")
    index = data.get("index") or {}
    if not isinstance(index, dict):
        raise _fail("index", "expected a mapping (entry:, observation:)")
    _unknown(index, INDEX_KEYS, "index")
    raw = data.get("criteria")
    if not isinstance(raw, list) or not raw:
        raise _fail("criteria", "give at least one criterion (a list of {name:, type:, rule:})")
    criteria = []
    names: set[str] = set()
    for i, c in enumerate(raw):
        path = f"criteria[{i}]"
        if not isinstance(c, dict):
            raise _fail(path, "expected a mapping (name:, type:, rule:, status:, source_text:)")
        _unknown(c, CRITERION_KEYS, path)
        cname = _text(c.get("name"), f"{path}.name", required=True)
        assert cname is not None
        if cname in names:
            raise _fail(f"{path}.name", f"{cname!r} names two criteria; names must differ")
        names.add(cname)
        typ = c.get("type")
        if typ not in TYPES:
            raise _fail(f"{path}.type", f"{typ!r} is not allowed (allowed: {', '.join(TYPES)})")
        status = c.get("status", "mapped")
        if status not in STATUSES:
            raise _fail(f"{path}.status", f"{status!r} is not allowed (allowed: {', '.join(STATUSES)})")
        if status == "mapped" and c.get("rule") is None:
            raise _fail(f"{path}.rule", "required for a mapped criterion: the condition in the cohort language "
                                        "(e.g. {condition: hf, between: [all days before, 0 days after]})")
        criteria.append(Criterion(cname, typ, c.get("rule"), status, _text(c.get("source_text"), f"{path}.source_text"),
                                  _text(c.get("note"), f"{path}.note")))
    trial = Trial(name, tuple(criteria), concepts, index, _text(data.get("registry_id"), "registry_id"),
                  _text(data.get("title"), "title"), _text(data.get("description"), "description"))
    trial.cohort()  # every mapped rule and concept set is checked now, with its path
    return trial


def from_yaml(text: str) -> Trial:
    data = load_yaml(text)
    if data is None:
        raise CohortDefinitionError("the trial file is empty; write name:, index:, criteria:")
    return from_dict(data)


def read_trial(path: str | Path) -> Trial:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CohortDefinitionError(f"trial file {str(p)!r} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CohortDefinitionError(f"cannot read trial file {str(p)!r}: {getattr(e, 'strerror', None) or e}") from None
    return from_yaml(text)


def to_dict(trial: Trial) -> dict[str, Any]:
    d: dict[str, Any] = {"name": trial.name}
    for k in ("registry_id", "title", "description"):
        if getattr(trial, k):
            d[k] = getattr(trial, k)
    if trial.concepts:
        d["concepts"] = trial.concepts
    if trial.index:
        d["index"] = trial.index
    crit = []
    for c in trial.criteria:
        x: dict[str, Any] = {"name": c.name, "type": c.type, "status": c.status}
        if c.source_text:
            x["source_text"] = c.source_text
        if c.rule is not None:
            x["rule"] = c.rule
        if c.note:
            x["note"] = c.note
        crit.append(x)
    d["criteria"] = crit
    return d


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # no &id001 anchors: every rule reads on its own


def _flow(v: Any) -> bool:
    """Short lists of scalars and small mappings of scalars on one line; the rest in blocks."""
    if isinstance(v, list):
        return all(not isinstance(x, dict | list) for x in v)
    return (isinstance(v, dict) and len(v) <= 3 and all(not isinstance(x, dict | list) for x in v.values())
            and len(str(v)) < 70 and "name" not in v)


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style='"' if len(s) > 60 else None)


_Dumper.add_representer(str, _str)
_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=_flow(v)))
_Dumper.add_representer(dict, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=_flow(v)))


def to_yaml(trial: Trial, header: str | None = None) -> str:
    """The trial as ``trial.yaml`` text (reading it back gives an equal trial)."""
    body = yaml.dump(to_dict(trial), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
    return (header or "") + body
