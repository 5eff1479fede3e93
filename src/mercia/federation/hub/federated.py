"""What the hub asks of several nodes at once: exact federated regression, feasibility and concept counts.

Federated regression: the Cox analysis named in an approved, finished study fixes the rows at each
site; the hub runs Newton-Raphson (mercia.federation.glm) with a round function that asks every
node, in parallel, for its released score and information at the current coefficients. A site that
refuses at the start (too few rows or events, blocked by its policy) is left out, and the answer says so.

A node's refusal of a model (HTTP 422, `model_support.MODEL_REFUSED`) is relayed as that fixed text
and nothing else; when no site is left, or the fit does not converge (separation, a singular
information matrix), the researcher gets the same `ModelRefused`: the answer must not tell whether a
site refused or the fit diverged, nor how far the coefficients went, since either can turn on one
person's outcome.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mercia.disclosure.model_support import MODEL_REFUSED, MODEL_REFUSED_STATUS, ModelRefused
from mercia.errors import MerciaError
from mercia.federation.attestation import attest, concept_question, trial_question
from mercia.federation.glm import (
    ConvergenceError,
    SiteRefusedError,
    SiteSummary,
    federated_cox,
    federated_glm,
)
from mercia.federation.hub.node_link import NodeLink, NodeRefused, NodeUnavailable
from mercia.federation.hub.registry import HubStore, NotFoundError
from mercia.study.package import StudyPackage


class FederatedError(MerciaError):
    status_code = 409


def model_terms(pkg: StudyPackage, analysis: str, model: str) -> list[str]:
    """The design's terms as the nodes build them (see node/rounds.py)."""
    federated = [a for a in pkg.analyses if a.federated]
    found = [a for a in federated if a.table_prefix() == analysis]
    if not found:
        names = [a.table_prefix() for a in federated]
        raise NotFoundError(f"study has no Cox analysis named {analysis!r}; its Cox analyses: {names or 'none'}")
    terms = found[0].regression_terms()
    return terms if model == "cox" else ["intercept", *terms]


def _summary(answer: dict[str, Any]) -> SiteSummary:
    return SiteSummary(beta=np.asarray(answer["beta"], dtype=float), score=np.asarray(answer["score"], dtype=float),
                       information=np.asarray(answer["information"], dtype=float), loglik=float(answer["loglik"]),
                       n=int(answer["n"]), n_events=int(answer["n_events"]), site=answer["site"])


def _model_refused(e: Exception) -> bool:
    """The node's answer that it does not release this model (its text is fixed, not relayed)."""
    return isinstance(e, NodeRefused) and e.status == MODEL_REFUSED_STATUS


def federated_fit(store: HubStore, content_hash: str, analysis: str, model: str, *, timeout: float = 60.0,
                  sites: list[str] | None = None) -> dict[str, Any]:
    study = store.study(content_hash)
    pkg = StudyPackage.from_canonical(json.loads(study["package"]))
    terms = model_terms(pkg, analysis, model)
    available = sorted(store.results(content_hash))
    chosen = [s for s in available if sites is None or s in sites]
    if not chosen:
        raise FederatedError("no site has finished this study yet; regression rounds need finished sites")
    links = {s: NodeLink(store.node(s), timeout=timeout) for s in chosen}
    left_out: dict[str, str] = {}
    try:
        with ThreadPoolExecutor(max_workers=len(links)) as pool:

            def ask(beta: np.ndarray, names: list[str]) -> dict[str, Any]:
                futures = {s: pool.submit(links[s].round, content_hash, analysis, model, beta.tolist()) for s in names}
                out: dict[str, Any] = {}
                for s, f in futures.items():
                    try:
                        out[s] = f.result()
                    except (NodeRefused, NodeUnavailable) as e:
                        out[s] = e
                return out

            first = ask(np.zeros(len(terms)), chosen)
            refused = {s for s, a in first.items() if _model_refused(a)}
            for s, a in first.items():
                if isinstance(a, Exception):
                    left_out[s] = MODEL_REFUSED if s in refused else str(a)
            used = [s for s in chosen if s not in left_out]
            if not used:
                if refused == set(left_out):
                    raise ModelRefused()
                raise FederatedError("no site answered the regression round: " + "; ".join(
                    f"{s}: {m}" for s, m in left_out.items()))

            def round_fn(beta: np.ndarray) -> list[SiteSummary]:
                answers = ask(beta, used)
                failed = {s: a for s, a in answers.items() if isinstance(a, Exception)}
                if any(_model_refused(a) for a in failed.values()):
                    raise ModelRefused()
                if failed:
                    # A site lost mid-fit cannot be dropped quietly: the sums would change under Newton.
                    raise FederatedError("a site stopped answering during the fit: " + "; ".join(
                        f"{s}: {e}" for s, e in failed.items()) + "; try again")
                return [_summary(answers[s]) for s in used]

            try:
                if model == "cox":
                    fit = federated_cox(round_fn, len(terms), terms=terms)
                else:
                    fit = federated_glm(round_fn, len(terms), "binomial" if model == "logistic" else "poisson",
                                        terms=terms)
            except (ConvergenceError, SiteRefusedError):
                # no convergence, or a site below the minimum at the hub's check: the one answer
                raise ModelRefused() from None
    finally:
        for link in links.values():
            link.close()
    table = fit.summary()
    return {
        "analysis": analysis,
        "model": model,
        "sites": used,
        "left_out": left_out,
        "terms": list(fit.terms),
        "coef": fit.coef.tolist(),
        "se": fit.se.tolist(),
        "covariance": fit.covariance.tolist(),
        "summary": {"columns": list(table.columns), "rows": table.to_numpy().tolist()},
        "loglik": fit.loglik,
        "n": fit.n,
        "n_events": fit.n_events,
        "iterations": fit.iterations,
        "converged": fit.converged,
    }


def _ask_each(store: HubStore, sites: list[str], timeout: float, question: Any) -> list[dict[str, Any]]:
    """`question(link)` at every site at once; a site that refuses or does not answer gives its error."""
    nodes = [store.node(s) for s in sites]

    def ask(node: Any) -> Any:
        with NodeLink(node, timeout=timeout) as link:
            try:
                return question(link)
            except (NodeRefused, NodeUnavailable) as e:
                return {"site": node.name, "error": str(e)}

    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        return list(pool.map(ask, nodes))


def feasibility_across(store: HubStore, sites: list[str], definition: dict[str, Any], project: str, *,
                       requested_by: str, signing_key: str | Path, timeout: float = 30.0) -> dict[str, Any]:
    """Ask every site at once; the total counts only the sites that released a number.

    `requested_by` is the researcher the hub authenticated (never a name from the request): the hub signs
    that it asks for them, and each node charges that researcher's privacy budget."""
    signed = attest(signing_key, requested_by, project, definition)
    answers = _ask_each(store, sites, timeout,
                        lambda link: link.feasibility(definition, project, requested_by, attestation=signed))
    released = [a for a in answers if a.get("persons") is not None]
    return {
        "sites": answers,
        "persons": sum(a["persons"] for a in released),
        "entries": sum(a["entries"] for a in released if a.get("entries") is not None),
        "counted_sites": [a["site"] for a in released],
        "not_counted": sorted(a["site"] for a in answers if a.get("persons") is None),
    }


def concept_count_across(store: HubStore, sites: list[str], concept_id: int, descendants: bool, project: str, *,
                         requested_by: str, signing_key: str | Path, timeout: float = 30.0,
                         records: bool = False) -> dict[str, Any]:
    """Each site's released persons count of a concept, asked for the researcher the hub authenticated
    (attested as for feasibility counts, so each node charges that researcher's privacy budget). Per
    site only, with no sum: it is for looking a concept up; feasibility counts size a cohort. With
    `records`, each site also releases the concept's records, capped per person (its own question)."""
    signed = attest(signing_key, requested_by, project, concept_question(concept_id, descendants, records))
    answers = _ask_each(store, sites, timeout, lambda link: link.concept_count(
        concept_id, descendants, project, requested_by, attestation=signed, records=records))
    return {"concept_id": int(concept_id), "descendants": bool(descendants), "records": bool(records),
            "sites": answers}


def trial_feasibility_across(store: HubStore, sites: list[str], definition: dict[str, Any], project: str, *,
                             requested_by: str, signing_key: str | Path, history_months: int = 36,
                             not_applied: list[str] | None = None, target: int | None = None,
                             consent: float | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Each site's released trial feasibility (asked at once, attested for the researcher the hub
    authenticated), the totals over the sites that released each number, and, from the released monthly
    counts only, the recruitment model and projection per site and pooled (trials/recruitment.py)."""
    from mercia.trials.recruitment import pooled_months, projection

    signed = attest(signing_key, requested_by, project, trial_question(definition, history_months))
    answers = _ask_each(store, sites, timeout, lambda link: link.trial_feasibility(
        definition, history_months, project, requested_by, attestation=signed))
    ok = [a for a in answers if "error" not in a]

    def total(values: list[int | None]) -> int:
        return sum(v for v in values if v is not None)

    names = [f["criterion"] for f in ok[0]["funnel"]] if ok else []
    funnel = [{"criterion": n, "remaining": total([a["funnel"][j]["remaining"] for a in ok])}
              for j, n in enumerate(names)]
    what_if = [{"criterion": n, "gained": total([a["what_if"][j]["gained"] for a in ok])} for j, n in enumerate(names)]
    breakdowns: dict[str, list[dict[str, Any]]] = {}
    for dim in ("age_band", "sex", "ethnicity"):
        levels: dict[str, int] = {}
        for a in ok:
            for cell in a["breakdowns"].get(dim, []):
                levels[cell["level"]] = levels.get(cell["level"], 0) + (cell["persons"] or 0)
        breakdowns[dim] = [{"level": lv, "persons": n} for lv, n in levels.items()]
    for a in ok:
        a["recruitment"] = projection(a["monthly"], target, consent)
    pooled = pooled_months([a["monthly"] for a in ok])
    return {
        "trial": ok[0]["trial"] if ok else None,
        "sites": answers,
        "eligible": total([a["eligible"] for a in ok]),
        "funnel": funnel,
        "what_if": what_if,
        "breakdowns": breakdowns,
        "monthly": pooled,
        "recruitment": projection(pooled, target, consent) if ok else None,
        "not_applied": list(not_applied or []),
        "counted_sites": [a["site"] for a in ok if a.get("eligible") is not None],
        "not_counted": sorted(a["site"] for a in answers if a.get("eligible") is None),
        "note": "totals add the numbers each site released; a suppressed number adds nothing",
    }
