"""The study report: one self-contained HTML file built only from released tables.

Every number shown comes from a `ReleasedTable` (or is recomputed from released numbers with the
analyses' own helpers: rates and their CIs, Kaplan-Meier curves, SMDs). plotly.js is embedded once
in the file, so the report opens offline and loads nothing from the network.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from mercia.analyses.characterization import smd_binary, smd_continuous
from mercia.analyses.incidence import rate_ci
from mercia.analyses.survival import km_estimates, median_survival
from mercia.disclosure import DisclosureLog, DisclosurePolicy, ReleasedTable
from mercia.study.package import StudyPackage

TOTAL = "Total"


class _Plots:
    """plotly figures as HTML fragments; the library goes into the first one only."""

    def __init__(self) -> None:
        self.first = True

    def html(self, fig: Any) -> str:
        out = fig.to_html(
            full_html=False,
            include_plotlyjs=self.first,
            include_mathjax=False,
            config={"displaylogo": False, "responsive": True},
        )
        self.first = False
        return out


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or v is pd.NA:
        return "—"
    if isinstance(v, float | np.floating):
        if math.isnan(v):
            return "—"
        if math.isinf(v):
            return "∞"
        return f"{v:,.0f}" if digits == 0 else f"{v:.{digits}f}"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    return str(v)


def _table_html(df: pd.DataFrame, digits: int = 2) -> str:
    """A plain HTML table; suppressed cells (missing) show as an em dash."""
    if df.empty:
        return '<p class="empty">No rows released.</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = "".join(f"<td>{html.escape(_fmt(v, digits))}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _num(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").astype(float).to_numpy()


class _Builder:
    def __init__(
        self,
        pkg: StudyPackage,
        tables: dict[str, ReleasedTable],
        log: DisclosureLog,
        policy: DisclosurePolicy,
        manifest: dict[str, Any],
    ) -> None:
        self.pkg = pkg
        self.tables = tables
        self.log = log
        self.policy = policy
        self.manifest = manifest
        self.plots = _Plots()
        key_of = {v: k for k, v in pkg.cohort_ids.items()}
        self.cohort_label = {cid: f"{key} ({pkg.cohort_name(key)})" for cid, key in key_of.items()}

    def data(self, name: str) -> pd.DataFrame | None:
        t = self.tables.get(name)
        return None if t is None else t.data

    def label(self, cid: Any) -> str:
        try:
            return self.cohort_label.get(int(cid), str(cid))
        except (TypeError, ValueError):
            return str(cid)

    # ---- cohorts -------------------------------------------------------------------------------------
    def cohorts(self) -> dict[str, Any]:
        counts = self.data("cohort_counts")
        attrition = []
        for key in sorted(self.pkg.cohort_ids, key=self.pkg.cohort_ids.get):  # type: ignore[arg-type]
            df = self.data(f"attrition_{key}")
            if df is not None:
                attrition.append(
                    {
                        "title": self.label(self.pkg.cohort_ids[key]),
                        "html": _table_html(df),
                        "plot": self._attrition_plot(df),
                    }
                )
        return {
            "counts": _table_html(counts.drop(columns=["cohort"], errors="ignore")) if counts is not None else "",
            "attrition": attrition,
        }

    def _attrition_plot(self, df: pd.DataFrame) -> str:
        """Persons left after each step as bars, from the released counts; a suppressed step has no
        bar and says so."""
        import plotly.graph_objects as go

        if df.empty or "persons" not in df.columns:
            return ""
        persons = _num(df["persons"])
        steps = [str(x) for x in df["step"]]
        text = ["suppressed" if np.isnan(v) else f"{int(v):,}" for v in persons]
        fig = go.Figure(
            go.Bar(
                x=np.nan_to_num(persons),
                y=steps,
                orientation="h",
                text=text,
                textposition="auto",
                hovertemplate="%{y}: %{text}<extra></extra>",
            )
        )
        fig.update_layout(
            xaxis_title="persons",
            yaxis={"autorange": "reversed"},
            height=90 + 34 * len(steps),
            margin={"l": 260, "t": 20},
        )
        return self.plots.html(fig)

    # ---- Table 1 -------------------------------------------------------------------------------------
    def table1(self, prefix: str) -> dict[str, Any]:
        demo = self.data(f"{prefix}_demographics")
        age = self.data(f"{prefix}_age")
        cov = self.data(f"{prefix}_covariates")
        parts: list[str] = []
        if demo is not None and len(demo):
            d = demo[demo["level"] != TOTAL].copy()
            d["cell"] = [
                f"{_fmt(n)} ({_fmt(p, 1)}%)" if not pd.isna(n) else "—"
                for n, p in zip(d["n"], d["percent"], strict=True)
            ]
            d["cohort"] = [self.label(c) for c in d["cohort_id"]]
            wide = d.pivot_table(index=["variable", "level"], columns="cohort", values="cell", aggfunc="first")
            wide = wide.reset_index()
            wide.columns.name = None
            rows = []
            if age is not None and len(age):
                row: dict[str, Any] = {"variable": "age", "level": "mean (SD)"}
                for r in age.itertuples(index=False):
                    row[self.label(r.cohort_id)] = f"{_fmt(r.age_mean, 1)} ({_fmt(r.age_sd, 1)})"
                rows.append(row)
                row = {"variable": "persons", "level": "n"}
                for r in age.itertuples(index=False):
                    row[self.label(r.cohort_id)] = _fmt(r.n)
                rows.insert(0, row)
            table = pd.concat([pd.DataFrame(rows), wide], ignore_index=True).fillna("—")
            parts.append(_table_html(table))
        top = ""
        if cov is not None and len(cov):
            c = cov.dropna(subset=["n"]).copy()
            # every count suppressed (a small site): no top covariates to show
            c = c[c["window"] == c["window"].iloc[0]] if len(c) else c
            c["n_num"] = _num(c["n"])
            frames = []
            for cid, g in c.groupby("cohort_id", sort=True):
                g = g.sort_values("n_num", ascending=False).head(10)
                frames.append(
                    pd.DataFrame(
                        {
                            "cohort": self.label(cid),
                            "window": g["window"],
                            "domain": g["domain"],
                            "concept": g["concept_name"],
                            "n": g["n"],
                            "percent": g["percent"],
                        }
                    )
                )
            if frames:
                top = _table_html(pd.concat(frames, ignore_index=True), 1)
        return {"title": prefix, "table": "".join(parts) or '<p class="empty">No rows released.</p>', "top": top}

    # ---- SMD -----------------------------------------------------------------------------------------
    def _binary_smd(self, prefix: str, target: int, comparator: int) -> pd.DataFrame:
        """Binary covariates (demographic levels, concepts per window) from released counts and released
        cohort sizes (never the site-side column)."""
        df = self.data(f"{prefix}_smd")
        age = self.data(f"{prefix}_age")
        empty = pd.DataFrame(columns=["label", "smd", "kind"])
        if df is None or age is None or df.empty or age.empty:
            return empty
        sizes = {int(r.cohort_id): r.n for r in age.itertuples(index=False)}
        nt, nc = sizes.get(target), sizes.get(comparator)
        if nt is None or nc is None or pd.isna(nt) or pd.isna(nc) or not nt or not nc:
            return empty
        d = df.dropna(subset=["n_target", "n_comparator"]).copy()
        d = d[d["concept_name"].astype(str) != TOTAL]
        d["smd"] = smd_binary(_num(d["n_target"]) / float(nt), _num(d["n_comparator"]) / float(nc))
        d["label"] = [f"{w} · {n}" for w, n in zip(d["window"], d["concept_name"], strict=True)]
        return d.assign(kind="binary")[["label", "smd", "kind"]].dropna(subset=["smd"])

    def _continuous_smd(self, prefix: str, target: int, comparator: int) -> pd.DataFrame:
        """Age and measurement values: (m1 - m2) / sqrt((s1^2 + s2^2) / 2) from the released means and
        SDs of each cohort (missing where either was withheld by the magnitude rules)."""
        rows: list[dict[str, Any]] = []
        age = self.data(f"{prefix}_age")
        if age is not None and len(age):
            a = age.assign(cohort_id=pd.to_numeric(age["cohort_id"], errors="coerce")).set_index("cohort_id")
            if target in a.index and comparator in a.index:
                rows.append(
                    {
                        "label": "index · age (years)",
                        "mean_target": a.loc[target, "age_mean"],
                        "sd_target": a.loc[target, "age_sd"],
                        "mean_comparator": a.loc[comparator, "age_mean"],
                        "sd_comparator": a.loc[comparator, "age_sd"],
                    }
                )
        meas = self.data(f"{prefix}_measurements")
        if meas is not None and len(meas):
            key = ["window", "concept_id", "concept_name", "unit_concept_id"]
            m = meas.assign(cohort_id=pd.to_numeric(meas["cohort_id"], errors="coerce"))
            t = m[m["cohort_id"] == target].set_index(key)[["mean", "sd"]]
            c = m[m["cohort_id"] == comparator].set_index(key)[["mean", "sd"]]
            both = t.join(c, how="inner", lsuffix="_target", rsuffix="_comparator").reset_index()
            for r in both.itertuples(index=False):
                rows.append(
                    {
                        "label": f"{r.window} · {r.concept_name or r.concept_id} (latest value)",
                        "mean_target": r.mean_target,
                        "sd_target": r.sd_target,
                        "mean_comparator": r.mean_comparator,
                        "sd_comparator": r.sd_comparator,
                    }
                )
        cols = ["label", "mean_target", "sd_target", "mean_comparator", "sd_comparator"]
        d = pd.DataFrame(rows, columns=cols)
        for c in cols[1:]:
            d[c] = _num(d[c])
        d["smd"] = smd_continuous(d["mean_target"], d["sd_target"], d["mean_comparator"], d["sd_comparator"])
        return d.assign(kind="continuous").dropna(subset=["smd"])

    def smd(self, prefix: str, target: int, comparator: int) -> dict[str, Any] | None:
        import plotly.graph_objects as go

        binary = self._binary_smd(prefix, target, comparator)
        continuous = self._continuous_smd(prefix, target, comparator)
        d = pd.concat([binary, continuous[["label", "smd", "kind"]]], ignore_index=True)
        if d.empty:
            return None
        d["abs"] = d["smd"].abs()
        d = d.sort_values("abs", ascending=False).head(40).iloc[::-1]
        fig = go.Figure()
        for kind, symbol in (("binary", "circle"), ("continuous", "diamond")):
            part = d[d["kind"] == kind]
            if len(part):
                fig.add_trace(
                    go.Scatter(
                        x=part["smd"],
                        y=part["label"],
                        mode="markers",
                        name=f"{kind} covariates",
                        marker={"size": 8, "symbol": symbol},
                    )
                )
        for x in (-0.1, 0.1):
            fig.add_vline(x=x, line_dash="dash", line_color="grey")
        fig.update_layout(
            title=f"Standardized mean differences: {self.label(target)} vs {self.label(comparator)}",
            xaxis_title="SMD (binary: proportions; continuous: means and SDs)",
            height=max(350, 18 * len(d) + 120),
            margin={"l": 260},
            yaxis={"categoryorder": "array", "categoryarray": list(d["label"])},
        )
        n_big = int((d["abs"] > 0.1).sum())
        table = ""
        if len(continuous):
            shown = continuous.rename(
                columns={
                    "label": "covariate",
                    "mean_target": "mean (target)",
                    "sd_target": "SD (target)",
                    "mean_comparator": "mean (comparator)",
                    "sd_comparator": "SD (comparator)",
                    "smd": "SMD",
                }
            ).drop(columns=["kind"])
            table = _table_html(shown, 2)
        return {
            "title": prefix,
            "plot": self.plots.html(fig),
            "n_imbalanced": n_big,
            "n_binary": len(binary),
            "n_continuous": len(continuous),
            "continuous": table,
        }

    # ---- incidence -----------------------------------------------------------------------------------
    def incidence(self, prefix: str, by: list[str], alpha: float) -> dict[str, Any]:
        import plotly.graph_objects as go

        df = self.data(prefix)
        out: dict[str, Any] = {"title": prefix, "plots": [], "table": ""}
        if df is None or df.empty:
            out["table"] = '<p class="empty">No rows released (nobody at risk, or all suppressed).</p>'
            return out
        d = df.copy()
        ev, py = _num(d["n_events"]), _num(d["person_years"])
        rate, lo, hi = rate_ci(np.nan_to_num(ev), np.nan_to_num(py), 1000.0, alpha)
        ok = ~(np.isnan(ev) | np.isnan(py)) & (py > 0)
        d["rate_per_1000py"] = np.where(ok, rate, np.nan)
        d["ci_lower"] = np.where(ok, lo, np.nan)
        d["ci_upper"] = np.where(ok, hi, np.nan)
        for dim in ("age_group", "calendar_year"):
            if dim not in by:
                continue
            mask = d[dim].astype(str) != TOTAL
            for other in by:
                if other != dim:
                    mask &= d[other].astype(str) == TOTAL
            g = d[mask].sort_values(dim, key=lambda s: s.astype(str))
            if g.empty:
                continue
            x = g[dim].astype(str)
            fig = go.Figure(
                go.Scatter(
                    x=x,
                    y=g["rate_per_1000py"],
                    mode="markers+lines" if dim == "calendar_year" else "markers",
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": g["ci_upper"] - g["rate_per_1000py"],
                        "arrayminus": g["rate_per_1000py"] - g["ci_lower"],
                    },
                )
            )
            fig.update_layout(
                title=f"{prefix}: incidence by {dim.replace('_', ' ')}",
                xaxis_title=dim.replace("_", " "),
                yaxis_title="per 1,000 person-years (95% CI)",
                height=380,
            )
            out["plots"].append(self.plots.html(fig))
        cols = [*by, "n_events", "person_years", "rate_per_1000py", "ci_lower", "ci_upper"]
        shown = d[cols]
        if len(shown) > 60:  # the full cross-classification is in results/; show the margins here
            margin = np.zeros(len(d), dtype=bool)
            for dim in by:
                m = np.ones(len(d), dtype=bool)
                for other in by:
                    if other != dim:
                        m &= (d[other].astype(str) == TOTAL).to_numpy()
                margin |= m
            shown = d.loc[margin, cols]
        shown = shown.sort_values(by, key=lambda s: s.astype(str).replace(TOTAL, "~"))  # totals last
        out["table"] = _table_html(shown)
        return out

    # ---- Kaplan-Meier ----------------------------------------------------------------------------------
    def km(self, prefix: str, alpha: float) -> dict[str, Any]:
        import plotly.graph_objects as go

        df = self.data(prefix)
        out: dict[str, Any] = {"title": prefix, "plot": "", "risk": "", "summary": ""}
        summ = self.data(f"{prefix}_summary")
        if summ is not None:
            s = summ.copy()
            s.insert(0, "cohort", [self.label(c) for c in s["cohort_id"]])
            out["summary"] = _table_html(s.drop(columns=["cohort_id"]))
        if df is None or df.empty:
            out["plot"] = '<p class="empty">No curve released (too few at risk, or nobody followed).</p>'
            return out
        fig = go.Figure()
        grid: list[float] = []
        curves = {}
        for cid, g in df.groupby("cohort_id", sort=True):
            counts = g[["time", "n_at_risk", "n_events", "n_censored"]].astype(float)
            # The curve and its CI recomputed from the released counts only.
            est = km_estimates(counts, alpha)
            curves[cid] = est
            name = self.label(cid)
            t = est["time"].to_numpy()
            fig.add_trace(
                go.Scatter(x=t, y=est["estimate"], mode="lines", line_shape="hv", name=name, legendgroup=name)
            )
            fig.add_trace(
                go.Scatter(
                    x=np.concatenate([t, t[::-1]]),
                    y=np.concatenate([est["ci_upper"], est["ci_lower"][::-1]]),
                    fill="toself",
                    line={"width": 0},
                    line_shape="hv",
                    opacity=0.2,
                    name=f"{name} 95% CI",
                    legendgroup=name,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
            grid.append(float(t.max()))
        fig.update_layout(
            title=f"{prefix}: Kaplan-Meier (95% CI)",
            xaxis_title="days from index",
            yaxis_title="survival probability",
            height=420,
        )
        out["plot"] = self.plots.html(fig)
        # Number at risk at six evenly spaced times, from released risk sets only.
        tmax = max(grid) if grid else 0.0
        times = sorted({round(tmax * k / 5) for k in range(6)})
        rows = []
        for cid, est in curves.items():
            row: dict[str, Any] = {"cohort": self.label(cid)}
            for t in times:
                # At risk at t: the risk set of the next released step (pooled steps carry the risk
                # set at their first event time); after a curve's last released step it is unknown.
                after = est[est["time"] >= t]
                n = after["n_at_risk"].iloc[0] if len(after) else np.nan
                row[f"day {t}"] = int(n) if not pd.isna(n) else None
            rows.append(row)
        out["risk"] = _table_html(pd.DataFrame(rows), 0)  # counts: no decimals where a cell is unknown
        if summ is not None:
            # Median survival and its CI read off the curve recomputed from released counts (the
            # site-side medians are not released): the first time each of the estimate and its bounds
            # is at or below 0.5; infinite where the curve never gets there.
            medians = {cid: median_survival(est) for cid, est in curves.items()}
            s = summ.copy()
            s.insert(0, "cohort", [self.label(c) for c in s["cohort_id"]])
            key = pd.to_numeric(s["cohort_id"], errors="coerce")
            nan3 = (math.nan, math.nan, math.nan)
            s["median (days)"] = [medians.get(c, nan3)[0] for c in key]
            s["median lower"] = [medians.get(c, nan3)[1] for c in key]
            s["median upper"] = [medians.get(c, nan3)[2] for c in key]
            out["summary"] = _table_html(s.drop(columns=["cohort_id"]), 0)
        return out

    # ---- Cox -----------------------------------------------------------------------------------------
    def cox(self, prefix: str, target: str, comparator: str) -> dict[str, Any]:
        import plotly.graph_objects as go

        t = self.tables.get(prefix)
        out: dict[str, Any] = {"title": prefix, "plot": "", "table": "", "status": "", "info": ""}
        if t is None:
            return out
        out["status"] = t.status
        info = t.model_info or {}
        out["info"] = ", ".join(f"{k} {_fmt(v)}" for k, v in info.items())
        df = t.data
        out["table"] = _table_html(df, 3)
        ok = df.dropna(subset=["hr", "hr_lower", "hr_upper"]) if len(df) else df
        if t.status == "blocked" or ok.empty:
            out["plot"] = '<p class="empty">No hazard ratio released (blocked, empty, or suppressed).</p>'
            return out
        ok = ok.iloc[::-1]
        labels = [
            f"{x} ({self.pkg.cohort_name(target)} vs {self.pkg.cohort_name(comparator)})" if x == "treatment" else x
            for x in ok["term"]
        ]
        fig = go.Figure(
            go.Scatter(
                x=ok["hr"],
                y=labels,
                mode="markers",
                marker={"size": 9, "symbol": "square"},
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": ok["hr_upper"] - ok["hr"],
                    "arrayminus": ok["hr"] - ok["hr_lower"],
                },
            )
        )
        fig.add_vline(x=1.0, line_dash="dash", line_color="grey")
        fig.update_layout(
            title=f"{prefix}: hazard ratios (95% CI)",
            xaxis_type="log",
            xaxis_title="hazard ratio (log scale)",
            height=max(260, 40 * len(ok) + 140),
            margin={"l": 260},
        )
        out["plot"] = self.plots.html(fig)
        ph = self.data(f"{prefix}_ph_test")
        if ph is not None and len(ph):
            out["table"] += "<h4>Proportional hazards (Schoenfeld residuals)</h4>" + _table_html(ph, 3)
        return out

    # ---- prediction ----------------------------------------------------------------------------------
    def prediction(self, prefix: str) -> dict[str, Any]:
        from mercia.analyses.prediction.plots import prediction_figures

        perf = self.tables.get(f"{prefix}_performance")
        info = (perf.model_info or {}) if perf is not None else {}
        return {
            "title": prefix,
            "status": perf.status if perf is not None else "not run",
            "info": ", ".join(f"{k} {_fmt(v)}" for k, v in info.items()),
            "plots": prediction_figures(
                self.data(f"{prefix}_risk_strata"), self.data(f"{prefix}_performance"), prefix, self.plots.html
            ),
            "tables": [
                (title, _table_html(d, 3))
                for title, d in (
                    ("Performance", self.data(f"{prefix}_performance")),
                    ("Attrition", self.data(f"{prefix}_attrition")),
                    ("Risk strata", self.data(f"{prefix}_risk_strata")),
                    ("Coefficients", self.data(f"{prefix}_coefficients")),
                )
                if d is not None
            ],
        }

    # ---- population ----------------------------------------------------------------------------------
    def population(self, prefix: str) -> str:
        """One line per count column of the analysis's released attrition table(s) (`{prefix}_attrition`,
        or one per outcome, `{prefix}_attrition_{outcome}`): each rule that shaped the population and
        the persons left after it; suppressed counts show as an em dash."""
        own = f"{prefix}_attrition"
        lines = []
        for name in sorted(n for n in self.tables if n == own or n.startswith(own + "_")):
            df = self.data(name)
            if df is None or "step" not in df.columns or df.empty:
                continue
            outcome = name[len(own) + 1:]
            for col in [c for c in df.columns if c != "step"]:
                who = {"persons": "", "n_target": "target", "n_comparator": "comparator"}.get(
                    col, self.label(col.removeprefix("cohort_")))
                where = ", ".join(x for x in (f"outcome {outcome}" if outcome else "", who) if x)
                chain = " → ".join(
                    f"{html.escape(str(step).split('. ', 1)[-1])} <b>{html.escape(_fmt(v))}</b>"
                    for step, v in zip(df["step"], df[col], strict=True)
                )
                lines.append(f'<p class="population">Population{" (" + html.escape(where) + ")" if where else ""}: '
                             f"{chain}</p>")
        return "".join(lines)

    # ---- disclosure ----------------------------------------------------------------------------------
    def disclosure(self) -> str:
        summ = self.log.summary(public=True)  # private entries (dropped rows) are not counted either
        outcomes = sorted({o for c in summ.values() for o in c})
        rows = [{"table": t, **{o: c.get(o, 0) for o in outcomes}} for t, c in sorted(summ.items())]
        # The log by rule, in its public form (as disclosure.json): primary and secondary suppressions
        # are merged, so the report does not say which suppressed cells were the small ones.
        entries = json.loads(self.log.to_json(public=True, indent=None))["entries"]
        by_rule = pd.DataFrame(entries, columns=["table", "rule", "outcome", "reason"])
        if len(by_rule):
            by_rule = (
                by_rule.groupby(["table", "rule", "outcome", "reason"], sort=True)
                .size()
                .rename("cells")
                .reset_index()
            )
        detail = (
            "<details><summary>The log by table, rule and reason</summary>"
            + _table_html(by_rule)
            + "</details>"
        )
        return _table_html(pd.DataFrame(rows)) + detail


def render_report(
    pkg: StudyPackage,
    tables: dict[str, ReleasedTable],
    log: DisclosureLog,
    policy: DisclosurePolicy,
    manifest: dict[str, Any],
) -> str:
    """The report's HTML. `tables` must all be released tables (checked)."""
    bad = [n for n, t in tables.items() if not isinstance(t, ReleasedTable)]
    if bad:
        from mercia.errors import StudyError

        raise StudyError(f"the report is built from released tables only; {bad} were not released")
    b = _Builder(pkg, tables, log, policy, manifest)
    # Built first: the first figure made carries plotly.js, and the attrition plots come first on the page.
    cohort_section = b.cohorts()
    sections: dict[str, list[Any]] = {"table1": [], "smd": [], "incidence": [], "prevalence": [], "km": [], "cox": [], "prediction": [], "cohort_method": [], "other": []}
    ids = pkg.cohort_ids
    for a in pkg.analyses:
        p = a.table_prefix()
        if a.type in ("characterization", "compare_cohorts"):
            sections["table1"].append(b.table1(p))
            if a.type == "compare_cohorts":
                s = b.smd(p, ids[a.target], ids[a.comparator])
                if s:
                    sections["smd"].append(s)
        elif a.type == "incidence":
            tar = ["tar"] if a.settings.get("time_at_risk") else []  # a dimension: one level per window
            sections["incidence"].append(b.incidence(p, [*tar, *a.settings["by"]], float(a.settings["alpha"])))
        elif a.type == "prevalence":
            d = b.data(p)
            if d is not None and len(d):
                dims = [c for c in ("period", "age_group", "sex") if c in d.columns]
                d = d.sort_values(dims, key=lambda s: s.astype(str).replace(TOTAL, "~"))
            sections["prevalence"].append({"title": p, "table": _table_html(d if d is not None else pd.DataFrame())})
        elif a.type == "kaplan_meier":
            sections["km"].append(b.km(p, a.alpha))
        elif a.type == "cox":
            sections["cox"].append(b.cox(p, a.target, a.comparator))
        elif a.type == "prediction":
            sections["prediction"].append(b.prediction(p))
        elif a.type == "cohort_method":
            from mercia.analyses.cohort_method_plots import cohort_method_section

            sections["cohort_method"].append(
                cohort_method_section(b.data, p, [*a.outcomes], b.plots.html, _table_html)
            )
        elif a.type == "cohort_entries":
            d = b.data(p)
            sections["other"].append({"title": p, "table": _table_html(d if d is not None else pd.DataFrame())})
    # One block per analysis: the rules that shaped its population, from its released attrition table.
    populations = {a.table_prefix(): b.population(a.table_prefix()) for a in pkg.analyses}
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mercia.study", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    # The site line comes from the manifest's released summary only (persons through release(), the
    # observation span in whole years): no path, no row count, no date.
    summary = manifest.get("site_summary") or {}
    versions = manifest.get("versions", {})
    persons = summary.get("persons")
    years = summary.get("observation_years")
    return env.get_template("report.html.j2").render(
        study=pkg.name,
        description=pkg.spec.description,
        package_hash=pkg.content_hash,
        site=manifest.get("site"),
        policy=policy.rule_summary(),
        cdm={
            "cdm_version": versions.get("cdm") or "—",
            "persons": _fmt(persons) if persons is not None else "— (suppressed)",
            "observation": f"{years} years" if years is not None else "—",
        },
        cohorts=cohort_section,
        notes={where: [n["text"] for n in items] for where, items in manifest.get("notes", {}).items()},
        sections=sections,
        populations=populations,
        disclosure=b.disclosure(),
        versions=manifest.get("versions", {}),
    )
