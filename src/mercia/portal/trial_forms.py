"""The trial pages' inputs: a trial's eligibility as pasted or uploaded text, and the question's settings.

    trial = read_trial_text(text)      # a trial.yaml, a cohort (YAML or ATLAS JSON) or a ClinicalTrials.gov record
    settings = read_settings(fields)   # history months, target, consent: each checked, naming its field
    smaller = without_criteria(trial.definition, [1, 3])   # the what-if question: those criteria dropped

The text is read as `mercia trial check|feasibility TRIAL` reads a file (`mercia.trials.source`): a
trial.yaml gives its applied criteria as the cohort's inclusion rules and lists the items not applied; a
cohort definition's inclusion rules are the criteria. A ClinicalTrials.gov study record (API v2 JSON) is
drafted into a trial.yaml as `mercia trial import` drafts it (against Mercia's bundled vocabulary): the
draft is shown to review, and only its mapped criteria are applied. Anything wrong is a MerciaError whose
message names the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mercia.cohorts.loader import definition_from_text
from mercia.cohorts.model import CohortDefinition
from mercia.cohorts.yaml_reader import load_yaml
from mercia.errors import CohortDefinitionError, MerciaError
from mercia.trials.trial_yaml import from_dict as trial_from_dict
from mercia.trials.trial_yaml import is_trial_data

MAX_TEXT = 500_000  # characters of a pasted or uploaded trial (a registry record is ~50 kB)
HISTORY_MONTHS = (1, 240, 36)  # lowest, highest, default: as the API's history_months
TARGET = (1, 10_000_000)
DRAFT_HEADER = ("# Draft eligibility of {id}, imported in the portal as `mercia trial import` imports it.\n"
                "# Review every criterion: fix or confirm those with status needs_review and set them to mapped;\n"
                "# only mapped criteria are applied. Reference: docs/reference/trial-yaml.md\n")


@dataclass(frozen=True)
class TrialText:
    """A trial read from text: its name, its cohort (criteria = inclusion rules), the items not applied,
    the form it came in ("trial", "cohort-yaml", "cohort-json" or "ctgov"), and for a registry record
    the drafted trial.yaml."""

    name: str
    definition: CohortDefinition
    not_applied: tuple[str, ...] = ()
    form: str = "trial"
    draft: str | None = None
    criteria: list[str] = field(default_factory=list)


def _criteria(definition: CohortDefinition) -> list[str]:
    return [r.name for r in definition.expression.inclusion_rules]


def _from_record(data: Any) -> TrialText:
    from mercia.cdm import Cdm
    from mercia.trials.ctgov import parse_record
    from mercia.trials.importer import draft_trial
    from mercia.trials.trial_yaml import to_yaml
    from mercia.vocab.athena import load_bundled_vocabulary

    record = parse_record(data, "the study record")
    with Cdm.open() as mem:  # an in-memory DuckDB holding only the bundled vocabulary, as the CLI's default
        load_bundled_vocabulary(mem)
        trial = draft_trial(mem, record)
    cohort = trial.cohort()
    return TrialText(name=trial.name, definition=cohort, not_applied=tuple(trial.not_applied), form="ctgov",
                     draft=to_yaml(trial, DRAFT_HEADER.format(id=trial.registry_id)), criteria=_criteria(cohort))


def read_trial_text(text: str) -> TrialText:
    """A trial from pasted or uploaded text: JSON (a registry record, or an ATLAS/Circe or Mercia cohort)
    when it starts with `{`, YAML otherwise (a trial.yaml when it has `criteria:`, else a cohort)."""
    if len(text) > MAX_TEXT:
        raise CohortDefinitionError(f"trial: {len(text)} characters is too long (at most {MAX_TEXT})")
    if not text.strip():
        raise CohortDefinitionError("trial: it is empty; paste or upload a trial.yaml, a cohort definition "
                                    "(YAML or ATLAS JSON) or a ClinicalTrials.gov study record (JSON)")
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # the cohort reader names the line and column
        if isinstance(data, dict) and ("protocolSection" in data or "studies" in data):
            return _from_record(data)
        definition = definition_from_text(text, "json", name="trial")
        return TrialText(name=definition.name, definition=definition, form="cohort-json",
                         criteria=_criteria(definition))
    data = load_yaml(text)
    if is_trial_data(data):
        trial = trial_from_dict(data)
        cohort = trial.cohort()
        return TrialText(name=trial.name, definition=cohort, not_applied=tuple(trial.not_applied), form="trial",
                         criteria=_criteria(cohort))
    definition = definition_from_text(text, "yaml")
    return TrialText(name=definition.name, definition=definition, form="cohort-yaml", criteria=_criteria(definition))


def _whole(fields: dict[str, list[str]], name: str, label: str, low: int, high: int, default: int | None) -> int | None:
    raw = (fields.get(name) or [""])[0].strip().replace(",", "")
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise MerciaError(f"{label}: {raw!r} is not a whole number from {low:,} to {high:,}")
    return int(raw)


@dataclass(frozen=True)
class Settings:
    history_months: int
    target: int | None
    consent: float | None


def read_settings(fields: dict[str, list[str]]) -> Settings:
    """The question's settings from the form, as the API's TrialFeasibilityQuery bounds them."""
    low, high, default = HISTORY_MONTHS
    months = _whole(fields, "history_months", "months of history", low, high, default)
    target = _whole(fields, "target", "persons to recruit", *TARGET, None)
    raw = (fields.get("consent") or [""])[0].strip()
    consent: float | None = None
    if raw:
        try:
            consent = float(raw.rstrip("%")) / (100 if raw.endswith("%") else 1)
        except ValueError:
            consent = None
        if consent is None or not 0 < consent <= 1:
            raise MerciaError(f"share who consent: {raw!r} is not a share above 0 and at most 1 (e.g. 0.3 or 30%)")
    if (target is None) != (consent is None):
        raise MerciaError("persons to recruit and share who consent: give both for the projection, or neither")
    return Settings(history_months=months or default, target=target, consent=consent)


def without_criteria(definition: CohortDefinition, drop: list[int]) -> CohortDefinition:
    """The definition with the inclusion rules at these 0-based positions removed (the what-if question
    for more than one criterion at once)."""
    rules = definition.expression.inclusion_rules
    bad = [j for j in drop if not 0 <= j < len(rules)]
    if bad:
        raise MerciaError(f"criteria to drop: {bad[0] + 1} is not a criterion of this trial (1 to {len(rules)})")
    kept = [r for j, r in enumerate(rules) if j not in set(drop)]
    return definition.model_copy(update={"expression": definition.expression.model_copy(
        update={"inclusion_rules": kept})})
