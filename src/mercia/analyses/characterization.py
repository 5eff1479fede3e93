"""Table 1 and covariate balance: cohort characteristics aggregated in the database.

For each person's first entry into a cohort (index = cohort start):
- demographics: age at index (calendar year of index minus year of birth, as OHDSI FeatureExtraction),
  its mean and SD, 5-year age groups, and sex;
- conditions (condition_concept_id), drugs rolled up to ingredients (concept_ancestor to concepts of
  class 'Ingredient') and measurements (measurement_concept_id): the number of persons with at least
  one record in each window before index (days relative to index, both ends inclusive; the default
  windows are -365..0, -30..0 and any time prior);
- measurement values: per concept and unit, each person's latest value in the window; n, mean, SD.

Standardized mean differences follow OHDSI CohortMethod (Austin 2009): binary
(p1 - p2) / sqrt((p1(1 - p1) + p2(1 - p2)) / 2), continuous (m1 - m2) / sqrt((s1^2 + s2^2) / 2).

Only aggregates leave the database: one row per (cohort, window, concept). Per-person work (a
person's latest record before each window's end) is an aggregate in SQL too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mercia import limits
from mercia.analyses.notes import Note, NoteCode
from mercia.analyses.result import AnalysisResult
from mercia.cdm import Cdm
from mercia.cdm.query import build, check_cohort_id, fetch_df, require_tables
from mercia.disclosure import RateSpec, ResultTable
from mercia.errors import StudyError
from mercia.model_doc import field_docs

Domain = Literal["condition", "drug", "measurement", "procedure"]
_ANY_PRIOR = -100_000  # days: "any time prior" reaches back further than any record
_TOPS = 3  # largest contributions kept per magnitude cell (N-k and p% rules at release)


@field_docs
class Window(BaseModel):
    """A window of days relative to index (the cohort start), both ends inclusive: a covariate is a
    person with at least one record of the concept in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1, max_length=limits.MAX_NAME, description="label of the window in the result tables"
    )
    start: int | None = Field(
        None, ge=-limits.MAX_DAYS, le=limits.MAX_DAYS,
        description="first day, relative to index (negative: before); None: any time prior",
    )
    end: int = Field(
        0, ge=-limits.MAX_DAYS, le=limits.MAX_DAYS,
        description="last day, relative to index (0: the index day); not before `start`",
    )

    @model_validator(mode="after")
    def _check(self) -> Window:
        if self.start is not None and self.start > self.end:
            raise StudyError(f"window {self.name!r}: start {self.start} is after end {self.end}")
        return self

    @property
    def lo(self) -> int:
        return _ANY_PRIOR if self.start is None else self.start


DEFAULT_WINDOWS = [
    Window(name="-365..0", start=-365, end=0),
    Window(name="-30..0", start=-30, end=0),
    Window(name="any prior", start=None, end=0),
]


@field_docs
class CharacterizationSettings(BaseModel):
    """What a Table 1 holds: age and sex always, and per window the persons with each concept of
    the chosen domains (drugs rolled up to ingredients), and measurement values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: list[Window] = Field(
        default_factory=lambda: list(DEFAULT_WINDOWS), max_length=limits.MAX_LIST,
        description="windows before index, with distinct names; at least one",
    )
    domains: list[Domain] = Field(
        default_factory=lambda: ["condition", "drug", "measurement"], max_length=limits.MAX_LIST,
        description="record domains counted per concept, each at most once: condition (condition_concept_id), "
        "drug (its ingredients), measurement (measurement_concept_id), procedure (procedure_concept_id)",
    )
    measurement_values: bool = Field(
        True,
        description="also each measurement's value: per concept, unit and window, the mean and SD of each "
        "person's latest value (only when `measurement` is among the domains)",
    )
    first_entry_only: bool = Field(
        True, description="each person's first cohort entry only; false: every entry is a row (index) of its own"
    )

    @model_validator(mode="after")
    def _check(self) -> CharacterizationSettings:
        names = [w.name for w in self.windows]
        if not names or len(set(names)) != len(names):
            raise StudyError(f"give one or more windows with distinct names (got {names})")
        if len(set(self.domains)) != len(self.domains):
            raise StudyError(f"domains repeat: {self.domains}")
        return self


# ------------------------------------------------------------------------------------------------- SMD


def smd_binary(p1: np.ndarray | float, p2: np.ndarray | float) -> np.ndarray:
    """(p1 - p2) / sqrt((p1(1-p1) + p2(1-p2)) / 2); 0 where both are equal and the pooled SD is 0."""
    a, b = np.asarray(p1, dtype=float), np.asarray(p2, dtype=float)
    return _standardise(a - b, (a * (1 - a) + b * (1 - b)) / 2)


def smd_continuous(
    m1: np.ndarray | float, s1: np.ndarray | float, m2: np.ndarray | float, s2: np.ndarray | float
) -> np.ndarray:
    """(m1 - m2) / sqrt((s1^2 + s2^2) / 2)."""
    a1, a2 = np.asarray(m1, dtype=float), np.asarray(m2, dtype=float)
    v = (np.asarray(s1, dtype=float) ** 2 + np.asarray(s2, dtype=float) ** 2) / 2
    return _standardise(a1 - a2, v)


def _standardise(diff: np.ndarray, pooled_var: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = diff / np.sqrt(pooled_var)
    return np.where(pooled_var > 0, out, np.where(diff == 0, 0.0, np.nan))


# ------------------------------------------------------------------------------------------------- SQL


def _idx_sql(first_only: bool) -> str:
    first = "WHERE rn = 1" if first_only else ""
    # Without first_entry_only each entry is its own row; the entry's start date tells them apart.
    return f"""
    idx AS (
      SELECT cohort_definition_id AS cohort_id, subject_id AS person_id, cohort_start_date AS index_date
      FROM (SELECT c.cohort_definition_id, c.subject_id, c.cohort_start_date,
                   ROW_NUMBER() OVER (PARTITION BY c.cohort_definition_id, c.subject_id
                                      ORDER BY c.cohort_start_date) AS rn
            FROM cohort c WHERE c.cohort_definition_id IN (SELECT cid FROM ids)) x
      {first}
    )"""


_RECORDS: dict[str, str] = {
    "condition": "SELECT person_id, condition_concept_id AS concept_id, condition_start_date AS d "
    "FROM condition_occurrence",
    "procedure": "SELECT person_id, procedure_concept_id AS concept_id, procedure_date AS d "
    "FROM procedure_occurrence",
    "measurement": "SELECT person_id, measurement_concept_id AS concept_id, measurement_date AS d FROM measurement",
    # Drugs count by ingredient: every ancestor of the drug concept that is an ingredient.
    "drug": """SELECT de.person_id, ca.ancestor_concept_id AS concept_id, de.drug_exposure_start_date AS d
               FROM drug_exposure de
               JOIN concept_ancestor ca ON ca.descendant_concept_id = de.drug_concept_id
               JOIN concept ic ON ic.concept_id = ca.ancestor_concept_id AND ic.concept_class_id = 'Ingredient'""",
}

_TABLES: dict[str, list[str]] = {
    "condition": ["condition_occurrence"],
    "procedure": ["procedure_occurrence"],
    "measurement": ["measurement"],
    "drug": ["drug_exposure", "concept_ancestor", "concept"],
}


def _name_join(with_names: bool, alias: str) -> tuple[str, str]:
    """The concept name column and its join: names are looked up in the database, in the same query,
    rather than by a second query listing every concept id (a 1,000-id VALUES list costs seconds in
    sqlglot)."""
    if not with_names:
        return "CAST('' AS VARCHAR) AS concept_name", ""
    return (
        "COALESCE(cn.concept_name, '') AS concept_name",
        f"LEFT JOIN concept cn ON cn.concept_id = {alias}.concept_id",
    )


def _binary_sql(domain: str, windows: Sequence[Window], first_only: bool, with_names: bool = False) -> str:
    """Persons with a record of each concept in each window, one pass per distinct window end: a
    person has the concept in [start, end] iff their latest record on or before `end` is on or after
    `start`."""
    parts = []
    for e in sorted({w.end for w in windows}):
        ws = [(k, w) for k, w in enumerate(windows) if w.end == e]
        lo = min(w.lo for _, w in ws)
        # UNION ALL is positional: every part lists n_0 .. n_K in order, zeros for other ends' windows.
        counts = ", ".join(
            f"SUM(CASE WHEN last_off >= {w.lo} THEN 1 ELSE 0 END) AS n_{k}" if w.end == e else f"0 AS n_{k}"
            for k, w in enumerate(windows)
        )
        parts.append(f"""
        SELECT cohort_id, concept_id, {counts}
        FROM (
          SELECT i.cohort_id, i.person_id, i.index_date, r.concept_id,
                 MAX(DATE_DIFF('day', i.index_date, r.d)) AS last_off
          FROM idx i JOIN ({_RECORDS[domain]}) r ON r.person_id = i.person_id
          WHERE r.d <= CAST(i.index_date + {e} AS DATE) AND r.d >= CAST(i.index_date + {lo} AS DATE)
          GROUP BY i.cohort_id, i.person_id, i.index_date, r.concept_id
        ) pc
        GROUP BY cohort_id, concept_id""")
    sums = ", ".join(f"SUM(n_{k}) AS n_{k}" for k in range(len(windows)))
    name_col, name_join = _name_join(with_names, "g")
    return f"""
    WITH {_idx_sql(first_only).strip()},
    g AS (
      SELECT cohort_id, concept_id, {sums} FROM ({" UNION ALL ".join(parts)}) u
      GROUP BY cohort_id, concept_id
    )
    SELECT g.*, {name_col} FROM g {name_join}
    """


def _values_sql(first_only: bool, with_names: bool = False) -> str:
    """Each person's latest value per concept and unit in each window; n, mean, SD and the largest
    absolute values per cell. As in `_binary_sql`, one ranking per distinct window end (the `ends`
    table: end and the earliest start of the windows ending there): the latest record in [start, end]
    is the latest in [earliest start, end] when that one is on or after `start`, and there is none
    otherwise."""
    tops = ", ".join(f"MAX(CASE WHEN r = {j} THEN ABS(v) END) AS top{j}" for j in range(1, _TOPS + 1))
    name_col, name_join = _name_join(with_names, "a")
    return f"""
    WITH {_idx_sql(first_only).strip()},
    latest AS (
      SELECT cohort_id, e, concept_id, unit_concept_id, v, off FROM (
        SELECT i.cohort_id, ends.e, m.measurement_concept_id AS concept_id,
               COALESCE(m.unit_concept_id, 0) AS unit_concept_id, m.value_as_number AS v,
               DATE_DIFF('day', i.index_date, m.measurement_date) AS off,
               ROW_NUMBER() OVER (PARTITION BY i.cohort_id, ends.e, i.person_id, i.index_date,
                                               m.measurement_concept_id, COALESCE(m.unit_concept_id, 0)
                                  ORDER BY m.measurement_date DESC, m.measurement_id DESC) AS rn
        FROM idx i
        JOIN measurement m ON m.person_id = i.person_id AND m.value_as_number IS NOT NULL
        JOIN ends ON m.measurement_date >= CAST(i.index_date + ends.lo AS DATE)
                 AND m.measurement_date <= CAST(i.index_date + ends.e AS DATE)
      ) x WHERE rn = 1
    ),
    ranked AS (
      SELECT l.cohort_id, w.k, l.concept_id, l.unit_concept_id, l.v,
             ROW_NUMBER() OVER (PARTITION BY l.cohort_id, w.k, l.concept_id, l.unit_concept_id
                                ORDER BY ABS(l.v) DESC) AS r
      FROM latest l JOIN windows w ON w.hi = l.e AND l.off >= w.lo
    ),
    a AS (
      SELECT cohort_id, k, concept_id, unit_concept_id, COUNT(*) AS n, AVG(v) AS mean,
             STDDEV_SAMP(v) AS sd, {tops}
      FROM ranked GROUP BY cohort_id, k, concept_id, unit_concept_id
    )
    SELECT a.*, {name_col} FROM a {name_join}
    """


def _demographics_sql(first_only: bool) -> str:
    tops = ", ".join(f"MAX(CASE WHEN r = {j} THEN age END) AS top{j}" for j in range(1, _TOPS + 1))
    return f"""
    WITH {_idx_sql(first_only).strip()},
    ages AS (
      SELECT i.cohort_id, p.gender_concept_id AS gender,
             EXTRACT(YEAR FROM i.index_date) - p.year_of_birth AS age
      FROM idx i JOIN person p ON p.person_id = i.person_id
    ),
    ranked AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY cohort_id ORDER BY age DESC) AS r FROM ages),
    per_cohort AS (
      SELECT cohort_id, COUNT(*) AS n, AVG(age) AS age_mean, STDDEV_SAMP(age) AS age_sd, {tops}
      FROM ranked GROUP BY cohort_id
    ),
    groups AS (
      SELECT cohort_id, 'age_group' AS variable, CAST(FLOOR(age / 5) AS INTEGER) AS level, COUNT(*) AS n
      FROM ages GROUP BY 1, 2, 3
      UNION ALL
      SELECT cohort_id, 'sex', gender, COUNT(*) FROM ages GROUP BY 1, 2, 3
    )
    SELECT 'summary' AS part, pc.cohort_id, NULL AS variable, NULL AS level, pc.n, pc.age_mean, pc.age_sd,
           pc.top1, pc.top2, pc.top3
    FROM per_cohort pc
    UNION ALL
    SELECT 'group', g.cohort_id, g.variable, g.level, g.n, NULL, NULL, NULL, NULL, NULL FROM groups g
    """


# ---------------------------------------------------------------------------------------------- Table 1


def _sex_name(g: object) -> str:
    return {8507: "Male", 8532: "Female"}.get(int(g), f"concept {int(g)}")  # type: ignore[call-overload]


def characterize(
    cdm: Cdm,
    cohort_ids: int | Sequence[int],
    settings: CharacterizationSettings | None = None,
    *,
    name: str = "table1",
) -> AnalysisResult:
    """Table 1 for one or more cohorts (a `cohort_id` dimension tells them apart).

    Tables: `{name}_demographics` (counts: cohort_id, variable, level, n; percent within level),
    `{name}_age` (magnitudes: n, age_mean, age_sd), `{name}_covariates` (counts: cohort_id, window,
    domain, concept_id, concept_name; n persons and n_cohort; percent), `{name}_measurements`
    (magnitudes: n, mean, sd of the latest value per person, by concept and unit).
    """
    settings = settings or CharacterizationSettings()
    ids = [
        check_cohort_id(c, "cohort id") for c in ([cohort_ids] if isinstance(cohort_ids, int) else cohort_ids)
    ]
    if not ids:
        raise StudyError("give at least one cohort id")
    require_tables(cdm, ["cohort", "person"], "characterization")
    values = {"ids": (["cid"], [[i] for i in ids])}
    first = settings.first_entry_only

    demo = fetch_df(cdm, build(_demographics_sql(first), cdm, values))
    summ = demo[demo["part"] == "summary"]
    sizes = {int(c): int(n) for c, n in zip(summ["cohort_id"], summ["n"], strict=True)}

    # -- demographics (counts with margins over level: percentages of the cohort)
    groups = demo[demo["part"] == "group"].copy()
    groups["cohort_id"] = groups["cohort_id"].astype("int64")
    groups["level"] = [
        (f"{int(lv) * 5}-{int(lv) * 5 + 4}" if var == "age_group" else _sex_name(lv))
        for var, lv in zip(groups["variable"], groups["level"], strict=True)
    ]
    groups["n"] = groups["n"].astype("int64")
    groups = groups[["cohort_id", "variable", "level", "n"]].reset_index(drop=True)
    groups["percent"] = [100 * n / sizes[c] for c, n in zip(groups["cohort_id"], groups["n"], strict=True)]
    demographics = ResultTable(
        name=f"{name}_demographics",
        kind="counts",
        data=groups,
        dimensions=["cohort_id", "variable", "level"],
        count_columns=["n"],
        margins=["level"],
        rates={"percent": RateSpec(numerator="n", denominator="n", within=["level"], per=100.0)},
        # Only the age bands and sexes somebody has are rows: a band's row would say someone is in it.
        data_levels=["level"],
    )

    # -- age (magnitudes)
    age = pd.DataFrame(
        {
            "cohort_id": summ["cohort_id"].astype("int64").to_numpy(),
            "n": summ["n"].astype("int64").to_numpy(),
            "age_mean": summ["age_mean"].astype(float).to_numpy(),
            "age_sd": summ["age_sd"].astype(float).to_numpy(),
            **{f"top{j}": summ[f"top{j}"].astype(float).to_numpy() for j in range(1, _TOPS + 1)},
        }
    )
    tops = [f"top{j}" for j in range(1, _TOPS + 1)]
    age_table = ResultTable(
        name=f"{name}_age",
        kind="magnitudes",
        data=age,
        dimensions=["cohort_id"],
        n_column="n",
        magnitude_columns=["age_mean", "age_sd"],
        magnitude_statistic={"age_mean": "mean", "age_sd": "sd"},
        top_columns={"age_mean": tops, "age_sd": tops},
    )

    # -- binary covariates per window
    frames = []
    with_names = cdm.table_exists("concept")
    for domain in settings.domains:
        require_tables(cdm, _TABLES[domain], f"{domain} covariates")
        wide = fetch_df(cdm, build(_binary_sql(domain, settings.windows, first, with_names), cdm, values))
        for k, w in enumerate(settings.windows):
            part = wide[["cohort_id", "concept_id", "concept_name", f"n_{k}"]].rename(columns={f"n_{k}": "n"})
            part = part[part["n"] > 0].assign(window=w.name, domain=domain)
            frames.append(part)
    cov_cols = ["cohort_id", "window", "domain", "concept_id", "concept_name", "n", "n_cohort", "proportion"]
    if frames and any(len(f) for f in frames):
        cov = pd.concat(frames, ignore_index=True)
        for c in ("cohort_id", "concept_id", "n"):
            cov[c] = cov[c].astype("int64")
        cov["concept_name"] = cov["concept_name"].astype(object)
        cov["n_cohort"] = cov["cohort_id"].map(sizes).astype("int64")
        cov["proportion"] = cov["n"] / cov["n_cohort"]
        cov = cov.sort_values(["cohort_id", "window", "domain", "concept_id"], kind="stable")[cov_cols]
        cov = cov.reset_index(drop=True)
    else:
        cov = _empty(cov_cols, text=("window", "domain", "concept_name"))
    covariates = ResultTable(
        name=f"{name}_covariates",
        kind="counts",
        data=cov,
        dimensions=["cohort_id", "window", "domain", "concept_id", "concept_name"],
        count_columns=["n", "n_cohort"],
        rates={"percent": RateSpec(numerator="n", denominator="n_cohort", per=100.0)},
        # A concept is a row only because somebody in the cohort has it: shown only where n is released
        # (FeatureExtraction lists covariates above a minimum cell count; OpenSAFELY redacts).
        data_levels=["concept_id", "concept_name"],
        presence_counts=["n"],
    )
    tables = {t.name: t for t in (demographics, age_table, covariates)}

    # -- measurement values (magnitudes)
    if settings.measurement_values and "measurement" in settings.domains:
        wv = {
            **values,
            "windows": (["k", "lo", "hi"], [[k, w.lo, w.end] for k, w in enumerate(settings.windows)]),
            "ends": (["e", "lo"], [[e, min(w.lo for w in settings.windows if w.end == e)]
                                   for e in sorted({w.end for w in settings.windows})]),
        }
        mv = fetch_df(cdm, build(_values_sql(first, with_names), cdm, wv))
        m_cols = [
            "cohort_id",
            "window",
            "concept_id",
            "concept_name",
            "unit_concept_id",
            "n",
            "mean",
            "sd",
            *tops,
        ]
        if len(mv):
            mv["window"] = [settings.windows[int(k)].name for k in mv["k"]]
            mv["concept_name"] = mv["concept_name"].astype(object)
            for c in ("cohort_id", "concept_id", "unit_concept_id", "n"):
                mv[c] = mv[c].astype("int64")
            for c in ("mean", "sd", *tops):
                mv[c] = mv[c].astype(float)
            mv = mv.sort_values(["cohort_id", "window", "concept_id", "unit_concept_id"])[m_cols]
            mv = mv.reset_index(drop=True)
        else:
            mv = _empty(m_cols, text=("window", "concept_name"))
        tables[f"{name}_measurements"] = ResultTable(
            name=f"{name}_measurements",
            kind="magnitudes",
            data=mv,
            dimensions=["cohort_id", "window", "concept_id", "concept_name", "unit_concept_id"],
            n_column="n",
            magnitude_columns=["mean", "sd"],
            magnitude_statistic={"mean": "mean", "sd": "sd"},
            top_columns={"mean": tops, "sd": tops},
            data_levels=["concept_id", "concept_name", "unit_concept_id"],
        )
    missing = [i for i in ids if sizes.get(i, 0) == 0]
    return AnalysisResult(
        "characterization",
        tables,
        empty=len(missing) == len(ids),
        notes=[Note(NoteCode.NO_ENTRIES, cohort=int(i)) for i in missing],
    )


def _empty(cols: Sequence[str], text: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object" if c in text else "float64") for c in cols}).astype(
        {c: "int64" for c in cols if c in ("cohort_id", "concept_id", "unit_concept_id", "n", "n_cohort")}
    )


# ----------------------------------------------------------------------------------------------- balance


def compare_cohorts(
    cdm: Cdm,
    target_cohort_id: int,
    comparator_cohort_id: int,
    settings: CharacterizationSettings | None = None,
    *,
    name: str = "balance",
) -> AnalysisResult:
    """Table 1 of both cohorts plus standardized mean differences.

    `{name}_smd` (counts: window, domain, concept_id, concept_name; n_target and n_comparator with
    site-side p_target, p_comparator, smd) covers demographics and binary covariates;
    Continuous SMDs (age, measurement values) need means and SDs, which are magnitudes: they are
    recomputed with smd_continuous from the released `{name}_age` and `{name}_measurements` tables
    (a counts table would release only their n). The SMD column here is site-side: release() keeps the
    counts, and smd_binary recomputes it from released values.
    """
    t_id = check_cohort_id(target_cohort_id, "target cohort id")
    c_id = check_cohort_id(comparator_cohort_id, "comparator cohort id")
    if t_id == c_id:
        raise StudyError("target and comparator are the same cohort; give two different cohort ids")
    res = characterize(cdm, [t_id, c_id], settings, name=name)
    ages = res.tables[f"{name}_age"].data.set_index("cohort_id")
    size = {c: int(ages.loc[c, "n"]) if c in ages.index else 0 for c in (t_id, c_id)}

    # Binary: demographics levels and covariates, absent rows are zero counts.
    demo = res.tables[f"{name}_demographics"].data.assign(
        window="index", domain=lambda f: f["variable"], concept_id=0, concept_name=lambda f: f["level"]
    )
    cov = res.tables[f"{name}_covariates"].data
    keys = ["window", "domain", "concept_id", "concept_name"]
    both = pd.concat([demo[["cohort_id", *keys, "n"]], cov[["cohort_id", *keys, "n"]]], ignore_index=True)
    wide = both.pivot_table(index=keys, columns="cohort_id", values="n", aggfunc="sum", fill_value=0)
    wide = wide.reindex(columns=[t_id, c_id], fill_value=0).reset_index()
    wide = wide.rename(columns={t_id: "n_target", c_id: "n_comparator"})
    wide.columns.name = None
    with np.errstate(divide="ignore", invalid="ignore"):
        wide["p_target"] = wide["n_target"] / size[t_id] if size[t_id] else np.nan
        wide["p_comparator"] = wide["n_comparator"] / size[c_id] if size[c_id] else np.nan
    wide["smd"] = smd_binary(wide["p_target"], wide["p_comparator"])
    for c in ("concept_id", "n_target", "n_comparator"):
        wide[c] = wide[c].astype("int64")
    res.tables[f"{name}_smd"] = ResultTable(
        name=f"{name}_smd",
        kind="counts",
        data=wide,
        dimensions=keys,
        count_columns=["n_target", "n_comparator"],
        # Concepts (and the demographic levels) found in either cohort; a zero beside a blank would
        # single out the cohort that has the concept, so zeros are blank here too.
        data_levels=["concept_id", "concept_name"],
    )

    res.analysis = "compare_cohorts"
    return res
