"""A full comparative cohort analysis (covariates, propensity model, matching, balance, outcome model)
on N target and N comparator persons with thousands of covariates.

    .venv/bin/python bench/bench_cohort_method.py [--persons 100000] [--concepts 6000] [--records 40]

The CDM is made here, not by mercia.synth (whose vocabulary has a few dozen concepts): `concepts`
standard concepts (conditions, drug ingredients, procedures; Zipf-distributed use, so a few are common
and most rare) each under one of 200 group concepts in concept_ancestor (roll-up doubles the
covariates of a window), `records` records per person over the 3 years before index, age and sex,
and an outcome whose hazard rises with age and with the 3 commonest concepts, which also make the
target likelier (HR 1.3 planted). Cached as bench/out/cm_<persons>_<concepts>.duckdb (gitignored).

Measured in fresh processes (bench/harness.py): `cohort_method` end to end with its default settings
(the exposures excluded from the covariates), with the time of each of its phases; `build_covariates`
alone; and the named peer on the same CDM. Figures are printed and written to
bench/out/bench_cohort_method_<persons>.json.

The peer (`run_peer`) is the pipeline a data scientist would write by hand with well-known libraries
on rows exported from the CDM (duckdb to pandas): covariates in pandas/scipy.sparse (the same three
windows, concept and group roll-up, demographics); scikit-learn's LogisticRegressionCV (l2, C = the
prior variance, the same grid, 5 folds on the same 20,000-row subsample) and a refit at the chosen C
on every row; 1:1 greedy nearest-neighbour matching on the logit (sklearn NearestNeighbors), caliper
0.2 SD of the logit; SMDs of every covariate in numpy; lifelines' CoxPHFitter, crude and stratified
by matched set. Printed: each phase, the total and peak RSS of both, the ratio Mercia / peer, and a
check that the results are comparable (covariate count, matched pairs, HRs).

OHDSI's reference point: CohortMethod fits the propensity model on at most 250,000 persons per arm
(`maxCohortSizeForFitting`) with Cyclops; FeatureExtraction's default covariates give tens of
thousands of covariates on real data. We know of no published timing of a whole CohortMethod run on
a stated machine to compare against.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
sys.path.insert(0, str(BENCH))

SEED = 20261126
EPOCH = dt.date(2010, 1, 1)
GROUPS = 201  # a multiple of 3: a concept and its group share a domain
FIRST_CONCEPT = 40_000_000  # away from the bundled vocabulary's ids
TARGET_DRUG, COMPARATOR_DRUG = 39_000_001, 39_000_002


def make_cdm(path: Path, persons: int, concepts: int, records: int) -> None:
    import pyarrow as pa

    from mercia.cdm import Cdm

    rng = np.random.default_rng(SEED)
    n = 2 * persons
    pid = np.arange(1, n + 1, dtype=np.int64)
    age = rng.integers(30, 90, n)
    male = rng.random(n) < 0.5
    index = rng.integers(3 * 365 + 10, 10 * 365, n)
    ids = np.arange(FIRST_CONCEPT, FIRST_CONCEPT + concepts, dtype=np.int64)
    domain = np.array(["Condition", "Drug", "Procedure"])[np.arange(concepts) % 3]
    # Records: Zipf-like popularity, dates over the 3 years before index.
    k = n * records
    who = np.repeat(pid, records)
    pick = np.minimum(rng.zipf(1.25, k) - 1, concepts - 1)
    day = np.repeat(index, records) - rng.integers(0, 3 * 365, k)
    # Confounder: a record of one of the 3 commonest concepts raises both treatment and outcome.
    conf = np.bincount(who[pick < 3] - 1, minlength=n) > 0
    lin = -0.3 + 0.9 * conf + 0.02 * (age - 60) + 0.3 * male
    target = rng.random(n) < 1 / (1 + np.exp(-lin))
    follow = rng.integers(30, 720, n)
    rate = 0.0004 * np.exp(0.03 * (age - 60) + 0.8 * conf + np.log(1.3) * target)
    t_out = np.ceil(rng.exponential(1 / rate)).astype(np.int64)

    def date(days: np.ndarray) -> pa.Array:
        return pa.array((np.datetime64(EPOCH) + days.astype("timedelta64[D]")).astype("datetime64[D]"))

    with Cdm.open(path) as cdm:
        cdm.create_tables(["person", "observation_period", "cohort", "condition_occurrence", "drug_exposure",
                           "procedure_occurrence", "measurement", "concept", "concept_ancestor"])
        cdm.insert_arrow("person", pa.table({"person_id": pid, "gender_concept_id": np.where(male, 8507, 8532),
                                             "year_of_birth": 2015 - age, "race_concept_id": np.zeros(n, int),
                                             "ethnicity_concept_id": np.zeros(n, int)}))
        cdm.insert_arrow("observation_period", pa.table({
            "observation_period_id": pid, "person_id": pid, "observation_period_start_date": date(np.zeros(n, int)),
            "observation_period_end_date": date(index + follow), "period_type_concept_id": np.zeros(n, int)}))
        out = t_out <= follow
        cohort_ids = np.r_[np.where(target, 1, 2), np.full(out.sum(), 3)]
        cdm.insert_arrow("cohort", pa.table({
            "cohort_definition_id": cohort_ids, "subject_id": np.r_[pid, pid[out]],
            "cohort_start_date": date(np.r_[index, (index + t_out)[out]]),
            "cohort_end_date": date(np.r_[index + follow, (index + t_out)[out]])}))
        tables = {"Condition": ("condition_occurrence", "condition_occurrence_id"),
                  "Drug": ("drug_exposure", "drug_exposure_id"),
                  "Procedure": ("procedure_occurrence", "procedure_occurrence_id")}
        for dom, (table, key) in tables.items():
            m = domain[pick] == dom
            cols: dict[str, Any] = {key: np.arange(1, m.sum() + 1), "person_id": who[m]}
            if dom == "Condition":
                cols |= {"condition_concept_id": ids[pick[m]], "condition_start_date": date(day[m]),
                         "condition_type_concept_id": np.zeros(m.sum(), int)}
            elif dom == "Drug":
                cols |= {"drug_concept_id": ids[pick[m]], "drug_exposure_start_date": date(day[m]),
                         "drug_exposure_end_date": date(day[m]), "drug_type_concept_id": np.zeros(m.sum(), int)}
            else:
                cols |= {"procedure_concept_id": ids[pick[m]], "procedure_date": date(day[m]),
                         "procedure_type_concept_id": np.zeros(m.sum(), int)}
            cdm.insert_arrow(table, pa.table(cols))
        # The exposures themselves, on the index day (excluded from the covariates by the analysis).
        cdm.insert_arrow("drug_exposure", pa.table({
            "drug_exposure_id": np.arange(10**9, 10**9 + n), "person_id": pid,
            "drug_concept_id": np.where(target, TARGET_DRUG, COMPARATOR_DRUG),
            "drug_exposure_start_date": date(index), "drug_exposure_end_date": date(index + follow),
            "drug_type_concept_id": np.zeros(n, int)}))
        group_ids = np.arange(FIRST_CONCEPT + concepts, FIRST_CONCEPT + concepts + GROUPS, dtype=np.int64)
        group_of = group_ids[np.arange(concepts) % GROUPS]
        all_ids = np.concatenate([ids, group_ids, [TARGET_DRUG, COMPARATOR_DRUG]])
        dom_all = np.concatenate([domain, np.array(["Condition", "Drug", "Procedure"])[np.arange(GROUPS) % 3],
                                  ["Drug", "Drug"]])
        cls = np.where(dom_all == "Drug", "Ingredient", "Clinical Finding")
        cls[concepts:concepts + GROUPS][dom_all[concepts:concepts + GROUPS] == "Drug"] = "ATC 4th"
        vocab = np.where(cls == "ATC 4th", "ATC", "Bench")
        nc = len(all_ids)
        cdm.insert_arrow("concept", pa.table({
            "concept_id": all_ids, "concept_name": [f"concept {i}" for i in all_ids], "domain_id": dom_all,
            "vocabulary_id": vocab, "concept_class_id": cls, "concept_code": all_ids.astype(str),
            "valid_start_date": date(np.zeros(nc, int)), "valid_end_date": date(np.full(nc, 40000))}))
        anc_a = np.r_[all_ids, group_of]
        anc_d = np.r_[all_ids, ids]
        cdm.insert_arrow("concept_ancestor", pa.table({
            "ancestor_concept_id": anc_a, "descendant_concept_id": anc_d,
            "min_levels_of_separation": np.zeros(len(anc_a), int), "max_levels_of_separation": np.zeros(len(anc_a), int)}))


MERCIA_PHASES = {"build_covariates": "covariates", "fit_ps": "propensity", "_adjust": "matching",
                 "balance_before_after": "balance", "_outcome_estimate": "outcome_model"}


def run_cohort_method(path: str) -> dict[str, Any]:
    import time

    import mercia.analyses.cohort_method as cm_module
    from mercia.analyses.cohort_method import CohortMethodSettings, cohort_method
    from mercia.cdm import Cdm
    from mercia.features import CovariateSettings

    # Phase times: the module's own steps wrapped with a timer (in this child process only); the
    # rest of the run (population and outcome SQL, result tables) is "other".
    phases: dict[str, float] = dict.fromkeys(MERCIA_PHASES.values(), 0.0)

    def timed(fn: Any, phase: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[phase] += time.perf_counter() - t0
        return wrapper

    for attr, phase in MERCIA_PHASES.items():
        setattr(cm_module, attr, timed(getattr(cm_module, attr), phase))
    s = CohortMethodSettings(covariates=CovariateSettings(excluded_concept_ids=[TARGET_DRUG, COMPARATOR_DRUG]))
    t0 = time.perf_counter()
    with Cdm.open(path, read_only=True) as cdm:
        res = cohort_method(cdm, 1, 2, [3], s)
    phases["other"] = time.perf_counter() - t0 - sum(phases.values())
    est = res["cm_estimates"].data.set_index("adjustment")
    diag = res["cm_ps_diagnostics"].data.iloc[0]
    att = res["cm_attrition_3"].data
    return {"covariates": int(diag["covariates_offered"]), "covariates_in_ps": int(diag["covariates_in_model"]),
            "auc": float(diag["auc"]), "prior_variance": float(diag["prior_variance"]),
            "matched_pairs": int(att["n_target"].iloc[-1]),
            "crude_hr": float(est.loc["crude", "rr"]), "matched_hr": float(est.loc["match", "rr"]),
            "matched_ci": [float(est.loc["match", "ci_lower"]), float(est.loc["match", "ci_upper"])],
            "max_abs_smd_after": float(est.loc["match", "max_abs_smd_after"]), "notes": res.notes,
            "phases": phases}


def run_covariates(path: str) -> dict[str, Any]:
    from mercia.cdm import Cdm
    from mercia.features import CovariateSettings, build_covariates

    with Cdm.open(path, read_only=True) as cdm:
        cd = build_covariates(cdm, [1, 2], CovariateSettings(excluded_concept_ids=[TARGET_DRUG, COMPARATOR_DRUG]))
    return {"rows": cd.X.shape[0], "covariates": cd.X.shape[1], "nonzeros": int(cd.X.nnz)}


# ------------------------------------------------------------------------------------------ the peer
# What a data scientist would write by hand on rows exported from the same CDM: pandas and
# scipy.sparse covariates (the same windows and roll-up to the group concept), scikit-learn's
# LogisticRegressionCV for the propensity score, nearest-neighbour matching on the logit with the
# same caliper, SMDs in numpy, lifelines' Cox model stratified by matched set. It mirrors Mercia's
# defaults so both do the same work: the prior variance v is sklearn's C (both minimise
# loss + |b|^2 / 2v), cross-validated with the same folds on the same 20,000-row subsample, then
# refitted on every fitting row.

WINDOWS = {0: -100_000, 1: -365, 3: -30}  # FeatureExtraction slot -> first day (all end on index)
PS_VARIANCES = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0]
PS_FOLDS, PS_CV_ROWS, PS_MIN_FRACTION, CALIPER = 5, 20_000, 0.001, 0.2


def _days(s: Any) -> np.ndarray:
    """Dates as days since the epoch (int), for fast differences."""
    import pandas as pd

    return (pd.to_datetime(s).to_numpy().astype("datetime64[D]") - np.datetime64(EPOCH)).astype(np.int64)


def _peer_covariates(con: Any, entries: Any) -> tuple[Any, np.ndarray]:
    """Binary covariates per entry: concept and its ancestors (domain rule as Mercia's roll-up) in
    each window, plus demographics. Returns (csr matrix rows x covariates, covariate ids)."""
    import pandas as pd
    import scipy.sparse as sp

    concept = con.execute("SELECT concept_id, domain_id, concept_class_id, vocabulary_id FROM concept").df()
    anc = con.execute("SELECT ancestor_concept_id AS a, descendant_concept_id AS d FROM concept_ancestor "
                      "WHERE ancestor_concept_id <> descendant_concept_id").df()
    excluded = set(anc.loc[anc["a"].isin([TARGET_DRUG, COMPARATOR_DRUG]), "d"]) | {TARGET_DRUG, COMPARATOR_DRUG}
    keep_rule = {"Condition": concept["domain_id"] == "Condition",
                 "Drug": (concept["concept_class_id"] == "Ingredient") | (concept["vocabulary_id"] == "ATC"),
                 "Procedure": concept["domain_id"] == "Procedure"}
    domains = {"Condition": ("condition_occurrence", "condition_concept_id", "condition_start_date", 210),
               "Drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date", 410),
               "Procedure": ("procedure_occurrence", "procedure_concept_id", "procedure_date", 501)}
    idx = entries[["row", "person_id", "index_day"]]
    parts_row, parts_cov = [], []
    for dom, (table, ccol, dcol, base) in domains.items():
        rec = con.execute(f"SELECT person_id, {ccol} AS concept_id, {dcol} AS day FROM {table} "
                          "WHERE person_id IN (SELECT subject_id FROM results.cohort WHERE cohort_definition_id IN (1, 2))"
                          ).df()
        rec = rec[(rec["concept_id"] != 0) & ~rec["concept_id"].isin(excluded)]
        rec["day"] = _days(rec["day"])
        rec = rec.merge(idx, on="person_id")
        rec["off"] = rec["day"] - rec["index_day"]
        rec = rec[rec["off"] <= 0]
        allowed = set(concept.loc[keep_rule[dom], "concept_id"]) - excluded
        for slot, lo in WINDOWS.items():
            hit = rec.loc[rec["off"] >= lo, ["row", "concept_id"]].drop_duplicates()
            up = hit.merge(anc, left_on="concept_id", right_on="d")[["row", "a"]].rename(columns={"a": "concept_id"})
            hit = pd.concat([hit, up]).drop_duplicates()
            hit = hit[hit["concept_id"].isin(allowed)]
            parts_row.append(hit["row"].to_numpy())
            parts_cov.append(hit["concept_id"].to_numpy() * 1000 + base + slot)
    rows, cov = np.concatenate(parts_row), np.concatenate(parts_cov)
    vals = np.ones(len(rows))
    # Demographics: sex, age and its 5-year group, index year and month, days of prior observation.
    e = entries
    demo = {8507 * 1000 + 1: (e["gender_concept_id"] == 8507).astype(float),
            2: e["age"].astype(float), 8: e["prior_obs"].astype(float)}
    for col, k in ((e["age"] // 5, 3), (e["index_year"], 6), (e["index_month"], 7)):
        for v in np.unique(col):
            demo[(int(v) + 1) * 1000 + k] = (col == v).astype(float)
    for cid, v in demo.items():
        nz = np.flatnonzero(v.to_numpy())
        rows = np.r_[rows, e["row"].to_numpy()[nz]]
        cov = np.r_[cov, np.full(len(nz), cid)]
        vals = np.r_[vals, v.to_numpy()[nz]]
    ids, col = np.unique(cov, return_inverse=True)
    X = sp.csr_matrix((vals, (rows, col)), shape=(len(entries), len(ids)))
    return X, ids


def _peer_match(logit: np.ndarray, t: np.ndarray, caliper: float) -> np.ndarray:
    """1:1 greedy nearest-neighbour matching without replacement, closest pairs first: each round
    every unmatched target proposes its 5 nearest free comparators (sklearn NearestNeighbors); pairs
    are taken in order of distance while both are free and within the caliper."""
    from sklearn.neighbors import NearestNeighbors

    stratum = np.full(len(t), -1, dtype=np.int64)
    free_t, free_c = np.flatnonzero(t == 1), np.flatnonzero(t == 0)
    next_set = 0
    while len(free_t) and len(free_c):
        nn = NearestNeighbors(n_neighbors=min(5, len(free_c))).fit(logit[free_c, None])
        dist, nb = nn.kneighbors(logit[free_t, None])
        ti = np.repeat(free_t, dist.shape[1])
        ci = free_c[nb.ravel()]
        d = dist.ravel()
        ok = d < caliper
        ti, ci, d = ti[ok], ci[ok], d[ok]
        order = np.argsort(d, kind="stable")
        taken = 0
        for i, c in zip(ti[order].tolist(), ci[order].tolist(), strict=True):
            if stratum[i] == -1 and stratum[c] == -1:
                stratum[i] = stratum[c] = next_set
                next_set += 1
                taken += 1
        if not taken:
            break
        free_t = free_t[stratum[free_t] == -1]
        free_c = free_c[stratum[free_c] == -1]
    return stratum


def _smd(X: Any, t: np.ndarray) -> np.ndarray:
    def mean_var(A: Any) -> tuple[np.ndarray, np.ndarray]:
        m = np.asarray(A.mean(axis=0)).ravel()
        return m, np.asarray(A.multiply(A).mean(axis=0)).ravel() - m**2

    m1, v1 = mean_var(X[t == 1])
    m0, v0 = mean_var(X[t == 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        return (m1 - m0) / np.sqrt((v1 + v0) / 2)


def run_peer(path: str) -> dict[str, Any]:
    import time
    import warnings

    import duckdb
    import pandas as pd
    from lifelines import CoxPHFitter
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import MaxAbsScaler

    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - clock
        clock = now

    con = duckdb.connect(path, read_only=True)
    coh = con.execute("SELECT cohort_definition_id AS cid, subject_id AS person_id, cohort_start_date, "
                      "cohort_end_date FROM results.cohort WHERE cohort_definition_id IN (1, 2, 3)").df()
    person = con.execute("SELECT person_id, gender_concept_id, year_of_birth FROM person").df()
    obs = con.execute("SELECT person_id, observation_period_start_date AS obs_start, "
                      "observation_period_end_date AS obs_end FROM observation_period").df()
    coh["start"], coh["end"] = _days(coh["cohort_start_date"]), _days(coh["cohort_end_date"])
    first = coh[coh["cid"] < 3].sort_values("start").drop_duplicates(["cid", "person_id"])
    e = first.merge(person, on="person_id").merge(obs, on="person_id")
    e["obs_start"], e["obs_end"] = _days(e["obs_start"]), _days(e["obs_end"])
    e = e[(e["start"] >= e["obs_start"]) & (e["start"] <= e["obs_end"])].reset_index(drop=True)
    e["row"] = np.arange(len(e))
    e["index_day"] = e["start"]
    idx_date = pd.to_datetime(e["cohort_start_date"])
    e["index_year"], e["index_month"] = idx_date.dt.year, idx_date.dt.month
    e["age"] = e["index_year"] - e["year_of_birth"]
    e["prior_obs"] = e["start"] - e["obs_start"]
    t = (e["cid"] == 1).to_numpy().astype(int)
    lap("export")
    X, _ = _peer_covariates(con, e)
    con.close()
    lap("covariates")

    # Propensity model: rare covariates (< 0.1% of rows) dropped, scaled by max |value|.
    nnz = np.diff(X.tocsc().indptr)
    Xps = MaxAbsScaler().fit_transform(X[:, nnz >= PS_MIN_FRACTION * X.shape[0]]).tocsr()
    rng = np.random.default_rng(SEED)
    cv_rows = np.sort(rng.choice(len(t), min(PS_CV_ROWS, len(t)), replace=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence chatter at the loosest priors
        cv = LogisticRegressionCV(Cs=PS_VARIANCES, cv=StratifiedKFold(PS_FOLDS, shuffle=True, random_state=1),
                                  penalty="l2", solver="lbfgs", scoring="neg_log_loss", max_iter=1000,
                                  refit=False).fit(Xps[cv_rows], t[cv_rows])
        # As Mercia: the C with the best held-out log likelihood summed over the folds (refit=False
        # would otherwise report the mean of each fold's best C, which is not on the grid).
        best_c = float(cv.Cs_[np.argmax(cv.scores_[1].mean(axis=0))])
        model = LogisticRegression(C=best_c, solver="lbfgs", max_iter=1000).fit(Xps, t)
    ps = model.predict_proba(Xps)[:, 1]
    lap("propensity")

    # Outcome population: the first outcome; none before index; at risk from index to cohort end
    # (cut at the end of observation); event = first outcome in that window.
    out = coh[coh["cid"] == 3].groupby("person_id")["start"].min().rename("o_day")
    d = e[["row", "person_id", "start", "end", "obs_end"]].merge(out, on="person_id", how="left")
    d["risk_end"] = np.minimum(d["end"], d["obs_end"])
    keep = ~(d["o_day"] < d["start"]) & (d["risk_end"] - d["start"] + 1 >= 1)
    d = d[keep.to_numpy()].reset_index(drop=True)
    d["event"] = ((d["o_day"] >= d["start"]) & (d["o_day"] <= d["risk_end"])).astype(int)
    d["time"] = np.where(d["event"] == 1, d["o_day"] - d["start"] + 1, d["risk_end"] - d["start"] + 1)
    rows = d["row"].to_numpy()
    d["treatment"] = t[rows]
    p = np.clip(ps[rows], 1e-10, 1 - 1e-10)
    logit = np.log(p / (1 - p))
    sets = _peer_match(logit, d["treatment"].to_numpy(), CALIPER * float(np.std(logit, ddof=1)))
    d["set"] = sets
    lap("matching")

    kept = sets >= 0
    Xpop = X[rows]
    smd_before = _smd(Xpop, d["treatment"].to_numpy())
    smd_after = _smd(Xpop[np.flatnonzero(kept)], d["treatment"].to_numpy()[kept])
    lap("balance")

    crude = CoxPHFitter().fit(d[["time", "event", "treatment"]], "time", "event")
    # Matched sets without an event add nothing to the stratified partial likelihood (exactly: the
    # estimate, SE and CI are unchanged), and lifelines loops over strata in Python at ~tens of ms
    # each, so they are left out, as anyone waiting on it would; the pairs count above is all sets.
    dm = d.loc[kept, ["time", "event", "treatment", "set"]]
    dm = dm[dm.groupby("set")["event"].transform("max") > 0]
    matched = CoxPHFitter().fit(dm, "time", "event", strata=["set"])
    lap("outcome_model")
    ci = np.exp(matched.confidence_intervals_.loc["treatment"].to_numpy())
    return {"phases": phases, "covariates": int(X.shape[1]), "covariates_in_ps": int(Xps.shape[1]),
            "nonzeros": int(X.nnz), "prior_variance": best_c, "matched_pairs": int(kept.sum() // 2),
            "crude_hr": float(np.exp(crude.params_["treatment"])),
            "matched_hr": float(np.exp(matched.params_["treatment"])), "matched_ci": [float(ci[0]), float(ci[1])],
            "max_abs_smd_before": float(np.nanmax(np.abs(smd_before))),
            "max_abs_smd_after": float(np.nanmax(np.abs(smd_after)))}


def print_comparison(full: dict[str, Any], peer: dict[str, Any]) -> None:
    """Each phase, the total and peak RSS of Mercia and the peer, and the ratio Mercia / peer."""
    m, q = full["value"], peer["value"]
    mp, qp = m["phases"], q["phases"]
    # Mercia's covariates phase includes its own reading of the CDM; the peer's export is separate,
    # so it is compared with the peer's export + covariates.
    rows = [("covariates (peer: export + covariates)", mp["covariates"], qp["export"] + qp["covariates"]),
            ("propensity model", mp["propensity"], qp["propensity"]), ("matching", mp["matching"], qp["matching"]),
            ("balance", mp["balance"], qp["balance"]), ("outcome model", mp["outcome_model"], qp["outcome_model"]),
            ("other (Mercia: population SQL, tables)", mp["other"], 0.0),
            ("total (measured process)", full["seconds"], peer["seconds"]),
            # lifelines' stratified Cox dominates the peer's total; this row shows the rest.
            ("total without the outcome model", full["seconds"] - mp["outcome_model"],
             peer["seconds"] - qp["outcome_model"])]
    print(f"\n{'phase':<42}{'Mercia s':>10}{'peer s':>10}{'ratio':>8}")
    for name, a, b in rows:
        print(f"{name:<42}{a:>10.2f}{b:>10.2f}{(a / b if b else float('nan')):>8.3g}")
    print(f"{'peak RSS MiB':<42}{full['peak_rss_mib']:>10.0f}{peer['peak_rss_mib']:>10.0f}"
          f"{full['peak_rss_mib'] / peer['peak_rss_mib']:>8.2f}")
    print(f"covariates {m['covariates']:,} vs {q['covariates']:,} (in PS {m['covariates_in_ps']:,} vs "
          f"{q['covariates_in_ps']:,}); prior variance {m['prior_variance']} vs {q['prior_variance']}")
    pairs = m["matched_pairs"] / q["matched_pairs"] - 1 if q["matched_pairs"] else float("nan")
    print(f"matched pairs {m['matched_pairs']:,} vs {q['matched_pairs']:,} ({pairs:+.1%}); matched HR "
          f"{m['matched_hr']:.3f} ({m['matched_ci'][0]:.3f}-{m['matched_ci'][1]:.3f}) vs {q['matched_hr']:.3f} "
          f"({q['matched_ci'][0]:.3f}-{q['matched_ci'][1]:.3f}); crude HR {m['crude_hr']:.3f} vs {q['crude_hr']:.3f}; "
          f"max |SMD| after {m['max_abs_smd_after']:.3f} vs {q['max_abs_smd_after']:.3f}")
    # Two greedy matchers on two fits of the same model pick different pairs, so the matched HRs
    # differ by sampling noise of the order of their standard error: "close" is each inside the other's CI.
    inside = (m["matched_ci"][0] <= q["matched_hr"] <= m["matched_ci"][1]
              and q["matched_ci"][0] <= m["matched_hr"] <= q["matched_ci"][1])
    comparable = abs(pairs) <= 0.05 and inside
    print("results comparable (pairs within 5%, each matched HR inside the other's CI): "
          + ("yes" if comparable else "NO"))


def main() -> None:
    from harness import machine, measure

    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=100_000, help="per arm (target and comparator each)")
    ap.add_argument("--concepts", type=int, default=6000)
    ap.add_argument("--records", type=int, default=40, help="records per person")
    a = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    path = OUT / f"cm_{a.persons}_{a.concepts}_{a.records}.duckdb"
    if not path.exists():
        print(f"making the CDM ({2 * a.persons:,} persons) ...", flush=True)
        make_cdm(path, a.persons, a.concepts, a.records)
    cov = measure(run_covariates, str(path))
    full = measure(run_cohort_method, str(path))
    peer = measure(run_peer, str(path))
    report = {"machine": machine(), "persons_per_arm": a.persons, "concepts": a.concepts, "records": a.records,
              "covariates_seconds": round(cov["seconds"], 1), "covariates_peak_rss_mib": round(cov["peak_rss_mib"]),
              **{f"covariates_{k}": v for k, v in cov["value"].items()},
              "cohort_method_seconds": round(full["seconds"], 1),
              "cohort_method_peak_rss_mib": round(full["peak_rss_mib"]), **full["value"],
              "peer_seconds": round(peer["seconds"], 1), "peer_peak_rss_mib": round(peer["peak_rss_mib"]),
              "peer": peer["value"]}
    print(json.dumps(report, indent=1))
    print_comparison(full, peer)
    (OUT / f"bench_cohort_method_{a.persons}.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
