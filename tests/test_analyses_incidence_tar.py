"""Incidence with CohortIncidence time-at-risk windows: the SQL against a day-by-day Python reference
written from CohortIncidence's rules (not from Mercia's SQL), hand-made cases, the `tar` dimension
through release(), and the short follow-up warning."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercia.analyses.incidence import (
    SHORT_FOLLOW_UP_DAYS,
    IncidenceSettings,
    TimeAtRisk,
    attrition,
    attrition_steps,
    incidence,
    person_time,
)
from mercia.analyses.notes import CATALOGUE, Note, NoteCode
from mercia.cdm import Cdm
from mercia.disclosure import OPENSAFELY, DisclosureLog, DisclosurePolicy, release
from mercia.errors import StudyError
from test_analyses_incidence import age_on
from test_analyses_support import FEMALE, MALE, load

D0 = dt.date(2015, 1, 1)
ONE = dt.timedelta(days=1)


def d(n: int) -> dt.date:
    return D0 + dt.timedelta(days=n)


# ------------------------------------------------------------------ the reference, one day at a time


def reference(world: dict, s: IncidenceSettings, steps: dict | None = None) -> dict[tuple[int, int, int, int], list]:
    """(window, year, band, gender) -> [person_days, events, persons], from CohortIncidence's rules:
    a window is [anchor + offset, anchor + offset] of an entry whose start is in an observation period,
    its end cut at that period's end, kept only when it starts within the period and not after its end;
    a person's windows are a set of days (overlaps count once). An outcome entry excludes the days
    start + 1 .. end + clean window (every later day without repeated events). A day at risk is in a
    window, observed for washout_days before it, in the study window and not excluded; an event is an
    outcome start on a day at risk."""
    persons = world["persons"].set_index("person_id")
    ops = world["observation_periods"]
    coh = world["cohorts"]
    outcomes = defaultdict(set)
    for r in coh[coh["cohort_definition_id"] == s.outcome_cohort_id].itertuples():
        outcomes[r.subject_id].add((r.cohort_start_date, r.cohort_end_date))
    entries = []  # (person, anchor start, anchor end, period start, period end)
    if s.denominator_cohort_id is None:
        for r in ops.itertuples():
            entries.append((r.person_id, r.observation_period_start_date, r.observation_period_end_date,
                            r.observation_period_start_date, r.observation_period_end_date))
    else:
        for c in coh[coh["cohort_definition_id"] == s.denominator_cohort_id].itertuples():
            for r in ops[ops["person_id"] == c.subject_id].itertuples():
                if r.observation_period_start_date <= c.cohort_start_date <= r.observation_period_end_date:
                    entries.append((c.subject_id, c.cohort_start_date, c.cohort_end_date,
                                    r.observation_period_start_date, r.observation_period_end_date))
    days: dict[tuple[int, int], set[dt.date]] = defaultdict(set)
    for k, tar in enumerate(s.time_at_risk):
        for pid, cs, ce, ops_, ope in entries:
            ts = (cs if tar.start_with == "start" else ce) + dt.timedelta(days=tar.start_offset)
            te = (cs if tar.end_with == "start" else ce) + dt.timedelta(days=tar.end_offset)
            if not (ts <= te and ops_ <= ts <= ope):
                continue
            t = ts
            while t <= min(te, ope):
                ok = (t - ops_).days >= s.washout_days
                ok = ok and not (s.study_start and t < s.study_start) and not (s.study_end and t > s.study_end)
                if ok:
                    days[(pid, k)].add(t)
                t += ONE
    clean = s.clean_window_days or 0

    def excluded(pid: int, t: dt.date) -> bool:
        for os_, oe in outcomes[pid]:
            if s.repeated_events:
                if os_ + ONE <= t <= oe + dt.timedelta(days=clean):
                    return True
            elif t > os_:
                return True
        return False

    res: dict = defaultdict(lambda: [0, 0, set()])
    if steps is not None:  # the persons after each population step
        steps["entered"] = {e[0] for e in entries}
        steps["with_days"] = {pid for (pid, _), ds in days.items() if ds}
        steps["at_risk"] = {pid for (pid, _), ds in days.items() if any(not excluded(pid, t) for t in ds)}
    for (pid, k), ds in days.items():
        p = persons.loc[pid]
        dob = dt.date(int(p.year_of_birth), int(p.month_of_birth), int(p.day_of_birth))
        starts = {o for o, _ in outcomes[pid]}
        for t in ds:
            if excluded(pid, t):
                continue
            age = age_on(dob, t)
            band = next((i for i, (lo, hi) in enumerate(s.age_groups) if lo <= age and (hi is None or age <= hi)),
                        None)
            if band is None:
                continue
            cell = res[(k, t.year, band, int(p.gender_concept_id))]
            cell[0] += 1
            cell[1] += int(t in starts)
            cell[2].add(pid)
    return {key: [v[0], v[1], len(v[2]), v[2]] for key, v in res.items()}


def got(cdm: Cdm, s: IncidenceSettings) -> dict:
    df = person_time(cdm, s)
    return {(int(r.tar_k), int(r.yr), int(r.age_k), int(r.gender)): [int(r.person_days), int(r.n_events),
                                                                     int(r.n_persons)]
            for r in df.itertuples()}


def cells(ref: dict) -> dict:
    return {k: v[:3] for k, v in ref.items()}


@st.composite
def worlds(draw):
    """Persons with one or two observation periods, several (overlapping) denominator entries and
    outcome entries of any length, some before observation starts."""
    n = draw(st.integers(1, 4))
    persons, ops, cohorts = [], [], []
    for pid in range(1, n + 1):
        dob = dt.date(1995, 1, 1) + dt.timedelta(days=draw(st.integers(0, 365 * 8)))
        if draw(st.booleans()):
            dob = dt.date(2000, 2, 29)
        persons.append({"person_id": pid, "gender_concept_id": draw(st.sampled_from([MALE, FEMALE])),
                        "year_of_birth": dob.year, "month_of_birth": dob.month, "day_of_birth": dob.day})
        start = draw(st.integers(0, 400))
        end = start + draw(st.integers(0, 700))
        ops.append({"person_id": pid, "observation_period_start_date": d(start),
                    "observation_period_end_date": d(end)})
        if draw(st.booleans()):
            s2 = end + draw(st.integers(1, 200))
            ops.append({"person_id": pid, "observation_period_start_date": d(s2),
                        "observation_period_end_date": d(s2 + draw(st.integers(0, 300)))})
        for x in draw(st.lists(st.integers(start - 100, end + 200), max_size=4)):
            cohorts.append({"cohort_definition_id": 3, "subject_id": pid, "cohort_start_date": d(x),
                            "cohort_end_date": d(x + draw(st.integers(0, 60)))})
        for cs in draw(st.lists(st.integers(start - 20, end + 20), max_size=3)):
            cohorts.append({"cohort_definition_id": 1, "subject_id": pid, "cohort_start_date": d(cs),
                            "cohort_end_date": d(cs + draw(st.integers(0, 300)))})
    return {
        "persons": pd.DataFrame(persons),
        "observation_periods": pd.DataFrame(ops),
        "cohorts": pd.DataFrame(cohorts, columns=["cohort_definition_id", "subject_id", "cohort_start_date",
                                                  "cohort_end_date"]),
    }


@st.composite
def windows(draw):
    sw, ew = draw(st.sampled_from(["start", "end"])), draw(st.sampled_from(["start", "end"]))
    so = draw(st.integers(-30, 60))
    eo = draw(st.integers(so if sw == ew else -60, 400))
    return TimeAtRisk(start_with=sw, start_offset=so, end_with=ew, end_offset=eo)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    world=worlds(),
    tars=st.lists(windows(), min_size=1, max_size=3, unique_by=lambda t: t.label),
    washout=st.sampled_from([0, 30]),
    repeated=st.booleans(),
    clean=st.sampled_from([None, 0, 7, 90]),
    denominator=st.sampled_from([None, 1]),
    study=st.sampled_from([(None, None), (d(200), d(700))]),
)
def test_time_at_risk_equals_the_day_by_day_reference(world, tars, washout, repeated, clean, denominator, study):
    s = IncidenceSettings(
        outcome_cohort_id=3, washout_days=washout, repeated_events=repeated,
        clean_window_days=clean if repeated else None, denominator_cohort_id=denominator,
        study_start=study[0], study_end=study[1], time_at_risk=tars, age_groups=[(0, 17), (18, 19), (20, None)],
    )
    steps: dict = {}
    with Cdm.open() as cdm:
        load(cdm, **world)
        ref = reference(world, s, steps)
        assert got(cdm, s) == cells(ref)
        counts = attrition(cdm, s)
    # The population: persons entering, with days in a window, at risk, in an age group.
    coh = world["cohorts"]
    first = (set(coh.loc[coh["cohort_definition_id"] == 1, "subject_id"]) if denominator
             else set(world["observation_periods"]["person_id"]))
    in_cells = {pid for k, v in ref.items() for pid in v[3]}
    want = [len(first), *([len(steps["entered"])] if denominator else []), len(steps["with_days"]),
            len(steps["at_risk"]), len(in_cells)]
    assert counts == want
    assert len(counts) == len(attrition_steps(s))


def test_time_at_risk_on_every_engine(cdm_factory):
    rng = np.random.default_rng(7)
    persons, ops, cohorts = [], [], []
    for pid in range(1, 15):
        persons.append({"person_id": pid, "gender_concept_id": int(rng.choice([MALE, FEMALE])),
                        "year_of_birth": 1996 + pid % 5, "month_of_birth": 1 + pid % 12, "day_of_birth": 1 + pid})
        start = int(rng.integers(0, 300))
        end = start + int(rng.integers(100, 900))
        ops.append({"person_id": pid, "observation_period_start_date": d(start),
                    "observation_period_end_date": d(end)})
        for x in rng.integers(start - 50, end + 50, int(rng.integers(1, 4))):
            cohorts.append({"cohort_definition_id": 3, "subject_id": pid, "cohort_start_date": d(int(x)),
                            "cohort_end_date": d(int(x) + int(rng.integers(0, 40)))})
        for cs in rng.integers(start, end + 1, int(rng.integers(1, 3))):
            cohorts.append({"cohort_definition_id": 1, "subject_id": pid, "cohort_start_date": d(int(cs)),
                            "cohort_end_date": d(int(cs))})  # one-day entries, as a diagnosis record
    world = {"persons": pd.DataFrame(persons), "observation_periods": pd.DataFrame(ops),
             "cohorts": pd.DataFrame(cohorts)}
    s = IncidenceSettings(
        outcome_cohort_id=3, denominator_cohort_id=1, repeated_events=True, clean_window_days=14,
        time_at_risk=[TimeAtRisk(end_with="start", end_offset=365),
                      TimeAtRisk(start_offset=1, end_with="start", end_offset=90), TimeAtRisk()],
        age_groups=[(0, 17), (18, 19), (20, None)],
    )
    ref = reference(world, s)
    assert got(load(cdm_factory(), **world), s) == cells(ref)
    assert sum(v[1] for v in ref.values()) > 0


# --------------------------------------------------------------------------------- hand-made cases


def _one_person(outcomes: list[tuple[int, int]], entries: list[tuple[int, int]]) -> dict:
    rows = [(3, 1, d(a), d(b)) for a, b in outcomes] + [(1, 1, d(a), d(b)) for a, b in entries]
    return {
        "persons": pd.DataFrame({"person_id": [1], "gender_concept_id": [MALE], "year_of_birth": [1980],
                                 "month_of_birth": [1], "day_of_birth": [1]}),
        "observation_periods": pd.DataFrame({"person_id": [1], "observation_period_start_date": [d(0)],
                                             "observation_period_end_date": [d(999)]}),
        "cohorts": pd.DataFrame(rows, columns=["cohort_definition_id", "subject_id", "cohort_start_date",
                                               "cohort_end_date"]),
    }


def _totals(world: dict, **kw) -> list[tuple[int, int]]:
    s = IncidenceSettings(outcome_cohort_id=3, denominator_cohort_id=1, by=[], **kw)
    with Cdm.open() as cdm:
        load(cdm, **world)
        df = person_time(cdm, s, level=[]).sort_values("tar_k")
    return list(zip(df["person_days"].astype(int), df["n_events"].astype(int), strict=True))


def test_clean_window_runs_from_the_outcome_end():
    """Entry on day 100 (one day), window start..start+365 = days 100-465 (366 days). Outcomes on days
    150-159 and 170-170. Clean window 30: days 151-200 are excluded (151..159+30 and 171..170+30 merge),
    so 366 - 50 = 316 days; the outcome on day 170 falls in the first one's clean window: 1 event."""
    world = _one_person([(150, 159), (170, 170)], [(100, 100)])
    tar = [TimeAtRisk(end_with="start", end_offset=365)]
    assert _totals(world, time_at_risk=tar, repeated_events=True, clean_window_days=30) == [(316, 1)]
    # Clean window 0: days 151-159 excluded only; day 170 is at risk again and counts.
    assert _totals(world, time_at_risk=tar, repeated_events=True, clean_window_days=0) == [(357, 2)]
    # First outcome only: days after day 150 are gone.
    assert _totals(world, time_at_risk=tar) == [(51, 1)]


def test_windows_anchor_and_merge():
    """Two one-day entries (days 100 and 200): a window start..start+365 each, merged (days 100-565);
    start+1..start+30 (days 101-130 and 201-230); end-10..end+0 starts before... its entry, still
    inside observation (90-100, 190-200). An entry whose window would start before observation starts
    (day 5, start-10) gives no time."""
    world = _one_person([], [(100, 100), (200, 200)])
    tars = [TimeAtRisk(end_with="start", end_offset=365), TimeAtRisk(start_offset=1, end_with="start", end_offset=30),
            TimeAtRisk(start_with="end", start_offset=-10, end_with="end", end_offset=0)]
    assert _totals(world, time_at_risk=tars) == [(466, 0), (60, 0), (22, 0)]
    early = _one_person([], [(5, 5)])
    assert _totals(early, time_at_risk=[TimeAtRisk(start_offset=-10, end_with="start", end_offset=10)]) == []
    # The end is cut at the observation period's end (day 999).
    late = _one_person([], [(900, 900)])
    assert _totals(late, time_at_risk=[TimeAtRisk(end_with="start", end_offset=365)]) == [(100, 0)]


def test_the_default_window_keeps_the_old_numbers():
    """Without time_at_risk nothing changes (no `tar` column); and the window start+0..end+0 with first
    outcomes only gives the same person-time and events as the old default, cell for cell."""
    world = _one_person([(150, 159), (300, 300)], [(100, 400)])
    s = IncidenceSettings(outcome_cohort_id=3, denominator_cohort_id=1)
    with Cdm.open() as cdm:
        load(cdm, **world)
        old = person_time(cdm, s)
        new = person_time(cdm, s.model_copy(update={"time_at_risk": [TimeAtRisk()]}))
    assert "tar_k" not in old and list(new["tar_k"]) == [0] * len(new)
    pd.testing.assert_frame_equal(old.reset_index(drop=True), new.drop(columns="tar_k").reset_index(drop=True))
    assert int(old["person_days"].sum()) == 51


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(), washout=st.sampled_from([0, 30]), denominator=st.sampled_from([None, 1]))
def test_start_to_end_with_first_outcomes_is_the_old_default(world, washout, denominator):
    # The old default assumes a person's entries do not overlap (collapsed eras): keep the first of each person.
    coh = world["cohorts"]
    den = coh[coh["cohort_definition_id"] == 1].sort_values("cohort_start_date").drop_duplicates("subject_id")
    world = {**world, "cohorts": pd.concat([coh[coh["cohort_definition_id"] == 3], den])}
    s = IncidenceSettings(outcome_cohort_id=3, washout_days=washout, denominator_cohort_id=denominator)
    with Cdm.open() as cdm:
        load(cdm, **world)
        old = person_time(cdm, s)
        new = person_time(cdm, s.model_copy(update={"time_at_risk": [TimeAtRisk()]})).drop(columns="tar_k")
    key = ["yr", "age_k", "gender"]
    pd.testing.assert_frame_equal(old.sort_values(key).reset_index(drop=True), new.sort_values(key).reset_index(drop=True))


# ------------------------------------------------------------------------- released tables and notes


def _diagnosed(n: int = 40) -> dict:
    """n persons whose denominator entry is one day (a diagnosis record), each with years of observation
    after it; every fourth has the outcome 100 days later."""
    rows = []
    for pid in range(1, n + 1):
        rows.append((1, pid, d(10 + pid), d(10 + pid)))
        if pid % 4 == 0:
            rows.append((3, pid, d(110 + pid), d(110 + pid)))
    return {
        "persons": pd.DataFrame({"person_id": range(1, n + 1), "gender_concept_id": [MALE, FEMALE] * (n // 2),
                                 "year_of_birth": [1960] * n, "month_of_birth": [1] * n, "day_of_birth": [1] * n}),
        "observation_periods": pd.DataFrame({"person_id": range(1, n + 1),
                                             "observation_period_start_date": [d(0)] * n,
                                             "observation_period_end_date": [d(2000)] * n}),
        "cohorts": pd.DataFrame(rows, columns=["cohort_definition_id", "subject_id", "cohort_start_date",
                                               "cohort_end_date"]),
    }


def test_short_follow_up_is_warned_and_the_window_fixes_it():
    s = IncidenceSettings(outcome_cohort_id=3, denominator_cohort_id=1, by=["sex"])
    with Cdm.open() as cdm:
        load(cdm, **_diagnosed())
        res = incidence(cdm, s)
        assert Note(NoteCode.SHORT_FOLLOW_UP) in res.notes
        assert int(res["incidence"].data["person_days"].sum()) == 40  # one day each: the case
        fixed = incidence(cdm, s.model_copy(update={"time_at_risk": [TimeAtRisk(end_with="start", end_offset=365)]}))
        assert Note(NoteCode.SHORT_FOLLOW_UP) not in fixed.notes
        t = fixed["incidence"].data
        assert int(t["n_events"].sum()) == 10 and int(t["person_days"].sum()) == 30 * 366 + 10 * 101
        # A denominator followed for long enough is not warned about.
        long = IncidenceSettings(outcome_cohort_id=3, by=["sex"])
        assert Note(NoteCode.SHORT_FOLLOW_UP) not in incidence(cdm, long).notes
    text = CATALOGUE[NoteCode.SHORT_FOLLOW_UP]
    assert f"under {SHORT_FOLLOW_UP_DAYS} days" in text and "time_at_risk" in text


def test_windows_are_a_dimension_of_the_released_table():
    tars = [TimeAtRisk(end_with="start", end_offset=365), TimeAtRisk(end_with="start", end_offset=30)]
    s = IncidenceSettings(outcome_cohort_id=3, denominator_cohort_id=1, by=["sex"], time_at_risk=tars)
    with Cdm.open() as cdm:
        load(cdm, **_diagnosed())
        table = incidence(cdm, s)["incidence"]
    assert table.dimensions == ["tar", "sex"] and table.margins == ["sex"]
    out = release(table, DisclosurePolicy(name="loose", threshold=5, rounding_base=1), log=DisclosureLog()).data
    # Totals over sex within each window; never a total over windows (they overlap).
    assert set(out["tar"]) == {"start+0..start+365", "start+0..start+30"}
    assert set(out["sex"]) == {"Male", "Female", "Total"}
    # Below the threshold the windows still show, as rows fixed by the package, with nothing in them.
    small = release(table, OPENSAFELY, log=DisclosureLog()).data
    assert set(small["tar"]) <= {"start+0..start+365", "start+0..start+30"}


@pytest.mark.parametrize("kw,message", [
    ({"time_at_risk": [{"start_with": "start", "start_offset": 10, "end_with": "start", "end_offset": 5}]},
     "ends before it starts"),
    ({"time_at_risk": [{"start_with": "middle"}]}, "start_with"),
    ({"time_at_risk": [{}, {}]}, "repeats a window"),
    ({"clean_window_days": 30}, "clean_window_days applies"),
    ({"time_at_risk": [{"end_offset": k} for k in range(21)]}, "at most 20"),
    ({"clean_window_days": 30, "time_at_risk": [{}]}, "clean_window_days applies"),
])
def test_bad_windows_are_refused_with_one_line(kw, message):
    with pytest.raises((StudyError, ValueError), match=message):
        IncidenceSettings(outcome_cohort_id=3, **kw)


# ------------------------------------------------------------------------------------ study packages


def _package(settings: dict) -> dict:
    c = {"name": "c", "concepts": {"c": {"name": "c", "conditions": ["pneumonia"]}}, "entry": [{"condition": "c"}]}
    return {"name": "x", "cohorts": {"a": {"definition": c}, "o": {"definition": {**c, "name": "o"}}},
            "analyses": [{"type": "incidence", "outcome": "o", "denominator": "a", "settings": settings}]}


def test_packages_carry_windows_and_old_packages_keep_their_hash():
    from mercia.study.package import StudyPackage

    old = StudyPackage.from_dict(_package({"washout_days": 30}))
    # Left at their defaults the new settings are not part of the package, so its hash is unchanged.
    assert not {"time_at_risk", "clean_window_days"} & set(old.analyses[0].settings)
    new = StudyPackage.from_dict(_package({"washout_days": 30, "repeated_events": True, "clean_window_days": 7,
                                           "time_at_risk": [{"end_with": "start", "end_offset": 365}]}))
    assert new.content_hash != old.content_hash
    built = new.analyses[0].build(new.cohort_ids)
    assert [t.label for t in built.time_at_risk] == ["start+0..start+365"] and built.clean_window_days == 7


def test_bad_windows_in_a_package_are_one_line():
    from mercia.errors import MerciaError
    from mercia.study.package import StudyPackage

    with pytest.raises(MerciaError, match=r"analyses\[0\]\.settings\.time_at_risk\[0\]\.start_with: 'middle' is not allowed \(allowed: start, end\)"):
        StudyPackage.from_dict(_package({"time_at_risk": [{"start_with": "middle"}]}))
