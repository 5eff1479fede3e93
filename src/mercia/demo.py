"""The demo: a three-site synthetic federation with a real hub and three real nodes on 127.0.0.1.

`run_demo` builds the sites (DuckDB files, generated once per size and seed), starts a hub and one
node per site as separate processes (uvicorn, free ports), and then does what the people of a
federation do: the admin registers the nodes and a project, the researcher submits the demo study
to every site, each site's custodian approves its exact hash, the nodes run it and release their
results under SACRO's rules, the hub collects them once each and pools the hazard ratios
(meta-analysis), the researcher asks for the exact federated Cox model, and the pooled report is
written to ./demo/report.html. The servers are stopped on the way out, also after an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from mercia.errors import ConfigError, MerciaError

DEMO_SITES = 3
MANIFEST = "federation.json"
DEMO_POLICY = "sacro"
PROJECT = "demo"
# The released Cox table and its exposure row that the demo pools across sites.
POOLED_TABLE, POOLED_TERM = "cox_adjusted", "treatment"

Progress = Callable[[str, int, int], None]


class DemoError(MerciaError):
    """The demo federation could not start or finish (a server died, a site failed)."""


def build_federation(out: Path, *, persons: int, seed: int, progress: Progress | None = None) -> list[Path]:
    """The demo sites under `out/sites`, generated once per (persons, seed) and reused after.

    Generation goes to a temporary folder that is renamed into place, so an interrupted run never
    leaves a half-written federation behind.
    """
    from mercia.synth import generate_federation

    sites_dir = out / "sites"
    manifest_path = out / MANIFEST
    wanted = {"persons": persons, "seed": seed, "sites": DEMO_SITES}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("params") == wanted and all(Path(p).exists() for p in manifest["databases"]):
            return [Path(p) for p in manifest["databases"]]
    ours = {"sites", "studies", "servers", MANIFEST, "summary.json", "pooled.json", "results.json", "report.html"}
    if out.exists() and any(p for p in out.iterdir() if p.name not in ours and not p.name.startswith(".sites-")):
        raise ConfigError(f"{out} holds files that are not a Mercia demo; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sites-", dir=out))
    try:
        generated = generate_federation(staging / "sites", persons=persons, sites=DEMO_SITES, seed=seed,
                                        progress=progress)
        if sites_dir.exists():
            shutil.rmtree(sites_dir)
        (staging / "sites").rename(sites_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    databases = [str(sites_dir / p.relative_to(staging / "sites")) for p in generated]
    manifest_path.write_text(json.dumps({"params": wanted, "databases": databases}, indent=2) + "\n")
    return [Path(p) for p in databases]


def released_estimate(tables: dict[str, Any]) -> tuple[float, float] | None:
    """The pooled term's log hazard ratio and SE from a site's released tables (name -> table dict)."""
    table = tables.get(POOLED_TABLE)
    if table is None or table.get("status") == "blocked":
        return None
    cols = table["columns"]
    for row in table["rows"]:
        r = dict(zip(cols, row, strict=True))
        if r.get("term") == POOLED_TERM:
            try:
                coef, se = float(r["coef"]), float(r["se"])
            except (TypeError, ValueError):  # suppressed cells are missing values
                return None
            return (coef, se) if math.isfinite(coef) and math.isfinite(se) and se > 0 else None
    return None


# ---- the servers ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Servers:
    """Server subprocesses started here and always stopped here (SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}

    def start(self, name: str, args: list[str], port: int) -> str:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "wb") as log:
            # The mercia command of this interpreter, whatever is on PATH; a new session, so a Ctrl-C
            # in the terminal reaches the demo, which then stops its servers in order.
            proc = subprocess.Popen([sys.executable, "-c", "from mercia.cli import app; app()", *args,
                                     "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        self.procs[name] = (proc, url)
        return url

    def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        for name, (proc, url) in self.procs.items():
            while True:
                if proc.poll() is not None:
                    tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-1500:]
                    raise DemoError(f"the {name} server stopped at start (exit {proc.returncode}):\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise DemoError(f"the {name} server did not answer at {url} within {timeout:g} s")
                time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc, _ in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def _running(log_dir: Path) -> Iterator[_Servers]:
    servers = _Servers(log_dir)
    try:
        yield servers
    finally:
        servers.stop()


def _configure(root: Path, databases: list[Path]) -> tuple[Path, str, dict[str, dict[str, Any]]]:
    """Fresh hub and node folders: configs, the hub's key, tokens. (hub config, admin token, nodes)"""
    from mercia.federation.auth import TokenStore
    from mercia.federation.hub import init_hub

    if root.exists():
        shutil.rmtree(root)  # the previous demo's servers and their state
    hub_config, _, admin_token = init_hub(root / "hub")
    data = yaml.safe_load(hub_config.read_text())
    data.update({"poll_seconds": 0.25, "retry": {"base_seconds": 0.5, "max_seconds": 5.0}})
    hub_config.write_text(yaml.safe_dump(data))
    nodes: dict[str, dict[str, Any]] = {}
    for db in databases:
        site = db.stem
        folder = root / "nodes" / site
        folder.mkdir(parents=True)
        config = folder / "node.yaml"
        config.write_text(yaml.safe_dump({
            "site": site, "cdm": str(db.resolve()), "state_dir": "state", "policy": DEMO_POLICY,
            "hub_public_key": str((root / "hub" / "hub_public.pem").resolve()), "tokens": "tokens.json",
            "auto_approve": {"feasibility": True}, "feasibility_roles": ["hub"],
        }))
        tokens = TokenStore(folder / "tokens.json")
        nodes[site] = {"config": config, "state": folder / "state",
                       "hub_token": tokens.issue("hub", "hub", ["*"]),
                       "custodian_token": tokens.issue(f"custodian-{site}", "custodian", ["*"])}
    return hub_config, admin_token, nodes


def _approve_as_custodian(url: str, token: str, content_hash: str, timeout: float = 120.0) -> None:
    """What the site's custodian does: find the package by its hash, and approve exactly that hash."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        while time.monotonic() < deadline:
            r = c.get(f"/api/v1/studies/{content_hash}")
            if r.status_code == 200:
                if r.json()["status"] == "pending_approval":
                    c.post(f"/api/v1/studies/{content_hash}/approve",
                           json={"reason": "demo: package reviewed"}).raise_for_status()
                return
            time.sleep(0.2)
    raise DemoError(f"the package {content_hash[:12]} did not reach the node at {url} within {timeout:g} s")


def run_demo(out: Path, *, persons: int = 300_000, seed: int = 2026, progress: Progress | None = None,
             timeout: float = 3600.0) -> dict[str, Any]:
    from mercia.federation.client import Client
    from mercia.study import example_package

    t_all = time.perf_counter()
    databases = build_federation(out, persons=persons, seed=seed, progress=progress)
    for stale in ("studies", "pooled.json", "results.json", "report.html", "summary.json"):
        p = out / stale
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    root = out / "servers"
    hub_config, admin_token, nodes = _configure(root, databases)
    package = example_package()
    h = package.content_hash
    timings: dict[str, float] = {}
    steps = 5
    label = "federated demo study"

    def step(done: int) -> None:
        if progress:
            progress(label, done, steps)

    step(0)
    with _running(root / "logs") as servers:
        t0 = time.perf_counter()
        urls = {site: servers.start(f"node-{site}", ["node", "serve", "--config", str(n["config"])], _free_port())
                for site, n in nodes.items()}
        hub_url = servers.start("hub", ["hub", "serve", "--config", str(hub_config)], _free_port())
        servers.wait_ready()
        timings["servers_start"] = round(time.perf_counter() - t0, 3)
        step(1)
        with Client(hub_url, admin_token) as admin:
            for site, n in nodes.items():
                admin.add_node(site, urls[site], n["hub_token"])
            admin.add_project(PROJECT, sorted(nodes))
            researcher_token = admin.add_user("researcher", "researcher", [PROJECT])["token"]
        with Client(hub_url, researcher_token, timeout=600) as researcher:
            t0 = time.perf_counter()
            researcher.submit(package, project=PROJECT)
            for site, n in nodes.items():
                _approve_as_custodian(urls[site], n["custodian_token"], h)
            step(2)
            closed = researcher.wait(h, timeout=timeout)
            timings["study"] = round(time.perf_counter() - t0, 3)
            step(3)
            failed = {s["site"]: s["last_error"] or s["detail"] for s in closed["sites"] if s["status"] != "collected"}
            results = researcher.results(h)
            t0 = time.perf_counter()
            try:
                federated: dict[str, Any] | None = researcher.federated(h, POOLED_TABLE, "cox")
            except MerciaError as e:  # every site refused (too few events): the meta-analysis still stands
                federated = {"error": str(e)}
            timings["federated_cox"] = round(time.perf_counter() - t0, 3)
            step(4)
            report = researcher.report(h)
    timings["total"] = round(time.perf_counter() - t_all, 3)
    step(5)

    (out / "report.html").write_text(report, encoding="utf-8")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    sites: dict[str, Any] = {}
    estimates: dict[str, tuple[float, float]] = {}
    for site, payload in results["sites"].items():
        tables = {t["name"]: t for t in payload["tables"]}
        report_path = nodes[site]["state"] / "results" / h / "report.html"
        sites[site] = {"info": payload["manifest"].get("site_summary", {}), "report": str(report_path.resolve())}
        est = released_estimate(tables)
        if est is not None:
            estimates[site] = est
    meta = results["pooled"].get("tables", {}).get(POOLED_TABLE, {}).get(POOLED_TERM)
    pooled = None
    if meta is not None:
        pooled = {"study": package.name, "content_hash": h, "table": POOLED_TABLE, "term": POOLED_TERM,
                  "scale": "log hazard ratio", **meta}
        (out / "pooled.json").write_text(json.dumps(pooled, indent=2) + "\n")
    summary = {"sites": sites, "failed_sites": failed, "timings_seconds": timings, "hub": hub_url,
               "federated_cox": federated}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return {"out": str(out.resolve()), "study": package.name, "content_hash": h, "sites": sites,
            "pooled": pooled, "site_estimates": estimates, "federated_cox": federated, "failed_sites": failed,
            "report": str((out / "report.html").resolve()), "timings": timings}
