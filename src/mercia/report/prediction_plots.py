"""ROC and calibration curves drawn from *released* risk-strata tables only.

The report never sees a prediction: both curves come from the `<name>_risk_strata` table after
disclosure control (persons, outcomes and expected outcomes per stratum of predicted risk).

- ROC: one point per stratum boundary. Calling the strata at or above a boundary "high risk", the true
  positive rate is their share of outcomes and the false positive rate their share of non-outcomes
  (denominators: the released strata summed, so the curve ends at (1, 1)). With 10 strata that is an
  11-point curve; its area is close to, not equal to, the exact AUC in the performance table. When a
  stratum of the split is suppressed the curve cannot be drawn and is not.
- Calibration: per stratum, observed risk (outcomes / persons) against mean predicted risk (expected
  outcomes / persons); suppressed strata are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

TOTAL = "Total"


def _strata(df: pd.DataFrame, split: str) -> pd.DataFrame:
    s = df[(df["split"] == split) & (df["stratum"].astype(str) != TOTAL)].copy()
    s["order"] = pd.to_numeric(s["stratum"], errors="coerce")
    return s.sort_values("order")


def roc_points(strata: pd.DataFrame, split: str) -> pd.DataFrame | None:
    """(fpr, tpr) at each stratum boundary from the highest risk down; None when a count is missing."""
    s = _strata(strata, split)
    n = pd.to_numeric(s["n_persons"], errors="coerce").to_numpy(dtype=float)
    o = pd.to_numeric(s["n_outcomes"], errors="coerce").to_numpy(dtype=float)
    if len(s) == 0 or np.isnan(n).any() or np.isnan(o).any():
        return None
    non = np.clip(n - o, 0, None)
    if o.sum() == 0 or non.sum() == 0:
        return None
    tp = np.concatenate([[0.0], np.cumsum(o[::-1])])
    fp = np.concatenate([[0.0], np.cumsum(non[::-1])])
    return pd.DataFrame({"fpr": fp / fp[-1], "tpr": tp / tp[-1]})


def calibration_points(strata: pd.DataFrame, split: str) -> pd.DataFrame:
    """stratum, predicted (mean predicted risk) and observed risk of each stratum with released counts."""
    s = _strata(strata, split)
    n = pd.to_numeric(s["n_persons"], errors="coerce")
    out = pd.DataFrame(
        {
            "stratum": s["stratum"].astype(str),
            "predicted": pd.to_numeric(s["expected_outcomes"], errors="coerce") / n,
            "observed": pd.to_numeric(s["n_outcomes"], errors="coerce") / n,
        }
    )
    return out.dropna().reset_index(drop=True)


def prediction_figures(
    strata: pd.DataFrame | None, performance: pd.DataFrame | None, prefix: str, html: Callable[[Any], str]
) -> list[str]:
    """The ROC and calibration plots (HTML fragments via `html`) for every split in the strata table."""
    import plotly.graph_objects as go

    if strata is None or strata.empty:
        return ['<p class="empty">No risk strata released.</p>']
    splits = [s for s in dict.fromkeys(strata["split"].astype(str))]
    auc = {}
    if performance is not None and len(performance):
        auc = {str(r["split"]): r.get("auc") for _, r in performance.iterrows()}
    out: list[str] = []
    roc = go.Figure()
    drawn = 0
    for split in splits:
        pts = roc_points(strata, split)
        if pts is None:
            continue
        a = auc.get(split)
        label = f"{split} (AUC {a:.3f})" if isinstance(a, float) and np.isfinite(a) else split
        roc.add_trace(go.Scatter(x=pts["fpr"], y=pts["tpr"], mode="lines+markers", name=label))
        drawn += 1
    if drawn:
        roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "grey"},
                                 name="chance"))
        roc.update_layout(title=f"{prefix}: ROC curve (from released risk strata)",
                          xaxis_title="1 - specificity", yaxis_title="sensitivity", height=420)
        out.append(html(roc))
    else:
        out.append('<p class="empty">No ROC curve: a risk stratum of every split is suppressed.</p>')
    cal = go.Figure()
    top = 0.0
    for split in splits:
        pts = calibration_points(strata, split)
        if pts.empty:
            continue
        top = max(top, float(pts["predicted"].max()), float(pts["observed"].max()))
        cal.add_trace(go.Scatter(x=pts["predicted"], y=pts["observed"], mode="lines+markers", name=split,
                                 text=pts["stratum"]))
    if top > 0:
        cal.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", line={"dash": "dash", "color": "grey"},
                                 name="perfect calibration"))
        cal.update_layout(title=f"{prefix}: calibration by stratum of predicted risk",
                          xaxis_title="mean predicted risk", yaxis_title="observed risk", height=420)
        out.append(html(cal))
    else:
        out.append('<p class="empty">No calibration plot: every risk stratum is suppressed.</p>')
    return out
