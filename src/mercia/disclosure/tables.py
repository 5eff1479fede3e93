"""Result tables: what analyses hand to `release()`.

A `ResultTable` is still inside the site: it holds exact numbers (and, for magnitude tables, the largest
contributions per cell, which are single persons' values). Only `release()` turns it into a
`ReleasedTable`.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mercia.errors import DisclosureError

Kind = Literal["counts", "magnitudes", "rates", "model", "survival"]
MagnitudeStatistic = Literal["sum", "mean", "sd", "quantile", "extreme"]


class RateSpec(BaseModel):
    """A derived column `numerator / denominator * per`, recomputed from *released* values only.

    `denominator` names a count column of the same row or, with `within`, the released margin of that
    column totalled over the `within` dimensions (e.g. a column percentage of a Table 1: numerator 'n',
    denominator 'n', within ['level'], per 100). A denominator in `exposure_columns` (person-time) is
    used as given.
    """

    model_config = ConfigDict(frozen=True)

    numerator: str
    denominator: str
    per: float = 1.0
    within: list[str] | None = None


class ModelInfo(BaseModel):
    """What a fitted model rests on: residual degrees of freedom, observations and events."""

    model_config = ConfigDict(frozen=True)

    df_resid: float
    n_obs: int | None = None
    n_events: int | None = None


SURVIVAL_COLUMNS = ("time", "n_at_risk", "n_events", "n_censored")


class ResultTable(BaseModel):
    """An analysis result waiting for disclosure control.

    kinds and the columns they use:
    - counts: `dimensions` (category labels) and `count_columns`; `margins` lists the dimensions to
      total over (totals are computed and released by `release()`, labelled `total_label`);
      `hierarchies[dim]` maps a level to its parent level for hierarchical totals; `sequential` marks
      an attrition table (rows in order, each a subset of the one before).
    - rates: like counts, plus `rates` (derived columns) and optional `exposure_columns` (person-time,
      or another sum over persons): released rounded to the policy's `exposure_base`, and missing in
      rows where a count is suppressed.
    - magnitudes: `magnitude_columns` (per-cell statistics, see `magnitude_statistic`: sum, mean, sd,
      quantile, or extreme for a min or max, which is one person's value and never leaves),
      `n_column` (contributors per cell) and `top_columns[col]` (the largest contributions, largest
      first, at least as many as the policy's N-k n and 2 for the p% rule). Top columns never leave.
    - model: a coefficient table (any columns) with `model` info; optional per-term `count_columns`.
    - survival: one row per distinct time (per group in `dimensions`) with columns time, n_at_risk,
      n_events, n_censored; estimates are recomputed from released numbers.

    Row presence: `data_levels` names the columns whose levels were read from the data (concepts found
    in the cohort, months in which someone entered), so that a row exists only because someone has
    that level. In such a table a row whose `presence_counts` (default: every count column; for
    magnitudes the n column) are all suppressed is dropped whole, zeros in those counts are
    suppressed like small ones (so a missing row cannot be told from a zero), and for model tables
    a withheld term's row goes too. Levels fixed before the data are seen (age bands, the package's
    cohorts and windows) need no declaration. A dropped row's other counts are suppressed with it (and
    protected by secondary suppression), so no margin gives them back.

    `distinct_counts` are count columns of distinct persons, which do not add up across cells (a person
    is in several years): they are released in interior cells only, and a margin's value for row
    presence is the largest of its cells, a lower bound of its distinct persons.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    name: str = Field(min_length=1)
    kind: Kind
    data: pd.DataFrame
    dimensions: list[str] = Field(default_factory=list)
    count_columns: list[str] = Field(default_factory=list)
    margins: list[str] = Field(default_factory=list)
    hierarchies: dict[str, dict[str, str]] = Field(default_factory=dict)
    total_label: str = "Total"
    sequential: bool = False
    rates: dict[str, RateSpec] = Field(default_factory=dict)
    exposure_columns: list[str] = Field(default_factory=list)
    magnitude_columns: list[str] = Field(default_factory=list)
    magnitude_statistic: dict[str, MagnitudeStatistic] = Field(default_factory=dict)
    n_column: str | None = None
    top_columns: dict[str, list[str]] = Field(default_factory=dict)
    model: ModelInfo | None = None
    data_levels: list[str] = Field(default_factory=list)
    presence_counts: list[str] | None = None
    distinct_counts: list[str] = Field(default_factory=list)

    @property
    def presence_columns(self) -> list[str]:
        """The counts whose release justifies a row of a `data_levels` table."""
        if self.presence_counts is not None:
            return list(self.presence_counts)
        if self.kind == "magnitudes":
            return [self.n_column] if self.n_column else []
        return list(self.count_columns)

    @model_validator(mode="after")
    def _check(self) -> ResultTable:
        cols = set(self.data.columns)
        where = f"result table {self.name!r} ({self.kind})"

        def need(names: list[str], what: str) -> None:
            missing = [c for c in names if c not in cols]
            if missing:
                raise DisclosureError(
                    f"{where}: {what} {missing} not in the data (columns: {sorted(map(str, cols))}); "
                    "name existing columns"
                )

        need(self.dimensions, "dimensions")
        need(self.count_columns, "count_columns")
        need(self.exposure_columns, "exposure_columns")
        need(self.magnitude_columns, "magnitude_columns")
        bad_margins = [m for m in self.margins if m not in self.dimensions]
        if bad_margins:
            raise DisclosureError(
                f"{where}: margins {bad_margins} must be among dimensions {self.dimensions}"
            )
        bad_h = [h for h in self.hierarchies if h not in self.dimensions]
        if bad_h:
            raise DisclosureError(f"{where}: hierarchies {bad_h} must be among dimensions {self.dimensions}")
        for c in self.count_columns:
            s = self.data[c]
            if s.isna().any() or not pd.api.types.is_numeric_dtype(s) or (s < 0).any() or (s % 1 != 0).any():
                raise DisclosureError(
                    f"{where}: count column {c!r} must hold non-negative whole numbers with no missing "
                    "values; fill missing counts with 0 before release"
                )
        key = [*self.dimensions, "time"] if self.kind == "survival" else self.dimensions
        if key and key[0] in cols and all(k in cols for k in key) and self.data.duplicated(key).any():
            raise DisclosureError(
                f"{where}: two rows share the same {key}; aggregate to one row per cell first"
            )
        for name, spec in self.rates.items():
            if spec.numerator not in self.count_columns:
                raise DisclosureError(
                    f"{where}: rate {name!r} numerator {spec.numerator!r} must be a count column"
                )
            if spec.denominator not in self.count_columns + self.exposure_columns:
                raise DisclosureError(
                    f"{where}: rate {name!r} denominator {spec.denominator!r} must be a count or exposure column"
                )
            if spec.within and any(w not in self.margins for w in spec.within):
                raise DisclosureError(
                    f"{where}: rate {name!r} is within {spec.within}, which must be margins ({self.margins}) so "
                    "its released total exists"
                )
        if self.kind == "magnitudes":
            if not self.magnitude_columns or self.n_column is None:
                raise DisclosureError(f"{where}: give magnitude_columns and n_column (contributors per cell)")
            need([self.n_column], "n_column")
            for m in self.magnitude_columns:
                tops = self.top_columns.get(m)
                if not tops:
                    raise DisclosureError(
                        f"{where}: magnitude column {m!r} needs top_columns (largest contributions per cell, "
                        "largest first) for the dominance rules"
                    )
                need(tops, f"top_columns of {m!r}")
        if self.data_levels:
            if self.kind == "model":
                need(self.data_levels, "data_levels")
            elif not set(self.data_levels) <= set(self.dimensions):
                raise DisclosureError(
                    f"{where}: data_levels {self.data_levels} must be among dimensions {self.dimensions}"
                )
            if self.kind == "survival" or self.sequential:
                raise DisclosureError(
                    f"{where}: data_levels apply to counts, rates, magnitudes and model tables, not to "
                    "survival curves or attrition steps"
                )
        if self.distinct_counts and (self.kind not in ("counts", "rates") or self.sequential
                                     or not set(self.distinct_counts) <= set(self.count_columns)):
            raise DisclosureError(
                f"{where}: distinct_counts {self.distinct_counts} must be count columns of a counts or rates table"
            )
        if self.presence_counts is not None:
            allowed = [self.n_column] if self.kind == "magnitudes" else self.count_columns
            if not self.presence_counts or not set(self.presence_counts) <= set(allowed):
                raise DisclosureError(
                    f"{where}: presence_counts {self.presence_counts} must be one or more of {allowed}"
                )
        if self.kind == "model" and self.model is None:
            raise DisclosureError(f"{where}: give model=ModelInfo(df_resid=..., n_obs=..., n_events=...)")
        if self.kind == "survival":
            need(list(SURVIVAL_COLUMNS), "survival columns")
            for c in SURVIVAL_COLUMNS[1:]:
                s = self.data[c]
                if s.isna().any() or (s < 0).any() or (s % 1 != 0).any():
                    raise DisclosureError(
                        f"{where}: survival column {c!r} must hold non-negative whole numbers"
                    )
        if self.sequential and (self.margins or len(self.dimensions) > 1):
            raise DisclosureError(
                f"{where}: an attrition (sequential) table has at most one dimension (the step label) and "
                "no margins"
            )
        return self
