"""The marginal hazard ratio in the treated that truth.json states beside each planted (conditional)
one (`mercia.synth.marginal`), checked against an independent reference: counterfactual first events
drawn for the same persons under both exposures with the same random numbers, and a Cox model fitted
to them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mercia.analyses.survival import CoxData, fit_cox
from mercia.cdm import Cdm
from mercia.synth import DEFAULT_SITES, generate_site
from mercia.synth import marginal as M
from mercia.synth.population import Chunk
from mercia.synth.profiles import with_settings
from mercia.synth.site import chunk_rng

RIVERSIDE = next(p for p in DEFAULT_SITES if p.name == "riverside")


@pytest.fixture(scope="module")
def chunks():
    profile = with_settings(RIVERSIDE, acute_rate_multiplier=50)
    out = []
    for i in range(2):
        ch = Chunk(50_000, chunk_rng(5, profile, i), profile)
        ch.run()
        out.append(ch)
    return out


def _simulated_log_hr(fus: list[M.FollowUp], c: M.Contrast, rng: np.random.Generator, reps: int) -> float:
    """Cox log HR of first events drawn in both worlds from one Exp(1) per person and replicate: the
    first day on which the person's cumulative hazard reaches it (censored at the course end)."""
    times, events, world = [], [], []
    for fu in fus:
        start = np.flatnonzero(np.r_[True, fu.person[1:] != fu.person[:-1]])
        end = np.r_[start[1:], len(fu.person)] - 1
        e = rng.exponential(size=(reps, len(start)))  # the same draws in both worlds
        for w, h in ((1, c.hr_target), (0, c.hr_comparator)):
            g = np.cumsum(fu.rate * h)
            g0 = np.where(start > 0, g[np.maximum(start - 1, 0)], 0.0)
            hit = np.searchsorted(g, g0 + e)  # row of the first day the hazard reaches E
            ev = hit <= end
            t = np.where(ev, fu.t[np.minimum(hit, len(g) - 1)], fu.t[end])
            times.append(t.ravel())
            events.append(ev.ravel())
            world.append(np.full(t.size, float(w)))
    x = np.concatenate(world)[:, None]
    fit = fit_cox(CoxData(x, np.concatenate(times).astype(float), np.concatenate(events).astype(float), ["w"]),
                  ties="breslow")
    return float(fit.coef[0])


@pytest.mark.parametrize("effect", ["sglt2_hf_admission", "nsaid_gi_bleeding"])
def test_marginal_hr_matches_counterfactual_draws(chunks, effect):
    c = next(x for x in M.CONTRASTS if x.effect == effect)
    fus = [M.follow_up(ch, c) for ch in chunks]
    counts: dict[str, np.ndarray] = {}
    for fu in fus:
        for k, v in M.expected_counts(fu, c).items():
            counts[k] = counts.get(k, 0) + v
    b = M.solve_log_hr(counts)
    rng = np.random.default_rng(20261207)
    sims = [_simulated_log_hr(fus, c, rng, 40) for _ in range(8)]
    mc_se = float(np.std(sims, ddof=1) / math.sqrt(len(sims)))
    # The generator's exact marginal HR is what the counterfactual draws give, within Monte Carlo error ...
    assert abs(np.mean(sims) - b) < 4 * mc_se + 0.005, (b, sims)
    # ... and it is not the planted conditional HR: it lies nearer 1 (non-collapsibility), by more
    # than the Monte Carlo error.
    cond = math.log(c.conditional_hr)
    assert abs(b) < abs(cond)
    assert abs(np.mean(sims) - cond) > 4 * mc_se, (cond, sims)


def test_truth_states_both_hazard_ratios():
    cdm = Cdm.open(None)
    try:
        truth = generate_site(cdm, persons=4000, seed=3, profile=with_settings(RIVERSIDE, acute_rate_multiplier=60))
    finally:
        cdm.close()
    by_id = {e["id"]: e["contrast"] for e in truth["planted_effects"]}
    assert by_id["sglt2_hf_admission"]["hazard_ratio"] == 0.7  # the planted one, unchanged
    m = by_id["sglt2_hf_admission"]["marginal_in_treated"]
    assert m["conditional_hazard_ratio"] == 0.7 and m["persons"] > 0
    assert 0.7 < m["hazard_ratio"] < 1  # towards 1, not past it
    n = by_id["nsaid_gi_bleeding"]["marginal_in_treated"]
    assert 1 < n["hazard_ratio"] < 1.5
    assert math.log(n["hazard_ratio"]) == pytest.approx(n["log_hazard_ratio"], abs=1e-5)
