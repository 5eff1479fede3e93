"""Simulate one chunk of persons, vectorised: numpy arrays in, column arrays out.

Every step works on whole arrays (no per-person Python loop). Days are int64 days since 1970-01-01
(Arrow's date32); ``INF`` marks "never" (not diagnosed, not dead, no second period).

Order of simulation (each step may only use what came before it):
persons -> chronic onsets (Gompertz) -> registration periods -> deaths from background and chronic
excess mortality -> recorded diagnoses -> prescribing courses -> acute events (Poisson processes on
segments of constant hazard, with planted drug effects) -> deaths from acute events (periods shortened,
later records dropped) -> visits, measurements, rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mercia.synth import params as P
from mercia.synth.concepts import CONDITION_KEYS, DRUG, MEASUREMENT_KEYS
from mercia.synth.profiles import BAND_WIDTH, SiteProfile

EPOCH = np.datetime64("1970-01-01", "D")


def day(s: str) -> int:
    return int((np.datetime64(s, "D") - EPOCH).astype(np.int64))


START = day(P.DATA_START)
END = day(P.DATA_END)
MID = day("2018-07-01")
INF = 2**30
YEAR = 365.25
Y0 = 1880
JAN1 = np.array([day(f"{y}-01-01") for y in range(Y0, 2040)], dtype=np.int64)
DAY_BASE = day("1880-01-01")  # visit keys hold day - DAY_BASE in 17 bits

GP, OUTPATIENT, INPATIENT, EMERGENCY = 0, 1, 2, 3
COND = {k: i for i, k in enumerate(CONDITION_KEYS)}
ACUTE_COND = {a.key: len(P.CHRONIC) + i for i, a in enumerate(P.ACUTE)}
MEAS = {k: i for i, k in enumerate(MEASUREMENT_KEYS)}
LENGTH_OF_STAY = {"myocardial_infarction": 4, "stroke": 9, "gi_bleeding": 3, "hip_fracture": 12,
                  "pneumonia": 5, "heart_failure_admission": 6}


def year_of(d: np.ndarray) -> np.ndarray:
    return np.searchsorted(JAN1, d, side="right") - 1 + Y0


# numpy's unique() hashes before it sorts, which is several times slower than one sort for these
# int64 keys.
def _sorted_unique(key: np.ndarray) -> np.ndarray:
    key = np.sort(key)
    if len(key) == 0:
        return key
    return key[np.r_[True, key[1:] != key[:-1]]]


def _unique_inverse(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys (all >= -1) and each key's index among them."""
    n = len(key)
    ibits = max(int(n - 1).bit_length(), 1)
    kmax = int(key.max(initial=0)) + 1
    if kmax.bit_length() + ibits <= 62:
        # Key and position packed into one int64 and sorted: a plain sort is about twice as fast as an
        # argsort, and the keys come out in the same order.
        packed = ((key + 1) << ibits) | np.arange(n, dtype=np.int64)
        packed.sort()
        o = packed & ((1 << ibits) - 1)
        ks = (packed >> ibits) - 1
    else:
        o = np.argsort(key)
        ks = key[o]
    first = np.ones(len(ks), dtype=bool)
    first[1:] = ks[1:] != ks[:-1]
    inv = np.empty(len(ks), dtype=np.int64)
    inv[o] = np.cumsum(first) - 1
    return ks[first], inv


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _group_arange(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each group of size c, concatenated."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


def _split_years(p: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Split inclusive day intervals [a, b] at calendar-year boundaries."""
    y0 = year_of(a)
    m = year_of(b) - y0 + 1
    k = _group_arange(m)
    idx = np.repeat(np.arange(len(p)), m)
    y = y0[idx] + k
    s = np.maximum(a[idx], JAN1[y - Y0])
    e = np.minimum(b[idx], JAN1[y + 1 - Y0] - 1)
    return idx, s, e


@dataclass
class Requests:
    """Visit requests from every source; deduplicated into visits at the end."""

    p: list[np.ndarray] = field(default_factory=list)
    day: list[np.ndarray] = field(default_factory=list)
    kind: list[np.ndarray] = field(default_factory=list)
    los: list[np.ndarray] = field(default_factory=list)
    n: int = 0

    def add(self, p: np.ndarray, d: np.ndarray, kind: int | np.ndarray, los: int | np.ndarray = 0) -> np.ndarray:
        """Add requests; return their request indices (to link records to the visit later)."""
        k = len(p)
        self.p.append(p.astype(np.int64))
        self.day.append(d.astype(np.int64))
        self.kind.append(np.broadcast_to(np.asarray(kind, dtype=np.int64), (k,)).copy())
        self.los.append(np.broadcast_to(np.asarray(los, dtype=np.int64), (k,)).copy())
        idx = np.arange(self.n, self.n + k, dtype=np.int64)
        self.n += k
        return idx


@dataclass
class ChunkResult:
    tables: dict[str, dict[str, np.ndarray]]  # local ids; see site.py for the id offsets
    stats: dict[str, float]
    # Expected risk sets of the planted effects' counterfactual worlds (mercia.synth.marginal),
    # additive over chunks.
    marginal: dict[str, np.ndarray] = field(default_factory=dict)


class Chunk:
    """One chunk of ``n`` persons. Call ``run()``; read ``result``."""

    def __init__(self, n: int, rng: np.random.Generator, profile: SiteProfile,
                 nc_rng: np.random.Generator | None = None) -> None:
        self.n = n
        self.rng = rng
        self.nc_rng = nc_rng  # negative-control outcomes' own stream (mercia.synth.negative_controls)
        self.profile = profile
        self.req = Requests()
        self.stats: dict[str, float] = {}
        self.planted_drugs = np.array([DRUG[k] for k in (*P.NSAIDS, *P.SGLT2S)])

    # ---- persons -----------------------------------------------------------------------------
    def persons(self) -> None:
        rng, n, pr = self.rng, self.n, self.profile
        w = pr.age_weights()
        band = rng.choice(len(w), size=n, p=w)
        width = np.where(band == len(w) - 1, 10, BAND_WIDTH)
        age_mid = band * BAND_WIDTH + rng.random(n) * width
        self.birth = MID - np.floor(age_mid * YEAR).astype(np.int64)
        # Women outlive men: the male share falls from 51% below 50 to 35% at 95.
        male_p = 0.512 - np.clip((age_mid - 50) / 45, 0, 1) * 0.16
        self.male = rng.random(n) < male_p
        race_p = np.asarray(pr.race_mix) / sum(pr.race_mix)
        self.race = rng.choice(5, size=n, p=race_p)
        dep_p = np.asarray(pr.deprivation_mix) / sum(pr.deprivation_mix)
        self.dep = rng.choice(5, size=n, p=dep_p) + 1
        self.smoker = rng.random(n) < np.clip(pr.ever_smoker + 0.05 * (self.dep - 3), 0, 1)
        self.bmi = np.exp(rng.normal(np.log(27.0), 0.16, n)) + 0.6 * (self.dep - 3)
        self.x = {
            "male": self.male.astype(float),
            "bmi": (self.bmi - 27.5) / 5,
            "dep": (self.dep - 3).astype(float),
            "smoker": self.smoker.astype(float),
            "asian": (self.race == 2).astype(float),
            "black": (self.race == 1).astype(float),
        }

    def chronic_onsets(self) -> None:
        rng, n = self.rng, self.n
        self.onset_age: dict[str, np.ndarray] = {}
        self.onset: dict[str, np.ndarray] = {}
        for ch in P.CHRONIC:
            lp = np.zeros(n)
            for k, v in ch.coef.items():
                lp += v * (self.x[k] if k in self.x else (self.onset_age[k] < 200))
            e = rng.exponential(size=n)
            # Inverse of the Gompertz cumulative hazard r*b/c*(exp(c(a-a0))-1) = E.
            a = ch.a0 + np.log1p(ch.c * e / (ch.b * np.exp(lp))) / ch.c
            if ch.sex == "F":
                a[self.male] = np.inf
            elif ch.sex == "M":
                a[~self.male] = np.inf
            a[a > 110] = np.inf
            self.onset_age[ch.key] = a
            self.onset[ch.key] = np.where(np.isfinite(a), self.birth + np.floor(np.where(np.isfinite(a), a, 0) * YEAR),
                                          INF).astype(np.int64)

    # ---- registration and death -----------------------------------------------------------------
    def periods_and_deaths(self) -> None:
        rng, n, pr = self.rng, self.n, self.profile
        earliest = np.maximum(START, self.birth + rng.integers(0, 43, n))  # newborns register within 6 weeks
        latest = END - 30
        move_in = (rng.random(n) < pr.move_in_fraction) & (earliest < latest)
        s1 = np.where(move_in, earliest + np.floor(rng.random(n) * (latest - earliest)).astype(np.int64), earliest)
        # Death: Gompertz background hazard conditional on being alive at registration, competing with
        # a constant excess hazard after each chronic onset.
        s_age = (s1 - self.birth) / YEAR
        m = P.MORTALITY
        lp = sum(v * self.x[k] for k, v in m["coef"].items())
        c, b = m["c"], m["h30"]
        e = rng.exponential(size=n)
        death_age = 30 + np.log(np.exp(c * (s_age - 30)) + c * e / (b * np.exp(lp))) / c
        cause = np.full(n, -1, dtype=np.int64)
        for i, ch in enumerate(P.CHRONIC):
            if ch.excess_mortality <= 0:
                continue
            t = np.maximum(self.onset_age[ch.key], s_age) + rng.exponential(size=n) / ch.excess_mortality
            better = t < death_age
            death_age = np.where(better, t, death_age)
            cause[better] = i
        death_true = self.birth + np.floor(np.minimum(death_age, 200) * YEAR).astype(np.int64)
        death_true = np.where(death_true <= END, np.maximum(death_true, s1), INF)
        stop = np.minimum(death_true, END)
        lr = pr.leave_rate
        def leave(frm: np.ndarray) -> np.ndarray:
            if lr <= 0:
                return np.full(n, INF, dtype=np.int64)
            return frm + np.floor(rng.exponential(size=n) / lr * YEAR).astype(np.int64)
        leave1 = leave(s1)
        left1 = leave1 < stop
        e1 = np.where(left1, leave1, stop)
        s2 = leave1 + 30 + np.floor(rng.exponential(size=n) * 1.5 * YEAR).astype(np.int64)
        has2 = left1 & (rng.random(n) < pr.return_fraction) & (s2 <= stop - 30)
        leave2 = leave(s2)
        e2 = np.where(has2, np.minimum(leave2, stop), -1)
        s2 = np.where(has2, s2, INF)
        died_in_obs = (death_true <= END) & (~left1 | (has2 & (leave2 >= death_true)))
        self.s1, self.e1, self.s2, self.e2, self.has2 = s1, e1, s2, e2, has2
        self.death = np.where(died_in_obs, death_true, INF)
        self.cause = np.where(died_in_obs, cause, -1)  # chronic index, or -1 (no recorded cause)
        # The new-patient check after each registration, where earlier history is recorded.
        self.r1 = np.minimum(s1 + rng.integers(0, 61, n), e1)
        self.r2 = np.where(has2, np.minimum(s2 + rng.integers(0, 61, n), e2), INF)

    # ---- helpers on periods ------------------------------------------------------------------
    def period_end(self, p: np.ndarray, d: np.ndarray) -> np.ndarray:
        """End of the observation period holding day d of person p; -1 when d is unobserved."""
        in1 = (d >= self.s1[p]) & (d <= self.e1[p])
        in2 = self.has2[p] & (d >= self.s2[p]) & (d <= self.e2[p])
        return np.where(in1, self.e1[p], np.where(in2, self.e2[p], -1))

    def snap(self, p: np.ndarray, d: np.ndarray) -> np.ndarray:
        """The first observed day on or after d (INF if none)."""
        s1, e1, s2, e2, h2 = self.s1[p], self.e1[p], self.s2[p], self.e2[p], self.has2[p]
        out = np.where(d < s1, s1, np.where(d <= e1, d, np.where(h2 & (d < s2), s2, np.where(h2 & (d <= e2), d, INF))))
        return out

    def first_recorded(self, onset: np.ndarray) -> np.ndarray:
        """Recorded diagnosis date: onset if observed, else the next new-patient check, else INF."""
        in1 = (onset >= self.s1) & (onset <= self.e1)
        in2 = self.has2 & (onset >= self.s2) & (onset <= self.e2)
        pre1 = onset < self.s1
        gap = self.has2 & (onset > self.e1) & (onset < self.s2)
        return np.where(in1 | in2, onset, np.where(pre1, self.r1, np.where(gap, self.r2, INF)))

    def recorded(self) -> None:
        self.rec = {k: self.first_recorded(self.onset[k]) for k in P.CHRONIC_KEYS}

    def has(self, key: str, p: np.ndarray, at: np.ndarray) -> np.ndarray:
        return self.rec[key][p] <= at

    def age_at(self, p: np.ndarray, at: np.ndarray) -> np.ndarray:
        return (at - self.birth[p]) / YEAR

    # ---- prescribing -------------------------------------------------------------------------
    def drugs(self) -> None:
        rng, n = self.rng, self.n
        allp = np.arange(n, dtype=np.int64)
        eps: list[tuple[np.ndarray, ...]] = []  # (p, drug, start, planned_end, supply, at_visit)

        def supply_of(k: int) -> np.ndarray:
            return rng.choice(np.array([28, 56, 84]), size=k, p=[0.5, 0.35, 0.15])

        def add(p, drug, start, dur_days, supply=None, at_visit=True):
            start = self.snap(p, start)
            ok = start < INF
            p, start, dur_days = p[ok], start[ok], np.asarray(dur_days)[ok] if np.ndim(dur_days) else dur_days
            drug = drug[ok] if np.ndim(drug) else np.full(len(p), drug, dtype=np.int64)
            sup = supply_of(len(p)) if supply is None else np.full(len(p), supply, dtype=np.int64)
            end = np.minimum(start + np.floor(dur_days).astype(np.int64), INF)
            eps.append((p, drug.astype(np.int64), start, end, sup, np.full(len(p), at_visit)))
            return p, start, end

        def who(key: str, prob: float) -> np.ndarray:
            rec = self.rec[key]
            return allp[(rec < INF) & (rng.random(n) < prob)]

        def after(p, key, lo, hi):
            return self.rec[key][p] + rng.integers(lo, hi + 1, len(p))

        # Type 2 diabetes: metformin first line, then SGLT2i or gliclazide added (planted comparison).
        p = who("type2_diabetes", 0.85)
        mp, mstart, mend = add(p, DRUG["metformin"], after(p, "type2_diabetes", 0, 90),
                               rng.exponential(8 * YEAR, len(p)))
        t2 = mstart + np.floor(rng.exponential(3.5 * YEAR, len(mp))).astype(np.int64)
        pe = self.period_end(mp, mstart)
        ok = (t2 <= np.minimum(mend, pe)) & (rng.random(len(mp)) < 0.6)
        sp, st2 = mp[ok], t2[ok]
        yr = year_of(st2)
        c = P.SGLT2_CHOICE
        lo = (c["intercept"] + self.profile.sglt2_uptake + c["year"] * (yr - 2019)
              + c["age"] * (self.age_at(sp, st2) - 60))
        for k in ("ckd", "heart_failure", "atrial_fibrillation", "hypertension"):
            lo = lo + c[k] * self.has(k, sp, st2)
        sglt2 = (rng.random(len(sp)) < _sigmoid(lo)) & (yr >= P.SGLT2_FIRST_YEAR)
        which = np.where(rng.random(len(sp)) < 0.55, DRUG["empagliflozin"], DRUG["dapagliflozin"])
        drug2 = np.where(sglt2, which, DRUG["gliclazide"])
        add(sp, drug2, st2, 90 + rng.exponential(2.5 * YEAR, len(sp)))

        # Hypertension: ACE inhibitor and/or amlodipine.
        p = who("hypertension", 0.55)
        add(p, np.where(rng.random(len(p)) < 0.7, DRUG["ramipril"], DRUG["lisinopril"]),
            after(p, "hypertension", 0, 120), rng.exponential(7 * YEAR, len(p)))
        p = who("hypertension", 0.45)
        add(p, DRUG["amlodipine"], after(p, "hypertension", 0, 180), rng.exponential(7 * YEAR, len(p)))
        # Statins for the first of diabetes, hypertension, CKD.
        trig = np.minimum(np.minimum(self.rec["type2_diabetes"], self.rec["hypertension"]), self.rec["ckd"])
        p = allp[(trig < INF) & (rng.random(n) < 0.55)]
        d0 = trig[p] + rng.integers(0, 180, len(p))
        atorva_p = np.where(year_of(d0) >= 2014, 0.75, 0.35)
        add(p, np.where(rng.random(len(p)) < atorva_p, DRUG["atorvastatin"], DRUG["simvastatin"]), d0,
            rng.exponential(6 * YEAR, len(p)))
        # Atrial fibrillation: anticoagulant (warfarin before DOACs), bisoprolol.
        p = who("atrial_fibrillation", 0.72)
        d0 = after(p, "atrial_fibrillation", 0, 30)
        u = rng.random(len(p))
        doac = year_of(d0) >= 2015
        ac = np.where(~doac | (u < 0.2), DRUG["warfarin"], np.where(u < 0.7, DRUG["apixaban"], DRUG["rivaroxaban"]))
        add(p, ac, d0, rng.exponential(6 * YEAR, len(p)))
        p_af_bb = who("atrial_fibrillation", 0.45)
        add(p_af_bb, DRUG["bisoprolol"], after(p_af_bb, "atrial_fibrillation", 0, 60), rng.exponential(5 * YEAR, len(p_af_bb)))
        # Heart failure: furosemide, bisoprolol (unless already on it for AF).
        p = who("heart_failure", 0.8)
        add(p, DRUG["furosemide"], after(p, "heart_failure", 0, 30), rng.exponential(5 * YEAR, len(p)))
        p = who("heart_failure", 0.5)
        p = np.setdiff1d(p, p_af_bb, assume_unique=True)
        add(p, DRUG["bisoprolol"], after(p, "heart_failure", 0, 60), rng.exponential(5 * YEAR, len(p)))
        # COPD or asthma: salbutamol inhalers (one about every two months).
        first = np.minimum(self.rec["copd"], self.rec["asthma"])
        p = allp[(first < INF) & (rng.random(n) < 0.85)]
        add(p, DRUG["salbutamol"], first[p] + rng.integers(0, 30, len(p)), rng.exponential(6 * YEAR, len(p)), supply=60)
        # Depression: sertraline courses.
        p = who("depression", 0.5)
        add(p, DRUG["sertraline"], after(p, "depression", 0, 30), 90 + rng.exponential(240, len(p)), supply=28)
        # Osteoarthritis: NSAID courses (planted effect on GI bleeding), PPI co-prescription.
        self.nsaid_courses(who("osteoarthritis", 0.6), add)
        # Background PPI (dyspepsia, reflux) and levothyroxine (hypothyroidism is not in the model).
        adult = self.age_at(allp, self.s1) >= 18
        ppi_p = np.clip(0.04 + 0.002 * (self.age_at(allp, self.s1) - 40), 0.01, 0.15)
        p = allp[adult & (rng.random(n) < ppi_p)]
        d0 = self.s1[p] + np.floor(rng.random(len(p)) * (self.e1[p] - self.s1[p] + 1)).astype(np.int64)
        add(p, np.where(rng.random(len(p)) < 0.7, DRUG["omeprazole"], DRUG["lansoprazole"]), d0,
            rng.exponential(3 * YEAR, len(p)))
        thy_p = np.where(self.male, 0.01, 0.05) * adult
        p = allp[rng.random(n) < thy_p]
        prevalent = rng.random(len(p)) < 0.5
        d0 = np.where(prevalent, self.r1[p],
                      self.s1[p] + np.floor(rng.random(len(p)) * (self.e1[p] - self.s1[p] + 1)).astype(np.int64))
        add(p, DRUG["levothyroxine"], d0, np.full(len(p), float(INF)), supply=None)
        self.episodes = [np.concatenate(col) for col in zip(*eps, strict=True)]

    def nsaid_courses(self, p: np.ndarray, add) -> None:
        rng = self.rng
        start = self.rec["osteoarthritis"][p] + np.floor(rng.exponential(180, len(p))).astype(np.int64)
        start = self.snap(p, start)
        ok = start < INF
        p, start = p[ok], start[ok]
        age = self.age_at(p, start)
        yr = year_of(start)
        logits = []
        for name in P.NSAIDS:
            cc = P.NSAID_CHOICE[name]
            lo = np.full(len(p), cc.get("intercept", 0.0))
            lo = lo + cc.get("age", 0.0) * (age - 65) + cc.get("year_after_2013", 0.0) * np.maximum(yr - 2013, 0)
            for k in ("atrial_fibrillation", "ckd"):
                lo = lo + cc.get(k, 0.0) * self.has(k, p, start)
            if name == "celecoxib":
                lo = lo + self.profile.celecoxib_preference
            logits.append(lo)
        lg = np.stack(logits, axis=1)
        prob = np.exp(lg - lg.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        choice = (rng.random(len(p))[:, None] > np.cumsum(prob, axis=1)).sum(axis=1)
        drug = np.array([DRUG[k] for k in P.NSAIDS])[np.minimum(choice, len(P.NSAIDS) - 1)]
        dur = 28 + rng.exponential(150, len(p))
        add(p, drug, start, dur, supply=28)
        # A second course of the same drug for some, at least 60 days after the first could end.
        again = rng.random(len(p)) < 0.5
        # Prescriptions of a course can run to 1.2x its planned length plus one supply (gaps of up to
        # 14 days per 28), so this keeps courses more than 60 days apart: drug_era (30-day persistence)
        # never merges them.
        s2 = (start + np.ceil(1.2 * dur).astype(np.int64) + 28 + 61
              + np.floor(rng.exponential(365, len(p))).astype(np.int64))
        add(p[again], drug[again], s2[again], 28 + rng.exponential(150, int(again.sum())), supply=28)
        # Gastroprotection, more often for the old.
        ppi = rng.random(len(p)) < np.clip(0.2 + 0.01 * (age - 50), 0.1, 0.7)
        add(p[ppi], DRUG["omeprazole"], start[ppi], dur[ppi], supply=28)

    def expand(self, p, drug, start, end, supply, at_visit):
        """Courses -> prescriptions: consecutive supplies with 0-14 day gaps, clipped to the period."""
        rng = self.rng
        pe = self.period_end(p, start)
        ok = pe >= 0
        p, drug, start, end, supply, at_visit, pe = (a[ok] for a in (p, drug, start, end, supply, at_visit, pe))
        end_c = np.minimum(end, pe)
        nrx = 1 + np.maximum(end_c - start, 0) // (supply + 7)
        k = _group_arange(nrx)
        ep = np.repeat(np.arange(len(p)), nrx)
        gap = np.where(k > 0, rng.integers(0, 15, len(k)), 0)
        cg = np.cumsum(gap)
        cg = cg - np.repeat(cg[np.cumsum(nrx) - nrx] - gap[np.cumsum(nrx) - nrx], nrx)
        rs = start[ep] + k * supply[ep] + cg
        keep = rs <= pe[ep]
        ep, k, rs = ep[keep], k[keep], rs[keep]
        re = np.minimum(rs + supply[ep] - 1, pe[ep])
        course_end = np.full(len(p), -1, dtype=np.int64)
        np.maximum.at(course_end, ep, re)
        courses = {"p": p, "drug": drug, "start": start, "end": course_end}
        rows = {"p": p[ep], "drug": drug[ep], "start": rs, "end": re, "supply": supply[ep],
                "first": (k == 0) & at_visit[ep]}
        return courses, rows

    # ---- acute events ------------------------------------------------------------------------
    def segments(self) -> None:
        """Observed time cut into segments on which every acute hazard is constant: at calendar-year
        boundaries (age is taken on 1 January), on every recorded chronic diagnosis, and at the first
        day of each planted-exposure course and the day after it ends. (person, start, end) inclusive."""
        allp = np.arange(self.n, dtype=np.int64)
        p2 = allp[self.has2]
        pp = np.concatenate([allp, p2])
        a = np.concatenate([self.s1, self.s2[p2]])
        b = np.concatenate([self.e1, self.e2[p2]])
        idx, ys, _ = _split_years(pp, a, b)
        bp = [pp[idx]]
        bd = [ys]
        for k in P.CHRONIC_KEYS:
            r = self.rec[k]
            w = np.flatnonzero(r < INF)
            bp.append(w)
            bd.append(r[w])
        c = self.courses
        w = np.flatnonzero(np.isin(c["drug"], self.planted_drugs))
        bp += [c["p"][w], c["p"][w]]
        bd += [c["start"][w], c["end"][w] + 1]
        bp_p, bp_d = np.concatenate(bp), np.concatenate(bd)
        pe = self.period_end(bp_p, bp_d)
        ok = pe >= 0  # breakpoints outside observation cut nothing
        key = _sorted_unique((bp_p[ok] << 17) | (bp_d[ok] - DAY_BASE))
        sp = key >> 17
        ss = (key & ((1 << 17) - 1)) + DAY_BASE
        se = self.period_end(sp, ss)
        nxt = np.empty_like(ss)
        nxt[:-1] = ss[1:] - 1
        same = np.zeros(len(sp), dtype=bool)
        same[:-1] = (sp[1:] == sp[:-1]) & (ss[1:] <= se[:-1])
        self.seg_p, self.seg_s, self.seg_e = sp, ss, np.where(same, nxt, se)

    def acute_rates(self, p: np.ndarray, at: np.ndarray) -> list[np.ndarray]:
        """Events per person-year on day `at` without exposure, per acute outcome (the exact formula
        in truth.json): age on 1 January of the day's year; conditions recorded on or before the day."""
        age10 = (self.age_at(p, JAN1[year_of(at) - Y0]) - 60) / 10
        cache: dict[str, np.ndarray] = {}

        def x(k: str) -> np.ndarray:
            if k not in cache:
                cache[k] = self.x[k][p] if k in self.x else self.has(k, p, at)
            return cache[k]

        out = []
        for a in P.ACUTE:
            lp = a.log_rate + a.age * age10
            for k, v in a.coef.items():
                lp = lp + v * x(k)
            out.append(np.exp(lp) * self.profile.acute_rate_multiplier)
        return out

    def exposure_hr(self, key: str, p: np.ndarray, day: np.ndarray) -> np.ndarray:
        """The planted hazard ratio in force on `day` (1 outside the planted courses)."""
        hr_of = np.ones(len(DRUG))
        if key == "gi_bleeding":
            for name, hr in P.NSAID_GI_HR.items():
                hr_of[DRUG[name]] = hr
        elif key == "heart_failure_admission":
            for name in P.SGLT2S:
                hr_of[DRUG[name]] = P.SGLT2_HF_HR
        else:
            return np.ones(len(p))
        c = self.courses
        w = np.flatnonzero(hr_of[c["drug"]] != 1.0)
        if len(w) == 0:
            return np.ones(len(p))
        j = _in_intervals(p, day, c["p"][w], c["start"][w], c["end"][w])
        return np.where(j >= 0, hr_of[c["drug"][w][np.maximum(j, 0)]], 1.0)

    def poisson_multi(self, p, s, e, rates: list[np.ndarray]):
        """Several independent Poisson processes on the same segments: one count per segment and
        stream from a single draw, then the events of every (segment, stream) cell, uniform in days."""
        k = len(rates)
        length = (e - s + 1) / YEAR
        lam = np.empty((len(p), k))
        for j, r in enumerate(rates):
            lam[:, j] = r * length
        counts = self.rng.poisson(lam).ravel()
        # Most cells have no event: repeat only the others (the same cells, in the same order).
        hit = np.flatnonzero(counts)
        cell = np.repeat(hit, counts[hit])
        idx = cell // k
        d = s[idx] + np.floor(self.rng.random(len(idx)) * (e[idx] - s[idx] + 1)).astype(np.int64)
        return p[idx], d, cell - idx * k

    def acute(self) -> None:
        rng = self.rng
        self.segments()
        # Each segment has constant covariates and exposure, so the hazard there is constant and the
        # events a Poisson process with rate = base rate x planted hazard ratio.
        sp, ss = self.seg_p, self.seg_s
        rates = [r * self.exposure_hr(a.key, sp, ss) for a, r in zip(P.ACUTE, self.acute_rates(sp, ss), strict=True)]
        p, d, k = self.poisson_multi(sp, ss, self.seg_e, rates)
        # Deaths within 30 days of a fatal event (inside the same period, so the period ends there).
        cf = np.array([a.case_fatality for a in P.ACUTE])
        cfa = np.array([a.case_fatality_age for a in P.ACUTE])
        with np.errstate(divide="ignore"):
            base = np.log(cf / (1 - cf))
        prob = np.where(cf[k] > 0, _sigmoid(base[k] + cfa[k] * (self.age_at(p, d) - 60) / 10), 0.0)
        fatal = rng.random(len(p)) < prob
        pe = self.period_end(p, d)
        cand = d + np.floor(rng.random(len(p)) * (np.minimum(30, pe - d) + 1)).astype(np.int64)
        new = np.full(self.n, INF, dtype=np.int64)
        np.minimum.at(new, p[fatal], cand[fatal])
        cause_new = np.full(self.n, -1, dtype=np.int64)
        # The cause is the fatal event that gave the earliest death.
        fp, fc, fk = p[fatal], cand[fatal], k[fatal]
        first = fc == new[fp]
        cause_new[fp[first]] = len(P.CHRONIC) + fk[first]
        upd = new < self.death
        in1 = upd & (new <= self.e1)
        self.e1 = np.where(in1, new, self.e1)
        self.has2 = self.has2 & ~in1
        self.e2 = np.where(upd & ~in1, new, self.e2)
        self.death = np.where(upd, new, self.death)
        self.cause = np.where(upd, cause_new, self.cause)
        keep = self.period_end(p, d) >= 0
        self.ev_p, self.ev_d, self.ev_k = p[keep], d[keep], k[keep]

    # ---- visits, measurements, rows ----------------------------------------------------------
    def background(self) -> None:
        """Consultations not tied to a modelled event, and chronic-disease reviews with measurements."""
        p, s, e = self.seg_p, self.seg_s, self.seg_e
        age = self.age_at(p, s)
        ncond = np.zeros(len(p))
        for k in P.CHRONIC_KEYS:
            ncond += self.has(k, p, s)
        female = ~self.male[p]
        chronic_care = np.zeros(len(p), dtype=bool)
        for k in ("type2_diabetes", "hypertension", "ckd", "heart_failure", "atrial_fibrillation", "copd"):
            chronic_care |= self.has(k, p, s)
        rates = [
            0.8 + 0.03 * np.maximum(age - 40, 0) + 0.5 * ncond + 0.4 * female,  # GP consultations
            0.1 + 0.01 * np.maximum(age - 40, 0) + 0.1 * ncond,  # outpatient appointments
            np.full(len(p), 0.2),  # A&E attendances
            np.full(len(p), 0.1),  # respiratory infections treated with amoxicillin at the GP
            # chronic-disease reviews and health checks, where measurements are taken
            np.where(age >= 18, 0.12 + 0.2 * (age >= 40) + 0.9 * chronic_care
                     + 1.0 * self.has("type2_diabetes", p, s), 0.0),
        ]
        vp, vd, vk = self.poisson_multi(p, s, e, rates)
        sel = vk <= 1
        self.req.add(vp[sel], vd[sel], vk[sel])  # GP=0, OUTPATIENT=1
        sel = vk == 2
        self.req.add(vp[sel], vd[sel], EMERGENCY)
        sel = vk == 3
        self.amox.append((vp[sel], vd[sel], self.req.add(vp[sel], vd[sel], GP)))
        sel = vk == 4
        rp, rd = vp[sel], vd[sel]
        rreq = self.req.add(rp, rd, GP)
        # Registration checks also measure BP and BMI for adults.
        allp = np.arange(self.n, dtype=np.int64)
        p2 = allp[self.has2]
        regp = np.concatenate([allp, p2])
        regd = np.concatenate([self.r1, self.r2[p2]])
        regq = self.req.add(regp, regd, GP)
        adult = self.age_at(regp, regd) >= 18
        self.reviews = (np.concatenate([rp, regp[adult]]), np.concatenate([rd, regd[adult]]),
                        np.concatenate([rreq, regq[adult]]),
                        np.concatenate([np.zeros(len(rp), bool), np.ones(int(adult.sum()), bool)]))

    def measurements(self) -> dict[str, np.ndarray]:
        rng = self.rng
        p, d, q, reg = self.reviews
        ok = self.period_end(p, d) >= 0
        p, d, q, reg = p[ok], d[ok], q[ok], reg[ok]
        age = self.age_at(p, d)
        dm = self.has("type2_diabetes", p, d)
        htn = self.has("hypertension", p, d)
        ckd = self.has("ckd", p, d)
        out_p, out_d, out_q, out_k, out_v = [], [], [], [], []

        def emit(mask, key, values, decimals):
            out_p.append(p[mask])
            out_d.append(d[mask])
            out_q.append(q[mask])
            out_k.append(np.full(int(mask.sum()), MEAS[key], dtype=np.int64))
            out_v.append(np.round(values[mask], decimals))

        m = len(p)
        bmi = self.bmi[p] + rng.normal(0, 0.8, m)
        sbp = np.clip(116 + 0.45 * (age - 40) + 14 * htn + 0.8 * (self.bmi[p] - 27) + rng.normal(0, 12, m), 85, 230)
        dbp = np.clip(0.42 * sbp + 22 + rng.normal(0, 6, m), 45, 130)
        allm = np.ones(m, dtype=bool)
        emit(allm, "systolic_bp", sbp, 0)
        emit(allm, "diastolic_bp", dbp, 0)
        emit(reg | (rng.random(m) < 0.4), "bmi", bmi, 1)
        # HbA1c: diabetic control around 58 mmol/mol; normal 30-41; pre-diabetic 42-47 in the 2 years before.
        pre = (self.rec["type2_diabetes"][p] - d > 0) & (self.rec["type2_diabetes"][p] - d < 2 * YEAR)
        hba1c = np.where(dm, np.clip(rng.normal(58, 12, m), 40, 140),
                         np.where(pre, rng.uniform(42, 48, m),
                                  np.clip(36 + 0.05 * (age - 40) + 0.3 * (self.bmi[p] - 27) + rng.normal(0, 2.5, m),
                                          25, 41)))
        emit((dm & (rng.random(m) < 0.9)) | (~dm & (age >= 40) & (rng.random(m) < 0.2)), "hba1c", hba1c, 0)
        # eGFR falls about 0.9/year after 30; CKD stage 3-5 is below 60.
        egfr = np.where(ckd, np.clip(rng.normal(45, 10, m), 6, 59),
                        np.clip(108 - 0.9 * np.maximum(age - 30, 0) - 4 * dm + rng.normal(0, 8, m), 60, 140))
        creat = np.clip(80 * (90 / egfr) ** (1 / 1.2) * np.where(self.male[p], 1.15, 0.9) + rng.normal(0, 4, m), 30, 900)
        renal = ((dm | htn | ckd | (age >= 65)) & (rng.random(m) < 0.8)) | (rng.random(m) < 0.15)
        emit(renal, "egfr", egfr, 0)
        emit(renal, "creatinine", creat, 0)
        chol = np.clip(5.1 + 0.01 * (age - 40) - 0.7 * dm + rng.normal(0, 0.9, m), 2.0, 11.0)
        emit(rng.random(m) < 0.35, "total_cholesterol", chol, 1)
        return {"p": np.concatenate(out_p), "day": np.concatenate(out_d), "req": np.concatenate(out_q),
                "key": np.concatenate(out_k), "value": np.concatenate(out_v)}

    def run(self) -> ChunkResult:
        rng = self.rng
        self.persons()
        self.chronic_onsets()
        self.periods_and_deaths()
        self.recorded()
        self.drugs()
        courses, rows = self.expand(*self.episodes)
        self.courses = courses
        self.acute()
        from mercia.synth.marginal import chunk_counts

        marginal = chunk_counts(self)  # draws nothing
        nc = self.negative_controls()
        self.amox: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.background()

        # Conditions: chronic diagnoses (at a GP or outpatient visit) ...
        cp, cd, ck, cq = [], [], [], []
        allp = np.arange(self.n, dtype=np.int64)
        for i, ch in enumerate(P.CHRONIC):
            rec = self.rec[ch.key]
            p = allp[rec < INF]
            d = rec[p]
            ok = self.period_end(p, d) >= 0
            p, d = p[ok], d[ok]
            cp.append(p)
            cd.append(d)
            ck.append(np.full(len(p), i, dtype=np.int64))
            cq.append(self.req.add(p, d, OUTPATIENT if ch.visit == "outpatient" else GP))
        # ... and acute events: hospital ones through A&E to an admission; pneumonia in hospital for
        # the old, else at the GP with amoxicillin; UTI at the GP with amoxicillin.
        p, d, k = self.ev_p, self.ev_d, self.ev_k
        keys = np.array([a.key for a in P.ACUTE])
        setting = np.array([a.setting for a in P.ACUTE])[k]
        age = self.age_at(p, d)
        hosp = (setting == "inpatient") | ((setting == "mixed") & (rng.random(len(p)) < _sigmoid(-1.0 + 0.5 * (age - 60) / 10)))
        los_mean = np.array([LENGTH_OF_STAY.get(str(x), 3) for x in keys], dtype=float)[k]
        los = 1 + rng.poisson(np.maximum(los_mean - 1, 0))
        pe = self.period_end(p, d)
        los = np.minimum(los, pe - d)
        hp, hd = p[hosp], d[hosp]
        self.req.add(hp, hd, EMERGENCY)
        q = np.empty(len(p), dtype=np.int64)
        q[hosp] = self.req.add(hp, hd, INPATIENT, los[hosp])
        q[~hosp] = self.req.add(p[~hosp], d[~hosp], GP)
        cp.append(p)
        cd.append(d)
        # Acute outcomes have their own condition codes (an HF admission's is heart_failure's concept).
        ck.append(np.array([ACUTE_COND[x] for x in keys], dtype=np.int64)[k])
        cq.append(q)
        gpinf = ~hosp & np.isin(k, [i for i, a in enumerate(P.ACUTE) if a.key in ("pneumonia", "urinary_tract_infection")])
        self.amox.append((p[gpinf], d[gpinf], q[gpinf]))
        cond = {"p": np.concatenate(cp), "day": np.concatenate(cd), "code": np.concatenate(ck), "req": np.concatenate(cq)}

        # Amoxicillin courses (7 days) at their GP visits; first prescriptions of courses at a GP visit.
        ap = np.concatenate([a[0] for a in self.amox])
        ad = np.concatenate([a[1] for a in self.amox])
        aq = np.concatenate([a[2] for a in self.amox])
        rows_q = np.full(len(rows["p"]), -1, dtype=np.int64)
        rows_q[rows["first"]] = self.req.add(rows["p"][rows["first"]], rows["start"][rows["first"]], GP)
        drug = {
            "p": np.concatenate([rows["p"], ap]),
            "drug": np.concatenate([rows["drug"], np.full(len(ap), DRUG["amoxicillin"], dtype=np.int64)]),
            "start": np.concatenate([rows["start"], ad]),
            "end": np.concatenate([rows["end"], np.minimum(ad + 6, self.period_end(ap, ad))]),
            "supply": np.concatenate([rows["supply"], np.full(len(ap), 7, dtype=np.int64)]),
            "req": np.concatenate([rows_q, aq]),
        }
        meas = self.measurements()
        res = self.finish(cond, drug, meas)
        res.marginal = marginal
        if nc is not None:
            res.tables["negative_control_condition"] = nc
        return res

    def negative_controls(self) -> dict[str, np.ndarray] | None:
        """Negative-control outcome events, from their own random stream (None when off). Drawn after
        acute() (deaths known), before anything else reads the chunk's stream, and touching nothing of
        the chunk: the other tables are those of the same seed without them."""
        n_nc = self.profile.negative_control_outcomes
        if n_nc <= 0:
            return None
        if self.nc_rng is None:
            raise ValueError("negative-control outcomes need their own random stream (nc_rng)")
        from mercia.synth.negative_controls import NC_CONCEPTS, simulate_negative_controls

        p, d, k = simulate_negative_controls(self, n_nc, self.nc_rng)
        counts = np.bincount(k, minlength=n_nc)
        for i in range(n_nc):
            self.stats[f"negative_control.{NC_CONCEPTS[i][0]}.events"] = float(counts[i])
        return {"p": p, "day": d, "code": k}

    def finish(self, cond, drug, meas) -> ChunkResult:
        """Drop what fell after a death, dedupe visits, and lay out the tables (local ids).

        Every record was generated inside an observation period; since then periods can only have
        been cut short by a death from an acute event, so 'still observed' is 'not after death'."""
        req = self.req
        rp, rd = np.concatenate(req.p), np.concatenate(req.day)
        rk, rl = np.concatenate(req.kind), np.concatenate(req.los)
        rvalid = rd <= self.death[rp]
        key = ((rp << 17) | (rd - DAY_BASE)) << 2 | rk
        key[~rvalid] = -1
        uniq, inv = _unique_inverse(key)
        # A request dropped after death falls into the -1 bucket, which is not a visit.
        shift = 1 if (len(uniq) and uniq[0] == -1) else 0
        vis_of_req = inv - shift
        u = uniq[shift:]
        nv = len(u)
        vkind = u & 3
        vday = ((u >> 2) & ((1 << 17) - 1)) + DAY_BASE
        vp = u >> 19
        vlos = np.zeros(nv, dtype=np.int64)
        ip = rvalid & (rl > 0)
        np.maximum.at(vlos, vis_of_req[ip], rl[ip])
        vend = vday + vlos  # lengths of stay were clipped to the period (and death) when drawn

        def keep(tab: dict[str, np.ndarray], day: np.ndarray) -> dict[str, np.ndarray]:
            ok = day <= self.death[tab["p"]]
            if ok.all():
                return tab
            w = np.flatnonzero(ok)
            return {k: v[w] for k, v in tab.items()}

        def link(q: np.ndarray) -> np.ndarray:
            return np.where(q >= 0, vis_of_req[np.maximum(q, 0)], -1)

        cond = keep(cond, cond["day"])
        cond["visit"] = link(cond.pop("req"))
        drug = keep(drug, drug["start"])
        drug["end"] = np.minimum(drug["end"], self.death[drug["p"]])
        drug["visit"] = link(drug.pop("req"))
        meas = keep(meas, meas["day"])
        meas["visit"] = link(meas.pop("req"))

        allp = np.arange(self.n, dtype=np.int64)
        p2 = allp[self.has2]
        obs = {"p": np.concatenate([allp, p2]), "start": np.concatenate([self.s1, self.s2[p2]]),
               "end": np.concatenate([self.e1, self.e2[p2]])}
        o = np.lexsort((obs["start"], obs["p"]))
        obs = {k: v[o] for k, v in obs.items()}
        dead = allp[self.death < INF]
        death = {"p": dead, "day": self.death[dead], "cause": self.cause[dead]}
        person = {"birth": self.birth, "male": self.male, "race": self.race}
        visit = {"p": vp, "start": vday, "end": vend, "kind": vkind}
        self.summarise(cond, drug)
        return ChunkResult(
            tables={"person": person, "observation_period": obs, "visit_occurrence": visit,
                    "condition_occurrence": cond, "drug_exposure": drug, "measurement": meas, "death": death},
            stats=self.stats,
        )

    # ---- realised numbers for truth.json --------------------------------------------------------
    def summarise(self, cond, drug) -> None:
        """Crude exposed person-time and events, as the data show them (courses clipped at death)."""
        s = self.stats
        c = self.courses
        end = np.minimum(c["end"], np.maximum(self.period_end(c["p"], c["start"]), -1))
        live = end >= c["start"]
        gi = cond["code"] == ACUTE_COND["gi_bleeding"]
        hf = cond["code"] == ACUTE_COND["heart_failure_admission"]
        for names, mask_ev, tag in ((P.NSAIDS, gi, "gi_bleeding"),
                                    (("gliclazide", *P.SGLT2S), hf, "heart_failure_admission")):
            for name in names:
                sel = live & (c["drug"] == DRUG[name])
                cp, cs, ce = c["p"][sel], c["start"][sel], end[sel]
                o = np.lexsort((cs, cp))
                inside = _in_intervals(cond["p"][mask_ev], cond["day"][mask_ev], cp[o], cs[o], ce[o]) >= 0
                s[f"{name}.courses"] = float(len(cp))
                s[f"{name}.persons"] = float(len(np.unique(cp)))
                s[f"{name}.exposed_days"] = float((ce - cs + 1).sum())
                s[f"{name}.{tag}_events_exposed"] = float(inside.sum())
        s["persons"] = float(self.n)
        s["deaths"] = float((self.death < INF).sum())
        s["second_periods"] = float(self.has2.sum())


def _in_intervals(ep, ed, ip, is_, ie) -> np.ndarray:
    """For each event (person, day), the index of the interval holding it, else -1.
    Intervals must not overlap within a person."""
    if len(ip) == 0 or len(ep) == 0:
        return np.full(len(ep), -1, dtype=np.int64)
    o = np.lexsort((is_, ip))
    ip, is_, ie = ip[o], is_[o], ie[o]
    ikey = (ip << 17) | (is_ - DAY_BASE)
    ekey = (ep << 17) | (ed - DAY_BASE)
    j = np.searchsorted(ikey, ekey, side="right") - 1
    jj = np.maximum(j, 0)
    hit = (j >= 0) & (ip[jj] == ep) & (ed <= ie[jj])
    return np.where(hit, o[jj], -1)


def simulate_chunk(n: int, rng: np.random.Generator, profile: SiteProfile,
                   nc_rng: np.random.Generator | None = None) -> ChunkResult:
    return Chunk(n, rng, profile, nc_rng).run()
