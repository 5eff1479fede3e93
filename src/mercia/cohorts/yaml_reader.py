"""The cohort language's YAML form, read: a mapping (parsed YAML) to the builder, and so to the model.

The keys are the Python form's words (``docs/reference/cohort-language.md``); every error names the
path of the key at fault. User code imports ``from_yaml``/``from_dict`` from ``mercia.cohorts.dsl``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import yaml

from mercia.cohorts import model as m
from mercia.cohorts.builder import (
    CATALOG,
    DOMAINS,
    Cohort,
    Concepts,
    Demographic,
    Event,
    Group,
    Item,
    Occurrence,
    Rule,
    Window,
    _as_item,
    _catalog_concepts,
    _date,
    _event,
    _fail,
    _lookup,
    _occurrence,
    _range,
    _rule_group,
    _rule_name,
    _suggest,
    _window,
    cohort,
)
from mercia.errors import CohortDefinitionError
from mercia.limits import MAX_INT32, json_problem
from mercia.vocab import catalog

# ---- the YAML form: reading ------------------------------------------------------------------
_CS_KEYS = {"name", "id", "include", "exclude", "descendants", "mapped", *CATALOG}
_EVENT_KEYS = {"first", "age", "sex", "value", "unit", "in_visit", "filters", "where", "between",
               "ends_between", "same_visit", "ignore_observation_period", "at_least", "at_most", "exactly",
               "distinct"}
_TOP_KEYS = {"name", "description", "concepts", "entry", "observation", "keep", "where", "inclusion_rules",
             "exit", "censor", "study_period", "collapse", "cdm_version_range", "title"}


def _mapping(v: Any, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(path, f"expected a mapping (key: value lines), got {type(v).__name__}")
    return v


def _unknown(d: dict[str, Any], allowed: Iterable[str], path: str) -> None:
    extra = [k for k in d if k not in allowed]
    if extra:
        k = str(extra[0])
        raise _fail(f"{path}.{k}", f"unknown key{_suggest(k, allowed)}")


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


class _Reader:
    def __init__(self) -> None:
        self.sets: dict[str, Concepts] = {}

    def concept_set(self, key: str, v: Any, pos: int, path: str) -> Concepts:
        if isinstance(v, int | str) and not isinstance(v, bool):
            v = {"include": [v]}
        if isinstance(v, list):
            v = {"include": v}
        d = _mapping(v, path)
        _unknown(d, _CS_KEYS, path)
        for flag in ("descendants", "mapped"):
            if flag in d and not isinstance(d[flag], bool):
                raise _fail(f"{path}.{flag}", "true or false")
        items: list[Item] = []
        for i, x in enumerate(_as_list(d.get("include", []))):
            items.append(self.entry(x, f"{path}.include[{i}]", None))
        for kind in CATALOG:
            for i, x in enumerate(_as_list(d.get(kind, []))):
                if not isinstance(x, str):
                    raise _fail(f"{path}.{kind}[{i}]", f"{x!r} is not a catalog name")
                items.append(_lookup(x, kind, f"{path}.{kind}[{i}]"))
        for i, x in enumerate(_as_list(d.get("exclude", []))):
            items.append(replace(self.entry(x, f"{path}.exclude[{i}]", None), exclude=True))
        if not items:
            raise _fail(path, "a concept set needs at least one concept (include: [...] or ingredients: [...])")
        cid = d.get("id", pos)
        if isinstance(cid, bool) or not isinstance(cid, int) or cid < 0:
            raise _fail(f"{path}.id", "a concept set id is a whole number, 0 or more")
        name = d.get("name", key)
        if not isinstance(name, str):
            raise _fail(f"{path}.name", "a name is text")
        return Concepts(name, tuple(items), d.get("descendants", False), d.get("mapped", False), cid)

    def entry(self, x: Any, path: str, kind: str | None) -> Item:
        if isinstance(x, dict):
            _unknown(x, ("id", "concept", "name", "descendants", "mapped", "exclude"), path)
            if ("id" in x) == ("concept" in x):
                raise _fail(path, "give either id: (a concept id) or concept: (a catalog name)")
            base = _as_item(x.get("id", x.get("concept")), path, kind)
            for flag in ("descendants", "mapped", "exclude"):
                if flag in x and not isinstance(x[flag], bool):
                    raise _fail(f"{path}.{flag}", "true or false")
            return Item(base.concept_id, x.get("name", base.name), x.get("descendants"), x.get("mapped"),
                        x.get("exclude", False))
        return _as_item(x, path, kind)

    def ref(self, v: Any, path: str) -> Concepts | None:
        if v is None:
            return None
        if not isinstance(v, str) or v not in self.sets:
            raise _fail(path, f"{v!r} is not a concept set defined under concepts:"
                              f"{_suggest(str(v), self.sets)} (defined: {', '.join(self.sets) or 'none'})")
        return self.sets[v]

    def event(self, d: dict[str, Any], path: str, correlated: bool) -> Event:
        domains = [k for k in d if k in DOMAINS]
        if len(domains) != 1:
            raise _fail(path, f"name exactly one kind of event ({', '.join(DOMAINS)}), "
                              f"found {', '.join(domains) or 'none'}")
        dom = domains[0]
        allowed = {dom, *_EVENT_KEYS} if correlated else {dom, "first", "age", "sex", "value", "unit",
                                                          "in_visit", "filters", "where"}
        _unknown(d, allowed, path)
        e = _event(dom, self.ref(d[dom], f"{path}.{dom}"))
        try:
            if d.get("first") is True:
                e = e.first()
            elif "first" in d:
                e = e._set("first", d["first"])
            if "age" in d:
                e = e._set("age", _range(f"{path}.age", _mapping(d["age"], f"{path}.age")))
            if "sex" in d:
                e = e.sex(*_as_list(d["sex"]))
            if "value" in d:
                e = e._set("value_as_number", _range(f"{path}.value", _mapping(d["value"], f"{path}.value")))
            if "unit" in d:
                e = e.unit(*_as_list(d["unit"]))
            if "in_visit" in d:
                e = e.in_visit(*_as_list(d["in_visit"]))
            if "filters" in d:
                e = e.filter(**_mapping(d["filters"], f"{path}.filters"))
        except CohortDefinitionError as err:
            raise _fail(path, str(err)) from None
        if "where" in d:
            e = replace(e, where_=self.rule(d["where"], f"{path}.where"))
        for key, setter in (("between", "start"), ("ends_between", "end")):
            if key in d:
                e = replace(e, **{setter: self.window(d[key], f"{path}.{key}")})
        if d.get("same_visit"):
            e = e.same_visit()
        if d.get("ignore_observation_period"):
            e = e.ignore_observation_period()
        counts = [k for k in ("at_least", "at_most", "exactly") if k in d]
        if len(counts) > 1:
            raise _fail(path, f"one count only (found {', '.join(counts)})")
        if counts:
            e = replace(e, occurrence=_occurrence(counts[0], d[counts[0]], d.get("distinct"), path))
        elif "distinct" in d:
            e = replace(e, occurrence=_occurrence("at_least", 1, d["distinct"], path))
        return e

    def window(self, v: Any, path: str) -> Window:
        if isinstance(v, list):
            if len(v) != 2:
                raise _fail(path, "a window is [start, end], e.g. [365 days before, 0 days after]")
            return _window(v[0], v[1], None, None, path)
        d = _mapping(v, path)
        _unknown(d, ("start", "end", "index_end", "event_end"), path)
        return _window(d.get("start"), d.get("end"), d.get("index_end"), d.get("event_end"), path)

    def item(self, v: Any, path: str) -> Event | Demographic | Group:
        d = _mapping(v, path)
        if any(k in d for k in DOMAINS):
            return self.event(d, path, correlated=True)
        if any(k in d for k in ("all", "any", "of")):
            return self.group(d, path)
        _unknown(d, ("age", "sex", "filters"), path)
        demo = Demographic()
        if "age" in d:
            demo = demo._set("age", _range(f"{path}.age", _mapping(d["age"], f"{path}.age")))
        if "sex" in d:
            demo = demo._set("gender", _catalog_concepts(tuple(_as_list(d["sex"])), catalog.GENDER, "sex",
                                                         f"{path}.sex"))
        if "filters" in d:
            demo = demo.filter(**_mapping(d["filters"], f"{path}.filters"))
        if not demo.fields:
            raise _fail(path, "empty condition: name an event (condition: ..., drug: ...), "
                              "a demographic (age:, sex:) or a group (all:, any:, at_least: n + of:)")
        return demo

    def group(self, d: dict[str, Any], path: str) -> Group:
        if "all" in d or "any" in d:
            kind = "all" if "all" in d else "any"
            _unknown(d, (kind, "count"), path)
            items = d[kind]
            typ = kind.upper()
        else:
            kinds = [k for k in ("at_least", "at_most") if k in d]
            if len(kinds) != 1:
                raise _fail(path, "a group with of: needs at_least: n or at_most: n")
            _unknown(d, (kinds[0], "of"), path)
            items, typ = d["of"], kinds[0].upper()
            d = {**d, "count": d[kinds[0]]}
        if not isinstance(items, list):
            raise _fail(path, "a group's conditions are a list")
        count = d.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_INT32):
            raise _fail(path, f"count {count!r} is not a whole number, 0 to {MAX_INT32}")
        return Group(typ, tuple(self.item(x, f"{path}[{i}]") for i, x in enumerate(items)), count)

    def rule(self, v: Any, path: str) -> Group:
        if isinstance(v, dict) and any(k in v for k in ("all", "any", "of")):
            return self.group(v, path)
        items = tuple(self.item(x, f"{path}[{i}]") for i, x in enumerate(_as_list(v)))
        return _rule_group(items, path)

    def cohort(self, data: Any) -> Cohort:
        d = _mapping(data, "$")
        _unknown(d, _TOP_KEYS, "$")
        name = d.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _fail("$.name", "required: the cohort's name")
        c = cohort(name, d.get("description"), cdm_version_range=d.get("cdm_version_range"), title=d.get("title"))
        sets = d.get("concepts") or {}
        for pos, (key, v) in enumerate(_mapping(sets, "$.concepts").items()):
            self.sets[str(key)] = self.concept_set(str(key), v, pos, f"$.concepts.{key}")
        c = c.concept_sets(*self.sets.values())
        if "entry" not in d:
            raise _fail("$.entry", "required: the entry events, e.g. entry: [{drug: nsaid, first: true}]")
        entry = _as_list(d["entry"])
        if not entry:
            raise _fail("$.entry", "give at least one entry event")
        c = replace(c, entry_=tuple(self.event(_mapping(x, f"$.entry[{i}]"), f"$.entry[{i}]", correlated=False)
                                    for i, x in enumerate(entry)))
        if "observation" in d:
            o = _mapping(d["observation"], "$.observation")
            _unknown(o, ("prior_days", "post_days"), "$.observation")
            try:
                c = c.require_observation(prior_days=o.get("prior_days", 0), post_days=o.get("post_days", 0))
            except CohortDefinitionError as e:
                raise _fail("$.observation", str(e)) from None
        if "keep" in d:
            k = d["keep"]
            try:
                if isinstance(k, dict):
                    _unknown(k, ("entry", "qualifying", "final"), "$.keep")
                    c = c.keep(**k)
                else:
                    c = c.keep(k)
            except CohortDefinitionError as e:
                raise _fail("$.keep", str(e)) from None
        if "where" in d:
            c = replace(c, where_=self.rule(d["where"], "$.where"))
        for i, r in enumerate(_as_list(d.get("inclusion_rules") or [])):
            c = self.inclusion_rule(c, r, f"$.inclusion_rules[{i}]")
        if "exit" in d:
            c = self.exit(c, d["exit"], "$.exit")
        for i, x in enumerate(_as_list(d.get("censor") or [])):
            c = replace(c, censor=(*c.censor, self.event(_mapping(x, f"$.censor[{i}]"), f"$.censor[{i}]", False)))
        if "study_period" in d:
            p = _mapping(d["study_period"], "$.study_period")
            _unknown(p, ("start", "end"), "$.study_period")
            c = replace(c, period=(_date(p.get("start"), "$.study_period.start"),
                                   _date(p.get("end"), "$.study_period.end")))
        if "collapse" in d:
            p = _mapping(d["collapse"], "$.collapse")
            _unknown(p, ("gap_days",), "$.collapse")
            try:
                c = c.collapse(gap_days=p.get("gap_days", 0))
            except CohortDefinitionError as e:
                raise _fail("$.collapse", str(e)) from None
        return c

    def inclusion_rule(self, c: Cohort, r: Any, path: str) -> Cohort:
        r = _mapping(r, path)
        _unknown(r, ("name", "description", "require", "exclude"), path)
        if ("require" in r) == ("exclude" in r):
            raise _fail(path, "a rule has either require: or exclude:")
        if "require" in r:
            g = self.rule(r["require"], f"{path}.require")
        else:
            ev = self.event(_mapping(r["exclude"], f"{path}.exclude"), f"{path}.exclude", correlated=True)
            if ev.occurrence is not None:
                raise _fail(f"{path}.exclude", "exclude means exactly 0 occurrences; leave the count out")
            g = Group("ALL", (replace(ev, occurrence=Occurrence("exactly", 0)),))
        name = r.get("name")
        if name is None:
            name = _rule_name(g) if "require" in r else f"no {g.items[0].describe()}"  # type: ignore[union-attr]
        return replace(c, rules=(*c.rules, Rule(str(name), g, r.get("description"))))

    def exit(self, c: Cohort, v: Any, path: str) -> Cohort:
        if v == "end_of_observation":
            return c.exit_at_end_of_observation()
        d = _mapping(v, path)
        if len(d) != 1:
            raise _fail(path, "one of end_of_exposure:, after: or end_of_observation")
        (k, body), = d.items()
        try:
            if k == "end_of_exposure":
                b = _mapping(body or {}, f"{path}.{k}")
                _unknown(b, ("gap_days", "offset", "days_supply", "drug"), f"{path}.{k}")
                drug_cs = self.ref(b["drug"], f"{path}.{k}.drug") if "drug" in b else None
                return c.exit_at_end_of_exposure(gap_days=b.get("gap_days", 0), offset=b.get("offset", 0),
                                                 days_supply=b.get("days_supply"), drug=drug_cs)
            if k == "after":
                b = _mapping(body, f"{path}.{k}")
                _unknown(b, ("days", "relative_to"), f"{path}.{k}")
                if "days" not in b:
                    raise _fail(f"{path}.after.days", "required: the number of days")
                return c.exit_after(days=b["days"], relative_to=b.get("relative_to", "start"))
        except CohortDefinitionError as e:
            msg = str(e)
            raise (e if msg.startswith(path) else _fail(f"{path}.{k}", msg)) from None
        raise _fail(f"{path}.{k}", "unknown exit (use end_of_exposure:, after: or end_of_observation)")


def from_dict(data: Any) -> m.CohortDefinition:
    """A definition from the YAML form, already parsed."""
    problem = json_problem(data)
    if problem:
        raise CohortDefinitionError(problem)
    return _Reader().cohort(data).build()


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML with dates left as text: the cohort reader checks them itself, so a date like
    2020-02-30 is an error naming its path rather than a crash inside the YAML library."""


_YamlLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)


def load_yaml(text: str) -> Any:
    """Parse YAML text (safe loader, dates as text); malformed YAML is a CohortDefinitionError."""
    try:
        return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise CohortDefinitionError(f"malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None


def from_yaml(text: str) -> m.CohortDefinition:
    """A definition from the YAML form's text."""
    return from_dict(load_yaml(text))

