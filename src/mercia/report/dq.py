"""The data-quality dashboard: one self-contained HTML file from a check folder (`mercia dq check`) and,
optionally, a profile folder (`mercia dq profile`).

Sections, as DataQualityDashboard's viewer reads: the overview (Kahn category by context: passed, failed,
errors, not applicable, and the pass rate), the failed checks first (a table to sort and filter), a
drill-down per CDM table and field (nested <details>, each with an id to link to), and the profile's plots
(records per month per domain, persons by year of birth, observation period lengths, measurement values
by concept and unit as boxes drawn from Achilles's percentiles).

The page follows the reports' conventions (`mercia.report.html`): plotly.js embedded once, nothing
fetched from the network, every figure labelled, text escaped. Its numbers are the site's own (not
released through `mercia.disclosure`): the dashboard is for the custodian, at the site, as the check
results are.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mercia.dq.names import label as concept_label
from mercia.dq.names import read_names
from mercia.errors import ConfigError
from mercia.report.html import Plots, esc, fmt

CHECKS = "checks.parquet"
RESULTS_JSON = "dq-results.json"
CATEGORIES = ["Conformance", "Completeness", "Plausibility"]
CONTEXTS = ["Verification", "Validation"]
STATUSES = ["failed", "error", "passed", "not applicable"]
# Achilles's records-by-month analyses, one per domain (the trends plot).
MONTHLY = {220: "visit_occurrence", 420: "condition_occurrence", 620: "procedure_occurrence", 720: "drug_exposure",
           820: "observation", 1820: "measurement"}
MAX_MEASUREMENTS = 20  # measurement concepts (by unit) plotted: the most frequent


@dataclass
class DqFolder:
    checks: pd.DataFrame
    meta: dict[str, Any]  # source name, timestamps (from dq-results.json when present)
    results: pd.DataFrame | None = None  # achilles_results
    results_dist: pd.DataFrame | None = None
    analyses: pd.DataFrame | None = None
    names: dict[int, str] = field(default_factory=dict)  # concept_id -> name (concept_names.parquet)


def load_folder(check_dir: str | Path, profile_dir: str | Path | None = None) -> DqFolder:
    """Read a check folder, and a profile folder (the check folder itself when it holds a profile)."""
    folder = Path(check_dir)
    if not (folder / CHECKS).is_file():
        raise ConfigError(f"{folder} holds no {CHECKS}: give the folder `mercia dq check --out` wrote")
    checks = pd.read_parquet(folder / CHECKS)
    meta: dict[str, Any] = {}
    if (folder / RESULTS_JSON).is_file():
        js = json.loads((folder / RESULTS_JSON).read_text())
        md = (js.get("Metadata") or [{}])[0]
        meta = {"source": md.get("cdmSourceName"), "cdm_version": md.get("cdmVersion"),
                "start": js.get("startTimestamp"), "end": js.get("endTimestamp"), "time": js.get("executionTime")}
    prof = Path(profile_dir) if profile_dir is not None else folder
    out = DqFolder(checks=checks, meta=meta, names=read_names(folder, profile_dir))
    if (prof / "achilles_results.parquet").is_file():
        out.results = pd.read_parquet(prof / "achilles_results.parquet")
        dist = prof / "achilles_results_dist.parquet"
        out.results_dist = pd.read_parquet(dist) if dist.is_file() else None
        an = prof / "achilles_analyses.parquet"
        out.analyses = pd.read_parquet(an) if an.is_file() else None
    elif profile_dir is not None:
        raise ConfigError(f"{prof} holds no achilles_results.parquet: give the folder `mercia dq profile --out` wrote")
    return out


# ---- the checks ------------------------------------------------------------------------------------
def status(checks: pd.DataFrame) -> pd.Series:
    """Each check's one status: not applicable, else error, else failed, else passed."""
    s = pd.Series("passed", index=checks.index)
    s[checks.failed == 1] = "failed"
    s[checks.isError == 1] = "error"
    s[checks.notApplicable == 1] = "not applicable"
    return s


def overview(checks: pd.DataFrame) -> pd.DataFrame:
    """Category (and Total) by context (and Total): passed, failed, errors, not applicable, % passed of the
    checks decided (passed, failed or errors; DQD's viewer leaves the not applicable out of the rate)."""
    st = status(checks)
    rows = []
    for cat in [*CATEGORIES, "Total"]:
        row: dict[str, Any] = {"category": cat}
        for ctx in [*CONTEXTS, "Total"]:
            m = pd.Series(True, index=checks.index)
            if cat != "Total":
                m &= checks.category == cat
            if ctx != "Total":
                m &= checks.context == ctx
            n = {k: int((m & (st == k)).sum()) for k in STATUSES}
            decided = n["passed"] + n["failed"] + n["error"]
            row[ctx] = {**n, "pct": round(100 * n["passed"] / decided, 2) if decided else None}
        rows.append(row)
    return pd.DataFrame(rows)


def _pct(v: Any) -> str:
    return "—" if v is None or pd.isna(v) else f"{100 * float(v):.2f}"


def _threshold(v: Any) -> str:
    return "—" if v is None or pd.isna(v) else f"{float(v):g}"


def _count(v: Any) -> str:
    return "—" if v is None or pd.isna(v) else f"{int(v):,}"


def wbr(text: Any) -> str:
    """Escaped text that may wrap inside identifiers: after _ and ., and between camelCase humps."""
    return re.sub(r"([_.])|(?<=[a-z])(?=[A-Z])", lambda m: (m.group(1) or "") + "<wbr>", esc(text))


def _anchor(table: Any, field: Any = None) -> str:
    t = str(table).lower()
    return f"t-{t}" if field is None or pd.isna(field) else f"f-{t}-{str(field).lower()}"


def with_names(checks: pd.DataFrame, names: dict[int, str]) -> pd.DataFrame:
    """The checks with `conceptLabel` and `unitLabel`: 'name (id)' where the CDM named the concept, else the id."""
    out = checks.copy()
    for col, lab in (("conceptId", "conceptLabel"), ("unitConceptId", "unitLabel")):
        out[lab] = [concept_label(v, names) for v in out[col]] if col in out.columns else ""
    return out


def _concept(row: Any) -> str:
    parts = []
    if getattr(row, "conceptLabel", ""):
        parts.append(f"concept {row.conceptLabel}")
    if getattr(row, "unitLabel", ""):
        parts.append(f"unit {row.unitLabel}")
    return ", ".join(parts)


def _where(row: Any) -> str:
    field = row.cdmFieldName if row.cdmFieldName is not None and not pd.isna(row.cdmFieldName) else None
    text = str(row.cdmTableName) + (f".{field}" if field else "")
    concept = _concept(row)
    link = f'<a href="#{esc(_anchor(row.cdmTableName, field))}">{wbr(text)}</a>'
    return link + (f" <span class=concept>({esc(concept)})</span>" if concept else "")


def _sortable(head: list[tuple[str, bool]], rows: list[list[tuple[str, Any, bool]]], cls: str, label: str) -> str:
    """A table whose headers are buttons that sort it (keyboard usable); each cell is (html, sort key,
    numeric)."""
    th = "".join(f'<th{" class=num" if n else ""} aria-sort="none"><button type="button" data-col="{i}"'
                 f'{" data-num" if n else ""}>{esc(h)}</button></th>' for i, (h, n) in enumerate(head))
    body = []
    for r in rows:
        cells = "".join(f'<td{" class=num" if n else ""} data-v="{esc("" if k is None else k)}">{h}</td>'
                        for h, k, n in r)
        body.append(f"<tr>{cells}</tr>")
    return (f'<table class="{cls} sortable" aria-label="{esc(label)}"><thead><tr>{th}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _num_key(v: Any) -> Any:
    return None if v is None or pd.isna(v) else float(v)


def failed_table(checks: pd.DataFrame) -> str:
    st = status(checks)
    bad = checks[st.isin(["failed", "error"])].copy()
    bad["status_"] = st[bad.index]
    if bad.empty:
        return '<p class="empty">No check failed.</p>'
    bad = bad.sort_values(["pctViolatedRows"], ascending=False, na_position="first", kind="stable")
    head = [("status", False), ("check", False), ("category", False), ("context", False), ("where", False),
            ("violated rows", True), ("rows checked", True), ("% violated", True), ("threshold %", True)]
    rows = []
    for r in bad.itertuples():
        rows.append([(f'<span class="st {r.status_}">{esc(r.status_)}</span>', r.status_, False),
                     (f'<span title="{esc(r.checkDescription or "")}">{wbr(r.checkName)}</span>', r.checkName, False),
                     (esc(f"{r.category} · {r.subcategory}" if r.subcategory else r.category), r.category, False),
                     (esc(r.context), r.context, False),
                     (_where(r), f"{r.cdmTableName}.{r.cdmFieldName or ''}", False),
                     (_count(r.numViolatedRows), _num_key(r.numViolatedRows), True),
                     (_count(r.numDenominatorRows), _num_key(r.numDenominatorRows), True),
                     (_pct(r.pctViolatedRows), _num_key(r.pctViolatedRows), True),
                     (_threshold(r.thresholdValue), _num_key(r.thresholdValue), True)])
    return _sortable(head, rows, "failed", "Failed checks")


def _checks_table(df: pd.DataFrame, st: pd.Series, label: str) -> str:
    head = [("status", False), ("check", False), ("category, context", False), ("concept", False),
            ("violated rows", True), ("rows checked", True), ("% violated", True), ("threshold %", True),
            ("description or note", False)]
    order = {s: i for i, s in enumerate(STATUSES)}
    df = df.assign(status_=st[df.index]).sort_values("status_", key=lambda s: s.map(order), kind="stable")
    rows = []
    for r in df.itertuples():
        note = r.notApplicableReason if r.status_ == "not applicable" else (
            r.error if r.status_ == "error" else r.checkDescription)
        rows.append([(f'<span class="st {r.status_.replace(" ", "-")}">{esc(r.status_)}</span>', r.status_, False),
                     (wbr(r.checkName), r.checkName, False),
                     (esc(f"{r.category}, {r.context}"), f"{r.category}, {r.context}", False),
                     (esc(_concept(r)), _concept(r), False),
                     (_count(r.numViolatedRows), _num_key(r.numViolatedRows), True),
                     (_count(r.numDenominatorRows), _num_key(r.numDenominatorRows), True),
                     (_pct(r.pctViolatedRows), _num_key(r.pctViolatedRows), True),
                     (_threshold(r.thresholdValue), _num_key(r.thresholdValue), True),
                     (wbr(note or ""), note or "", False)])
    return _sortable(head, rows, "checks", label)


def _summary_counts(st: pd.Series) -> str:
    n = st.value_counts()
    parts = [f'<span class="st {s.replace(" ", "-")}">{int(n.get(s, 0)):,} {esc(s)}</span>'
             for s in STATUSES if n.get(s, 0)]
    return " ".join(parts)


def drilldown(checks: pd.DataFrame) -> str:
    """Per CDM table a <details> (tables with failures first), inside it the table-level checks and one
    <details> per field."""
    st = status(checks)
    bad = st.isin(["failed", "error"])
    tables = checks.cdmTableName.astype(str)
    order = sorted(tables.unique(), key=lambda t: (-int(bad[tables == t].sum()), t))
    out = []
    for t in order:
        sub = checks[tables == t]
        field = sub.cdmFieldName.where(sub.cdmFieldName.notna(), None)
        parts = [f'<details id="{esc(_anchor(t))}" class="table"><summary><span class=name>{esc(t)}</span> '
                 f'{len(sub):,} checks: {_summary_counts(st[sub.index])}</summary>']
        top = sub[field.isna()]
        if len(top):
            parts.append(_checks_table(top, st, f"{t}: table checks"))
        fields = sorted(field.dropna().unique(), key=lambda f: (-int(bad[sub.index[field == f]].sum()), f))
        for f in fields:
            fs = sub[field == f]
            parts.append(f'<details id="{esc(_anchor(t, f))}" class="field"><summary><span class=name>{esc(f)}'
                         f'</span> {len(fs):,} checks: {_summary_counts(st[fs.index])}</summary>'
                         f'{_checks_table(fs, st, f"{t}.{f}")}</details>')
        parts.append("</details>")
        out.append("".join(parts))
    return "\n".join(out)


def overview_html(checks: pd.DataFrame) -> str:
    """The overview as a table: per category (and in total), per context and in total."""
    ov = overview(checks)
    ctxs = [*CONTEXTS, "Total"]
    cols = [("passed", "Pass"), ("failed", "Fail"), ("error", "Error"), ("not applicable", "N/A"), ("pct", "% Pass")]
    head = "<th>category</th><th>context</th>" + "".join(f"<th class=num>{label}</th>" for _, label in cols)
    body = []
    for row in ov.itertuples(index=False):
        for j, c in enumerate(ctxs):
            d = getattr(row, c)
            cells = [f'<th scope=rowgroup rowspan={len(ctxs)}>{esc(row.category)}</th>'] if j == 0 else []
            cells.append(f"<th scope=row>{esc(c)}</th>")
            cells += [f"<td class=num>{d[k]:,}</td>" for k, _ in cols[:-1]]
            cells.append(f"<td class=num>{'—' if d['pct'] is None else format(d['pct'], '.2f')}</td>")
            total = row.category == "Total" or c == "Total"
            body.append(f'<tr{" class=total" if total else ""}>{"".join(cells)}</tr>')
    return (f'<table class="overview" aria-label="Overview"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


# ---- the profile's plots ---------------------------------------------------------------------------
def _month_dates(s: pd.Series) -> pd.Series:
    m = pd.to_numeric(s, errors="coerce").astype("Int64")
    return pd.to_datetime({"year": m // 100, "month": m % 100, "day": 1})


def records_by_month(results: pd.DataFrame) -> pd.DataFrame:
    """domain, month (first day), records: Achilles's x20 analyses."""
    r = results[results.analysis_id.isin(list(MONTHLY))]
    out = pd.DataFrame({"domain": r.analysis_id.map(MONTHLY), "month": _month_dates(r.stratum_1),
                        "records": r.count_value.astype("int64")})
    return out.sort_values(["domain", "month"], kind="stable").reset_index(drop=True)


def records_by_month_figure(results: pd.DataFrame) -> Any:
    import plotly.graph_objects as go

    df = records_by_month(results)
    fig = go.Figure()
    for domain, g in df.groupby("domain", sort=True):
        fig.add_trace(go.Scatter(x=g.month, y=g.records, mode="lines", name=str(domain)))
    fig.update_layout(title="Records per month, by domain", xaxis_title="month of the record's start date",
                      yaxis_title="records", height=420, margin={"l": 60, "r": 20, "t": 50, "b": 50},
                      legend={"orientation": "h", "y": -0.2})
    return fig


def birth_years(results: pd.DataFrame) -> pd.DataFrame:
    r = results[results.analysis_id == 3]
    out = pd.DataFrame({"year_of_birth": pd.to_numeric(r.stratum_1).astype("int64"),
                        "persons": r.count_value.astype("int64")})
    return out.sort_values("year_of_birth").reset_index(drop=True)


def birth_years_figure(results: pd.DataFrame) -> Any:
    import plotly.graph_objects as go

    df = birth_years(results)
    fig = go.Figure(go.Bar(x=df.year_of_birth, y=df.persons, name="persons", marker_color="#1f3b73"))
    fig.update_layout(title="Persons by year of birth", xaxis_title="year of birth", yaxis_title="persons",
                      height=360, margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


_BOX = ["count_value", "min_value", "p10_value", "p25_value", "median_value", "p75_value", "p90_value", "max_value",
        "avg_value"]


def _box(name: str, row: Any, **kw: Any) -> Any:
    """A box drawn from Achilles's percentiles: box from the 25th to the 75th, whiskers at the 10th and
    90th, the mean dashed."""
    import plotly.graph_objects as go

    return go.Box(name=name, q1=[row.p25_value], median=[row.median_value], q3=[row.p75_value],
                  lowerfence=[row.p10_value], upperfence=[row.p90_value], mean=[row.avg_value],
                  orientation="h", boxpoints=False, marker_color="#1f3b73", showlegend=False, **kw)


def observation_lengths(dist: pd.DataFrame) -> pd.DataFrame:
    return dist.loc[dist.analysis_id == 105, _BOX].reset_index(drop=True)


def observation_length_figure(dist: pd.DataFrame) -> Any:
    import plotly.graph_objects as go

    row = next(observation_lengths(dist).itertuples())
    fig = go.Figure(_box("first observation period", row, y=["first observation period"]))
    fig.update_layout(title="Length of the first observation period (days)", xaxis_title="days", height=220,
                      margin={"l": 160, "r": 20, "t": 50, "b": 50})
    return fig


def measurement_values(dist: pd.DataFrame, names: dict[int, str] | None = None) -> pd.DataFrame:
    """The most frequent measurement concepts by unit (Achilles 1815), most frequent first; each id as
    'name (id)' where the CDM named it."""
    d = dist[dist.analysis_id == 1815]
    d = d.sort_values(["count_value", "stratum_1", "stratum_2"], ascending=[False, True, True], kind="stable")
    d = d.head(MAX_MEASUREMENTS)
    return pd.DataFrame({"measurement_concept_id": [concept_label(v, names or {}) for v in d.stratum_1],
                         "unit_concept_id": [concept_label(v, names or {}) for v in d.stratum_2],
                         **{c: d[c].to_numpy() for c in _BOX}}).reset_index(drop=True)


def measurement_figure(dist: pd.DataFrame, names: dict[int, str] | None = None) -> Any:
    from plotly.subplots import make_subplots

    df = measurement_values(dist, names)
    def short(v: str, width: int) -> str:
        """A long name shortened (whole words, then its id) to fit the plot; the table below has it whole."""
        name, _, cid = v.rpartition(" (")
        return v if v.isdigit() or len(name) <= width else f"{textwrap.shorten(name, width, placeholder='…')} ({cid}"

    titles = [f"{'concept ' if c.isdigit() else ''}{short(c, 48)}, unit {short(u, 32) if u else 'none'}"
              for c, u in zip(df.measurement_concept_id, df.unit_concept_id, strict=True)]
    height = 100 + 115 * len(df)
    spacing = min(55 / (height - 100), 1 / max(len(df) - 1, 1))  # room for a row's ticks and the next title
    fig = make_subplots(rows=len(df), cols=1, subplot_titles=titles, vertical_spacing=spacing)
    for i, (name, row) in enumerate(zip(titles, df.itertuples(), strict=True)):
        fig.add_trace(_box(name, row, y=[""]), row=i + 1, col=1)
    fig.update_layout(title="Measurement values, by concept and unit", height=height,
                      margin={"l": 20, "r": 20, "t": 70, "b": 30})
    fig.update_annotations(font_size=12)
    return fig


def _dist_table(df: pd.DataFrame) -> str:
    cols = {"count_value": "values", "min_value": "min", "p10_value": "p10", "p25_value": "p25",
            "median_value": "median", "p75_value": "p75", "p90_value": "p90", "max_value": "max", "avg_value": "mean"}
    ids = [c for c in df.columns if c.endswith("_concept_id")]
    head = "".join(f"<th>{esc(c.replace('_', ' '))}</th>" for c in ids) + "".join(f"<th class=num>{v}</th>" for v in cols.values())
    body = []
    for r in df.itertuples(index=False):
        d = r._asdict()
        cells = "".join(f"<td>{esc(d[c])}</td>" for c in ids)
        cells += "".join(f"<td class=num>{fmt(d[c], 0) if c == 'count_value' else _g(d[c])}</td>" for c in cols)
        body.append(f"<tr>{cells}</tr>")
    return f'<table class="dist"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _g(v: Any) -> str:
    """A distribution's value: as stored, to 6 significant digits."""
    return "—" if v is None or pd.isna(v) else f"{float(v):.6g}"


def profile_html(data: DqFolder, plots: Plots) -> str:
    res, dist = data.results, data.results_dist
    if res is None:
        return ('<p class="empty">No profile in this folder: run <code>mercia dq profile</code> with the same '
                "<code>--out</code>, or give its folder with <code>--profile</code>.</p>")
    parts = []
    if res.analysis_id.isin(list(MONTHLY)).any():
        parts.append(plots.html(records_by_month_figure(res)))
    else:
        parts.append('<p class="empty">Records per month: not in this profile (analyses 220-1820 absent).</p>')
    if (res.analysis_id == 3).any():
        parts.append(plots.html(birth_years_figure(res)))
    if dist is not None and (dist.analysis_id == 105).any():
        parts.append(plots.html(observation_length_figure(dist)))
        parts.append(_dist_table(observation_lengths(dist)))
    if dist is not None and (dist.analysis_id == 1815).any():
        n = int((dist.analysis_id == 1815).sum())
        parts.append(f"<h3>Measurement values</h3><p>The {min(n, MAX_MEASUREMENTS)} most frequent of {n:,} "
                     "measurement concepts by unit (Achilles analysis 1815). Boxes from the 25th to the 75th "
                     "percentile, whiskers at the 10th and 90th, median and mean (dashed) marked.</p>")
        parts.append(plots.html(measurement_figure(dist, data.names)))
        parts.append(_dist_table(measurement_values(dist, data.names)))
    if data.analyses is not None:
        absent = data.analyses[data.analyses.status == "absent"]
        if len(absent):
            items = "".join(f"<li>{int(r.analysis_id)} {esc(r.analysis_name)}: {esc(r.reason)}</li>"
                            for r in absent.itertuples())
            parts.append(f"<h3>Analyses not run</h3><ul>{items}</ul>")
    return "\n".join(parts)


# ---- the page --------------------------------------------------------------------------------------
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1150px;
       padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.5rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1.2rem; font-size: 0.85rem; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.4rem; text-align: left; vertical-align: top; }
table.sortable { width: 100%; font-size: 0.8rem; } table.sortable td { overflow-wrap: break-word; }
table.checks td:last-child, table.checks td:nth-child(4) { overflow-wrap: anywhere; }
@media (max-width: 900px) { table.sortable { font-size: 0.75rem; }
  table.sortable td, table.sortable th { padding: 0.15rem 0.25rem; } }
table.sortable th.num, table.dist th.num { white-space: normal; }
th { background: #f2f2f2; } td.num, th.num { text-align: right; white-space: nowrap; }
table.overview tbody th { background: none; font-weight: normal; } tr.total { font-weight: 600; }
table.overview th[scope=rowgroup] { font-weight: 600; background: #f8f8f8; }
table.sortable th button { font: inherit; font-weight: 600; background: none; border: 0; padding: 0;
                           cursor: pointer; text-align: inherit; color: inherit; }
table.sortable th button::after { content: " ↕"; color: #888; }
th[aria-sort=ascending] button::after { content: " ▲"; color: #1b1b1b; }
th[aria-sort=descending] button::after { content: " ▼"; color: #1b1b1b; }
.st { padding: 0 0.3rem; border-radius: 3px; }
.st.failed, .st.error { background: #fde2e1; color: #8a1c17; } .st.passed { background: #e3f3e1; color: #1d5c1a; }
.st.not-applicable { background: #eee; color: #555; }
details { margin: 0.3rem 0; } details.table { border: 1px solid #ddd; padding: 0.3rem 0.6rem; }
details.field { margin-left: 0.6rem; } summary { cursor: pointer; } summary .name { font-weight: 600; }
.filters { display: flex; flex-wrap: wrap; gap: 0.8rem; align-items: center; margin: 0.5rem 0; }
.note { color: #5a4500; background: #fff7e6; padding: 0.3rem 0.6rem; border-left: 3px solid #e0a000; }
.concept { color: #555; } figure.plot { margin: 0.5rem 0 1rem; } nav a { margin-right: 1rem; }
:focus-visible { outline: 2px solid #1f3b73; outline-offset: 2px; }
"""

_SCRIPT = """
(function () {
  function key(td, num) { var v = td.getAttribute('data-v'); if (!num) return v;
    return v === '' ? -Infinity : parseFloat(v); }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('thead button').forEach(function (btn) {
      btn.addEventListener('click', function () {
        var th = btn.parentElement, col = +btn.dataset.col, num = btn.hasAttribute('data-num');
        var dir = th.getAttribute('aria-sort') === 'ascending' ? 'descending' : 'ascending';
        table.querySelectorAll('thead th').forEach(function (h) { h.setAttribute('aria-sort', 'none'); });
        th.setAttribute('aria-sort', dir);
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) { var x = key(a.cells[col], num), y = key(b.cells[col], num);
          var c = x < y ? -1 : x > y ? 1 : 0; return dir === 'ascending' ? c : -c; });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var text = document.getElementById('filter-text'), cat = document.getElementById('filter-category');
  function filter() {
    var q = (text.value || '').toLowerCase(), c = cat.value, shown = 0;
    document.querySelectorAll('table.failed tbody tr').forEach(function (tr) {
      var ok = tr.textContent.toLowerCase().indexOf(q) >= 0 && (!c || tr.cells[2].textContent.indexOf(c) === 0);
      tr.hidden = !ok; if (ok) shown++;
    });
    document.getElementById('filter-count').textContent = shown + ' shown';
  }
  if (text) { text.addEventListener('input', filter); cat.addEventListener('change', filter); filter(); }
  function openTarget() {
    var el = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
    for (var d = el; d; d = d.parentElement) if (d.tagName === 'DETAILS') d.open = true;
    if (el) el.scrollIntoView();
  }
  window.addEventListener('hashchange', openTarget); openTarget();
})();
"""


def render_dashboard(data: DqFolder) -> str:
    checks = with_names(data.checks.reset_index(drop=True), data.names)
    st = status(checks)
    n = {s: int((st == s).sum()) for s in STATUSES}
    plots = Plots()
    source = data.meta.get("source") or "CDM"
    run = ", ".join(f"{k} {esc(v)}" for k, v in (("started", data.meta.get("start")), ("took", data.meta.get("time")),
                                                  ("CDM", data.meta.get("cdm_version"))) if v)
    cat_opts = "".join(f'<option value="{c}">{c}</option>' for c in CATEGORIES)
    profile = profile_html(data, plots)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(source)}: data quality — Mercia</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{esc(source)}: data quality</h1>
<p>{len(checks):,} checks: <span class="st failed">{n['failed']:,} failed</span>
<span class="st error">{n['error']:,} errors</span> <span class="st passed">{n['passed']:,} passed</span>
<span class="st not-applicable">{n['not applicable']:,} not applicable</span>{f" · {run}" if run else ""}</p>
<nav><a href="#overview">Overview</a><a href="#failed">Failed checks</a><a href="#tables">By table and field</a>
<a href="#profile">Profile</a></nav>
<p class="note">These numbers describe the site's own rows, not released through disclosure control: the
dashboard is for the data custodian and stays at the site.</p>

<h2 id="overview">Overview</h2>
<p>Checks by Kahn category and context. % Pass is of the checks decided (passed, failed or errors); not
applicable checks (an empty or missing table or field, a concept the CDM does not hold) are left out of it.</p>
{overview_html(checks)}

<h2 id="failed">Failed checks</h2>
<p>A check fails when its % violated rows is above its threshold (any violated row for a threshold of 0).
Select a column's header to sort by it; a table and field link to its checks below.</p>
<div class="filters"><label>Filter <input type="search" id="filter-text" placeholder="check, table, field…"></label>
<label>Category <select id="filter-category"><option value="">all</option>{cat_opts}</select></label>
<span id="filter-count" aria-live="polite"></span></div>
{failed_table(checks)}

<h2 id="tables">By table and field</h2>
<p>Every check, per CDM table (tables with failed checks first) and per field; open one to see its checks.</p>
{drilldown(checks)}

<h2 id="profile">Profile</h2>
{profile}
<script>{_SCRIPT}</script>
</body>
</html>
"""


def write_dashboard(check_dir: str | Path, out: str | Path | None = None,
                    profile_dir: str | Path | None = None) -> Path:
    data = load_folder(check_dir, profile_dir)
    path = Path(out) if out is not None else Path(check_dir) / "dashboard.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_dashboard(data), encoding="utf-8")
    return path
