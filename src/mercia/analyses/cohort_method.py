"""The comparative cohort method (OHDSI CohortMethod): new users of a target vs a comparator drug,
a large-scale propensity model, matching or stratification, balance, and outcome models.

Steps, as CohortMethod's `runCmAnalyses` with a shared propensity score:
1. the first entry (with `first_exposure_only`) of every person in the target and comparator cohorts;
   covariates for each (`mercia.features.build_covariates`, index = cohort start);
2. persons in both cohorts per `remove_duplicate_subjects` ('keep all', 'keep first' (their first
   entry, none when both start the same day), 'remove all'); a washout (days of observation before
   index); each step is a row of the attrition table;
3. one propensity model on that population (`mercia.analyses.propensity`);
4. per outcome: drop persons with the outcome before the risk window (over `prior_outcome_lookback`
   days) and those with fewer than `min_days_at_risk` days at risk; then match (greedy on the logit,
   caliper) or stratify (quintiles) on the shared score, within that population;
5. per outcome: a crude estimate (unadjusted) and the adjusted one: Cox proportional hazards
   conditioned on the matched sets or strata (Efron ties) or a conditional Poisson model of the
   rate; the minimum detectable relative risk (Schoenfeld's formula, as CohortMethod's computeMdrr);
6. covariate balance before and after (every covariate's SMD; a flag when any |SMD| > 0.1);
7. negative-control outcomes run through the same steps; with enough of them the estimates are
   empirically calibrated (`mercia.analyses.calibration`).

Time at risk (CohortMethod's createStudyPopulation): from anchor + risk_window_start to
anchor + risk_window_end, anchors the cohort start or end, cut at the end of the observation period;
time = end - start + 1 days; the event is the first outcome start in the window, its time
event day - start + 1.

Row-level data (covariates, scores, per-person times) never leave this function: it returns
ResultTables for `release()`.

Its building blocks are public for other site-internal code that estimates the same way (the methods
benchmark, `mercia.evaluation`): `entry_windows` and `outcome_hits` (steps 1 and 4's data),
`build_population` (steps 1-3), `outcome_population` (step 4's population per outcome) and
`adjust_on_ps` (matching or stratification).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import special, stats

from mercia import limits
from mercia.analyses.balance import SMD_THRESHOLD, balance_before_after
from mercia.analyses.matching import CaliperScale, match_on_ps, stratify_by_ps
from mercia.analyses.notes import Note, NoteCode
from mercia.analyses.propensity import PsFit, PsSettings, equipoise, fit_ps
from mercia.analyses.result import AnalysisResult
from mercia.analyses.solvers import Evaluation, cox_risk_sets, newton_maximise
from mercia.cdm import Cdm
from mercia.cdm.query import build, check_cohort_id, fetch_df, require_tables
from mercia.disclosure import ModelInfo, ResultTable
from mercia.errors import StudyError
from mercia.features import CovariateData, CovariateSettings, build_covariates
from mercia.model_doc import field_docs

# --------------------------------------------------------------------------------------------- settings


@field_docs
class StudyPopulationSettings(BaseModel):
    """Who is compared and their time at risk (CohortMethod's createStudyPopulation, its defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_exposure_only: bool = Field(True, description="each person's first entry into each cohort only")
    remove_duplicate_subjects: Literal["keep all", "keep first", "remove all"] = Field(
        "keep all",
        description="persons in both cohorts: keep all (both entries), keep first (their first entry; "
        "neither when both start the same day) or remove all",
    )
    washout_period: int = Field(
        0, ge=0, le=limits.MAX_DAYS, description="days of observation required before index"
    )
    remove_subjects_with_prior_outcome: bool = Field(
        True, description="per outcome, drop persons with the outcome before their time at risk starts"
    )
    prior_outcome_lookback: int = Field(
        99999, ge=0, le=limits.MAX_DAYS, description="days before index searched for a prior outcome"
    )
    risk_window_start: int = Field(
        0, ge=-limits.MAX_DAYS, le=limits.MAX_DAYS, description="days after start_anchor when time at risk starts"
    )
    start_anchor: Literal["cohort start", "cohort end"] = Field(
        "cohort start", description="what risk_window_start counts from: the cohort entry's start or end"
    )
    risk_window_end: int = Field(
        0, ge=-limits.MAX_DAYS, le=limits.MAX_DAYS,
        description="days after end_anchor when time at risk ends (cut at the end of observation)",
    )
    end_anchor: Literal["cohort start", "cohort end"] = Field(
        "cohort end", description="what risk_window_end counts from: the cohort entry's start or end"
    )
    min_days_at_risk: int = Field(
        1, ge=0, le=limits.MAX_DAYS, description="persons with fewer days at risk are dropped (at least 1 day)"
    )


@field_docs
class MatchSettings(BaseModel):
    """Greedy nearest-neighbour matching on the propensity score (CohortMethod's matchOnPs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    caliper: float = Field(
        0.2, ge=0, le=limits.MAX_RANGE_VALUE, allow_inf_nan=False,
        description="largest distance between matched persons, on caliper_scale; 0: no caliper",
    )
    caliper_scale: CaliperScale = Field(
        "standardized logit",
        description="the caliper's unit: propensity score (absolute), standardized (standard deviations of "
        "the score) or standardized logit (standard deviations of the score's logit)",
    )
    max_ratio: int = Field(
        1, ge=0, le=limits.MAX_LIST, description="comparators per target; 0 = no limit (variable ratio)"
    )
    allow_reverse_match: bool = Field(
        False, description="when the target arm is the larger, match targets to comparators instead"
    )


@field_docs
class StratifySettings(BaseModel):
    """Stratification on the propensity score at its quantiles (CohortMethod's stratifyByPs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    number_of_strata: int = Field(5, ge=1, le=limits.MAX_LIST, description="strata of equal size (5: quintiles)")
    base_selection: Literal["all", "target", "comparator"] = Field(
        "all", description="whose scores set the quantiles: everyone's, or one arm's"
    )


@field_docs
class OutcomeModelSettings(BaseModel):
    """The outcome model of the adjusted estimate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: Literal["cox", "poisson"] = Field(
        "cox", description="cox (hazard ratio, Efron ties) or poisson (rate ratio of events per day at risk)"
    )
    stratified: bool = Field(True, description="condition on the matched sets / strata")


@field_docs
class CohortMethodSettings(BaseModel):
    """Every step of a comparative cohort analysis: covariates, population, propensity model,
    adjustment on the score, outcome model, and what is reported."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    covariates: CovariateSettings = Field(
        CovariateSettings(), description="covariates of the propensity model and of the balance tables"
    )
    population: StudyPopulationSettings = Field(
        StudyPopulationSettings(), description="who is compared and their time at risk"
    )
    ps: PsSettings = Field(PsSettings(), description="the propensity model")
    adjustment: Literal["match", "stratify", "none"] = Field(
        "match", description="how the propensity score is used: match, stratify, or none (unadjusted model)"
    )
    match: MatchSettings = Field(MatchSettings(), description="matching, when adjustment is match")
    stratify: StratifySettings = Field(
        StratifySettings(), description="stratification, when adjustment is stratify"
    )
    outcome_model: OutcomeModelSettings = Field(OutcomeModelSettings(), description="the outcome model")
    alpha: float = Field(
        0.05, gt=0, lt=1, description="1 - confidence level of the estimates' intervals: 0.05 gives 95%"
    )
    power: float = Field(
        0.8, gt=0, lt=1, description="power at which the minimum detectable relative risk (mdrr) is computed"
    )
    equipoise_bounds: tuple[float, float] = Field(
        (0.3, 0.7),
        description="[lower, upper] preference score; the share of persons inside is reported as equipoise "
        "(0 <= lower < upper <= 1)",
    )
    preference_bins: int = Field(20, ge=2, le=100, description="bins of the preference-score distribution")

    @model_validator(mode="after")
    def _check(self) -> CohortMethodSettings:
        lo, hi = self.equipoise_bounds
        if not 0 <= lo < hi <= 1:
            raise StudyError(f"equipoise_bounds {self.equipoise_bounds}: give 0 <= lower < upper <= 1")
        return self


# ------------------------------------------------------------------------------------------ population


def _entries_cte(first_only: bool) -> str:
    first = "WHERE rn = 1" if first_only else ""
    return f"""
    entries AS (
      SELECT cohort_definition_id, person_id, cohort_start_date, cohort_end_date FROM (
        SELECT cohort_definition_id, subject_id AS person_id, cohort_start_date,
               MIN(cohort_end_date) AS cohort_end_date,
               ROW_NUMBER() OVER (PARTITION BY cohort_definition_id, subject_id ORDER BY cohort_start_date) AS rn
        FROM cohort WHERE cohort_definition_id IN (SELECT cid FROM cohort_ids)
        GROUP BY cohort_definition_id, subject_id, cohort_start_date) x
      {first}
    ),
    obs AS (
      SELECT e.*, DATE_DIFF('day', op.observation_period_start_date, e.cohort_start_date) AS days_from_obs_start,
             DATE_DIFF('day', e.cohort_start_date, op.observation_period_end_date) AS days_to_obs_end,
             DATE_DIFF('day', e.cohort_start_date, e.cohort_end_date) AS days_to_cohort_end
      FROM entries e LEFT JOIN observation_period op ON op.person_id = e.person_id
        AND e.cohort_start_date >= op.observation_period_start_date
        AND e.cohort_start_date <= op.observation_period_end_date
    )"""


def _window_exprs(p: StudyPopulationSettings) -> tuple[str, str]:
    start = "CAST($ws AS INTEGER)" + (" + o.days_to_cohort_end" if p.start_anchor == "cohort end" else "")
    end = "CAST($we AS INTEGER)" + (" + o.days_to_cohort_end" if p.end_anchor == "cohort end" else "")
    return start, f"LEAST({end}, o.days_to_obs_end)"


def _population_sql(p: StudyPopulationSettings) -> str:
    rs, re = _window_exprs(p)
    return f"""
    WITH {_entries_cte(p.first_exposure_only)}
    SELECT o.cohort_definition_id, o.person_id, o.cohort_start_date, o.days_from_obs_start,
           {rs} AS risk_start, {re} AS risk_end
    FROM obs o
    """


def _outcomes_sql(p: StudyPopulationSettings) -> str:
    rs, re = _window_exprs(p)
    return f"""
    WITH {_entries_cte(p.first_exposure_only)},
    win AS (SELECT o.*, {rs} AS rs, {re} AS re FROM obs o),
    hits AS (
      SELECT w.cohort_definition_id, w.person_id, w.cohort_start_date, oc.cohort_definition_id AS outcome_id,
             DATE_DIFF('day', w.cohort_start_date, oc.cohort_start_date) AS off, w.rs, w.re
      FROM win w JOIN cohort oc ON oc.subject_id = w.person_id
        AND oc.cohort_definition_id IN (SELECT oid FROM outcome_ids)
    )
    SELECT cohort_definition_id, person_id, cohort_start_date, outcome_id,
           MAX(CASE WHEN off >= -CAST($lookback AS INTEGER) AND off < rs THEN 1 ELSE 0 END) AS prior_outcome,
           MIN(CASE WHEN off >= rs AND off <= re THEN off END) AS first_event,
           SUM(CASE WHEN off >= rs AND off <= re THEN 1 ELSE 0 END) AS n_events
    FROM hits GROUP BY cohort_definition_id, person_id, cohort_start_date, outcome_id
    """


ENTRY_KEY = ["cohort_definition_id", "person_id", "cohort_start_date"]


def frame_dates(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with ENTRY_KEY's columns in one form (dates as dates, ids as int64), for merging."""
    df = df.copy()
    df["cohort_start_date"] = pd.to_datetime(df["cohort_start_date"]).dt.date
    for c in ("cohort_definition_id", "person_id"):
        df[c] = df[c].astype(np.int64)
    return df


def _counts(pop: pd.DataFrame, step: str) -> dict[str, object]:
    return {"step": step, "n_target": int((pop["treatment"] == 1).sum()),
            "n_comparator": int((pop["treatment"] == 0).sum())}


def _remove_duplicates(pop: pd.DataFrame, how: str) -> tuple[pd.DataFrame, str | None]:
    if how == "keep all":
        return pop, None
    arms = pop.groupby("person_id")["treatment"].nunique()
    both = pop["person_id"].isin(arms.index[arms > 1])
    if how == "remove all":
        return pop[~both], "removed persons in both cohorts"
    dup = pop[both]
    first = dup.groupby("person_id")["cohort_start_date"].transform("min")
    tied = dup[dup["cohort_start_date"] == first].groupby("person_id")["treatment"].transform("nunique") > 1
    keep_dup = dup[(dup["cohort_start_date"] == first)]
    keep_dup = keep_dup[~tied.reindex(keep_dup.index, fill_value=False)]
    keep_dup = keep_dup.drop_duplicates("person_id")
    return pd.concat([pop[~both], keep_dup]).sort_values("row"), "kept the first cohort entry of persons in both"


# ----------------------------------------------------------------------------------------- outcome models


@dataclass
class Estimate:
    log_rr: float
    se: float
    converged: bool

    def row(self, alpha: float) -> dict[str, float]:
        z = float(stats.norm.ppf(1 - alpha / 2))
        if not (math.isfinite(self.log_rr) and math.isfinite(self.se) and self.se > 0):
            return {"log_rr": np.nan, "se_log_rr": np.nan, "rr": np.nan, "ci_lower": np.nan, "ci_upper": np.nan,
                    "p": np.nan}
        return {"log_rr": self.log_rr, "se_log_rr": self.se, "rr": math.exp(self.log_rr),
                "ci_lower": math.exp(self.log_rr - z * self.se), "ci_upper": math.exp(self.log_rr + z * self.se),
                "p": float(2 * stats.norm.sf(abs(self.log_rr / self.se)))}


def fit_cox_strata(x: np.ndarray, time: np.ndarray, event: np.ndarray, strata: np.ndarray | None = None) -> Estimate:
    """The treatment log hazard ratio conditional on strata (`mercia.analyses.solvers.newton_maximise`)."""
    strata = np.zeros(len(x), dtype=np.int64) if strata is None else strata
    sets = cox_risk_sets(np.asarray(x, dtype=float)[:, None], time, event, strata, "efron")  # once per fit

    def evaluate(b: np.ndarray) -> Evaluation:
        return Evaluation(*sets.likelihood(b))

    res = newton_maximise(evaluate, np.zeros(1))
    info = float(res.at.information[0, 0])
    if not (res.converged and info > 0):
        return Estimate(math.nan, math.nan, False)
    return Estimate(float(res.beta[0]), 1 / math.sqrt(info), True)


def fit_poisson_strata(x: np.ndarray, events: np.ndarray, days: np.ndarray,
                       strata: np.ndarray | None = None) -> Estimate:
    """Rate ratio, conditional on strata: in each stratum the target's share of the events is
    binomial with p = T1 e^b / (T1 e^b + T0) (T = person-days); equal to a Poisson model with a
    fixed effect per stratum. Unstratified it is the ratio of the two rates."""
    strata = np.zeros(len(x), dtype=np.int64) if strata is None else strata
    df = pd.DataFrame({"s": strata, "x": x.astype(int), "y": events, "t": days})
    g = df.groupby(["s", "x"])[["y", "t"]].sum().unstack("x", fill_value=0)
    if g.shape[1] < 4:
        return Estimate(math.nan, math.nan, False)
    y1, y0 = g[("y", 1)].to_numpy(float), g[("y", 0)].to_numpy(float)
    t1, t0 = g[("t", 1)].to_numpy(float), g[("t", 0)].to_numpy(float)
    ok = (t1 > 0) & (t0 > 0) & (y1 + y0 > 0)
    y1, y0, t1, t0 = y1[ok], y0[ok], t1[ok], t0[ok]
    Y = y1 + y0
    if not len(Y) or y1.sum() == 0 or y0.sum() == 0:
        return Estimate(math.nan, math.nan, False)
    # the log odds of an event being the target's: log(T1/T0) + b, a logistic model with an offset
    # on the Y events of each stratum (y1 of them the target's)
    offset = np.log(t1) - np.log(t0)

    def evaluate(b: np.ndarray) -> Evaluation:
        eta = offset + b[0]
        p = special.expit(eta)
        loglik = float(-(y1 * np.logaddexp(0.0, -eta) + y0 * np.logaddexp(0.0, eta)).sum())
        return Evaluation(loglik, np.array([np.sum(y1 - Y * p)]), np.array([[np.sum(Y * p * (1 - p))]]))

    b0 = math.log((y1.sum() / t1.sum()) / (y0.sum() / t0.sum()))
    res = newton_maximise(evaluate, np.array([b0]))
    info = float(res.at.information[0, 0])
    if not (res.converged and info > 0):
        return Estimate(math.nan, math.nan, False)
    return Estimate(float(res.beta[0]), 1 / math.sqrt(info), True)


def mdrr(p_target: float, total_events: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable relative risk (Schoenfeld 1983; CohortMethod's computeMdrr, two-sided)."""
    if total_events == 0 or not 0 < p_target < 1:
        return math.inf
    z = float(stats.norm.ppf(1 - alpha / 2)) - float(stats.norm.ppf(1 - power))
    return math.exp(math.sqrt(z**2 / (total_events * p_target * (1 - p_target))))


# ------------------------------------------------------------------------------------------ the analysis


@dataclass
class Population:
    """The PS population (rows of the covariate matrix) with treatment and time at risk."""

    frame: pd.DataFrame  # row (into covariates), treatment, person_id, risk_start, risk_end, ...
    covariates: CovariateData
    ps: PsFit
    attrition: list[dict[str, object]]


def adjust_on_ps(ps: np.ndarray, t: np.ndarray, s: CohortMethodSettings) -> np.ndarray:
    """Each row's matched set or stratum on the propensity score per `s.adjustment` (-1: not matched;
    all 0 with no adjustment)."""
    if s.adjustment == "match":
        m = s.match
        return match_on_ps(ps, t, caliper=m.caliper, caliper_scale=m.caliper_scale, max_ratio=m.max_ratio,
                           allow_reverse_match=m.allow_reverse_match)
    if s.adjustment == "stratify":
        return stratify_by_ps(ps, t, number_of_strata=s.stratify.number_of_strata,
                              base_selection=s.stratify.base_selection)
    return np.zeros(len(ps), dtype=np.int64)


def _outcome_estimate(d: pd.DataFrame, strata: np.ndarray | None, s: CohortMethodSettings) -> Estimate:
    x = d["treatment"].to_numpy(dtype=float)
    if s.outcome_model.model_type == "cox":
        return fit_cox_strata(x, d["time"].to_numpy(dtype=float), d["event"].to_numpy(dtype=float), strata)
    return fit_poisson_strata(x, d["n_events"].to_numpy(dtype=float), d["days_at_risk"].to_numpy(dtype=float),
                              strata)


def _summary(d: pd.DataFrame) -> dict[str, float]:
    t = d["treatment"] == 1
    return {"target_subjects": int(t.sum()), "comparator_subjects": int((~t).sum()),
            "target_events": int(d.loc[t, "event"].sum()), "comparator_events": int(d.loc[~t, "event"].sum()),
            "target_days": float(d.loc[t, "days_at_risk"].sum()),
            "comparator_days": float(d.loc[~t, "days_at_risk"].sum())}


def cohort_method(
    cdm: Cdm,
    target_cohort_id: int,
    comparator_cohort_id: int,
    outcome_cohort_ids: Sequence[int],
    settings: CohortMethodSettings | None = None,
    *,
    negative_control_ids: Sequence[int] = (),
    labels: dict[int, str] | None = None,
    name: str = "cm",
) -> AnalysisResult:
    """Target vs comparator for each outcome (and negative control); tables for `release()`:

    - `{name}_estimates` (model): per outcome crude and adjusted log RR, SE, RR and CI, p, MDRR,
      the fewest events or non-events in either arm (`min_level_count`), max |SMD| after
      adjustment and the balance flag (1 when
      any |SMD| > 0.1); calibrated p and CI when there are negative controls;
    - `{name}_counts` (counts): subjects, events and days at risk per arm behind each estimate;
    - `{name}_attrition_{outcome}` (counts, sequential): persons per arm after each step;
    - `{name}_balance_{outcome}` (model): every covariate's means, SDs and SMD before and after, for
      the outcomes (not the negative controls);
    - `{name}_ps_model` (model): the non-zero propensity coefficients;
    - `{name}_ps_diagnostics` (model): AUC, equipoise, prior variance, covariates;
    - `{name}_ps_distribution` (counts): persons per preference-score bin and arm, before and after.
    """
    s = settings or CohortMethodSettings()
    t_id = check_cohort_id(target_cohort_id, "target cohort id")
    c_id = check_cohort_id(comparator_cohort_id, "comparator cohort id")
    if t_id == c_id:
        raise StudyError("target and comparator are the same cohort; give two different cohort ids")
    outcomes = [check_cohort_id(o, "outcome cohort id") for o in outcome_cohort_ids]
    ncs = [check_cohort_id(o, "negative control cohort id") for o in negative_control_ids]
    if not outcomes:
        raise StudyError("give at least one outcome cohort for the comparative cohort analysis")
    all_outcomes = outcomes + [o for o in ncs if o not in outcomes]
    if len(set(outcomes)) != len(outcomes) or len(set(ncs)) != len(ncs):
        raise StudyError("outcome or negative-control cohort ids repeat")
    clash = sorted({t_id, c_id} & set(all_outcomes))
    if clash:
        raise StudyError(f"cohort(s) {clash} are both an exposure and an outcome; outcomes must be other cohorts")
    require_tables(cdm, ["cohort", "observation_period", "person"], "comparative cohort analysis")
    labels = {o: str(o) for o in all_outcomes} | (labels or {})
    notes: list[Note] = []
    pop = build_population(cdm, t_id, c_id, s, notes)
    return _analyse(cdm, pop, t_id, c_id, outcomes, ncs, all_outcomes, s, labels, name, notes)


def build_population(cdm: Cdm, t_id: int, c_id: int, s: CohortMethodSettings,
                     notes: list[Note] | None = None) -> Population:
    """The propensity-score population of target `t_id` vs comparator `c_id` (steps 1-3 above): its
    rows with treatment and time at risk, their covariates, the propensity model and the attrition.
    Row-level: for the site's own analyses, never released. A note is appended to `notes` when the
    propensity model could not be fitted."""
    p = s.population
    cov = build_covariates(cdm, [t_id, c_id], s.covariates, first_entry_only=p.first_exposure_only)
    rows = frame_dates(cov.rows).rename(columns={"row_id": "row"})
    frame = rows.merge(entry_windows(cdm, [t_id, c_id], p), on=ENTRY_KEY, how="left")
    frame["treatment"] = (frame["cohort_definition_id"] == t_id).astype(int)
    frame = frame.sort_values("row").reset_index(drop=True)
    attrition = [_counts(frame, "original cohorts" + (" (first exposure)" if p.first_exposure_only else ""))]
    frame, step = _remove_duplicates(frame, p.remove_duplicate_subjects)
    if step:
        attrition.append(_counts(frame, step))
    in_obs = frame["days_from_obs_start"].notna() & (frame["days_from_obs_start"] >= p.washout_period)
    frame = frame[in_obs].reset_index(drop=True)
    attrition.append(_counts(frame, f"in observation at index with >= {p.washout_period} days before"))
    X = cov.X[frame["row"].to_numpy()]
    ps = fit_ps(X, cov.covariate_ids, frame["treatment"].to_numpy(), s.ps)
    if ps.error and notes is not None:
        notes.append(Note(NoteCode.PS_NOT_FITTED))
    return Population(frame, cov, ps, attrition)


def outcome_population(frame: pd.DataFrame, hits: pd.DataFrame, o: int, attrition0: list[dict[str, object]],
                        p: StudyPopulationSettings) -> tuple[pd.DataFrame, np.ndarray, list[dict[str, object]]]:
    """The PS population with this outcome's time at risk and events, the rows that stay, and the
    attrition so far."""
    h = hits[hits["outcome_id"] == o].drop(columns="outcome_id") if len(hits) else None
    d = frame.copy()
    if h is not None and len(h):
        d = d.merge(h, on=ENTRY_KEY, how="left")
    else:
        d["prior_outcome"], d["first_event"], d["n_events"] = 0, np.nan, 0
    d["prior_outcome"] = d["prior_outcome"].fillna(0).astype(int)
    d["n_events"] = d["n_events"].fillna(0).astype(int)
    attrition = list(attrition0)
    keep = np.ones(len(d), dtype=bool)
    if p.remove_subjects_with_prior_outcome:
        keep &= d["prior_outcome"].to_numpy() == 0
        attrition.append(_counts(d[keep], "no prior outcome"))
    d["days_at_risk"] = d["risk_end"] - d["risk_start"] + 1
    keep &= (d["days_at_risk"] >= max(p.min_days_at_risk, 1)).to_numpy()
    attrition.append(_counts(d[keep], f"at least {max(p.min_days_at_risk, 1)} day(s) at risk"))
    d["event"] = d["first_event"].notna().astype(int)
    d["time"] = np.where(d["event"] == 1, d["first_event"] - d["risk_start"] + 1, d["days_at_risk"])
    return d, keep, attrition


def entry_windows(cdm: Cdm, cohort_ids: Sequence[int], p: StudyPopulationSettings) -> pd.DataFrame:
    """Per entry of the exposure cohorts (the first per person with `first_exposure_only`):
    cohort_definition_id, person_id, cohort_start_date, days_from_obs_start (NaN when the entry is
    outside every observation period), risk_start and risk_end (day offsets from the cohort start)."""
    values = {"cohort_ids": (["cid"], [[int(c)] for c in cohort_ids])}
    info = fetch_df(cdm, build(_population_sql(p), cdm, values), {"ws": p.risk_window_start, "we": p.risk_window_end})
    return frame_dates(info)


def outcome_hits(cdm: Cdm, cohort_ids: Sequence[int], outcome_ids: Sequence[int],
                 p: StudyPopulationSettings) -> pd.DataFrame:
    """Per entry of the exposure cohorts and outcome with a record: prior_outcome (1 when one starts
    in the lookback before the risk window), first_event (the first one's day offset in the window,
    else NaN) and n_events in the window; keyed by ENTRY_KEY and outcome_id."""
    values = {"cohort_ids": (["cid"], [[int(c)] for c in cohort_ids]),
              "outcome_ids": (["oid"], [[int(o)] for o in outcome_ids])}
    hits = fetch_df(cdm, build(_outcomes_sql(p), cdm, values),
                    {"ws": p.risk_window_start, "we": p.risk_window_end, "lookback": p.prior_outcome_lookback})
    return frame_dates(hits) if len(hits) else hits


def cohort_method_populations(
    cdm: Cdm, target_cohort_id: int, comparator_cohort_id: int, outcome_cohort_ids: Sequence[int],
    settings: CohortMethodSettings | None = None,
) -> tuple[PsFit, dict[int, pd.DataFrame]]:
    """The rows `cohort_method` analyses, per outcome (row-level: for checks at the site, never
    released): person_id, treatment, propensity_score, stratum (-1: not matched), time, event,
    n_events, days_at_risk, for the persons left after the population steps."""
    s = settings or CohortMethodSettings()
    pop = build_population(cdm, target_cohort_id, comparator_cohort_id, s, [])
    hits = outcome_hits(cdm, [target_cohort_id, comparator_cohort_id], outcome_cohort_ids, s.population)
    out = {}
    for o in outcome_cohort_ids:
        d, keep, _ = outcome_population(pop.frame, hits, o, pop.attrition, s.population)
        idx = np.flatnonzero(keep)
        dk = d.iloc[idx].reset_index(drop=True)
        dk["propensity_score"] = pop.ps.ps[idx]
        dk["stratum"] = adjust_on_ps(pop.ps.ps[idx], dk["treatment"].to_numpy(), s) if pop.ps.ok else -1
        out[o] = dk[["person_id", "treatment", "propensity_score", "stratum", "time", "event", "n_events",
                     "days_at_risk"]]
    return pop.ps, out


def _analyse(cdm: Cdm, pop: Population, t_id: int, c_id: int, outcomes: list[int], ncs: list[int],
             all_outcomes: list[int], s: CohortMethodSettings, labels: dict[int, str], name: str,
             notes: list[Note]) -> AnalysisResult:
    p = s.population
    frame = pop.frame
    X_pop = pop.covariates.X[frame["row"].to_numpy()]
    ps_all = pop.ps.ps
    hits = outcome_hits(cdm, [t_id, c_id], all_outcomes, p)
    tables: dict[str, ResultTable] = {}
    estimates: list[dict[str, object]] = []
    dist_frames = [_pref_hist(pop.ps.preference, frame["treatment"].to_numpy(), "before", s.preference_bins)]
    for o in all_outcomes:
        kind = "outcome" if o in outcomes else "negative_control"
        d, keep, attrition = outcome_population(frame, hits, o, pop.attrition, p)
        idx = np.flatnonzero(keep)
        dk = d.iloc[idx].reset_index(drop=True)
        t = dk["treatment"].to_numpy()
        base = {"outcome_id": o, "outcome": labels[o], "outcome_type": kind}
        crude = _outcome_estimate(dk, None, s) if len(dk) else Estimate(math.nan, math.nan, False)
        estimates.append({**base, "adjustment": "crude", **_summary(dk), **crude.row(s.alpha),
                          "mdrr": mdrr(float(t.mean()) if len(t) else 0.0, int(dk["event"].sum()), s.alpha, s.power),
                          "max_abs_smd_after": np.nan, "balance_flag": np.nan})
        if not pop.ps.ok and s.adjustment != "none":
            attrition.append(_counts(dk.iloc[0:0], "matched on propensity score" if s.adjustment == "match"
                                     else "stratified on propensity score"))
            tables[f"{name}_attrition_{labels[o]}"] = _attrition_table(f"{name}_attrition_{labels[o]}", attrition)
            continue
        strata = adjust_on_ps(ps_all[idx], t, s)
        kept = strata >= 0
        if s.adjustment == "match":
            attrition.append(_counts(dk[kept], "matched on propensity score"))
        tables[f"{name}_attrition_{labels[o]}"] = _attrition_table(f"{name}_attrition_{labels[o]}", attrition)
        da = dk[kept].reset_index(drop=True)
        st = strata[kept] if s.outcome_model.stratified and s.adjustment != "none" else None
        adj = _outcome_estimate(da, st, s) if len(da) else Estimate(math.nan, math.nan, False)
        bal = balance_before_after(X_pop[idx], t, kept, strata, pop.covariates.ref)
        max_smd = float(np.nanmax(np.abs(bal["after_smd"]))) if len(bal) and kept.any() else np.nan
        ta = da["treatment"].to_numpy()
        estimates.append({**base, "adjustment": s.adjustment if s.adjustment != "none" else "unadjusted model",
                          **_summary(da), **adj.row(s.alpha),
                          "mdrr": mdrr(float(ta.mean()) if len(ta) else 0.0, int(da["event"].sum()), s.alpha,
                                       s.power),
                          "max_abs_smd_after": max_smd,
                          "balance_flag": float(max_smd > SMD_THRESHOLD) if math.isfinite(max_smd) else np.nan})
        if not adj.converged and len(da):
            notes.append(Note(NoteCode.OUTCOME_MODEL_WITHHELD, outcome=labels[o]))
        if kind == "outcome":
            tables[f"{name}_balance_{labels[o]}"] = _balance_table(f"{name}_balance_{labels[o]}", bal, len(dk))
            dist_frames.append(_pref_hist(pop.ps.preference[idx][kept], ta, f"after: {labels[o]}",
                                          s.preference_bins))
    est = pd.DataFrame(estimates)
    if ncs:
        est = _calibrate(est, notes, s.alpha)
    tables.update(_estimate_tables(est, name, len(frame)))
    tables.update(_ps_tables(pop, name, s))
    dist = pd.concat(dist_frames, ignore_index=True)
    tables[f"{name}_ps_distribution"] = ResultTable(
        name=f"{name}_ps_distribution", kind="counts", data=dist,
        dimensions=["population", "arm", "preference_bin"], count_columns=["n"])
    empty = len(frame) == 0
    if empty:
        notes.append(Note(NoteCode.NO_POPULATION))
    return AnalysisResult("cohort_method", tables, empty=empty, notes=notes)


_COUNTS = ["target_subjects", "comparator_subjects", "target_events", "comparator_events"]


def _estimate_tables(est: pd.DataFrame, name: str, n: int) -> dict[str, ResultTable]:
    """Estimates (model) and the subjects, events and days behind them (counts). An estimate row is
    one outcome model with one term (treatment), so it carries one count, the sparsest level of that
    model (`mercia.disclosure.model_support`): the fewest events or non-events in either arm (persons
    per arm are at least that). release() drops the estimate when it is small; a row with no estimate
    (none converged) carries 1, so it is dropped under every policy, as is an arm with no events (0 is
    not small under policies that release zeros)."""
    keys = ["outcome_id", "outcome", "outcome_type", "adjustment"]
    counts = est[[*keys, *_COUNTS, "target_days", "comparator_days"]].copy()
    model = est.drop(columns=[*_COUNTS, "target_days", "comparator_days"]).copy()
    levels = np.column_stack([
        est["target_events"], est["comparator_events"],
        est["target_subjects"] - est["target_events"], est["comparator_subjects"] - est["comparator_events"],
    ]).min(axis=1) if len(est) else np.zeros(0, dtype=np.int64)
    no_estimate = est["log_rr"].isna().to_numpy() if len(est) else np.zeros(0, dtype=bool)
    model.insert(4, "min_level_count", np.where(no_estimate | (levels <= 0), 1, levels).astype("int64"))
    n_events = int(est.loc[est["adjustment"] == "crude", ["target_events", "comparator_events"]].to_numpy().sum())
    return {
        f"{name}_estimates": ResultTable(name=f"{name}_estimates", kind="model", data=model,
                                         count_columns=["min_level_count"],
                                         model=ModelInfo(df_resid=max(n - 1, 0), n_obs=n, n_events=n_events)),
        f"{name}_counts": ResultTable(name=f"{name}_counts", kind="counts", data=counts, dimensions=keys,
                                      count_columns=_COUNTS, exposure_columns=["target_days", "comparator_days"]),
    }


def _attrition_table(name: str, rows: list[dict[str, object]]) -> ResultTable:
    df = pd.DataFrame(rows)
    # Step labels must be unique in a sequential table.
    df["step"] = [f"{i + 1}. {s}" for i, s in enumerate(df["step"])]
    return ResultTable(name=name, kind="counts", data=df, dimensions=["step"],
                       count_columns=["n_target", "n_comparator"], sequential=True)


def _balance_table(name: str, bal: pd.DataFrame, n: int) -> ResultTable:
    """Every covariate's means, SDs and SMDs; a row rests on the fewest persons with the covariate
    in any arm before or after (`min_nonzero`), and release() drops rows where that is small."""
    nonzero = [f"{w}_nonzero_{a}" for w in ("before", "after") for a in ("target", "comparator")]
    sizes = [f"{w}_n_{a}" for w in ("before", "after") for a in ("target", "comparator")]
    data = bal.drop(columns=nonzero + sizes)
    data.insert(4, "min_nonzero", bal[nonzero].min(axis=1).astype("int64"))
    return ResultTable(name=name, kind="model", data=data, count_columns=["min_nonzero"],
                       model=ModelInfo(df_resid=max(n - 1, 0), n_obs=n),
                       data_levels=["covariate_id", "covariate_name"])  # a withheld covariate's row goes


def _pref_hist(pref: np.ndarray, t: np.ndarray, population: str, bins: int) -> pd.DataFrame:
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for arm, label in ((1, "target"), (0, "comparator")):
        v = pref[t == arm]
        v = v[np.isfinite(v)]
        counts, _ = np.histogram(v, bins=edges)
        for k, c in enumerate(counts):
            rows.append({"population": population, "arm": label, "preference_bin": f"{edges[k]:.2f}-{edges[k + 1]:.2f}",
                         "n": int(c)})
    return pd.DataFrame(rows)


def _ps_tables(pop: Population, name: str, s: CohortMethodSettings) -> dict[str, ResultTable]:
    fit, frame = pop.ps, pop.frame
    t = frame["treatment"].to_numpy()
    n = len(frame)
    ref = pop.covariates.ref.set_index("covariate_id")
    X = pop.covariates.X[frame["row"].to_numpy()]
    nz = fit.coef != 0
    ids = fit.covariate_ids[nz]
    coef_df = pd.DataFrame({"covariate_id": ids, "covariate_name": ref.loc[ids, "covariate_name"].to_numpy()
                            if len(ids) else [], "coef": fit.coef[nz]})
    if len(ids):
        cols = np.searchsorted(pop.covariates.covariate_ids, ids)
        Xc = X[:, cols].tocsc()
        coef_df["nonzero_target"] = np.diff(Xc[np.flatnonzero(t == 1)].tocsc().indptr)
        coef_df["nonzero_comparator"] = np.diff(Xc[np.flatnonzero(t == 0)].tocsc().indptr)
    else:
        coef_df["nonzero_target"] = pd.Series(dtype="int64")
        coef_df["nonzero_comparator"] = pd.Series(dtype="int64")
    coef_df = pd.concat([pd.DataFrame({"covariate_id": [0], "covariate_name": ["(intercept)"], "coef": [fit.intercept],
                                       "nonzero_target": [int((t == 1).sum())],
                                       "nonzero_comparator": [int((t == 0).sum())]}), coef_df], ignore_index=True)
    coef_df = coef_df.reindex(coef_df["coef"].abs().sort_values(ascending=False).index).reset_index(drop=True)
    coef_df["min_nonzero"] = coef_df[["nonzero_target", "nonzero_comparator"]].min(axis=1).astype("int64")
    coef_df = coef_df.drop(columns=["nonzero_target", "nonzero_comparator"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        diag = pd.DataFrame([{
            "status": "ok" if fit.ok else "not fitted",  # the reason can name counts or covariates: not released
            "min_arm": int(min((t == 1).sum(), (t == 0).sum())),
            "auc": fit.auc if fit.auc is not None else np.nan,
            "equipoise": equipoise(fit.preference, s.equipoise_bounds) if fit.ok else 0.0,
            "prior": s.ps.prior, "prior_variance": fit.variance if fit.variance is not None else np.nan,
            "covariates_offered": fit.n_covariates_offered, "covariates_in_model": len(fit.covariate_ids),
            "covariates_nonzero": int(nz.sum()), "fitted_on_sample": float(fit.sampled),
            "high_correlation_covariates": 0 if fit.high_correlation is None else len(fit.high_correlation),
        }])
    info = ModelInfo(df_resid=max(n - int(nz.sum()) - 1, 0), n_obs=n, n_events=int((t == 1).sum()))
    return {
        f"{name}_ps_model": ResultTable(name=f"{name}_ps_model", kind="model", data=coef_df, model=info,
                                        count_columns=["min_nonzero"],
                                        data_levels=["covariate_id", "covariate_name"]),
        f"{name}_ps_diagnostics": ResultTable(name=f"{name}_ps_diagnostics", kind="model", data=diag, model=info,
                                              count_columns=["min_arm"]),
    }


def _calibrate(est: pd.DataFrame, notes: list[Note], alpha: float) -> pd.DataFrame:
    """Calibrated p-values (empirical null of the negative controls) and CIs (systematic error model
    with true log RR 0 for every control), for the adjusted estimates."""
    from mercia.analyses import calibration as cal

    adj = est["adjustment"] != "crude"
    nc = adj & (est["outcome_type"] == "negative_control") & est["log_rr"].notna() & est["se_log_rr"].notna()
    for c in ("calibrated_p", "calibrated_log_rr", "calibrated_se_log_rr", "calibrated_ci_lower",
              "calibrated_ci_upper"):
        est[c] = np.nan
    if nc.sum() < 5:
        notes.append(Note(NoteCode.NOT_CALIBRATED))
        return est
    try:
        null = cal.fit_null(est.loc[nc, "log_rr"], est.loc[nc, "se_log_rr"])
        model = cal.fit_systematic_error_model(est.loc[nc, "log_rr"], est.loc[nc, "se_log_rr"], np.zeros(int(nc.sum())))
    except StudyError:
        notes.append(Note(NoteCode.NOT_CALIBRATED))
        return est
    ok = adj & est["log_rr"].notna() & est["se_log_rr"].notna()
    est.loc[ok, "calibrated_p"] = cal.calibrate_p(null, est.loc[ok, "log_rr"], est.loc[ok, "se_log_rr"])
    lr, lo, hi, se = cal.calibrate_ci(model, est.loc[ok, "log_rr"], est.loc[ok, "se_log_rr"], alpha=alpha)
    est.loc[ok, "calibrated_log_rr"] = lr
    est.loc[ok, "calibrated_se_log_rr"] = se
    est.loc[ok, "calibrated_ci_lower"] = np.exp(lo)
    est.loc[ok, "calibrated_ci_upper"] = np.exp(hi)
    notes.append(Note(NoteCode.CALIBRATED))
    return est
