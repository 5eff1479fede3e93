"""The cohort language's Python form: the builder (``cohort(...).entry(...)``) and its words.

Python form::

    from mercia.cohorts.dsl import cohort, concepts, condition, drug

    nsaid = concepts("NSAIDs", ingredients=["celecoxib", "diclofenac"], descendants=True)
    gi_bleed = concepts("GI bleed", 192671, descendants=True)
    new_users = (cohort("New NSAID users")
                 .entry(drug(nsaid).first())
                 .require_prior_observation(days=365)
                 .exclude(condition(gi_bleed).within(days_before=365))
                 .exit_at_end_of_exposure(gap_days=30))

``Cohort.build()`` gives the cohort model (``mercia.cohorts.model.CohortDefinition``). The vocabulary
here (domain words, catalogue groups, ranges, windows) is shared with the YAML reader
(``yaml_reader``) and writer (``yaml_writer``). Builders are immutable: every method returns a new
object, so a partly built cohort can be reused. User code imports these names from ``mercia.cohorts.dsl``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, ValidationError

from mercia.cohorts import model as m
from mercia.errors import CohortDefinitionError
from mercia.limits import MAX_DAYS, MAX_INT32, MAX_RANGE_VALUE
from mercia.vocab import catalog

# ---- vocabulary: the language's words and the model's names ------------------------------------
# language word -> the model's field on Criteria (and so the domain's criterion class)
DOMAINS: dict[str, str] = {
    "condition": "condition_occurrence",
    "drug": "drug_exposure",
    "procedure": "procedure_occurrence",
    "measurement": "measurement",
    "observation": "observation",
    "visit": "visit_occurrence",
    "device": "device_exposure",
    "death": "death",
    "drug_era": "drug_era",
    "condition_era": "condition_era",
    "observation_period": "observation_period",
    "specimen": "specimen",
    "visit_detail": "visit_detail",
    "dose_era": "dose_era",
    "payer_plan_period": "payer_plan_period",
    # Circe-BE's; it reads LOCATION_HISTORY, which CDM 5.3/5.4 lack: it is written and read, never compiled.
    "location_region": "location_region",
}
_WORD_OF = {v: k for k, v in DOMAINS.items()}


def _body_class(domain: str) -> type[BaseModel]:
    return type(m.Criteria.model_validate({DOMAINS[domain]: {}}).body)


# Catalog groups a concept set can name concepts from, in the order a bare name is looked up.
CATALOG: dict[str, dict[str, catalog.Concept]] = {
    "conditions": {**catalog.CONDITIONS, **catalog.CONDITION_GROUPS},
    "ingredients": catalog.DRUG_INGREDIENTS,
    "measurements": catalog.MEASUREMENTS,
    "visits": catalog.VISITS,
    # Products share their keys with the ingredients, so a bare name never means a product.
    "drugs": catalog.DRUG_PRODUCTS,
}
_BARE_LOOKUP = ("conditions", "ingredients", "measurements", "visits")

_RANGE_KEYS = {"min": "gte", "max": "lte", "above": "gt", "below": "lt", "equal": "eq", "not_equal": "!eq"}
_OP_KEYS = {v: k for k, v in _RANGE_KEYS.items()}
_LIMITS = ("first", "all", "last")
_DISTINCT = {True: None, "concept": "DOMAIN_CONCEPT", "start_date": "START_DATE", "end_date": "END_DATE",
             "visit": "VISIT_ID"}
_DISTINCT_WORD = {v: k for k, v in _DISTINCT.items() if k is not True}


def _fail(path: str, msg: str) -> CohortDefinitionError:
    return CohortDefinitionError(f"{path}: {msg}" if path else msg)


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=3)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _is_days(v: Any, *, negative: bool = False) -> bool:
    """A whole number of days within mercia.limits.MAX_DAYS (0 or more unless `negative`)."""
    return (not isinstance(v, bool) and isinstance(v, int)
            and (-MAX_DAYS if negative else 0) <= v <= MAX_DAYS)


DAYS = f"a number of days, 0 to {MAX_DAYS}"
SIGNED_DAYS = f"a whole number of days, -{MAX_DAYS} to {MAX_DAYS}"


# ---- concept sets ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One concept of a concept set, with Circe's three flags."""

    concept_id: int
    name: str | None = None
    descendants: bool | None = None  # None: take the concept set's setting
    mapped: bool | None = None
    exclude: bool = False


def _lookup(name: str, kind: str | None, path: str) -> Item:
    groups = [kind] if kind else list(_BARE_LOOKUP)
    for g in groups:
        c = CATALOG[g].get(name)
        if c is not None:
            return Item(c.concept_id, c.name)
    where = f"catalog group {kind!r}" if kind else "the catalog (conditions, ingredients, measurements, visits)"
    known = [k for g in groups for k in CATALOG[g]]
    raise _fail(path, f"unknown concept name {name!r} in {where}{_suggest(name, known)}; "
                      "give a concept id instead, or a name from mercia.vocab.catalog")


def item(concept: int | str | catalog.Concept, *, name: str | None = None, descendants: bool | None = None,
         mapped: bool | None = None, exclude: bool = False) -> Item:
    """One concept with its own flags: an id, a catalog name (e.g. ``"metformin"``) or a catalog Concept."""
    base = _as_item(concept, "item")
    return Item(base.concept_id, name if name is not None else base.name, descendants, mapped, exclude)


def _as_item(x: Any, path: str, kind: str | None = None) -> Item:
    if isinstance(x, Item):
        return x
    if isinstance(x, catalog.Concept):
        return Item(x.concept_id, x.name)
    if isinstance(x, bool):
        raise _fail(path, f"{x!r} is not a concept: give a concept id or a catalog name")
    if isinstance(x, int):
        if x < 0:
            raise _fail(path, f"concept id {x} is negative")
        return Item(x)
    if isinstance(x, str):
        return _lookup(x, kind, path)
    raise _fail(path, f"{x!r} is not a concept: give a concept id or a catalog name")


@dataclass(frozen=True)
class Concepts:
    """A named concept set. Two equal sets used in one cohort become one Circe concept set."""

    name: str
    items: tuple[Item, ...]
    descendants: bool = False
    mapped: bool = False
    id: int | None = None  # the Circe concept set id; None: numbered in order of first use

    def resolved(self) -> list[m.ConceptSetItem]:
        return [
            m.ConceptSetItem(
                concept=m.Concept(concept_id=i.concept_id, concept_name=i.name),
                is_excluded=i.exclude,
                include_descendants=self.descendants if i.descendants is None else i.descendants,
                include_mapped=self.mapped if i.mapped is None else i.mapped,
            )
            for i in self.items
        ]


def concepts(
    name: str,
    *include: int | str | catalog.Concept | Item,
    conditions: Iterable[str] = (),
    ingredients: Iterable[str] = (),
    drugs: Iterable[str] = (),
    measurements: Iterable[str] = (),
    visits: Iterable[str] = (),
    exclude: Iterable[int | str | catalog.Concept | Item] = (),
    descendants: bool = False,
    mapped: bool = False,
    id: int | None = None,
) -> Concepts:
    """A concept set: concept ids, catalog names (``mercia.vocab.catalog``) or ``item(...)``s.

    ``descendants``/``mapped`` apply to every concept not given its own flags with ``item``;
    ``exclude`` lists concepts taken out of the set (with the same flags).
    """
    if not isinstance(name, str) or not name.strip():
        raise CohortDefinitionError("concepts(): the first argument is the concept set's name, e.g. "
                                    "concepts('GI bleed', 192671)")
    items = [_as_item(x, f"concepts({name!r})") for x in include]
    for kind, names in (("conditions", conditions), ("ingredients", ingredients), ("drugs", drugs),
                        ("measurements", measurements), ("visits", visits)):
        if isinstance(names, str):
            names = [names]
        items += [_as_item(n, f"concepts({name!r}).{kind}", kind) for n in names]
    for x in ([exclude] if isinstance(exclude, int | str) else exclude):
        it = _as_item(x, f"concepts({name!r}).exclude")
        items.append(replace(it, exclude=True))
    if not items:
        raise CohortDefinitionError(f"concepts({name!r}): a concept set needs at least one concept")
    return Concepts(name, tuple(items), bool(descendants), bool(mapped), id)


# ---- ranges -------------------------------------------------------------------------------
def _range(path: str, kw: dict[str, Any]) -> dict[str, Any]:
    """min/max/above/below/equal/not_equal/not_between as the model's NumericRange (Value, Op, Extent)."""
    given = {k: v for k, v in kw.items() if v is not None}
    if not given:
        raise _fail(path, "give a bound: min, max, above, below, equal, not_equal or not_between")
    unknown = sorted(set(given) - set(_RANGE_KEYS) - {"not_between"})
    if unknown:
        raise _fail(path, f"unknown range key(s) {', '.join(unknown)} "
                          "(use min, max, above, below, equal, not_equal, not_between)")
    for k, v in given.items():
        vals = v if k == "not_between" else [v]
        if k == "not_between" and (not isinstance(v, list | tuple) or len(v) != 2):
            raise _fail(path, "not_between takes two numbers, e.g. not_between: [18, 65]")
        for x in vals:
            if isinstance(x, bool) or not isinstance(x, int | float):
                raise _fail(path, f"{k}: {x!r} is not a number")
            if not -MAX_RANGE_VALUE <= x <= MAX_RANGE_VALUE:  # NaN fails this too
                raise _fail(path, f"{k}: {x!r} is out of range (a finite number, -{MAX_RANGE_VALUE:g} to "
                                  f"{MAX_RANGE_VALUE:g})")
    if set(given) == {"min", "max"}:
        return {"value": given["min"], "op": "bt", "extent": given["max"]}
    if "not_between" in given and len(given) == 1:
        lo, hi = given["not_between"]
        return {"value": lo, "op": "!bt", "extent": hi}
    if len(given) != 1:
        raise _fail(path, f"one bound at a time, or min with max (got {', '.join(sorted(given))})")
    (k, v), = given.items()
    return {"value": v, "op": _RANGE_KEYS[k]}


def _num(x: float | None) -> int | float | None:
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _range_words(r: m.NumericRange) -> dict[str, Any]:
    if r.op == "bt":
        return {"min": _num(r.value), "max": _num(r.extent)}
    if r.op == "!bt":
        return {"not_between": [_num(r.value), _num(r.extent)]}
    return {_OP_KEYS[r.op]: _num(r.value)}


def _range_text(r: dict[str, Any]) -> str:
    op, v, e = r["op"], _num(r["value"]), _num(r.get("extent"))
    return {"gte": f">= {v}", "lte": f"<= {v}", "gt": f"> {v}", "lt": f"< {v}", "eq": f"= {v}",
            "!eq": f"!= {v}", "bt": f"{v} to {e}", "!bt": f"not {v} to {e}"}[op]


def _catalog_concepts(names: tuple[Any, ...], group: dict[str, catalog.Concept], what: str,
                      path: str) -> list[dict[str, Any]]:
    out = []
    for n in names:
        if isinstance(n, int) and not isinstance(n, bool):
            out.append({"concept_id": n})
            continue
        if isinstance(n, catalog.Concept):
            out.append({"concept_id": n.concept_id, "concept_name": n.name})
            continue
        c = group.get(str(n).lower()) if isinstance(n, str) else None
        if c is None:
            raise _fail(path, f"unknown {what} {n!r}{_suggest(str(n), group)} (known: {', '.join(group)})")
        out.append({"concept_id": c.concept_id, "concept_name": c.name})
    if not out:
        raise _fail(path, f"name at least one {what}")
    return out


# ---- windows and occurrences ------------------------------------------------------------------
_BOUND = re.compile(r"^\s*(all|\d+)\s+days?\s+(before|after)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Window:
    start: tuple[int | None, int]  # (days or None for all, coeff -1 before / +1 after)
    end: tuple[int | None, int]
    index_end: bool | None = None  # measure from the index event's end date
    event_end: bool | None = None  # test the criterion event's end date

    def model(self) -> dict[str, Any]:
        d: dict[str, Any] = {"start": {"days": self.start[0], "coeff": self.start[1]},
                             "end": {"days": self.end[0], "coeff": self.end[1]}}
        if self.index_end is not None:
            d["use_index_end"] = self.index_end
        if self.event_end is not None:
            d["use_event_end"] = self.event_end
        return d

    def text(self) -> str:
        return f"between {_bound_text(self.start)} and {_bound_text(self.end)} index"


def _bound_text(b: tuple[int | None, int]) -> str:
    days = "all" if b[0] is None else str(b[0])
    return f"{days} day{'' if b[0] == 1 else 's'} {'before' if b[1] == -1 else 'after'}"


def _bound(x: Any, side: str, path: str) -> tuple[int | None, int]:
    """'365 days before', 'all days after', an int (negative: before) or None (all days on that side)."""
    if x is None:
        return (None, -1) if side == "start" else (None, 1)
    if isinstance(x, bool):
        raise _fail(path, f"{x!r} is not a window bound")
    if isinstance(x, int):
        if not _is_days(x, negative=True):
            raise _fail(path, f"{x!r} is out of range: a window bound is {SIGNED_DAYS} (negative: before index)")
        return (abs(x), -1 if x < 0 else 1)
    if isinstance(x, str):
        mt = _BOUND.match(x)
        if mt:
            days = None if mt.group(1).lower() == "all" else int(mt.group(1))
            if days is not None and not _is_days(days):
                raise _fail(path, f"{x!r} is out of range: a window bound is {DAYS} before or after index")
            return (days, -1 if mt.group(2).lower() == "before" else 1)
    raise _fail(path, f"cannot read window bound {x!r}: write e.g. '365 days before', '0 days after', "
                      "'all days before', or a number of days (negative: before index)")


def _window(start: Any, end: Any, index_end: bool | None, event_end: bool | None, path: str) -> Window:
    w = Window(_bound(start, "start", f"{path}.start"), _bound(end, "end", f"{path}.end"), index_end, event_end)
    try:
        m.Window.model_validate(w.model())
    except ValidationError as e:
        raise m.validation_error(e) from None
    return w


@dataclass(frozen=True)
class Occurrence:
    type: str  # exactly / at_most / at_least
    count: int
    distinct: Any = None  # None, True or a _DISTINCT key

    def model(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "count": self.count}
        if self.distinct is not None:
            d["is_distinct"] = True
            col = _DISTINCT[self.distinct]
            if col:
                d["count_column"] = col
        return d


def _occurrence(kind: str, n: Any, distinct: Any, path: str) -> Occurrence:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_INT32:
        raise _fail(path, f"{kind}: {n!r} is not a count (a whole number, 0 to {MAX_INT32})")
    if distinct is not None and distinct not in _DISTINCT:
        raise _fail(path, f"distinct: {distinct!r} (use true, concept, start_date, end_date or visit)")
    if distinct is False:
        distinct = None
    return Occurrence(kind, n, distinct)


# ---- criteria -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """Events of one domain (optionally of a concept set), and, where used as a condition on the
    index event, the window it must fall in and how often."""

    domain: str
    concepts: Concepts | None = None
    fields: tuple[tuple[str, Any], ...] = ()  # the criterion's model fields (snake_case) and values
    where_: Group | None = None  # conditions on each event itself (Circe's CorrelatedCriteria)
    start: Window | None = None
    end: Window | None = None
    same_visit_: bool = False
    ignore_observation_period_: bool = False
    occurrence: Occurrence | None = None

    # -- filters on the events ---------------------------------------------------------------
    def _set(self, name: str, value: Any) -> Event:
        cls = _body_class(self.domain)
        if name not in cls.model_fields:
            raise CohortDefinitionError(f"{self.domain}: has no {name!r} filter "
                                        f"(its filters: {', '.join(_filter_names(self.domain))})")
        return replace(self, fields=(*((k, v) for k, v in self.fields if k != name), (name, value)))

    def first(self) -> Event:
        """Only each person's first such event ever (in all their history)."""
        return self._set("first", True)

    def age(self, *, min: float | None = None, max: float | None = None, above: float | None = None,
            below: float | None = None, equal: float | None = None, not_equal: float | None = None,
            not_between: tuple[float, float] | None = None) -> Event:
        """Age (in years) at the event."""
        return self._set("age", _range(f"{self.domain}.age", dict(
            min=min, max=max, above=above, below=below, equal=equal, not_equal=not_equal, not_between=not_between)))

    def sex(self, *names: str) -> Event:
        """The person's sex: 'male' and/or 'female' (catalog GENDER)."""
        return self._set("gender", _catalog_concepts(names, catalog.GENDER, "sex", f"{self.domain}.sex"))

    def value(self, *, min: float | None = None, max: float | None = None, above: float | None = None,
              below: float | None = None, equal: float | None = None, not_equal: float | None = None,
              not_between: tuple[float, float] | None = None) -> Event:
        """The numeric result (value_as_number) of a measurement or observation."""
        return self._set("value_as_number", _range(f"{self.domain}.value", dict(
            min=min, max=max, above=above, below=below, equal=equal, not_equal=not_equal, not_between=not_between)))

    def unit(self, *units: str | int) -> Event:
        """The result's unit: catalog UNITS names (e.g. 'percent') or concept ids."""
        return self._set("unit", _catalog_concepts(units, catalog.UNITS, "unit", f"{self.domain}.unit"))

    def in_visit(self, *visits: str | int) -> Event:
        """Recorded in a visit of these kinds: catalog VISITS names (e.g. 'inpatient') or concept ids."""
        if self.domain == "visit":
            raise CohortDefinitionError("visit.in_visit: a visit criterion names its kind by its concept set")
        return self._set("visit_type", _catalog_concepts(visits, catalog.VISITS, "visit kind",
                                                         f"{self.domain}.in_visit"))

    def filter(self, **fields: Any) -> Event:
        """Any other filter of the criterion, by the model's field name and value, e.g.
        ``drug(x).filter(days_supply={"value": 30, "op": "gte"})``."""
        e = self
        for k, v in fields.items():
            if k in ("codeset_id", "correlated_criteria"):
                raise CohortDefinitionError(f"{self.domain}.filter: {k} is set by the concept set and .where(), "
                                            "not as a filter")
            e = e._set(k, v.model_dump(mode="json", exclude_none=True) if isinstance(v, BaseModel) else v)
        return e

    def where(self, *items: Event | Demographic | Group) -> Event:
        """Keep only events that themselves meet these conditions (relative to each event)."""
        return replace(self, where_=_rule_group(items, f"{self.domain}.where"))

    # -- as a condition on the index event ------------------------------------------------------
    def between(self, start: Any = None, end: Any = None, *, index_end: bool | None = None,
                event_end: bool | None = None) -> Event:
        """The event starts in this window around the index date: bounds like '365 days before',
        '0 days after', 'all days before' or days as integers (negative: before index)."""
        return replace(self, start=_window(start, end, index_end, event_end, f"{self.domain}.between"))

    def within(self, *, days_before: int | None = None, days_after: int = 0) -> Event:
        """The event starts from `days_before` days before index (None: any time before) to
        `days_after` days after it."""
        for k, v in (("days_before", days_before), ("days_after", days_after)):
            if v is not None and not _is_days(v):
                raise CohortDefinitionError(f"{self.domain}.within: {k} is {DAYS}")
        return self.between(f"{'all' if days_before is None else days_before} days before",
                            f"{days_after} days after")

    def ending_between(self, start: Any = None, end: Any = None, *, index_end: bool | None = None,
                       event_end: bool | None = None) -> Event:
        """The event ends in this window (bounds as in `between`)."""
        return replace(self, end=_window(start, end, index_end, event_end, f"{self.domain}.ending_between"))

    def same_visit(self) -> Event:
        """The event is in the same visit as the index event."""
        return replace(self, same_visit_=True)

    def ignore_observation_period(self) -> Event:
        """Count events outside the index event's observation period too."""
        return replace(self, ignore_observation_period_=True)

    def at_least(self, n: int, *, distinct: Any = None) -> Event:
        return replace(self, occurrence=_occurrence("at_least", n, distinct, f"{self.domain}.at_least"))

    def at_most(self, n: int, *, distinct: Any = None) -> Event:
        return replace(self, occurrence=_occurrence("at_most", n, distinct, f"{self.domain}.at_most"))

    def exactly(self, n: int, *, distinct: Any = None) -> Event:
        return replace(self, occurrence=_occurrence("exactly", n, distinct, f"{self.domain}.exactly"))

    def describe(self) -> str:
        what = self.domain.replace("_", " ")
        if self.concepts is not None:
            what += f" {self.concepts.name!r}"
        if self.start is not None:
            what += " " + self.start.text()
        return what


def _filter_names(domain: str) -> list[str]:
    return [n for n in _body_class(domain).model_fields if n not in ("codeset_id", "correlated_criteria")]


def _event(domain: str, cs: Concepts | None) -> Event:
    if cs is not None and not isinstance(cs, Concepts):
        raise CohortDefinitionError(f"{domain}(...): give a concept set made with concepts(...), not {cs!r}")
    if cs is not None and domain == "observation_period":
        raise CohortDefinitionError("observation_period(): takes no concept set")
    return Event(domain, cs)


def condition(cs: Concepts | None = None) -> Event:
    """Condition occurrences (of the concept set, or any)."""
    return _event("condition", cs)


def drug(cs: Concepts | None = None) -> Event:
    """Drug exposures."""
    return _event("drug", cs)


def procedure(cs: Concepts | None = None) -> Event:
    return _event("procedure", cs)


def measurement(cs: Concepts | None = None) -> Event:
    return _event("measurement", cs)


def observation(cs: Concepts | None = None) -> Event:
    return _event("observation", cs)


def visit(cs: Concepts | None = None) -> Event:
    return _event("visit", cs)


def device(cs: Concepts | None = None) -> Event:
    return _event("device", cs)


def death(cs: Concepts | None = None) -> Event:
    return _event("death", cs)


def drug_era(cs: Concepts | None = None) -> Event:
    return _event("drug_era", cs)


def dose_era(cs: Concepts | None = None) -> Event:
    """DOSE_ERA rows (filters: dose_value, unit, unit_cs, era_length, ... through .filter())."""
    return _event("dose_era", cs)


def payer_plan_period() -> Event:
    """PAYER_PLAN_PERIOD rows (filters: payer_concept (a concept set id), period_length, ... through .filter())."""
    return _event("payer_plan_period", None)


def condition_era(cs: Concepts | None = None) -> Event:
    return _event("condition_era", cs)


def observation_period() -> Event:
    return _event("observation_period", None)


def specimen(cs: Concepts | None = None) -> Event:
    return _event("specimen", cs)


def visit_detail(cs: Concepts | None = None) -> Event:
    return _event("visit_detail", cs)


def location_region(cs: Concepts | None = None) -> Event:
    """Circe's LocationRegion (a person's location history in a set of regions). Circe-BE's SQL reads
    LOCATION_HISTORY, which CDM 5.3/5.4 do not have, so a cohort using it is refused when compiled."""
    return _event("location_region", cs)


def first(event: Event) -> Event:
    """``first(drug(x))`` is ``drug(x).first()``: each person's first such event ever."""
    return event.first()


@dataclass(frozen=True)
class Demographic:
    """A condition on the person at the index date: age, sex, race, ethnicity."""

    fields: tuple[tuple[str, Any], ...] = ()

    def _set(self, name: str, value: Any) -> Demographic:
        return Demographic((*((k, v) for k, v in self.fields if k != name), (name, value)))

    def age(self, *, min: float | None = None, max: float | None = None, above: float | None = None,
            below: float | None = None, equal: float | None = None, not_equal: float | None = None,
            not_between: tuple[float, float] | None = None) -> Demographic:
        return self._set("age", _range("age", dict(
            min=min, max=max, above=above, below=below, equal=equal, not_equal=not_equal, not_between=not_between)))

    def sex(self, *names: str) -> Demographic:
        return self._set("gender", _catalog_concepts(names, catalog.GENDER, "sex", "sex"))

    def filter(self, **fields: Any) -> Demographic:
        d = self
        for k, v in fields.items():
            if k not in m.DemographicCriteria.model_fields:
                raise CohortDefinitionError(f"demographic filter {k!r} unknown "
                                            f"(known: {', '.join(m.DemographicCriteria.model_fields)})")
            d = d._set(k, v.model_dump(mode="json", exclude_none=True) if isinstance(v, BaseModel) else v)
        return d

    def describe(self) -> str:
        parts = []
        for k, v in self.fields:
            if k == "age":
                parts.append(f"age {_range_text(v)}")
            elif k == "gender":
                parts.append("sex " + " or ".join(str(c.get("concept_name") or c["concept_id"]).lower() for c in v))
            else:
                parts.append(k.replace("_", " "))
        return ", ".join(parts) or "any person"


def age(*, min: float | None = None, max: float | None = None, above: float | None = None,
        below: float | None = None, equal: float | None = None, not_equal: float | None = None,
        not_between: tuple[float, float] | None = None) -> Demographic:
    """Age at the index date, in years: ``age(min=18)``, ``age(min=40, max=65)``, ``age(above=40)``."""
    return Demographic().age(min=min, max=max, above=above, below=below, equal=equal, not_equal=not_equal,
                             not_between=not_between)


def sex(*names: str) -> Demographic:
    """Sex: ``sex("female")``."""
    return Demographic().sex(*names)


@dataclass(frozen=True)
class Group:
    """all_of / any_of / at_least_of(n) / at_most_of(n) of conditions."""

    type: str  # ALL, ANY, AT_LEAST, AT_MOST
    items: tuple[Event | Demographic | Group, ...]
    count: int | None = None


def _items(items: tuple[Any, ...], path: str) -> tuple[Event | Demographic | Group, ...]:
    for x in items:
        if not isinstance(x, Event | Demographic | Group):
            raise _fail(path, f"{x!r} is not a condition: use condition(...), drug(...), age(...), any_of(...) ...")
    return tuple(items)


def all_of(*items: Event | Demographic | Group) -> Group:
    return Group("ALL", _items(items, "all_of"))


def any_of(*items: Event | Demographic | Group) -> Group:
    return Group("ANY", _items(items, "any_of"))


def at_least_of(n: int, *items: Event | Demographic | Group) -> Group:
    return Group("AT_LEAST", _items(items, "at_least_of"), n)


def at_most_of(n: int, *items: Event | Demographic | Group) -> Group:
    return Group("AT_MOST", _items(items, "at_most_of"), n)


def _rule_group(items: tuple[Any, ...], path: str) -> Group:
    # One group given: it is the rule itself; anything else: all of the items.
    items = _items(items, path)
    if not items:
        raise _fail(path, "give at least one condition")
    if len(items) == 1 and isinstance(items[0], Group):
        return items[0]
    return Group("ALL", items)


# ---- the cohort ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    name: str
    group: Group
    description: str | None = None


@dataclass(frozen=True)
class Exit:
    kind: str  # "exposure" (custom era) or "offset"
    gap_days: int = 0
    offset: int = 0
    days_supply: int | None = None
    drug: Concepts | None = None
    relative_to: str = "start"


@dataclass(frozen=True)
class Cohort:
    """A cohort definition being built. ``build()`` gives the model; ``to_yaml()`` the YAML form."""

    name: str
    description: str | None = None
    entry_: tuple[Event, ...] = ()
    prior_days: int = 0
    post_days: int = 0
    limits: tuple[str | None, str | None, str | None] = (None, None, None)  # entry, qualifying, final
    where_: Group | None = None
    rules: tuple[Rule, ...] = ()
    exit_: Exit | None = None
    censor: tuple[Event, ...] = ()
    period: tuple[dt.date | None, dt.date | None] = (None, None)
    era_gap_days: int = 0
    declared: tuple[Concepts, ...] = ()
    cdm_version_range: str | None = None
    title: str | None = None

    # -- entry -----------------------------------------------------------------------------------
    def entry(self, *events: Event, keep: str | None = None) -> Cohort:
        """The events that put a person in the cohort (any of them); each is an index date.
        keep='first' (default) / 'all' / 'last': which of a person's entry events to keep."""
        if not events:
            raise CohortDefinitionError("entry(): give at least one event, e.g. entry(drug(nsaid))")
        for e in events:
            if not isinstance(e, Event):
                raise CohortDefinitionError(f"entry(): {e!r} is not an event (use condition(...), drug(...) ...)")
            if e.start or e.end or e.occurrence or e.same_visit_ or e.ignore_observation_period_:
                raise CohortDefinitionError(
                    f"entry(): {e.describe()} has a window or count; those belong to require/exclude, "
                    "an entry event defines the index date itself")
        c = replace(self, entry_=tuple(events))
        return c.keep(entry=keep) if keep is not None else c

    def require_observation(self, *, prior_days: int = 0, post_days: int = 0) -> Cohort:
        """Continuous observation of at least `prior_days` before and `post_days` after the index date."""
        for k, v in (("prior_days", prior_days), ("post_days", post_days)):
            if not _is_days(v):
                raise CohortDefinitionError(f"require_observation: {k} is {DAYS}")
        return replace(self, prior_days=prior_days, post_days=post_days)

    def require_prior_observation(self, *, days: int) -> Cohort:
        return self.require_observation(prior_days=days, post_days=self.post_days)

    def keep(self, which: str | None = None, *, entry: str | None = None, qualifying: str | None = None,
             final: str | None = None) -> Cohort:
        """Which events to keep per person: 'first', 'all' or 'last'. `which` sets all three steps;
        entry (entry events), qualifying (after `where`), final (after the inclusion rules)."""
        vals = list(self.limits)
        for i, v in enumerate((entry, qualifying, final)):
            v = which if v is None else v
            if v is not None:
                if v not in _LIMITS:
                    raise CohortDefinitionError(f"keep: {v!r} is not one of first, all, last")
                vals[i] = v
        return replace(self, limits=(vals[0], vals[1], vals[2]))

    def where(self, *items: Event | Demographic | Group, keep: str | None = None) -> Cohort:
        """Restrict the entry events (Circe's additional criteria), before the inclusion rules."""
        c = replace(self, where_=_rule_group(items, "where"))
        return c.keep(qualifying=keep) if keep is not None else c

    # -- inclusion rules -------------------------------------------------------------------------
    def require(self, *items: Event | Demographic | Group, name: str | None = None,
                description: str | None = None) -> Cohort:
        """An inclusion rule: the index event must meet all of these (or the one group given)."""
        g = _rule_group(items, "require")
        return replace(self, rules=(*self.rules, Rule(name or _rule_name(g), g, description)))

    def exclude(self, event: Event, *, name: str | None = None, description: str | None = None) -> Cohort:
        """An inclusion rule: no such event in its window (exactly 0 occurrences)."""
        if not isinstance(event, Event):
            raise CohortDefinitionError("exclude(): give an event, e.g. exclude(condition(gi_bleed).within(...)); "
                                        "to exclude by age or sex, require the opposite")
        if event.occurrence is not None:
            raise CohortDefinitionError(f"exclude(): {event.describe()} already has a count; exclude means "
                                        "exactly 0 occurrences, so leave the count out (or use require)")
        e = replace(event, occurrence=Occurrence("exactly", 0))
        g = Group("ALL", (e,))
        return replace(self, rules=(*self.rules, Rule(name or f"no {event.describe()}", g, description)))

    def require_age(self, *, min: float | None = None, max: float | None = None, above: float | None = None,
                    below: float | None = None, name: str | None = None) -> Cohort:
        d = age(min=min, max=max, above=above, below=below)
        return self.require(d, name=name or d.describe())

    def require_sex(self, *names: str, name: str | None = None) -> Cohort:
        d = sex(*names)
        return self.require(d, name=name or d.describe())

    # -- exit ------------------------------------------------------------------------------------
    def exit_at_end_of_exposure(self, *, gap_days: int = 0, offset: int = 0, days_supply: int | None = None,
                                drug: Concepts | None = None) -> Cohort:
        """Exit at the end of continuous exposure (a custom drug era): exposures no more than `gap_days`
        apart join; `offset` days are added at the end; `days_supply` overrides each exposure's length.
        `drug` defaults to the entry drug's concept set."""
        for k, v in (("gap_days", gap_days), ("days_supply", days_supply)):
            if v is not None and not _is_days(v):
                raise CohortDefinitionError(f"exit_at_end_of_exposure: {k} is {DAYS}")
        if not _is_days(offset, negative=True):
            raise CohortDefinitionError(f"exit_at_end_of_exposure: offset is {SIGNED_DAYS}")
        if drug is not None and not isinstance(drug, Concepts):
            raise CohortDefinitionError("exit_at_end_of_exposure: drug is a concept set made with concepts(...)")
        return replace(self, exit_=Exit("exposure", gap_days, offset, days_supply, drug))

    def exit_after(self, *, days: int, relative_to: str = "start") -> Cohort:
        """Exit a fixed number of days after the entry event's start (or end: relative_to='end')."""
        if relative_to not in ("start", "end"):
            raise CohortDefinitionError("exit_after: relative_to is 'start' or 'end' (of the entry event)")
        if not _is_days(days, negative=True):
            raise CohortDefinitionError(f"exit_after: days is {SIGNED_DAYS}")
        return replace(self, exit_=Exit("offset", offset=days, relative_to=relative_to))

    def exit_at_end_of_observation(self) -> Cohort:
        """Stay in the cohort to the end of the observation period (the default)."""
        return replace(self, exit_=None)

    def censor_at(self, *events: Event) -> Cohort:
        """Leave the cohort early at the first of these events after entry."""
        for e in events:
            if not isinstance(e, Event) or e.start or e.occurrence:
                raise CohortDefinitionError("censor_at(): give plain events, e.g. censor_at(death())")
        return replace(self, censor=(*self.censor, *events))

    def study_period(self, start: dt.date | str | None = None, end: dt.date | str | None = None) -> Cohort:
        """Clip cohort entries to this calendar period (Circe's censor window)."""
        return replace(self, period=(_date(start, "study_period.start"), _date(end, "study_period.end")))

    def collapse(self, *, gap_days: int = 0) -> Cohort:
        """Join a person's cohort entries that are at most `gap_days` apart into one era."""
        if not _is_days(gap_days):
            raise CohortDefinitionError(f"collapse: gap_days is {DAYS}")
        return replace(self, era_gap_days=gap_days)

    def concept_sets(self, *sets: Concepts) -> Cohort:
        """Declare concept sets up front: they are numbered first, in this order, used or not."""
        return replace(self, declared=(*self.declared, *sets))

    # -- output ----------------------------------------------------------------------------------
    def build(self) -> m.CohortDefinition:
        """The cohort model (what the compiler, Circe export and generation take)."""
        return _Builder(self).definition()

    def to_yaml(self) -> str:
        from mercia.cohorts.yaml_writer import to_yaml  # the writer builds on this module

        return to_yaml(self.build())


def cohort(name: str, description: str | None = None, *, cdm_version_range: str | None = None,
           title: str | None = None) -> Cohort:
    """A new cohort definition; add `.entry(...)` and the rest."""
    if not isinstance(name, str) or not name.strip():
        raise CohortDefinitionError("cohort(): give the cohort a name, e.g. cohort('New NSAID users')")
    return Cohort(name, description, cdm_version_range=cdm_version_range, title=title)


def _date(v: Any, path: str) -> dt.date | None:
    if v is None or v == "":
        return None
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    if isinstance(v, str):
        try:
            return dt.date.fromisoformat(v)
        except ValueError:
            pass
    raise _fail(path, f"invalid date {v!r}: write dates as YYYY-MM-DD")


def _rule_name(g: Group) -> str:
    parts = []
    for x in g.items:
        if isinstance(x, Event | Demographic):
            parts.append(x.describe())
        else:
            parts.append(f"{x.type.lower()} group")
    joiner = {"ALL": " and ", "ANY": " or "}.get(g.type, ", ")
    return joiner.join(parts)


# ---- building the model ----------------------------------------------------------------------
class _Builder:
    def __init__(self, c: Cohort) -> None:
        self.c = c
        self.ids: dict[Concepts, int] = {}
        self.used: set[int] = set()
        for cs in c.declared:
            self.codeset(cs)

    def codeset(self, cs: Concepts) -> int:
        if cs in self.ids:
            return self.ids[cs]
        cid = cs.id
        if cid is None:
            cid = max(self.used, default=-1) + 1
        elif cid in self.used:
            raise CohortDefinitionError(f"concept set {cs.name!r}: id {cid} is already used by another concept set")
        self.ids[cs] = cid
        self.used.add(cid)
        return cid

    def event(self, e: Event, path: str) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if e.concepts is not None:
            body["codeset_id"] = self.codeset(e.concepts)
        body.update(dict(e.fields))
        if e.where_ is not None:
            body["correlated_criteria"] = self.group(e.where_, f"{path}.where")
        return {DOMAINS[e.domain]: body}

    def correlated(self, e: Event, path: str) -> dict[str, Any]:
        start = e.start or Window((None, -1), (None, 1))
        d: dict[str, Any] = {
            "criteria": self.event(e, path),
            "start_window": start.model(),
            "occurrence": (e.occurrence or Occurrence("at_least", 1)).model(),
        }
        if e.end is not None:
            d["end_window"] = e.end.model()
        if e.same_visit_:
            d["restrict_visit"] = True
        if e.ignore_observation_period_:
            d["ignore_observation_period"] = True
        return d

    def group(self, g: Group, path: str) -> dict[str, Any]:
        d: dict[str, Any] = {"type": g.type, "criteria_list": [], "demographic_criteria_list": [], "groups": []}
        if g.count is not None:
            d["count"] = g.count
        for i, x in enumerate(g.items):
            if isinstance(x, Event):
                d["criteria_list"].append(self.correlated(x, f"{path}[{i}]"))
            elif isinstance(x, Demographic):
                d["demographic_criteria_list"].append(dict(x.fields))
            else:
                d["groups"].append(self.group(x, f"{path}[{i}]"))
        return d

    def exit_drug(self) -> Concepts:
        ex = self.c.exit_
        assert ex is not None
        if ex.drug is not None:
            return ex.drug
        sets = {e.concepts for e in self.c.entry_ if e.domain in ("drug", "drug_era") and e.concepts}
        if len(sets) != 1 or any(e.domain not in ("drug", "drug_era") for e in self.c.entry_):
            raise CohortDefinitionError(
                "exit_at_end_of_exposure: say which drug's exposure ends the cohort, "
                "e.g. exit_at_end_of_exposure(drug=nsaid) (the entry is not a single drug concept set)")
        return next(iter(sets))

    def definition(self) -> m.CohortDefinition:
        c = self.c
        if not c.entry_:
            raise CohortDefinitionError(f"cohort {c.name!r}: no entry events; add .entry(drug(...)) or similar")
        lim = [{"type": (v or "first").capitalize()} for v in c.limits]
        x: dict[str, Any] = {
            "primary_criteria": {
                "criteria_list": [self.event(e, f"entry[{i}]") for i, e in enumerate(c.entry_)],
                "observation_window": {"prior_days": c.prior_days, "post_days": c.post_days},
                "primary_limit": lim[0],
            },
            "qualified_limit": lim[1],
            "expression_limit": lim[2],
        }
        if c.where_ is not None:
            x["additional_criteria"] = self.group(c.where_, "where")
        rules = []
        for i, r in enumerate(c.rules):
            rd: dict[str, Any] = {"name": r.name, "expression": self.group(r.group, f"inclusion_rules[{i}]")}
            if r.description is not None:
                rd["description"] = r.description
            rules.append(rd)
        x["inclusion_rules"] = rules
        if c.exit_ is not None:
            if c.exit_.kind == "exposure":
                ce: dict[str, Any] = {"drug_codeset_id": self.codeset(self.exit_drug()),
                                      "gap_days": c.exit_.gap_days, "offset": c.exit_.offset}
                if c.exit_.days_supply is not None:
                    ce["days_supply_override"] = c.exit_.days_supply
                x["end_strategy"] = {"custom_era": ce}
            else:
                x["end_strategy"] = {"date_offset": {
                    "date_field": "StartDate" if c.exit_.relative_to == "start" else "EndDate",
                    "offset": c.exit_.offset}}
        x["censoring_criteria"] = [self.event(e, f"censor[{i}]") for i, e in enumerate(c.censor)]
        x["collapse_settings"] = {"collapse_type": "ERA", "era_pad": c.era_gap_days}
        x["censor_window"] = {"start_date": c.period[0], "end_date": c.period[1]}
        if c.cdm_version_range is not None:
            x["cdm_version_range"] = c.cdm_version_range
        if c.title is not None:
            x["title"] = c.title
        # concept sets last: they are numbered while the rest is built
        x["concept_sets"] = [
            {"id": cid, "name": cs.name, "expression": {"items": [i.model_dump() for i in cs.resolved()]}}
            for cs, cid in sorted(self.ids.items(), key=lambda kv: kv[1])
        ]
        try:
            return m.CohortDefinition.model_validate({"name": c.name, "description": c.description,
                                                      "expression": x})
        except ValidationError as e:
            raise m.validation_error(e) from None

