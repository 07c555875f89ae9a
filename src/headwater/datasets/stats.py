"""Column statistics of a relation, from three DuckDB aggregate passes, as a JSON document.

The document (``column_stats``) is what a dataset version records (SPEC §6), what the UI
shows and what drift (``drift.py``) compares::

    {"rows": 1000,
     "columns": {
       "amount": {"type": "DOUBLE", "kind": "numeric", "count": 990, "nulls": 10,
                  "null_rate": 0.01, "distinct": 812, "min": 0.5, "max": 99.0,
                  "mean": 41.2, "std": 12.9,
                  "quantiles": {"p01": ..., "p05": ..., "p25": ..., "p50": ..., "p75": ...,
                                "p95": ..., "p99": ...},
                  "histogram": {"edges": [0.5, 9.8, ..., 99.0], "counts": [99, 99, ...]},
                  "reference": {"edges": [...], "counts": [...]}},        # see below
       "country": {"type": "VARCHAR", "kind": "categorical", ...,
                   "top": [{"value": "DE", "count": 700}, ...], "top_complete": true,
                   "reference": {"values": [...], "counts": [...]}}}}

* ``count`` is the number of non-NULL values (as in pandas); ``rows`` counts every row.
* ``kind`` is ``numeric`` (integers, floats, decimals), ``categorical`` (text, booleans,
  enums, UUIDs), ``temporal`` (dates, times, timestamps: min and max only) or ``other``.
* Float columns are summarised over their finite values; NaN and infinities count in
  ``count`` but are left out of min, max, mean, quantiles and the histogram.
* The ``histogram`` is cut at the column's deciles (up to 10 bins; fewer when deciles
  coincide): ``edges`` is ``[min, d1, ..., dk, max]`` and bin *i* holds the values in
  ``(edges[i], edges[i+1]]``, the first bin everything up to ``d1``. Decile bins, rather than
  equal-width ones, each hold about a tenth of the rows whatever the shape of the data,
  which is what PSI needs; the next version is binned against the same inner edges with
  open outer bins, so the bins stay valid however far the data moves.
* ``top`` holds the (up to) 20 most frequent values with exact counts; ``top_complete``
  says they are every distinct value, which lets drift tell new categories from rare ones.
  A column with up to 1,000 distinct values (estimated) is counted in full; a longer one
  (IDs, free text) takes its candidates from the sample and counts those exactly, so no
  hash table of every distinct value is ever built. A value frequent enough to matter is
  in the sample; among near-unique values the "top" ones are any few with their counts.
* ``reference`` is present only when ``column_stats`` is given the previous version's
  document: it holds this data's exact counts in the previous version's histogram bins
  (numeric) or of the previous version's top values (categorical). Drift is then exact;
  without it ``drift.py`` falls back to an estimate interpolated from the two histograms.

Pass one computes the aggregates; pass two, over a sample, the quantiles and a long
column's candidate top values; pass three the bin and value counts (it needs what the first
two found), as one statement: the cumulative bin counts (each distinct edge of this and the
previous version's bins once) beside one grouped scan per categorical column (a short
column grouped by value; a long one filtered to its candidate and previous top values
first). Every pass is an aggregate, so memory stays bounded whatever the relation's size.
The min and max of a text or boolean column come from its value counts when it is short
(its order is Python's), from pass three when it is long: string comparisons are a large
share of a scan. ``distinct`` is a HyperLogLog estimate. Quantiles are exact up
to 100,000 values and otherwise come from a seeded (repeatable) Bernoulli sample of about
100,000 rows, off by about 0.1 percentile points: exact ones would sort every column.
Values are JSON-native: dates and timestamps as ISO strings, decimals as floats, NaN as null.
This module must never import the engine, the server or the CLI.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import duckdb

from headwater.exceptions import StepError
from headwater.sqltext import ident as _ident
from headwater.sqltext import subquery as _subquery
from headwater.sqltext import text as _text

TOP_K = 20
QUANTILES = {
    "p01": 0.01,
    "p05": 0.05,
    "p25": 0.25,
    "p50": 0.5,
    "p75": 0.75,
    "p95": 0.95,
    "p99": 0.99,
}
DECILES = tuple(round(i / 10, 1) for i in range(1, 10))
FULL_COUNT_LIMIT = 1000
"""Up to this many distinct values (estimated) a categorical column is counted in full."""
SAMPLE_ROWS = 100_000
"""Quantiles are computed on a sample of about this many rows."""
SAMPLE_SEED = 42

_INTEGERS = {
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
}
_FLOATS = {"FLOAT", "DOUBLE"}
_CATEGORICAL = {"VARCHAR", "BOOLEAN", "UUID"}
_SORTS_AS_PYTHON = {"VARCHAR", "BOOLEAN"}
"""Types whose DuckDB order is Python's (UTF-8 bytes are code point order): the min and
max of a short column of them are read off its value counts instead of a pass-one scan."""
_TEMPORAL_PREFIXES = ("DATE", "TIME", "TIMESTAMP")


def column_kind(duck_type: str) -> str:
    """``numeric``, ``categorical``, ``temporal`` or ``other`` for a DuckDB type name."""
    if duck_type in _INTEGERS or duck_type in _FLOATS or duck_type.startswith("DECIMAL"):
        return "numeric"
    if duck_type in _CATEGORICAL or duck_type.startswith("ENUM"):
        return "categorical"
    if duck_type.startswith(_TEMPORAL_PREFIXES):
        return "temporal"
    return "other"


def jsonable(value: Any) -> Any:
    """A DuckDB value as plain JSON: ISO strings for time, floats for decimals, None for
    NaN and infinities (JSON has neither)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return jsonable(float(value))
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | bytes):
        return value.hex() if isinstance(value, bytes) else str(value)
    return str(value)


def as_text(value: Any) -> str:
    """A JSON value in DuckDB's text form, to match a stored top value against new data."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------- pass one


@dataclass(frozen=True)
class _Col:
    index: int
    name: str
    type: str
    kind: str

    @property
    def ref(self) -> str:
        return _ident(self.name)

    @property
    def x(self) -> str:
        """The column as finite DOUBLEs, computed once in the scan: what numerics see."""
        return f"__hw_x{self.index}"

    def x_sql(self) -> str:
        as_double = f"CAST({self.ref} AS DOUBLE)"
        if self.type in _FLOATS:
            return f"CASE WHEN isfinite({as_double}) THEN {as_double} END AS {self.x}"
        return f"{as_double} AS {self.x}"

    def alias(self, what: str) -> str:
        return f"c{self.index}_{what}"

    @property
    def deferred_range(self) -> bool:
        """Min and max come after pass one: from the value counts of a short column, from
        pass three's scan for a long one (string comparisons are a large part of a scan)."""
        return self.kind == "categorical" and self.type in _SORTS_AS_PYTHON


def _first_pass(col: _Col) -> list[str]:
    a, parts = col.alias, [f"count({col.ref}) AS {col.alias('n')}"]
    if col.kind == "other":
        return parts
    parts.append(f"approx_count_distinct({col.ref}) AS {a('distinct')}")
    value = col.x if col.type in _FLOATS else col.ref
    if not col.deferred_range:
        parts += [f"min({value}) AS {a('min')}", f"max({value}) AS {a('max')}"]
    if col.kind == "numeric":
        # only a float column can hold values that are not finite: elsewhere nx is n
        parts += [f"count({col.x}) AS {a('nx')}"] if col.type in _FLOATS else []
        parts += [f"avg({col.x}) AS {a('mean')}", f"stddev_samp({col.x}) AS {a('std')}"]
    return parts


def _finite_counts(cols: list[_Col], first: dict[str, Any]) -> None:
    """``nx`` (values the numeric parts see) of integer and decimal columns: their count."""
    for col in cols:
        if col.kind == "numeric" and col.type not in _FLOATS:
            first[col.alias("nx")] = first[col.alias("n")]


# --------------------------------------------------------------------------- pass two


@dataclass
class _Numeric:
    """What pass three counts for one numeric column: values at or below each edge."""

    total: int
    edges: list[float]
    reference: list[float] | None
    """The previous version's histogram edges, when there is one."""

    def inner(self) -> list[float]:
        """Every inner edge of both bin sets, each once, in order."""
        return sorted({*self.edges[1:-1], *(self.reference or [])[1:-1]})


@dataclass
class _Categorical:
    """What pass three counts for one categorical column."""

    full: bool
    """Short column: every value is counted (a small map)."""
    reference: list[Any] | None
    """The previous version's top values, when there is one."""
    candidates: list[Any] = field(default_factory=list)
    """Long column: the likely top values, found in the sample, counted exactly."""

    def texts(self) -> list[str]:
        values = [*self.candidates, *(self.reference or [])]
        return sorted({as_text(v) for v in values})


def _quantiles_sql(col: _Col) -> str:
    probabilities = ", ".join(repr(p) for p in (*QUANTILES.values(), *DECILES))
    return f"quantile_cont({col.x}, [{probabilities}]) AS {col.alias('q')}"


def _candidates_sql(col: _Col) -> str:
    return f"approx_top_k({col.ref}, {TOP_K}) AS {col.alias('candidates')}"


def _sampled(col: _Col, first: Mapping[str, Any]) -> list[str]:
    """Pass-two aggregates of one column over the sample (none for most kinds)."""
    if col.kind == "numeric" and first[col.alias("nx")]:
        return [_quantiles_sql(col)]
    if col.kind == "categorical" and _is_long(col, first):
        return [_candidates_sql(col)]
    return []


def _is_long(col: _Col, first: Mapping[str, Any]) -> bool:
    return int(first.get(col.alias("distinct")) or 0) > FULL_COUNT_LIMIT


def _sample(source: str, smallest: int) -> str:
    """``source``, or a repeatable Bernoulli sample holding about SAMPLE_ROWS values of
    the sparsest sampled column."""
    if smallest <= SAMPLE_ROWS:
        return source
    percent = 100.0 * SAMPLE_ROWS / smallest
    return (
        f"(SELECT * FROM {source} USING SAMPLE {percent!r} PERCENT "
        f"(bernoulli, {SAMPLE_SEED})) AS __hw_sample"
    )


def _sample_pass(
    con: duckdb.DuckDBPyConnection, cols: list[_Col], first: dict[str, Any], source: str
) -> None:
    """Pass two: quantiles and top-value candidates from a sample, added to ``first``."""
    parts = [p for c in cols for p in _sampled(c, first)]
    if not parts:
        return
    sampled = [c for c in cols if _sampled(c, first)]
    smallest = min(int(first[c.alias("nx" if c.kind == "numeric" else "n")]) for c in sampled)
    first.update(_run(con, parts, _sample(source, smallest)))


def _edges(first: Mapping[str, Any], col: _Col) -> list[float]:
    """Histogram edges: ``[min, *distinct deciles, max]`` (see the module docstring)."""
    lo, hi = float(first[col.alias("min")]), float(first[col.alias("max")])
    quantiles = first.get(col.alias("q")) or []
    deciles = [q for q in quantiles[len(QUANTILES) :] if q is not None]
    return [lo, *sorted({float(d) for d in deciles}), hi]


# --------------------------------------------------------------------------- pass three


def _at_most_sql(col: _Col, bins: _Numeric) -> list[str]:
    """``count_if(x <= e)`` per distinct inner edge of both bin sets: cumulative counts,
    the cheapest way to bin (an edge the two sets share, as when the data did not move,
    is counted once)."""
    return [
        f"count_if({col.x} <= {e!r}) AS {col.alias(f'e{i}')}" for i, e in enumerate(bins.inner())
    ]


def _bins(counted: Mapping[str, Any], col: _Col, bins: _Numeric, edges: list[float]) -> list[int]:
    """Per-bin counts of ``edges`` from the cumulative ones; the last bin takes the rest."""
    at_most = {e: int(counted[col.alias(f"e{i}")]) for i, e in enumerate(bins.inner())}
    cumulative = [at_most[e] for e in edges[1:-1]]
    return [b - a for a, b in pairwise([0, *cumulative, bins.total])]


def _count_sql(col: _Col, plan: _Plan) -> list[str]:
    """Pass-three aggregates of one column: bin counts, or a long column's deferred range."""
    if col.index in plan.numeric:
        return _at_most_sql(col, plan.numeric[col.index])
    values = plan.categorical.get(col.index)
    if values is not None and not values.full and col.deferred_range:
        return [f"min({col.ref}) AS {col.alias('min')}", f"max({col.ref}) AS {col.alias('max')}"]
    return []


def _deferred_ranges(
    cols: list[_Col], plan: _Plan, counted: Mapping[str, Any], first: dict[str, Any]
) -> None:
    """The min and max pass one left out (see ``_Col.deferred_range``), into ``first``."""
    for col in cols:
        if not col.deferred_range:
            continue
        values = plan.categorical.get(col.index)
        if values is None:  # no value at all
            first[col.alias("min")] = first[col.alias("max")] = None
        elif values.full:
            found = list(counted.get(col.alias("counts")) or {})
            first[col.alias("min")] = min(found, default=None)
            first[col.alias("max")] = max(found, default=None)
        else:
            first[col.alias("min")] = counted[col.alias("min")]
            first[col.alias("max")] = counted[col.alias("max")]


def _values_sql(col: _Col, values: _Categorical, source: str) -> str | None:
    """Exact counts per value of one categorical column, as ``(__i, v<index>, __n)`` rows.

    A short column is grouped by value (a small hash table). A long one counts only its
    candidate and reference values, as text, and drops every other row before grouping,
    so no table of every value is built. A grouped scan per column, run side by side in one
    UNION, costs about half of the ``histogram()`` aggregates of one scan.
    """
    value = col.ref if values.full else f"CAST({col.ref} AS VARCHAR)"
    if values.full:
        where = f"{col.ref} IS NOT NULL"
    else:
        texts = values.texts()
        if not texts:
            return None
        where = f"{value} IN ({', '.join(_text(t) for t in texts)})"
    return (
        f"SELECT {col.index} AS __i, {value} AS v{col.index}, count(*) AS __n "
        f"FROM {source} WHERE {where} GROUP BY {value}"
    )


def _count_pass(
    con: duckdb.DuckDBPyConnection, cols: list[_Col], plan: _Plan, source: str
) -> dict[str, Any]:
    """Pass three, in one statement (its scans run side by side): the aggregates of
    ``_count_sql`` by alias, and every categorical column's exact value counts,
    ``counts`` (value to count) for a short column, ``v`` (text to count) for a long one."""
    parts = [p for c in cols for p in _count_sql(c, plan)]
    branches = [f"SELECT -1 AS __i, {', '.join(parts)} FROM {source}"] if parts else []
    branches += [
        sql
        for c in cols
        if c.index in plan.categorical
        if (sql := _values_sql(c, plan.categorical[c.index], source)) is not None
    ]
    if not branches:
        return {}
    names, rows = _query(con, " UNION ALL BY NAME ".join(branches))
    where = {name: i for i, name in enumerate(names)}
    aggregates = [p.rsplit(" AS ", 1)[1] for p in parts]
    counted: dict[str, Any] = {}
    found: dict[int, dict[Any, int]] = {}
    for row in rows:
        index = int(row[where["__i"]])
        if index < 0:
            counted.update((alias, row[where[alias]]) for alias in aggregates)
        else:
            found.setdefault(index, {})[row[where[f"v{index}"]]] = int(row[where["__n"]])
    by_col = {c.index: c for c in cols}
    for i, counts in found.items():
        counted[by_col[i].alias("counts" if plan.categorical[i].full else "v")] = counts
    return counted


@dataclass
class _Plan:
    """What pass three counts, per column index."""

    numeric: dict[int, _Numeric] = field(default_factory=dict)
    categorical: dict[int, _Categorical] = field(default_factory=dict)


def _previous(reference: Mapping[str, Any] | None, col: _Col) -> Mapping[str, Any] | None:
    previous = (reference or {}).get("columns", {}).get(col.name)
    return previous if previous and previous.get("kind") == col.kind else None


def _count_plan(
    cols: list[_Col], first: Mapping[str, Any], reference: Mapping[str, Any] | None
) -> _Plan:
    plan = _Plan()
    for col in cols:
        previous = _previous(reference, col)
        if col.kind == "numeric" and first[col.alias("nx")]:
            ref = previous.get("histogram", {}).get("edges") if previous else None
            plan.numeric[col.index] = _Numeric(
                int(first[col.alias("nx")]),
                _edges(first, col),
                [float(e) for e in ref or []] or None,
            )
        elif col.kind == "categorical" and first[col.alias("n")]:
            ref_values = [item["value"] for item in previous.get("top", [])] if previous else None
            values = _Categorical(not _is_long(col, first), ref_values)
            values.candidates = list(first.get(col.alias("candidates")) or [])
            plan.categorical[col.index] = values
    return plan


# --------------------------------------------------------------------------- assembly


def _base(col: _Col, first: Mapping[str, Any], rows: int) -> dict[str, Any]:
    count = int(first[col.alias("n")])
    doc: dict[str, Any] = {
        "type": col.type,
        "kind": col.kind,
        "count": count,
        "nulls": rows - count,
        "null_rate": (rows - count) / rows if rows else 0.0,
    }
    if col.kind != "other":
        # a HyperLogLog estimate can exceed the values there are (1,018 for 1,000 ids)
        doc["distinct"] = min(int(first[col.alias("distinct")] or 0), count)
        doc["min"] = jsonable(first[col.alias("min")])
        doc["max"] = jsonable(first[col.alias("max")])
    if col.kind == "numeric":
        doc["mean"] = jsonable(first[col.alias("mean")])
        doc["std"] = jsonable(first[col.alias("std")])
        quantiles = first.get(col.alias("q")) or [None] * len(QUANTILES)
        doc["quantiles"] = {k: jsonable(v) for k, v in zip(QUANTILES, quantiles, strict=False)}
    return doc


def _fill_numeric(
    doc: dict[str, Any], col: _Col, counted: Mapping[str, Any], bins: _Numeric
) -> None:
    counts = _bins(counted, col, bins, bins.edges)
    doc["histogram"] = {"edges": bins.edges, "counts": counts}
    if bins.reference is not None:
        counts = _bins(counted, col, bins, bins.reference)
        doc["reference"] = {"edges": bins.reference, "counts": counts}


def _ranked(counts: Mapping[Any, int]) -> list[dict[str, Any]]:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], as_text(item[0])))
    return [{"value": jsonable(value), "count": int(n)} for value, n in ranked[:TOP_K] if n]


def _fill_categorical(
    doc: dict[str, Any], col: _Col, counted: Mapping[str, Any], values: _Categorical
) -> None:
    if values.full:
        found: Mapping[Any, int] = counted.get(col.alias("counts")) or {}
        doc["top"] = _ranked(found)
        doc["top_complete"] = len(found) <= TOP_K
        by_text = {as_text(value): int(n) for value, n in found.items()}
    else:
        found_texts: Mapping[str, int] = counted.get(col.alias("v")) or {}
        by_text = {t: int(found_texts.get(t, 0)) for t in values.texts()}
        doc["top"] = _ranked({v: by_text[as_text(v)] for v in values.candidates})
        doc["top_complete"] = False
    if values.reference is not None:
        counts = [by_text.get(as_text(v), 0) for v in values.reference]
        doc["reference"] = {"values": values.reference, "counts": counts}


# --------------------------------------------------------------------------- entry point


def _scan(cols: list[_Col], relation: str) -> str:
    """The relation plus each numeric column as finite DOUBLEs, so the cast is done once."""
    extra = "".join(f", {c.x_sql()}" for c in cols if c.kind == "numeric")
    return f"(SELECT *{extra} FROM {_subquery(relation)} AS __hw_in) AS __hw_scan"


def _query(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of one statement. ``execute``, not ``sql``: a relation binds
    its statement again on the Python side, which for a pass of ~100 aggregates cost more
    than running it (8.7 ms against 3.3 ms for 100 ``count_if`` here)."""
    try:
        cursor = con.execute(sql)
        rows = cursor.fetchall()
        return [str(d[0]) for d in cursor.description or []], rows
    except duckdb.Error as exc:
        raise StepError(f"cannot compute column statistics: {exc}") from exc


def _run(con: duckdb.DuckDBPyConnection, parts: list[str], source: str) -> dict[str, Any]:
    names, rows = _query(con, f"SELECT {', '.join(parts)} FROM {source}")
    return dict(zip(names, rows[0], strict=True))


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[_Col]:
    try:
        described = con.sql(f"SELECT * FROM {_subquery(relation)} AS __hw_in")
    except duckdb.Error as exc:
        raise StepError(f"cannot compute column statistics: {exc}") from exc
    pairs = zip(described.columns, described.types, strict=True)
    return [_Col(i, str(n), str(t), column_kind(str(t))) for i, (n, t) in enumerate(pairs)]


def column_stats(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    *,
    reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Statistics of every column of ``relation`` (the module docstring shows the shape).

    ``reference`` is the previous version's document; given, each column also records its
    counts in that version's bins and top values, so drift against it is exact.
    """
    cols = _columns(con, relation)
    source = _scan(cols, relation)
    first = _run(con, ["count(*) AS __rows", *(p for c in cols for p in _first_pass(c))], source)
    rows = int(first["__rows"])
    _finite_counts(cols, first)
    _sample_pass(con, cols, first, source)
    plan = _count_plan(cols, first, reference)
    counted = _count_pass(con, cols, plan, source)
    _deferred_ranges(cols, plan, counted, first)
    docs = {c.name: _base(c, first, rows) for c in cols}
    for col in cols:
        if col.index in plan.numeric:
            _fill_numeric(docs[col.name], col, counted, plan.numeric[col.index])
        elif col.index in plan.categorical:
            _fill_categorical(docs[col.name], col, counted, plan.categorical[col.index])
    return {"rows": rows, "columns": docs}
