"""The study population of a prediction: target cohort entries, time at risk and the outcome label.

Semantics are PatientLevelPrediction's `createStudyPopulation` (its defaults too):
- Index is the target cohort entry's start. Time at risk runs from `risk_window_start` days after the
  start anchor (cohort start or cohort end) to `risk_window_end` days after the end anchor, cut at the
  end of the observation period holding index (and at the cohort end with `restrict_tar_to_cohort_end`).
- The label is 1 when an outcome cohort entry starts inside the time at risk (both ends inclusive).
- Then, in PLP's order, each a step of the attrition table: first entry per person
  (`first_exposure_only`), at least `washout_period` days of prior observation, no outcome in the
  `prior_outcome_lookback` days before time at risk starts (`remove_subjects_with_prior_outcome`), and
  at least `min_time_at_risk` days at risk (`require_time_at_risk`; persons with the outcome are kept
  regardless when `include_all_outcomes`). Without `require_time_at_risk`, entries whose time at risk
  ends before it starts are dropped.

The days are computed in the database from one constant query (values bound, anchors chosen from
the validated settings); the rows come into this process at the site and never leave it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mercia import limits
from mercia.cdm import Cdm
from mercia.cdm.query import build, check_cohort_id, fetch_df, require_tables
from mercia.errors import StudyError
from mercia.model_doc import field_docs


@field_docs
class PopulationSettings(BaseModel):
    """PLP's population settings, with its defaults (a one-year risk window from the day after index)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    risk_window_start: int = Field(
        1, ge=-limits.MAX_DAYS, le=limits.MAX_DAYS,
        description="days after the start anchor when time at risk starts",
    )
    start_anchor: Literal["cohort_start", "cohort_end"] = Field(
        "cohort_start", description="what risk_window_start counts from: the target entry's start or end"
    )
    risk_window_end: int = Field(
        365, ge=-limits.MAX_DAYS, le=limits.MAX_DAYS,
        description="days after the end anchor when time at risk ends",
    )
    end_anchor: Literal["cohort_start", "cohort_end"] = Field(
        "cohort_start", description="what risk_window_end counts from: the target entry's start or end"
    )
    restrict_tar_to_cohort_end: bool = Field(
        False, description="time at risk also ends at the target entry's end"
    )
    first_exposure_only: bool = Field(False, description="each person's first target entry only")
    washout_period: int = Field(
        0, ge=0, le=limits.MAX_DAYS, description="days of observation required before index"
    )
    remove_subjects_with_prior_outcome: bool = Field(
        True, description="drop entries with an outcome in the prior_outcome_lookback days before time at risk"
    )
    prior_outcome_lookback: int = Field(
        99999, ge=0, le=limits.MAX_DAYS, description="days before time at risk searched"
    )
    require_time_at_risk: bool = Field(
        True, description="drop entries with less than min_time_at_risk days at risk"
    )
    min_time_at_risk: int = Field(
        364, ge=0, le=limits.MAX_DAYS,
        description="days from the start to the end of time at risk required (end - start >= this)",
    )
    include_all_outcomes: bool = Field(
        True, description="keep persons with the outcome even when their time at risk is short"
    )

    @model_validator(mode="after")
    def _check(self) -> PopulationSettings:
        if self.start_anchor == self.end_anchor and self.risk_window_end < self.risk_window_start:
            raise StudyError(
                f"time at risk ends (day {self.risk_window_end}) before it starts (day {self.risk_window_start}); "
                "make risk_window_end >= risk_window_start"
            )
        return self


POPULATION_COLUMNS = ("person_id", "cohort_start_date", "outcome", "tar_start", "tar_end", "days_to_event")


def _template(settings: PopulationSettings) -> str:
    start = "$risk_start" + (" + b.days_to_cohort_end" if settings.start_anchor == "cohort_end" else "")
    end = "$risk_end" + (" + b.days_to_cohort_end" if settings.end_anchor == "cohort_end" else "")
    caps = [end, "b.days_to_obs_end"]
    if settings.restrict_tar_to_cohort_end:
        caps.append("b.days_to_cohort_end")
    return f"""
    WITH entries AS (
      SELECT subject_id AS person_id, cohort_start_date, MAX(cohort_end_date) AS cohort_end_date
      FROM cohort WHERE cohort_definition_id = $target_id
      GROUP BY subject_id, cohort_start_date
    ),
    base AS (
      SELECT e.person_id, e.cohort_start_date,
             ROW_NUMBER() OVER (PARTITION BY e.person_id ORDER BY e.cohort_start_date) AS entry_number,
             DATE_DIFF('day', e.cohort_start_date, e.cohort_end_date) AS days_to_cohort_end,
             DATE_DIFF('day', e.cohort_start_date, op.observation_period_end_date) AS days_to_obs_end,
             DATE_DIFF('day', op.observation_period_start_date, e.cohort_start_date) AS days_from_obs_start
      FROM entries e
      JOIN observation_period op ON op.person_id = e.person_id
        AND e.cohort_start_date >= op.observation_period_start_date
        AND e.cohort_start_date <= op.observation_period_end_date
    ),
    tar AS (
      SELECT b.*, {start} AS tar_start, LEAST({", ".join(caps)}) AS tar_end FROM base b
    ),
    offsets AS (
      SELECT t.person_id, t.cohort_start_date, t.tar_start, t.tar_end,
             DATE_DIFF('day', t.cohort_start_date, o.cohort_start_date) AS days_to_event
      FROM tar t
      JOIN cohort o ON o.cohort_definition_id = $outcome_id AND o.subject_id = t.person_id
    ),
    outcomes AS (
      SELECT person_id, cohort_start_date,
             MIN(CASE WHEN days_to_event >= tar_start AND days_to_event <= tar_end
                      THEN days_to_event END) AS days_to_event,
             MAX(CASE WHEN days_to_event < tar_start AND days_to_event > -$lookback
                      THEN 1 ELSE 0 END) AS prior_outcome
      FROM offsets
      GROUP BY person_id, cohort_start_date
    )
    SELECT t.person_id, t.cohort_start_date, t.entry_number, t.days_from_obs_start, t.tar_start, t.tar_end,
           o.days_to_event, COALESCE(o.prior_outcome, 0) AS prior_outcome
    FROM tar t
    LEFT JOIN outcomes o ON o.person_id = t.person_id AND o.cohort_start_date = t.cohort_start_date
    ORDER BY t.person_id, t.cohort_start_date
    """


def _attrition_row(step: str, df: pd.DataFrame) -> dict[str, object]:
    return {
        "step": step,
        "n_entries": len(df),
        "n_persons": int(df["person_id"].nunique()),
        "n_outcomes": int(df["days_to_event"].notna().sum()),
    }


def build_population(
    cdm: Cdm, target_id: int, outcome_id: int, settings: PopulationSettings | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(population, attrition). Population: one row per kept target entry with the columns of
    `POPULATION_COLUMNS` (outcome 0/1; tar_* and days_to_event in days from index). Attrition: PLP's
    steps with entries, persons and outcomes left after each."""
    settings = settings or PopulationSettings()
    check_cohort_id(target_id, "target cohort id")
    check_cohort_id(outcome_id, "outcome cohort id")
    require_tables(cdm, ["cohort", "observation_period"], "patient-level prediction")
    params = {
        "target_id": target_id,
        "outcome_id": outcome_id,
        "risk_start": settings.risk_window_start,
        "risk_end": settings.risk_window_end,
        "lookback": settings.prior_outcome_lookback,
    }
    df = fetch_df(cdm, build(_template(settings), cdm), params)
    df["cohort_start_date"] = pd.to_datetime(df["cohort_start_date"])
    for c in ("entry_number", "days_from_obs_start", "tar_start", "tar_end", "prior_outcome"):
        df[c] = df[c].astype(np.int64)
    df["days_to_event"] = df["days_to_event"].astype("float64")
    steps = [_attrition_row("target cohort entries in observation", df)]
    if settings.first_exposure_only:
        df = df[df["entry_number"] == 1]
        steps.append(_attrition_row("first entry per person", df))
    if settings.washout_period:
        df = df[df["days_from_obs_start"] >= settings.washout_period]
        steps.append(_attrition_row(f"at least {settings.washout_period} days of prior observation", df))
    if settings.remove_subjects_with_prior_outcome:
        df = df[df["prior_outcome"] == 0]
        steps.append(_attrition_row("no outcome before time at risk", df))
    has_outcome = df["days_to_event"].notna()
    if settings.require_time_at_risk:
        enough = df["tar_end"] >= df["tar_start"] + settings.min_time_at_risk
        if settings.include_all_outcomes:
            df = df[has_outcome | enough]
            steps.append(_attrition_row(f"non-outcome entries with {settings.min_time_at_risk}+ days at risk", df))
        else:
            df = df[enough]
            steps.append(_attrition_row(f"entries with {settings.min_time_at_risk}+ days at risk", df))
    else:
        df = df[df["tar_end"] >= df["tar_start"]]
        steps.append(_attrition_row("entries with any time at risk", df))
    df = df.assign(outcome=df["days_to_event"].notna().astype(np.int64)).reset_index(drop=True)
    return df[list(POPULATION_COLUMNS)], pd.DataFrame(steps)
