"""generate_cohorts: replacing a cohort's rows atomically, id clashes, unknown concepts, hostile text."""

from __future__ import annotations

import pytest

from mercia.cdm import Cdm
from mercia.cohorts.circe import from_circe_json
from mercia.cohorts.generate import UnknownConceptWarning, cohort_rows, generate_cohorts
from mercia.errors import CohortDefinitionError
from test_cohort_world import COND, cohort, concept_set, ends_at, group, load_world

A = {"ConditionOccurrence": {"CodesetId": COND["id"]}}
HOSTILE = "x'); DROP TABLE person; --"


@pytest.fixture
def world(any_cdm: Cdm) -> Cdm:
    return load_world(any_cdm)


def definition(name: str = "condition A", **parts) -> object:
    return from_circe_json(cohort(A, limit="First", EndStrategy=ends_at(), **parts), name=name)


def all_cohort_rows(cdm: Cdm) -> list[tuple]:
    return sorted(tuple(r) for r in cdm.fetch_all(
        "SELECT cohort_definition_id, subject_id, cohort_start_date, cohort_end_date FROM "
        + cdm.qualified("cohort")))


def test_regenerating_replaces_the_rows(world: Cdm) -> None:
    (first,) = generate_cohorts(world, [(5, definition())])
    (again,) = generate_cohorts(world, [(5, definition())])
    assert first.persons == again.persons == 3 and again.entries == 3
    assert len(cohort_rows(world, 5)) == 3
    assert world.scalar("SELECT count(*) FROM " + world.qualified("cohort_definition")) == 1


def test_a_failure_leaves_the_cohort_tables_as_they_were(world: Cdm) -> None:
    generate_cohorts(world, [(5, definition())])
    before = all_cohort_rows(world)
    # the world has no specimen table: the second definition fails while running, after the first ran
    broken = from_circe_json(cohort({"Specimen": {}}), name="needs specimen")
    with pytest.raises(Exception):  # noqa: B017 - the engine's own error type
        generate_cohorts(world, [(5, definition()), (6, broken)])
    assert all_cohort_rows(world) == before
    names = world.fetch_all("SELECT cohort_definition_id FROM " + world.qualified("cohort_definition"))
    assert [int(r[0]) for r in names] == [5]


def test_an_id_used_by_another_definition_is_an_error(world: Cdm) -> None:
    generate_cohorts(world, [(5, definition())])
    with pytest.raises(CohortDefinitionError, match="cohort id 5 is already used by another definition"):
        generate_cohorts(world, [(5, definition(name="something else"))])
    changed = definition(InclusionRules=[{"name": "r", "expression": group(demographics=[
        {"Age": {"Value": 1, "Op": "gt"}}])}])
    with pytest.raises(CohortDefinitionError, match="already used by another definition"):
        generate_cohorts(world, [(5, changed)])
    assert len(cohort_rows(world, 5)) == 3


def test_the_same_id_twice_in_one_call_is_an_error(world: Cdm) -> None:
    with pytest.raises(CohortDefinitionError, match=r"cohort id\(s\) \[5\] given to more than one"):
        generate_cohorts(world, [(5, definition()), (5, definition("other"))])


def test_unknown_concept_ids_warn_and_match_nothing(world: Cdm) -> None:
    d = from_circe_json(cohort({"ConditionOccurrence": {"CodesetId": 9}}, ConceptSets=[concept_set(9, 100, 987654)]),
                        name="with an unknown concept")
    with pytest.warns(UnknownConceptWarning, match="987654"):
        (res,) = generate_cohorts(world, [(5, d)])
    assert res.persons == 3 and any("987654" in w for w in res.warnings)


def test_hostile_text_is_data(world: Cdm) -> None:
    d = definition(name=HOSTILE, InclusionRules=[{"name": HOSTILE, "description": HOSTILE,
                                                  "expression": group(demographics=[{"Age": {"Value": 0, "Op": "gte"}}])}])
    d.expression.concept_sets[0].name = HOSTILE
    (res,) = generate_cohorts(world, [(5, d)])
    assert res.name == HOSTILE and res.attrition[0].name == HOSTILE
    stored = world.scalar("SELECT cohort_definition_name FROM " + world.qualified("cohort_definition"))
    assert stored == HOSTILE
    assert world.row_count("person") == 3
    # and a date field cannot carry it at all
    with pytest.raises(CohortDefinitionError, match="invalid date"):
        from_circe_json(cohort(A, CensorWindow={"StartDate": HOSTILE}))
