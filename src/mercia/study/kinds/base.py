"""What every analysis type of a study package is: `AnalysisKind`, the model a package's analysis is
validated by, and the hooks the runner, the report and the federation call on it.

A type is one module (see `mercia.study.kinds`): a subclass of `AnalysisKind` with a `type:` literal,
its fields and settings (what the package holds and hashes), and

    run(cdm, ids, name=...)   its tables, through the functions of `mercia.analyses` (un-released)
    report(r)                 its part of the study report, as `Section`s of `ReportGroup`s, built from
                              released tables only (`r` is a `mercia.report.study.StudyReport`)
    without_small(small)      before the run: cohorts it can do without when they are below threshold
    federated = True and regression_rows / regression_terms / regression_ties, when a node keeps the
                              analysis's rows for the hub's federated regression rounds
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

from mercia import limits
from mercia.model_doc import field_docs

if TYPE_CHECKING:
    from typing import Self

    from mercia.analyses.notes import Note
    from mercia.analyses.result import AnalysisResult
    from mercia.analyses.survival import CoxData
    from mercia.cdm import Cdm
    from mercia.report.html import ReportGroup, Section
    from mercia.report.study import StudyReport

KEY = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A cohort key where an analysis names one (whether it is defined is checked by StudySpec).
Key = Annotated[str, Field(max_length=limits.MAX_NAME)]


class Strict(BaseModel):
    """A part of a study package: unknown keys are refused, values cannot change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field_docs(cls)  # help() lists the fields with their defaults and meanings


def no_ids(settings: dict[str, Any], what: str, fields: dict[str, str]) -> dict[str, Any]:
    """Refuse cohort ids written in settings that take cohorts by key."""
    for f, instead in fields.items():
        if f in settings:
            raise ValueError(f"{what} settings: remove {f!r}; name the cohort with `{instead}:` instead")
    return settings


class AnalysisKind(Strict):
    """What every analysis of a package has: its `type` and an optional `name`."""

    # Where the type is listed (the package reference, error messages): the built-in types by tens.
    listing_order: ClassVar[int] = 1000
    # The report's groups this type's sections go in (the page lists every registered group in order).
    report_groups: ClassVar[tuple[ReportGroup, ...]] = ()
    # True when a node keeps this analysis's rows for federated regression rounds (see regression_rows).
    federated: ClassVar[bool] = False

    name: str | None = Field(
        None, pattern=KEY, max_length=limits.MAX_NAME,
        description="prefix of the analysis's result tables, distinct within the package (letters, digits, "
        "underscores); default: the analysis type",
    )

    @classmethod
    def type_name(cls) -> str:
        """The `type:` that selects this model (its `type` field's one literal value)."""
        f = cls.model_fields.get("type")
        args = get_args(f.annotation) if f is not None else ()
        if f is None or get_origin(f.annotation) is not Literal or len(args) != 1:
            raise TypeError(f"{cls.__name__}: an analysis type needs a field `type: Literal['<its name>']`")
        return str(args[0])

    def cohorts_used(self) -> list[str]:
        raise NotImplementedError

    def table_prefix(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]

    # ---- the run ---------------------------------------------------------------------------------
    def without_small(self, small: set[str]) -> tuple[Self, list[Note]]:
        """This analysis without the cohorts it can do without that are below the threshold (`small`,
        decided from released counts), and a note for each; any other small cohort it uses stops it."""
        return self, []

    def run(self, cdm: Cdm, ids: dict[str, int], *, name: str) -> AnalysisResult:
        """The analysis's un-released tables on `cdm`; `ids` maps the package's cohort keys to ids."""
        raise NotImplementedError(f"analysis type {self.type_name()!r} has no run")

    # ---- the report ------------------------------------------------------------------------------
    def report(self, r: StudyReport) -> list[Section]:
        """Its sections of the study report, from the released tables `r` holds."""
        return []

    # ---- the federated form ----------------------------------------------------------------------
    def regression_rows(self, cdm: Cdm, ids: dict[str, int]) -> CoxData:
        """The per-person rows (terms, time, event) a node keeps for federated regression rounds."""
        raise NotImplementedError(f"analysis type {self.type_name()!r} has no federated form")

    def regression_terms(self) -> list[str]:
        """The terms of those rows, as the nodes build them (the hub names the coefficients by them)."""
        raise NotImplementedError(f"analysis type {self.type_name()!r} has no federated form")

    def regression_ties(self) -> Literal["efron", "breslow"]:
        """How tied event times are handled in the federated Cox model."""
        return "efron"
