"""The one Newton-Raphson and the one Cox partial likelihood (mercia.analyses.solvers), against
statsmodels and lifelines; and a guard that no second Newton loop or Efron implementation grows back in src/."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines import CoxPHFitter
from statsmodels.duration.hazard_regression import PHReg

from mercia.analyses import cohort_method, survival
from mercia.analyses.solvers import (
    SHORT,
    Evaluation,
    cox_partial_likelihood,
    cox_risk_sets,
    efron_means,
    logistic_terms,
    newton_maximise,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "mercia"


class Counting:
    """An evaluate() that counts its calls: more calls than Newton steps + 1 means halving happened."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, b: np.ndarray) -> Evaluation:
        self.calls += 1
        return self.f(b)


def _near_separated(seed: int = 3, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A logistic problem whose MLE is large but finite: x nearly separates y (a handful of rows on
    the wrong side)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = (x > 0).astype(float)
    flip = rng.choice(np.flatnonzero(np.abs(x) < 0.3), 6, replace=False)
    y[flip] = 1 - y[flip]
    X = np.column_stack([np.ones(n), 5 * x, rng.normal(size=n)])
    return X, y


@pytest.mark.parametrize("start", [[0.0, 0.0, 0.0], [2.0, -1.0, 0.0]])
def test_logistic_near_separation_equals_statsmodels(start: list[float]):
    """From 0 (how every caller starts), and from a start on the wrong side of the optimum, where
    full Newton steps overshoot and must be halved: the same estimates as statsmodels."""
    X, y = _near_separated()
    ev = Counting(lambda b: Evaluation(*logistic_terms(X, y, b)[:3]))
    res = newton_maximise(ev, np.array(start))
    assert res.converged
    if start[0]:
        assert ev.calls > res.iterations + 1, "the problem was meant to need step halving"
    ref = sm.Logit(y, X).fit(method="newton", tol=1e-14, maxiter=200, disp=0)
    np.testing.assert_allclose(res.beta, ref.params, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(res.at.loglik, ref.llf, rtol=1e-12)
    se = np.sqrt(np.diag(np.linalg.inv(res.at.information)))
    np.testing.assert_allclose(se, ref.bse, rtol=1e-6)


def test_poisson_from_zero_halves_steps_and_equals_statsmodels():
    """Large counts under a log link: the first full steps from 0 overshoot."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=300)
    X = np.column_stack([np.ones(300), x])
    y = rng.poisson(np.exp(3 + 1.5 * x)).astype(float)

    def poisson(b: np.ndarray) -> Evaluation:
        eta = X @ b
        mu = np.exp(eta)
        return Evaluation(float(y @ eta - mu.sum()), X.T @ (y - mu), (X * mu[:, None]).T @ X)

    ev = Counting(poisson)
    res = newton_maximise(ev, np.zeros(2))
    assert res.converged and ev.calls > res.iterations + 1
    ref = sm.GLM(y, X, family=sm.families.Poisson()).fit(tol=1e-14)
    np.testing.assert_allclose(res.beta, ref.params, rtol=1e-9)


def test_separated_logistic_does_not_claim_convergence():
    x = np.r_[np.linspace(-2, -0.1, 20), np.linspace(0.1, 2, 20)]
    X, y = np.column_stack([np.ones(40), x]), (x > 0).astype(float)
    res = newton_maximise(lambda b: Evaluation(*logistic_terms(X, y, b)[:3]), np.zeros(2), max_iter=50)
    # the coefficients march away until the information underflows (singular) or the steps run out
    assert not res.converged and res.status in ("max_iter", "no_ascent", "singular")


def test_singular_information_is_reported_not_raised():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    X, y = np.column_stack([np.ones(50), x, 2 * x]), (rng.random(50) < 0.5).astype(float)
    res = newton_maximise(lambda b: Evaluation(*logistic_terms(X, y, b)[:3]), np.zeros(3))
    assert res.status == "singular" and not res.converged


def _tied_survival(seed: int = 7, n: int = 300) -> pd.DataFrame:
    """Survival data with many tied times (integer months), three strata and two covariates."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.integers(0, 2, size=n).astype(float)
    s = rng.integers(0, 3, size=n)
    t_true = rng.exponential(np.exp(-(0.7 * x1 - 0.5 * x2 + 0.3 * s)) * 10)
    c = rng.exponential(15, size=n)
    time = np.ceil(np.minimum(t_true, c))
    event = (t_true <= c).astype(float)
    return pd.DataFrame({"x1": x1, "x2": x2, "stratum": s, "time": time, "event": event})


def _fit_cox(df: pd.DataFrame, ties: str, strata: bool, start: list[float] | None = None):
    X = df[["x1", "x2"]].to_numpy()
    st = df["stratum"].to_numpy() if strata else None

    def ev(b):
        return Evaluation(*cox_partial_likelihood(X, df["time"], df["event"], b, st, ties))

    counting = Counting(ev)
    return newton_maximise(counting, np.zeros(2) if start is None else np.array(start)), counting


@pytest.mark.parametrize("strata", [False, True])
def test_cox_efron_ties_equals_lifelines(strata: bool):
    df = _tied_survival()
    assert df.duplicated(["time"]).sum() > 100  # heavily tied
    res, _ = _fit_cox(df, "efron", strata)
    assert res.converged
    cph = CoxPHFitter().fit(df if strata else df.drop(columns="stratum"), "time", "event",
                            strata=["stratum"] if strata else None,
                            fit_options={"precision": 1e-14, "max_steps": 200})
    np.testing.assert_allclose(res.beta, cph.params_[["x1", "x2"]].to_numpy(), rtol=1e-7)
    np.testing.assert_allclose(res.at.loglik, cph.log_likelihood_, rtol=1e-10)
    se = np.sqrt(np.diag(np.linalg.inv(res.at.information)))
    np.testing.assert_allclose(se, cph.standard_errors_[["x1", "x2"]].to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_ties_equal_statsmodels_phreg(ties: str):
    df = _tied_survival(11)
    res, _ = _fit_cox(df, ties, True)
    ref = PHReg(df["time"], df[["x1", "x2"]], status=df["event"], strata=df["stratum"], ties=ties).fit()
    np.testing.assert_allclose(res.beta, ref.params, rtol=1e-6)
    np.testing.assert_allclose(res.at.loglik, ref.llf, rtol=1e-10)


def test_cox_steps_are_halved_from_a_far_start():
    """From a start far from the optimum the first full steps overshoot: halved, same estimates."""
    df = _tied_survival(5)
    res, counting = _fit_cox(df, "efron", False, start=[5.0, 0.0])
    assert res.converged and counting.calls > res.iterations + 1
    cph = CoxPHFitter().fit(df.drop(columns="stratum"), "time", "event",
                            fit_options={"precision": 1e-14, "max_steps": 200})
    np.testing.assert_allclose(res.beta, cph.params_[["x1", "x2"]].to_numpy(), rtol=1e-7)


def test_efron_means_are_the_schoenfeld_means_of_lifelines():
    df = _tied_survival(2, 120).sort_values(["time", "event"], kind="stable").reset_index(drop=True)
    cph = CoxPHFitter().fit(df.drop(columns="stratum"), "time", "event", fit_options={"precision": 1e-12})
    beta = cph.params_[["x1", "x2"]].to_numpy()
    X = df[["x1", "x2"]].to_numpy()
    e = df["event"].to_numpy()
    ours = (X - efron_means(X, df["time"], e, beta))[e == 1]
    theirs = cph.compute_residuals(df.drop(columns="stratum"), "schoenfeld")
    np.testing.assert_allclose(ours, theirs.loc[df.index[e == 1], ["x1", "x2"]].to_numpy(), atol=1e-8)


def _mixed_strata(seed: int = 4) -> pd.DataFrame:
    """Strata of every shape the risk-set sums treat differently: one with more than SHORT tied-time
    groups (cumulated on its own), many of 1 to 6 rows (cumulated together by doubling), singletons,
    a stratum with no events; tied times throughout."""
    rng = np.random.default_rng(seed)
    sizes = np.r_[400, 3 * SHORT, rng.integers(1, 7, size=150), 1, 1, 5]
    s = np.repeat(np.arange(len(sizes)), sizes)
    n = len(s)
    x1, x2 = rng.normal(size=n), rng.integers(0, 2, size=n).astype(float)
    t_true = rng.exponential(np.exp(-(0.5 * x1 + 0.4 * x2)) * 150)
    time = np.ceil(np.minimum(t_true, rng.exponential(200, size=n)))
    event = (t_true <= time).astype(float)
    event[s == len(sizes) - 1] = 0.0
    order = rng.permutation(n)  # strata interleaved in the input
    return pd.DataFrame({"x1": x1, "x2": x2, "stratum": s, "time": time, "event": event}).iloc[order]


@pytest.mark.parametrize(("ties", "shift"), [("efron", 0.0), ("breslow", 0.0), ("efron", 40_000.25)])
def test_risk_sets_made_once_give_statsmodels_phreg_at_every_beta(ties: str, shift: float):
    """The risk sets of a fit, made once and evaluated at several betas, against statsmodels' PHReg
    (log-likelihood, score, information), over strata long, short, single and without events; times
    in whole days (sorted as 16-bit integers) and not (sorted as floats)."""
    df = _mixed_strata()
    df["time"] += shift
    assert (df.groupby("stratum")["time"].nunique() > SHORT).any() and df.duplicated(["stratum", "time"]).sum() > 100
    X, st = df[["x1", "x2"]].to_numpy(), df["stratum"].to_numpy()
    sets = cox_risk_sets(X, df["time"], df["event"], st, ties)
    ref = PHReg(df["time"], X, status=df["event"], strata=st, ties=ties)
    for beta in ([0.0, 0.0], [0.5, -0.3], [2.0, 1.0]):
        b = np.array(beta)
        loglik, score, info = sets.likelihood(b)
        np.testing.assert_allclose(loglik, ref.loglike(b), rtol=1e-12)
        np.testing.assert_allclose(score, ref.score(b), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(info, -ref.hessian(b), rtol=1e-10)
        again = cox_partial_likelihood(X, df["time"], df["event"], b, st, ties)
        np.testing.assert_allclose(again[2], info, rtol=1e-13)


def test_a_constant_covariate_has_exactly_no_information():
    """x constant (e.g. the treatment, when the comparator cohort is empty): its information is 0, not a
    rounding residue that would pass for a tiny positive variance."""
    df = _mixed_strata(5)
    X = np.column_stack([np.full(len(df), 0.1), df["x1"]])
    info = cox_risk_sets(X, df["time"], df["event"], df["stratum"].to_numpy()).likelihood(np.array([0.0, 0.4]))[2]
    assert info[0, 0] == 0.0 and info[0, 1] == 0.0 and info[1, 1] > 0


def test_a_fit_sorts_its_rows_once(monkeypatch: pytest.MonkeyPatch):
    """fit_cox and the cohort method's conditional Cox make the risk sets once per fit (per site), not at
    every Newton step."""
    df = _tied_survival(3)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return cox_risk_sets(*args, **kwargs)

    monkeypatch.setattr(survival, "cox_risk_sets", counting)
    monkeypatch.setattr(cohort_method, "cox_risk_sets", counting)
    X = df[["x1", "x2"]].to_numpy()
    fit = survival.fit_cox(survival.CoxData(X, df["time"].to_numpy(), df["event"].to_numpy(), ["x1", "x2"],
                                            df["stratum"].to_numpy()))
    assert fit.iterations > 2 and len(calls) == 1
    est = cohort_method.fit_cox_strata(df["x2"].to_numpy(), df["time"].to_numpy(), df["event"].to_numpy(),
                                       df["stratum"].to_numpy())
    assert est.converged and len(calls) == 2


# ---------------------------------------------------------------------------------------------- guard

_SOLVERS = SRC / "analyses" / "solvers.py"
_SOLVE_CALLS = {"solve", "lstsq", "cho_solve", "lu_solve", "solve_triangular"}
_INFO_NAMES = ("info", "hess", "fisher")


def _is_two(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in (2, 2.0)


def _names(node: ast.AST) -> set[str]:
    return {n.id.lower() for n in ast.walk(node) if isinstance(n, ast.Name)}


def _halves_itself(node: ast.AST) -> bool:
    """`step = step / 2`, `step /= 2`, `step *= 0.5` (any name holding "step")."""
    if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and "step" in node.target.id.lower():
        return (isinstance(node.op, ast.Div) and _is_two(node.value)) or (
            isinstance(node.op, ast.Mult) and isinstance(node.value, ast.Constant) and node.value.value == 0.5)
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        name, v = node.targets[0].id, node.value
        return ("step" in name.lower() and isinstance(v, ast.BinOp) and isinstance(v.left, ast.Name)
                and v.left.id == name and ((isinstance(v.op, ast.Div) and _is_two(v.right)) or (
                    isinstance(v.op, ast.Mult) and isinstance(v.right, ast.Constant) and v.right.value == 0.5)))
    return False


def _newton_loop(loop: ast.For | ast.While) -> str | None:
    """Why a loop looks like a Newton iteration: it solves a linear system, divides by an
    information or Hessian, or halves a step."""
    for node in ast.walk(loop):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _SOLVE_CALLS:
            return f"calls {node.func.attr}() in a loop"
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                and any(k in name for name in _names(node.right) for k in _INFO_NAMES)):
            return "divides by an information or Hessian in a loop"
        if _halves_itself(node):
            return "halves a step in a loop"
    return None


def _risk_set_sums(fn: ast.FunctionDef) -> bool:
    """A function that forms cumulative sums of per-time-group sums: the risk sets of a Cox model."""
    attrs = {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute)}
    return "reduceat" in attrs and "cumsum" in attrs


def duplicate_solvers(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "solvers.py" and path.parent.name == "analyses":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(root.parent)
        for node in ast.walk(tree):
            if isinstance(node, (ast.For, ast.While)) and (why := _newton_loop(node)):
                found.append(f"{rel}:{node.lineno}: {why}: use mercia.analyses.solvers.newton_maximise")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _risk_set_sums(node):
                found.append(f"{rel}:{node.lineno}: {node.name}() sums Cox risk sets: use "
                             "mercia.analyses.solvers.cox_risk_sums")
    return found


def test_guard_flags_a_newton_loop_and_an_efron_implementation(tmp_path: Path):
    """The guard itself: it sees the shapes the duplicates had (so a clean result means something)."""
    pkg = tmp_path / "mercia"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "import numpy as np\n"
        "def fit(score, info):\n"
        "    for _ in range(100):\n"
        "        step = score / info\n"
        "def fit2(f, b):\n"
        "    while True:\n"
        "        step = np.linalg.solve(f(b)[1], f(b)[0])\n"
        "def fit3(step):\n"
        "    for _ in range(30):\n"
        "        step /= 2\n"
        "def not_newton(step, value):\n"
        "    for _ in range(3):\n"
        "        value = round(value / step) * step - step / 2\n"
        "def efron(w, x, start):\n"
        "    return np.cumsum(np.add.reduceat(w * x, start))\n"
    )
    found = duplicate_solvers(pkg)
    assert len(found) == 4, found


def test_no_second_newton_loop_or_efron_implementation_in_src():
    assert _SOLVERS.is_file()
    assert duplicate_solvers(SRC) == []
