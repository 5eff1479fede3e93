"""Issue 12: every number, text and list in a study package's analysis settings is bounded (mercia.limits),
and a package past a bound is refused when it is parsed, with the field named as the package writes it
(`analyses[1].settings.washout_days`), never accepted to fail, or overflow an SQL INTEGER, at the node.

In-process over every bounded field (fast); tests/test_attack_limits.py has the same over HTTP (slow).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest

from mercia.errors import StudyError
from mercia.limits import (
    MAX_CONCEPT_SET_ITEMS,
    MAX_DAYS,
    MAX_INT32,
    MAX_INT64,
    MAX_ITERATIONS,
    MAX_LIST,
    MAX_NAME,
    MAX_RANGE_VALUE,
    MAX_TEXT,
    MIN_INT64,
)
from mercia.study import StudyPackage

OUTCOME = {"name": "GI bleed", "concepts": {"gi": {"conditions": ["gi_bleeding"]}}, "entry": [{"condition": "gi"}]}
EXPOSED = {"name": "Diclofenac users", "concepts": {"d": {"ingredients": ["diclofenac"]}},
           "entry": [{"drug": "d", "first": True}]}


def package(analysis: dict[str, Any] | None = None) -> dict[str, Any]:
    """A valid package; `analysis` goes second, so its errors must say `analyses[1]`."""
    return {
        "name": "limits",
        "cohorts": {"exposed": {"definition": copy.deepcopy(EXPOSED)}, "outcome": {"definition": copy.deepcopy(OUTCOME)}},
        "analyses": [{"type": "cohort_entries", "cohorts": ["exposed"]},
                     *([analysis] if analysis is not None else [])],
    }


def put(d: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """d with `value` at a dotted path (creating the mappings on the way); returns d."""
    *heads, last = path.split(".")
    cur = d
    for h in heads:
        cur = cur.setdefault(h, {})
    cur[last] = value
    return d


A = dict[str, Any]
CHAR = {"type": "characterization", "cohorts": ["exposed"]}
CMP = {"type": "compare_cohorts", "target": "exposed", "comparator": "outcome"}
INC = {"type": "incidence", "outcome": "outcome", "denominator": "exposed"}
PREV = {"type": "prevalence", "outcome": "outcome", "settings": {"points": ["2020-01-01"]}}
KM = {"type": "kaplan_meier", "targets": ["exposed"], "outcome": "outcome"}
COX = {"type": "cox", "target": "exposed", "comparator": "outcome", "outcome": "outcome"}
PRED = {"type": "prediction", "target": "exposed", "outcome": "outcome",
        "settings": {"model": {"type": "lasso_logistic"}}}
GBM = {**PRED, "settings": {"model": {"type": "gradient_boosting"}}}
CM = {"type": "cohort_method", "target": "exposed", "comparator": "outcome", "outcomes": ["outcome"]}


def setting(base: A, path: str, around: Callable[[Any], A] | None = None) -> Callable[[Any], dict[str, Any]]:
    """A package whose second analysis is `base` with settings.<path> = v (or with settings `around(v)`)."""

    def make(v: Any) -> dict[str, Any]:
        a = copy.deepcopy(base)
        if around is not None:
            a["settings"] = {**a.get("settings", {}), **around(v)}
        else:
            put(a, f"settings.{path}", v)
        return package(a)

    return make


def top(path: str) -> Callable[[Any], dict[str, Any]]:
    return lambda v: put(package(), path, v)


def policy(field: str) -> Callable[[Any], dict[str, Any]]:
    return lambda v: {**package(), "disclosure": {"name": "p", "threshold": 5, field: v}}


def window(start: Any, end: Any) -> A:
    return {"name": "w", "start": start, "end": end}


# (field as the error names it, package with value v there, lowest and highest value taken, values refused)
# Integers: one past each end and 2**40 on the far side; floats: past the end, infinity and NaN.
def ints(lo: int, hi: int) -> list[int]:
    return [lo - 1, hi + 1, 2**40 if hi >= 0 else -(2**40)] + ([-(2**40)] if lo < 0 else [])


def floats(hi: float) -> list[float]:
    return [hi * 10, math.inf, -math.inf, math.nan]


Case = tuple[str, Callable[[Any], dict[str, Any]], Any, Any, list[Any]]
CASES: list[Case] = [
    # characterization and compare_cohorts: covariate windows, in days relative to index
    ("analyses[1].settings.windows[0].start",
     setting(CHAR, "", lambda v: {"windows": [window(v, MAX_DAYS)]}), -MAX_DAYS, MAX_DAYS, ints(-MAX_DAYS, MAX_DAYS)),
    ("analyses[1].settings.windows[0].end",
     setting(CMP, "", lambda v: {"windows": [window(-MAX_DAYS, v)]}), -MAX_DAYS, MAX_DAYS, ints(-MAX_DAYS, MAX_DAYS)),
    ("analyses[1].settings.windows[0].name",
     setting(CHAR, "", lambda n: {"windows": [window(0, 0) | {"name": "w" * n}]}), 1, MAX_NAME, [MAX_NAME + 1]),
    ("analyses[1].settings.windows",
     setting(CHAR, "", lambda n: {"windows": [window(0, 0) | {"name": f"w{i}"} for i in range(n)]}), 1, MAX_LIST,
     [MAX_LIST + 1]),
    # incidence and prevalence
    ("analyses[1].settings.washout_days", setting(INC, "washout_days"), 0, MAX_DAYS, ints(0, MAX_DAYS)),
    ("analyses[1].settings.age_groups[0][1]", setting(INC, "", lambda v: {"age_groups": [[0, v]]}), 0, MAX_INT32,
     [MAX_INT32 + 1, 2**40]),
    ("analyses[1].settings.age_groups",
     setting(INC, "", lambda n: {"age_groups": [[i, i] for i in range(n)]}), 1, MAX_LIST, [MAX_LIST + 1]),
    ("analyses[1].settings.lookback_days", setting(PREV, "lookback_days"), 0, MAX_DAYS, ints(0, MAX_DAYS)),
    ("analyses[1].settings.points",
     setting(PREV, "", lambda n: {"points": ["2020-01-01"] * n}), 1, MAX_LIST, [MAX_LIST + 1]),
    # survival: Kaplan-Meier and Cox
    ("analyses[1].settings.tar_start", setting(KM, "tar_start"), 0, MAX_DAYS, ints(0, MAX_DAYS)),
    ("analyses[1].settings.tar_end", setting(KM, "tar_end"), 0, MAX_DAYS, ints(0, MAX_DAYS)),
    ("analyses[1].settings.survival.tar_start", setting(COX, "survival.tar_start"), 0, MAX_DAYS, ints(0, MAX_DAYS)),
    ("analyses[1].settings.covariates[0].window_start",
     setting(COX, "", lambda v: {"covariates": [{"name": "c", "concept_ids": [1], "window_start": v,
                                                  "window_end": MAX_DAYS}]}),
     -MAX_DAYS, MAX_DAYS, ints(-MAX_DAYS, MAX_DAYS)),
    ("analyses[1].settings.covariates[0].window_end",
     setting(COX, "", lambda v: {"covariates": [{"name": "c", "concept_ids": [1], "window_start": -MAX_DAYS,
                                                  "window_end": v}]}),
     -MAX_DAYS, MAX_DAYS, ints(-MAX_DAYS, MAX_DAYS)),
    ("analyses[1].settings.covariates[0].concept_ids[0]",
     setting(COX, "", lambda v: {"covariates": [{"name": "c", "concept_ids": [v]}]}), MIN_INT64, MAX_INT64,
     [MAX_INT64 + 1, MIN_INT64 - 1]),
    ("analyses[1].settings.covariates[0].concept_ids",
     setting(COX, "", lambda n: {"covariates": [{"name": "c", "concept_ids": [1] * n}]}), 1, MAX_CONCEPT_SET_ITEMS,
     [MAX_CONCEPT_SET_ITEMS + 1]),
    ("analyses[1].settings.covariates[0].name",
     setting(COX, "", lambda n: {"covariates": [{"name": "c" * n, "concept_ids": [1]}]}), 1, MAX_NAME,
     [MAX_NAME + 1]),
    ("analyses[1].settings.covariates",
     setting(COX, "", lambda n: {"covariates": [{"name": f"c{i}", "concept_ids": [1]} for i in range(n)]}),
     0, MAX_LIST, [MAX_LIST + 1]),
    # prediction: population, covariates, model, split
    ("analyses[1].settings.population.risk_window_start",
     setting(PRED, "", lambda v: {"population": {"risk_window_start": v, "risk_window_end": MAX_DAYS}}),
     -MAX_DAYS, MAX_DAYS, ints(-MAX_DAYS, MAX_DAYS)),
    ("analyses[1].settings.population.risk_window_end",
     setting(PRED, "", lambda v: {"population": {"risk_window_start": -MAX_DAYS, "risk_window_end": v}}),
     -MAX_DAYS, MAX_DAYS, ints(-MAX_DAYS, MAX_DAYS)),
    ("analyses[1].settings.population.washout_period", setting(PRED, "population.washout_period"), 0, MAX_DAYS,
     ints(0, MAX_DAYS)),
    ("analyses[1].settings.population.prior_outcome_lookback", setting(PRED, "population.prior_outcome_lookback"),
     0, MAX_DAYS, ints(0, MAX_DAYS)),
    ("analyses[1].settings.population.min_time_at_risk", setting(PRED, "population.min_time_at_risk"), 0, MAX_DAYS,
     ints(0, MAX_DAYS)),
    ("analyses[1].settings.covariates.windows[0].start",
     setting(PRED, "", lambda v: {"covariates": {"windows": [{"kind": "long_term", "start": v, "end": MAX_DAYS}]}}),
     -MAX_DAYS, MAX_DAYS, ints(-MAX_DAYS, MAX_DAYS)),
    ("analyses[1].settings.covariates.windows[0].end",
     setting(PRED, "", lambda v: {"covariates": {"windows": [{"kind": "long_term", "start": -MAX_DAYS, "end": v}]}}),
     -MAX_DAYS, MAX_DAYS, ints(-MAX_DAYS, MAX_DAYS)),
    ("analyses[1].settings.covariates.min_persons", setting(PRED, "covariates.min_persons"), 1, MAX_INT32,
     ints(1, MAX_INT32)),
    ("analyses[1].settings.covariates.excluded_concept_ids[0]",
     setting(PRED, "", lambda v: {"covariates": {"excluded_concept_ids": [v]}}), 0, MAX_INT64, [MAX_INT64 + 1]),
    ("analyses[1].settings.covariates.excluded_concept_ids",
     setting(PRED, "", lambda n: {"covariates": {"excluded_concept_ids": [1] * n}}), 0, MAX_CONCEPT_SET_ITEMS,
     [MAX_CONCEPT_SET_ITEMS + 1]),
    ("analyses[1].settings.model.max_iter", setting(PRED, "model.max_iter"), 10, MAX_ITERATIONS,
     ints(10, MAX_ITERATIONS)),
    ("analyses[1].settings.model.c_grid[0]", setting(PRED, "", lambda v: {"model": {"type": "lasso_logistic", "c_grid": [v]}}),
     1e-300, MAX_RANGE_VALUE, [0.0, -1.0, *floats(MAX_RANGE_VALUE)]),
    ("analyses[1].settings.model.c_grid", setting(PRED, "", lambda n: {"model": {"type": "lasso_logistic", "c_grid": [1.0] * n}}),
     1, MAX_LIST, [MAX_LIST + 1]),
    ("analyses[1].settings.model.max_iter", setting(GBM, "model.max_iter"), 1, MAX_ITERATIONS,
     ints(1, MAX_ITERATIONS)),
    ("analyses[1].settings.model.min_samples_leaf", setting(GBM, "model.min_samples_leaf"), 1, MAX_INT32,
     ints(1, MAX_INT32)),
    ("analyses[1].settings.model.max_leaf_nodes[0]",
     setting(GBM, "", lambda v: {"model": {"type": "gradient_boosting", "max_leaf_nodes": [v]}}), 2, MAX_INT32,
     ints(2, MAX_INT32)),
    ("analyses[1].settings.model.learning_rates[0]",
     setting(GBM, "", lambda v: {"model": {"type": "gradient_boosting", "learning_rates": [v]}}),
     1e-300, MAX_RANGE_VALUE, [0.0, *floats(MAX_RANGE_VALUE)]),
    ("analyses[1].settings.seed", setting(PRED, "seed"), 0, MAX_INT32, ints(0, MAX_INT32)),
    ("analyses[1].settings.min_covariate_persons", setting(PRED, "min_covariate_persons"), 1, MAX_INT32,
     ints(1, MAX_INT32)),
    # cohort method: population, matching, stratification, propensity model
    ("analyses[1].settings.population.washout_period", setting(CM, "population.washout_period"), 0, MAX_DAYS,
     ints(0, MAX_DAYS)),
    ("analyses[1].settings.population.prior_outcome_lookback", setting(CM, "population.prior_outcome_lookback"),
     0, MAX_DAYS, ints(0, MAX_DAYS)),
    ("analyses[1].settings.population.risk_window_start", setting(CM, "population.risk_window_start"),
     -MAX_DAYS, MAX_DAYS, ints(-MAX_DAYS, MAX_DAYS)),
    ("analyses[1].settings.population.risk_window_end", setting(CM, "population.risk_window_end"),
     -MAX_DAYS, MAX_DAYS, ints(-MAX_DAYS, MAX_DAYS)),
    ("analyses[1].settings.population.min_days_at_risk", setting(CM, "population.min_days_at_risk"), 0, MAX_DAYS,
     ints(0, MAX_DAYS)),
    ("analyses[1].settings.match.caliper", setting(CM, "match.caliper"), 0.0, MAX_RANGE_VALUE,
     [-1.0, *floats(MAX_RANGE_VALUE)]),
    ("analyses[1].settings.match.max_ratio", setting(CM, "match.max_ratio"), 0, MAX_LIST, ints(0, MAX_LIST)),
    ("analyses[1].settings.stratify.number_of_strata", setting(CM, "stratify.number_of_strata"), 1, MAX_LIST,
     ints(1, MAX_LIST)),
    ("analyses[1].settings.ps.variance", setting(CM, "ps.variance"), 1e-300, MAX_RANGE_VALUE,
     [0.0, *floats(MAX_RANGE_VALUE)]),
    ("analyses[1].settings.ps.cv_variances[0]", setting(CM, "", lambda v: {"ps": {"cv_variances": [v]}}),
     1e-300, MAX_RANGE_VALUE, [0.0, *floats(MAX_RANGE_VALUE)]),
    ("analyses[1].settings.ps.cv_max_rows", setting(CM, "ps.cv_max_rows"), 100, MAX_INT32, ints(100, MAX_INT32)),
    ("analyses[1].settings.ps.max_cohort_size_for_fitting", setting(CM, "ps.max_cohort_size_for_fitting"),
     0, MAX_INT32, ints(0, MAX_INT32)),
    ("analyses[1].settings.ps.exclude_covariate_ids[0]",
     setting(CM, "", lambda v: {"ps": {"exclude_covariate_ids": [v]}}), MIN_INT64, MAX_INT64,
     [MAX_INT64 + 1, MIN_INT64 - 1]),
    ("analyses[1].settings.ps.seed", setting(CM, "ps.seed"), 0, MAX_INT32, ints(0, MAX_INT32)),
    ("analyses[1].settings.ps.max_iter", setting(CM, "ps.max_iter"), 10, MAX_ITERATIONS, ints(10, MAX_ITERATIONS)),
    ("analyses[1].settings.covariates.windows[0].start",
     setting(CM, "", lambda v: {"covariates": {"windows": [{"kind": "short_term", "start": v, "end": MAX_DAYS}]}}),
     -MAX_DAYS, MAX_DAYS, ints(-MAX_DAYS, MAX_DAYS)),
    # the package itself: names, cohort ids and keys, lists, and a disclosure policy written out
    ("name", top("name"), "n", "n" * MAX_NAME, ["n" * (MAX_NAME + 1)]),
    ("description", top("description"), "", "d" * MAX_TEXT, ["d" * (MAX_TEXT + 1)]),
    ("cohorts.exposed.id", top("cohorts.exposed.id"), 1, MAX_INT32, ints(1, MAX_INT32)),
    ("analyses[1].name", lambda v: package({**CHAR, "name": v}), "n", "n" * MAX_NAME, ["n" * (MAX_NAME + 1)]),
    ("analyses", lambda n: {**package(), "analyses": [{**CHAR, "name": f"a{i}"} for i in range(n)]}, 1, MAX_LIST,
     [MAX_LIST + 1]),
    ("analyses[1].cohorts", lambda n: package({**CHAR, "cohorts": ["exposed"] * n}), 1, MAX_LIST, [MAX_LIST + 1]),
    ("disclosure.threshold", policy("threshold"), 0, MAX_INT32, ints(0, MAX_INT32)),
    ("disclosure.rounding_base", policy("rounding_base"), 1, MAX_INT32, ints(1, MAX_INT32)),
    ("disclosure.survival_time_unit", policy("survival_time_unit"), 1, MAX_INT32, ints(1, MAX_INT32)),
    ("disclosure.min_risk_set", policy("min_risk_set"), 1, MAX_INT32, ints(1, MAX_INT32)),
    ("disclosure.magnitude_min_interval", policy("magnitude_min_interval"), 0.0, MAX_RANGE_VALUE,
     [-1.0, *floats(MAX_RANGE_VALUE)]),
]


@pytest.mark.parametrize(("field", "make", "lo", "hi", "bad"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_setting_past_its_bound_is_refused_naming_the_field(field, make, lo, hi, bad):
    for v in bad:
        with pytest.raises(StudyError) as e:
            StudyPackage.from_dict(make(v))
        assert f"{field}: " in str(e.value), (field, repr(v)[:40], str(e.value)[:300])


@pytest.mark.parametrize(("field", "make", "lo", "hi", "bad"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_setting_at_its_bound_is_taken(field, make, lo, hi, bad):
    for v in (lo, hi):
        StudyPackage.from_dict(make(v))


def test_the_canonical_form_of_a_package_at_the_bounds_reads_back() -> None:
    """What a hub sends a node (the canonical form, every default spelled out) passes the same bounds."""
    p = StudyPackage.from_dict(setting(INC, "washout_days")(MAX_DAYS))
    assert StudyPackage.from_canonical(p.canonical()).canonical() == p.canonical()


def _counted_up(threshold: int, base: int) -> int:
    """suppress_up_to as it was written before: count up until a count rounds above the threshold."""
    from mercia.disclosure.policy import round_count

    v = threshold
    while round_count(v + 1, base) <= threshold:
        v += 1
    return v


def test_a_policy_at_the_rounding_bound_costs_no_time() -> None:
    """A package may ask for a rounding base of 2**31 - 1 (stricter than any site's): the counts it
    suppresses are found in closed form (counting up to half the base took about five minutes a release)
    and are the ones counting up finds."""
    import time

    from mercia.disclosure.policy import DisclosurePolicy, round_count

    for t in range(0, 40):
        for base in range(1, 30):
            p = DisclosurePolicy(name="p", threshold=t, rounding_base=base)
            assert p.suppress_up_to == _counted_up(t, base), (t, base)
    pkg = StudyPackage.from_dict(policy("rounding_base")(MAX_INT32))
    t0 = time.perf_counter()
    v = pkg.spec.requested_policy().suppress_up_to
    assert time.perf_counter() - t0 < 0.1
    assert round_count(v, MAX_INT32) <= 5 < round_count(v + 1, MAX_INT32)
