"""A concept set used in a criterion of another domain warns, naming each concept, its name and its domain.

The domains are those of the bundled OMOP vocabulary (Athena's CONCEPT rows), not of the definition:
metformin (1503297) is a Drug, type 2 diabetes (201826) a Condition, HbA1c (3004410) a Measurement.
"""

from __future__ import annotations

import warnings

import pytest

from mercia.cdm import Cdm
from mercia.cdm.check import require_cdm
from mercia.cohorts import dsl
from mercia.cohorts.concept_domains import ConceptDomainWarning, criterion_uses, domain_mismatches, in_domain
from mercia.cohorts.generate import generate_cohorts
from mercia.errors import CdmError
from mercia.vocab.athena import load_bundled_vocabulary


@pytest.fixture(scope="module")
def vocab_cdm():
    with Cdm.open(None) as cdm:
        cdm.create_tables()
        load_bundled_vocabulary(cdm)
        yield cdm


def definition(text: str):
    return dsl.from_yaml("name: test\n" + text)


CORRECT = """
concepts:
  t2d: {conditions: [type2_diabetes], descendants: true}
  met: {ingredients: [metformin], descendants: true}
  a1c: {measurements: [hba1c]}
entry:
  - drug: met
inclusion_rules:
  - name: diabetes before
    require: {condition: t2d, between: [all days before, 0 days after]}
  - name: an HbA1c before
    require: {measurement: a1c, between: [365 days before, 0 days after]}
"""


def test_concepts_of_the_criterion_domain_give_no_warning(vocab_cdm):
    assert domain_mismatches(vocab_cdm, [definition(CORRECT)]) == [[]]


def test_a_drug_set_in_a_nested_condition_criterion_is_named(vocab_cdm):
    swapped = CORRECT.replace("require: {condition: t2d", "require: {condition: met")
    (messages,) = domain_mismatches(vocab_cdm, [definition(swapped)])
    assert len(messages) == 1, messages
    assert "is used in a ConditionOccurrence criterion (Condition concepts)" in messages[0]
    assert "concept 1503297 'metformin' (domain Drug)" in messages[0]


def test_every_wrong_pairing_is_reported_once(vocab_cdm):
    text = """
concepts:
  t2d: {conditions: [type2_diabetes]}
  met: {ingredients: [metformin]}
entry:
  - drug: t2d
  - measurement: met
  - condition: t2d
"""
    (messages,) = domain_mismatches(vocab_cdm, [definition(text)])
    assert len(messages) == 2, messages
    by_criterion = {m.split(" is used in a ")[1].split(" ")[0]: m for m in messages}
    assert set(by_criterion) == {"DrugExposure", "Measurement"}
    assert "201826 'Type 2 diabetes mellitus' (domain Condition)" in by_criterion["DrugExposure"]
    assert "1503297 'metformin' (domain Drug)" in by_criterion["Measurement"]


def test_generate_cohorts_warns_and_keeps_the_message(vocab_cdm):
    d = definition("concepts:\n  met: {ingredients: [metformin]}\nentry:\n  - condition: met\n")
    with pytest.warns(ConceptDomainWarning, match=r"1503297 'metformin' \(domain Drug\)"):
        (result,) = generate_cohorts(vocab_cdm, [(77, d)])
    assert result.persons == 0
    assert any("domain Drug" in w for w in result.warnings)
    right = definition("concepts:\n  met: {ingredients: [metformin]}\nentry:\n  - drug: met\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConceptDomainWarning)
        generate_cohorts(vocab_cdm, [(78, right)])


def test_criterion_uses_reaches_nested_groups_and_custom_eras():
    text = CORRECT + "exit:\n  end_of_exposure: {drug: met, gap_days: 30}\n"
    uses = {(criterion, domain) for _, criterion, domain in criterion_uses(definition(text).expression)}
    assert uses == {("DrugExposure", "Drug"), ("ConditionOccurrence", "Condition"),
                    ("Measurement", "Measurement"), ("CustomEra", "Drug")}


@pytest.mark.parametrize(
    ("domain_id", "expected", "fits"),
    [("Condition", "Condition", True), ("Drug", "Condition", False), ("Condition/Meas", "Measurement", True),
     ("Obs/Procedure", "Observation", True), ("Obs/Procedure", "Drug", False), ("Meas Value", "Measurement", False),
     (None, "Drug", True)],
)
def test_compound_domains_of_old_vocabularies(domain_id, expected, fits):
    assert in_domain(domain_id, expected) is fits


def test_require_cdm_names_the_missing_vocabulary_tables():
    with Cdm.open(None) as cdm:
        cdm.create_tables(["person", "observation_period", "concept"])
        require_cdm(cdm)  # the clinical core is there
        with pytest.raises(CdmError, match=r"an OMOP CDM without its vocabulary at ':memory:': schema 'main' "
                                           r"lacks concept_ancestor, concept_relationship"):
            require_cdm(cdm, vocabulary=True)
