"""Synthetic negative-control outcomes: acute conditions no exposure causes, confounded like real ones.

With ``SiteProfile.negative_control_outcomes = N`` (0 by default: off) the generator adds the first N
outcomes of ``NC_CONCEPTS`` as recurrent condition records. Each is a Poisson process whose rate per
person-year on a day is

    exp(log_rate + age_per_decade * (age - 60) / 10 + sum(coef * x)) * acute_rate_multiplier

with age on 1 January of the day's year and x = male and the confounders of the planted effects
(type 2 diabetes, hypertension, CKD, atrial fibrillation, heart failure) recorded on or before the day:
the same covariates the planted acute outcomes depend on, so a crude comparison of channelled drugs
finds a spurious association, as with real negative controls. No exposure changes these rates: the
true hazard ratio of every exposure pair on every negative control is 1.

Determinism: the events are drawn from a random stream of their own (``nc_rng``), after the rest of a
chunk is simulated, and their rows carry ids of their own (from ``NC_ID_BASE``) and no visit. So
turning them on adds rows and changes no other row of any table (ids included); with N = 0 nothing is
drawn and the data are those of a generator without this module.

The concept ids and names are OMOP's (SNOMED standard condition concepts), taken from public OHDSI
negative-control lists: the bundled vocabulary (Eunomia GiBleed), the Book of OHDSI's ACE inhibitor
vs thiazide list (also LEGEND-T2DM's), the coxib vs NSAID list of an OHDSI network study, and EUMAEUS.
Outcomes a study drug here could plausibly cause (bleeding, dyspepsia, genital infections, kidney,
heart and diabetes complications) are left out, as are concepts that contain another on the list.
Those first in the list are the most plainly acute (injuries, infections).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# (concept_id, concept_name). Order matters: N outcomes are the first N.
NC_CONCEPTS: tuple[tuple[int, str], ...] = (
    (139099, "Ingrowing nail"),
    (81151, "Sprain of ankle"),
    (380731, "Otitis externa"),
    (78272, "Sprain of wrist"),
    (376707, "Acute conjunctivitis"),
    (4109685, "Laceration of foot"),
    (28060, "Streptococcal sore throat"),
    (4113008, "Laceration of hand"),
    (372328, "Otitis media"),
    (78619, "Contusion of knee"),
    (260139, "Acute bronchitis"),
    (374375, "Impacted cerumen"),
    (4059173, "Fracture of ankle"),
    (40481087, "Viral sinusitis"),
    (440329, "Herpes zoster without complication"),
    (4155034, "Laceration of forearm"),
    (4112343, "Acute viral pharyngitis"),
    (134438, "Contact dermatitis"),
    (4218389, "Whiplash injury to neck"),
    (4142905, "Fracture of rib"),
    (133655, "Burn of forearm"),
    (4296204, "First degree burn"),
    (4296205, "Second degree burn"),
    (4156265, "Facial laceration"),
    (4152936, "Laceration of thigh"),
    (378001, "Concussion with no loss of consciousness"),
    (375671, "Concussion with loss of consciousness"),
    (4035415, "Tear of meniscus of knee"),
    (40479768, "Injury of anterior cruciate ligament"),
    (40479422, "Injury of medial collateral ligament of knee"),
    (4146173, "Injury of tendon of the rotator cuff of shoulder"),
    (4149245, "Rupture of patellar tendon"),
    (4237458, "Fracture of clavicle"),
    (4278672, "Fracture of forearm"),
    (4294548, "Acute bacterial sinusitis"),
    (440448, "Appendicitis"),
    (199192, "Abrasion and/or friction burn of trunk without infection"),
    (443172, "Splinter of face, without major open wound"),
    (259995, "Foreign body in orifice"),
    (4153877, "Post-traumatic wound infection"),
    (439237, "Assault"),
    (4270490, "Tracheitis"),
    (253796, "Pneumothorax"),
    (4322737, "Infection of tooth"),
    (133228, "Dental caries"),
    (381581, "Chalazion"),
    (439840, "Lymphangitis"),
    (4163232, "Mastitis"),
    (378160, "Otorrhea"),
    (4223947, "Viral hepatitis, type A"),
    (435140, "Toxic effect of alcohol"),
    (440814, "Torticollis"),
    (4195698, "Tenosynovitis"),
    (4195085, "Nasal congestion"),
    (257683, "Posterior rhinorrhea"),
    (261880, "Atelectasis"),
    (140641, "Verruca vulgaris"),
    (133141, "Tinea pedis"),
    (4215978, "Onychomycosis"),
    (133551, "Vesicular eczema of hands and/or feet"),
    (4115367, "Wrist joint pain"),
    (4344500, "Impingement syndrome of shoulder region"),
    (77965, "Acquired trigger finger"),
    (73560, "Calcaneal spur"),
    (40481632, "Ganglion cyst"),
    (4170770, "Epidermoid cyst"),
    (4288544, "Inguinal hernia"),
    (76737, "Hydrocele"),
    (80509, "Bone cyst"),
    (76786, "Derangement of knee"),
    (81378, "Chondromalacia of patella"),
    (75911, "Acquired hallux valgus"),
    (433577, "Hammer toe"),
    (134460, "Plantar fascial fibromatosis"),
    (4213540, "Cervical somatic dysfunction"),
    (36713918, "Somatic dysfunction of lumbar region"),
    (4202045, "Postviral fatigue syndrome"),
    (4115402, "Difficulty sleeping"),
    (438134, "Hypersomnia"),
    (434630, "Sleep-wake schedule disorder"),
    (4248728, "Snoring"),
    (377910, "Deviated nasal septum"),
    (377572, "Noise effects on inner ear"),
    (4110815, "Sensorineural hearing loss, bilateral"),
    (378427, "Tear film insufficiency"),
    (376132, "Ectropion"),
    (373478, "Presbyopia"),
    (379805, "Myopia"),
    (380706, "Regular astigmatism"),
    (4083487, "Macular drusen"),
    (436409, "Abnormal pupil"),
    (378256, "Abnormal reflex"),
    (441788, "Human papilloma virus infection"),
    (40480893, "Nonspecific tuberculin test reaction"),
    (434165, "Abnormal cervical smear"),
    (196168, "Irregular periods"),
    (442274, "Oligomenorrhea"),
    (197610, "Cyst of ovary"),
    (140842, "Changes in skin texture"),
    (137951, "Acquired keratoderma"),
    (141932, "Senile hyperkeratosis"),
    (137054, "Skin striae"),
    (439790, "Psychalgia"),
)
MAX_NEGATIVE_CONTROLS = len(NC_CONCEPTS)

# The confounders of the planted effects (params.NSAID_CHOICE, params.SGLT2_CHOICE) a negative
# control's rate depends on, besides age and sex.
NC_CONDITIONS: tuple[str, ...] = ("type2_diabetes", "hypertension", "ckd", "atrial_fibrillation", "heart_failure")
# Condition records of negative controls are numbered from here, so they never shift another row's id.
NC_ID_BASE = 1_000_000_000_000
# The parameters are fixed (not drawn per site or seed): the same outcome has the same model everywhere.
_PARAM_SEED = 20_261_207

HAZARD_MODEL = (
    "Each negative-control outcome is a recurrent Poisson process whose rate per person-year on day t is "
    "exp(log_rate + age_per_decade*(age-60)/10 + sum(coef*x)) * acute_rate_multiplier, age on 1 January of "
    "t's year, x_male = 1 for men and x_condition = 1 when the condition's first record is on or before t "
    "(the confounders of the planted effects). No exposure changes it: the true hazard ratio of every drug "
    "pair is 1. Records: condition_occurrence rows (type EHR, no visit, no source value) inside observation "
    "periods and not after death, condition_occurrence_id and condition_era_id from 1,000,000,000,000."
)


def nc_parameters(n: int) -> dict[str, np.ndarray]:
    """The rate model of the first ``n`` negative controls: log_rate, age (per decade), male and one
    coefficient per NC_CONDITIONS column. The first n of any larger set are these (one fixed draw)."""
    rng = np.random.default_rng(_PARAM_SEED)
    m = MAX_NEGATIVE_CONTROLS
    log_rate = np.log(rng.uniform(1.0, 6.0, m) / 1000.0)  # 1-6 events per 1,000 person-years at 60
    age = rng.uniform(-0.1, 0.4, m)
    male = rng.uniform(-0.4, 0.4, m)
    cond = rng.uniform(0.0, 0.6, (m, len(NC_CONDITIONS)))  # commoner in the sick, as real controls are
    r = np.round
    return {"log_rate": r(log_rate[:n], 4), "age": r(age[:n], 3), "male": r(male[:n], 3),
            "cond": r(cond[:n], 3)}


def simulate_negative_controls(chunk: Any, n_outcomes: int, rng: np.random.Generator
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events (person, day, outcome index) of a simulated chunk (`population.Chunk` after `acute()`,
    so periods are already cut at deaths from acute events). Uses only `rng` and reads the chunk."""
    from mercia.synth.population import JAN1, Y0, YEAR, year_of

    prm = nc_parameters(n_outcomes)
    sp, ss, se = chunk.seg_p, chunk.seg_s, chunk.seg_e
    age10 = (chunk.age_at(sp, JAN1[year_of(ss) - Y0]) - 60) / 10
    X = np.column_stack([np.ones(len(sp)), age10, chunk.male[sp].astype(float),
                         *[chunk.has(k, sp, ss).astype(float) for k in NC_CONDITIONS]])
    B = np.vstack([prm["log_rate"], prm["age"], prm["male"], prm["cond"].T])  # (3 + conditions) x n
    mult = chunk.profile.acute_rate_multiplier
    total = np.empty(len(sp))
    block = 65_536
    for i in range(0, len(sp), block):
        total[i:i + block] = np.exp(X[i:i + block] @ B).sum(axis=1) * mult
    length = (se - ss + 1) / YEAR
    counts = rng.poisson(total * length)
    idx = np.repeat(np.arange(len(sp)), counts)
    # Which outcome: in proportion to the outcomes' rates on the event's segment.
    u = rng.random(len(idx))
    k = np.empty(len(idx), dtype=np.int64)
    for i in range(0, len(idx), block):
        cum = np.cumsum(np.exp(X[idx[i:i + block]] @ B), axis=1)
        k[i:i + block] = (cum < (u[i:i + block] * cum[:, -1])[:, None]).sum(axis=1)
    k = np.minimum(k, n_outcomes - 1)
    d = ss[idx] + np.floor(rng.random(len(idx)) * (se[idx] - ss[idx] + 1)).astype(np.int64)
    p = sp[idx]
    keep = chunk.period_end(p, d) >= 0  # not after a death from an acute event
    p, d, k = p[keep], d[keep], k[keep]
    o = np.lexsort((k, d, p))
    return p[o], d[o], k[o]


def nc_truth(n: int, stats: dict[str, float], planted: list[dict[str, Any]]) -> dict[str, Any]:
    """truth.json's `negative_control_outcomes` section."""
    prm = nc_parameters(n)
    outcomes = []
    for i in range(n):
        cid, name = NC_CONCEPTS[i]
        outcomes.append({
            "concept_id": cid, "concept_name": name, "domain_id": "Condition", "vocabulary_id": "SNOMED",
            "log_rate": float(prm["log_rate"][i]),
            "rate_at_60_per_1000py": round(1000 * float(np.exp(prm["log_rate"][i])), 4),
            "age_per_decade": float(prm["age"][i]),
            "coef": {"male": float(prm["male"][i]),
                     **{k: float(prm["cond"][i, j]) for j, k in enumerate(NC_CONDITIONS)}},
            "realised_events": int(stats.get(f"negative_control.{cid}.events", 0.0)),
        })
    pairs = [{"effect_id": e["id"], "target": e["contrast"]["target"], "comparator": e["contrast"]["comparator"],
              "outcome_concept_ids": [o["concept_id"] for o in outcomes], "hazard_ratio": 1.0} for e in planted]
    return {"note": "acute outcomes no exposure affects, confounded by age, sex and the planted effects' "
                    "comorbidities; the true hazard ratio of every exposure pair on each is 1",
            "hazard_model": HAZARD_MODEL, "id_base": NC_ID_BASE, "outcomes": outcomes, "pairs": pairs}
