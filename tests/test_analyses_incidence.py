"""Incidence, prevalence and entry counts: SQL against slow Python references, CIs against scipy."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from mercia.analyses.incidence import (
    DAYS_PER_YEAR,
    IncidenceSettings,
    PrevalenceSettings,
    age_label,
    cohort_entries,
    incidence,
    person_time,
    poisson_ci,
    prevalence,
    rate_ci,
    wilson_ci,
)
from mercia.cdm import Cdm
from mercia.disclosure import OPENSAFELY, DisclosureLog, release
from mercia.errors import StudyError
from test_analyses_support import FEMALE, MALE, load

D0 = dt.date(2015, 1, 1)


def d(n: int) -> dt.date:
    return D0 + dt.timedelta(days=n)


# ------------------------------------------------------------------------------ CIs against scipy


def test_poisson_ci_is_exact():
    k = np.array([0, 1, 2, 5, 17, 250])
    lo, hi = poisson_ci(k)
    # Garwood limits are gamma quantiles ...
    np.testing.assert_allclose(lo[1:], stats.gamma.ppf(0.025, k[1:]), rtol=1e-12)
    np.testing.assert_allclose(hi, stats.gamma.ppf(0.975, k + 1), rtol=1e-12)
    assert lo[0] == 0
    # ... and, by definition, the means at which the observed count is just at the tail.
    np.testing.assert_allclose(stats.poisson.sf(k[1:] - 1, lo[1:]), 0.025, rtol=1e-9)
    np.testing.assert_allclose(stats.poisson.cdf(k, hi), 0.025, rtol=1e-9)
    rate, rlo, rhi = rate_ci(k, 2.0 * np.ones(6), per=1000)
    np.testing.assert_allclose(rate, k * 500)
    np.testing.assert_allclose(rhi, hi * 500)
    np.testing.assert_allclose(rlo, lo * 500)
    assert np.isnan(rate_ci(3, 0.0)[0])


def test_wilson_equals_statsmodels():
    x = np.array([0, 1, 5, 50, 99, 100])
    n = np.array([10, 10, 37, 100, 100, 100])
    p, lo, hi = wilson_ci(x, n)
    ref_lo, ref_hi = proportion_confint(x, n, alpha=0.05, method="wilson")
    np.testing.assert_allclose(lo, ref_lo, atol=1e-12)
    np.testing.assert_allclose(hi, ref_hi, atol=1e-12)
    np.testing.assert_allclose(p, x / n)


# ------------------------------------------------------------------ a slow, day-by-day reference


def add_years(dob: dt.date, n: int) -> dt.date:
    try:
        return dob.replace(year=dob.year + n)
    except ValueError:  # 29 February in a common year: the engines give 28 February
        return dob.replace(year=dob.year + n, day=28)


def age_on(dob: dt.date, t: dt.date) -> int:
    a = t.year - dob.year
    return a if add_years(dob, a) <= t else a - 1


def reference(world: dict, s: IncidenceSettings) -> dict[tuple[int, int, int], list[int]]:
    """(year, band index, gender) -> [person_days, events], one day at a time."""
    persons = world["persons"].set_index("person_id")
    ops = world["observation_periods"]
    coh = world["cohorts"]
    out_dates = defaultdict(set)
    for r in coh[coh["cohort_definition_id"] == s.outcome_cohort_id].itertuples():
        out_dates[r.subject_id].add(r.cohort_start_date)
    spans = []
    if s.denominator_cohort_id is None:
        for r in ops.itertuples():
            spans.append(
                (
                    r.person_id,
                    r.observation_period_start_date,
                    r.observation_period_start_date,
                    r.observation_period_end_date,
                )
            )
    else:
        for c in coh[coh["cohort_definition_id"] == s.denominator_cohort_id].itertuples():
            for r in ops[ops["person_id"] == c.subject_id].itertuples():
                if r.observation_period_start_date <= c.cohort_start_date <= r.observation_period_end_date:
                    spans.append(
                        (
                            c.subject_id,
                            r.observation_period_start_date,
                            c.cohort_start_date,
                            min(c.cohort_end_date, r.observation_period_end_date),
                        )
                    )
    bands = s.age_groups
    res: dict[tuple[int, int, int], list[int]] = defaultdict(lambda: [0, 0])
    w = s.washout_days
    for pid, obs_start, a, b in spans:
        p = persons.loc[pid]
        dob = dt.date(int(p.year_of_birth), int(p.month_of_birth), int(p.day_of_birth))
        xs = out_dates[pid]
        t = a
        while t <= b:
            ok = (t - obs_start).days >= w
            if (s.study_start and t < s.study_start) or (s.study_end and t > s.study_end):
                ok = False
            if ok:
                if s.repeated_events:
                    ok = not any(t - dt.timedelta(days=w) <= x < t for x in xs)
                else:
                    ok = not any(x < t for x in xs)
            if ok:
                age = age_on(dob, t)
                k = next(
                    (i for i, (lo, hi) in enumerate(bands) if lo <= age and (hi is None or age <= hi)), None
                )
                if k is not None:
                    cell = res[(t.year, k, int(p.gender_concept_id))]
                    cell[0] += 1
                    cell[1] += int(t in xs)
            t += dt.timedelta(days=1)
    return {k: v for k, v in res.items() if v[0]}


@st.composite
def worlds(draw):
    n = draw(st.integers(1, 4))
    persons, ops, cohorts = [], [], []
    for pid in range(1, n + 1):
        dob = dt.date(1995, 1, 1) + dt.timedelta(days=draw(st.integers(0, 365 * 8)))
        if draw(st.booleans()):
            dob = dt.date(2000, 2, 29)  # the awkward birthday
        persons.append(
            {
                "person_id": pid,
                "gender_concept_id": draw(st.sampled_from([MALE, FEMALE])),
                "year_of_birth": dob.year,
                "month_of_birth": dob.month,
                "day_of_birth": dob.day,
            }
        )
        start = draw(st.integers(0, 400))
        end = start + draw(st.integers(0, 700))
        ops.append(
            {
                "person_id": pid,
                "observation_period_start_date": d(start),
                "observation_period_end_date": d(end),
            }
        )
        if draw(st.booleans()):  # a second, later period
            s2 = end + draw(st.integers(1, 200))
            ops.append(
                {
                    "person_id": pid,
                    "observation_period_start_date": d(s2),
                    "observation_period_end_date": d(s2 + draw(st.integers(0, 300))),
                }
            )
        for x in draw(st.lists(st.integers(start - 100, end + 100), max_size=4)):
            cohorts.append(
                {
                    "cohort_definition_id": 3,
                    "subject_id": pid,
                    "cohort_start_date": d(x),
                    "cohort_end_date": d(x + 3),
                }
            )
        if draw(st.booleans()):
            cs = draw(st.integers(start, end))
            cohorts.append(
                {
                    "cohort_definition_id": 1,
                    "subject_id": pid,
                    "cohort_start_date": d(cs),
                    "cohort_end_date": d(cs + draw(st.integers(0, 500))),
                }
            )
    return {
        "persons": pd.DataFrame(persons),
        "observation_periods": pd.DataFrame(ops),
        "cohorts": pd.DataFrame(
            cohorts, columns=["cohort_definition_id", "subject_id", "cohort_start_date", "cohort_end_date"]
        ),
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    world=worlds(),
    washout=st.sampled_from([0, 1, 30, 180]),
    repeated=st.booleans(),
    denominator=st.sampled_from([None, 1]),
    study=st.sampled_from([(None, None), (d(200), d(700))]),
)
def test_person_time_split_equals_day_by_day_reference(world, washout, repeated, denominator, study):
    s = IncidenceSettings(
        outcome_cohort_id=3,
        washout_days=washout,
        repeated_events=repeated,
        denominator_cohort_id=denominator,
        study_start=study[0],
        study_end=study[1],
        age_groups=[(0, 17), (18, 19), (20, None)],
    )
    with Cdm.open() as cdm:
        load(cdm, **world)
        got = person_time(cdm, s)
    mine = {
        (int(r.yr), int(r.age_k), int(r.gender)): [int(r.person_days), int(r.n_events)]
        for r in got.itertuples()
        if r.person_days
    }
    assert mine == reference(world, s)


def seeded_world(seed: int, n: int = 12) -> dict:
    """The same shape as `worlds()`, drawn with numpy, for the engine comparison below."""
    rng = np.random.default_rng(seed)
    persons, ops, cohorts = [], [], []
    for pid in range(1, n + 1):
        dob = (
            dt.date(2000, 2, 29)
            if pid % 4 == 0
            else dt.date(1995, 1, 1) + dt.timedelta(days=int(rng.integers(0, 2920)))
        )
        persons.append(
            {
                "person_id": pid,
                "gender_concept_id": int(rng.choice([MALE, FEMALE])),
                "year_of_birth": dob.year,
                "month_of_birth": dob.month,
                "day_of_birth": dob.day,
            }
        )
        start = int(rng.integers(0, 400))
        end = start + int(rng.integers(0, 700))
        ops.append(
            {
                "person_id": pid,
                "observation_period_start_date": d(start),
                "observation_period_end_date": d(end),
            }
        )
        for x in rng.integers(start - 100, end + 100, int(rng.integers(0, 5))):
            cohorts.append(
                {
                    "cohort_definition_id": 3,
                    "subject_id": pid,
                    "cohort_start_date": d(int(x)),
                    "cohort_end_date": d(int(x) + 3),
                }
            )
        cs = int(rng.integers(start, end + 1))
        cohorts.append(
            {
                "cohort_definition_id": 1,
                "subject_id": pid,
                "cohort_start_date": d(cs),
                "cohort_end_date": d(cs + int(rng.integers(0, 500))),
            }
        )
    return {
        "persons": pd.DataFrame(persons),
        "observation_periods": pd.DataFrame(ops),
        "cohorts": pd.DataFrame(cohorts),
    }


@pytest.mark.parametrize("washout,repeated,denominator", [(0, True, None), (30, True, 1), (90, False, None)])
def test_person_time_on_every_engine(cdm_factory, washout, repeated, denominator):
    world = seeded_world(washout + int(repeated))
    s = IncidenceSettings(
        outcome_cohort_id=3,
        washout_days=washout,
        repeated_events=repeated,
        denominator_cohort_id=denominator,
        age_groups=[(0, 17), (18, 19), (20, None)],
    )
    cdm = load(cdm_factory(), **world)
    got = person_time(cdm, s)
    mine = {
        (int(r.yr), int(r.age_k), int(r.gender)): [int(r.person_days), int(r.n_events)]
        for r in got.itertuples()
        if r.person_days
    }
    ref = reference(world, s)
    assert mine == ref and sum(v[1] for v in ref.values()) > 0


# ------------------------------------------------------------------------------- end to end


def _world():
    persons = pd.DataFrame(
        {
            "person_id": [1, 2, 3, 4],
            "gender_concept_id": [MALE, FEMALE, FEMALE, MALE],
            "year_of_birth": [1950, 1980, 2000, 1960],
            "month_of_birth": [6, 1, 3, 1],
            "day_of_birth": [15, 1, 1, 1],
        }
    )
    ops = pd.DataFrame(
        {
            "person_id": [1, 2, 3, 4],
            "observation_period_start_date": [dt.date(2010, 1, 1)] * 4,
            "observation_period_end_date": [dt.date(2020, 12, 31)] * 3 + [dt.date(2015, 6, 30)],
        }
    )
    out = pd.DataFrame(
        {
            "cohort_definition_id": 3,
            "subject_id": [1, 1, 2, 3],
            "cohort_start_date": [
                dt.date(2016, 3, 1),
                dt.date(2016, 4, 1),
                dt.date(2018, 1, 1),
                dt.date(2009, 1, 1),
            ],
            "cohort_end_date": [
                dt.date(2016, 3, 10),
                dt.date(2016, 4, 10),
                dt.date(2018, 2, 1),
                dt.date(2019, 1, 1),
            ],
        }
    )
    target = pd.DataFrame(
        {
            "cohort_definition_id": 1,
            "subject_id": [1, 2, 4],
            "cohort_start_date": [dt.date(2015, 1, 1), dt.date(2017, 6, 1), dt.date(2014, 1, 1)],
            "cohort_end_date": [dt.date(2017, 1, 1), dt.date(2019, 6, 1), dt.date(2015, 1, 1)],
        }
    )
    return {"persons": persons, "observation_periods": ops, "cohorts": pd.concat([out, target])}


def test_incidence_table_and_release(cdm_factory):
    cdm = load(cdm_factory(), **_world())
    s = IncidenceSettings(
        outcome_cohort_id=3,
        washout_days=365,
        repeated_events=True,
        study_start=dt.date(2012, 1, 1),
        study_end=dt.date(2019, 12, 31),
    )
    res = incidence(cdm, s)
    t = res["incidence"].data
    assert not res.empty
    # Person 1: 2016-03-01 counted, 2016-04-01 falls in its washout; person 2: 2018-01-01. Person 3's
    # outcome starts before her observation does, so it is never an event.
    assert int(t["n_events"].sum()) == 2
    exp_rate, lo, hi = rate_ci(t["n_events"], t["person_days"] / DAYS_PER_YEAR)
    np.testing.assert_allclose(t["incidence_per_1000py"], exp_rate)
    np.testing.assert_allclose(t["ci_upper"], hi)
    np.testing.assert_allclose(t["ci_lower"], lo)
    assert set(t["sex"]) == {"Male", "Female"}
    released = release(res["incidence"], OPENSAFELY, log=DisclosureLog())
    assert "incidence_per_1000py" in released.data.columns
    only_year = incidence(cdm, s.model_copy(update={"by": ["calendar_year"]}))["incidence"].data
    assert only_year["person_days"].sum() == t["person_days"].sum()
    # Target-cohort denominator: less time, first events only.
    res_t = incidence(
        cdm, s.model_copy(update={"denominator_cohort_id": 1, "repeated_events": False, "washout_days": 0})
    )
    assert res_t["incidence"].data["person_days"].sum() < t["person_days"].sum()


def test_incidence_rows_of_few_persons_do_not_leave(cdm_factory):
    """Issue 12: a row exists only where someone had time at risk, so its year, age band and sex said
    who was in a small denominator. Each cell counts its distinct persons, and release() drops the rows
    whose persons are suppressed, margins included (a person in eight years is still one person):
    four persons under OpenSAFELY's threshold leave no row but the grand total."""
    cdm = load(cdm_factory(), **_world())
    s = IncidenceSettings(outcome_cohort_id=3, study_start=dt.date(2012, 1, 1), study_end=dt.date(2019, 12, 31))
    res = incidence(cdm, s)
    t = res["incidence"].data
    assert len(t) > 1 and t["n_persons"].max() <= 3
    released = release(res["incidence"], OPENSAFELY, log=DisclosureLog()).data
    for dim in ("age_group", "sex", "calendar_year"):
        assert set(released[dim]) <= {"Total"}, released[dim].tolist()
    # Persons are distinct in each cell at the table's own level: not the sum of finer cells.
    fine = person_time(cdm, s)
    by_year = incidence(cdm, s.model_copy(update={"by": ["calendar_year"]}))["incidence"].data
    for _, row in by_year.iterrows():
        cells = fine[fine["yr"] == int(row["calendar_year"])]
        assert cells["n_persons"].max() <= row["n_persons"] <= cells["n_persons"].sum()
    assert by_year["n_persons"].max() <= 4


def test_prevalence_equals_pandas_count(cdm_factory):
    w = _world()
    cdm = load(cdm_factory(), **w)
    points = [dt.date(2016, 3, 5), dt.date(2018, 1, 15), dt.date(2019, 6, 1)]
    intervals = [(dt.date(2016, 1, 1), dt.date(2016, 12, 31))]
    s = PrevalenceSettings(
        outcome_cohort_id=3,
        points=points,
        intervals=intervals,
        lookback_days=30,
        age_groups=[(0, 39), (40, None)],
    )
    got = prevalence(cdm, s)["prevalence"].data
    persons = w["persons"].set_index("person_id")
    ops = w["observation_periods"]
    out = w["cohorts"][w["cohorts"]["cohort_definition_id"] == 3]
    rows = []
    for a, b in [(p, p) for p in points] + intervals:
        den = ops[(ops["observation_period_start_date"] <= b) & (ops["observation_period_end_date"] >= a)]
        cases = set(
            out[(out["cohort_start_date"] <= b) & (out["cohort_end_date"] >= a - dt.timedelta(days=30))][
                "subject_id"
            ]
        )
        label = a.isoformat() if a == b and (a, b) not in intervals else f"{a}..{b}"
        for pid in den["person_id"].unique():
            p = persons.loc[pid]
            age = age_on_dt(p, a)
            rows.append(
                {
                    "period": label,
                    "age_group": age_label(0, 39) if age <= 39 else age_label(40, None),
                    "sex": "Male" if p.gender_concept_id == MALE else "Female",
                    "case": pid in cases,
                }
            )
    ref = (
        pd.DataFrame(rows)
        .groupby(["period", "age_group", "sex"])
        .agg(n_persons=("case", "size"), n_cases=("case", "sum"))
        .reset_index()
    )
    merged = ref.merge(got, on=["period", "age_group", "sex"], how="outer", suffixes=("_ref", ""))
    assert (merged["n_persons_ref"] == merged["n_persons"]).all()
    assert (merged["n_cases_ref"] == merged["n_cases"]).all()
    p, lo, hi = wilson_ci(got["n_cases"], got["n_persons"])
    np.testing.assert_allclose(got["ci_lower"], lo)
    np.testing.assert_allclose(got["ci_upper"], hi)
    np.testing.assert_allclose(got["prevalence"], p)


def age_on_dt(p, t: dt.date) -> int:
    return age_on(dt.date(int(p.year_of_birth), int(p.month_of_birth), int(p.day_of_birth)), t)


def test_cohort_entries(cdm_factory):
    w = _world()
    cdm = load(cdm_factory(), **w)
    res = cohort_entries(cdm, [1, 3], "year")
    t = res["cohort_entries"].data
    ref = w["cohorts"].assign(period=lambda f: [str(x.year) for x in f["cohort_start_date"]])
    ref = ref.groupby(["cohort_definition_id", "period"]).size()
    assert (
        dict(zip(zip(t["cohort_id"], t["period"], strict=True), t["n_entries"], strict=True)) == ref.to_dict()
    )
    months = cohort_entries(cdm, [3], "month")["cohort_entries"].data
    assert "2016-03" in set(months["period"])


def test_empty_denominator(cdm_factory):
    cdm = load(
        cdm_factory(),
        persons=pd.DataFrame({"person_id": [1], "gender_concept_id": [MALE], "year_of_birth": [1970]}),
        observation_periods=pd.DataFrame(
            {
                "person_id": [1],
                "observation_period_start_date": [dt.date(2000, 1, 1)],
                "observation_period_end_date": [dt.date(2000, 6, 1)],
            }
        ),
    )
    res = incidence(cdm, IncidenceSettings(outcome_cohort_id=3, denominator_cohort_id=9))
    assert res.empty and len(res["incidence"].data) == 0
    prev = prevalence(
        cdm, PrevalenceSettings(outcome_cohort_id=3, denominator_cohort_id=9, points=[dt.date(2000, 2, 1)])
    )
    assert prev.empty
    entries = cohort_entries(cdm, [9])
    assert entries.empty


def test_empty_tables_pass_release(duck_cdm):
    cdm = load(
        duck_cdm,
        persons=pd.DataFrame({"person_id": [1], "gender_concept_id": [MALE], "year_of_birth": [1970]}),
        observation_periods=pd.DataFrame(
            {
                "person_id": [1],
                "observation_period_start_date": [dt.date(2000, 1, 1)],
                "observation_period_end_date": [dt.date(2000, 6, 1)],
            }
        ),
    )
    res = incidence(cdm, IncidenceSettings(outcome_cohort_id=3, denominator_cohort_id=9))
    assert len(release(res["incidence"], OPENSAFELY, log=DisclosureLog()).data) == 0


def test_settings_errors():
    with pytest.raises(StudyError, match="overlap"):
        IncidenceSettings(outcome_cohort_id=1, age_groups=[(0, 20), (20, 30)])
    with pytest.raises(StudyError, match="before study_start"):
        IncidenceSettings(outcome_cohort_id=1, study_start=dt.date(2020, 1, 1), study_end=dt.date(2019, 1, 1))
    with pytest.raises(StudyError, match="points"):
        PrevalenceSettings(outcome_cohort_id=1)


def test_spec_washout_repeated_events_and_a_birthday(cdm_factory):
    """One person, born 1990-03-15, observed from 2019; study year 2020; washout 30 days, repeated events.

    Outcomes on 1 Feb (counted), 20 Feb (in the washout of 1 Feb: not counted, but it washes out too,
    to 21 Mar), 1 Jun (counted; washes out to 1 Jul).
      age 29: 1 Jan .. 1 Feb              = 32 days, 1 event
      age 30: 22 Mar .. 1 Jun, 2 Jul .. 31 Dec = 72 + 183 = 255 days, 1 event
    """
    cdm = load(
        cdm_factory(),
        persons=pd.DataFrame(
            {
                "person_id": [1],
                "gender_concept_id": [FEMALE],
                "year_of_birth": [1990],
                "month_of_birth": [3],
                "day_of_birth": [15],
            }
        ),
        observation_periods=pd.DataFrame(
            {
                "person_id": [1],
                "observation_period_start_date": [dt.date(2019, 1, 1)],
                "observation_period_end_date": [dt.date(2021, 6, 30)],
            }
        ),
        cohorts=pd.DataFrame(
            {
                "cohort_definition_id": 3,
                "subject_id": 1,
                "cohort_start_date": [dt.date(2020, 2, 1), dt.date(2020, 2, 20), dt.date(2020, 6, 1)],
                "cohort_end_date": [dt.date(2020, 2, 1), dt.date(2020, 2, 20), dt.date(2020, 6, 1)],
            }
        ),
    )
    s = IncidenceSettings(
        outcome_cohort_id=3,
        washout_days=30,
        repeated_events=True,
        study_start=dt.date(2020, 1, 1),
        study_end=dt.date(2020, 12, 31),
        age_groups=[(0, 29), (30, None)],
        by=["age_group"],
    )
    t = incidence(cdm, s)["incidence"].data.set_index("age_group")
    assert t.loc["0-29", ["person_days", "n_events"]].tolist() == [32, 1]
    assert t.loc["30+", ["person_days", "n_events"]].tolist() == [255, 1]
    # First events only: time ends at the first outcome.
    first = incidence(cdm, s.model_copy(update={"repeated_events": False}))["incidence"].data
    assert first[["age_group", "person_days", "n_events"]].values.tolist() == [["0-29", 32, 1]]
