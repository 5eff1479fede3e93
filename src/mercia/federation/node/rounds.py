"""Federated regression rounds at the node: the design rows a study built, kept at the site, and the
score/information summary at the hub's current coefficients, released like any result.

Approving a package that holds a Cox analysis approves regression rounds on that analysis's rows:
the node keeps the per-person rows (treatment, age, sex, covariates, time, event) that the Cox
analysis used, in its own state folder (they never leave), and answers three models on them (which
analyses have such rows, and how they are built, is their type's federated form: `federated`,
`regression_rows`, `regression_ties` in `mercia.study.kinds`):

  cox       the Cox model itself (each site its own stratum)
  logistic  event during follow-up ~ intercept + the same terms
  poisson   events ~ intercept + terms, offset log(follow-up days): the exponential survival model;
            rows with no follow-up time (0 days) carry no person-time and are left out

Every answer is `summary_table()` passed through `release()` with the study's policy, after the
site's minimum-count guard; a blocked answer is a refusal (the hub leaves the site out).

Before any summary is computed, the model's rows are checked level by level
(`mercia.disclosure.model_support`): events and non-events overall, and persons, events and
non-events in each level of every 0/1 term. The rows are fixed when the study finishes, so this
check gives the same answer at every round, the first included: a model resting on a small level
never sends a single round. Every refusal (that check, the minimum-count guard, release() blocking)
is the same `ModelRefused` (HTTP 422, one fixed message): which rule refused, and any count behind
it, could tell one person's outcome. The answer carries the released (rounded) counts only.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mercia.analyses.survival import CoxData
from mercia.cdm import Cdm
from mercia.cohorts.registry import study_cohorts
from mercia.disclosure import DisclosureLog, DisclosurePolicy, release
from mercia.disclosure.model_support import ModelRefused, is_supported, support_count
from mercia.errors import MerciaError
from mercia.federation.glm import SiteRefusedError, SiteSummary, cox_summary, glm_site_summary, summary_table
from mercia.study.package import StudyPackage

Model = Literal["cox", "logistic", "poisson"]
MODELS: tuple[str, ...] = ("cox", "logistic", "poisson")


class RoundError(MerciaError):
    """A regression round that cannot be answered (unknown analysis, wrong beta length, ...)."""


def cox_analyses(pkg: StudyPackage) -> list[Any]:
    """The analyses whose rows a node keeps for regression rounds (those of a type with a federated form)."""
    return [a for a in pkg.analyses if a.federated]


def _path(folder: Path, analysis: str) -> Path:
    return folder / f"{analysis}.npz"


def save_design(cdm: Cdm, pkg: StudyPackage, folder: Path) -> list[str]:
    """Build and keep the rows of every Cox analysis of `pkg` (its cohorts are generated in `cdm`)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = pkg.cohort_ids
    saved = []
    for a in cox_analyses(pkg):
        with study_cohorts(cdm, pkg):
            data = a.regression_rows(cdm, ids)
        fd, tmp = tempfile.mkstemp(prefix=".design-", suffix=".npz", dir=folder)
        os.close(fd)
        np.savez(tmp, X=data.X, time=data.time, event=data.event, terms=np.array(data.terms))
        os.replace(tmp, _path(folder, a.table_prefix()))
        saved.append(a.table_prefix())
    return saved


def has_designs(pkg: StudyPackage, folder: Path) -> bool:
    return all(_path(folder, a.table_prefix()).is_file() for a in cox_analyses(pkg))


@dataclass
class Design:
    data: CoxData
    ties: Literal["efron", "breslow"]

    def terms(self, model: Model) -> list[str]:
        return list(self.data.terms) if model == "cox" else ["intercept", *self.data.terms]


def load_design(pkg: StudyPackage, folder: Path, analysis: str) -> Design:
    by_name = {a.table_prefix(): a for a in cox_analyses(pkg)}
    if analysis not in by_name:
        raise RoundError(
            f"analysis {analysis!r} is not a Cox analysis of this study; regression rounds run on "
            f"{sorted(by_name) or 'none (the study has no Cox analysis)'}"
        )
    path = _path(folder, analysis)
    if not path.is_file():
        raise RoundError(f"the rows of analysis {analysis!r} are not built yet; wait until the study is finished")
    with np.load(path) as z:
        data = CoxData(X=z["X"], time=z["time"], event=z["event"], terms=[str(t) for t in z["terms"]])
    return Design(data, by_name[analysis].regression_ties())


def model_rows(design: Design, model: str) -> tuple[np.ndarray, np.ndarray]:
    """The terms (no intercept) and outcome of the rows `model` is fitted on."""
    d = design.data
    if model == "poisson":
        keep = d.time > 0
        return d.X[keep], d.event[keep]
    return d.X, d.event


def check_support(design: Design, model: str, policy: DisclosurePolicy) -> int:
    """Refuse (ModelRefused) a model whose rows have a small level or too few residual dof; else
    return its `support_count`. Depends on the rows only, never on beta: the first round is checked."""
    if model not in MODELS:
        raise RoundError(f"unknown model {model!r}; use one of {', '.join(MODELS)}")
    X, event = model_rows(design, model)
    n_terms = len(design.terms(model))  # type: ignore[arg-type]
    support = support_count(X, event)
    if not is_supported(support, policy.suppress_up_to) or len(event) - n_terms < policy.min_model_dof:
        raise ModelRefused()
    return support


def check_beta(design: Design, model: str, beta: list[float]) -> np.ndarray:
    """The hub's coefficients, checked against the model's terms (a sender's error: 400)."""
    if model not in MODELS:
        raise RoundError(f"unknown model {model!r}; use one of {', '.join(MODELS)}")
    terms = design.terms(model)  # type: ignore[arg-type]
    b = np.asarray(beta, dtype=float)
    if b.ndim != 1 or b.shape[0] != len(terms) or not np.isfinite(b).all():
        raise RoundError(f"beta: give {len(terms)} finite numbers, one per term ({', '.join(terms)})")
    return b


def site_summary(design: Design, model: str, beta: list[float], *, site: str, min_count: int) -> SiteSummary:
    b = check_beta(design, model, beta)
    d = design.data
    if model == "cox":
        return cox_summary(d, b, design.ties, site=site, min_count=min_count)
    X = np.hstack([np.ones((d.n_obs, 1)), d.X])
    if model == "logistic":
        return glm_site_summary(X, d.event, b, "binomial", site=site, min_count=min_count)
    keep = d.time > 0
    return glm_site_summary(X[keep], d.event[keep], b, "poisson", offset=np.log(d.time[keep]), site=site,
                            min_count=min_count)


def released_round(design: Design, model: str, beta: list[float], policy: DisclosurePolicy, *,
                   site: str, min_count: int) -> dict[str, Any]:
    """The summary at `beta`, through release(): what the node answers (or ModelRefused)."""
    check_beta(design, model, beta)  # the request's own errors first: they say nothing about the rows
    support = check_support(design, model, policy)
    try:
        summary = site_summary(design, model, beta, site=site, min_count=min_count)
    except SiteRefusedError:
        raise ModelRefused() from None
    log = DisclosureLog()
    table = release(summary_table(summary, name=f"round_{model}", min_level_count=support), policy, site=site,
                    log=log)
    info_cols = [f"info_{j}" for j in range(len(table.data))]
    numbers = table.data[["beta", "score", "loglik", *info_cols]].to_numpy(dtype=float)
    # Extreme coefficients (an overshooting Newton step, or a hostile beta) overflow the score or the
    # information: not a number JSON can carry, and not one to release. The one refusal, as for a model
    # that does not converge.
    if table.status == "blocked" or not np.isfinite(numbers).all():
        raise ModelRefused()
    # The released numbers with every digit (ReleasedTable.to_dict goes through pandas' JSON, which
    # keeps 10 decimals): the hub checks beta against what it sent, and the fit must equal pooled data.
    data = table.data
    return {
        "site": site,
        "model": model,
        "terms": design.terms(model),
        "beta": [float(v) for v in data["beta"]],
        "score": [float(v) for v in data["score"]],
        "information": [[float(v) for v in data[f"info_{j}"]] for j in range(len(data))],
        "loglik": float(data["loglik"].iloc[0]),
        # released counts (rounded by the policy); non-events are not sent: the node has checked them
        "n": int((table.model_info or {}).get("n_obs") or 0),
        "n_events": int((table.model_info or {}).get("n_events") or 0),
        "policy": table.policy.model_dump(mode="json"),
    }
