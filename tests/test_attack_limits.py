"""Issue 12, item 7: requests that crashed a node or the hub ("Internal Server Error") now get a 4xx
naming the field, and leave nothing behind: no study row, no audit entry for the refused action.

Over real HTTP on 127.0.0.1 (a hub and one node, started by the test): an age range of ±1e12, a window
of ±10**12 days, an exit 2**31 days after entry, ATLAS inclusion-rule groups nested 200 deep, a lone
UTF-16 surrogate in a name, NaN and 2**70 in a request, a body over the size limit. The limits are
mercia.limits'; the schemathesis test (test_federation_schemathesis.py) fuzzes the rest of the API.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from cohort_strategies import hostile_definitions
from federation_support import PROJECT, Federation, make_site, small_study, submit_body
from mercia.federation.audit import read_records
from mercia.limits import MAX_BODY_BYTES, MAX_DAYS, MAX_GROUP_DEPTH
from mercia.study import StudyPackage

pytestmark = pytest.mark.slow  # a hub and a node over HTTP

API = "/api/v1"

# Hypertension entries: a definition the site's data answers, to which each attack adds one thing.
BASE: dict[str, Any] = {"name": "hypertension", "concepts": {"ht": {"conditions": ["hypertension"]}},
                        "entry": [{"condition": "ht"}]}


def with_(**extra: Any) -> dict[str, Any]:
    return {**copy.deepcopy(BASE), **extra}


def atlas_nested(depth: int) -> dict[str, Any]:
    """BASE in the model's form with one ATLAS inclusion rule whose groups nest `depth` deep."""
    from mercia.cohorts import dsl

    d = dsl.from_dict(BASE).to_dict()
    crit = {"Criteria": {"ConditionOccurrence": {"CodesetId": 0}},
            "StartWindow": {"Start": {"Days": 365, "Coeff": -1}, "End": {"Days": 0, "Coeff": 1}},
            "Occurrence": {"Type": 2, "Count": 1}}
    group: dict[str, Any] = {"Type": "ALL", "CriteriaList": [crit], "Groups": []}
    for _ in range(depth - 1):
        group = {"Type": "ALL", "CriteriaList": [], "Groups": [group]}
    d["expression"]["inclusion_rules"] = [{"name": "deep", "expression": group}]
    return d


# (name, definition, what the error must name)
BAD_DEFINITIONS: list[tuple[str, dict[str, Any], str]] = [
    ("age range of ±1e12", with_(entry=[{"condition": "ht", "age": {"min": -1e12, "max": 1e12}}]), "age"),
    ("window of ±10**12 days",
     with_(inclusion_rules=[{"require": {"condition": "ht", "between": [-10**12, 10**12]}}]), "between"),
    ("exit 2**31 days after entry", with_(exit={"after": {"days": 2**31}}), "exit.after"),
    ("prior observation of 2**31 days", with_(observation={"prior_days": 2**31}), "observation"),
    ("ATLAS groups nested 200 deep", atlas_nested(200), "Groups[0]"),
    (f"ATLAS groups nested {MAX_GROUP_DEPTH + 1} deep", atlas_nested(MAX_GROUP_DEPTH + 1), "InclusionRules[0]"),
    ("a lone surrogate in the name", with_(name="hyper\ud800tension"), "name"),
    ("a lone surrogate in a concept set key",
     with_(concepts={"h\udfffx": {"conditions": ["hypertension"]}}, entry=[{"condition": "h\udfffx"}]), "concepts"),
    ("a concept id of 2**70", with_(concepts={"ht": {"include": [2**70]}}), "include[0]"),
    ("NaN as an age", with_(entry=[{"condition": "ht", "age": {"min": float("nan")}}]), "age"),
    ("a name of 100,000 characters", atlas_nested(1) | {"name": "x" * 100_000}, "name"),
]


def post(url: str, token: str, path: str, body: Any) -> httpx.Response:
    # json.dumps writes NaN and lone surrogates as JSON's NaN and \ud800 escapes, as an attacker would.
    return httpx.post(url + path, content=json.dumps(body), timeout=120,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def audit(state_dir: Any) -> list[dict[str, Any]]:
    return list(read_records(state_dir / "audit.jsonl"))


def actions(records: list[dict[str, Any]]) -> list[str]:
    """What the service did (not the HTTP request lines, which log every request, refused ones too)."""
    return [r["event"] for r in records if r["event"] != "request"]


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("limits")
    site = make_site(root / "a.duckdb", persons=3000, seed=21)
    with Federation(root, {"a": site}, node_config={"count_limits": {"per_window": 10_000}}) as federation:
        yield federation


def test_the_base_definition_is_answered(fed):
    """The attacks below differ from this request by one element: it is what makes them refused."""
    node = fed.nodes["a"]
    r = post(node.url, node.tokens["researcher"], f"{API}/feasibility", {"definition": BASE, "project": PROJECT})
    assert r.status_code == 200, r.text
    r = post(fed.hub.url, fed.researcher_token, f"{API}/feasibility", {"definition": BASE, "project": PROJECT})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("what", "definition", "field"), BAD_DEFINITIONS, ids=[c[0] for c in BAD_DEFINITIONS])
def test_a_definition_past_a_limit_is_a_4xx_naming_the_field(fed, what, definition, field):
    node = fed.nodes["a"]
    for url, token, state in ((node.url, node.tokens["researcher"], node.state_dir),
                              (fed.hub.url, fed.researcher_token, fed.hub.state_dir)):
        before = actions(audit(state))
        r = post(url, token, f"{API}/feasibility", {"definition": definition, "project": PROJECT})
        assert r.status_code in (400, 422), (what, url, r.status_code, r.text[:500])
        detail = r.json()["detail"]
        assert field in detail, (what, detail[:500])
        assert len(detail) < 2000, (what, len(detail))  # named, not echoed
        # Nothing released, nothing asked of the nodes, nothing recorded as done.
        assert actions(audit(state)) == before, (what, actions(audit(state))[len(before):])


def study_with(definition: dict[str, Any]) -> dict[str, Any]:
    canonical = small_study("limits study").canonical()
    canonical["cohorts"]["hf_admission"]["definition"] = definition
    canonical.pop("format")
    return canonical


@pytest.mark.parametrize(("what", "definition", "field"), [
    c for c in BAD_DEFINITIONS if c[0] in ("exit 2**31 days after entry", "ATLAS groups nested 200 deep",
                                           "a lone surrogate in the name", "a concept id of 2**70")
], ids=lambda c: c if isinstance(c, str) else "")
def test_a_study_past_a_limit_is_refused_and_nothing_is_stored(fed, what, definition, field):
    """At the hub (researcher) and at the node (the hub's own call): a 4xx, no study row, no audit entry."""
    refused_and_nothing_stored(fed, what, study_with(definition), field)


def with_settings(**where: Any) -> dict[str, Any]:
    """The small study with settings changed: a Cox covariate window, and an incidence analysis added."""
    canonical = small_study("limits study").canonical()
    canonical.pop("format")
    if "window_start" in where:
        canonical["analyses"][1]["settings"]["covariates"][0]["window_start"] = where["window_start"]
    if "washout_days" in where:
        canonical["analyses"].append({"type": "incidence", "outcome": "hf_admission",
                                      "settings": {"washout_days": where["washout_days"]}})
    return canonical


BAD_SETTINGS = [
    ("a covariate window starting 2**40 days before index", with_settings(window_start=-(2**40)),
     "analyses[1].settings.covariates[0].window_start"),
    ("a washout of 2**31 days", with_settings(washout_days=2**31), "analyses[2].settings.washout_days"),
]


@pytest.mark.parametrize(("what", "package", "field"), BAD_SETTINGS, ids=[c[0] for c in BAD_SETTINGS])
def test_a_study_with_a_setting_past_a_limit_is_refused_and_nothing_is_stored(fed, what, package, field):
    """Analysis settings are bounded like cohort definitions: at the hub and at the node, a 4xx naming the
    field as the package writes it, no study row, no audit entry."""
    refused_and_nothing_stored(fed, what, package, field)


def refused_and_nothing_stored(fed: Federation, what: str, package: dict[str, Any], field: str) -> None:
    with fed.hub.client(fed.hub.admin_token) as admin:
        studies = admin.studies()
    before = actions(audit(fed.hub.state_dir))
    r = post(fed.hub.url, fed.researcher_token, f"{API}/studies", {"package": package, "project": PROJECT})
    assert r.status_code in (400, 422), (what, r.status_code, r.text[:500])
    assert field in r.json()["detail"], r.text[:500]
    assert actions(audit(fed.hub.state_dir)) == before
    with fed.hub.client(fed.hub.admin_token) as admin:
        assert admin.studies() == studies

    node = fed.nodes["a"]
    with node.client("admin") as c:
        studies = c.get(f"{API}/studies").json()["studies"]
    before = actions(audit(node.state_dir))
    body = {"package": package, "hash": "0" * 64, "signature": "x", "project": PROJECT, "requested_by": "alice"}
    r = post(node.url, node.tokens["hub"], f"{API}/studies", body)
    assert r.status_code in (400, 422), (what, r.status_code, r.text[:500])
    assert field in r.json()["detail"], r.text[:500]
    assert actions(audit(node.state_dir)) == before
    with node.client("admin") as c:
        assert c.get(f"{API}/studies").json()["studies"] == studies


def test_numbers_no_model_can_take_are_refused_in_any_request(fed):
    """NaN, infinity and integers past 64 bits anywhere in a body: 422 naming where, before any route runs."""
    node = fed.nodes["a"]
    for beta in ([float("nan")], [float("inf")], [2**70]):
        r = post(node.url, node.tokens["hub"], f"{API}/studies/{'0' * 64}/rounds",
                 {"analysis": "cox_adjusted", "model": "cox", "beta": beta})
        assert r.status_code == 422, (beta, r.status_code, r.text)
        assert "beta[0]" in r.json()["detail"]
    r = post(fed.hub.url, fed.hub.admin_token, f"{API}/users",
             {"name": "bob\ud800", "role": "researcher", "projects": [PROJECT]})
    assert r.status_code == 422 and "name" in r.json()["detail"], r.text


def test_a_body_over_the_size_limit_is_413_before_it_is_read(fed):
    node = fed.nodes["a"]
    big = {"definition": with_(description="x" * (MAX_BODY_BYTES + 10)), "project": PROJECT}
    for url, token in ((node.url, node.tokens["researcher"]), (fed.hub.url, fed.researcher_token)):
        r = post(url, token, f"{API}/feasibility", big)
        assert r.status_code == 413, (url, r.status_code)
        assert str(MAX_BODY_BYTES) in r.json()["detail"]

        # Without a Content-Length (chunked), too: the service stops reading at the limit.
        def chunks() -> Iterator[bytes]:
            for _ in range(MAX_BODY_BYTES // 2**20 + 2):
                yield b" " * 2**20
        r = httpx.post(url + f"{API}/feasibility", content=chunks(), timeout=120,
                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        assert r.status_code == 413, (url, r.status_code)


def test_limits_leave_real_definitions_alone(fed):
    """Bounds sit past what real cohorts use: 99,999-day windows (ATLAS's "any time") and 20 nested groups."""
    node = fed.nodes["a"]
    ok = [with_(inclusion_rules=[{"require": {"condition": "ht", "between": [-MAX_DAYS, 0]}}]),
          with_(exit={"after": {"days": MAX_DAYS}}),
          atlas_nested(MAX_GROUP_DEPTH)]
    for d in ok:
        r = post(node.url, node.tokens["researcher"], f"{API}/feasibility", {"definition": d, "project": PROJECT})
        assert r.status_code == 200, r.text[:500]
    # Settings at their bounds are taken: a covariate window from 99,999 days before index, a washout as long.
    ok_settings = with_settings(window_start=-MAX_DAYS, washout_days=MAX_DAYS) | {"name": "limits settings ok"}
    r = post(node.url, node.tokens["hub"], f"{API}/studies",
             submit_body(StudyPackage.from_dict(ok_settings), fed.hub.key))
    assert r.status_code == 202, r.text[:500]
    # And a real study package goes through the node's checks unchanged.
    pkg = small_study("limits ok study")
    r = post(node.url, node.tokens["hub"], f"{API}/studies", submit_body(pkg, fed.hub.key))
    assert r.status_code == 202, r.text[:500]


# ---- generated: hostile values anywhere in valid ATLAS definitions --------------------------------
@pytest.fixture(scope="module")
def world_cdm() -> Iterator[Any]:
    from cohort_strategies import load_world
    from mercia.cdm import Cdm

    cdm = load_world(Cdm.open())
    yield cdm
    cdm.close()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(definition=hostile_definitions())
def test_hostile_definitions_are_errors_never_crashes(world_cdm, definition):
    """The node's feasibility path (read the definition, compile it, count it): whatever the values,
    the only exception is a MerciaError (a 4xx at the node), never anything that would be a 500."""
    from mercia.cohorts.loader import definition_from_data
    from mercia.disclosure import BUILTIN_POLICIES
    from mercia.errors import MerciaError
    from mercia.federation.node.feasibility import feasibility_count
    from mercia.federation.node.privacy_budget import FeasibilityPrivacy

    try:
        parsed = definition_from_data(definition)
        feasibility_count(world_cdm, parsed, BUILTIN_POLICIES["opensafely"], site="w", privacy=FeasibilityPrivacy(),
                          noise_key=b"k" * 32, label="fuzzed")
    except MerciaError:
        pass
