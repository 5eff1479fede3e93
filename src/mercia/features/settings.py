"""Which covariates to build: analyses, windows and filters, as OHDSI FeatureExtraction names them.

Covariate ids are `concept_id * 1000 + analysis_id` (FeatureExtraction's scheme), so the same
settings give the same ids at every site and a model fitted at one site applies at another.
Analysis ids used here (FeatureExtraction's where the meaning matches):

| analysis | any time prior | long term | medium term | short term |
|---|---|---|---|---|
| condition occurrence (concept as recorded) | 101 | 102 | 103 | 104 |
| condition group (rolled up to ancestors, `roll_up`) | 210 | 211 | 212 | 213 |
| drug ingredient group (ingredients; ATC classes too with `roll_up`) | 410 | 411 | 412 | 413 |
| procedure occurrence (rolled up to ancestors with `roll_up`) | 501 | 502 | 503 | 504 |
| measurement value (latest value in the window, per unit) | 705 | 706 | 707 | 708 |

Demographics are 1 (gender), 2 (age), 3 (5-year age group), 4 (race), 5 (ethnicity), 6 (index year),
7 (index month), 8 (prior observation time); scores 901 (Charlson, Romano adaptation) and 904
(CHA2DS2-VASc). A window is one of FeatureExtraction's four kinds; its days are configurable.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mercia import limits
from mercia.errors import StudyError
from mercia.model_doc import field_docs

WindowKind = Literal["any_time_prior", "long_term", "medium_term", "short_term"]
WINDOW_SLOT: dict[str, int] = {"any_time_prior": 0, "long_term": 1, "medium_term": 2, "short_term": 3}
ANY_PRIOR_DAYS = -100_000  # "any time prior" reaches back further than any record


@field_docs
class Window(BaseModel):
    """Days relative to index (both ends inclusive); `start=None` is any time prior."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: WindowKind = Field(
        description="which of FeatureExtraction's windows (it sets the covariate ids' analysis id); each "
        "kind at most once"
    )
    start: int | None = Field(
        None, ge=-limits.MAX_DAYS, le=limits.MAX_DAYS,
        description="first day, relative to index; None for any_time_prior, required for the others",
    )
    end: int = Field(0, ge=-limits.MAX_DAYS, le=limits.MAX_DAYS, description="last day, relative to index")

    @model_validator(mode="after")
    def _check(self) -> Window:
        if self.start is not None and self.start > self.end:
            raise StudyError(f"covariate window {self.kind}: start {self.start} is after end {self.end}")
        if self.kind == "any_time_prior" and self.start is not None:
            raise StudyError("the any_time_prior window has no start (leave start out)")
        if self.kind != "any_time_prior" and self.start is None:
            raise StudyError(f"covariate window {self.kind} needs a start (days relative to index, e.g. -365)")
        return self

    @property
    def lo(self) -> int:
        return ANY_PRIOR_DAYS if self.start is None else self.start

    @property
    def label(self) -> str:
        first = "any time prior" if self.start is None else f"{self.start}"
        return f"{first} through {self.end} days relative to index"


DEFAULT_WINDOWS = (
    Window(kind="any_time_prior", start=None, end=0),
    Window(kind="long_term", start=-365, end=0),
    Window(kind="short_term", start=-30, end=0),
)


@field_docs
class CovariateSettings(BaseModel):
    """A large-scale covariate set (FeatureExtraction's default covariate settings, roughly)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: list[Window] = Field(
        default_factory=lambda: list(DEFAULT_WINDOWS), max_length=limits.MAX_LIST,
        description="windows of the domain covariates; at least one when any domain is used",
    )
    use_demographics: bool = Field(
        True,
        description="gender, age, 5-year age group, race, ethnicity, index year and month, prior observation time",
    )
    use_conditions: bool = Field(True, description="a covariate per condition concept (and group) per window")
    use_drugs: bool = Field(True, description="a covariate per drug ingredient (and ATC class) per window")
    use_procedures: bool = Field(True, description="a covariate per procedure concept per window")
    use_measurements: bool = Field(
        True, description="a covariate per measurement concept and unit per window: the latest value"
    )
    use_charlson: bool = Field(True, description="the Charlson comorbidity index (Romano adaptation)")
    use_chads2vasc: bool = Field(True, description="the CHA2DS2-VASc score")
    roll_up: bool = Field(
        True,
        description="conditions and procedures count for every ancestor concept too (concept_ancestor); "
        "drugs for their ATC classes as well as their ingredients",
    )
    min_fraction: float = Field(
        0.0, ge=0, le=1, description="drop covariates non-zero in fewer than this fraction of the rows (cohort entries)"
    )
    min_persons: int = Field(
        1, ge=1, le=limits.MAX_INT32, description="drop covariates non-zero in fewer rows (cohort entries) than this"
    )
    excluded_concept_ids: list[Annotated[int, Field(le=limits.MAX_INT64)]] = Field(
        default_factory=list,
        max_length=limits.MAX_CONCEPT_SET_ITEMS,
        description="concepts (with their descendants) left out: records of them are ignored and no "
        "covariate is built for them; exclude the exposures compared",
    )

    @model_validator(mode="after")
    def _check(self) -> CovariateSettings:
        kinds = [w.kind for w in self.windows]
        if len(set(kinds)) != len(kinds):
            raise StudyError(f"covariate windows repeat a kind ({kinds}); give each kind at most once")
        domains = self.use_conditions or self.use_drugs or self.use_procedures or self.use_measurements
        if domains and not self.windows:
            raise StudyError("domain covariates need at least one window")
        if any(c < 0 for c in self.excluded_concept_ids):
            raise StudyError("excluded_concept_ids must be concept ids (non-negative integers)")
        return self
