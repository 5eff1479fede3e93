"""The portal's pages and live counts, through a real hub and three real nodes on 127.0.0.1, against the
hub's JSON API for the same data and a static file of the same server.

    .venv/bin/python bench/bench_portal.py [--persons 1000000] [--site SITE.duckdb] [--n 20] [--run-study]
                                           [--vocabulary VOCAB.duckdb|postgresql://...]
                                           [--vocabulary-concepts 6500000 [--vocabulary-seed 2026]]

Targets (issue 17): every page renders in under 300 ms at the server with three nodes of 1,000,000
persons (counts excluded); a live cohort count per site in under 2 s.

Sites: three synthetic sites of `persons` each (`mercia.demo.build_federation`, seed 2026, cached in
bench/out/federation_<persons>/ as bench_federation.py caches them), or `--site`: one DuckDB site (such
as bench/out/synth_<n>.duckdb made by bench_cohorts.py) copied three times. The hub's vocabulary
(hub.yaml `portal: vocabulary:`) is a fourth copy of a site (a node holds its own file open for writing),
whose vocabulary is the bundled subset (557 concepts), or `--vocabulary`: a full OMOP vocabulary, or
`--vocabulary-concepts N`: that copy's vocabulary plus N generated concepts of the full OMOP vocabulary's
shape (bench/vocab_shape.py: domains, vocabularies, standard share, synonyms, 'Maps to', a deep
hierarchy with about 12 CONCEPT_ANCESTOR rows per concept at 6.5M), cached in
bench/out/vocabulary_<N>_<seed>.duckdb. With it, the concept pages are also measured on what a full
vocabulary makes slow: a search for a common word ("tablet"), a rare one and a concept code; the concept
page of a hierarchy's root (every concept of its group below it) and of a concept with about 5,000
descendants; and a concept set holding that concept with its descendants (resolving thousands).

Servers: `mercia demo`'s set-up (a hub and one node per site, separate processes). Portal users, one per
role of each portal (the hub's, and a node's if it serves one), are added with the portal's accounts
API as `mercia hub portal-user-add` does, and sign in over HTTP with the CSRF flow, as a browser does.

Pages: every GET route of every portal, read from the route table of the app the server runs (built
here from the same configuration), so pages added later are measured without editing this file. Path
parameters are filled from samples found at run time (a concept of the vocabulary, a user, a project,
a submitted study's hash, a concept set); a route that cannot be filled, or that answers no role with
200, is listed as not measured. Each page is asked once per role until one may see it (not timed), then
`n` times: the server's own time from the portal's Server-Timing header (median, p95: the portal's
handler and rendering; the hub's request audit line and the HTTP stack are outside it) and the client's
round trip. Pages make no count (counts are POSTs). Peers: the API route serving the same data
(`API_PEERS`), asked `n` times with a token of the same role (round trip against round trip), and the
portal's stylesheet from the same server (the floor of a request).

Live counts: the cohort page's count (POST /portal/cohorts, action=count) for three cohorts of the demo
study and the concept page's count of a concept with its descendants. Cold (the first time a site is
asked a question) per site, one site at a time, through a project of that site alone; warm (asked
again: the node's privacy ledger and count cache answer without recounting) across the three sites;
peer: the API's POST /feasibility or /concepts/count, warm. A third cohort is asked cold of the three
sites at once (three nodes sharing this machine's cores). The count guard allows 5 asks of one question
per user: the plan asks each at most 5 times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
sys.path.insert(0, str(BENCH))

from harness import machine  # noqa: E402

SEED = 2026
PASSWORD = "bench: correct horse battery staple"
PROJECT = "demo"
RESEARCHER = "rita"  # the hub portal's researcher; other roles' users are named by role
PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
# Query strings measured for a route (default: the route alone).
QUERIES = {"/portal/concepts": ["", "text=diabetes"], "/portal/concept-sets/{set_id}": ["", "text=diabetes"]}
# The hub's (or the node's) JSON API route for a page's data: page template (with its query) -> API path,
# asked with a token of the page's user's role (or of the role named).
API_PEERS = {
    ("hub", "/portal/concepts?text=diabetes"): "/api/v1/concepts?text=diabetes",
    ("hub", "/portal/concepts/{concept_id}"): "/api/v1/concepts/{concept_id}",
    ("hub", "/portal/admin/projects"): "/api/v1/projects",
    ("hub", "/portal/studies"): "/api/v1/studies",
    ("hub", "/portal/studies/{content_hash}"): "/api/v1/studies/{content_hash}",
    ("hub", "/portal/studies/{content_hash}/report"): "/api/v1/studies/{content_hash}/results",
    ("node", "/portal/"): "/api/v1/studies",
    ("node", "/portal/studies/{content_hash}"): "/api/v1/studies/{content_hash}",
    ("node", "/portal/studies/{content_hash}/results"): ("/api/v1/studies/{content_hash}/results", "hub"),
}
FLOOR = "/portal/static/portal.css"


# ---- the sites ---------------------------------------------------------------------------------------
def sites(persons: int, site: Path | None) -> tuple[list[Path], str]:
    """Three site files and a copy of one for the hub's vocabulary."""
    if site is not None:
        folder = OUT / f"portal_{site.stem}"
        folder.mkdir(parents=True, exist_ok=True)
        copies = [folder / f"{name}.duckdb" for name in ("north", "midlands", "south", "vocabulary")]
        for c in copies:  # fresh copies: a node may write to its file
            shutil.copyfile(site, c)
        return copies[:3], str(copies[3].resolve())
    from mercia.demo import build_federation

    databases = build_federation(OUT / f"federation_{persons}", persons=3 * persons, seed=SEED)
    vocabulary = OUT / f"portal_{persons}_vocabulary.duckdb"
    shutil.copyfile(databases[0], vocabulary)
    return databases, str(vocabulary.resolve())


# ---- routes and their parameters ----------------------------------------------------------------------
def portal_of(app: Any) -> tuple[str, Any] | None:
    """(mount path, app) of the portal mounted in a service's app: the mount whose app holds accounts."""
    from starlette.routing import Mount

    for r in app.routes:
        if isinstance(r, Mount) and hasattr(getattr(r.app, "state", None), "accounts"):
            return r.path, r.app
    return None


def get_routes(app: Any) -> list[str]:
    """Every GET page of the portal mounted in `app`, as path templates with the mount's prefix."""
    from fastapi.routing import APIRoute

    mounted = portal_of(app)
    if mounted is None:
        return []
    prefix, portal = mounted
    return sorted(prefix + r.path for r in portal.routes if isinstance(r, APIRoute) and "GET" in r.methods)


def fill(template: str, samples: dict[str, str]) -> tuple[str | None, list[str]]:
    """The template with its parameters filled from samples, or (None, the parameters not known)."""
    missing = [m.group(1) for m in PARAM.finditer(template) if m.group(1) not in samples]
    if missing:
        return None, missing
    return PARAM.sub(lambda m: samples[m.group(1)], template), []


def server_ms(r: httpx.Response) -> float | None:
    m = re.search(r"dur=([0-9.]+)", r.headers.get("server-timing", ""))
    return float(m.group(1)) if m else None


# ---- a browser stand-in ---------------------------------------------------------------------------------
class Visitor:
    """Signs in with the portal's form and CSRF token; keeps the cookies itself (httpx sends no Secure
    cookie over plain HTTP)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, follow_redirects=False, timeout=120)
        self.jar: dict[str, str] = {}

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        self.http.cookies.clear()
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.jar.items())} if self.jar else {}
        r = self.http.request(method, path, headers=headers, **kw)
        for raw in r.headers.get_list("set-cookie"):
            name, _, rest = raw.partition("=")
            self.jar[name] = rest.split(";")[0].strip('"')
        return r

    def sign_in(self, name: str) -> Visitor:
        page = self.request("GET", "/portal/sign-in")
        r = self.request("POST", "/portal/sign-in", data={"csrf": csrf_of(page.text), "name": name,
                                                          "password": PASSWORD})
        if r.status_code != 303:
            raise RuntimeError(f"{name} could not sign in ({r.status_code})")
        self.csrf = csrf_of(self.request("GET", "/portal/").text)
        return self

    def post(self, path: str, data: dict[str, str]) -> httpx.Response:
        return self.request("POST", path, data={"csrf": self.csrf, **data})


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    if not m:
        raise RuntimeError("no CSRF token on the page")
    return m.group(1)


def timed(call: Any, n: int) -> dict[str, Any]:
    server, client = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        r = call()
        client.append(1000 * (time.perf_counter() - t0))
        if r.status_code != 200:
            raise RuntimeError(f"status {r.status_code} while timing")
        ms = server_ms(r)
        if ms is not None:
            server.append(ms)
    return {"server": server, "client": client}


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


# ---- the run ----------------------------------------------------------------------------------------------
def generated_vocabulary(base: str, concepts: int, seed: int) -> tuple[str, dict[str, Any]]:
    """The hub's vocabulary with `concepts` generated concepts (bench/vocab_shape.py), built once per
    (concepts, seed) from `base` (the bundled subset) and reused; its landmarks (what to ask of it)."""
    import vocab_shape

    out = OUT / f"vocabulary_{concepts}_{seed}.duckdb"
    t0 = time.perf_counter()
    if not out.is_file():
        part = out.with_suffix(".part")
        vocab_shape.build(part, concepts, seed=seed, base=Path(base))
        part.replace(out)
    shape = vocab_shape.describe(out)
    lm = vocab_shape.landmarks(out, seed=seed)
    print(f"vocabulary: {out.name}: {shape['concepts']:,} concepts ({shape['standard']:,} standard), "
          f"{shape['ancestor_rows']:,} ancestor rows ({shape['ancestor_rows_per_concept']} per concept, "
          f"{shape['max_levels']} levels), {sum(shape['relationships'].values()):,} relationships, "
          f"{shape['synonyms']:,} synonyms; ready in {time.perf_counter() - t0:.1f} s")
    print(f"vocabulary landmarks: '{lm['common']}' in {lm['common_names']:,} names, '{lm['rare']}' in "
          f"{lm['rare_names']:,}, code {lm['code']}; root {lm['root']} with {lm['root_descendants']:,} "
          f"descendants; concept {lm['set_concept']} with {lm['set_descendants']:,}")
    return str(out.resolve()), lm


def vocabulary_pages(lm: dict[str, Any]) -> list[tuple[str, str]]:
    """The concept pages a full vocabulary makes slow (templates filled from the samples) and their API
    peers (added to API_PEERS)."""
    pages = [("/portal/concepts", f"text={lm['common']}"), ("/portal/concepts", f"text={lm['rare']}"),
             ("/portal/concepts", f"text={lm['code']}"), ("/portal/concepts/{root_id}", ""),
             ("/portal/concepts/{set_concept_id}", ""), ("/portal/concept-sets/{big_set_id}", "")]
    for template, query in pages:
        if template == "/portal/concepts":
            API_PEERS[("hub", f"{template}?{query}")] = f"/api/v1/concepts?{query}"
        elif template.startswith("/portal/concepts/"):
            API_PEERS[("hub", template)] = template.replace("/portal/", "/api/v1/")
    return pages


def run(databases: list[Path], vocabulary: str, n: int, run_study: bool,
        landmarks: dict[str, Any] | None = None) -> dict[str, Any]:
    import yaml

    from mercia.demo import _approve_as_custodian, _configure, _free_port, _running
    from mercia.federation.client import Client
    from mercia.federation.hub import load_hub_config
    from mercia.federation.hub.app import create_app as hub_app
    from mercia.federation.node import load_node_config
    from mercia.federation.node.app import create_app as node_app
    from mercia.study import example_package

    root = OUT / "portal_servers"
    hub_config, admin_token, nodes = _configure(root, databases)
    data = yaml.safe_load(hub_config.read_text())
    data["portal"] = {"vocabulary": vocabulary}
    hub_config.write_text(yaml.safe_dump(data))
    # The apps the servers will run, built here from the same files for their route tables and accounts.
    apps = {"hub": hub_app(load_hub_config(hub_config), start_dispatcher=False)}
    apps.update({s: node_app(load_node_config(nd["config"]), start_worker=False) for s, nd in nodes.items()})
    users: dict[str, list[tuple[str, str]]] = {}  # server -> its portal users (name, role), researcher first
    for server, app in apps.items():
        mounted = portal_of(app)
        if mounted is None:
            continue
        accounts = mounted[1].state.accounts  # as `mercia hub portal-user-add` adds users
        roles = getattr(accounts, "roles", ("researcher", "admin"))
        users[server] = []
        for role in sorted(roles, key=lambda r: r != "researcher"):
            name, projects = (RESEARCHER, [PROJECT, *(f"only-{s}" for s in nodes)]) if role == "researcher" \
                else (f"{role}-user", ["*"])
            accounts.add_user(name, role, projects, PASSWORD)
            users[server].append((name, role))
    pkg = example_package()
    figures: dict[str, Any] = {"pages": [], "not_measured": []}
    with _running(root / "logs") as servers:
        urls = {s: servers.start(f"node-{s}", ["node", "serve", "--config", str(nd["config"])], _free_port())
                for s, nd in nodes.items()}
        urls["hub"] = servers.start("hub", ["hub", "serve", "--config", str(hub_config)], _free_port())
        servers.wait_ready()
        with Client(urls["hub"], admin_token) as admin:
            for s, nd in nodes.items():
                admin.add_node(s, urls[s], nd["hub_token"])
            admin.add_project(PROJECT, sorted(nodes))
            for s in nodes:
                admin.add_project(f"only-{s}", [s])
            api_token = admin.add_user("api-researcher", "researcher", [PROJECT])["token"]
        tokens = {"hub": {"researcher": api_token, "admin": admin_token}}
        tokens.update({s: {"custodian": nd["custodian_token"], "admin": nd["custodian_token"], "hub": nd["hub_token"]}
                       for s, nd in nodes.items()})
        visitors = {server: [Visitor(urls[server]).sign_in(u) for u, _ in who] for server, who in users.items()}
        for server in visitors:  # last: a visitor not signed in (the sign-in page)
            visitors[server].append(Visitor(urls[server]))
            users[server].append(("(signed out)", "none"))
        api = {server: httpx.Client(base_url=urls[server], timeout=120) for server in apps}

        # ---- the samples for path parameters
        rita = visitors["hub"][0]
        samples: dict[str, str] = {"name": RESEARCHER, "project": PROJECT, "site": sorted(nodes)[0], "fmt": "csv"}
        hits = api["hub"].get("/api/v1/concepts", params={"text": "diabetes", "standard": True},
                              headers={"Authorization": f"Bearer {api_token}"}).json()
        samples["concept_id"] = str(hits[0]["concept_id"])
        r = rita.post("/portal/concept-sets", {"project": PROJECT, "name": "bench set"})
        if r.status_code == 303:
            samples["set_id"] = r.headers["location"].rstrip("/").rsplit("/", 1)[-1]
            rita.post(f"/portal/concept-sets/{samples['set_id']}/items",
                      {"concept_id": samples["concept_id"], "descendants": "1"})
        if landmarks is not None:  # a generated vocabulary: a set resolving thousands of concepts
            samples.update(root_id=str(landmarks["root"]), set_concept_id=str(landmarks["set_concept"]))
            r = rita.post("/portal/concept-sets", {"project": PROJECT, "name": "bench big set"})
            if r.status_code == 303:
                samples["big_set_id"] = r.headers["location"].rstrip("/").rsplit("/", 1)[-1]
                rita.post(f"/portal/concept-sets/{samples['big_set_id']}/items",
                          {"concept_id": samples["set_concept_id"], "descendants": "1"})
        with Client(urls["hub"], api_token, timeout=3600) as researcher:
            researcher.submit(pkg, project=PROJECT)
            samples["content_hash"] = samples["hash"] = pkg.content_hash
            if run_study:
                for s, nd in nodes.items():
                    _approve_as_custodian(urls[s], nd["custodian_token"], pkg.content_hash)
                researcher.wait(pkg.content_hash, timeout=3600, poll=0.5)
                results = researcher.results(pkg.content_hash)
                site, payload = sorted(results["sites"].items())[0]
                samples.update(site=site, table=payload["tables"][0]["name"], fmt="csv")
            else:
                wait_for_package(urls, nodes, pkg.content_hash)
        figures["samples"], figures["ran_study"] = samples, run_study

        # ---- the pages, then the live counts
        for server, app in apps.items():
            for template in get_routes(app):
                for query in QUERIES.get(template, [""]):
                    measure_page(figures, server, template, query, samples, visitors.get(server, []),
                                 users.get(server, []), api[server], tokens[server], n)
            if server == "hub" and landmarks is not None:
                for template, query in vocabulary_pages(landmarks):
                    measure_page(figures, server, template, query, samples, visitors.get(server, []),
                                 users.get(server, []), api[server], tokens[server], n)
            if server in visitors:
                v = visitors[server][0]
                v.request("GET", FLOOR)
                figures.setdefault("floor", {})[server] = timed(lambda v=v: v.request("GET", FLOOR), n)
        figures["counts"] = measure_counts(rita, api["hub"], api_token, sorted(nodes), pkg.canonical()["cohorts"],
                                           samples["concept_id"])
        for c in api.values():
            c.close()
    return figures


def measure_page(figures: dict[str, Any], server: str, template: str, query: str, samples: dict[str, str],
                 visitors: list[Visitor], users: list[tuple[str, str]], api: httpx.Client, tokens: dict[str, str],
                 n: int) -> None:
    """One page: asked by each user in turn until one sees it (the warm-up), then timed n times, with
    its API peer; or the reason it was not measured."""
    shown = template + (f"?{query}" if query else "")
    path, missing = fill(template, samples)
    if path is None:
        figures["not_measured"].append((server, shown, f"no sample for {', '.join(missing)}"))
        return
    path += f"?{query}" if query else ""
    status = None
    for v, user in zip(visitors, users, strict=True):
        status = v.request("GET", path).status_code
        if status == 200:
            name, role = user
            break
    else:
        figures["not_measured"].append((server, shown, f"no role answered 200 (last: {status})"))
        return
    row = {"at": server, "route": shown, "user": name, **timed(lambda: v.request("GET", path), n)}
    peer = API_PEERS.get(("hub" if server == "hub" else "node", shown))
    if isinstance(peer, tuple):
        peer, role = peer
    if peer and role in tokens:
        headers = {"Authorization": f"Bearer {tokens[role]}"}
        row["api"] = peer_path = fill(peer, samples)[0]
        answer = api.get(peer_path, headers=headers)  # the warm-up
        if answer.status_code == 200:
            row["api_client"] = timed(lambda: api.get(peer_path, headers=headers), n)["client"]
        else:
            figures["not_measured"].append((server, f"API peer {peer_path} of {shown}",
                                            f"status {answer.status_code} for {role}"))
    figures["pages"].append(row)


def measure_counts(rita: Visitor, api: httpx.Client, api_token: str, sites: list[str], cohorts: dict[str, Any],
                   concept_id: str) -> list[dict[str, Any]]:
    """The live counts of the cohort page and the concept page, cold per site and warm (see the top)."""
    out: list[dict[str, Any]] = []
    auth = {"Authorization": f"Bearer {api_token}"}

    def count(label: str, how: str, call: Any) -> None:
        t0 = time.perf_counter()
        r = call()
        ms = 1000 * (time.perf_counter() - t0)
        if r.headers.get("content-type", "").startswith("application/json"):
            persons = [f"{a['site']}={a.get('persons')}" for a in r.json().get("sites", [])]
        else:  # the page's table of released counts
            table = re.search(r'id="(?:cohort|released)-counts".*?</table>', r.text, re.S)
            persons = ["=".join(m) for m in re.findall(r'<tr><th scope="row">([^<]+)</th><td class="num">([^<]*)</td>',
                                                       table.group(0) if table else "")]
        out.append({"what": label, "how": how, "status": r.status_code, "client": ms, "server": server_ms(r),
                    "persons": persons})

    def cohort_page(name: str, project: str) -> httpx.Response:
        text = json.dumps(cohorts[name]["definition"])
        return rita.post("/portal/cohorts", {"definition": text, "action": "count", "project": project})

    def concept_page(project: str) -> httpx.Response:
        return rita.post(f"/portal/concepts/{concept_id}/counts", {"project": project, "descendants": "1"})

    for name in ("sglt2", "gliclazide"):
        for s in sites:
            count(f"cohort {name}", f"cold, site {s} alone", lambda n=name, s=s: cohort_page(n, f"only-{s}"))
        count(f"cohort {name}", "warm, 3 sites", lambda n=name: cohort_page(n, PROJECT))
        count(f"cohort {name}", "API peer, warm, 3 sites", lambda n=name: api.post(
            "/api/v1/feasibility", json={"definition": cohorts[n]["definition"], "project": PROJECT}, headers=auth))
    for how in ("cold, 3 sites at once", "warm, 3 sites"):
        count("cohort hf_admission", how, lambda: cohort_page("hf_admission", PROJECT))
    label = f"concept {concept_id} + descendants"
    for s in sites:
        count(label, f"cold, site {s} alone", lambda s=s: concept_page(f"only-{s}"))
    count(label, "warm, 3 sites", lambda: concept_page(PROJECT))
    count(label, "API peer, warm, 3 sites", lambda: api.post(
        "/api/v1/concepts/count", json={"concept_id": int(concept_id), "descendants": True, "project": PROJECT},
        headers=auth))
    return out


def wait_for_package(urls: dict[str, str], nodes: dict[str, Any], content_hash: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for s, nd in nodes.items():
        while httpx.get(f"{urls[s]}/api/v1/studies/{content_hash}",
                        headers={"Authorization": f"Bearer {nd['custodian_token']}"}).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the package did not reach {s}")
            time.sleep(0.2)


def report(figures: dict[str, Any]) -> None:
    med = statistics.median
    print(f"{'server':<9} {'page (GET)':<50} {'user':<13} {'portal ms med/p95':>17} {'round trip med/p95':>18} "
          f"{'API ms':>7} {'page/API':>8}")
    worst_server = worst_client = 0.0
    for row in figures["pages"]:
        sv, cl = row["server"], row["client"]
        line = f"{row['at']:<9} {row['route']:<50} {row['user']:<13} "
        line += f"{med(sv):>7.1f} / {p95(sv):>7.1f} " if sv else f"{'-':>17} "
        line += f"{med(cl):>8.1f} / {p95(cl):>7.1f} "
        if "api_client" in row:
            line += f"{med(row['api_client']):>7.1f} {med(cl) / med(row['api_client']):>8.2f}"
        print(line)
        worst_server, worst_client = max(worst_server, p95(sv) if sv else 0.0), max(worst_client, p95(cl))
    for server, f in figures.get("floor", {}).items():
        print(f"floor    {server:<9} {FLOOR}: server {med(f['server']):.1f} ms, client {med(f['client']):.1f} ms "
              f"(median); slowest page's median / this: "
              f"{max(med(r['client']) for r in figures['pages'] if r['at'] == server) / med(f['client']):.1f}")
    for server, route, why in figures["not_measured"]:
        print(f"not measured: {server} {route}: {why}")
    if not figures["ran_study"]:
        print("(the demo study was submitted, not run: its report and results pages need --run-study)")
    print(f"pages: {len(figures['pages'])} measured; worst p95: in the portal (Server-Timing) {worst_server:.1f} ms, "
          f"round trip {worst_client:.1f} ms; target < 300 ms at the server: "
          f"{'met' if worst_server < 300 else 'NOT met'} (round trip: {'met' if worst_client < 300 else 'NOT met'})")
    print(f"{'count':<36} {'how':<28} {'status':>6} {'client s':>9} {'server s':>9}  persons shown")
    cold = []
    for c in figures["counts"]:
        at_server = f"{c['server'] / 1000:>9.2f}" if c["server"] is not None else f"{'-':>9}"
        print(f"{c['what']:<36} {c['how']:<28} {c['status']:>6} {c['client'] / 1000:>9.2f} {at_server}  "
              f"{' '.join(c['persons'])}")
        if c["how"].startswith("cold, site"):
            cold.append(c["client"] / 1000)
    if cold:
        print(f"live count per site, cold, one site at a time: median {med(cold):.2f} s, max {max(cold):.2f} s; "
              f"target < 2 s: {'met' if max(cold) < 2 else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, default=1_000_000, help="persons per generated site")
    ap.add_argument("--site", type=Path, help="a DuckDB site to copy three times instead of generating sites")
    ap.add_argument("--vocabulary", help="the hub's vocabulary (a DuckDB file or postgresql:// URL; default: a "
                                         "copy of a site)")
    ap.add_argument("--vocabulary-concepts", type=int, default=0, metavar="N",
                    help="add N generated concepts of the full OMOP vocabulary's shape to the hub's vocabulary "
                         "(Athena: about 6500000) and measure the concept pages a full vocabulary makes slow")
    ap.add_argument("--vocabulary-seed", type=int, default=SEED, help="the seed of the generated vocabulary")
    ap.add_argument("--n", type=int, default=20, help="times each page is asked")
    ap.add_argument("--run-study", action="store_true", help="approve and run the demo study so that its report "
                                                             "and results pages are measured too")
    args = ap.parse_args()
    if args.vocabulary_concepts and args.vocabulary:
        ap.error("--vocabulary-concepts: generates the hub's vocabulary; give it or --vocabulary, not both")
    if args.vocabulary_concepts < 0:
        ap.error(f"--vocabulary-concepts: a number of concepts, 0 or more (Athena: about 6500000), not "
                 f"{args.vocabulary_concepts}")
    if args.site is not None and not args.site.is_file():
        ap.error(f"--site: {args.site} is not a file (give a DuckDB site, e.g. one bench_cohorts.py made)")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    databases, vocabulary = sites(args.persons, args.site)
    if args.vocabulary:
        vocabulary = args.vocabulary if "://" in args.vocabulary else str(Path(args.vocabulary).resolve())
    print(f"sites: {', '.join(d.stem for d in databases)} ({args.site.name if args.site else args.persons})"
          f" ready in {time.perf_counter() - t0:.1f} s")
    landmarks = None
    if args.vocabulary_concepts:
        vocabulary, landmarks = generated_vocabulary(vocabulary, args.vocabulary_concepts, args.vocabulary_seed)
    figures = run(databases, vocabulary, args.n, args.run_study, landmarks)
    report(figures)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
