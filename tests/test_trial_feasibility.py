"""Trial feasibility on one CDM (issue 15, item 3, locally): funnel, what-if, breakdowns, incident eligibility.

The references are independent of the one-pass computation: the funnel and the what-if come from
compiling and counting separate cohorts (the trial with its first j criteria; the trial without
criterion j), the breakdowns and the monthly counts from the cohort's rows and the person table read
with plain SQL. Then the command line: its JSON shape, its report, and its one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from federation_support import make_site
from mercia.cdm import Cdm
from mercia.cli import app
from mercia.cohorts.compiler import bound, compile_cohort
from mercia.cohorts.model import CohortDefinition
from mercia.disclosure import DisclosurePolicy
from mercia.trials.feasibility import count_trial, local_feasibility, released_feasibility
from mercia.trials.source import load_trial

TRIAL = Path(__file__).parent / "data" / "trials" / "hypertension_t2d.yaml"
EXACT = DisclosurePolicy(name="exact", threshold=0, zeros_disclosive=False, rounding_base=1,
                         secondary_suppression=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_site(tmp_path_factory.mktemp("trialfeas") / "site.duckdb", persons=3000, seed=1)


def _with_rules(d: CohortDefinition, keep: list[int]) -> CohortDefinition:
    data = d.to_dict()
    rules = data["expression"]["inclusion_rules"]
    data["expression"]["inclusion_rules"] = [rules[i] for i in keep]
    return CohortDefinition.from_dict(data)


def _persons(cdm: Cdm, d: CohortDefinition) -> set[int]:
    compiled = compile_cohort(cdm, d.expression)
    q = compiled.rows_query()
    return {int(r[0]) for r in cdm.fetch_all(q, bound(q, compiled.params))}


def test_funnel_and_what_if_agree_with_separately_counted_cohorts(site: Path) -> None:
    trial = load_trial(TRIAL)
    k = len(trial.cohort.expression.inclusion_rules)
    with Cdm.open(site) as cdm:
        answer = released_feasibility(count_trial(cdm, trial.cohort), EXACT, trial=trial.name, site=None, noise=None)
        eligible = _persons(cdm, trial.cohort)
        # Entry is each person's first hypertension: one event per person, so persons left after criteria
        # 1..j are the cohort with only those criteria, and the gain of dropping j is the cohort without j.
        remaining = [len(_persons(cdm, _with_rules(trial.cohort, list(range(j + 1))))) for j in range(k)]
        gains = [len(_persons(cdm, _with_rules(trial.cohort, [i for i in range(k) if i != j]))) - len(eligible)
                 for j in range(k)]
    assert answer["eligible"] == len(eligible) > 0
    assert [f["remaining"] for f in answer["funnel"]] == remaining
    assert [w["gained"] for w in answer["what_if"]] == gains
    assert [f["criterion"] for f in answer["funnel"]] == [r.name for r in trial.cohort.expression.inclusion_rules]
    assert all(g > 0 for g in gains)  # each criterion costs someone: the check has something to compare


def test_one_pass_whatever_the_number_of_criteria(site: Path) -> None:
    """The funnel and what-if come from one mask-count read: the queries run do not grow with criteria."""
    trial = load_trial(TRIAL)
    data = trial.cohort.to_dict()
    rules = data["expression"]["inclusion_rules"]
    many = CohortDefinition.from_dict({**data, "expression": {**data["expression"], "inclusion_rules": [
        {**rules[i % len(rules)], "name": f"criterion {i}"} for i in range(12)]}})
    reads: list[int] = []
    with Cdm.open(site) as cdm:
        original = cdm.fetch_all

        def counting(*a: Any, **kw: Any) -> Any:
            reads.append(1)
            return original(*a, **kw)

        cdm.fetch_all = counting  # type: ignore[method-assign]
        count_trial(cdm, trial.cohort)
        few = len(reads)
        reads.clear()
        counts = count_trial(cdm, many)
    assert len(reads) == few == 3  # mask counts, the grouped read of the eligible, the data's end
    assert len(counts.rule_names) == 12


def test_breakdowns_and_monthly_counts_agree_with_plain_sql(site: Path) -> None:
    trial = load_trial(TRIAL)
    with Cdm.open(site) as cdm:
        counts = count_trial(cdm, trial.cohort, history_months=120)
        compiled = compile_cohort(cdm, trial.cohort.expression)
        q = compiled.rows_query()
        rows = cdm.fetch_all(q, bound(q, compiled.params))
    con = duckdb.connect(str(site), read_only=True)
    try:
        con.execute("CREATE TEMP TABLE r (subject_id BIGINT, d DATE)")
        con.executemany("INSERT INTO r VALUES (?, ?)", [(int(a), b) for a, b, _ in rows])
        ref = con.execute("""
            SELECT p.person_id, year(f.d) - p.year_of_birth, p.gender_concept_id,
                   coalesce(c.concept_name, 'Unknown'), strftime(f.d, '%Y-%m')
            FROM (SELECT subject_id, min(d) d FROM r GROUP BY 1) f JOIN person p ON p.person_id = f.subject_id
            LEFT JOIN concept c ON c.concept_id = p.race_concept_id AND c.domain_id = 'Race'""").fetchall()
        races = [n for (n,) in con.execute("SELECT concept_name FROM concept WHERE domain_id = 'Race'").fetchall()]
    finally:
        con.close()
    assert counts.eligible == len(ref) > 0
    bands = {"0-17": (0, 17), "18-29": (18, 29), "30-39": (30, 39), "40-49": (40, 49), "50-59": (50, 59),
             "60-69": (60, 69), "70-79": (70, 79), "80+": (80, 200)}
    assert counts.age == {b: sum(lo <= r[1] <= hi for r in ref) for b, (lo, hi) in bands.items()}
    assert counts.sex == {"Female": sum(r[2] == 8532 for r in ref), "Male": sum(r[2] == 8507 for r in ref),
                          "Other or unknown": sum(r[2] not in (8507, 8532) for r in ref)}
    eth: dict[str, int] = dict.fromkeys([*races, "Unknown"], 0)  # every level, with or without persons
    for r in ref:
        eth[r[3]] += 1
    assert counts.ethnicity == eth and len(races) == 4
    assert len(counts.window) == 120
    assert counts.months == {m: sum(r[4] == m for r in ref) for m in counts.window}
    assert sum(counts.months.values()) > 0


def test_local_answer_is_released_under_the_policy(site: Path) -> None:
    """Locally, as `mercia study run` does: exact counts, then the policy (opensafely: small counts
    suppressed, the rest rounded to 5)."""
    from mercia.study.package import policy_from_name

    trial = load_trial(TRIAL)
    with Cdm.open(site) as cdm:
        out = local_feasibility(cdm, trial.cohort, policy_from_name("opensafely"), trial=trial.name)
    numbers = [out["eligible"], *(f["remaining"] for f in out["funnel"]), *(w["gained"] for w in out["what_if"]),
               *(c["persons"] for cells in out["breakdowns"].values() for c in cells), *out["monthly"]["persons"]]
    assert any(v is None for v in numbers)  # a small number suppressed
    assert all(v is None or v % 5 == 0 for v in numbers)
    assert out["disclosure"]["entries"]


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_cli_json_shape_and_report(site: Path, tmp_path: Path) -> None:
    report = tmp_path / "feas.html"
    r = _run("trial", "feasibility", str(TRIAL), "--cdm", str(site), "--format", "json", "--report", str(report),
             "--history-months", "120", "--target", "20", "--consent", "0.5")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert {"trial", "eligible", "funnel", "what_if", "breakdowns", "not_applied"} <= set(out)
    assert out["trial"] == "hypertension_t2d"
    assert [set(f) for f in out["funnel"]] == [{"criterion", "remaining"}] * 3
    assert [set(w) for w in out["what_if"]] == [{"criterion", "gained"}] * 3
    assert set(out["breakdowns"]) == {"age_band", "sex", "ethnicity"}
    assert out["not_applied"] == []
    # A small site: its monthly counts are mostly suppressed, and the projection says why it has none.
    assert set(out["recruitment"]) in ({"error"}, {"model", "projection"})
    text = report.read_text()
    for section in ('id="funnel"', 'id="what-if"', 'id="breakdowns"', 'id="recruitment"', "Funnel at local"):
        assert section in text


def test_report_has_the_projection_plot_and_embeds_plotly_once(site: Path) -> None:
    from mercia.report.trial import render_feasibility_report
    from mercia.trials.recruitment import projection

    trial = load_trial(TRIAL)
    with Cdm.open(site) as cdm:
        out = local_feasibility(cdm, trial.cohort, EXACT, trial=trial.name, history_months=120,
                                not_applied=["willing to comply <script>"])
    out["recruitment"] = projection(out["monthly"], 20, 0.5)
    assert "projection" in out["recruitment"]
    text = render_feasibility_report(out)
    assert "Consented recruits at local (consent 0.5)" in text
    assert "Newly eligible persons per month at local" in text
    assert text.count("<figure") == 3  # funnel, monthly counts, projection
    assert text.count("* plotly.js v") == 1  # the library once
    assert "<script>" not in text.split("Not applied")[1].split("</ul>")[0]  # escaped
    assert "willing to comply &lt;script&gt;" in text


@pytest.mark.parametrize("args, message", [
    (["--format", "xml"], "--format: unknown format 'xml'; use table or json"),
    (["--target", "10"], "--target and --consent go together"),
    (["--hub", "http://127.0.0.1:9"], "give --cdm (one CDM, locally) or --hub"),
])
def test_cli_bad_input_is_one_line(site: Path, args: list[str], message: str) -> None:
    r = _run("trial", "feasibility", str(TRIAL), "--cdm", str(site), *args)
    assert r.exit_code == 1
    assert message in r.output
    assert "Traceback" not in r.output


def test_cli_unknown_trial_file_is_one_line(site: Path, tmp_path: Path) -> None:
    r = _run("trial", "feasibility", str(tmp_path / "nope.yaml"), "--cdm", str(site))
    assert r.exit_code == 1 and "not found" in r.output and "Traceback" not in r.output


def test_a_trial_without_criteria_and_one_that_finds_no_one(site: Path) -> None:
    trial = load_trial(TRIAL)
    with Cdm.open(site) as cdm:
        bare = local_feasibility(cdm, _with_rules(trial.cohort, []), EXACT, trial="bare")
        data = trial.cohort.to_dict()
        data["expression"]["inclusion_rules"][0]["expression"]["demographic_criteria_list"][0]["age"]["value"] = 200
        empty = local_feasibility(cdm, CohortDefinition.from_dict(data), EXACT, trial="empty")
    assert bare["funnel"] == [] and bare["what_if"] == [] and bare["eligible"] > 0
    assert empty["eligible"] == 0 and empty["funnel"][0]["remaining"] == 0
    assert empty["what_if"][0]["gained"] > 0  # the criterion that empties the cohort is the one to drop


def test_the_same_counts_on_every_engine(cdm_factory: Any) -> None:
    """The trial's one pipeline and its grouped read give the same exact counts on DuckDB and PostgreSQL."""
    from mercia.synth import DEFAULT_SITES, generate_site

    trial = load_trial(TRIAL)
    cdm = cdm_factory()
    generate_site(cdm, persons=1500, seed=3, profile=DEFAULT_SITES[0])
    counts = count_trial(cdm, trial.cohort, history_months=120, end_month="2024-11")
    with Cdm.open() as duck:
        generate_site(duck, persons=1500, seed=3, profile=DEFAULT_SITES[0])
        ref = count_trial(duck, trial.cohort, history_months=120, end_month="2024-11")
    assert counts == ref
    assert counts.eligible > 0 and sum(counts.months.values()) > 0


def test_a_repeated_trial_reuses_its_rendered_plan_and_leaves_no_tables(site: Path, monkeypatch: Any) -> None:
    """The trial's pipeline is the cohort plan generate_cohorts runs (the engine's steps, cached per
    process by the definition's content): asked again, the definition is not compiled again, the counts
    are the same, and no temporary table is left on the connection."""
    import mercia.cohorts.reading as reading
    from mercia.cohorts.plan import PLANS

    trial = load_trial(TRIAL)
    PLANS.clear()
    compiled: list[int] = []
    real = reading.compile_cohort

    def counting(*a: Any, **kw: Any) -> Any:
        compiled.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(reading, "compile_cohort", counting)
    with Cdm.open(site) as cdm:
        first = count_trial(cdm, trial.cohort, end_month="2024-11")
        second = count_trial(cdm, trial.cohort, end_month="2024-11")
        left = cdm.fetch_all("SELECT table_name FROM duckdb_tables() WHERE temporary")
    assert len(compiled) == 1
    assert first == second and first.eligible > 0
    assert left == []


def test_a_node_feasibility_count_runs_the_same_cached_plan(site: Path, monkeypatch: Any) -> None:
    """A node's feasibility count reads the cohort the same way (mercia.cohorts.reading): its persons are
    the cohort's rows counted by plain SQL, a repeat compiles nothing, and no temporary table is left."""
    import mercia.cohorts.reading as reading
    from mercia.cohorts.plan import PLANS
    from mercia.federation.node.feasibility import feasibility_count
    from mercia.federation.node.privacy_budget import FeasibilityPrivacy

    trial = load_trial(TRIAL)
    PLANS.clear()
    compiled: list[int] = []
    real = reading.compile_cohort

    def counting(*a: Any, **kw: Any) -> Any:
        compiled.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(reading, "compile_cohort", counting)
    privacy = FeasibilityPrivacy(epsilon_per_query=10)
    with Cdm.open(site) as cdm:
        answers = [feasibility_count(cdm, trial.cohort, EXACT, site="s", privacy=privacy, noise_key=b"k" * 32,
                                     label="q") for _ in range(2)]
        left = cdm.fetch_all("SELECT table_name FROM duckdb_tables() WHERE temporary")
        monkeypatch.setattr(reading, "compile_cohort", real)
        persons = len(_persons(cdm, trial.cohort))
    assert len(compiled) == 1 and left == []
    assert answers[0] == answers[1]
    released = json.dumps(answers[0])
    assert persons > 0 and abs(answers[0]["persons"] - persons) <= 10, released  # epsilon 10: noise is small
