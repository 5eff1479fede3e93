"""Pin the SQL the cohort compiler and planner write, to check a refactoring leaves it byte-identical.

For a broad corpus of definitions (the shared Circe JSON, the benchmark's, the examples and study
packages, the DSL cohort of the render tests, and a few hundred random definitions drawn once from
tests/cohort_strategies.py and stored in the output), it records

* ``compile_cohort(...).sql(d)`` for every dialect in DIALECTS, and the mask-counts query for DuckDB
  and PostgreSQL;
* every statement of ``plan_cohort`` for DuckDB and PostgreSQL: each step's create / analyse / drop,
  the tables it reads, the insert, the mask counts, and the parameter names each binds.

The temporary-table prefix is a per-process random token, so it is replaced by a fixed one.

    .venv/bin/python tools/cohort_sql_golden.py --cdm SMALL.duckdb --write /tmp/golden.json
    .venv/bin/python tools/cohort_sql_golden.py --cdm SMALL.duckdb --check /tmp/golden.json

The golden file is written from the code before a change and checked after it; it is not kept in the
repository (it pins the SQL of one version, which is a review decision, not a test).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "bench")]

from mercia.cdm import Cdm  # noqa: E402
from mercia.cdm.engines import engine_class  # noqa: E402
from mercia.cohorts import plan as plan_module  # noqa: E402
from mercia.cohorts.circe import from_circe_json  # noqa: E402
from mercia.cohorts.compiler import compile_cohort  # noqa: E402
from mercia.cohorts.loader import load_definition  # noqa: E402
from mercia.cohorts.model import CohortDefinition  # noqa: E402
from mercia.cohorts.plan import CohortPlan, Statement, plan_cohort  # noqa: E402
from mercia.errors import MerciaError  # noqa: E402

DIALECTS = ("duckdb", "postgres", "spark", "trino", "bigquery", "snowflake", "tsql")
PLAN_DIALECTS = ("duckdb", "postgres")
SHARED_COHORTS = Path("/work/shared/data/cohorts")
FIXED_PREFIX = "mercia_tmp_GOLDEN_"


def file_definitions() -> Iterator[tuple[str, CohortDefinition]]:
    """Every cohort definition kept in files: shared Circe JSON, benchmark, examples, study packages."""
    for p in sorted(SHARED_COHORTS.rglob("*.json")):
        yield f"shared:{p.relative_to(SHARED_COHORTS)}", load_definition(p)
    import bench_cohorts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cid, _, p in bench_cohorts.definitions():
            yield f"bench:{cid}:{Path(p).name}", load_definition(p)
    for p in sorted((REPO / "examples" / "cohorts").iterdir()):
        if p.suffix in (".json", ".yaml", ".yml", ".py"):
            yield f"example:{p.name}", load_definition(p)
    from mercia.study.package import load_package

    for study in sorted((REPO / "examples" / "studies").glob("*/study.yaml")):
        package = load_package(study)
        for key in sorted(package.definitions):
            yield f"study:{study.parent.name}:{key}", package.definitions[key]
    from test_cohort_render import dsl_everything

    yield "dsl_everything", dsl_everything()


def draw_random_definitions(n: int) -> list[dict[str, Any]]:
    """`n` Circe expressions from the tests' strategy, drawn deterministically (derandomize)."""
    from hypothesis import HealthCheck, Phase, given, settings

    from cohort_strategies import cohort_expressions

    drawn: list[dict[str, Any]] = []

    @settings(derandomize=True, database=None, max_examples=n, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(cohort_expressions())
    def collect(x: dict[str, Any]) -> None:
        drawn.append(json.loads(json.dumps(x, default=str)))

    collect()
    return drawn


def _statement(s: Statement | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"sql": s.sql.replace(plan_module._TEMP_PREFIX, FIXED_PREFIX), "params": list(s.param_names)}


def _plan(p: CohortPlan) -> dict[str, Any]:
    def fix(name: str) -> str:
        return name.replace(plan_module._TEMP_PREFIX, FIXED_PREFIX)

    return {
        "steps": [{"table": fix(s.table), "create": _statement(s.create), "analyse": _statement(s.analyse),
                   "drop": _statement(s.drop), "reads": [fix(r) for r in s.reads]} for s in p.steps],
        "insert": _statement(p.insert),
        "mask_counts": _statement(p.mask_counts),
        "params": sorted(p.params),
        "rule_names": list(p.rule_names),
    }


def render_all(cdm: Cdm, definition: CohortDefinition) -> dict[str, Any]:
    """Everything the compiler and planner write for one definition (or the error it raises)."""
    x = definition.expression
    try:
        compiled = compile_cohort(cdm, x)
    except MerciaError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    out: dict[str, Any] = {"sql": {d: compiled.sql(d) for d in DIALECTS},
                           "mask_counts_query": {d: compiled.mask_counts_query().sql(dialect=d)
                                                 for d in PLAN_DIALECTS},
                           "params": {k: str(v) for k, v in compiled.params.items()}}
    cohort_table = cdm.table("cohort")
    out["plan"] = {d: _plan(plan_cohort(compile_cohort(cdm, x), engine_class(d), cohort_table)) for d in PLAN_DIALECTS}
    return out


def corpus(random_definitions: list[dict[str, Any]]) -> Iterator[tuple[str, CohortDefinition]]:
    yield from file_definitions()
    for i, x in enumerate(random_definitions):
        yield f"random:{i}", from_circe_json(x, name=f"random {i}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cdm", required=True, help="a DuckDB CDM (opened read-only) for table resolution")
    ap.add_argument("--results-schema", default="mercia")
    ap.add_argument("--random", type=int, default=300, help="random definitions to draw (--write only)")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, help="render the corpus and write the golden JSON here")
    mode.add_argument("--check", type=Path, help="render the corpus and compare with this golden JSON")
    args = ap.parse_args()
    cdm = Cdm.open(args.cdm, results_schema=args.results_schema, read_only=True)
    if args.write:
        random_definitions = draw_random_definitions(args.random)
    else:
        golden = json.loads(args.check.read_text(encoding="utf-8"))
        random_definitions = golden["random_definitions"]
    rendered: dict[str, Any] = {}
    for name, d in corpus(random_definitions):
        rendered[name] = render_all(cdm, d)
        if len(rendered) % 50 == 0:
            print(f"{len(rendered)} rendered", file=sys.stderr, flush=True)
    if args.write:
        args.write.write_text(json.dumps({"random_definitions": random_definitions, "rendered": rendered},
                                         sort_keys=True), encoding="utf-8")
        errors = sum("error" in r for r in rendered.values())
        print(f"wrote {len(rendered)} definitions ({errors} raise an error) to {args.write}")
        return 0
    expected = golden["rendered"]
    problems = [f"{name}: not in the golden file" for name in rendered if name not in expected]
    problems += [f"{name}: in the golden file, not rendered now" for name in expected if name not in rendered]
    for name, now in rendered.items():
        if name in expected and now != expected[name]:
            problems.append(f"{name}: differs in {_first_difference(expected[name], now)}")
    for p in problems:
        print(p)
    print(f"checked {len(rendered)} definitions: {len(problems)} differ")
    return 1 if problems else 0


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    if isinstance(a, str) and isinstance(b, str):
        i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        return f"{path} at char {i}: {a[max(0, i - 60):i + 60]!r} vs {b[max(0, i - 60):i + 60]!r}"
    return path or "(root)"


if __name__ == "__main__":
    sys.exit(main())
