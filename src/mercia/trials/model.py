"""A trial's eligibility as named criteria (the Python form of ``trial.yaml``), and how it becomes one cohort.

Each criterion is written in the cohort language (``docs/reference/cohort-language.md``): its ``rule`` is
what an inclusion rule's ``require:`` takes (one condition, a list = all of them, or a group), and for an
exclusion criterion it is what must be *absent*. The trial compiles to ONE cohort definition: the index
(entry events, observation) and, in order, one inclusion rule per applied criterion, named as the
criterion is (an exclusion's rule is named "no ..." unless its name already says "no"/"not"). So every
engine, the attrition statistics and the Circe export work on a trial as on any cohort.

A criterion's ``status`` says whether it is applied: ``mapped`` criteria are; ``needs_review`` and
``not_computable`` ones (a draft's items to check, or ones no CDM can answer such as consent) are not,
and ``TrialEligibility.not_applied`` lists them by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mercia.cohorts.model import CohortDefinition
from mercia.errors import CohortDefinitionError

STATUSES = ("mapped", "needs_review", "not_computable")
TYPES = ("inclusion", "exclusion")
# What an index may hold: the cohort language's words for entry and observation.
INDEX_KEYS = ("entry", "observation", "keep", "where", "study_period", "exit", "censor", "collapse")
DEFAULT_ENTRY: list[dict[str, Any]] = [{"observation_period": None}]


@dataclass(frozen=True)
class Criterion:
    """One inclusion or exclusion criterion, named, with the registry's text beside it."""

    name: str
    type: str  # "inclusion" or "exclusion"
    rule: Any = None  # cohort-language conditions (parsed YAML); required when status is "mapped"
    status: str = "mapped"
    source_text: str | None = None
    note: str | None = None  # why it needs review, what was suggested

    @property
    def applied(self) -> bool:
        return self.status == "mapped"

    @property
    def rule_name(self) -> str:
        """The name of its inclusion rule in the compiled cohort."""
        if self.type == "exclusion" and not re.match(r"(?i)(no|not|without|absence)\b", self.name):
            n = self.name
            if n[:1].isupper() and n[1:2].islower():  # "Stroke ..." -> "no stroke ...", but "no eGFR", "no HbA1c"
                n = n[0].lower() + n[1:]
            return f"no {n}"
        return self.name


@dataclass(frozen=True)
class Trial:
    """A trial: its name and registry id, the index event or population, the criteria in order, and the
    concept sets the criteria refer to (cohort-language concept sets, by key)."""

    name: str
    criteria: tuple[Criterion, ...]
    concepts: dict[str, Any] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)
    registry_id: str | None = None
    title: str | None = None
    description: str | None = None

    @property
    def not_applied(self) -> tuple[str, ...]:
        return tuple(c.rule_name for c in self.criteria if not c.applied)

    def cohort_dict(self) -> dict[str, Any]:
        """The cohort language (parsed YAML form) of the compiled cohort."""
        d: dict[str, Any] = {"name": self.name}
        desc = self.description or (f"Eligibility of {self.registry_id}" if self.registry_id else None)
        if desc:
            d["description"] = desc
        rules = [_rule(c) for c in self.criteria if c.applied]
        used = _refs([self.index, rules])
        concepts = {k: v for k, v in self.concepts.items() if k in used}  # sets of criteria not applied: left out
        if concepts:
            d["concepts"] = concepts
        d["entry"] = self.index.get("entry", DEFAULT_ENTRY)
        d.update({k: v for k, v in self.index.items() if k != "entry"})
        d["inclusion_rules"] = rules
        return d

    def cohort(self) -> CohortDefinition:
        """The one cohort definition: index, then one inclusion rule per applied criterion, in order."""
        from mercia.cohorts.yaml_reader import from_dict

        try:
            return from_dict(self.cohort_dict())
        except CohortDefinitionError as e:
            raise CohortDefinitionError(self._trial_path(str(e))) from None

    def _trial_path(self, msg: str) -> str:
        """A cohort-reader error's path in the trial's own words (criteria[i].rule, index.entry ...)."""
        applied = [i for i, c in enumerate(self.criteria) if c.applied]

        def crit(m: re.Match[str]) -> str:
            return f"criteria[{applied[int(m.group(1))]}].rule"

        msg = re.sub(r"\$\.inclusion_rules\[(\d+)\]\.(?:require|exclude)(?:\[0\])?", crit, msg)
        msg = re.sub(r"\$\.inclusion_rules\[(\d+)\]", lambda m: f"criteria[{applied[int(m.group(1))]}]", msg)
        msg = re.sub(r"\$\.concepts", "concepts", msg)
        msg = re.sub(r"\$\.(entry|observation|keep|where|study_period|exit|censor|collapse)", r"index.\1", msg)
        return msg.replace("$.", "")


def _refs(x: Any) -> set[str]:
    """Concept-set keys a piece of the cohort language refers to (values of event and drug keys)."""
    from mercia.cohorts.builder import DOMAINS

    out: set[str] = set()
    if isinstance(x, dict):
        for k, v in x.items():
            if (k in DOMAINS or k == "drug") and isinstance(v, str):
                out.add(v)
            else:
                out |= _refs(v)
    elif isinstance(x, list):
        for v in x:
            out |= _refs(v)
    return out


def _is_single_event(rule: Any) -> bool:
    from mercia.cohorts.builder import DOMAINS

    return (isinstance(rule, dict) and any(k in rule for k in DOMAINS)
            and not any(k in rule for k in ("at_least", "at_most", "exactly", "distinct")))


def _rule(c: Criterion) -> dict[str, Any]:
    if c.type == "inclusion":
        return {"name": c.rule_name, "require": c.rule}
    if _is_single_event(c.rule):  # the cohort language's own exclusion: exactly 0 such events
        return {"name": c.rule_name, "exclude": c.rule}
    items = c.rule if isinstance(c.rule, list) else [c.rule]
    return {"name": c.rule_name, "require": {"at_most": 0, "of": items}}  # none of them
