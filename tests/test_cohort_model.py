"""The cohort model and the Circe importer: round trips, and errors that name the element and its path."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mercia.cohorts.circe import from_circe_json, load_circe_file, parse_circe, to_circe_dict
from mercia.cohorts.model import CohortDefinition
from mercia.errors import CohortDefinitionError
from oracle_support import COHORTS_DIR
from test_cohort_world import COND, DRUG, cohort, correlated, group, window

DEFINITIONS = sorted(COHORTS_DIR.glob("*/*.json"))
A = {"ConditionOccurrence": {"CodesetId": COND["id"]}}
X = {"DrugExposure": {"CodesetId": DRUG["id"]}}


def error_of(data: object) -> str:
    with pytest.raises(CohortDefinitionError) as e:
        parse_circe(data)  # type: ignore[arg-type]
    return str(e.value)


@pytest.mark.parametrize("path", DEFINITIONS, ids=[p.stem for p in DEFINITIONS])
def test_shared_definitions_import_and_round_trip(path: Path) -> None:
    d = load_circe_file(path)
    assert CohortDefinition.from_json(d.to_json()) == d
    assert CohortDefinition.from_yaml(d.to_yaml()) == d
    assert parse_circe(to_circe_dict(d.expression)) == d.expression
    raw = json.loads(path.read_text())
    assert len(d.expression.concept_sets) == len(raw["ConceptSets"])
    assert [len(cs.expression.items) for cs in d.expression.concept_sets] == [
        len(cs["expression"]["items"]) for cs in raw["ConceptSets"]]


def test_concept_set_items_keep_their_flags() -> None:
    d = load_circe_file(COHORTS_DIR / "phenotypelibrary" / "888.json")
    gi = next(cs for cs in d.expression.concept_sets if cs.id == 5)
    flags = {(i.is_excluded, i.include_descendants, i.include_mapped) for i in gi.expression.items}
    assert flags == {(False, False, False), (False, True, False), (True, True, False)}


def test_mercia_form_uses_snake_case() -> None:
    d = load_circe_file(COHORTS_DIR / "cohortgenerator" / "3.json")
    text = d.to_yaml()
    assert "primary_criteria:" in text and "inclusion_rules:" in text and "PrimaryCriteria" not in text


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda x: x.setdefault("InclusionRules", []).append({"name": "r", "expression": group(correlated(
            {"VisitDetail": {"CodesetId": 0, "VisitDetailTypeExclude": True}},
            window(None, 0), at_least=1))}),
         "$.InclusionRules[0].expression.CriteriaList[0].Criteria.VisitDetail.VisitDetailTypeExclude: not supported"),
        (lambda x: x["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"].update(Frobnicate=1),
         "$.PrimaryCriteria.CriteriaList[0].ConditionOccurrence.Frobnicate: unknown element"),
        (lambda x: x.update(AdditionalCriteria=group(correlated(X, window(10, -5), at_least=1))),
         "$.AdditionalCriteria.CriteriaList[0].StartWindow: inverted window: its start (10 days after) is after "
         "its end (5 days before)"),
        (lambda x: x["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"].update(
            OccurrenceStartDate={"Value": "01/02/2020", "Op": "gt"}),
         "$.PrimaryCriteria.CriteriaList[0].ConditionOccurrence.OccurrenceStartDate.Value: invalid date "
         "'01/02/2020': write dates as YYYY-MM-DD"),
        (lambda x: x.update(CensorWindow={"StartDate": "2020-02-30"}), "$.CensorWindow.StartDate: invalid date"),
        (lambda x: x.update(CensorWindow={"StartDate": "2021-01-01", "EndDate": "2020-01-01"}),
         "$.CensorWindow: inverted period"),
        (lambda x: x["PrimaryCriteria"]["CriteriaList"].append({"Episode": {}}),
         "$.PrimaryCriteria.CriteriaList[1].Episode: not supported"),
        (lambda x: x["PrimaryCriteria"]["CriteriaList"][0].update({"DrugEra": {}}),
         "$.PrimaryCriteria.CriteriaList[0]: a criterion names exactly one domain"),
        (lambda x: x.update(EndStrategy={"DateOffset": {"DateField": "Middle", "Offset": 1}}),
         "$.EndStrategy.DateOffset.DateField"),
        (lambda x: x.update(InclusionRules=[{"name": "r", "expression": {"Type": "AT_LEAST"}}]),
         "$.InclusionRules[0].expression: a group of type AT_LEAST needs a Count"),
        (lambda x: x["PrimaryCriteria"].pop("CriteriaList"),
         "$.PrimaryCriteria.CriteriaList: required element missing"),
        (lambda x: x["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"].update(
            Age={"Value": 10, "Op": "between"}),
         "$.PrimaryCriteria.CriteriaList[0].ConditionOccurrence.Age.Op: unknown operator 'between'"),
    ],
    ids=["unsupported", "unknown", "inverted-window", "bad-date-format", "impossible-date", "inverted-censor",
         "unsupported-domain", "two-domains", "bad-enum", "group-count", "missing", "bad-operator"],
)
def test_bad_definitions_name_the_element(mutate, message: str) -> None:
    x = copy.deepcopy(cohort(A))
    mutate(x)
    assert message in error_of(x)


def test_malformed_json() -> None:
    with pytest.raises(CohortDefinitionError, match=r"\$: malformed JSON at line 1 column \d+"):
        from_circe_json('{"PrimaryCriteria": ')
    with pytest.raises(CohortDefinitionError, match="a Circe cohort expression is a JSON object"):
        parse_circe("[1, 2]")
    with pytest.raises(CohortDefinitionError, match="malformed YAML"):
        CohortDefinition.from_yaml("a: [1,")


def test_unknown_concept_set_reference_is_an_error() -> None:
    from mercia.cdm import Cdm
    from mercia.cohorts.compiler import compile_cohort

    x = cohort({"ConditionOccurrence": {"CodesetId": 99}})
    with Cdm.open() as cdm, pytest.raises(
            CohortDefinitionError,
            match=r"\$\.PrimaryCriteria\.CriteriaList\[0\]\.ConditionOccurrence\.CodesetId: concept set 99 is not defined"):
        compile_cohort(cdm, parse_circe(x))


def test_atlas_export_wrapper_is_accepted() -> None:
    inner = cohort(A)
    d = from_circe_json({"id": 12, "name": "wrapped", "expression": inner})
    assert d.name == "wrapped" and d.expression == parse_circe(inner)
    d2 = from_circe_json({"id": 12, "name": "as text", "expression": json.dumps(inner)})
    assert d2.expression == d.expression


def test_occurrence_type_names_and_numbers_agree() -> None:
    by_number = parse_circe(cohort(A, AdditionalCriteria=group(correlated(X, window(None, 0), at_most=2))))
    c = copy.deepcopy(to_circe_dict(by_number))
    assert c["AdditionalCriteria"]["CriteriaList"][0]["Occurrence"]["Type"] == 1  # Circe's number again
    assert parse_circe(c) == by_number
    mercia_form = by_number.model_dump(mode="json")
    assert mercia_form["additional_criteria"]["criteria_list"][0]["occurrence"]["type"] == "at_most"


def test_unset_unsupported_elements_are_harmless_but_set_ones_fail() -> None:
    x = cohort({"ConditionOccurrence": {"CodesetId": COND["id"], "ConditionStatusExclude": None, "DateAdjustment": None}})
    assert parse_circe(x).primary_criteria.criteria_list[0].condition_occurrence is not None
    x["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"]["ConditionStatusExclude"] = True
    assert "ConditionOccurrence.ConditionStatusExclude: not supported" in error_of(x)
