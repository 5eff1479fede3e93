"""The methods benchmark on one site: every estimator Mercia offers, run on negative controls and on
positive controls injected from them, scored by MethodEvaluation's metrics.

A configuration (YAML, `MethodsConfig`) names exposure pairs (target and comparator cohorts, defined as
study packages define cohorts), their negative-control outcomes (true RR 1) and the effect sizes to
inject. `run_methods_benchmark`:

1. generates the configuration's cohorts into the results schema;
2. per pair, synthesizes positive controls from its negative controls in the target's exposed time
   (`mercia.evaluation.positive_controls`); controls with too few outcomes are recorded and left out;
3. per pair, builds the comparative cohort population once (covariates, one propensity model:
   `mercia.analyses.cohort_method`, the same code a study runs) and, per control outcome, estimates
   the hazard ratio four ways: `crude` (Cox, treatment only), `adjusted_cox` (Cox with treatment and
   the covariates with the largest propensity coefficients), `ps_match` (Cox conditioned on the
   matched sets) and `ps_stratify` (Cox stratified on propensity quintiles);
4. calibrates each estimator's estimates empirically (`mercia.analyses.calibration`): for each
   negative control in turn, a systematic error model fitted on the other controls (negative and
   positive) calibrates its CI and an empirical null of the other negative controls its p-value
   (leave-one-out, as MethodEvaluation does, so no control calibrates itself);
5. computes the metrics per estimator and per true effect size (`mercia.evaluation.metrics`).

Everything here is site-internal: the estimates rest on row-level data at one site and nothing in
this module releases anything. A custodian who wants to share the results releases the tables through
`mercia.disclosure.release` like any other.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mercia import limits
from mercia.analyses import calibration as cal
from mercia.analyses import cohort_method as cm
from mercia.analyses.survival import CoxData, fit_cox
from mercia.cdm import Cdm
from mercia.errors import MerciaError, field_problems
from mercia.evaluation.metrics import benchmark_metrics
from mercia.evaluation.positive_controls import (
    EvaluationError,
    InjectionSettings,
    synthesize_positive_controls,
)
from mercia.model_doc import field_docs
from mercia.study.package import CohortRef

ESTIMATORS = ("crude", "adjusted_cox", "ps_match", "ps_stratify")
Progress = Callable[[str, int, int], None]
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ------------------------------------------------------------------------------------------ config


@field_docs
class PairConfig(BaseModel):
    """One exposure pair and its negative-control outcomes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(description="key of the target exposure cohort (positive controls are injected in its exposed time)")
    comparator: str = Field(description="key of the comparator exposure cohort")
    negative_controls: list[str] = Field(
        min_length=1, max_length=limits.MAX_LIST,
        description="keys of outcome cohorts neither exposure causes (true RR 1)",
    )
    excluded_concept_ids: list[int] = Field(
        default_factory=list, max_length=limits.MAX_CONCEPT_SET_ITEMS,
        description="concepts left out of the covariates (with descendants): the exposures' own ingredients",
    )


@field_docs
class MethodsConfig(BaseModel):
    """A methods benchmark: cohorts, exposure pairs with negative controls, effect sizes, settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("methods benchmark", max_length=limits.MAX_NAME, description="a name for the report")
    cohorts: dict[str, CohortRef] = Field(
        min_length=2, description="the cohorts by key, each `id:` and `file:` or `definition:` as in a study package",
    )
    pairs: list[PairConfig] = Field(min_length=1, max_length=limits.MAX_LIST, description="the exposure pairs")
    effect_sizes: list[float] = Field(
        [1.5, 2.0, 4.0], min_length=1, max_length=20, description="true relative risks of the positive controls (> 1)",
    )
    positive_control_first_id: int = Field(
        100_000, ge=1, le=limits.MAX_INT32 - 1_000_000,
        description="cohort id of the first positive control; the others follow it",
    )
    injection: InjectionSettings = Field(
        InjectionSettings(), description="how positive controls are synthesized (effect_sizes: give them above)",
    )
    cohort_method: cm.CohortMethodSettings = Field(
        cm.CohortMethodSettings(),
        description="population, covariates, propensity model, matching and stratification of every estimator "
        "(its adjustment and outcome_model are set by each estimator)",
    )
    adjusted_cox_covariates: int = Field(
        20, ge=0, le=200, description="covariates in the adjusted Cox model: those with the largest |propensity coefficient|",
    )

    @field_validator("cohorts")
    @classmethod
    def _keys(cls, v: dict[str, CohortRef]) -> dict[str, CohortRef]:
        bad = [k for k in v if not _KEY.match(k)]
        if bad:
            raise ValueError(f"cohort keys {bad}: use letters, digits and underscores (not starting with a digit)")
        return v

    @field_validator("effect_sizes")
    @classmethod
    def _sizes(cls, v: list[float]) -> list[float]:
        return InjectionSettings(effect_sizes=v).effect_sizes

    @model_validator(mode="after")
    def _refs(self) -> MethodsConfig:
        if "effect_sizes" in self.injection.model_fields_set:
            raise ValueError("injection.effect_sizes: give the effect sizes as the top-level effect_sizes")
        for i, p in enumerate(self.pairs):
            used = [p.target, p.comparator, *p.negative_controls]
            unknown = [k for k in used if k not in self.cohorts]
            if unknown:
                raise ValueError(f"pairs[{i}] refers to cohort(s) {unknown} not defined under cohorts; "
                                 f"defined: {sorted(self.cohorts)}")
            if len(set(used)) != len(used):
                raise ValueError(f"pairs[{i}]: target, comparator and negative controls must be different cohorts")
        return self

    def cohort_ids(self) -> dict[str, int]:
        """Each key's cohort id: its `id:`, else the smallest free ids in the sorted order of the keys."""
        free = iter(i for i in range(1, 100_000) if i not in {r.id for r in self.cohorts.values()})
        return {k: self.cohorts[k].id if self.cohorts[k].id is not None else next(free)  # type: ignore[misc]
                for k in sorted(self.cohorts)}


def condition_outcome(name: str, concepts: Sequence[int | str], *, in_visit: str | None = None) -> dict[str, Any]:
    """The cohort-language definition of an outcome cohort: every record of the given conditions
    (concept ids or catalog names, with descendants), optionally recorded in a visit of a kind
    ("inpatient"), each one day long. For building a configuration's `cohorts:` in code, e.g. from a
    synthetic site's list of negative-control outcomes:
    ``{"id": 30, "definition": condition_outcome("Hip fracture", [4230399])}``."""
    entry: dict[str, Any] = {"condition": "outcome"}
    if in_visit is not None:
        entry["in_visit"] = in_visit
    return {"name": name, "concepts": {"outcome": {"name": name, "include": list(concepts), "descendants": True}},
            "entry": [entry], "keep": "all", "exit": {"after": {"days": 1}}}


def load_config(path: str | Path) -> tuple[MethodsConfig, Path]:
    """The configuration from a YAML file (and its folder, which `file:` paths are relative to)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise EvaluationError(f"cannot read the benchmark configuration {path.name}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise EvaluationError(f"{path.name}: not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_config(data, source=path.name), path.parent


def parse_config(data: Any, *, source: str = "benchmark configuration") -> MethodsConfig:
    if not isinstance(data, dict):
        raise EvaluationError(f"{source}: a mapping with cohorts:, pairs: and effect_sizes:")
    try:
        return MethodsConfig.model_validate(data)
    except ValidationError as e:
        raise EvaluationError(f"{source}: " + "; ".join(field_problems(e))) from None
    except MerciaError as e:
        raise EvaluationError(f"{source}: {e}") from None


# ---------------------------------------------------------------------------------------- estimation


def _row(est: cm.Estimate) -> dict[str, float]:
    try:
        return est.row(0.05)
    except OverflowError:  # an SE so large (a separated model at a small site) that the CI overflows:
        return cm.Estimate(math.nan, math.nan, False).row(0.05)  # no estimate


# Adjusted Cox: a covariate enters only with this many events among the persons with it and without it
# (an unpenalised Cox model diverges on a covariate with no events), and at most one covariate per this
# many events (the usual ten events per variable).
MIN_EVENTS_PER_LEVEL = 5
EVENTS_PER_VARIABLE = 10


def _adjusted_cox(X: np.ndarray, d: pd.DataFrame) -> cm.Estimate:
    """Cox with treatment first and the covariate columns (in order of preference) that the events
    support: each with MIN_EVENTS_PER_LEVEL events among persons with and without it, not determined by
    the ones before it, at most one per EVENTS_PER_VARIABLE events."""
    event = d["event"].to_numpy(dtype=float)
    if not len(d) or event.sum() == 0:
        return cm.Estimate(math.nan, math.nan, False)
    nonzero = X != 0
    with_it = event @ nonzero
    supported = np.flatnonzero((with_it >= MIN_EVENTS_PER_LEVEL) & (event.sum() - with_it >= MIN_EVENTS_PER_LEVEL))
    t = d["treatment"].to_numpy(dtype=float)
    keep: list[int] = []
    for j in supported[: 2 * int(event.sum() // EVENTS_PER_VARIABLE)]:
        if len(keep) >= event.sum() // EVENTS_PER_VARIABLE:
            break
        # a covariate the others (or treatment) already determine (a concept and its rolled-up parent)
        # would make the model singular: left out
        M = np.column_stack([np.ones(len(t)), t, X[:, [*keep, j]]])
        if np.linalg.matrix_rank(M) == M.shape[1]:
            keep.append(int(j))
    Z = np.column_stack([t, X[:, keep]])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_cox(CoxData(Z, d["time"].to_numpy(dtype=float), d["event"].to_numpy(dtype=float),
                                  [f"x{i}" for i in range(Z.shape[1])]))
    except MerciaError:
        return cm.Estimate(math.nan, math.nan, False)
    se = float(fit.se[0])
    if not (fit.converged and math.isfinite(se) and se > 0):
        return cm.Estimate(math.nan, math.nan, False)
    return cm.Estimate(float(fit.coef[0]), se, True)


def estimate_pair(cdm: Cdm, target_id: int, comparator_id: int, outcome_ids: Sequence[int],
                  settings: cm.CohortMethodSettings, adjusted_cox_covariates: int = 20,
                  progress: Callable[[int, int], None] | None = None,
                  cox_data: dict[tuple[int, str], CoxData] | None = None) -> pd.DataFrame:
    """Per outcome, the four estimators' log HR, SE, CI and p (one row each: outcome_id, estimator,
    log_rr, se_log_rr, rr, ci_lower, ci_upper, p, target_subjects, comparator_subjects, events). The
    population, covariates and propensity model are built once, as `cohort_method` builds them.
    With `cox_data`, the rows behind each treatment-only Cox fit (crude, ps_match, ps_stratify) are
    kept in it by (outcome_id, estimator), row-level, for a federated fit at the same site."""
    s_match = settings.model_copy(update={"adjustment": "match"})
    s_strat = settings.model_copy(update={"adjustment": "stratify"})
    pop = cm.build_population(cdm, target_id, comparator_id, s_match)
    p = settings.population
    hits = cm.outcome_hits(cdm, [target_id, comparator_id], outcome_ids, p)
    X_pop = pop.covariates.X[pop.frame["row"].to_numpy()]
    if pop.ps.ok and adjusted_cox_covariates:
        nz = np.flatnonzero(pop.ps.coef != 0)
        top = nz[np.argsort(-np.abs(pop.ps.coef[nz]), kind="stable")][:adjusted_cox_covariates]
        cols = np.searchsorted(pop.covariates.covariate_ids, pop.ps.covariate_ids[top])
    else:
        cols = np.zeros(0, dtype=np.int64)
    rows: list[dict[str, Any]] = []
    for n, o in enumerate(outcome_ids):
        d, keep, _ = cm.outcome_population(pop.frame, hits, o, pop.attrition, p)
        idx = np.flatnonzero(keep)
        dk = d.iloc[idx].reset_index(drop=True)
        t = dk["treatment"].to_numpy()
        x, time, event = t.astype(float), dk["time"].to_numpy(dtype=float), dk["event"].to_numpy(dtype=float)
        fits: dict[str, tuple[cm.Estimate, np.ndarray]] = {}
        strata_of: dict[str, np.ndarray | None] = {"crude": None}  # the treatment-only Cox fits' strata
        nan = cm.Estimate(math.nan, math.nan, False)
        fits["crude"] = (cm.fit_cox_strata(x, time, event) if len(dk) and event.sum() else nan, np.ones(len(dk), bool))
        fits["adjusted_cox"] = (_adjusted_cox(X_pop[idx][:, cols].toarray(), dk), np.ones(len(dk), bool))
        for name, s in (("ps_match", s_match), ("ps_stratify", s_strat)):
            if not pop.ps.ok or not len(dk):
                fits[name] = (nan, np.zeros(len(dk), bool))
                continue
            strata = cm.adjust_on_ps(pop.ps.ps[idx], t, s)
            k = strata >= 0
            strata_of[name] = strata[k]
            ok = k.any() and event[k].sum() > 0
            fits[name] = (cm.fit_cox_strata(x[k], time[k], event[k], strata[k]) if ok else nan, k)
        if cox_data is not None:
            for name, (_est, used) in fits.items():
                if name in strata_of and used.any():
                    cox_data[(int(o), name)] = CoxData(x[used, None], time[used], event[used], ["treatment"],
                                                       strata_of[name])
        for name, (est, used) in fits.items():
            rows.append({"outcome_id": int(o), "estimator": name, **_row(est),
                         "target_subjects": int((t[used] == 1).sum()), "comparator_subjects": int((t[used] == 0).sum()),
                         "events": int(event[used].sum())})
        if progress:
            progress(n + 1, len(outcome_ids))
    return pd.DataFrame(rows)


def calibrate_leave_one_out(est: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Calibrated log RR, SE, CI and p for one estimator's control estimates (columns log_rr, se_log_rr,
    true_effect_size, negative_control_id): each negative control and its positive controls are
    calibrated by a systematic error model and an empirical null fitted on the other controls
    (MethodEvaluation's leave-one-out). NaN where fewer than 5 other controls have an estimate."""
    out = est.copy()
    for c in ("log_rr", "se_log_rr", "ci_lower", "ci_upper", "p"):
        out[c] = np.nan
    usable = est["log_rr"].notna() & est["se_log_rr"].notna() & np.isfinite(est["se_log_rr"])
    for unit in est["negative_control_id"].unique():
        mine = est["negative_control_id"] == unit
        train = est[usable & ~mine]
        neg = train[train["true_effect_size"] == 1]
        if len(train) < 5 or train["true_effect_size"].nunique() < 2 or len(neg) < 2:
            continue
        one = est[mine & usable]
        if not len(one):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = cal.fit_systematic_error_model(train["log_rr"], train["se_log_rr"],
                                                       np.log(train["true_effect_size"].to_numpy(dtype=float)))
                null = cal.fit_null(neg["log_rr"], neg["se_log_rr"])
                lr, lo, hi, se = cal.calibrate_ci(model, one["log_rr"], one["se_log_rr"], alpha=alpha)
                pv = cal.calibrate_p(null, one["log_rr"], one["se_log_rr"])
        except MerciaError:
            continue
        out.loc[one.index, "log_rr"] = lr
        out.loc[one.index, "se_log_rr"] = se
        out.loc[one.index, "ci_lower"] = np.exp(lo)
        out.loc[one.index, "ci_upper"] = np.exp(hi)
        out.loc[one.index, "p"] = pv
    out["rr"] = np.exp(out["log_rr"])
    return out


# ---------------------------------------------------------------------------------------- the run


@dataclass
class BenchmarkResult:
    """Site-internal tables of one benchmark run."""

    estimates: pd.DataFrame  # one row per pair, control and method
    truth: pd.DataFrame  # one row per positive control (and why one was not made)
    metrics: pd.DataFrame  # per method and true effect size
    metrics_by_pair: pd.DataFrame
    config: MethodsConfig
    notes: list[str] = field(default_factory=list)


def run_methods_benchmark(cdm: Cdm, config: MethodsConfig, base_dir: str | Path | None = None,
                          progress: Progress | None = None,
                          cox_data: dict[tuple[str, int, str], CoxData] | None = None) -> BenchmarkResult:
    """Generate the cohorts, inject positive controls, estimate with every method, calibrate, score.
    With `cox_data`, the rows of the treatment-only Cox fits are kept in it by (pair, outcome_id,
    estimator) (row-level: for a federated fit in the same process, see `mercia.evaluation.pooled`)."""
    from mercia.cohorts.generate import generate_cohorts
    from mercia.study.package import resolve_cohort

    ids = config.cohort_ids()
    base = Path(base_dir) if base_dir is not None else None
    defs = []
    for key in sorted(ids, key=ids.get):  # type: ignore[arg-type]
        try:
            defs.append((ids[key], resolve_cohort(config.cohorts[key], base)))
        except MerciaError as e:
            raise EvaluationError(f"cohort {key!r}: {e}") from None
    generate_cohorts(cdm, defs, stats=False)
    sizes = config.effect_sizes
    inj = config.injection.model_copy(update={"effect_sizes": sizes})
    next_id = config.positive_control_first_id
    notes: list[str] = []
    truths, frames = [], []
    names = {v: k for k, v in ids.items()}
    for n_pair, pair in enumerate(config.pairs):
        label = f"{pair.target} vs {pair.comparator}"
        t_id, c_id = ids[pair.target], ids[pair.comparator]
        ncs = [ids[k] for k in pair.negative_controls]
        s = config.cohort_method
        if pair.excluded_concept_ids:
            covs = s.covariates.model_copy(update={"excluded_concept_ids": [
                *s.covariates.excluded_concept_ids, *pair.excluded_concept_ids]})
            s = s.model_copy(update={"covariates": covs})
        tick = (lambda d, t, lab=label: progress(f"positive controls: {lab}", d, t)) if progress else None
        truth = synthesize_positive_controls(cdm, t_id, ncs, first_output_id=next_id, settings=inj,
                                             population=s.population, covariates=s.covariates,
                                             on_too_few="skip", progress=tick)
        next_id += len(ncs) * len(sizes)
        truth.insert(0, "pair", label)
        truths.append(truth)
        skipped = sorted({names[int(i)] for i in truth.loc[truth["status"] != "injected", "negative_control_id"]})
        if skipped:
            notes.append(f"{label}: no positive controls from {', '.join(skipped)} (too few outcomes in exposed time)")
        made = truth[truth["status"] == "injected"]
        controls = pd.DataFrame({"outcome_id": ncs, "negative_control_id": ncs, "true_effect_size": 1.0})
        controls = pd.concat([controls, pd.DataFrame({
            "outcome_id": made["outcome_id"].to_numpy(), "negative_control_id": made["negative_control_id"].to_numpy(),
            "true_effect_size": made["target_effect_size"].to_numpy()})], ignore_index=True)
        tick = (lambda d, t, lab=label: progress(f"estimates: {lab}", d, t)) if progress else None
        kept: dict[tuple[int, str], CoxData] | None = {} if cox_data is not None else None
        est = estimate_pair(cdm, t_id, c_id, controls["outcome_id"].tolist(), s, config.adjusted_cox_covariates,
                            progress=tick, cox_data=kept)
        if cox_data is not None and kept is not None:
            cox_data.update({(label, o, e): d for (o, e), d in kept.items()})
        est = est.merge(controls, on="outcome_id", how="left")
        est.insert(0, "pair", label)
        est["negative_control"] = est["negative_control_id"].map(names)
        est["calibrated"] = False
        parts = [est]
        for name in ESTIMATORS:
            parts.append(calibrate_leave_one_out(est[est["estimator"] == name]).assign(calibrated=True))
        frames.append(pd.concat(parts, ignore_index=True))
        if progress:
            progress("pairs", n_pair + 1, len(config.pairs))
    estimates = pd.concat(frames, ignore_index=True)
    estimates["method"] = estimates["estimator"] + np.where(estimates["calibrated"], " (calibrated)", "")
    order = ["pair", "method", "estimator", "calibrated", "outcome_id", "negative_control_id", "negative_control",
             "true_effect_size", "log_rr", "se_log_rr", "rr", "ci_lower", "ci_upper", "p",
             "target_subjects", "comparator_subjects", "events"]
    estimates = estimates[order]
    metrics = benchmark_metrics(estimates, by=("method",))
    by_pair = benchmark_metrics(estimates, by=("pair", "method"))
    return BenchmarkResult(estimates, pd.concat(truths, ignore_index=True), metrics, by_pair, config, notes)


def check_out_dir(out: str | Path) -> Path:
    """`out` if it is a new or empty folder (results are never overwritten); check it before a long run."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EvaluationError(f"--out {out.name}: give a new or empty folder")
    return out


def write_outputs(result: BenchmarkResult, out: str | Path) -> list[Path]:
    """estimates.parquet/.csv, truth.csv, metrics.csv, metrics_by_pair.csv, report.html (plots) and
    summary.md into `out` (a new or empty folder)."""
    from mercia.evaluation.report import report_html, summary_markdown

    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "estimates.parquet", out / "estimates.csv", out / "truth.csv", out / "metrics.csv",
             out / "metrics_by_pair.csv", out / "report.html", out / "summary.md"]
    result.estimates.to_parquet(files[0], index=False)
    result.estimates.to_csv(files[1], index=False)
    result.truth.to_csv(files[2], index=False)
    result.metrics.to_csv(files[3], index=False)
    result.metrics_by_pair.to_csv(files[4], index=False)
    files[5].write_text(report_html(result))
    files[6].write_text(summary_markdown(result))
    return files
