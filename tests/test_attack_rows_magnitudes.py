"""Issue 12, items 1 and 2: rows that reveal a person, and exact magnitudes beside rounded counts.

Property tests (hypothesis) on `release()` itself, then the issue's two attacks over real HTTP against
a node running an approved study:

(a) a cohort of one person: the released characterization and cohort-entry tables must show none of
    her concepts, her age band, her sex or her entry month (before: every row of hers was listed with
    a blank count);
(b) two cohorts that differ by one person (first hypertension up to day D - 1, and up to day D): the
    released n and mean ages must not place the added person's age in an interval narrower than the
    policy's `magnitude_min_interval` (before: the mean to ten decimals gave it exactly).
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercia.disclosure import OPENSAFELY, SACRO, DisclosureLog, DisclosurePolicy, ResultTable, release
from mercia.disclosure.release import magnitude_step

# --------------------------------------------------------------------------- magnitudes: the attacker


def _released_mean_sd(values: np.ndarray, policy: DisclosurePolicy) -> tuple[int | None, float, float]:
    """(n, mean, sd) of one cohort as `release()` lets them out."""
    top = np.sort(values)[::-1]
    df = pd.DataFrame(
        {
            "g": ["a"],
            "n": [len(values)],
            "mean": [float(values.mean())],
            "sd": [float(values.std(ddof=1))],
            "t1": [float(top[0])],
            "t2": [float(top[1])],
            "t3": [float(top[2])],
        }
    )
    t = ResultTable(
        name="m",
        kind="magnitudes",
        data=df,
        dimensions=["g"],
        n_column="n",
        magnitude_columns=["mean", "sd"],
        magnitude_statistic={"mean": "mean", "sd": "sd"},
        top_columns={"mean": ["t1", "t2", "t3"], "sd": ["t1", "t2", "t3"]},
    )
    out = release(t, policy, log=DisclosureLog()).data
    n = out["n"].iloc[0]
    return (None if pd.isna(n) else int(n)), float(out["mean"].iloc[0]), float(out["sd"].iloc[0])


def mean_attack(
    n: int, a: tuple[int, float], b: tuple[int, float], policy: DisclosurePolicy, *, whole: bool
) -> tuple[float, float]:
    """The values of the added person consistent with the released (n, mean) of A (n persons) and B
    (A and one more), to an attacker who knows the exact n and the rounding rule.

    With `whole` values (ages in years) the sums are integers, which is what the issue's attack used;
    the interval is then the span of the consistent integers."""
    (na, ma), (nb, mb) = a, b
    sa, sb = magnitude_step("mean", na, policy), magnitude_step("mean", nb, policy)
    assert sa is not None and sb is not None
    lo_a, hi_a = n * (ma - sa / 2), n * (ma + sa / 2)
    lo_b, hi_b = (n + 1) * (mb - sb / 2), (n + 1) * (mb + sb / 2)
    if whole:
        eps = 1e-9
        lo_a, hi_a = math.ceil(lo_a - eps), math.floor(hi_a + eps)
        lo_b, hi_b = math.ceil(lo_b - eps), math.floor(hi_b + eps)
    return lo_b - hi_a, hi_b - lo_a


def sd_attack(
    n: int, a: tuple[int, float, float], b: tuple[int, float, float], policy: DisclosurePolicy
) -> list[tuple[float, float]]:
    """The distances |x - mean_A| of the added person consistent with the released SDs, to an
    attacker who also knows both exact means: n/(n+1) (x - mean_A)^2 = (n sd_B^2) - ((n-1) sd_A^2)."""
    (na, _, sda), (nb, _, sdb) = a, b
    ta, tb = magnitude_step("sd", na, policy), magnitude_step("sd", nb, policy)
    assert ta is not None and tb is not None
    lo = n * max(0.0, sdb - tb / 2) ** 2 - (n - 1) * (sda + ta / 2) ** 2
    hi = n * (sdb + tb / 2) ** 2 - (n - 1) * max(0.0, sda - ta / 2) ** 2
    lo, hi = max(lo, 0.0) * (n + 1) / n, hi * (n + 1) / n
    if lo == 0:  # both signs join into one interval around the mean
        return [(-math.sqrt(hi), math.sqrt(hi))]
    return [(-math.sqrt(hi), -math.sqrt(lo)), (math.sqrt(lo), math.sqrt(hi))]


NO_DOMINANCE = SACRO.model_copy(update={"name": "sacro-nodom", "p_percent": None, "nk_n": None, "nk_k": None})
POLICIES = st.sampled_from(
    [
        OPENSAFELY,
        NO_DOMINANCE,
        OPENSAFELY.model_copy(update={"name": "w1", "magnitude_min_interval": 1.0}),
        NO_DOMINANCE.model_copy(update={"name": "w12", "magnitude_min_interval": 12.0}),
    ]
)


@st.composite
def neighbouring_cohorts(draw: st.DrawFn) -> tuple[np.ndarray, float]:
    """A cohort of 10 to 3,000 values (whole or not, any spread, all equal included) and one more."""
    n = draw(st.integers(10, 3000))
    seed = draw(st.integers(0, 2**32 - 1))
    centre = draw(st.floats(0, 100))
    spread = draw(st.sampled_from([0.0, 0.5, 3.0, 15.0, 40.0]))
    whole = draw(st.booleans())
    rng = np.random.default_rng(seed)
    a = np.clip(rng.normal(centre, spread, n), 0, 130)
    x = draw(st.one_of(st.floats(0, 130), st.just(float(centre)), st.sampled_from([0.0, 130.0])))
    if whole:
        a, x = np.rint(a), float(round(x))
    return a, x


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts=neighbouring_cohorts(), policy=POLICIES)
def test_differencing_two_means_never_places_the_person_within_w(
    cohorts: tuple[np.ndarray, float], policy: DisclosurePolicy
) -> None:
    a, x = cohorts
    whole = bool(np.all(a == np.rint(a))) and x == round(x)
    n = len(a)
    ra, rb = _released_mean_sd(a, policy), _released_mean_sd(np.append(a, x), policy)
    assert ra[0] is not None and rb[0] is not None
    lo, hi = mean_attack(n, ra[:2], rb[:2], policy, whole=whole)  # type: ignore[arg-type]
    assert lo - 1e-6 <= x <= hi + 1e-6, "the attacker's model must admit the truth"
    assert hi - lo >= policy.magnitude_min_interval - 1e-9, (n, x, ra, rb, lo, hi)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts=neighbouring_cohorts(), policy=POLICIES)
def test_the_sd_attackers_model_admits_the_truth(cohorts: tuple[np.ndarray, float], policy: DisclosurePolicy) -> None:
    """The attack below is sound: the distances it allows always include the true one."""
    a, x = cohorts
    ra, rb = _released_mean_sd(a, policy), _released_mean_sd(np.append(a, x), policy)
    d = x - float(a.mean())
    parts = sd_attack(len(a), ra, rb, policy)  # type: ignore[arg-type]
    assert any(lo - 1e-6 <= d <= hi + 1e-6 for lo, hi in parts)


def test_differencing_two_sds_rarely_places_the_person_within_w() -> None:
    """Measured, not proved: the SD alone, to an attacker given both exact means.

    Unlike the mean (whose sums are whole numbers, giving slack), two rounded SDs can both sit at the
    edge of their rounding intervals, and then the distance of the added person from the mean is known
    more narrowly than W: hypothesis found n = 10 at W = 12 with |x - mean| <= 5.2. It is rare; the rates
    are quoted in docs/security.md. Deterministic rounding cannot rule it out; noise would."""
    rng = np.random.default_rng(20261207)
    rates = {}
    for label, spreads in (("realistic", [5.0, 10.0, 15.0, 20.0]), ("tight", [0.0, 0.5, 1.0])):
        narrow = total = 0
        for k in range(1000):
            policy = (OPENSAFELY, NO_DOMINANCE)[k % 2]
            n = int(rng.choice([10, 20, 50, 100, 300, 1087, 3000]))
            centre = float(rng.uniform(20, 90))
            a = np.rint(np.clip(rng.normal(centre, rng.choice(spreads), n), 0, 120))
            x = float(rng.choice([round(centre), int(rng.integers(0, 121))]))
            ra, rb = _released_mean_sd(a, policy), _released_mean_sd(np.append(a, x), policy)
            parts = sd_attack(n, ra, rb, policy)  # type: ignore[arg-type]
            assert any(lo - 1e-6 <= x - a.mean() <= hi + 1e-6 for lo, hi in parts)
            total += 1
            narrow += any(hi - lo < policy.magnitude_min_interval for lo, hi in parts)
        rates[label] = narrow / total
    # 0 of 1,000 and 1 of 1,000 when measured (2026-12-07)
    assert rates["realistic"] <= 0.002 and rates["tight"] <= 0.005, rates


@settings(max_examples=200, deadline=None)
@given(cohorts=neighbouring_cohorts(), policy=POLICIES)
def test_differencing_two_sums_never_places_the_person_within_w(
    cohorts: tuple[np.ndarray, float], policy: DisclosurePolicy
) -> None:
    a, x = cohorts
    whole = bool(np.all(a == np.rint(a))) and x == round(x)
    released = []
    for v in (a, np.append(a, x)):
        top = np.sort(v)[::-1]
        df = pd.DataFrame(
            {"g": ["a"], "n": [len(v)], "total": [float(v.sum())], "t1": [top[0]], "t2": [top[1]]}
        )
        t = ResultTable(
            name="s",
            kind="magnitudes",
            data=df,
            dimensions=["g"],
            n_column="n",
            magnitude_columns=["total"],
            top_columns={"total": ["t1", "t2"]},
        )
        released.append(float(release(t, policy, log=DisclosureLog()).data["total"].iloc[0]))
    step = magnitude_step("sum", len(a), policy)
    assert step is not None
    (sa, sb), eps = released, 1e-9
    lo_a, hi_a, lo_b, hi_b = sa - step / 2, sa + step / 2, sb - step / 2, sb + step / 2
    if whole:
        lo_a, hi_a = math.ceil(lo_a - eps), math.floor(hi_a + eps)
        lo_b, hi_b = math.ceil(lo_b - eps), math.floor(hi_b + eps)
    assert lo_b - hi_a - 1e-6 <= x <= hi_b - lo_a + 1e-6
    assert (hi_b - lo_a) - (lo_b - hi_a) >= policy.magnitude_min_interval - 1e-9


def joint_attack(
    n: int, a: tuple[int, float, float], b: tuple[int, float, float], policy: DisclosurePolicy
) -> list[int]:
    """The whole-number values of the added person consistent with both cohorts' released n, mean
    and SD together (exact n known): some integer sum S and sum of squares Q of A fit A's release
    while S + x and Q + x^2 fit B's."""
    (na, ma, sda), (nb, mb, sdb) = a, b
    sa, sb = magnitude_step("mean", na, policy), magnitude_step("mean", nb, policy)
    ta, tb = magnitude_step("sd", na, policy), magnitude_step("sd", nb, policy)
    assert sa and sb and ta and tb
    eps = 1e-9
    s_lo, s_hi = math.ceil(n * (ma - sa / 2) - eps), math.floor(n * (ma + sa / 2) + eps)
    t_lo, t_hi = math.ceil((n + 1) * (mb - sb / 2) - eps), math.floor((n + 1) * (mb + sb / 2) + eps)
    va = (max(0.0, sda - ta / 2) ** 2, (sda + ta / 2) ** 2)
    vb = (max(0.0, sdb - tb / 2) ** 2, (sdb + tb / 2) ** 2)
    found = []
    for x in range(t_lo - s_hi, t_hi - s_lo + 1):
        for s_ in range(max(s_lo, t_lo - x), min(s_hi, t_hi - x) + 1):
            q_lo = max(s_ * s_ / n + (n - 1) * va[0], (s_ + x) ** 2 / (n + 1) - x * x + n * vb[0])
            q_hi = min(s_ * s_ / n + (n - 1) * va[1], (s_ + x) ** 2 / (n + 1) - x * x + n * vb[1])
            if math.floor(q_hi + 1e-6) >= math.ceil(q_lo - 1e-6):
                found.append(x)
                break
    return found


@pytest.mark.slow
def test_mean_and_sd_together(record_property: Any) -> None:
    """Measured, not proved: how often mean and SD together place the added person within W.

    The mean alone holds for every pair; the SD alone nearly always (the tests above). Together they are two roundings of one
    person's effect, and when the value sits near the edge of both intervals the intersection is
    narrow. Run with -s to print the rates quoted in docs/security.md."""
    rng = np.random.default_rng(20261207)
    rates = {}
    for label, spreads in (("realistic", [5.0, 10.0, 15.0, 20.0]), ("tight", [0.0, 0.5, 1.0])):
        narrow = total = 0
        for k in range(400):
            policy = (OPENSAFELY, NO_DOMINANCE)[k % 2]
            n = int(rng.choice([10, 20, 50, 100, 300, 1087, 3000]))
            centre = float(rng.uniform(20, 90))
            a = np.rint(np.clip(rng.normal(centre, rng.choice(spreads), n), 0, 120))
            x = float(rng.choice([round(centre), int(rng.integers(0, 121))]))
            ra, rb = _released_mean_sd(a, policy), _released_mean_sd(np.append(a, x), policy)
            xs = joint_attack(n, ra, rb, policy)  # type: ignore[arg-type]
            assert x in xs, "the attacker's model must admit the truth"
            total += 1
            narrow += max(xs) - min(xs) < policy.magnitude_min_interval
        rates[label] = narrow / total
        record_property(f"mean_sd_narrower_than_w_{label}", rates[label])
        print(f"mean and SD together narrower than W: {label} cohorts {rates[label]:.3f}")
    assert rates["realistic"] <= 0.02


def test_the_issues_mean_ages_no_longer_give_the_age() -> None:
    """n 1087 and 1088: with means to ten decimals only one age made both sums whole."""
    rng = np.random.default_rng(12)
    a = np.rint(np.clip(rng.normal(57, 15, 1087), 18, 100))
    for policy in (OPENSAFELY, SACRO):
        ra, rb = _released_mean_sd(a, policy), _released_mean_sd(np.append(a, 41.0), policy)
        lo, hi = mean_attack(1087, ra[:2], rb[:2], policy, whole=True)  # type: ignore[arg-type]
        assert lo <= 41 <= hi and hi - lo >= policy.magnitude_min_interval
        # Released to a readable step: 0.005 years for a thousand persons at W = 5.
        assert magnitude_step("mean", ra[0], policy) <= 0.01  # type: ignore[arg-type]


def test_magnitudes_exact_only_when_the_policy_says_so() -> None:
    exact = OPENSAFELY.model_copy(update={"name": "exact", "magnitude_min_interval": 0.0})
    a = np.arange(20, 60, dtype=float)
    assert _released_mean_sd(a, exact)[1] == pytest.approx(a.mean())
    assert not exact.at_least_as_strict_as(OPENSAFELY)
    assert "magnitude_min_interval 0 < 5" in "; ".join(exact.weaker_settings_than(OPENSAFELY))


def test_minima_and_maxima_never_leave_and_quantiles_are_coarse() -> None:
    df = pd.DataFrame(
        {
            "g": ["a"],
            "n": [40],
            "age_max": [93.0],
            "age_median": [57.0],
            "t1": [93.0],
            "t2": [90.0],
            "t3": [88.0],
        }
    )
    t = ResultTable(
        name="q",
        kind="magnitudes",
        data=df,
        dimensions=["g"],
        n_column="n",
        magnitude_columns=["age_max", "age_median"],
        magnitude_statistic={"age_max": "extreme", "age_median": "quantile"},
        top_columns={"age_max": ["t1", "t2", "t3"], "age_median": ["t1", "t2", "t3"]},
    )
    log = DisclosureLog()
    out = release(t, OPENSAFELY, log=log).data
    assert math.isnan(out["age_max"].iloc[0])
    assert out["age_median"].iloc[0] == 55.0  # a multiple of W = 5
    assert any(e.rule == "extreme" and e.outcome == "suppressed" for e in log.entries)


# ------------------------------------------------------------------------------------ rows: release()


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=2, max_size=8),
    policy=st.sampled_from([OPENSAFELY, SACRO]),
)
def test_a_level_from_the_data_is_a_row_only_when_its_count_is_released(
    counts: list[int], policy: DisclosurePolicy
) -> None:
    """Every row shown has a released count; no suppressed level is named, in the table or the public
    log; and the total is still protected by secondary suppression where the policy has it."""
    data = pd.DataFrame({"concept": [f"c{i}" for i in range(len(counts))], "n": counts})
    data = data[data["n"] > 0].reset_index(drop=True)  # a sparse table: levels somebody has
    if data.empty:
        return
    t = ResultTable(
        name="cov",
        kind="counts",
        data=data,
        dimensions=["concept"],
        count_columns=["n"],
        margins=["concept"],
        data_levels=["concept"],
    )
    log = DisclosureLog()
    out = release(t, policy, log=log).data
    levels = out[out["concept"] != "Total"]
    assert levels["n"].notna().all()
    small = set(data.loc[data["n"] <= policy.suppress_up_to, "concept"])
    assert not small & set(levels["concept"])
    public = log.to_json(public=True)
    for c in small:
        assert f'"{c}"' not in public
    total = out.loc[out["concept"] == "Total", "n"]
    if policy.secondary_suppression and small and not total.isna().all():
        # Secondary suppression still holds with the rows dropped: never one level alone missing
        # beside a released total (its count would be the difference, to anyone who knows the levels).
        assert len(data) - len(levels) >= 2


def test_a_released_zero_never_stands_beside_a_hidden_level() -> None:
    """Two cohorts' counts per concept: target 0 and target 1 must look the same."""
    data = pd.DataFrame({"concept": ["asthma", "copd"], "n_target": [0, 1], "n_comparator": [400, 400]})
    t = ResultTable(
        name="smd",
        kind="counts",
        data=data,
        dimensions=["concept"],
        count_columns=["n_target", "n_comparator"],
        data_levels=["concept"],
    )
    out = release(t, OPENSAFELY, log=DisclosureLog()).data
    assert out["n_target"].isna().all() and list(out["n_comparator"]) == [400, 400]


def test_model_terms_found_in_the_data_are_dropped_with_their_estimate() -> None:
    from mercia.disclosure import ModelInfo

    data = pd.DataFrame(
        {
            "covariate": ["(intercept)", "asthma", "hip fracture"],
            "coef": [0.1, 0.3, 2.0],
            "n_persons": [900, 300, 1],
        }
    )
    t = ResultTable(
        name="coef",
        kind="model",
        data=data,
        count_columns=["n_persons"],
        model=ModelInfo(df_resid=897, n_obs=900, n_events=100),
        data_levels=["covariate"],
    )
    log = DisclosureLog()
    rel = release(t, OPENSAFELY, log=log)
    assert list(rel.data["covariate"]) == ["(intercept)", "asthma"]
    assert "hip fracture" not in log.to_json(public=True)
    assert rel.model_info == {"n_obs": 900, "n_events": 100}  # no df_resid beside a rounded n_obs


# -------------------------------------------------------------------------------------- over HTTP

API = "/api/v1"


def _first_dates(site: Path, concept_ids: list[int]) -> pd.DataFrame:
    """Each person's first record of these concepts inside an observation period (what a `first`
    condition entry with no other criteria selects)."""
    con = duckdb.connect(str(site), read_only=True)
    try:
        ids = ",".join(str(int(c)) for c in concept_ids)
        return con.execute(f"""
            WITH f AS (SELECT person_id, MIN(condition_start_date) AS d FROM condition_occurrence
                       WHERE condition_concept_id IN (SELECT descendant_concept_id FROM concept_ancestor
                                                      WHERE ancestor_concept_id IN ({ids}))
                       GROUP BY person_id)
            SELECT f.person_id, f.d, p.gender_concept_id, p.year_of_birth FROM f
            JOIN person p USING (person_id)
            JOIN observation_period o ON o.person_id = f.person_id
                 AND f.d BETWEEN o.observation_period_start_date AND o.observation_period_end_date
        """).df()
    finally:
        con.close()


def _her_concepts(site: Path, person_id: int, index: dt.date) -> set[int]:
    con = duckdb.connect(str(site), read_only=True)
    try:
        rows = con.execute(
            "SELECT condition_concept_id FROM condition_occurrence WHERE person_id = ? AND condition_start_date <= ?",
            [person_id, index],
        ).fetchall()
        rows += con.execute(
            "SELECT ca.ancestor_concept_id FROM drug_exposure de JOIN concept_ancestor ca "
            "ON ca.descendant_concept_id = de.drug_concept_id JOIN concept c ON c.concept_id = ca.ancestor_concept_id "
            "AND c.concept_class_id = 'Ingredient' WHERE de.person_id = ? AND de.drug_exposure_start_date <= ?",
            [person_id, index],
        ).fetchall()
    finally:
        con.close()
    return {int(r[0]) for r in rows}


def _cohort(concept: str, start: dt.date, end: dt.date) -> dict[str, Any]:
    return {
        "definition": {
            "name": f"first {concept} {start}..{end}",
            "concepts": {"c": {"name": concept, "include": [concept], "descendants": True}},
            "entry": [{"condition": "c", "first": True}],
            "study_period": {"start": start.isoformat(), "end": end.isoformat()},
        }
    }


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from federation_support import HubKey, NodeServer, make_site, submit_body
    from mercia.study import StudyPackage
    from mercia.vocab.catalog import CONDITIONS

    root = tmp_path_factory.mktemp("attack12")
    site = make_site(root / "site.duckdb", persons=3000, seed=3)
    # (a) the person whose first hip fracture (or, failing one, asthma) is alone on its day
    solo = None
    for concept in ("hip_fracture", "asthma", "copd"):
        firsts = _first_dates(site, [CONDITIONS[concept].concept_id])
        per_day = firsts.groupby("d")["person_id"].transform("size")
        alone = firsts[per_day == 1].sort_values("d")
        if len(alone):
            solo = (concept, alone.iloc[len(alone) // 2])
            break
    assert solo is not None
    concept, her = solo
    her_day = pd.Timestamp(her["d"]).date()
    # (b) a day on which exactly one person has a first hypertension, with many before it
    htn = _first_dates(site, [CONDITIONS["hypertension"].concept_id]).sort_values("d").reset_index(drop=True)
    days = htn.groupby("d")["person_id"].size()
    cum = days.cumsum()
    day_b = next(d for d, k in days.items() if k == 1 and cum[d] > len(htn) // 2)
    added = htn[htn["d"] == day_b].iloc[0]
    first_day = dt.date(1900, 1, 1)
    day_b = pd.Timestamp(day_b).date()
    spec = {
        "name": "attack: one person, and two cohorts one person apart",
        "cohorts": {
            "solo": _cohort(concept, her_day, her_day),
            "htn_a": _cohort("hypertension", first_day, day_b - dt.timedelta(days=1)),
            "htn_b": _cohort("hypertension", first_day, day_b),
        },
        "analyses": [
            {"type": "characterization", "name": "chr1", "cohorts": ["solo"]},
            {"type": "cohort_entries", "name": "entries", "cohorts": ["solo"], "interval": "month"},
            {
                "type": "characterization",
                "name": "chr2",
                "cohorts": ["htn_a", "htn_b"],
                "settings": {"domains": ["condition"], "measurement_values": False},
            },
        ],
    }
    pkg = StudyPackage.from_dict(spec)
    truth = {
        "concept": concept,
        "her_day": her_day,
        "her_sex": int(her["gender_concept_id"]),
        "her_age": her_day.year - int(her["year_of_birth"]),
        "her_concepts": _her_concepts(site, int(her["person_id"]), her_day),
        "added_age": day_b.year - int(added["year_of_birth"]),
        "n_a": int((htn["d"] < pd.Timestamp(day_b)).sum()),
    }
    key = HubKey(root / "hubkey")
    out: dict[str, Any] = {"truth": truth, "pkg": pkg, "results": {}}
    for policy in ("opensafely", "sacro"):
        node = NodeServer(
            root / f"node_{policy}",
            cdm=shutil.copyfile(site, root / f"{policy}.duckdb"),
            hub_key=key,
            site=policy,
            policy=policy,
        )
        with node, node.client() as hub:
            r = hub.post(f"{API}/studies", json=submit_body(pkg, key))
            assert r.status_code == 202, r.text
            node.approve(pkg.content_hash)
            node.wait_status(pkg.content_hash, {"finished"}, timeout=300)
            r = hub.get(f"{API}/studies/{pkg.content_hash}/results")
            assert r.status_code == 200, r.text
            out["results"][policy] = r.json()
    yield out


def _table(results: dict[str, Any], name: str) -> pd.DataFrame:
    t = next(t for t in results["tables"] if t["name"] == name)
    return pd.DataFrame(t["rows"], columns=t["columns"])


def _decimal_step(v: float) -> float:
    """The precision a released number shows: 1e-3 for 57.135."""
    text = repr(v)
    return 10.0 ** -len(text.split(".")[1]) if "." in text and "e" not in text else 1.0


def _cid(pkg: Any, key: str) -> int:
    return int(pkg.cohort_ids[key])


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["opensafely", "sacro"])
def test_a_one_person_cohort_reveals_none_of_her_attributes(attack: dict[str, Any], policy: str) -> None:
    truth, res = attack["truth"], attack["results"][policy]
    solo = _cid(attack["pkg"], "solo")
    cov = _table(res, "chr1_covariates")
    mine = cov[cov["cohort_id"] == solo]
    assert mine.empty, f"rows of the one-person cohort: {mine.head().to_dict('records')}"
    assert not truth["her_concepts"] & set(cov["concept_id"].dropna().astype(int))
    demo = _table(res, "chr1_demographics")
    levels = set(demo.loc[demo["cohort_id"] == solo, "level"]) - {"Total"}
    band = f"{truth['her_age'] // 5 * 5}-{truth['her_age'] // 5 * 5 + 4}"
    sex = {8507: "Male", 8532: "Female"}.get(truth["her_sex"], str(truth["her_sex"]))
    assert not levels, f"levels of the one-person cohort: {levels} (her band {band}, sex {sex})"
    assert demo["n"].isna().all()
    meas = _table(res, "chr1_measurements")
    assert meas.empty or meas["n"].notna().all()
    entries = _table(res, "entries")
    assert entries[entries["cohort_id"] == solo].empty
    assert truth["her_day"].strftime("%Y-%m") not in set(entries["period"])
    # Nor does the public disclosure log name any level of hers.
    for e in res["disclosure"]["entries"]:
        if e["table"].startswith(("chr1", "entries")) and e["key"]:
            assert "concept_id" not in e["key"] and "period" not in e["key"], e
            assert e["key"].get("level") in (None, "Total"), e


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["opensafely", "sacro"])
def test_two_mean_ages_one_person_apart_do_not_give_her_age(attack: dict[str, Any], policy: str) -> None:
    truth, res = attack["truth"], attack["results"][policy]
    age = _table(res, "chr2_age").set_index("cohort_id")
    a, b = age.loc[_cid(attack["pkg"], "htn_a")], age.loc[_cid(attack["pkg"], "htn_b")]
    n = truth["n_a"]  # the attacker is given the exact n, more than the release says
    pol = OPENSAFELY if policy == "opensafely" else SACRO
    assert abs(int(a["n"]) - n) <= pol.rounding_base // 2
    # The attacker reads each mean's step from its decimals (and takes the documented rule's when coarser).
    ma, mb = float(a["age_mean"]), float(b["age_mean"])
    step = max(_decimal_step(ma), _decimal_step(mb), magnitude_step("mean", int(a["n"]), pol) or 0)
    lo_s, hi_s = math.ceil(n * (ma - step / 2) - 1e-9), math.floor(n * (ma + step / 2) + 1e-9)
    lo_t, hi_t = math.ceil((n + 1) * (mb - step / 2) - 1e-9), math.floor((n + 1) * (mb + step / 2) + 1e-9)
    lo, hi = lo_t - hi_s, hi_t - lo_s
    assert lo <= truth["added_age"] <= hi
    assert hi - lo >= pol.magnitude_min_interval, (lo, hi, truth["added_age"])
    # Before issue 12 the means came to ten decimals and only one age made both sums whole.
    assert len(f"{float(a['age_mean'])}".split(".")[-1]) <= 3


# ------------------------------------------------------------- every analysis table says where its rows come from

# Tables with dimensions but no `data_levels`, each with the reason its levels are fixed before the data
# are seen. A new analysis table with dimensions must declare `data_levels` or be added here with its
# reason, so that row presence is decided once, in release(), and never forgotten.
FIXED_LEVELS = {
    ("characterization.py", "characterize: f'{name}_age'"): "one row per cohort of the package",
    ("survival.py", "kaplan_meier: f'{name}_summary'"): "one row per target cohort of the package",
    ("cohort_method.py", "_analyse: f'{name}_ps_distribution'"): "every preference bin, empty ones included",
    (
        "cohort_method.py",
        "_estimate_tables: f'{name}_counts'",
    ): "one row per outcome and adjustment of the package",
    (
        "prediction/analysis.py",
        "strata_table: f'{name}_risk_strata'",
    ): "the splits and risk deciles, all present",
}


def _tables_with_dimensions() -> list[tuple[str, str, set[str]]]:
    """(file, the name the table is bound to or built in, keywords) of every ResultTable(...) with
    `dimensions=` in mercia.analyses, found in the source."""
    import ast

    import mercia.analyses as pkg

    root = Path(pkg.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ResultTable":
                    kw = {k.arg for k in node.keywords if k.arg}
                    kind = next((k.value for k in node.keywords if k.arg == "kind"), None)
                    if (
                        "dimensions" not in kw
                        or "sequential" in kw
                        or getattr(kind, "value", "") == "survival"
                    ):
                        continue
                    name = next((k.value for k in node.keywords if k.arg == "name"), None)
                    label = f"{fn.name}: {ast.unparse(name) if name is not None else '?'}"
                    found.append((str(path.relative_to(root)), label, kw))
    return found


def test_every_table_with_dimensions_says_whether_its_levels_come_from_the_data() -> None:
    undeclared = []
    for file, label, kw in _tables_with_dimensions():
        if "data_levels" in kw:
            continue
        if (file, label) not in FIXED_LEVELS:
            undeclared.append(f"{file}: {label}")
    assert not undeclared, (
        "these tables have rows per level but do not declare data_levels (or a reason in FIXED_LEVELS): "
        + "; ".join(undeclared)
    )
