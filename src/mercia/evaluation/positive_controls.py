"""Positive controls by injection: outcomes added to a negative control during exposed time, so its
true relative risk becomes 1.5, 2, 4, ... (the approach of OHDSI MethodEvaluation's
`synthesizePositiveControls`, Schuemie et al. 2018).

For one exposure cohort (the target of a comparison) and each negative-control outcome (true RR 1):

1. the exposure's entries (each person's first with `first_exposure_only`) and their time at risk, as
   the comparative cohort method defines it (`StudyPopulationSettings`: risk window, washout); persons
   with the outcome before their time at risk are left out (MethodEvaluation's
   removePeopleWithPriorOutcomes), as are entries with no day at risk;
2. the outcomes during that time, counted per entry; fewer than `min_outcomes_for_model` (100, as
   MethodEvaluation) and the control is refused: a model of so few events says little about who has them;
3. a Poisson regression of that count on the entry's baseline covariates (`mercia.features`, index =
   exposure start) with log(days at risk) as offset; the covariates are scaled to a maximum of 1 and
   shrunk by a prior (`prior`: normal, ridge, or Laplace, L1; its variance `prior_variance`, 1 by
   default, or chosen by held-out likelihood over the cross-fitting folds when null; the intercept is
   not shrunk). MethodEvaluation cross-validates a Laplace prior. Each entry's count is predicted by the model
   fitted on the other entries (`cross_fit_folds` folds), and the predictions are scaled to sum to the
   observed count: in-sample predictions of a model of hundreds of covariates follow the entry's own
   outcomes, and would put the added outcomes on persons who already have one;
4. per effect size RR, each entry gets Poisson(predicted count x (RR - 1)) new outcomes on days drawn
   uniformly in its time at risk: the added outcomes follow the covariates as the real ones do, so a
   method's confounding adjustment is tested on them as on the real ones;
5. the new outcome cohort (all the negative control's own rows plus the added ones, one day each
   unless the control's rows last longer) is written into the results schema's cohort table under its
   own id, with a truth row: target RR, outcomes observed and added, expected added, and the realised
   RR in the exposed time ((observed + added) / observed).

Draws are seeded per (seed, negative control, effect size): the same seed writes the same rows.
Row-level: the cohorts stay at the site; the truth table holds counts, and is released (if ever)
through `mercia.disclosure.release` like any other table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import optimize
from sqlglot import exp

from mercia import limits
from mercia.analyses import cohort_method as cm
from mercia.cdm import Cdm
from mercia.cdm.query import check_cohort_id, require_tables
from mercia.errors import MerciaError
from mercia.features import CovariateData, CovariateSettings, build_covariates
from mercia.model_doc import field_docs

# MethodEvaluation's defaults.
MIN_OUTCOMES_FOR_MODEL = 100
MIN_OUTCOMES_FOR_INJECTION = 25

TRUTH_COLUMNS = ["outcome_id", "negative_control_id", "exposure_cohort_id", "target_effect_size", "status",
                 "persons", "exposed_days", "observed_outcomes", "expected_injected", "injected_outcomes",
                 "realised_effect_size", "model_covariates"]


class EvaluationError(MerciaError):
    """A benchmark or positive-control synthesis cannot run as asked."""


class TooFewOutcomesError(EvaluationError):
    """A negative control has too few outcomes in exposed time to model or to inject."""


@field_docs
class InjectionSettings(BaseModel):
    """How positive controls are synthesized from negative controls."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    effect_sizes: list[float] = Field(
        [1.5, 2.0, 4.0], min_length=1, max_length=20,
        description="the true relative risks to inject (each > 1 and at most 100)",
    )
    min_outcomes_for_model: int = Field(
        MIN_OUTCOMES_FOR_MODEL, ge=1, le=limits.MAX_INT32,
        description="fewest outcomes in the exposed time to fit the outcome model (MethodEvaluation: 100)",
    )
    min_outcomes_for_injection: int = Field(
        MIN_OUTCOMES_FOR_INJECTION, ge=1, le=limits.MAX_INT32,
        description="fewest outcomes in the exposed time to inject into (MethodEvaluation: 25)",
    )
    remove_people_with_prior_outcomes: bool = Field(
        True, description="leave out (of model and injection) persons with the outcome before their time at risk"
    )
    prior: Literal["normal", "laplace"] = Field(
        "normal",
        description="prior on the outcome model's coefficients: normal (ridge: shrinks all alike) or laplace "
                    "(L1, as MethodEvaluation: drops the covariates that do not predict)",
    )
    prior_variance: float | None = Field(
        1.0, gt=0, le=1e6, allow_inf_nan=False,
        description="variance of the prior on the outcome model's coefficients (covariates scaled to max 1); "
                    "null: the one of 0.0001, 0.001, 0.01, 0.1 and 1 with the best held-out likelihood over the "
                    "cross-fitting folds (MethodEvaluation cross-validates a Laplace prior)",
    )
    min_covariate_count: int = Field(
        10, ge=1, le=limits.MAX_INT32, description="covariates non-zero in fewer modelled entries are left out"
    )
    max_subjects_for_model: int = Field(
        100_000, ge=100, le=limits.MAX_INT32,
        description="the outcome model is fitted on a random sample of this many entries when there are more",
    )
    cross_fit_folds: int = Field(
        5, ge=2, le=20,
        description="each entry's expected count comes from the outcome model fitted on the other folds (cross-fitting)",
    )
    seed: int = Field(1, ge=0, le=limits.MAX_INT32, description="seed of every random draw")

    @field_validator("effect_sizes")
    @classmethod
    def _sizes(cls, v: list[float]) -> list[float]:
        bad = [x for x in v if not (isinstance(x, int | float) and math.isfinite(x) and 1 < x <= 100)]
        if bad:
            raise ValueError(f"effect sizes {bad}: each must be a relative risk above 1 and at most 100")
        if len(set(v)) != len(v):
            raise ValueError(f"effect sizes {v} repeat")
        return sorted(float(x) for x in v)


# ----------------------------------------------------------------------------------------- data


def _exposed_entries(cdm: Cdm, exposure_id: int, outcome_ids: list[int], p: cm.StudyPopulationSettings,
                     covariates: CovariateSettings) -> tuple[pd.DataFrame, CovariateData, pd.DataFrame]:
    """Entries of the exposure with their time at risk (offsets in days from the cohort start), their
    covariates (row = position in the covariate matrix), and the outcome hits per entry and outcome."""
    cov = build_covariates(cdm, [exposure_id], covariates, first_entry_only=p.first_exposure_only)
    rows = cm.frame_dates(cov.rows).rename(columns={"row_id": "row"})
    frame = rows.merge(cm.entry_windows(cdm, [exposure_id], p), on=cm.ENTRY_KEY, how="left")
    frame = frame.sort_values("row").reset_index(drop=True)
    ok = frame["days_from_obs_start"].notna() & (frame["days_from_obs_start"] >= p.washout_period)
    frame = frame[ok].reset_index(drop=True)
    frame["days_at_risk"] = frame["risk_end"] - frame["risk_start"] + 1
    hits = cm.outcome_hits(cdm, [exposure_id], outcome_ids, p)
    return frame, cov, hits


def _fit_poisson(X: sp.csr_matrix, y: np.ndarray, offset: np.ndarray, variance: float,
                 prior: str = "normal") -> np.ndarray:
    """Penalised Poisson regression: (intercept, coefficients) maximising the log-likelihood less
    |b|^2 / (2 variance) (normal prior, ridge) or sqrt(2 / variance) |b|_1 (Laplace prior of that
    variance, L1, as Cyclops parameterises it); the intercept is not shrunk."""
    if prior == "laplace":
        return _fit_poisson_l1(X, y, offset, math.sqrt(2 / variance))
    XT = X.T.tocsr()

    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        b0, b = w[0], w[1:]
        eta = np.minimum(b0 + X @ b + offset, 50.0)
        mu = np.exp(eta)
        r = y - mu
        value = -(float(y @ eta) - float(mu.sum())) + float(b @ b) / (2 * variance)
        grad = np.concatenate([[-r.sum()], -(XT @ r) + b / variance])
        return value, grad

    w0 = np.zeros(X.shape[1] + 1)
    w0[0] = math.log(max(y.sum(), 0.5) / np.exp(offset).sum())
    res = optimize.minimize(f, w0, jac=True, method="L-BFGS-B", options={"maxiter": 500, "gtol": 1e-7})
    return res.x


def _fit_poisson_l1(X: sp.csr_matrix, y: np.ndarray, offset: np.ndarray, lam: float) -> np.ndarray:
    """L1-penalised Poisson regression, each coefficient split into its positive and negative parts
    (both >= 0, bounded L-BFGS), so the penalty lam * sum(parts) is smooth."""
    XT = X.T.tocsr()
    k = X.shape[1]

    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        b0, b = w[0], w[1:k + 1] - w[k + 1:]
        eta = np.minimum(b0 + X @ b + offset, 50.0)
        mu = np.exp(eta)
        r = y - mu
        value = -(float(y @ eta) - float(mu.sum())) + lam * float(w[1:].sum())
        g = -(XT @ r)
        return value, np.concatenate([[-r.sum()], g + lam, -g + lam])

    w0 = np.zeros(2 * k + 1)
    w0[0] = math.log(max(y.sum(), 0.5) / np.exp(offset).sum())
    res = optimize.minimize(f, w0, jac=True, method="L-BFGS-B", bounds=[(None, None)] + [(0.0, None)] * (2 * k),
                            options={"maxiter": 1000, "gtol": 1e-7})
    return np.concatenate([[res.x[0]], res.x[1:k + 1] - res.x[k + 1:]])


PRIOR_VARIANCES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # the grid cross-validated when prior_variance is not given


def _design(X: sp.csr_matrix, fit_rows: np.ndarray, s: InjectionSettings) -> sp.csr_matrix:
    """The covariates non-zero in at least `min_covariate_count` of `fit_rows`, scaled to a maximum of 1."""
    n = X.shape[0]
    Xf = X[fit_rows]
    counts = np.diff(Xf.tocsc().indptr)
    keep = np.flatnonzero(counts >= s.min_covariate_count)
    scale = np.abs(Xf[:, keep]).max(axis=0).toarray().ravel() if len(keep) else np.zeros(0)
    keep, scale = keep[scale > 0], scale[scale > 0]
    return (X[:, keep] @ sp.diags(1 / scale)).tocsr() if len(keep) else sp.csr_matrix((n, 0))


def _predicted_counts(X: sp.csr_matrix, y: np.ndarray, days: np.ndarray, s: InjectionSettings,
                      rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Each entry's expected outcome count in its time at risk, predicted by a model fitted on the other
    folds (cross-fitting, `cross_fit_folds`), scaled so the predicted total is the observed one; and the
    number of covariates offered to the model.

    Predicting an entry from a model fitted on its own outcomes puts the injected outcomes on the persons
    who already have the outcome (a model of hundreds of covariates for some hundred events fits them):
    on a 1,000,000-person site, 42% of the injected outcomes landed on the 9% of persons with the outcome.
    A weak prior gives noisy predictions that pile the injected outcomes on a few persons. A first-outcome
    (Cox) model sees one outcome per person, so both made every method under-estimate the positive
    controls (2.8 for a true RR of 4). Without `prior_variance`, the variance of PRIOR_VARIANCES with the
    best held-out likelihood is used (MethodEvaluation cross-validates a Laplace prior, `prior`)."""
    n = X.shape[0]
    offset = np.log(days)

    def sample(rows: np.ndarray) -> np.ndarray:
        if len(rows) > s.max_subjects_for_model:
            return np.sort(rng.choice(rows, s.max_subjects_for_model, replace=False))
        return rows

    k = min(s.cross_fit_folds, n)
    folds = rng.permutation(n) % k
    fits = [sample(np.flatnonzero(folds != f)) for f in range(k)]
    designs = [_design(X, rows, s) for rows in fits]
    best: tuple[float, np.ndarray] | None = None
    for variance in ([s.prior_variance] if s.prior_variance is not None else PRIOR_VARIANCES):
        eta = np.empty(n)
        for f, (rows, Xs) in enumerate(zip(fits, designs, strict=True)):
            w = _fit_poisson(Xs[rows], y[rows], offset[rows], variance, s.prior)
            held = folds == f
            eta[held] = np.minimum(w[0] + Xs[held] @ w[1:] + offset[held], 50.0)
        mu = np.exp(eta)
        mu *= y.sum() / mu.sum()
        ll = float(y @ np.log(mu) - mu.sum())
        if best is None or ll > best[0]:
            best = (ll, mu)
    assert best is not None
    return best[1], _design(X, sample(np.arange(n)), s).shape[1]


# ------------------------------------------------------------------------------------- injection


def _check_output_ids(cdm: Cdm, ids: list[int], used: set[int]) -> None:
    clash = sorted(set(ids) & used)
    if clash:
        raise EvaluationError(f"positive-control cohort ids {clash} are also exposure or negative-control ids; "
                              "choose another first_output_id")
    if cdm.table_exists("cohort_definition"):
        t = cdm.table("cohort_definition")
        q = exp.select("cohort_definition_id").from_(t).where(
            exp.column("cohort_definition_id").isin(*[exp.Literal.number(i) for i in ids]))
        taken = sorted(int(r[0]) for r in cdm.fetch_all(q))
        if taken:
            raise EvaluationError(f"cohort ids {taken} belong to generated cohort definitions "
                                  "(mercia cohort list); choose another first_output_id for the positive controls")


def _original_rows(cdm: Cdm, nc: int) -> pd.DataFrame:
    t = cdm.table("cohort")
    q = exp.select("subject_id", "cohort_start_date", "cohort_end_date").from_(t).where(
        exp.column("cohort_definition_id").eq(exp.Placeholder(this="nc")))
    df = cdm.fetch_arrow(q, {"nc": nc}).to_pandas()
    for c in ("cohort_start_date", "cohort_end_date"):
        df[c] = pd.to_datetime(df[c]).dt.date
    return df


def synthesize_positive_controls(
    cdm: Cdm,
    exposure_cohort_id: int,
    negative_control_ids: Sequence[int],
    *,
    first_output_id: int,
    settings: InjectionSettings | None = None,
    population: cm.StudyPopulationSettings | None = None,
    covariates: CovariateSettings | None = None,
    on_too_few: Literal["error", "skip"] = "error",
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Write positive controls for each negative control into the cohort table; return their truth.

    The positive control of negative control i (0-based, in the order given) at effect size j (of the
    sorted `settings.effect_sizes`) is cohort `first_output_id + i * len(effect_sizes) + j`; rows of
    those ids already in the cohort table are replaced. A negative control with fewer outcomes than
    `min_outcomes_for_model` (or `min_outcomes_for_injection`) raises TooFewOutcomesError, or with
    `on_too_few="skip"` gets truth rows with that status and no cohort.

    The truth table has one row per positive control: outcome_id, negative_control_id,
    exposure_cohort_id, target_effect_size, status ("injected" or why not), persons and exposed_days
    modelled, observed_outcomes in that time, expected_injected (sum of predicted count x (RR - 1)),
    injected_outcomes (rows added), realised_effect_size ((observed + injected) / observed) and
    model_covariates.
    """
    s = settings or InjectionSettings()
    p = population or cm.StudyPopulationSettings()
    covs = covariates or CovariateSettings()
    e_id = check_cohort_id(exposure_cohort_id, "exposure cohort id")
    ncs = [check_cohort_id(o, "negative control cohort id") for o in negative_control_ids]
    if not ncs:
        raise EvaluationError("give at least one negative control to synthesize positive controls from")
    if len(set(ncs)) != len(ncs) or e_id in ncs:
        raise EvaluationError("negative control ids repeat or include the exposure cohort")
    first = check_cohort_id(first_output_id, "first_output_id")
    k = len(s.effect_sizes)
    out_ids = [first + i * k + j for i in range(len(ncs)) for j in range(k)]
    require_tables(cdm, ["cohort", "observation_period", "person"], "positive-control synthesis")
    _check_output_ids(cdm, out_ids, {e_id, *ncs})
    frame, cov, hits = _exposed_entries(cdm, e_id, ncs, p, covs)
    truth: list[dict[str, object]] = []
    writes: list[pd.DataFrame] = []
    for i, nc in enumerate(ncs):
        h = hits[hits["outcome_id"] == nc] if len(hits) else hits
        d = frame.merge(h.drop(columns="outcome_id"), on=cm.ENTRY_KEY, how="left") if len(h) else frame.assign(
            prior_outcome=0, n_events=0)
        d["prior_outcome"] = d["prior_outcome"].fillna(0).astype(int)
        d["n_events"] = d["n_events"].fillna(0).astype(int)
        keep = (d["days_at_risk"] >= 1).to_numpy()
        if s.remove_people_with_prior_outcomes:
            keep &= d["prior_outcome"].to_numpy() == 0
        d = d[keep].reset_index(drop=True)
        y = d["n_events"].to_numpy(dtype=float)
        observed = int(y.sum())
        base = {"negative_control_id": nc, "exposure_cohort_id": e_id, "persons": int(d["person_id"].nunique()),
                "exposed_days": int(d["days_at_risk"].sum()), "observed_outcomes": observed}
        need = max(s.min_outcomes_for_model, s.min_outcomes_for_injection)
        if observed < need:
            which = "min_outcomes_for_model" if observed < s.min_outcomes_for_model else "min_outcomes_for_injection"
            if on_too_few == "error":
                raise TooFewOutcomesError(
                    f"negative control cohort {nc}: {observed} outcome(s) during the exposed time of cohort {e_id}, "
                    f"fewer than {which} {need} (MethodEvaluation's minimum: {MIN_OUTCOMES_FOR_MODEL} to model, "
                    f"{MIN_OUTCOMES_FOR_INJECTION} to inject); use a commoner outcome or a larger site, or lower {which}")
            for j, rr in enumerate(s.effect_sizes):
                truth.append({"outcome_id": out_ids[i * k + j], **base, "target_effect_size": rr,
                              "status": f"too few outcomes ({which})", "expected_injected": np.nan,
                              "injected_outcomes": 0, "realised_effect_size": np.nan, "model_covariates": 0})
            if progress:
                progress(i + 1, len(ncs))
            continue
        X = cov.X[d["row"].to_numpy()]
        days = d["days_at_risk"].to_numpy(dtype=float)
        mu, n_cov = _predicted_counts(X, y, days, s, np.random.default_rng([s.seed, nc, 1_000_003]))
        original = _original_rows(cdm, nc)
        durations = (pd.to_datetime(original["cohort_end_date"]) - pd.to_datetime(original["cohort_start_date"])).dt.days
        duration = int(durations.mode().min()) if len(durations) else 0
        starts = pd.to_datetime(d["cohort_start_date"]).to_numpy()
        lo = d["risk_start"].to_numpy(dtype=np.int64)
        hi = d["risk_end"].to_numpy(dtype=np.int64)
        person = d["person_id"].to_numpy(dtype=np.int64)
        for j, rr in enumerate(s.effect_sizes):
            rng = np.random.default_rng([s.seed, nc, j])
            n_new = rng.poisson(mu * (rr - 1))
            idx = np.repeat(np.arange(len(d)), n_new)
            offs = lo[idx] + np.floor(rng.random(len(idx)) * (hi[idx] - lo[idx] + 1)).astype(np.int64)
            new = pd.DataFrame({"subject_id": person[idx],
                                "cohort_start_date": (starts[idx] + offs.astype("timedelta64[D]"))})
            new["cohort_start_date"] = pd.to_datetime(new["cohort_start_date"]).dt.date
            new = new.drop_duplicates()
            new = new.merge(original[["subject_id", "cohort_start_date"]], how="left", indicator=True)
            new = new[new["_merge"] == "left_only"].drop(columns="_merge")  # one row per person and day
            new["cohort_end_date"] = (pd.to_datetime(new["cohort_start_date"]) + pd.Timedelta(days=duration)).dt.date
            oid = out_ids[i * k + j]
            rows = pd.concat([original, new], ignore_index=True).sort_values(["subject_id", "cohort_start_date"])
            writes.append(rows.assign(cohort_definition_id=oid))
            truth.append({"outcome_id": oid, **base, "target_effect_size": rr, "status": "injected",
                          "expected_injected": float(mu.sum() * (rr - 1)), "injected_outcomes": len(new),
                          "realised_effect_size": (observed + len(new)) / observed, "model_covariates": n_cov})
        if progress:
            progress(i + 1, len(ncs))
    _write(cdm, out_ids, writes)
    return pd.DataFrame(truth, columns=TRUTH_COLUMNS)


def _write(cdm: Cdm, ids: list[int], frames: list[pd.DataFrame]) -> None:
    t = cdm.table("cohort")
    where = exp.column("cohort_definition_id").isin(*[exp.Literal.number(i) for i in ids])
    with cdm.transaction():
        cdm.delete(t, where)
        if frames:
            df = pd.concat(frames, ignore_index=True)[
                ["cohort_definition_id", "subject_id", "cohort_start_date", "cohort_end_date"]]
            cdm.insert_arrow("cohort", pa.Table.from_pandas(df, preserve_index=False))
