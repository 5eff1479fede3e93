"""Concept-level plausibility knowledge: value ranges and units of measurements, and sex-specific concepts.

Mercia's own table, written from clinical knowledge (not copied from DQD's threshold files): the check
semantics are DQD's (`plausibleValueLow`/`plausibleValueHigh` by measurement concept and unit,
`plausibleUnitConceptIds` by measurement concept, `plausibleGender` by condition or procedure concept).

- A range is the span of values a living patient can have and a laboratory can report, far wider than a
  reference interval: a value outside it is an error of entry or of units (a glucose of 400 in mmol/L was
  written in mg/dL). Each group below names where its limits come from.
- A measurement's plausible units are the units it has a range in: a record in another unit (0 excepted,
  as DQD does) is counted by `plausibleUnitConceptIds`.
- Concept ids are OMOP standard concepts: LOINC for measurements, UCUM for units, SNOMED for conditions and
  procedures. Every id that the bundled vocabulary or the Eunomia sample holds is checked there by the tests
  (domain and, for units, the UCUM code); the sex-specific concepts were chosen from the OHDSI Phenotype
  Library's concept sets (ids, names and domains as Athena exports them).
"""

from __future__ import annotations

from dataclasses import dataclass

# ---- units (UCUM standard concepts) ------------------------------------------------------------------
MMHG = 8876  # mm[Hg]
PER_MIN = 8541  # /min
CEL = 586323  # Cel
DEGF = 9289  # [degF]
KG = 9529  # kg
LB = 8739  # [lb_av]
CM = 8582  # cm
INCH = 9330  # [in_i]
KG_M2 = 9531  # kg/m2
PCT = 8554  # %
G_DL = 8713  # g/dL
G_L = 8636  # g/L
MMOL_L = 8753  # mmol/L
MEQ_L = 9557  # meq/L
UMOL_L = 8749  # umol/L
PMOL_L = 8729  # pmol/L
MG_DL = 8840  # mg/dL
MG_L = 8751  # mg/L
THOUSAND_UL = 8848  # 10*3/uL
BILLION_L = 9444  # 10*9/L
MILLION_UL = 8815  # 10*6/uL
TRILLION_L = 8734  # 10*12/L
FL = 8583  # fL
PG = 8564  # pg
U_L = 8645  # U/L
IU_L = 8923  # [IU]/L
SEC = 8555  # s
RATIO = 8523  # {ratio}
MICRO_IU_ML = 9093  # u[IU]/mL (= mIU/L)
MMOL_MOL = 9579  # mmol/mol
ML_MIN_173 = 720870  # mL/min/{1.73_m2}

UNIT_NAMES = {
    MMHG: "mm[Hg]", PER_MIN: "/min", CEL: "Cel", DEGF: "[degF]", KG: "kg", LB: "[lb_av]", CM: "cm",
    INCH: "[in_i]", KG_M2: "kg/m2", PCT: "%", G_DL: "g/dL", G_L: "g/L", MMOL_L: "mmol/L", MEQ_L: "meq/L",
    UMOL_L: "umol/L", PMOL_L: "pmol/L", MG_DL: "mg/dL", MG_L: "mg/L", THOUSAND_UL: "10*3/uL",
    BILLION_L: "10*9/L", MILLION_UL: "10*6/uL", TRILLION_L: "10*12/L", FL: "fL", PG: "pg", U_L: "U/L",
    IU_L: "[IU]/L", SEC: "s", RATIO: "{ratio}", MICRO_IU_ML: "u[IU]/mL", MMOL_MOL: "mmol/mol",
    ML_MIN_173: "mL/min/{1.73_m2}",
}


@dataclass(frozen=True)
class Measure:
    concept_id: int
    name: str
    ranges: dict[int, tuple[float, float]]  # unit concept id -> (plausible low, plausible high)


def _same(ids_names: tuple[tuple[int, str], ...], ranges: dict[int, tuple[float, float]]) -> list[Measure]:
    return [Measure(c, n, ranges) for c, n in ids_names]


_GLUCOSE = {MG_DL: (10, 2000), MMOL_L: (0.5, 110)}
_WBC = {THOUSAND_UL: (0.1, 500), BILLION_L: (0.1, 500)}
_PLATELETS = {THOUSAND_UL: (1, 2000), BILLION_L: (1, 2000)}
_RBC = {MILLION_UL: (0.5, 10), TRILLION_L: (0.5, 10)}
_ENZYME = {U_L: (0, 20000), IU_L: (0, 20000)}
_TEMPERATURE = {CEL: (25, 45), DEGF: (77, 113)}

MEASURES: list[Measure] = [
    # Vital signs. Limits of survival and of the devices: blood pressure and heart rate as recorded in
    # resuscitation; temperature from deep accidental hypothermia to fatal hyperthermia; weight and height
    # from an extremely premature newborn to the heaviest and tallest adults recorded; BMI of anorexia to
    # extreme obesity; saturation below 20% is not measurable by oximetry.
    Measure(3004249, "Systolic blood pressure", {MMHG: (40, 300)}),
    Measure(3012888, "Diastolic blood pressure", {MMHG: (20, 200)}),
    Measure(3027018, "Heart rate", {PER_MIN: (20, 300)}),
    Measure(3024171, "Respiratory rate", {PER_MIN: (4, 80)}),
    *_same(((3020891, "Body temperature"), (3006322, "Oral temperature")), _TEMPERATURE),
    Measure(3025315, "Body weight", {KG: (0.3, 600), LB: (0.66, 1320)}),
    Measure(3036277, "Body height", {CM: (20, 260), INCH: (8, 102)}),
    Measure(3038553, "Body mass index (BMI) [Ratio]", {KG_M2: (10, 100)}),
    *_same(((3016502, "Oxygen saturation in Arterial blood"),
            (40762499, "Oxygen saturation in Arterial blood by Pulse oximetry")), {PCT: (20, 100)}),
    # Full blood count. From profound anaemia to polycythaemia (haemoglobin, haematocrit, red cells), from
    # agranulocytosis to hyperleukocytosis of leukaemia (white cells), from the lowest countable platelets
    # to extreme thrombocytosis; red cell indices over the span of microcytosis to megaloblastic anaemia.
    Measure(3000963, "Hemoglobin [Mass/volume] in Blood", {G_DL: (1, 25), G_L: (10, 250), MMOL_L: (0.6, 15.5)}),
    Measure(3009542, "Hematocrit [Volume Fraction] of Blood", {PCT: (5, 75)}),
    *_same(((3010813, "Leukocytes [#/volume] in Blood"),
            (3000905, "Leukocytes [#/volume] in Blood by Automated count")), _WBC),
    *_same(((3007461, "Platelets [#/volume] in Blood"),
            (3024929, "Platelets [#/volume] in Blood by Automated count")), _PLATELETS),
    *_same(((3026361, "Erythrocytes [#/volume] in Blood"),
            (3020416, "Erythrocytes [#/volume] in Blood by Automated count")), _RBC),
    *_same(((3024731, "MCV [Entitic volume]"), (3023599, "MCV [Entitic volume] by Automated count")),
           {FL: (40, 160)}),
    Measure(3012030, "MCH [Entitic mass] by Automated count", {PG: (10, 60)}),
    Measure(3009744, "MCHC [Mass/volume] by Automated count", {G_DL: (15, 50), G_L: (150, 500)}),
    Measure(3019897, "Erythrocyte distribution width [Ratio] by Automated count", {PCT: (5, 50)}),
    Measure(3013650, "Neutrophils [#/volume] in Blood by Automated count",
            {THOUSAND_UL: (0, 300), BILLION_L: (0, 300)}),
    Measure(3019198, "Lymphocytes [#/volume] in Blood by Automated count",
            {THOUSAND_UL: (0, 500), BILLION_L: (0, 500)}),
    # Urea, electrolytes and renal function. The extremes reported in survivors of severe dehydration,
    # water intoxication, crush injury and end-stage renal failure; milliequivalents equal millimoles for
    # the monovalent ions.
    Measure(3019550, "Sodium [Moles/volume] in Serum or Plasma", {MMOL_L: (90, 200), MEQ_L: (90, 200)}),
    Measure(3023103, "Potassium [Moles/volume] in Serum or Plasma", {MMOL_L: (1, 12), MEQ_L: (1, 12)}),
    Measure(3014576, "Chloride [Moles/volume] in Serum or Plasma", {MMOL_L: (50, 160), MEQ_L: (50, 160)}),
    *_same(((3016293, "Bicarbonate [Moles/volume] in Serum or Plasma"),
            (3015632, "Carbon dioxide, total [Moles/volume] in Serum or Plasma")),
           {MMOL_L: (2, 60), MEQ_L: (2, 60)}),
    Measure(3045716, "Anion gap in Serum or Plasma", {MMOL_L: (-10, 60), MEQ_L: (-10, 60)}),
    Measure(3013682, "Urea nitrogen [Mass/volume] in Serum or Plasma", {MG_DL: (1, 300)}),
    Measure(3016723, "Creatinine [Mass/volume] in Serum or Plasma", {UMOL_L: (10, 2500), MG_DL: (0.1, 30)}),
    Measure(3049187, "Glomerular filtration rate/1.73 sq M.predicted (CKD-EPI)", {ML_MIN_173: (1, 200)}),
    Measure(3006906, "Calcium [Mass/volume] in Serum or Plasma", {MMOL_L: (0.5, 5), MG_DL: (2, 20)}),
    # Glucose and glycaemic control. Glucose from hypoglycaemic coma to hyperosmolar state (1 mmol/L is
    # 18 mg/dL); HbA1c by DCCT (%) and IFCC (mmol/mol) units over the span reported in haemoglobinopathy
    # and uncontrolled diabetes.
    *_same(((3004501, "Glucose [Mass/volume] in Serum or Plasma"), (3000483, "Glucose [Mass/volume] in Blood"),
            (3037110, "Fasting glucose [Mass/volume] in Serum or Plasma")), _GLUCOSE),
    Measure(3004410, "Hemoglobin A1c/Hemoglobin.total in Blood", {MMOL_MOL: (15, 200), PCT: (3, 20)}),
    Measure(3005673, "Hemoglobin A1c/Hemoglobin.total in Blood by HPLC", {PCT: (3, 20)}),
    Measure(40762352, "Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol", {MMOL_MOL: (9, 200)}),
    # Liver function. Transaminases reach tens of thousands in ischaemic or toxic hepatitis; bilirubin
    # some hundreds of umol/L in obstructive jaundice (1 mg/dL is 17.1 umol/L); albumin and total protein
    # from nephrotic states to myeloma.
    *_same(((3006923, "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma"),
            (3013721, "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma"),
            (3035995, "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma"),
            (3026910, "Gamma glutamyl transferase [Enzymatic activity/volume] in Serum or Plasma")), _ENZYME),
    Measure(3024128, "Bilirubin.total [Mass/volume] in Serum or Plasma", {UMOL_L: (0, 1000), MG_DL: (0, 60)}),
    Measure(3024561, "Albumin [Mass/volume] in Serum or Plasma", {G_DL: (0.5, 7), G_L: (5, 70)}),
    Measure(3020630, "Protein [Mass/volume] in Serum or Plasma", {G_DL: (2, 15), G_L: (20, 150)}),
    # Lipids. From abetalipoproteinaemia to familial hypercholesterolaemia and chylomicronaemia
    # (cholesterol: 1 mmol/L is 38.7 mg/dL; triglycerides: 1 mmol/L is 88.6 mg/dL).
    Measure(3027114, "Cholesterol [Mass/volume] in Serum or Plasma", {MMOL_L: (0.5, 30), MG_DL: (20, 1200)}),
    Measure(3007070, "Cholesterol in HDL [Mass/volume] in Serum or Plasma",
            {MMOL_L: (0.05, 6), MG_DL: (2, 230)}),
    *_same(((3028437, "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay"),
            (3028288, "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation")),
           {MMOL_L: (0.05, 20), MG_DL: (2, 775)}),
    Measure(3022192, "Triglyceride [Mass/volume] in Serum or Plasma", {MMOL_L: (0.05, 100), MG_DL: (5, 9000)}),
    # Coagulation. INR and clotting times up to the limit analysers report on anticoagulated or
    # coagulopathic patients.
    Measure(3022217, "INR in Platelet poor plasma by Coagulation assay", {RATIO: (0.5, 20)}),
    Measure(3034426, "Prothrombin time (PT)", {SEC: (5, 200)}),
    Measure(3013466, "aPTT in Blood by Coagulation assay", {SEC: (10, 250)}),
    # Thyroid. TSH from suppressed thyrotoxicosis to profound primary hypothyroidism; free T4 from
    # myxoedema to thyroid storm.
    Measure(3009201, "Thyrotropin [Units/volume] in Serum or Plasma", {MICRO_IU_ML: (0.001, 500)}),
    Measure(3008598, "Thyroxine (T4) free [Mass/volume] in Serum or Plasma", {PMOL_L: (1, 150)}),
    # Inflammation and blood gases. C-reactive protein up to the top of sepsis; arterial tensions from
    # severe hypoxaemia to breathing pure oxygen, and from hyperventilation to extreme hypercapnia.
    Measure(3020460, "C reactive protein [Mass/volume] in Serum or Plasma", {MG_L: (0, 600), MG_DL: (0, 60)}),
    Measure(3027801, "Oxygen [Partial pressure] in Arterial blood", {MMHG: (10, 700)}),
    Measure(3027946, "Carbon dioxide [Partial pressure] in Arterial blood", {MMHG: (5, 200)}),
]

# ---- sex-specific conditions and procedures (plausibleGender) ------------------------------------------
# Organs only one sex has (prostate, testis, epididymis, penis, scrotum; ovary, uterus, cervix, vagina),
# pregnancy and its complications, menstruation, and procedures on those organs. Conditions that either sex
# can have (breast cancer, infertility in general, hypogonadism) are not listed.
MALE, FEMALE = "Male", "Female"
SEX_SPECIFIC: list[tuple[int, str, str, str]] = [  # (concept id, name, domain, sex)
    (200962, "Primary malignant neoplasm of prostate", "Condition", MALE),
    (4163261, "Malignant tumor of prostate", "Condition", MALE),
    (4129902, "Neoplasm of prostate", "Condition", MALE),
    (197032, "Hyperplasia of prostate", "Condition", MALE),
    (194997, "Prostatitis", "Condition", MALE),
    (193522, "Acute prostatitis", "Condition", MALE),
    (200445, "Chronic prostatitis", "Condition", MALE),
    (198806, "Abscess of prostate", "Condition", MALE),
    (433716, "Primary malignant neoplasm of testis", "Condition", MALE),
    (436366, "Benign neoplasm of testis", "Condition", MALE),
    (4150043, "Epididymitis", "Condition", MALE),
    (201823, "Benign neoplasm of penis", "Condition", MALE),
    (74322, "Benign neoplasm of scrotum", "Condition", MALE),
    (4330583, "Vasectomy", "Procedure", MALE),
    (4235738, "Prostatectomy", "Procedure", MALE),
    (4096783, "Radical prostatectomy", "Procedure", MALE),
    (4234536, "Transurethral prostatectomy", "Procedure", MALE),
    (4341536, "Total orchidectomy", "Procedure", MALE),
    (4021070, "Radical inguinal orchiectomy", "Procedure", MALE),
    (198984, "Malignant tumor of cervix", "Condition", FEMALE),
    (4181351, "Malignant tumor of ovary", "Condition", FEMALE),
    (197230, "Malignant neoplasm of uterus", "Condition", FEMALE),
    (45770892, "Primary malignant neoplasm of uterus", "Condition", FEMALE),
    (199764, "Benign neoplasm of ovary", "Condition", FEMALE),
    (197236, "Uterine leiomyoma", "Condition", FEMALE),
    (433527, "Endometriosis", "Condition", FEMALE),
    (194696, "Dysmenorrhea", "Condition", FEMALE),
    (443431, "Disorder of menstruation", "Condition", FEMALE),
    (198363, "Candidiasis of vagina", "Condition", FEMALE),
    (45769019, "Female infertility due to cystic fibrosis", "Condition", FEMALE),
    (4299535, "Pregnant", "Condition", FEMALE),
    (439393, "Pre-eclampsia", "Condition", FEMALE),
    (443700, "Eclampsia", "Condition", FEMALE),
    (437611, "Ectopic pregnancy", "Condition", FEMALE),
    (4024659, "Gestational diabetes mellitus", "Condition", FEMALE),
    (4067106, "Miscarriage", "Condition", FEMALE),
    (440785, "Vomiting of pregnancy", "Condition", FEMALE),
    (4239471, "Postpartum depression", "Condition", FEMALE),
    (4127886, "Hysterectomy", "Procedure", FEMALE),
    (4023403, "Total hysterectomy", "Procedure", FEMALE),
    (4138738, "Vaginal hysterectomy", "Procedure", FEMALE),
    (4306298, "Oophorectomy", "Procedure", FEMALE),
    (4117038, "Bilateral tubal ligation", "Procedure", FEMALE),
    (4275113, "Insertion of intrauterine contraceptive device", "Procedure", FEMALE),
    (4238715, "Removal of intrauterine device", "Procedure", FEMALE),
    (4186930, "Replacement of intrauterine contraceptive device", "Procedure", FEMALE),
]
# The table and field a sex-specific concept of each domain is recorded in.
GENDER_TABLE = {"Condition": ("condition_occurrence", "condition_concept_id"),
                "Procedure": ("procedure_occurrence", "procedure_concept_id")}
