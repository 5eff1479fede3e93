"""The hub portal's trial pages (issue 17, item 6): a trial unit checks a trial's feasibility at the sites.

    /portal/trials                  GET the form; POST a pasted or uploaded trial (action=check or ask)
    /portal/trials/answers/{id}     GET the sites' answer: eligible, funnel, what-if (?whatif=1&apply=j...),
                                    breakdowns, newly eligible per month, recruitment projection
    /portal/trials/answers/{id}/without   POST: ask the sites for the trial without the criteria toggled off

Every number comes from `HubServices.trial_feasibility`, the code path of the API's
POST /api/v1/trials/feasibility: the sites checked against the project, the count-query guard, each node
asked for the signed-in researcher (charged to their privacy budget there), the question audited. The
page shows the nodes' released numbers, the hub's sums of them and the recruitment model the hub fits
to the released monthly counts, nothing else. Toggling one criterion off shows the released what-if
(eligible plus the released gain of dropping it: no new question, nothing charged); toggling off more
than one needs a new question, asked only when the researcher presses the button.

An answer is kept in the hub's memory for its asker (the last few per user) so the what-if toggles can
show it again without asking the sites; another user, or the asker once out of the project, gets 404/403.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures.

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mercia.errors import MerciaError
from mercia.federation.auth import Principal, require_project
from mercia.portal.trial_forms import (
    HISTORY_MONTHS,
    MAX_TEXT,
    read_settings,
    read_trial_text,
    without_criteria,
)
from mercia.portal.web import PortalWeb, one, upload_or_text

ROLES = ("researcher", "admin")  # as the API's POST /trials/feasibility
DIMENSIONS = (("age_band", "Age band at first eligibility"), ("sex", "Sex"), ("ethnicity", "Ethnicity"))


@dataclass
class TrialAnswer:
    user: str
    project: str
    trial: str
    definition: dict[str, Any]
    criteria: list[str]
    answer: dict[str, Any]
    settings: dict[str, Any]
    asked_at: float


class TrialAnswers:
    """The last `per_user` answers of each user, in memory (a restart forgets them: ask again)."""

    def __init__(self, per_user: int = 20) -> None:
        self.per_user = per_user
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, TrialAnswer] = OrderedDict()

    def add(self, item: TrialAnswer) -> str:
        key = secrets.token_urlsafe(12)
        with self._lock:
            self._by_id[key] = item
            mine = [k for k, v in self._by_id.items() if v.user == item.user]
            for old in mine[:-self.per_user]:
                del self._by_id[old]
        return key

    def get(self, key: str, user: str) -> TrialAnswer:
        with self._lock:
            item = self._by_id.get(key)
        if item is None or item.user != user:
            raise HTTPException(404, detail="no such trial answer of yours here (answers are kept in the hub's "
                                            "memory for a while): ask the sites again from the trials page")
        return item


def answer_view(item: TrialAnswer, off: list[int]) -> dict[str, Any]:
    """The answer as the page's tables: each a list of rows (label, per-site values, total). Every value
    is a site's released number or the hub's total of them as the API answers it, or None (suppressed /
    not answered); the one derived number is the what-if's "eligible without criterion j", the released
    eligible plus the released gain of dropping j (per site, and the totals' likewise)."""
    a = item.answer
    ok = [s for s in a["sites"] if "error" not in s]
    sites = [s["site"] for s in ok]
    errors = [(s["site"], s["error"]) for s in a["sites"] if "error" in s]
    names = [f["criterion"] for f in a.get("funnel") or []]

    def row(label: str, values: list[Any], total: Any) -> dict[str, Any]:
        return {"label": label, "values": values, "total": total}

    # the hub's answer totals no initial events: that cell stays empty rather than show a sum of its own
    funnel = [row("Initial events (persons)", [s.get("initial") for s in ok], "")]
    funnel += [row(f"{j + 1}. {n}", [s["funnel"][j]["remaining"] for s in ok], a["funnel"][j]["remaining"])
               for j, n in enumerate(names)]
    funnel.append(row("Eligible", [s.get("eligible") for s in ok], a.get("eligible")))
    what_if = [row(f"{j + 1}. {n}", [s["what_if"][j]["gained"] for s in ok], a["what_if"][j]["gained"])
               for j, n in enumerate(names)]
    single = None
    if len(off) == 1:
        j = off[0]
        values = [None if s.get("eligible") is None or s["what_if"][j]["gained"] is None
                  else s["eligible"] + s["what_if"][j]["gained"] for s in ok]
        total = (None if a.get("eligible") is None or a["what_if"][j]["gained"] is None
                 else a["eligible"] + a["what_if"][j]["gained"])
        single = {"criterion": f"{j + 1}. {names[j]}", "row": row("Eligible without it", values, total)}
    breakdowns = []
    for dim, label in DIMENSIONS:
        levels: list[str] = []
        for s in ok:
            levels += [c["level"] for c in s["breakdowns"].get(dim, []) if c["level"] not in levels]
        per = [{c["level"]: c["persons"] for c in s["breakdowns"].get(dim, [])} for s in ok]
        totals = {c["level"]: c["persons"] for c in (a.get("breakdowns") or {}).get(dim, [])}
        breakdowns.append({"dim": dim, "label": label,
                           "rows": [row(lv, [p.get(lv) for p in per], totals.get(lv)) for lv in levels]})
    months = (a.get("monthly") or {}).get("months") or []
    monthly = [row(m, [(s["monthly"]["persons"][i] if s["monthly"]["months"] == months else None) for s in ok],
                   a["monthly"]["persons"][i]) for i, m in enumerate(months)]
    recruitment = [(s["site"], s.get("recruitment") or {}) for s in ok] + [("All sites", a.get("recruitment") or {})]
    # The noise each site put on its numbers (its mechanism's public parameters, not data): a breakdown's
    # cells get a ninth of the answer's epsilon, so a small cell can show persons where there are none.
    noise = {part: [(s["site"], (s.get("privacy") or {}).get(f"{part}_noise_sd")) for s in ok
                    if (s.get("privacy") or {}).get(f"{part}_noise_sd") is not None]
             for part in ("funnel_bucket", "breakdown_cell")}
    return {"noise": noise, "sites": sites, "errors": errors, "names": names, "funnel": funnel, "what_if": what_if,
            "single": single, "breakdowns": breakdowns, "monthly": monthly, "recruitment": recruitment,
            "eligible": a.get("eligible"), "counted": a.get("counted_sites") or [],
            "not_counted": a.get("not_counted") or [], "not_applied": a.get("not_applied") or []}


def add_trial_pages(app: FastAPI, web: PortalWeb, services: Any, my_projects: Any,
                    answers: TrialAnswers | None = None) -> TrialAnswers:
    """The trial routes on the hub portal's app; returns the store of recent answers."""
    store = answers or TrialAnswers()

    def form_page(request: Request, session: Any, *, status_code: int = 200, **extra: Any) -> Response:
        principal = web.with_role(session, *ROLES)
        return web.page(request, "trials.html", session, title="Trial feasibility", projects=my_projects(principal),
                        max_text=MAX_TEXT, history=HISTORY_MONTHS, status_code=status_code, **extra)

    def ask(principal: Principal, project: str, name: str, definition: dict[str, Any], criteria: list[str],
            not_applied: list[str], settings: dict[str, Any]) -> str:
        answer = services.trial_feasibility(principal, definition, project, history_months=settings["history_months"],
                                            not_applied=not_applied, target=settings["target"],
                                            consent=settings["consent"])
        return store.add(TrialAnswer(user=principal.name, project=project, trial=name, definition=definition,
                                     criteria=criteria, answer=answer, settings=settings, asked_at=time.time()))

    @app.get("/trials", response_class=HTMLResponse)
    def trials(request: Request) -> Response:
        return form_page(request, web.signed_in(request))

    @app.post("/trials", response_class=HTMLResponse)
    async def trials_post(request: Request) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal = web.with_role(session, *ROLES)
        keep = {k: one(fields, k) for k in ("history_months", "target", "consent")}
        project = one(fields, "project")
        try:
            text = upload_or_text(fields, "trial_file", "trial")
            trial = read_trial_text(text)
            settings = read_settings(fields)
        except MerciaError as e:
            return form_page(request, session, status_code=400, message=f"The trial cannot be read: {e}",
                             text=one(fields, "trial"), project=project, keep=keep)
        shown = trial.draft or text
        if one(fields, "action") != "ask" or trial.draft is not None:
            # a registry record is drafted first: its criteria are to review before anyone is asked
            return form_page(request, session, trial=trial, text=shown, project=project, keep=keep,
                             notice=("Drafted from the study record: review the criteria (only those with status "
                                     "mapped are applied), then ask the sites." if trial.draft else None))
        key = ask(principal, project, trial.name, trial.definition.to_dict(), trial.criteria,
                  list(trial.not_applied), settings.__dict__)
        return RedirectResponse(f"{web.prefix}/trials/answers/{key}", status_code=303)

    AnswerId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{8,40}$")]

    def visible(session: Any, key: str) -> tuple[Principal, TrialAnswer]:
        principal = web.with_role(session, *ROLES)
        item = store.get(key, principal.name)
        require_project(principal, item.project)  # as the API checks it on every question
        return principal, item

    @app.get("/trials/answers/{key}", response_class=HTMLResponse)
    def trial_answer(request: Request, key: AnswerId,
                     whatif: Annotated[str, Query(max_length=1)] = "",
                     apply: Annotated[list[str] | None, Query(max_length=200)] = None) -> Response:
        session = web.signed_in(request)
        _, item = visible(session, key)
        n = len(item.answer.get("funnel") or [])
        applied = set(range(n))
        if whatif:
            try:
                applied = {int(v) for v in apply or []}
            except ValueError:
                raise MerciaError("apply: each value is a criterion's number (0 to "
                                  f"{max(n - 1, 0)})") from None
            if not applied <= set(range(n)):
                raise MerciaError(f"apply: each value is a criterion's number (0 to {max(n - 1, 0)})")
        off = sorted(set(range(n)) - applied)
        return web.page(request, "trial_answer.html", session, title=f"Feasibility of {item.trial}", item=item,
                        key=key, v=answer_view(item, off), off=off, applied=applied)

    @app.post("/trials/answers/{key}/without", response_class=HTMLResponse)
    async def trial_without(request: Request, key: AnswerId) -> Response:
        session = web.signed_in(request)
        fields = await web.form(request, session)
        principal, item = visible(session, key)
        from mercia.cohorts.loader import definition_from_data

        try:
            drop = sorted({int(v) for v in fields.get("drop", [])})
        except ValueError:
            raise MerciaError("drop: each value is a criterion's number") from None
        if not drop:
            raise MerciaError("drop: toggle off at least one criterion")
        smaller = without_criteria(definition_from_data(item.definition), drop)
        kept = [c for j, c in enumerate(item.criteria) if j not in drop]
        name = f"{item.trial} without criteria {', '.join(str(j + 1) for j in drop)}"
        new = ask(principal, item.project, name, smaller.to_dict(), kept, item.answer.get("not_applied") or [],
                  item.settings)
        return RedirectResponse(f"{web.prefix}/trials/answers/{new}", status_code=303)

    return store
