"""Achilles-style profiles against the same figures computed with pandas on OHDSI's Eunomia sample, on
DuckDB and PostgreSQL; absent tables; the CLI."""

from __future__ import annotations

import datetime as dt
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
    # an analysis reading two tables is absent when either is missing (death timing needs the domain's table)
    duck_cdm.create_tables(["death"])
    a = run_profile(duck_cdm).analyses.set_index("analysis_id")
    assert a.at[506, "status"] == "done" and a.at[510, "status"] == "done"
    assert a.at[511, "status"] == "absent" and a.at[511, "reason"] == "table condition_occurrence does not exist"


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


def _dists(dist: pd.DataFrame, analysis: int) -> dict[tuple, float]:
    """(strata..., statistic) -> value, for one analysis."""
    r = dist[dist.analysis_id == analysis]
    strata = [c for c in ("stratum_1", "stratum_2") if r[c].notna().any()]
    return {(*(row[c] for c in strata), k): float(row[k]) for _, row in r.iterrows() for k in _DIST}


def _want_dists(df: pd.DataFrame, strata: list[str], value: pd.Series) -> dict[tuple, float]:
    return {(*key, k): float(v) for key, stats in _want_by(df, strata, value).items() for k, v in stats.items()}


def _want_by(df: pd.DataFrame, strata: list[str], value: pd.Series) -> dict[tuple, dict[str, float]]:
    df = df.assign(_v=value).dropna(subset=["_v"])
    if not strata:
        v, c = np.unique(df["_v"].to_numpy(), return_counts=True)
        return {(): summarise(v, c)} if len(df) else {}
    out = {}
    for key, g in df.groupby(strata):
        key = key if isinstance(key, tuple) else (key,)
        v, c = np.unique(g["_v"].to_numpy(), return_counts=True)
        out[tuple(str(k) for k in key)] = summarise(v, c)
    return out


def _month_of(col: pd.Series) -> pd.Series:
    d = pd.to_datetime(col)
    return d.dt.year * 100 + d.dt.month


def _days(end: pd.Series, start: pd.Series) -> pd.Series:
    return (pd.to_datetime(end) - pd.to_datetime(start)).dt.days


def _outside(df: pd.DataFrame, date: str, op: pd.DataFrame) -> int:
    """Records whose date lies in none of the person's observation periods."""
    d = df[["person_id", date]].reset_index(drop=True).rename_axis("row").reset_index()
    m = d.merge(op, on="person_id")
    when = pd.to_datetime(m[date])
    inside = m[(when >= pd.to_datetime(m.observation_period_start_date))
               & (when <= pd.to_datetime(m.observation_period_end_date))]
    return int(d.person_id.notna().sum() - inside.row.nunique())


def _by(df: pd.DataFrame, keys: list[str] | pd.Series, persons: bool = False) -> dict[tuple, int]:
    g = df.groupby(keys)
    s = g.person_id.nunique() if persons else g.size()
    return {tuple(str(k) for k in (key if isinstance(key, tuple) else (key,))): int(v) for key, v in s.items()}


def test_eunomia_visits_death_outside_observation_and_eras(eunomia_dir: Path, cdm_factory: Callable[..., Cdm]) -> None:
    """Analyses of visit lengths, death timing, records outside observation, months, types, units and eras,
    against pandas. Eunomia has no deaths: 40 are added (one person twice, some outside observation)."""
    cdm = cdm_factory()
    load_folder(cdm, eunomia_dir)
    read = {t: pd.read_parquet(eunomia_dir / f"{t}.parquet") for t in (
        "person", "observation_period", "visit_occurrence", "condition_occurrence", "procedure_occurrence",
        "drug_exposure", "observation", "measurement", "drug_era", "condition_era")}
    person, op = read["person"], read["observation_period"]
    ids = sorted(person.person_id)[:40]
    death = pd.DataFrame({"person_id": [*ids, ids[0]],
                          "death_date": [dt.date(1990, 1, 1) + dt.timedelta(days=523 * i) for i in range(41)],
                          "death_type_concept_id": [32817 if i % 3 else 32815 for i in range(41)],
                          "cause_concept_id": [0 if i % 4 else 4306655 for i in range(41)]})
    cdm.insert_rows("death", death.to_dict("records"))
    read["death"] = death
    # Eunomia has no numeric values: some are added to observation and measurement (815, 1815)
    for table, key, concept in (("observation", "observation_id", "observation_concept_id"),
                                ("measurement", "measurement_id", "measurement_concept_id")):
        df = read[table]
        rows = pd.DataFrame({key: [int(df[key].max()) + 1 + i for i in range(60)],
                             "person_id": [ids[i % 40] for i in range(60)],
                             concept: [3004249 if i % 2 else 3025315 for i in range(60)],
                             f"{table}_date": [dt.date(2000, 1, 1) + dt.timedelta(days=97 * i) for i in range(60)],
                             f"{table}_type_concept_id": [32817] * 60,
                             "value_as_number": [float((i * 37) % 23) + 0.5 * (i % 3) for i in range(60)],
                             "unit_concept_id": [8876 if i % 3 else 8587 for i in range(60)]})
        cdm.insert_rows(table, rows.to_dict("records"))
        read[table] = pd.concat([df.dropna(axis=1, how="all"), rows], ignore_index=True)
    prof = run_profile(cdm)
    res, dist = prof.results, prof.results_dist
    assert set(prof.analyses.status) == {"done"}

    assert _counts(res, 10) == _by(person, ["year_of_birth", "gender_concept_id"])
    first = op.sort_values("observation_period_start_date").groupby("person_id").head(1)
    assert _counts(res, 108) == _by(first.assign(k=np.floor(_days(first.observation_period_end_date,
                                                                  first.observation_period_start_date) / 30)
                                                 .astype(int)), ["k"], persons=True)
    assert _counts(res, 111) == _by(op, _month_of(op.observation_period_start_date), persons=True)
    assert _counts(res, 112) == _by(op, _month_of(op.observation_period_end_date), persons=True)
    assert _counts(res, 119) == _by(op, ["period_type_concept_id"])
    # per domain: persons by concept and start month (x02), records by start month (x20), outside observation
    domains = {200: ("visit_occurrence", "visit_concept_id", "visit_start_date", 208),
               400: ("condition_occurrence", "condition_concept_id", "condition_start_date", 410),
               600: ("procedure_occurrence", "procedure_concept_id", "procedure_date", 610),
               700: ("drug_exposure", "drug_concept_id", "drug_exposure_start_date", 710),
               800: ("observation", "observation_concept_id", "observation_date", 810),
               900: ("drug_era", "drug_concept_id", "drug_era_start_date", 909),
               1000: ("condition_era", "condition_concept_id", "condition_era_start_date", 1009),
               1800: ("measurement", "measurement_concept_id", "measurement_date", 1810)}
    for base, (table, concept, start, outside) in domains.items():
        df = read[table]
        month = _month_of(df[start]).rename("m")
        assert _counts(res, base + 2) == _by(df, [df[concept], month], persons=True), table
        assert _counts(res, base + 20) == _by(df, month), table
        assert _counts(res, outside) == {(): _outside(df, start, op)}, table
    assert _counts(res, 510) == {(): _outside(death, "death_date", op)}
    assert 0 < _counts(res, 510)[()] < len(death)  # some deaths lie outside observation, some inside
    for base, table, concept in ((800, "observation", "observation_concept_id"),
                                 (1800, "measurement", "measurement_concept_id")):
        df = read[table]
        assert _counts(res, base + 5) == _by(df, [concept, f"{table}_type_concept_id"]), table
        assert _counts(res, base + 7) == _by(df, [concept, "unit_concept_id"]), table
    # death
    assert _counts(res, 501) == _by(death, ["cause_concept_id"])
    assert _counts(res, 502) == _by(death, _month_of(death.death_date), persons=True)
    assert _counts(res, 505) == _by(death, ["death_type_concept_id"])
    first_death = death.assign(y=pd.to_datetime(death.death_date).dt.year).groupby("person_id").y.min().reset_index()
    aged = first_death.merge(person, on="person_id")
    assert _dists(dist, 506) == pytest.approx(_want_dists(aged, ["gender_concept_id"], aged.y - aged.year_of_birth))
    for aid, table, date in ((511, "condition_occurrence", "condition_start_date"),
                             (512, "drug_exposure", "drug_exposure_start_date"),
                             (513, "visit_occurrence", "visit_start_date"),
                             (514, "procedure_occurrence", "procedure_date"),
                             (515, "observation", "observation_date")):
        last = read[table].groupby("person_id")[date].max().rename("last").reset_index()
        m = death.merge(last, on="person_id")
        assert _dists(dist, aid) == pytest.approx(_want_dists(m, [], _days(m["last"], m.death_date))), aid
        assert _dists(dist, aid)[("count_value",)] == len(m) > 0
    # lengths and values
    vo = read["visit_occurrence"]
    assert _dists(dist, 211) == pytest.approx(_want_dists(vo, ["visit_concept_id"],
                                                          _days(vo.visit_end_date, vo.visit_start_date)))
    de = read["drug_exposure"]
    assert _dists(dist, 716) == pytest.approx(_want_dists(de, ["drug_concept_id"], de.refills))
    for aid, table in ((907, "drug_era"), (1007, "condition_era")):
        df = read[table]
        c = "drug_concept_id" if table == "drug_era" else "condition_concept_id"
        want = _want_dists(df, [c], _days(df[f"{table}_end_date"], df[f"{table}_start_date"]))
        assert _dists(dist, aid) == pytest.approx(want) and len(want) > 100
    for aid, table in ((815, "observation"), (1815, "measurement")):
        df = read[table]
        want = _want_dists(df, [f"{table}_concept_id", "unit_concept_id"], df.value_as_number)
        assert _dists(dist, aid) == pytest.approx(want) and len(want) == 4 * len(_DIST), aid


def test_profile_reference_is_up_to_date() -> None:
    from mercia.dq.profile_doc import profile_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "reference" / "data-quality-profiles.md"
    text = profile_markdown()
    assert doc.read_text() == text, (
        "docs/reference/data-quality-profiles.md is stale: regenerate it with "
        "`python -m mercia.dq.profile_doc > docs/reference/data-quality-profiles.md`")
    assert "| 211 | Distribution of length of stay by visit_concept_id |" in text
