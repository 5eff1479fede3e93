"""A federated study and a feasibility count through a real hub and three real nodes on 127.0.0.1,
against the same study run in-process at each site in turn.

    .venv/bin/python bench/bench_federation.py [--persons 1000000]   # persons per site

Targets (issue 6): the demo study across three 1,000,000-person sites end to end in under 90 s; a
feasibility count across three sites in under 2 s.

Data: three synthetic sites of `persons` each (`mercia.demo.build_federation`, seed 2026, cached in
bench/out/federation_<persons>/; generation is not timed).

Federation: `mercia demo`'s set-up (a hub and one node per site as separate processes, SACRO policy).
Timed from the researcher's submit to the closed study (the custodians approve as soon as the
package reaches them: the approvals are part of the time, a human's delay is not); the pooled results
and report fetched; then the exact federated Cox fit; then feasibility counts across the three sites
(the gliclazide new-user cohort, four times: the first is cold), and one count asked while a study
runs at every node (the node must stay responsive).
Peer: `run_study` of the same package on each CDM in turn, in one fresh process, no servers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
sys.path.insert(0, str(BENCH))

from harness import machine, measure  # noqa: E402

SEED = 2026


def sites(persons: int) -> list[Path]:
    from mercia.demo import build_federation

    return build_federation(OUT / f"federation_{persons}", persons=3 * persons, seed=SEED)


def in_process(databases: list[str], out: str) -> dict[str, float]:
    import shutil

    from mercia.cdm import Cdm
    from mercia.demo import DEMO_POLICY
    from mercia.study import example_package, run_study

    shutil.rmtree(out, ignore_errors=True)
    pkg = example_package()
    times = {}
    for db in databases:
        t0 = time.perf_counter()
        with Cdm.open(db, create=False) as cdm:
            run_study(pkg, cdm, Path(out) / Path(db).stem, site_policy=DEMO_POLICY, site=Path(db).stem)
        times[Path(db).stem] = time.perf_counter() - t0
    return times


def federated(databases: list[Path], persons: int) -> dict[str, Any]:
    import httpx

    from mercia.demo import PROJECT, _approve_as_custodian, _configure, _free_port, _running
    from mercia.federation.client import Client
    from mercia.study import example_package

    root = OUT / f"federation_{persons}" / "servers"
    hub_config, admin_token, nodes = _configure(root, databases)
    pkg = example_package()
    h = pkg.content_hash
    figures: dict[str, Any] = {}
    with _running(root / "logs") as servers:
        t0 = time.perf_counter()
        urls = {s: servers.start(f"node-{s}", ["node", "serve", "--config", str(n["config"])], _free_port())
                for s, n in nodes.items()}
        hub_url = servers.start("hub", ["hub", "serve", "--config", str(hub_config)], _free_port())
        servers.wait_ready()
        figures["servers_start_s"] = time.perf_counter() - t0
        with Client(hub_url, admin_token) as admin:
            for s, n in nodes.items():
                admin.add_node(s, urls[s], n["hub_token"])
            admin.add_project(PROJECT, sorted(nodes))
            token = admin.add_user("researcher", "researcher", [PROJECT])["token"]
        definition = pkg.canonical()["cohorts"]["gliclazide"]["definition"]
        with Client(hub_url, token, timeout=900) as c:
            t0 = time.perf_counter()
            c.submit(pkg, project=PROJECT)
            for s, n in nodes.items():
                _approve_as_custodian(urls[s], n["custodian_token"], h)
            # a count while the study runs at every node
            time.sleep(1.0)
            t1 = time.perf_counter()
            during = c.feasibility(definition, project=PROJECT)
            figures["count_during_study_s"] = time.perf_counter() - t1
            running = {s: httpx.get(f"{urls[s]}/api/v1/studies/{h}", headers={
                "Authorization": f"Bearer {n['custodian_token']}"}).json()["status"] for s, n in nodes.items()}
            figures["status_when_counted"] = running
            closed = c.wait(h, timeout=3600, poll=0.25)
            results = c.results(h)
            c.report(h)
            figures["study_end_to_end_s"] = time.perf_counter() - t0
            figures["collected"] = [s["site"] for s in closed["sites"] if s["status"] == "collected"]
            figures["pooled_terms"] = {t: sorted(v) for t, v in results["pooled"].get("tables", {}).items()}
            t0 = time.perf_counter()
            try:
                fit = c.federated(h, "cox_adjusted", "cox")
                figures["federated_cox_s"] = time.perf_counter() - t0
                figures["federated_cox_rounds"] = fit["iterations"]
                figures["federated_cox_sites"] = fit["sites"]
            except Exception as e:
                figures["federated_cox_error"] = str(e)
            counts = []
            for i in range(4):
                # the count guard allows 5 repeats of one query (the one during the study was the first)
                d = dict(definition, name=f"count {i}")
                t0 = time.perf_counter()
                answer = c.feasibility(d, project=PROJECT)
                counts.append(time.perf_counter() - t0)
            figures["count_s"] = counts
            figures["count_persons"] = answer["persons"]
            figures["count_persons_during_study"] = during["persons"]
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, default=1_000_000, help="persons per site")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    databases = sites(args.persons)
    print(f"sites: 3 x {args.persons:,} persons ready in {time.perf_counter() - t0:.1f} s")
    peer = measure(in_process, [str(d) for d in databases], str(OUT / f"federation_{args.persons}" / "inproc"))
    fed = federated(databases, args.persons)
    print(f"in-process peer (run_study at each site in turn): {peer['seconds']:.1f} s "
          f"({', '.join(f'{k} {v:.1f}' for k, v in peer['value'].items())})")
    print(f"servers start (hub + 3 nodes, in parallel): {fed['servers_start_s']:.1f} s")
    print(f"federated study end to end (submit -> approvals -> runs -> collected -> pooled report): "
          f"{fed['study_end_to_end_s']:.1f} s; sites collected: {fed['collected']}")
    print(f"ratio federated / in-process: {fed['study_end_to_end_s'] / peer['seconds']:.2f} "
          "(the nodes run in parallel; the peer runs the sites in turn)")
    if "federated_cox_s" in fed:
        print(f"exact federated Cox: {fed['federated_cox_s']:.2f} s, {fed['federated_cox_rounds']} Newton rounds, "
              f"sites {fed['federated_cox_sites']}")
    else:
        print(f"exact federated Cox: not fitted ({fed['federated_cox_error']})")
    c = fed["count_s"]
    print(f"feasibility count across 3 sites: first {c[0]:.2f} s, median of the next {len(c) - 1}: "
          f"{statistics.median(c[1:]):.2f} s; persons {fed['count_persons']}")
    print(f"count while the study ran ({fed['status_when_counted']}): {fed['count_during_study_s']:.2f} s, "
          f"persons {fed['count_persons_during_study']}")
    print(f"pooled terms: {fed['pooled_terms']}")


if __name__ == "__main__":
    main()
