"""The cohort model: what a cohort definition says, apart from any database.

It follows OHDSI Circe's CohortExpression (the JSON ATLAS exports) element for element, so a Circe
definition imports without loss and compiles to the same rows. Field names are Mercia's snake_case;
each field's alias is Circe's name, so one model reads both forms:

* Mercia form (JSON/YAML written by ``CohortDefinition.to_json``/``to_yaml``): snake_case keys.
* Circe form (ATLAS JSON): PascalCase keys, read by ``mercia.cohorts.circe.from_circe_json``.

Every model forbids unknown keys, so an element Mercia does not understand is an error naming its
path, never silently ignored.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from mercia import limits
from mercia.errors import CohortDefinitionError

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
NUMERIC_OPS = ("lt", "lte", "eq", "!eq", "gt", "gte", "bt", "!bt")

# Bounded types (see mercia.limits for why each bound): a value outside is an error naming its path.
Days = Annotated[int, Field(ge=-limits.MAX_DAYS, le=limits.MAX_DAYS)]
DaysAfter = Annotated[int, Field(ge=0, le=limits.MAX_DAYS)]
Count = Annotated[int, Field(ge=0, le=limits.MAX_INT32)]
CodesetId = Annotated[int, Field(ge=-limits.MAX_INT32 - 1, le=limits.MAX_INT32)]
ConceptId = Annotated[int, Field(ge=limits.MIN_INT64, le=limits.MAX_INT64)]
RangeValue = Annotated[float, Field(allow_inf_nan=False, ge=-limits.MAX_RANGE_VALUE, le=limits.MAX_RANGE_VALUE)]
Name = Annotated[str, Field(max_length=limits.MAX_NAME)]


class _Model(BaseModel):
    # populate_by_name: the Mercia form uses field names, the Circe form aliases; both validate.
    # Every text is bounded (names more tightly, below); lists are bounded field by field.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=False,
                              str_max_length=limits.MAX_TEXT)

    @model_validator(mode="before")
    @classmethod
    def _utf8_text(cls, data: Any) -> Any:
        # Text that cannot be written as UTF-8 (a lone surrogate from a JSON escape) would fail later
        # in a database, a log or a report: refuse it here, where its path is known.
        if isinstance(data, dict):
            for k, v in data.items():
                if isinstance(v, str) and limits.json_problem(v) is not None:
                    raise ValueError(f"{k}: not valid Unicode text (it holds a lone UTF-16 surrogate)")
        return data

    @model_validator(mode="before")
    @classmethod
    def _drop_unset_unsupported(cls, data: Any) -> Any:
        # ATLAS writes unset elements as null or []; an unset element asks for nothing, so even an
        # element Mercia cannot compile is harmless then. Set ones still fail as "not supported".
        if isinstance(data, dict) and any(k in NOT_SUPPORTED and v in (None, []) for k, v in data.items()):
            return {k: v for k, v in data.items() if not (k in NOT_SUPPORTED and v in (None, []))}
        return data


# ---- small value types ---------------------------------------------------------------------------
class Concept(_Model):
    """A concept as ATLAS embeds it (only the id matters for cohort logic; the rest is display)."""

    concept_id: ConceptId = Field(alias="CONCEPT_ID")
    concept_name: str | None = Field(None, alias="CONCEPT_NAME")
    standard_concept: str | None = Field(None, alias="STANDARD_CONCEPT")
    standard_concept_caption: str | None = Field(None, alias="STANDARD_CONCEPT_CAPTION")
    invalid_reason: str | None = Field(None, alias="INVALID_REASON")
    invalid_reason_caption: str | None = Field(None, alias="INVALID_REASON_CAPTION")
    concept_code: str | None = Field(None, alias="CONCEPT_CODE")
    domain_id: str | None = Field(None, alias="DOMAIN_ID")
    vocabulary_id: str | None = Field(None, alias="VOCABULARY_ID")
    concept_class_id: str | None = Field(None, alias="CONCEPT_CLASS_ID")
    valid_start_date: str | None = Field(None, alias="VALID_START_DATE")
    valid_end_date: str | None = Field(None, alias="VALID_END_DATE")


ConceptList = Annotated[list[Concept], Field(max_length=limits.MAX_LIST)]


class ConceptSetItem(_Model):
    concept: Concept
    is_excluded: bool = Field(False, alias="isExcluded")
    include_descendants: bool = Field(False, alias="includeDescendants")
    include_mapped: bool = Field(False, alias="includeMapped")


class ConceptSetExpression(_Model):
    items: list[ConceptSetItem] = Field(default_factory=list, max_length=limits.MAX_CONCEPT_SET_ITEMS)


class ConceptSet(_Model):
    id: CodesetId
    name: Name = ""
    expression: ConceptSetExpression = Field(default_factory=ConceptSetExpression)


class ConceptSetSelection(_Model):
    """Circe's '...CS' filters: the column's concept in (or, with is_exclusion, not in) a concept set."""

    codeset_id: CodesetId | None = Field(None, alias="CodesetId")
    is_exclusion: bool = Field(False, alias="IsExclusion")


class NumericRange(_Model):
    value: RangeValue = Field(alias="Value")
    op: str = Field(alias="Op")
    extent: RangeValue | None = Field(None, alias="Extent")

    @field_validator("op")
    @classmethod
    def _op(cls, v: str) -> str:
        if v not in NUMERIC_OPS:
            raise ValueError(f"unknown operator {v!r} (expected one of {', '.join(NUMERIC_OPS)})")
        return v

    @model_validator(mode="after")
    def _extent(self) -> NumericRange:
        if self.op.endswith("bt"):
            if self.extent is None:
                raise ValueError(f"operator {self.op!r} needs an Extent (the upper bound)")
            if self.extent < self.value:
                raise ValueError(f"inverted range: Value {self.value} is greater than Extent {self.extent}")
        return self


def _parse_date(v: Any) -> dt.date:
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return v
    if not isinstance(v, str) or not _DATE.match(v):
        raise ValueError(f"invalid date {v!r}: write dates as YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(v)
    except ValueError as e:
        raise ValueError(f"invalid date {v!r}: {e}") from e


class DateRange(_Model):
    value: dt.date = Field(alias="Value")
    op: str = Field(alias="Op")
    extent: dt.date | None = Field(None, alias="Extent")

    @field_validator("value", "extent", mode="before")
    @classmethod
    def _date(cls, v: Any) -> Any:
        return None if v is None else _parse_date(v)

    @field_validator("op")
    @classmethod
    def _op(cls, v: str) -> str:
        if v not in NUMERIC_OPS:
            raise ValueError(f"unknown operator {v!r} (expected one of {', '.join(NUMERIC_OPS)})")
        return v

    @model_validator(mode="after")
    def _extent(self) -> DateRange:
        if self.op.endswith("bt"):
            if self.extent is None:
                raise ValueError(f"operator {self.op!r} needs an Extent (the end date)")
            if self.extent < self.value:
                raise ValueError(f"inverted date range: {self.value} is after {self.extent}")
        return self


# Circe-BE accepts any operator: '!' negates, startsWith/endsWith/contains add the % wildcards, anything
# else (ATLAS writes eq/!eq) compares with LIKE 'text' as written.
TEXT_OPS = ("startsWith", "contains", "endsWith", "eq", "!startsWith", "!contains", "!endsWith", "!eq")


class TextFilter(_Model):
    """Circe's text filter: the column LIKE the text with % before/after as the operator says (the
    text's own % and _ are wildcards too, as in Circe-BE's BuilderUtils.buildTextFilterClause)."""

    text: str = Field(alias="Text")
    op: str = Field(alias="Op")

    @field_validator("op")
    @classmethod
    def _op(cls, v: str) -> str:
        if v not in TEXT_OPS:
            raise ValueError(f"unknown text operator {v!r} (expected one of {', '.join(TEXT_OPS)})")
        return v


class DateAdjustment(_Model):
    """Circe's DateAdjustment: the event's start and end become (StartWith + StartOffset days,
    EndWith + EndOffset days); events whose adjusted end is before their adjusted start are dropped."""

    start_with: Literal["START_DATE", "END_DATE"] = Field("START_DATE", alias="StartWith")
    start_offset: Days = Field(0, alias="StartOffset")
    end_with: Literal["START_DATE", "END_DATE"] = Field("END_DATE", alias="EndWith")
    end_offset: Days = Field(0, alias="EndOffset")


class Period(_Model):
    start_date: dt.date | None = Field(None, alias="StartDate")
    end_date: dt.date | None = Field(None, alias="EndDate")

    @field_validator("start_date", "end_date", mode="before")
    @classmethod
    def _date(cls, v: Any) -> Any:
        # ATLAS writes an unset censor date as null or leaves the key out.
        return None if v in (None, "") else _parse_date(v)

    @model_validator(mode="after")
    def _order(self) -> Period:
        if self.start_date and self.end_date and self.start_date > self.end_date:
            raise ValueError(f"inverted period: StartDate {self.start_date} is after EndDate {self.end_date}")
        return self


# ---- criteria -----------------------------------------------------------------------------------
class _Criteria(_Model):
    """Fields every domain criterion has. `correlated_criteria` restricts the events themselves."""

    correlated_criteria: CriteriaGroup | None = Field(None, alias="CorrelatedCriteria")
    date_adjustment: DateAdjustment | None = Field(None, alias="DateAdjustment")


class _EventCriteria(_Criteria):
    codeset_id: CodesetId | None = Field(None, alias="CodesetId")
    first: bool | None = Field(None, alias="First")
    occurrence_start_date: DateRange | None = Field(None, alias="OccurrenceStartDate")
    occurrence_end_date: DateRange | None = Field(None, alias="OccurrenceEndDate")
    age: NumericRange | None = Field(None, alias="Age")
    gender: ConceptList | None = Field(None, alias="Gender")
    gender_cs: ConceptSetSelection | None = Field(None, alias="GenderCS")


class _VisitFiltered(_EventCriteria):
    # The kind of visit the event happened in (visit_occurrence.visit_concept_id).
    visit_type: ConceptList | None = Field(None, alias="VisitType")
    visit_type_cs: ConceptSetSelection | None = Field(None, alias="VisitTypeCS")
    # The specialty of the event's provider (provider.specialty_concept_id).
    provider_specialty: ConceptList | None = Field(None, alias="ProviderSpecialty")
    provider_specialty_cs: ConceptSetSelection | None = Field(None, alias="ProviderSpecialtyCS")


class ConditionOccurrence(_VisitFiltered):
    condition_type: ConceptList | None = Field(None, alias="ConditionType")
    condition_type_exclude: bool = Field(False, alias="ConditionTypeExclude")
    condition_type_cs: ConceptSetSelection | None = Field(None, alias="ConditionTypeCS")
    condition_source_concept: ConceptId | None = Field(None, alias="ConditionSourceConcept")
    condition_status: ConceptList | None = Field(None, alias="ConditionStatus")
    condition_status_cs: ConceptSetSelection | None = Field(None, alias="ConditionStatusCS")
    # condition_occurrence.stop_reason (a column in CDM 5.3 and 5.4) LIKE the text, as Circe-BE.
    stop_reason: TextFilter | None = Field(None, alias="StopReason")


class DrugExposure(_VisitFiltered):
    drug_type: ConceptList | None = Field(None, alias="DrugType")
    drug_type_exclude: bool = Field(False, alias="DrugTypeExclude")
    drug_type_cs: ConceptSetSelection | None = Field(None, alias="DrugTypeCS")
    drug_source_concept: ConceptId | None = Field(None, alias="DrugSourceConcept")
    days_supply: NumericRange | None = Field(None, alias="DaysSupply")
    quantity: NumericRange | None = Field(None, alias="Quantity")
    refills: NumericRange | None = Field(None, alias="Refills")
    route_concept: ConceptList | None = Field(None, alias="RouteConcept")
    route_concept_cs: ConceptSetSelection | None = Field(None, alias="RouteConceptCS")
    stop_reason: TextFilter | None = Field(None, alias="StopReason")
    lot_number: TextFilter | None = Field(None, alias="LotNumber")
    # Valid Circe that reads drug_exposure columns CDM 5.3/5.4 do not have: accepted, refused when compiled.
    effective_drug_dose: NumericRange | None = Field(None, alias="EffectiveDrugDose")
    dose_unit: ConceptList | None = Field(None, alias="DoseUnit")
    dose_unit_cs: ConceptSetSelection | None = Field(None, alias="DoseUnitCS")


class ProcedureOccurrence(_VisitFiltered):
    procedure_type: ConceptList | None = Field(None, alias="ProcedureType")
    procedure_type_exclude: bool = Field(False, alias="ProcedureTypeExclude")
    procedure_type_cs: ConceptSetSelection | None = Field(None, alias="ProcedureTypeCS")
    procedure_source_concept: ConceptId | None = Field(None, alias="ProcedureSourceConcept")
    modifier: ConceptList | None = Field(None, alias="Modifier")
    modifier_cs: ConceptSetSelection | None = Field(None, alias="ModifierCS")
    quantity: NumericRange | None = Field(None, alias="Quantity")


class Measurement(_VisitFiltered):
    measurement_type: ConceptList | None = Field(None, alias="MeasurementType")
    measurement_type_exclude: bool = Field(False, alias="MeasurementTypeExclude")
    measurement_type_cs: ConceptSetSelection | None = Field(None, alias="MeasurementTypeCS")
    measurement_source_concept: ConceptId | None = Field(None, alias="MeasurementSourceConcept")
    operator: ConceptList | None = Field(None, alias="Operator")
    operator_cs: ConceptSetSelection | None = Field(None, alias="OperatorCS")
    value_as_number: NumericRange | None = Field(None, alias="ValueAsNumber")
    value_as_concept: ConceptList | None = Field(None, alias="ValueAsConcept")
    value_as_concept_cs: ConceptSetSelection | None = Field(None, alias="ValueAsConceptCS")
    unit: ConceptList | None = Field(None, alias="Unit")
    unit_cs: ConceptSetSelection | None = Field(None, alias="UnitCS")
    range_low: NumericRange | None = Field(None, alias="RangeLow")
    range_high: NumericRange | None = Field(None, alias="RangeHigh")
    range_low_ratio: NumericRange | None = Field(None, alias="RangeLowRatio")
    range_high_ratio: NumericRange | None = Field(None, alias="RangeHighRatio")
    abnormal: bool | None = Field(None, alias="Abnormal")


class Observation(_VisitFiltered):
    observation_type: ConceptList | None = Field(None, alias="ObservationType")
    observation_type_exclude: bool = Field(False, alias="ObservationTypeExclude")
    observation_type_cs: ConceptSetSelection | None = Field(None, alias="ObservationTypeCS")
    observation_source_concept: ConceptId | None = Field(None, alias="ObservationSourceConcept")
    value_as_number: NumericRange | None = Field(None, alias="ValueAsNumber")
    value_as_string: TextFilter | None = Field(None, alias="ValueAsString")
    value_as_concept: ConceptList | None = Field(None, alias="ValueAsConcept")
    value_as_concept_cs: ConceptSetSelection | None = Field(None, alias="ValueAsConceptCS")
    qualifier: ConceptList | None = Field(None, alias="Qualifier")
    qualifier_cs: ConceptSetSelection | None = Field(None, alias="QualifierCS")
    unit: ConceptList | None = Field(None, alias="Unit")
    unit_cs: ConceptSetSelection | None = Field(None, alias="UnitCS")


class DeviceExposure(_VisitFiltered):
    device_type: ConceptList | None = Field(None, alias="DeviceType")
    device_type_exclude: bool = Field(False, alias="DeviceTypeExclude")
    device_type_cs: ConceptSetSelection | None = Field(None, alias="DeviceTypeCS")
    device_source_concept: ConceptId | None = Field(None, alias="DeviceSourceConcept")
    quantity: NumericRange | None = Field(None, alias="Quantity")
    unique_device_id: TextFilter | None = Field(None, alias="UniqueDeviceId")


class VisitOccurrence(_EventCriteria):
    # Circe's VisitType on a visit criterion filters visit_type_concept_id (how the visit was recorded).
    visit_type: ConceptList | None = Field(None, alias="VisitType")
    visit_type_exclude: bool = Field(False, alias="VisitTypeExclude")
    visit_type_cs: ConceptSetSelection | None = Field(None, alias="VisitTypeCS")
    visit_source_concept: ConceptId | None = Field(None, alias="VisitSourceConcept")
    visit_length: NumericRange | None = Field(None, alias="VisitLength")
    provider_specialty: ConceptList | None = Field(None, alias="ProviderSpecialty")
    provider_specialty_cs: ConceptSetSelection | None = Field(None, alias="ProviderSpecialtyCS")
    # The place of service of the visit's care site (care_site.place_of_service_concept_id).
    place_of_service: ConceptList | None = Field(None, alias="PlaceOfService")
    place_of_service_cs: ConceptSetSelection | None = Field(None, alias="PlaceOfServiceCS")
    # A concept set of regions of the care site's location over time (Circe-BE reads LOCATION_HISTORY,
    # which CDM 5.3/5.4 do not have): accepted, refused when compiled.
    place_of_service_location: CodesetId | None = Field(None, alias="PlaceOfServiceLocation")


class VisitDetail(_Criteria):
    codeset_id: CodesetId | None = Field(None, alias="CodesetId")
    first: bool | None = Field(None, alias="First")
    visit_detail_start_date: DateRange | None = Field(None, alias="VisitDetailStartDate")
    visit_detail_end_date: DateRange | None = Field(None, alias="VisitDetailEndDate")
    visit_detail_type_cs: ConceptSetSelection | None = Field(None, alias="VisitDetailTypeCS")
    visit_detail_source_concept: ConceptId | None = Field(None, alias="VisitDetailSourceConcept")
    visit_detail_length: NumericRange | None = Field(None, alias="VisitDetailLength")
    age: NumericRange | None = Field(None, alias="Age")
    gender_cs: ConceptSetSelection | None = Field(None, alias="GenderCS")
    # The specialty of the detail's provider, the place of service of its care site (VisitDetailSqlBuilder).
    provider_specialty_cs: ConceptSetSelection | None = Field(None, alias="ProviderSpecialtyCS")
    place_of_service_cs: ConceptSetSelection | None = Field(None, alias="PlaceOfServiceCS")
    place_of_service_location: CodesetId | None = Field(None, alias="PlaceOfServiceLocation")


class Death(_Criteria):
    codeset_id: CodesetId | None = Field(None, alias="CodesetId")
    occurrence_start_date: DateRange | None = Field(None, alias="OccurrenceStartDate")
    death_type: ConceptList | None = Field(None, alias="DeathType")
    death_type_exclude: bool = Field(False, alias="DeathTypeExclude")
    death_type_cs: ConceptSetSelection | None = Field(None, alias="DeathTypeCS")
    death_source_concept: ConceptId | None = Field(None, alias="DeathSourceConcept")
    age: NumericRange | None = Field(None, alias="Age")
    gender: ConceptList | None = Field(None, alias="Gender")
    gender_cs: ConceptSetSelection | None = Field(None, alias="GenderCS")


class _EraCriteria(_Criteria):
    codeset_id: CodesetId | None = Field(None, alias="CodesetId")
    first: bool | None = Field(None, alias="First")
    era_start_date: DateRange | None = Field(None, alias="EraStartDate")
    era_end_date: DateRange | None = Field(None, alias="EraEndDate")
    occurrence_count: NumericRange | None = Field(None, alias="OccurrenceCount")
    era_length: NumericRange | None = Field(None, alias="EraLength")
    age_at_start: NumericRange | None = Field(None, alias="AgeAtStart")
    age_at_end: NumericRange | None = Field(None, alias="AgeAtEnd")
    gender: ConceptList | None = Field(None, alias="Gender")
    gender_cs: ConceptSetSelection | None = Field(None, alias="GenderCS")


class DrugEra(_EraCriteria):
    gap_days: NumericRange | None = Field(None, alias="GapDays")


class ConditionEra(_EraCriteria):
    pass


class DoseEra(_Criteria):
    """Circe's DoseEra: rows of DOSE_ERA (drug, unit, dose value, start and end)."""

    codeset_id: CodesetId | None = Field(None, alias="CodesetId")
    first: bool | None = Field(None, alias="First")
    era_start_date: DateRange | None = Field(None, alias="EraStartDate")
    era_end_date: DateRange | None = Field(None, alias="EraEndDate")
    unit: ConceptList | None = Field(None, alias="Unit")
    unit_cs: ConceptSetSelection | None = Field(None, alias="UnitCS")
    dose_value: NumericRange | None = Field(None, alias="DoseValue")
    era_length: NumericRange | None = Field(None, alias="EraLength")
    age_at_start: NumericRange | None = Field(None, alias="AgeAtStart")
    age_at_end: NumericRange | None = Field(None, alias="AgeAtEnd")
    gender: ConceptList | None = Field(None, alias="Gender")
    gender_cs: ConceptSetSelection | None = Field(None, alias="GenderCS")


class ObservationPeriod(_Criteria):
    first: bool | None = Field(None, alias="First")
    period_start_date: DateRange | None = Field(None, alias="PeriodStartDate")
    period_end_date: DateRange | None = Field(None, alias="PeriodEndDate")
    period_type: ConceptList | None = Field(None, alias="PeriodType")
    period_type_cs: ConceptSetSelection | None = Field(None, alias="PeriodTypeCS")
    period_length: NumericRange | None = Field(None, alias="PeriodLength")
    # The event is this period (its dates replace the observation period's) for persons observed on them.
    user_defined_period: Period | None = Field(None, alias="UserDefinedPeriod")
    age_at_start: NumericRange | None = Field(None, alias="AgeAtStart")
    age_at_end: NumericRange | None = Field(None, alias="AgeAtEnd")


class PayerPlanPeriod(_Criteria):
    """Circe's PayerPlanPeriod: rows of PAYER_PLAN_PERIOD; the ...Concept fields name concept sets."""

    first: bool | None = Field(None, alias="First")
    period_start_date: DateRange | None = Field(None, alias="PeriodStartDate")
    period_end_date: DateRange | None = Field(None, alias="PeriodEndDate")
    user_defined_period: Period | None = Field(None, alias="UserDefinedPeriod")
    period_length: NumericRange | None = Field(None, alias="PeriodLength")
    age_at_start: NumericRange | None = Field(None, alias="AgeAtStart")
    age_at_end: NumericRange | None = Field(None, alias="AgeAtEnd")
    gender: ConceptList | None = Field(None, alias="Gender")
    gender_cs: ConceptSetSelection | None = Field(None, alias="GenderCS")
    payer_concept: CodesetId | None = Field(None, alias="PayerConcept")
    plan_concept: CodesetId | None = Field(None, alias="PlanConcept")
    sponsor_concept: CodesetId | None = Field(None, alias="SponsorConcept")
    stop_reason_concept: CodesetId | None = Field(None, alias="StopReasonConcept")
    payer_source_concept: ConceptId | None = Field(None, alias="PayerSourceConcept")
    plan_source_concept: ConceptId | None = Field(None, alias="PlanSourceConcept")
    sponsor_source_concept: ConceptId | None = Field(None, alias="SponsorSourceConcept")
    stop_reason_source_concept: ConceptId | None = Field(None, alias="StopReasonSourceConcept")


class Specimen(_Criteria):
    codeset_id: CodesetId | None = Field(None, alias="CodesetId")
    first: bool | None = Field(None, alias="First")
    occurrence_start_date: DateRange | None = Field(None, alias="OccurrenceStartDate")
    specimen_type: ConceptList | None = Field(None, alias="SpecimenType")
    specimen_type_exclude: bool = Field(False, alias="SpecimenTypeExclude")
    specimen_type_cs: ConceptSetSelection | None = Field(None, alias="SpecimenTypeCS")
    quantity: NumericRange | None = Field(None, alias="Quantity")
    unit: ConceptList | None = Field(None, alias="Unit")
    unit_cs: ConceptSetSelection | None = Field(None, alias="UnitCS")
    anatomic_site: ConceptList | None = Field(None, alias="AnatomicSite")
    anatomic_site_cs: ConceptSetSelection | None = Field(None, alias="AnatomicSiteCS")
    disease_status: ConceptList | None = Field(None, alias="DiseaseStatus")
    disease_status_cs: ConceptSetSelection | None = Field(None, alias="DiseaseStatusCS")
    # specimen.specimen_source_id LIKE the text (SpecimenSqlBuilder).
    source_id: TextFilter | None = Field(None, alias="SourceId")
    # Circe-BE 1.12 reads SpecimenSourceConcept into its model but its SpecimenSqlBuilder never uses it:
    # it selects nothing there, so it selects nothing here either (see the cohort language reference).
    specimen_source_concept: CodesetId | None = Field(None, alias="SpecimenSourceConcept")
    age: NumericRange | None = Field(None, alias="Age")
    gender: ConceptList | None = Field(None, alias="Gender")
    gender_cs: ConceptSetSelection | None = Field(None, alias="GenderCS")


class LocationRegion(_Criteria):
    """Circe's LocationRegion: a person's location history in a concept set of regions. Circe-BE reads the
    LOCATION_HISTORY table, which CDM 5.3/5.4 do not have: accepted, refused when compiled. Its builder
    ignores StartDate and EndDate (GeoCriteria's)."""

    codeset_id: CodesetId | None = Field(None, alias="CodesetId")
    start_date: DateRange | None = Field(None, alias="StartDate")
    end_date: DateRange | None = Field(None, alias="EndDate")


DomainCriteria = (
    ConditionOccurrence | DrugExposure | DrugEra | ConditionEra | ProcedureOccurrence | Measurement
    | Observation | VisitOccurrence | DeviceExposure | Death | ObservationPeriod | Specimen | VisitDetail | DoseEra
    | PayerPlanPeriod | LocationRegion
)


class Criteria(_Model):
    """One domain criterion, written as Circe writes it: ``{"ConditionOccurrence": {...}}``."""

    condition_occurrence: ConditionOccurrence | None = Field(None, alias="ConditionOccurrence")
    drug_exposure: DrugExposure | None = Field(None, alias="DrugExposure")
    drug_era: DrugEra | None = Field(None, alias="DrugEra")
    condition_era: ConditionEra | None = Field(None, alias="ConditionEra")
    procedure_occurrence: ProcedureOccurrence | None = Field(None, alias="ProcedureOccurrence")
    measurement: Measurement | None = Field(None, alias="Measurement")
    observation: Observation | None = Field(None, alias="Observation")
    visit_occurrence: VisitOccurrence | None = Field(None, alias="VisitOccurrence")
    device_exposure: DeviceExposure | None = Field(None, alias="DeviceExposure")
    death: Death | None = Field(None, alias="Death")
    observation_period: ObservationPeriod | None = Field(None, alias="ObservationPeriod")
    specimen: Specimen | None = Field(None, alias="Specimen")
    visit_detail: VisitDetail | None = Field(None, alias="VisitDetail")
    dose_era: DoseEra | None = Field(None, alias="DoseEra")
    payer_plan_period: PayerPlanPeriod | None = Field(None, alias="PayerPlanPeriod")
    location_region: LocationRegion | None = Field(None, alias="LocationRegion")

    @model_validator(mode="after")
    def _exactly_one(self) -> Criteria:
        set_ = [n for n in type(self).model_fields if getattr(self, n) is not None]
        if len(set_) != 1:
            raise ValueError(f"a criterion names exactly one domain (found {len(set_)}: {', '.join(set_) or 'none'})")
        return self

    @property
    def domain(self) -> str:
        return next(n for n in type(self).model_fields if getattr(self, n) is not None)

    @property
    def body(self) -> DomainCriteria:
        return getattr(self, self.domain)


# ---- correlated criteria and groups ---------------------------------------------------------
class WindowBound(_Model):
    """Days relative to the index date: coeff -1 is before, +1 after; days None means unbounded
    (then the window stops at the observation period's start or end, unless it is ignored)."""

    days: int | None = Field(None, alias="Days", ge=0, le=limits.MAX_DAYS)
    coeff: Literal[-1, 1] = Field(1, alias="Coeff")

    def offset(self) -> float:
        return self.coeff * (self.days if self.days is not None else float("inf"))


class Window(_Model):
    start: WindowBound = Field(alias="Start")
    end: WindowBound = Field(alias="End")
    use_index_end: bool | None = Field(None, alias="UseIndexEnd")
    use_event_end: bool | None = Field(None, alias="UseEventEnd")

    @model_validator(mode="after")
    def _not_inverted(self) -> Window:
        if self.start.offset() > self.end.offset():
            raise ValueError(
                f"inverted window: its start ({_describe(self.start)}) is after its end ({_describe(self.end)})"
            )
        return self


def _describe(b: WindowBound) -> str:
    if b.days is None:
        return "all days " + ("before" if b.coeff == -1 else "after")
    return f"{b.days} days " + ("before" if b.coeff == -1 else "after")


_OCCURRENCE_NAMES = {0: "exactly", 1: "at_most", 2: "at_least"}


class Occurrence(_Model):
    type: Literal["exactly", "at_most", "at_least"] = Field(alias="Type")
    count: Count = Field(alias="Count")
    is_distinct: bool = Field(False, alias="IsDistinct")
    count_column: Literal["DOMAIN_CONCEPT", "START_DATE", "END_DATE", "VISIT_ID"] | None = Field(
        None, alias="CountColumn"
    )

    @field_serializer("type")
    def _type_out(self, v: str, info: SerializationInfo) -> str | int:
        # Written with Circe's names (by_alias) the type is Circe's number again.
        return {n: i for i, n in _OCCURRENCE_NAMES.items()}[v] if info.by_alias else v

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> Any:
        # Circe writes the occurrence type as 0/1/2; Mercia's own form uses the names.
        if isinstance(v, int) and not isinstance(v, bool):
            if v not in _OCCURRENCE_NAMES:
                raise ValueError(f"unknown occurrence type {v} (0 exactly, 1 at most, 2 at least)")
            return _OCCURRENCE_NAMES[v]
        return v.lower() if isinstance(v, str) else v


class CorrelatedCriteria(_Model):
    criteria: Criteria = Field(alias="Criteria")
    start_window: Window = Field(alias="StartWindow")
    end_window: Window | None = Field(None, alias="EndWindow")
    restrict_visit: bool = Field(False, alias="RestrictVisit")
    ignore_observation_period: bool = Field(False, alias="IgnoreObservationPeriod")
    occurrence: Occurrence = Field(alias="Occurrence")


class DemographicCriteria(_Model):
    age: NumericRange | None = Field(None, alias="Age")
    gender: ConceptList | None = Field(None, alias="Gender")
    race: ConceptList | None = Field(None, alias="Race")
    ethnicity: ConceptList | None = Field(None, alias="Ethnicity")
    gender_cs: ConceptSetSelection | None = Field(None, alias="GenderCS")
    race_cs: ConceptSetSelection | None = Field(None, alias="RaceCS")
    ethnicity_cs: ConceptSetSelection | None = Field(None, alias="EthnicityCS")
    occurrence_start_date: DateRange | None = Field(None, alias="OccurrenceStartDate")
    occurrence_end_date: DateRange | None = Field(None, alias="OccurrenceEndDate")


class CriteriaGroup(_Model):
    type: Literal["ALL", "ANY", "AT_LEAST", "AT_MOST"] = Field("ALL", alias="Type")
    count: Count | None = Field(None, alias="Count")
    criteria_list: list[CorrelatedCriteria] = Field(default_factory=list, alias="CriteriaList",
                                                    max_length=limits.MAX_LIST)
    demographic_criteria_list: list[DemographicCriteria] = Field(
        default_factory=list, alias="DemographicCriteriaList", max_length=limits.MAX_LIST
    )
    groups: list[CriteriaGroup] = Field(default_factory=list, alias="Groups", max_length=limits.MAX_LIST)

    @field_validator("type", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _count(self) -> CriteriaGroup:
        if self.type in ("AT_LEAST", "AT_MOST") and self.count is None:
            raise ValueError(f"a group of type {self.type} needs a Count")
        return self

    def is_empty(self) -> bool:
        return not (self.criteria_list or self.demographic_criteria_list or self.groups)


# ---- the expression -------------------------------------------------------------------------
class ObservationWindow(_Model):
    prior_days: DaysAfter = Field(0, alias="PriorDays")
    post_days: DaysAfter = Field(0, alias="PostDays")


class ResultLimit(_Model):
    type: Literal["First", "All", "Last"] = Field("First", alias="Type")

    @field_validator("type", mode="before")
    @classmethod
    def _norm(cls, v: Any) -> Any:
        return v.capitalize() if isinstance(v, str) else v


class PrimaryCriteria(_Model):
    criteria_list: list[Criteria] = Field(alias="CriteriaList", min_length=1, max_length=limits.MAX_LIST)
    observation_window: ObservationWindow = Field(default_factory=ObservationWindow, alias="ObservationWindow")
    primary_limit: ResultLimit = Field(default_factory=ResultLimit, alias="PrimaryCriteriaLimit")


class InclusionRule(_Model):
    name: Name = ""
    description: str | None = None
    expression: CriteriaGroup = Field(default_factory=CriteriaGroup)


class DateOffsetStrategy(_Model):
    date_field: Literal["StartDate", "EndDate"] = Field(alias="DateField")
    offset: Days = Field(0, alias="Offset")


class CustomEraStrategy(_Model):
    drug_codeset_id: CodesetId = Field(alias="DrugCodesetId")
    gap_days: DaysAfter = Field(0, alias="GapDays")
    offset: Days = Field(0, alias="Offset")
    days_supply_override: DaysAfter | None = Field(None, alias="DaysSupplyOverride")


class EndStrategy(_Model):
    date_offset: DateOffsetStrategy | None = Field(None, alias="DateOffset")
    custom_era: CustomEraStrategy | None = Field(None, alias="CustomEra")

    @model_validator(mode="after")
    def _one(self) -> EndStrategy:
        if (self.date_offset is None) == (self.custom_era is None):
            raise ValueError("an end strategy is exactly one of DateOffset or CustomEra")
        return self


class CollapseSettings(_Model):
    collapse_type: Literal["ERA"] = Field("ERA", alias="CollapseType")
    era_pad: DaysAfter = Field(0, alias="EraPad")


class CohortExpression(_Model):
    """A Circe CohortExpression."""

    concept_sets: list[ConceptSet] = Field(default_factory=list, alias="ConceptSets", max_length=limits.MAX_LIST)
    primary_criteria: PrimaryCriteria = Field(alias="PrimaryCriteria")
    additional_criteria: CriteriaGroup | None = Field(None, alias="AdditionalCriteria")
    qualified_limit: ResultLimit = Field(default_factory=ResultLimit, alias="QualifiedLimit")
    expression_limit: ResultLimit = Field(default_factory=ResultLimit, alias="ExpressionLimit")
    inclusion_rules: list[InclusionRule] = Field(default_factory=list, alias="InclusionRules", max_length=limits.MAX_LIST)
    end_strategy: EndStrategy | None = Field(None, alias="EndStrategy")
    censoring_criteria: list[Criteria] = Field(default_factory=list, alias="CensoringCriteria", max_length=limits.MAX_LIST)
    collapse_settings: CollapseSettings = Field(default_factory=CollapseSettings, alias="CollapseSettings")
    censor_window: Period = Field(default_factory=Period, alias="CensorWindow")
    cdm_version_range: str | None = Field(None, alias="cdmVersionRange")
    title: str | None = Field(None, alias="Title")

    @model_validator(mode="after")
    def _codesets_exist(self) -> CohortExpression:
        ids = [cs.id for cs in self.concept_sets]
        if len(ids) != len(set(ids)):
            raise ValueError(f"concept set ids must be unique (got {sorted(ids)})")
        if len(self.inclusion_rules) > 62:
            raise ValueError("at most 62 inclusion rules (the attrition mask is a 64-bit integer)")
        too_deep = _too_deep(self)
        if too_deep:
            raise ValueError(f"{too_deep}: criteria groups nested more than {limits.MAX_GROUP_DEPTH} deep (groups "
                             "in groups and in correlated criteria; each level is a nested query)")
        return self


def _too_deep(x: BaseModel) -> str | None:
    """The path (Circe's names) of the first criteria group nested deeper than MAX_GROUP_DEPTH, counting
    groups inside groups and inside criteria's correlated criteria along any path, or None."""
    stack: list[tuple[Any, str, int]] = [(x, "", 0)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, ConceptSet | Concept):
            continue  # no groups inside
        if isinstance(v, CriteriaGroup):
            depth += 1
            if depth > limits.MAX_GROUP_DEPTH:
                return limits.short_path(path.lstrip("."))
        if isinstance(v, BaseModel):
            for name, field in type(v).model_fields.items():
                stack.append((getattr(v, name), f"{path}.{field.alias or name}", depth))
        elif isinstance(v, list):
            stack.extend((item, f"{path}[{i}]", depth) for i, item in enumerate(v))
    return None


class CohortDefinition(_Model):
    """A named cohort: its expression and a name/description for the cohort_definition table."""

    name: Name
    description: str | None = None
    expression: CohortExpression

    MERCIA_FORMAT: ClassVar[str] = "mercia-cohort/1"

    # ---- Mercia form: snake_case JSON/YAML --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any) -> CohortDefinition:
        problem = limits.json_problem(data)
        if problem:
            raise CohortDefinitionError(problem)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise validation_error(e) from None

    @classmethod
    def from_json(cls, text: str) -> CohortDefinition:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CohortDefinitionError(f"$: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        return cls.from_dict(data)

    @classmethod
    def from_yaml(cls, text: str) -> CohortDefinition:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise CohortDefinitionError(f"$: malformed YAML: {e}") from None
        return cls.from_dict(data)

    def definition_hash(self) -> str:
        """A content hash of the expression (name excluded), for recognising the same definition."""
        import hashlib

        canon = json.dumps(self.expression.model_dump(mode="json", exclude_none=True), sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()


# Circe elements Mercia knows but does not compile: an error says "not supported" rather than
# "unknown", so the user knows the element is valid Circe that Mercia cannot honour yet.
# (Every element of Circe-BE 1.12's model is in Mercia's; these are from other Circe versions.)
NOT_SUPPORTED = {
    "AdmittedFromConcept", "DischargedToConcept", "AdmittedFromConceptCS", "DischargedToConceptCS",
    "VisitDetailTypeExclude", "ConditionStatusExclude", "Episode",
}
# Why, where the answer is not "not yet": Circe-BE's SQL for these reads columns or tables that OMOP CDM
# 5.3 and 5.4 do not have, so the element cannot select anything on a CDM Mercia (or ATLAS) runs on. The
# model accepts them (they are Circe-BE's) and the compiler refuses them, with this reason.
NOT_SUPPORTED_WHY = {
    "EffectiveDrugDose": "Circe-BE filters drug_exposure.effective_drug_dose, a column CDM 5.3/5.4 do not have",
    "DoseUnit": "Circe-BE filters drug_exposure.dose_unit_concept_id, a column CDM 5.3/5.4 do not have",
    "DoseUnitCS": "Circe-BE filters drug_exposure.dose_unit_concept_id, a column CDM 5.3/5.4 do not have",
    "LocationRegion": "Circe-BE reads the LOCATION_HISTORY table, which CDM 5.3/5.4 do not have",
    "PlaceOfServiceLocation": "Circe-BE reads the LOCATION_HISTORY table, which CDM 5.3/5.4 do not have",
    "Episode": "Circe-BE 1.x has no Episode criteria (the EPISODE table is new in CDM 5.4)",
}


def _json_path(loc: tuple[Any, ...]) -> str:
    path = "$"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}"
    return path


def validation_error(e: ValidationError, prefix: tuple[Any, ...] = ()) -> CohortDefinitionError:
    """A pydantic error as a CohortDefinitionError naming the element and its JSON path."""
    lines = []
    for err in e.errors()[:5]:
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = _json_path(loc)
        last = loc[-1] if loc else ""
        if err["type"] == "extra_forbidden":
            msg = "unknown element"
            if last in NOT_SUPPORTED:
                msg = f"not supported ({NOT_SUPPORTED_WHY[last]})" if last in NOT_SUPPORTED_WHY else "not supported"
        elif err["type"] == "missing":
            msg = "required element missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {msg}")
    more = len(e.errors()) - 5
    if more > 0:
        lines.append(f"(and {more} more)")
    return CohortDefinitionError("; ".join(lines))


CriteriaGroup.model_rebuild()
_Criteria.model_rebuild()
for _cls in (ConditionOccurrence, DrugExposure, ProcedureOccurrence, Measurement, Observation, DeviceExposure,
             VisitOccurrence, VisitDetail, Death, DrugEra, ConditionEra, DoseEra, PayerPlanPeriod, ObservationPeriod, Specimen,
             LocationRegion, Criteria,
             CorrelatedCriteria, CohortExpression, CohortDefinition):
    _cls.model_rebuild()
