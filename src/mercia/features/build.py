"""build_covariates: a FeatureExtraction-style covariate matrix computed in the database.

Every query is a constant SQL template parsed into a sqlglot tree (`mercia.cdm.query.build`);
cohort ids, excluded concepts and score definitions travel as VALUES lists of integers, window days
as bound parameters. The database returns one row per (cohort entry, concept) present, never a dense
matrix: per window end it returns each entry's latest record offset per concept, and the windows
sharing that end are cut from it here. Rows arrive as Arrow and go straight into a sparse matrix, so
memory grows with the non-zeros, not with rows x covariates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mercia.cdm import Cdm
from mercia.cdm.query import Values, build, check_cohort_id, fetch_df, require_tables
from mercia.errors import StudyError
from mercia.features import scores
from mercia.features.data import CovariateData
from mercia.features.settings import WINDOW_SLOT, CovariateSettings, Window

MALE, FEMALE = 8507, 8532
# SNOMED's roots ("Clinical finding", "Disease") say nothing about a person; FeatureExtraction's
# condition groups leave them out too.
_TOO_GENERAL = (441480, 4274025)


def _rows_cte(first_entry_only: bool) -> str:
    # Entries are numbered in a fixed order so that row_id means the same thing in every query.
    first = "WHERE rn = 1" if first_entry_only else ""
    return f"""
    cohort_rows AS (
      SELECT CAST(ROW_NUMBER() OVER (ORDER BY cohort_definition_id, subject_id, cohort_start_date) - 1
                  AS BIGINT) AS row_id,
             subject_id AS person_id, cohort_definition_id, cohort_start_date
      FROM (SELECT cohort_definition_id, subject_id, cohort_start_date,
                   ROW_NUMBER() OVER (PARTITION BY cohort_definition_id, subject_id
                                      ORDER BY cohort_start_date) AS rn
            FROM cohort WHERE cohort_definition_id IN (SELECT cid FROM cohort_ids)
            GROUP BY cohort_definition_id, subject_id, cohort_start_date) e
      {first}
    ),
    excluded AS (
      SELECT concept_id FROM excluded_ids
      UNION
      SELECT ca.descendant_concept_id FROM concept_ancestor ca
      WHERE ca.ancestor_concept_id IN (SELECT concept_id FROM excluded_ids)
    )"""


@dataclass(frozen=True)
class _Domain:
    name: str
    table: str
    concept_col: str
    date_col: str
    base_analysis: int  # any time prior; +1 long, +2 medium, +3 short term
    analysis_name: str
    # Which concepts a record counts for: "self" keeps the recorded concept; otherwise the recorded
    # concept and its ancestors, filtered by `keep` (a condition on concept `a`).
    keep: str | None = None
    tables: tuple[str, ...] = field(default_factory=tuple)


def _domains(settings: CovariateSettings) -> list[_Domain]:
    out = []
    if settings.use_conditions:
        if settings.roll_up:
            out.append(_Domain("condition", "condition_occurrence", "condition_concept_id", "condition_start_date",
                               210, "ConditionGroup",
                               f"a.domain_id = 'Condition' AND a.concept_id NOT IN {_TOO_GENERAL}",
                               ("concept", "concept_ancestor")))
        else:
            out.append(_Domain("condition", "condition_occurrence", "condition_concept_id", "condition_start_date",
                               101, "ConditionOccurrence"))
    if settings.use_drugs:
        keep = "a.concept_class_id = 'Ingredient'" + (" OR a.vocabulary_id = 'ATC'" if settings.roll_up else "")
        out.append(_Domain("drug", "drug_exposure", "drug_concept_id", "drug_exposure_start_date", 410,
                           "DrugGroup", keep, ("concept", "concept_ancestor")))
    if settings.use_procedures:
        out.append(_Domain("procedure", "procedure_occurrence", "procedure_concept_id", "procedure_date", 501,
                           "ProcedureOccurrence", "a.domain_id = 'Procedure'" if settings.roll_up else None,
                           ("concept", "concept_ancestor") if settings.roll_up else ()))
    return out


def _not_excluded(col: str) -> str:
    """`col` is not an excluded concept. NOT EXISTS, not `col NOT IN (SELECT concept_id FROM excluded)`:
    Spark plans a NOT IN as a null-aware nested-loop join of every record against every excluded concept
    (tests/test_spark_plans.py). The two give the same rows: they differ only when an id is NULL, and
    neither side is: `col` is tested `<> 0` in the same WHERE (or comes from an equality join on it), and
    `excluded` holds the settings' integers and concept_ancestor.descendant_concept_id (NOT NULL in the
    CDM)."""
    return f"NOT EXISTS (SELECT 1 FROM excluded xc WHERE xc.concept_id = {col})"


def _domain_sql(d: _Domain, first_entry_only: bool) -> str:
    """Per (entry, covariate concept): the offset (days from index) of the latest record in
    [index + $lo, index + $hi]."""
    hits = f"""
    hits AS (
      SELECT r.row_id, x.{d.concept_col} AS concept_id,
             MAX(DATE_DIFF('day', r.cohort_start_date, x.{d.date_col})) AS last_off
      FROM cohort_rows r JOIN {d.table} x ON x.person_id = r.person_id
      WHERE x.{d.date_col} >= CAST(r.cohort_start_date + CAST($lo AS INTEGER) AS DATE)
        AND x.{d.date_col} <= CAST(r.cohort_start_date + CAST($hi AS INTEGER) AS DATE)
        AND x.{d.concept_col} <> 0
        AND {_not_excluded('x.' + d.concept_col)}
      GROUP BY r.row_id, x.{d.concept_col}
    )"""
    if d.keep is None:
        return f"WITH {_rows_cte(first_entry_only)},{hits} SELECT row_id, concept_id, last_off FROM hits"
    return f"""
    WITH {_rows_cte(first_entry_only)},{hits},
    expanded AS (
      SELECT row_id, concept_id, last_off FROM hits
      UNION ALL
      SELECT h.row_id, ca.ancestor_concept_id AS concept_id, h.last_off
      FROM hits h JOIN concept_ancestor ca ON ca.descendant_concept_id = h.concept_id
        AND ca.ancestor_concept_id <> ca.descendant_concept_id
    )
    SELECT e.row_id, e.concept_id, MAX(e.last_off) AS last_off
    FROM expanded e JOIN concept a ON a.concept_id = e.concept_id
    WHERE ({d.keep}) AND {_not_excluded('e.concept_id')}
    GROUP BY e.row_id, e.concept_id
    """


def _measurement_sql(first_entry_only: bool) -> str:
    return f"""
    WITH {_rows_cte(first_entry_only)}
    SELECT row_id, concept_id, unit_concept_id, v FROM (
      SELECT r.row_id, m.measurement_concept_id AS concept_id,
             COALESCE(m.unit_concept_id, 0) AS unit_concept_id, m.value_as_number AS v,
             ROW_NUMBER() OVER (PARTITION BY r.row_id, m.measurement_concept_id, COALESCE(m.unit_concept_id, 0)
                                ORDER BY m.measurement_date DESC, m.measurement_id DESC) AS rn
      FROM cohort_rows r JOIN measurement m ON m.person_id = r.person_id
      WHERE m.value_as_number IS NOT NULL AND m.measurement_concept_id <> 0
        AND {_not_excluded('m.measurement_concept_id')}
        AND m.measurement_date >= CAST(r.cohort_start_date + CAST($lo AS INTEGER) AS DATE)
        AND m.measurement_date <= CAST(r.cohort_start_date + CAST($hi AS INTEGER) AS DATE)
    ) x WHERE rn = 1
    """


def _rows_sql(first_entry_only: bool) -> str:
    return f"""
    WITH {_rows_cte(first_entry_only)}
    SELECT r.row_id, r.person_id, r.cohort_definition_id, r.cohort_start_date,
           p.gender_concept_id, p.race_concept_id, p.ethnicity_concept_id,
           EXTRACT(YEAR FROM r.cohort_start_date) - p.year_of_birth AS age,
           EXTRACT(YEAR FROM r.cohort_start_date) AS index_year,
           EXTRACT(MONTH FROM r.cohort_start_date) AS index_month,
           DATE_DIFF('day', op.start_date, r.cohort_start_date) AS prior_obs
    FROM cohort_rows r
    JOIN person p ON p.person_id = r.person_id
    LEFT JOIN (SELECT r2.row_id, MIN(o.observation_period_start_date) AS start_date
               FROM cohort_rows r2 JOIN observation_period o ON o.person_id = r2.person_id
                 AND o.observation_period_start_date <= r2.cohort_start_date
                 AND o.observation_period_end_date >= r2.cohort_start_date
               GROUP BY r2.row_id) op ON op.row_id = r.row_id
    ORDER BY r.row_id
    """


def _score_sql(first_entry_only: bool) -> str:
    return f"""
    WITH {_rows_cte(first_entry_only)},
    score_concepts AS (
      (SELECT s.cat, s.weight, s.concept_id FROM score_defs s WHERE s.mode IN (0, 1)
       UNION
       SELECT s.cat, s.weight, ca.descendant_concept_id FROM score_defs s
       JOIN concept_ancestor ca ON ca.ancestor_concept_id = s.concept_id WHERE s.mode = 1)
      EXCEPT
      SELECT s.cat, s.weight, ca.descendant_concept_id FROM score_defs s
      JOIN concept_ancestor ca ON ca.ancestor_concept_id = s.concept_id WHERE s.mode = 2
    )
    SELECT row_id, SUM(weight) AS score FROM (
      SELECT DISTINCT r.row_id, sc.cat, sc.weight
      FROM cohort_rows r
      JOIN condition_occurrence co ON co.person_id = r.person_id
        AND co.condition_start_date <= r.cohort_start_date
      JOIN score_concepts sc ON sc.concept_id = co.condition_concept_id
    ) x GROUP BY row_id
    """


class _Collector:
    """Sparse triplets and reference rows gathered analysis by analysis."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.cov: list[np.ndarray] = []
        self.val: list[np.ndarray] = []
        self.ref: dict[int, tuple[str, int, str, int, str, str]] = {}

    def add(self, rows: np.ndarray, cov: np.ndarray, val: np.ndarray) -> None:
        if len(rows):
            self.rows.append(rows.astype(np.int64))
            self.cov.append(cov.astype(np.int64))
            self.val.append(val.astype(np.float64))

    def refer(self, cov_id: int, name: str, analysis_id: int, analysis_name: str, concept_id: int,
              window: str, kind: str) -> None:
        self.ref[int(cov_id)] = (name, analysis_id, analysis_name, concept_id, window, kind)


def build_covariates(
    cdm: Cdm,
    cohort_ids: Sequence[int],
    settings: CovariateSettings | None = None,
    *,
    first_entry_only: bool = True,
) -> CovariateData:
    """Covariates of every entry of the given cohorts (each person's first entry per cohort with
    `first_entry_only`), index = cohort start. Rows are ordered by (cohort id, person, start)."""
    settings = settings or CovariateSettings()
    ids = [check_cohort_id(c, "cohort id") for c in cohort_ids]
    if not ids:
        raise StudyError("give at least one cohort id to build covariates for")
    if len(set(ids)) != len(ids):
        raise StudyError(f"cohort ids repeat: {ids}")
    require_tables(cdm, ["cohort", "person", "observation_period", "concept_ancestor"], "covariates")
    values: dict[str, Values] = {
        "cohort_ids": (["cid"], [[i] for i in ids]),
        # -1 is no concept: it keeps the list non-empty when nothing is excluded.
        "excluded_ids": (["concept_id"], [[c] for c in [-1, *settings.excluded_concept_ids]]),
    }

    def run(sql: str, params: dict[str, object] | None = None, extra: dict[str, Values] | None = None) -> pd.DataFrame:
        return fetch_df(cdm, build(sql, cdm, {**values, **(extra or {})}), params)

    base = run(_rows_sql(first_entry_only))
    n = len(base)
    rows = base[["row_id", "person_id", "cohort_definition_id", "cohort_start_date"]].copy()
    rows["row_id"] = rows["row_id"].astype(np.int64)
    rows["person_id"] = rows["person_id"].astype(np.int64)
    rows["cohort_definition_id"] = rows["cohort_definition_id"].astype(np.int64)
    rows["cohort_start_date"] = pd.to_datetime(rows["cohort_start_date"]).dt.date
    col = _Collector()
    row_ids = np.arange(n, dtype=np.int64)
    if settings.use_demographics and n:
        _demographics(base, col, row_ids)
    for d in _domains(settings):
        require_tables(cdm, [d.table, *d.tables], f"{d.name} covariates")
        _domain(cdm, d, settings.windows, first_entry_only, run, col)
    if settings.use_measurements:
        require_tables(cdm, ["measurement"], "measurement value covariates")
        for w in settings.windows:
            _measurements(w, first_entry_only, run, col)
    if settings.use_charlson or settings.use_chads2vasc:
        require_tables(cdm, ["condition_occurrence"], "comorbidity scores")
    if settings.use_charlson:
        got = run(_score_sql(first_entry_only), None,
                  {"score_defs": (["cat", "weight", "concept_id", "mode"],
                                  scores.definition_rows(scores.charlson_categories()))})
        cid = 1000 + scores.CHARLSON_ANALYSIS_ID
        col.add(got["row_id"].to_numpy(), np.full(len(got), cid), got["score"].to_numpy(dtype=float))
        col.refer(cid, "Charlson index - Romano adaptation", scores.CHARLSON_ANALYSIS_ID, "CharlsonIndex", 0,
                  "any time prior through 0 days relative to index", "continuous")
    if settings.use_chads2vasc and n:
        got = run(_score_sql(first_entry_only), None,
                  {"score_defs": (["cat", "weight", "concept_id", "mode"], scores.definition_rows(scores.CHADS2VASC))})
        total = np.zeros(n)
        np.add.at(total, got["row_id"].to_numpy(dtype=np.int64), got["score"].to_numpy(dtype=float))
        total += [scores.chads2vasc_age_sex(int(a), int(g))
                  for a, g in zip(base["age"], base["gender_concept_id"].fillna(0), strict=True)]
        nz = total > 0
        cid = 1000 + scores.CHADS2VASC_ANALYSIS_ID
        col.add(row_ids[nz], np.full(int(nz.sum()), cid), total[nz])
        col.refer(cid, "CHA2DS2-VASc", scores.CHADS2VASC_ANALYSIS_ID, "Chads2Vasc", 0,
                  "any time prior through 0 days relative to index", "continuous")
    return _assemble(cdm, rows, col, settings, values)


def _demographics(base: pd.DataFrame, col: _Collector, row_ids: np.ndarray) -> None:
    for field_, aid, aname in (("gender_concept_id", 1, "DemographicsGender"),
                               ("race_concept_id", 4, "DemographicsRace"),
                               ("ethnicity_concept_id", 5, "DemographicsEthnicity")):
        v = base[field_].fillna(0).to_numpy(dtype=np.int64)
        keep = v != 0
        col.add(row_ids[keep], v[keep] * 1000 + aid, np.ones(int(keep.sum())))
        for c in np.unique(v[keep]):
            col.refer(int(c) * 1000 + aid, f"{field_.split('_')[0]} = concept {c}", aid, aname, int(c), "index", "binary")
    age = base["age"].to_numpy(dtype=float)
    col.add(row_ids, np.full(len(age), 1002), age)
    col.refer(1002, "age in years", 2, "DemographicsAge", 0, "index", "continuous")
    group = np.floor(age / 5).astype(np.int64)
    col.add(row_ids, (group + 1) * 1000 + 3, np.ones(len(age)))
    for g in np.unique(group):
        col.refer((int(g) + 1) * 1000 + 3, f"age group: {5 * g:>3} - {5 * g + 4:>3}", 3, "DemographicsAgeGroup", 0,
                  "index", "binary")
    for field_, aid, aname in (("index_year", 6, "DemographicsIndexYear"), ("index_month", 7, "DemographicsIndexMonth")):
        v = base[field_].to_numpy(dtype=np.int64)
        col.add(row_ids, v * 1000 + aid, np.ones(len(v)))
        for c in np.unique(v):
            col.refer(int(c) * 1000 + aid, f"{field_.replace('_', ' ')}: {c}", aid, aname, 0, "index", "binary")
    prior = base["prior_obs"].to_numpy(dtype=float)
    ok = ~np.isnan(prior)
    col.add(row_ids[ok], np.full(int(ok.sum()), 1008), prior[ok])
    col.refer(1008, "observation time (days) prior to index", 8, "DemographicsPriorObservationTime", 0, "index",
              "continuous")


def _domain(cdm: Cdm, d: _Domain, windows: Sequence[Window], first_entry_only: bool, run, col: _Collector) -> None:
    sql = _domain_sql(d, first_entry_only)
    for end in sorted({w.end for w in windows}):
        ws = [w for w in windows if w.end == end]
        got = run(sql, {"lo": min(w.lo for w in ws), "hi": end})
        r = got["row_id"].to_numpy(dtype=np.int64)
        c = got["concept_id"].to_numpy(dtype=np.int64)
        off = got["last_off"].to_numpy(dtype=np.int64)
        for w in ws:
            aid = d.base_analysis + WINDOW_SLOT[w.kind]
            keep = off >= w.lo
            col.add(r[keep], c[keep] * 1000 + aid, np.ones(int(keep.sum())))
            for cc in np.unique(c[keep]):
                col.refer(int(cc) * 1000 + aid, "", aid, f"{d.analysis_name}{_camel(w.kind)}", int(cc), w.label,
                          "binary")


def _measurements(w: Window, first_entry_only: bool, run, col: _Collector) -> None:
    got = run(_measurement_sql(first_entry_only), {"lo": w.lo, "hi": w.end})
    aid = 705 + WINDOW_SLOT[w.kind]
    c = got["concept_id"].to_numpy(dtype=np.int64)
    u = got["unit_concept_id"].to_numpy(dtype=np.int64)
    # FeatureExtraction's MeasurementValue id: concept * 1,000,000 + (unit mod 1000) * 1000 + analysis.
    cov = c * 1_000_000 + (u % 1000) * 1000 + aid
    v = got["v"].to_numpy(dtype=float)
    col.add(got["row_id"].to_numpy(dtype=np.int64), cov, v)
    for cid, cc, uu in {(int(a), int(b), int(x)) for a, b, x in zip(cov, c, u, strict=True)}:
        col.refer(cid, f"unit {uu}", aid, f"MeasurementValue{_camel(w.kind)}", cc, w.label, "continuous")


def _camel(kind: str) -> str:
    return "".join(p.capitalize() for p in kind.split("_"))


_DOMAIN_LABEL = {1: "gender", 4: "race", 5: "ethnicity"}


def _assemble(cdm: Cdm, rows: pd.DataFrame, col: _Collector, settings: CovariateSettings,
              values: dict[str, Values]) -> CovariateData:
    n = len(rows)
    if col.rows:
        r = np.concatenate(col.rows)
        c = np.concatenate(col.cov)
        v = np.concatenate(col.val)
    else:
        r = c = np.zeros(0, dtype=np.int64)
        v = np.zeros(0)
    ids = np.array(sorted(col.ref), dtype=np.int64)
    j = np.searchsorted(ids, c)
    X = sp.csr_matrix((v, (r, j)), shape=(n, len(ids)))
    X.sum_duplicates()
    X.eliminate_zeros()
    # Rare covariates carry little and cost a column each; FeatureExtraction-style tidying drops them.
    nonzero = np.diff(X.tocsc().indptr)
    need = max(settings.min_persons, int(np.ceil(settings.min_fraction * n)))
    keep = nonzero >= need
    X = X[:, np.flatnonzero(keep)].tocsr()
    ids = ids[keep]
    ref = pd.DataFrame(
        [(int(i), *col.ref[int(i)]) for i in ids],
        columns=["covariate_id", "covariate_name", "analysis_id", "analysis_name", "concept_id", "window", "kind"],
    )
    if len(ref):
        ref = _name(cdm, ref, values)
    else:
        ref = ref.astype({"covariate_id": "int64", "analysis_id": "int64", "concept_id": "int64"})
    return CovariateData(rows=rows, X=X, ref=ref)


def _name(cdm: Cdm, ref: pd.DataFrame, values: dict[str, Values]) -> pd.DataFrame:
    """Covariate names as FeatureExtraction writes them: '<window>: <concept name>'."""
    concepts = sorted({int(c) for c in ref["concept_id"] if c})
    names: dict[int, str] = {}
    if concepts:
        got = fetch_df(cdm, build("SELECT concept_id, concept_name FROM concept WHERE concept_id IN "
                                  "(SELECT concept_id FROM wanted)", cdm,
                                  {"wanted": (["concept_id"], [[c] for c in concepts])}))
        names = dict(zip(got["concept_id"].astype(int), got["concept_name"].astype(str), strict=True))
    out = []
    for name, aid, window, concept in zip(ref["covariate_name"], ref["analysis_id"], ref["window"],
                                          ref["concept_id"], strict=True):
        cname = names.get(int(concept), f"concept {concept}")
        if aid in _DOMAIN_LABEL:
            out.append(f"{_DOMAIN_LABEL[aid]} = {cname}")
        elif 705 <= aid <= 708:
            out.append(f"{window}: {cname} ({name})")
        elif 100 < aid < 900:
            out.append(f"{window}: {cname}")
        else:
            out.append(name)
    ref = ref.copy()
    ref["covariate_name"] = out
    ref["covariate_id"] = ref["covariate_id"].astype("int64")
    ref["analysis_id"] = ref["analysis_id"].astype("int64")
    ref["concept_id"] = ref["concept_id"].astype("int64")
    return ref
