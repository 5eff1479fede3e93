"""SQL text with bound parameters in the form each engine's Python connector accepts.

A compiled cohort binds the definition's dates as ``exp.Placeholder`` nodes named ``d1``, ``d2`` …
(never as SQL text). sqlglot prints a named placeholder as ``:name`` in most dialects, which no
SQL Server, Trino or Snowflake client accepts; ``render`` prints each dialect's own form (the table of
styles is ``mercia.cdm.dialects.PARAM_STYLES``) and says how to pass the values.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from dataclasses import dataclass
from typing import Any

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokens import TokenType

from mercia.cdm.dialects import PARAM_STYLES
from mercia.cdm.engines import ParamStyle


@dataclass(frozen=True)
class RenderedSql:
    """SQL text and the values to pass with it: a dict by name, or (qmark, numeric) a list."""

    sql: str
    dialect: str
    style: ParamStyle
    params: dict[str, Any] | list[Any]
    # qmark: the parameter name of each placeholder, in text order (what the list follows);
    # otherwise each name once (numeric: name i is ':i').
    order: tuple[str, ...]


def describe_value(value: Any) -> str:
    """A bound value for a comment line: a date as YYYY-MM-DD (DATE), text as a JSON string (TEXT), so a
    newline or quote in the user's text cannot end the comment."""
    if isinstance(value, dt.date):
        return f"{value.isoformat()} (DATE)"
    return f"{json.dumps(str(value))} (TEXT)"


def _placeholder_text(name: str, style: ParamStyle, numbers: dict[str, int]) -> str:
    if style == "numeric":
        return f":{numbers[name]}"
    if style == "dollar":
        return f"${name}"
    if style == "pyformat":
        return f"%({name})s"
    if style == "colon":
        return f":{name}"
    if style == "at":
        return f"@{name}"
    return "?"


def _positional(sql: str, dialect: str, names: set[str]) -> tuple[str, tuple[str, ...]]:
    """`:name` placeholders as `?`, and the names in the order they appear in the text.

    The generator does not print in tree order (a SELECT's WITH is printed after its body is built),
    so the order is read from the printed SQL with the dialect's own tokenizer: a `:` directly
    followed by one of the tree's parameter names, outside strings and comments.
    """
    tokens = Dialect.get_or_raise(dialect).tokenize(sql)
    spans: list[tuple[int, int, str]] = []
    for colon, name in itertools.pairwise(tokens):
        if (colon.token_type == TokenType.COLON and name.start == colon.end + 1 and name.text in names):
            spans.append((colon.start, name.end + 1, name.text))
    out, at = [], 0
    for start, end, _ in spans:
        out += [sql[at:start], "?"]
        at = end
    out.append(sql[at:])
    return "".join(out), tuple(n for _, _, n in spans)


def _named_order(tree: exp.Expression) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.name for p in tree.find_all(exp.Placeholder, bfs=False)))


def render(tree: exp.Expression, params: dict[str, Any], dialect: str, *, pretty: bool = False) -> RenderedSql:
    """`tree` as `dialect` SQL text, its placeholders in the dialect's form, with the values it uses."""
    if dialect not in PARAM_STYLES:
        raise ValueError(f"no parameter style for dialect {dialect!r} (known: {', '.join(PARAM_STYLES)})")
    style = PARAM_STYLES[dialect]
    if any(not p.args.get("this") for p in tree.find_all(exp.Placeholder)):
        raise ValueError("an unnamed placeholder cannot be rendered: compiled trees name every parameter")
    names = {p.name for p in tree.find_all(exp.Placeholder)}
    # Each placeholder becomes a variable holding the dialect's own form, printed as it is, in a copy
    # (the caller's tree is left alone). A Generator subclass would do it while printing, but sqlglot's
    # compiled build (sqlglotc) does not allow interpreted subclasses of its classes.
    # qmark: printed named first; _positional reads their order from the text, then blanks them.
    work = tree.copy()
    numbers = {n: i for i, n in enumerate(_named_order(work), start=1)}
    for p in list(work.find_all(exp.Placeholder)):
        p.replace(exp.Var(this=_placeholder_text(p.name, "colon" if style == "qmark" else style, numbers)))
    sql = work.sql(dialect=dialect, pretty=pretty, copy=False)
    sql, order = _positional(sql, dialect, names) if style == "qmark" else (sql, tuple(numbers))
    missing = sorted(set(order) - set(params))
    if missing:
        raise ValueError(f"placeholders without a value: {', '.join(missing)}")
    # numeric: `order` is each name once, in its number's order, so the list is indexed by number - 1.
    positional = style in ("qmark", "numeric")
    values: dict[str, Any] | list[Any] = [params[n] for n in order] if positional else {n: params[n] for n in order}
    return RenderedSql(sql=sql, dialect=dialect, style=style, params=values, order=order)
