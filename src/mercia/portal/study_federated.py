"""The study page's federated regression: fit a model exactly across the sites that finished the study.

    POST /portal/studies/{hash}/federated     analysis (a federated analysis of the study's package) and
                                              model (cox, logistic, poisson): the fit, shown on the study page
    view = federated_view(services, principal, content_hash)   # the form's choices and the fits made so far

The fit is `HubServices.federated_fit`, the method the API's POST /api/v1/studies/{hash}/federated calls:
the same role (researcher or admin) and project checks (a study of another project is 404), the same
`federated.fit` audit line, and the same answer, which the hub keeps with the study's results. The page
shows only values of that answer (each site's released score and information, combined at the hub): a
model no site releases, or that does not converge, is the one fixed `model_refused` line, as in the API.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures.

import math
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from mercia.errors import MerciaError, StudyError
from mercia.federation.auth import Principal
from mercia.portal.study_report import is_number, show
from mercia.portal.web import PortalWeb, one

Hash = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="the package's content hash")]

# The models the API accepts (FederatedQuery.model), in the words a researcher reads.
MODELS = {"cox": "Cox (hazard ratios)", "logistic": "logistic (odds ratios)", "poisson": "Poisson (rate ratios)"}
MODEL_WORDS = {"cox": "Cox proportional hazards, stratified by site", "logistic": "logistic regression of the event",
               "poisson": "Poisson regression of events with person-time"}
# The fit's summary columns, as headers (the ratio's columns: hr, or, rr and their _lower, _upper).
HEADERS = {"term": "Term", "coef": "Coefficient (log)", "se": "SE", "z": "z", "p": "p", "ci_lower": "Lower 95%",
           "ci_upper": "Upper 95%"}


def header(column: str) -> str:
    if column in HEADERS:
        return HEADERS[column]
    ratio, _, bound = column.partition("_")
    return f"{ratio.upper()} {bound}".strip() if ratio in ("hr", "or", "rr") else column


def cell(column: str, value: Any) -> tuple[str, bool]:
    """A fitted value as the page prints it (p below 0.0001 as a bound, as reports print it)."""
    if column == "p" and is_number(value) and math.isfinite(value) and value < 0.0001:
        return "< 0.0001", True
    return show(value), is_number(value)


def fit_view(fit: dict[str, Any]) -> dict[str, Any]:
    """One fit (the API's answer) as the page shows it: its summary table and its counts."""
    columns = list(fit["summary"]["columns"])
    return {"analysis": fit["analysis"], "model": fit["model"],
            "model_words": MODEL_WORDS.get(fit["model"], fit["model"]), "headers": [header(c) for c in columns],
            "rows": [[cell(c, v) for c, v in zip(columns, row, strict=True)] for row in fit["summary"]["rows"]],
            "sites": list(fit["sites"]), "left_out": dict(fit.get("left_out") or {}), "n": show(fit.get("n")),
            "n_events": show(fit.get("n_events")), "iterations": show(fit.get("iterations")),
            "id": f"fit-{fit['analysis']}-{fit['model']}"}


def federated_view(services: Any, principal: Principal, content_hash: str, **sent: str) -> dict[str, Any]:
    """The form's choices (the study's federated analyses, the models) and the fits the hub keeps."""
    analyses = services.federated_analyses(principal, content_hash)
    return {"analyses": analyses, "models": MODELS, "fits": [fit_view(f) for f in services.federated(content_hash)],
            "sent": sent}


def read_choice(fields: dict[str, list[str]], analyses: list[str]) -> tuple[str, str]:
    """(analysis, model) from the form, or a StudyError naming the field and what it allows."""
    analysis, model = one(fields, "analysis").strip(), one(fields, "model").strip()
    if not analyses:
        raise StudyError("analysis: this study has no analysis that federated regression can fit (a Cox "
                         "analysis keeps its model's rows at each site)")
    if analysis not in analyses:
        raise StudyError(f"analysis: {analysis[:100]!r} is not allowed (allowed: {', '.join(analyses)})")
    if model not in MODELS:
        raise StudyError(f"model: {model[:100]!r} is not allowed (allowed: {', '.join(MODELS)})")
    return analysis, model


def add_federated_pages(app: FastAPI, web: PortalWeb, services: Any, study_page: Any) -> None:
    """The federated regression route; `study_page(request, session, principal, hash, status_code, **extra)`
    renders the study page (study_pages.py) with the form and the fits."""

    @app.post("/studies/{content_hash}/federated", response_class=HTMLResponse)
    async def federated_post(request: Request, content_hash: Hash) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, "researcher", "admin")
        analyses = services.federated_analyses(principal, content_hash)  # 404 outside the caller's projects
        sent = {"analysis": one(fields, "analysis")[:100], "model": one(fields, "model")[:20]}
        try:
            analysis, model = read_choice(fields, analyses)
        except StudyError as e:
            return study_page(request, session, principal, content_hash, status_code=400,
                              message=f"The model was not fitted: {e}", fed_sent=sent)
        try:
            fit = await run_in_threadpool(services.federated_fit, principal, content_hash, analysis, model)
        except MerciaError as e:
            # No finished site, a site lost mid-fit (409), or the one model_refused answer (422): a line on
            # the page with the API's own status and text.
            return study_page(request, session, principal, content_hash, status_code=getattr(e, "status_code", 400),
                              message=f"The model was not fitted: {e}", fed_sent=sent)
        left = f"; left out: {', '.join(fit['left_out'])}" if fit["left_out"] else ""
        return study_page(request, session, principal, content_hash, fed_sent=sent,
                          notice=f"Fitted {analysis} as a {model} model across {', '.join(fit['sites'])}{left}.")
