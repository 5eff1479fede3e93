"""The cohort language's YAML form, written: any cohort model (Circe's too) to the YAML form.

Elements the language has no word for go under ``filters:`` in the model's own field names, and with
``check`` the text is read back and compared, so what cannot be said exactly is an error, never a
silent change. User code imports ``to_yaml``/``definition_to_dict`` from ``mercia.cohorts.dsl``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import BaseModel

from mercia.cohorts import model as m
from mercia.cohorts.builder import (
    _DISTINCT_WORD,
    _WORD_OF,
    CATALOG,
    DOMAINS,
    Cohort,
    _bound_text,
    _range_words,
)
from mercia.cohorts.yaml_reader import _Reader, from_dict
from mercia.errors import CohortDefinitionError
from mercia.vocab import catalog


# ---- the YAML form: writing any model ---------------------------------------------------------
def _slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return s or "concepts"


def _dump(v: Any) -> Any:
    if isinstance(v, list):
        return [_dump(x) for x in v]
    return v.model_dump(mode="json", exclude_none=True) if isinstance(v, BaseModel) else v


def _default_of(cls: type[BaseModel], name: str) -> Any:
    f = cls.model_fields[name]
    return f.get_default(call_default_factory=True)


class _Writer:
    def __init__(self, x: m.CohortExpression) -> None:
        self.keys: dict[int, str] = {}
        taken: set[str] = set()
        for cs in x.concept_sets:
            key = _slug(cs.name) if cs.name else f"set_{cs.id}"
            base, n = key, 2
            while key in taken or key in DOMAINS:
                key, n = f"{base}_{n}", n + 1
            taken.add(key)
            self.keys[cs.id] = key

    def concept_set(self, cs: m.ConceptSet, pos: int) -> dict[str, Any]:
        key = self.keys[cs.id]
        out: dict[str, Any] = {}
        if cs.name != key:
            out["name"] = cs.name
        if cs.id != pos:
            out["id"] = cs.id
        items = cs.expression.items
        # Try the compact forms first, keep the first that reads back to the same items.
        for candidate in self._set_forms(items):
            full = {**out, **candidate}
            try:
                back = _Reader().concept_set(key, full, pos, "")
            except CohortDefinitionError:
                continue
            if [i.model_dump() for i in back.resolved()] == [
                    _concept_item_core(i) for i in items]:
                return full
        raise CohortDefinitionError(f"concept set {cs.name!r} cannot be written in the cohort language")

    def _set_forms(self, items: list[m.ConceptSetItem]) -> list[dict[str, Any]]:
        forms: list[dict[str, Any]] = []
        flags = {(i.include_descendants, i.include_mapped) for i in items}
        common = next(iter(flags)) if len(flags) == 1 else (False, False)
        head: dict[str, Any] = {}
        if common[0]:
            head["descendants"] = True
        if common[1]:
            head["mapped"] = True
        if len(flags) == 1 and not any(i.is_excluded for i in items):
            for kind, group in CATALOG.items():
                names = []
                for i in items:
                    key = next((k for k, c in group.items() if c.concept_id == i.concept.concept_id
                                and c.name == i.concept.concept_name), None)
                    if key is None:
                        break
                    names.append(key)
                else:
                    forms.append({kind: names, **head})
        entries: list[Any] = []
        for i in items:
            own = {}
            if (i.include_descendants, i.include_mapped) != common:
                own = {"descendants": i.include_descendants, "mapped": i.include_mapped}
            if i.is_excluded:
                own["exclude"] = True
            if i.concept.concept_name is None and not own:
                entries.append(i.concept.concept_id)
            else:
                e: dict[str, Any] = {"id": i.concept.concept_id}
                if i.concept.concept_name is not None:
                    e["name"] = i.concept.concept_name
                entries.append({**e, **own})
        forms.append({"include": entries, **head})
        return forms

    def event(self, c: m.Criteria, correlated: m.CorrelatedCriteria | None = None) -> dict[str, Any]:
        body = c.body
        cls = type(body)
        word = _WORD_OF[c.domain]
        codeset = getattr(body, "codeset_id", None)
        out: dict[str, Any] = {word: self.keys.get(codeset, codeset) if codeset is not None else None}
        filters: dict[str, Any] = {}
        for name in cls.model_fields:
            if name in ("codeset_id", "correlated_criteria"):
                continue
            v = getattr(body, name)
            if v == _default_of(cls, name):
                continue
            word_form = self._sugar(name, v, c.domain)
            if word_form is not None:
                out.update(word_form)
            else:
                filters[name] = _dump(v)
        if filters:
            out["filters"] = filters
        if body.correlated_criteria is not None:
            out["where"] = self.rule(body.correlated_criteria)
        if correlated is not None:
            cc = correlated
            default_start = m.Window.model_validate({"start": {"days": None, "coeff": -1},
                                                     "end": {"days": None, "coeff": 1}})
            if cc.start_window != default_start:
                out["between"] = self.window(cc.start_window)
            if cc.end_window is not None:
                out["ends_between"] = self.window(cc.end_window)
            if cc.restrict_visit:
                out["same_visit"] = True
            if cc.ignore_observation_period:
                out["ignore_observation_period"] = True
            o = cc.occurrence
            if not (o.type == "at_least" and o.count == 1 and not o.is_distinct and o.count_column is None):
                out[o.type] = o.count
            if o.is_distinct:
                out["distinct"] = _DISTINCT_WORD[o.count_column] if o.count_column else True
            elif o.count_column is not None:
                raise CohortDefinitionError("a count column without distinct cannot be written in the "
                                            "cohort language")
        return out

    def _sugar(self, name: str, v: Any, domain: str) -> dict[str, Any] | None:
        if name == "first" and v is True:
            return {"first": True}
        if name == "age" and isinstance(v, m.NumericRange):
            return {"age": _range_words(v)}
        if name == "value_as_number" and isinstance(v, m.NumericRange):
            return {"value": _range_words(v)}
        groups = {"gender": ("sex", catalog.GENDER), "unit": ("unit", catalog.UNITS)}
        if domain != "visit_occurrence":
            groups["visit_type"] = ("in_visit", catalog.VISITS)
        if name in groups and isinstance(v, list) and v:
            word, group = groups[name]
            names = []
            for cpt in v:
                key = next((k for k, g in group.items() if g.concept_id == cpt.concept_id
                            and g.name == cpt.concept_name), None)
                if key is None:  # ATLAS's display fields (code, vocabulary) are not kept, as in concept sets
                    return None
                names.append(key)
            return {word: names[0] if len(names) == 1 else names}
        return None

    def window(self, w: m.Window) -> Any:
        pair = [_bound_text((w.start.days, w.start.coeff)), _bound_text((w.end.days, w.end.coeff))]
        if w.use_index_end is None and w.use_event_end is None:
            return pair
        d: dict[str, Any] = {"start": pair[0], "end": pair[1]}
        if w.use_index_end is not None:
            d["index_end"] = w.use_index_end
        if w.use_event_end is not None:
            d["event_end"] = w.use_event_end
        return d

    def demographic(self, dc: m.DemographicCriteria) -> dict[str, Any]:
        out: dict[str, Any] = {}
        filters: dict[str, Any] = {}
        for name in m.DemographicCriteria.model_fields:
            v = getattr(dc, name)
            if v is None:
                continue
            s = self._sugar(name, v, "")
            if s is not None and name in ("age", "gender"):
                out.update(s)
            else:
                filters[name] = _dump(v)
        if filters:
            out["filters"] = filters
        return out

    def items(self, g: m.CriteriaGroup) -> list[Any]:
        return ([self.event(cc.criteria, cc) for cc in g.criteria_list]
                + [self.demographic(dc) for dc in g.demographic_criteria_list]
                + [self.group(sub) for sub in g.groups])

    def group(self, g: m.CriteriaGroup) -> dict[str, Any]:
        items = self.items(g)
        if g.type in ("ALL", "ANY"):
            d: dict[str, Any] = {g.type.lower(): items}
            if g.count is not None:
                d["count"] = g.count
            return d
        return {g.type.lower(): g.count, "of": items}

    def rule(self, g: m.CriteriaGroup) -> Any:
        """A group as require:/where: write it: a list (all of) where that reads back the same."""
        only_group = not g.criteria_list and not g.demographic_criteria_list and len(g.groups) == 1
        if g.type == "ALL" and g.count is None and not only_group and not g.is_empty():
            items = self.items(g)
            return items[0] if len(items) == 1 else items
        return self.group(g)

    def inclusion_rule(self, r: m.InclusionRule) -> dict[str, Any]:
        out: dict[str, Any] = {"name": r.name}
        if r.description is not None:
            out["description"] = r.description
        g = r.expression
        if (g.type == "ALL" and g.count is None and len(g.criteria_list) == 1 and not g.demographic_criteria_list
                and not g.groups):
            cc = g.criteria_list[0]
            o = cc.occurrence
            if o.type == "exactly" and o.count == 0 and not o.is_distinct and o.count_column is None:
                ev = self.event(cc.criteria, cc)
                ev.pop("exactly", None)
                out["exclude"] = ev
                return out
        out["require"] = self.rule(g)
        return out

    def cohort(self, d: m.CohortDefinition) -> dict[str, Any]:
        x = d.expression
        out: dict[str, Any] = {"name": d.name}
        if d.description is not None:
            out["description"] = d.description
        if x.title is not None:
            out["title"] = x.title
        if x.cdm_version_range is not None:
            out["cdm_version_range"] = x.cdm_version_range
        if x.concept_sets:
            out["concepts"] = {self.keys[cs.id]: self.concept_set(cs, pos) for pos, cs in enumerate(x.concept_sets)}
        out["entry"] = [self.event(c) for c in x.primary_criteria.criteria_list]
        ow = x.primary_criteria.observation_window
        if ow.prior_days or ow.post_days:
            out["observation"] = {k: v for k, v in (("prior_days", ow.prior_days), ("post_days", ow.post_days)) if v}
        limits = [x.primary_criteria.primary_limit.type.lower(), x.qualified_limit.type.lower(),
                  x.expression_limit.type.lower()]
        if limits != ["first"] * 3:
            if len(set(limits)) == 1:
                out["keep"] = limits[0]
            else:
                out["keep"] = {k: v for k, v in zip(("entry", "qualifying", "final"), limits, strict=True)
                               if v != "first"}
        if x.additional_criteria is not None:
            out["where"] = self.rule(x.additional_criteria)
        if x.inclusion_rules:
            out["inclusion_rules"] = [self.inclusion_rule(r) for r in x.inclusion_rules]
        es = x.end_strategy
        if es is not None and es.custom_era is not None:
            ce = es.custom_era
            b: dict[str, Any] = {"drug": self.keys.get(ce.drug_codeset_id, ce.drug_codeset_id)}
            if ce.gap_days:
                b["gap_days"] = ce.gap_days
            if ce.offset:
                b["offset"] = ce.offset
            if ce.days_supply_override is not None:
                b["days_supply"] = ce.days_supply_override
            out["exit"] = {"end_of_exposure": b}
        elif es is not None and es.date_offset is not None:
            out["exit"] = {"after": {"days": es.date_offset.offset,
                                     "relative_to": "start" if es.date_offset.date_field == "StartDate" else "end"}}
        if x.censoring_criteria:
            out["censor"] = [self.event(c) for c in x.censoring_criteria]
        if x.censor_window.start_date or x.censor_window.end_date:
            out["study_period"] = {k: v for k, v in (("start", x.censor_window.start_date),
                                                     ("end", x.censor_window.end_date)) if v}
        if x.collapse_settings.era_pad:
            out["collapse"] = {"gap_days": x.collapse_settings.era_pad}
        return out


def _concept_item_core(i: m.ConceptSetItem) -> dict[str, Any]:
    # The language keeps a concept's id and name; ATLAS's other display fields (code, vocabulary...)
    # do not change which rows match, so they are not written.
    d = i.model_dump()
    d["concept"] = {k: (v if k in ("concept_id", "concept_name") else None) for k, v in d["concept"].items()}
    return d


def _core(d: m.CohortDefinition) -> Any:
    """The definition without concepts' display fields (what the YAML form keeps)."""
    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            if "concept_id" in v and "concept_name" in v and "vocabulary_id" in v:
                return {"concept_id": v["concept_id"], "concept_name": v["concept_name"]}
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(d.model_dump(mode="json"))


def definition_to_dict(d: m.CohortDefinition, *, check: bool = True) -> dict[str, Any]:
    """Any definition in the YAML form's structure. With `check`, it is read back and compared:
    what the language cannot say exactly is an error, never a silent change."""
    if isinstance(d, Cohort):
        d = d.build()
    out = _Writer(d.expression).cohort(d)
    if check:
        back = from_dict(out)
        if _core(back) != _core(d):
            raise CohortDefinitionError(
                f"cohort {d.name!r} cannot be written exactly in the cohort language; keep it as Circe JSON")
    return out


class _YamlDumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, s: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_YamlDumper.add_representer(str, _str_presenter)


def to_yaml(d: m.CohortDefinition | Cohort) -> str:
    """The definition in the YAML form (readable, and reads back to an equal model)."""
    if isinstance(d, Cohort):
        d = d.build()
    return yaml.dump(definition_to_dict(d), Dumper=_YamlDumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=None, width=110)

