"""The analysis types a study package may hold, one module each, found in one registry.

The study package's schema (`StudySpec.analyses`), the runner, the study report, the node's federated
rounds, the hub and the package reference all read this registry; none of them names a type. A type
is a subclass of `AnalysisKind` (base.py) in a module of its own; adding one is that module and its
spec tests: every module of this package is imported and its type registered, listed by its
`listing_order`. A type defined elsewhere (a plug-in, a test) registers itself:

    from mercia.study import kinds

    class CohortSizes(kinds.AnalysisKind):
        type: Literal["cohort_sizes"]
        ...
    kinds.register(CohortSizes)

"""

from __future__ import annotations

import importlib
import pkgutil
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


def all_kinds() -> list[type[AnalysisKind]]:
    """Every registered type, by `listing_order` (then in the order they were registered)."""
    order = {tag: i for i, tag in enumerate(_KINDS)}
    return sorted(_KINDS.values(), key=lambda k: (k.listing_order, order[k.type_name()]))


def types() -> tuple[str, ...]:
    """Every registered `type:` value, in the order of `all_kinds()`."""
    return tuple(k.type_name() for k in all_kinds())


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
    """Every type defined in a module of this package (each module is one type), by `listing_order`."""
    found: list[type[AnalysisKind]] = []
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{m.name}")
        found += [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, AnalysisKind)
                  and v.__module__ == module.__name__ and "type" in v.model_fields]
    for k in sorted(found, key=lambda k: (k.listing_order, k.type_name())):
        register(k)


_register_builtins()

__all__ = ["AnalysisKind", "all_kinds", "get", "on_change", "register", "report_groups", "types", "unregister"]
