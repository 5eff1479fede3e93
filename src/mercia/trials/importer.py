"""A ClinicalTrials.gov study record to a draft ``trial.yaml``.

Structured fields become criteria directly (minimumAge/maximumAge, sex). The free text is split into
items (``criteria_text``); each item's concepts come from the CDM's vocabulary (``concept_match``), its
thresholds and windows from rules, and it gets a status: ``mapped`` when every part of it was read
(concepts found by name or synonym, a threshold on a measurement with a known unit, at most two words
left unexplained), ``not_computable`` when it asks what no record holds (consent, willingness,
pregnancy tests at screening), and ``needs_review`` otherwise, with a note saying what is missing and,
where one could be built, the suggested rule beside it. Nothing here fails on an unknown concept: such
an item is flagged in the draft.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from mercia.cdm import Cdm
from mercia.trials.concept_match import ConceptGroup, PhraseLookup, Suggestion, normalise, phrases_of, suggest
from mercia.trials.criteria_text import ParsedItem, TextItem, Threshold, blank, parse_item, split_criteria
from mercia.trials.ctgov import StudyRecord
from mercia.trials.model import Criterion, Trial

# Units as criteria_text normalises them -> the catalog's unit names (mercia.vocab.catalog.UNITS).
UNIT_NAMES = {"%": "percent", "mmol/mol": "mmol_per_mol", "mL/min/1.73m2": "ml_min_173m2", "kg/m2": "kg_m2",
              "mmHg": "mmhg", "mmol/L": "mmol_per_l", "umol/L": "umol_per_l"}
_EVENT = {"Condition": "condition", "Drug": "drug", "Procedure": "procedure", "Measurement": "measurement",
          "Observation": "observation", "Device": "device"}
DEFAULT_LOOKBACK = {"Measurement": 365, "Drug_current": 90}  # days, when the text gives no window
MAX_LEFTOVER = 2
_ALTERNATIVES = re.compile(r"\b(?:at\s+least\s+(?:one|two|three|\d)|one\s+or\s+more|any|either)\s+of\b", re.I)
_REPEATED = re.compile(r"\b(?:consecutive|repeated|on\s+(?:two|2|three|3)\s+(?:separate\s+)?occasions)\b", re.I)
# A stage, class or grade the concept does not carry ("NYHA class IV", "stage 3 CKD")
_QUALIFIER = re.compile(r"\b(?:stage|class|grade|nyha|new\s+york\s+heart\s+association)\b", re.I)


@dataclass
class _Draft:
    concepts: dict[str, Any]
    names: set[str]

    def concept_key(self, g: ConceptGroup) -> str:
        ids = [cid for cid, _ in g.concepts]
        for k, v in self.concepts.items():
            if v["include"] == ids:
                return k
        base = re.sub(r"[^a-z0-9]+", "_", g.phrase.lower()).strip("_")[:40].strip("_") or "concepts"
        key, n = base, 2
        while key in self.concepts:
            key, n = f"{base}_{n}", n + 1
        label = g.concepts[0][1] if len(g.concepts) == 1 else g.phrase
        self.concepts[key] = {"name": label, "include": ids, "descendants": g.domain != "Measurement"}
        return key

    def unique(self, name: str) -> str:
        out, n = name, 2
        while out in self.names:
            out, n = f"{name} ({n})", n + 1
        self.names.add(out)
        return out


def _name(text: str) -> str:
    t = re.sub(r"\s*\([^()]*\)", "", text.strip())
    t = re.split(r"[;:]|\.\s", t)[0].strip().rstrip(".,")
    t = " ".join(t.split())
    if len(t) > 70:
        t = t[:70].rsplit(" ", 1)[0] + " ..."
    return t or "criterion"


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


def _age_rule(t: Threshold) -> dict[str, Any]:
    return {"age": {k: _num(v) for k, v in t.as_range().items()}}


def _window(days: int | None) -> list[str]:
    return [f"{days} days before" if days is not None else "all days before", "0 days after"]


def _event(draft: _Draft, g: ConceptGroup, p: ParsedItem, thresholds: list[Threshold]) -> list[dict[str, Any]]:
    ev: dict[str, Any] = {_EVENT[g.domain]: draft.concept_key(g)}
    days = p.window_days
    if days is None and g.domain == "Measurement":
        days = DEFAULT_LOOKBACK["Measurement"]
    if days is None and g.domain == "Drug" and p.current and not p.ever:
        days = DEFAULT_LOOKBACK["Drug_current"]
    if p.duration_days is not None and p.window_days is None and g.domain != "Measurement":
        # "diagnosed at least 3 months before": a record that long ago (a drug: taken over that period)
        ev["between"] = ([f"{p.duration_days} days before", "0 days after"] if g.domain == "Drug"
                         else ["all days before", f"{p.duration_days} days before"])
    else:
        ev["between"] = _window(days)
    if p.count:
        ev["at_least"] = p.count
    if g.domain != "Measurement" or not thresholds:
        return [ev]
    out = []
    for t in thresholds:
        e = dict(ev)
        e["value"] = t.as_range()
        if t.unit in UNIT_NAMES:
            e["unit"] = UNIT_NAMES[t.unit]
        out.append(e)
    return out


def _qualified(groups: list[ConceptGroup], text: str) -> list[ConceptGroup]:
    """Without the conditions that only say what a procedure or drug was for ("ablation of atrial
    fibrillation", "metformin for diabetes"): they are no criterion of their own."""
    norm = normalise(text)
    out = []
    for g in groups:
        if g.domain == "Condition" and any(
                re.search(re.escape(h.phrase) + r"\s+(?:of|for)\s+(?:the\s+|their\s+)?" + re.escape(g.phrase), norm)
                for h in groups if h.domain in ("Procedure", "Drug")):
            continue
        out.append(g)
    return out


def criterion_from_text(cdm: Cdm, draft: _Draft, item: TextItem, lookup: PhraseLookup | None = None) -> Criterion:
    """One free-text item as a criterion (mapped, needs_review or not_computable)."""
    text = item.full_text
    p = parse_item(item.text)
    if item.parent:  # a sub-item: its own words, the parent's window and negation ("no history of: ...")
        pp = parse_item(item.parent)
        p = replace(p, negated=p.negated or pp.negated, ever=p.ever or pp.ever,
                    window_days=p.window_days if p.window_days is not None else pp.window_days)
    typ = item.section
    if p.negated:
        typ = "exclusion" if typ == "inclusion" else "inclusion"
    name = draft.unique(_name(item.text if not p.negated else text))
    source = " ".join(text.split())
    alternative = typ == "inclusion" and bool(_ALTERNATIVES.search(item.parent or "") or (
        _ALTERNATIVES.search(item.text) and re.search(r",?\s\bor\b", item.text)))
    one_of = "one of several alternatives: put the mapped ones under one criterion with any:"
    if p.is_age:
        t = next(x for x in p.thresholds if x.unit in (None, "years"))
        rule = _age_rule(t)
        female = re.search(r"\b(?:women|woman|females?|girls?)\b", item.text, re.I)
        male = re.search(r"\b(?:men|man|males?|boys?)\b", item.text, re.I)
        if bool(female) != bool(male):  # "Women aged 40 to 75": the sex too ("Male or female": neither)
            rule["sex"] = "female" if female else "male"
        return Criterion(name, typ, rule, "needs_review" if alternative else "mapped", source,
                         one_of if alternative else None)
    if p.not_computable:
        return Criterion(name, typ, None, "not_computable", source,
                         f"no CDM records this ({p.not_computable!r}); check it at screening")
    prefer = "Measurement" if p.thresholds else ("Drug" if p.current else None)
    s: Suggestion = suggest(cdm, blank(item.text, p.spans), prefer=prefer, lookup=lookup)
    problems: list[str] = []
    if not s.groups:
        what = " ".join(s.leftover) or source
        return Criterion(name, typ, None, "needs_review", source,
                         f"no concept in the vocabulary matches {what!r}; pick one with `mercia concept search`")
    meas = [g for g in s.groups if g.domain == "Measurement"]
    thresholds = [t for t in p.thresholds if t.unit != "years"]
    if thresholds and not meas:
        problems.append("a numeric threshold with no measurement concept to apply it to")
    if len(meas) > 1 and thresholds:
        problems.append("several measurements and a threshold: say which it applies to")
    for t in thresholds:
        if t.unit and t.unit not in UNIT_NAMES:
            problems.append(f"unit {t.unit!r} is not a catalog unit; give its concept id under unit:")
    # one threshold per unit (e.g. HbA1c in % and in mmol/mol): any of them
    if thresholds and meas:
        units = {t.unit for t in thresholds}
        if len(units) < len(thresholds):
            thresholds = thresholds[:1]
    weak = [g.phrase for g in s.groups if g.match == "prefix" and g.domain not in ("Measurement",)
            and len(g.phrase.split()) < 2]
    if weak:
        problems.append(f"weak match for {', '.join(weak)!r}")
    if alternative:
        problems.append(one_of)
    exception = re.search(r"\b(?:other\s+than|except(?:\s+for)?|with\s+the\s+exception\s+of|excluding|unless)\b",
                          source, re.I)
    if exception:
        problems.append(f"an exception ({exception.group(0)!r}) the draft does not express")
    rep = _REPEATED.search(item.text)
    if rep:
        problems.append(f"{rep.group(0)!r}: repeated readings, which the draft does not express")
    q = _QUALIFIER.search(item.text)
    if q:
        problems.append(f"{q.group(0)!r}: a stage, class or grade no concept here carries")
    if p.duration_days is not None and not p.duration_anchored and any(g.domain == "Drug" for g in s.groups):
        problems.append("a length of treatment ('for more than N months'), which the draft does not express")
    if s.missing_classes:
        problems.append(f"no ingredient of {', '.join(s.missing_classes)!r} in this vocabulary")
    # a list ("A, B or C") maps only if each of its members does; other text may keep a word or two
    leftover = list(s.leftover)
    read = blank(item.text, p.spans)  # the text less its thresholds, windows and counts ("two or more")
    outside = re.sub(r"\([^()]*\)", " ", read)
    listed = bool(re.search(r"\bor\b", read, re.I))
    if listed and not re.search(r"\bor\b", outside, re.I):
        # "Coronary revascularization (PCI or CABG)": the list is in brackets, the words before name it
        named = set(normalise(outside).split())
        leftover = [w for w in leftover if w not in named]
    if len(leftover) > (0 if listed else MAX_LEFTOVER):
        problems.append(f"words not mapped: {' '.join(s.leftover)!r}")
    groups = _qualified(list(s.groups), item.text)
    any_of = typ == "exclusion" or bool(re.search(r"\bor\b|/", source, re.I))
    if any_of:  # concepts of one domain become one concept set
        merged: dict[str, ConceptGroup] = {}
        for g in groups:
            if g.domain in merged:
                m = merged[g.domain]
                ids = dict(m.concepts) | dict(g.concepts)
                merged[g.domain] = ConceptGroup(f"{m.phrase} or {g.phrase}", g.domain, tuple(sorted(ids.items())),
                                                "exact" if "exact" in (m.match, g.match) else m.match)
            else:
                merged[g.domain] = g
        groups = list(merged.values())
    events: list[dict[str, Any]] = []
    for g in groups:
        ev = _event(draft, g, p, thresholds if g.domain == "Measurement" else [])
        events.append(ev[0] if len(ev) == 1 else {"any": ev})
    if len(events) == 1:
        rule: Any = events[0]
    elif typ == "exclusion":
        rule = events  # none of them
    else:
        rule = {"any": events} if any_of else events
    found = "; ".join(f"{g.domain} {g.phrase!r} -> " + ", ".join(f"{cid} {n}" for cid, n in g.concepts[:5])
                      + (" ..." if len(g.concepts) > 5 else "") for g in s.groups)
    if problems:
        return Criterion(name, typ, rule, "needs_review", source, "; ".join(problems) + f". Found: {found}")
    return Criterion(name, typ, rule, "mapped", source, f"found: {found}")


def _intervention_suggestions(draft: _Draft, record: StudyRecord, lookup: PhraseLookup,
                              criteria: list[Criterion]) -> list[Criterion]:
    """For each drug the trial gives (armsInterventionsModule) that the vocabulary names and no criterion
    mentions: a suggested exclusion of its recent users, for review (not applied until confirmed)."""
    out = []
    used = {cid for c in criteria for k in _drug_keys(c.rule) for cid in draft.concepts.get(k, {}).get("include", [])}
    for iv in record.interventions:
        if iv.type not in ("DRUG", "BIOLOGICAL"):
            continue
        name = iv.name.strip().lower()
        hits = [h for h in lookup([name]) if h.match == "exact" and h.domain_id == "Drug"
                and h.concept_class_id == "Ingredient"]
        if not hits or hits[0].concept_id in used:
            continue
        h = hits[0]
        used.add(h.concept_id)
        key = draft.concept_key(ConceptGroup(name, "Drug", ((h.concept_id, h.concept_name),), "exact"))
        out.append(Criterion(draft.unique(f"{h.concept_name} in the year before"), "exclusion",
                             {"drug": key, "between": ["365 days before", "0 days after"]}, "needs_review",
                             f"armsInterventionsModule: {iv.type} {iv.name}",
                             "suggested from the trial's interventions, not from its criteria: trials of a drug "
                             "often exclude its recent users; confirm (and the window) or delete"))
    return out


def _drug_keys(rule: Any) -> list[str]:
    if isinstance(rule, dict):
        return ([rule["drug"]] if isinstance(rule.get("drug"), str) else []) + [
            k for v in rule.values() for k in _drug_keys(v)]
    if isinstance(rule, list):
        return [k for v in rule for k in _drug_keys(v)]
    return []


def draft_trial(cdm: Cdm, record: StudyRecord) -> Trial:
    """The draft trial for a study record, its concepts looked up in `cdm`'s vocabulary."""
    draft = _Draft({}, set())
    criteria: list[Criterion] = []
    lo, hi = record.minimum_age_years, record.maximum_age_years
    if lo is not None or hi is not None:
        rng: dict[str, Any] = {}
        if lo is not None:
            rng["min"] = _num(round(lo, 2))
        if hi is not None:
            rng["max"] = _num(round(hi, 2))
        label = (f"aged {rng['min']} to {rng['max']}" if lo is not None and hi is not None
                 else f"aged {rng['min']} or over" if lo is not None else f"aged {rng['max']} or under")
        src = ", ".join(f"{k}: {v}" for k, v in (("minimumAge", record.minimum_age),
                                                   ("maximumAge", record.maximum_age)) if v)
        criteria.append(Criterion(draft.unique(label), "inclusion", {"age": rng}, "mapped", src))
    if record.sex in ("FEMALE", "MALE"):
        criteria.append(Criterion(draft.unique(record.sex.lower()), "inclusion", {"sex": record.sex.lower()},
                                  "mapped", f"sex: {record.sex}"))
    items = split_criteria(record.eligibility_text)
    lookup = PhraseLookup(cdm)  # every phrase of the record in one query
    texts = [*record.conditions, *(blank(i.text, parse_item(i.text).spans) for i in items)]
    lookup.prefetch([p for t in texts for p in phrases_of(t)] + [i.name.strip().lower() for i in record.interventions])
    index: dict[str, Any] = {}
    for cond in record.conditions:
        s = suggest(cdm, cond, prefer="Condition", lookup=lookup)
        g = next((g for g in s.groups if g.domain == "Condition"), None)
        if g is not None:
            index = {"entry": [{"condition": draft.concept_key(g), "first": True}]}
            break
    for item in items:
        criteria.append(criterion_from_text(cdm, draft, item, lookup))
    criteria += _intervention_suggestions(draft, record, lookup, criteria)
    if not criteria:
        criteria.append(Criterion("eligibility text", "inclusion", None, "needs_review", None,
                                  "the record has no eligibility criteria; write them here"))
    desc = f"Draft from ClinicalTrials.gov {record.nct_id}"
    if record.healthy_volunteers:
        desc += " (accepts healthy volunteers)"
    return Trial(name=record.brief_title, title=record.title, criteria=tuple(criteria), concepts=draft.concepts, index=index,
                 registry_id=record.nct_id, description=desc)


def import_record(path: str, cdm: Cdm | None = None) -> Trial:
    """Read a study record file and draft its trial; without `cdm`, against Mercia's bundled vocabulary."""
    from mercia.trials.ctgov import read_record

    record = read_record(path)
    if cdm is not None:
        return draft_trial(cdm, record)
    from mercia.vocab.athena import load_bundled_vocabulary

    with Cdm.open() as mem:  # an in-memory DuckDB holding only the bundled vocabulary
        load_bundled_vocabulary(mem)
        return draft_trial(mem, record)


def summary(trial: Trial) -> dict[str, int]:
    """Criteria per status."""
    out = {"mapped": 0, "needs_review": 0, "not_computable": 0}
    for c in trial.criteria:
        out[c.status] += 1
    return out
