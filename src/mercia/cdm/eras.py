"""Derive DRUG_ERA and CONDITION_ERA from the clinical tables by OHDSI's rules, in SQL on any engine.

The rules are those of OHDSI's CommonDataModel era scripts ("Drug Eras", "Condition Eras"):

- condition era: condition occurrences of one concept for one person, each ending on its end date or,
  when that is empty, the day after it starts; occurrences that start no more than `persistence_window`
  days after the latest end so far join the era. `condition_occurrence_count` counts them.
- drug era: exposures rolled up to their RxNorm ingredients through CONCEPT_ANCESTOR (one row per
  ingredient of a combination drug). An exposure ends on drug_exposure_end_date, else start +
  days_supply (when that is after the start), else start + 1 day. Overlapping exposures first merge
  into sub-exposures (no window), so that days covered twice are not counted twice; sub-exposures then
  merge into eras with the persistence window. `gap_days` is the era's length less the days its
  sub-exposures cover; `drug_exposure_count` counts the exposures.

OHDSI writes this as a sort of start/end events with running counts; here each interval starts a new
era exactly when it begins after the latest (padded) end of the intervals before it, which gives the
same eras (a start on the very day a padded end falls joins, as OHDSI's event order does) with two
window functions. With `drug_era_stockpile=True` overlapping exposures are instead taken one after
another (the supply is stockpiled), shifting later exposures to start when the earlier supply ends.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from mercia.cdm.handle import Cdm
from mercia.errors import CdmError

_CDM_TABLES = {
    "drug_exposure",
    "concept_ancestor",
    "concept",
    "condition_occurrence",
    "drug_era",
    "condition_era",
}


def _islands(source: str, pad: str) -> str:
    """Rows of `source` (person_id, concept_id, start_date, end_date, ...) with `grp`, a number that is
    the same for every row of one era: a row opens a new era when it starts after every earlier row's
    end + pad. `pad` is a placeholder column name, replaced by a number literal in the tree."""
    window = "PARTITION BY person_id, concept_id ORDER BY start_date, end_date"
    return f"""
        SELECT flagged.*, SUM(is_new) OVER ({window} ROWS UNBOUNDED PRECEDING) AS grp
        FROM (
            SELECT s.*, CASE WHEN s.start_date <= MAX(s.end_date + {pad})
                        OVER ({window} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                    THEN 0 ELSE 1 END AS is_new
            FROM {source} AS s
        ) AS flagged
    """


_DRUG_TARGET = """
    SELECT d.drug_exposure_id AS exposure_id, d.person_id, c.concept_id AS concept_id,
           d.drug_exposure_start_date AS start_date,
           COALESCE(
               d.drug_exposure_end_date,
               NULLIF(d.drug_exposure_start_date + d.days_supply, d.drug_exposure_start_date),
               d.drug_exposure_start_date + 1
           ) AS end_date
    FROM drug_exposure AS d
    JOIN concept_ancestor AS ca ON ca.descendant_concept_id = d.drug_concept_id
    JOIN concept AS c ON c.concept_id = ca.ancestor_concept_id
    WHERE c.vocabulary_id = 'RxNorm' AND c.concept_class_id = 'Ingredient'
      AND d.drug_concept_id <> 0 AND COALESCE(d.days_supply, 0) >= 0
"""

# Stockpiling: with exposures in order and d_k their lengths, exposure i ends at
# max over j <= i of (start_j + d_j + ... + d_i) -- each earlier start pushes the supply forward -- which
# is cum_i + max_j (start_j - cum_{j-1}): a running maximum, so no recursion is needed.
_STOCKPILED = """
    SELECT person_id, concept_id, exposure_id,
           CAST(stock_end - dur AS DATE) AS start_date, stock_end AS end_date
    FROM (
        SELECT person_id, concept_id, exposure_id, dur,
               MAX(start_date - CAST(cum - dur AS INTEGER)) OVER (
                   PARTITION BY person_id, concept_id ORDER BY start_date, exposure_id ROWS UNBOUNDED PRECEDING
               ) + CAST(cum AS INTEGER) AS stock_end
        FROM (
            SELECT person_id, concept_id, exposure_id, start_date, CAST(end_date - start_date AS INTEGER) AS dur,
                   SUM(end_date - start_date) OVER (
                       PARTITION BY person_id, concept_id ORDER BY start_date, exposure_id ROWS UNBOUNDED PRECEDING
                   ) AS cum
            FROM drug_target
        ) AS ordered
    ) AS shifted
"""


def _drug_era_sql(stockpile: bool) -> str:
    exposures = "drug_stockpiled" if stockpile else "drug_target"
    return f"""
    WITH drug_target AS ({_DRUG_TARGET}),
    drug_stockpiled AS ({_STOCKPILED}),
    sub_grouped AS ({_islands(exposures, "zero_pad")}),
    sub_exposures AS (
        SELECT person_id, concept_id, MIN(start_date) AS start_date, MAX(end_date) AS end_date,
               COUNT(*) AS exposure_count
        FROM sub_grouped GROUP BY person_id, concept_id, grp
    ),
    era_grouped AS ({_islands("sub_exposures", "window_pad")})
    SELECT ROW_NUMBER() OVER (ORDER BY person_id, concept_id, MIN(start_date)) AS drug_era_id,
           person_id, concept_id AS drug_concept_id,
           MIN(start_date) AS drug_era_start_date, MAX(end_date) AS drug_era_end_date,
           SUM(exposure_count) AS drug_exposure_count,
           (MAX(end_date) - MIN(start_date)) - SUM(end_date - start_date) AS gap_days
    FROM era_grouped GROUP BY person_id, concept_id, grp
    """


_CONDITION_ERA_SQL = f"""
    WITH condition_target AS (
        SELECT person_id, condition_concept_id AS concept_id, condition_start_date AS start_date,
               COALESCE(condition_end_date, condition_start_date + 1) AS end_date
        FROM condition_occurrence
    ),
    grouped AS ({_islands("condition_target", "window_pad")})
    SELECT ROW_NUMBER() OVER (ORDER BY person_id, concept_id, MIN(start_date)) AS condition_era_id,
           person_id, concept_id AS condition_concept_id,
           MIN(start_date) AS condition_era_start_date, MAX(end_date) AS condition_era_end_date,
           COUNT(*) AS condition_occurrence_count
    FROM grouped GROUP BY person_id, concept_id, grp
"""

_DRUG_ERA_COLUMNS = [
    "drug_era_id", "person_id", "drug_concept_id", "drug_era_start_date", "drug_era_end_date",
    "drug_exposure_count", "gap_days",
]  # fmt: skip
_CONDITION_ERA_COLUMNS = [
    "condition_era_id", "person_id", "condition_concept_id", "condition_era_start_date",
    "condition_era_end_date", "condition_occurrence_count",
]  # fmt: skip


def _tree(cdm: Cdm, sql: str, window: int) -> exp.Select:
    """Parse our own constant SQL into a tree, then point its tables at the CDM's schemas and put the
    window in as a number literal. No caller text is ever part of `sql`."""
    tree = sqlglot.parse_one(sql, read="postgres")
    assert isinstance(tree, exp.Select)

    def fix(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Table) and not node.db and node.name in _CDM_TABLES:
            alias = node.alias
            return cdm.table(node.name, alias=alias or None)
        if isinstance(node, exp.Column) and not node.table and node.name in ("window_pad", "zero_pad"):
            return exp.Literal.number(window if node.name == "window_pad" else 0)
        return node

    return tree.transform(fix)


def drug_era_query(cdm: Cdm, *, persistence_window: int = 30, stockpile: bool = False) -> exp.Select:
    """The drug eras as a SELECT with DRUG_ERA's columns (for inspection or comparison)."""
    return _tree(cdm, _drug_era_sql(stockpile), _check_window(persistence_window))


def condition_era_query(cdm: Cdm, *, persistence_window: int = 30) -> exp.Select:
    """The condition eras as a SELECT with CONDITION_ERA's columns."""
    return _tree(cdm, _CONDITION_ERA_SQL, _check_window(persistence_window))


def derive_eras(
    cdm: Cdm, *, persistence_window: int = 30, drug_era_stockpile: bool = False
) -> dict[str, int]:
    """Replace DRUG_ERA and CONDITION_ERA with eras derived from DRUG_EXPOSURE and CONDITION_OCCURRENCE.

    One transaction: on failure both tables keep their old rows. Returns the rows written per table.
    """
    window = _check_window(persistence_window)
    missing = [
        t
        for t in ("drug_exposure", "concept_ancestor", "concept", "condition_occurrence")
        if not cdm.table_exists(t)
    ]
    if missing:
        raise CdmError(
            f"cannot derive eras: table(s) {', '.join(missing)} missing; load the clinical data and vocabulary first"
        )
    jobs = [
        (
            "drug_era",
            _DRUG_ERA_COLUMNS,
            drug_era_query(cdm, persistence_window=window, stockpile=drug_era_stockpile),
        ),
        ("condition_era", _CONDITION_ERA_COLUMNS, condition_era_query(cdm, persistence_window=window)),
    ]
    with cdm.transaction():
        cdm.create_tables([name for name, _, _ in jobs])
        for name, columns, query in jobs:
            cdm.execute(exp.Delete(this=cdm.table(name)))
            cdm.execute(
                exp.Insert(
                    this=exp.Schema(
                        this=cdm.table(name), expressions=[exp.to_identifier(c, quoted=True) for c in columns]
                    ),
                    expression=query,
                )
            )
        return {name: cdm.row_count(name) for name, _, _ in jobs}


def _check_window(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise CdmError(f"persistence_window must be a whole number of days >= 0, not {days!r}")
    return days
