"""Trial feasibility with a 20-criterion trial: locally on one site, and through a hub and three nodes.

    .venv/bin/python bench/bench_trial_feasibility.py [--persons 1000000] [--local-only]

Targets (issue 15): funnel + what-if + breakdowns for a 20-criterion trial on one 1,000,000-person site
locally in under 1 s; the same end to end through a hub and three such nodes in under 3 s.

Data: bench_cohorts' cached synthetic site of `persons` (bench/out/synth_<persons>.duckdb; generation is
not timed); the three nodes each open a copy of it (a node holds its CDM file's lock).

Local: `local_feasibility` (one compiled pipeline, the mask counts, the grouped read of the eligible,
release under the OpenSAFELY policy), in a fresh process, five times: the first (cold) and the median of
the other four. Hub: `Client.trial_feasibility` across the three nodes (SACRO policy, noise, budget,
attestation, audit), five distinct trials (the age criterion's bound moves, so no answer comes from
the node's ledger), the first and the median of the others. Node privacy budgets are raised for the
benchmark (a researcher gets three distinct trials by default).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
sys.path.insert(0, str(BENCH))

from bench_cohorts import database  # noqa: E402
from harness import machine, measure  # noqa: E402


def _window(days_before: int | str) -> list[str]:
    before = "all days before" if days_before == "all" else f"{days_before} days before"
    return [before, "0 days after"]


def trial(min_age: int = 18) -> dict[str, Any]:
    """New metformin users with type 2 diabetes: 20 criteria (ages, measurements with ranges and units,
    drugs and conditions in look-back windows, exclusions)."""
    def need(kind: str, concept: str, days: int | str, **extra: Any) -> dict[str, Any]:
        return {"require": {kind: concept, "between": _window(days), **extra}}

    def no(kind: str, concept: str, days: int | str) -> dict[str, Any]:
        return {"exclude": {kind: concept, "between": _window(days)}}

    rules = [
        ("aged at least the minimum", {"require": {"age": {"min": min_age}}}),
        ("aged 80 or under", {"require": {"age": {"max": 80}}}),
        ("HbA1c 48-97 mmol/mol before index",
         need("measurement", "hba1c", "all", value={"min": 48, "max": 97}, unit="mmol_per_mol")),
        ("eGFR >= 30 before index", need("measurement", "egfr", "all", value={"min": 30}, unit="ml_min_173m2")),
        ("BMI 25-45 before index", need("measurement", "bmi", "all", value={"min": 25, "max": 45}, unit="kg_m2")),
        ("systolic BP < 180 before index", need("measurement", "sbp", "all", value={"max": 179}, unit="mmhg")),
        ("type 2 diabetes on or before index", need("condition", "t2d", "all")),
        ("hypertension on or before index", need("condition", "htn", "all")),
        ("no SGLT2 inhibitor in the prior year", no("drug", "sglt2", 365)),
        ("no warfarin in the prior 90 days", no("drug", "warfarin", 90)),
        ("no heart failure ever", no("condition", "hf", "all")),
        ("no chronic kidney disease ever", no("condition", "ckd", "all")),
        ("no stroke in the prior year", no("condition", "stroke", 365)),
        ("no myocardial infarction in the prior year", no("condition", "mi", 365)),
        ("no atrial fibrillation ever", no("condition", "af", "all")),
        ("no cancer in the prior 5 years", no("condition", "cancer", 1825)),
        ("no GI bleeding in the prior year", no("condition", "gi_bleed", 365)),
        ("no COPD ever", no("condition", "copd", "all")),
        ("no hip fracture in the prior year", no("condition", "hip_fracture", 365)),
        ("no pneumonia in the prior 90 days", no("condition", "pneumonia", 90)),
    ]
    concepts = {
        "t2d": {"name": "Type 2 diabetes", "conditions": ["type2_diabetes"], "descendants": True},
        "htn": {"name": "Hypertension", "conditions": ["hypertension"], "descendants": True},
        "hf": {"name": "Heart failure", "conditions": ["heart_failure"], "descendants": True},
        "ckd": {"name": "CKD", "conditions": ["ckd"], "descendants": True},
        "stroke": {"name": "Stroke", "conditions": ["stroke"], "descendants": True},
        "mi": {"name": "MI", "conditions": ["myocardial_infarction"], "descendants": True},
        "af": {"name": "AF", "conditions": ["atrial_fibrillation"], "descendants": True},
        "cancer": {"name": "Cancer", "conditions": ["breast_cancer", "prostate_cancer", "lung_cancer",
                                                    "colorectal_cancer"], "descendants": True},
        "gi_bleed": {"name": "GI bleeding", "conditions": ["gi_bleeding"], "descendants": True},
        "copd": {"name": "COPD", "conditions": ["copd"], "descendants": True},
        "hip_fracture": {"name": "Hip fracture", "conditions": ["hip_fracture"], "descendants": True},
        "pneumonia": {"name": "Pneumonia", "conditions": ["pneumonia"], "descendants": True},
        "metformin": {"name": "Metformin", "ingredients": ["metformin"], "descendants": True},
        "sglt2": {"name": "SGLT2 inhibitors", "ingredients": ["empagliflozin", "dapagliflozin"], "descendants": True},
        "warfarin": {"name": "Warfarin", "ingredients": ["warfarin"], "descendants": True},
        "hba1c": {"name": "HbA1c", "measurements": ["hba1c"]},
        "egfr": {"name": "eGFR", "measurements": ["egfr"]},
        "bmi": {"name": "BMI", "measurements": ["bmi"]},
        "sbp": {"name": "Systolic BP", "measurements": ["systolic_bp"]},
    }
    return {"name": "New metformin users with T2D (20 criteria)", "concepts": concepts,
            "entry": [{"drug": "metformin", "first": True}], "observation": {"prior_days": 365},
            "inclusion_rules": [{"name": n, **r} for n, r in rules]}


def local(db: str, runs: int) -> dict[str, Any]:
    from mercia.cdm import Cdm
    from mercia.cohorts.dsl import from_dict
    from mercia.study.package import policy_from_name
    from mercia.trials.feasibility import local_feasibility

    definition = from_dict(trial())
    times, answer = [], {}
    with Cdm.open(db, read_only=True) as cdm:
        for _ in range(runs):
            t0 = time.perf_counter()
            answer = local_feasibility(cdm, definition, policy_from_name("opensafely"), trial="bench")
            times.append(time.perf_counter() - t0)
    return {"times": times, "eligible": answer["eligible"], "initial": answer["initial"],
            "criteria": len(answer["funnel"])}


def through_hub(db: Path, persons: int, runs: int) -> dict[str, Any]:
    import yaml

    from mercia.cohorts.dsl import definition_to_dict, from_dict
    from mercia.demo import PROJECT, _configure, _free_port, _running
    from mercia.federation.client import Client

    root = OUT / f"trial_feasibility_{persons}"
    root.mkdir(parents=True, exist_ok=True)
    copies = []
    for i in range(3):
        copy = root / f"site{i + 1}.duckdb"
        if not copy.exists() or copy.stat().st_size != db.stat().st_size:
            shutil.copyfile(db, copy)
        copies.append(copy)
    hub_config, admin_token, nodes = _configure(root / "servers", copies)
    for n in nodes.values():
        data = yaml.safe_load(n["config"].read_text())
        data["feasibility_privacy"] = {"budget": 100}
        n["config"].write_text(yaml.safe_dump(data))
    times: list[float] = []
    answer: dict[str, Any] = {}
    with _running(root / "servers" / "logs") as servers:
        urls = {s: servers.start(f"node-{s}", ["node", "serve", "--config", str(n["config"])], _free_port())
                for s, n in nodes.items()}
        hub_url = servers.start("hub", ["hub", "serve", "--config", str(hub_config)], _free_port())
        servers.wait_ready()
        with Client(hub_url, admin_token) as admin:
            for s, n in nodes.items():
                admin.add_node(s, urls[s], n["hub_token"])
            admin.add_project(PROJECT, sorted(nodes))
            token = admin.add_user("bench", "researcher", [PROJECT])["token"]
        with Client(hub_url, token) as c:
            for i in range(runs):
                d = definition_to_dict(from_dict(trial(min_age=18 + i)))
                t0 = time.perf_counter()
                answer = c.trial_feasibility(d, project=PROJECT, target=500, consent=0.3)
                times.append(time.perf_counter() - t0)
    errors = [a["error"] for a in answer["sites"] if "error" in a]
    return {"times": times, "eligible": answer["eligible"], "sites": len(answer["sites"]), "errors": errors}


def _summary(times: list[float]) -> str:
    rest = times[1:] or times
    return f"first {times[0]:.2f} s, median of the next {len(rest)} {statistics.median(rest):.2f} s"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--local-only", action="store_true")
    args = ap.parse_args()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    db = database(args.persons)
    r = measure(local, str(db), args.runs)["value"]
    print(f"local, one {args.persons:,}-person site, {r['criteria']} criteria: {_summary(r['times'])} "
          f"(initial {r['initial']}, eligible {r['eligible']}); load average {os.getloadavg()[0]:.1f}")
    if args.local_only:
        return
    h = through_hub(db, args.persons, args.runs)
    print(f"hub + 3 nodes of {args.persons:,} persons: {_summary(h['times'])} (eligible total {h['eligible']}, "
          f"{h['sites']} sites, errors {h['errors'] or 'none'}); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
