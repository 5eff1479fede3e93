"""The data-quality check catalogue as data: check types, and the check instances a CDM version gets.

The semantics, names, Kahn categories and default thresholds are those of OHDSI's DataQualityDashboard
(DQD, https://github.com/OHDSI/DataQualityDashboard, Apache 2.0: its check descriptions and its table,
field and concept level threshold files for CDM v5.4). Nothing is copied from those files: the instances
are derived here from Mercia's own CDM specification (`mercia.cdm.spec`: tables, fields, types, required
flags, primary and foreign keys) by the rules below, and each rule's threshold is DQD's default for the
fields the rule covers. The concept-level ranges (`CONCEPT_RANGES`, `CONCEPT_GENDER`, `CONCEPT_UNITS`)
are Mercia's own, written from clinical knowledge in `mercia.dq.concepts`.

A threshold is a percentage: a check fails when its percentage of violated rows is above it, or, for a
threshold of 0, when any row violates it (DQD's rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mercia.cdm.spec import CdmSpec, FieldSpec, TableSpec
from mercia.dq.concepts import GENDER_TABLE, MEASURES, SEX_SPECIFIC


@dataclass(frozen=True)
class CheckType:
    name: str  # DQD's checkName
    level: str  # TABLE | FIELD | CONCEPT
    context: str  # Kahn context: Verification | Validation
    category: str  # Conformance | Completeness | Plausibility
    subcategory: str  # Relational | Value | Computational | Temporal | Atemporal | ""
    severity: str  # fatal | convention | characterization
    description: str  # in Mercia's words; {table}, {field}, {concept} ... filled per instance


CHECK_TYPES: dict[str, CheckType] = {t.name: t for t in (
    CheckType("cdmTable", "TABLE", "Verification", "Conformance", "Relational", "fatal",
              "Is the {table} table present, as the CDM specification expects?"),
    CheckType("measurePersonCompleteness", "TABLE", "Validation", "Completeness", "", "convention",
              "Persons in the CDM without a single record in the {table} table."),
    CheckType("cdmField", "FIELD", "Verification", "Conformance", "Relational", "fatal",
              "Is the field {field} present in the {table} table, as the CDM specification expects?"),
    CheckType("isRequired", "FIELD", "Validation", "Conformance", "Relational", "fatal",
              "Records with no value (NULL) in {table}.{field}, which the specification requires."),
    CheckType("cdmDatatype", "FIELD", "Verification", "Conformance", "Value", "fatal",
              "Records whose {table}.{field} is not a whole number, as its integer type requires."),
    CheckType("isPrimaryKey", "FIELD", "Verification", "Conformance", "Relational", "fatal",
              "Records whose {table}.{field}, a primary key, is not unique."),
    CheckType("isForeignKey", "FIELD", "Verification", "Conformance", "Relational", "fatal",
              "Records whose {table}.{field} has no match in {fk_table}.{fk_field}."),
    CheckType("fkDomain", "FIELD", "Verification", "Conformance", "Value", "convention",
              "Records whose {table}.{field} is a concept outside the {fk_domain} domain."),
    CheckType("fkClass", "FIELD", "Verification", "Conformance", "Computational", "convention",
              "Records whose {table}.{field} is a concept outside the {fk_class} class."),
    CheckType("isStandardValidConcept", "FIELD", "Verification", "Conformance", "Value", "convention",
              "Records whose {table}.{field} is not a standard, valid concept (0 excepted)."),
    CheckType("measureValueCompleteness", "FIELD", "Verification", "Completeness", "", "characterization",
              "Records with no value (NULL) in {table}.{field}."),
    CheckType("standardConceptRecordCompleteness", "FIELD", "Verification", "Completeness", "", "convention",
              "Records whose standard concept field {table}.{field} is 0 (not mapped)."),
    CheckType("sourceConceptRecordCompleteness", "FIELD", "Verification", "Completeness", "", "convention",
              "Records whose source concept field {table}.{field} is 0."),
    CheckType("sourceValueCompleteness", "FIELD", "Verification", "Completeness", "", "convention",
              "Distinct source values in {table}.{field} whose records are mapped to concept 0."),
    CheckType("plausibleDuringLife", "FIELD", "Verification", "Plausibility", "Temporal", "characterization",
              "Records of persons who died whose {table}.{field} is more than 60 days after the death date."),
    CheckType("plausibleAfterBirth", "FIELD", "Verification", "Plausibility", "Temporal", "characterization",
              "Records whose {table}.{field} is before the person's birth."),
    CheckType("plausibleStartBeforeEnd", "FIELD", "Verification", "Plausibility", "Temporal", "characterization",
              "Records whose {table}.{field} is after {end_field}."),
    CheckType("withinVisitDates", "FIELD", "Verification", "Plausibility", "", "characterization",
              "Records whose {table}.{field} is more than a week before the start or after the end of their visit."),
    CheckType("plausibleGender", "CONCEPT", "Validation", "Plausibility", "Atemporal", "characterization",
              "Records of concept {concept} for persons of the other gender (plausible: {gender})."),
    CheckType("plausibleUnitConceptIds", "CONCEPT", "Verification", "Plausibility", "Atemporal", "characterization",
              "Records of concept {concept} whose unit is none of {units}."),
)}
# The field level and the concept level both have plausibleValueLow/High: the key is (name, level).
CHECK_TYPES_BY_LEVEL: dict[tuple[str, str], CheckType] = {(t.name, t.level): t for t in CHECK_TYPES.values()}
for _name, _level, _base in (("plausibleValueLow", "FIELD", "Records whose {table}.{field} is below {low}."),
                             ("plausibleValueHigh", "FIELD", "Records whose {table}.{field} is above {high}."),
                             ("plausibleValueLow", "CONCEPT", "Records of concept {concept} in unit {unit} whose "
                                                              "{field} is below {low}."),
                             ("plausibleValueHigh", "CONCEPT", "Records of concept {concept} in unit {unit} whose "
                                                               "{field} is above {high}.")):
    CHECK_TYPES_BY_LEVEL[(_name, _level)] = CheckType(_name, _level, "Verification", "Plausibility", "Atemporal",
                                                      "characterization", _base)

# ---- the rules' thresholds and tables (DQD's defaults for CDM v5.4) --------------------------------------
# Tables whose absence stops the checks (DQD's table-level isRequired): one clear error, nothing run.
REQUIRED_TABLES = ("person", "observation_period")

# measurePersonCompleteness: the percentage of persons without a record above which the check fails.
PERSON_COMPLETENESS = {
    "observation_period": 0, "visit_occurrence": 95, "visit_detail": 100, "condition_occurrence": 95,
    "drug_exposure": 95, "procedure_occurrence": 95, "device_exposure": 100, "measurement": 95,
    "observation": 95, "death": 100, "note": 100, "specimen": 100, "payer_plan_period": 100,
    "drug_era": 95, "dose_era": 100, "condition_era": 95,
}

# The concept domain each concept field must hold (fkDomain), by field name, or by (table, field) where
# the same name means different things in different tables. Type concepts are the rule for *_type_concept_id.
DOMAIN_BY_FIELD = {
    "condition_concept_id": "Condition", "drug_concept_id": "Drug", "procedure_concept_id": "Procedure",
    "device_concept_id": "Device", "measurement_concept_id": "Measurement", "visit_concept_id": "Visit",
    "visit_detail_concept_id": "Visit", "admitted_from_concept_id": "Visit", "discharged_to_concept_id": "Visit",
    "gender_concept_id": "Gender", "race_concept_id": "Race", "ethnicity_concept_id": "Ethnicity",
    "unit_concept_id": "Unit", "route_concept_id": "Route", "operator_concept_id": "Meas Value Operator",
    "condition_status_concept_id": "Condition Status", "episode_concept_id": "Episode",
    "country_concept_id": "Geography", "episode_event_field_concept_id": "Metadata",
}
# fkClass: drug eras hold ingredients.
CLASS_BY_FIELD = {("drug_era", "drug_concept_id"): "Ingredient", ("dose_era", "drug_concept_id"): "Ingredient"}

# standardConceptRecordCompleteness (and isStandardValidConcept, threshold 0, on the same fields and on
# the value/qualifier/event-field concepts below): a table's own concept, its unit and status 5%; type
# concepts, era concepts and visit concepts 0%; descriptive concepts (race, ethnicity, route, place of
# service, modifier, country, provider's gender and specialty) 100%.
_STANDARD_0 = {("condition_era", "condition_concept_id"), ("drug_era", "drug_concept_id"),
               ("dose_era", "drug_concept_id"), ("dose_era", "unit_concept_id"),
               ("visit_occurrence", "visit_concept_id"), ("visit_detail", "visit_detail_concept_id")}
_STANDARD_100 = {("person", "race_concept_id"), ("person", "ethnicity_concept_id"),
                 ("drug_exposure", "route_concept_id"), ("care_site", "place_of_service_concept_id"),
                 ("procedure_occurrence", "modifier_concept_id"), ("location", "country_concept_id"),
                 ("provider", "gender_concept_id"), ("provider", "specialty_concept_id")}
_STANDARD_5_EXTRA = {("person", "gender_concept_id"), ("death", "cause_concept_id"),
                     ("condition_occurrence", "condition_status_concept_id"),
                     ("visit_occurrence", "admitted_from_concept_id"), ("visit_occurrence", "discharged_to_concept_id"),
                     ("visit_detail", "admitted_from_concept_id"), ("visit_detail", "discharged_to_concept_id")}
# Concept fields checked for standard and valid concepts only (no completeness check).
_STANDARD_ONLY = {"operator_concept_id", "qualifier_concept_id", "meas_event_field_concept_id",
                  "obs_event_field_concept_id", "note_event_field_concept_id", "encoding_concept_id",
                  "language_concept_id", "note_class_concept_id", "note_nlp_concept_id", "section_concept_id",
                  "anatomic_site_concept_id", "disease_status_concept_id", "episode_event_field_concept_id"}
# Tables whose own concept field is `<prefix>_concept_id` (their main concept: 5%).
_MAIN_CONCEPT = {"condition_occurrence": "condition_concept_id", "drug_exposure": "drug_concept_id",
                 "procedure_occurrence": "procedure_concept_id", "device_exposure": "device_concept_id",
                 "measurement": "measurement_concept_id", "observation": "observation_concept_id",
                 "specimen": "specimen_concept_id", "episode": "episode_concept_id"}

# sourceConceptRecordCompleteness: a clinical table's main source concept 10%, the others 100%.
_SOURCE_CONCEPT_10 = {"condition_source_concept_id", "drug_source_concept_id", "procedure_source_concept_id",
                      "device_source_concept_id", "measurement_source_concept_id", "observation_source_concept_id",
                      "cause_source_concept_id"}
_SOURCE_CONCEPT_100 = {("device_exposure", "unit_source_concept_id"), ("measurement", "unit_source_concept_id"),
                       ("episode", "episode_source_concept_id"), ("provider", "specialty_source_concept_id"),
                       ("visit_detail", "visit_detail_source_concept_id"),
                       ("visit_occurrence", "visit_source_concept_id")}
# sourceValueCompleteness: the main source values 10% (source value field -> its standard concept field).
SOURCE_VALUE_10 = {
    ("condition_occurrence", "condition_source_value"): "condition_concept_id",
    ("drug_exposure", "drug_source_value"): "drug_concept_id",
    ("procedure_occurrence", "procedure_source_value"): "procedure_concept_id",
    ("measurement", "measurement_source_value"): "measurement_concept_id",
    ("death", "cause_source_value"): "cause_concept_id",
    ("visit_occurrence", "visit_source_value"): "visit_concept_id",
}

# Field-level value ranges: (low, high, threshold %); None is no bound. Dates: events from 1950 (births
# from 1850) to the day after the check runs ("today").
NUMERIC_RANGES = {
    ("person", "year_of_birth"): (1850, "this_year+1", 1), ("person", "month_of_birth"): (1, 12, 1),
    ("person", "day_of_birth"): (1, 31, 1), ("drug_exposure", "days_supply"): (1, 365, 1),
    ("drug_exposure", "refills"): (0, 24, 1), ("drug_exposure", "quantity"): (0.0000001, None, 1),
    ("procedure_occurrence", "quantity"): (1, None, 1), ("device_exposure", "quantity"): (1, None, 1),
    ("specimen", "quantity"): (1, None, 1), ("drug_era", "drug_exposure_count"): (1, None, 1),
    ("drug_era", "gap_days"): (0, None, 1), ("condition_era", "condition_occurrence_count"): (1, None, 1),
    ("dose_era", "dose_value"): (0, None, 1),
}
# Dates checked against [1950-01-01, today + 1]: every date of a table holding person_id, except those
# that need not lie in the data's time (verbatim and birth dates).
_DATE_RANGE_EXCLUDED = {"verbatim_end_date", "birth_datetime"}

# plausibleDuringLife (1%): the dates of events that cannot follow death (not measurements, observations,
# notes or specimens, which can; not the death itself or era ends, which are derived).
_DURING_LIFE_TABLES = ("visit_occurrence", "visit_detail", "condition_occurrence", "drug_exposure",
                       "procedure_occurrence", "device_exposure", "observation_period", "condition_era",
                       "drug_era", "dose_era", "episode")
_DURING_LIFE_EXCLUDED = {"condition_era_end_date", "drug_era_end_date", "dose_era_end_date"}

# withinVisitDates: a table's main date vs the visit it points to, 5% (visit details 1%).
WITHIN_VISIT = {("condition_occurrence", "condition_start_date"): 5, ("drug_exposure", "drug_exposure_start_date"): 5,
                ("procedure_occurrence", "procedure_date"): 5, ("device_exposure", "device_exposure_start_date"): 5,
                ("measurement", "measurement_date"): 5, ("observation", "observation_date"): 5,
                ("note", "note_date"): 5, ("visit_detail", "visit_detail_start_date"): 1,
                ("visit_detail", "visit_detail_end_date"): 1}

# ---- concept level (Mercia's own table, mercia.dq.concepts) ---------------------------------------------
# plausibleValueLow/High by (measurement concept, unit): physiologically possible limits, far outside
# clinical reference ranges (a value outside them is an error of entry or of units). Threshold 5%.
CONCEPT_RANGES: dict[tuple[int, int], tuple[str, float, float]] = {
    (m.concept_id, unit): (m.name, low, high) for m in MEASURES for unit, (low, high) in m.ranges.items()}
# plausibleUnitConceptIds (5%): the units each measurement may be recorded in (those it has a range in).
CONCEPT_UNITS: dict[int, tuple[str, tuple[int, ...]]] = {m.concept_id: (m.name, tuple(m.ranges)) for m in MEASURES}
# plausibleGender (5%): conditions and procedures of one sex (by the person's gender concept: 8507 male,
# 8532 female): concept -> (name, sex, domain).
CONCEPT_GENDER: dict[int, tuple[str, str, str]] = {c: (name, sex, domain) for c, name, domain, sex in SEX_SPECIFIC}
GENDER_CONCEPT = {"Male": 8507, "Female": 8532}
CONCEPT_THRESHOLD = 5


@dataclass(frozen=True)
class Check:
    """One check instance: a check type applied to a table, field or concept, with its threshold."""
    name: str
    level: str
    table: str
    field: str | None = None
    concept_id: int | None = None
    unit_concept_id: int | None = None
    threshold: float = 0.0
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def type(self) -> CheckType:
        return CHECK_TYPES_BY_LEVEL[(self.name, self.level)]

    def param(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)

    @property
    def check_id(self) -> str:
        """DQD's checkId: level, name, table, field, concept and unit joined by '_', lower case."""
        parts = [self.level, self.name, self.table.upper(), (self.field or "").upper(),
                 "" if self.concept_id is None else str(self.concept_id),
                 "" if self.unit_concept_id is None else str(self.unit_concept_id)]
        return "_".join(p for p in parts if p).lower()

    def description(self) -> str:
        values = {"table": self.table.upper(), "field": (self.field or "").upper(), "concept": self.concept_id,
                  "unit": self.unit_concept_id, **dict(self.params)}
        return self.type.description.format_map(_Missing(values))


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _is_event_table(t: TableSpec) -> bool:
    return "person_id" in t.column_names and t.name != "person"


def _concept_fk(f: FieldSpec) -> bool:
    return f.foreign_key is not None and f.foreign_key[0] == "concept"


def _standard_threshold(table: str, f: FieldSpec) -> float | None:
    key = (table, f.name)
    if f.name.endswith("_source_concept_id") or not _concept_fk(f):
        return None
    if key in _STANDARD_0 or f.name.endswith("_type_concept_id"):
        return 0
    if key in _STANDARD_100:
        return 100
    if key in _STANDARD_5_EXTRA or _MAIN_CONCEPT.get(table) == f.name or f.name == "unit_concept_id":
        return 5
    return None


def checked_tables(spec: CdmSpec) -> list[TableSpec]:
    """The tables checked: the clinical, health-system, derived and metadata tables (the CDM schema's).
    The vocabulary tables (OHDSI's, often tens of millions of rows) and the results schema are not."""
    return [t for t in spec.tables.values() if t.schema_role == "CDM"]


def catalogue(spec: CdmSpec) -> list[Check]:
    """Every check instance for a CDM version, in a stable order (table level, field level, concept level)."""
    out: list[Check] = []
    tables = checked_tables(spec)
    for t in tables:
        out.append(Check("cdmTable", "TABLE", t.name))
        if t.name in PERSON_COMPLETENESS:
            out.append(Check("measurePersonCompleteness", "TABLE", t.name, threshold=PERSON_COMPLETENESS[t.name]))
    for t in tables:
        names = set(t.column_names)
        for f in t.fields:
            out.extend(_field_checks(t, f, names))
    for (concept, unit), (label, low, high) in CONCEPT_RANGES.items():
        for name, bound in (("plausibleValueLow", ("low", low)), ("plausibleValueHigh", ("high", high))):
            out.append(Check(name, "CONCEPT", "measurement", "value_as_number", concept, unit, CONCEPT_THRESHOLD,
                             (bound, ("concept_name", label))))
    for concept, (label, gender, domain) in CONCEPT_GENDER.items():
        table, fld = GENDER_TABLE[domain]
        out.append(Check("plausibleGender", "CONCEPT", table, fld, concept, None, CONCEPT_THRESHOLD,
                         (("gender", gender), ("concept_name", label))))
    for concept, (label, units) in CONCEPT_UNITS.items():
        out.append(Check("plausibleUnitConceptIds", "CONCEPT", "measurement", "measurement_concept_id", concept, None,
                         CONCEPT_THRESHOLD, (("units", units), ("concept_name", label))))
    return out


def _field_checks(t: TableSpec, f: FieldSpec, names: set[str]) -> list[Check]:
    table, name = t.name, f.name
    out = [Check("cdmField", "FIELD", table, name)]
    if f.required:
        out.append(Check("isRequired", "FIELD", table, name))
    if f.type in ("integer", "bigint"):
        out.append(Check("cdmDatatype", "FIELD", table, name))
    if f.primary_key:
        out.append(Check("isPrimaryKey", "FIELD", table, name))
    if f.foreign_key is not None:
        fk_table, fk_field = f.foreign_key
        out.append(Check("isForeignKey", "FIELD", table, name, params=(("fk_table", fk_table), ("fk_field", fk_field))))
        domain = "Type Concept" if name.endswith("_type_concept_id") else DOMAIN_BY_FIELD.get(name)
        if fk_table == "concept" and domain and table not in ("fact_relationship", "metadata", "cdm_source"):
            out.append(Check("fkDomain", "FIELD", table, name, params=(("fk_domain", domain),)))
        if (table, name) in CLASS_BY_FIELD:
            out.append(Check("fkClass", "FIELD", table, name, params=(("fk_class", CLASS_BY_FIELD[(table, name)]),)))
    standard = _standard_threshold(table, f)
    if standard is not None or (_concept_fk(f) and name in _STANDARD_ONLY):
        out.append(Check("isStandardValidConcept", "FIELD", table, name))
    out.append(Check("measureValueCompleteness", "FIELD", table, name, threshold=0 if f.required else 100))
    if standard is not None:
        out.append(Check("standardConceptRecordCompleteness", "FIELD", table, name, threshold=standard))
    if name in _SOURCE_CONCEPT_10 or (table, name) in _SOURCE_CONCEPT_100:
        out.append(Check("sourceConceptRecordCompleteness", "FIELD", table, name,
                         threshold=10 if name in _SOURCE_CONCEPT_10 else 100))
    if (table, name) in SOURCE_VALUE_10 and SOURCE_VALUE_10[(table, name)] in names:
        out.append(Check("sourceValueCompleteness", "FIELD", table, name, threshold=10,
                         params=(("concept_field", SOURCE_VALUE_10[(table, name)]),)))
    if (table, name) in NUMERIC_RANGES:
        low, high, th = NUMERIC_RANGES[(table, name)]
        if low is not None:
            out.append(Check("plausibleValueLow", "FIELD", table, name, threshold=th, params=(("low", low),)))
        if high is not None:
            out.append(Check("plausibleValueHigh", "FIELD", table, name, threshold=th, params=(("high", high),)))
    is_date = f.type in ("date", "datetime")
    if is_date and _is_event_table(t) and name not in _DATE_RANGE_EXCLUDED:
        out.append(Check("plausibleValueLow", "FIELD", table, name, threshold=1, params=(("low", "1950-01-01"),)))
        out.append(Check("plausibleValueHigh", "FIELD", table, name, threshold=1, params=(("high", "today+1"),)))
    if is_date and table in _DURING_LIFE_TABLES and name not in _DURING_LIFE_EXCLUDED:
        out.append(Check("plausibleDuringLife", "FIELD", table, name, threshold=1))
    if is_date and _is_event_table(t) and name not in _DATE_RANGE_EXCLUDED and table != "death":
        out.append(Check("plausibleAfterBirth", "FIELD", table, name, threshold=1))
    end = _end_field(name)
    if is_date and end in names:
        out.append(Check("plausibleStartBeforeEnd", "FIELD", table, name,
                         threshold=0 if table == "observation_period" else 1, params=(("end_field", end),)))
    if (table, name) in WITHIN_VISIT and "visit_occurrence_id" in names:
        out.append(Check("withinVisitDates", "FIELD", table, name, threshold=WITHIN_VISIT[(table, name)]))
    return out


def _end_field(name: str) -> str | None:
    if "_start_date" in name:
        return name.replace("_start_date", "_end_date")
    if name == "procedure_date":
        return "procedure_end_date"
    if name == "procedure_datetime":
        return "procedure_end_datetime"
    return None
