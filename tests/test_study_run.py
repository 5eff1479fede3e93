"""Running a study on a small synthetic site: the files it writes, and that only released numbers leave."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mercia.analyses.notes import Note, NoteCode
from mercia.cdm import Cdm
from mercia.disclosure import OPENSAFELY, ReleasedTable, ResultTable
from mercia.errors import DisclosureError, StudyError
from mercia.study import StudyPackage, run_study, write_released
from mercia.study import runner as runner_mod
from mercia.synth import DEFAULT_SITES, generate_site

FIRST_PERSON_ID = 7_300_001  # distinctive 7-digit ids, so a leak into the report would be visible
PERSONS = 4000


def cond(name: str, key: str, *, keep_all: bool = False, **event: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": name,
        "concepts": {"c": {"name": name, "conditions": [key]}},
        "entry": [{"condition": "c", **event}],
    }
    if keep_all:
        d.update(keep="all", exit={"after": {"days": 1}})
    return d


STUDY: dict[str, Any] = {
    "name": "Hypertension vs diabetes and pneumonia",
    "cohorts": {
        "htn": {"definition": cond("Hypertension", "hypertension", first=True)},
        "t2d": {"definition": cond("Type 2 diabetes", "type2_diabetes", first=True)},
        "nobody": {"definition": cond("Infants with prostate cancer", "prostate_cancer", age={"max": 0})},
        "pneumonia": {"definition": cond("Pneumonia", "pneumonia", keep_all=True)},
    },
    "analyses": [
        {"type": "compare_cohorts", "name": "table1", "target": "htn", "comparator": "t2d",
         "settings": {"domains": ["condition", "drug"]}},
        {"type": "characterization", "name": "empty_table1", "cohorts": ["nobody"]},
        {"type": "incidence", "name": "inc", "outcome": "pneumonia", "denominator": "htn",
         "settings": {"by": ["age_group", "calendar_year"]}},
        {"type": "incidence", "name": "inc_tar", "outcome": "pneumonia", "denominator": "htn",
         "settings": {"by": ["sex"], "time_at_risk": [{"end_with": "start", "end_offset": 365},
                                                       {"start_offset": 366, "end_with": "start", "end_offset": 1095}]}},
        {"type": "prevalence", "name": "prev", "outcome": "t2d", "settings": {"points": ["2020-01-01"]}},
        {"type": "cohort_entries", "name": "entries", "cohorts": ["htn", "t2d"]},
        {"type": "kaplan_meier", "name": "km", "targets": ["htn", "t2d"], "outcome": "pneumonia"},
        # 'nobody' is below the threshold: these two release only the 'below threshold' note.
        {"type": "kaplan_meier", "name": "km_nobody", "targets": ["htn", "nobody"], "outcome": "pneumonia"},
        {"type": "cox", "name": "cox", "target": "htn", "comparator": "t2d", "outcome": "pneumonia"},
        {"type": "cox", "name": "cox_empty", "target": "nobody", "comparator": "t2d", "outcome": "pneumonia"},
    ],
    "disclosure": "opensafely",
}
TINY: dict[str, Any] = {
    "name": "tiny",
    "cohorts": {"htn": {"definition": cond("Hypertension", "hypertension", first=True)}},
    "analyses": [{"type": "cohort_entries", "cohorts": ["htn"]}],
}
# Every count column an analysis writes; a released one is suppressed (missing), 0, or above the
# threshold and a multiple of the rounding base.
COUNT_COLUMNS = {
    "n", "n_cohort", "persons", "entries", "n_events", "n_persons", "n_cases", "n_entries", "n_target",
    "n_comparator", "n_at_risk", "n_censored", "n_nonzero", "n_events_nonzero", "min_level_count",
}


@pytest.fixture(scope="module")
def site() -> Iterator[Cdm]:
    cdm = Cdm.open(None)
    generate_site(cdm, persons=PERSONS, seed=11, profile=DEFAULT_SITES[0], first_person_id=FIRST_PERSON_ID)
    yield cdm
    cdm.close()


@pytest.fixture(scope="module")
def study(site: Cdm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    written: list[Any] = []
    real = runner_mod.write_released

    def spy(table: Any, results_dir: Path) -> list[Path]:
        written.append(table)
        return real(table, results_dir)

    out = tmp_path_factory.mktemp("study") / "out"
    pkg = StudyPackage.from_dict(STUDY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner_mod, "write_released", spy)
        steps: list[tuple[str, int, int]] = []
        run = run_study(pkg, site, out, site_policy="opensafely", site="northgate",
                        progress=lambda s, d, n: steps.append((s, d, n)))
    return {"run": run, "out": out, "pkg": pkg, "written": written, "steps": steps}


def test_writes_the_expected_files(study: dict[str, Any]) -> None:
    out: Path = study["out"]
    assert sorted(p.name for p in out.iterdir()) == [
        "disclosure.json", "manifest.json", "package.json", "report.html", "results",
    ]
    names = set(study["run"].tables)
    assert {"cohort_counts", "attrition_htn", "table1_demographics", "table1_smd", "inc", "prev", "entries",
            "km", "km_summary", "cox", "cox_ph_test"} <= names
    # Analyses using a cohort below the threshold release no table at all.
    assert not any(n.startswith(("cox_empty", "km_nobody", "empty_table1")) for n in names)
    files = sorted(p.name for p in (out / "results").iterdir())
    assert files == sorted([f"{n}.json" for n in names] + [f"{n}.parquet" for n in names])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["package_hash"] == study["pkg"].content_hash == study["run"].package_hash
    assert manifest["site"] == "northgate"
    assert manifest["policy"]["name"] == "opensafely"
    # The site summary passed release() (opensafely rounds to 5); no paths, row counts, dates or timings.
    assert manifest["site_summary"]["persons"] == PERSONS
    assert isinstance(manifest["site_summary"]["observation_years"], int)
    assert set(manifest) == set(runner_mod.MANIFEST_KEYS)
    assert {"mercia", "duckdb", "python", "cdm"} <= set(manifest["versions"])
    assert {"cohorts", "table1", "cox", "report", "total"} <= set(study["run"].timings)
    assert json.loads((out / "package.json").read_text()) == study["pkg"].canonical()
    assert study["steps"][-1][1] == study["steps"][-1][2]  # the progress reached its end
    assert not list(out.parent.glob(".*partial*"))  # the staging folder was renamed, not left behind


def test_every_result_file_is_a_release_in_the_disclosure_log(study: dict[str, Any]) -> None:
    out: Path = study["out"]
    assert study["written"] and all(isinstance(t, ReleasedTable) for t in study["written"])
    written = {t.name for t in study["written"]}
    log = json.loads((out / "disclosure.json").read_text())
    released = {e["table"] for e in log["entries"] if e["rule"] == "policy"}
    stems = {p.stem for p in (out / "results").iterdir()}
    assert stems == written == released
    assert all(e["outcome"] in ("released", "blocked") for e in log["entries"] if e["rule"] == "policy")
    # The log that leaves does not tell primary from secondary suppression.
    assert not any(e["rule"].startswith("primary") for e in log["entries"])


def test_every_released_count_passes_the_policy(study: dict[str, Any]) -> None:
    base, small = OPENSAFELY.rounding_base, OPENSAFELY.suppress_up_to
    checked = 0
    for path in sorted((study["out"] / "results").glob("*.parquet")):
        df = pd.read_parquet(path)
        for col in COUNT_COLUMNS & set(df.columns):
            for v in pd.to_numeric(df[col], errors="coerce").dropna():
                assert v == 0 or (v > small and v % base == 0), f"{path.stem}.{col} = {v}"
                checked += 1
        meta = json.loads(path.with_suffix(".json").read_text())
        for key in ("n_obs", "n_events"):
            v = (meta.get("model_info") or {}).get(key)
            assert v is None or v == 0 or (v > small and v % base == 0), f"{path.stem} {key} = {v}"
    assert checked > 100


def test_empty_cohorts_are_reported_not_crashed(study: dict[str, Any]) -> None:
    run = study["run"]
    counts = run.tables["cohort_counts"].data.set_index("cohort")
    assert counts.loc["htn", "persons"] > 100
    below = Note(NoteCode.BELOW_THRESHOLD, cohort="nobody")
    assert list(run.notes["cohorts"]) == [below]
    for name in ("cox_empty", "km_nobody", "empty_table1"):
        assert list(run.notes[name]) == [below], name
        meta = next(a for a in run.manifest["analyses"] if a["name"] == name)
        assert meta["status"] == "below_threshold" and meta["tables"] == [], name
    report = study["out"].joinpath("report.html").read_text()
    assert below.text in report


def _without_library(html: str) -> str:
    # plotly.js (the library, a few MB of minified code) is not data; the figures' own scripts stay.
    return re.sub(r"<script[^>]*>\s*/\*\*\s*\* plotly\.js v.*?</script>", "", html, count=1, flags=re.S)


def test_report_sections_plots_and_no_network(study: dict[str, Any]) -> None:
    html = (study["out"] / "report.html").read_text()
    for heading in ("Cohorts and attrition", "Attrition: htn", "Table 1", "Covariate balance",
                    "Standardized mean differences", "incidence by age group", "incidence by calendar year",
                    "Kaplan-Meier (95% CI)", "Number at risk", "Disclosure control",
                    study["pkg"].content_hash):
        assert heading in html, heading
    assert html.count("plotly.js v") >= 1
    rest = _without_library(html)
    assert "plotly.js v" not in rest  # the library is embedded once
    # An attrition plot per cohort (4), SMD, incidence by age and by year, incidence by sex with one series
    # per time-at-risk window, KM. No Cox forest plot: the
    # comparator arm holds a handful of events at 4,000 persons, so the model is released whole or not
    # at all (model_support) and here not at all (tests/test_attack_models.py shows a released one).
    cox = study["run"].tables["cox"].data
    assert cox["coef"].isna().all() and cox["min_level_count"].isna().all()
    assert "hazard ratios (95% CI)" not in html
    assert rest.count("Plotly.newPlot") == 9
    assert "inc_tar: incidence by sex" in rest
    # plotly.js comes before the first figure that uses it.
    assert html.index("plotly.js v") < html.index("Plotly.newPlot")
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|@import|<img[^>]+src=\"?http", html)


def test_report_shows_continuous_smds_from_released_means(study: dict[str, Any]) -> None:
    """Age (and measurement values, when the package asks for them) enter the balance plot with
    (m1 - m2) / sqrt((s1^2 + s2^2) / 2) computed from the released means and SDs only."""
    from mercia.analyses.characterization import smd_continuous
    from mercia.report.study import StudyReport
    from mercia.study.kinds.compare_cohorts import continuous_smd

    run = study["run"]
    html = (study["out"] / "report.html").read_text()
    assert "Continuous covariates: released means and SDs" in html
    assert "index · age (years)" in html
    ids = study["pkg"].cohort_ids
    age = run.tables["table1_age"].data.set_index("cohort_id")
    t, c = age.loc[ids["htn"]], age.loc[ids["t2d"]]
    expected = float(smd_continuous(t["age_mean"], t["age_sd"], c["age_mean"], c["age_sd"]))
    r = StudyReport(study["pkg"], run.tables, run.log, run.policy, run.manifest)
    got = continuous_smd(r, "table1", ids["htn"], ids["t2d"]).set_index("label")
    assert got.loc["index · age (years)", "smd"] == pytest.approx(expected, rel=1e-12)


def test_continuous_smd_skips_withheld_means() -> None:
    """A measurement mean withheld by the magnitude rules (too few contributors in one cohort) has no
    SMD; the others are computed from what was released."""
    from mercia.disclosure import DisclosureLog, release
    from mercia.report.study import StudyReport
    from mercia.study.kinds.compare_cohorts import continuous_smd

    pkg = StudyPackage.from_dict(
        {"name": "two", "cohorts": {"a": {"definition": cond("A", "hypertension")},
                                    "b": {"definition": cond("B", "type2_diabetes")}},
         "analyses": [{"type": "cohort_entries", "cohorts": ["a", "b"]}]}
    )
    a, b = pkg.cohort_ids["a"], pkg.cohort_ids["b"]
    tops = ["top1", "top2", "top3"]
    meas = pd.DataFrame({
        "cohort_id": [a, b, a, b], "window": ["w"] * 4, "concept_id": [1, 1, 2, 2],
        "concept_name": ["hba1c", "hba1c", "ldl", "ldl"], "unit_concept_id": [0] * 4,
        "n": [400, 300, 500, 4], "mean": [50.0, 55.0, 3.0, 3.5], "sd": [10.0, 12.0, 1.0, 1.1],
        "top1": [90.0, 95.0, 8.0, 5.0], "top2": [89.0, 94.0, 7.5, 4.9], "top3": [88.0, 93.0, 7.0, 4.8],
    })
    log = DisclosureLog()
    released = {
        "t1_measurements": release(
            ResultTable(name="t1_measurements", kind="magnitudes", data=meas,
                        dimensions=["cohort_id", "window", "concept_id", "concept_name", "unit_concept_id"],
                        n_column="n", magnitude_columns=["mean", "sd"],
                        magnitude_statistic={"mean": "mean", "sd": "mean"},
                        top_columns={"mean": tops, "sd": tops}),
            OPENSAFELY, log=log),
    }
    got = continuous_smd(StudyReport(pkg, released, log, OPENSAFELY, {}), "t1", a, b)
    assert list(got["label"]) == ["w · hba1c (latest value)"]
    assert got["smd"].iloc[0] == pytest.approx((50 - 55) / ((10**2 + 12**2) / 2) ** 0.5)


def test_report_disclosure_log_by_rule_is_the_public_one(study: dict[str, Any]) -> None:
    html = (study["out"] / "report.html").read_text()
    section = html.split('id="disclosure"')[1]
    assert "The log by table, rule and reason" in section
    assert "suppressed by disclosure control" in section  # suppressions merged, as in disclosure.json
    assert "primary:" not in section and ">secondary<" not in section
    assert "person-time rounded to the nearest 5" in section  # the incidence table's exposure decisions


def test_report_km_median_from_the_released_curve(study: dict[str, Any]) -> None:
    """The median and its CI in the report are read off the curve recomputed from released counts."""
    from mercia.analyses.survival import km_estimates, median_survival

    run = study["run"]
    curve = run.tables["km"].data
    html = (study["out"] / "report.html").read_text()
    assert "median (days)" in html
    cid = study["pkg"].cohort_ids["htn"]
    g = curve[curve["cohort_id"] == cid][["time", "n_at_risk", "n_events", "n_censored"]].astype(float)
    med, lo, hi = median_survival(km_estimates(g, 0.05))
    from mercia.study.kinds.kaplan_meier import median_text

    row = re.search(r"<tr><td>htn \(Hypertension\)</td>(.*?)</tr>", html.split("median (days)")[1])
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
    assert cells[-3:] == [median_text(med), median_text(lo), median_text(hi)]


def test_report_holds_no_person_ids(study: dict[str, Any], site: Cdm) -> None:
    html = _without_library((study["out"] / "report.html").read_text())
    tokens = set(re.findall(r"\d+", html))
    ids = {str(r[0]) for r in site.fetch_all("SELECT DISTINCT subject_id FROM results.cohort")}
    assert ids and not ids & tokens
    nhs = {str(r[0]) for r in site.fetch_all("SELECT person_source_value FROM person")}
    assert not nhs & tokens
    for f in (study["out"] / "results").glob("*.json"):
        assert not ids & set(re.findall(r"\d+", f.read_text())), f.name


def test_the_writer_takes_only_released_tables(tmp_path: Path) -> None:
    df = pd.DataFrame({"n": [3]})
    table = ResultTable(name="t", kind="counts", data=df, count_columns=["n"])
    for thing in (df, table, {"n": 3}):
        with pytest.raises(StudyError, match="only released tables can be written"):
            write_released(thing, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(DisclosureError, match=r"only be made by mercia\.disclosure\.release"):
        ReleasedTable(_token=object(), name="t", kind="counts", data=df, policy=OPENSAFELY, site=None,
                      status="released")
    assert not list(tmp_path.iterdir())


def test_an_existing_folder_with_content_is_refused(site: Cdm, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(StudyError, match="is not empty; choose a new folder"):
        run_study(StudyPackage.from_dict(TINY), site, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StudyError, match="is not a folder"):
        run_study(StudyPackage.from_dict(TINY), site, tmp_path / "file")


def test_an_empty_folder_is_used_and_a_failure_leaves_nothing(
    site: Cdm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    run = run_study(StudyPackage.from_dict(TINY), site, out)
    assert (out / "report.html").exists() and "cohort_entries" in run.tables

    def boom(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("report failed")

    import mercia.report.study as report_mod

    monkeypatch.setattr(report_mod, "render_report", boom)
    with pytest.raises(RuntimeError, match="report failed"):
        run_study(StudyPackage.from_dict(TINY), site, tmp_path / "failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_a_weaker_package_policy_is_refused_before_anything_runs(site: Cdm, tmp_path: Path) -> None:
    pkg = StudyPackage.from_dict({**TINY, "disclosure": {"name": "lax", "threshold": 2}})
    with pytest.raises(StudyError, match="weaker than this site's minimum"):
        run_study(pkg, site, tmp_path / "out", site_policy="opensafely")
    assert not list(tmp_path.iterdir())


def test_cli_study_run(tmp_path: Path) -> None:
    from mercia.cli import app

    db = tmp_path / "site.duckdb"
    with Cdm.open(db) as cdm:
        generate_site(cdm, persons=600, seed=3, profile=DEFAULT_SITES[0])
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(TINY))
    cli = CliRunner()
    args = ["study", "run", str(tmp_path / "study.yaml"), "--cdm", str(db), "--out", str(tmp_path / "out")]
    res = cli.invoke(app, [*args, "--site-policy", "sacro", "--site", "t"])
    assert res.exit_code == 0, res.output
    # site_persons, cohort_counts, attrition_htn and the entries table
    assert "released tables: 4" in res.output and (tmp_path / "out" / "report.html").exists()
    res = cli.invoke(app, args)
    assert res.exit_code == 1 and "is not empty" in res.output and "Traceback" not in res.output
    res = cli.invoke(app, ["study", "run", str(tmp_path / "nope.yaml"), "--cdm", str(db), "--out", "x"])
    assert res.exit_code == 1 and "not found" in res.output
    with Cdm.open(db, create=False, read_only=True) as cdm, pytest.raises(StudyError, match="open it writable"):
        run_study(StudyPackage.from_dict(TINY), cdm, tmp_path / "ro")
    assert not (tmp_path / "ro").exists()


def test_the_demo_study_is_an_example() -> None:
    from mercia.study import example_package

    pkg = example_package()
    assert pkg.cohort_ids == {"sglt2": 11, "gliclazide": 12, "hf_admission": 13}
    assert {a.type for a in pkg.analyses} >= {"compare_cohorts", "incidence", "kaplan_meier", "cox"}
    with pytest.raises(StudyError, match="no example study 'nope'"):
        example_package("nope")


def test_each_analysis_states_its_population(study: dict[str, Any]) -> None:
    """Issue 13: KM, Cox and incidence each release the persons after every rule that shaped their
    population, through release() like any count, and the report prints a line per analysis."""
    run = study["run"]
    base, small = OPENSAFELY.rounding_base, OPENSAFELY.suppress_up_to
    for name in ("inc_attrition", "km_attrition", "cox_attrition"):
        t = run.tables[name].data
        assert t["step"].iloc[0].startswith("1. persons in"), name
        for col in [c for c in t.columns if c != "step"]:
            for v in pd.to_numeric(t[col], errors="coerce").dropna():
                assert v == 0 or (v > small and v % base == 0), f"{name}.{col} = {v}"
    cox = run.tables["cox_attrition"].data
    assert cox["step"].iloc[-1] == "4. persons in both target and comparator removed"
    # Some persons have both hypertension and diabetes: the Cox arms lose them, and say so.
    assert cox["n_target"].iloc[-1] < cox["n_target"].iloc[0]
    html = (study["out"] / "report.html").read_text()
    lines = re.findall(r'<p class="population">(.*?)</p>', html)
    assert sum("persons in both target and comparator removed" in x for x in lines) == 2  # target, comparator
    assert sum("persons in the denominator cohort" in x for x in lines) == 2
    # Windows are a dimension of the released table and of the report's table, never totalled over.
    tar = run.tables["inc_tar"].data
    assert set(tar["tar"]) == {"start+0..start+365", "start+366..start+1095"} and "Total" in set(tar["sex"])
    section = html[html.index("<h3>inc_tar</h3>"):]
    assert "<th>tar</th>" in section[:section.index("</table>")]
    assert sum(x.startswith("Population (htn") for x in lines) == 1  # km: one line per target cohort
