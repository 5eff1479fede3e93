"""Candidates for a trial inside one site: who is eligible, which criteria each meets, what data is missing.

This is row-level by nature (person_source_value, age, index date), so it never leaves the site: the
node serves it only to its `clinician` role on its own network (federation/node/trial_lookup.py), and
nothing here is released through `mercia.disclosure` because nothing here is released at all.

**Met, not met, missing data.** Each criterion (an inclusion rule of the trial's cohort) is, for a
person's index event, met, not met, or *missing data*: the person has no record in what the criterion
reads within its window, so the data cannot decide it. What a criterion reads: for a measurement or
observation, records of its concept set (no eGFR measured in the window: the eGFR threshold is
missing data, not failed); for conditions, drugs, procedures, devices, visits, specimens and eras,
any record of that table (no condition recorded at all before index: "no heart failure" cannot be
decided). Demographics, deaths, observation and payer periods are always known.

A criterion is a group of such pieces (all of, any of, at least / at most n of, nested), so its value
is decided as Kleene's three-valued logic decides it: each unknowable piece C, with P "a record of
what C reads in C's window", is bounded below by `C and P` and above by `C or not P`; a group takes the
same bound of its children (the opposite one under "at most n of", which turns its children's truth
round). The criterion is met where its lower bound holds, not met where its upper bound fails, and
missing data in between. The two bounds are inclusion rules of one derived cohort definition (a
criterion with nothing unknowable keeps one rule), compiled by the cohort compiler like any other, so
every event gets one inclusion-rule mask (bit i: rule i met; `cohorts.stats.rules_met` reads it).

**Who is listed.** A person whose best index event fails no criterion (every upper bound met): those
meeting every criterion, and those whose only open questions are missing data. The best event is
the one with the most rules met (the fewest missing), then the definition's final limit (first or
last) and its event number; persons are listed with the fewest missing criteria first, then by
person_source_value. The cohort's exit (end strategy, censoring, study period) changes no one's
eligibility, so it is not applied.
"""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cohorts import model as m
from mercia.cohorts.compiler import bound, col, compile_cohort, cte_table, eq, lit, row_number, select
from mercia.cohorts.stats import rules_met
from mercia.errors import CohortDefinitionError, MerciaError
from mercia.trials.source import TrialEligibility

# Tables whose absence of records within a window is missing data (see the module docstring), and
# those where the criterion's own concept set is what it reads.
DATA_DOMAINS = frozenset({
    "condition_occurrence", "condition_era", "drug_exposure", "drug_era", "dose_era", "procedure_occurrence",
    "device_exposure", "measurement", "observation", "specimen", "visit_occurrence", "visit_detail",
})
CONCEPT_READ_DOMAINS = frozenset({"measurement", "observation"})
MAX_MASK_BITS = 62  # the inclusion-rule mask is a 64-bit integer (cohorts.model)
_PERSON_PARAM = "candidate_person"


class UnknownPersonError(MerciaError):
    """No person with this person_source_value in the site's CDM (404 at the node)."""

    status_code = 404


@dataclass(frozen=True)
class Criterion:
    """One criterion of the trial, and what "missing data" means for it ("" if it cannot be missing)."""

    name: str
    missing_means: str


@dataclass(frozen=True)
class Candidate:
    person_source_value: str | None
    person_id: int
    age: int | None  # at the index event, as the cohort language's age criterion counts it (years)
    index_date: str  # ISO date of the index event the criteria were judged at
    meets: tuple[str, ...]
    missing: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"person_source_value": self.person_source_value, "person_id": self.person_id, "age": self.age,
                "index_date": self.index_date, "meets": list(self.meets), "missing": list(self.missing)}


@dataclass(frozen=True)
class CandidateList:
    trial: str  # the trial's file name, as it is addressed (TrialEligibility.ref)
    criteria: tuple[Criterion, ...]
    not_applied: tuple[str, ...]
    candidates: tuple[Candidate, ...] = field(default=())
    trial_name: str = ""  # its display name

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "trial_name": self.trial_name,
                "criteria": [{"name": c.name, "missing_means": c.missing_means} for c in self.criteria],
                "not_applied": list(self.not_applied), "persons": len(self.candidates),
                "candidates": [c.to_dict() for c in self.candidates]}


# ---- the three-valued bounds, as cohort definitions ------------------------------------------------
def _unknowable(cc: m.CorrelatedCriteria) -> bool:
    return cc.criteria.domain in DATA_DOMAINS


def _presence(cc: m.CorrelatedCriteria, occurrence: m.Occurrence) -> m.CorrelatedCriteria:
    """A record of what `cc` reads, in `cc`'s window (its filters, values and nested criteria dropped)."""
    domain, body = cc.criteria.domain, cc.criteria.body
    keep: dict[str, Any] = {}
    if domain in CONCEPT_READ_DOMAINS and getattr(body, "codeset_id", None) is not None:
        keep["codeset_id"] = body.codeset_id
    if getattr(body, "date_adjustment", None) is not None:
        keep["date_adjustment"] = body.date_adjustment
    return m.CorrelatedCriteria(
        criteria=m.Criteria(**{domain: type(body)(**keep)}), start_window=cc.start_window,
        end_window=cc.end_window, restrict_visit=cc.restrict_visit,
        ignore_observation_period=cc.ignore_observation_period, occurrence=occurrence)


def _bounded(cc: m.CorrelatedCriteria, upper: bool) -> m.CriteriaGroup | None:
    """`cc or not P` (upper) / `cc and P` (lower) as a group, or None where `cc` is its own bound."""
    if upper:
        return m.CriteriaGroup(type="ANY", criteria_list=[cc, _presence(cc, m.Occurrence(type="exactly", count=0))])
    if cc.occurrence.type == "at_least" and cc.occurrence.count >= 1:
        return None  # a record of it in the window is a record of what it reads: cc implies P
    return m.CriteriaGroup(type="ALL", criteria_list=[cc, _presence(cc, m.Occurrence(type="at_least", count=1))])


def _has_unknowable(g: m.CriteriaGroup) -> bool:
    return any(_unknowable(cc) for cc in g.criteria_list) or any(_has_unknowable(s) for s in g.groups)


def bound_group(g: m.CriteriaGroup, upper: bool) -> m.CriteriaGroup:
    """The Kleene upper or lower bound of a group (see the module docstring). An AT_MOST group's children
    get the opposite bound: more of them true makes it false."""
    child_upper = upper != (g.type == "AT_MOST")
    kept: list[m.CorrelatedCriteria] = []
    groups = [bound_group(s, child_upper) for s in g.groups]
    for cc in g.criteria_list:
        b = _bounded(cc, child_upper) if _unknowable(cc) else None
        if b is None:
            kept.append(cc)
        else:
            groups.append(b)
    return g.model_copy(update={"criteria_list": kept, "groups": groups})


@dataclass(frozen=True)
class _Plan:
    definition: m.CohortDefinition
    bits: tuple[tuple[int, int], ...]  # per criterion: (lower bound's rule, upper bound's rule)


def candidate_plan(trial: TrialEligibility) -> _Plan:
    """The derived definition whose rules are each criterion's bounds, and which rule is which."""
    rules: list[m.InclusionRule] = []
    bits: list[tuple[int, int]] = []
    for rule in trial.cohort.expression.inclusion_rules:
        if _has_unknowable(rule.expression):
            lower, upper = len(rules), len(rules) + 1
            rules += [rule.model_copy(update={"expression": bound_group(rule.expression, False)}),
                      rule.model_copy(update={"expression": bound_group(rule.expression, True)})]
            bits.append((lower, upper))
        else:
            bits.append((len(rules), len(rules)))
            rules.append(rule)
    if len(rules) > MAX_MASK_BITS:
        raise CohortDefinitionError(
            f"trial {trial.name!r}: its {len(bits)} criteria need {len(rules)} rules to tell missing data from "
            f"not met, more than {MAX_MASK_BITS}; split the trial's criteria into fewer, larger ones")
    expression = trial.cohort.expression.model_copy(update={"inclusion_rules": rules})
    return _Plan(trial.cohort.model_copy(update={"expression": expression}), tuple(bits))


def criteria_of(trial: TrialEligibility) -> tuple[Criterion, ...]:
    out = []
    for i, rule in enumerate(trial.cohort.expression.inclusion_rules):
        reads = _reads(rule.expression, {cs.id: cs.name for cs in trial.cohort.expression.concept_sets})
        out.append(Criterion(rule.name or f"criterion {i + 1}",
                             f"no {' or '.join(reads)} in its window" if reads else ""))
    return tuple(out)


def _reads(g: m.CriteriaGroup, names: dict[int, str]) -> list[str]:
    out: list[str] = []
    for cc in g.criteria_list:
        if not _unknowable(cc):
            continue
        domain, body = cc.criteria.domain, cc.criteria.body
        cs = getattr(body, "codeset_id", None)
        what = (f"{domain} '{names.get(cs, cs)}'" if domain in CONCEPT_READ_DOMAINS and cs is not None
                else f"{domain} record")
        if what not in out:
            out.append(what)
    for s in g.groups:
        out += [w for w in _reads(s, names) if w not in out]
    return out


# ---- the query ------------------------------------------------------------------------------------
def _final(plan: _Plan, cdm: Cdm, masked_events: str, person: bool) -> exp.Select:
    """person_source_value, person_id, age, index date and rule mask of each listed person's best event
    (one person's, with `person`), read from the pipeline's masked events."""
    upper = sum(1 << u for _, u in plan.bits)
    last = plan.definition.expression.expression_limit.type == "Last"
    mask = col(None, "inclusion_rule_mask")
    ranked = (select("person_id", "start_date", "inclusion_rule_mask", "rule_count",
                     row_number([col(None, "person_id")], [(col(None, "rule_count"), True), (col(None, "start_date"), last),
                                                           (col(None, "event_id"), False)]).as_("best", copy=False))
              .from_(cte_table(masked_events), copy=False)
              .where(eq(exp.paren(exp.BitwiseAnd(this=mask, expression=lit(upper)), copy=False), lit(upper)), copy=False))
    q = (select(col("P", "person_source_value"), col("P", "person_id"),
                exp.Sub(this=exp.Year(this=col("B", "start_date")), expression=col("P", "year_of_birth")).as_("age", copy=False),
                col("B", "start_date").as_("index_date", copy=False), col("B", "inclusion_rule_mask"))
         .from_(ranked.subquery("B", copy=False), copy=False)
         .join(cdm.table("person", "P"), on=eq(col("P", "person_id"), col("B", "person_id")), copy=False))
    where: exp.Expression = eq(col("B", "best"), lit(1))
    if person:
        where = exp.and_(where, eq(col("P", "person_source_value"), exp.Placeholder(this=_PERSON_PARAM)), copy=False)
    q = q.where(where, copy=False).order_by(
        exp.Ordered(this=col("B", "rule_count"), desc=True),
        exp.Ordered(this=col("P", "person_source_value"), nulls_first=False),
        exp.Ordered(this=col("P", "person_id")), copy=False)
    return q


def _rows(cdm: Cdm, plan: _Plan, person: str | None) -> list[tuple[Any, ...]]:
    """The listed persons' rows, read-only. Where the engine has temporary tables the pipeline's steps
    become temporary tables (connection-local, dropped after; PostgreSQL plans a long CTE chain badly),
    as feasibility counts do; elsewhere (Spark) one query over the CTEs."""
    try:
        compiled = compile_cohort(cdm, plan.definition.expression)
    except MerciaError:
        raise
    except Exception as e:  # a definition the model accepted but the compiler cannot take
        raise CohortDefinitionError(f"trial: cannot be compiled ({type(e).__name__})") from None
    params = dict(compiled.params)
    if person is not None:
        params[_PERSON_PARAM] = person
    if not cdm.engine.supports_temp_tables:
        q = compiled.over_pipeline(_final(plan, cdm, "cohort_masked_events", person is not None))
        return cdm.fetch_all(q, bound(q, params))
    prefix = f"mercia_cand_{secrets.token_hex(6)}_"
    steps = compiled.steps(prefix)
    try:
        for stmt in steps.creates:
            cdm.execute(stmt, bound(stmt, compiled.params))
        q = _final(plan, cdm, f"{prefix}cohort_masked_events", person is not None)
        return cdm.fetch_all(q, bound(q, params))
    finally:
        for stmt in steps.drops:
            with suppress(Exception):  # after a failure PostgreSQL drops them with the rollback
                cdm.execute(stmt)


def _candidates(cdm: Cdm, trial: TrialEligibility, person: str | None) -> CandidateList:
    plan = candidate_plan(trial)
    criteria = criteria_of(trial)
    found = []
    for psv, pid, age, index_date, mask in _rows(cdm, plan, person):
        met = rules_met(int(mask), MAX_MASK_BITS + 1)
        meets = tuple(c.name for c, (lo, _) in zip(criteria, plan.bits, strict=True) if met[lo])
        missing = tuple(c.name for c, (lo, _) in zip(criteria, plan.bits, strict=True) if not met[lo])
        found.append(Candidate(None if psv is None else str(psv), int(pid), None if age is None else int(age),
                               index_date.isoformat() if hasattr(index_date, "isoformat") else str(index_date),
                               meets, missing))
    return CandidateList(trial.ref, criteria, tuple(trial.not_applied), tuple(found), trial.name)


def find_candidates(cdm: Cdm, trial: TrialEligibility) -> CandidateList:
    """The site's candidates for `trial`: every person failing no criterion, with what they meet and
    what data is missing (see the module docstring)."""
    return _candidates(cdm, trial, None)


def person_exists(cdm: Cdm, person_source_value: str) -> bool:
    q = (exp.select(exp.Count(this=exp.Star())).from_(cdm.table("person"))
         .where(eq(exp.column("person_source_value"), exp.Placeholder(this=_PERSON_PARAM))))
    return bool(cdm.fetch_all(q, {_PERSON_PARAM: person_source_value})[0][0])


@dataclass(frozen=True)
class TrialMatch:
    trial: str  # the trial's file name, as /trials/{trial}/candidates and `trial candidates` address it
    candidate: Candidate
    not_applied: tuple[str, ...]
    trial_name: str = ""  # its display name

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "trial_name": self.trial_name, **self.candidate.to_dict(),
                "not_applied": list(self.not_applied)}


def match_person(cdm: Cdm, person_source_value: str, trials: Iterable[TrialEligibility]) -> list[TrialMatch]:
    """The trials `person_source_value` is a candidate for (fails no criterion), with what they meet and
    what data is missing; UnknownPersonError if no person has that source value."""
    if not isinstance(person_source_value, str) or not person_source_value.strip():
        raise UnknownPersonError("person: give a person_source_value (the site's own patient identifier)")
    if not person_exists(cdm, person_source_value):
        raise UnknownPersonError("person: no person with this person_source_value in the site's CDM")
    out: list[TrialMatch] = []
    for trial in trials:
        found = _candidates(cdm, trial, person_source_value)
        out += [TrialMatch(trial.ref, c, tuple(trial.not_applied), trial.name) for c in found.candidates]
    return out


_CSV_COLUMNS = ["person_source_value", "person_id", "age", "index_date", "meets", "missing"]


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "; ".join(v) if isinstance(v, list) else v for k, v in r.items() if k in columns})
    return out.getvalue()


def candidates_csv(candidates: Iterable[Candidate]) -> str:
    """One row per candidate; the criteria met and missing joined with "; "."""
    return _csv([c.to_dict() for c in candidates], _CSV_COLUMNS)


def matches_csv(matches: Iterable[TrialMatch]) -> str:
    return _csv([m.to_dict() for m in matches], ["trial", "trial_name", *_CSV_COLUMNS, "not_applied"])
