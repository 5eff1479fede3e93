"""A ClinicalTrials.gov study record (API v2 JSON, read from a local file): the fields eligibility needs.

The record's shape (``protocolSection`` with ``identificationModule``, ``eligibilityModule``,
``conditionsModule``, ``armsInterventionsModule``) is the one ``/api/v2/studies/NCT...`` returns. A file
that is not such a record is one clear error; nothing is fetched at run time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mercia.errors import MerciaError


class RegistryRecordError(MerciaError):
    """A file is not a ClinicalTrials.gov study record, or one of its fields is malformed."""


@dataclass(frozen=True)
class Intervention:
    type: str  # DRUG, DEVICE, PROCEDURE, BIOLOGICAL, ...
    name: str


@dataclass(frozen=True)
class StudyRecord:
    nct_id: str
    title: str
    brief_title: str
    conditions: tuple[str, ...]
    keywords: tuple[str, ...]
    interventions: tuple[Intervention, ...]
    eligibility_text: str
    sex: str  # ALL, FEMALE, MALE
    minimum_age_years: float | None
    maximum_age_years: float | None
    minimum_age: str | None  # as written ("18 Years")
    maximum_age: str | None
    healthy_volunteers: bool | None


_NOT_A_STUDY = ("is not a ClinicalTrials.gov study record (API v2 JSON with protocolSection."
                "identificationModule.nctId and protocolSection.eligibilityModule)")
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(years?|months?|weeks?|days?|hours?|minutes?)\s*$", re.I)
_PER_YEAR = {"year": 1.0, "month": 12.0, "week": 52.1775, "day": 365.25, "hour": 8766.0, "minute": 525960.0}


def _age(v: Any, field: str) -> float | None:
    if v in (None, "", "N/A"):
        return None
    m = _AGE.match(str(v))
    if not m:
        raise RegistryRecordError(f"{field}: {v!r} is not an age such as '18 Years' or '6 Months'")
    return float(m.group(1)) / _PER_YEAR[m.group(2).lower().rstrip("s")]


def _dig(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _strings(v: Any, field: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise RegistryRecordError(f"{field}: expected a list of text")
    return tuple(v)


def parse_record(data: Any, source: str = "the record") -> StudyRecord:
    """The eligibility fields of a parsed API v2 study record."""
    ps = _dig(data, "protocolSection")
    nct = _dig(ps, "identificationModule", "nctId")
    elig = _dig(ps, "eligibilityModule")
    if not isinstance(ps, dict) or not isinstance(nct, str) or not isinstance(elig, dict):
        if isinstance(data, dict) and isinstance(data.get("studies"), list):
            raise RegistryRecordError(f"{source} is a list of studies (a search result); save one study "
                                      "(/api/v2/studies/NCT...) and import that")
        raise RegistryRecordError(f"{source} {_NOT_A_STUDY}")
    ident = ps["identificationModule"]
    title = ident.get("officialTitle") or ident.get("briefTitle") or nct
    text = elig.get("eligibilityCriteria") or ""
    if not isinstance(text, str):
        raise RegistryRecordError("protocolSection.eligibilityModule.eligibilityCriteria: expected text")
    sex = str(elig.get("sex") or "ALL").upper()
    if sex not in ("ALL", "FEMALE", "MALE"):
        raise RegistryRecordError(f"protocolSection.eligibilityModule.sex: {elig.get('sex')!r} is not allowed "
                                  "(allowed: ALL, FEMALE, MALE)")
    hv = elig.get("healthyVolunteers")
    interventions = []
    for i, x in enumerate(_dig(ps, "armsInterventionsModule", "interventions") or []):
        if not isinstance(x, dict) or not isinstance(x.get("name"), str):
            raise RegistryRecordError(f"protocolSection.armsInterventionsModule.interventions[{i}]: "
                                      "expected {type:, name:}")
        interventions.append(Intervention(str(x.get("type") or "OTHER"), x["name"]))
    cond = _dig(ps, "conditionsModule") or {}
    return StudyRecord(
        nct_id=nct, title=str(title), brief_title=str(ident.get("briefTitle") or title),
        conditions=_strings(cond.get("conditions"), "protocolSection.conditionsModule.conditions"),
        keywords=_strings(cond.get("keywords"), "protocolSection.conditionsModule.keywords"),
        interventions=tuple(interventions), eligibility_text=text, sex=sex,
        minimum_age_years=_age(elig.get("minimumAge"), "protocolSection.eligibilityModule.minimumAge"),
        maximum_age_years=_age(elig.get("maximumAge"), "protocolSection.eligibilityModule.maximumAge"),
        minimum_age=elig.get("minimumAge"), maximum_age=elig.get("maximumAge"),
        healthy_volunteers=hv if isinstance(hv, bool) else None,
    )


def read_record(path: str | Path) -> StudyRecord:
    """Read a study record from a local JSON file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryRecordError(f"study record {str(p)!r} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RegistryRecordError(f"cannot read study record {str(p)!r}: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RegistryRecordError(f"{p.name} is not JSON (line {e.lineno} column {e.colno}: {e.msg}); "
                                  "save the study as ClinicalTrials.gov's API v2 JSON") from None
    return parse_record(data, p.name)
