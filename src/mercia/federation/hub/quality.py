"""Data quality across the network: each site's released data-quality summary, side by side.

The hub asks every site of a project at once for its stored, released summary (`GET /quality` at the
node, node/quality.py) and lays them side by side: per site the day of its run, its pass rate overall
and per category, its failed checks, and its records per month per domain. Every number is one a site
released; the hub only rearranges them (nothing is summed across sites: a site's summary is its own).
"""

from __future__ import annotations

from typing import Any

from mercia.federation.hub.federated import _ask_each
from mercia.federation.hub.registry import HubStore

__all__ = ["quality_across", "site_status"]


def _rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    cols = table["columns"]
    return [dict(zip(cols, r, strict=True)) for r in table["rows"]]


def site_status(answer: dict[str, Any]) -> dict[str, Any]:
    """One site's status in a line: its run's day, pass rate and failed checks, or why there is none."""
    if "error" in answer:
        return {"site": answer["site"], "run_date": None, "pass_rate": None, "failed_checks": None,
                "error": answer["error"]}
    o = answer["overview"]["overall"]
    return {"site": answer["site"], "run_date": answer["run_date"], "pass_rate": o["pass_rate"],
            "failed_checks": o["failed"], "error": None}


def quality_across(store: HubStore, sites: list[str], project: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """Every site's released summary (`summaries`, as the node sent it) and the side-by-side view:
    `sites` (status and pass rate per category), `failed` (each site's failed checks) and `trends`
    (records per month per domain, by site)."""
    answers = _ask_each(store, sites, timeout, lambda link: link.quality(project))
    side, failed, trends = [], [], []
    for a in answers:
        row = site_status(a)
        if a.get("error") is None:
            ov = a["overview"]
            row.update(cdm_version=a["cdm_version"], policy=a["policy"], checks=ov["overall"]["checks"],
                       passed=ov["overall"]["passed"], not_applicable=ov["overall"]["not_applicable"],
                       errors=ov["overall"]["errors"],
                       **{f"pass_rate_{c.lower()}": v["pass_rate"] for c, v in ov.items() if c != "overall"})
            for r in _rows(a["checks"]) + _rows(a["concept_checks"]):
                if r["status"] == "fail":
                    failed.append({"site": a["site"], **{k: r[k] for k in (
                        "checkName", "category", "cdmTableName", "cdmFieldName", "conceptId", "numViolatedRows",
                        "numDenominatorRows", "pctViolatedRows")}, "conceptName": r.get("conceptName", "")})
            trends += [{"site": a["site"], **r} for r in _rows(a["trends"])]
        side.append(row)
    return {"project": project, "sites": side, "failed": failed, "trends": trends,
            "summaries": {a["site"]: a for a in answers if a.get("error") is None}}
