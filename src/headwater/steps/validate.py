"""The ``validate`` step: declared column and row checks, evaluated in one DuckDB pass.

Every check becomes a SQL predicate that is TRUE when a row breaks it, plus a SQL string
that says how, so one scan of the input yields, per row, the list of every problem it has.
That pass streams, in input order, into one Parquet file holding all rows (columns cast to
their declared types, the problem list and, for rejected rows only, the original row as
JSON); the good rows are a filtered relation over that spill and the rejected rows are copied
out of it. A row's number is its position in the spill (Parquet's ``file_row_number``), so
the pass needs no window, sort or join and runs on every thread in bounded memory.

Semantics worth knowing (SPEC §3):

* ``type`` casts with DuckDB's ``TRY_CAST``; a value that does not cast is rejected. Casting
  to an integer type must also be exact: ``'3.5'`` or ``3.5`` is rejected for ``int64``
  (DuckDB alone would round it to 4).
* Every other check sees the cast value; a NULL passes every check but ``nullable: false``,
  and a rule that evaluates to NULL passes (SQL's three-valued logic, as in a CHECK
  constraint).
* ``unique: true`` keeps one row per key and rejects the others: the first row, in input
  order, that passes every other check (or the first row, if none does). NULL keys are never
  duplicates. It runs after the pass, over the spill's narrow columns: a GROUP BY finds the
  repeated keys and a window over only their rows picks the losers, which go to a small
  ``<step>.duplicates.parquet`` the good and rejected relations consult by row number.
* ``max_error_ratio`` left unset means *no limit* for ``drop`` and ``quarantine``: a user
  asking to quarantine rows expects them quarantined, not the run failed on the first one.

This module must never import the engine, the server or the CLI.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from headwater.config.models import ColumnCheck, ValidateConfig, ValidateStep
from headwater.exceptions import ConfigError, StepError, ValidationError
from headwater.sqltext import ident as _ident
from headwater.sqltext import subquery as _subquery
from headwater.sqltext import text as _text
from headwater.steps.base import StepContext, StepOutput, register

# --------------------------------------------------------------------------- types

_TYPE_ALIASES: dict[str, str] = {
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "int128": "HUGEINT",
    "int": "BIGINT",
    "integer": "BIGINT",
    "long": "BIGINT",
    "uint8": "UTINYINT",
    "uint16": "USMALLINT",
    "uint32": "UINTEGER",
    "uint64": "UBIGINT",
    "uint128": "UHUGEINT",
    "float32": "FLOAT",
    "float": "DOUBLE",
    "real": "FLOAT",
    "float64": "DOUBLE",
    "double": "DOUBLE",
    "string": "VARCHAR",
    "str": "VARCHAR",
    "utf8": "VARCHAR",
    "text": "VARCHAR",
    "varchar": "VARCHAR",
    "bool": "BOOLEAN",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "time": "TIME",
    "datetime": "TIMESTAMP",
    "timestamp": "TIMESTAMP",
    "timestamp_tz": "TIMESTAMPTZ",
    "timestamptz": "TIMESTAMPTZ",
    "json": "JSON",
    "uuid": "UUID",
    "binary": "BLOB",
    "bytes": "BLOB",
    "blob": "BLOB",
    "interval": "INTERVAL",
    "duration": "INTERVAL",
}
_INTEGER_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT"}
    | {"UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
)
_NUMERIC_TYPES = _INTEGER_TYPES | {"FLOAT", "DOUBLE"}
_NATIVE_TYPES = _NUMERIC_TYPES | {
    "VARCHAR",
    "BOOLEAN",
    "DATE",
    "TIME",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "JSON",
    "UUID",
    "BLOB",
    "INTERVAL",
}
_TEXT_TYPES = frozenset({"VARCHAR", "JSON"})
_DECIMAL = re.compile(r"^\s*(?:decimal|numeric)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*$", re.IGNORECASE)
"""A bare (possibly qualified) table or view name, as opposed to a query."""
_SHOWN = 80
"""Longest value quoted in an error message; the full row is in ``_row``."""


def duckdb_type(name: str) -> str:
    """The DuckDB type for a ``type:`` name of a validate column (``float64`` → ``DOUBLE``).

    Public so ``headwater check`` can reject an unknown name before anything runs.
    """
    key = name.strip().lower()
    if key in _TYPE_ALIASES:
        return _TYPE_ALIASES[key]
    if key.upper() in _NATIVE_TYPES:
        return key.upper()
    match = _DECIMAL.match(key)
    if match and 0 < int(match.group(1)) <= 38 and int(match.group(2)) <= int(match.group(1)):
        return f"DECIMAL({match.group(1)},{match.group(2)})"
    hint = difflib.get_close_matches(key, [*_TYPE_ALIASES, "decimal(p,s)"], n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ConfigError(f"unknown column type {name!r}{suggestion}", type=name)


def _is_numeric(duck_type: str) -> bool:
    return duck_type in _NUMERIC_TYPES or duck_type.startswith("DECIMAL")


# --------------------------------------------------------------------------- SQL text


def _literal(value: Any) -> str:
    """A SQL literal for a YAML scalar; anything but bool and numbers goes in as text."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"CAST({_text(repr(value))} AS DOUBLE)"
    return _text(str(value))


def _display(value: Any) -> str:
    """A config value as users wrote it: ``2`` not ``2.0``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _show(expr: str, duck_type: str) -> str:
    """SQL rendering a value for a message: text quoted, everything else bare."""
    shown = f"left(CAST({expr} AS VARCHAR), {_SHOWN})"
    return f"('''' || {shown} || '''')" if duck_type in _TEXT_TYPES else shown


def _message(*parts: str) -> str:
    return " || ".join(parts)


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class _Check:
    """One check: ``fails`` is TRUE when a row breaks it, ``message`` says how (SQL)."""

    name: str
    fails: str
    message: str
    constants: tuple[str, ...] = ()
    """SQL constants the check relies on (a bound cast to the column type, a regex): they
    fail only when the query runs, so they are tried on their own first."""


@dataclass(frozen=True)
class _Column:
    """A declared column as found in the input."""

    name: str
    input_type: str
    spec: ColumnCheck
    cast_to: str | None
    raw: str
    """SQL for the value as it arrived (before any cast)."""

    @property
    def value(self) -> str:
        """SQL for the value the checks see: the cast value where a type is declared."""
        return _ident(self.name)

    @property
    def type(self) -> str:
        return self.cast_to or self.input_type


@dataclass
class _Plan:
    """Everything the checking query needs, resolved against the input's columns."""

    input_columns: list[tuple[str, str]]
    columns: list[_Column]
    row_checks: list[_Check] = field(default_factory=list)
    unique: list[tuple[int, _Column]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    """Check names by index: row checks first, then uniqueness."""
    untyped: list[tuple[str, str]] = field(default_factory=list)
    """Undeclared text columns NULL in every row (name, input type): the checks see an
    untyped NULL, as one file's empty column says nothing about the column's type."""

    @property
    def numbered(self) -> bool:
        """The input has its own ``file_row_number``, so the spill must number rows itself
        (``row_number() OVER ()``, one thread) instead of using Parquet's."""
        return any(name.lower() == "file_row_number" for name, _ in self.input_columns)

    @property
    def kept_raws(self) -> list[str]:
        """Raw values the spill keeps for every row: a duplicate found after the pass still
        needs its original row, and casting back would not give the text that arrived."""
        return [c.raw for c in self.columns if c.cast_to] if self.unique else []


def _type_check(col: _Column, label: str) -> _Check:
    assert col.cast_to is not None
    fails = f"{col.value} IS NULL"
    if col.cast_to in _INTEGER_TYPES and col.input_type not in _INTEGER_TYPES:
        fails += f" OR TRY_CAST({col.raw} AS DOUBLE) <> {col.value}"
    return _Check(
        f"{col.name}: type {label}",
        f"{col.raw} IS NOT NULL AND ({fails})",
        _message(
            _text(f"{col.name}: cannot cast "),
            _show(col.raw, col.input_type),
            _text(f" to {label}"),
        ),
    )


def _bound(col: _Column, key: str, value: float | str) -> str:
    if isinstance(value, str):
        return f"CAST({_text(value)} AS {col.type})"
    if not _is_numeric(col.type):
        raise ValueError(
            f"column {col.name!r}: '{key}: {_display(value)}' needs a numeric column but it is "
            f"{col.type}; declare its type (type: float64) or quote the bound"
        )
    return _literal(value)


def _range_checks(col: _Column) -> list[_Check]:
    checks = []
    for key, op, value in (("min", "<", col.spec.min), ("max", ">", col.spec.max)):
        if value is None:
            continue
        bound = _bound(col, key, value)
        checks.append(
            _Check(
                f"{col.name}: {key} {_display(value)}",
                f"{col.value} {op} {bound}",
                _message(
                    _text(f"{col.name}: "),
                    _show(col.value, col.type),
                    _text(f" {op} {key} {_display(value)}"),
                ),
                (bound,),
            )
        )
    return checks


def _in_check(col: _Column, allowed: list[Any]) -> _Check:
    # A NULL in the list would make ``x NOT IN (...)`` NULL for every other value, so every
    # row would pass; nullability is nullable's business, so NULLs are left out.
    values = [v for v in allowed if v is not None]
    listed = ", ".join(_display(v) for v in values[:20]) + (", ..." if len(values) > 20 else "")
    items = tuple(f"CAST({_literal(v)} AS {col.type})" for v in values)
    fails = f"{col.value} NOT IN ({', '.join(items)})" if values else f"{col.value} IS NOT NULL"
    return _Check(
        f"{col.name}: in [{listed}]",
        fails,
        _message(_text(f"{col.name}: "), _show(col.value, col.type), _text(f" not in [{listed}]")),
        items,
    )


def _text_checks(col: _Column) -> list[_Check]:
    checks = []
    as_text = f"CAST({col.value} AS VARCHAR)"
    if col.spec.regex is not None:
        pattern = col.spec.regex
        checks.append(
            _Check(
                f"{col.name}: regex {pattern}",
                f"NOT regexp_matches({as_text}, {_text(pattern)})",
                _message(
                    _text(f"{col.name}: "),
                    _show(as_text, "VARCHAR"),
                    _text(f" does not match regex {pattern!r}"),
                ),
                (f"regexp_matches('', {_text(pattern)})",),
            )
        )
    if col.spec.max_length is not None:
        limit = col.spec.max_length
        checks.append(
            _Check(
                f"{col.name}: max_length {limit}",
                f"length({as_text}) > {limit}",
                _message(
                    _text(f"{col.name}: length "),
                    f"CAST(length({as_text}) AS VARCHAR)",
                    _text(f" > max_length {limit}"),
                ),
            )
        )
    return checks


def _column_checks(col: _Column) -> list[_Check]:
    checks = []
    if col.cast_to is not None and col.spec.type is not None:
        checks.append(_type_check(col, col.spec.type))
    if not col.spec.nullable:
        checks.append(
            _Check(
                f"{col.name}: not null",
                f"{col.raw} IS NULL",
                _text(f"{col.name}: is null (nullable: false)"),
            )
        )
    checks.extend(_range_checks(col))
    if col.spec.in_ is not None:
        checks.append(_in_check(col, col.spec.in_))
    checks.extend(_text_checks(col))
    return checks


def _label(check: _Check) -> str:
    """How an error names a check: ``rule 'a > b'`` or ``check 'amount: min 0'``."""
    if check.name.startswith("rule: "):
        return f"rule {check.name.removeprefix('rule: ')!r}"
    return f"check {check.name!r}"


def _rule_check(rule: str) -> _Check:
    # The newline ends a trailing ``-- comment`` in the rule before the closing parenthesis.
    return _Check(f"rule: {rule}", f"NOT ({rule}\n)", _text(f"rule failed: {rule}"))


# --------------------------------------------------------------------------- planning


def _input_columns(
    con: duckdb.DuckDBPyConnection, relation: str, step_id: str
) -> list[tuple[str, str]]:
    try:
        described = con.sql(f"SELECT * FROM {_subquery(relation)} AS __hw_in")
    except duckdb.Error as exc:
        raise StepError(
            f"validate step {step_id!r} cannot read its input: {_first_line(exc)}", step=step_id
        ) from exc
    return [(str(n), str(t)) for n, t in zip(described.columns, described.types, strict=True)]


def _missing(name: str, available: list[str], step_id: str) -> ValidationError:
    hint = difflib.get_close_matches(name, available, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return ValidationError(
        f"validate step {step_id!r}: column {name!r} is not in the input "
        f"(columns: {', '.join(available) or 'none'}){suggestion}",
        step=step_id,
        column=name,
    )


def _resolve(name: str, spec: ColumnCheck, input_type: str, index: int) -> _Column:
    cast_to = duckdb_type(spec.type) if spec.type is not None else None
    if cast_to == input_type:
        cast_to = None
    raw = f"__hw_raw_{index}" if cast_to else name
    return _Column(name, input_type, spec, cast_to, _ident(raw))


def _plan(input_columns: list[tuple[str, str]], config: ValidateConfig, step_id: str) -> _Plan:
    types = dict(input_columns)
    plan = _Plan(input_columns, [])
    for index, (name, spec) in enumerate(config.columns.items()):
        if name not in types:
            raise _missing(name, list(types), step_id)
        try:
            plan.columns.append(_resolve(name, spec, types[name], index))
        except ConfigError as exc:
            raise ConfigError(
                f"validate step {step_id!r}, column {name!r}: {exc}", step=step_id, column=name
            ) from None
    for col in plan.columns:
        try:
            plan.row_checks.extend(_column_checks(col))
        except ValueError as exc:
            raise ValidationError(
                f"validate step {step_id!r}: {exc}", step=step_id, column=col.name
            ) from None
    plan.row_checks.extend(_rule_check(rule) for rule in config.rules)
    plan.names = [check.name for check in plan.row_checks]
    for col in plan.columns:
        if col.spec.unique:
            plan.unique.append((len(plan.names), col))
            plan.names.append(f"{col.name}: unique")
    return plan


# --------------------------------------------------------------------------- the pass


def _typed_cte(plan: _Plan, relation: str) -> str:
    """Cast declared columns and keep the raw values of the cast ones."""
    casts = [c for c in plan.columns if c.cast_to]
    replace = ", ".join([*(f"TRY_CAST({c.value} AS {c.cast_to}) AS {c.value}" for c in casts),
                         *(f"NULL AS {_ident(name)}" for name, _ in plan.untyped)])
    raws = "".join(f", {c.value} AS {c.raw}" for c in casts)
    star = f"* REPLACE ({replace})" if replace else "*"
    numbering = ", row_number() OVER () AS __hw_n" if plan.numbered else ""
    return (
        f"__hw_src AS (SELECT *{numbering} FROM {_subquery(relation)} AS __hw_in),\n"
        f"__hw_typed AS (SELECT {star}{raws} FROM __hw_src)"
    )


_NO_PROBLEMS = "CAST(NULL AS STRUCT(c INTEGER, m VARCHAR)[])"


def _problem(index: int, message: str) -> str:
    return f"{{'c': {index}, 'm': {message}}}"


def _problems(checks: list[_Check]) -> str:
    """The row's problem list, or NULL for a good row (most rows skip the list entirely)."""
    if not checks:
        return _NO_PROBLEMS
    any_fails = " OR ".join(f"({c.fails})" for c in checks)
    items = ", ".join(
        f"CASE WHEN {c.fails} THEN {_problem(i, c.message)} END" for i, c in enumerate(checks)
    )
    return (
        f"CASE WHEN {any_fails} THEN list_filter([{items}], lambda p: p IS NOT NULL) "
        f"ELSE {_NO_PROBLEMS} END"
    )


def _original_row(plan: _Plan) -> str:
    raw = {c.name: c.raw for c in plan.columns}
    fields = ", ".join(
        f"{_text(name)}: {raw.get(name, _ident(name))}" for name, _ in plan.input_columns
    )
    return f"CAST(to_json({{{fields}}}) AS VARCHAR)" if fields else "'{}'"


def _checked_query(plan: _Plan, relation: str) -> str:
    """All rows in input order, cast, with ``__hw_problems`` (sorted by check), ``__hw_row``
    and what the uniqueness pass needs later; no window, sort or join, so it streams."""
    extra = [*plan.kept_raws, *(["__hw_n"] if plan.numbered else [])]
    untyped = dict(plan.untyped)
    user = [f"CAST({_ident(name)} AS {untyped[name]}) AS {_ident(name)}" if name in untyped
            else _ident(name) for name, _ in plan.input_columns]
    return (
        f"WITH {_typed_cte(plan, relation)},\n"
        f"__hw_checked AS (SELECT *, {_problems(plan.row_checks)} AS __hw_problems "
        f"FROM __hw_typed)\n"
        f"SELECT {''.join(f'{c}, ' for c in [*user, *extra])}"
        f"list_sort(__hw_problems) AS __hw_problems, "
        f"__hw_problems IS NOT NULL AS __hw_rejected, "
        f"CASE WHEN __hw_problems IS NOT NULL THEN {_original_row(plan)} END AS __hw_row "
        f"FROM __hw_checked"
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _diagnose(
    con: duckdb.DuckDBPyConnection, plan: _Plan, relation: str, step_id: str, exc: duckdb.Error
) -> Exception:
    """Name the check or rule that does not bind, so the user knows which line to fix."""
    prefix = f"WITH {_typed_cte(plan, relation)} "
    for check in plan.row_checks:
        try:
            con.sql(f"{prefix}SELECT ({check.fails}), ({check.message}) FROM __hw_typed")
        except duckdb.Error as cause:
            detail = " ".join(str(cause).strip().splitlines()[:2])
            return ValidationError(
                f"validate step {step_id!r}: {_label(check)} cannot be evaluated: {detail}",
                step=step_id,
                check=check.name,
            )
    return StepError(f"validate step {step_id!r} failed: {_first_line(exc)}", step=step_id)


def _empty_text_columns(
    con: duckdb.DuckDBPyConnection, plan: _Plan, relation: str
) -> list[tuple[str, str]]:
    """Undeclared text columns with no value in any row (a CSV column empty throughout a
    new file reads as VARCHAR). Looked for only when the checks do not bind, so the extra
    pass over the input is paid only then."""
    declared = {c.name for c in plan.columns}
    text = [(n, t) for n, t in plan.input_columns if t == "VARCHAR" and n not in declared]
    if not text:
        return []
    counts = ", ".join(f"count({_ident(name)})" for name, _ in text)
    found = con.execute(f"SELECT {counts} FROM {_subquery(relation)} AS __hw_in").fetchall()
    return [column for column, count in zip(text, found[0], strict=True) if count == 0]


def _check_constants(con: duckdb.DuckDBPyConnection, plan: _Plan, step_id: str) -> None:
    """Fail early, naming the check, on a bound or list value that does not cast or a bad
    regex; inside the big query they would only surface as an anonymous runtime error."""
    for check in plan.row_checks:
        if not check.constants:
            continue
        try:
            con.execute(f"SELECT {', '.join(check.constants)}").fetchall()
        except duckdb.Error as exc:
            raise ValidationError(
                f"validate step {step_id!r}: {_label(check)} is invalid: {_first_line(exc)}",
                step=step_id,
                check=check.name,
            ) from exc


def _sql_path(path: Path) -> str:
    return _text(str(path))


def _write_checked(
    con: duckdb.DuckDBPyConnection, plan: _Plan, relation: str, spill: Path, step_id: str
) -> None:
    _check_constants(con, plan, step_id)
    query = _checked_query(plan, relation)
    try:
        con.sql(query)  # binds without running: a bad rule fails here, cheaply
    except duckdb.Error as exc:
        plan.untyped = _empty_text_columns(con, plan, relation)
        if not plan.untyped:
            raise _diagnose(con, plan, relation, step_id, exc) from exc
        query = _checked_query(plan, relation)
        try:
            con.sql(query)
        except duckdb.Error as again:
            raise _diagnose(con, plan, relation, step_id, again) from again
    try:
        con.execute(f"COPY ({query}) TO {_sql_path(spill)} (FORMAT parquet)")
    except duckdb.Error as exc:
        raise StepError(
            f"validate step {step_id!r} failed while checking rows: {_first_line(exc)}",
            step=step_id,
        ) from exc


# --------------------------------------------------------------------------- the spill


@dataclass(frozen=True)
class _Spill:
    """The checked rows on disk, and how to read them with their input row numbers."""

    path: Path
    numbered: bool
    raws: tuple[str, ...]

    @property
    def scan(self) -> str:
        # COPY keeps insertion order, so a row's place in the file is its place in the input.
        option = "" if self.numbered else ", file_row_number = true"
        return f"read_parquet({_sql_path(self.path)}{option})"

    @property
    def path_scan(self) -> str:
        """The spill without row numbers, for what does not need them."""
        return f"read_parquet({_sql_path(self.path)})"

    @property
    def row(self) -> str:
        """SQL for the row's 1-based number in the input."""
        return "__hw_n" if self.numbered else "(file_row_number + 1)"

    @property
    def rows(self) -> str:
        """The spill with every row's number as ``__hw_n``, usable after FROM."""
        number = "" if self.numbered else f", {self.row} AS __hw_n"
        return f"(SELECT *{number} FROM {self.scan})"

    @property
    def internal(self) -> str:
        """The spill's own columns, to leave out of the good rows."""
        own = ["__hw_n" if self.numbered else "file_row_number", *self.raws]
        return ", ".join([*own, "__hw_problems", "__hw_rejected", "__hw_row"])


@dataclass(frozen=True)
class _Losers:
    """Rows ``unique`` rejects: ``__hw_loser`` (row number), ``__hw_dups`` (problems) and
    ``__hw_rejected`` (already rejected by another check), in a small Parquet file."""

    path: Path
    count: int
    fresh: int
    """Losers that passed every other check: rejected by uniqueness alone."""
    first: int
    last: int

    @property
    def scan(self) -> str:
        return f"read_parquet({_sql_path(self.path)})"

    def excludes(self, row: str) -> str:
        """SQL TRUE for a loser's row, as a bitmap lookup: a filter, unlike a join, keeps the
        spill's order and its parallel scan."""
        bitmap = f"(SELECT bitstring_agg(__hw_loser, {self.first}, {self.last}) FROM {self.scan})"
        # CASE, not AND: DuckDB evaluates both sides of AND, and get_bit rejects bad indexes.
        return (
            f"(CASE WHEN {row} BETWEEN {self.first} AND {self.last} "
            f"THEN get_bit({bitmap}, CAST({row} - {self.first} AS INTEGER)) = 1 ELSE false END)"
        )


def _unique_losers(plan: _Plan, spill: _Spill) -> str:
    """Per ``unique`` column, the rows it rejects, found among the repeated keys only."""
    selects = []
    for index, col in plan.unique:
        key = col.value
        window = f"PARTITION BY {key} ORDER BY __hw_rejected, __hw_n"
        message = _message(
            _text(f"{col.name}: duplicate "),
            _show(key, col.type),
            _text(" (duplicate of row "),
            "CAST(__hw_keep AS VARCHAR)",
            _text(")"),
        )
        repeated = (
            f"SELECT {key} FROM {spill.path_scan} WHERE {key} IS NOT NULL "
            f"GROUP BY {key} HAVING count(*) > 1"
        )
        selects.append(
            f"SELECT __hw_n AS __hw_loser, __hw_rejected, {_problem(index, message)} AS __hw_p "
            f"FROM (SELECT __hw_n, {key}, __hw_rejected, "
            f"row_number() OVER ({window}) AS __hw_dup, "
            f"first_value(__hw_n) OVER ({window}) AS __hw_keep "
            f"FROM {spill.rows} WHERE {key} IN ({repeated})) WHERE __hw_dup > 1"
        )
    return (
        f"SELECT __hw_loser, any_value(__hw_rejected) AS __hw_rejected, "
        f"list_sort(list(__hw_p)) AS __hw_dups FROM ({' UNION ALL '.join(selects)}) "
        f"GROUP BY __hw_loser"
    )


def _write_losers(
    con: duckdb.DuckDBPyConnection, plan: _Plan, spill: _Spill, target: Path
) -> _Losers | None:
    if not plan.unique:
        return None
    con.execute(f"COPY ({_unique_losers(plan, spill)}) TO {_sql_path(target)} (FORMAT parquet)")
    count, fresh, first, last = con.sql(
        f"SELECT count(*), count(*) FILTER (WHERE NOT __hw_rejected), "
        f"min(__hw_loser), max(__hw_loser) FROM read_parquet({_sql_path(target)})"
    ).fetchall()[0]
    if not count:
        target.unlink()
        return None
    return _Losers(target, int(count), int(fresh), int(first), int(last))


# --------------------------------------------------------------------------- results


@dataclass
class ValidationResult:
    """What :func:`validate_relation` found and where it put the rows."""

    relation: str
    """SQL selecting the good rows (from a Parquet spill), declared columns cast."""
    rows_in: int
    rows_good: int
    rows_rejected: int
    rejected_path: Path | None
    """Parquet of rejected rows with REJECTED_COLUMNS (quarantine only, and only if any)."""
    failures: dict[str, int]
    """Check name → rows failing it, most frequent first (``{"amount: min 0": 3}``)."""
    examples: dict[str, str] = field(default_factory=dict)
    """Check name → the message of its first failing row, for error messages and the UI."""


def _counts(
    con: duckdb.DuckDBPyConnection, spill: _Spill, losers: _Losers | None
) -> tuple[int, int]:
    rows = con.sql(
        f"SELECT count(*), count(*) FILTER (WHERE __hw_rejected) FROM {spill.path_scan}"
    ).fetchall()
    return int(rows[0][0]), int(rows[0][1]) + (losers.fresh if losers else 0)


def _failures(
    con: duckdb.DuckDBPyConnection, spill: _Spill, losers: _Losers | None, names: list[str]
) -> tuple[dict[str, int], dict[str, str]]:
    problems = (
        f"SELECT unnest(__hw_problems) AS p, __hw_n AS n FROM {spill.rows} WHERE __hw_rejected"
    )
    if losers:
        problems += f" UNION ALL SELECT unnest(__hw_dups), __hw_loser FROM {losers.scan}"
    rows = con.sql(
        f"SELECT p.c, count(*) AS n, arg_min(p.m, n) FROM ({problems}) "
        f"GROUP BY p.c ORDER BY n DESC, p.c"
    ).fetchall()
    failures = {names[int(c)]: int(n) for c, n, _ in rows}
    examples = {names[int(c)]: str(m) for c, _, m in rows}
    return failures, examples


def _good_relation(spill: _Spill, losers: _Losers | None) -> str:
    unique = f" AND NOT {losers.excludes(spill.row)}" if losers else ""
    return f"SELECT * EXCLUDE ({spill.internal}) FROM {spill.scan} WHERE NOT __hw_rejected{unique}"


def _source_expr(plan: _Plan, step_id: str, source_column: str | None) -> str:
    """SQL for a rejected row's ``_source``, over ``__hw_n`` and the input's columns."""
    fallback = f"{_text(f'{step_id}:row ')} || CAST(__hw_n AS VARCHAR)"
    names = [name for name, _ in plan.input_columns]
    column = source_column or ("_source" if "_source" in names else None)
    if column is None:
        return fallback
    if column not in names:
        raise _missing(column, names, step_id)
    return f"coalesce(CAST({_ident(column)} AS VARCHAR), {fallback})"


def _rejected_rows(plan: _Plan, spill: _Spill, losers: _Losers | None, source: str) -> str:
    """Rejected rows, in input order: those the pass rejected, plus the ``unique`` losers."""
    columns = f"__hw_n, __hw_problems, __hw_row, {source} AS __hw_source"
    if losers is None:
        return f"SELECT {columns} FROM {spill.rows} WHERE __hw_rejected"
    dups = f"(SELECT __hw_loser, __hw_dups FROM {losers.scan}"
    both = (
        f"SELECT * REPLACE (list_sort(list_concat(__hw_problems, coalesce(__hw_dups, []))) "
        f"AS __hw_problems) FROM (FROM {spill.rows} WHERE __hw_rejected) "
        f"LEFT JOIN {dups}) ON __hw_n = __hw_loser"
    )
    # Losers that passed every other check have no __hw_row yet; only they are read whole.
    alone = (
        f"SELECT * REPLACE (__hw_dups AS __hw_problems, {_original_row(plan)} AS __hw_row) "
        f"FROM (FROM {spill.rows} WHERE NOT __hw_rejected) "
        f"JOIN {dups} WHERE NOT __hw_rejected) ON __hw_n = __hw_loser"
    )
    return (
        f"SELECT {columns} FROM ({both}) UNION ALL SELECT {columns} FROM ({alone}) ORDER BY __hw_n"
    )


def _write_rejected(
    con: duckdb.DuckDBPyConnection, rows: str, target: Path, run_id: str, step_id: str
) -> None:
    con.execute(
        f"COPY (SELECT {_text(run_id)} AS _run_id, {_text(step_id)} AS _step, "
        f"__hw_source AS _source, "
        f"array_to_string(list_transform(__hw_problems, lambda p: p.m), '; ') AS _error, "
        f"__hw_row AS _row FROM ({rows})) TO {_sql_path(target)} (FORMAT parquet)"
    )


# --------------------------------------------------------------------------- policy


def _summary(result: ValidationResult, top: int = 5) -> str:
    parts = []
    for name, count in list(result.failures.items())[:top]:
        rows = "row" if count == 1 else "rows"
        parts.append(f"{name} ({count} {rows}, e.g. {result.examples.get(name, '?')})")
    more = len(result.failures) - top
    return "; ".join(parts) + (f"; and {more} more checks" if more > 0 else "")


def _enforce(result: ValidationResult, config: ValidateConfig, step_id: str) -> None:
    """Raise when the policy says so: any rejection under ``fail``, or too many."""
    rejected, total = result.rows_rejected, result.rows_in
    context = {"step": step_id, "rows_rejected": rejected, "failures": result.failures}
    if rejected and config.on_error == "fail":
        raise ValidationError(
            f"validate step {step_id!r} rejected {rejected} of {total} rows "
            f"(on_error: fail): {_summary(result)}",
            **context,
        )
    limited = "max_error_ratio" in config.model_fields_set
    if rejected and limited and rejected / total > config.max_error_ratio:
        raise ValidationError(
            f"validate step {step_id!r} rejected {rejected} of {total} rows "
            f"({rejected / total:.2%}), more than max_error_ratio "
            f"{config.max_error_ratio:.2%}: {_summary(result)}",
            **context,
        )


def validate_relation(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    config: ValidateConfig,
    *,
    out_dir: Path,
    run_id: str,
    step_id: str,
    source_column: str | None = None,
) -> ValidationResult:
    """Check every row of ``relation`` against ``config`` in one pass; apply ``on_error``.

    Writes ``<step_id>.validated.parquet`` (every row, for the good relation) and, under
    ``quarantine`` when rows were rejected, ``<step_id>.rejected.parquet`` into ``out_dir``.
    Raises ValidationError for a missing column, a check or rule that cannot be evaluated,
    or when the policy fails the step; StepError when the input itself cannot be read.
    """
    plan = _plan(_input_columns(con, relation, step_id), config, step_id)
    source = _source_expr(plan, step_id, source_column)
    out_dir.mkdir(parents=True, exist_ok=True)
    spill = _Spill(out_dir / f"{step_id}.validated.parquet", plan.numbered, tuple(plan.kept_raws))
    _write_checked(con, plan, relation, spill.path, step_id)
    losers = _write_losers(con, plan, spill, out_dir / f"{step_id}.duplicates.parquet")
    rows_in, rejected = _counts(con, spill, losers)
    failures, examples = _failures(con, spill, losers, plan.names) if rejected else ({}, {})
    good = _good_relation(spill, losers)
    result = ValidationResult(good, rows_in, rows_in - rejected, rejected, None, failures, examples)
    _enforce(result, config, step_id)
    if rejected and config.on_error == "quarantine":
        result.rejected_path = out_dir / f"{step_id}.rejected.parquet"
        rows = _rejected_rows(plan, spill, losers, source)
        _write_rejected(con, rows, result.rejected_path, run_id, step_id)
    return result


# --------------------------------------------------------------------------- the step


@register("validate")
def run_validate(ctx: StepContext, step: ValidateStep) -> StepOutput:
    """The ``validate`` step kind: :func:`validate_relation` over the named input."""
    config = step.validate_
    upstream = ctx.inputs.get(config.input)
    if upstream is None or upstream.relation is None:
        raise StepError(
            f"validate step {ctx.step_id!r}: input {config.input!r} produced no rows to check",
            step=ctx.step_id,
        )
    result = validate_relation(
        ctx.cursor(),
        upstream.relation,
        config,
        out_dir=ctx.workdir,
        run_id=ctx.run_id,
        step_id=ctx.step_id,
    )
    if result.rows_rejected:
        ctx.log(
            f"rejected {result.rows_rejected} of {result.rows_in} rows ({config.on_error})",
            level="warning",
            failures=result.failures,
        )
    return StepOutput(
        relation=result.relation,
        rows=result.rows_good,
        rejected=[str(result.rejected_path)] if result.rejected_path else [],
        info={"rows_rejected": result.rows_rejected, "failures": result.failures},
    )
