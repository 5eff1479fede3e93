"""The hub's calls to one node over HTTP(S), with its errors sorted into 'try again' and 'no'.

NodeUnavailable: the node did not answer, timed out, answered 5xx or asked us to slow down (429):
the dispatcher retries with back-off. NodeRefused: the node answered and said no (4xx: bad package,
signature, permissions, a refused regression round): retrying would not change the answer.
"""

from __future__ import annotations

from typing import Any

import httpx

from mercia.errors import MerciaError
from mercia.federation.hub.registry import Node

API = "/api/v1"


class NodeUnavailable(MerciaError):
    status_code = 502


class NodeRefused(MerciaError):
    status_code = 502

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _detail(r: httpx.Response) -> str:
    try:
        d = r.json().get("detail")
    except Exception:  # not JSON: a proxy's page, say
        d = None
    return str(d) if d else r.reason_phrase


class NodeLink:
    def __init__(self, node: Node, *, timeout: float = 30.0) -> None:
        self.node = node
        self.client = httpx.Client(base_url=node.url, timeout=timeout, verify=node.httpx_verify(),
                                   headers={"Authorization": f"Bearer {node.token}"})

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> NodeLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, json: Any = None, ok: tuple[int, ...] = (200, 202)) -> Any:
        try:
            r = self.client.request(method, API + path, json=json)
        except httpx.HTTPError as e:
            raise NodeUnavailable(f"node {self.node.name!r} did not answer ({type(e).__name__})") from None
        if r.status_code in ok:
            return r.json()
        if r.status_code >= 500 or r.status_code == 429:
            raise NodeUnavailable(f"node {self.node.name!r} answered {r.status_code}: {_detail(r)}")
        raise NodeRefused(f"node {self.node.name!r} refused ({r.status_code}): {_detail(r)}", r.status_code)

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/studies", body)

    def status(self, content_hash: str) -> dict[str, Any]:
        return self._call("GET", f"/studies/{content_hash}")

    def results(self, content_hash: str) -> dict[str, Any]:
        return self._call("GET", f"/studies/{content_hash}/results")

    def round(self, content_hash: str, analysis: str, model: str, beta: list[float]) -> dict[str, Any]:
        return self._call("POST", f"/studies/{content_hash}/rounds",
                          {"analysis": analysis, "model": model, "beta": beta})

    def feasibility(self, definition: dict[str, Any], project: str, requested_by: str,
                    attestation: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call("POST", "/feasibility", {"definition": definition, "project": project,
                                                   "requested_by": requested_by, "attestation": attestation})

    def trial_feasibility(self, definition: dict[str, Any], history_months: int, project: str, requested_by: str,
                          attestation: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call("POST", "/trials/feasibility", {
            "definition": definition, "history_months": history_months, "project": project,
            "requested_by": requested_by, "attestation": attestation})

    def concept_count(self, concept_id: int, descendants: bool, project: str, requested_by: str,
                      attestation: dict[str, Any] | None = None, records: bool = False) -> dict[str, Any]:
        body = {"concept_id": concept_id, "descendants": descendants, "project": project,
                "requested_by": requested_by, "attestation": attestation}
        if records:  # only then: a node that predates records is asked exactly what it was
            body["records"] = True
        return self._call("POST", "/concepts/count", body)

    def quality(self, project: str) -> dict[str, Any]:
        try:
            r = self.client.get(API + "/quality", params={"project": project})
        except httpx.HTTPError as e:
            raise NodeUnavailable(f"node {self.node.name!r} did not answer ({type(e).__name__})") from None
        if r.status_code == 200:
            return r.json()
        if r.status_code >= 500 or r.status_code == 429:
            raise NodeUnavailable(f"node {self.node.name!r} answered {r.status_code}: {_detail(r)}")
        raise NodeRefused(f"node {self.node.name!r} refused ({r.status_code}): {_detail(r)}", r.status_code)
