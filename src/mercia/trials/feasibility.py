"""Trial feasibility at one site: eligible persons, the funnel, what-if, breakdowns and incident eligibility.

A trial is a cohort definition whose inclusion rules are its criteria (trials/source.py). Everything
comes from one pipeline, the cohort's plan as generate_cohorts runs it (mercia.cohorts.plan: the steps
the engine materialises, rendered once per process and definition: mercia.cohorts.reading), read
twice:

- the per-mask person counts (one query, as Circe's cohort_inclusion_result, mode 1: each person by
  their best event): the funnel (persons remaining after criteria 1..j in turn) and the what-if (persons
  meeting every criterion but j: what removing j would add), both by `mercia.cohorts.stats`, the one
  arithmetic on inclusion-rule masks;
- one grouped query over the eligible persons' first entry (the cohort's rows joined to `person`):
  breakdowns by age band (at first eligibility), sex and ethnicity (`race_concept_id`, where OMOP CDMs
  in the UK keep the ethnic group; its levels are the vocabulary's standard Race concepts and
  "Unknown", fixed before the data are read), and the newly eligible persons per calendar month (incident
  eligibility: the month a person first meets every criterion) over a history window.

Every number leaves through `mercia.disclosure.release`. Locally (`noise=None`) the counts are exact
before the policy, as `mercia study run` releases a local study's counts. At a node (`noise` given) the
counts are differentially private first, and every figure is derived from released numbers only:

- persons fall in exactly one of 2k+2 buckets (k criteria): for each criterion j, "fails j alone" (the
  what-if gain of j) and "fails j first, and some later one too"; then "meets every criterion but is
  not in the final cohort" and "eligible". Replacing one person's record moves them between buckets
  (L1 sensitivity 2), so one noise draw per bucket covers the whole funnel and what-if; the funnel's
  steps are sums of noisy buckets and the gains are noisy buckets. A what-if gain is never a difference
  of two released counts, and differencing two funnels (or two trials) differences independent noise.
- the three breakdowns and the monthly counts are partitions of the eligible persons (sensitivity 2
  each).

The answer's epsilon is split: a third to the funnel and what-if, a third to the breakdowns (a ninth
each), a third to the monthly history. Noise, clamping at zero, then the policy's threshold and rounding
(post-processing keeps the guarantee).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.cdm.query import build, fetch_df
from mercia.cohorts.compiler import bound
from mercia.cohorts.model import CohortDefinition
from mercia.cohorts.reading import cohort_for_reading
from mercia.cohorts.stats import attrition_stages, inclusion_stats
from mercia.disclosure import DisclosureLog, DisclosurePolicy, ResultTable, release
from mercia.disclosure.noise import noise_sd, two_sided_geometric
from mercia.errors import MerciaError

AGE_BANDS: tuple[tuple[int, int | None], ...] = ((0, 17), (18, 29), (30, 39), (40, 49), (50, 59), (60, 69),
                                                 (70, 79), (80, None))
SEX_LEVELS = ("Female", "Male", "Other or unknown")
HISTORY_MONTHS = 36  # default window of incident eligibility
MAX_HISTORY_MONTHS = 240
SENSITIVITY = 2.0  # one person's record replaced moves them between two cells of a partition


def band_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


AGE_LEVELS = tuple(band_label(lo, hi) for lo, hi in AGE_BANDS)


def _age_band(age: int) -> str:
    for lo, hi in AGE_BANDS:
        if age >= lo and (hi is None or age <= hi):
            return band_label(lo, hi)
    return AGE_LEVELS[0]  # a negative age (birth year after entry): the youngest band


def _sex(concept_id: Any) -> str:
    return {8507: "Male", 8532: "Female"}.get(int(concept_id) if concept_id is not None else -1, SEX_LEVELS[2])


def month_window(end_month: str, months: int) -> list[str]:
    """`months` calendar months ('YYYY-MM') ending with `end_month`, oldest first."""
    y, m = (int(x) for x in end_month.split("-"))
    out = []
    for _ in range(months):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out[::-1]


@dataclass(frozen=True)
class TrialCounts:
    """Exact counts of one trial at one site. They never leave the site: `released_feasibility` releases them."""

    rule_names: list[str]
    masks: dict[tuple[int, int], int]  # (mode_id, inclusion_rule_mask) -> count, as Circe's
    eligible: int  # persons in the final cohort
    age: dict[str, int]
    sex: dict[str, int]
    ethnicity: dict[str, int]
    months: dict[str, int]  # 'YYYY-MM' -> persons first eligible that month, inside the window
    window: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Noise:
    """The differential privacy of a node's answer: its key, the question's label, the answer's epsilon."""

    key: bytes
    label: str
    epsilon: float


# The eligible persons' first entry, their age then, sex and ethnic group; grouped four ways in one read.
_ELIGIBLE_SQL = """
WITH pp AS (SELECT subject_id, MIN(cohort_start_date) AS d FROM trial_rows GROUP BY subject_id),
e AS (
  SELECT pp.d, EXTRACT(YEAR FROM pp.d) - p.year_of_birth AS age, p.gender_concept_id AS sex,
         p.race_concept_id AS eth
  FROM pp JOIN person p ON p.person_id = pp.subject_id
)
SELECT 'age' AS part, CAST(age AS BIGINT) AS a, CAST(0 AS BIGINT) AS b, COUNT(*) AS n FROM e GROUP BY age
UNION ALL SELECT 'sex', CAST(sex AS BIGINT), CAST(0 AS BIGINT), COUNT(*) FROM e GROUP BY sex
UNION ALL SELECT 'eth', CAST(eth AS BIGINT), CAST(0 AS BIGINT), COUNT(*) FROM e GROUP BY eth
UNION ALL SELECT 'month', CAST(EXTRACT(YEAR FROM d) AS BIGINT), CAST(EXTRACT(MONTH FROM d) AS BIGINT), COUNT(*)
  FROM e GROUP BY EXTRACT(YEAR FROM d), EXTRACT(MONTH FROM d)
"""
_END_SQL = "SELECT MAX(observation_period_end_date) FROM observation_period"
_RACE_SQL = ("SELECT concept_id, concept_name FROM concept WHERE domain_id = 'Race' AND standard_concept = 'S' "
             "AND invalid_reason IS NULL")
UNKNOWN = "Unknown"


def ethnicity_levels(cdm: Cdm) -> dict[int, str]:
    """The ethnicity levels: the vocabulary's standard Race concepts (public reference data, so the levels
    shown do not depend on who is in the data), by name; any other concept falls under "Unknown"."""
    df = fetch_df(cdm, build(_RACE_SQL, cdm))
    return {int(c): str(n) for c, n in sorted(zip(df["concept_id"], df["concept_name"], strict=True))}


def count_trial(cdm: Cdm, definition: CohortDefinition, *, history_months: int = HISTORY_MONTHS,
                end_month: str | None = None) -> TrialCounts:
    """The exact counts (see the module docstring): one pipeline, the mask counts and one grouped read.

    The history window is the `history_months` whole months before the month of the latest observation
    period end (that month is usually partial), or ending at `end_month` ('YYYY-MM')."""
    if not 1 <= history_months <= MAX_HISTORY_MONTHS:
        raise MerciaError(f"history_months: {history_months} is out of range; use 1 to {MAX_HISTORY_MONTHS}")
    with cohort_for_reading(cdm, definition) as (rule_names, masks, rows_q, params):
        tree = build(_ELIGIBLE_SQL, cdm)
        for t in list(tree.find_all(exp.Table)):
            if t.name == "trial_rows":
                t.replace(rows_q.copy().subquery("trial_rows") if isinstance(rows_q, exp.Select)
                          else rows_q.copy().as_("trial_rows"))
        grouped = cdm.fetch_all(tree, bound(tree, params))
        if end_month is None:
            last = cdm.scalar(build(_END_SQL, cdm))
    if end_month is None:
        if last is None:
            last = dt.date.today()
        last = pd.Timestamp(last)
        y, m = (last.year, last.month - 1) if last.month > 1 else (last.year - 1, 12)
        end_month = f"{y:04d}-{m:02d}"
    window = month_window(end_month, history_months)
    inside = set(window)
    age: dict[str, int] = dict.fromkeys(AGE_LEVELS, 0)
    sex: dict[str, int] = dict.fromkeys(SEX_LEVELS, 0)
    eth_ids: dict[int, int] = {}
    months: dict[str, int] = dict.fromkeys(window, 0)
    eligible = 0
    for part, a, b, n in grouped:
        n = int(n)
        if part == "age":
            age[_age_band(int(a) if a is not None else 0)] += n
            eligible += n
        elif part == "sex":
            sex[_sex(a)] += n
        elif part == "eth":
            eth_ids[int(a) if a is not None else 0] = eth_ids.get(int(a) if a is not None else 0, 0) + n
        elif a is not None and b is not None:
            key = f"{int(a):04d}-{int(b):02d}"
            if key in inside:
                months[key] += n
    names = ethnicity_levels(cdm)
    ethnicity: dict[str, int] = {**dict.fromkeys(sorted(set(names.values())), 0), UNKNOWN: 0}
    for cid, n in eth_ids.items():
        label = names.get(cid, UNKNOWN)
        ethnicity[label] += n
    return TrialCounts(rule_names=rule_names, masks=masks, eligible=eligible, age=age, sex=sex,
                       ethnicity=ethnicity, months=months, window=window)


# ---- release ---------------------------------------------------------------------------------------------
def _noisy(values: list[int], noise: Noise | None, part: str, epsilon: float, *, clamp: bool = True) -> list[int]:
    """The values with noise (exact without `noise`), clamped at zero unless they are to be summed first
    (clamping each of many empty buckets before a sum would bias the sum upwards)."""
    if noise is None:
        return list(values)
    z = two_sided_geometric(noise.key, f"{noise.label}|{part}", len(values), epsilon=epsilon,
                            sensitivity=SENSITIVITY)
    return [max(0, v + dz) if clamp else v + dz for v, dz in zip(values, z, strict=True)]


def _value(v: Any) -> int | None:
    """A released count, or None where disclosure control suppressed it."""
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    return int(v)


def _released_column(table: ResultTable, policy: DisclosurePolicy, site: str | None, log: DisclosureLog,
                     dim: str, col: str) -> dict[str, int | None]:
    r = release(table, policy, site=site, log=log)
    d = r.data
    return {str(k): _value(v) for k, v in zip(d[dim], d[col], strict=True)}


def _counts_table(name: str, dim: str, col: str, rows: list[tuple[str, int]], *, sequential: bool = False,
                  from_data: bool = False) -> ResultTable:
    return ResultTable(name=name, kind="counts", dimensions=[dim], count_columns=[col], sequential=sequential,
                       data_levels=[dim] if from_data else [],
                       data=pd.DataFrame(rows, columns=[dim, col]).astype({col: "int64"}))


def released_feasibility(counts: TrialCounts, policy: DisclosurePolicy, *, trial: str, site: str | None,
                         noise: Noise | None) -> dict[str, Any]:
    """The answer that may leave: every number passed `release()` under `policy` (after noise, at a node)."""
    names = counts.rule_names
    k = len(names)
    third = noise.epsilon / 3 if noise is not None else 0.0
    log = DisclosureLog()
    out: dict[str, Any] = {"trial": trial, "site": site}

    # Funnel and what-if: 2k+2 disjoint buckets (module docstring), noised together.
    if k:
        stage = attrition_stages(counts.masks, 1, k)
        per_rule, _ = inclusion_stats(counts.masks, names)
        gains = [s.gain_count for s in per_rule if s.mode_id == 1]
        buckets: list[int] = []
        for j in range(k):
            buckets += [gains[j], stage[j] - gains[j]]
        buckets += [max(stage[k] - counts.eligible, 0), min(counts.eligible, stage[k])]
    else:
        buckets = [counts.eligible]
    noisy = _noisy(buckets, noise, "funnel", third, clamp=False)
    if k:
        # Sums of the unclamped buckets from each step on, then clamped and made non-increasing.
        eligible = max(0, noisy[-1])
        remaining = [max(0, sum(noisy[2 * j:])) for j in range(k + 1)]  # [0]: initial; [j]: after j criteria
        for j in range(k, -1, -1):
            remaining[j] = max(remaining[j], eligible if j == k else remaining[j + 1])
        steps = [("initial events", remaining[0])]
        steps += [(f"{j + 1}. {n}", remaining[j + 1]) for j, n in enumerate(names)]
        steps.append(("eligible", eligible))
        what_if = [(f"{j + 1}. {n}", max(0, noisy[2 * j])) for j, n in enumerate(names)]
    else:
        steps, what_if = [("eligible", max(0, noisy[0]))], []
    funnel = _released_column(_counts_table("trial_funnel", "step", "persons", steps, sequential=True),
                              policy, site, log, "step", "persons")
    out["eligible"] = funnel["eligible"]
    out["initial"] = funnel.get("initial events")
    out["funnel"] = [{"criterion": n, "remaining": funnel[f"{j + 1}. {n}"]} for j, n in enumerate(names)]
    gained = (_released_column(_counts_table("trial_what_if", "criterion", "gained", what_if), policy, site, log,
                               "criterion", "gained") if what_if else {})
    out["what_if"] = [{"criterion": n, "gained": gained[f"{j + 1}. {n}"]} for j, n in enumerate(names)]

    # Breakdowns of the eligible: three partitions.
    breakdowns: dict[str, list[dict[str, Any]]] = {}
    for dim, cells, from_data in (("age_band", counts.age, False), ("sex", counts.sex, False),
                                  ("ethnicity", counts.ethnicity, False)):
        levels = list(cells)
        values = _noisy([cells[lv] for lv in levels], noise, f"breakdown|{dim}", third / 3)
        rel = (_released_column(_counts_table(f"trial_{dim}", "level", "persons", list(zip(levels, values,
                                                                                           strict=True)),
                                              from_data=from_data), policy, site, log, "level", "persons")
               if levels else {})
        breakdowns[dim] = [{"level": lv, "persons": v} for lv, v in rel.items()]
    out["breakdowns"] = breakdowns

    # Incident eligibility: newly eligible persons per month of the window (fixed levels).
    months = counts.window
    mvals = _noisy([counts.months.get(m, 0) for m in months], noise, "months", third)
    rel_m = _released_column(_counts_table("trial_monthly", "month", "persons", list(zip(months, mvals, strict=True))),
                             policy, site, log, "month", "persons")
    # A suppressed month lies between these (what the policy suppresses): the projection takes it as censored.
    low = 0 if policy.zeros_disclosive else 1
    out["monthly"] = {"months": months, "persons": [rel_m.get(m) for m in months],
                      "bounds": [None if rel_m.get(m) is not None else [low, policy.suppress_up_to] for m in months]}
    out["disclosure"] = json.loads(log.to_json(public=True))
    out["policy"] = policy.rule_summary()
    if noise is None:
        out["privacy"] = {"mechanism": "exact counts on this CDM, then the policy's threshold and rounding"}
    else:
        out["privacy"] = {
            "mechanism": ("two-sided geometric (discrete Laplace) noise on disjoint buckets, then the policy's "
                          "threshold and rounding; what-if gains are noisy buckets, never differences"),
            "epsilon": noise.epsilon,
            "funnel_bucket_noise_sd": round(noise_sd(third, SENSITIVITY), 1),
            "breakdown_cell_noise_sd": round(noise_sd(third / 3, SENSITIVITY), 1),
            "monthly_noise_sd": round(noise_sd(third, SENSITIVITY), 1),
        }
    return out


def local_feasibility(cdm: Cdm, definition: CohortDefinition, policy: DisclosurePolicy, *, trial: str,
                      not_applied: list[str] | tuple[str, ...] = (), history_months: int = HISTORY_MONTHS,
                      site: str | None = None) -> dict[str, Any]:
    """`mercia trial feasibility --cdm`: exact counts on one's own CDM, released under `policy`."""
    counts = count_trial(cdm, definition, history_months=history_months)
    out = released_feasibility(counts, policy, trial=trial, site=site, noise=None)
    out["not_applied"] = list(not_applied)
    return out
