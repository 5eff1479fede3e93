"""Where does a seed's matched NSAID estimate come from? Its released estimate, split with the generator's
true hazard into what the design makes it (propensity model, matching, time at risk, the truth) and what
the draw of the outcomes makes it.

Usage: .venv/bin/python bench/nsaid_bias_oracle.py OUT.csv --seeds 1 2 3 [--persons 200000]
       [--acute-rate-multiplier 50] [--profile riverside] [--simulations 200]

Per seed (one synthetic site, as `mercia evaluate seeds` makes it):
1. The diclofenac-vs-celecoxib study of `mercia.evaluation.seeds` (the same cohorts, settings and code:
   `cohort_method_populations`), its matched estimate (the one `evaluate seeds` releases) and the crude one.
2. Each person's unexposed GI-bleed hazard on every day of their time at risk, rebuilt from the CDM with
   the generator's formula (params.ACUTE gi_bleeding: age on 1 January, sex, AF and CKD recorded on or
   before the day, times the acute rate multiplier), times the planted HR of their drug vs none.
   - O/E per arm: first events observed against those expected (the cumulative hazard to exit), in all
     persons and in the matched ones: does the data follow the generator's hazard?
   - residual confounding: log of the mean unexposed hazard per day at risk, treated over comparator
     (0 if matching balanced every risk factor of the outcome);
   - the design's expectation: first events drawn again `--simulations` times from the true hazard on
     the matched persons' own windows (censored where theirs end), each refitted with the same stratified
     Cox model. Its mean minus log(marginal HR in the treated) is the bias the design itself has (PS
     model, matching, time at risk, small-sample bias of the estimator, the truth's computation); the
     released estimate minus that mean is the outcome draw's own deviation ("noise").
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

EPOCH = np.datetime64("1970-01-01", "D")
INF = 10**9


def _days(values: pd.Series) -> np.ndarray:
    return (pd.to_datetime(values).to_numpy().astype("datetime64[D]") - EPOCH).astype(np.int64)


def _frames(cdm, t_id: int, c_id: int, cond_ids: list[int]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    from sqlglot import exp, select

    def c(name: str) -> exp.Column:
        return exp.column(name)

    coh = (select(c("subject_id").as_("person_id"), c("cohort_definition_id").as_("cid"),
                  exp.Min(this=c("cohort_start_date")).as_("s"))
           .from_(cdm.table("cohort"))
           .where(c("cohort_definition_id").isin(exp.Literal.number(t_id), exp.Literal.number(c_id)))
           .group_by(c("subject_id"), c("cohort_definition_id")))
    per = select(c("person_id"), c("year_of_birth"), c("month_of_birth"), c("day_of_birth"),
                 c("gender_concept_id")).from_(cdm.table("person"))
    cond = (select(c("person_id"), c("condition_concept_id").as_("k"), exp.Min(this=c("condition_start_date")).as_("d"))
            .from_(cdm.table("condition_occurrence"))
            .where(c("condition_concept_id").isin(*[exp.Literal.number(i) for i in cond_ids]))
            .group_by(c("person_id"), c("condition_concept_id")))
    return tuple(cdm.fetch_arrow(q).to_pandas() for q in (coh, per, cond))  # type: ignore[return-value]


def one_seed(seed: int, persons: int, multiplier: float, profile_name: str, n_sim: int) -> dict[str, float]:
    from mercia.analyses.cohort_method import CohortMethodSettings, cohort_method_populations, fit_cox_strata
    from mercia.cdm import Cdm
    from mercia.cohorts.generate import generate_cohorts
    from mercia.cohorts.yaml_reader import from_dict
    from mercia.evaluation.seeds import STUDIES
    from mercia.synth import DEFAULT_SITES, generate_site
    from mercia.synth import params as P
    from mercia.synth.concepts import CONDITION_KEYS, concept_tables
    from mercia.synth.profiles import with_settings

    t0 = time.perf_counter()
    gi = P.ACUTE_BY_KEY["gi_bleeding"]
    ct = concept_tables()
    cid = {k: int(ct.condition[i]) for i, k in enumerate(CONDITION_KEYS)}
    profile = with_settings({p.name: p for p in DEFAULT_SITES}[profile_name], acute_rate_multiplier=multiplier)
    cdm = Cdm.open(None)
    try:
        truth = generate_site(cdm, persons=persons, seed=seed, profile=profile)
        planted = next(e for e in truth["planted_effects"] if e["id"] == "nsaid_gi_bleeding")
        t_id, c_id, o_id = 11, 12, 13  # as mercia.evaluation.seeds numbers them
        generate_cohorts(cdm, [(i, from_dict(d)) for i, d in zip((t_id, c_id, o_id), STUDIES["nsaid_gi_bleeding"],
                                                                  strict=True)], stats=False)
        exposures = [int(x["ingredient_concept_id"]) for x in planted["exposures"]]
        settings = CohortMethodSettings.model_validate({"covariates": {"excluded_concept_ids": exposures}})
        _, pops = cohort_method_populations(cdm, t_id, c_id, [o_id], settings)
        coh, per, cond = _frames(cdm, t_id, c_id, [cid["atrial_fibrillation"], cid["ckd"]])
    finally:
        cdm.close()
    d = pops[o_id].merge(coh, on="person_id", how="left").merge(per, on="person_id", how="left")
    if not ((d["cid"] == t_id) == (d["treatment"] == 1)).all():
        raise SystemExit("a person's cohort does not match their arm")
    if (d.groupby("person_id").size() > 1).any():
        raise SystemExit("a person is in both arms (the generator gives each one NSAID)")
    birth = _days(pd.to_datetime(pd.DataFrame({"year": d.year_of_birth, "month": d.month_of_birth,
                                               "day": d.day_of_birth})))
    male = (d["gender_concept_id"] == ct.gender["male"]).to_numpy()
    rec = {}
    for k in ("atrial_fibrillation", "ckd"):
        first = d["person_id"].map(cond[cond["k"] == cid[k]].set_index("person_id")["d"])
        rec[k] = np.where(first.notna(), _days(first.fillna("2100-01-01")), INF)
    start = _days(d["s"])
    treated = d["treatment"].to_numpy() == 1
    hr_arm = np.where(treated, P.NSAID_GI_HR["diclofenac"], P.NSAID_GI_HR["celecoxib"])
    # every day of every window (risk window starts at index: days 0 .. days_at_risk - 1)
    n_days = d["days_at_risk"].to_numpy(np.int64)
    idx = np.repeat(np.arange(len(d)), n_days)
    off = np.arange(int(n_days.sum())) - np.repeat(np.cumsum(n_days) - n_days, n_days)
    day = start[idx] + off
    jan1 = (day.astype("datetime64[D]").astype("datetime64[Y]").astype("datetime64[D]") - EPOCH).astype(np.int64)
    lp = (gi.log_rate + gi.age * ((jan1 - birth[idx]) / 365.25 - 60) / 10 + gi.coef["male"] * male[idx]
          + gi.coef["atrial_fibrillation"] * (rec["atrial_fibrillation"][idx] <= day)
          + gi.coef["ckd"] * (rec["ckd"][idx] <= day))
    rate0 = np.exp(lp) * multiplier / 365.25  # unexposed events per day
    to_exit = off < d["time"].to_numpy(np.int64)[idx]
    lam0 = np.bincount(idx, weights=rate0 * to_exit, minlength=len(d))  # unexposed cumulative hazard to exit
    expected = hr_arm * lam0
    matched = d["stratum"].to_numpy() >= 0
    m = d[matched]
    est = fit_cox_strata(m["treatment"].to_numpy(float), m["time"].to_numpy(float), m["event"].to_numpy(float),
                         m["stratum"].to_numpy())
    crude = fit_cox_strata(d["treatment"].to_numpy(float), d["time"].to_numpy(float), d["event"].to_numpy(float))
    marginal = float(planted["contrast"]["marginal_in_treated"]["hazard_ratio"])
    row: dict[str, float] = {"seed": seed, "persons": persons, "profile": profile_name,
                             "marginal_hr": marginal, "match_log_hr": est.log_rr, "match_se": est.se,
                             "crude_log_hr": crude.log_rr, "treated": int(treated.sum()),
                             "comparators": int((~treated).sum()), "treated_matched": int((matched & treated).sum())}
    ev = d["event"].to_numpy()
    days_to_exit = d["time"].to_numpy(float)
    for pop, sel in (("all", np.ones(len(d), bool)), ("matched", matched)):
        for arm, a in (("t", treated), ("c", ~treated)):
            w = sel & a
            row[f"{pop}_{arm}_events"] = int(ev[w].sum())
            row[f"{pop}_{arm}_expected"] = float(expected[w].sum())
            row[f"{pop}_{arm}_lam0"] = float(lam0[w].sum())
            row[f"{pop}_{arm}_days"] = float(days_to_exit[w].sum())
        row[f"{pop}_confounding"] = math.log((row[f"{pop}_t_lam0"] / row[f"{pop}_t_days"])
                                             / (row[f"{pop}_c_lam0"] / row[f"{pop}_c_days"]))
    # the design's expectation: first events drawn from the true hazard on the matched windows
    rows_m = np.flatnonzero(matched)
    pos = np.full(len(d), -1)
    pos[rows_m] = np.arange(len(rows_m))
    keep = matched[idx]
    owner = pos[idx[keep]]
    cum = np.cumsum((rate0 * hr_arm[idx])[keep])
    first_day = np.searchsorted(owner, np.arange(len(rows_m)), side="left")
    end_day = np.searchsorted(owner, np.arange(len(rows_m)), side="right")
    before = np.where(first_day > 0, cum[np.maximum(first_day - 1, 0)], 0.0)
    x = d["treatment"].to_numpy(float)[rows_m]
    strata = d["stratum"].to_numpy()[rows_m]
    window = n_days[rows_m].astype(float)
    rng = np.random.default_rng([seed, 20261208])
    sims, events = [], []
    for _ in range(n_sim):
        j = np.searchsorted(cum, before + rng.exponential(1.0, len(rows_m)), side="left")
        hit = j < end_day
        f = fit_cox_strata(x, np.where(hit, j - first_day + 1, window).astype(float), hit.astype(float), strata)
        if f.converged:
            sims.append(f.log_rr)
        events.append(int(hit.sum()))
    s = np.asarray(sims)
    row |= {"simulations": len(s), "sim_mean": float(s.mean()) if len(s) else math.nan,
            "sim_sd": float(s.std(ddof=1)) if len(s) > 1 else math.nan,
            "sim_events": float(np.mean(events)) if events else math.nan,
            "design_bias": float(s.mean()) - math.log(marginal) if len(s) else math.nan,
            "noise": est.log_rr - float(s.mean()) if len(s) else math.nan,
            "seconds": round(time.perf_counter() - t0, 1)}
    return row


def summarise(df: pd.DataFrame) -> str:
    def ms(v: pd.Series) -> str:
        return f"{v.mean():+.3f} (MC SE {v.std(ddof=1) / math.sqrt(len(v)):.3f})"

    bias = df["match_log_hr"] - np.log(df["marginal_hr"])
    lines = [f"{len(df)} seeds ({', '.join(str(s) for s in df['seed'])})",
             f"matched log HR - log marginal HR:     {ms(bias)}",
             f"  design (simulated mean - truth):    {ms(df['design_bias'])}",
             f"  outcome draw (estimate - sim mean): {ms(df['noise'])}",
             f"residual confounding after matching:  {ms(df['matched_confounding'])} (before: {ms(df['all_confounding'])})",
             f"treated matched: {df['treated_matched'].sum() / df['treated'].sum():.2f}"]
    for pop in ("all", "matched"):
        for arm in ("t", "c"):
            o, e = df[f"{pop}_{arm}_events"].sum(), df[f"{pop}_{arm}_expected"].sum()
            lines.append(f"O/E {pop:7s} {'treated' if arm == 't' else 'comparator':10s}: {o} / {e:.1f} = "
                         f"{o / e:.3f} (z {(o - e) / math.sqrt(e):+.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="CSV, one row per seed (appended to; rows of seeds already there are skipped)")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--persons", type=int, default=200_000)
    ap.add_argument("--acute-rate-multiplier", type=float, default=50.0)
    ap.add_argument("--profile", default="riverside")
    ap.add_argument("--simulations", type=int, default=200)
    ap.add_argument("--summary-only", action="store_true", help="summarise OUT.csv and stop")
    a = ap.parse_args(argv)
    done = pd.read_csv(a.out) if a.out.exists() else pd.DataFrame()
    if not a.summary_only:
        for seed in a.seeds:
            if len(done) and seed in set(done["seed"]):
                continue
            row = one_seed(seed, a.persons, a.acute_rate_multiplier, a.profile, a.simulations)
            print(f"seed {seed}: matched {row['match_log_hr']:+.3f} (SE {row['match_se']:.3f}), "
                  f"simulated mean {row['sim_mean']:+.3f}, truth {math.log(row['marginal_hr']):+.3f}, "
                  f"{row['seconds']} s", flush=True)
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
            done.to_csv(a.out, index=False)
    sel = done[done["seed"].isin(a.seeds)] if len(done) else done
    if len(sel):
        print(summarise(sel))


if __name__ == "__main__":
    sys.exit(main())
