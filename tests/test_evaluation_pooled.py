"""The methods benchmark across sites: the pooled (federated) estimates are the meta-analysis of the sites'
own estimates, checked against statsmodels' combine_effects and the inverse-variance formula by hand."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mercia.analyses.survival import CoxData
from mercia.cdm import Cdm
from mercia.cli import app
from mercia.evaluation.methods import ESTIMATORS
from mercia.evaluation.pooled import federated_cox_estimates, pool_site_estimates, site_names
from mercia.synth import DEFAULT_SITES, generate_site

combine_effects = pytest.importorskip("statsmodels.stats.meta_analysis").combine_effects

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "evaluation" / "nsaid_methods.yaml"


def _site_rows(log_rr: list[float], se: list[float], outcome_id: int = 7, truth: float = 2.0) -> pd.DataFrame:
    return pd.DataFrame({
        "site": [f"s{i}" for i in range(len(log_rr))], "pair": "a vs b", "estimator": "ps_match",
        "calibrated": False, "outcome_id": outcome_id, "negative_control_id": 3, "negative_control": "nc",
        "true_effect_size": truth, "log_rr": log_rr, "se_log_rr": se,
        "target_subjects": 10, "comparator_subjects": 20, "events": 5})


def test_pooled_estimates_are_statsmodels_meta_analysis() -> None:
    y, se = [0.9, 0.2, 0.55], [0.30, 0.25, 0.4]
    pooled = pool_site_estimates(_site_rows(y, se)).set_index("site")
    ref = combine_effects(np.array(y), np.array(se) ** 2, method_re="dl")
    fe, re = pooled.loc["pooled fixed"], pooled.loc["pooled random"]
    assert fe["log_rr"] == pytest.approx(ref.mean_effect_fe, rel=1e-12)
    assert fe["se_log_rr"] == pytest.approx(ref.sd_eff_w_fe, rel=1e-12)
    assert re["log_rr"] == pytest.approx(ref.mean_effect_re, rel=1e-12)
    assert re["se_log_rr"] == pytest.approx(ref.sd_eff_w_re, rel=1e-12)
    lo, hi = ref.conf_int(alpha=0.05)[1]  # (fixed, random) rows; row 1: random effects
    assert (re["ci_lower"], re["ci_upper"]) == pytest.approx((math.exp(lo), math.exp(hi)), rel=1e-10)
    assert fe["sites_pooled"] == 3 and fe["events"] == 15 and fe["true_effect_size"] == 2.0


def test_sites_without_an_estimate_are_left_out_and_none_gives_no_estimate() -> None:
    rows = pd.concat([_site_rows([0.4, np.nan, 0.1], [0.2, 0.3, 0.5]),
                      _site_rows([np.nan, 0.3], [np.nan, 0.0], outcome_id=8)], ignore_index=True)
    pooled = pool_site_estimates(rows)
    one = pooled[(pooled["outcome_id"] == 7) & (pooled["site"] == "pooled fixed")].iloc[0]
    w = np.array([1 / 0.2**2, 1 / 0.5**2])
    assert one["log_rr"] == pytest.approx((w @ [0.4, 0.1]) / w.sum()) and one["sites_pooled"] == 2
    assert one["events"] == 10  # the counts of the sites pooled
    none = pooled[pooled["outcome_id"] == 8]
    assert len(none) == 2 and none["log_rr"].isna().all() and (none["sites_pooled"] == 0).all()


def _cox_site(seed: int, n: int, hr: float) -> CoxData:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, n).astype(float)
    stratum = rng.integers(0, 4, n)
    t = np.ceil(rng.exponential(100 / (hr**x * (1 + stratum / 2)))).clip(1, 60)
    event = (t < 60).astype(float)
    return CoxData(x[:, None], t, event, ["treatment"], stratum)


def test_federated_cox_is_lifelines_stratified_by_site_and_stratum() -> None:
    lifelines = pytest.importorskip("lifelines")
    sites = {"a": _cox_site(1, 400, 1.8), "b": _cox_site(2, 300, 1.3), "c": _cox_site(3, 40, 1.0)}
    sites["c"].event[:] = 0
    sites["c"].event[:3] = 1  # 3 events: under the minimum of 10, refused and left out
    key = ("a vs b", 7, "ps_match")
    controls = _site_rows([0.1], [0.2]).drop(columns="site")
    got = federated_cox_estimates({s: {key: d} for s, d in sites.items()}, controls).iloc[0]
    frames = []
    for name in ("a", "b"):
        d = sites[name]
        frames.append(pd.DataFrame({"treatment": d.X[:, 0], "time": d.time, "event": d.event,
                                    "stratum": [f"{name}{k}" for k in d.strata]}))
    ref = lifelines.CoxPHFitter().fit(pd.concat(frames), "time", "event", strata=["stratum"])
    assert got["log_rr"] == pytest.approx(ref.params_["treatment"], rel=1e-6)
    assert got["se_log_rr"] == pytest.approx(ref.standard_errors_["treatment"], rel=1e-5)
    assert got["sites_pooled"] == 2 and got["site"] == "federated cox" and got["true_effect_size"] == 2.0
    assert got["events"] == int(sites["a"].event.sum() + sites["b"].event.sum())


def test_site_names() -> None:
    assert site_names(["a/north.duckdb", "b/north.duckdb", "postgresql://x/y"]) == ["north", "north_2", "site3"]


def _by_hand(y: np.ndarray, se: np.ndarray, kind: str) -> tuple[float, float]:
    """Inverse-variance fixed effect; DerSimonian-Laird with tau2 truncated at 0 (statsmodels 0.15's
    combine_effects does not truncate it, so it differs when Q < k - 1)."""
    w = 1 / se**2
    fixed = float(w @ y / w.sum())
    if kind == "fixed":
        return fixed, math.sqrt(1 / w.sum())
    q = float(w @ (y - fixed) ** 2)
    tau2 = max(0.0, (q - (len(y) - 1)) / (w.sum() - (w**2).sum() / w.sum())) if len(y) > 1 else 0.0
    wr = 1 / (se**2 + tau2)
    return float(wr @ y / wr.sum()), math.sqrt(1 / wr.sum())


def test_random_effects_with_q_below_its_df_is_the_fixed_effect() -> None:
    y, se = [-1.28, 0.002], [0.76, 1.41]  # Q = 0.64 < 1: tau2 = 0
    pooled = pool_site_estimates(_site_rows(y, se)).set_index("site")
    assert pooled.loc["pooled random", "log_rr"] == pytest.approx(pooled.loc["pooled fixed", "log_rr"], rel=1e-12)
    assert pooled.loc["pooled random", "log_rr"] == pytest.approx(_by_hand(np.array(y), np.array(se), "fixed")[0])


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two small synthetic sites of one profile and two seeds (acute outcomes 8 times commoner, as in
    the one-site benchmark test; at 10,000 persons the other profiles have too few diclofenac users)."""
    paths = []
    profile = next(p for p in DEFAULT_SITES if p.name == "fenwold").model_copy(update={"acute_rate_multiplier": 8.0})
    for name, seed in (("east", 3), ("west", 5)):
        path = tmp_path_factory.mktemp(name) / f"{name}.duckdb"
        with Cdm.open(path) as cdm:
            generate_site(cdm, persons=10_000, seed=seed, profile=profile)
        paths.append(path)
    return paths


def _config(tmp_path: Path) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    for key in ("diclofenac", "celecoxib"):
        src = (EXAMPLE.parent / data["cohorts"][key]["file"]).resolve()
        shutil.copy(src, tmp_path / src.name)
        data["cohorts"][key]["file"] = src.name
    data["injection"].update({"min_outcomes_for_model": 5, "min_outcomes_for_injection": 5})
    data["cohort_method"]["ps"]["variance"] = 0.1  # no cross-validation
    path = tmp_path / "methods.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_evaluate_methods_pools_the_sites(sites: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["evaluate", "methods", str(_config(tmp_path)), "--out", str(out)]
    for p in sites:
        args += ["--cdm", str(p)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    est = pd.read_parquet(out / "estimates.parquet")
    expected = {f"{s}: {e}{c}" for s in ("east", "west", "pooled fixed", "pooled random")
                for e in ESTIMATORS for c in ("", " (calibrated)")}
    expected |= {f"federated cox: {e}{c}" for e in ("crude", "ps_match", "ps_stratify") for c in ("", " (calibrated)")}
    assert set(est["method"]) == expected
    metrics = pd.read_csv(out / "metrics.csv", dtype={"true_effect_size": str})
    assert expected == set(metrics["method"])
    # every pooled estimate, recomputed independently from the two sites' rows
    site_rows = est[est["site"].isin(["east", "west"]) & ~est["calibrated"]]
    checked = 0
    for kind in ("fixed", "random"):
        pooled = est[(est["site"] == f"pooled {kind}") & ~est["calibrated"]]
        for r in pooled.itertuples(index=False):
            g = site_rows[(site_rows["estimator"] == r.estimator) & (site_rows["outcome_id"] == r.outcome_id)]
            g = g[np.isfinite(g["log_rr"]) & (g["se_log_rr"] > 0)]
            if len(g) == 0:
                assert math.isnan(r.log_rr)
                continue
            want, want_se = _by_hand(g["log_rr"].to_numpy(), g["se_log_rr"].to_numpy(), kind)
            assert r.log_rr == pytest.approx(want, rel=1e-9, abs=1e-12)
            assert r.se_log_rr == pytest.approx(want_se, rel=1e-9)
            checked += len(g) == 2
    assert checked >= 10  # most controls have an estimate at both sites
    # the truth of each site's positive controls, and the pooled calibrated estimates exist
    truth = pd.read_csv(out / "truth.csv")
    assert set(truth["site"]) == {"east", "west"}
    cal = est[(est["site"] == "pooled fixed") & est["calibrated"]]
    assert cal["log_rr"].notna().sum() > 0
    fed = est[(est["site"] == "federated cox") & ~est["calibrated"]]
    assert fed["log_rr"].notna().sum() >= 10 and (fed["sites_pooled"] <= 2).all()
    # with one site's rows (the other refused) the federated fit is that site's own Cox fit
    for r in fed[fed["sites_pooled"] == 1].itertuples(index=False):
        one = site_rows[(site_rows["estimator"] == r.estimator) & (site_rows["outcome_id"] == r.outcome_id)
                        & (site_rows["events"] >= 10)]
        if len(one) == 1 and math.isfinite(r.log_rr):
            assert r.log_rr == pytest.approx(one["log_rr"].iloc[0], rel=1e-6)
    assert "positive controls over 2 sites" in (out / "summary.md").read_text()
    assert "pooled" in res.output  # the table of metrics (wrapped to the terminal) shows the pooled methods

