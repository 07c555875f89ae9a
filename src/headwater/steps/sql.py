"""``sql`` steps: DuckDB SQL over earlier steps' outputs, by step id.

A SQL step is a view by default: DuckDB plans it together with its inputs and its
consumer, so filters reach the file scan and nothing is written twice. ``materialize:
true`` spills it to Parquet (worth it when several steps read an expensive result).
Binding happens here, so a wrong column fails this step, not the one reading it.
"""

from __future__ import annotations

import re

import duckdb

from headwater.config.models import SqlStep
from headwater.config.templates import render_sql
from headwater.engine.plan import sql_text
from headwater.exceptions import StepError
from headwater.steps.base import StepContext, StepOutput, register
from headwater.steps.spill import spill


@register("sql")
def run_sql(ctx: StepContext, step: SqlStep) -> StepOutput:
    try:
        rendered = render_sql(sql_text(step, ctx.project.root), ctx.template_vars)
    except ValueError as exc:
        raise StepError(str(exc)) from None
    query = query_body(rendered)
    skipped_lines = rendered[:len(rendered) - len(rendered.lstrip())].count("\n")
    con = ctx.cursor()
    try:
        relation = con.sql(query)
        if relation is None:
            raise StepError("the SQL must be a query (SELECT ...) that returns rows")
        relation.columns  # noqa: B018 - binds the query now, so errors name this step
    except StepError:
        raise
    except duckdb.Error as exc:
        raise StepError(_where(step, exc, skipped_lines) + _duckdb_message(exc)) from None
    if step.materialize:
        return spill(ctx, query)
    return StepOutput(relation=query)


_TOKEN = re.compile(r"""
      (?P<skip>\s+|--[^\n]*|/\*.*?(?:\*/|\Z)|;)
    | '(?:[^']|'')*(?:'|\Z) | "(?:[^"]|"")*(?:"|\Z)
    | \$(?P<tag>[A-Za-z_]\w*)?\$.*?(?:\$(?P=tag)?\$|\Z)
    | .
""", re.VERBOSE | re.DOTALL)


def query_body(sql: str) -> str:
    """The query without what trails it: whitespace, ``;`` and comments.

    Other steps wrap a step's SQL as ``(...)``; a trailing ``-- comment`` would swallow the
    closing parenthesis. Strings, quoted names and block comments are skipped whole, so a
    ``--`` inside them is not taken for a comment.
    """
    end = 0
    for match in _TOKEN.finditer(sql):
        if match.lastgroup != "skip":
            end = match.end()
    start = len(sql) - len(sql.lstrip())
    return sql[start:end] if end > start else sql.strip()


def _duckdb_message(exc: Exception) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if "disabled by configuration" in first:
        first += (" (a run's SQL may read only the project, the warehouse and the paths of "
                  "its files sources; allow more with HEADWATER_DUCKDB_ALLOWED)")
    return first


def _where(step: SqlStep, exc: Exception, skipped_lines: int) -> str:
    """``sql/clean.sql:3: `` for an error in a ``.sql`` file (DuckDB counts lines of the
    query it got, which starts after the file's leading blank lines)."""
    value = step.sql.strip()
    if not (value.endswith(".sql") and "\n" not in value and " " not in value):
        return ""
    match = _LINE.search(str(exc))
    return f"{value}:{int(match.group(1)) + skipped_lines}: " if match else f"{value}: "


_LINE = re.compile(r"\bLINE (\d+):")
