"""`release()`: the single door through which every result table leaves a site.

Writers of results elsewhere (node responses, reports, files) accept only a `ReleasedTable`, and only
this module can build one: its constructor wants a private token. Every decision is written to the
`DisclosureLog` passed in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mercia.disclosure.log import DisclosureLog
from mercia.disclosure.policy import DisclosurePolicy, round_count
from mercia.disclosure.suppression import CellStructure, SuppressionResult, is_small, suppress
from mercia.disclosure.tables import SURVIVAL_COLUMNS, ResultTable
from mercia.errors import DisclosureError

_RELEASE_TOKEN = object()


class ReleasedTable:
    """A result table that has passed disclosure control. Built only by `release()`."""

    __slots__ = ("_data", "kind", "model_info", "name", "policy", "site", "status")

    def __init__(
        self,
        *,
        _token: object,
        name: str,
        kind: str,
        data: pd.DataFrame,
        policy: DisclosurePolicy,
        site: str | None,
        status: str,
        model_info: dict[str, Any] | None = None,
    ) -> None:
        if _token is not _RELEASE_TOKEN:
            raise DisclosureError(
                "a ReleasedTable can only be made by mercia.disclosure.release(); pass your ResultTable "
                "through release() with the site's policy"
            )
        self.name = name
        self.kind = kind
        self._data = data.reset_index(drop=True)
        self.policy = policy
        self.site = site
        self.status = status
        self.model_info = model_info

    @property
    def data(self) -> pd.DataFrame:
        # A copy, so nobody can change a released table after the fact.
        return self._data.copy()

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_pandas(self._data, preserve_index=False)

    def to_parquet(self, path: str | Path) -> None:
        pq.write_table(self.to_arrow(), path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "site": self.site,
            "status": self.status,
            "policy": self.policy.model_dump(),
            "model_info": self.model_info,
            "columns": [str(c) for c in self._data.columns],
            "rows": json.loads(self._data.to_json(orient="values")),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __repr__(self) -> str:
        return f"ReleasedTable({self.name!r}, kind={self.kind!r}, status={self.status!r}, rows={len(self._data)})"


def release(
    table: ResultTable, policy: DisclosurePolicy, *, site: str | None = None, log: DisclosureLog
) -> ReleasedTable:
    """Apply `policy` to `table` and return what may leave the site; record each decision in `log`.

    `policy` should already be the site's effective policy (`effective_policy(site_min, requested)`).
    """
    if not isinstance(table, ResultTable):
        raise DisclosureError(
            f"release() takes a ResultTable, not {type(table).__name__}; wrap the result first"
        )
    if not isinstance(policy, DisclosurePolicy):
        raise DisclosureError(
            f"release() takes a DisclosurePolicy, not {type(policy).__name__}; "
            "use effective_policy(site_min, requested)"
        )
    handler = {
        "counts": _release_counts,
        "rates": _release_counts,
        "magnitudes": _release_magnitudes,
        "model": _release_model,
        "survival": _release_survival,
    }[table.kind]
    data, status, model_info = handler(table, policy, log)
    log.record(
        table.name,
        rule="policy",
        outcome="blocked" if status == "blocked" else "released",
        reason=f"{policy.rule_summary()}" + (f" at site {site}" if site else ""),
    )
    return ReleasedTable(
        _token=_RELEASE_TOKEN,
        name=table.name,
        kind=table.kind,
        data=data,
        policy=policy,
        site=site,
        status=status,
        model_info=model_info,
    )


# --------------------------------------------------------------------------------------------- counts


def _suppression_reason(value: int, policy: DisclosurePolicy) -> tuple[str, str]:
    if value == 0:
        return "primary:zero", "zero count, and this policy treats zeros as disclosive"
    if policy.suppress_up_to > policy.threshold:
        return "primary:threshold", (
            f"count at or below {policy.suppress_up_to} (threshold {policy.threshold}, raised so that no "
            f"count rounds into 1..{policy.threshold})"
        )
    return "primary:threshold", f"count at or below the threshold {policy.threshold}"


class _Cube:
    """Interior cells of a count table plus every margin and hierarchical subtotal."""

    def __init__(self, table: ResultTable, value_columns: list[str]) -> None:
        self.dims = list(table.dimensions)
        self.total = table.total_label
        self.parent: list[dict[Any, Any]] = []
        for d in self.dims:
            h = dict(table.hierarchies.get(d, {}))
            leaves = list(pd.unique(table.data[d]))
            internal = set(h.values())
            clash = [v for v in leaves if v in internal or v == self.total]
            if clash:
                raise DisclosureError(
                    f"result table {table.name!r}: dimension {d!r} has data rows at levels {clash} that are "
                    "subtotals (hierarchy parents or the total label); give leaf rows only, subtotals are "
                    "computed"
                )
            if d in table.margins:
                for node in [*leaves, *internal]:
                    if node not in h:
                        h[node] = self.total
            self.parent.append(h)
        # Distinct persons do not add up across cells: a margin takes the largest of its cells (a lower
        # bound of its distinct persons, used for row presence only; see ResultTable.distinct_counts).
        distinct = np.array([c in table.distinct_counts for c in value_columns], dtype=bool)
        self.keys: list[tuple[Any, ...]] = []
        self.values: dict[tuple[Any, ...], np.ndarray] = {}
        for row in table.data[self.dims + value_columns].itertuples(index=False):
            key = tuple(row[: len(self.dims)])
            self.keys.append(key)
            self.values[key] = np.array(row[len(self.dims) :], dtype=float)
        self.n_interior = len(self.keys)
        for i in range(len(self.dims)):
            for key in list(self.keys):
                v = key[i]
                while v in self.parent[i]:
                    v = self.parent[i][v]
                    k2 = (*key[:i], v, *key[i + 1 :])
                    if k2 not in self.values:
                        self.keys.append(k2)
                        self.values[k2] = np.zeros_like(self.values[key])
                    self.values[k2] = np.where(distinct, np.maximum(self.values[k2], self.values[key]),
                                               self.values[k2] + self.values[key])
        self.index = {k: j for j, k in enumerate(self.keys)}

    def is_total(self, j: int) -> bool:
        return j >= self.n_interior

    def relations(self) -> list[tuple[int, tuple[int, ...]]]:
        children: list[dict[Any, list[Any]]] = []
        for i in range(len(self.dims)):
            ch: dict[Any, list[Any]] = {}
            for c, p in self.parent[i].items():
                ch.setdefault(p, []).append(c)
            children.append(ch)
        rels = []
        for key in self.keys:
            for i in range(len(self.dims)):
                kids = children[i].get(key[i])
                if not kids:
                    continue
                parts = tuple(
                    self.index[k2] for c in kids if (k2 := (*key[:i], c, *key[i + 1 :])) in self.index
                )
                if parts:
                    rels.append((self.index[key], parts))
        return rels


def _release_counts(
    table: ResultTable, policy: DisclosurePolicy, log: DisclosureLog
) -> tuple[pd.DataFrame, str, None]:
    """Counts and rates tables: the cube of cells and margins, each count column suppressed and
    rounded, person-time protected with its row, rates derived from what was released."""
    if table.sequential:
        return _release_attrition(table, policy, log)
    value_cols = table.count_columns + table.exposure_columns
    cube = _Cube(table, value_cols)
    rels = cube.relations()
    n = len(cube.keys)
    keys = [dict(zip(cube.dims, k, strict=True)) for k in cube.keys]
    out = pd.DataFrame(
        {d: pd.Series([k[i] for k in cube.keys], dtype=object) for i, d in enumerate(cube.dims)}
    )
    values = np.array([cube.values[k] for k in cube.keys]).reshape(n, len(value_cols))
    any_suppressed = np.zeros(n, dtype=bool)
    presence = set(table.presence_columns) if table.data_levels else set()
    from_data = np.array(
        [any(k[d] != table.total_label for d in table.data_levels) for k in keys], dtype=bool
    )
    # Presence counts first: a row of a level read from the data whose presence counts are all
    # suppressed is dropped, and its other counts are suppressed with it (forced, then protected by
    # secondary suppression like any suppressed cell), so no margin gives back what the row held.
    absent = from_data.copy() if presence else np.zeros(n, dtype=bool)
    order = [c for c in table.count_columns if c in presence] + [c for c in table.count_columns if c not in presence]
    for col in order:
        ci = table.count_columns.index(col)
        vals = [int(v) for v in np.rint(values[:, ci])]
        distinct = col in table.distinct_counts
        structure = CellStructure(
            values=vals, is_total=[cube.is_total(j) for j in range(n)], published=[True] * n,
            # distinct persons do not add up, so margins tie nothing and are not released
            relations=[] if distinct else rels,
        )
        forced = set(np.flatnonzero(absent).tolist()) if presence and col not in presence else set()
        res = suppress(
            structure,
            threshold=policy.suppress_up_to,
            # In a table of levels found in the data, a released zero beside a blank would mark the
            # blank as "someone, but few": zeros there are blanks too.
            zeros_disclosive=policy.zeros_disclosive or col in presence,
            secondary=policy.secondary_suppression,
            forced=forced,
        )
        out[col] = _publish_counts(
            table.name,
            keys,
            col,
            vals,
            res,
            policy,
            log,
            secondary_reason="complementary suppression: otherwise a suppressed cell follows from the totals",
            forced=forced,
        )
        if distinct:
            margins = [j for j in range(n) if cube.is_total(j)]
            out.loc[margins, col] = pd.NA
            log.record(table.name, column=col, rule="distinct", outcome="blocked",
                       reason="distinct persons do not add up across cells: released in interior cells only")
        if col in presence:
            hidden = np.zeros(n, dtype=bool)
            hidden[sorted(res.suppressed)] = True
            absent &= hidden
        any_suppressed[sorted(res.suppressed)] = True
    for ei, col in enumerate(table.exposure_columns, start=len(table.count_columns)):
        out[col] = _publish_exposure(table.name, keys, col, values[:, ei], any_suppressed, policy, log)
    _derive_rates(table, out, cube, log)
    if table.data_levels:
        out = _drop_absent_levels(table, out, keys, absent, log)
    return out, "released", None


def _drop_absent_levels(
    table: ResultTable, out: pd.DataFrame, keys: list[dict[str, Any]], absent: np.ndarray, log: DisclosureLog
) -> pd.DataFrame:
    """Drop the rows of levels read from the data whose presence counts were all suppressed (`absent`).

    Such a row exists only because somebody has that level (her concept, her entry month), so a
    blank row still says "someone here has it". Dropping says no more than a blank: a missing level
    is zero or suppressed, and the released cells are the ones secondary suppression already
    audited. Rows whose data levels are all the total label (margins) are kept: their labels come from
    the table's definition, not from the data."""
    _mark_private(log, table.name, [keys[j] for j in np.flatnonzero(absent)])
    return out.loc[~absent].reset_index(drop=True)


def _mark_private(log: DisclosureLog, name: str, dropped: list[dict[str, Any]]) -> None:
    """Log the dropped rows, and make every entry about them private: their keys name levels nobody
    may learn exist, and their number counts them. One public entry per table says the rule applies
    whether or not it dropped anything, so the public log says nothing about the rows either."""
    keys = [{str(k): str(v) for k, v in d.items()} for d in dropped]
    for key in keys:
        log.record(
            name,
            key=key,
            rule="row_presence",
            outcome="dropped",
            reason="a level read from the data whose count is suppressed: the row itself would say someone has it",
        )
    # This table's entries are the last ones in the log (release() handles one table at a time).
    j = len(log.entries) - 1
    while j >= 0 and log.entries[j].table == name:
        e = log.entries[j]
        if e.key and e.key in keys:
            log.entries[j] = e.model_copy(update={"private": True})
        j -= 1
    log.record(
        name,
        rule="row_presence",
        outcome="dropped",
        reason="rows of levels read from the data are shown only where their count is released; a missing "
        "level is zero or suppressed",
    )


def _publish_counts(
    table: str,
    keys: list[dict[str, Any]],
    col: str,
    values: list[int],
    res: SuppressionResult,
    policy: DisclosurePolicy,
    log: DisclosureLog,
    *,
    secondary_reason: str,
    forced: set[int] | frozenset[int] = frozenset(),
) -> pd.arrays.IntegerArray:
    """One count column's released values (missing where suppressed, rounded elsewhere), with one log
    entry per cell: the single place where a count cell is decided, for every kind of count table."""
    released: list[Any] = []
    for j, where in enumerate(keys):
        if j in forced:
            log.record(table, key=where, column=col, rule="row_presence", outcome="suppressed",
                       reason="its row's persons are suppressed: the row is dropped with all it holds")
            released.append(pd.NA)
        elif j in res.primary:
            rule, reason = _suppression_reason(values[j], policy)
            log.record(table, key=where, column=col, rule=rule, outcome="suppressed", reason=reason)
            released.append(pd.NA)
        elif j in res.secondary:
            log.record(
                table, key=where, column=col, rule="secondary", outcome="suppressed", reason=secondary_reason
            )
            released.append(pd.NA)
        else:
            released.append(_log_released_count(table, where, col, values[j], policy, log))
    return pd.array(released, dtype="Int64")


def _publish_exposure(
    table: str,
    keys: list[dict[str, Any]],
    col: str,
    values: np.ndarray,
    suppressed: np.ndarray,
    policy: DisclosurePolicy,
    log: DisclosureLog,
) -> np.ndarray:
    """Person-time: a sum of each person's follow-up, so it is protected like the row's counts and
    never released exact.

    - Missing where a count of its row is suppressed (primary or secondary): a small cell's person-time
      is its few patients' follow-up, and with secondary suppression the same pattern keeps it from
      following out of the margins.
    - Rounded elsewhere to a multiple of `policy.exposure_base` (the count rounding base unless the
      policy says otherwise; whole units at least): exact sums let a margin minus its released cells,
      or two releases differing by one patient, give that patient's follow-up to the day.
    """
    base = policy.exposure_base
    rounded = np.floor(np.asarray(values, dtype=float) / base + 0.5) * base
    released = np.where(suppressed, np.nan, rounded)
    for j, where in enumerate(keys):
        if suppressed[j]:
            log.record(
                table,
                key=where,
                column=col,
                rule="exposure",
                outcome="suppressed",
                reason="a count in this row is suppressed, so its person-time is too",
            )
        else:
            log.record(
                table,
                key=where,
                column=col,
                rule="exposure",
                outcome="rounded",
                reason=f"person-time rounded to the nearest {base}",
            )
    return released


def _log_released_count(
    table: str, where: dict[str, Any], col: str, value: int, policy: DisclosurePolicy, log: DisclosureLog
) -> int:
    r = round_count(value, policy.rounding_base)
    if policy.rounding_base > 1:
        log.record(
            table,
            key=where,
            column=col,
            rule="rounding",
            outcome="rounded",
            reason=f"rounded to the nearest {policy.rounding_base}",
        )
    else:
        log.record(
            table, key=where, column=col, rule="threshold", outcome="released", reason="above threshold"
        )
    return r


def _as_float(s: pd.Series) -> np.ndarray:
    """Released values as floats, NaN where suppressed (Int64 columns hold pd.NA there)."""
    return pd.to_numeric(s, errors="coerce").astype("float64").to_numpy(na_value=np.nan)


def _derive_rates(table: ResultTable, out: pd.DataFrame, cube: _Cube, log: DisclosureLog) -> None:
    """Rates and proportions from released (suppressed, rounded) values only, so they reveal nothing
    the released counts do not."""
    for name, spec in table.rates.items():
        num = _as_float(out[spec.numerator])
        den = _as_float(out[spec.denominator])
        if spec.within:
            # The denominator is the released margin of the row's cell over the `within` dimensions.
            at = np.array(
                [
                    cube.index.get(
                        tuple(
                            cube.total if d in spec.within else v for d, v in zip(cube.dims, key, strict=True)
                        ),
                        -1,
                    )
                    for key in cube.keys
                ],
                dtype=int,
            )
            den = np.where(at >= 0, den[np.maximum(at, 0)], np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            rates = num / den * spec.per
        out[name] = np.where(np.isnan(num) | np.isnan(den) | (den == 0), np.nan, rates)
        log.record(
            table.name,
            column=name,
            rule="derived",
            outcome="recomputed",
            reason=f"{spec.numerator}/{spec.denominator}"
            + (f" within {spec.within}" if spec.within else "")
            + f" x {spec.per:g} from released values; missing where either is suppressed",
        )


def _release_attrition(
    table: ResultTable, policy: DisclosurePolicy, log: DisclosureLog
) -> tuple[pd.DataFrame, str, None]:
    """Each step's count = the next step's count + those it excluded. The excluded counts are not
    published but follow by subtraction, so they are hidden cells that must be protected too."""
    out = table.data[table.dimensions].copy().reset_index(drop=True)
    k = len(out)
    keys = [{d: out.at[j, d] for d in table.dimensions} or {"step": j} for j in range(k)]
    for col in table.count_columns:
        steps = [int(v) for v in table.data[col]]
        excluded = [steps[i - 1] - steps[i] for i in range(1, k)]
        if any(e < 0 for e in excluded):
            raise DisclosureError(
                f"result table {table.name!r}: attrition column {col!r} grows from one step to the next; each "
                "step must be a subset of the one before (or set sequential=False)"
            )
        values = steps + excluded
        rels = [(i - 1, (i, k + i - 1)) for i in range(1, k)]
        structure = CellStructure(
            values=values,
            is_total=[False] * len(values),
            published=[True] * k + [False] * (k - 1),
            relations=rels,
        )
        res = suppress(
            structure,
            threshold=policy.suppress_up_to,
            zeros_disclosive=policy.zeros_disclosive,
            secondary=policy.secondary_suppression,
        )
        out[col] = _publish_counts(
            table.name,
            keys,
            col,
            values[:k],
            res,
            policy,
            log,
            secondary_reason="complementary suppression: the patients excluded at a step would follow by subtraction",
        )
        if not policy.secondary_suppression:
            for i, e in enumerate(excluded, start=1):
                if is_small(e, policy.suppress_up_to, policy.zeros_disclosive):
                    log.record(
                        table.name,
                        key=keys[i],
                        column=col,
                        rule="differencing",
                        outcome="released",
                        reason="the number excluded at this step is small; only rounding protects it "
                        "(secondary suppression is off in this policy)",
                    )
    return out, "released", None


# ----------------------------------------------------------------------------------------- magnitudes


def _release_magnitudes(
    table: ResultTable, policy: DisclosurePolicy, log: DisclosureLog
) -> tuple[pd.DataFrame, str, None]:
    """Per-cell threshold, N-k dominance and p% rules, then rounding to a step that blurs any one
    person over `policy.magnitude_min_interval` (see `magnitude_step`). Top contributions never
    leave, nor do minima and maxima (one person's value).

    Reimplemented rather than run through acro: acro needs the row-level data frame to aggregate
    itself, and its N-k n is a process-wide module global."""
    assert table.n_column is not None
    data = table.data.reset_index(drop=True)
    out = data[table.dimensions].copy()
    keys = [{d: data.at[j, d] for d in table.dimensions} for j in range(len(data))]
    n_released: list[Any] = []
    for j, where in enumerate(keys):
        n = int(data.at[j, table.n_column])
        # In a table of levels found in the data a zero n is blank too (see _release_counts).
        if is_small(n, policy.suppress_up_to, policy.zeros_disclosive or bool(table.data_levels)):
            rule, reason = _suppression_reason(n, policy)
            log.record(
                table.name, key=where, column=table.n_column, rule=rule, outcome="suppressed", reason=reason
            )
            n_released.append(pd.NA)
        else:
            n_released.append(_log_released_count(table.name, where, table.n_column, n, policy, log))
    out[table.n_column] = pd.array(n_released, dtype="Int64")
    for col in table.magnitude_columns:
        stat = table.magnitude_statistic.get(col, "sum")
        tops = table.top_columns[col]
        if policy.nk_n is not None and len(tops) < policy.nk_n:
            raise DisclosureError(
                f"result table {table.name!r}: the N-k rule needs the {policy.nk_n} largest contributions of "
                f"{col!r}, but top_columns has {len(tops)}; add more top columns"
            )
        if policy.p_percent is not None and len(tops) < 2:
            raise DisclosureError(
                f"result table {table.name!r}: the p% rule needs the 2 largest contributions of {col!r}; "
                "add a second top column"
            )
        released_m: list[float] = []
        for j, where in enumerate(keys):
            n = int(data.at[j, table.n_column])
            value = float(data.at[j, col])
            top = [float(data.at[j, t]) if not pd.isna(data.at[j, t]) else 0.0 for t in tops]
            if any(t < 0 for t in top):
                raise DisclosureError(
                    f"result table {table.name!r}: negative contributions in {col!r}; dominance rules need "
                    "non-negative values (shift or split the variable)"
                )
            decision = magnitude_decision(value, n, top, stat, policy)
            if decision is None and pd.isna(n_released[j]):
                decision = "threshold", "the cell's n is suppressed"
            if decision is None and stat == "extreme":
                decision = "extreme", "a minimum or maximum is one person's value"
            if decision is not None:
                rule, reason = decision
                log.record(table.name, key=where, column=col, rule=rule, outcome="suppressed", reason=reason)
                released_m.append(np.nan)
                continue
            if n == 0 or math.isnan(value):
                released_m.append(np.nan)
                continue
            step = magnitude_step(stat, int(n_released[j]), policy)
            if step is None:
                log.record(
                    table.name,
                    key=where,
                    column=col,
                    rule="magnitude",
                    outcome="released",
                    reason="enough contributors and no dominance; exact (magnitude_min_interval is 0)",
                )
                released_m.append(value)
            elif stat == "sd" and round_to_step(value, step) - step / 2 < policy.magnitude_min_interval / 2:
                # Two SDs one person apart released either side of a step boundary b say the person is
                # within about b of the mean; no boundary below W/2 is shown (see magnitude_step).
                log.record(
                    table.name,
                    key=where,
                    column=col,
                    rule="magnitude",
                    outcome="suppressed",
                    reason=f"an SD under {policy.magnitude_min_interval / 2:g} (half the width) is not shown: two "
                    "of them one person apart would place that person within one SD of the mean",
                )
                released_m.append(np.nan)
            else:
                log.record(
                    table.name,
                    key=where,
                    column=col,
                    rule="magnitude",
                    outcome="rounded",
                    reason=f"enough contributors and no dominance; rounded to the nearest {step:g} so that "
                    f"one person's value is blurred over at least {policy.magnitude_min_interval:g}",
                )
                released_m.append(round_to_step(value, step))
        out[col] = released_m
    if table.data_levels:
        drop = out[table.n_column].isna().to_numpy() & np.array(
            [any(k[d] != table.total_label for d in table.data_levels) for k in keys], dtype=bool
        )
        _mark_private(log, table.name, [keys[j] for j in np.flatnonzero(drop)])
        out = out.loc[~drop].reset_index(drop=True)
    return out, "released", None


def nice_step(x: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that is at least `x` (x > 0): steps a reader
    recognises (57.35, not 57.3518)."""
    k = math.floor(math.log10(x))
    for m in (1.0, 2.0, 5.0, 10.0):
        step = m * 10.0**k
        if step >= x * (1 - 1e-12):
            return step
    return 10.0 ** (k + 1)  # pragma: no cover - the loop ends at 10^(k+1) >= x


def round_to_step(value: float, step: float) -> float:
    """`value` rounded to the nearest multiple of `step`, without float residue (57.35, not
    57.349999999)."""
    decimals = max(0, -math.floor(math.log10(step)) + 1)
    return round(round(value / step) * step, decimals)


def magnitude_step(statistic: str, n_released: int, policy: DisclosurePolicy) -> float | None:
    """The rounding step of a released magnitude, from released values only (the released n and the
    policy), so the step itself says nothing more about the cell; None when magnitudes are exact.

    With W = `policy.magnitude_min_interval` and n_lo the fewest persons the released n allows:

    - mean: step >= (W + 4) / (2 n_lo). Two cohorts differing by one person x, of n and n + 1, give
      sums S and S + x with S/n and (S + x)/(n + 1) known to within half a step each, so S is known
      to an interval of length n x step and S + x to one of (n + 1) x step, each >= (W + 4) / 2 long.
      Even for whole-number values (ages: sums are integers) each interval holds integers spanning
      more than its length less 2, so x = (S + x) - S ranges over more than W.
    - sum: step >= (W + 4) / 2, by the same argument with n = 1.
    - sd: step >= 2 W / sqrt(n_lo). The SDs give (n / (n + 1)) (x - mean)^2 as a difference of
      (n - 1) sd^2 terms, each known to about 2 n sd step; the person's distance from the mean,
      at most about sd sqrt(n), is then known to no better than W. Two SDs released either side of
      one step boundary b (the person near the mean) bound the distance by about b alone, so an SD is
      released only when its rounding interval starts at W/2 or more: every boundary shown is then at
      least W/2, and the interval at least W wide (the property tests in
      tests/test_attack_rows_magnitudes.py check this, and measure the mean and SD together).
    - quantile: step >= W: a quantile is (close to) one person's value, so it is shown only to W.
    """
    w = policy.magnitude_min_interval
    if w <= 0:
        return None
    n_lo = max(1, n_released - policy.rounding_base // 2)
    if statistic == "mean":
        need = (w + 4) / (2 * n_lo)
    elif statistic == "sd":
        need = 2 * w / math.sqrt(n_lo)
    elif statistic == "quantile":
        need = w
    else:  # sum
        need = (w + 4) / 2
    return nice_step(need)


def magnitude_decision(
    value: float, n: int, top: list[float], statistic: str, policy: DisclosurePolicy
) -> tuple[str, str] | None:
    """None if the cell may be released, else (rule, reason)."""
    if is_small(n, policy.suppress_up_to, policy.zeros_disclosive):
        return "threshold", f"{'no' if n == 0 else 'too few'} contributors (at most {policy.suppress_up_to})"
    if n == 0:
        return None
    total = value * n if statistic in ("mean", "sd", "quantile", "extreme") else value
    if total <= 0:
        return None  # dominance is not defined on a zero total; nothing to dominate
    if policy.nk_n is not None and policy.nk_k is not None:
        top_n = sum(sorted(top, reverse=True)[: policy.nk_n])
        # acro fails a cell when the share reaches k (>=), and so do we.
        if top_n >= policy.nk_k * total - 1e-12 * total:
            return "nk", f"the {policy.nk_n} largest contributions make {policy.nk_k:.0%} or more of the cell"
    if policy.p_percent is not None:
        s = [*sorted(top, reverse=True), 0.0, 0.0]
        rest = total - s[0] - s[1]
        # The second largest contributor knows their own value and can bound the largest within p%.
        if rest < policy.p_percent * s[0]:
            return "p_percent", f"the others are less than {policy.p_percent:.0%} of the largest contribution"
    return None


# ---------------------------------------------------------------------------------------------- model


def _release_model(
    table: ResultTable, policy: DisclosurePolicy, log: DisclosureLog
) -> tuple[pd.DataFrame, str, dict[str, Any]]:
    assert table.model is not None
    info = table.model
    data = table.data.reset_index(drop=True).copy()
    blocked_reason = None
    if info.df_resid < policy.min_model_dof:
        blocked_reason = ("min_dof", f"residual degrees of freedom below {policy.min_model_dof}")
    elif info.n_events is not None and is_small(
        info.n_events, policy.suppress_up_to, policy.zeros_disclosive
    ):
        blocked_reason = ("threshold", f"the model rests on {policy.suppress_up_to} or fewer events")
    elif info.n_obs is not None and is_small(info.n_obs, policy.suppress_up_to, policy.zeros_disclosive):
        blocked_reason = ("threshold", f"the model rests on {policy.suppress_up_to} or fewer observations")
    # No residual degrees of freedom beside n_obs: n_obs - df_resid is the number of parameters, so
    # the exact dof give the exact n that the rounding of n_obs hides. That the dof passed the
    # policy's minimum is what a reader needs, and the status says it.
    model_info: dict[str, Any] = {
        "n_obs": None
        if blocked_reason or info.n_obs is None
        else round_count(info.n_obs, policy.rounding_base),
        "n_events": None
        if blocked_reason or info.n_events is None
        else round_count(info.n_events, policy.rounding_base),
    }
    numeric = [c for c in data.columns if pd.api.types.is_numeric_dtype(data[c])]
    if blocked_reason:
        rule, reason = blocked_reason
        log.record(table.name, rule=rule, outcome="blocked", reason=reason + "; no estimate is released")
        for c in numeric:
            data[c] = np.nan
        if table.data_levels:
            # The labels of a blocked model's terms are still levels found in the data.
            keys = [
                {"row": j, **{c: data.at[j, c] for c in data.columns if c not in numeric}}
                for j in range(len(data))
            ]
            _mark_private(log, table.name, keys)
            data = data.iloc[0:0]
        return data, "blocked", model_info
    log.record(
        table.name, rule="min_dof", outcome="released",
        reason=f"residual degrees of freedom at least {policy.min_model_dof} (the dof themselves are not released)",
    )
    # A term is withheld when ANY of its counts is small (decided on the exact counts first, so blanking
    # a row for one count column never leaves another column to read a blank as a count).
    original = data.copy()
    released: dict[str, list[Any]] = {col: [] for col in table.count_columns}
    withheld: list[bool] = []
    for j in range(len(original)):
        where = {"row": j, **{c: original.at[j, c] for c in original.columns if c not in numeric}}
        small = [
            col
            for col in table.count_columns
            if is_small(int(original.at[j, col]), policy.suppress_up_to, policy.zeros_disclosive)
        ]
        if small:
            # A coefficient resting on a handful of persons describes them; drop the whole term.
            rule, reason = _suppression_reason(int(original.at[j, small[0]]), policy)
            log.record(
                table.name,
                key=where,
                column=None,
                rule=rule,
                outcome="suppressed",
                reason=f"term rests on a small count in {small[0]!r} ({reason})",
            )
            for c in numeric:
                data.at[j, c] = np.nan
            for col in table.count_columns:
                released[col].append(pd.NA)
            withheld.append(True)
        else:
            withheld.append(False)
            for col in table.count_columns:
                v = int(original.at[j, col])
                released[col].append(_log_released_count(table.name, where, col, v, policy, log))
    for col in table.count_columns:
        data[col] = pd.array(released[col], dtype="Int64")
    if table.data_levels:
        # Terms named by the data (a covariate found in the cohort): a withheld term's label alone
        # says someone has it, so its row goes.
        drop = np.array([bool(withheld[j]) for j in range(len(original))], dtype=bool)
        keys = [
            {"row": j, **{c: original.at[j, c] for c in original.columns if c not in numeric}}
            for j in range(len(original))
        ]
        _mark_private(log, table.name, [keys[j] for j in np.flatnonzero(drop)])
        data = data.loc[~drop].reset_index(drop=True)
    if withheld and all(withheld):
        # Every term withheld (a model released whole or not at all, model_support): the table says
        # so, rather than "released" with every number blank.
        log.record(table.name, rule="threshold", outcome="blocked",
                   reason="every term rests on a small count; no estimate is released")
        return data, "blocked", model_info
    return data, "released", model_info


# ------------------------------------------------------------------------------------------- survival


def _release_survival(
    table: ResultTable, policy: DisclosurePolicy, log: DisclosureLog
) -> tuple[pd.DataFrame, str, None]:
    """Kaplan-Meier steps pooled until each released step holds enough events, risk sets below the
    minimum cut off, counts rounded, and the estimate and its CI recomputed from released numbers only
    (exact step heights would let products of small fractions be factorised back into counts)."""
    frames = []
    groups = (
        table.data.groupby(table.dimensions, sort=False, dropna=False)
        if table.dimensions
        else [((), table.data)]
    )
    for gkey, g in groups:
        gkey_t = gkey if isinstance(gkey, tuple) else (gkey,)
        where = dict(zip(table.dimensions, gkey_t, strict=True))
        frames.append(_coarsen_curve(table.name, where, g, policy, log))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    cols = [*table.dimensions, *SURVIVAL_COLUMNS, "estimate", "ci_lower", "ci_upper"]
    if out.empty:
        return pd.DataFrame(columns=cols), "released", None
    return out[cols], "released", None


def _coarsen_curve(
    name: str, where: dict[str, Any], g: pd.DataFrame, policy: DisclosurePolicy, log: DisclosureLog
) -> pd.DataFrame:
    g = g.sort_values("time")
    times = g["time"].to_numpy(dtype=float)
    at_risk = g["n_at_risk"].to_numpy(dtype=int)
    events = g["n_events"].to_numpy(dtype=int)
    censored = g["n_censored"].to_numpy(dtype=int)
    unit = policy.survival_time_unit
    if unit:
        # Report at coarse times: each time moves up to the end of its interval.
        binned = np.ceil(times / unit) * unit
        df = pd.DataFrame({"t": binned, "r": at_risk, "d": events, "c": censored})
        agg = df.groupby("t", sort=True).agg(r=("r", "first"), d=("d", "sum"), c=("c", "sum")).reset_index()
        times, at_risk, events, censored = (
            agg["t"].to_numpy(float),
            agg["r"].to_numpy(int),
            agg["d"].to_numpy(int),
            agg["c"].to_numpy(int),
        )
        log.record(
            name,
            key=where,
            rule="survival_time_unit",
            outcome="coarsened",
            reason=f"times reported at multiples of {unit}",
        )
    base = policy.rounding_base
    rows: list[dict[str, Any]] = []
    start_risk = int(at_risk[0]) if len(at_risk) else 0
    if start_risk < policy.risk_set_minimum:
        log.record(
            name,
            key=where,
            rule="min_risk_set",
            outcome="suppressed",
            reason=f"the whole curve starts with fewer than {policy.risk_set_minimum} at risk",
        )
        return pd.DataFrame(columns=[*where, *SURVIVAL_COLUMNS, "estimate", "ci_lower", "ci_upper"])
    surv, var_sum = 1.0, 0.0
    rows.append(_km_row(where, 0.0, round_count(start_risk, base), 0, 0, surv, var_sum))
    pool_d = pool_c = 0
    pool_risk: int | None = None
    pooled_steps = 0
    for t, r, d, c in zip(times, at_risk, events, censored, strict=True):
        if r < policy.risk_set_minimum:
            log.record(
                name,
                key=where,
                rule="min_risk_set",
                outcome="dropped",
                reason=f"curve cut where fewer than {policy.risk_set_minimum} remain at risk",
            )
            break
        if pool_risk is None and d > 0:
            # The step's risk set is the one at its first event: persons censored at earlier times of the
            # pool left before it (taking the risk set of a censoring-only time before the event would
            # put them back at risk and bias the estimate upwards).
            pool_risk = int(r)
        pool_d += int(d)
        pool_c += int(c)
        pooled_steps += 1
        if (pool_risk is not None and pool_d >= policy.step_min_events
                and not is_small(pool_c, policy.suppress_up_to, False)):
            n_rel, d_rel, c_rel = (round_count(x, base) for x in (pool_risk, pool_d, pool_c))
            if n_rel > 0:
                surv *= 1 - d_rel / n_rel
                if n_rel > d_rel:
                    var_sum += d_rel / (n_rel * (n_rel - d_rel))
            rows.append(_km_row(where, float(t), n_rel, d_rel, c_rel, surv, var_sum))
            log.record(
                name,
                key={**where, "time": t},
                rule="survival_pooling",
                outcome="coarsened" if pooled_steps > 1 else "rounded" if base > 1 else "released",
                reason=f"step pools {pooled_steps} event time(s) to reach {policy.step_min_events}+ events",
            )
            pool_d = pool_c = pooled_steps = 0
            pool_risk = None
    if pooled_steps:
        log.record(
            name,
            key=where,
            rule="survival_pooling",
            outcome="dropped",
            reason="the tail after the last released step holds too few events or censorings",
        )
    return pd.DataFrame(rows)


def _km_row(
    where: dict[str, Any], t: float, n: int, d: int, c: int, surv: float, var_sum: float
) -> dict[str, Any]:
    # Log-log 95% CI from Greenwood's variance, as lifelines and R's survival do by default.
    lo = hi = surv
    if 0 < surv < 1 and var_sum > 0:
        se = math.sqrt(var_sum) / abs(math.log(surv))
        lo = surv ** math.exp(1.959963984540054 * se)
        hi = surv ** math.exp(-1.959963984540054 * se)
    return {
        **where,
        "time": t,
        "n_at_risk": n,
        "n_events": d,
        "n_censored": c,
        "estimate": surv,
        "ci_lower": lo,
        "ci_upper": hi,
    }
