"""The methods benchmark across several sites: each site's estimates, and the federated estimate the
hub would give, pooled from them.

`run_methods_benchmark_sites` runs the one-site benchmark (`mercia.evaluation.methods`) at every site
with the same configuration: the same cohorts, the same negative controls and positive controls at
the same true effect sizes, injected at each site from its own data under the same cohort ids. Then,
per exposure pair, estimator and control, `pool_site_estimates` meta-analyses the sites' uncalibrated
log hazard ratios as the hub pools released estimates (`mercia.federation.hub.pool`, with
`mercia.federation.pooling.meta_analyse`): the sites with a finite estimate and a positive standard
error, fixed effect (inverse variance) and DerSimonian-Laird random effects. For the estimators whose
model is Cox on treatment alone (crude, ps_match, ps_stratify), `federated_cox_estimates` also fits
the federated Cox model the hub fits in rounds (`mercia.federation.glm.federated_cox`, run in process
on the sites' rows): stratified by site and by the matched sets or strata within each. Each pooled
method is then calibrated as the site methods are (leave-one-out over the pooled controls).

The methods of the result are named `SITE: ESTIMATOR` for one site's estimates,
`pooled fixed: ESTIMATOR`, `pooled random: ESTIMATOR` and `federated cox: ESTIMATOR` for the pooled
ones, with ` (calibrated)` after the calibrated ones.

Everything here is site-internal, as in the one-site benchmark: the sites' estimates are pooled as
computed, before disclosure control (a hub would pool the released values: the same numbers unless
the site's policy withholds an estimate, e.g. one with too few events).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from mercia.analyses.survival import CoxData
from mercia.cdm import Cdm
from mercia.errors import MerciaError
from mercia.evaluation.methods import (
    ESTIMATORS,
    BenchmarkResult,
    MethodsConfig,
    Progress,
    calibrate_leave_one_out,
)
from mercia.evaluation.metrics import benchmark_metrics
from mercia.evaluation.positive_controls import EvaluationError
from mercia.federation.glm import DEFAULT_MIN_COUNT, cox_summary, federated_cox, in_process
from mercia.federation.pooling import PoolingError, meta_analyse

POOLING = ("fixed", "random")
_ROW_KEY = ["pair", "estimator", "outcome_id"]
_CONTROL = ["negative_control_id", "negative_control", "true_effect_size"]
_COUNTS = ["target_subjects", "comparator_subjects", "events"]


def pool_site_estimates(estimates: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per pair, estimator and control outcome, the fixed-effect and random-effects meta-analysis of
    the sites' uncalibrated estimates (rows with `calibrated` False; columns site, pair, estimator,
    outcome_id, the control's columns, log_rr, se_log_rr and the counts). One row per pooling
    (`site` "pooled fixed" or "pooled random") with the pooled log RR, SE, CI and p, the counts
    summed over the sites pooled and `sites_pooled`; no estimate (NaN) when no site has one."""
    site_rows = estimates[~estimates["calibrated"].astype(bool)]
    rows: list[dict[str, object]] = []
    for key, g in site_rows.groupby(_ROW_KEY, sort=False):
        g = g.sort_values("site")
        ok = np.isfinite(g["log_rr"].to_numpy(dtype=float)) & np.isfinite(g["se_log_rr"].to_numpy(dtype=float))
        ok &= g["se_log_rr"].to_numpy(dtype=float) > 0
        use = g[ok]
        base = dict(zip(_ROW_KEY, key, strict=True)) | {c: g[c].iloc[0] for c in _CONTROL}
        base |= {c: int(use[c].sum()) for c in _COUNTS} | {"sites_pooled": len(use)}
        meta = None
        if len(use):
            try:
                meta = meta_analyse(use["log_rr"].to_numpy(dtype=float), use["se_log_rr"].to_numpy(dtype=float),
                                    sites=use["site"].astype(str).tolist(), alpha=alpha, ratio=True)
            except PoolingError:
                meta = None
        for kind in POOLING:
            est = getattr(meta, kind) if meta is not None else None
            if est is None:
                vals = {"log_rr": math.nan, "se_log_rr": math.nan, "ci_lower": math.nan, "ci_upper": math.nan,
                        "p": math.nan}
            else:
                with np.errstate(over="ignore"):  # a site's unstable estimate can make a limit overflow
                    lo, hi = np.exp([est.ci_lower, est.ci_upper])
                vals = {"log_rr": est.estimate, "se_log_rr": est.se, "ci_lower": float(lo), "ci_upper": float(hi),
                        "p": est.p}
            rows.append({**base, "site": f"pooled {kind}", **vals})
    out = pd.DataFrame(rows)
    if len(out):
        out["rr"] = np.exp(out["log_rr"])
        out["calibrated"] = False
    return out


def federated_cox_estimates(site_data: dict[str, dict[tuple[str, int, str], CoxData]], controls: pd.DataFrame,
                            min_count: int = DEFAULT_MIN_COUNT, alpha: float = 0.05) -> pd.DataFrame:
    """Per pair, control and treatment-only estimator (crude, ps_match, ps_stratify), the federated Cox
    model the hub fits in rounds (`mercia.federation.glm.federated_cox`, run in process): one
    treatment log hazard ratio from the sites' summed partial likelihoods, stratified by site (and by
    the matched sets or strata within a site). A site with fewer than `min_count` rows or events for a
    control is refused, as its node would refuse it, and left out. `controls` gives each control's
    columns (pair, outcome_id, negative_control_id, negative_control, true_effect_size)."""
    info = controls.drop_duplicates(["pair", "outcome_id"]).set_index(["pair", "outcome_id"])
    keys = sorted({k for d in site_data.values() for k in d}, key=lambda k: (k[0], k[2], k[1]))
    z = float(stats.norm.ppf(1 - alpha / 2))
    rows = []
    for key in keys:
        pair, o, estimator = key
        ok = [(site, d[key]) for site, d in sorted(site_data.items())
              if key in d and d[key].n_obs >= min_count and d[key].n_events >= min_count]
        lr = se = math.nan
        if ok:
            fn = in_process(lambda sd, b: cox_summary(sd[1], b, site=sd[0], min_count=min_count), ok)
            try:
                fit = federated_cox(fn, 1, terms=["treatment"], min_count=min_count, alpha=alpha)
                if fit.converged and math.isfinite(fit.se[0]) and fit.se[0] > 0:
                    lr, se = float(fit.coef[0]), float(fit.se[0])
            except MerciaError:
                pass
        c = info.loc[(pair, o)]
        with np.errstate(over="ignore"):
            lo, hi = np.exp([lr - z * se, lr + z * se])
        rows.append({"pair": pair, "estimator": estimator, "outcome_id": o,
                     **{k: c[k] for k in _CONTROL},
                     "target_subjects": sum(int((d.X[:, 0] == 1).sum()) for _, d in ok),
                     "comparator_subjects": sum(int((d.X[:, 0] == 0).sum()) for _, d in ok),
                     "events": sum(d.n_events for _, d in ok), "sites_pooled": len(ok), "site": "federated cox",
                     "log_rr": lr, "se_log_rr": se, "ci_lower": float(lo), "ci_upper": float(hi),
                     "p": float(2 * stats.norm.sf(abs(lr / se))) if math.isfinite(lr) else math.nan})
    out = pd.DataFrame(rows)
    if len(out):
        out["rr"] = np.exp(out["log_rr"])
        out["calibrated"] = False
    return out


def site_names(targets: Sequence[str]) -> list[str]:
    """A short name per site target: a .duckdb file's stem, else site1, site2, ...; repeats numbered."""
    names: list[str] = []
    for i, t in enumerate(targets):
        stem = Path(t).stem if str(t).endswith(".duckdb") else f"site{i + 1}"
        name, n = stem, 2
        while name in names:
            name, n = f"{stem}_{n}", n + 1
        names.append(name)
    return names


def run_methods_benchmark_sites(sites: Sequence[tuple[str, Cdm]], config: MethodsConfig,
                                base_dir: str | Path | None = None,
                                progress: Progress | None = None) -> BenchmarkResult:
    """The benchmark at each (name, CDM) site, and the pooled methods across them (see the module)."""
    from mercia.evaluation.methods import run_methods_benchmark

    names = [n for n, _ in sites]
    if len(sites) < 2:
        raise EvaluationError("give at least two sites to pool (one --cdm per site)")
    if len(set(names)) != len(names):
        raise EvaluationError(f"site names {names} repeat; give each site its own name")
    results = []
    cox_data: dict[str, dict[tuple[str, int, str], CoxData]] = {}
    for name, cdm in sites:
        tick = (lambda what, d, t, n=name: progress(f"{n}: {what}", d, t)) if progress else None
        cox_data[name] = {}
        results.append((name, run_methods_benchmark(cdm, config, base_dir, progress=tick, cox_data=cox_data[name])))
    site_est = pd.concat([r.estimates.assign(site=name) for name, r in results], ignore_index=True)
    pooled = pd.concat([pool_site_estimates(site_est),
                        federated_cox_estimates(cox_data, site_est[~site_est["calibrated"].astype(bool)])],
                       ignore_index=True)
    parts = [site_est, pooled]
    for (_pair, _est, _site), g in pooled.groupby(["pair", "estimator", "site"], sort=False):
        parts.append(calibrate_leave_one_out(g).assign(calibrated=True))
    estimates = pd.concat(parts, ignore_index=True)
    estimates["method"] = (estimates["site"] + ": " + estimates["estimator"]
                           + np.where(estimates["calibrated"].astype(bool), " (calibrated)", ""))
    # order: each site's methods, then the pooled ones; estimators in their usual order
    estimates["_s"] = estimates["site"].map({n: i for i, n in enumerate([*names, "pooled fixed", "pooled random", "federated cox"])})
    estimates["_e"] = estimates["estimator"].map({e: i for i, e in enumerate(ESTIMATORS)})
    estimates = estimates.sort_values(["_s", "_e", "calibrated", "pair", "outcome_id"], kind="stable")
    order = ["site", "pair", "method", "estimator", "calibrated", "outcome_id", "negative_control_id",
             "negative_control", "true_effect_size", "log_rr", "se_log_rr", "rr", "ci_lower", "ci_upper", "p",
             "target_subjects", "comparator_subjects", "events", "sites_pooled"]
    estimates = estimates[order].reset_index(drop=True)
    truth = pd.concat([r.truth.assign(site=name) for name, r in results], ignore_index=True)
    truth = truth[["site", *[c for c in truth.columns if c != "site"]]]
    notes = [f"{name}: {n}" for name, r in results for n in r.notes]
    metrics = benchmark_metrics(estimates, by=("method",))
    by_pair = benchmark_metrics(estimates, by=("pair", "method"))
    return BenchmarkResult(estimates, truth, metrics, by_pair, config, notes)

