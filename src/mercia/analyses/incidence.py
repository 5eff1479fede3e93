"""Incidence rates, prevalence and cohort entry counts, computed in the database.

Incidence. The denominator is the persons of a target cohort (time in each cohort entry, within an
observation period) or the whole observed population (observation periods). A day `t` of a
denominator period is *at risk* when
  - the person has been observed for at least `washout_days` days before it
    (t - washout_days >= the observation period's start), and
  - with `repeated_events`: no outcome start in the `washout_days` days before it ([t - w, t - 1]);
    without: no outcome start on any day before it (first events only).
An outcome start on an at-risk day is an event; others (in a washout) are not counted. After an
event, time at risk restarts the day after its washout ends (repeated events) or never.
Person-time is counted in days (both ends inclusive) and split in SQL across calendar years and age
bands (age in whole years from the date of birth; a 29 February birthday falls on 28 February).
Rates are per 1,000 person-years (365.25 days) with exact Poisson 95% CIs. Time at ages outside
every age group is not counted. Denominator periods of one person are assumed not to overlap (as
observation periods and collapsed cohort eras do not).

Time at risk (`time_at_risk`, OHDSI CohortIncidence's rules, see `_tar_den_sql` and `_tar_ctes`):
instead of the entries themselves, windows anchored on each entry's start or end with day offsets,
cut at the end of the observation period the entry starts in, a person's overlapping windows merged;
an outcome entry excludes the days from its start + 1 to its end + `clean_window_days` (with
`repeated_events`) or every later day (first outcome only); an event is an outcome start on a day at
risk. Each window is a level of the table's `tar` dimension.

Every incidence result also carries its population (`{name}_attrition`: persons after each rule) and,
without windows, a note when the denominator's follow-up averages under 30 days per person.

Prevalence. For each point date (or interval [start, end]) the denominator is the persons in the
denominator population on that date (at any time in the interval) with `washout_days` of prior
observation; a case is one with an outcome cohort entry that overlaps [start - lookback_days, end].
Proportions have Wilson score CIs.

Outcome starts count once per person and day (same-day outcome entries are one event).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy import stats

from mercia import limits
from mercia.analyses.notes import Note, NoteCode
from mercia.analyses.population import population_table
from mercia.analyses.result import AnalysisResult
from mercia.cdm import Cdm
from mercia.cdm.query import bound, build, check_cohort_id, fetch_df, require_tables
from mercia.disclosure import RateSpec, ResultTable
from mercia.errors import StudyError
from mercia.model_doc import field_docs

DAYS_PER_YEAR = 365.25
# The finest cells person-time is computed in: calendar year, age band index, gender concept.
FINEST = ("yr", "age_k", "gender")
# The table dimension each of them becomes.
_DIMENSION_OF = {"yr": "calendar_year", "age_k": "age_group", "gender": "sex"}
Dimension = Literal["age_group", "sex", "calendar_year"]
DEFAULT_AGE_GROUPS: list[tuple[int, int | None]] = [(0, 17), (18, 39), (40, 64), (65, None)]
_MAX_AGE = 200  # the open band's upper end, in years
# Years, an SQL INTEGER; negative ages are refused by _bands, with its own message.
_Age = Annotated[int, Field(ge=-limits.MAX_INT32, le=limits.MAX_INT32)]


# ------------------------------------------------------------------------------------------- statistics


def poisson_ci(events: np.ndarray | float, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Garwood) confidence limits for a Poisson count: chi-square quantiles, 0 below at k = 0."""
    k = np.asarray(events, dtype=float)
    lower = np.where(k > 0, stats.chi2.ppf(alpha / 2, 2 * k) / 2, 0.0)
    upper = stats.chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2
    return lower, upper


def rate_ci(
    events: np.ndarray | float, person_years: np.ndarray | float, per: float = 1000.0, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rate, lower, upper) per `per` person-years; NaN where there is no person-time."""
    k = np.asarray(events, dtype=float)
    py = np.asarray(person_years, dtype=float)
    lo, hi = poisson_ci(k, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(py > 0, per / py, np.nan)
    return k * scale, lo * scale, hi * scale


def wilson_ci(
    cases: np.ndarray | float, n: np.ndarray | float, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(proportion, lower, upper) with Wilson score limits; NaN where n = 0."""
    x = np.asarray(cases, dtype=float)
    m = np.asarray(n, dtype=float)
    z = stats.norm.ppf(1 - alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(m > 0, x / m, np.nan)
        denom = 1 + z**2 / m
        centre = (p + z**2 / (2 * m)) / denom
        half = z * np.sqrt(p * (1 - p) / m + z**2 / (4 * m**2)) / denom
    return p, centre - half, centre + half


# --------------------------------------------------------------------------------------------- settings


def age_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


def sex_label(gender_concept_id: object) -> str:
    return {8507: "Male", 8532: "Female"}.get(int(gender_concept_id), "Unknown")  # type: ignore[call-overload]


class _Population(BaseModel):
    """Who is in the denominator: a cohort's entries or everyone observed, after a washout, by age."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    denominator_cohort_id: int | None = Field(
        None, le=limits.MAX_INT32,
        description="cohort whose entries (within observation) are the denominator; None: the observed "
        "population (every observation period)",
    )
    washout_days: int = Field(
        0, ge=0, le=limits.MAX_DAYS,
        description="days of prior observation a day needs to count (incidence: at risk; prevalence: in the "
        "denominator); with repeated_events, also the days after an outcome before time is at risk again",
    )
    age_groups: list[tuple[_Age, _Age | None]] = Field(
        default_factory=lambda: list(DEFAULT_AGE_GROUPS), max_length=limits.MAX_LIST,
        description="age bands as [lower, upper] in whole years, both inclusive, upper None for no upper "
        "limit; at least one, none overlapping. Time (or persons) at ages in no band is not counted",
    )

    @field_validator("age_groups")
    @classmethod
    def _bands(cls, v: list[tuple[int, int | None]]) -> list[tuple[int, int | None]]:
        if not v:
            raise StudyError("give at least one age group, e.g. [(0, None)] for all ages")
        spans = sorted((lo, _MAX_AGE if hi is None else hi) for lo, hi in v)
        for lo, hi in spans:
            if lo < 0 or hi < lo:
                raise StudyError(f"age group ({lo}, {hi}): give 0 <= lower <= upper (years, inclusive)")
        for (_, h1), (l2, _) in itertools.pairwise(spans):
            if l2 <= h1:
                raise StudyError(f"age groups overlap at {l2} years; each age must be in one group at most")
        return v


Anchor = Literal["start", "end"]
_Offset = Annotated[int, Field(ge=-limits.MAX_DAYS, le=limits.MAX_DAYS)]


@field_docs
class TimeAtRisk(BaseModel):
    """A time-at-risk window as OHDSI CohortIncidence defines it: from the denominator entry's start or
    end plus `start_offset` days to its start or end plus `end_offset` days, both days included. The
    end is cut at the end of the observation period the entry starts in; a window starting outside that
    period, or after its end, gives no time. (With the observed population as denominator the anchors
    are the observation period's start and end.)"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_with: Anchor = Field(
        "start", description="the window's first day is counted from the denominator entry's start or end"
    )
    start_offset: _Offset = Field(0, description="days added to start_with's date (may be negative)")
    end_with: Anchor = Field(
        "end", description="the window's last day is counted from the denominator entry's start or end (cut "
        "at the end of the observation period the entry starts in)"
    )
    end_offset: _Offset = Field(0, description="days added to end_with's date (may be negative)")

    @model_validator(mode="after")
    def _check(self) -> TimeAtRisk:
        if self.start_with == self.end_with and self.end_offset < self.start_offset:
            raise StudyError(
                f"time_at_risk {self.label}: it ends before it starts; make end_offset >= start_offset"
            )
        return self

    @property
    def label(self) -> str:
        """The window's name in released tables, e.g. 'start+0..start+365'."""
        return f"{self.start_with}{self.start_offset:+d}..{self.end_with}{self.end_offset:+d}"


MAX_WINDOWS = 20  # time-at-risk windows per analysis
# The mean follow-up per person in the denominator below which `incidence` warns (SHORT_FOLLOW_UP).
SHORT_FOLLOW_UP_DAYS = 30


@field_docs
class IncidenceSettings(_Population):
    """Incidence rates: events (outcome cohort starts on days at risk) per 1,000 person-years."""

    outcome_cohort_id: int = Field(  # check_cohort_id refuses negatives
        le=limits.MAX_INT32, description="cohort whose entries' start dates are the events"
    )
    repeated_events: bool = Field(
        False,
        description="count every outcome (time at risk resumes after each outcome's washout_days, or with "
        "time_at_risk its clean window); false: first events only (no time at risk after a person's first "
        "outcome, none for a person with an outcome before their denominator time or window)",
    )
    time_at_risk: list[TimeAtRisk] = Field(
        # Each window is a pass over every denominator entry: a handful, not MAX_LIST.
        default_factory=list, max_length=MAX_WINDOWS,
        description="OHDSI CohortIncidence time-at-risk windows (at most 20), each a level of the rates' `tar` "
        "dimension; empty: each denominator entry from cohort start to cohort end, no `tar` dimension",
    )
    clean_window_days: int | None = Field(
        None, ge=0, le=limits.MAX_DAYS,
        description="with time_at_risk and repeated_events: an outcome entry takes the days from its start + 1 "
        "to its end + this many days out of the time at risk (CohortIncidence's clean window); None: 0",
    )
    study_start: dt.date | None = Field(
        None, description="first date counted (YYYY-MM-DD); None: no limit"
    )
    study_end: dt.date | None = Field(
        None, description="last date counted (YYYY-MM-DD), not before study_start; None: no limit"
    )
    by: list[Dimension] = Field(
        default_factory=lambda: ["age_group", "sex", "calendar_year"], max_length=limits.MAX_LIST,
        description="dimensions the rates are split by, each at most once (person-time is cut at birthdays "
        "and year ends), with totals over each; empty: one overall rate",
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="1 - confidence level of the exact Poisson intervals: 0.05 gives 95%"
    )

    @model_validator(mode="after")
    def _check(self) -> IncidenceSettings:
        if self.study_start and self.study_end and self.study_end < self.study_start:
            raise StudyError("study_end is before study_start")
        if len(set(self.by)) != len(self.by):
            raise StudyError(f"'by' repeats a dimension: {self.by}")
        labels = [t.label for t in self.time_at_risk]
        if len(set(labels)) != len(labels):
            raise StudyError(f"time_at_risk repeats a window: {labels}; give each window once")
        if self.clean_window_days is not None and not (self.time_at_risk and self.repeated_events):
            raise StudyError(
                "clean_window_days applies with time_at_risk and repeated_events: true; without them "
                "washout_days is the outcome washout"
            )
        return self


@field_docs
class PrevalenceSettings(_Population):
    """Point and period prevalence: the share of the denominator with an outcome entry at the time."""

    outcome_cohort_id: int = Field(  # check_cohort_id refuses negatives
        le=limits.MAX_INT32, description="cohort whose entries make a person a case"
    )
    points: list[dt.date] = Field(
        default_factory=list, max_length=limits.MAX_LIST,
        description="dates of point prevalence (YYYY-MM-DD): persons in the denominator on the date, cases "
        "those with an outcome entry covering it",
    )
    intervals: list[tuple[dt.date, dt.date]] = Field(
        default_factory=list, max_length=limits.MAX_LIST,
        description="[start, end] date pairs of period prevalence: persons in the denominator at any time in "
        "the interval, cases those with an outcome entry overlapping it. Give points, intervals or both",
    )
    lookback_days: int = Field(
        0, ge=0, le=limits.MAX_DAYS,
        description="an outcome entry ending up to this many days before the date (interval start) still "
        "makes a case",
    )
    by: list[Literal["age_group", "sex"]] = Field(
        default_factory=lambda: ["age_group", "sex"], max_length=limits.MAX_LIST,
        description="dimensions each period is split by (age at the date or interval start), with totals",
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="1 - confidence level of the Wilson score intervals: 0.05 gives 95%"
    )

    @model_validator(mode="after")
    def _check(self) -> PrevalenceSettings:
        if not self.points and not self.intervals:
            raise StudyError("give prevalence points (dates) or intervals ((start, end) date pairs)")
        for a, b in self.intervals:
            if b < a:
                raise StudyError(f"prevalence interval {a}..{b} ends before it starts")
        return self


# ------------------------------------------------------------------------------------------ SQL pieces


def _denominator_sql(pop: _Population, study: bool = True) -> str:
    """CTE `den`: (person_id, s, e) at-risk-eligible spans: observed with washout_days of history."""
    clip_s = ", CAST($study_start AS DATE)" if study else ""
    clip_e = ", CAST($study_end AS DATE)" if study else ""
    if pop.denominator_cohort_id is None:
        return f"""
        den AS (
          SELECT op.person_id,
                 GREATEST(CAST(op.observation_period_start_date + CAST($washout AS INTEGER) AS DATE){clip_s}) AS s,
                 LEAST(op.observation_period_end_date{clip_e}) AS e
          FROM observation_period op
        )"""
    return f"""
        den AS (
          SELECT c.subject_id AS person_id,
                 GREATEST(c.cohort_start_date,
                          CAST(op.observation_period_start_date + CAST($washout AS INTEGER) AS DATE){clip_s}) AS s,
                 LEAST(c.cohort_end_date, op.observation_period_end_date{clip_e}) AS e
          FROM cohort c
          JOIN observation_period op ON op.person_id = c.subject_id
            AND c.cohort_start_date >= op.observation_period_start_date
            AND c.cohort_start_date <= op.observation_period_end_date
          WHERE c.cohort_definition_id = $denominator_id
        )"""


def _bands(pop: _Population, by_age: bool) -> list[tuple[int, int | None]]:
    return list(pop.age_groups) if by_age else [(0, None)]


def _band_rows(bands: Sequence[tuple[int, int | None]]) -> list[list[int]]:
    return [[k, lo, _MAX_AGE if hi is None else hi] for k, (lo, hi) in enumerate(bands)]


_DOB = "MAKE_DATE(p.year_of_birth, COALESCE(p.month_of_birth, 1), COALESCE(p.day_of_birth, 1))"
# CTE `pband`: each at-risk person's span in every age band (from the birthday starting it to the day
# before the one ending it); both incidence queries cut time at risk with it.
_PERSON_BANDS = f"""    pband AS (
      SELECT p.person_id, p.gender_concept_id AS gender, ag.k AS age_k,
             CAST({_DOB} + INTERVAL (ag.lo) YEAR AS DATE) AS bs,
             CAST(CAST({_DOB} + INTERVAL (ag.hi + 1) YEAR AS DATE) - 1 AS DATE) AS be
      FROM person p JOIN bands ag ON TRUE
      WHERE p.person_id IN (SELECT person_id FROM atrisk)
    ),
"""


def _pop_params(pop: _Population) -> dict[str, object]:
    params: dict[str, object] = {"washout": pop.washout_days}
    if pop.denominator_cohort_id is not None:
        params["denominator_id"] = check_cohort_id(pop.denominator_cohort_id, "denominator cohort id")
    return params


def _needed(cdm: Cdm, pop: _Population, what: str) -> None:
    require_tables(cdm, ["person", "observation_period", "cohort"], what)


# -------------------------------------------------------------------------------------------- incidence


def _incidence_ctes(s: IncidenceSettings) -> str:
    """The CTEs of the default time at risk (the denominator entries), up to `pieces`."""
    if s.repeated_events:
        counted = "ev.prev IS NULL OR DATE_DIFF('day', ev.prev, ev.x) > CAST($washout AS INTEGER)"
        tail = """
          UNION ALL
          -- free again after the last outcome's washout
          SELECT person_id, CAST(MAX(x) + CAST($washout AS INTEGER) + 1 AS DATE), DATE '9999-12-31', 0
          FROM ev GROUP BY person_id"""
    else:
        counted = "ev.prev IS NULL"
        tail = ""
    return f"""
    WITH {_denominator_sql(s).strip()},
    ev AS (
      SELECT person_id, x, LAG(x) OVER (PARTITION BY person_id ORDER BY x) AS prev
      FROM (SELECT DISTINCT o.subject_id AS person_id, o.cohort_start_date AS x
            FROM cohort o WHERE o.cohort_definition_id = $outcome_id
              AND o.subject_id IN (SELECT person_id FROM den)) o
    ),
    seg AS (
      -- Spans free of any outcome washout, each ending with the (counted) outcome that closes it.
      SELECT ev.person_id,
             CASE WHEN ev.prev IS NULL THEN DATE '1000-01-01'
                  ELSE CAST(ev.prev + CAST($washout AS INTEGER) + 1 AS DATE) END AS seg_start,
             ev.x AS seg_end, 1 AS has_event
      FROM ev WHERE {counted}
      {tail}
      UNION ALL
      SELECT DISTINCT d.person_id, DATE '1000-01-01', DATE '9999-12-31', 0
      FROM den d WHERE NOT EXISTS (SELECT 1 FROM ev WHERE ev.person_id = d.person_id)
    ),
    atrisk AS (
      SELECT d.person_id, GREATEST(d.s, g.seg_start) AS a, LEAST(d.e, g.seg_end) AS b,
             CASE WHEN g.has_event = 1 AND g.seg_end <= d.e THEN 1 ELSE 0 END AS has_event
      FROM den d JOIN seg g ON g.person_id = d.person_id
      WHERE GREATEST(d.s, g.seg_start) <= LEAST(d.e, g.seg_end)
    ),
    -- Time at risk is cut at birthdays (age bands) and year ends. Each person's band spans are
    -- computed once, and a span meets only the bands and years it overlaps (joined on overlap, not
    -- crossed with every band and year and filtered after: the same pieces, several times fewer rows).
{_PERSON_BANDS}    banded AS (
      SELECT r.person_id, pb.gender, pb.age_k, r.b, r.has_event,
             GREATEST(r.a, pb.bs) AS a1, LEAST(r.b, pb.be) AS b1
      FROM atrisk r JOIN pband pb ON pb.person_id = r.person_id AND pb.bs <= r.b AND pb.be >= r.a
    ),
    yrs AS (SELECT yr, MAKE_DATE(yr, 1, 1) AS ys, MAKE_DATE(yr, 12, 31) AS ye FROM years),
    pieces AS (
      SELECT x.person_id, x.gender, y.yr, x.age_k, x.b, x.has_event,
             GREATEST(x.a1, y.ys) AS a2, LEAST(x.b1, y.ye) AS b2
      FROM banded x JOIN yrs y ON y.ys <= x.b1 AND y.ye >= x.a1
    )"""


def _incidence_sql(s: IncidenceSettings, count_persons: bool = True,
                   level: Sequence[str] = FINEST) -> str:
    persons = "COUNT(DISTINCT person_id) AS n_persons," if count_persons else ""
    return f"""{_incidence_ctes(s)}
    SELECT {"".join(c + ", " for c in level)}
           {persons}
           SUM(DATE_DIFF('day', a2, b2) + 1) AS person_days,
           SUM(CASE WHEN has_event = 1 AND b2 = b THEN 1 ELSE 0 END) AS n_events
    FROM pieces WHERE a2 <= b2
    {("GROUP BY " + ", ".join(level)) if level else ""}
    """


# ------------------------------------------------------------------------- time at risk (CohortIncidence)


def _tar_den_sql(s: IncidenceSettings) -> str:
    """CTE `den`: (person_id, tar_k, s, e), each person's time-at-risk days per window `tar_k`, with no
    overlap, as CohortIncidence's `#TTAR_erafied`: each denominator entry's window (anchors plus
    offsets, the end cut at the end of the observation period the entry starts in, dropped when it
    starts after its end or outside that period), then Mercia's prior observation (`washout_days`) and
    the study window cut it, and overlapping windows of a person are merged."""
    if s.denominator_cohort_id is None:
        anchor = """
        SELECT op.person_id, op.observation_period_start_date AS cs, op.observation_period_end_date AS ce,
               op.observation_period_start_date AS ops, op.observation_period_end_date AS ope
        FROM observation_period op"""
    else:
        anchor = """
        SELECT c.subject_id AS person_id, c.cohort_start_date AS cs, c.cohort_end_date AS ce,
               op.observation_period_start_date AS ops, op.observation_period_end_date AS ope
        FROM cohort c
        JOIN observation_period op ON op.person_id = c.subject_id
          AND c.cohort_start_date >= op.observation_period_start_date
          AND c.cohort_start_date <= op.observation_period_end_date
        WHERE c.cohort_definition_id = $denominator_id"""
    return f"""
    anchors AS ({anchor}
    ),
    tar0 AS (
      SELECT a.person_id, t.k AS tar_k, a.ops, a.ope,
             CAST(CASE WHEN t.sw = 0 THEN a.cs ELSE a.ce END + CAST(t.so AS INTEGER) AS DATE) AS ts,
             CAST(CASE WHEN t.ew = 0 THEN a.cs ELSE a.ce END + CAST(t.eo AS INTEGER) AS DATE) AS te
      FROM anchors a JOIN tars t ON TRUE
    ),
    tar1 AS (
      SELECT person_id, tar_k,
             GREATEST(ts, CAST(ops + CAST($washout AS INTEGER) AS DATE), CAST($study_start AS DATE)) AS s,
             LEAST(te, ope, CAST($study_end AS DATE)) AS e
      FROM tar0 WHERE ts <= te AND ts >= ops AND ts <= ope
    ),
    tar2 AS (
      SELECT person_id, tar_k, s, e,
             CASE WHEN MAX(e) OVER (PARTITION BY person_id, tar_k ORDER BY s, e
                                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) >= s
                  THEN 0 ELSE 1 END AS is_start
      FROM tar1 WHERE s <= e
    ),
    tar3 AS (
      SELECT person_id, tar_k, s, e,
             SUM(is_start) OVER (PARTITION BY person_id, tar_k ORDER BY s, e
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS g
      FROM tar2
    ),
    den AS (SELECT person_id, tar_k, MIN(s) AS s, MAX(e) AS e FROM tar3 GROUP BY person_id, tar_k, g)"""


def _tar_ctes(s: IncidenceSettings) -> str:
    """Events, person-days (and persons) per window and cell of `level`, with CohortIncidence's outcome
    rules: an outcome entry makes the days from its start + 1 to its end + the clean window excluded
    (`repeated_events`), or every day after its start (first outcome only); overlapping exclusions
    merge. Time at risk is the window's days outside every exclusion; an event is an outcome start on
    such a day. So an outcome before the window whose exclusion reaches into it removes that time."""
    excl_end = (
        "CAST(oe + CAST($clean AS INTEGER) AS DATE)" if s.repeated_events else "DATE '9999-12-31'"
    )
    return f"""
    WITH {_tar_den_sql(s).strip()},
    oc AS (
      SELECT DISTINCT o.subject_id AS person_id, o.cohort_start_date AS os, o.cohort_end_date AS oe
      FROM cohort o WHERE o.cohort_definition_id = $outcome_id
        AND o.subject_id IN (SELECT person_id FROM den)
    ),
    ex0 AS (
      SELECT person_id, s, e,
             CASE WHEN MAX(e) OVER (PARTITION BY person_id ORDER BY s, e
                                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) >= s
                  THEN 0 ELSE 1 END AS is_start
      FROM (SELECT person_id, CAST(os + 1 AS DATE) AS s, {excl_end} AS e FROM oc) x
      WHERE e >= s
    ),
    ex1 AS (
      SELECT person_id, s, e,
             SUM(is_start) OVER (PARTITION BY person_id ORDER BY s, e
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS g
      FROM ex0
    ),
    ex AS (SELECT person_id, MIN(s) AS s, MAX(e) AS e FROM ex1 GROUP BY person_id, g),
    free AS (
      -- the complement of each person's exclusions
      SELECT person_id,
             COALESCE(CAST(LAG(e) OVER (PARTITION BY person_id ORDER BY s) + 1 AS DATE),
                      DATE '1000-01-01') AS fs,
             CAST(s - 1 AS DATE) AS fe
      FROM ex
      UNION ALL
      SELECT person_id, CAST(MAX(e) + 1 AS DATE) AS fs, DATE '9999-12-31' AS fe FROM ex GROUP BY person_id
      UNION ALL
      SELECT DISTINCT d.person_id, DATE '1000-01-01' AS fs, DATE '9999-12-31' AS fe
      FROM den d WHERE NOT EXISTS (SELECT 1 FROM ex WHERE ex.person_id = d.person_id)
    ),
    atrisk AS (
      SELECT d.person_id, d.tar_k, GREATEST(d.s, f.fs) AS a, LEAST(d.e, f.fe) AS b
      FROM den d JOIN free f ON f.person_id = d.person_id AND f.fs <= f.fe
        AND f.fs <= d.e AND f.fe >= d.s
    ),
    evs AS (
      SELECT DISTINCT r.person_id, r.tar_k, o.os AS x
      FROM atrisk r JOIN oc o ON o.person_id = r.person_id AND o.os >= r.a AND o.os <= r.b
    ),
{_PERSON_BANDS}    banded AS (
      SELECT r.person_id, r.tar_k, pb.gender, pb.age_k,
             GREATEST(r.a, pb.bs) AS a1, LEAST(r.b, pb.be) AS b1
      FROM atrisk r JOIN pband pb ON pb.person_id = r.person_id AND pb.bs <= r.b AND pb.be >= r.a
    ),
    yrs AS (SELECT yr, MAKE_DATE(yr, 1, 1) AS ys, MAKE_DATE(yr, 12, 31) AS ye FROM years),
    pieces AS (
      SELECT x.person_id, x.tar_k, x.gender, y.yr, x.age_k,
             GREATEST(x.a1, y.ys) AS a2, LEAST(x.b1, y.ye) AS b2
      FROM banded x JOIN yrs y ON y.ys <= x.b1 AND y.ye >= x.a1
    )"""


def _tar_sql(s: IncidenceSettings, count_persons: bool, level: Sequence[str]) -> str:
    persons = "COUNT(DISTINCT person_id) AS n_persons," if count_persons else ""
    lv = "".join(c + ", " for c in level)
    ev_level = {"yr": "CAST(EXTRACT(YEAR FROM e.x) AS INTEGER) AS yr", "age_k": "pb.age_k",
                "gender": "pb.gender"}
    on = "".join(f" AND ec.{c} = pt.{c}" for c in level)
    return f"""{_tar_ctes(s)},
    pt AS (
      SELECT tar_k, {lv} {persons} SUM(DATE_DIFF('day', a2, b2) + 1) AS person_days
      FROM pieces WHERE a2 <= b2 GROUP BY tar_k{"".join(", " + c for c in level)}
    ),
    ec AS (
      SELECT tar_k, {lv} COUNT(*) AS n_events FROM (
        SELECT e.tar_k{"".join(", " + ev_level[c] for c in level)}
        FROM evs e JOIN pband pb ON pb.person_id = e.person_id AND e.x >= pb.bs AND e.x <= pb.be
      ) z GROUP BY tar_k{"".join(", " + c for c in level)}
    )
    SELECT pt.*, COALESCE(ec.n_events, 0) AS n_events
    FROM pt LEFT JOIN ec ON ec.tar_k = pt.tar_k{on}
    """


def _tar_span_sql(s: IncidenceSettings) -> str:
    return f"WITH {_tar_den_sql(s).strip()} SELECT MIN(s), MAX(e) FROM den"


def _tar_rows(s: IncidenceSettings) -> list[list[int]]:
    return [[k, int(t.start_with == "end"), t.start_offset, int(t.end_with == "end"), t.end_offset]
            for k, t in enumerate(s.time_at_risk)]


def _follow_up_sql(pop: _Population) -> str:
    """Persons in the denominator with any time and their days, before outcomes are looked at."""
    return (f"WITH {_denominator_sql(pop).strip()} "
            "SELECT COUNT(DISTINCT person_id), SUM(DATE_DIFF('day', s, e) + 1) FROM den WHERE s <= e")


def _span_sql(pop: _Population) -> str:
    return f"WITH {_denominator_sql(pop).strip()} SELECT MIN(s), MAX(e) FROM den WHERE s <= e"


_Values = dict[str, tuple[list[str], list[list[int]]]]


def _plan(cdm: Cdm, settings: IncidenceSettings) -> tuple[dict[str, object], _Values, bool]:
    """The parameters and VALUES lists of the incidence queries, and whether anyone has days."""
    _needed(cdm, settings, "incidence")
    check_cohort_id(settings.outcome_cohort_id, "outcome cohort id")
    params = {
        **_pop_params(settings),
        "outcome_id": settings.outcome_cohort_id,
        "study_start": settings.study_start or dt.date(1000, 1, 1),
        "study_end": settings.study_end or dt.date(9999, 12, 31),
    }
    tars = bool(settings.time_at_risk)
    values: _Values = {}
    if tars:
        params["clean"] = settings.clean_window_days or 0
        values["tars"] = (["k", "sw", "so", "ew", "eo"], _tar_rows(settings))
    span_q = build(_tar_span_sql(settings) if tars else _span_sql(settings), cdm, dict(values))
    lo, hi = cdm.fetch_all(span_q, bound(span_q, params))[0]
    years = [[y] for y in range(lo.year, hi.year + 1)] if lo is not None else [[2000]]
    bands = _bands(settings, "age_group" in settings.by)
    values |= {"years": (["yr"], years), "bands": (["k", "lo", "hi"], _band_rows(bands))}
    return params, values, lo is not None


def person_time(cdm: Cdm, settings: IncidenceSettings, *, count_persons: bool = True,
                level: Sequence[str] = FINEST) -> pd.DataFrame:
    """Events, person-days and persons per cell of `level` (some of yr, age_k, gender: calendar year, age
    band index, gender concept; the finest level by default), computed in the database. Without
    `count_persons` the n_persons column is left out: the distinct count costs more than the rest of the
    query together. With time-at-risk windows a first column tar_k is the window's index."""
    if not set(level) <= set(FINEST):
        raise ValueError(f"level: {list(level)} is not a subset of {list(FINEST)}")
    params, values, any_days = _plan(cdm, settings)
    tars = bool(settings.time_at_risk)
    level = [c for c in FINEST if c in level]
    cols = [*(["tar_k"] if tars else []), *level, *(["n_persons"] if count_persons else []),
            "person_days", "n_events"]
    if not any_days:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in cols})
    sql = _tar_sql(settings, count_persons, level) if tars else _incidence_sql(settings, count_persons, level)
    df = fetch_df(cdm, build(sql, cdm, values), params)
    for c in cols:
        df[c] = df[c].astype("int64")
    return df[cols]


def attrition_steps(settings: IncidenceSettings) -> list[str]:
    """The population steps of an incidence analysis, in order (fixed words: the rules, not the data)."""
    cohort = settings.denominator_cohort_id is not None
    steps = ["persons in the denominator cohort", "entry in an observation period"] if cohort else ["persons observed"]
    steps.append(("days in a time-at-risk window" if settings.time_at_risk else "days in an entry" if cohort
                  else "observed days") + " after washout_days and in the study window")
    if settings.repeated_events:
        what = "an outcome's clean window" if settings.time_at_risk else "an outcome's washout"
        steps.append(f"persons with every such day in {what} removed")
    else:
        steps.append("persons with the outcome before time at risk removed")
    steps.append("time at risk in an age group")
    return steps


def attrition(cdm: Cdm, settings: IncidenceSettings) -> list[int]:
    """Distinct persons left after each of `attrition_steps(settings)`, counted in the database (each
    step's persons are a subset of the step before's)."""
    params, values, _ = _plan(cdm, settings)
    cohort = settings.denominator_cohort_id is not None
    if settings.time_at_risk:
        ctes, with_days, entered = _tar_ctes(settings), "SELECT person_id FROM den", "SELECT person_id FROM anchors"
    else:
        ctes = _incidence_ctes(settings)
        with_days, entered = "SELECT person_id FROM den WHERE s <= e", "SELECT person_id FROM den"
    first = ("SELECT subject_id AS person_id FROM cohort WHERE cohort_definition_id = $denominator_id" if cohort
             else "SELECT person_id FROM observation_period")
    parts = [first, *([entered] if cohort else []), with_days, "SELECT person_id FROM atrisk",
             "SELECT person_id FROM banded WHERE a1 <= b1"]
    union = " UNION ALL ".join(f"SELECT {k} AS k, person_id FROM ({q}) q{k}" for k, q in enumerate(parts))
    sql = f"{ctes} SELECT k, COUNT(DISTINCT person_id) AS n FROM ({union}) x GROUP BY k"
    got = dict(cdm.fetch_all(q := build(sql, cdm, values), bound(q, params)))
    return [int(got.get(k, 0)) for k in range(len(parts))]


def incidence(cdm: Cdm, settings: IncidenceSettings, *, name: str = "incidence") -> AnalysisResult:
    """Incidence rates per 1,000 person-years by the `by` dimensions.

    Table `{name}` (rates): dimensions `tar` (with time-at-risk windows) and `by`, count columns n_events and n_persons (distinct persons with
    time at risk in the cell, released in interior cells only: they do not add up), exposure
    person_years, derived rate `incidence_per_1000py` (recomputed by release() from released values,
    with totals over every dimension); site-side columns person_days, rate, ci_lower, ci_upper. A cell
    is a row only when its persons count is released (row presence: see ResultTable). Table
    `{name}_attrition` (counts, sequential): persons after each of `attrition_steps(settings)`.
    """
    # Persons are counted in each cell, in the database at the table's own level: a row exists only
    # where someone had time at risk, so it is released only where enough persons did (data_levels,
    # presence_counts). Distinct persons do not add up (a person is in several years and bands), so
    # release() keeps them to interior cells (distinct_counts).
    level = [c for c in FINEST if _DIMENSION_OF[c] in settings.by]
    fine = person_time(cdm, settings, count_persons=True, level=level)
    bands = _bands(settings, "age_group" in settings.by)
    # With time-at-risk windows each window is a level of the `tar` dimension, fixed by the package
    # (not read from the data), and never totalled over: windows overlap.
    tar = ["tar"] if settings.time_at_risk else []
    by = [*tar, *settings.by]
    agg = fine.copy()
    if tar:
        agg["tar"] = [settings.time_at_risk[int(k)].label for k in agg["tar_k"]]
    if "age_k" in agg:
        agg["age_group"] = [age_label(*bands[k]) for k in agg["age_k"]]
    if "gender" in agg:
        agg["sex"] = [sex_label(g) for g in agg["gender"]]
    if "yr" in agg:
        agg["calendar_year"] = agg["yr"].astype(str)
    if by:
        # Several gender concepts can share a label ("Unknown"): their persons are distinct, so they add.
        agg = agg.groupby(by, sort=True).agg(person_days=("person_days", "sum"), n_events=("n_events", "sum"),
                                             n_persons=("n_persons", "sum")).reset_index()
    if tar and not settings.by:
        # One row per window, with or without time in it, as without windows there is one row.
        agg = (pd.DataFrame({"tar": [t.label for t in settings.time_at_risk]})
               .merge(agg, on="tar", how="left").fillna(0))
    elif not by and agg.empty:
        agg = pd.DataFrame({"person_days": [0], "n_events": [0], "n_persons": [0]})
    agg = agg[[*by, "n_persons", "person_days", "n_events"]]
    agg[["n_persons", "person_days"]] = agg[["n_persons", "person_days"]].astype("int64")
    agg["person_years"] = agg["person_days"] / DAYS_PER_YEAR
    rate, lo, hi = rate_ci(agg["n_events"], agg["person_years"], 1000.0, settings.alpha)
    agg["incidence_per_1000py"] = rate
    agg["ci_lower"] = lo
    agg["ci_upper"] = hi
    agg["n_events"] = agg["n_events"].astype("int64")
    table = ResultTable(
        name=name,
        kind="rates",
        data=agg,
        dimensions=by,
        count_columns=["n_events", "n_persons"],
        exposure_columns=["person_years"],
        margins=list(settings.by),
        # Years, age bands and sexes are rows only where enough persons had time at risk in them.
        data_levels=list(settings.by),
        presence_counts=["n_persons"],
        distinct_counts=["n_persons"],
        rates={
            "incidence_per_1000py": RateSpec(numerator="n_events", denominator="person_years", per=1000.0)
        },
    )
    pop = population_table(f"{name}_attrition", attrition_steps(settings), {"persons": attrition(cdm, settings)})
    empty = fine.empty
    notes = [Note(NoteCode.NO_DENOMINATOR_AT_RISK)] if empty else []
    if not settings.time_at_risk and settings.denominator_cohort_id is not None and short_follow_up(cdm, settings):
        notes.append(Note(NoteCode.SHORT_FOLLOW_UP))
    return AnalysisResult("incidence", {name: table, pop.name: pop}, empty=empty, notes=notes)


def short_follow_up(cdm: Cdm, pop: _Population) -> bool:
    """Whether the denominator's persons have under SHORT_FOLLOW_UP_DAYS days each on average (entries
    within observation, after washout and the study window; before outcomes are looked at): a cohort
    ending on its entry record's end date (one day for a diagnosis) gives almost no person-time. One bit,
    from the persons and days of a whole cohort; no number leaves."""
    params = {**_pop_params(pop),
              "study_start": getattr(pop, "study_start", None) or dt.date(1000, 1, 1),
              "study_end": getattr(pop, "study_end", None) or dt.date(9999, 12, 31)}
    q = build(_follow_up_sql(pop), cdm)
    persons, days = cdm.fetch_all(q, bound(q, params))[0]
    return bool(persons) and int(days) < SHORT_FOLLOW_UP_DAYS * int(persons)


# ------------------------------------------------------------------------------------------- prevalence


def _prevalence_sql(s: PrevalenceSettings, n: int) -> str:
    periods = " UNION ALL ".join(
        f"SELECT {k} AS k, CAST($pa{k} AS DATE) AS pa, CAST($pb{k} AS DATE) AS pb" for k in range(n)
    )
    return f"""
    WITH {_denominator_sql(s, study=False).strip()},
    periods AS ({periods}),
    pop AS (
      SELECT DISTINCT pr.k, d.person_id, p.gender_concept_id AS gender,
             -- age in whole years at the period's start
             EXTRACT(YEAR FROM pr.pa) - p.year_of_birth
               - CASE WHEN CAST({_DOB} + INTERVAL (EXTRACT(YEAR FROM pr.pa) - p.year_of_birth) YEAR AS DATE)
                           > pr.pa THEN 1 ELSE 0 END AS age
      FROM den d JOIN periods pr ON d.s <= pr.pb AND d.e >= pr.pa AND d.s <= d.e
      JOIN person p ON p.person_id = d.person_id
    ),
    cases AS (
      SELECT DISTINCT pr.k, o.subject_id AS person_id
      FROM cohort o JOIN periods pr ON o.cohort_start_date <= pr.pb
        AND o.cohort_end_date >= CAST(pr.pa - CAST($lookback AS INTEGER) AS DATE)
      WHERE o.cohort_definition_id = $outcome_id
    )
    SELECT pop.k, b.k AS age_k, pop.gender, COUNT(*) AS n_persons,
           SUM(CASE WHEN cases.person_id IS NULL THEN 0 ELSE 1 END) AS n_cases
    FROM pop
    JOIN bands b ON pop.age >= b.lo AND pop.age <= b.hi
    LEFT JOIN cases ON cases.k = pop.k AND cases.person_id = pop.person_id
    GROUP BY pop.k, b.k, pop.gender
    """


def prevalence(cdm: Cdm, settings: PrevalenceSettings, *, name: str = "prevalence") -> AnalysisResult:
    """Point and period prevalence with Wilson CIs.

    Table `{name}` (counts): dimensions period (ISO date, or 'start..end'), then `by`; counts
    n_persons and n_cases, margins over `by`; derived `prevalence_percent`; site-side prevalence,
    ci_lower, ci_upper (proportions).
    """
    _needed(cdm, settings, "prevalence")
    check_cohort_id(settings.outcome_cohort_id, "outcome cohort id")
    periods = [(d, d) for d in settings.points] + list(settings.intervals)
    labels = [
        a.isoformat() if k < len(settings.points) else f"{a.isoformat()}..{b.isoformat()}"
        for k, (a, b) in enumerate(periods)
    ]
    params: dict[str, object] = {
        **_pop_params(settings),
        "outcome_id": settings.outcome_cohort_id,
        "lookback": settings.lookback_days,
    }
    for k, (a, b) in enumerate(periods):
        params[f"pa{k}"], params[f"pb{k}"] = a, b
    bands = _bands(settings, "age_group" in settings.by)
    q = build(_prevalence_sql(settings, len(periods)), cdm, {"bands": (["k", "lo", "hi"], _band_rows(bands))})
    fine = fetch_df(cdm, q, params)
    fine["period"] = [labels[int(k)] for k in fine["k"]]
    fine["age_group"] = [age_label(*bands[int(k)]) for k in fine["age_k"]]
    fine["sex"] = [sex_label(g) for g in fine["gender"]]
    dims = ["period", *settings.by]
    agg = fine.groupby(dims, sort=False).agg(n_persons=("n_persons", "sum"), n_cases=("n_cases", "sum"))
    agg = (
        agg.reset_index()
        if len(fine)
        else pd.DataFrame(
            {
                **{d: pd.Series(dtype="object") for d in dims},
                "n_persons": pd.Series(dtype="int64"),
                "n_cases": pd.Series(dtype="int64"),
            }
        )
    )
    agg["n_persons"] = agg["n_persons"].astype("int64")
    agg["n_cases"] = agg["n_cases"].astype("int64")
    p, lo, hi = wilson_ci(agg["n_cases"], agg["n_persons"], settings.alpha)
    agg["prevalence"], agg["ci_lower"], agg["ci_upper"] = p, lo, hi
    table = ResultTable(
        name=name,
        kind="counts",
        data=agg,
        dimensions=dims,
        count_columns=["n_persons", "n_cases"],
        margins=list(settings.by),
        rates={"prevalence_percent": RateSpec(numerator="n_cases", denominator="n_persons", per=100.0)},
        # Age bands and sexes are rows only where someone of them is in the denominator.
        data_levels=list(settings.by),
        presence_counts=["n_persons"],
    )
    empty = agg.empty
    return AnalysisResult(
        "prevalence",
        {name: table},
        empty=empty,
        notes=[Note(NoteCode.NO_PREVALENCE_DENOMINATOR)] if empty else [],
    )


# --------------------------------------------------------------------------------------- cohort entries


def cohort_entries(
    cdm: Cdm,
    cohort_ids: Sequence[int],
    interval: Literal["year", "month"] = "year",
    *,
    name: str = "cohort_entries",
) -> AnalysisResult:
    """Cohort entries (rows) and distinct persons entering, per cohort and year or month of entry.

    Table `{name}` (counts): dimensions cohort_id, period ('2021' or '2021-03'); counts n_entries
    and n_persons (persons entering in that period).
    """
    ids = [check_cohort_id(c, "cohort id") for c in cohort_ids]
    if not ids:
        raise StudyError("give at least one cohort id")
    if interval not in ("year", "month"):
        raise StudyError(f"interval {interval!r}: use 'year' or 'month'")
    require_tables(cdm, ["cohort"], "cohort entry counts")
    month = "EXTRACT(MONTH FROM c.cohort_start_date)" if interval == "month" else "0"
    q = build(
        f"""
    SELECT c.cohort_definition_id AS cohort_id, EXTRACT(YEAR FROM c.cohort_start_date) AS yr, {month} AS mo,
           COUNT(*) AS n_entries, COUNT(DISTINCT c.subject_id) AS n_persons
    FROM cohort c WHERE c.cohort_definition_id IN (SELECT cid FROM ids)
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    """,
        cdm,
        {"ids": (["cid"], [[i] for i in ids])},
    )
    df = fetch_df(cdm, q)
    if interval == "month":
        df["period"] = [f"{int(y):04d}-{int(m):02d}" for y, m in zip(df["yr"], df["mo"], strict=True)]
    else:
        df["period"] = [f"{int(y):04d}" for y in df["yr"]]
    df = df[["cohort_id", "period", "n_entries", "n_persons"]].copy()
    for c in ("cohort_id", "n_entries", "n_persons"):
        df[c] = df[c].astype("int64")
    table = ResultTable(
        name=name,
        kind="counts",
        data=df,
        dimensions=["cohort_id", "period"],
        count_columns=["n_entries", "n_persons"],
        # A period is a row only because someone entered then; it is shown only where the persons
        # entering are released (entries alone could be one person's many).
        data_levels=["period"],
        presence_counts=["n_persons"],
    )
    return AnalysisResult(
        "cohort_entries", {name: table}, empty=df.empty,
        notes=[Note(NoteCode.NO_ENTRIES, cohort=int(i)) for i in ids] if df.empty else []
    )
