"""`mercia.Client`: a researcher's Python handle on a hub.

    client = mercia.Client("https://hub.example.org", token="mct_...")
    study = client.submit("study.yaml", project="diabetes", sites=["leeds", "york"])
    client.wait(study["hash"])                # until every site has answered (or the timeout)
    res = client.results(study["hash"])       # pooled meta-analyses and each site's released tables
    fit = client.federated(study["hash"], "cox_adjusted", "cox")   # exact federated Cox
    client.feasibility({"name": ..., "concepts": ..., "entry": ...}, project="diabetes")
    client.concept_count(201826, project="diabetes")       # each site's released persons with a concept
    client.quality("diabetes")                # the sites' released data-quality summaries side by side

Errors the hub reports (4xx) raise ClientError with the hub's message; the HTTP status is `.status`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from mercia.errors import MerciaError

API = "/api/v1"


class ClientError(MerciaError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, url: str, token: str, *, timeout: float = 120.0, verify: Any = True) -> None:
        if not url.startswith(("http://", "https://")):
            raise ClientError(f"hub URL {url!r}: give http(s)://host:port")
        if not token:
            raise ClientError("no token: ask the hub's admin for one (mercia hub user-add)")
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, verify=verify,
                                  headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, json: Any = None, *, raw: bool = False) -> Any:
        try:
            r = self._http.request(method, API + path, json=json)
        except httpx.HTTPError as e:
            raise ClientError(f"the hub at {self.url} did not answer ({type(e).__name__}: {e})") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail")
            except Exception:  # not JSON
                detail = r.text[:300]
            raise ClientError(f"hub answered {r.status_code}: {detail}", r.status_code)
        return r.text if raw else r.json()

    # ---- studies ------------------------------------------------------------------------------------
    def submit(self, package: Any, *, project: str, sites: list[str] | None = None) -> dict[str, Any]:
        """Send a package (a StudyPackage, a path to one, or its dict) to the project's sites."""
        from mercia.study.package import StudyPackage, load_package

        if isinstance(package, str | Path):
            package = load_package(package)
        data = package.canonical() if isinstance(package, StudyPackage) else package
        return self._call("POST", "/studies", {"package": data, "project": project, "sites": sites})

    def studies(self) -> list[dict[str, Any]]:
        return self._call("GET", "/studies")

    def status(self, content_hash: str) -> dict[str, Any]:
        return self._call("GET", f"/studies/{content_hash}")

    def wait(self, content_hash: str, *, timeout: float = 600.0, poll: float = 0.5,
             close_after_timeout: bool = False) -> dict[str, Any]:
        """Poll until the study is closed. After `timeout`: close it with the sites that answered if
        `close_after_timeout`, else raise ClientError."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.status(content_hash)
            if s["status"] == "closed":
                return s
            if time.monotonic() > deadline:
                if close_after_timeout:
                    return self.close_study(content_hash)
                waiting = [f"{x['site']}: {x['status']}" for x in s["sites"]]
                raise ClientError(f"study {content_hash[:12]} still open after {timeout:g} s ({', '.join(waiting)})")
            time.sleep(poll)

    def close_study(self, content_hash: str) -> dict[str, Any]:
        """Finish with the sites that have answered; the rest are excluded."""
        return self._call("POST", f"/studies/{content_hash}/close")

    def results(self, content_hash: str) -> dict[str, Any]:
        return self._call("GET", f"/studies/{content_hash}/results")

    def report(self, content_hash: str) -> str:
        return self._call("GET", f"/studies/{content_hash}/report", raw=True)

    def federated(self, content_hash: str, analysis: str, model: str = "cox") -> dict[str, Any]:
        return self._call("POST", f"/studies/{content_hash}/federated", {"analysis": analysis, "model": model})

    def feasibility(self, definition: dict[str, Any], *, project: str, sites: list[str] | None = None
                    ) -> dict[str, Any]:
        return self._call("POST", "/feasibility", {"definition": definition, "project": project, "sites": sites})

    def trial_feasibility(self, definition: dict[str, Any], *, project: str, sites: list[str] | None = None,
                          history_months: int = 36, not_applied: list[str] | None = None,
                          target: int | None = None, consent: float | None = None) -> dict[str, Any]:
        """A trial's released feasibility at each site and in total (`{"trial", "eligible", "funnel",
        "what_if", "breakdowns", "monthly", "recruitment", "not_applied", "sites": [...]}`); with `target`
        and `consent`, the months to recruit `target` persons, per site and pooled. Each distinct trial
        question costs your privacy budget at each site."""
        return self._call("POST", "/trials/feasibility", {
            "definition": definition, "project": project, "sites": sites, "history_months": history_months,
            "not_applied": list(not_applied or []), "target": target, "consent": consent})

    def concept_count(self, concept_id: int, *, project: str, descendants: bool = True,
                      sites: list[str] | None = None, records: bool = False) -> dict[str, Any]:
        """Each site's released number of persons with a record of the concept (and, with `descendants`,
        of any descendant): `{"concept_id", "descendants", "sites": [{"site", "persons", "privacy",
        "disclosure", "error"}]}`; `persons` is None where suppressed or where the site refused (then
        `error` says why, e.g. your privacy budget there is spent). Each distinct question costs your
        privacy budget at each site, as feasibility counts do. With `records`, each site's answer also has
        `records` (the concept's records, at most `records_per_person_counted` per person; a second
        question, charged on its own)."""
        body: dict[str, Any] = {"concept_id": concept_id, "descendants": descendants, "project": project,
                                "sites": sites}
        if records:
            body["records"] = True
        return self._call("POST", "/concepts/count", body)

    def quality(self, project: str) -> dict[str, Any]:
        """The project's sites' released data-quality summaries side by side: `{"project", "sites": [{"site",
        "run_date", "pass_rate", "pass_rate_<category>", "failed_checks", ..., "error"}], "failed": [...],
        "trends": [{"site", "domain", "month", "records"}], "summaries": {site: the node's summary}}`."""
        from urllib.parse import quote

        return self._call("GET", f"/quality?project={quote(project, safe='')}")

    # ---- administration (admin tokens) --------------------------------------------------------------
    def add_node(self, name: str, url: str, token: str, verify: str | None = None) -> dict[str, Any]:
        return self._call("POST", "/nodes", {"name": name, "url": url, "token": token, "verify": verify})

    def add_project(self, name: str, sites: list[str]) -> dict[str, Any]:
        return self._call("POST", "/projects", {"name": name, "sites": sites})

    def add_user(self, name: str, role: str, projects: list[str]) -> dict[str, Any]:
        return self._call("POST", "/users", {"name": name, "role": role, "projects": projects})
