"""Achilles-style profiles against the same figures computed with pandas on OHDSI's Eunomia sample, on
DuckDB and PostgreSQL; absent tables; the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cdm.load import load_folder
from mercia.cli import app
from mercia.dq.profile import run_profile, summarise


def _counts(results: pd.DataFrame, analysis: int) -> dict[tuple, int]:
    r = results[results.analysis_id == analysis]
    strata = [c for c in ("stratum_1", "stratum_2") if r[c].notna().any()]
    return {tuple(row[c] for c in strata): int(row.count_value) for _, row in r.iterrows()}


def test_summarise_against_numpy() -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 50, 1001)
    values, counts = np.unique(raw, return_counts=True)
    s = summarise(values, counts)
    ordered = np.sort(raw)
    assert s["count_value"] == 1001 and s["min_value"] == raw.min() and s["max_value"] == raw.max()
    assert s["avg_value"] == pytest.approx(raw.mean()) and s["stdev_value"] == pytest.approx(raw.std(ddof=1))
    # the smallest value whose cumulative count reaches p * n
    for key, p in (("median_value", 0.5), ("p10_value", 0.1), ("p25_value", 0.25), ("p75_value", 0.75),
                   ("p90_value", 0.9)):
        assert s[key] == ordered[int(np.ceil(p * 1001)) - 1]


def test_eunomia_profile_matches_pandas(eunomia_dir: Path, cdm_factory: Callable[..., Cdm]) -> None:
    cdm = cdm_factory()
    load_folder(cdm, eunomia_dir)
    prof = run_profile(cdm)
    res, dist = prof.results, prof.results_dist
    person = pd.read_parquet(eunomia_dir / "person.parquet")
    op = pd.read_parquet(eunomia_dir / "observation_period.parquet")
    co = pd.read_parquet(eunomia_dir / "condition_occurrence.parquet")
    de = pd.read_parquet(eunomia_dir / "drug_exposure.parquet")

    assert _counts(res, 1) == {(): len(person)}
    assert _counts(res, 2) == {(str(k),): int(v) for k, v in person.gender_concept_id.value_counts().items()}
    assert _counts(res, 3) == {(str(k),): int(v) for k, v in person.year_of_birth.value_counts().items()}
    assert _counts(res, 113) == {(str(k),): int(v) for k, v in op.groupby("person_id").size().value_counts().items()}
    assert _counts(res, 400) == {(str(k),): int(v) for k, v in co.groupby("condition_concept_id").person_id.nunique().items()}
    month = pd.to_datetime(co.condition_start_date)
    month = month.dt.year * 100 + month.dt.month
    want = co.assign(m=month).groupby(["condition_concept_id", "m"]).person_id.nunique()
    assert _counts(res, 402) == {(str(c), str(m)): int(v) for (c, m), v in want.items()}
    # 420 and 720: records by start month (the trends)
    assert _counts(res, 420) == {(str(m),): int(v) for m, v in month.value_counts().items()}
    dmonth = pd.to_datetime(de.drug_exposure_start_date)
    assert _counts(res, 720) == {(str(m),): int(v) for m, v in (dmonth.dt.year * 100 + dmonth.dt.month).value_counts().items()}
    # 105: length of each person's first observation period, in days
    first = op.sort_values("observation_period_start_date").groupby("person_id").head(1)
    days = (pd.to_datetime(first.observation_period_end_date) - pd.to_datetime(first.observation_period_start_date)).dt.days
    got = dist[dist.analysis_id == 105].iloc[0]
    values, counts = np.unique(days.to_numpy(), return_counts=True)
    want105 = summarise(values, counts)
    assert {k: got[k] for k in want105} == pytest.approx(want105)
    assert got.count_value == op.person_id.nunique()
    # 715: days_supply by drug, for one drug
    drug = int(de.drug_concept_id.value_counts().index[0])
    vals = de.loc[de.drug_concept_id == drug, "days_supply"].dropna().to_numpy()
    v, c = np.unique(vals, return_counts=True)
    got715 = dist[(dist.analysis_id == 715) & (dist.stratum_1 == str(drug))].iloc[0]
    assert {k: got715[k] for k in _DIST} == pytest.approx(summarise(v, c))


_DIST = ("count_value", "min_value", "max_value", "avg_value", "stdev_value", "median_value", "p10_value",
         "p25_value", "p75_value", "p90_value")


def test_absent_tables_are_listed(duck_cdm: Cdm) -> None:
    duck_cdm.create_tables(["person", "observation_period"])
    duck_cdm.insert_rows("person", [{"person_id": 1, "gender_concept_id": 8507, "year_of_birth": 1970,
                                     "race_concept_id": 0, "ethnicity_concept_id": 0}])
    prof = run_profile(duck_cdm)
    a = prof.analyses.set_index("analysis_id")
    assert a.at[401, "status"] == "absent" and a.at[401, "reason"] == "table condition_occurrence does not exist"
    assert a.at[2, "status"] == "done" and _counts(prof.results, 2) == {("8507",): 1}


def test_cli_profile(tmp_path: Path) -> None:
    db = tmp_path / "x.duckdb"
    with Cdm.open(db) as cdm:
        cdm.create_tables(["person", "observation_period"])
    r = CliRunner().invoke(app, ["dq", "profile", "--cdm", str(db), "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p" / "achilles_results.parquet").exists()
    assert "absent (tables missing)" in r.output
    with Cdm.open(tmp_path / "y.duckdb") as cdm:
        cdm.create_tables(["observation_period"])
    bad = CliRunner().invoke(app, ["dq", "profile", "--cdm", str(tmp_path / "y.duckdb"), "--out", str(tmp_path / "q")])
    assert bad.exit_code == 1 and "need the CDM table(s) person" in bad.output
