"""Attacks on released models (issue 12, item 4), over real HTTP on 127.0.0.1: a hub and a node.

The attacker is a researcher with a valid token whose studies the custodian approves. They know one
woman's sex and the day of her first hypertension diagnosis (unique at the site) and make her the
whole target cohort of a Cox study against men with hypertension; the outcome is heart-failure
admission. Before the defence, the federated fit of that study's model came back with a coefficient
when she had the outcome and as a 400 'did not converge ... |coefficient| 50.1' when not, and the
study's PH-test table published the treatment term that its Cox table withheld. Here:

- the federated Cox, logistic and Poisson fits answer the same refusal (status and body) whether or
  not she had the outcome, and so does the node's own round, before any round leaves it;
- the study's model table and its PH-test table release no estimate at all;
- a supported model (every woman with hypertension) is fitted, and a round answer carries no
  non-events count and only rounded counts;
- a prediction model whose covariates have few outcomes in a level releases no coefficient and no
  performance measure.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from federation_support import FEMALE, PROJECT, Federation, hypertension, hypertension_study, make_site

slow = pytest.mark.slow  # a node and a hub, and a 20,000-person site

PERSONS, SEED = 20_000, 10
ANALYSIS = "cox_one"
TARGET, COMPARATOR, OUTCOME = 11, 12, 13


def _one_person_targets(site: Path, folder: Path) -> dict[bool, str]:
    """Two women whose first hypertension day is theirs alone: one with a heart-failure admission in
    the Cox model's time at risk, one without (what the attacker knows is the day; the test also
    reads the outcome, to show the answer does not depend on it)."""
    from mercia.analyses.survival import cox_data
    from mercia.cdm import Cdm
    from mercia.cohorts.generate import generate_cohorts

    local = folder / "attacker-view.duckdb"
    shutil.copyfile(site, local)
    found: dict[bool, str] = {}
    with Cdm.open(local) as cdm:
        wide = hypertension_study("all women", hypertension(FEMALE))
        generate_cohorts(cdm, [(pkg_id, wide.definitions[k]) for k, pkg_id in wide.cohort_ids.items()])
        cohort = cdm.qualified("cohort")
        days = cdm.fetch_all(
            f"SELECT c.cohort_start_date, MAX(CASE WHEN o.subject_id IS NULL THEN 0 ELSE 1 END) FROM {cohort} c "
            f"LEFT JOIN {cohort} o ON o.cohort_definition_id = {OUTCOME} AND o.subject_id = c.subject_id "
            f"AND o.cohort_start_date >= c.cohort_start_date WHERE c.cohort_definition_id = {TARGET} "
            f"GROUP BY c.cohort_start_date HAVING COUNT(DISTINCT c.subject_id) = 1 ORDER BY 1"
        )
        for wanted in (True, False):
            for k, (day, later_outcome) in enumerate(days):
                if bool(later_outcome) != wanted:
                    continue
                on = day.isoformat()
                one = hypertension_study(f"one woman {on}", hypertension(FEMALE, on))
                generate_cohorts(cdm, [(100 + k, one.definitions["target"])])  # a fresh id for each try
                data = cox_data(cdm, 100 + k, COMPARATOR, OUTCOME, one.analyses[0].settings)
                treated = data.X[:, 0] == 1
                if treated.sum() == 1 and bool(data.event[treated][0]) == wanted:
                    found[wanted] = on
                    break
        if len(found) == 2:
            return found
    raise AssertionError(f"no two one-person targets found ({found})")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("attack_models")
    site = make_site(folder / "site.duckdb", persons=PERSONS, seed=SEED)
    days = _one_person_targets(site, folder)
    packages = {
        "event": hypertension_study("one woman, outcome", hypertension(FEMALE, days[True]), target_id=21),
        "no_event": hypertension_study("one woman, no outcome", hypertension(FEMALE, days[False]), target_id=31),
        "wide": hypertension_study("all women", hypertension(FEMALE), prediction=True),
    }
    with Federation(folder, {"a": site}) as fed, fed.client() as c:
        for pkg in packages.values():
            c.submit(pkg, project=PROJECT)
            fed.approve_all(pkg.content_hash)
        for pkg in packages.values():
            closed = c.wait(pkg.content_hash, timeout=600)
            assert [s["status"] for s in closed["sites"]] == ["collected"], closed
        yield {"fed": fed, "packages": packages, "site": site, "folder": folder,
               "results": {k: c.results(p.content_hash) for k, p in packages.items()}}


def _hub_fit(fed: Federation, content_hash: str, model: str) -> tuple[int, Any]:
    r = httpx.post(f"{fed.hub.url}/api/v1/studies/{content_hash}/federated", timeout=120,
                   headers={"Authorization": f"Bearer {fed.researcher_token}"},
                   json={"analysis": ANALYSIS, "model": model})
    return r.status_code, r.json()


def _node_round(fed: Federation, content_hash: str, model: str, beta: list[float]) -> tuple[int, Any]:
    with fed.nodes["a"].client("hub") as c:
        r = c.post(f"/api/v1/studies/{content_hash}/rounds", json={"analysis": ANALYSIS, "model": model, "beta": beta})
    return r.status_code, r.json()


def _table(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    t = next(t for t in results["sites"]["a"]["tables"] if t["name"] == name)
    return [dict(zip(t["columns"], row, strict=True)) for row in t["rows"]]


@slow
@pytest.mark.parametrize("model", ["cox", "logistic", "poisson"])
def test_federated_fit_refuses_the_same_whether_the_one_person_had_the_outcome(world, model):
    fed, pk = world["fed"], world["packages"]
    answers = {k: _hub_fit(fed, pk[k].content_hash, model) for k in ("event", "no_event")}
    assert answers["event"] == answers["no_event"], answers
    from mercia.disclosure.model_support import MODEL_REFUSED, MODEL_REFUSED_STATUS

    assert answers["event"] == (MODEL_REFUSED_STATUS, {"detail": MODEL_REFUSED})
    # The node refuses the very first round (beta = 0), the same way for both, before anything leaves.
    p = 2 if model == "cox" else 3
    rounds = {k: _node_round(fed, pk[k].content_hash, model, [0.0] * p) for k in ("event", "no_event")}
    assert rounds["event"] == rounds["no_event"] == (MODEL_REFUSED_STATUS, {"detail": MODEL_REFUSED})


@slow
def test_the_study_model_and_its_ph_test_release_no_estimate_of_a_one_person_arm(world):
    # Her arm is one person, below the threshold by its released count: the analysis releases no table at
    # all, neither the model nor its PH test, only the 'below threshold' marker (the model_support rule
    # that withholds a thin model whole is held in-process by test_min_level_count_* and the cohort-method
    # and prediction tests here).
    for k in ("event", "no_event"):
        site = world["results"][k]["sites"]["a"]
        names = {t["name"] for t in site["tables"]}
        assert ANALYSIS not in names and f"{ANALYSIS}_ph_test" not in names, names
        status = {a["name"]: a["status"] for a in site["manifest"]["analyses"]}
        assert status[ANALYSIS] == "below_threshold", status


@slow
def test_a_supported_model_is_fitted_and_its_rounds_carry_no_exact_counts(world):
    fed, wide = world["fed"], world["packages"]["wide"]
    policy_base = 5  # OpenSAFELY rounding at this node
    for model, p in (("cox", 2), ("logistic", 3), ("poisson", 3)):
        status, answer = _node_round(fed, wide.content_hash, model, [0.0] * p)
        assert status == 200, answer
        assert "n_nonevents" not in answer
        assert answer["n"] % policy_base == 0 and answer["n_events"] % policy_base == 0
        status, fit = _hub_fit(fed, wide.content_hash, model)
        assert status == 200 and fit["converged"] and fit["sites"] == ["a"], fit
        assert all(math.isfinite(v) for v in fit["coef"])
        assert fit["n"] % policy_base == 0 and fit["n_events"] % policy_base == 0
        # A coefficient far out (age's log-HR 700 per year) overflows a Cox or Poisson round's exp(): the
        # one refusal, not a 500 with numbers JSON cannot carry. The logistic's sigmoid saturates instead.
        status, answer = _node_round(fed, wide.content_hash, model, [0.0] * (p - 1) + [700.0])
        from mercia.disclosure.model_support import MODEL_REFUSED, MODEL_REFUSED_STATUS

        if model == "logistic":
            assert status == 200 and all(math.isfinite(v) for v in [*answer["score"], answer["loglik"]]), answer
        else:
            assert (status, answer) == (MODEL_REFUSED_STATUS, {"detail": MODEL_REFUSED}), (model, status, answer)
    # the study's own Cox table for the supported model is released too, and the site's report draws it
    model_rows = _table(world["results"]["wide"], ANALYSIS)
    assert all(r["coef"] is not None for r in model_rows)
    report = fed.nodes["a"].state_dir / "results" / wide.content_hash / "report.html"
    assert "hazard ratios (95% CI)" in report.read_text()


@slow
def test_prediction_releases_no_coefficient_resting_on_a_level_with_few_outcomes(world):
    from mercia.analyses.prediction.analysis import covariates_for
    from mercia.analyses.prediction.models import person_split
    from mercia.analyses.prediction.population import build_population
    from mercia.cdm import Cdm
    from mercia.cohorts.generate import generate_cohorts
    from mercia.disclosure import OPENSAFELY

    wide = world["packages"]["wide"]
    settings = next(a for a in wide.analyses if a.type == "prediction").settings
    # The site's own view of the training persons: outcomes and non-outcomes in each level of every
    # covariate held by enough persons to be offered to the model.
    local = world["folder"] / "site-view.duckdb"
    shutil.copyfile(world["site"], local)
    with Cdm.open(local) as cdm:
        generate_cohorts(cdm, [(i, wide.definitions[k]) for k, i in wide.cohort_ids.items()])
        pop, _ = build_population(cdm, TARGET, OUTCOME, settings.population)
        y = pop["outcome"].to_numpy(dtype=np.int64)
        cd = covariates_for(cdm, TARGET, pop, settings.covariates)
    train = person_split(pop["person_id"].to_numpy(), y, settings.test_fraction, settings.n_folds, settings.seed) > 0
    X = (cd.X[train] != 0).toarray()
    yt = y[train] == 1
    fewest = {}
    for j, cid in enumerate(cd.covariate_ids.tolist()):
        cells = [int((X[:, j] == v).sum()) for v in (0, 1)]
        if min(cells) < settings.min_covariate_persons:
            continue
        fewest[str(cid)] = min(int(((X[:, j] == v) & (yt == o)).sum()) for v in (0, 1) for o in (True, False))
    small = {c for c, k in fewest.items() if k <= OPENSAFELY.suppress_up_to}
    assert small  # the attack's premise: covariates offered to the model whose levels hold few outcomes
    tables = {t["name"] for t in world["results"]["wide"]["sites"]["a"]["tables"]}
    coefs = _table(world["results"]["wide"], "pred_coefficients") if "pred_coefficients" in tables else []
    released = {r["covariate_id"] for r in coefs if r["coefficient"] is not None}
    assert not released & small, sorted(released & small)
    if any(c != "-1" and c in small for c in {r["covariate_id"] for r in coefs}):
        # a model using such a covariate releases none of its coefficients and no performance measure
        assert not released
        perf = _table(world["results"]["wide"], "pred_performance")
        assert all(r["auc"] is None and r["brier"] is None and r["calibration_slope"] is None for r in perf)


# ---- the rule itself, in-process -------------------------------------------------------------------


def test_min_level_count_is_the_sparsest_level_of_any_binary_term_or_the_outcome():
    from mercia.disclosure.model_support import min_level_count, support_count

    rng = np.random.default_rng(1)
    n = 400
    age = rng.normal(60, 10, n)  # continuous: no levels
    common = (rng.random(n) < 0.5).astype(float)
    event = (rng.random(n) < 0.3).astype(float)
    assert min_level_count(np.column_stack([age, common]), event) >= 40
    rare = np.zeros(n)
    rare[np.flatnonzero(event == 1)[:3]] = 1  # 3 persons, all with the event: 0 non-events in level 1
    assert min_level_count(np.column_stack([age, common, rare]), event) == 0
    rare[np.flatnonzero(event == 0)[:20]] = 1  # now 23 persons, 3 events, 20 non-events
    assert min_level_count(np.column_stack([age, common, rare]), event) == 3
    # an empty level, or a fit that did not converge, is a count that every policy withholds (1)
    assert support_count(np.column_stack([np.zeros(n)]), event) == 1
    assert support_count(np.column_stack([age, common]), event, converged=False) == 1


def test_a_cohort_method_estimate_on_an_arm_with_few_non_events_is_withheld():
    import pandas as pd

    from mercia.analyses.cohort_method import _estimate_tables
    from mercia.disclosure import OPENSAFELY, DisclosureLog, release

    base = {"outcome_type": "outcome", "comparator_subjects": 300, "comparator_events": 150, "target_days": 900.0,
            "comparator_days": 2100.0, "se_log_rr": 0.2, "p": 0.01}
    est = pd.DataFrame([
        # 196 of 200 treated had the outcome: 4 did not, and the estimate describes those 4
        {**base, "outcome_id": 3, "outcome": "few_non_events", "adjustment": "crude", "target_subjects": 200,
         "target_events": 196, "log_rr": 0.5},
        {**base, "outcome_id": 4, "outcome": "filled", "adjustment": "crude", "target_subjects": 200,
         "target_events": 100, "log_rr": 0.3},
    ])
    table = _estimate_tables(est, "cm", 500)["cm_estimates"]
    out = release(table, OPENSAFELY, log=DisclosureLog()).data.set_index("outcome")
    assert pd.isna(out.loc["few_non_events", "log_rr"]) and pd.isna(out.loc["few_non_events", "se_log_rr"])
    assert out.loc["filled", "log_rr"] == 0.3
