"""Meta-analysis of site estimates: by hand, against statsmodels, and on the published BCG trials."""

from __future__ import annotations

import json
import math
from fractions import Fraction as F

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.meta_analysis import combine_effects

from mercia.errors import MerciaError
from mercia.federation import PoolingError, meta_analyse, site_estimates_from_ci

Z = float(stats.norm.ppf(0.975))


def test_three_sites_by_hand():
    # Weights 1/se^2 = 100, 25, 4 (sum 129), estimates 0, 0.5, 1, worked in exact fractions.
    y, se = [0.0, 0.5, 1.0], [0.1, 0.2, 0.5]
    r = meta_analyse(y, se)
    w = [F(100), F(25), F(4)]
    sw = sum(w)
    fixed = sum(wi * F(yi).limit_denominator() for wi, yi in zip(w, y, strict=True)) / sw  # 11/86
    assert fixed == F(11, 86)
    q = F(350, 43)  # sum w y^2 - (sum w y)^2 / sum w = 10.25 - 16.5^2/129
    c = sw - sum(wi**2 for wi in w) / sw  # 2000/43
    tau2 = (q - 2) / c  # 264/2000
    assert tau2 == F(33, 250)
    assert r.fixed.estimate == pytest.approx(float(fixed), abs=1e-14)
    assert r.fixed.se == pytest.approx(math.sqrt(1 / 129), abs=1e-14)
    assert r.q == pytest.approx(float(q), abs=1e-12)
    assert r.q_df == 2
    assert r.q_p == pytest.approx(math.exp(-float(q) / 2), abs=1e-14)  # chi2 on 2 df: sf = e^(-q/2)
    assert r.tau2 == pytest.approx(0.132, abs=1e-14)
    assert r.i2 == pytest.approx(264 / 350, abs=1e-14)
    wr = [1 / (0.01 + 0.132), 1 / (0.04 + 0.132), 1 / (0.25 + 0.132)]
    est_r = sum(a * b for a, b in zip(wr, y, strict=True)) / sum(wr)
    se_r = math.sqrt(1 / sum(wr))
    assert r.random.estimate == pytest.approx(est_r, abs=1e-14)
    assert r.random.se == pytest.approx(se_r, abs=1e-14)
    assert r.random.ci_lower == pytest.approx(est_r - Z * se_r, abs=1e-14)
    np.testing.assert_allclose(r.weights_fixed, [100 / 129, 25 / 129, 4 / 129], atol=1e-15)
    np.testing.assert_allclose(r.weights_random, np.array(wr) / sum(wr), atol=1e-15)
    # Prediction interval: t on k-2 = 1 df (12.706...), over tau2 plus the pooled variance.
    half = stats.t.ppf(0.975, 1) * math.sqrt(0.132 + se_r**2)
    assert r.prediction_lower == pytest.approx(est_r - half, abs=1e-12)
    assert r.prediction_upper == pytest.approx(est_r + half, abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_equals_statsmodels_fixed_and_dl(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 12))
    se = rng.uniform(0.05, 0.6, k)
    # seeds 0-3 heterogeneous, 4-7 homogeneous (the DL moment estimate is then often below 0)
    spread = 0.5 if seed < 4 else 0.0
    y = rng.normal(0.2, spread, k) + rng.normal(0, se)
    r = meta_analyse(y, se)
    with np.errstate(invalid="ignore"):  # statsmodels takes sqrt of a negative tau2 in its HKSJ rows
        sm = combine_effects(y, se**2, method_re="dl")
        frame = sm.summary_frame()
    fe = frame.loc["fixed effect"]
    tol = 1e-10
    assert abs(r.fixed.estimate - fe["eff"]) < tol
    assert abs(r.fixed.se - fe["sd_eff"]) < tol
    assert abs(r.fixed.ci_lower - fe["ci_low"]) < tol and abs(r.fixed.ci_upper - fe["ci_upp"]) < tol
    assert abs(r.q - sm.q) < tol
    np.testing.assert_allclose(r.weights_fixed, frame["w_fe"].to_numpy()[:k], atol=tol)
    if sm.tau2 >= 0:
        re_ = frame.loc["random effect"]
        assert abs(r.tau2 - sm.tau2) < tol
        assert abs(r.i2 - sm.i2) < tol
        assert abs(r.random.estimate - re_["eff"]) < tol
        assert abs(r.random.se - re_["sd_eff"]) < tol
        assert abs(r.random.ci_lower - re_["ci_low"]) < tol and abs(r.random.ci_upper - re_["ci_upp"]) < tol
        np.testing.assert_allclose(r.weights_random, frame["w_re"].to_numpy()[:k], atol=tol)
    else:
        # statsmodels leaves the DL moment estimate negative; DerSimonian-Laird (and metafor)
        # truncate it at 0, where random effects is fixed effect.
        assert r.tau2 == 0.0 and r.i2 == 0.0
        assert r.random == r.fixed
        np.testing.assert_allclose(r.weights_random, r.weights_fixed, atol=1e-15)


def test_statsmodels_cases_cover_both_branches():
    signs = set()
    for seed in range(8):
        rng = np.random.default_rng(seed)
        k = int(rng.integers(2, 12))
        se = rng.uniform(0.05, 0.6, k)
        y = rng.normal(0.2, 0.5 if seed < 4 else 0.0, k) + rng.normal(0, se)
        signs.add(meta_analyse(y, se).tau2 > 0)
    assert signs == {True, False}


# Colditz et al. (1994), 13 BCG vaccine trials (metafor's dat.bcg: tpos, tneg, cpos, cneg), counts
# checked against metafor's own listing of the data. Log risk ratio of tuberculosis.
BCG = [
    (4, 119, 11, 128),
    (6, 300, 29, 274),
    (3, 228, 11, 209),
    (62, 13536, 248, 12619),
    (33, 5036, 47, 5761),
    (180, 1361, 372, 1079),
    (8, 2537, 10, 619),
    (505, 87886, 499, 87892),
    (29, 7470, 45, 7232),
    (17, 1699, 65, 1600),
    (186, 50448, 141, 27197),
    (5, 2493, 3, 2338),
    (27, 16886, 29, 17825),
]


def test_bcg_trials_reproduce_metafor_dl():
    a, b, c, d = (np.array(col, dtype=float) for col in zip(*BCG, strict=True))
    yi = np.log(a / (a + b)) - np.log(c / (c + d))
    vi = 1 / a - 1 / (a + b) + 1 / c - 1 / (c + d)
    assert yi[0] == pytest.approx(-0.8893, abs=5e-5) and vi[0] == pytest.approx(0.3256, abs=5e-5)
    r = meta_analyse(yi, np.sqrt(vi), ratio=True)
    # metafor: rma(yi, vi, data=dat, method="DL") printed to 4 decimals
    assert r.tau2 == pytest.approx(0.3088, abs=5e-5)
    assert r.q == pytest.approx(152.2330, abs=5e-5)
    assert r.q_df == 12
    assert r.i2 == pytest.approx(0.9212, abs=5e-5)
    assert r.random.estimate == pytest.approx(-0.7141, abs=5e-5)
    assert r.random.se == pytest.approx(0.1787, abs=5e-5)
    assert r.random.ci_lower == pytest.approx(-1.0644, abs=5e-5)
    assert r.random.ci_upper == pytest.approx(-0.3638, abs=5e-5)
    # rma(..., method="FE")
    assert r.fixed.estimate == pytest.approx(-0.4303, abs=5e-5)
    assert r.fixed.se == pytest.approx(0.0405, abs=5e-5)
    s = r.summary().set_index("model")
    assert s.loc["random", "ratio"] == pytest.approx(math.exp(-0.714117), abs=1e-6)
    json.dumps(r.to_dict())  # the hub stores it as JSON


def test_one_site_pools_to_itself():
    r = meta_analyse([0.3], [0.1], sites=["leeds"])
    assert r.fixed == r.random
    assert r.fixed.estimate == 0.3 and r.fixed.se == pytest.approx(0.1, abs=1e-15)
    assert r.tau2 == 0.0 and r.q == 0.0 and r.q_df == 0
    assert r.i2 is None and r.q_p is None and r.prediction_lower is None
    assert r.site_table()["weight_random"].tolist() == [1.0]


def test_identical_estimates_have_no_heterogeneity():
    r = meta_analyse([0.2, 0.2, 0.2], [0.1, 0.3, 0.2])
    assert r.q == pytest.approx(0.0, abs=1e-25) and r.tau2 == 0.0 and r.i2 == 0.0
    assert r.random.estimate == pytest.approx(r.fixed.estimate, abs=1e-15)


@pytest.mark.parametrize(
    ("y", "se", "sites", "match"),
    [
        ([], [], None, "at least one site"),
        ([0.1, 0.2], [0.1], None, "2 estimates but 1 standard errors"),
        ([0.1, float("nan")], [0.1, 0.2], ["a", "b"], "missing or infinite for b"),
        ([0.1, float("inf")], [0.1, 0.2], None, "missing or infinite"),
        ([0.1, 0.2], [0.1, 0.0], ["a", "b"], r"positive finite.*b \(0\.0\)"),
        ([0.1, 0.2], [-0.1, 0.2], None, "positive finite"),
        ([0.1, 0.2], [0.1, float("nan")], None, "positive finite"),
        ([0.1, 0.2], [0.1, 0.2], ["a", "a"], "repeat"),
        ([0.1, 0.2], [0.1, 0.2], ["a"], "one name per estimate"),
        ([[0.1], [0.2]], [0.1, 0.2], None, "flat list"),
        (["x"], [0.1], None, "must be numbers"),
    ],
)
def test_bad_input_is_refused_clearly(y, se, sites, match):
    with pytest.raises(PoolingError, match=match) as err:
        meta_analyse(y, se, sites=sites)
    assert isinstance(err.value, MerciaError)


def test_bad_alpha():
    with pytest.raises(PoolingError, match="alpha"):
        meta_analyse([0.1], [0.1], alpha=1.5)


def test_estimates_from_ratio_intervals():
    log_hr = np.log([0.5, 1.2, 2.0])
    se = np.array([0.2, 0.1, 0.35])
    e, s = site_estimates_from_ci(
        np.exp(log_hr), np.exp(log_hr - Z * se), np.exp(log_hr + Z * se), ratio=True
    )
    np.testing.assert_allclose(e, log_hr, atol=1e-14)
    np.testing.assert_allclose(s, se, atol=1e-14)
    # A 90% interval on the additive scale.
    z90 = float(stats.norm.ppf(0.95))
    e, s = site_estimates_from_ci([1.0], [1.0 - z90 * 0.5], [1.0 + z90 * 0.5], ratio=False, level=0.90)
    assert s[0] == pytest.approx(0.5, abs=1e-14)


@pytest.mark.parametrize(
    ("est", "lo", "hi", "ratio", "match"),
    [
        ([0.5], [0.6], [0.9], True, "does not contain"),
        ([0.5], [0.0], [0.9], True, "positive"),
        ([0.5], [0.4], [float("nan")], False, "finite"),
        ([0.5, 0.6], [0.4], [0.9], False, "one of each"),
    ],
)
def test_bad_intervals(est, lo, hi, ratio, match):
    with pytest.raises(PoolingError, match=match):
        site_estimates_from_ci(est, lo, hi, ratio=ratio)
