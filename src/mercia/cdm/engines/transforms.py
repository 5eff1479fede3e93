"""Named rewrites of a sqlglot tree parsed from an analysis template written in DuckDB's dialect
(`mercia.cdm.query.build`), each carrying one construct that sqlglot does not render portably to an
engine's dialect. Engines compose the ones they need in `Engine.transform` (as sqlglot's dialects compose
`sqlglot.transforms`); each rewrite takes one node and returns it or its replacement (`tree.transform`).
"""

from __future__ import annotations

from sqlglot import exp


def make_date(node: exp.Expression) -> exp.Expression:
    """DuckDB's MAKE_DATE(y, m, d) as MAKE_DATE: sqlglot renders it DATE_FROM_PARTS on PostgreSQL, which
    has make_date instead."""
    if isinstance(node, exp.DateFromParts):
        return exp.Anonymous(this="MAKE_DATE", expressions=[node.args["year"], node.args["month"], node.args["day"]])
    return node


def interval_times_unit(node: exp.Expression) -> exp.Expression:
    """INTERVAL (expr) YEAR, an interval of a computed length, as INTERVAL '1' YEAR * (expr): neither
    PostgreSQL nor Spark reads an interval literal whose length is an expression; both multiply one."""
    if isinstance(node, exp.Interval) and not isinstance(node.this, exp.Literal):
        inner = node.this.unnest() if isinstance(node.this, exp.Paren) else node.this
        return exp.Paren(this=exp.Mul(this=exp.Interval(this=exp.Literal.string("1"), unit=node.args.get("unit")),
                                      expression=exp.Paren(this=inner)))
    return node


def single_argument_extrema(node: exp.Expression) -> exp.Expression:
    """LEAST(x) or GREATEST(x) of one argument (a template's optional bounds all absent) as x: Spark
    wants two or more."""
    if isinstance(node, exp.Least | exp.Greatest) and not node.expressions:
        return node.this
    return node
