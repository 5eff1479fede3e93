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
    needs: tuple[str, ...] = ()  # other tables it reads


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


def _persons(table: str, strata: list[exp.Expression]) -> Callable[[Cdm], exp.Select]:
    """Distinct persons by strata, counted in two steps (the distinct (strata, person) rows, then a plain
    count), which DuckDB does about twice as fast as COUNT(DISTINCT person_id) grouped by the strata."""
    def build(cdm: Cdm) -> exp.Select:
        cols = [s.copy().as_(f"s{i + 1}") for i, s in enumerate(strata)]
        inner = (exp.select(*cols, _c("person_id")).distinct().from_(cdm.table(table, alias="t"))
                 .where(_c("person_id").is_(exp.null()).not_()).subquery("x"))
        keys = [exp.column(f"s{i + 1}", "x") for i in range(len(strata))]
        return (exp.select(*[k.copy().as_(k.name) for k in keys], exp.Count(this=exp.Star()).as_("count_value"))
                .from_(inner).group_by(*keys))
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


def _first_periods(cdm: Cdm) -> tuple[exp.Select, exp.Expression]:
    """Each person's first observation period (alias o), and its length in days."""
    first = exp.select(_c("person_id"), exp.Min(this=_c("observation_period_start_date")).as_("start")).from_(
        cdm.table("observation_period", alias="t")).group_by(_c("person_id")).subquery("f")
    days = _days(_c("observation_period_end_date", "o"), _c("observation_period_start_date", "o"))
    q = (exp.select().from_(cdm.table("observation_period", alias="o"))
         .join(first, on=exp.and_(_c("person_id", "f").eq(_c("person_id", "o")),
                                  exp.column("start", "f").eq(_c("observation_period_start_date", "o")))))
    return q, days


def _first_period_length(cdm: Cdm) -> exp.Select:
    q, days = _first_periods(cdm)
    return q.select(days.as_("value"), exp.Count(this=exp.Star()).as_("n")).group_by(days.copy())


def _days(end: exp.Expression, start: exp.Expression) -> exp.Expression:
    return exp.DateDiff(this=end, expression=start, unit=exp.var("DAY"))


def _first_period_30d(cdm: Cdm) -> exp.Select:
    """108: persons by the length of their first observation period in 30-day steps (floor(days / 30))."""
    q, days = _first_periods(cdm)
    step = exp.Cast(this=exp.Floor(this=exp.Div(this=exp.Cast(this=days, to=exp.DataType.build("DOUBLE")),
                                                expression=exp.Literal.number(30))),
                    to=exp.DataType.build("BIGINT"))
    return q.select(step.as_("s1"), exp.Count(this=exp.Distinct(expressions=[_c("person_id", "o")])).as_("count_value")
                    ).group_by(step.copy())


def _outside_observation(table: str, date: str) -> Callable[[Cdm], exp.Select]:
    """Records whose `date` lies in none of the person's observation periods (208, 410, ..., 909, 1009, 1810)."""
    def build(cdm: Cdm) -> exp.Select:
        on = exp.and_(_c("person_id", "op").eq(_c("person_id")),
                      _c(date) >= _c("observation_period_start_date", "op"),
                      _c(date) <= _c("observation_period_end_date", "op"))
        return (exp.select(exp.Count(this=_c("person_id")).as_("count_value"))
                .from_(cdm.table(table, alias="t"))
                .join(cdm.table("observation_period", alias="op"), on=on, join_type="left")
                .where(_c("person_id", "op").is_(exp.null())))
    return build


def _age_at_death(cdm: Cdm) -> exp.Select:
    """506: year of (first) death minus year of birth, by gender."""
    d = (exp.select(_c("person_id"), exp.Min(this=exp.Year(this=_c("death_date"))).as_("death_year"))
         .from_(cdm.table("death", alias="t")).group_by(_c("person_id")).subquery("d"))
    age = exp.Sub(this=exp.column("death_year", "d"), expression=_c("year_of_birth", "p"))
    return (exp.select(_c("gender_concept_id", "p").as_("s1"), age.as_("value"), exp.Count(this=exp.Star()).as_("n"))
            .from_(cdm.table("person", alias="p")).join(d, on=_c("person_id", "d").eq(_c("person_id", "p")))
            .group_by(_c("gender_concept_id", "p"), age.copy()))


def _death_to_last(table: str, date: str) -> Callable[[Cdm], exp.Select]:
    """511-515: days from death to the person's last record in `table` (negative: before death)."""
    def build(cdm: Cdm) -> exp.Select:
        last = (exp.select(_c("person_id"), exp.Max(this=_c(date)).as_("max_date"))
                .from_(cdm.table(table, alias="t")).group_by(_c("person_id")).subquery("m"))
        days = _days(exp.column("max_date", "m"), _c("death_date", "d"))
        return (exp.select(days.as_("value"), exp.Count(this=exp.Star()).as_("n"))
                .from_(cdm.table("death", alias="d")).join(last, on=_c("person_id", "m").eq(_c("person_id", "d")))
                .where(days.copy().is_(exp.null()).not_()).group_by(days.copy()))
    return build


def _domain(base: int, table: str, label: str, concept: str, start: str, type_: str | None = None,
            unit: bool = False) -> list[Analysis]:
    """Achilles's per-domain analyses: persons (x00) and records (x01) by concept, persons by concept and start
    month (x02), records by concept and type (x05), by concept and unit (x07), records outside observation (x10),
    records by start month (x20)."""
    out = [Analysis(base, f"Number of persons with at least one {label}, by {concept}", table,
                    _persons(table, [_c(concept)]), strata=(concept,)),
           Analysis(base + 1, f"Number of {label} records, by {concept}", table,
                    _grouped(table, [_c(concept)], _count()), strata=(concept,)),
           Analysis(base + 2, f"Number of persons by {label} start month, by {concept}", table,
                    _persons(table, [_c(concept), _month(start)]),
                    strata=(concept, "calendar month"))]
    if type_:
        out.append(Analysis(base + 5, f"Number of {label} records, by {concept} by {type_}", table,
                            _grouped(table, [_c(concept), _c(type_)], _count()), strata=(concept, type_)))
    if unit:
        out.append(Analysis(base + 7, f"Number of {label} records, by {concept} and unit_concept_id", table,
                            _grouped(table, [_c(concept), _c("unit_concept_id")], _count()),
                            strata=(concept, "unit_concept_id")))
    outside = {200: 208, 900: 909, 1000: 1009}.get(base, base + 10)  # Achilles's ids: 208, 410, ..., 909, 1009
    out.append(Analysis(outside, f"Number of {label} records outside valid observation period", table,
                        _outside_observation(table, start), needs=("observation_period",)))
    out.append(Analysis(base + 20, f"Number of {label} records by {label} start month", table,
                        _grouped(table, [_month(start)], _count()), strata=("calendar month",)))
    return out


def _length(table: str, concept: str, start: str, end: str) -> Callable[[Cdm], exp.Select]:
    return _frequencies(table, [_c(concept)], _days(_c(end), _c(start)))


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
    Analysis(10, "Number of all persons by year of birth by gender", "person",
             _grouped("person", [_c("year_of_birth"), _c("gender_concept_id")], _count()),
             strata=("year_of_birth", "gender_concept_id")),
    Analysis(105, "Length of observation (days) of first observation period", "observation_period",
             _first_period_length, distribution=True),
    Analysis(108, "Number of persons by length of observation period, in 30d increments", "observation_period",
             _first_period_30d, strata=("observation period length 30d increments",)),
    Analysis(111, "Number of persons by observation period start month", "observation_period",
             _persons("observation_period", [_month("observation_period_start_date")]),
             strata=("calendar month",)),
    Analysis(112, "Number of persons by observation period end month", "observation_period",
             _persons("observation_period", [_month("observation_period_end_date")]),
             strata=("calendar month",)),
    Analysis(113, "Number of persons by number of observation periods", "observation_period",
             _obs_periods_per_person, strata=("number of observation periods",)),
    Analysis(119, "Number of observation period records by period_type_concept_id", "observation_period",
             _grouped("observation_period", [_c("period_type_concept_id")], _count()),
             strata=("period_type_concept_id",)),
    *_domain(200, "visit_occurrence", "visit occurrence", "visit_concept_id", "visit_start_date"),
    Analysis(211, "Distribution of length of stay by visit_concept_id", "visit_occurrence",
             _length("visit_occurrence", "visit_concept_id", "visit_start_date", "visit_end_date"),
             distribution=True, strata=("visit_concept_id",)),
    *_domain(400, "condition_occurrence", "condition occurrence", "condition_concept_id", "condition_start_date",
             "condition_type_concept_id"),
    Analysis(500, "Number of persons with death, by cause_concept_id", "death",
             _persons("death", [_c("cause_concept_id")]), strata=("cause_concept_id",)),
    Analysis(501, "Number of records of death, by cause_concept_id", "death",
             _grouped("death", [_c("cause_concept_id")], _count()), strata=("cause_concept_id",)),
    Analysis(502, "Number of persons by death month", "death",
             _persons("death", [_month("death_date")]), strata=("calendar month",)),
    Analysis(505, "Number of death records, by death_type_concept_id", "death",
             _grouped("death", [_c("death_type_concept_id")], _count()), strata=("death_type_concept_id",)),
    Analysis(506, "Distribution of age at death by gender", "death", _age_at_death, distribution=True,
             strata=("gender_concept_id",), needs=("person",)),
    Analysis(510, "Number of death records outside valid observation period", "death",
             _outside_observation("death", "death_date"), needs=("observation_period",)),
    *[Analysis(aid, f"Distribution of time from death to last {label}", "death", _death_to_last(table, date),
               distribution=True, needs=(table,))
      for aid, label, table, date in ((511, "condition", "condition_occurrence", "condition_start_date"),
                                      (512, "drug", "drug_exposure", "drug_exposure_start_date"),
                                      (513, "visit", "visit_occurrence", "visit_start_date"),
                                      (514, "procedure", "procedure_occurrence", "procedure_date"),
                                      (515, "observation", "observation", "observation_date"))],
    *_domain(600, "procedure_occurrence", "procedure occurrence", "procedure_concept_id", "procedure_date",
             "procedure_type_concept_id"),
    *_domain(700, "drug_exposure", "drug exposure", "drug_concept_id", "drug_exposure_start_date",
             "drug_type_concept_id"),
    Analysis(715, "Distribution of days_supply by drug_concept_id", "drug_exposure",
             _frequencies("drug_exposure", [_c("drug_concept_id")], _c("days_supply")), distribution=True,
             strata=("drug_concept_id",)),
    Analysis(716, "Distribution of refills by drug_concept_id", "drug_exposure",
             _frequencies("drug_exposure", [_c("drug_concept_id")], _c("refills")), distribution=True,
             strata=("drug_concept_id",)),
    Analysis(717, "Distribution of quantity by drug_concept_id", "drug_exposure",
             _frequencies("drug_exposure", [_c("drug_concept_id")], _c("quantity")), distribution=True,
             strata=("drug_concept_id",)),
    *_domain(800, "observation", "observation", "observation_concept_id", "observation_date",
             "observation_type_concept_id", unit=True),
    Analysis(815, "Distribution of numeric values, by observation_concept_id and unit_concept_id", "observation",
             _frequencies("observation", [_c("observation_concept_id"), _c("unit_concept_id")],
                          _c("value_as_number")),
             distribution=True, strata=("observation_concept_id", "unit_concept_id")),
    *_domain(900, "drug_era", "drug era", "drug_concept_id", "drug_era_start_date"),
    Analysis(907, "Distribution of drug era length, by drug_concept_id", "drug_era",
             _length("drug_era", "drug_concept_id", "drug_era_start_date", "drug_era_end_date"), distribution=True,
             strata=("drug_concept_id",)),
    *_domain(1000, "condition_era", "condition era", "condition_concept_id", "condition_era_start_date"),
    Analysis(1007, "Distribution of condition era length, by condition_concept_id", "condition_era",
             _length("condition_era", "condition_concept_id", "condition_era_start_date", "condition_era_end_date"),
             distribution=True, strata=("condition_concept_id",)),
    *_domain(1800, "measurement", "measurement", "measurement_concept_id", "measurement_date",
             "measurement_type_concept_id", unit=True),
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
        missing = [t for t in (a.table, *a.needs) if not cdm.table_exists(t)]
        if missing:
            status.append((a.analysis_id, a.name, "absent", f"table {missing[0]} does not exist"))
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
