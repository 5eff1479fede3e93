"""The marginal hazard ratio in the treated that a planted (conditional) hazard ratio implies.

The generator plants a *conditional* hazard ratio: given a person's covariates on a day, exposure
multiplies that day's hazard by HR. A propensity-score matched comparison (or any analysis that does
not put the prognostic covariates in its outcome model) estimates a *marginal* hazard ratio: the ratio
of the hazards of the treated population had it been treated vs had it taken the comparator. The
hazard ratio is not collapsible (Gail, Wieand and Piantadosi 1984; Austin 2013): when covariates
strongly change the outcome's hazard, high-risk persons leave the risk set first, faster in the arm
with the higher hazard, and the marginal ratio is nearer 1 than the conditional one even with no
confounding at all.

This module states that marginal estimand exactly, for the persons a new-user analysis of a planted
effect would enrol, from their counterfactual outcomes under both exposures. For each target new user
(first course of the target drug, 365 days observed before it, no outcome before it) it takes the day
by day hazard of the outcome from the course start to the course end (the on-treatment time at risk;
the end of the observation period cuts it), exactly as the generator draws events: the unexposed rate
of that day (age, sex, recorded conditions) times the target drug's planted HR in one world and the
comparator's in the other. No random number is drawn. Summed over persons, per day since the course
start t, the expected number still at risk and the expected first events in each world,

    R_w(t) = sum_i [t <= L_i] S_iw(t-1),   D_w(t) = sum_i [t <= L_i] S_iw(t-1) (1 - exp(-h_w lambda_i(t))),

are the limits of what a Cox model fitted to both worlds' first events (exposure the only term) sums
over its risk sets; its limiting log hazard ratio beta solves the expected score equation
(Struthers and Kalbfleisch 1986)

    sum_t [D_1(t) - (D_0(t) + D_1(t)) e^beta R_1(t) / (e^beta R_1(t) + R_0(t))] = 0.

The counts are additive over chunks of persons, so a site's estimand is solved once from their sums.
Deaths from other acute outcomes are left out of the censoring (the same in both worlds; they change
only the weights over follow-up time), and persons are not matched (the estimand is the average
treatment effect in all the treated, marginal over their covariates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mercia.synth import params as P
from mercia.synth.concepts import DRUG

if TYPE_CHECKING:
    from mercia.synth.population import Chunk

# Follow-up days since the course start: the data window holds fewer than 13 years.
MAX_DAYS = 13 * 366
PRIOR_DAYS = 365  # observation required before the course start (seeds.STUDIES' new-user cohorts)


@dataclass(frozen=True)
class Contrast:
    """A planted effect's contrast: target drugs vs the comparator, on one acute outcome."""

    effect: str
    outcome: str
    target: tuple[str, ...]
    hr_target: float  # planted HR of the target drugs vs unexposed
    hr_comparator: float  # planted HR of the comparator vs unexposed

    @property
    def conditional_hr(self) -> float:
        return self.hr_target / self.hr_comparator


CONTRASTS = (
    Contrast("nsaid_gi_bleeding", "gi_bleeding", ("diclofenac",), P.NSAID_GI_HR["diclofenac"],
             P.NSAID_GI_HR["celecoxib"]),
    Contrast("sglt2_hf_admission", "heart_failure_admission", P.SGLT2S, P.SGLT2_HF_HR, 1.0),
)
COUNTS = ("R1", "R0", "D1", "D0")


@dataclass
class FollowUp:
    """Target new users' follow-up, one row per person and day since the course start."""

    person: np.ndarray  # chunk-local person index
    t: np.ndarray  # days since the course start (0 = the start)
    rate: np.ndarray  # unexposed hazard on that day, events per day
    persons: int


def follow_up(chunk: Chunk, contrast: Contrast) -> FollowUp:
    """The target new users of `contrast` in `chunk` and their day-by-day unexposed hazard of its
    outcome during the course. Call after `chunk.acute()` (events, deaths and segments known)."""
    from mercia.synth.population import INF

    c = chunk.courses
    tgt = np.isin(c["drug"], [DRUG[k] for k in contrast.target])
    cp, cs, ce = c["p"][tgt], c["start"][tgt], c["end"][tgt]
    o = np.lexsort((cs, cp))
    cp, cs, ce = cp[o], cs[o], ce[o]
    first = np.r_[True, cp[1:] != cp[:-1]] if len(cp) else np.zeros(0, bool)
    cp, cs, ce = cp[first], cs[first], ce[first]
    # Observed 365 days before the start, alive at the start, course not empty.
    in1 = (cs >= chunk.s1[cp]) & (cs <= chunk.e1[cp])
    pstart = np.where(in1, chunk.s1[cp], chunk.s2[cp])
    ok = (cs - pstart >= PRIOR_DAYS) & (cs < chunk.death[cp]) & (ce >= cs) & (pstart < INF)
    # No outcome before the start (remove_subjects_with_prior_outcome).
    k = [a.key for a in P.ACUTE].index(contrast.outcome)
    ev = chunk.ev_k == k
    ep, ed = chunk.ev_p[ev], chunk.ev_d[ev]
    first_ev = np.full(chunk.n, INF, dtype=np.int64)
    np.minimum.at(first_ev, ep, ed)
    ok &= first_ev[cp] >= cs
    cp, cs, ce = cp[ok], cs[ok], ce[ok]
    # The person's segments of constant hazard inside [start, end].
    sp, ss, se = chunk.seg_p, chunk.seg_s, chunk.seg_e
    who = np.full(chunk.n, -1, dtype=np.int64)
    who[cp] = np.arange(len(cp))
    j = who[sp]
    sel = j >= 0
    sp, ss, se, j = sp[sel], ss[sel], se[sel], j[sel]
    a = np.maximum(ss, cs[j])
    b = np.minimum(se, ce[j])
    keep = b >= a
    sp, a, b, j = sp[keep], a[keep], b[keep], j[keep]
    rate = chunk.acute_rates(sp, a)[k] / 365.25
    lengths = b - a + 1
    idx = np.repeat(np.arange(len(sp)), lengths)
    day = a[idx] + (np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    order = np.lexsort((day, sp[idx]))
    idx, day = idx[order], day[order]
    return FollowUp(person=sp[idx], t=day - cs[j[idx]], rate=rate[idx], persons=len(cp))


def expected_counts(fu: FollowUp, contrast: Contrast) -> dict[str, np.ndarray]:
    """R_w(t) and D_w(t) (module docstring), w = 1 the target's HR, 0 the comparator's."""
    out: dict[str, np.ndarray] = {}
    if len(fu.t) == 0:
        return {name: np.zeros(MAX_DAYS) for name in COUNTS}
    if int(fu.t.max()) >= MAX_DAYS:
        raise ValueError("follow-up longer than the data window")
    start = np.r_[True, fu.person[1:] != fu.person[:-1]]
    for w, h in (("1", contrast.hr_target), ("0", contrast.hr_comparator)):
        haz = fu.rate * h
        cum = np.cumsum(haz)
        before = cum - haz  # cumulative hazard before the day, from the person's start
        before = before - np.maximum.accumulate(np.where(start, before, 0.0))
        surv = np.exp(-before)
        out["R" + w] = np.bincount(fu.t, weights=surv, minlength=MAX_DAYS)
        out["D" + w] = np.bincount(fu.t, weights=surv * -np.expm1(-haz), minlength=MAX_DAYS)
    return out


def chunk_counts(chunk: Chunk) -> dict[str, np.ndarray]:
    """Every contrast's expected counts in this chunk, keyed '<effect>.<R1|R0|D1|D0>', plus
    '<effect>.persons' (a one-element array)."""
    out: dict[str, np.ndarray] = {}
    for c in CONTRASTS:
        fu = follow_up(chunk, c)
        for name, v in expected_counts(fu, c).items():
            out[f"{c.effect}.{name}"] = v
        out[f"{c.effect}.persons"] = np.array([float(fu.persons)])
    return out


def solve_log_hr(counts: dict[str, np.ndarray]) -> float:
    """The log hazard ratio solving the expected Cox score equation (Breslow ties) over R_w, D_w."""
    r1, r0, d1, d0 = (np.asarray(counts[k], dtype=float) for k in COUNTS)
    live = (r1 > 0) & (r0 > 0)
    r1, r0, d1, d0 = r1[live], r0[live], d1[live], d0[live]
    if d1.sum() <= 0 or d0.sum() <= 0:
        return math.nan

    def score(b: float) -> float:
        return float((d1 - (d0 + d1) * r1 * math.exp(b) / (r1 * math.exp(b) + r0)).sum())

    lo, hi = -10.0, 10.0  # the score falls as beta rises
    for _ in range(200):
        mid = (lo + hi) / 2
        if score(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def marginal_truth(counts: dict[str, np.ndarray], contrast: Contrast) -> dict[str, Any]:
    """truth.json's statement of one contrast's marginal hazard ratio in the treated."""
    sub = {k: counts[f"{contrast.effect}.{k}"] for k in COUNTS}
    b = solve_log_hr(sub)
    return {
        "hazard_ratio": None if not math.isfinite(b) else round(math.exp(b), 6),
        "log_hazard_ratio": None if not math.isfinite(b) else round(b, 6),
        "conditional_hazard_ratio": round(contrast.conditional_hr, 6),
        "persons": int(counts[f"{contrast.effect}.persons"][0]),
        "expected_first_events_target": round(float(sub["D1"].sum()), 1),
        "expected_first_events_comparator_world": round(float(sub["D0"].sum()), 1),
        "definition": (
            "the limit of a Cox model (exposure its only term, Breslow ties) fitted to the first outcomes "
            "of the target new users (first course, 365 days observed before, no outcome before) under "
            "both exposures, on treatment (course start to course end, cut at the end of observation): "
            "each day's hazard is the person's unexposed rate of that day times the target's planted HR "
            "in one world and the comparator's in the other. Computed exactly from the expected risk sets "
            "(no random draw). It is the marginal hazard ratio in the treated that a propensity-score "
            "matched analysis estimates; the planted hazard_ratio is conditional on the covariates, and "
            "the hazard ratio is not collapsible."
        ),
    }
