"""Test support for the federation: real node and hub servers on 127.0.0.1, started as subprocesses.

    site = make_site(tmp_path / "a.duckdb", persons=3000, seed=1)
    key = HubKey(tmp_path / "hubkey")
    with NodeServer(tmp_path / "node_a", cdm=site, hub_key=key, site="a") as node:
        node.url, node.tokens["hub"], node.tokens["custodian"], node.tokens["researcher"]
        node.kill(); node.start()            # a crash and a restart on the same port and state
    with Federation(tmp_path, sites={"a": site_a, "b": site_b}) as fed:   # nodes + a hub, registered
        fed.hub.url, fed.researcher_token, fed.admin_token, fed.nodes["a"]

Servers are started with the `mercia` command of this venv (`mercia node serve`, `mercia hub serve`)
on free ports, and stopped with SIGTERM (SIGKILL after a timeout) when the block ends. Synthetic sites
are cached per (persons, seed, profile) under the pytest temp root, so tests share them.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

MERCIA = str(Path(sys.executable).parent / "mercia")
PROJECT = "proj"
# A study's cohorts as the package numbers them, read with plain SQL from a DuckDB CDM in which one
# study ran (its cohorts are stored under ids of their own, mapped in results.study_cohort).
STUDY_COHORT = ("(SELECT s.study_cohort_id AS cohort_definition_id, c.subject_id, c.cohort_start_date, "
                "c.cohort_end_date FROM results.cohort c JOIN results.study_cohort s "
                "ON s.cohort_definition_id = c.cohort_definition_id)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_site(path: Path, *, persons: int = 3000, seed: int = 1, profile: int = 0,
              first_person_id: int = 1) -> Path:
    """A small synthetic site (DuckDB file) at `path`, built once and copied on later calls."""
    from mercia.cdm import Cdm
    from mercia.synth import DEFAULT_SITES, generate_site

    cache = Path(os.environ.get("MERCIA_TEST_SITE_CACHE", "/tmp/mercia-test-sites"))
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / f"site-{persons}-{seed}-{profile}-{first_person_id}.duckdb"
    if not cached.exists():
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        with Cdm.open(tmp) as cdm:
            generate_site(cdm, persons=persons, seed=seed, profile=DEFAULT_SITES[profile % len(DEFAULT_SITES)],
                          first_person_id=first_person_id)
        os.replace(tmp, cached)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, path)
    return path


class HubKey:
    """An Ed25519 signing key for a hub and its public PEM file (what nodes trust).

    `sites` are the sites of the nodes made to trust it (NodeServer adds its own): by default a
    signature names them all, as the hub's does the sites a study is sent to."""

    def __init__(self, folder: Path) -> None:
        from mercia.federation.auth import generate_signing_key

        folder.mkdir(parents=True, exist_ok=True)
        self.private = folder / "hub_signing.pem"
        self.public = folder / "hub_public.pem"
        self.sites: set[str] = set()
        if not self.private.exists():
            self.public.write_text(generate_signing_key(self.private))

    def sign(self, content_hash: str, *, project: str = PROJECT, sites: Any = None,
             requested_by: str = "researcher", valid_days: float = 7.0, now: Any = None) -> str:
        """The hub's signature of `content_hash` for `project`, `sites` (default: every node trusting
        this key) and `requested_by`, valid for `valid_days` from `now` (default: now)."""
        from mercia.federation.auth import sign_package

        return sign_package(self.private, content_hash, project=project,
                            sites=sorted(self.sites) if sites is None else sites,
                            requested_by=requested_by, valid_days=valid_days, now=now)


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0,
                 verify: Any = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready: {url}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2, verify=verify).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} not healthy after {timeout} s")


class _Server:
    """A subprocess serving HTTP(S) on a fixed port; stop/kill/start keep port and state."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.scheme = "http"
        self.verify: Any = True

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def launch(self) -> None:
        """Start the process without waiting for it (start several, then `wait_ready` each)."""
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    def wait_ready(self) -> None:
        wait_healthy(self.url, self.proc, verify=self.verify)

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: a crash, no clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_text(self) -> str:
        p = self.folder / "server.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NodeServer(_Server):
    """A node over `cdm` trusting `hub_key`, with tokens for hub, custodian, researcher and admin."""

    def __init__(self, folder: Path, *, cdm: Path, hub_key: HubKey, site: str, policy: str = "opensafely",
                 port: int | None = None, tls: tuple[Path, Path] | None = None, **config: Any) -> None:
        from mercia.federation.auth import TokenStore

        super().__init__(folder, port)
        folder.mkdir(parents=True, exist_ok=True)
        self.site = site
        hub_key.sites.add(site)
        self.config_path = folder / "node.yaml"
        self.state_dir = folder / "state"
        data: dict[str, Any] = {
            "site": site, "cdm": str(cdm), "state_dir": str(self.state_dir), "policy": policy,
            "hub_public_key": str(hub_key.public), "tokens": str(folder / "tokens.json"),
            "auto_approve": {"feasibility": True}, "feasibility_roles": ["hub", "researcher"],
        }
        if tls is not None:
            data["tls"] = {"cert": str(tls[0]), "key": str(tls[1])}
            self.scheme = "https"
            self.verify = False
        data.update(config)
        self.config_path.write_text(yaml.safe_dump(data))
        store = TokenStore(folder / "tokens.json")
        self.tokens = {
            "hub": store.issue("hub", "hub", ["*"]),
            "custodian": store.issue(f"custodian-{site}", "custodian", ["*"]),
            "researcher": store.issue("researcher", "researcher", [PROJECT]),
            "admin": store.issue("admin", "admin", ["*"]),
        }

    def command(self) -> list[str]:
        return [MERCIA, "node", "serve", "--config", str(self.config_path), "--port", str(self.port)]

    def client(self, who: str = "hub") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[who]}"},
                            timeout=60, verify=self.verify)

    def approve(self, content_hash: str) -> dict[str, Any]:
        with self.client("custodian") as c:
            r = c.post(f"/api/v1/studies/{content_hash}/approve")
            r.raise_for_status()
            return r.json()

    def wait_status(self, content_hash: str, wanted: set[str], timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        with self.client("hub") as c:
            while time.monotonic() < deadline:
                r = c.get(f"/api/v1/studies/{content_hash}")
                if r.status_code == 200:
                    last = r.json()
                    if last["status"] in wanted:
                        return last
                time.sleep(0.2)
        raise TimeoutError(f"study {content_hash[:12]} at {self.site} is {last.get('status')}, not {wanted}")


def submit_body(package: Any, key: HubKey, *, project: str = PROJECT, requested_by: str = "researcher",
                **sign: Any) -> dict[str, Any]:
    """What the hub POSTs to a node: the canonical package, its hash and the hub's signature (for
    `project` and `requested_by`; `sign` passes sites=, valid_days=, now= on to HubKey.sign)."""
    h = package.content_hash
    return {"package": package.canonical(), "hash": h,
            "signature": key.sign(h, project=project, requested_by=requested_by, **sign), "project": project,
            "requested_by": requested_by}


def small_study(name: str = "small test study") -> Any:
    """The demo study cut down to what a few thousand persons support quickly: counts and the Cox model."""
    from mercia.study import StudyPackage, example_package

    canonical = example_package().canonical()
    canonical["name"] = name
    canonical["analyses"] = [a for a in canonical["analyses"] if a["type"] in ("cohort_entries", "cox")]
    for a in canonical["analyses"]:
        if a["type"] == "cox":
            a["settings"]["ph_test"] = False
    canonical["disclosure"] = None
    return StudyPackage.from_canonical(canonical)


FEMALE, MALE = 8532, 8507


def hypertension(gender: int, on: str | None = None) -> dict[str, Any]:
    """First hypertension diagnosis of one sex (model form); `on`: only a first diagnosis that day."""
    from mercia.study import example_package

    d = copy.deepcopy(example_package().canonical()["cohorts"]["hf_admission"]["definition"])
    e = d["expression"]
    e["concept_sets"] = [{"id": 0, "name": "Hypertension", "expression": {"items": [{
        "concept": {"concept_id": 320128, "concept_name": "Essential hypertension"}, "is_excluded": False,
        "include_descendants": True, "include_mapped": False}]}}]
    co = e["primary_criteria"]["criteria_list"][0]["condition_occurrence"]
    co.pop("visit_type")
    co["first"] = True
    co["gender"] = [{"concept_id": gender, "concept_name": "FEMALE" if gender == FEMALE else "MALE"}]
    if on is not None:
        co["occurrence_start_date"] = {"value": on, "op": "eq"}
    e["primary_criteria"]["primary_limit"] = {"type": "First"}
    e["qualified_limit"] = {"type": "First"}
    e["expression_limit"] = {"type": "First"}
    d["name"] = ("women" if gender == FEMALE else "men") + " with hypertension" + (f" first on {on}" if on else "")
    return d


def hypertension_study(name: str, target: dict[str, Any] | None = None, *, target_id: int = 11,
                       prediction: bool = False, analysis: str = "cox_one") -> Any:
    """A Cox study of `target` (default: women with hypertension; cohort id `target_id`: a site keeps
    one definition per id) against men with hypertension (12), outcome heart-failure admission (13),
    adjusted for age; with `prediction`, a prediction model too. Unlike the demo study's model, its
    levels are well filled at 20,000 persons, so its model is released and fitted."""
    from mercia.study import StudyPackage, example_package

    target = target if target is not None else hypertension(FEMALE)

    c = example_package().canonical()
    cox = next(a for a in c["analyses"] if a["type"] == "cox")
    settings = copy.deepcopy(cox["settings"])
    settings.update(sex=False, covariates=[], ph_test=True)  # comparator men, target women: no sex term
    settings["survival"]["censor_at"] = "observation_end"
    c.update(name=name, disclosure=None, cohorts={
        "target": {"id": target_id, "definition": target},
        "comparator": {"id": 12, "definition": hypertension(MALE)},
        "hf": {"id": 13, "definition": c["cohorts"]["hf_admission"]["definition"]},
    })
    c["analyses"] = [{"name": analysis, "type": "cox", "target": "target", "comparator": "comparator",
                      "outcome": "hf", "settings": settings}]
    if prediction:
        c["analyses"].append({"name": "pred", "type": "prediction", "target": "target", "outcome": "hf"})
    return StudyPackage.from_canonical(c)


class HubServer(_Server):
    """A hub (made by `init_hub`) with fast polling and short back-off, for tests."""

    def __init__(self, folder: Path, *, port: int | None = None, tls: tuple[Path, Path] | None = None,
                 poll_seconds: float = 0.2, retry: tuple[float, float] = (0.2, 2.0)) -> None:
        from mercia.federation.hub import init_hub

        super().__init__(folder, port)
        self.config_path, _, self.admin_token = init_hub(folder)
        data = yaml.safe_load(self.config_path.read_text())
        data.update({"poll_seconds": poll_seconds, "retry": {"base_seconds": retry[0], "max_seconds": retry[1]},
                     "node_timeout_seconds": 30})
        if tls is not None:
            data["tls"] = {"cert": str(tls[0]), "key": str(tls[1])}
            self.scheme = "https"
            self.verify = False
        self.config_path.write_text(yaml.safe_dump(data))
        self.key = HubKey(folder)  # the key init_hub wrote
        self.state_dir = folder / "state"

    def command(self) -> list[str]:
        return [MERCIA, "hub", "serve", "--config", str(self.config_path), "--port", str(self.port)]

    def client(self, token: str) -> Any:
        from mercia.federation.client import Client

        return Client(self.url, token, verify=self.verify)


class Federation:
    """A hub and one node per site, registered in project PROJECT, with a researcher's token.

    `fed.client()` is the researcher's mercia.Client; `fed.admin()` the admin's; `fed.nodes[site]`
    the NodeServer (approve, kill, start ...)."""

    def __init__(self, folder: Path, sites: dict[str, Path], *, policy: str = "opensafely",
                 node_config: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.hub = HubServer(folder / "hub")
        self.nodes = {name: NodeServer(folder / f"node_{name}", cdm=cdm, hub_key=self.hub.key, site=name,
                                       policy=policy, **(node_config or {}))
                      for name, cdm in sites.items()}
        self.researcher_token = ""

    def client(self) -> Any:
        return self.hub.client(self.researcher_token)

    def admin(self) -> Any:
        return self.hub.client(self.hub.admin_token)

    def start(self) -> Federation:
        servers = [*self.nodes.values(), self.hub]
        for server in servers:  # in parallel: each takes seconds to import and open its CDM
            server.launch()
        for server in servers:
            server.wait_ready()
        with self.admin() as admin:
            for name, node in self.nodes.items():
                admin.add_node(name, node.url, node.tokens["hub"])
            admin.add_project(PROJECT, sorted(self.nodes))
            self.researcher_token = admin.add_user("alice", "researcher", [PROJECT])["token"]
        return self

    def stop(self) -> None:
        self.hub.stop()
        for node in self.nodes.values():
            node.stop()

    def __enter__(self) -> Federation:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def approve_all(self, content_hash: str) -> None:
        for node in self.nodes.values():
            if node.wait_status(content_hash, {"pending_approval", "approved", "running", "finished"})[
                    "status"] == "pending_approval":
                node.approve(content_hash)
