"""Forest plots of ratios (hazard, rate, relative risk) on a log axis, for every report.

One job: the shape every forest plot in Mercia shares. The log axis gets explicit ticks at round ratios
(0.5, 1, 2 ...) labelled as numbers, because plotly's own labels on a log axis spanning less than a
decade are the bare mantissas of its minor ticks ("4 5 6 7 8 9 1 2 3").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Round ratios, from which the ticks of any range are picked: 1-2-5 steps, then finer ones for narrow
# ranges (reciprocal pairs where they are round: 0.5 and 2, 0.8 and 1.25).
_COARSE = [m * 10.0**k for k in range(-3, 4) for m in (1.0, 2.0, 5.0)]
_FINE = [0.25, 0.33, 0.67, 0.75, 0.8, 1.25, 1.5, 3.0, 4.0]
_FINEST = [0.85, 0.9, 0.95, 1.05, 1.1, 1.2]


def _label(v: float) -> str:
    return f"{v:g}"


def log_ticks(low: float, high: float, most: int = 9) -> tuple[list[float], list[str], list[float]]:
    """(tick values, tick labels, axis range in log10) for ratios from `low` to `high`; 1 always shown.

    Ticks at 1-2-5 steps (0.1, 0.2, 0.5, 1, 2 ...); while fewer than four fall inside the range, finer
    round ratios are added where they are not crowded (at least a tenth of the axis from any other
    tick); on a wide range the 2s and then the 5s are dropped while there are more than `most`."""
    vals = [v for v in (low, high) if isinstance(v, int | float) and math.isfinite(v) and v > 0]
    lo = min([*vals, 1.0])
    hi = max([*vals, 1.0])
    span = math.log10(hi) - math.log10(lo)
    pad = max(span * 0.06, 0.02)
    r0, r1 = math.log10(lo) - pad, math.log10(hi) + pad
    gap = (r1 - r0) / 10

    def fits(v: float) -> bool:
        return r0 <= math.log10(v) <= r1

    chosen = [v for v in _COARSE if fits(v)]
    for tier in (_FINE, _FINEST):
        if len(chosen) >= 4:
            break
        for v in sorted(tier, key=lambda v: abs(math.log10(v))):  # nearest to 1 first
            if fits(v) and all(abs(math.log10(v) - math.log10(c)) >= gap for c in chosen):
                chosen.append(v)
    inside = sorted(chosen)
    # Too many (a wide range): drop the 2s, then the 5s, keeping the powers of ten.
    for mantissa in ("2", "5"):
        if len(inside) <= most:
            break
        inside = [v for v in inside if not f"{v:e}".startswith(mantissa)]
    return inside, [_label(v) for v in inside], [r0, r1]


def forest_figure(
    labels: Sequence[str],
    estimate: Sequence[float],
    lower: Sequence[float],
    upper: Sequence[float],
    *,
    title: str,
    axis_title: str,
    groups: Sequence[str] | None = None,
    symbols: dict[str, str] | None = None,
) -> Any:
    """A plotly forest plot: one row per label (top to bottom in the order given), a square per estimate
    with its interval, a dashed line at 1, and readable ticks on the log axis. `groups` names the trace
    of each row (legend entries, e.g. 'site' and 'pooled'); `symbols` their marker symbols."""
    import plotly.graph_objects as go

    est, lo, hi = (np.asarray(x, dtype=float) for x in (estimate, lower, upper))
    labels = [str(x) for x in labels]
    groups = list(groups) if groups is not None else ["estimate"] * len(labels)
    fig = go.Figure()
    for g in dict.fromkeys(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        fig.add_trace(
            go.Scatter(
                x=est[idx],
                y=[labels[i] for i in idx],
                mode="markers",
                name=g,
                showlegend=len(set(groups)) > 1,
                marker={"size": 9, "symbol": (symbols or {}).get(g, "square")},
                error_x={"type": "data", "symmetric": False, "array": hi[idx] - est[idx],
                         "arrayminus": est[idx] - lo[idx]},
                hovertemplate="%{y}: %{x:.3g}<extra></extra>",
            )
        )
    finite = np.concatenate([lo[np.isfinite(lo)], hi[np.isfinite(hi)], est[np.isfinite(est)]])
    finite = finite[finite > 0]
    tickvals, ticktext, rng = log_ticks(float(finite.min()) if len(finite) else 1.0,
                                        float(finite.max()) if len(finite) else 1.0)
    fig.add_vline(x=1.0, line_dash="dash", line_color="grey")
    fig.update_layout(
        title=title,
        xaxis={"type": "log", "title": axis_title, "tickvals": tickvals, "ticktext": ticktext, "range": rng},
        yaxis={"categoryorder": "array", "categoryarray": labels[::-1], "automargin": True},
        height=max(260, 30 * len(labels) + 150),
        margin={"l": 20, "r": 20},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0},
    )
    return fig
