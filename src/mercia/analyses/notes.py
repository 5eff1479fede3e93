"""Notes that leave a site: a fixed catalogue of message codes, never free text.

A note used to be any string an analysis cared to write, and some carried exact numbers the policy
suppresses ("1 outcomes in all", "only 2 training persons have the outcome") or names picked out by
the data (the covariates that separate an outcome). Now a note is a `Note`: one code of `CATALOGUE`
and parameters of the few kinds listed in `PARAMETERS`, none of them a count or a value read from
rows. `Notes` (the container `AnalysisResult.notes` is) accepts nothing else, so a free-text note
cannot be written, and the runner checks that every cohort or outcome a note names is the package's.

Every note's text is its code's template filled with its parameters: the same code and parameters
always give the same bytes, whatever the data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from string import Formatter
from typing import Any, SupportsIndex

from mercia.errors import StudyError


class NoteCode(StrEnum):
    """Every note an analysis or the runner may write."""

    BELOW_THRESHOLD = "below_threshold"
    NEGATIVE_CONTROL_BELOW_THRESHOLD = "negative_control_below_threshold"
    NOT_RUN = "not_run"
    NO_ENTRIES = "no_entries"
    NO_TIME_AT_RISK = "no_time_at_risk"
    NO_DENOMINATOR_AT_RISK = "no_denominator_at_risk"
    NO_PREVALENCE_DENOMINATOR = "no_prevalence_denominator"
    MODEL_WITHHELD = "model_withheld"
    PH_TEST_NOT_COMPUTED = "ph_test_not_computed"
    SEPARATING_COVARIATES = "separating_covariates"
    PREDICTIONS_SEPARATE = "predictions_separate"
    MISSING_COVARIATES = "missing_covariates"
    PS_NOT_FITTED = "ps_not_fitted"
    OUTCOME_MODEL_WITHHELD = "outcome_model_withheld"
    NOT_CALIBRATED = "not_calibrated"
    CALIBRATED = "calibrated"
    NO_POPULATION = "no_population"
    SHORT_FOLLOW_UP = "short_follow_up"


# code -> template. Placeholders are parameter names from PARAMETERS; nothing else may fill them.
CATALOGUE: dict[NoteCode, str] = {
    NoteCode.BELOW_THRESHOLD: (
        "cohort {cohort} is below the disclosure threshold at this site: analyses that use it release nothing"
    ),
    NoteCode.NEGATIVE_CONTROL_BELOW_THRESHOLD: (
        "negative control {cohort} is below the disclosure threshold at this site and was left out"
    ),
    NoteCode.NOT_RUN: (
        "not run: this site's data did not support the analysis (the reason stays in the site's local log)"
    ),
    NoteCode.NO_ENTRIES: "cohort {cohort} has nothing to analyse",
    NoteCode.NO_TIME_AT_RISK: "nobody to follow up in {cohort}: no results from it",
    NoteCode.NO_DENOMINATOR_AT_RISK: "nobody in the denominator has time at risk: no results",
    NoteCode.NO_PREVALENCE_DENOMINATOR: "nobody in the denominator at any prevalence date: no results",
    NoteCode.MODEL_WITHHELD: (
        "the model's estimates are withheld at this site (too few persons or events, or no stable fit)"
    ),
    NoteCode.PH_TEST_NOT_COMPUTED: "the proportional-hazards test was not computed",
    NoteCode.SEPARATING_COVARIATES: (
        "some covariates separate the outcome completely in the training persons; the penalised fit stays "
        "finite, but the separation should be checked"
    ),
    NoteCode.PREDICTIONS_SEPARATE: (
        "the {split} predictions separate outcomes from non-outcomes completely; the calibration intercept "
        "and slope have no finite value and are not given"
    ),
    NoteCode.MISSING_COVARIATES: (
        "this CDM lacks some of the covariates the model uses; they were taken as absent (zero)"
    ),
    NoteCode.PS_NOT_FITTED: "the propensity model was not fitted (the reason stays in the site's local log)",
    NoteCode.OUTCOME_MODEL_WITHHELD: "outcome {outcome}: the adjusted outcome model's estimate is withheld",
    NoteCode.NOT_CALIBRATED: (
        "not calibrated: too few negative controls with an estimate (at least 5 are needed), or the "
        "empirical null could not be fitted"
    ),
    NoteCode.CALIBRATED: "p-values and CIs calibrated with the empirical null of the negative controls",
    NoteCode.NO_POPULATION: "nobody in the target and comparator cohorts after the population steps",
    NoteCode.SHORT_FOLLOW_UP: (
        "the denominator cohort gives under 30 days of follow-up per person on average (a cohort that ends "
        "on its entry record's end date has almost no person-time): set time_at_risk, e.g. a window from "
        "cohort start to cohort start + 365 days (start_with: start, end_with: start, end_offset: 365)"
    ),
}

# The only parameters a note can carry. None is a count or anything read from rows: a cohort is the
# package's (its id or key, checked by the runner), and so is an outcome; the rest come from fixed sets.
_SPLITS = ("train", "cv", "test", "external")


def _cohort(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise StudyError(f"a note's cohort is a cohort id or key from the package, not {type(v).__name__}")
    return str(v)


def _one_of(options: tuple[str, ...]) -> Any:
    def check(v: Any) -> str:
        if v not in options:
            raise StudyError(f"a note's value must be one of {options}, not {v!r}")
        return str(v)

    return check


PARAMETERS = {"cohort": _cohort, "outcome": _cohort, "split": _one_of(_SPLITS)}


def _fields(template: str) -> frozenset[str]:
    return frozenset(f for _, f, _, _ in Formatter().parse(template) if f)


class Note:
    """One catalogued note: a code and its parameters (checked here, so a bad note never exists)."""

    __slots__ = ("code", "params")

    def __init__(self, code: NoteCode, **params: Any) -> None:
        if not isinstance(code, NoteCode):
            raise StudyError(f"a note is a NoteCode from the catalogue, not {type(code).__name__}")
        wanted = _fields(CATALOGUE[code])
        if set(params) != wanted:
            raise StudyError(f"note {code.value} takes {sorted(wanted)}, got {sorted(params)}")
        self.code = code
        self.params = {k: PARAMETERS[k](v) for k, v in sorted(params.items())}

    @property
    def text(self) -> str:
        return CATALOGUE[self.code].format(**self.params)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "params": dict(self.params), "text": self.text}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Note) and (self.code, self.params) == (other.code, other.params)

    def __hash__(self) -> int:
        return hash((self.code, tuple(self.params.items())))

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"Note({self.code.value}{args})"

    def __str__(self) -> str:
        return self.text


def _checked(item: Any) -> Note:
    if not isinstance(item, Note):
        raise StudyError(
            f"notes hold catalogued Note objects only, not {type(item).__name__}; add a code to "
            "mercia.analyses.notes.CATALOGUE instead of writing text"
        )
    return item


class Notes(list[Note]):
    """A list that holds `Note`s only: every way in checks the item, so no free text gets in."""

    def __init__(self, items: Iterable[Note] = ()) -> None:
        super().__init__(_checked(i) for i in items)

    def append(self, item: Note) -> None:
        if _checked(item) not in self:  # one note once: a repeat says nothing more
            super().append(item)

    def extend(self, items: Iterable[Note]) -> None:
        for i in items:
            self.append(i)

    def insert(self, index: SupportsIndex, item: Note) -> None:
        super().insert(index, _checked(item))

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            super().__setitem__(index, [_checked(v) for v in value])
        else:
            super().__setitem__(index, _checked(value))

    def __iadd__(self, items: Iterable[Note]) -> Notes:  # type: ignore[override,misc]
        self.extend(items)
        return self

    def to_list(self) -> list[dict[str, Any]]:
        return [n.to_dict() for n in self]

    def texts(self) -> list[str]:
        return [n.text for n in self]


def check_names(notes: Iterable[Note], cohorts: Mapping[str, int]) -> None:
    """Every cohort or outcome a note names must be one of the package's (`cohorts`: key -> id)."""
    known = set(cohorts) | {str(v) for v in cohorts.values()}
    for n in notes:
        for k in ("cohort", "outcome"):
            if k in n.params and n.params[k] not in known:
                raise StudyError(f"note {n.code.value} names {k} {n.params[k]!r}, which is not the package's")
