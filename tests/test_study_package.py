"""Study packages: validation errors a user can make, and the content hash (no database needed)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from mercia.disclosure import OPENSAFELY, SACRO
from mercia.errors import StudyError
from mercia.study import StudyPackage, load_package

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "studies"

OUTCOME = {
    "name": "GI bleed",
    "concepts": {"gi": {"name": "GI bleeding", "conditions": ["gi_bleeding"]}},
    "entry": [{"condition": "gi"}],
}
EXPOSED = {
    "name": "Diclofenac users",
    "concepts": {"d": {"name": "Diclofenac", "ingredients": ["diclofenac"]}},
    "entry": [{"drug": "d", "first": True}],
}


def base() -> dict:
    return {
        "name": "test study",
        "cohorts": {"exposed": {"definition": EXPOSED}, "outcome": {"definition": OUTCOME}},
        "analyses": [
            {"type": "characterization", "cohorts": ["exposed"]},
            {"type": "incidence", "outcome": "outcome", "denominator": "exposed", "settings": {"washout_days": 30}},
            {"type": "kaplan_meier", "targets": ["exposed"], "outcome": "outcome"},
        ],
        "disclosure": "opensafely",
    }


def pkg(data: dict) -> StudyPackage:
    return StudyPackage.from_dict(data)


# ---- validation -------------------------------------------------------------------------------


def test_a_valid_package_assigns_ids_by_sorted_key() -> None:
    p = pkg(base())
    assert p.cohort_ids == {"exposed": 1, "outcome": 2}
    assert p.name == "test study" and len(p.analyses) == 3


def test_reference_to_an_undefined_cohort_is_refused() -> None:
    d = base()
    d["analyses"].append({"type": "cox", "target": "exposed", "comparator": "unexposed", "outcome": "outcome"})
    with pytest.raises(StudyError, match=r"refers to cohort\(s\) \['unexposed'\].*defined: \['exposed', 'outcome'\]"):
        pkg(d)


def test_unknown_analysis_type_is_refused() -> None:
    d = base()
    d["analyses"].append({"type": "regression", "cohorts": ["exposed"]})
    with pytest.raises(StudyError, match="unknown analysis type 'regression'; use one of characterization"):
        pkg(d)


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("top level", lambda d: d.update(analysis=[])),
        ("analysis", lambda d: d["analyses"][0].update(window=[1])),
        ("analysis settings", lambda d: d["analyses"][2].update(settings={"tar_ends": 30})),
        ("incidence settings", lambda d: d["analyses"][1]["settings"].update(washout=30)),
        ("cohort", lambda d: d["cohorts"]["exposed"].update(path="x.json")),
    ],
)
def test_unknown_settings_are_refused(where: str, change) -> None:
    d = base()
    change(d)
    with pytest.raises(StudyError, match=r"unknown setting|Extra inputs|extra"):
        pkg(d)


def test_bad_setting_values_name_the_place() -> None:
    d = base()
    d["analyses"][2]["settings"] = {"tar_start": -3}
    with pytest.raises(StudyError, match=r"analyses\[2\]\.settings\.tar_start: "):
        pkg(d)


def test_cohort_ids_belong_in_cohort_keys_not_settings() -> None:
    d = base()
    d["analyses"][1]["settings"]["outcome_cohort_id"] = 7
    with pytest.raises(StudyError, match="remove 'outcome_cohort_id'; name the cohort with `outcome:`"):
        pkg(d)


def test_duplicate_analysis_names_and_cohort_ids_are_refused() -> None:
    d = base()
    d["analyses"].append({"type": "characterization", "cohorts": ["outcome"]})
    with pytest.raises(StudyError, match="appear more than once"):
        pkg(d)
    d = base()
    d["cohorts"]["exposed"]["id"] = 4
    d["cohorts"]["outcome"]["id"] = 4
    with pytest.raises(StudyError, match="cohort ids repeat"):
        pkg(d)


def test_a_cohort_needs_exactly_one_source() -> None:
    d = base()
    d["cohorts"]["exposed"] = {"file": "a.yaml", "definition": EXPOSED}
    with pytest.raises(StudyError, match="exactly one of `file`"):
        pkg(d)


def test_a_bad_inline_cohort_names_the_cohort() -> None:
    d = base()
    d["cohorts"]["outcome"]["definition"] = {**OUTCOME, "entyr": []}
    with pytest.raises(StudyError, match="cohort 'outcome'"):
        pkg(d)


def test_cohort_files_are_relative_to_the_package(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "exposed.yaml").write_text(yaml.safe_dump(EXPOSED))
    d = base()
    d["cohorts"]["exposed"] = {"file": "c/exposed.yaml"}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(d))
    p = load_package(tmp_path / "study.yaml")
    assert p.definitions["exposed"].name == "Diclofenac users"
    assert p.content_hash == pkg(base()).content_hash  # a file or inline: the same package

    d["cohorts"]["exposed"] = {"file": "c/missing.yaml"}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(StudyError, match=r"cohort 'exposed'.*not found"):
        load_package(tmp_path / "study.yaml")
    d["cohorts"]["exposed"] = {"file": str(tmp_path / "c" / "exposed.yaml")}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(StudyError, match="relative to the package file"):
        load_package(tmp_path / "study.yaml")


def test_a_policy_weaker_than_the_site_minimum_is_refused() -> None:
    d = base()
    d["disclosure"] = {"name": "lenient", "threshold": 3, "rounding_base": 5}
    p = pkg(d)
    with pytest.raises(StudyError, match=r"weaker than this site's minimum 'opensafely': threshold 3 < 7"):
        p.effective_policy("opensafely")
    d["disclosure"] = "sacro"  # stricter in most settings, but it does not round to 5
    with pytest.raises(StudyError, match="rounding base 1 is not a multiple of 5"):
        pkg(d).effective_policy(OPENSAFELY)
    d["disclosure"] = "opensafely"
    with pytest.raises(StudyError, match="weaker than this site's minimum 'sacro'"):
        pkg(d).effective_policy("sacro")


def test_the_effective_policy() -> None:
    d = base()
    assert pkg(d).effective_policy("opensafely") == OPENSAFELY
    d["disclosure"] = {"name": "strict", "threshold": 10, "rounding_base": 10}
    assert pkg(d).effective_policy("opensafely").threshold == 10
    d["disclosure"] = None
    assert pkg(d).effective_policy("sacro") == SACRO  # no request: the site's own
    assert pkg(d).effective_policy(None) == OPENSAFELY  # neither: never less than OpenSAFELY's rules
    with pytest.raises(StudyError, match="unknown disclosure policy 'lax'"):
        pkg(d).effective_policy("lax")


def test_package_files_of_each_form(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(base()))
    (tmp_path / "s.py").write_text(f"STUDY = {base()!r}\n")
    (tmp_path / "s.txt").write_text("x")
    (tmp_path / "empty.yaml").write_text("")
    h = pkg(base()).content_hash
    assert load_package(tmp_path / "s.json").content_hash == h
    assert load_package(tmp_path / "s.py").content_hash == h
    with pytest.raises(StudyError, match=r"is a \.yaml, \.yml, \.json or \.py file"):
        load_package(tmp_path / "s.txt")
    with pytest.raises(StudyError, match="empty"):
        load_package(tmp_path / "empty.yaml")
    with pytest.raises(StudyError, match="not found"):
        load_package(tmp_path / "none.yaml")


def test_the_example_studies_load() -> None:
    for path in sorted(EXAMPLES.glob("*/study.yaml")):
        p = load_package(path)
        assert len(p.content_hash) == 64


# ---- content hash -----------------------------------------------------------------------------


def _reorder(obj):
    if isinstance(obj, dict):
        return {k: _reorder(obj[k]) for k in reversed(list(obj))}
    if isinstance(obj, list):
        return [_reorder(x) for x in obj]
    return obj


def test_hash_is_stable_under_key_order_whitespace_and_spelled_out_defaults(tmp_path: Path) -> None:
    h = pkg(base()).content_hash
    assert pkg(_reorder(base())).content_hash == h
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(base(), sort_keys=False, indent=8, width=40))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(_reorder(base()), default_flow_style=True))
    assert load_package(tmp_path / "a.yaml").content_hash == h
    assert load_package(tmp_path / "b.yaml").content_hash == h
    d = base()
    d["analyses"][1]["settings"]["repeated_events"] = False  # the default, spelled out
    d["analyses"][2]["settings"] = {"tar_start": 0}
    assert pkg(d).content_hash == h
    # The canonical form has no paths and rebuilds the same package.
    canon = pkg(base()).canonical()
    assert "file" not in json.dumps(canon)
    assert StudyPackage.from_canonical(canon).content_hash == h


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["analyses"][1]["settings"].update(washout_days=31),
        lambda d: d["analyses"][2].update(outcome="exposed"),
        lambda d: d["analyses"].reverse(),
        lambda d: d["cohorts"]["exposed"]["definition"]["entry"][0].update(first=False),
        lambda d: d["cohorts"]["exposed"].update(id=9),
        lambda d: d.update(disclosure="sacro"),
        lambda d: d.update(name="another study"),
        lambda d: d["analyses"][0].update(name="baseline"),
    ],
)
def test_any_semantic_change_changes_the_hash(change) -> None:
    d = copy.deepcopy(base())
    change(d)
    assert pkg(d).content_hash != pkg(base()).content_hash
