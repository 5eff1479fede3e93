"""Every element of OHDSI Circe-BE's cohort model is an element of Mercia's.

The lists below are Circe-BE's, read off its Java sources (the @JsonProperty fields, and the public
fields of the classes that have none) at OHDSI/circe-be v1.12.1, commit 9a80aa71de732ffce566997de61492bb5f55a19d
(src/main/java/org/ohdsi/circe/cohortdefinition/*.java and vocabulary/*.java), with each field's Java type.
An ATLAS definition may use any of them, so each must import; each criteria field must also compile to
SQL that runs on a CDM 5.4, except the few whose Circe-BE SQL reads a column or table CDM 5.3/5.4 do
not have, which are refused with the reason. What each element selects is checked against OHDSI's SQL
in test_cohort_circe_elements.py and test_cohort_generative_circe.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from mercia.cdm import Cdm
from mercia.cohorts import model as m
from mercia.cohorts.circe import parse_circe, to_circe_dict
from mercia.cohorts.compiler import compile_cohort
from mercia.errors import CohortDefinitionError

# ---- Circe-BE v1.12.1: criteria classes (each also has Criteria's CorrelatedCriteria, DateAdjustment) ----
CRITERIA_FIELDS: dict[str, str] = {
    "ConditionOccurrence": "CodesetId:Integer First:Boolean OccurrenceStartDate:DateRange OccurrenceEndDate:DateRange "
    "ConditionType:Concept[] ConditionTypeCS:ConceptSetSelection ConditionTypeExclude:Boolean StopReason:TextFilter "
    "ConditionSourceConcept:Integer Age:NumericRange Gender:Concept[] GenderCS:ConceptSetSelection "
    "ProviderSpecialty:Concept[] ProviderSpecialtyCS:ConceptSetSelection VisitType:Concept[] "
    "VisitTypeCS:ConceptSetSelection ConditionStatus:Concept[] ConditionStatusCS:ConceptSetSelection",
    "DrugExposure": "CodesetId:Integer First:Boolean OccurrenceStartDate:DateRange OccurrenceEndDate:DateRange "
    "DrugType:Concept[] DrugTypeCS:ConceptSetSelection DrugTypeExclude:boolean StopReason:TextFilter "
    "Refills:NumericRange Quantity:NumericRange DaysSupply:NumericRange RouteConcept:Concept[] "
    "RouteConceptCS:ConceptSetSelection EffectiveDrugDose:NumericRange DoseUnit:Concept[] "
    "DoseUnitCS:ConceptSetSelection LotNumber:TextFilter DrugSourceConcept:Integer Age:NumericRange "
    "Gender:Concept[] GenderCS:ConceptSetSelection ProviderSpecialty:Concept[] "
    "ProviderSpecialtyCS:ConceptSetSelection VisitType:Concept[] VisitTypeCS:ConceptSetSelection",
    "ProcedureOccurrence": "CodesetId:Integer First:Boolean OccurrenceStartDate:DateRange ProcedureType:Concept[] "
    "ProcedureTypeCS:ConceptSetSelection ProcedureTypeExclude:boolean Modifier:Concept[] "
    "ModifierCS:ConceptSetSelection Quantity:NumericRange ProcedureSourceConcept:Integer Age:NumericRange "
    "Gender:Concept[] GenderCS:ConceptSetSelection ProviderSpecialty:Concept[] "
    "ProviderSpecialtyCS:ConceptSetSelection VisitType:Concept[] VisitTypeCS:ConceptSetSelection",
    "Measurement": "CodesetId:Integer First:Boolean OccurrenceStartDate:DateRange MeasurementType:Concept[] "
    "MeasurementTypeCS:ConceptSetSelection MeasurementTypeExclude:boolean Operator:Concept[] "
    "OperatorCS:ConceptSetSelection ValueAsNumber:NumericRange ValueAsConcept:Concept[] "
    "ValueAsConceptCS:ConceptSetSelection Unit:Concept[] UnitCS:ConceptSetSelection RangeLow:NumericRange "
    "RangeHigh:NumericRange RangeLowRatio:NumericRange RangeHighRatio:NumericRange Abnormal:Boolean "
    "MeasurementSourceConcept:Integer Age:NumericRange Gender:Concept[] GenderCS:ConceptSetSelection "
    "ProviderSpecialty:Concept[] ProviderSpecialtyCS:ConceptSetSelection VisitType:Concept[] "
    "VisitTypeCS:ConceptSetSelection",
    "Observation": "CodesetId:Integer First:Boolean OccurrenceStartDate:DateRange ObservationType:Concept[] "
    "ObservationTypeCS:ConceptSetSelection ObservationTypeExclude:boolean ValueAsNumber:NumericRange "
    "ValueAsString:TextFilter ValueAsConcept:Concept[] ValueAsConceptCS:ConceptSetSelection Qualifier:Concept[] "
    "QualifierCS:ConceptSetSelection Unit:Concept[] UnitCS:ConceptSetSelection ObservationSourceConcept:Integer "
    "Age:NumericRange Gender:Concept[] GenderCS:ConceptSetSelection ProviderSpecialty:Concept[] "
    "ProviderSpecialtyCS:ConceptSetSelection VisitType:Concept[] VisitTypeCS:ConceptSetSelection",
    "VisitOccurrence": "CodesetId:Integer First:Boolean OccurrenceStartDate:DateRange OccurrenceEndDate:DateRange "
    "VisitType:Concept[] VisitTypeCS:ConceptSetSelection VisitTypeExclude:boolean VisitSourceConcept:Integer "
    "VisitLength:NumericRange Age:NumericRange Gender:Concept[] GenderCS:ConceptSetSelection "
    "ProviderSpecialty:Concept[] ProviderSpecialtyCS:ConceptSetSelection PlaceOfService:Concept[] "
    "PlaceOfServiceCS:ConceptSetSelection PlaceOfServiceLocation:Integer",
    "VisitDetail": "CodesetId:Integer First:Boolean VisitDetailStartDate:DateRange VisitDetailEndDate:DateRange "
    "VisitDetailTypeCS:ConceptSetSelection VisitDetailSourceConcept:Integer VisitDetailLength:NumericRange "
    "Age:NumericRange GenderCS:ConceptSetSelection ProviderSpecialtyCS:ConceptSetSelection "
    "PlaceOfServiceCS:ConceptSetSelection PlaceOfServiceLocation:Integer",
    "DeviceExposure": "CodesetId:Integer First:Boolean OccurrenceStartDate:DateRange OccurrenceEndDate:DateRange "
    "DeviceType:Concept[] DeviceTypeCS:ConceptSetSelection DeviceTypeExclude:boolean UniqueDeviceId:TextFilter "
    "Quantity:NumericRange DeviceSourceConcept:Integer Age:NumericRange Gender:Concept[] "
    "GenderCS:ConceptSetSelection ProviderSpecialty:Concept[] ProviderSpecialtyCS:ConceptSetSelection "
    "VisitType:Concept[] VisitTypeCS:ConceptSetSelection",
    "Specimen": "CodesetId:Integer First:Boolean OccurrenceStartDate:DateRange SpecimenType:Concept[] "
    "SpecimenTypeCS:ConceptSetSelection SpecimenTypeExclude:boolean Quantity:NumericRange Unit:Concept[] "
    "UnitCS:ConceptSetSelection AnatomicSite:Concept[] AnatomicSiteCS:ConceptSetSelection DiseaseStatus:Concept[] "
    "DiseaseStatusCS:ConceptSetSelection SourceId:TextFilter SpecimenSourceConcept:Integer Age:NumericRange "
    "Gender:Concept[] GenderCS:ConceptSetSelection",
    "Death": "CodesetId:Integer OccurrenceStartDate:DateRange DeathType:Concept[] DeathTypeCS:ConceptSetSelection "
    "DeathTypeExclude:boolean DeathSourceConcept:Integer Age:NumericRange Gender:Concept[] "
    "GenderCS:ConceptSetSelection",
    "ObservationPeriod": "First:Boolean PeriodStartDate:DateRange PeriodEndDate:DateRange UserDefinedPeriod:Period "
    "PeriodType:Concept[] PeriodTypeCS:ConceptSetSelection PeriodLength:NumericRange AgeAtStart:NumericRange "
    "AgeAtEnd:NumericRange",
    "PayerPlanPeriod": "First:Boolean PeriodStartDate:DateRange PeriodEndDate:DateRange UserDefinedPeriod:Period "
    "PeriodLength:NumericRange AgeAtStart:NumericRange AgeAtEnd:NumericRange Gender:Concept[] "
    "GenderCS:ConceptSetSelection PayerConcept:Integer PlanConcept:Integer SponsorConcept:Integer "
    "StopReasonConcept:Integer PayerSourceConcept:Integer PlanSourceConcept:Integer SponsorSourceConcept:Integer "
    "StopReasonSourceConcept:Integer",
    "ConditionEra": "CodesetId:Integer First:Boolean EraStartDate:DateRange EraEndDate:DateRange "
    "OccurrenceCount:NumericRange EraLength:NumericRange AgeAtStart:NumericRange AgeAtEnd:NumericRange "
    "Gender:Concept[] GenderCS:ConceptSetSelection",
    "DrugEra": "CodesetId:Integer First:Boolean EraStartDate:DateRange EraEndDate:DateRange "
    "OccurrenceCount:NumericRange GapDays:NumericRange EraLength:NumericRange AgeAtStart:NumericRange "
    "AgeAtEnd:NumericRange Gender:Concept[] GenderCS:ConceptSetSelection",
    "DoseEra": "CodesetId:Integer First:Boolean EraStartDate:DateRange EraEndDate:DateRange Unit:Concept[] "
    "UnitCS:ConceptSetSelection DoseValue:NumericRange EraLength:NumericRange AgeAtStart:NumericRange "
    "AgeAtEnd:NumericRange Gender:Concept[] GenderCS:ConceptSetSelection",
    # LocationRegion extends GeoCriteria (StartDate, EndDate).
    "LocationRegion": "CodesetId:Integer StartDate:DateRange EndDate:DateRange",
}
CRITERIA_BASE = "CorrelatedCriteria:CriteriaGroup DateAdjustment:DateAdjustment"

# ---- Circe-BE v1.12.1: the other classes of the expression, and the Mercia model class of each ----------
OTHER_FIELDS: dict[str, tuple[type[BaseModel], str]] = {
    "CohortExpression": (m.CohortExpression, "cdmVersionRange Title PrimaryCriteria AdditionalCriteria ConceptSets "
                         "QualifiedLimit ExpressionLimit InclusionRules EndStrategy CensoringCriteria "
                         "CollapseSettings CensorWindow"),
    "ConceptSet": (m.ConceptSet, "id name expression"),
    "ConceptSetExpression": (m.ConceptSetExpression, "items"),
    "ConceptSetExpression.ConceptSetItem": (m.ConceptSetItem, "concept isExcluded includeDescendants includeMapped"),
    "vocabulary.Concept": (m.Concept, "CONCEPT_ID CONCEPT_NAME STANDARD_CONCEPT_CAPTION STANDARD_CONCEPT "
                           "INVALID_REASON_CAPTION INVALID_REASON CONCEPT_CODE DOMAIN_ID VOCABULARY_ID "
                           "CONCEPT_CLASS_ID"),
    "PrimaryCriteria": (m.PrimaryCriteria, "CriteriaList ObservationWindow PrimaryCriteriaLimit"),
    "ObservationFilter": (m.ObservationWindow, "PriorDays PostDays"),
    "ResultLimit": (m.ResultLimit, "Type"),
    "InclusionRule": (m.InclusionRule, "name description expression"),
    "CriteriaGroup": (m.CriteriaGroup, "Type Count CriteriaList DemographicCriteriaList Groups"),
    "DemographicCriteria": (m.DemographicCriteria, "Age Gender GenderCS Race RaceCS Ethnicity EthnicityCS "
                            "OccurrenceStartDate OccurrenceEndDate"),
    # CorelatedCriteria extends WindowedCriteria.
    "CorelatedCriteria": (m.CorrelatedCriteria, "Criteria StartWindow EndWindow RestrictVisit "
                          "IgnoreObservationPeriod Occurrence"),
    "Occurrence": (m.Occurrence, "Type Count IsDistinct CountColumn"),
    "Window": (m.Window, "Start End UseIndexEnd UseEventEnd"),
    "Window.Endpoint": (m.WindowBound, "Days Coeff"),
    "DateRange": (m.DateRange, "Value Op Extent"),
    "NumericRange": (m.NumericRange, "Value Op Extent"),
    "TextFilter": (m.TextFilter, "Text Op"),
    "Period": (m.Period, "StartDate EndDate"),
    "ConceptSetSelection": (m.ConceptSetSelection, "CodesetId IsExclusion"),
    "DateAdjustment": (m.DateAdjustment, "StartWith StartOffset EndWith EndOffset"),
    # EndStrategy is a wrapper object naming its subtype.
    "EndStrategy": (m.EndStrategy, "DateOffset CustomEra"),
    "DateOffsetStrategy": (m.DateOffsetStrategy, "DateField Offset"),
    "CustomEraStrategy": (m.CustomEraStrategy, "DrugCodesetId GapDays Offset DaysSupplyOverride"),
    "CollapseSettings": (m.CollapseSettings, "CollapseType EraPad"),
    # Criteria is a wrapper object naming its subtype (@JsonSubTypes).
    "Criteria": (m.Criteria, " ".join(CRITERIA_FIELDS)),
}

# Criteria fields whose Circe-BE SQL reads what CDM 5.3/5.4 lack: they import, and compiling refuses them.
CDM_LACKS = {("DrugExposure", "EffectiveDrugDose"), ("DrugExposure", "DoseUnit"), ("DrugExposure", "DoseUnitCS"),
             ("VisitOccurrence", "PlaceOfServiceLocation"), ("VisitDetail", "PlaceOfServiceLocation")}

SAMPLE: dict[str, Any] = {
    "Integer": 0, "Boolean": True, "boolean": True,
    "DateRange": {"Value": "2002-01-01", "Op": "gt"},
    "NumericRange": {"Value": 1, "Op": "gte"},
    "Concept[]": [{"CONCEPT_ID": 8507}],
    "ConceptSetSelection": {"CodesetId": 0, "IsExclusion": False},
    "TextFilter": {"Text": "x", "Op": "contains"},
    "Period": {"StartDate": "2002-01-01", "EndDate": "2002-02-01"},
    "CriteriaGroup": {"Type": "ALL", "CriteriaList": [], "DemographicCriteriaList": [],
                      "Groups": [{"Type": "ANY", "CriteriaList": [], "DemographicCriteriaList": [], "Groups": []}]},
    "DateAdjustment": {"StartWith": "START_DATE", "StartOffset": 0, "EndWith": "END_DATE", "EndOffset": 1},
}


def _fields(spec: str) -> list[tuple[str, str]]:
    return [tuple(f.split(":")) for f in spec.split()]  # type: ignore[misc]


CASES = [(cls, name, jtype) for cls, spec in CRITERIA_FIELDS.items()
         for name, jtype in _fields(spec) + _fields(CRITERIA_BASE)]


def _definition(cls: str, name: str, value: Any) -> dict[str, Any]:
    return {"ConceptSets": [{"id": 0, "name": "men", "expression": {"items": [{"concept": {"CONCEPT_ID": 8507}}]}}],
            "PrimaryCriteria": {"CriteriaList": [{cls: {name: value}}]}}


def _aliases(model: type[BaseModel]) -> set[str]:
    return {f.alias or n for n, f in model.model_fields.items()}


def test_the_lists_cover_every_criteria_class() -> None:
    """Mercia's domains are Circe-BE's: one model class per Circe criteria class, none missing or extra."""
    assert _aliases(m.Criteria) == set(CRITERIA_FIELDS)
    # 243 @JsonProperty fields in the 16 classes (GeoCriteria's two counted in LocationRegion), plus
    # Criteria's two in each of the 16.
    assert len(CASES) == 243 + 2 * 16


@pytest.mark.parametrize(("cls", "name", "jtype"), CASES, ids=[f"{c}.{n}" for c, n, _ in CASES])
def test_every_criteria_field_imports(cls: str, name: str, jtype: str) -> None:
    expr = parse_circe(_definition(cls, name, SAMPLE[jtype]))
    body = expr.primary_criteria.criteria_list[0].body
    field = next(n for n, f in type(body).model_fields.items() if (f.alias or n) == name)
    assert getattr(body, field) not in (None, [])
    # And it is written back under the same name (export to ATLAS keeps it).
    assert name in to_circe_dict(expr)["PrimaryCriteria"]["CriteriaList"][0][cls]


@pytest.mark.parametrize(("java_class", "model_and_fields"), OTHER_FIELDS.items(), ids=list(OTHER_FIELDS))
def test_every_field_of_the_other_classes_is_an_element(java_class: str,
                                                        model_and_fields: tuple[type[BaseModel], str]) -> None:
    model, spec = model_and_fields
    assert set(spec.split()) - _aliases(model) == set()


@pytest.fixture(scope="module")
def empty_cdm() -> Iterator[Cdm]:
    cdm = Cdm.open(None)
    cdm.create_tables()
    yield cdm
    cdm.close()


@pytest.mark.parametrize(("cls", "name", "jtype"), CASES, ids=[f"{c}.{n}" for c, n, _ in CASES])
def test_every_criteria_field_compiles_and_runs_on_cdm_5_4(empty_cdm: Cdm, cls: str, name: str, jtype: str) -> None:
    """Each field compiles to SQL that runs on a CDM 5.4 (so every column it reads exists), or, where
    Circe-BE's own SQL reads a column or table CDM 5.4 lacks, is refused naming the element and why."""
    expr = parse_circe(_definition(cls, name, SAMPLE[jtype]))
    if (cls, name) in CDM_LACKS or cls == "LocationRegion":
        with pytest.raises(CohortDefinitionError, match=r"^\$\.PrimaryCriteria\.CriteriaList\[0\]\.") as e:
            compile_cohort(empty_cdm, expr)
        assert "not supported (Circe-BE" in str(e.value) and "CDM 5.3/5.4 do not have" in str(e.value)
        assert ((cls == "LocationRegion" and str(e.value).startswith(f"$.PrimaryCriteria.CriteriaList[0].{cls}: "))
                or f".{cls}.{name}: " in str(e.value))
        return
    c = compile_cohort(empty_cdm, expr)
    assert empty_cdm.fetch_all(c.rows_query(), c.params) == []


def test_unset_cdm_lacking_elements_compile(empty_cdm: Cdm) -> None:
    """ATLAS writes unset elements as null or []: those ask for nothing and compile."""
    expr = parse_circe({"PrimaryCriteria": {"CriteriaList": [{"DrugExposure": {
        "EffectiveDrugDose": None, "DoseUnit": [], "DoseUnitCS": None}}]}})
    c = compile_cohort(empty_cdm, expr)
    assert empty_cdm.fetch_all(c.rows_query(), c.params) == []


def test_condition_stop_reason_in_mercias_own_language() -> None:
    """The cohort language says it as a filter; its YAML reads back the same, and exports as Circe's."""
    from mercia.cohorts import dsl

    c = dsl.cohort("resolved A").entry(dsl.drug(dsl.concepts("x", 1118084))).require(
        dsl.condition(dsl.concepts("a", 201826)).filter(stop_reason={"text": "resolved", "op": "startsWith"})
        .within(days_before=365).at_least(1))
    text = c.to_yaml()
    assert "stop_reason: {text: resolved, op: startsWith}" in text
    d = dsl.from_yaml(text)
    assert d == c.build()
    circe = to_circe_dict(d.expression)["InclusionRules"][0]["expression"]["CriteriaList"][0]["Criteria"]
    assert circe["ConditionOccurrence"]["StopReason"] == {"Text": "resolved", "Op": "startsWith"}


@pytest.mark.parametrize(("cls", "name", "jtype"), CASES, ids=[f"{c}.{n}" for c, n, _ in CASES])
def test_every_criteria_field_is_said_in_the_cohort_language(cls: str, name: str, jtype: str) -> None:
    """Written in Mercia's cohort language (YAML) and read back, each field gives the same definition."""
    from mercia.cohorts import dsl
    from mercia.cohorts.model import CohortDefinition

    d = CohortDefinition(name="one field", expression=parse_circe(_definition(cls, name, SAMPLE[jtype])))
    assert dsl.from_yaml(dsl.to_yaml(d)) == d
