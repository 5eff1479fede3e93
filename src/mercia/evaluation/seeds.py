"""Many seeds: how often an estimator's interval covers a planted effect, and how biased it is.

For each seed a synthetic site is generated (`mercia.synth`, its case-mix one of the site profiles,
taken in turn), and each planted effect of its truth.json is estimated as a new-user comparative
cohort study (`mercia.analyses.cohort_method`): diclofenac vs celecoxib on GI bleeding (planted hazard
ratio 1.5) and SGLT2 inhibitors vs gliclazide on heart-failure admission (0.7), on treatment, with
a large-scale propensity model. Two estimators come out of each run: the crude Cox model (confounded
by channelling) and the Cox model stratified on propensity-score matched pairs. Each estimate passes
`mercia.disclosure.release` like any released result; one withheld or not fitted is counted as not
estimable.

Two truths per effect and seed. The planted hazard ratio of truth.json is *conditional* on the
covariates of the generator's hazard model. The matched estimator targets the *marginal* hazard ratio
in the treated, which is nearer 1 because the hazard ratio is not collapsible: truth.json states it
beside the planted one (contrast.marginal_in_treated, computed by the generator from both exposures'
counterfactual hazards, `mercia.synth.marginal`). Each estimate is scored against both.

Per estimator and effect, over the seeds: coverage (share of 95% intervals holding the planted
hazard ratio; and the marginal one), mean bias of the log hazard ratio and its Monte Carlo standard
error (against each), the mean width of the interval (log scale), the share of intervals excluding 1,
and the share not estimable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mercia.errors import ConfigError, MerciaError

Progress = Callable[[str, int, int], None]

ESTIMATORS = {"crude": "crude Cox (no adjustment)", "match": "PS matching 1:1, Cox stratified on pairs"}


def _new_users(name: str, drug: str, drug_ingredients: list[str], other: str, other_ingredients: list[str],
               *, metformin: bool) -> dict[str, Any]:
    """A new-user cohort in the YAML form (as examples/studies): first course, 365 days observed before,
    none of the other drug before, followed to the end of exposure (30-day persistence window)."""
    concepts: dict[str, Any] = {
        drug: {"name": drug, "ingredients": drug_ingredients, "descendants": True},
        other: {"name": other, "ingredients": other_ingredients, "descendants": True},
    }
    rules: list[dict[str, Any]] = []
    if metformin:
        concepts["metformin"] = {"name": "metformin", "ingredients": ["metformin"], "descendants": True}
        rules.append({"name": "on metformin in the prior 180 days",
                      "require": {"drug": "metformin", "between": ["180 days before", "0 days after"]}})
    rules.append({"name": f"no {other} before",
                  "exclude": {"drug": other, "between": ["all days before", "1 days before"]}})
    return {"name": name, "concepts": concepts, "entry": [{"drug": drug, "first": True}],
            "observation": {"prior_days": 365}, "inclusion_rules": rules,
            "exit": {"end_of_exposure": {"drug": drug, "gap_days": 30}}}


def _admissions(name: str, condition: str) -> dict[str, Any]:
    return {"name": name, "concepts": {"o": {"name": name, "conditions": [condition], "descendants": True}},
            "entry": [{"condition": "o", "in_visit": "inpatient"}], "keep": "all", "exit": {"after": {"days": 1}}}


# effect id (truth.json planted_effects) -> (target, comparator, outcome) cohort definitions
STUDIES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "nsaid_gi_bleeding": (
        _new_users("Diclofenac new users", "diclofenac", ["diclofenac"], "celecoxib", ["celecoxib"], metformin=False),
        _new_users("Celecoxib new users", "celecoxib", ["celecoxib"], "diclofenac", ["diclofenac"], metformin=False),
        _admissions("GI bleed admission", "gi_bleeding"),
    ),
    "sglt2_hf_admission": (
        _new_users("SGLT2 inhibitor new users", "sglt2", ["empagliflozin", "dapagliflozin"], "gliclazide",
                   ["gliclazide"], metformin=True),
        _new_users("Gliclazide new users", "gliclazide", ["gliclazide"], "sglt2", ["empagliflozin", "dapagliflozin"],
                   metformin=True),
        _admissions("Heart-failure admission", "heart_failure"),
    ),
}


class SeedsSettings(BaseModel):
    """What `run_seeds` simulates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seeds: int = Field(20, ge=1, le=10_000, description="number of seeds (one synthetic site each)")
    first_seed: int = Field(1, ge=0, le=2**32 - 1, description="seeds are first_seed, first_seed + 1, ...")
    persons: int = Field(200_000, ge=500, le=10_000_000, description="persons per site")
    acute_rate_multiplier: float = Field(50.0, gt=0, le=100, description="SiteProfile.acute_rate_multiplier")
    profiles: tuple[str, ...] = Field(("riverside",), min_length=1,
                                      description="site profiles (case-mixes), taken in turn by seed")
    effects: tuple[str, ...] = Field(tuple(STUDIES), min_length=1, description="planted effects to estimate")
    policy: str = Field("opensafely", description="disclosure policy the estimates are released under")

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from mercia.synth import DEFAULT_SITES

        known = [p.name for p in DEFAULT_SITES]
        bad = [p for p in v if p not in known]
        if bad:
            raise ValueError(f"unknown site profile(s) {', '.join(bad)}; choose from {', '.join(known)}")
        return v

    @field_validator("effects")
    @classmethod
    def _effects(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [e for e in v if e not in STUDIES]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"effects must be distinct, from {', '.join(STUDIES)} (got {', '.join(v)})")
        return v

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        from mercia.disclosure import BUILTIN_POLICIES

        if v not in BUILTIN_POLICIES:
            raise ValueError(f"unknown policy {v!r}; choose from {', '.join(sorted(BUILTIN_POLICIES))}")
        return v


def seeds_settings(**values: Any) -> SeedsSettings:
    """SeedsSettings from keyword values; a bad value is one ConfigError line naming the field."""
    try:
        return SeedsSettings(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "settings"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{field}: {msg} (got {err.get('input')!r})") from None


def _estimate_one(cdm: Any, effect: str, truth: dict[str, Any], policy: Any) -> list[dict[str, Any]]:
    """Generate the effect's three cohorts, run the comparative cohort analysis, release its estimates."""
    from mercia.analyses.cohort_method import CohortMethodSettings, cohort_method
    from mercia.cohorts.generate import generate_cohorts
    from mercia.cohorts.yaml_reader import from_dict
    from mercia.disclosure import DisclosureLog, release

    planted = next(e for e in truth["planted_effects"] if e["id"] == effect)
    hr = float(planted["contrast"]["hazard_ratio"])
    marginal = (planted["contrast"].get("marginal_in_treated") or {}).get("hazard_ratio")
    hr_marginal = float(marginal) if marginal is not None else math.nan
    base = 10 * (list(STUDIES).index(effect) + 1)
    t_id, c_id, o_id = base + 1, base + 2, base + 3
    defs = [(cid, from_dict(d)) for cid, d in zip((t_id, c_id, o_id), STUDIES[effect], strict=True)]
    generate_cohorts(cdm, defs, stats=False)
    exposures = [int(x["ingredient_concept_id"]) for x in planted["exposures"]]
    settings = CohortMethodSettings.model_validate({"covariates": {"excluded_concept_ids": exposures}})
    res = cohort_method(cdm, t_id, c_id, [o_id], settings, name="cm")
    released = release(res.tables["cm_estimates"], policy, log=DisclosureLog())
    est = released.data if released.data is not None else pd.DataFrame()
    out = []
    for adj in ESTIMATORS:
        row = est[est["adjustment"] == adj] if len(est) and "adjustment" in est else est.iloc[0:0]
        lr = float(row["log_rr"].iloc[0]) if len(row) and pd.notna(row["log_rr"].iloc[0]) else math.nan
        se = float(row["se_log_rr"].iloc[0]) if len(row) and pd.notna(row["se_log_rr"].iloc[0]) else math.nan
        lo = float(row["ci_lower"].iloc[0]) if len(row) and pd.notna(row["ci_lower"].iloc[0]) else math.nan
        hi = float(row["ci_upper"].iloc[0]) if len(row) and pd.notna(row["ci_upper"].iloc[0]) else math.nan
        out.append({"effect": effect, "estimator": adj, "true_hr": hr, "marginal_hr": hr_marginal, "log_rr": lr, "se_log_rr": se,
                    "rr": math.exp(lr) if math.isfinite(lr) else math.nan, "ci_lower": lo, "ci_upper": hi,
                    "estimable": bool(math.isfinite(lr) and math.isfinite(lo) and math.isfinite(hi))})
    return out


def run_seeds(settings: SeedsSettings, *, progress: Progress | None = None,
              on_seed: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """One row per seed, effect and estimator: the released estimate, its interval, the planted HR.
    `on_seed(rows so far)` is called after each seed (to keep partial results of a long run)."""
    from mercia.cdm import Cdm
    from mercia.disclosure import BUILTIN_POLICIES
    from mercia.synth import DEFAULT_SITES, generate_site
    from mercia.synth.profiles import with_settings

    by_name = {p.name: p for p in DEFAULT_SITES}
    policy = BUILTIN_POLICIES[settings.policy]
    rows: list[dict[str, Any]] = []
    step = f"seeds ({settings.persons:,} persons, acute x{settings.acute_rate_multiplier:g})"
    if progress:
        progress(step, 0, settings.seeds)
    for i in range(settings.seeds):
        seed = settings.first_seed + i
        profile = with_settings(by_name[settings.profiles[i % len(settings.profiles)]],
                                acute_rate_multiplier=settings.acute_rate_multiplier)
        t0 = time.perf_counter()
        cdm = Cdm.open(None)
        try:
            truth = generate_site(cdm, persons=settings.persons, seed=seed, profile=profile)
            t_gen = time.perf_counter() - t0
            for effect in settings.effects:
                t1 = time.perf_counter()
                for r in _estimate_one(cdm, effect, truth, policy):
                    rows.append({"seed": seed, "profile": profile.name, **r,
                                 "generate_seconds": round(t_gen, 2),
                                 "estimate_seconds": round(time.perf_counter() - t1, 2)})
        finally:
            cdm.close()
        if on_seed:
            on_seed(score(pd.DataFrame(rows)))
        if progress:
            progress(step, i + 1, settings.seeds)
    return score(pd.DataFrame(rows))


def score(est: pd.DataFrame) -> pd.DataFrame:
    """Add each estimate's bias of the log HR, whether its interval covers the planted HR (and the
    marginal HR in the treated: `_marginal` columns, NaN when truth.json has none) and excludes 1
    (NaN when not estimable), and the interval's width on the log scale."""
    est = est.copy()
    if not len(est):
        return est
    if "marginal_hr" not in est:
        est["marginal_hr"] = math.nan
    ok = est["estimable"].astype(bool).to_numpy()
    lo, hi, hr, mhr = (est[c].to_numpy(dtype=float) for c in ("ci_lower", "ci_upper", "true_hr", "marginal_hr"))
    est["bias_log_rr"] = est["log_rr"].to_numpy(dtype=float) - np.log(hr)
    est["covers"] = np.where(ok, (lo <= hr) & (hr <= hi), np.nan)
    est["bias_log_rr_marginal"] = est["log_rr"].to_numpy(dtype=float) - np.log(mhr)
    est["covers_marginal"] = np.where(ok & np.isfinite(mhr), (lo <= mhr) & (mhr <= hi), np.nan)
    est["excludes_1"] = np.where(ok, (lo > 1) | (hi < 1), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        est["ci_width_log"] = np.log(hi) - np.log(lo)
    return est


def summarise(est: pd.DataFrame) -> pd.DataFrame:
    """Per effect and estimator (and over all effects, effect 'all'): seeds, share estimable,
    coverage, mean bias of the log HR and its Monte Carlo SE, RMSE, mean CI width (log scale), share
    of intervals excluding 1; and coverage and mean bias against the marginal HR in the treated
    (`_marginal` columns; NaN when the sites' truth states none)."""
    if not len(est):
        raise MerciaError("no estimates to summarise")
    groups = [*est.groupby(["effect", "estimator"], sort=False)]
    groups += [(("all", k), g) for k, g in est.groupby("estimator", sort=False)]
    rows = []
    for (effect, estimator), g in groups:
        ok = g[g["estimable"].astype(bool)]
        n = len(ok)
        b = ok["bias_log_rr"].to_numpy(dtype=float)
        cov = float(ok["covers"].mean()) if n else math.nan
        bm = (ok["bias_log_rr_marginal"].to_numpy(dtype=float) if "bias_log_rr_marginal" in ok
              else np.full(n, math.nan))
        bm = bm[np.isfinite(bm)]
        nm = len(bm)
        rows.append({
            "effect": effect, "estimator": estimator,
            "true_hr": float(g["true_hr"].iloc[0]) if effect != "all" else math.nan,
            "seeds": len(g), "estimable": n, "share_not_estimable": round(1 - n / len(g), 4),
            "coverage": cov,
            "coverage_mc_se": math.sqrt(cov * (1 - cov) / n) if n else math.nan,
            "mean_bias_log_hr": float(b.mean()) if n else math.nan,
            "bias_mc_se": float(b.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
            "rmse_log_hr": float(math.sqrt((b ** 2).mean())) if n else math.nan,
            "mean_ci_width_log": float(ok["ci_width_log"].mean()) if n else math.nan,
            "share_excluding_1": float(ok["excludes_1"].mean()) if n else math.nan,
            "mean_marginal_hr": (float(np.exp(np.log(g["marginal_hr"].to_numpy(dtype=float)).mean()))
                                 if effect != "all" and "marginal_hr" in g else math.nan),
            "coverage_marginal": float(ok["covers_marginal"].dropna().mean()) if nm else math.nan,
            "mean_bias_log_hr_marginal": float(bm.mean()) if nm else math.nan,
            "bias_marginal_mc_se": float(bm.std(ddof=1) / math.sqrt(nm)) if nm > 1 else math.nan,
        })
    return pd.DataFrame(rows)


def plot(est: pd.DataFrame, path: Path) -> None:
    """Each seed's estimate and 95% CI, one panel per effect, estimators side by side; the planted HR
    as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    effects = list(dict.fromkeys(est["effect"]))
    fig, axes = plt.subplots(1, len(effects), figsize=(6 * len(effects), 4.5), squeeze=False)
    colours = {"crude": "#d62728", "match": "#1f77b4"}
    for ax, effect in zip(axes[0], effects, strict=True):
        e = est[est["effect"] == effect]
        seeds = sorted(e["seed"].unique())
        pos = {s: i for i, s in enumerate(seeds)}
        for j, (estimator, g) in enumerate(e.groupby("estimator", sort=False)):
            g = g[g["estimable"].astype(bool)]
            x = np.array([pos[s] for s in g["seed"]]) + (j - 0.5) * 0.3
            ax.errorbar(x, g["rr"], yerr=[g["rr"] - g["ci_lower"], g["ci_upper"] - g["rr"]], fmt="o", ms=3,
                        capsize=2, color=colours.get(estimator), label=ESTIMATORS.get(estimator, estimator))
        ax.axhline(float(e["true_hr"].iloc[0]), color="black", lw=1, label="planted HR (conditional)")
        if "marginal_hr" in e and np.isfinite(e["marginal_hr"].to_numpy(dtype=float)).any():
            ax.plot(range(len(seeds)), [float(e[e["seed"] == s]["marginal_hr"].iloc[0]) for s in seeds],
                    color="black", lw=1, ls="--", label="marginal HR in the treated")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xticks(range(len(seeds)), [str(s) for s in seeds], fontsize=7)
        ax.set_xlabel("seed")
        ax.set_ylabel("hazard ratio (95% CI)")
        ax.set_title(effect)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(est: pd.DataFrame, summary: pd.DataFrame, out: Path, settings: SeedsSettings,
                  wall_seconds: float) -> list[Path]:
    """seeds_estimates.{csv,parquet}, seeds_summary.{csv,parquet}, seeds_settings.json, seeds.png."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in (("seeds_estimates", est), ("seeds_summary", summary)):
        df.to_csv(out / f"{name}.csv", index=False)
        df.to_parquet(out / f"{name}.parquet", index=False)
        paths += [out / f"{name}.csv", out / f"{name}.parquet"]
    (out / "seeds_settings.json").write_text(json.dumps(
        {**settings.model_dump(mode="json"), "wall_seconds": round(wall_seconds, 1)}, indent=2) + "\n")
    plot(est, out / "seeds.png")
    return [*paths, out / "seeds_settings.json", out / "seeds.png"]


def check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder; choose a new one")
