"""Table 1 and SMDs: SQL aggregates against pandas on the same rows; SMD formulas against numpy."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from mercia.analyses.characterization import (
    CharacterizationSettings,
    Window,
    characterize,
    compare_cohorts,
    smd_binary,
    smd_continuous,
)
from mercia.analyses.notes import Note, NoteCode
from mercia.disclosure import SACRO, DisclosureLog, release
from mercia.errors import StudyError
from test_analyses_support import FEMALE, MALE, load

D0 = dt.date(2012, 1, 1)
WINDOWS = [(-365, 0), (-30, 0), (None, 0), (-60, -10)]  # the last has another end: a second pass


def _d(n: int) -> dt.date:
    return D0 + dt.timedelta(days=int(n))


def world(seed: int = 3, n: int = 80) -> dict:
    rng = np.random.default_rng(seed)
    pid = np.arange(1, n + 1)
    persons = pd.DataFrame(
        {
            "person_id": pid,
            "gender_concept_id": rng.choice([MALE, FEMALE], n),
            "year_of_birth": rng.integers(1930, 2000, n),
        }
    )
    rows = []
    for p in pid:
        for cid in (1, 2):
            if rng.random() < 0.5:
                start = int(rng.integers(400, 1500))
                rows.append((cid, p, _d(start), _d(start + 10)))
                if rng.random() < 0.2:  # a later entry that first_entry_only ignores
                    rows.append((cid, p, _d(start + 100), _d(start + 110)))
    cohorts = pd.DataFrame(
        rows, columns=["cohort_definition_id", "subject_id", "cohort_start_date", "cohort_end_date"]
    )
    ops = pd.DataFrame(
        {"person_id": pid, "observation_period_start_date": D0, "observation_period_end_date": _d(2500)}
    )
    k = n * 12
    conditions = pd.DataFrame(
        {
            "person_id": rng.choice(pid, k),
            "condition_concept_id": rng.integers(200, 210, k),
            "condition_start_date": [_d(x) for x in rng.integers(0, 1600, k)],
        }
    )
    drugs = pd.DataFrame(
        {
            "person_id": rng.choice(pid, k),
            "drug_concept_id": rng.integers(500, 508, k),
            "drug_exposure_start_date": [_d(x) for x in rng.integers(0, 1600, k)],
        }
    )
    m = n * 8
    values = np.round(rng.normal(5, 3, m), 2)
    values[rng.random(m) < 0.1] = np.nan
    measurements = pd.DataFrame(
        {
            "person_id": rng.choice(pid, m),
            "measurement_concept_id": rng.integers(300, 303, m),
            "measurement_date": [_d(x) for x in rng.integers(0, 1600, m)],
            "value_as_number": values,
            "unit_concept_id": rng.choice([8000, 8001], m),
        }
    )
    # Drugs 500..507 roll up to ingredients 900..903; 950 is a class above them, not an ingredient.
    anc = [(900 + (d - 500) // 2, d) for d in range(500, 508)] + [(i, i) for i in range(900, 904)]
    anc += [(950, d) for d in range(500, 508)]
    ancestors = pd.DataFrame(anc, columns=["ancestor_concept_id", "descendant_concept_id"])
    concepts = pd.DataFrame(
        {
            "concept_id": [*range(900, 904), 950, *range(200, 210)],
            "concept_name": [
                *(f"ingredient {i}" for i in range(4)),
                "a drug class",
                *(f"cond {i}" for i in range(10)),
            ],
            "concept_class_id": ["Ingredient"] * 4 + ["ATC 4th"] + ["Clinical Finding"] * 10,
        }
    )
    return {
        "persons": persons,
        "observation_periods": ops,
        "cohorts": cohorts,
        "conditions": conditions,
        "drugs": drugs,
        "measurements": measurements,
        "ancestors": ancestors,
        "concepts": concepts,
    }


def settings() -> CharacterizationSettings:
    return CharacterizationSettings(
        windows=[Window(name=f"w{k}", start=s, end=e) for k, (s, e) in enumerate(WINDOWS)]
    )


def _index(w: dict) -> pd.DataFrame:
    c = w["cohorts"].sort_values("cohort_start_date")
    first = c.groupby(["cohort_definition_id", "subject_id"], as_index=False).first()
    return first.rename(
        columns={
            "cohort_definition_id": "cohort_id",
            "subject_id": "person_id",
            "cohort_start_date": "index_date",
        }
    )[["cohort_id", "person_id", "index_date"]]


def _in_window(df: pd.DataFrame, date_col: str, start: int | None, end: int) -> pd.Series:
    off = (pd.to_datetime(df[date_col]) - pd.to_datetime(df["index_date"])).dt.days
    return (off <= end) & ((off >= start) if start is not None else True)


def reference_binary(w: dict) -> dict[tuple[int, str, str, int], int]:
    idx = _index(w)
    recs = {
        "condition": w["conditions"].rename(
            columns={"condition_concept_id": "concept_id", "condition_start_date": "d"}
        ),
        "measurement": w["measurements"].rename(
            columns={"measurement_concept_id": "concept_id", "measurement_date": "d"}
        ),
    }
    anc = w["ancestors"][w["ancestors"]["ancestor_concept_id"].between(900, 903)]
    drugs = w["drugs"].merge(anc, left_on="drug_concept_id", right_on="descendant_concept_id")
    recs["drug"] = drugs.rename(
        columns={"ancestor_concept_id": "concept_id", "drug_exposure_start_date": "d"}
    )
    out = {}
    for domain, r in recs.items():
        j = idx.merge(r[["person_id", "concept_id", "d"]], on="person_id")
        for k, (s, e) in enumerate(WINDOWS):
            hit = j[_in_window(j, "d", s, e)]
            for (cid, concept), g in hit.groupby(["cohort_id", "concept_id"]):
                out[(int(cid), f"w{k}", domain, int(concept))] = g["person_id"].nunique()
    return out


def test_table1_equals_pandas(cdm_factory):
    w = world()
    cdm = load(cdm_factory(), **w)
    res = characterize(cdm, [1, 2], settings())
    cov = res["table1_covariates"].data
    got = {(int(r.cohort_id), r.window, r.domain, int(r.concept_id)): int(r.n) for r in cov.itertuples()}
    assert got == reference_binary(w)
    assert set(cov.loc[cov["domain"] == "drug", "concept_id"]) <= {900, 901, 902, 903}
    assert (cov.loc[cov["domain"] == "drug", "concept_name"].str.startswith("ingredient")).all()
    idx = _index(w)
    sizes = idx.groupby("cohort_id").size()
    np.testing.assert_allclose(cov["proportion"], cov["n"] / cov["cohort_id"].map(sizes))

    # Demographics
    persons = w["persons"].set_index("person_id")
    idx["age"] = [
        d.year - persons.loc[p, "year_of_birth"]
        for p, d in zip(idx["person_id"], idx["index_date"], strict=True)
    ]
    age = res["table1_age"].data.set_index("cohort_id")
    for cid, g in idx.groupby("cohort_id"):
        assert age.loc[cid, "n"] == len(g)
        assert abs(age.loc[cid, "age_mean"] - g["age"].mean()) < 1e-9
        assert abs(age.loc[cid, "age_sd"] - g["age"].std(ddof=1)) < 1e-9
        assert age.loc[cid, "top1"] == g["age"].max()
    demo = res["table1_demographics"].data
    sex = demo[(demo["variable"] == "sex") & (demo["cohort_id"] == 1)].set_index("level")["n"]
    g1 = persons.loc[idx.loc[idx["cohort_id"] == 1, "person_id"], "gender_concept_id"]
    assert sex.get("Male", 0) == int((g1 == MALE).sum()) and sex.get("Female", 0) == int((g1 == FEMALE).sum())
    groups = demo[(demo["variable"] == "age_group") & (demo["cohort_id"] == 2)].set_index("level")["n"]
    ref = (idx.loc[idx["cohort_id"] == 2, "age"] // 5).value_counts()
    assert {k: int(v) for k, v in groups.items()} == {f"{a * 5}-{a * 5 + 4}": int(v) for a, v in ref.items()}

    # Measurement values: the latest value in each window (ties by measurement_id, the later row).
    m = w["measurements"].copy()
    m["measurement_id"] = np.arange(1, len(m) + 1)
    j = idx.merge(m[m["value_as_number"].notna()], on="person_id")
    meas = res["table1_measurements"].data
    for k, (s, e) in enumerate(WINDOWS):
        hit = j[_in_window(j, "measurement_date", s, e)].sort_values(["measurement_date", "measurement_id"])
        latest = hit.groupby(["cohort_id", "person_id", "measurement_concept_id", "unit_concept_id"]).last()
        agg = latest.groupby(["cohort_id", "measurement_concept_id", "unit_concept_id"])[
            "value_as_number"
        ].agg(["size", "mean", "std"])
        mine = meas[meas["window"] == f"w{k}"].set_index(["cohort_id", "concept_id", "unit_concept_id"])
        assert len(mine) == len(agg)
        np.testing.assert_array_equal(mine.loc[agg.index, "n"], agg["size"])
        np.testing.assert_allclose(mine.loc[agg.index, "mean"], agg["mean"], atol=1e-9)
        np.testing.assert_allclose(mine.loc[agg.index, "sd"], agg["std"], atol=1e-9)

    # Every table passes the disclosure door.
    log = DisclosureLog()
    for t in res.tables.values():
        release(t, SACRO, log=log)


def test_all_entries_counts_each_entry(duck_cdm):
    w = world()
    cdm = load(duck_cdm, **w)
    res = characterize(cdm, 1, CharacterizationSettings(first_entry_only=False, domains=["condition"]))
    c = w["cohorts"]
    assert res["table1_age"].data["n"].iloc[0] == int((c["cohort_definition_id"] == 1).sum())
    assert "table1_measurements" not in res.tables


def test_smd_formulas_against_numpy():
    rng = np.random.default_rng(0)
    x1 = rng.random(200) < 0.3
    x2 = rng.random(150) < 0.45
    p1, p2 = x1.mean(), x2.mean()
    ref = (p1 - p2) / np.sqrt((np.var(x1) + np.var(x2)) / 2)  # np.var of 0/1 is p(1 - p)
    assert abs(smd_binary(p1, p2) - ref) < 1e-12
    a, b = rng.normal(1, 2, 300), rng.normal(0.5, 1, 250)
    ref_c = (a.mean() - b.mean()) / np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    assert abs(smd_continuous(a.mean(), a.std(ddof=1), b.mean(), b.std(ddof=1)) - ref_c) < 1e-12
    assert smd_binary(0.0, 0.0) == 0 and np.isnan(smd_binary(0.0, 1.0))


def test_compare_cohorts_smd(cdm_factory):
    w = world(seed=5)
    cdm = load(cdm_factory(), **w)
    res = compare_cohorts(cdm, 1, 2, settings())
    smd = res["balance_smd"].data
    ref = reference_binary(w)
    sizes = _index(w).groupby("cohort_id").size()
    row = smd[(smd["domain"] == "condition") & (smd["window"] == "w0")].iloc[0]
    n1 = ref.get((1, "w0", "condition", int(row.concept_id)), 0)
    n2 = ref.get((2, "w0", "condition", int(row.concept_id)), 0)
    assert (row.n_target, row.n_comparator) == (n1, n2)
    p1, p2 = n1 / sizes[1], n2 / sizes[2]
    assert abs(row.smd - (p1 - p2) / np.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / 2)) < 1e-12
    sex = smd[(smd["domain"] == "sex") & (smd["concept_name"] == "Male")]
    assert len(sex) == 1
    # Continuous SMDs come from the released magnitude tables, not from a counts table that would drop
    # the means.
    assert "balance_smd_continuous" not in res.tables
    meas = res["balance_measurements"].data
    assert set(meas["cohort_id"]) == {1, 2} and res["balance_measurements"].kind == "magnitudes"
    log = DisclosureLog()
    for t in res.tables.values():
        assert release(t, SACRO, log=log).status == "released"


def test_empty_cohort(cdm_factory):
    w = world()
    cdm = load(cdm_factory(), **w)
    res = characterize(cdm, 42, settings())
    assert res.empty and res.notes == [Note(NoteCode.NO_ENTRIES, cohort=42)]
    assert all(len(t.data) == 0 for t in res.tables.values())
    log = DisclosureLog()
    release(res["table1_age"], SACRO, log=log)
    bal = compare_cohorts(cdm, 1, 42, settings())
    assert not bal.empty and len(bal["balance_smd"].data) > 0
    assert np.isnan(bal["balance_smd"].data["p_comparator"]).all()


def test_settings_errors():
    with pytest.raises(StudyError, match="after end"):
        Window(name="x", start=5, end=0)
    with pytest.raises(StudyError, match="distinct names"):
        CharacterizationSettings(windows=[Window(name="a", start=-1), Window(name="a", start=-2)])
    with pytest.raises(StudyError, match="same cohort"):
        compare_cohorts(None, 1, 1)  # type: ignore[arg-type]
