"""Trial feasibility across sites (issue 15, item 3), over real HTTP on 127.0.0.1: a hub and two nodes.

The hub asks each node `POST /trials/feasibility` for the researcher it authenticated (with its signed
attestation), as it asks feasibility counts; each node answers with noised, released numbers and
charges that researcher 3 x epsilon_per_query. Checked here: each site's answer is the node's own
released answer; the totals add the released site numbers; the numbers are noised (not the exact
ones); a repeat costs nothing and the fourth distinct trial is refused for lack of budget while another
researcher is still answered; an unknown site, a researcher outside the project and a bad definition
are one clear 4xx line; the command line prints the same answer.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from federation_support import MERCIA, PROJECT, Federation, make_site
from mercia.cdm import Cdm
from mercia.trials.feasibility import count_trial
from mercia.trials.source import load_trial

pytestmark = pytest.mark.slow  # a hub and two nodes as processes

API = "/api/v1"
TRIAL = Path(__file__).parent / "data" / "trials" / "hypertension_t2d.yaml"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("hubtrials")
    sites = {"east": make_site(root / "east.duckdb", persons=3000, seed=1),
             "west": make_site(root / "west.duckdb", persons=3000, seed=12, first_person_id=5_000_001)}
    federation = Federation(root, sites)
    # The east site's data again, for exact counts beside the running node (which holds its file's lock).
    federation.east_copy = make_site(root / "east_copy.duckdb", persons=3000, seed=1)  # type: ignore[attr-defined]
    with federation:
        yield federation


def _researcher(fed: Federation, name: str, projects: list[str] | None = None) -> tuple[Any, str]:
    with fed.admin() as admin:
        token = admin.add_user(name, "researcher", projects or [PROJECT])["token"]
    return fed.hub.client(token), token


def _definition(age: int = 40) -> dict[str, Any]:
    d = load_trial(TRIAL).cohort.to_dict()
    d["expression"]["inclusion_rules"][0]["name"] = f"aged {age} or over"
    d["expression"]["inclusion_rules"][0]["expression"]["demographic_criteria_list"][0]["age"]["value"] = age
    return d


def test_each_site_answers_with_its_released_numbers_and_the_totals_add_them(fed: Federation) -> None:
    client, _ = _researcher(fed, "tina")
    with client:
        answer = client.trial_feasibility(_definition(), project=PROJECT, target=50, consent=0.5,
                                          not_applied=["willing to comply"])
    sites = {a["site"]: a for a in answer["sites"]}
    assert set(sites) == {"east", "west"} and all("error" not in a for a in sites.values())
    released = [a for a in sites.values()]
    assert answer["eligible"] == sum(a["eligible"] or 0 for a in released)
    for j, f in enumerate(answer["funnel"]):
        assert f["remaining"] == sum(a["funnel"][j]["remaining"] or 0 for a in released)
        assert answer["what_if"][j]["gained"] == sum(a["what_if"][j]["gained"] or 0 for a in released)
    assert answer["not_applied"] == ["willing to comply"]
    assert {"model"} <= set(answer["recruitment"]) or "error" in answer["recruitment"]
    for a in released:
        assert a["privacy"]["charged"] is True and a["privacy"]["spent"] == pytest.approx(0.3)
        assert a["policy"].startswith("opensafely")
        assert a["trial"] == load_trial(TRIAL).cohort.name
        # Released under the policy: every number a multiple of 5, or suppressed.
        numbers = [a["eligible"], *(f["remaining"] for f in a["funnel"]), *(w["gained"] for w in a["what_if"])]
        assert all(v is None or v % 5 == 0 for v in numbers)

    # The node's own answer to the same question (asked directly, with its researcher token): the same.
    node = fed.nodes["east"]
    with node.client("researcher") as http:
        r = http.post(f"{API}/trials/feasibility", json={"definition": _definition(), "project": PROJECT})
    assert r.status_code == 200, r.text
    direct = r.json()
    for key in ("eligible", "funnel", "what_if", "breakdowns", "monthly"):
        assert direct[key] == sites["east"][key]


def test_the_numbers_are_noised(fed: Federation) -> None:
    """With the noise removed, the funnel of 3 steps, 3 gains and the eligible would be the exact counts
    rounded to 5; with noise of sd ~28 per bucket at least one of them differs."""
    from mercia.disclosure.policy import round_count

    client, _ = _researcher(fed, "nora")
    with client:
        answer = client.trial_feasibility(_definition(45), project=PROJECT, sites=["east"])
    east = answer["sites"][0]
    trial = load_trial(TRIAL)
    definition = trial.cohort.from_dict(_definition(45))
    with Cdm.open(fed.east_copy, read_only=True) as cdm:  # type: ignore[attr-defined]
        exact = count_trial(cdm, definition)
    from mercia.cohorts.stats import inclusion_stats, remaining_after_rules

    gains = [s.gain_count for s in inclusion_stats(exact.masks, exact.rule_names)[0] if s.mode_id == 1]
    exact_numbers = [round_count(v, 5) for v in [exact.eligible, *remaining_after_rules(exact.masks, 1, 3), *gains]]
    released = [east["eligible"], *(f["remaining"] for f in east["funnel"]), *(w["gained"] for w in east["what_if"])]
    assert released != exact_numbers


def test_a_repeat_is_free_and_the_fourth_distinct_trial_is_refused(fed: Federation) -> None:
    client, _ = _researcher(fed, "rita")
    with client:
        first = client.trial_feasibility(_definition(50), project=PROJECT)
        again = client.trial_feasibility(_definition(50), project=PROJECT)
        assert [a["privacy"]["charged"] for a in again["sites"]] == [False, False]
        assert again["eligible"] == first["eligible"]
        client.trial_feasibility(_definition(51), project=PROJECT)
        client.trial_feasibility(_definition(52), project=PROJECT)  # 0.9 of 1.0 spent
        refused = client.trial_feasibility(_definition(53), project=PROJECT)
    assert all("privacy budget" in a["error"] for a in refused["sites"])
    assert refused["eligible"] == 0 and refused["not_counted"] == ["east", "west"]
    other, _ = _researcher(fed, "otto")
    with other:
        assert all("error" not in a for a in other.trial_feasibility(_definition(53), project=PROJECT)["sites"])


def test_unknown_site_outsider_and_bad_definition_are_one_clear_line(fed: Federation) -> None:
    _, token = _researcher(fed, "uma")
    with httpx.Client(base_url=fed.hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        r = http.post(f"{API}/trials/feasibility", json={"definition": _definition(), "project": PROJECT,
                                                         "sites": ["nowhere"]})
        assert r.status_code == 403
        assert r.json()["detail"] == "sites ['nowhere'] are not in project 'proj'"
        r = http.post(f"{API}/trials/feasibility", json={"definition": {"nonsense": 1}, "project": PROJECT})
        assert r.status_code == 422 and "\n" not in json.dumps(r.json()["detail"])
        r = http.post(f"{API}/trials/feasibility", json={"definition": _definition(), "project": PROJECT,
                                                         "target": 10, "consent": 2})
        assert r.status_code == 422
    _, outsider = _researcher(fed, "oscar", ["elsewhere"])
    with httpx.Client(base_url=fed.hub.url, headers={"Authorization": f"Bearer {outsider}"}, timeout=60) as http:
        r = http.post(f"{API}/trials/feasibility", json={"definition": _definition(), "project": PROJECT})
    assert r.status_code == 403


def test_a_hub_naming_a_researcher_without_attestation_is_refused(fed: Federation) -> None:
    node = fed.nodes["west"]
    with node.client("hub") as http:
        r = http.post(f"{API}/trials/feasibility", json={"definition": _definition(), "project": PROJECT,
                                                         "requested_by": "mallory"})
    assert r.status_code == 403 and "attestation" in r.json()["detail"]


def test_command_line_across_sites(fed: Federation, tmp_path: Path) -> None:
    _, token = _researcher(fed, "carl")
    env = {**os.environ, "MERCIA_TOKEN": token}
    report = tmp_path / "feas.html"
    r = subprocess.run([MERCIA, "trial", "feasibility", str(TRIAL), "--hub", fed.hub.url, "--project", PROJECT,
                        "--format", "json", "--report", str(report)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {s["site"] for s in out["sites"]} == {"east", "west"}
    text = report.read_text()
    assert "Funnel at east" in text and "Funnel at west" in text
    r = subprocess.run([MERCIA, "trial", "feasibility", str(TRIAL), "--hub", fed.hub.url, "--project", PROJECT,
                        "--site", "nowhere"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "not in project" in r.stderr
