"""The analysis spec suite (tests/spec/): every case on DuckDB, PostgreSQL (marker postgres,
MERCIA_TEST_PG_URL) and Spark (marker spark, MERCIA_TEST_SPARK=1; one Spark session for the module);
and docs/reference/analysis-spec.md, rendered from the same cases, is up to date."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from sklearn.linear_model import LogisticRegression

from mercia.cdm import Cdm
from spec import all_cases, cohort_method, cox, kaplan_meier
from spec.case import compare
from spec.render import DOC, render
from spec.tables import load_tables, table

CASES = all_cases()

# Cases that fail on Spark (none since the Spark engine's transform carried the incidence and prevalence
# templates). strict: a case that starts passing fails until its entry is removed here, so this list is
# always the gap.
SPARK_XFAIL_REASON = "fails on Spark"
SPARK_XFAIL: set[str] = set()


def _params() -> list[object]:
    out = []
    for cid, case in CASES:
        out.append(pytest.param(case, "duckdb", id=f"duckdb:{cid}"))
        out.append(pytest.param(case, "postgres", id=f"postgres:{cid}", marks=pytest.mark.postgres))
        marks = [pytest.mark.spark]
        if cid in SPARK_XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=SPARK_XFAIL_REASON))
        out.append(pytest.param(case, "spark", id=f"spark:{cid}", marks=marks))
    return out


def test_spark_xfail_names_cases() -> None:
    unknown = SPARK_XFAIL - {cid for cid, _ in CASES}
    assert not unknown, f"SPARK_XFAIL names no case: {sorted(unknown)}"


@pytest.fixture
def open_cdm(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Cdm]]:
    """A fresh, empty CDM on the engine asked for."""
    opened: list[tuple[Cdm, str | None]] = []

    def make(engine: str) -> Cdm:
        if engine == "duckdb":
            cdm = Cdm.open()
            opened.append((cdm, None))
            return cdm
        if engine == "postgres":
            return request.getfixturevalue("pg_cdm_factory")()  # dropped by that fixture
        session = request.getfixturevalue("spark")
        schema = "spec_" + secrets.token_hex(5)
        cdm = Cdm.from_spark(session, cdm_schema=schema, results_schema=schema)
        opened.append((cdm, schema))
        return cdm

    yield make
    for cdm, schema in opened:
        if schema:
            cdm.execute(f"DROP DATABASE IF EXISTS {schema} CASCADE")
        else:
            cdm.close()


@pytest.mark.parametrize(("case", "engine"), _params())
def test_spec(case, engine: str, open_cdm: Callable[[str], Cdm]) -> None:
    cdm = load_tables(open_cdm(engine), case.input_tables())
    case.check(case.run(cdm))


def test_doc_is_up_to_date() -> None:
    assert DOC.read_text() == render(), (
        "docs/reference/analysis-spec.md is stale: run `python -m tests.spec.render` from the repository root")


def test_check_catches_a_wrong_number() -> None:
    # The comparison itself can fail: a released value off in the last written digit is a failure.
    want = table("a | x\n1 | 0.667")
    assert compare("t", want, pd.DataFrame({"a": [1], "x": [2 / 3]})) == []
    assert compare("t", want, pd.DataFrame({"a": [1], "x": [0.668]}))
    assert compare("t", want, pd.DataFrame({"a": [1], "x": [None]}))
    assert compare("t", table("a | x\n1 |"), pd.DataFrame({"a": [1], "x": [float("nan")]})) == []


# ---- the expected numbers that came from a reference library, re-derived from it here -------------------
def _expected(module: object, case_id: str, table_name: str) -> pd.DataFrame:
    case = next(c for c in module.CASES if c.id == case_id)  # type: ignore[attr-defined]
    t = case.expected_tables()[table_name]
    return pd.DataFrame(list(t.rows), columns=list(t.columns))


def test_cox_expected_is_lifelines() -> None:
    rows = pd.DataFrame(cox.REFERENCE_ROWS, columns=["time", "event", "treatment", "male"])
    fit = CoxPHFitter().fit(rows, "time", "event", fit_options={"precision": 1e-12})
    want = _expected(cox, "treatment_and_sex", "cox").set_index("term")
    s = fit.summary
    for col, ref in (("coef", "coef"), ("se", "se(coef)"), ("hr", "exp(coef)"), ("hr_lower", "exp(coef) lower 95%"),
                     ("hr_upper", "exp(coef) upper 95%"), ("p", "p")):
        np.testing.assert_allclose(want.loc[s.index, col].to_numpy(float), s[ref].to_numpy(), atol=5e-4, err_msg=col)


def test_kaplan_meier_expected_is_lifelines() -> None:
    t, e = zip(*kaplan_meier.REFERENCE_ROWS, strict=True)
    km = KaplanMeierFitter().fit(list(t), list(e))
    want = _expected(kaplan_meier, "curve", "km")
    times = want["time"].to_numpy(float)
    np.testing.assert_allclose(want["estimate"], km.survival_function_at_times(times).to_numpy(), atol=5e-4)
    ci = km.confidence_interval_.loc[times]
    np.testing.assert_allclose(want["ci_lower"], ci.iloc[:, 0].to_numpy(), atol=5e-4)
    np.testing.assert_allclose(want["ci_upper"], ci.iloc[:, 1].to_numpy(), atol=5e-4)
    table = km.event_table.loc[times[1:]]
    assert want["n_events"].tolist()[1:] == table["observed"].tolist()


def test_propensity_expected_is_scikit_learn() -> None:
    x, y = (np.array(v) for v in zip(*cohort_method.REFERENCE_ROWS, strict=True))
    model = LogisticRegression(C=np.inf).fit(x.reshape(-1, 1), y)
    want = _expected(cohort_method, "ps_matching_balance", "cm_ps_model").set_index("covariate_id")["coef"]
    np.testing.assert_allclose([want[0], want[300102]], [model.intercept_[0], model.coef_[0, 0]], atol=5e-4)


def test_cohort_method_crude_estimate_is_lifelines() -> None:
    rows = pd.DataFrame(cohort_method.CRUDE_ROWS, columns=["time", "event", "treatment"])
    s = CoxPHFitter().fit(rows, "time", "event", fit_options={"precision": 1e-12}).summary.loc["treatment"]
    want = _expected(cohort_method, "ps_matching_balance", "cm_estimates").iloc[0]
    np.testing.assert_allclose(
        [want["log_rr"], want["se_log_rr"], want["rr"], want["ci_lower"], want["ci_upper"]],
        [s["coef"], s["se(coef)"], s["exp(coef)"], s["exp(coef) lower 95%"], s["exp(coef) upper 95%"]], atol=5e-4)
