"""Named OMOP concepts with their real concept_ids, for code that needs a concept by meaning.

Every id here is the id OHDSI's Athena vocabularies give the concept. Where an id could be checked
against material we hold (the Eunomia GiBleed vocabulary, the OHDSI cohort JSONs that
`mercia.vocab.build_subset` reads, or public OMOP ETL code), it was; the ids that could not be checked
from such material are listed in ``UNVERIFIED_CONCEPT_IDS`` so a reader knows which to confirm
against Athena before relying on them in a real study.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Concept:
    """One OMOP concept (a row of the CONCEPT table, the fields code needs)."""

    concept_id: int
    name: str
    domain_id: str
    vocabulary_id: str
    concept_class_id: str
    concept_code: str
    standard: bool = True


@dataclass(frozen=True)
class SourceCode:
    """A code as a source system records it; concept_id is its OMOP source concept (0 = unknown)."""

    vocabulary_id: str
    code: str
    name: str
    concept_id: int


def _snomed(concept_id: int, name: str, code: str, domain: str = "Condition") -> Concept:
    return Concept(concept_id, name, domain, "SNOMED", "Clinical Finding", code)


def _ingredient(concept_id: int, name: str, rxcui: str) -> Concept:
    return Concept(concept_id, name, "Drug", "RxNorm", "Ingredient", rxcui)


def _loinc(concept_id: int, name: str, code: str, concept_class: str = "Lab Test") -> Concept:
    return Concept(concept_id, name, "Measurement", "LOINC", concept_class, code)


def _unit(concept_id: int, name: str, ucum: str) -> Concept:
    return Concept(concept_id, name, "Unit", "UCUM", "Unit", ucum)


GENDER: dict[str, Concept] = {
    "male": Concept(8507, "MALE", "Gender", "Gender", "Gender", "M"),
    "female": Concept(8532, "FEMALE", "Gender", "Gender", "Gender", "F"),
}

# OMOP's Race vocabulary follows the US OMB categories. UK ethnic groups map onto it as UK OMOP
# ETLs do (e.g. answerdigital/oxford-omop-data-mapper: White -> 8527, Asian -> 8515 or its
# sub-concepts, Black -> 8516 or sub-concepts). "Mixed" has no OMB category; OMOP has no standard
# "mixed" race concept we could verify, so it maps to 0 (No matching concept), as those ETLs do
# for "any other ethnic group".
RACE: dict[str, Concept] = {
    "white": Concept(8527, "White", "Race", "Race", "Race", "5"),
    "black": Concept(8516, "Black or African American", "Race", "Race", "Race", "3"),
    "asian": Concept(8515, "Asian", "Race", "Race", "Race", "2"),
    "mixed": Concept(0, "No matching concept", "Metadata", "None", "Undefined", "No matching concept", False),
    "other": Concept(8522, "Other Race", "Race", "Race", "Race", "8"),  # concept_code unverified
}

ETHNICITY: dict[str, Concept] = {
    "not_hispanic": Concept(
        38003564, "Not Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "Not Hispanic"
    ),
    "hispanic": Concept(38003563, "Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "Hispanic"),
}

VISITS: dict[str, Concept] = {
    "gp": Concept(581477, "Office Visit", "Visit", "Visit", "Visit", "OV"),
    "outpatient": Concept(9202, "Outpatient Visit", "Visit", "Visit", "Visit", "OP"),
    "inpatient": Concept(9201, "Inpatient Visit", "Visit", "Visit", "Visit", "IP"),
    "emergency": Concept(9203, "Emergency Room Visit", "Visit", "Visit", "Visit", "ER"),
    "home": Concept(581476, "Home Visit", "Visit", "Visit", "Visit", "HV"),
}


def _type(concept_id: int, name: str) -> Concept:
    return Concept(concept_id, name, "Type Concept", "Type Concept", "Type Concept", name)


# CDM v5.4 Type Concepts (vocabulary "Type Concept"; concept_code equals the name there).
TYPE_CONCEPTS: dict[str, Concept] = {
    "ehr": _type(32817, "EHR"),
    "ehr_prescription": _type(32838, "EHR prescription"),
    "ehr_administration": _type(32818, "EHR administration record"),
    "ehr_encounter": _type(32827, "EHR encounter record"),
    "ehr_episode": _type(32828, "EHR episode record"),
    "lab": _type(32856, "Lab"),
    # A GP registration period is an EHR-derived observation period.
    "registration": _type(32817, "EHR"),
    "death": _type(32815, "Death Certificate"),
    "registry": _type(32879, "Registry"),
    "era": _type(32880, "Standard algorithm"),
}

CONDITIONS: dict[str, Concept] = {
    "type2_diabetes": _snomed(201826, "Type 2 diabetes mellitus", "44054006"),
    "hypertension": _snomed(320128, "Essential hypertension", "59621000"),
    "ckd": _snomed(46271022, "Chronic kidney disease", "709044004"),
    "atrial_fibrillation": _snomed(313217, "Atrial fibrillation", "49436004"),
    "heart_failure": _snomed(316139, "Heart failure", "84114007"),
    "copd": _snomed(255573, "Chronic obstructive pulmonary disease", "13645005"),
    "asthma": _snomed(317009, "Asthma", "195967001"),
    "depression": _snomed(440383, "Depressive disorder", "35489007"),
    "breast_cancer": _snomed(4112853, "Malignant tumor of breast", "254837009"),
    "prostate_cancer": _snomed(4163261, "Malignant tumor of prostate", "399068003"),
    "lung_cancer": _snomed(443388, "Malignant tumor of lung", "363358000"),
    # Colon rather than colorectum: the colon concept's id could be checked, the colorectum one not.
    "colorectal_cancer": _snomed(4180790, "Malignant tumor of colon", "363406005"),
    "myocardial_infarction": _snomed(4329847, "Myocardial infarction", "22298006"),
    "stroke": _snomed(381316, "Cerebrovascular accident", "230690007"),
    "gi_bleeding": _snomed(192671, "Gastrointestinal hemorrhage", "74474003"),
    "hip_fracture": _snomed(4230399, "Closed fracture of hip", "359817006"),
    "pneumonia": _snomed(255848, "Pneumonia", "233604007"),
    "urinary_tract_infection": _snomed(81902, "Urinary tract infectious disease", "68566005"),
    "osteoarthritis": _snomed(80180, "Osteoarthritis", "396275006"),
}

# Groupings above the catalog conditions, for hierarchy-aware concept sets.
CONDITION_GROUPS: dict[str, Concept] = {
    "diabetes_mellitus": _snomed(201820, "Diabetes mellitus", "73211009"),
}

# ICD-10 (WHO), as UK hospital data (HES) codes diagnoses. OMOP's ICD10 source concept_ids could
# not be verified from material we hold, so they are 0; the bundled vocabulary instead maps the
# ICD10CM code Eunomia carries (K92.2 -> 192671).
CONDITION_SOURCE_CODES: dict[str, SourceCode] = {
    "type2_diabetes": SourceCode("ICD10", "E11", "Type 2 diabetes mellitus", 0),
    "hypertension": SourceCode("ICD10", "I10", "Essential (primary) hypertension", 0),
    "ckd": SourceCode("ICD10", "N18", "Chronic kidney disease", 0),
    "atrial_fibrillation": SourceCode("ICD10", "I48", "Atrial fibrillation and flutter", 0),
    "heart_failure": SourceCode("ICD10", "I50", "Heart failure", 0),
    "copd": SourceCode("ICD10", "J44", "Other chronic obstructive pulmonary disease", 0),
    "asthma": SourceCode("ICD10", "J45", "Asthma", 0),
    "depression": SourceCode("ICD10", "F32", "Depressive episode", 0),
    "breast_cancer": SourceCode("ICD10", "C50", "Malignant neoplasm of breast", 0),
    "prostate_cancer": SourceCode("ICD10", "C61", "Malignant neoplasm of prostate", 0),
    "lung_cancer": SourceCode("ICD10", "C34", "Malignant neoplasm of bronchus and lung", 0),
    "colorectal_cancer": SourceCode("ICD10", "C18", "Malignant neoplasm of colon", 0),
    "myocardial_infarction": SourceCode("ICD10", "I21", "Acute myocardial infarction", 0),
    "stroke": SourceCode("ICD10", "I64", "Stroke, not specified as haemorrhage or infarction", 0),
    "gi_bleeding": SourceCode("ICD10", "K92.2", "Gastrointestinal haemorrhage, unspecified", 0),
    "hip_fracture": SourceCode("ICD10", "S72.0", "Fracture of neck of femur", 0),
    "pneumonia": SourceCode("ICD10", "J18", "Pneumonia, organism unspecified", 0),
    "urinary_tract_infection": SourceCode("ICD10", "N39.0", "Urinary tract infection, site not specified", 0),
    "osteoarthritis": SourceCode("ICD10", "M19.9", "Arthrosis, unspecified", 0),
}

# Real OMOP source concepts present in the Eunomia vocabulary (usable to test 'include mapped').
CONDITION_SOURCE_CONCEPTS: dict[str, Concept] = {
    "gi_bleeding_icd10cm": Concept(
        35208414,
        "Gastrointestinal hemorrhage, unspecified",
        "Condition",
        "ICD10CM",
        "4-char billing code",
        "K92.2",
        False,
    ),
}

DRUG_INGREDIENTS: dict[str, Concept] = {
    "metformin": _ingredient(1503297, "metformin", "6809"),
    "empagliflozin": _ingredient(45774751, "empagliflozin", "1545653"),
    "dapagliflozin": _ingredient(44785829, "dapagliflozin", "1488564"),
    "gliclazide": _ingredient(19059796, "gliclazide", "4816"),
    "atorvastatin": _ingredient(1545958, "atorvastatin", "83367"),
    "simvastatin": _ingredient(1539403, "Simvastatin", "36567"),
    "ramipril": _ingredient(1334456, "ramipril", "35296"),
    "lisinopril": _ingredient(1308216, "lisinopril", "29046"),
    "amlodipine": _ingredient(1332418, "Amlodipine", "17767"),
    "bisoprolol": _ingredient(1338005, "bisoprolol", "19484"),
    "furosemide": _ingredient(956874, "furosemide", "4603"),
    "warfarin": _ingredient(1310149, "Warfarin", "11289"),
    "apixaban": _ingredient(43013024, "apixaban", "1364430"),
    "rivaroxaban": _ingredient(40241331, "rivaroxaban", "1114195"),
    "celecoxib": _ingredient(1118084, "celecoxib", "140587"),
    "diclofenac": _ingredient(1124300, "Diclofenac", "3355"),
    "ibuprofen": _ingredient(1177480, "Ibuprofen", "5640"),
    "naproxen": _ingredient(1115008, "Naproxen", "7258"),
    "omeprazole": _ingredient(923645, "omeprazole", "7646"),
    "lansoprazole": _ingredient(929887, "lansoprazole", "17128"),
    "salbutamol": _ingredient(1154343, "Albuterol", "435"),
    "sertraline": _ingredient(739138, "sertraline", "36437"),
    "levothyroxine": _ingredient(1501700, "levothyroxine", "10582"),
    "amoxicillin": _ingredient(1713332, "Amoxicillin", "723"),
}


def _clinical_drug(concept_id: int, name: str, rxcui: str, concept_class: str = "Clinical Drug") -> Concept:
    return Concept(concept_id, name, "Drug", "RxNorm", concept_class, rxcui)


# A product per ingredient whose id and ancestry we could check (all are in the Eunomia
# vocabulary with the ingredient as ancestor). For ingredients with no checkable product the
# entry is the ingredient itself: a drug_exposure recorded at ingredient level is valid OMOP,
# and every concept set built on the ingredient (with or without descendants) still finds it.
DRUG_PRODUCTS: dict[str, Concept] = {
    "metformin": DRUG_INGREDIENTS["metformin"],
    "empagliflozin": DRUG_INGREDIENTS["empagliflozin"],
    "dapagliflozin": DRUG_INGREDIENTS["dapagliflozin"],
    "gliclazide": DRUG_INGREDIENTS["gliclazide"],
    "atorvastatin": _clinical_drug(1545959, "atorvastatin 80 MG Oral Tablet", "259255"),
    "simvastatin": _clinical_drug(1539411, "Simvastatin 20 MG Oral Tablet", "312961"),
    "ramipril": DRUG_INGREDIENTS["ramipril"],
    "lisinopril": DRUG_INGREDIENTS["lisinopril"],
    "amlodipine": _clinical_drug(1332419, "Amlodipine 5 MG Oral Tablet", "197361"),
    "bisoprolol": DRUG_INGREDIENTS["bisoprolol"],
    "furosemide": DRUG_INGREDIENTS["furosemide"],
    "warfarin": _clinical_drug(40163554, "Warfarin Sodium 5 MG Oral Tablet", "855332"),
    "apixaban": DRUG_INGREDIENTS["apixaban"],
    "rivaroxaban": DRUG_INGREDIENTS["rivaroxaban"],
    # Eunomia holds celecoxib only as this branded drug; it is what Eunomia's exposures use.
    "celecoxib": _clinical_drug(
        1118088, "celecoxib 200 MG Oral Capsule [Celebrex]", "213469", "Branded Drug"
    ),
    "diclofenac": _clinical_drug(40162359, "Diclofenac Sodium 75 MG Delayed Release Oral Tablet", "855926"),
    "ibuprofen": _clinical_drug(19078461, "Ibuprofen 200 MG Oral Tablet", "310965"),
    "naproxen": _clinical_drug(19019273, "Naproxen 500 MG Oral Tablet", "198014"),
    "omeprazole": DRUG_INGREDIENTS["omeprazole"],
    "lansoprazole": DRUG_INGREDIENTS["lansoprazole"],
    "salbutamol": _clinical_drug(
        1154615, "200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", "745679", "Quant Clinical Drug"
    ),
    "sertraline": DRUG_INGREDIENTS["sertraline"],
    "levothyroxine": _clinical_drug(40174880, "Levothyroxine Sodium 0.075 MG Oral Tablet", "966222"),
    "amoxicillin": _clinical_drug(19073188, "Amoxicillin 500 MG Oral Tablet", "308192"),
}

# Drug source codes are the RxNorm codes of the prescribed products (what a site whose prescribing
# system speaks RxNorm records). dm+d codes, which an English GP system records, could not be verified
# from material we hold, and a made-up dm+d code would not be a realistic source code.
DRUG_SOURCE_CODES: dict[str, SourceCode] = {
    key: SourceCode("RxNorm", product.concept_code, product.name, product.concept_id)
    for key, product in DRUG_PRODUCTS.items()
}

MEASUREMENTS: dict[str, Concept] = {
    "hba1c": _loinc(3004410, "Hemoglobin A1c (Glycated)", "4548-4"),
    "egfr": _loinc(
        3049187,
        "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood "
        "by Creatinine-based formula (CKD-EPI)",
        "62238-1",
    ),
    "bmi": _loinc(3038553, "Body mass index (BMI) [Ratio]", "39156-5", "Clinical Observation"),
    "systolic_bp": _loinc(3004249, "Systolic blood pressure", "8480-6", "Clinical Observation"),
    "diastolic_bp": _loinc(3012888, "Diastolic blood pressure", "8462-4", "Clinical Observation"),
    "total_cholesterol": _loinc(3027114, "Cholesterol [Mass/volume] in Serum or Plasma", "2093-3"),
    "creatinine": _loinc(3016723, "Creatinine serum/plasma", "2160-0"),
}

UNITS: dict[str, Concept] = {
    "percent": _unit(8554, "percent", "%"),
    "mmol_per_mol": _unit(9579, "millimole per mole", "mmol/mol"),
    "ml_min_173m2": _unit(720870, "milliliter per minute per 1.73 square meter", "mL/min/{1.73_m2}"),
    "kg_m2": _unit(9531, "kilogram per square meter", "kg/m2"),
    "mmhg": _unit(8876, "millimeter mercury column", "mm[Hg]"),
    "mmol_per_l": _unit(8753, "millimole per liter", "mmol/L"),
    "umol_per_l": _unit(8749, "micromole per liter", "umol/L"),
}

# Ids believed correct (from OMOP practice) whose id-to-meaning could not be confirmed against material
# we hold (Eunomia, the OHDSI cohort files, or at least one public OMOP ETL / analysis naming the id
# with this meaning). Confirm them against Athena before citing them in a publication. Names and
# concept_codes of catalog concepts absent from Eunomia and the cohort files are from OMOP practice too.
UNVERIFIED_CONCEPT_IDS: frozenset[int] = frozenset(
    {
        8522,  # Other Race
        38003563,  # Hispanic or Latino
        32838,  # EHR prescription
        32827,  # EHR encounter record
        32856,  # Lab
        32815,  # Death Certificate
        32879,  # Registry
        32880,  # Standard algorithm
        255573,  # Chronic obstructive pulmonary disease (seen only as a covariate id)
        440383,  # Depressive disorder (seen only as a covariate id)
        443388,  # Malignant tumor of lung
    }
)


def all_concepts() -> list[Concept]:
    """Every real concept named in this catalog (concept_id > 0), each once."""
    seen: dict[int, Concept] = {}
    groups: list[dict[str, Concept]] = [
        GENDER,
        RACE,
        ETHNICITY,
        VISITS,
        TYPE_CONCEPTS,
        CONDITIONS,
        CONDITION_GROUPS,
        CONDITION_SOURCE_CONCEPTS,
        DRUG_INGREDIENTS,
        DRUG_PRODUCTS,
        MEASUREMENTS,
        UNITS,
    ]
    for group in groups:
        for concept in group.values():
            if concept.concept_id > 0:
                seen.setdefault(concept.concept_id, concept)
    return list(seen.values())
