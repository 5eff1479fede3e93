"""SQL text for engines Mercia does not connect to: each dialect's own parameter syntax, and golden files.

* Placeholders: ``@name`` for SQL Server and BigQuery, ``?`` for Trino (with the values in placeholder
  order), ``:1``, ``:2`` for Snowflake, ``%(name)s`` for PostgreSQL, ``$name`` for DuckDB, ``:name`` for
  Spark: what each engine's Python connector (or SQL Server's sp_executesql) accepts.
* Golden files (tests/golden/cohorts/<name>.<dialect>.sql): the ``mercia cohort sql`` text of ten
  definitions in Trino, BigQuery, Snowflake and T-SQL. A change to the compiler's output shows up as a
  diff to review; MERCIA_UPDATE_GOLDEN=1 rewrites them deliberately. They say nothing about correctness
  (the code wrote them): test_cohort_dialect_semantics.py checks that this SQL selects the DuckDB rows.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from mercia.cohorts import dsl
from mercia.cohorts.compiler import compile_cohort
from mercia.cohorts.loader import SchemaTables, load_definition
from mercia.cohorts.model import CohortDefinition
from mercia.cohorts.render import PARAM_STYLES, describe_value, render
from oracle_support import COHORTS_DIR

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "cohorts"
GOLDEN_DIALECTS = ["trino", "bigquery", "snowflake", "tsql"]


def dsl_everything() -> CohortDefinition:
    """A DSL cohort touching most of the compiler: two entry events, nested criteria, windows on both
    ends, distinct counts, demographics, a study period (the two bound dates), a custom era and censoring."""
    nsaid = dsl.concepts("NSAIDs", ingredients=["celecoxib", "diclofenac"], descendants=True)
    bleed = dsl.concepts("GI bleed", conditions=["gi_bleeding"], descendants=True)
    inpatient = dsl.concepts("Inpatient", visits=["inpatient"])
    return (
        dsl.cohort("DSL: everything")
        .entry(dsl.drug(nsaid).first().age(min=18), dsl.condition(bleed).in_visit("inpatient"), keep="all")
        .require_observation(prior_days=365, post_days=30)
        .where(dsl.visit(inpatient).within(days_before=30))
        .require(dsl.any_of(dsl.drug(nsaid).between(-365, -1).at_least(2, distinct="start_date"),
                            dsl.all_of(dsl.age(min=40), dsl.sex("female"))), name="prior use or older women")
        .exclude(dsl.condition(bleed).within(days_before=365).ending_between(-365, 0), name="no bleed")
        .exclude(dsl.death().within(days_before=10000), name="alive")
        .exit_at_end_of_exposure(drug=nsaid, gap_days=30, offset=7)
        .censor_at(dsl.condition(bleed))
        .study_period("2010-01-01", "2019-12-31")
        .collapse(gap_days=7)
        .build()
    )


def _definitions() -> dict[str, CohortDefinition]:
    out = {f"cohortgenerator_{i}": load_definition(COHORTS_DIR / "cohortgenerator" / f"{i}.json") for i in (1, 2, 3, 4)}
    out |= {f"phenotypelibrary_{i}": load_definition(COHORTS_DIR / "phenotypelibrary" / f"{i}.json") for i in (482, 957)}
    for name in ("gi_bleed_atlas.json", "new_nsaid_users.yaml", "type2_diabetes_metformin.yaml"):
        out[f"example_{Path(name).stem}"] = load_definition(REPO / "examples" / "cohorts" / name)
    out["dsl_everything"] = dsl_everything()
    return out


def cohort_sql_text(definition: CohortDefinition, dialect: str) -> str:
    """`mercia cohort sql --dialect D`'s text (without its final ';'), CDM in `cdm`, vocabulary in `vocab`."""
    compiled = compile_cohort(SchemaTables("cdm", "vocab"), definition.expression)
    rendered = render(compiled.rows_query(), compiled.params, dialect, pretty=True)
    lines = [f"-- {definition.name}"]
    lines += [f"-- parameter {n} = {describe_value(compiled.params[n])}" for n in dict.fromkeys(rendered.order)]
    if rendered.style == "qmark" and rendered.order:
        lines.append(f"-- positional parameters (?), in order: {', '.join(rendered.order)}")
    if rendered.style == "numeric" and rendered.order:
        lines.append(f"-- numbered parameters: {', '.join(f':{i} = {n}' for i, n in enumerate(rendered.order, 1))}")
    return "\n".join(lines) + "\n" + rendered.sql + "\n"


def _compiled_with_dates() -> tuple[exp.Select, dict[str, dt.date]]:
    c = compile_cohort(SchemaTables("cdm", "vocab"), dsl_everything().expression)
    assert len(c.params) >= 2
    return c.rows_query(), c.params


# ---- placeholders ---------------------------------------------------------------------------------
EXPECTED_FORM = {"duckdb": r"\$d\d+", "postgres": r"%\(d\d+\)s", "spark": r":d\d+", "trino": r"\?",
                 "bigquery": r"@d\d+", "snowflake": r":\d+", "tsql": r"@d\d+"}
ALL_FORMS = r"\$d\d+|%\(d\d+\)s|:d\d+|:\d+|@d\d+|\?"


@pytest.mark.parametrize("dialect", list(PARAM_STYLES))
def test_each_dialect_prints_its_own_placeholders(dialect: str) -> None:
    tree, params = _compiled_with_dates()
    r = render(tree, params, dialect)
    found = re.findall(ALL_FORMS, r.sql)
    assert found, "the definition's dates are bound parameters"
    assert all(re.fullmatch(EXPECTED_FORM[dialect], f) for f in found), (dialect, sorted(set(found)))
    assert "2010-01-01" not in r.sql and "2019-12-31" not in r.sql


def test_tsql_never_prints_colon_placeholders() -> None:
    tree, params = _compiled_with_dates()
    sql = render(tree, params, "tsql").sql
    assert not re.search(r":d\d+", sql)
    assert sqlglot.parse_one(sql, read="tsql") is not None
    # sp_executesql needs every name once: the values are a dict by name.
    r = render(tree, params, "tsql")
    assert isinstance(r.params, dict) and set(r.params) == set(params)


def test_trino_positional_values_follow_the_text() -> None:
    """`?` placeholders take their values by position: the list must follow the order in the text,
    which is not the tree's order (a SELECT's WITH is printed first but built last)."""
    a, b, c = dt.date(2001, 1, 1), dt.date(2002, 2, 2), dt.date(2003, 3, 3)
    q = (exp.select(exp.Placeholder(this="a"), exp.Placeholder(this="b"), exp.Placeholder(this="a"), copy=False)
         .from_("t").with_("w", as_=exp.select(exp.Placeholder(this="c"))))
    r = render(q, {"a": a, "b": b, "c": c}, "trino")
    assert r.sql == "WITH w AS (SELECT ?) SELECT ?, ?, ? FROM t"
    assert r.params == [c, a, b, a]
    # The same check on a real cohort: the names, read from the named (Spark) text, in order.
    tree, params = _compiled_with_dates()
    named = render(tree, params, "spark").sql
    positional = render(tree, params, "trino")
    assert list(positional.order) == re.findall(r":(d\d+)", named)
    assert positional.params == [params[n] for n in positional.order]
    assert positional.sql.count("?") == len(positional.params)
    assert sqlglot.parse_one(positional.sql, read="trino") is not None


def test_snowflake_numbers_each_name_once() -> None:
    tree, params = _compiled_with_dates()
    r = render(tree, params, "snowflake")
    numbers = sorted({int(n) for n in re.findall(r":(\d+)", r.sql)})
    assert numbers == list(range(1, len(params) + 1))
    assert sorted(r.order) == sorted(params) and r.params == [params[n] for n in r.order]
    # :i replaced by the name numbered i gives sqlglot's own Snowflake text (which prints :name)
    named = re.sub(r":(\d+)", lambda m: ":" + r.order[int(m.group(1)) - 1], r.sql)
    assert named == tree.sql(dialect="snowflake")
    assert sqlglot.parse_one(r.sql, read="snowflake") is not None


def test_text_parameters_are_described_safely() -> None:
    assert describe_value(dt.date(2001, 2, 3)) == "2001-02-03 (DATE)"
    assert describe_value("50%\n; DROP") == '"50%\\n; DROP" (TEXT)'


def test_a_placeholder_inside_a_string_is_not_a_parameter() -> None:
    q = exp.select(exp.Literal.string(":d1 is text"), exp.Placeholder(this="d1"))
    r = render(q, {"d1": dt.date(2000, 1, 1)}, "trino")
    assert r.sql == "SELECT ':d1 is text', ?" and r.params == [dt.date(2000, 1, 1)]


def test_bad_input() -> None:
    tree, params = _compiled_with_dates()
    with pytest.raises(ValueError, match="no parameter style for dialect 'oracle'"):
        render(tree, params, "oracle")
    with pytest.raises(ValueError, match="placeholders without a value: d1"):
        render(tree, {k: v for k, v in params.items() if k != "d1"}, "tsql")
    with pytest.raises(ValueError, match="unnamed placeholder"):
        render(exp.select(exp.Placeholder()), {}, "tsql")


# ---- golden files ---------------------------------------------------------------------------------
DEFINITIONS = _definitions()


@pytest.mark.parametrize("dialect", GOLDEN_DIALECTS)
@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_golden_sql(name: str, dialect: str) -> None:
    path = GOLDEN / f"{name}.{dialect}.sql"
    text = cohort_sql_text(DEFINITIONS[name], dialect)
    if os.environ.get("MERCIA_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no golden file {path.name}: run with MERCIA_UPDATE_GOLDEN=1 and review the diff"
    assert text == path.read_text(encoding="utf-8"), f"{path.name} changed: review, then MERCIA_UPDATE_GOLDEN=1"
