"""The methods benchmark's metrics (MethodEvaluation's computeMetrics) against values worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mercia.evaluation.metrics import MetricsError, auc, benchmark_metrics, compute_metrics

NAN = math.nan

# Five controls: two negative (true RR 1), three positive (true RR 2), the last not estimable.
LOG_RR = [0.1, -0.2, 0.7, 1.0, NAN]
SE = [0.1, 0.05, 0.3, 0.1, NAN]
TRUE = [1, 1, 2, 2, 2]


def test_compute_metrics_by_hand() -> None:
    m = compute_metrics(LOG_RR, SE, TRUE)
    # The non-estimable control counts as log RR 0, SE 999, CI (0, 999), p 1.
    # AUC: positives 0.7, 1.0, 0 against negatives 0.1, -0.2: 0.7 and 1.0 beat both (4), 0 beats -0.2 (1): 5/6.
    assert m["auc"] == pytest.approx(5 / 6)
    # 95% CIs: exp(0.1 +- 0.196) covers 1; exp(-0.2 +- 0.098) = (0.74, 0.90) does not; exp(0.7 +- 0.588) =
    # (1.12, 3.63) covers 2; exp(1.0 +- 0.196) = (2.23, 3.31) does not; (0, 999) does: 3/5.
    assert m["coverage"] == pytest.approx(0.6)
    # 1/se^2 = 100, 400, 11.11, 100, ~0: exp(mean(log(1 + 1/se^2))) - 1 = exp((4.61512 + 5.99396 + 2.49412 +
    # 4.61512 + 0) / 5) - 1 = exp(3.543664) - 1 = 33.5935.
    assert m["mean_precision"] == pytest.approx(33.5935, abs=1e-3)
    # (0.1)^2 + (0.2)^2 + (0.7 - ln 2)^2 + (1 - ln 2)^2 + (ln 2)^2 = 0.01 + 0.04 + 0.000047 + 0.094159 + 0.480453
    assert m["mse"] == pytest.approx(0.624659 / 5, abs=1e-6)
    # p: z = 1 (0.32) and z = -4 (< 0.05): one of two negatives significant.
    assert m["type1"] == pytest.approx(0.5)
    # p: z = 2.33 (0.02), z = 10, and the non-estimable one (p 1): one of three positives not significant.
    assert m["type2"] == pytest.approx(1 / 3)
    assert m["non_estimable"] == pytest.approx(0.2)


def test_given_ci_and_p_are_used_not_recomputed() -> None:
    # A calibrated CI need not be symmetric about the estimate: coverage must read the CI given.
    m = compute_metrics([0.0, 0.5], [0.1, 0.1], [1, 2], ci_lower=[1.1, 1.5], ci_upper=[1.5, 2.5], p=[0.01, 0.2])
    assert m["coverage"] == pytest.approx(0.5)  # (1.1, 1.5) misses 1; (1.5, 2.5) covers 2
    assert m["type1"] == 1.0 and m["type2"] == 1.0


def test_auc_matches_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(3)
    score = np.round(rng.normal(size=200), 1)  # many ties
    y = rng.random(200) < 0.3
    assert auc(score, y) == pytest.approx(roc_auc_score(y, score))
    assert math.isnan(auc([1.0, 2.0], [True, True]))


def test_benchmark_metrics_per_method_and_effect_size() -> None:
    est = pd.DataFrame({"method": ["a"] * 5 + ["b"] * 2, "log_rr": [*LOG_RR, 0.0, 1.4], "se_log_rr": [*SE, 0.2, 0.2],
                        "true_effect_size": [*TRUE, 1, 4]})
    m = benchmark_metrics(est).set_index(["method", "true_effect_size"])
    assert list(m.index) == [("a", "1"), ("a", "2"), ("a", "all"), ("b", "1"), ("b", "4"), ("b", "all")]
    # "all" is computeMetrics over every control of the method.
    full = compute_metrics(LOG_RR, SE, TRUE)
    assert m.loc[("a", "all"), list(full)].to_dict() == pytest.approx(full, nan_ok=True)
    # At true RR 1: the negatives alone; no AUC or type 2 there.
    neg = m.loc[("a", "1")]
    assert neg["n"] == 2 and neg["coverage"] == pytest.approx(0.5) and neg["type1"] == pytest.approx(0.5)
    assert math.isnan(neg["auc"]) and math.isnan(neg["type2"])
    # At true RR 2: the positives (coverage 2/3, type 2 1/3), AUC against all the negatives (5/6).
    pos = m.loc[("a", "2")]
    assert pos["n"] == 3 and pos["coverage"] == pytest.approx(2 / 3) and pos["auc"] == pytest.approx(5 / 6)
    assert pos["type2"] == pytest.approx(1 / 3) and math.isnan(pos["type1"])
    # Method b: 1.4 vs 0.0 separates (AUC 1); exp(1.4 +- 0.392) = (2.75, 5.99) covers 4.
    assert m.loc[("b", "4"), "auc"] == 1.0 and m.loc[("b", "4"), "coverage"] == 1.0


def test_bad_estimates_are_refused() -> None:
    with pytest.raises(MetricsError, match="true_effect_size"):
        benchmark_metrics(pd.DataFrame({"method": ["a"], "log_rr": [0.0], "se_log_rr": [0.1]}))
    with pytest.raises(MetricsError, match="positive"):
        compute_metrics([0.0], [0.1], [0.0])
