"""Count tables: thresholds, rounding, secondary suppression checked by an independent LP attacker,
hierarchical totals, attrition chains, derived rates, and the decision log."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from mercia.disclosure import (
    OPENSAFELY,
    SACRO,
    DisclosureLog,
    DisclosurePolicy,
    RateSpec,
    ReleasedTable,
    ResultTable,
    release,
)
from mercia.errors import DisclosureError

T = "Total"


# ------------------------------------------------------------------ an independent attacker (the oracle)


def true_cells(data: pd.DataFrame, dims: list[str], col: str) -> dict[tuple[Any, ...], int]:
    """Every interior and margin cell of an n-way table, from the raw data by plain group-bys."""
    cells: dict[tuple[Any, ...], int] = {}
    for r in range(len(dims) + 1):
        for kept in itertools.combinations(dims, r):
            if kept:
                g = data.groupby(list(kept), sort=False)[col].sum()
                for k, v in g.items():
                    kt = k if isinstance(k, tuple) else (k,)
                    key = tuple(kt[kept.index(d)] if d in kept else T for d in dims)
                    cells[key] = int(v)
            else:
                cells[tuple(T for _ in dims)] = int(data[col].sum())
    return cells


def attacker_intervals(
    released: pd.DataFrame,
    dims: list[str],
    col: str,
    truth: dict[tuple[Any, ...], int],
    children: dict[str, dict[Any, list[Any]]] | None = None,
) -> dict[tuple[Any, ...], tuple[float, float]]:
    """For each suppressed cell, [min, max] over non-negative tables that agree with every released
    cell (taken at its exact true value: an attacker stronger than one who only sees rounded values)
    and satisfy every additive relation between released rows."""
    keys = [tuple(r) for r in released[dims].itertuples(index=False)]
    supp = [k for k, v in zip(keys, released[col], strict=True) if pd.isna(v)]
    col_of = {k: i for i, k in enumerate(supp)}
    keyset = set(keys)
    rows, rhs = [], []
    for k in keys:
        for i, d in enumerate(dims):
            kids = (children or {}).get(d, {}).get(k[i]) if children else None
            if kids is None:
                if k[i] != T:
                    continue
                kids = sorted(
                    {kk[i] for kk in keys if kk[i] != T and kk[:i] + kk[i + 1 :] == k[:i] + k[i + 1 :]},
                    key=str,
                )
            parts = [p for c in kids if (p := (*k[:i], c, *k[i + 1 :])) in keyset]
            if not parts:
                continue
            row = np.zeros(len(supp))
            b = 0.0
            for cell, a in [(k, 1.0)] + [(p, -1.0) for p in parts]:
                if cell in col_of:
                    row[col_of[cell]] += a
                else:
                    b -= a * truth[cell]
            rows.append(row)
            rhs.append(b)
    out = {}
    for k in supp:
        c = np.zeros(len(supp))
        c[col_of[k]] = 1
        kw: dict[str, Any] = {"bounds": (0, None), "method": "highs"}
        if rows:
            kw.update(A_eq=np.array(rows), b_eq=np.array(rhs))
        lo = linprog(c, **kw)
        hi = linprog(-c, **kw)
        assert lo.status == 0
        out[k] = (lo.fun, np.inf if hi.status == 3 else -hi.fun)
    return out


# ------------------------------------------------------------------------------------------ strategies


@st.composite
def count_tables(draw: st.DrawFn, max_dim: int = 5) -> tuple[pd.DataFrame, list[str]]:
    nr = draw(st.integers(1, max_dim))
    nc = draw(st.integers(1, max_dim))
    # Mostly small numbers so suppression patterns are busy, some large ones for contrast.
    small = st.integers(0, 12)
    value = st.one_of(small, small, st.integers(0, 60))
    vals = draw(st.lists(value, min_size=nr * nc, max_size=nr * nc))
    if nc == 1:
        return pd.DataFrame({"a": [f"a{i}" for i in range(nr)], "n": vals}), ["a"]
    rows = [(f"r{i}", f"c{j}") for i in range(nr) for j in range(nc)]
    return pd.DataFrame({"r": [r for r, _ in rows], "c": [c for _, c in rows], "n": vals}), ["r", "c"]


policy_strategy = st.builds(
    DisclosurePolicy,
    name=st.just("random"),
    threshold=st.integers(0, 10),
    zeros_disclosive=st.booleans(),
    rounding_base=st.sampled_from([1, 2, 5, 10]),
    secondary_suppression=st.booleans(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(count_tables(), policy_strategy)
def test_no_small_count_and_all_rounded(
    tab: tuple[pd.DataFrame, list[str]], policy: DisclosurePolicy
) -> None:
    data, dims = tab
    t = ResultTable(name="t", kind="counts", data=data, dimensions=dims, count_columns=["n"], margins=dims)
    log = DisclosureLog()
    rel = release(t, policy, log=log)
    # One decision per released cell, and the suppressed ones are exactly the blanks.
    decisions = {tuple(e.key[d] for d in dims): e.outcome for e in log.entries if e.column == "n"}
    assert len(decisions) == len(rel.data) == sum(e.column == "n" for e in log.entries)
    blanks = {
        tuple(map(str, k))
        for k, v in zip(rel.data[dims].itertuples(index=False), rel.data["n"], strict=True)
        if pd.isna(v)
    }
    assert {k for k, o in decisions.items() if o == "suppressed"} == blanks
    truth = true_cells(data, dims, "n")
    for key, v in zip(rel.data[dims].itertuples(index=False), rel.data["n"], strict=True):
        true = truth[tuple(key)]
        if 1 <= true <= policy.threshold or (policy.zeros_disclosive and true == 0):
            assert pd.isna(v), f"small cell {tuple(key)} released"
        if not pd.isna(v):
            assert v % policy.rounding_base == 0
            assert abs(v - true) <= policy.rounding_base / 2
    released = rel.data["n"].dropna()
    assert not ((released >= 1) & (released <= policy.threshold)).any()
    # Every cell of the full cube, margins included, is in the release.
    assert len(rel.data) == len(truth)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(count_tables(), st.integers(0, 10), st.booleans())
def test_secondary_suppression_leaves_no_cell_recoverable(
    tab: tuple[pd.DataFrame, list[str]], threshold: int, zeros: bool
) -> None:
    data, dims = tab
    policy = DisclosurePolicy(
        name="s", threshold=threshold, zeros_disclosive=zeros, secondary_suppression=True
    )
    t = ResultTable(name="t", kind="counts", data=data, dimensions=dims, count_columns=["n"], margins=dims)
    rel = release(t, policy, log=DisclosureLog())
    truth = true_cells(data, dims, "n")
    for key, (lo, hi) in attacker_intervals(rel.data, dims, "n", truth).items():
        assert hi - lo >= 1 - 1e-7, f"suppressed cell {key} pinned to [{lo}, {hi}]"
        assert lo - 1e-7 <= truth[key] <= hi + 1e-7


def test_without_secondary_suppression_a_margin_gives_the_cell_away() -> None:
    # The checker has teeth: one suppressed cell per row is recoverable from the released total.
    data = pd.DataFrame({"a": ["x", "y", "z"], "n": [3, 40, 50]})
    t = ResultTable(name="t", kind="counts", data=data, dimensions=["a"], count_columns=["n"], margins=["a"])
    policy = DisclosurePolicy(name="p", threshold=5)
    rel = release(t, policy, log=DisclosureLog())
    iv = attacker_intervals(rel.data, ["a"], "n", true_cells(data, ["a"], "n"))
    assert iv == {("x",): (3.0, 3.0)}
    rel2 = release(t, policy.model_copy(update={"secondary_suppression": True}), log=DisclosureLog())
    assert rel2.data["n"].isna().tolist() == [True, True, False, False]  # 3 and its smallest complement 40


def test_two_blocks_joined_by_one_cell_need_more_than_two_per_row() -> None:
    # Two suppressed 2x2 blocks joined by one cell: every row and column holds >= 2 suppressions,
    # yet the joining cell follows from the margins. The LP audit must catch this shape, so drive the
    # engine to it with a hand table and check the result with the attacker.
    vals = np.full((4, 4), 100)
    vals[0, 0] = vals[0, 1] = vals[1, 0] = vals[1, 1] = 2
    vals[2, 2] = vals[2, 3] = vals[3, 2] = vals[3, 3] = 2
    vals[0, 2] = 3
    data = pd.DataFrame(
        [(f"r{i}", f"c{j}", int(vals[i, j])) for i in range(4) for j in range(4)], columns=["r", "c", "n"]
    )
    t = ResultTable(
        name="t", kind="counts", data=data, dimensions=["r", "c"], count_columns=["n"], margins=["r", "c"]
    )
    rel = release(t, DisclosurePolicy(name="s", threshold=5, secondary_suppression=True), log=DisclosureLog())
    truth = true_cells(data, ["r", "c"], "n")
    for lo, hi in attacker_intervals(rel.data, ["r", "c"], "n", truth).values():
        assert hi - lo >= 1 - 1e-7


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 30), min_size=6, max_size=6), st.integers(1, 8))
def test_hierarchical_totals_protected(vals: list[int], threshold: int) -> None:
    # practices p1..p6 in regions N (p1-p3) and S (p4-p6), then England.
    hierarchy = {f"p{i}": ("N" if i <= 3 else "S") for i in range(1, 7)}
    data = pd.DataFrame({"area": list(hierarchy), "n": vals})
    t = ResultTable(
        name="h",
        kind="counts",
        data=data,
        dimensions=["area"],
        count_columns=["n"],
        margins=["area"],
        hierarchies={"area": hierarchy},
    )
    rel = release(
        t, DisclosurePolicy(name="s", threshold=threshold, secondary_suppression=True), log=DisclosureLog()
    )
    assert set(rel.data["area"]) == {*hierarchy, "N", "S", T}
    truth = {(a,): v for a, v in zip(data["area"], data["n"], strict=True)}
    truth[("N",)] = sum(vals[:3])
    truth[("S",)] = sum(vals[3:])
    truth[(T,)] = sum(vals)
    children = {"area": {"N": ["p1", "p2", "p3"], "S": ["p4", "p5", "p6"], T: ["N", "S"]}}
    for key, (lo, hi) in attacker_intervals(rel.data, ["area"], "n", truth, children).items():
        assert hi - lo >= 1 - 1e-7, key
    for (a,), v in zip(rel.data[["area"]].itertuples(index=False), rel.data["n"], strict=True):
        if 1 <= truth[(a,)] <= threshold:
            assert pd.isna(v)


def test_attrition_hides_small_exclusions() -> None:
    # 1000 -> 997 -> 500: three excluded at step 1 would follow by subtraction.
    data = pd.DataFrame({"step": ["all", "age>=18", "diabetes"], "n": [1000, 997, 500]})
    t = ResultTable(
        name="attr", kind="counts", data=data, dimensions=["step"], count_columns=["n"], sequential=True
    )
    log = DisclosureLog()
    rel = release(t, SACRO, log=log)
    released = rel.data["n"].tolist()
    assert sum(pd.isna(v) for v in released) >= 1
    # Whatever was released, 997's exclusion count is not exactly computable.
    known = [v for v in released if not pd.isna(v)]
    assert not (not pd.isna(released[0]) and not pd.isna(released[1]))
    assert known  # something is still released
    # Without secondary suppression the log warns that only rounding protects the exclusion count.
    log2 = DisclosureLog()
    release(t, OPENSAFELY, log=log2)
    assert any(e.rule == "differencing" for e in log2.entries)


def test_attrition_must_shrink() -> None:
    data = pd.DataFrame({"step": ["a", "b"], "n": [10, 20]})
    t = ResultTable(
        name="attr", kind="counts", data=data, dimensions=["step"], count_columns=["n"], sequential=True
    )
    with pytest.raises(DisclosureError, match="subset of the one before"):
        release(t, SACRO, log=DisclosureLog())


def test_rates_recomputed_from_released_counts_only() -> None:
    data = pd.DataFrame({"group": ["a", "b", "c"], "events": [3, 52, 18], "persons": [100, 211, 96]})
    t = ResultTable(
        name="r",
        kind="rates",
        data=data,
        dimensions=["group"],
        count_columns=["events", "persons"],
        rates={"risk_pct": RateSpec(numerator="events", denominator="persons", per=100)},
    )
    rel = release(t, OPENSAFELY, log=DisclosureLog()).data
    assert pd.isna(rel.loc[0, "risk_pct"])
    assert rel.loc[1, "risk_pct"] == pytest.approx(50 / 210 * 100)
    assert rel.loc[2, "risk_pct"] == pytest.approx(20 / 95 * 100)


def test_exposure_suppressed_with_its_counts() -> None:
    data = pd.DataFrame({"group": ["a", "b"], "events": [2, 40], "pyears": [13.5, 800.2]})
    t = ResultTable(
        name="r",
        kind="rates",
        data=data,
        dimensions=["group"],
        count_columns=["events"],
        exposure_columns=["pyears"],
        rates={"rate": RateSpec(numerator="events", denominator="pyears", per=1000)},
    )
    rel = release(t, SACRO, log=DisclosureLog()).data
    assert pd.isna(rel.loc[0, "pyears"]) and pd.isna(rel.loc[0, "rate"])
    # SACRO does not round counts; person-time is still released in whole units, and the rate is
    # recomputed from the released values.
    assert rel.loc[1, "pyears"] == 800.0
    assert rel.loc[1, "rate"] == pytest.approx(40 / 800 * 1000)


def _pyears_table(events: list[int], pyears: list[float]) -> ResultTable:
    data = pd.DataFrame({"band": [f"b{i}" for i in range(len(events))], "events": events, "pyears": pyears})
    return ResultTable(
        name="inc",
        kind="rates",
        data=data,
        dimensions=["band"],
        count_columns=["events"],
        exposure_columns=["pyears"],
        margins=["band"],
        rates={"rate": RateSpec(numerator="events", denominator="pyears", per=1000)},
    )


def test_person_time_rounded_to_the_policy_base_and_logged() -> None:
    t = _pyears_table([40, 25, 3], [812.6, 402.4, 97.3])
    log = DisclosureLog()
    rel = release(t, OPENSAFELY, log=log).data.set_index("band")
    # OpenSAFELY rounds counts to 5, and person-time to 5 person-years with them.
    assert rel.loc["b0", "pyears"] == 815.0 and rel.loc["b1", "pyears"] == 400.0
    assert pd.isna(rel.loc["b2", "pyears"])  # its event count (3) is redacted
    assert rel.loc["Total", "pyears"] == 1310.0  # 1312.3
    assert rel.loc["b0", "rate"] == pytest.approx(40 / 815 * 1000)
    entries = [e for e in log.for_table("inc") if e.column == "pyears"]
    assert len(entries) == 4
    assert [e.outcome for e in entries].count("rounded") == 3
    assert [e.outcome for e in entries].count("suppressed") == 1
    assert "812.6" not in log.to_json() and "1312.3" not in log.to_json()
    custom = OPENSAFELY.model_copy(update={"exposure_rounding": 100, "name": "coarse"})
    assert release(t, custom, log=DisclosureLog()).data.set_index("band").loc["b0", "pyears"] == 800.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 60), min_size=2, max_size=6),
    st.lists(st.floats(0.5, 500.0, allow_nan=False), min_size=6, max_size=6),
)
def test_suppressed_person_time_not_exact_from_the_margin(events: list[int], pyears: list[float]) -> None:
    """OpenSAFELY does no secondary suppression: the total minus the released cells bounds a redacted
    cell's person-time, but rounding keeps it from being exact (it is off by up to half a base per
    released cell)."""
    py = pyears[: len(events)]
    rel = release(_pyears_table(events, py), OPENSAFELY, log=DisclosureLog()).data.set_index("band")
    hidden = [b for b in rel.index if b != "Total" and pd.isna(rel.loc[b, "pyears"])]
    for v in rel["pyears"].dropna():
        assert v % OPENSAFELY.exposure_base == 0  # nothing released exact
    if len(hidden) == 1 and not pd.isna(rel.loc["Total", "pyears"]):
        guess = rel.loc["Total", "pyears"] - rel["pyears"].drop(index=["Total", hidden[0]]).sum()
        true = py[int(hidden[0][1:])]
        # The attacker's guess is a multiple of the base; the truth is a multiple only by chance.
        assert guess % OPENSAFELY.exposure_base == 0
        assert abs(guess - true) <= OPENSAFELY.exposure_base / 2 * len(events) + 1e-9


def test_log_records_every_cell_without_values() -> None:
    data = pd.DataFrame({"sex": ["F", "F", "M", "M"], "smoker": ["y", "n", "y", "n"], "n": [4, 123, 57, 211]})
    t = ResultTable(
        name="t1",
        kind="counts",
        data=data,
        dimensions=["sex", "smoker"],
        count_columns=["n"],
        margins=["sex", "smoker"],
    )
    log = DisclosureLog()
    rel = release(t, SACRO, site="leeds", log=log)
    cells = [e for e in log.for_table("t1") if e.column == "n"]
    assert len(cells) == len(rel.data) == 9
    assert {e.outcome for e in cells} <= {"released", "suppressed"}
    assert sum(e.outcome == "suppressed" for e in cells) == int(rel.data["n"].isna().sum())
    text = log.to_json()
    doc = json.loads(text)
    assert doc["summary"]["t1"]["suppressed"] == 4
    for v in ("123", "57", "211", "395", "127", "268", "61", "334"):
        assert v not in text, f"value {v} leaked into the log"
    public = json.loads(log.to_json(public=True))
    assert {e["rule"] for e in public["entries"] if e["outcome"] == "suppressed"} == {"suppression"}


def test_released_table_only_from_release() -> None:
    with pytest.raises(DisclosureError, match="only be made by"):
        ReleasedTable(
            _token=object(),
            name="x",
            kind="counts",
            data=pd.DataFrame(),
            policy=SACRO,
            site=None,
            status="released",
        )
    data = pd.DataFrame({"a": ["x"], "n": [20]})
    rel = release(
        ResultTable(name="t", kind="counts", data=data, dimensions=["a"], count_columns=["n"]),
        SACRO,
        log=DisclosureLog(),
    )
    d = rel.data
    d.loc[0, "n"] = 1
    assert rel.data.loc[0, "n"] == 20  # a copy: the released table cannot be edited
    assert json.loads(rel.to_json())["rows"] == [["x", 20]]
    assert rel.to_arrow().num_rows == 1


def test_helpful_errors_for_bad_tables() -> None:
    with pytest.raises(DisclosureError, match="non-negative whole numbers"):
        ResultTable(
            name="t",
            kind="counts",
            data=pd.DataFrame({"a": ["x"], "n": [-1]}),
            dimensions=["a"],
            count_columns=["n"],
        )
    with pytest.raises(DisclosureError, match="not in the data"):
        ResultTable(
            name="t",
            kind="counts",
            data=pd.DataFrame({"a": ["x"], "n": [1]}),
            dimensions=["b"],
            count_columns=["n"],
        )
    with pytest.raises(DisclosureError, match="same"):
        ResultTable(
            name="t",
            kind="counts",
            data=pd.DataFrame({"a": ["x", "x"], "n": [1, 2]}),
            dimensions=["a"],
            count_columns=["n"],
        )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 15), min_size=12, max_size=12), st.integers(1, 6))
def test_three_way_table_with_all_margins(vals: list[int], threshold: int) -> None:
    # 3-way tables are not network structures (the 2-way cycle argument fails); the LP audit still holds.
    keys = list(itertools.product(["a0", "a1"], ["b0", "b1", "b2"], ["c0", "c1"]))
    data = pd.DataFrame(keys, columns=["a", "b", "c"]).assign(n=vals)
    dims = ["a", "b", "c"]
    t = ResultTable(name="t3", kind="counts", data=data, dimensions=dims, count_columns=["n"], margins=dims)
    rel = release(
        t, DisclosurePolicy(name="s", threshold=threshold, secondary_suppression=True), log=DisclosureLog()
    )
    truth = true_cells(data, dims, "n")
    assert len(rel.data) == len(truth) == 3 * 4 * 3
    for key, (lo, hi) in attacker_intervals(rel.data, dims, "n", truth).items():
        assert hi - lo >= 1 - 1e-7, key


def test_column_percentages_use_released_margins() -> None:
    data = pd.DataFrame(
        {"level": ["<40", "40-69", "70+"] * 2, "arm": ["A"] * 3 + ["B"] * 3, "n": [12, 48, 41, 33, 61, 2]}
    )
    t = ResultTable(
        name="table1",
        kind="counts",
        data=data,
        dimensions=["level", "arm"],
        count_columns=["n"],
        margins=["level", "arm"],
        rates={"pct": RateSpec(numerator="n", denominator="n", within=["level"], per=100)},
    )
    out = release(t, OPENSAFELY, log=DisclosureLog()).data.set_index(["level", "arm"])
    # Arm A: released 10, 50, 40 of a released total 100 (true 101).
    assert out.loc[("<40", "A"), "pct"] == pytest.approx(10.0)
    assert out.loc[("40-69", "A"), "pct"] == pytest.approx(50.0)
    assert pd.isna(out.loc[("70+", "B"), "pct"])
    assert out.loc[(T, "B"), "pct"] == pytest.approx(100.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 12), min_size=1, max_size=6),
    st.data(),
)
def test_one_relation_shortcut_equals_the_linear_programme(parts: list[int], data: st.DataObject) -> None:
    """A cell alone in one relation (a one-way table and its total) is decided without LP; the
    shortcut must say exactly what the two linear programmes say."""
    from mercia.disclosure.suppression import CellStructure, _alone_in_one_relation, feasible_interval

    n = len(parts)
    structure = CellStructure(
        values=[*parts, sum(parts)],
        is_total=[False] * n + [True],
        published=[True] * (n + 1),
        relations=[(n, tuple(range(n)))],
    )
    unknown = set(data.draw(st.lists(st.integers(0, n), min_size=1, unique=True)))
    free = CellStructure(values=parts, is_total=[False] * n, published=[True] * n)  # no margins at all
    for cell in unknown:
        lo, hi = feasible_interval(structure, unknown, cell)
        assert _alone_in_one_relation(structure, unknown, cell) == (hi - lo >= 1 - 1e-9)
        if cell < n:
            lo, hi = feasible_interval(free, unknown - {n}, cell)
            assert _alone_in_one_relation(free, unknown - {n}, cell) == (hi - lo >= 1 - 1e-9)
