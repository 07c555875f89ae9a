"""Turn a pipeline's steps into a DAG: who depends on whom, in which order, what is unknown.

A step depends on the steps it names: ``input``/``inputs``, ``needs``, and every table its
SQL reads (found by DuckDB's own parser via ``json_serialize_sql``, so CTE names and table
functions are not mistaken for steps). Planning is pure: it reads the SQL files a step
references but never runs anything, so ``headwater check`` can call it.
"""

from __future__ import annotations

import difflib
import functools
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headwater.config.loader import PipelineFile
from headwater.config.models import (
    PublishStep,
    PythonStep,
    SqlStep,
    StepBase,
    ValidateStep,
    step_kind,
)
from headwater.exceptions import ConfigError


@dataclass(frozen=True)
class Plan:
    """The DAG of one pipeline."""

    steps: dict[str, StepBase]
    deps: dict[str, tuple[str, ...]]
    order: tuple[str, ...]
    """A topological order (stable: file order among independent steps)."""
    reads: dict[str, tuple[str, ...]] | None = None
    """step id → the steps whose output it may read by name: for a SQL step the tables its
    SQL names, for any other kind every step upstream of it (Python code can query any of
    them). A SQL step's ``needs`` orders it without reading. None: assume ``deps``."""

    def read_by_others(self) -> frozenset[str]:
        """The steps whose output another step may read by name: only these need a view."""
        reads = self.deps if self.reads is None else self.reads
        return frozenset(d for names in reads.values() for d in names)

    def consumers(self, step_id: str) -> list[str]:
        return [s for s, deps in self.deps.items() if step_id in deps]

    def downstream(self, step_id: str) -> set[str]:
        """``step_id`` and every step that depends on it, transitively."""
        out = {step_id}
        for sid in self.order:
            if any(d in out for d in self.deps[sid]):
                out.add(sid)
        return out

    def upstream(self, step_id: str) -> set[str]:
        out: set[str] = set()
        stack = list(self.deps[step_id])
        while stack:
            sid = stack.pop()
            if sid not in out:
                out.add(sid)
                stack.extend(self.deps[sid])
        return out

    def kind(self, step_id: str) -> str:
        return step_kind(self.steps[step_id])


def sql_text(step: SqlStep, root: Path) -> str:
    """The step's SQL: inline, or the contents of the ``.sql`` file it names."""
    value = step.sql.strip()
    if value.endswith(".sql") and "\n" not in value and " " not in value:
        path = root / value
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"SQL file {value} cannot be read: {exc.strerror}",
                              problems=[]) from None
    return step.sql


def _render_for_planning(sql: str, params: Mapping[str, Any]) -> str:
    if "{{" not in sql and "{%" not in sql:
        return sql
    from headwater.config.templates import render_sql_for_planning

    try:  # values as SQL literals, as at run time, so `SELECT {{ x }} AS y` parses
        return render_sql_for_planning(sql, {"params": params, "run": {}, "trigger": {},
                                             "window": {}})
    except Exception:  # noqa: BLE001 - a template that fails here fails at run time
        return sql


_PARSER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _parser() -> Any:
    """One in-memory DuckDB kept for parsing: opening one costs tens of milliseconds."""
    import duckdb

    return duckdb.connect()


class SqlSyntaxError(ValueError):
    """SQL that does not parse; ``line`` (1-based, of the text given) when DuckDB knows."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


def _error_line(sql: str) -> int | None:
    """The line DuckDB's parser blames (its ``LINE n:``); the JSON form has no line."""
    import re

    try:
        with _PARSER_LOCK:
            _parser().extract_statements(sql)
    except Exception as exc:  # noqa: BLE001 - any parser error carries the line or not
        match = re.search(r"\bLINE (\d+):", str(exc))
        return int(match.group(1)) if match else None
    return None


def tables_in_sql(sql: str) -> set[str]:
    """Names of base tables a query reads, without CTE names; raises ValueError if unparsable."""
    return set(_tables_in_sql(sql))


@functools.lru_cache(maxsize=4096)
def _tables_in_sql(sql: str) -> frozenset[str]:
    with _PARSER_LOCK:
        raw = _parser().execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0]
    tree = json.loads(raw)
    if tree.get("error"):
        raise SqlSyntaxError(tree.get("error_message", "syntax error"), _error_line(sql))
    tables: set[str] = set()
    ctes: set[str] = set()
    _walk(tree, tables, ctes)
    return frozenset(tables - ctes)


def _walk(node: Any, tables: set[str], ctes: set[str]) -> None:
    if isinstance(node, dict):
        if node.get("type") == "BASE_TABLE" and not node.get("schema_name"):
            tables.add(str(node.get("table_name")))
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            for entry in cte_map.get("map", []):
                ctes.add(str(entry.get("key")))
        for value in node.values():
            _walk(value, tables, ctes)
    elif isinstance(node, list):
        for value in node:
            _walk(value, tables, ctes)


def _named_inputs(step: StepBase) -> list[str]:
    if isinstance(step, PublishStep):
        return [step.publish.input]
    if isinstance(step, ValidateStep):
        return [step.validate_.input]
    if isinstance(step, PythonStep):
        return ([step.input] if step.input else []) + list(step.inputs)
    return []


class _Problems:
    def __init__(self, pf: PipelineFile) -> None:
        self.pf = pf
        self.items: list[dict[str, Any]] = []

    def add(self, index: int, key: str, message: str) -> None:
        parts: list[str | int] = ["steps", index, *key.split(".")]
        line = self.pf.line_of(*parts)
        dotted = f"steps[{index}].{key}"
        self.items.append({"file": self.pf.display, "line": line, "key": dotted,
                           "message": message})

    def raise_if_any(self) -> None:
        if self.items:
            lines = [f"{p['file']}:{p['line']}: {p['key']}: {p['message']}" for p in self.items]
            raise ConfigError("\n".join(lines), problems=self.items)


def _hint(name: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean '{match[0]}'?" if match else ""


def plan(pf: PipelineFile, root: Path) -> Plan:
    """Build the DAG; every unknown reference and any cycle is a ConfigError with its line."""
    config = pf.config
    problems = _Problems(pf)
    steps: dict[str, StepBase] = {}
    index_of: dict[str, int] = {}
    for index, declared in enumerate(config.steps):
        if declared.id in steps:
            problems.add(index, "id", f"step id {declared.id!r} is used twice")
            continue
        steps[declared.id] = declared
        index_of[declared.id] = index
    deps: dict[str, tuple[str, ...]] = {}
    reads: dict[str, tuple[str, ...]] = {}
    for sid, current in steps.items():
        step = current
        index = index_of[sid]
        found: list[str] = []
        for name in _named_inputs(step):
            key = {"publish": "publish.input", "validate": "validate.input"}.get(
                step_kind(step), "input")
            if name not in steps:
                problems.add(index, key, f"unknown step {name!r}{_hint(name, steps)}")
            elif name == sid:
                problems.add(index, key, "a step cannot read its own output")
            else:
                found.append(name)
        for name in step.needs:
            if name not in steps:
                problems.add(index, "needs", f"unknown step {name!r}{_hint(name, steps)}")
            elif name != sid:
                found.append(name)
        if isinstance(step, SqlStep):
            named = _sql_deps(step, sid, index, steps, config.params, root, problems)
            found.extend(named)
            reads[sid] = tuple(dict.fromkeys(named))
        deps[sid] = tuple(dict.fromkeys(found))
    problems.raise_if_any()
    order = _toposort(deps, list(steps), problems, index_of)
    problems.raise_if_any()
    dag = Plan(steps=steps, deps=deps, order=tuple(order))
    for sid in steps:  # other kinds' code may query any earlier step through its cursor
        if sid not in reads:
            reads[sid] = tuple(sorted(dag.upstream(sid)))
    return Plan(steps=steps, deps=deps, order=tuple(order), reads=reads)


def _sql_deps(step: SqlStep, sid: str, index: int, steps: Mapping[str, StepBase],
              params: Mapping[str, Any], root: Path, problems: _Problems) -> list[str]:
    try:
        text = sql_text(step, root)
    except ConfigError as exc:
        problems.add(index, "sql", exc.message)
        return []
    try:
        tables = tables_in_sql(_render_for_planning(text, params))
    except ValueError as exc:
        line = getattr(exc, "line", None)
        where = f"{step.sql.strip()}:{line}: " if text is not step.sql and line else ""
        problems.add(index, "sql", f"{where}SQL does not parse: {exc}")
        return []
    out = []
    for table in sorted(tables):
        if table == sid:
            problems.add(index, "sql", "a step cannot read its own output")
        elif table in steps:
            out.append(table)
        else:
            problems.add(index, "sql", f"reads table {table!r}, which is not a step of this "
                                       f"pipeline{_hint(table, steps)}")
    return out


def _toposort(deps: Mapping[str, tuple[str, ...]], ids: list[str], problems: _Problems,
              index_of: Mapping[str, int]) -> list[str]:
    remaining = {sid: set(d) for sid, d in deps.items()}
    order: list[str] = []
    while remaining:
        ready = [sid for sid in ids if sid in remaining and not remaining[sid]]
        if not ready:
            cycle = " → ".join(_find_cycle(remaining))
            first = min(remaining, key=lambda s: index_of[s])
            problems.add(index_of[first], "id", f"steps form a cycle: {cycle}")
            return order
        for sid in ready:
            order.append(sid)
            del remaining[sid]
        for pending in remaining.values():
            pending.difference_update(ready)
    return order


def _find_cycle(graph: Mapping[str, set[str]]) -> list[str]:
    start = next(iter(graph))
    path = [start]
    seen = {start}
    node = start
    while True:
        node = next(iter(graph[node]))
        if node in seen:
            return [*path[path.index(node):], node]
        seen.add(node)
        path.append(node)
