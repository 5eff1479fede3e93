"""Time to event: Kaplan-Meier curves and Cox proportional hazards, with what a federated Cox fit needs.

Time is in days from index (the target cohort's start). The event is the first outcome cohort start
on or after index + `tar_start` and on or before the end of time at risk, which is the earliest of the
observation period's end, the cohort's end (`censor_at="cohort_end"`), death (`censor_at_death`) and
index + `tar_end`. A person whose time at risk ends before it starts is not analysed.

Kaplan-Meier curves are computed from per-distinct-time aggregates (n_at_risk, n_events, n_censored)
made in SQL; only those leave the database. Cox models need one row per person: those rows are
fetched into this process at the site and never leave it; what leaves is coefficients (or, for a
federated fit, the log partial likelihood, score and information at a given beta, `CoxSiteSummary`).

Ties: Efron's method throughout (lifelines' and R's default); Breslow's is available for the site
summaries. A federated fit over sites treats each site as a stratum (its risk sets are its own), so
pooled Newton-Raphson on the summed summaries reproduces a site-stratified Cox model exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import stats

from mercia import limits
from mercia.analyses.notes import Note, NoteCode
from mercia.analyses.population import population_table
from mercia.analyses.result import AnalysisResult
from mercia.analyses.solvers import TOL, CoxRiskSets, Evaluation, cox_risk_sets, efron_means, newton_maximise
from mercia.cdm import Cdm
from mercia.cdm.query import DOMAINS, build, check_cohort_id, fetch_df, require_tables
from mercia.disclosure import ModelInfo, ResultTable
from mercia.disclosure.model_support import support_count
from mercia.errors import StudyError
from mercia.model_doc import field_docs

Z95 = float(stats.norm.ppf(0.975))
MALE = 8507


@field_docs
class SurvivalSettings(BaseModel):
    """Time at risk and censoring, in days relative to index (the target cohort start)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tar_start: int = Field(
        0, ge=0, le=limits.MAX_DAYS,
        description="first day at risk, in days after index (0: the index day); an outcome before it is no event",
    )
    tar_end: int | None = Field(
        None, ge=0, le=limits.MAX_DAYS,
        description="last day at risk, in days after index, not before tar_start; None: no cap (follow-up "
        "ends only by censoring)",
    )
    censor_at: Literal["observation_end", "cohort_end"] = Field(
        "observation_end",
        description="when follow-up ends: observation_end (the end of the observation period holding index; "
        "intention to treat) or cohort_end (the target cohort entry's end as well: on treatment)",
    )
    censor_at_death: bool = Field(True, description="follow-up also ends at death (the death table)")
    first_entry_only: bool = Field(
        True, description="each person's first cohort entry only; false: every entry is followed"
    )
    exclude_prior_outcome: bool = Field(
        False, description="drop persons with an outcome cohort start before index + tar_start"
    )

    @model_validator(mode="after")
    def _check(self) -> SurvivalSettings:
        if self.tar_end is not None and self.tar_end < self.tar_start:
            raise StudyError(
                f"time at risk ends (day {self.tar_end}) before it starts (day {self.tar_start}); "
                "make tar_end >= tar_start"
            )
        return self


@field_docs
class CovariateSpec(BaseModel):
    """A 0/1 covariate: any record of the concepts (and their descendants) in a window before index."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1, max_length=limits.MAX_NAME,
        description="the model term's name; distinct, and not treatment, age or male",
    )
    concept_ids: list[Annotated[int, Field(ge=limits.MIN_INT64, le=limits.MAX_INT64)]] = Field(
        min_length=1, max_length=limits.MAX_CONCEPT_SET_ITEMS,
        description="OMOP concept ids; a record of any of them makes the covariate 1",
    )
    domain: Literal["condition", "drug", "procedure", "measurement", "observation"] = Field(
        "condition", description="the table the records are read from (its concept id and start date)"
    )
    include_descendants: bool = Field(
        True, description="the concepts' descendants (concept_ancestor) count too"
    )
    window_start: int = Field(
        -365, ge=-limits.MAX_DAYS, le=limits.MAX_DAYS,
        description="first day of the window, relative to index (negative: before), inclusive",
    )
    window_end: int = Field(
        0, ge=-limits.MAX_DAYS, le=limits.MAX_DAYS,
        description="last day of the window, relative to index, inclusive; not before window_start",
    )

    @model_validator(mode="after")
    def _check(self) -> CovariateSpec:
        if self.window_end < self.window_start:
            raise StudyError(f"covariate {self.name!r}: window_end is before window_start")
        return self


@field_docs
class CoxSettings(BaseModel):
    """A Cox model of target vs comparator (persons in both are dropped): its time at risk, its
    adjustment (age, sex, named covariates) and how it is fitted and checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    survival: SurvivalSettings = Field(
        SurvivalSettings(), description="time at risk and censoring, as for `kaplan_meier`"
    )
    age: bool = Field(True, description="adjust for age at index (years: index year - year of birth), linear")
    sex: bool = Field(True, description="adjust for sex (term `male`: 1 for gender concept 8507)")
    covariates: list[CovariateSpec] = Field(
        default_factory=list, max_length=limits.MAX_LIST,
        description="further 0/1 covariates, each a term of the model",
    )
    ph_test: bool = Field(
        True,
        description="also test proportional hazards per term (Grambsch-Therneau, on scaled Schoenfeld "
        "residuals against the rank of time), table `<name>_ph_test`",
    )
    ties: Literal["efron", "breslow"] = Field("efron", description="how tied event times are handled")
    alpha: float = Field(
        0.05, gt=0, lt=1, description="1 - confidence level of the hazard ratios' intervals: 0.05 gives 95%"
    )

    @model_validator(mode="after")
    def _check(self) -> CoxSettings:
        names = [c.name for c in self.covariates]
        clash = sorted({n for n in names if names.count(n) > 1 or n in ("treatment", "age", "male")})
        if clash:
            raise StudyError(f"covariate names {clash} are repeated or reserved; give each a distinct name")
        return self


# ------------------------------------------------------------------------------------ time to event SQL


def _tte_template(settings: SurvivalSettings, with_person: bool) -> str:
    """Per-person (cohort_id, person_id, time, event) as a query; the clauses chosen come from the
    validated settings only, every value is a bound parameter."""
    ends = ["op.observation_period_end_date"]
    if settings.censor_at == "cohort_end":
        ends.append("i.cohort_end_date")
    if settings.censor_at_death:
        ends.append("COALESCE(dd.death_date, op.observation_period_end_date)")
    if settings.tar_end is not None:
        ends.append("CAST(i.cohort_start_date + CAST($tar_end AS INTEGER) AS DATE)")
    end_expr = ends[0] if len(ends) == 1 else f"LEAST({', '.join(ends)})"
    death_join = (
        "LEFT JOIN (SELECT person_id, MIN(death_date) AS death_date FROM death GROUP BY person_id) dd "
        "ON dd.person_id = i.subject_id"
        if settings.censor_at_death
        else ""
    )
    first = "WHERE i.rn = 1" if settings.first_entry_only else ""
    prior = (
        """AND NOT EXISTS (SELECT 1 FROM cohort po WHERE po.cohort_definition_id = $outcome_id
             AND po.subject_id = b.person_id AND po.cohort_start_date < b.tar_start_date)"""
        if settings.exclude_prior_outcome
        else ""
    )
    person_cols = ", b.index_date, b.tar_start_date" if with_person else ""
    return f"""
    WITH idx AS (
      SELECT t.cohort_definition_id, t.subject_id, t.cohort_start_date, t.cohort_end_date,
             ROW_NUMBER() OVER (PARTITION BY t.cohort_definition_id, t.subject_id
                                ORDER BY t.cohort_start_date, t.cohort_end_date) AS rn
      FROM cohort t
      WHERE t.cohort_definition_id IN (SELECT cid FROM cohort_ids)
    ),
    base AS (
      SELECT i.cohort_definition_id AS cohort_id, i.subject_id AS person_id,
             i.cohort_start_date AS index_date,
             CAST(i.cohort_start_date + CAST($tar_start AS INTEGER) AS DATE) AS tar_start_date,
             {end_expr} AS end_date
      FROM (SELECT * FROM idx i {first}) i
      JOIN observation_period op ON op.person_id = i.subject_id
        AND i.cohort_start_date >= op.observation_period_start_date
        AND i.cohort_start_date <= op.observation_period_end_date
      {death_join}
    ),
    ev AS (
      SELECT b.cohort_id, b.person_id, b.index_date, MIN(o.cohort_start_date) AS event_date
      FROM base b
      JOIN cohort o ON o.cohort_definition_id = $outcome_id AND o.subject_id = b.person_id
        AND o.cohort_start_date >= b.tar_start_date AND o.cohort_start_date <= b.end_date
      GROUP BY b.cohort_id, b.person_id, b.index_date
    ),
    tte AS (
      SELECT b.cohort_id, b.person_id{person_cols},
             CASE WHEN ev.event_date IS NULL THEN DATE_DIFF('day', b.index_date, b.end_date)
                  ELSE DATE_DIFF('day', b.index_date, ev.event_date) END AS time,
             CASE WHEN ev.event_date IS NULL THEN 0 ELSE 1 END AS event
      FROM base b
      LEFT JOIN ev ON ev.cohort_id = b.cohort_id AND ev.person_id = b.person_id
        AND ev.index_date = b.index_date
      WHERE b.end_date >= b.tar_start_date {prior}
    )
    """


def _params(settings: SurvivalSettings, outcome_id: int) -> dict[str, object]:
    p: dict[str, object] = {"tar_start": settings.tar_start, "outcome_id": outcome_id}
    if settings.tar_end is not None:
        p["tar_end"] = settings.tar_end
    return p


def _ids_values(ids: Sequence[int]) -> dict[str, tuple[list[str], list[list[int]]]]:
    return {"cohort_ids": (["cid"], [[i] for i in ids])}


def time_to_event_counts(
    cdm: Cdm, cohort_ids: Sequence[int], outcome_id: int, settings: SurvivalSettings | None = None
) -> pd.DataFrame:
    """Per cohort and distinct time: n_at_risk, n_events, n_censored, aggregated in the database."""
    settings = settings or SurvivalSettings()
    ids = [check_cohort_id(c, "cohort id") for c in cohort_ids]
    check_cohort_id(outcome_id, "outcome cohort id")
    if not ids:
        raise StudyError("give at least one target cohort id")
    require_tables(
        cdm,
        ["cohort", "observation_period", *(["death"] if settings.censor_at_death else [])],
        "survival analysis",
    )
    sql = (
        _tte_template(settings, with_person=False)
        + """
    , agg AS (
      SELECT cohort_id, time, COUNT(*) AS n, SUM(event) AS d FROM tte GROUP BY cohort_id, time
    )
    SELECT cohort_id, time,
           SUM(n) OVER (PARTITION BY cohort_id ORDER BY time DESC
                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS n_at_risk,
           d AS n_events, n - d AS n_censored
    FROM agg ORDER BY cohort_id, time
    """
    )
    df = fetch_df(cdm, build(sql, cdm, _ids_values(ids)), _params(settings, outcome_id))
    for c in ("cohort_id", "time", "n_at_risk", "n_events", "n_censored"):
        df[c] = df[c].astype("int64")
    return df


# Persons of `{p}` in more than one of the cohorts left out. NOT EXISTS, not `person_id NOT IN (subquery)`:
# Spark plans a NOT IN as a null-aware nested-loop join of every row against every person of the subquery
# (cost persons x persons; tests/test_spark_plans.py). The two give the same rows: they differ only when
# an id is NULL, and tte's person_id never is (it is the cohort's subject_id joined by equality to
# observation_period.person_id in `base`), on either side.
_NOT_IN_BOTH = ("NOT EXISTS (SELECT 1 FROM (SELECT person_id FROM tte GROUP BY person_id "
                "HAVING COUNT(DISTINCT cohort_id) > 1) both_arms WHERE both_arms.person_id = {p}.person_id)")


def tte_attrition(
    cdm: Cdm, cohort_ids: Sequence[int], outcome_id: int, settings: SurvivalSettings, *, drop_both: bool = False
) -> tuple[list[str], dict[int, list[int]]]:
    """The population steps of a time-to-event analysis (fixed words naming its rules) and, per cohort,
    the distinct persons left after each, counted in the database; `drop_both` adds the Cox step that
    removes persons in more than one of the cohorts."""
    steps = ["persons in the cohort",
             ("first entry" if settings.first_entry_only else "an entry") + " in an observation period",
             "time at risk ends on or after it starts"]
    parts = ["SELECT cohort_definition_id AS cohort_id, subject_id AS person_id FROM idx",
             "SELECT cohort_id, person_id FROM base",
             "SELECT cohort_id, person_id FROM base WHERE end_date >= tar_start_date"]
    if settings.exclude_prior_outcome:
        steps.append("persons with the outcome before time at risk removed")
        parts.append("SELECT cohort_id, person_id FROM tte")
    if drop_both:
        steps.append("persons in both target and comparator removed")
        parts.append(f"SELECT t.cohort_id, t.person_id FROM tte t WHERE {_NOT_IN_BOTH.format(p='t')}")
    union = " UNION ALL ".join(f"SELECT {k} AS k, cohort_id, person_id FROM ({q}) q{k}" for k, q in enumerate(parts))
    sql = (_tte_template(settings, with_person=False)
           + f", steps AS ({union}) SELECT k, cohort_id, COUNT(DISTINCT person_id) AS n FROM steps GROUP BY k, cohort_id")
    df = fetch_df(cdm, build(sql, cdm, _ids_values(cohort_ids)), _params(settings, outcome_id))
    got = {(int(r.k), int(r.cohort_id)): int(r.n) for r in df.itertuples()}
    return steps, {c: [got.get((k, c), 0) for k in range(len(steps))] for c in cohort_ids}


# ------------------------------------------------------------------------------------------ Kaplan-Meier


def km_estimates(counts: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Kaplan-Meier estimate and log-log (exponential Greenwood) CI from per-time counts of one group,
    computed exactly as lifelines' KaplanMeierFitter does. Works on released counts too."""
    g = counts.sort_values("time").reset_index(drop=True)
    n = g["n_at_risk"].to_numpy(dtype=float)
    d = g["n_events"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_s = np.cumsum(np.log(n - d) - np.log(n))
        surv = np.exp(log_s)
        var_terms = np.where(n > d, d / (n * (n - d)), 0.0)
        cum = np.cumsum(var_terms)
        z = float(stats.norm.ppf(1 - alpha / 2))
        v = np.log(surv)
        lower = np.exp(-np.exp(np.log(-v) - z * np.sqrt(cum) / v))
        upper = np.exp(-np.exp(np.log(-v) + z * np.sqrt(cum) / v))
    out = g.copy()
    out["estimate"] = surv
    # lifelines fills undefined bounds (S = 1, or S = 0) with 1.0; so do we, to stay comparable.
    out["ci_lower"] = np.nan_to_num(lower, nan=1.0)
    out["ci_upper"] = np.nan_to_num(upper, nan=1.0)
    return out


def median_survival(est: pd.DataFrame) -> tuple[float, float, float]:
    """(median, lower, upper): the first time each curve (estimate, CI bounds) is at or below 0.5;
    infinity where it never is (as lifelines' median_survival_times)."""

    def first(col: str) -> float:
        hit = est.loc[est[col] <= 0.5, "time"]
        return float(hit.min()) if len(hit) else math.inf

    return first("estimate"), first("ci_lower"), first("ci_upper")


def kaplan_meier(
    cdm: Cdm,
    target_cohort_ids: Sequence[int],
    outcome_cohort_id: int,
    settings: SurvivalSettings | None = None,
    *,
    alpha: float = 0.05,
    name: str = "km",
) -> AnalysisResult:
    """Kaplan-Meier curves of time to outcome, one per target cohort.

    Tables: `{name}` (survival: cohort_id, time, n_at_risk, n_events, n_censored, and the site-side
    estimate/ci_lower/ci_upper, which release() recomputes from released counts) and `{name}_summary`
    (counts: persons and events per cohort; median and CI as site-side columns), and `{name}_attrition`
    (counts, sequential: persons per target cohort, column `cohort_<id>`, after each rule of
    `tte_attrition`).
    """
    counts = time_to_event_counts(cdm, target_cohort_ids, outcome_cohort_id, settings)
    frames, summary = [], []
    for cid in target_cohort_ids:
        g = counts[counts["cohort_id"] == cid]
        if g.empty:
            summary.append(
                {
                    "cohort_id": cid,
                    "n_persons": 0,
                    "n_events": 0,
                    "median": np.nan,
                    "median_lower": np.nan,
                    "median_upper": np.nan,
                }
            )
            continue
        est = km_estimates(g, alpha)
        frames.append(est)
        med, lo, hi = median_survival(est)
        summary.append(
            {
                "cohort_id": cid,
                "n_persons": int(g["n_at_risk"].max()),
                "n_events": int(g["n_events"].sum()),
                "median": med,
                "median_lower": lo,
                "median_upper": hi,
            }
        )
    cols = ["cohort_id", "time", "n_at_risk", "n_events", "n_censored", "estimate", "ci_lower", "ci_upper"]
    curve = (
        pd.concat(frames, ignore_index=True)[cols]
        if frames
        else pd.DataFrame({c: pd.Series(dtype="float64" if c in cols[5:] else "int64") for c in cols})
    )
    summ = pd.DataFrame(summary)
    steps, persons = tte_attrition(cdm, target_cohort_ids, outcome_cohort_id, settings or SurvivalSettings())
    pop = population_table(f"{name}_attrition", steps, {f"cohort_{c}": persons[c] for c in target_cohort_ids})
    empty = curve.empty
    notes = [Note(NoteCode.NO_TIME_AT_RISK, cohort=int(s["cohort_id"])) for s in summary if s["n_persons"] == 0]
    return AnalysisResult(
        analysis="kaplan_meier",
        tables={
            name: ResultTable(name=name, kind="survival", data=curve, dimensions=["cohort_id"]),
            f"{name}_summary": ResultTable(
                name=f"{name}_summary",
                kind="counts",
                data=summ,
                dimensions=["cohort_id"],
                count_columns=["n_persons", "n_events"],
            ),
            pop.name: pop,
        },
        empty=empty,
        notes=notes,
    )


# -------------------------------------------------------------------------------------------- Cox model


@dataclass
class CoxData:
    """Per-person rows for a Cox model. Row-level data: it stays at the site."""

    X: np.ndarray
    time: np.ndarray
    event: np.ndarray
    terms: list[str]
    strata: np.ndarray | None = None

    @property
    def n_obs(self) -> int:
        return len(self.time)

    @property
    def n_events(self) -> int:
        return int(self.event.sum())

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.X, columns=self.terms)
        df["time"] = self.time
        df["event"] = self.event
        if self.strata is not None:
            df["stratum"] = self.strata
        return df


@dataclass
class CoxSiteSummary:
    """What one site sends in a federated Cox round: sums over its own risk sets at `beta`."""

    beta: np.ndarray
    loglik: float
    score: np.ndarray
    information: np.ndarray
    n_obs: int
    n_events: int
    ties: str

    def __add__(self, other: CoxSiteSummary) -> CoxSiteSummary:
        if self.ties != other.ties or not np.array_equal(self.beta, other.beta):
            raise StudyError("site summaries can only be pooled at the same beta with the same ties method")
        return CoxSiteSummary(
            self.beta,
            self.loglik + other.loglik,
            self.score + other.score,
            self.information + other.information,
            self.n_obs + other.n_obs,
            self.n_events + other.n_events,
            self.ties,
        )


def cox_site_summary(
    data: CoxData,
    beta: Sequence[float] | np.ndarray,
    ties: Literal["efron", "breslow"] = "efron",
    *,
    risk_sets: CoxRiskSets | None = None,
) -> CoxSiteSummary:
    """Log partial likelihood, score (gradient) and information (negative Hessian) of this site's
    data at `beta`, with its own strata (if any) as separate risk sets. A fit passes `risk_sets`
    (`cox_risk_sets` of these data with these ties), made once, so its steps do not sort again."""
    b = np.asarray(beta, dtype=float)
    p = data.X.shape[1]
    if b.shape != (p,):
        raise StudyError(f"beta has {b.size} values but the model has {p} terms ({', '.join(data.terms)})")
    sets = cox_risk_sets(data.X, data.time, data.event, data.strata, ties) if risk_sets is None else risk_sets
    ll, sc, inf = sets.likelihood(b)
    return CoxSiteSummary(b.copy(), ll, sc, inf, data.n_obs, data.n_events, ties)


@dataclass
class CoxFit:
    terms: list[str]
    coef: np.ndarray
    se: np.ndarray
    loglik: float
    information: np.ndarray
    n_obs: int
    n_events: int
    iterations: int
    converged: bool

    def summary(self, alpha: float = 0.05) -> pd.DataFrame:
        z = float(stats.norm.ppf(1 - alpha / 2))
        zs = self.coef / self.se
        return pd.DataFrame(
            {
                "term": self.terms,
                "coef": self.coef,
                "se": self.se,
                "hr": np.exp(self.coef),
                "hr_lower": np.exp(self.coef - z * self.se),
                "hr_upper": np.exp(self.coef + z * self.se),
                "z": zs,
                "p": 2 * stats.norm.sf(np.abs(zs)),
            }
        )


def newton_raphson(
    summarise: Callable[[np.ndarray], CoxSiteSummary],
    p: int,
    terms: list[str] | None = None,
    *,
    tol: float = TOL,
    max_iter: int = 100,
) -> CoxFit:
    """Maximise a (pooled) partial likelihood: `summarise(beta)` returns the summed site summaries.

    For a federated fit, `summarise` asks every site for `cox_site_summary(its data, beta)` and adds
    them; the hub sees only those sums. The solver and its stopping rule: `mercia.analyses.solvers`.
    """
    res = newton_maximise(
        lambda b: Evaluation((c := summarise(b)).loglik, c.score, c.information, c),
        np.zeros(p), max_iter=max_iter, tol=tol,
    )
    if res.status == "singular":
        raise StudyError(
            "the Cox model's information matrix is singular: a covariate is constant or collinear "
            "with others in these data; drop it"
        )
    beta, cur, iterations, converged = res.beta, res.at.state, res.iterations, res.converged
    if not np.all(np.isfinite(beta)) or not converged:
        warnings.warn(
            "Cox fit did not converge (possible separation: a covariate with no events)",
            RuntimeWarning,
            stacklevel=2,
        )
    try:
        cov = np.linalg.inv(cur.information)
    except np.linalg.LinAlgError:
        cov = np.full((p, p), np.nan)
    se = np.sqrt(np.diag(cov))
    return CoxFit(
        terms or [f"x{i}" for i in range(p)],
        beta,
        se,
        cur.loglik,
        cur.information,
        cur.n_obs,
        cur.n_events,
        iterations,
        converged,
    )


def fit_cox(data: CoxData | Sequence[CoxData], ties: Literal["efron", "breslow"] = "efron") -> CoxFit:
    """Fit on one site's data, or on several (each its own stratum) pooled in-process."""
    sites = [data] if isinstance(data, CoxData) else list(data)
    if not sites or sum(s.n_obs for s in sites) == 0:
        raise StudyError("no persons to fit a Cox model on")
    p = sites[0].X.shape[1]
    sets = [cox_risk_sets(s.X, s.time, s.event, s.strata, ties) for s in sites]  # once per fit

    def summarise(beta: np.ndarray) -> CoxSiteSummary:
        out = cox_site_summary(sites[0], beta, ties, risk_sets=sets[0])
        for s, r in zip(sites[1:], sets[1:], strict=True):
            out = out + cox_site_summary(s, beta, ties, risk_sets=r)
        return out

    return newton_raphson(summarise, p, sites[0].terms)


def _covariate_template(
    covs: Sequence[CovariateSpec],
) -> tuple[str, dict[str, tuple[list[str], list[list[int]]]]]:
    """Per (person, covariate index) where the covariate is present; concept lists and windows are
    validated integers and become VALUES rows."""
    rows = [
        [k, cid, int(c.include_descendants), c.window_start, c.window_end]
        for k, c in enumerate(covs)
        for cid in c.concept_ids
    ]
    parts = []
    for domain in sorted({c.domain for c in covs}):
        table, concept_col, date_col = DOMAINS[domain]
        ks = [k for k, c in enumerate(covs) if c.domain == domain]
        parts.append(f"""
        SELECT DISTINCT b.person_id, b.index_date, cc.k FROM tte b
        JOIN {table} r ON r.person_id = b.person_id
        JOIN cov_concepts cc ON cc.concept_id = r.{concept_col}
          AND r.{date_col} >= CAST(b.index_date + cc.ws AS DATE)
          AND r.{date_col} <= CAST(b.index_date + cc.we AS DATE)
        WHERE cc.k IN ({", ".join(str(k) for k in ks)})""")
    sql = (
        """
    , cov_concepts AS (
      SELECT v.k, v.concept_id, v.ws, v.we FROM covdefs v
      UNION
      SELECT v.k, ca.descendant_concept_id AS concept_id, v.ws, v.we FROM covdefs v
      JOIN concept_ancestor ca ON ca.ancestor_concept_id = v.concept_id WHERE v.descendants = 1
    )
    """
        + "SELECT person_id, index_date, k FROM ("
        + " UNION ".join(parts)
        + ") u"
    )
    return sql, {"covdefs": (["k", "concept_id", "descendants", "ws", "we"], rows)}


def cox_data(
    cdm: Cdm,
    target_cohort_id: int,
    comparator_cohort_id: int,
    outcome_cohort_id: int,
    settings: CoxSettings | None = None,
) -> CoxData:
    """Per-person rows (treatment = target 1 / comparator 0, age at index in years, male, covariates).

    Persons in both cohorts are dropped (their exposure is ambiguous), as CohortMethod does by default.
    """
    settings = settings or CoxSettings()
    t_id = check_cohort_id(target_cohort_id, "target cohort id")
    c_id = check_cohort_id(comparator_cohort_id, "comparator cohort id")
    if t_id == c_id:
        raise StudyError("target and comparator are the same cohort; give two different cohort ids")
    s = settings.survival
    require_tables(
        cdm,
        ["cohort", "observation_period", "person", *(["death"] if s.censor_at_death else [])],
        "Cox model",
    )
    if any(c.include_descendants for c in settings.covariates):
        require_tables(cdm, ["concept_ancestor"], "covariates with descendants")
    for c in settings.covariates:
        require_tables(cdm, [DOMAINS[c.domain][0]], f"covariate {c.name!r}")
    values = _ids_values([t_id, c_id])
    # Time to event, age (year difference, as FeatureExtraction) and sex; one row per person.
    sql = (
        _tte_template(s, with_person=True)
        + """
    SELECT b.person_id, b.index_date, b.time, b.event,
           CASE WHEN b.cohort_id = $target_id THEN 1 ELSE 0 END AS treatment,
           EXTRACT(YEAR FROM b.index_date) - p.year_of_birth AS age,
           CASE WHEN p.gender_concept_id = 8507 THEN 1 ELSE 0 END AS male
    FROM tte b JOIN person p ON p.person_id = b.person_id
    WHERE """ + _NOT_IN_BOTH.format(p="b") + """
    ORDER BY b.person_id, b.index_date
    """
    )
    params = {**_params(s, outcome_cohort_id), "target_id": t_id}
    rows = fetch_df(cdm, build(sql, cdm, values), params)
    terms = ["treatment"] + (["age"] if settings.age else []) + (["male"] if settings.sex else [])
    X = rows[terms].to_numpy(dtype=float) if len(rows) else np.zeros((0, len(terms)))
    if settings.covariates:
        cov_sql, cov_values = _covariate_template(settings.covariates)
        q = build(_tte_template(s, with_person=True) + cov_sql, cdm, {**values, **cov_values})
        present = fetch_df(cdm, q, _params(s, outcome_cohort_id))
        C = np.zeros((len(rows), len(settings.covariates)))
        if len(rows) and len(present):
            # Covariates belong to an entry (person and index date): without first_entry_only a
            # person has several rows.
            keys = rows[["person_id", "index_date"]].assign(row=np.arange(len(rows)))
            hit = present.merge(keys, on=["person_id", "index_date"], how="inner")
            C[hit["row"].to_numpy(dtype=int), hit["k"].to_numpy(dtype=int)] = 1.0
        X = np.hstack([X, C])
        terms += [c.name for c in settings.covariates]
    return CoxData(
        X=X, time=rows["time"].to_numpy(dtype=float), event=rows["event"].to_numpy(dtype=float), terms=terms
    )


def ph_test(data: CoxData, fit: CoxFit | None = None) -> pd.DataFrame:
    """Proportional-hazards check per term: the Grambsch-Therneau score test on scaled Schoenfeld
    residuals (Efron means) against the rank of event times, computed as lifelines'
    `proportional_hazard_test(cph, df, time_transform="rank")` does (equal to it; lifelines' own
    residual loop is quadratic in the number of rows, so it is reimplemented here).

    Like lifelines, rows are ordered by (stratum,) time and event, stably, so tied events take
    consecutive ranks in their original row order.
    """
    fit = fit or fit_cox(data)
    X, t, e = data.X, data.time, data.event.astype(float)
    strata = data.strata if data.strata is not None else np.zeros(len(t), dtype=int)
    keys = (e, t) if data.strata is None else (e, t, strata)
    order = np.lexsort(keys)
    X, t, e, strata = X[order], t[order], e[order], strata[order]
    resid = np.where(e[:, None] == 1, X - efron_means(X, t, e, fit.coef, strata), 0.0)
    S = resid[e == 1]
    D = len(S)
    V = np.linalg.inv(fit.information)
    se2 = np.diag(V)
    scaled = D * S @ V
    ranks = np.arange(1, D + 1, dtype=float)
    dm = ranks - ranks.mean()
    stat = (dm @ scaled) ** 2 / (D * se2 * (dm**2).sum())
    return pd.DataFrame({"term": data.terms, "test_statistic": stat, "p": stats.chi2.sf(stat, 1)})


def cox_model(
    cdm: Cdm,
    target_cohort_id: int,
    comparator_cohort_id: int,
    outcome_cohort_id: int,
    settings: CoxSettings | None = None,
    *,
    name: str = "cox",
) -> AnalysisResult:
    """Cox proportional hazards, target vs comparator, adjusted for age, sex and named covariates.

    Tables: `{name}` (model: term, coef, se, hr, hr_lower, hr_upper, z, p; count columns n_nonzero
    and n_events_nonzero per term, and `min_level_count`, the model's sparsest level (see
    `mercia.disclosure.model_support`) on every row, so release() withholds every term of a model
    resting on a small level) and `{name}_ph_test` (model: Schoenfeld test per term, with the same
    count columns, so it withholds exactly what the model table withholds), and `{name}_attrition`
    (counts, sequential: n_target and n_comparator after each rule, the last removing persons in both).
    """
    settings = settings or CoxSettings()
    data = cox_data(cdm, target_cohort_id, comparator_cohort_id, outcome_cohort_id, settings)
    steps, persons = tte_attrition(cdm, [target_cohort_id, comparator_cohort_id], outcome_cohort_id,
                                   settings.survival, drop_both=True)
    pop = population_table(f"{name}_attrition", steps, {"n_target": persons[target_cohort_id],
                                                        "n_comparator": persons[comparator_cohort_id]})
    p = len(data.terms)
    coef_cols = [
        "term",
        "coef",
        "se",
        "hr",
        "hr_lower",
        "hr_upper",
        "z",
        "p",
        "n_nonzero",
        "n_events_nonzero",
        "min_level_count",
    ]
    counts = ["n_nonzero", "n_events_nonzero", "min_level_count"]
    notes: list[Note] = []
    arms = set(np.unique(data.X[:, 0])) if data.n_obs else set()
    if data.n_obs == 0 or data.n_events == 0 or arms != {0.0, 1.0}:
        # One note whatever the cause: which arm is empty, or that nobody had the outcome, are counts.
        notes.append(Note(NoteCode.MODEL_WITHHELD))
        empty = pd.DataFrame({c: pd.Series(dtype="object" if c == "term" else "float64") for c in coef_cols})
        empty[counts] = empty[counts].astype("int64")
        info = ModelInfo(df_resid=0, n_obs=data.n_obs, n_events=data.n_events)
        ph = pd.DataFrame(
            {
                "term": pd.Series(dtype="object"),
                "test_statistic": pd.Series(dtype="float64"),
                "p": pd.Series(dtype="float64"),
                **{c: pd.Series(dtype="int64") for c in counts},
            }
        )
        return AnalysisResult(
            "cox_model",
            {
                name: ResultTable(
                    name=name,
                    kind="model",
                    data=empty,
                    model=info,
                    count_columns=counts,
                ),
                f"{name}_ph_test": ResultTable(
                    name=f"{name}_ph_test", kind="model", data=ph, model=info, count_columns=counts
                ),
                pop.name: pop,
            },
            empty=True,
            notes=notes,
        )
    fit = fit_cox(data, settings.ties)
    table = fit.summary(settings.alpha)
    nz = data.X != 0
    table["n_nonzero"] = nz.sum(axis=0).astype("int64")
    table["n_events_nonzero"] = (nz & (data.event[:, None] == 1)).sum(axis=0).astype("int64")
    # One count for the whole model on every row: a model is released whole or not at all (a term on a
    # one-person level moves the others too, and whether the fit converges depends on that person).
    table["min_level_count"] = np.int64(support_count(data.X, data.event, converged=fit.converged))
    info = ModelInfo(df_resid=data.n_obs - p, n_obs=data.n_obs, n_events=data.n_events)
    tables = {name: ResultTable(name=name, kind="model", data=table, model=info, count_columns=counts),
              pop.name: pop}
    if settings.ph_test:
        try:
            ph = ph_test(data, fit)
        except np.linalg.LinAlgError:  # a singular information matrix; the model table still stands
            notes.append(Note(NoteCode.PH_TEST_NOT_COMPUTED))
            ph = pd.DataFrame(
                {
                    "term": pd.Series(dtype="object"),
                    "test_statistic": pd.Series(dtype="float64"),
                    "p": pd.Series(dtype="float64"),
                }
            )
        # The same count columns as the model table, term by term, so the PH test withholds what it does.
        ph = ph.merge(table[["term", *counts]], on="term", how="left")
        ph[counts] = ph[counts].fillna(1).astype("int64")
        tables[f"{name}_ph_test"] = ResultTable(
            name=f"{name}_ph_test", kind="model", data=ph, model=info, count_columns=counts
        )
    if not fit.converged:
        notes.append(Note(NoteCode.MODEL_WITHHELD))
    return AnalysisResult("cox_model", tables, empty=False, notes=notes)
