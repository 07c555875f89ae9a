"""Render ``{{ params.x }}``, ``{{ run.id }}``, ``{{ trigger.files }}``, ``{{ window.start }}``.

Templates run in Jinja's sandbox with undefined names as errors, so a typo in a template
fails the step with the name instead of silently rendering an empty string.

Values reach SQL and shell text only as *data*, never as code: :func:`render_sql` turns
each ``{{ value }}`` into a typed DuckDB literal (``5``, ``'it''s'``, ``DATE '2026-12-02'``,
``NULL``) and :func:`render_shell` shell-quotes it, because params come from webhook bodies,
CLI flags and message payloads. Where a template needs a name rather than a value it says
so explicitly: ``{{ params.table | sql_identifier }}``; ``| sql_literal`` spells out the
default. A ``{{ }}`` already inside a SQL string (``'{{ window.start }}'``) is escaped as
string content, so existing templates keep working and stay safe.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable, Mapping
from datetime import date, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from headwater.sqltext import ident
from headwater.sqltext import text as quoted_text

if TYPE_CHECKING:  # Jinja loads on the first real template: most runs render none.
    from jinja2.sandbox import SandboxedEnvironment


class SqlFragment(str):
    """SQL text a filter already made safe; rendered as is."""

    __slots__ = ()


def sql_literal(value: Any) -> SqlFragment:
    """``value`` as a DuckDB literal of its type; raises ValueError for NaN/infinity."""
    return SqlFragment(value if isinstance(value, SqlFragment) else _literal(value))


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} cannot be written as a SQL literal")
        return f"CAST({value!r} AS DOUBLE)"  # a bare 0.1 would be a DECIMAL
    if isinstance(value, datetime):
        kind = "TIMESTAMPTZ" if value.tzinfo is not None else "TIMESTAMP"
        return f"{kind} {quoted_text(value.isoformat())}"
    if isinstance(value, date):
        return f"DATE {quoted_text(value.isoformat())}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{quoted_text(str(k))}: {_literal(v)}"
                               for k, v in value.items()) + "}"
    return quoted_text(str(value))


def sql_identifier(value: Any) -> SqlFragment:
    """``value`` as one quoted identifier (a column or table named by a param)."""
    return SqlFragment(ident(str(value)))


def _plain(value: Any) -> str:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _in_string(value: Any) -> SqlFragment:
    """Content of a ``'...'`` literal the template author opened: quotes doubled."""
    return SqlFragment(_plain(value).replace("'", "''"))


def _in_identifier(value: Any) -> SqlFragment:
    return SqlFragment(_plain(value).replace('"', '""'))


def _in_comment(value: Any) -> SqlFragment:
    """No line break (it would end a ``--`` comment) and no ``*/``."""
    return SqlFragment(re.sub(r"[\r\n]+", " ", _literal(value)).replace("*/", "* /"))


def _finalize_sql(value: Any) -> str:
    return value if isinstance(value, SqlFragment) else _literal(value)


def _finalize_shell(value: Any) -> str:
    return value if isinstance(value, SqlFragment) else shlex.quote(_plain(value))


def _filters(env: SandboxedEnvironment) -> SandboxedEnvironment:
    env.filters.update(sql_literal=sql_literal, sql_identifier=sql_identifier,
                       _hw_in_string=_in_string, _hw_in_identifier=_in_identifier,
                       _hw_in_comment=_in_comment, shell_quote=lambda v: SqlFragment(
                           shlex.quote(_plain(v))))
    return env


@lru_cache(maxsize=4)
def _environment(mode: str = "text") -> SandboxedEnvironment:
    from jinja2 import ChainableUndefined, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    finalize: Callable[[Any], Any] | None = {
        "sql": _finalize_sql, "shell": _finalize_shell, "plan": _finalize_sql}.get(mode)
    undefined = ChainableUndefined if mode == "plan" else StrictUndefined
    env = SandboxedEnvironment(undefined=undefined, autoescape=False,
                               keep_trailing_newline=True, finalize=finalize)
    return _filters(env)


def render(template: str, variables: Mapping[str, Any]) -> str:
    """Render ``template``; raises ValueError naming the problem for a bad template."""
    return _render(template, variables, "text")


def render_sql(template: str, variables: Mapping[str, Any]) -> str:
    """Render SQL: every ``{{ value }}`` becomes a literal (or escaped string content)."""
    if not is_template(template):
        return template
    return _render(sql_context_filters(template), variables, "sql")


def render_sql_for_planning(template: str, variables: Mapping[str, Any]) -> str:
    """SQL as :func:`render_sql` would give, with unknown names (a run's id, its trigger)
    as ``''``: enough for the parser to find the tables a step reads."""
    if not is_template(template):
        return template
    return _render(sql_context_filters(template), variables, "plan")


def render_shell(template: str, variables: Mapping[str, Any]) -> str:
    """Render a ``/bin/sh`` command line: every ``{{ value }}`` becomes one quoted word."""
    return _render(template, variables, "shell")


def _render(template: str, variables: Mapping[str, Any], mode: str) -> str:
    if not is_template(template):
        return template
    from jinja2 import TemplateError

    try:
        return _environment(mode).from_string(template).render(**variables)
    except TemplateError as exc:
        raise ValueError(f"template error: {exc.message or exc}") from None


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


_TAG = re.compile(r"\{\{-?|\{%-?|\{#")
_CLOSE = {"{{": "}}", "{%": "%}", "{#": "#}"}
_CONTEXT_FILTER = {"'": "_hw_in_string", '"': "_hw_in_identifier", "--": "_hw_in_comment",
                   "/*": "_hw_in_comment"}


def sql_context_filters(template: str) -> str:
    """Add a filter to each ``{{ }}`` that sits inside a SQL string, identifier or comment.

    Scans the SQL around the Jinja tags with a small state machine (code, ``'...'``,
    ``"..."``, ``-- ...``, ``/* ... */``); an expression in code is left to the literal
    finalizer.
    """
    out: list[str] = []
    state = ""  # "" code, "'", '"', "--", "/*"
    i = 0
    while i < len(template):
        tag = _TAG.match(template, i)
        if tag is not None:
            close = template.find(_CLOSE[tag.group()[:2]], tag.end())
            end = len(template) if close < 0 else close + 2
            chunk = template[i:end]
            if tag.group().startswith("{{") and state and close >= 0:
                chunk = _with_filter(chunk, _CONTEXT_FILTER[state])
            out.append(chunk)
            i = end
            continue
        state, step = _advance(template, i, state)
        out.append(template[i:i + step])
        i += step
    return "".join(out)


def _with_filter(chunk: str, name: str) -> str:
    """``{{- expr -}}`` → ``{{- (expr) | name -}}``."""
    match = re.fullmatch(r"(\{\{-?)(.*?)(-?\}\})", chunk, flags=re.S)
    if match is None:
        return chunk
    return f"{match.group(1)} ({match.group(2)}) | {name} {match.group(3)}"


def _advance(sql: str, i: int, state: str) -> tuple[str, int]:
    """The SQL lexer state after the text at ``i`` and how many characters it took."""
    two = sql[i:i + 2]
    char = sql[i]
    if state == "":
        if two in ("--", "/*"):
            return two, 2
        if char in "'\"":
            return char, 1
        return "", 1
    if state in "'\"":
        if two == state * 2:
            return state, 2  # an escaped quote stays inside
        return ("" if char == state else state), 1
    if state == "--":
        return ("" if char == "\n" else state), 1
    return ("", 2) if two == "*/" else (state, 1)
