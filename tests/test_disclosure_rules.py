"""Magnitude (p%, N-k), model and survival rules, on hand cases and against acro and lifelines."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercia.disclosure import (
    SACRO,
    DisclosureLog,
    DisclosurePolicy,
    ModelInfo,
    ResultTable,
    release,
    round_count,
)
from mercia.disclosure.release import magnitude_decision
from mercia.errors import DisclosureError

# ------------------------------------------------------------------------------------------ magnitudes

P_ONLY = DisclosurePolicy(name="p", threshold=0, p_percent=0.10)
NK_ONLY = DisclosurePolicy(name="nk", threshold=0, nk_n=2, nk_k=0.90)


@pytest.mark.parametrize(
    ("value", "n", "top", "stat", "policy", "rule"),
    [
        (200.0, 20, [100.0, 5.0], "sum", SACRO, None),  # nobody dominates
        (1000.0, 20, [900.0, 50.0], "sum", SACRO, "nk"),  # two make 95%
        (1000.0, 20, [880.0, 20.0], "sum", SACRO, "nk"),  # exactly 90%: fails, as in acro
        (1000.0, 20, [600.0, 350.0], "sum", P_ONLY, "p_percent"),  # rest 50 < 10% of 600
        (1000.0, 20, [600.0, 300.0], "sum", P_ONLY, None),  # rest 100 >= 60
        (1000.0, 20, [600.0, 350.0], "sum", NK_ONLY, "nk"),
        (1000.0, 5, [300.0, 200.0], "sum", SACRO, "threshold"),  # too few contributors
        (50.0, 20, [900.0, 60.0], "mean", SACRO, "nk"),  # a mean of 50 over 20 is a total of 1000
        (50.0, 20, [100.0, 60.0], "mean", SACRO, None),
    ],
)
def test_magnitude_rules_on_hand_cases(
    value: float, n: int, top: list[float], stat: str, policy: DisclosurePolicy, rule: str | None
) -> None:
    got = magnitude_decision(value, n, top, stat, policy)
    assert (got[0] if got else None) == rule


def test_magnitude_table_drops_top_contributions_and_rounds_n() -> None:
    data = pd.DataFrame(
        {
            "region": ["N", "S", "E"],
            "cost": [200.0, 1000.0, 90.0],
            "n": [21, 20, 4],
            "top1": [100.0, 900.0, 40.0],
            "top2": [5.0, 50.0, 30.0],
        }
    )
    t = ResultTable(
        name="costs",
        kind="magnitudes",
        data=data,
        dimensions=["region"],
        magnitude_columns=["cost"],
        n_column="n",
        top_columns={"cost": ["top1", "top2"]},
    )
    log = DisclosureLog()
    rel = release(t, SACRO.model_copy(update={"rounding_base": 5}), log=log).data
    assert list(rel.columns) == ["region", "n", "cost"]  # the largest contributions never leave
    assert rel["cost"].tolist()[0] == 200.0 and rel["cost"].isna().tolist() == [False, True, True]
    assert rel["n"].tolist()[:2] == [20, 20] and pd.isna(rel["n"].tolist()[2])
    rules = {
        (e.key.get("region"), e.rule) for e in log.entries if e.column == "cost" and e.outcome == "suppressed"
    }
    assert rules == {("S", "nk"), ("E", "threshold")}


def test_magnitude_table_needs_enough_top_columns() -> None:
    data = pd.DataFrame({"g": ["a"], "s": [10.0], "n": [20], "t1": [5.0]})
    t = ResultTable(
        name="m",
        kind="magnitudes",
        data=data,
        dimensions=["g"],
        magnitude_columns=["s"],
        n_column="n",
        top_columns={"s": ["t1"]},
    )
    with pytest.raises(DisclosureError, match="2 largest contributions"):
        release(t, SACRO, log=DisclosureLog())


def test_magnitude_rules_agree_with_acro(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Oracle: acro's threshold, N-k and p-ratio checks flag the same cells of a sum crosstab."""
    acro = pytest.importorskip("acro")
    monkeypatch.chdir(tmp_path)  # acro may write artefacts to the working directory
    for name in ("acro", "acro:records", "acro:summary"):
        logging.getLogger(name).setLevel(logging.ERROR)
    rng = np.random.default_rng(7)
    session = acro.ACRO(suppress=False)
    checked = 0
    for trial in range(8):
        n = int(rng.integers(40, 160))
        df = pd.DataFrame(
            {
                "g": rng.choice(["a", "b", "c", "d"], n, p=[0.5, 0.3, 0.15, 0.05]),
                "h": rng.choice(["x", "y"], n),
                "v": rng.exponential(10, n),
            }
        )
        for _ in range(int(rng.integers(0, 4))):  # plant a few dominant contributors
            df.loc[int(rng.integers(0, n)), "v"] = float(rng.choice([300.0, 2000.0, 20000.0]))
        table = session.crosstab(df.g, df.h, values=df.v, aggfunc="sum")
        out = session.results.results[list(session.results.results)[-1]]
        acro_cells = {
            rule: {(table.index[i], table.columns[j]) for i, j in out.sdc["cells"][check]}
            for rule, check in (
                ("threshold", "MinimumThresholdCheck"),
                ("nk", "NKCheck"),
                ("p", "PPercentCheck"),
            )
        }
        ours: dict[str, set[tuple[str, str]]] = {"threshold": set(), "nk": set(), "p": set()}
        groups = dict(iter(df.groupby(["g", "h"])["v"]))
        for g, h in ((g, h) for g in table.index for h in table.columns):
            # Empty cells count too: zeros are disclosive under SACRO.
            vals = groups.get((g, h), pd.Series([], dtype=float))
            top = sorted(vals, reverse=True)[:2]
            total = float(vals.sum())
            if magnitude_decision(
                total,
                len(vals),
                top,
                "sum",
                SACRO.model_copy(update={"p_percent": None, "nk_n": None, "nk_k": None}),
            ):
                ours["threshold"].add((g, h))
            if magnitude_decision(total, len(vals), top, "sum", NK_ONLY):
                ours["nk"].add((g, h))
            if magnitude_decision(total, len(vals), top, "sum", P_ONLY):
                ours["p"].add((g, h))
        assert ours == acro_cells, f"trial {trial}"
        checked += len(table.index) * len(table.columns)
    assert checked > 40


def _quiet_acro(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> object:
    acro = pytest.importorskip("acro")
    monkeypatch.chdir(tmp_path)  # acro writes acro_artifacts/ into the working directory
    for name in ("acro", "acro:records", "acro:summary"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return acro


def test_frequency_threshold_agrees_with_acro(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Oracle: on frequency crosstabs, acro (suppress=True) and release() with SACRO's rules less our
    secondary suppression blank exactly the same interior cells (counts below 10, and zeros)."""
    acro = _quiet_acro(monkeypatch, tmp_path)
    session = acro.ACRO(suppress=True)
    rng = np.random.default_rng(11)
    policy = SACRO.model_copy(update={"name": "sacro-primary", "secondary_suppression": False})
    checked = 0
    for trial in range(10):
        n = int(rng.integers(30, 300))
        df = pd.DataFrame(
            {
                "g": rng.choice(["a", "b", "c", "d"], n, p=[0.5, 0.3, 0.15, 0.05]),
                "h": rng.choice(["x", "y", "z"], n),
            }
        )
        theirs = session.crosstab(df.g, df.h)
        counts = pd.crosstab(df.g, df.h).stack().rename("n").reset_index()
        rel = release(
            ResultTable(name="t", kind="counts", data=counts, dimensions=["g", "h"], count_columns=["n"]),
            policy,
            log=DisclosureLog(),
        ).data
        ours = {(g, h) for g, h, v in zip(rel["g"], rel["h"], rel["n"], strict=True) if pd.isna(v)}
        # acro drops rows and columns whose every cell it suppressed: those cells are blanks too.
        shown = {(g, h) for g in theirs.index for h in theirs.columns if not pd.isna(theirs.loc[g, h])}
        acro_blank = {(g, h) for g, h in zip(counts["g"], counts["h"], strict=True)} - shown
        assert ours == acro_blank, f"trial {trial}"
        released = rel.dropna(subset=["n"])
        for g, h, v in zip(released["g"], released["h"], released["n"], strict=True):
            assert theirs.loc[g, h] == v  # no rounding in either
        checked += len(counts)
    assert checked >= 100


@pytest.mark.parametrize("n_obs", [11, 12, 13])
def test_model_dof_rule_agrees_with_acro(
    n_obs: int, tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Oracle: acro's MinimumDoFCheck (residual dof >= 10 passes) and our min_model_dof block the
    same models."""
    acro = _quiet_acro(monkeypatch, tmp_path)
    sm = pytest.importorskip("statsmodels.api")
    session = acro.ACRO(suppress=True)
    rng = np.random.default_rng(n_obs)
    x = rng.normal(size=n_obs)
    y = 1 + 2 * x + rng.normal(size=n_obs)
    fit = session.ols(y, sm.add_constant(x))
    status = session.results.results[list(session.results.results)[-1]].status
    coefs = pd.DataFrame({"term": ["const", "x"], "estimate": list(fit.params), "se": list(fit.bse)})
    ours = release(
        ResultTable(name="m", kind="model", data=coefs, model=ModelInfo(df_resid=fit.df_resid, n_obs=n_obs)),
        SACRO,
        log=DisclosureLog(),
    )
    assert (ours.status == "blocked") == (status == "fail"), (fit.df_resid, status)


# ----------------------------------------------------------------------------------------------- model


def _coefs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "term": ["(Intercept)", "age", "smoker"],
            "estimate": [0.1, 0.02, 0.7],
            "se": [0.05, 0.01, 0.2],
            "n_exposed": [500, 500, 3],
        }
    )


def test_model_blocked_when_dof_too_small() -> None:
    t = ResultTable(name="m", kind="model", data=_coefs(), model=ModelInfo(df_resid=8, n_obs=11, n_events=40))
    log = DisclosureLog()
    rel = release(t, SACRO, log=log)
    assert rel.status == "blocked"
    assert rel.data[["estimate", "se"]].isna().all().all()
    assert rel.model_info == {"n_obs": None, "n_events": None}
    assert any(e.outcome == "blocked" and e.rule == "min_dof" for e in log.entries)


def test_model_blocked_when_events_few() -> None:
    t = ResultTable(
        name="m", kind="model", data=_coefs(), model=ModelInfo(df_resid=497, n_obs=500, n_events=6)
    )
    assert release(t, SACRO, log=DisclosureLog()).status == "blocked"


def test_model_released_with_small_terms_dropped_and_counts_rounded() -> None:
    t = ResultTable(
        name="m",
        kind="model",
        data=_coefs(),
        count_columns=["n_exposed"],
        model=ModelInfo(df_resid=497, n_obs=503, n_events=121),
    )
    rel = release(t, SACRO.model_copy(update={"rounding_base": 5}), log=DisclosureLog())
    assert rel.status == "released"
    d = rel.data
    assert (
        d.loc[1, "estimate"] == 0.02 and math.isnan(d.loc[2, "estimate"]) and pd.isna(d.loc[2, "n_exposed"])
    )
    # No residual dof beside the rounded n_obs: 503 - 497 would give the exact n back.
    assert rel.model_info == {"n_obs": 505, "n_events": 120}


def test_a_model_with_every_term_withheld_says_blocked() -> None:
    """Released whole or not at all (model_support puts one min_level_count on every row): when every
    term is withheld the table is 'blocked', not 'released' with every number blank."""
    data = _coefs().assign(min_level_count=3)
    t = ResultTable(name="m", kind="model", data=data, count_columns=["min_level_count"],
                    model=ModelInfo(df_resid=497, n_obs=503, n_events=121))
    rel = release(t, SACRO, log=DisclosureLog())
    assert rel.status == "blocked" and rel.data["estimate"].isna().all()
    assert release(t.model_copy(update={"data": data.assign(min_level_count=30)}), SACRO,
                   log=DisclosureLog()).status == "released"


# -------------------------------------------------------------------------------------------- survival


def _event_table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.ceil(rng.exponential(300, n))
    c = np.ceil(rng.uniform(50, 900, n))
    time = np.minimum(t, c)
    event = t <= c
    df = pd.DataFrame({"time": time, "event": event})
    g = df.groupby("time").agg(n_events=("event", "sum"), n_out=("event", "size")).reset_index()
    g["n_censored"] = g["n_out"] - g["n_events"]
    g["n_at_risk"] = n - g["n_out"].cumsum().shift(fill_value=0)
    return g[["time", "n_at_risk", "n_events", "n_censored"]].astype({"n_events": int, "n_censored": int})


def test_survival_steps_pool_events_and_stop_at_small_risk_sets() -> None:
    events = _event_table(400, seed=1)
    t = ResultTable(name="km", kind="survival", data=events)
    log = DisclosureLog()
    out = release(t, SACRO, log=log).data
    steps = out.iloc[1:]
    assert (steps["n_events"] >= SACRO.step_min_events).all()
    assert (out["n_at_risk"] >= SACRO.risk_set_minimum).all()
    assert not steps["n_censored"].between(1, SACRO.threshold).any()
    # Fewer steps than event times: the curve was coarsened.
    assert len(steps) < (events["n_events"] > 0).sum()
    # The estimate is recomputed from released numbers only.
    s = np.cumprod(1 - steps["n_events"] / steps["n_at_risk"])
    np.testing.assert_allclose(steps["estimate"], s)
    assert ((out["ci_lower"] <= out["estimate"]) & (out["estimate"] <= out["ci_upper"])).all()
    assert any(e.rule == "survival_pooling" and e.outcome == "coarsened" for e in log.entries)


def test_survival_estimate_close_to_lifelines() -> None:
    lifelines = pytest.importorskip("lifelines")
    rng = np.random.default_rng(3)
    n = 2000
    t = np.ceil(rng.exponential(300, n))
    c = np.ceil(rng.uniform(50, 900, n))
    time, event = np.minimum(t, c), t <= c
    km = lifelines.KaplanMeierFitter().fit(time, event)
    et = km.event_table.iloc[1:]  # drop lifelines' time-0 row
    data = pd.DataFrame(
        {
            "time": et.index.to_numpy(),
            "n_at_risk": et["at_risk"].to_numpy(),
            "n_events": et["observed"].to_numpy(),
            "n_censored": et["censored"].to_numpy(),
        }
    )
    out = release(
        ResultTable(name="km", kind="survival", data=data),
        SACRO.model_copy(update={"rounding_base": 5}),
        log=DisclosureLog(),
    ).data
    truth = km.survival_function_at_times(out["time"].to_numpy()).to_numpy()
    # Pooling events into coarser steps (an actuarial approximation) and rounding cost little here.
    assert np.max(np.abs(out["estimate"].to_numpy() - truth)) < 0.03


def test_survival_censoring_before_an_event_leaves_the_risk_set() -> None:
    # A censoring-only time pooled into the next step must not count its persons at risk at the event:
    # under a policy that pools nothing the released curve is the Kaplan-Meier estimate itself.
    lifelines = pytest.importorskip("lifelines")
    time, event = np.array([10, 20, 30, 30, 60]), np.array([1, 0, 1, 0, 0])
    km = lifelines.KaplanMeierFitter().fit(time, event)
    et = km.event_table.iloc[1:]
    data = pd.DataFrame({"time": et.index.to_numpy(), "n_at_risk": et["at_risk"].to_numpy(),
                         "n_events": et["observed"].to_numpy(), "n_censored": et["censored"].to_numpy()})
    exact = DisclosurePolicy(name="exact", threshold=0, rounding_base=1)
    out = release(ResultTable(name="km", kind="survival", data=data), exact, log=DisclosureLog()).data
    steps = out[out["n_events"] > 0]
    np.testing.assert_allclose(steps["estimate"], km.survival_function_at_times(steps["time"]).to_numpy())
    assert steps["n_at_risk"].tolist() == [5, 3]  # lifelines' risk sets at the two event times


def test_survival_time_coarsening_and_tiny_groups() -> None:
    events = _event_table(300, seed=2)
    small = _event_table(8, seed=5)
    data = pd.concat([events.assign(arm="big"), small.assign(arm="tiny")], ignore_index=True)
    policy = SACRO.model_copy(update={"survival_time_unit": 30})
    log = DisclosureLog()
    out = release(
        ResultTable(name="km", kind="survival", data=data, dimensions=["arm"]), policy, log=log
    ).data
    assert set(out["arm"]) == {"big"}  # a curve starting with 8 at risk is withheld whole
    assert (out["time"] % 30 == 0).all()
    assert any(e.rule == "min_risk_set" and e.key.get("arm") == "tiny" for e in log.entries)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 300),
    st.integers(0, 10_000),
    st.integers(0, 12),
    st.sampled_from([1, 5]),
    st.one_of(st.none(), st.sampled_from([7, 30])),
)
def test_survival_release_properties(n: int, seed: int, threshold: int, base: int, unit: int | None) -> None:
    policy = DisclosurePolicy(name="s", threshold=threshold, rounding_base=base, survival_time_unit=unit)
    out = release(
        ResultTable(name="km", kind="survival", data=_event_table(n, seed)), policy, log=DisclosureLog()
    ).data
    if out.empty:
        return
    steps = out.iloc[1:]
    assert (out["n_at_risk"] >= round_count(policy.risk_set_minimum, base) - base).all()
    assert (steps["n_events"] % base == 0).all() and (out["n_at_risk"] % base == 0).all()
    if base == 1:
        assert (steps["n_events"] >= policy.step_min_events).all()
        assert not steps["n_censored"].between(1, threshold).any()
        assert (out["n_at_risk"] >= policy.risk_set_minimum).all()
    assert out["estimate"].is_monotonic_decreasing
    assert ((out["estimate"] >= 0) & (out["estimate"] <= 1)).all()
    if unit:
        assert (out["time"] % unit == 0).all()


def test_model_with_two_count_columns_drops_a_term_when_either_is_small() -> None:
    # Cox tables carry two counts per term (persons and events with the covariate): a small count in
    # the first column blanks the row, and the second column must not then be read as a count.
    data = _coefs().assign(n_events_exposed=[40, 30, 3])
    data.loc[2, "n_exposed"] = 200  # row 2 is now small only through its events
    data.loc[1, "n_exposed"] = 4  # row 1 small through persons
    t = ResultTable(
        name="m2",
        kind="model",
        data=data,
        count_columns=["n_exposed", "n_events_exposed"],
        model=ModelInfo(df_resid=497, n_obs=503, n_events=121),
    )
    log = DisclosureLog()
    rel = release(t, SACRO, log=log)
    d = rel.data
    assert rel.status == "released"
    for j in (1, 2):
        assert math.isnan(d.loc[j, "estimate"])
        assert pd.isna(d.loc[j, "n_exposed"]) and pd.isna(d.loc[j, "n_events_exposed"])
    assert d.loc[0, "n_exposed"] % SACRO.rounding_base == 0 and not math.isnan(d.loc[0, "estimate"])
    assert sum(e.outcome == "suppressed" for e in log.entries) == 2
