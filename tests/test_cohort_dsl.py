"""The cohort language (mercia.cohorts.dsl) and the loader: the Python and YAML forms build the
shared cohort model; any model writes to YAML and reads back equal; mistakes are clear errors."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from mercia.cdm import Cdm
from mercia.cohorts import dsl, yaml_writer
from mercia.cohorts.circe import from_circe_json, load_circe_file
from mercia.cohorts.dsl import (
    age,
    all_of,
    any_of,
    at_least_of,
    at_most_of,
    cohort,
    concepts,
    condition,
    condition_era,
    death,
    drug,
    drug_era,
    first,
    item,
    measurement,
    observation_period,
    procedure,
    sex,
    to_yaml,
    visit,
)
from mercia.cohorts.generate import cohort_rows, generate_cohorts
from mercia.cohorts.loader import load_definition
from mercia.cohorts.model import CohortDefinition
from mercia.errors import CohortDefinitionError
from shared_data import COHORTS
from test_cohort_world import COND, DRUG, correlated, group, load_world, window
from test_cohort_world import cohort as circe_cohort

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "cohorts"




SHARED = COHORTS
NSAID = concepts("NSAIDs", ingredients=["celecoxib", "diclofenac"], descendants=True)
GI_BLEED = concepts("GI bleed", 192671, descendants=True)


def new_users() -> dsl.Cohort:
    return (cohort("New NSAID users")
            .entry(drug(NSAID).first())
            .require_prior_observation(days=365)
            .exclude(condition(GI_BLEED).within(days_before=365))
            .exit_at_end_of_exposure(gap_days=30))


# ---- the Python form builds the model Circe would ------------------------------------------------
def test_issue_example_builds_the_circe_model() -> None:
    d = new_users().build()
    x = d.expression
    assert [(cs.id, cs.name) for cs in x.concept_sets] == [(0, "NSAIDs"), (1, "GI bleed")]
    items = x.concept_sets[0].expression.items
    assert [(i.concept.concept_id, i.include_descendants) for i in items] == [(1118084, True), (1124300, True)]
    entry = x.primary_criteria.criteria_list[0].drug_exposure
    assert entry is not None and entry.codeset_id == 0 and entry.first is True
    assert x.primary_criteria.observation_window.prior_days == 365
    rule = x.inclusion_rules[0].expression.criteria_list[0]
    assert rule.criteria.condition_occurrence.codeset_id == 1  # type: ignore[union-attr]
    assert (rule.start_window.start.days, rule.start_window.start.coeff) == (365, -1)
    assert (rule.start_window.end.days, rule.start_window.end.coeff) == (0, 1)
    assert (rule.occurrence.type, rule.occurrence.count) == ("exactly", 0)
    assert x.end_strategy is not None and x.end_strategy.custom_era is not None
    assert (x.end_strategy.custom_era.drug_codeset_id, x.end_strategy.custom_era.gap_days) == (0, 30)


def test_first_function_and_equal_concept_sets_share_one_id() -> None:
    a = cohort("a").entry(first(drug(NSAID))).require(drug(concepts("NSAIDs", ingredients=["celecoxib", "diclofenac"],
                                                                     descendants=True)).within(days_before=30))
    x = a.build().expression
    assert len(x.concept_sets) == 1
    assert x.primary_criteria.criteria_list[0].drug_exposure.first is True  # type: ignore[union-attr]


def test_builders_are_immutable() -> None:
    base = cohort("x").entry(drug(NSAID))
    one = base.require_age(min=18)
    assert base.rules == () and len(one.rules) == 1


# ---- round trip: Python -> model -> YAML -> model --------------------------------------------------
HBA1C = concepts("HbA1c", measurements=["hba1c"])
T2D = concepts("T2D", conditions=["type2_diabetes"], descendants=True, mapped=True)
MIXED = concepts("Mixed", 201826, item("metformin", descendants=True), item(1503297, name="metformin, own name"),
                 exclude=[4193704], id=7)
VISITS = concepts("Hospital", visits=["inpatient", "emergency"])

ROUND_TRIP: dict[str, dsl.Cohort] = {
    "issue example": new_users(),
    "age and sex restrictions": cohort("age/sex").entry(condition(T2D)).require_age(min=18, max=75)
    .require_sex("female").require(age(above=40).sex("male", "female"), name="both"),
    "at least / at most / exactly, distinct": cohort("counts").entry(condition(T2D))
    .require(measurement(HBA1C).within(days_before=365).at_least(2, distinct="start_date"))
    .require(drug(NSAID).between("all days before", "1 day before").at_most(3))
    .require(procedure().within(days_before=30, days_after=30).exactly(1, distinct=True)),
    "windows: after index, index end, event end, end window": cohort("windows").entry(visit(VISITS))
    .require(condition(T2D).between("0 days after", "30 days after", index_end=True, event_end=False)
             .ending_between(-10, 10)),
    "same visit, outside observation": cohort("visit").entry(visit(VISITS))
    .require(condition(T2D).same_visit().ignore_observation_period()),
    "event filters": cohort("filters").entry(
        measurement(HBA1C).value(min=48, max=120).unit("mmol_per_mol", 8554).age(not_between=(0, 17)).sex("female")
        .in_visit("gp"), drug(NSAID).filter(days_supply={"value": 30, "op": "gte"}, drug_type=[{"concept_id": 32838}]),
        drug_era(NSAID).filter(era_length={"value": 90, "op": "gt"}), condition_era(T2D).first(),
        observation_period().filter(period_length={"value": 365, "op": "gte"}), keep="all"),
    "groups and nested where": cohort("groups").entry(
        drug(NSAID).where(condition(T2D).within(days_before=365)))
    .require(any_of(condition(T2D), measurement(HBA1C).value(above=48)))
    .require(at_least_of(2, condition(T2D), drug(NSAID), all_of(age(min=18), procedure())))
    .require(at_most_of(1, drug(NSAID).within(days_before=7)), name="at most one"),
    "where (additional criteria) and keep": cohort("where").entry(condition(T2D), keep="all")
    .where(drug(NSAID).within(days_before=30), keep="last").keep(final="all"),
    "censoring, fixed exit, study period, collapse": cohort("exit", "a description").entry(condition(T2D))
    .exit_after(days=30, relative_to="end").censor_at(death(), drug(NSAID)).study_period("2010-01-01", "2020-12-31")
    .collapse(gap_days=7),
    "end of observation, declared and mixed sets": cohort("eoo").concept_sets(HBA1C).entry(condition(MIXED))
    .exit_at_end_of_exposure(gap_days=0, offset=7, days_supply=14, drug=NSAID).exit_at_end_of_observation(),
    "custom era with options": cohort("era").entry(drug(NSAID)).exit_at_end_of_exposure(gap_days=14, offset=3,
                                                                                       days_supply=30),
    "rule with description": cohort("desc").entry(drug(NSAID)).require(condition(T2D), name="n", description="why")
    .exclude(death().within(days_before=1), name="not dead", description="d"),
}


@pytest.mark.parametrize("case", list(ROUND_TRIP))
def test_round_trip_python_model_yaml_model(case: str) -> None:
    d = ROUND_TRIP[case].build()
    text = to_yaml(d)
    assert dsl.from_yaml(text) == d
    # and through the model's own JSON form
    assert CohortDefinition.from_json(d.to_json()) == d


def test_yaml_reads_like_the_python() -> None:
    text = to_yaml(new_users().build())
    assert "ingredients: [celecoxib, diclofenac]" in text
    assert "between: [365 days before, 0 days after]" in text
    assert "end_of_exposure: {drug: nsaids, gap_days: 30}" in text


@pytest.mark.parametrize("path", sorted(SHARED.glob("*/*.json")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_atlas_files_write_to_yaml_and_back(path: Path) -> None:
    d = load_circe_file(path)
    back = dsl.from_yaml(to_yaml(d))
    # The language keeps a concept's id and name, not ATLAS's display fields (code, vocabulary...).
    assert yaml_writer._core(back) == yaml_writer._core(d)


def test_yaml_that_cannot_be_said_exactly_is_an_error() -> None:
    d = new_users().build()
    data = json.loads(d.to_json())
    data["expression"]["inclusion_rules"][0]["expression"]["criteria_list"][0]["occurrence"]["count_column"] = "VISIT_ID"
    with pytest.raises(CohortDefinitionError, match="count column"):
        to_yaml(CohortDefinition.from_dict(data))


# ---- the examples: each Python file and its YAML twin build the same model ------------------------
@pytest.mark.parametrize("stem", ["new_nsaid_users", "type2_diabetes_metformin"])
def test_example_python_and_yaml_agree(stem: str) -> None:
    assert load_definition(EXAMPLES / f"{stem}.py") == load_definition(EXAMPLES / f"{stem}.yaml")


def test_example_atlas_json_loads() -> None:
    d = load_definition(EXAMPLES / "gi_bleed_atlas.json")
    assert d.name == "gi_bleed_atlas" and len(d.expression.inclusion_rules) == 2


# ---- semantics: the DSL's cohort gives the rows of the equivalent Circe definition ----------------
A = concepts("Condition A", 100)
X = concepts("Drug X", 200)
A_CIRCE = {"ConditionOccurrence": {"CodesetId": COND["id"]}}
X_CIRCE = {"DrugExposure": {"CodesetId": DRUG["id"]}}

SEMANTICS = [
    (cohort("c").entry(condition(A), keep="all").keep("all").exit_after(days=0),
     circe_cohort(A_CIRCE, EndStrategy={"DateOffset": {"DateField": "StartDate", "Offset": 0}})),
    (cohort("c").entry(condition(A), keep="all").keep("all").require(drug(X).within(days_before=30)).exit_after(days=0),
     circe_cohort(A_CIRCE, EndStrategy={"DateOffset": {"DateField": "StartDate", "Offset": 0}},
                  InclusionRules=[{"name": "r", "expression": group(correlated(X_CIRCE, window(-30, 0), at_least=1))}])),
    (cohort("c").entry(condition(A), keep="all").keep("all").exclude(drug(X).within(days_before=30)).exit_after(days=0),
     circe_cohort(A_CIRCE, EndStrategy={"DateOffset": {"DateField": "StartDate", "Offset": 0}},
                  InclusionRules=[{"name": "r", "expression": group(correlated(X_CIRCE, window(-30, 0), exactly=0))}])),
    (cohort("c").entry(condition(A).first()).require_sex("male").require_prior_observation(days=365),
     circe_cohort({"ConditionOccurrence": {"CodesetId": COND["id"], "First": True}}, prior=365, limit="First",
                  qualified="First", expression="First",
                  InclusionRules=[{"name": "m", "expression": group(demographics=[
                      {"Gender": [{"CONCEPT_ID": 8507, "CONCEPT_NAME": "MALE"}]}])}])),
]


@pytest.fixture(scope="module")
def world() -> Cdm:
    cdm = load_world(Cdm.open())
    yield cdm
    cdm.close()


@pytest.mark.parametrize("i", range(len(SEMANTICS)))
def test_dsl_rows_equal_circe_rows(world: Cdm, i: int) -> None:
    ours, theirs = SEMANTICS[i]
    generate_cohorts(world, [(100 + i, ours.build()), (200 + i, from_circe_json(theirs, name="circe"))])
    assert cohort_rows(world, 100 + i) == cohort_rows(world, 200 + i)
    assert cohort_rows(world, 100 + i)  # the case is not vacuous


# ---- errors say what was wrong and how to fix it ---------------------------------------------------
@pytest.mark.parametrize(("make", "message"), [
    (lambda: concepts("x", "metformine"), "unknown concept name 'metformine'.*did you mean 'metformin'"),
    (lambda: concepts("x", ingredients=["celecoxib"], conditions=["diabetes"]), "catalog group 'conditions'"),
    (lambda: concepts("x"), "at least one concept"),
    (lambda: condition(GI_BLEED).between("a year before", 0), "cannot read window bound 'a year before'"),
    (lambda: condition(GI_BLEED).between("0 days after", "30 days before"), "inverted window"),
    (lambda: cohort("x").entry(condition(GI_BLEED).within(days_before=30)), "belong to require/exclude"),
    (lambda: cohort("x").entry(drug(NSAID)).exclude(condition(GI_BLEED).at_least(2)), "exactly 0 occurrences"),
    (lambda: cohort("x").entry(condition(GI_BLEED)).exit_at_end_of_exposure().build(), "say which drug"),
    (lambda: cohort("x").build(), "no entry events"),
    (lambda: cohort("x").entry(drug(NSAID)).keep("firsts"), "not one of first, all, last"),
    (lambda: drug(NSAID).value(min=3), "has no 'value_as_number' filter"),
    (lambda: age(min=1, above=3), "one bound at a time"),
    (lambda: sex("woman"), "unknown sex 'woman'"),
    (lambda: drug(NSAID).at_least(-1), "not a count"),
    (lambda: cohort("x").entry(drug(NSAID)).study_period("2020-13-01"), "invalid date"),
])
def test_python_mistakes_are_clear_errors(make, message: str) -> None:
    with pytest.raises(CohortDefinitionError, match=message):
        make()


YAML_OK = """
name: y
concepts:
  nsaid: {ingredients: [celecoxib]}
entry:
  - drug: nsaid
"""


@pytest.mark.parametrize(("patch", "message"), [
    ("entry:\n  - drug: nsaids\n", r"\$\.entry\[0\]\.drug: 'nsaids' is not a concept set.*did you mean 'nsaid'"),
    ("entry:\n  - drug: nsaid\n    frist: true\n", r"\$\.entry\[0\]\.frist: unknown key \(did you mean 'first'"),
    ("entry:\n  - drug: nsaid\n    between: [1 days before, 0 days after]\n", r"\$\.entry\[0\]\.between: unknown key"),
    ("inclusion_rules:\n  - exclude: {drug: nsaid, between: [30 days ago, 0]}\n",
     r"\$\.inclusion_rules\[0\]\.exclude\.between\.start: cannot read window bound '30 days ago'"),
    ("inclusion_rules:\n  - name: r\n", r"\$\.inclusion_rules\[0\]: a rule has either require: or exclude:"),
    ("inclusion_rules:\n  - require: {}\n", r"\$\.inclusion_rules\[0\]\.require\[0\]: empty condition"),
    ("exit: {after: {days: 3, relative_to: middle}}\n", r"\$\.exit\.after: exit_after: relative_to"),
    ("exit: {sometime: {}}\n", r"\$\.exit\.sometime: unknown exit"),
    ("keep: sometimes\n", r"\$\.keep: keep: 'sometimes'"),
    ("colapse: {gap_days: 3}\n", r"\$\.colapse: unknown key \(did you mean 'collapse'"),
    ("observation: {prior_days: -1}\n", r"\$\.observation: require_observation: prior_days"),
    ("study_period: {start: 2020-02-30}\n", r"\$\.study_period\.start: invalid date"),
])
def test_yaml_mistakes_name_their_path(patch: str, message: str) -> None:
    base = YAML_OK
    if patch.startswith("entry:"):
        base = base.split("entry:")[0]
    with pytest.raises(CohortDefinitionError, match=message):
        dsl.from_yaml(base + patch)


def test_yaml_without_name_or_entry() -> None:
    with pytest.raises(CohortDefinitionError, match=r"\$\.name: required"):
        dsl.from_yaml("entry: [{drug: null}]\n")
    with pytest.raises(CohortDefinitionError, match=r"\$\.entry: required"):
        dsl.from_yaml("name: x\n")
    with pytest.raises(CohortDefinitionError, match="malformed YAML at line"):
        dsl.from_yaml("name: [x\n")


# ---- the loader -----------------------------------------------------------------------------
def test_loader_reads_every_form(tmp_path: Path) -> None:
    d = new_users().build()
    (tmp_path / "a.yaml").write_text(to_yaml(d))
    (tmp_path / "b.yml").write_text(d.to_yaml())  # the model's own YAML
    (tmp_path / "c.json").write_text(d.to_json())  # Mercia's JSON
    from mercia.cohorts.circe import to_circe_dict

    (tmp_path / "d.json").write_text(json.dumps(to_circe_dict(d.expression)))  # ATLAS's JSON
    for name in ("a.yaml", "b.yml", "c.json"):
        assert load_definition(tmp_path / name) == d, name
    circe = load_definition(tmp_path / "d.json")
    assert circe.name == "d" and circe.expression == d.expression


PY_HEADER = "from mercia.cohorts.dsl import cohort, concepts, drug\nx = concepts('X', 1118084)\n"


@pytest.mark.parametrize(("body", "expected"), [
    ("COHORT = cohort('upper').entry(drug(x))\n", "upper"),
    ("import mercia.cohorts.dsl as d\ncohort = d.cohort('lower').entry(drug(x))\n", "lower"),
    ("users = cohort('only one').entry(drug(x))\n", "only one"),
    ("COHORT = cohort('built').entry(drug(x)).build()\n", "built"),
])
def test_loader_python_file(tmp_path: Path, body: str, expected: str) -> None:
    p = tmp_path / "c.py"
    p.write_text(PY_HEADER + body)
    assert load_definition(p).name == expected


@pytest.mark.parametrize(("name", "content", "message"), [
    ("c.py", PY_HEADER, "c.py: it defines no cohort.*COHORT = cohort"),
    ("c.py", PY_HEADER + "a = cohort('a').entry(drug(x))\nb = cohort('b').entry(drug(x))\n", "defines 2 cohorts"),
    ("c.py", PY_HEADER + "COHORT = 3\n", "COHORT is a int, not a cohort"),
    ("c.py", PY_HEADER + "\n1 / 0\n", r"c.py: running it failed at line 4: ZeroDivisionError"),
    ("c.py", "def (:\n", "c.py: Python syntax error at line 1"),
    ("c.py", PY_HEADER + "COHORT = cohort('x').entry(drug(concepts('y', 'nosuch')))\n", "c.py: .*unknown concept name"),
    ("c.txt", "x", r"unknown kind of cohort definition '\.txt'"),
    ("c", "x", r"unknown kind of cohort definition '\(no extension\)'"),
    ("c.json", "{", "c.json: malformed JSON at line 1"),
    ("c.json", "[]", "a Circe cohort expression is a JSON object"),
    ("c.json", "{\"PrimaryCriteria\": {\"CriteriaList\": [{\"Foo\": {}}]}}", r"c.json: \$\.PrimaryCriteria"),
    ("c.yaml", "name: [", "c.yaml: malformed YAML"),
    ("c.yaml", "", "c.yaml: the file is empty"),
    ("c.yaml", "- a\n", "expected a mapping"),
])
def test_loader_errors(tmp_path: Path, name: str, content: str, message: str) -> None:
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(CohortDefinitionError, match=message):
        load_definition(p)


def test_loader_missing_and_folder(tmp_path: Path) -> None:
    with pytest.raises(CohortDefinitionError, match="not found"):
        load_definition(tmp_path / "nope.yaml")
    with pytest.raises(CohortDefinitionError, match="not found"):
        load_definition(tmp_path / "nope.py")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(CohortDefinitionError, match="is a folder"):
        load_definition(tmp_path / "dir.json")


def test_dates_in_yaml_are_dates() -> None:
    d = dsl.from_yaml(YAML_OK + "study_period: {start: 2010-01-01, end: '2011-06-30'}\n")
    assert d.expression.censor_window.start_date == dt.date(2010, 1, 1)
    assert d.expression.censor_window.end_date == dt.date(2011, 6, 30)
