"""The cohorts page's two ways in: a pasted or uploaded definition, and the criteria builder's form.

    definition, form = read_pasted(text)          # Mercia YAML or ATLAS/Circe JSON, by its first character
    definition = build_from_form(fields)           # the builder's fields, through the cohort language's builder
    text, problem = yaml_view(definition)          # the YAML form, or why the language cannot say it exactly

Both give the one cohort model (`mercia.cohorts.model.CohortDefinition`) by the readers the CLI uses
(`mercia.cohorts.loader`) and the Python form of the cohort language (`mercia.cohorts.builder`): the
builder never pastes text together. Anything wrong is a CohortDefinitionError naming the field.
"""

from __future__ import annotations

import re
from typing import Any

from mercia.cohorts import dsl
from mercia.cohorts.loader import definition_from_text
from mercia.cohorts.model import CohortDefinition
from mercia.errors import CohortDefinitionError

MAX_TEXT = 500_000  # characters of a pasted definition (a large ATLAS export is ~100 kB)
CRITERIA_ROWS = 3  # inclusion criteria rows the builder's form offers
DOMAINS = {"condition": dsl.condition, "drug": dsl.drug, "procedure": dsl.procedure,
           "measurement": dsl.measurement, "observation": dsl.observation, "visit": dsl.visit}
_IDS = re.compile(r"[\s,;]+")


def read_pasted(text: str) -> tuple[CohortDefinition, str]:
    """A pasted or uploaded definition and its form ("json" or "yaml"): JSON when it starts with `{`."""
    if len(text) > MAX_TEXT:
        raise CohortDefinitionError(f"definition: {len(text)} characters is too long (at most {MAX_TEXT})")
    form = "json" if text.lstrip().startswith(("{", "[")) else "yaml"
    return definition_from_text(text, form), form


def yaml_view(definition: CohortDefinition) -> tuple[str | None, str | None]:
    """The definition in the cohort language's YAML, or (None, why) when the language cannot say it
    exactly (some ATLAS definitions); it can still be counted as it is."""
    try:
        return dsl.to_yaml(definition), None
    except CohortDefinitionError as e:
        return None, str(e)


# ---- the criteria builder ----------------------------------------------------------------------------
def _one(fields: dict[str, list[str]], name: str) -> str:
    return (fields.get(name) or [""])[0].strip()


def _ids(fields: dict[str, list[str]], name: str, label: str) -> list[int]:
    raw = _one(fields, name)
    words = [w for w in _IDS.split(raw) if w]
    if not words:
        raise CohortDefinitionError(f"{label}: give one or more concept ids (whole numbers, comma-separated)")
    out = []
    for w in words:
        if not w.isdigit() or not 0 < int(w) <= 2_147_483_647:
            raise CohortDefinitionError(f"{label}: {w!r} is not a concept id (whole numbers, comma-separated)")
        out.append(int(w))
    return out


def _int(fields: dict[str, list[str]], name: str, label: str, *, default: int | None = None,
         low: int = 0, high: int = 36_500) -> int | None:
    raw = _one(fields, name)
    if not raw:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise CohortDefinitionError(f"{label}: {raw!r} is not a whole number ({low} to {high})") from None
    if not low <= v <= high:
        raise CohortDefinitionError(f"{label}: {v} is out of range ({low} to {high})")
    return v


def _domain(fields: dict[str, list[str]], name: str, label: str) -> Any:
    value = _one(fields, name)
    if value not in DOMAINS:
        raise CohortDefinitionError(f"{label}: {value!r} is not a domain; use one of {', '.join(DOMAINS)}")
    return DOMAINS[value]


def build_from_form(fields: dict[str, list[str]]) -> CohortDefinition:
    """The builder's cohort: entry events of a concept set (with descendants), age at entry, observation
    before and after, inclusion criteria "has / has not concept X in [a, b] days, at least n times", exit
    at the end of observation or a fixed number of days after entry, and censoring (leaving early) at
    death or at the first record of a concept set after entry."""
    name = _one(fields, "b_name") or "Portal cohort"
    entry_set = dsl.concepts("entry concepts", *_ids(fields, "b_entry_concepts", "entry concepts"),
                             descendants=_one(fields, "b_entry_descendants") == "1")
    event = _domain(fields, "b_entry_domain", "entry domain")(entry_set)
    if _one(fields, "b_entry_first") == "1":
        event = event.first()
    c = dsl.cohort(name).entry(event)
    prior = _int(fields, "b_prior_days", "observation before entry (days)", default=0)
    post = _int(fields, "b_post_days", "observation after entry (days)", default=0)
    if prior or post:
        c = c.require_observation(prior_days=prior or 0, post_days=post or 0)
    age_min = _int(fields, "b_age_min", "minimum age at entry", high=150)
    age_max = _int(fields, "b_age_max", "maximum age at entry", high=150)
    if age_min is not None and age_max is not None and age_min > age_max:
        raise CohortDefinitionError(f"age at entry: the minimum {age_min} is above the maximum {age_max}")
    if age_min is not None or age_max is not None:
        c = c.require_age(min=age_min, max=age_max, name="age at entry")
    for i in range(1, CRITERIA_ROWS + 1):
        mode = _one(fields, f"c{i}_mode")
        if not mode:
            continue
        label = f"criterion {i}"
        if mode not in ("has", "has_not"):
            raise CohortDefinitionError(f"{label}: {mode!r} is not a choice; use has or has_not")
        cs = dsl.concepts(f"criterion {i} concepts", *_ids(fields, f"c{i}_concepts", f"{label} concepts"),
                          descendants=_one(fields, f"c{i}_descendants") == "1")
        start = _int(fields, f"c{i}_start", f"{label} window start (days, negative: before entry)",
                     low=-36_500, high=36_500)
        end = _int(fields, f"c{i}_end", f"{label} window end (days, negative: before entry)", low=-36_500,
                   high=36_500)
        if start is not None and end is not None and start > end:
            raise CohortDefinitionError(f"{label} window: its start {start} is after its end {end}")
        domain = _one(fields, f"c{i}_domain")
        crit = _domain(fields, f"c{i}_domain", f"{label} domain")(cs).between(start, end)
        where = (f"{domain} {_one(fields, f'c{i}_concepts')} from day {'-inf' if start is None else start} "
                 f"to day {'+inf' if end is None else end}")
        if mode == "has":
            n = _int(fields, f"c{i}_min", f"{label} at least (times)", default=1, low=1, high=10_000) or 1
            c = c.require(crit.at_least(n), name=f"{label}: has {where}" + (f", at least {n} times" if n > 1 else ""))
        else:
            c = c.exclude(crit, name=f"{label}: has no {where}")
    censor = _one(fields, "x_mode")
    if censor == "death":
        c = c.censor_at(dsl.death())
    elif censor == "event":
        cs = dsl.concepts("censoring concepts", *_ids(fields, "x_concepts", "censoring concepts"),
                          descendants=_one(fields, "x_descendants") == "1")
        c = c.censor_at(_domain(fields, "x_domain", "censoring domain")(cs))
    elif censor:
        raise CohortDefinitionError(f"censoring: {censor!r} is not a choice; use death or event")
    exit_ = _one(fields, "b_exit") or "observation"
    if exit_ == "days":
        days = _int(fields, "b_exit_days", "exit after (days)", high=36_500)
        if days is None:
            raise CohortDefinitionError("exit after (days): give the number of days after entry")
        c = c.exit_after(days=days)
    elif exit_ != "observation":
        raise CohortDefinitionError(f"exit: {exit_!r} is not a choice; use observation or days")
    return c.build()
