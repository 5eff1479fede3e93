"""How the reports show released numbers: whole numbers without decimals, age groups in natural order,
medians not reached said in words, numbers at risk as ranges between released steps, suppressed strata
marked in the plots, readable log-axis ticks, cohort names instead of ids, no empty sections, and the
pooled report's forest plot. (tests/test_report_browser.py looks at whole reports in Chromium.)"""

from __future__ import annotations

import base64
import json
import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mercia.disclosure import OPENSAFELY, DisclosureLog, ResultTable, release
from mercia.report.html import table_html
from mercia.report.study import StudyReport, render_report
from mercia.study import StudyPackage
from mercia.study.kinds.characterization import table1
from mercia.study.kinds.cox import cox
from mercia.study.kinds.incidence import incidence_tables
from mercia.study.kinds.kaplan_meier import km

pytest.importorskip("plotly")

TOTAL = "Total"


def cond(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "concepts": {"c": {"name": name, "conditions": [key]}},
            "entry": [{"condition": "c", "first": True}]}


PKG = StudyPackage.from_dict({
    "name": "formats",
    "cohorts": {"htn": {"definition": cond("Hypertension", "hypertension")},
                "t2d": {"definition": cond("Type 2 diabetes", "type2_diabetes")}},
    "analyses": [{"type": "cohort_entries", "name": "new_users_by_year", "cohorts": ["htn", "t2d"]}],
})


def builder(tables: dict[str, pd.DataFrame], **extra: Any) -> StudyReport:
    """A report builder over stand-ins of released tables (the formatting, not the release, is tested)."""
    wrapped = {n: SimpleNamespace(data=d, status="released", model_info=None, **extra) for n, d in tables.items()}
    return StudyReport(PKG, wrapped, DisclosureLog(), OPENSAFELY, {})  # type: ignore[arg-type]


def cells(html: str) -> list[list[str]]:
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", html)]
    return [r for r in rows if r]  # the header row has no <td>


def _decode(v: Any) -> Any:
    """plotly's JSON with its typed arrays ({"dtype": "f8", "bdata": base64}) read back as lists."""
    if isinstance(v, dict):
        if set(v) >= {"dtype", "bdata"}:
            return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
        return {k: _decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode(x) for x in v]
    return v


def figures(html: str) -> list[dict[str, Any]]:
    """The plotly figures (data and layout) in a report fragment."""
    out = []
    for m in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{"displaylogo"', html, re.S):
        out.append({"data": _decode(json.loads(m.group(1))), "layout": _decode(json.loads(m.group(2)))})
    return out


def test_whole_number_columns_have_no_decimals() -> None:
    """Ids and days came out as '3.000' and '1118455.000' in the cohort-method tables."""
    df = pd.DataFrame({"outcome_id": [3.0, 4.0], "target_days": [1118455.0, np.nan], "rr": [1.5, 0.25],
                       "concept_id": [46271022, 320128], "target_subjects": [500.0, 20.0]})
    rows = cells(table_html(df, 3))
    assert rows[0] == ["3", "1,118,455", "1.500", "46271022", "500"]
    assert rows[1] == ["4", "—", "0.250", "320128", "20"]


def test_age_groups_sort_as_numbers_with_the_total_last() -> None:
    levels = ["100-104", "15-19", "5-9", "20-24", "95-99"]
    demo = pd.DataFrame({"cohort_id": PKG.cohort_ids["htn"], "variable": "age_group", "level": levels,
                         "n": [10, 20, 30, 40, 50], "percent": [1.0, 2.0, 3.0, 4.0, 5.0]})
    html = table1(builder({"t1_demographics": demo}), "t1")["table"]
    shown = [r[1] for r in cells(html)]
    assert shown == ["5-9", "15-19", "20-24", "95-99", "100-104"]
    inc = pd.DataFrame({"age_group": ["100-104", "15-19", TOTAL, "65+", "40-64"], "n_events": [10, 20, 60, 15, 15],
                        "person_years": [100.0, 200.0, 700.0, 200.0, 200.0]})
    got = incidence_tables(builder({"inc": inc}), "inc", ["age_group"], 0.05)
    assert [r[0] for r in cells(got["table"])] == ["15-19", "40-64", "65+", "100-104", TOTAL]
    (fig,) = figures(got["plots"][0])
    assert fig["layout"]["xaxis"]["ticktext"] == ["15-19", "40-64", "65+", "100-104"]


def _curve(cid: int) -> pd.DataFrame:
    # A released curve: day 0, then two pooled steps (each risk set is where its pool starts).
    return pd.DataFrame({"cohort_id": cid, "time": [0.0, 300.0, 700.0], "n_at_risk": [600, 600, 290],
                         "n_events": [0, 10, 10], "n_censored": [0, 300, 155]})


def test_km_median_not_reached_is_said_in_words_and_at_risk_is_a_range() -> None:
    cid = PKG.cohort_ids["htn"]
    summary = pd.DataFrame({"cohort_id": [cid], "n_persons": [600], "n_events": [20]})
    got = km(builder({"km": _curve(cid), "km_summary": summary}), "km", 0.05)
    assert "∞" not in got["summary"]
    assert cells(got["summary"])[0][-3:] == ["not reached"] * 3
    risk = dict(zip(re.findall(r"<th[^>]*>(.*?)</th>", got["risk"]), cells(got["risk"])[0], strict=True))
    # day 0 exact; inside the first pooled step (0, 300]: between what remains after it (290) and
    # before it (600), not 600 carried forward; inside the second: 125 to 290; after the last: at most 125.
    assert risk["day 0"] == "600"
    assert risk["day 140"] == "290–600"
    assert risk["day 420"] == "125–290"
    assert risk["day 700"] == "125–290"


def test_incidence_plot_marks_suppressed_strata_and_zero_events() -> None:
    """A suppressed year is a grey cross, not a gap; a year with no events is a hollow marker at 0 with
    no whisker, and its upper bound (set by person-time alone) does not set the axis."""
    years = ["2019", "2020", "2021", "2022", TOTAL]
    inc = pd.DataFrame({"calendar_year": years, "n_events": [20, np.nan, 0, 25, 45],
                        "person_years": [1000.0, np.nan, 5.0, 1000.0, 2005.0]})
    got = incidence_tables(builder({"inc": inc}), "inc", ["calendar_year"], 0.05)
    (fig,) = figures(got["plots"][0])
    by_name = {t["name"]: t for t in fig["data"]}
    crosses = by_name["suppressed (not released)"]
    assert crosses["x"] == [1.0] and crosses["y"] == [0.0]
    zero = by_name["all: no events"]
    assert zero["x"] == [2.0] and "error_y" not in zero
    main = by_name["all"]
    assert np.isnan(main["y"][2])  # no line or whisker drawn for the zero-event year
    upper_zero = 3.689 / 5.0 * 1000  # the 95% upper bound of 0 events in 5 person-years, per 1,000
    assert fig["layout"]["yaxis"]["range"][1] < upper_zero / 10


def test_incidence_by_year_has_a_series_per_age_group() -> None:
    rows = [(a, y, 12, 1000.0) for a in ("18-39", "40-64", TOTAL) for y in ("2020", "2021", TOTAL)]
    inc = pd.DataFrame(rows, columns=["age_group", "calendar_year", "n_events", "person_years"])
    got = incidence_tables(builder({"inc": inc}), "inc", ["age_group", "calendar_year"], 0.05)
    names = [t["name"] for f in figures("".join(got["plots"])) for t in f["data"]]
    assert {"age group 18-39", "age group 40-64", "all (age group total)"} <= set(names)


def test_forest_plot_ticks_are_ratios_not_mantissas() -> None:
    from mercia.report.forest import log_ticks

    for lo, hi in ((0.56, 0.94), (0.37, 5.46), (1.07, 1.16), (0.01, 50.0), (0.7, 0.72)):
        vals, text, (r0, r1) = log_ticks(lo, hi)
        assert 1.0 in vals and vals == sorted(vals) and 3 <= len(vals) <= 9, (lo, hi, text)
        assert [float(t) for t in text] == pytest.approx(vals)
        assert 10**r0 <= min(lo, 1.0) and 10**r1 >= max(hi, 1.0)
    model = pd.DataFrame({"term": ["treatment", "age"], "hr": [0.72, 1.05], "hr_lower": [0.56, 1.03],
                          "hr_upper": [0.94, 1.07]})
    b = builder({"cox": model})
    b.tables["cox"].kind = "model"
    got = cox(b, "cox", "htn", "t2d")
    (fig,) = figures(got["plot"])
    ticks = fig["layout"]["xaxis"]["ticktext"]
    assert "1" in ticks and [float(t) for t in ticks] == sorted(float(t) for t in ticks)


def test_smd_axis_labels_are_short_and_distinct() -> None:
    from mercia.study.kinds.compare_cohorts import SMD_LABEL_CHARS, unique_short

    long = "any prior · Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum (latest value)"
    labels = [long, long.replace("any prior", "-365..0"), long + " x", "index · age (years)"]
    short = unique_short(labels, SMD_LABEL_CHARS)
    assert len(set(short)) == len(short) and all(len(s) <= SMD_LABEL_CHARS + 4 for s in short)
    assert short[-1] == "index · age (years)"


def _released_entries() -> dict[str, Any]:
    ids = PKG.cohort_ids
    df = pd.DataFrame({"cohort_id": [ids["htn"], ids["htn"], ids["t2d"]], "period": ["2020", "2021", "2020"],
                       "n_persons": [40, 55, 60], "n_entries": [40, 55, 60]})
    log = DisclosureLog()
    table = release(ResultTable(name="new_users_by_year", kind="counts", data=df, dimensions=["cohort_id", "period"],
                                count_columns=["n_persons", "n_entries"]), OPENSAFELY, log=log)
    return {"tables": {"new_users_by_year": table}, "log": log}


def test_cohort_entries_show_cohort_names_and_empty_sections_are_left_out() -> None:
    r = _released_entries()
    html = render_report(PKG, r["tables"], r["log"], OPENSAFELY, {})
    section = html.split("<h3>new_users_by_year</h3>", 1)[1].split("</table>", 1)[0]
    assert "htn (Hypertension)" in section and "t2d (Type 2 diabetes)" in section
    assert "cohort_id" not in section
    for absent in ("Prediction models", "Cox models", "Kaplan-Meier", "Table 1", "Comparative cohort",
                   "in this study"):
        assert absent not in html, absent
    assert 'href="#prediction"' not in html


def test_every_report_figure_has_an_accessible_name() -> None:
    inc = pd.DataFrame({"age_group": ["18-39", TOTAL], "n_events": [10, 10], "person_years": [100.0, 100.0]})
    got = incidence_tables(builder({"inc": inc}), "inc", ["age_group"], 0.05)
    assert re.match(r'<figure class="plot" aria-label="inc: incidence by age group">', got["plots"][0])


def test_pooled_report_has_a_forest_plot_of_sites_and_pooled_estimates() -> None:
    from mercia.federation.pooling import meta_analyse
    from mercia.report.hub import render_pooled_report

    coefs, ses = [np.log(0.7), np.log(0.8), np.log(0.6)], [0.2, 0.25, 0.3]
    meta = meta_analyse(coefs, ses, sites=["a", "b", "c"], alpha=0.05, ratio=True).to_dict()
    study = {"name": "s", "hash": "h" * 64, "project": "p", "submitted_by": "r", "submitted_at": "t",
             "status": "closed"}
    html = render_pooled_report(study, [{"site": s, "status": "collected"} for s in "abc"],
                                {"tables": {"cox_adjusted": {"treatment": meta}}, "notes": []})
    assert 'aria-label="cox_adjusted: per-site and pooled ratios (95% CI)"' in html
    assert html.count("plotly.js v") == 1  # embedded once, nothing from the network
    (fig,) = figures(html)
    rows = [y for t in fig["data"] for y in t["y"]]
    assert rows == ["treatment · a", "treatment · b", "treatment · c", "treatment · pooled, fixed effect",
                    "treatment · pooled, random effect"]
    site = next(t for t in fig["data"] if t["name"] == "site")
    assert site["x"] == pytest.approx(np.exp(coefs))
