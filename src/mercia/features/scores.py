"""Comorbidity scores as concept-set definitions: Charlson (Romano adaptation) and CHA2DS2-VASc.

The concept lists are FeatureExtraction's (CharlsonIndex.sql, Chads2Vasc.sql): a category counts once
(its weight) when any condition record of its concepts starts on or before index. FeatureExtraction
reads condition_era; an era starts at its earliest occurrence, so "an era starting on or before
index" is "an occurrence starting on or before index", and condition_occurrence is used here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

CHARLSON_ANALYSIS_ID = 901
CHADS2VASC_ANALYSIS_ID = 904
FEMALE = 8532

# How a definition row's concept enters a category: itself, it and its descendants, or (subtracted)
# its descendants.
SELF, DESCENDANTS, EXCLUDE_DESCENDANTS = 0, 1, 2


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    weight: int
    concepts: tuple[tuple[int, int], ...]  # (concept_id, SELF | DESCENDANTS | EXCLUDE_DESCENDANTS)


@cache
def charlson_categories() -> tuple[Category, ...]:
    data = json.loads(resources.files("mercia.features").joinpath("data/charlson.json").read_text())
    return tuple(
        Category(c["id"], c["name"], c["weight"], tuple((i, DESCENDANTS) for i in c["concept_ids"]))
        for c in data["categories"]
    )


def _desc(ids: list[int]) -> tuple[tuple[int, int], ...]:
    return tuple((i, DESCENDANTS) for i in ids)


def _self(ids: list[int]) -> tuple[tuple[int, int], ...]:
    return tuple((i, SELF) for i in ids)


def _excl(ids: list[int]) -> tuple[tuple[int, int], ...]:
    return tuple((i, EXCLUDE_DESCENDANTS) for i in ids)


_VASCULAR = [312327, 43020432, 314962, 312939, 315288, 317309, 134380, 196438, 200138, 194393, 319047,
             40486130, 317003, 4313767, 321596]

# Age (65-74: 1, 75+: 2) and female sex (1) are added from the person table, as FeatureExtraction's
# category 3.
CHADS2VASC: tuple[Category, ...] = (
    Category(1, "Congestive heart failure", 1, _self([316139, 314378, 318773, 321319]) + _desc([316139, 314378])),
    Category(2, "Hypertension", 1, _desc([320128, 442604, 201313]) + _excl([197930])),
    Category(4, "Diabetes", 1, _desc([201820, 442793]) + _excl([195771, 376112, 4174977, 4058243, 193323, 376979])),
    Category(5, "Stroke", 2, _desc([4043731, 4110192, 375557, 4108356, 373503, 434656, 433505, 376714, 312337])),
    Category(6, "Vascular disease", 1, _self([*_VASCULAR, 321887, 437312, 134057]) + _desc(_VASCULAR)),
)


def chads2vasc_age_sex(age: int, gender_concept_id: int) -> int:
    return (2 if age >= 75 else 1 if age >= 65 else 0) + (1 if gender_concept_id == FEMALE else 0)


def definition_rows(categories: tuple[Category, ...]) -> list[list[int]]:
    """(category, weight, concept_id, mode) rows for a VALUES table."""
    return [[c.id, c.weight, cid, mode] for c in categories for cid, mode in c.concepts]
