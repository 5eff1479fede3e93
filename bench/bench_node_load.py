"""Load on one node: 200 concurrent feasibility-count requests over HTTP, every answer checked.

    .venv/bin/python bench/bench_node_load.py [--persons 1000000] [--requests 200] [--researchers 10]

Data: one synthetic site of `persons` (`mercia.synth.generate_site`, seed 7, the first default site profile, cached in
bench/out/node_load_<persons>/site.duckdb; generation is not timed).

Queries: 20 distinct cohort definitions (the demo study's three cohorts, each with six observation
windows, plus two with their primary limit switched between First and All; distinct canonical forms,
so 20 distinct questions to the node), asked round-robin by `researchers` researcher tokens until `requests` are
sent. All requests are sent at once (httpx.AsyncClient, one connection per request in flight), so the
node sees `requests` concurrent requests.

Node: `mercia node serve` as its own process, OpenSAFELY policy, feasibility auto-approved for
researchers, count limits raised for the run (per_window 100000, near_identical 100000) and each
researcher's privacy budget raised to the most node.yaml allows (`feasibility_privacy.budget` 100, i.e.
1000 distinct definitions at the default epsilon 0.1 each): the bench is a load test, not a test of the
lockout or of the budget, which tests/test_federation_security.py and tests/test_disclosure_attack.py cover.
Concurrency at the node is bounded by the server, not by the client: the count route hands each count
to a limiter of its own (`COUNT_THREADS` = 4 threads in mercia.federation.node.app), so at most 4 counts
execute at once, each on its own DuckDB cursor over the one open database; the other requests wait,
unstarted and holding only their parsed request, in the event loop, served first come first served.
Authentication and the audit line of each request use other threads, so answers leave as soon as
their count is done. Memory is bounded accordingly: the node's peak RSS is printed.

Check: every answer equals the count computed in-process with the same code, policy and noise before
the node starts (`feasibility_count` on the same CDM, with the node's noise key, written into its state
folder beforehand, and the route's label, `feasibility_label`): persons, entries, the whole released
attrition, the disclosure log and the privacy settings of the answer (mechanism, epsilon, noise sd).
The asker's budget fields depend on the order the concurrent requests arrive in; of them the check is
that each researcher is charged exactly once for each distinct definition they asked.
Peer: the same `requests` counts run in-process, one after another, in one process with the CDM open
(no HTTP, no auth, no audit). Printed: p50/p95/max latency, throughput, and wall-time ratio to the peer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
sys.path.insert(0, str(BENCH))

from harness import machine  # noqa: E402

SEED = 7
PROJECT = "load"


def build_site(persons: int) -> Path:
    from mercia.cdm import Cdm
    from mercia.synth import DEFAULT_SITES, generate_site

    folder = OUT / f"node_load_{persons}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site.duckdb"
    if not path.exists():
        tmp = folder / "site.duckdb.tmp"
        tmp.unlink(missing_ok=True)
        t0 = time.perf_counter()
        with Cdm.open(tmp) as cdm:
            generate_site(cdm, persons=persons, seed=SEED, profile=DEFAULT_SITES[0])
        os.replace(tmp, path)
        print(f"generated {persons:,} persons in {time.perf_counter() - t0:.1f} s (not timed)")
    return path


def definitions() -> list[dict[str, Any]]:
    """20 distinct cohort definitions (distinct canonical forms), from the demo study's cohorts."""
    from mercia.cohorts.canonical import canonical_hash, parse_definition
    from mercia.study import example_package

    cohorts = example_package().canonical()["cohorts"]
    out = []
    for key in sorted(cohorts):
        for prior_days in (0, 180, 365, 730, 1095, 1825):
            d = json.loads(json.dumps(cohorts[key]["definition"]))
            d["expression"]["primary_criteria"]["observation_window"]["prior_days"] = prior_days
            out.append(d)
    for key in sorted(cohorts)[:2]:
        d = json.loads(json.dumps(cohorts[key]["definition"]))
        limit = d["expression"]["primary_criteria"]["primary_limit"]
        # switched, not set: a cohort already limited to First would be asked again under another name
        limit["type"] = "All" if limit["type"] == "First" else "First"
        out.append(d)
    out = out[:20]
    distinct = {canonical_hash(parse_definition(d)) for d in out}
    assert len(distinct) == len(out), f"only {len(distinct)} of {len(out)} definitions are distinct questions"
    return out


def in_process(config_path: Path, defs: list[dict[str, Any]], order: list[int]
               ) -> tuple[list[dict[str, Any]], float]:
    """The expected answers (one per distinct definition) and the peer's wall time for `order`, computed as
    the node's route computes them: its config's policy and privacy settings, its noise key, its label."""
    from mercia.cdm import Cdm
    from mercia.federation.node.config import load_node_config
    from mercia.federation.node.feasibility import feasibility_count, feasibility_label, parse_definition
    from mercia.federation.node.privacy_budget import PrivacyLedger

    config = load_node_config(config_path)
    policy, privacy = config.site_policy, config.feasibility_privacy
    config.state_dir.mkdir(parents=True, exist_ok=True)
    noise_key = PrivacyLedger(config.state_dir).noise_key()  # made here; the node reads the same file
    parsed = [parse_definition(d) for d in defs]
    labels = [feasibility_label(p, policy, privacy) for p in parsed]

    def count(i: int) -> dict[str, Any]:
        return feasibility_count(cdm, parsed[i], policy, site=config.site, privacy=privacy,
                                 noise_key=noise_key, label=labels[i])

    with Cdm.open(config.cdm, create=False, read_only=True) as cdm:
        expected = [count(i) for i in range(len(parsed))]
        t0 = time.perf_counter()
        for i in order:
            count(i)
        peer = time.perf_counter() - t0
    return expected, peer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def configure(folder: Path, site: Path, researchers: int) -> tuple[Path, list[str]]:
    import yaml

    from mercia.federation.auth import TokenStore, generate_signing_key

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "hub_public.pem").write_text(generate_signing_key(folder / "hub_signing.pem"))
    store = TokenStore(folder / "tokens.json")
    tokens = [store.issue(f"researcher{i}", "researcher", [PROJECT]) for i in range(researchers)]
    config = {
        "site": "load", "cdm": str(site), "state_dir": str(folder / "state"), "policy": "opensafely",
        "hub_public_key": str(folder / "hub_public.pem"), "tokens": str(folder / "tokens.json"),
        "auto_approve": {"feasibility": True}, "feasibility_roles": ["hub", "researcher"],
        "count_limits": {"per_window": 100_000, "window_seconds": 60, "near_identical": 100_000},
        "feasibility_privacy": {"budget": 100.0},
    }
    (folder / "node.yaml").write_text(yaml.safe_dump(config))
    return folder / "node.yaml", tokens


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def fire(url: str, tokens: list[str], defs: list[dict[str, Any]], order: list[int]
               ) -> list[tuple[int, int, float, dict[str, Any] | str]]:
    import httpx

    limits = httpx.Limits(max_connections=len(order), max_keepalive_connections=len(order))
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def one(k: int, i: int) -> tuple[int, int, float, dict[str, Any] | str]:
            t0 = time.perf_counter()
            r = await client.post("/api/v1/feasibility", json={"definition": defs[i], "project": PROJECT},
                                  headers={"Authorization": f"Bearer {tokens[k % len(tokens)]}"})
            seconds = time.perf_counter() - t0
            return r.status_code, i, seconds, (r.json() if r.status_code == 200 else r.text[:300])

        return await asyncio.gather(*(one(k, i) for k, i in enumerate(order)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--researchers", type=int, default=10)
    args = ap.parse_args()

    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    site = build_site(args.persons)
    defs = definitions()
    order = [k % len(defs) for k in range(args.requests)]
    folder = OUT / f"node_load_{args.persons}" / "node"
    config, tokens = configure(folder, site, args.researchers)
    expected, peer_seconds = in_process(config, defs, order)
    print(f"in-process peer: {args.requests} counts one after another in {peer_seconds:.2f} s "
          f"({args.requests / peer_seconds:.1f}/s)")

    port = free_port()
    mercia = str(Path(sys.executable).parent / "mercia")
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen([mercia, "node", "serve", "--config", str(config), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"node exited ({proc.returncode}); see {folder / 'server.log'}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("node not ready after 300 s")
            time.sleep(0.2)
        rss_idle = peak_rss_mib(proc.pid)
        t0 = time.perf_counter()
        answers = asyncio.run(fire(url, tokens, defs, order))
        wall = time.perf_counter() - t0
        rss_peak = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    wrong = []
    charges: dict[tuple[int, int], int] = {}  # (researcher, definition): requests charged for it
    for k, (status, i, _, body) in enumerate(answers):
        charges.setdefault((k % len(tokens), i), 0)
        if status != 200:
            wrong.append(f"definition {i}: HTTP {status}: {body}")
            continue
        want = expected[i]
        assert isinstance(body, dict)
        for field in ("site", "persons", "entries", "definition_hash", "attrition", "disclosure"):
            if body[field] != want[field]:
                wrong.append(f"definition {i}: {field} {str(body[field])[:80]} != expected {str(want[field])[:80]}")
        got_privacy = {f: body["privacy"].get(f) for f in want["privacy"]}
        if got_privacy != want["privacy"]:
            wrong.append(f"definition {i}: privacy {got_privacy} != expected {want['privacy']}")
        charges[(k % len(tokens), i)] += bool(body["privacy"]["charged"])
    wrong += [f"researcher {r}, definition {i}: charged {n} times, not once"
              for (r, i), n in sorted(charges.items()) if n != 1]
    latencies = sorted(s for _, _, s, _ in answers)
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * len(latencies)) - 1)]
    print(f"node: {args.requests} concurrent feasibility counts ({len(defs)} distinct definitions, "
          f"{args.researchers} researchers) over {args.persons:,} persons")
    print(f"  answered {sum(1 for a in answers if a[0] == 200)}/{args.requests}; "
          f"{'all equal to the in-process counts' if not wrong else f'{len(wrong)} WRONG'}")
    for w in wrong[:10]:
        print("   ", w)
    print(f"  wall {wall:.2f} s, throughput {args.requests / wall:.1f} req/s")
    print(f"  latency min {latencies[0]:.2f} s, p50 {p50:.2f} s, p95 {p95:.2f} s, max {latencies[-1]:.2f} s")
    deciles = [latencies[min(len(latencies) - 1, (len(latencies) * k) // 10)] for k in range(1, 10)]
    print(f"  latency deciles: {', '.join(f'{d:.1f}' for d in deciles)} s")
    print(f"  node peak RSS {rss_peak:.0f} MiB (after start-up {rss_idle:.0f} MiB)"
          if rss_peak and rss_idle else "  node RSS: not available")
    print(f"  ratio to the in-process peer (wall): {wall / peer_seconds:.2f}x")
    if wrong:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
