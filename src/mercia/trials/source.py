"""Where a trial's eligibility comes from: the one function every trial command reads a TRIAL argument with.

A trial's eligibility is one cohort definition whose inclusion rules are its criteria, in order (so the
feasibility funnel, what-if and every engine work on any cohort definition with named inclusion rules),
plus the criteria a draft could not apply yet (items still to review), which feasibility lists as not
applied instead of counting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mercia.cohorts.loader import load_definition
from mercia.cohorts.model import CohortDefinition
from mercia.cohorts.yaml_reader import load_yaml
from mercia.trials.trial_yaml import from_dict as trial_from_dict
from mercia.trials.trial_yaml import is_trial_data


@dataclass(frozen=True)
class TrialEligibility:
    """A trial's name, its eligibility as one cohort (criteria = inclusion rules) and the items not applied.

    `file_name` is its file's name without the suffix: what a site's trials folder, `mercia trial
    candidates TRIAL` and the node's /trials/{trial}/ routes address it by. A trial.yaml's `name` is
    its display name, and may differ."""

    name: str
    cohort: CohortDefinition
    not_applied: tuple[str, ...] = field(default=())
    file_name: str = ""

    @property
    def ref(self) -> str:
        """How the trial is addressed: its file's name, or its name when it was not read from a file."""
        return self.file_name or self.name


def load_trial(path: str | Path) -> TrialEligibility:
    """Read a trial from a file: a ``trial.yaml`` (``mercia.trials.trial_yaml``: named criteria, each
    applied if mapped, listed in ``not_applied`` if not), or any cohort definition Mercia reads (YAML,
    Circe JSON, Python), whose inclusion rules are then the criteria."""
    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml") and p.is_file():
        data = load_yaml(p.read_text(encoding="utf-8"))
        if is_trial_data(data):
            trial = trial_from_dict(data)
            return TrialEligibility(name=trial.name, cohort=trial.cohort(), not_applied=trial.not_applied,
                                    file_name=p.stem)
    definition = load_definition(p)
    return TrialEligibility(name=p.stem, cohort=definition, file_name=p.stem)
