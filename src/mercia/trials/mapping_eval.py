"""How well an imported draft maps a record's items, against hand-made answers (tests and bench).

An answer file lists, per item, a piece of its source ``text``, its ``type`` and ``status``, and for a
mapped item what the rule must hold: ``age`` (a range), ``concepts`` (event kind -> concept ids the
event's concept set must include), ``value`` (a range on some event), ``unit``, ``window`` (an event's
``between``). An item is correct when the draft has an item with that text and all of these agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mercia.trials.model import Criterion, Trial


@dataclass
class ItemScore:
    text: str
    expected_status: str
    got_status: str | None  # None: no draft item has this text
    correct: bool
    why: str = ""


@dataclass
class RecordScore:
    record: str
    items: list[ItemScore] = field(default_factory=list)
    unmatched_draft_items: list[str] = field(default_factory=list)  # draft items no answer names

    @property
    def correct(self) -> int:
        return sum(i.correct for i in self.items)

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def expected_mapped(self) -> int:
        return sum(i.expected_status == "mapped" for i in self.items)

    @property
    def mapped_correct(self) -> int:
        return sum(i.correct and i.expected_status == "mapped" for i in self.items)

    @property
    def false_mapped(self) -> int:
        """Items the draft applies (mapped) that the answers say are not mappable: the costly error."""
        return sum(i.got_status == "mapped" and i.expected_status != "mapped" for i in self.items)


def _events(rule: Any) -> list[dict[str, Any]]:
    from mercia.cohorts.builder import DOMAINS

    out: list[dict[str, Any]] = []
    if isinstance(rule, dict):
        if any(k in rule for k in DOMAINS):
            out.append(rule)
        for k in ("any", "all", "of"):
            out += _events(rule.get(k))
    elif isinstance(rule, list):
        for x in rule:
            out += _events(x)
    return out


def _num(d: Any) -> Any:
    return {k: float(v) for k, v in d.items()} if isinstance(d, dict) else d


def _check(trial: Trial, c: Criterion, a: dict[str, Any]) -> str:
    """'' when the draft's criterion agrees with the answer, else what differs."""
    if c.type != a["type"]:
        return f"type {c.type} (expected {a['type']})"
    if c.status != a["status"]:
        return f"status {c.status} (expected {a['status']})"
    if a["status"] != "mapped":
        return ""
    rule = c.rule
    if "age" in a:
        ages = [x.get("age") for x in ([rule] if isinstance(rule, dict) else rule or []) if isinstance(x, dict)]
        if _num(a["age"]) not in [_num(x) for x in ages]:
            return f"age {ages} (expected {a['age']})"
    events = _events(rule)
    for kind, ids in (a.get("concepts") or {}).items():
        sets = [set(trial.concepts.get(e[kind], {}).get("include", [])) for e in events if kind in e]
        if not any(set(ids) <= s for s in sets):
            return f"{kind} concepts {sorted(set().union(*sets)) if sets else 'none'} (expected {ids})"
    if "value" in a and _num(a["value"]) not in [_num(e.get("value")) for e in events]:
        return f"value {[e.get('value') for e in events]} (expected {a['value']})"
    if "unit" in a and a["unit"] not in [e.get("unit") for e in events]:
        return f"unit {[e.get('unit') for e in events]} (expected {a['unit']})"
    if "window" in a and a["window"] not in [e.get("between") for e in events]:
        return f"window {[e.get('between') for e in events]} (expected {a['window']})"
    return ""


def score(trial: Trial, answers: dict[str, Any], record: str = "") -> RecordScore:
    """Score a draft against an answer file's content."""
    out = RecordScore(record)
    used: set[int] = set()
    for a in answers["items"]:
        text = str(a["text"]).lower()
        hit = next((i for i, c in enumerate(trial.criteria)
                    if i not in used and text in (c.source_text or "").lower()), None)
        if hit is None:
            out.items.append(ItemScore(a["text"], a["status"], None, False, "no draft item with this text"))
            continue
        used.add(hit)
        c = trial.criteria[hit]
        why = _check(trial, c, a)
        out.items.append(ItemScore(a["text"], a["status"], c.status, not why, why))
    out.unmatched_draft_items = [c.source_text or c.name for i, c in enumerate(trial.criteria) if i not in used]
    return out


def score_record(record: Path, answers: Path, cdm: Any = None) -> RecordScore:
    """Import `record` (against `cdm`'s vocabulary, default the bundled one) and score it."""
    from mercia.trials.importer import import_record

    trial = import_record(str(record), cdm)
    return score(trial, yaml.safe_load(answers.read_text(encoding="utf-8")), record.name)
