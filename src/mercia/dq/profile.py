"""Achilles-style profiles of a CDM: the analyses users read most, under Achilles's analysis ids and in the
shape of its result tables (`achilles_results`: analysis_id, stratum_1..5, count_value;
`achilles_results_dist`: count_value, min, max, avg, stdev, median, p10, p25, p75, p90).

Counts are computed in SQL (sqlglot trees, any engine). A distribution is fetched from the database as a
table of (strata, value, frequency), which is small, and summarised here, the same on every engine; a
percentile is the smallest value whose cumulative frequency reaches that fraction of the count.
Analyses of a table the CDM lacks are listed as absent.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlglot import exp

from mercia.cdm import Cdm


@dataclass(frozen=True)
class Analysis:
    analysis_id: int  # Achilles's
    name: str
    table: str
    build: Callable[[Cdm], exp.Select]  # strata columns s1.., then count_value (or value, n for a distribution)
    distribution: bool = False
    strata: tuple[str, ...] = ()


def _c(name: str, table: str = "t") -> exp.Column:
    return exp.column(name, table=table)


def _count(distinct: str | None = None) -> exp.Expression:
    if distinct:
        return exp.Count(this=exp.Distinct(expressions=[_c(distinct)]))
    return exp.Count(this=exp.Star())


def _grouped(table: str, strata: list[exp.Expression], value: exp.Expression) -> Callable[[Cdm], exp.Select]:
    def build(cdm: Cdm) -> exp.Select:
        cols = [s.copy().as_(f"s{i + 1}") for i, s in enumerate(strata)]
        q = exp.select(*cols, value.copy().as_("count_value")).from_(cdm.table(table, alias="t"))
        return q.group_by(*[s.copy() for s in strata]) if strata else q
    return build


def _month(col: str) -> exp.Expression:
    return exp.Add(this=exp.Mul(this=exp.Year(this=_c(col)), expression=exp.Literal.number(100)),
                   expression=exp.Month(this=_c(col)))


def _frequencies(table: str, strata: list[exp.Expression], value: exp.Expression,
                 where: exp.Expression | None = None) -> Callable[[Cdm], exp.Select]:
    def build(cdm: Cdm) -> exp.Select:
        cols = [s.copy().as_(f"s{i + 1}") for i, s in enumerate(strata)]
        q = exp.select(*cols, value.copy().as_("value"), exp.Count(this=exp.Star()).as_("n")).from_(
            cdm.table(table, alias="t"))
        q = q.where(exp.and_(value.copy().is_(exp.null()).not_(), *([where] if where is not None else [])))
        return q.group_by(*[s.copy() for s in strata], value.copy())
    return build


def _obs_periods_per_person(cdm: Cdm) -> exp.Select:
    per = exp.select(_c("person_id"), exp.Count(this=exp.Star()).as_("k")).from_(
        cdm.table("observation_period", alias="t")).group_by(_c("person_id")).subquery("x")
    return exp.select(exp.column("k", "x").as_("s1"), exp.Count(this=exp.Star()).as_("count_value")).from_(per) \
        .group_by(exp.column("k", "x"))


def _first_period_length(cdm: Cdm) -> exp.Select:
    first = exp.select(_c("person_id"), exp.Min(this=_c("observation_period_start_date")).as_("start")).from_(
        cdm.table("observation_period", alias="t")).group_by(_c("person_id")).subquery("f")
    days = exp.DateDiff(this=_c("observation_period_end_date", "o"), expression=_c("observation_period_start_date", "o"),
                        unit=exp.var("DAY"))
    return (exp.select(days.as_("value"), exp.Count(this=exp.Star()).as_("n"))
            .from_(cdm.table("observation_period", alias="o"))
            .join(first, on=exp.and_(_c("person_id", "f").eq(_c("person_id", "o")),
                                     exp.column("start", "f").eq(_c("observation_period_start_date", "o"))))
            .group_by(days.copy()))


def _domain(base: int, table: str, concept: str, start: str, type_: str | None) -> list[Analysis]:
    out = [Analysis(base, f"Number of persons with at least one {table} record, by {concept}", table,
                    _grouped(table, [_c(concept)], _count("person_id")), strata=(concept,)),
           Analysis(base + 1, f"Number of {table} records, by {concept}", table,
                    _grouped(table, [_c(concept)], _count()), strata=(concept,)),
           Analysis(base + 2, f"Number of persons by {table} start month, by {concept}", table,
                    _grouped(table, [_c(concept), _month(start)], _count("person_id")),
                    strata=(concept, "calendar month"))]
    if type_:
        out.append(Analysis(base + 5, f"Number of {table} records, by {concept} by {type_}", table,
                            _grouped(table, [_c(concept), _c(type_)], _count()), strata=(concept, type_)))
    return out


def _records_by_month(analysis_id: int, table: str, start: str) -> Analysis:
    """Achilles's x20 analyses: a domain's records by the month of their start date (YYYYMM), its trend."""
    return Analysis(analysis_id, f"Number of {table} records by {start} month", table,
                    _grouped(table, [_month(start)], _count()), strata=("calendar month",))


ANALYSES: list[Analysis] = [
    Analysis(1, "Number of persons", "person", _grouped("person", [], _count())),
    Analysis(2, "Number of persons by gender", "person", _grouped("person", [_c("gender_concept_id")], _count()),
             strata=("gender_concept_id",)),
    Analysis(3, "Number of persons by year of birth", "person", _grouped("person", [_c("year_of_birth")], _count()),
             strata=("year_of_birth",)),
    Analysis(4, "Number of persons by race", "person", _grouped("person", [_c("race_concept_id")], _count()),
             strata=("race_concept_id",)),
    Analysis(5, "Number of persons by ethnicity", "person",
             _grouped("person", [_c("ethnicity_concept_id")], _count()), strata=("ethnicity_concept_id",)),
    Analysis(105, "Length of observation (days) of first observation period", "observation_period",
             _first_period_length, distribution=True),
    Analysis(113, "Number of persons by number of observation periods", "observation_period",
             _obs_periods_per_person, strata=("number of observation periods",)),
    Analysis(200, "Number of persons with at least one visit occurrence, by visit_concept_id", "visit_occurrence",
             _grouped("visit_occurrence", [_c("visit_concept_id")], _count("person_id")), strata=("visit_concept_id",)),
    Analysis(201, "Number of visit occurrence records, by visit_concept_id", "visit_occurrence",
             _grouped("visit_occurrence", [_c("visit_concept_id")], _count()), strata=("visit_concept_id",)),
    *_domain(400, "condition_occurrence", "condition_concept_id", "condition_start_date", "condition_type_concept_id"),
    Analysis(500, "Number of persons with death, by cause_concept_id", "death",
             _grouped("death", [_c("cause_concept_id")], _count("person_id")), strata=("cause_concept_id",)),
    *_domain(600, "procedure_occurrence", "procedure_concept_id", "procedure_date", "procedure_type_concept_id"),
    *_domain(700, "drug_exposure", "drug_concept_id", "drug_exposure_start_date", "drug_type_concept_id"),
    Analysis(715, "Distribution of days_supply by drug_concept_id", "drug_exposure",
             _frequencies("drug_exposure", [_c("drug_concept_id")], _c("days_supply")), distribution=True,
             strata=("drug_concept_id",)),
    Analysis(717, "Distribution of quantity by drug_concept_id", "drug_exposure",
             _frequencies("drug_exposure", [_c("drug_concept_id")], _c("quantity")), distribution=True,
             strata=("drug_concept_id",)),
    *_domain(800, "observation", "observation_concept_id", "observation_date", None)[:2],
    *_domain(1800, "measurement", "measurement_concept_id", "measurement_date", None)[:2],
    _records_by_month(220, "visit_occurrence", "visit_start_date"),
    _records_by_month(420, "condition_occurrence", "condition_start_date"),
    _records_by_month(620, "procedure_occurrence", "procedure_date"),
    _records_by_month(720, "drug_exposure", "drug_exposure_start_date"),
    _records_by_month(820, "observation", "observation_date"),
    _records_by_month(1820, "measurement", "measurement_date"),
    Analysis(1815, "Distribution of numeric values, by measurement_concept_id and unit_concept_id", "measurement",
             _frequencies("measurement", [_c("measurement_concept_id"), _c("unit_concept_id")], _c("value_as_number")),
             distribution=True, strata=("measurement_concept_id", "unit_concept_id")),
]

_DIST_COLS = ["count_value", "min_value", "max_value", "avg_value", "stdev_value", "median_value", "p10_value",
              "p25_value", "p75_value", "p90_value"]


def summarise(values: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """A distribution given as distinct values and their frequencies."""
    order = np.argsort(values, kind="stable")
    v, n = values[order].astype(float), counts[order].astype(float)
    total = n.sum()
    mean = float((v * n).sum() / total)
    var = float((n * (v - mean) ** 2).sum() / (total - 1)) if total > 1 else 0.0
    cum = np.cumsum(n)

    def pct(p: float) -> float:
        return float(v[np.searchsorted(cum, p * total, side="left")])

    return {"count_value": int(total), "min_value": float(v[0]), "max_value": float(v[-1]), "avg_value": mean,
            "stdev_value": var ** 0.5, "median_value": pct(0.5), "p10_value": pct(0.1), "p25_value": pct(0.25),
            "p75_value": pct(0.75), "p90_value": pct(0.9)}


@dataclass
class Profile:
    results: pd.DataFrame  # achilles_results
    results_dist: pd.DataFrame  # achilles_results_dist
    analyses: pd.DataFrame  # analysis_id, analysis_name, status (done | absent), reason


def _strata(df: pd.DataFrame, k: int) -> dict[str, pd.Series]:
    return {f"stratum_{i}": (df[f"s{i}"].astype("string") if i <= k else pd.Series([None] * len(df), dtype="string"))
            for i in range(1, 6)}


def run_profile(cdm: Cdm, analyses: list[Analysis] | None = None, progress: Callable[[str, int, int], None] | None = None
                ) -> Profile:
    """Run the analyses (all of `ANALYSES` by default); those of a missing table are listed as absent."""
    from mercia.dq.runner import require_tables

    require_tables(cdm)
    todo = analyses or ANALYSES
    counts: list[pd.DataFrame] = []
    dists: list[pd.DataFrame] = []
    status = []
    for done, a in enumerate(todo):
        if progress:
            progress("profiles", done, len(todo))
        if not cdm.table_exists(a.table):
            status.append((a.analysis_id, a.name, "absent", f"table {a.table} does not exist"))
            continue
        df = cdm.fetch_arrow(a.build(cdm)).to_pandas()
        k = sum(c.startswith("s") and c[1:].isdigit() for c in df.columns)
        if a.distribution:
            rows = []
            groups = df.groupby([f"s{i}" for i in range(1, k + 1)], dropna=False) if k else [((), df)] * bool(len(df))
            for key, g in groups:
                key = key if isinstance(key, tuple) else (key,)
                rows.append({**{f"s{i + 1}": key[i] for i in range(k)},
                             **summarise(g["value"].to_numpy(), g["n"].to_numpy())})
            out = pd.DataFrame(rows, columns=[*(f"s{i}" for i in range(1, k + 1)), *_DIST_COLS])
            dists.append(pd.DataFrame({"analysis_id": a.analysis_id, **_strata(out, k),
                                       **{c: out[c] for c in _DIST_COLS}}))
        else:
            counts.append(pd.DataFrame({"analysis_id": a.analysis_id, **_strata(df, k),
                                        "count_value": df["count_value"].astype("int64")}))
        status.append((a.analysis_id, a.name, "done", None))
    with warnings.catch_warnings():  # strata wholly NA in some analyses (pandas' FutureWarning on concat)
        warnings.simplefilter("ignore", FutureWarning)
        results = pd.concat(counts, ignore_index=True) if counts else pd.DataFrame()
        dist = pd.concat(dists, ignore_index=True) if dists else pd.DataFrame()
    return Profile(results=results, results_dist=dist,
                   analyses=pd.DataFrame(status, columns=["analysis_id", "analysis_name", "status", "reason"]))


def write_profile(profile: Profile, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in (("achilles_results", profile.results), ("achilles_results_dist", profile.results_dist),
                     ("achilles_analyses", profile.analyses)):
        p = out / f"{name}.parquet"
        df.to_parquet(p, index=False)
        paths.append(p)
    return paths
