"""Small CDMs for the analyses tests (no tests here; imported by tests/test_analyses_*.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mercia.cdm import Cdm

EPOCH = dt.date(2000, 1, 1)
MALE, FEMALE = 8507, 8532


def day(n: int | np.integer) -> dt.date:
    return EPOCH + dt.timedelta(days=int(n))


def _ids(n: int) -> list[int]:
    return list(range(1, n + 1))


def load(
    cdm: Cdm,
    *,
    persons: pd.DataFrame,
    observation_periods: pd.DataFrame,
    cohorts: pd.DataFrame | None = None,
    deaths: pd.DataFrame | None = None,
    conditions: pd.DataFrame | None = None,
    drugs: pd.DataFrame | None = None,
    measurements: pd.DataFrame | None = None,
    ancestors: pd.DataFrame | None = None,
    concepts: pd.DataFrame | None = None,
) -> Cdm:
    """Write the given rows (only the columns that matter; the rest are filled) into `cdm`."""
    cdm.create_tables(
        [
            "person",
            "observation_period",
            "death",
            "cohort",
            "condition_occurrence",
            "drug_exposure",
            "measurement",
            "concept_ancestor",
        ]
    )
    p = persons.copy()
    for c in ("race_concept_id", "ethnicity_concept_id"):
        p[c] = 0
    cdm.insert_arrow("person", pa.Table.from_pandas(p, preserve_index=False))
    op = observation_periods.copy()
    op["observation_period_id"] = _ids(len(op))
    op["period_type_concept_id"] = 0
    cdm.insert_arrow("observation_period", pa.Table.from_pandas(op, preserve_index=False))
    if cohorts is not None and len(cohorts):
        cdm.insert_arrow("cohort", pa.Table.from_pandas(cohorts, preserve_index=False))
    if deaths is not None and len(deaths):
        d = deaths.copy()
        d["death_type_concept_id"] = 0
        cdm.insert_arrow("death", pa.Table.from_pandas(d, preserve_index=False))
    if conditions is not None and len(conditions):
        c = conditions.copy()
        c["condition_occurrence_id"] = _ids(len(c))
        c["condition_type_concept_id"] = 0
        cdm.insert_arrow("condition_occurrence", pa.Table.from_pandas(c, preserve_index=False))
    if drugs is not None and len(drugs):
        d = drugs.copy()
        d["drug_exposure_id"] = _ids(len(d))
        d["drug_type_concept_id"] = 0
        if "drug_exposure_end_date" not in d:
            d["drug_exposure_end_date"] = d["drug_exposure_start_date"]
        cdm.insert_arrow("drug_exposure", pa.Table.from_pandas(d, preserve_index=False))
    if measurements is not None and len(measurements):
        m = measurements.copy()
        m["measurement_id"] = _ids(len(m))
        m["measurement_type_concept_id"] = 0
        cdm.insert_arrow("measurement", pa.Table.from_pandas(m, preserve_index=False))
    if ancestors is not None and len(ancestors):
        a = ancestors.copy()
        a["min_levels_of_separation"] = 0
        a["max_levels_of_separation"] = 0
        cdm.insert_arrow("concept_ancestor", pa.Table.from_pandas(a, preserve_index=False))
    if concepts is not None and len(concepts):
        c = concepts.copy()
        for col, v in (("domain_id", "Drug"), ("vocabulary_id", "Test"), ("concept_code", "x")):
            if col not in c:
                c[col] = v
        c["valid_start_date"] = dt.date(1970, 1, 1)
        c["valid_end_date"] = dt.date(2099, 12, 31)
        cdm.insert_arrow("concept", pa.Table.from_pandas(c, preserve_index=False))
    return cdm


def survival_world(n: int, seed: int, *, hr: float = 1.6, max_days: int = 400) -> dict[str, Any]:
    """Target (cohort 1) / comparator (2) persons, an outcome (cohort 3), deaths and one condition
    (concept 100, child 101 via concept_ancestor) before index. Also returns the expected per-person
    time and event under the default settings (censor at observation end and death), for oracles."""
    rng = np.random.default_rng(seed)
    pid = np.arange(1, n + 1)
    male = rng.random(n) < 0.5
    yob = rng.integers(1940, 1990, n)
    treat = rng.random(n) < 0.5
    cond = rng.random(n) < 0.3
    index = rng.integers(0, 300, n)
    obs_start = index - rng.integers(0, 800, n)
    follow = rng.integers(0, max_days, n)  # small integer days: plenty of ties
    obs_end = index + follow
    age = 2000 - yob  # index is in 2000 (days 0..299)
    lin = np.log(hr) * treat + 0.02 * (age - 35) + 0.4 * cond + 0.2 * male
    t_out = np.floor(rng.exponential(250 / np.exp(lin))).astype(int)
    has_out = rng.random(n) < 0.9
    died = rng.random(n) < 0.15
    t_death = np.minimum(rng.integers(0, max_days, n), follow)
    end = np.where(died, np.minimum(t_death, follow), follow)
    event = has_out & (t_out <= end)
    time = np.where(event, t_out, end)
    cohorts = pd.DataFrame(
        {
            "cohort_definition_id": np.where(treat, 1, 2),
            "subject_id": pid,
            "cohort_start_date": [day(i) for i in index],
            "cohort_end_date": [day(i + 30) for i in index],
        }
    )
    out_rows = pd.DataFrame(
        {
            "cohort_definition_id": 3,
            "subject_id": pid[has_out],
            "cohort_start_date": [day(i + t) for i, t in zip(index[has_out], t_out[has_out], strict=True)],
            "cohort_end_date": [day(i + t) for i, t in zip(index[has_out], t_out[has_out], strict=True)],
        }
    )
    # An outcome before index must not count (it is before time at risk).
    early = rng.random(n) < 0.1
    pre = pd.DataFrame(
        {
            "cohort_definition_id": 3,
            "subject_id": pid[early],
            "cohort_start_date": [day(i - 5) for i in index[early]],
            "cohort_end_date": [day(i - 5) for i in index[early]],
        }
    )
    pre = pre[~pre["subject_id"].isin(out_rows["subject_id"])]
    persons = pd.DataFrame(
        {"person_id": pid, "gender_concept_id": np.where(male, MALE, FEMALE), "year_of_birth": yob}
    )
    ops = pd.DataFrame(
        {
            "person_id": pid,
            "observation_period_start_date": [day(i) for i in obs_start],
            "observation_period_end_date": [day(i) for i in obs_end],
        }
    )
    deaths = pd.DataFrame(
        {
            "person_id": pid[died],
            "death_date": [day(i + t) for i, t in zip(index[died], end[died], strict=True)],
        }
    )
    cp = pid[cond]
    conditions = pd.DataFrame(
        {
            "person_id": cp,
            "condition_concept_id": np.where(rng.random(len(cp)) < 0.5, 100, 101),
            "condition_start_date": [day(i - 10) for i in index[cond]],
        }
    )
    ancestors = pd.DataFrame(
        {"ancestor_concept_id": [100, 100, 101], "descendant_concept_id": [100, 101, 101]}
    )
    expected = pd.DataFrame(
        {
            "person_id": pid,
            "time": time.astype(float),
            "event": event.astype(float),
            "treatment": treat.astype(float),
            "age": age.astype(float),
            "male": male.astype(float),
            "cond": cond.astype(float),
        }
    )
    return {
        "persons": persons,
        "observation_periods": ops,
        "cohorts": pd.concat([cohorts, out_rows, pre]),
        "deaths": deaths,
        "conditions": conditions,
        "ancestors": ancestors,
        "expected": expected,
    }


def load_world(cdm: Cdm, world: dict[str, Any]) -> Cdm:
    return load(cdm, **{k: v for k, v in world.items() if k != "expected"})
