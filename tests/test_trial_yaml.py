"""trial.yaml (issue 15, item 1): named criteria in the cohort language, compiled to one cohort whose
inclusion rules are the criteria; load_trial reads it (and still reads plain cohort files).

The reference for what a trial selects is the same eligibility written by hand as a plain cohort (the
cohort language's own inclusion rules), generated on the same synthetic site."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cli import app
from mercia.cohorts.circe import from_circe_json, to_circe_dict
from mercia.cohorts.dsl import from_yaml as cohort_from_yaml
from mercia.cohorts.generate import generate_cohorts
from mercia.errors import CohortDefinitionError
from mercia.trials.model import Criterion, Trial
from mercia.trials.source import load_trial
from mercia.trials.trial_yaml import from_yaml, read_trial, to_yaml

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "trials" / "hf_sglt2.yaml"

# The example's applied criteria written as a plain cohort, by hand: the independent reference.
REFERENCE = """
name: reference
concepts:
  hf: {name: Heart failure, include: [heart_failure], descendants: true}
  egfr: {name: eGFR, measurements: [egfr]}
  t1d: {name: Type 1 diabetes, include: [201254], descendants: true}
  sglt2: {name: SGLT2 inhibitors, ingredients: [empagliflozin, dapagliflozin], descendants: true}
entry:
  - {condition: hf, first: true}
observation: {prior_days: 365}
inclusion_rules:
  - {name: a, require: {age: {min: 18}}}
  - name: b
    require: {measurement: egfr, value: {min: 20}, unit: ml_min_173m2, between: [365 days before, 0 days after]}
  - {name: c, exclude: {condition: t1d, between: [all days before, 0 days after]}}
  - {name: d, exclude: {drug: sglt2, between: [84 days before, 0 days after]}}
  - {name: e, require: {age: {max: 85}}}
"""

SMALL = """
name: Small trial
concepts:
  t2d: {include: [type2_diabetes], descendants: true}
criteria:
  - name: type 2 diabetes
    type: inclusion
    rule: {condition: t2d, between: [all days before, 0 days after]}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from federation_support import make_site

    yield make_site(tmp_path_factory.mktemp("trial") / "site.duckdb", persons=3000, seed=1)


def test_the_example_compiles_to_one_cohort_whose_rules_are_the_applied_criteria():
    t = load_trial(EXAMPLE)
    assert t.name == "SGLT2 inhibitor in heart failure with reduced ejection fraction"
    assert [r.name for r in t.cohort.expression.inclusion_rules] == [
        "aged 18 or over", "eGFR at least 20 in the past year", "no type 1 diabetes",
        "no SGLT2 inhibitor in the past 12 weeks", "no older than 85"]
    assert t.not_applied == ("LVEF 40% or less", "informed consent")


def test_a_trial_selects_what_the_same_criteria_written_as_a_cohort_select(site: Path):
    trial = load_trial(EXAMPLE).cohort
    reference = cohort_from_yaml(REFERENCE)
    with Cdm.open(site) as cdm:
        got, want = generate_cohorts(cdm, [(1, trial), (2, reference)])
    assert got.persons == want.persons > 0
    assert [s.person_count for s in got.attrition if s.mode_id == 0] == [
        s.person_count for s in want.attrition if s.mode_id == 0]
    # the exclusions removed someone, so the test can tell an inverted exclusion from a right one
    assert want.summary[0].base_count > want.persons


def test_the_compiled_cohort_exports_to_circe_with_the_criteria_names():
    definition = load_trial(EXAMPLE).cohort
    circe = to_circe_dict(definition.expression)
    back = from_circe_json(json.dumps(circe), name="x")
    assert [r.name for r in back.expression.inclusion_rules] == [
        r.name for r in definition.expression.inclusion_rules]
    assert [r["name"] for r in circe["InclusionRules"]][2] == "no type 1 diabetes"


def test_yaml_round_trip_and_the_python_form():
    t = read_trial(EXAMPLE)
    assert from_yaml(to_yaml(t)) == t
    py = Trial("From Python", (Criterion("adults", "inclusion", {"age": {"min": 18}}),
                               Criterion("consent", "inclusion", None, "not_computable", "Signed consent")))
    assert from_yaml(to_yaml(py)) == py
    assert py.not_applied == ("consent",)
    assert [r.name for r in py.cohort().expression.inclusion_rules] == ["adults"]


def test_load_trial_still_reads_a_plain_cohort(tmp_path: Path):
    p = tmp_path / "plain.yaml"
    p.write_text(REFERENCE)
    t = load_trial(p)
    assert t.name == "plain" and t.not_applied == ()
    assert [r.name for r in t.cohort.expression.inclusion_rules] == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("change, message", [
    (("name: type 2 diabetes\n", "name: type 2 diabetes\n    typo: 1\n"),
     "criteria[0].typo: unknown field (did you mean 'type'?)"),
    (("type: inclusion", "type: inclusive"), "criteria[0].type: 'inclusive' is not allowed (allowed: inclusion, exclusion)"),
    (("rule: {", "status: maybe\n    rule: {"), "criteria[0].status: 'maybe' is not allowed"),
    (("include: [type2_diabetes]", "include: [type2_diabetis]"), "concepts.t2d.include[0]"),
    (("condition: t2d", "condition: t3d"), "criteria[0].rule.condition: 't3d' is not a concept set"),
])
def test_bad_input_is_one_line_naming_the_field(change, message):
    old, new = change
    assert old in SMALL
    text = SMALL.replace(old, new)
    with pytest.raises(CohortDefinitionError) as e:
        from_yaml(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_empty_criteria_a_mapped_criterion_without_rule_and_unknown_top_level_field():
    no_rule = SMALL.replace("    rule: {condition: t2d, between: [all days before, 0 days after]}\n", "")
    with pytest.raises(CohortDefinitionError, match=r"^criteria\[0\]\.rule: required for a mapped criterion"):
        from_yaml(no_rule)
    with pytest.raises(CohortDefinitionError, match=r"^criteria: give at least one criterion"):
        from_yaml("name: x\ncriteria: []\n")
    with pytest.raises(CohortDefinitionError, match=r"^indx: unknown field \(did you mean 'index'\?\)"):
        from_yaml(SMALL + "indx: {}\n")


def test_trial_check_command_lists_applied_and_not_applied():
    r = CliRunner().invoke(app, ["trial", "check", str(EXAMPLE)])
    assert r.exit_code == 0, r.output
    assert "5 criteria applied, 2 not applied" in r.output
    assert "not applied: informed consent" in r.output


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_trial_check_writes_the_compiled_cohort_for_the_cohort_commands(tmp_path: Path, suffix: str):
    from mercia.cohorts.loader import load_definition

    out = tmp_path / f"cohort{suffix}"
    r = CliRunner().invoke(app, ["trial", "check", str(EXAMPLE), "--cohort", str(out)])
    assert r.exit_code == 0, r.output
    back = load_definition(out)
    want = load_trial(EXAMPLE).cohort
    assert [x.name for x in back.expression.inclusion_rules] == [x.name for x in want.expression.inclusion_rules]
    assert back.expression.model_dump(exclude={"concept_sets"}) == want.expression.model_dump(exclude={"concept_sets"})
