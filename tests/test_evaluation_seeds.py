"""The many-seeds simulation (`mercia evaluate seeds`): its metrics against a hand computation, a fast
end-to-end run, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mercia.cli import app
from mercia.errors import ConfigError
from mercia.evaluation import seeds as ev


def _est(rows: list[tuple]) -> pd.DataFrame:
    cols = ["seed", "effect", "estimator", "true_hr", "rr", "ci_lower", "ci_upper"]
    df = pd.DataFrame(rows, columns=cols)
    df["log_rr"] = np.log(df["rr"])
    df["estimable"] = df["rr"].notna()
    return df


def test_metrics_match_a_hand_computation():
    est = ev.score(_est([
        (1, "e", "match", 1.5, 1.4, 1.05, 2.0),  # covers, excludes 1
        (2, "e", "match", 1.5, 1.8, 1.6, 2.1),   # misses (above), excludes 1
        (3, "e", "match", 1.5, 1.2, 0.8, 1.8),   # covers, holds 1
        (4, "e", "match", 1.5, None, None, None),  # not estimable
        (1, "e", "crude", 1.5, 0.8, 0.6, 1.1),
        (2, "e", "crude", 1.5, 0.9, 0.7, 1.2),
    ]))
    s = ev.summarise(est).set_index(["effect", "estimator"])
    m = s.loc[("e", "match")]
    b = np.log([1.4, 1.8, 1.2]) - math.log(1.5)
    assert m["seeds"] == 4 and m["estimable"] == 3 and m["share_not_estimable"] == 0.25
    assert m["coverage"] == pytest.approx(2 / 3)
    assert m["coverage_mc_se"] == pytest.approx(math.sqrt(2 / 3 * 1 / 3 / 3))
    assert m["mean_bias_log_hr"] == pytest.approx(b.mean())
    assert m["bias_mc_se"] == pytest.approx(b.std(ddof=1) / math.sqrt(3))
    assert m["rmse_log_hr"] == pytest.approx(math.sqrt((b ** 2).mean()))
    assert m["mean_ci_width_log"] == pytest.approx(np.mean(np.log([2.0 / 1.05, 2.1 / 1.6, 1.8 / 0.8])))
    assert m["share_excluding_1"] == pytest.approx(2 / 3)
    c = s.loc[("e", "crude")]
    assert c["coverage"] == 0 and c["share_excluding_1"] == 0
    # 'all' pools the effects of an estimator.
    assert s.loc[("all", "match")]["estimable"] == 3


def test_scored_against_the_marginal_hr_too():
    """Each estimate is scored against the planted (conditional) HR and the marginal HR in the treated
    of its seed's truth.json; without a marginal HR the `_marginal` metrics are NaN."""
    rows = _est([
        (1, "e", "match", 0.7, 0.74, 0.60, 0.90),  # covers both
        (2, "e", "match", 0.7, 0.85, 0.72, 1.00),  # covers the marginal (0.75) only
        (3, "e", "match", 0.7, 0.62, 0.50, 0.69),  # covers neither
    ])
    rows["marginal_hr"] = [0.74, 0.75, 0.73]
    s = ev.summarise(ev.score(rows)).set_index(["effect", "estimator"]).loc[("e", "match")]
    assert s["coverage"] == pytest.approx(1 / 3)
    assert s["coverage_marginal"] == pytest.approx(2 / 3)
    bm = np.log([0.74, 0.85, 0.62]) - np.log([0.74, 0.75, 0.73])
    assert s["mean_bias_log_hr_marginal"] == pytest.approx(bm.mean())
    assert s["bias_marginal_mc_se"] == pytest.approx(bm.std(ddof=1) / math.sqrt(3))
    assert s["mean_marginal_hr"] == pytest.approx(math.exp(np.log([0.74, 0.75, 0.73]).mean()))
    old = ev.summarise(ev.score(_est([(1, "e", "match", 0.7, 0.74, 0.60, 0.90)]))).iloc[0]
    assert math.isnan(old["coverage_marginal"]) and math.isnan(old["mean_bias_log_hr_marginal"])


def test_end_to_end_fast(tmp_path):
    out = tmp_path / "sim"
    r = CliRunner().invoke(app, ["evaluate", "seeds", "--seeds", "2", "--persons", "4000",
                                 "--acute-rate-multiplier", "60", "--profiles", "fenwold,ashby", "--out", str(out)])
    assert r.exit_code == 0, r.output
    est = pd.read_parquet(out / "seeds_estimates.parquet")
    assert len(est) == 2 * 2 * 2  # seeds x effects x estimators
    assert list(est["profile"].unique()) == ["fenwold", "ashby"]
    assert set(est["estimator"]) == {"crude", "match"}
    assert set(est["true_hr"]) == {1.5, 0.7}
    # Each seed's truth.json states the marginal HR in the treated: nearer 1 than the planted one.
    m = est.groupby("effect")["marginal_hr"].agg(["min", "max"])
    assert m.loc["nsaid_gi_bleeding", "min"] > 1 and m.loc["nsaid_gi_bleeding", "max"] < 1.5
    assert m.loc["sglt2_hf_admission", "min"] > 0.7 and m.loc["sglt2_hf_admission", "max"] < 1
    # The estimates released are those the analysis computes for that seed's site (nothing altered):
    # every estimable interval holds its point estimate.
    ok = est[est["estimable"]]
    assert ((ok["ci_lower"] <= ok["rr"]) & (ok["rr"] <= ok["ci_upper"])).all()
    summary = pd.read_csv(out / "seeds_summary.csv")
    assert set(summary["effect"]) == {"nsaid_gi_bleeding", "sglt2_hf_admission", "all"}
    assert (summary.loc[summary["effect"] != "all", "seeds"] == 2).all()
    assert (out / "seeds.png").stat().st_size > 1000
    assert "seeds_summary.csv" in r.stdout
    assert not (out / "seeds_estimates.partial.csv").exists()  # kept only while the run goes on


@pytest.mark.parametrize(("args", "needle"), [
    (["--persons", "-5"], "--persons"),
    (["--seeds", "0"], "--seeds"),
    (["--acute-rate-multiplier", "0"], "acute_rate_multiplier"),
    (["--profiles", "atlantis"], "profiles"),
    (["--effects", "statins_and_joy"], "effects"),
    (["--policy", "lax"], "policy"),
])
def test_bad_input_is_one_line(tmp_path, args, needle):
    r = CliRunner().invoke(app, ["evaluate", "seeds", "--out", str(tmp_path / "o"), *args])
    assert r.exit_code in (1, 2), r.output
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], r.stderr
    assert "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_out_folder_must_be_new_or_empty(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("keep me")
    r = CliRunner().invoke(app, ["evaluate", "seeds", "--seeds", "1", "--persons", "500", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "not an empty folder" in r.stderr
    assert (tmp_path / "o" / "x").read_text() == "keep me"
    with pytest.raises(ConfigError, match="effects"):
        ev.seeds_settings(effects=("nsaid_gi_bleeding", "nsaid_gi_bleeding"))
