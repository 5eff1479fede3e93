"""The analysis types a study package may hold, one module each, found in one registry.

The study package's schema (`StudySpec.analyses`), the runner, the study report, the node's federated
rounds, the hub and the package reference all read this registry; none of them names a type. A type
is a subclass of `AnalysisKind` (base.py) in a module of its own; adding one is that module, its
`register()` call and its spec tests:

    from mercia.study import kinds

    class CohortSizes(kinds.AnalysisKind):
        type: Literal["cohort_sizes"]
        ...
    kinds.register(CohortSizes)

The built-in types are registered below, in the order the package reference lists them.
"""

from __future__ import annotations

from collections.abc import Callable

from mercia.report.html import ReportGroup
from mercia.study.kinds.base import AnalysisKind

_KINDS: dict[str, type[AnalysisKind]] = {}
_LISTENERS: list[Callable[[], None]] = []


def register(kind: type[AnalysisKind]) -> type[AnalysisKind]:
    """Make `kind` a type a package may use (its `type:` value must be new); returns it."""
    if not (isinstance(kind, type) and issubclass(kind, AnalysisKind)):
        raise TypeError(f"{kind!r} is not a subclass of AnalysisKind")
    tag = kind.type_name()
    if tag in _KINDS and _KINDS[tag] is not kind:
        raise ValueError(f"analysis type {tag!r} is registered already (by {_KINDS[tag].__module__})")
    _KINDS[tag] = kind
    _changed()
    return kind


def unregister(tag: str) -> None:
    """Remove the type named `tag` (a package using it is refused again)."""
    if _KINDS.pop(tag, None) is not None:
        _changed()


def get(tag: str) -> type[AnalysisKind]:
    try:
        return _KINDS[tag]
    except KeyError:
        raise KeyError(f"no analysis type {tag!r}; registered: {', '.join(_KINDS)}") from None


def types() -> tuple[str, ...]:
    """Every registered `type:` value, in registration order."""
    return tuple(_KINDS)


def all_kinds() -> list[type[AnalysisKind]]:
    return list(_KINDS.values())


def report_groups() -> list[ReportGroup]:
    """Every group a registered type's sections go in, each once, in their order on the page."""
    seen: dict[str, ReportGroup] = {}
    for k in _KINDS.values():
        for g in k.report_groups:
            seen.setdefault(g.id, g)
    return sorted(seen.values(), key=lambda g: g.order)


def on_change(listener: Callable[[], None]) -> None:
    """Call `listener` whenever a type is registered or removed (the package schema rebuilds itself)."""
    _LISTENERS.append(listener)


def _changed() -> None:
    for listener in _LISTENERS:
        listener()


def _register_builtins() -> None:
    from mercia.study.kinds.characterization import CharacterizationAnalysis
    from mercia.study.kinds.cohort_entries import CohortEntriesAnalysis
    from mercia.study.kinds.cohort_method import CohortMethodAnalysis
    from mercia.study.kinds.compare_cohorts import CompareCohortsAnalysis
    from mercia.study.kinds.cox import CoxAnalysis
    from mercia.study.kinds.incidence import IncidenceAnalysis
    from mercia.study.kinds.kaplan_meier import KaplanMeierAnalysis
    from mercia.study.kinds.prediction import PredictionAnalysis
    from mercia.study.kinds.prevalence import PrevalenceAnalysis

    for k in (CharacterizationAnalysis, CompareCohortsAnalysis, CohortEntriesAnalysis, IncidenceAnalysis,
              PrevalenceAnalysis, KaplanMeierAnalysis, CoxAnalysis, PredictionAnalysis, CohortMethodAnalysis):
        register(k)


_register_builtins()

__all__ = ["AnalysisKind", "all_kinds", "get", "on_change", "register", "report_groups", "types", "unregister"]
