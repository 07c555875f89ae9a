"""Column statistics of a relation, in two DuckDB aggregate passes, as a JSON document.

The document (``column_stats``) is what a dataset version records (SPEC §6), what the UI
shows and what drift (``drift.py``) compares::

    {"rows": 1000,
     "columns": {
       "amount": {"type": "DOUBLE", "kind": "numeric", "count": 990, "nulls": 10,
                  "null_rate": 0.01, "distinct": 812, "min": 0.5, "max": 99.0,
                  "mean": 41.2, "std": 12.9,
                  "quantiles": {"p01": ..., "p05": ..., "p25": ..., "p50": ..., "p75": ...,
                                "p95": ..., "p99": ...},
                  "histogram": {"edges": [11 floats], "counts": [10 ints]},
                  "bins": {"edges": [<= 9 floats], "counts": [len(edges) + 1 ints]},
                  "reference": {"edges": [...], "counts": [...]}},        # see below
       "country": {"type": "VARCHAR", "kind": "categorical", ...,
                   "top": [{"value": "DE", "count": 700}, ...], "top_complete": true,
                   "reference": {"values": [...], "counts": [...]}}}}

* ``count`` is the number of non-NULL values (as in pandas); ``rows`` counts every row.
* ``kind`` is ``numeric`` (integers, floats, decimals), ``categorical`` (text, booleans,
  enums, UUIDs), ``temporal`` (dates, times, timestamps: min and max only) or ``other``.
* Float columns are summarised over their finite values; NaN and infinities count as
  values in ``count`` but are left out of min, max, mean, quantiles and histograms.
* ``histogram`` has 10 equal-width bins from min to max, for display.
* ``bins`` are the column's deciles, the baseline the *next* version's drift is measured
  against: the bins are ``(-inf, e1], (e1, e2], ..., (ek, +inf)``, so they stay valid
  however far the data moves. Decile edges (rather than equal-width) make each baseline bin
  hold about a tenth of the rows, which is what makes PSI meaningful.
* ``top`` holds the 20 most frequent values with exact counts; ``top_complete`` says they
  are every distinct value, which lets drift tell new categories apart from rare ones.
* ``reference`` is only present when ``column_stats`` is given the previous version's
  document: it holds this data's exact counts in the previous version's ``bins`` (numeric)
  or of the previous version's ``top`` values (categorical). Drift is then exact; without
  it, ``drift.py`` falls back to an interpolated estimate.

Quantiles and ``distinct`` are approximate (t-digest, HyperLogLog): exact ones would sort
every column. Pass one computes the aggregates, pass two the bin counts (it needs the
edges pass one found). Values are JSON-native: dates and timestamps as ISO strings.
This module must never import the engine, the server or the CLI.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from headwater.exceptions import StepError

TOP_K = 20
HISTOGRAM_BINS = 10
QUANTILES = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95,
             "p99": 0.99}
DECILES = tuple(round(i / 10, 1) for i in range(1, 10))

_INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
             "UINTEGER", "UBIGINT", "UHUGEINT"}
_FLOATS = {"FLOAT", "DOUBLE"}
_CATEGORICAL = {"VARCHAR", "BOOLEAN", "UUID"}
_TEMPORAL_PREFIXES = ("DATE", "TIME", "TIMESTAMP")
_NAME = re.compile(r'^(?:[A-Za-z_][\w$]*|"(?:[^"]|"")+")(?:\.(?:[A-Za-z_][\w$]*|"(?:[^"]|"")+"))*$')


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _subquery(relation: str) -> str:
    text = relation.strip().rstrip(";")
    return f"(FROM {text})" if _NAME.match(text) else f"({text})"


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
        """The column as DOUBLE, finite values only: what numeric summaries see."""
        as_double = f"CAST({self.ref} AS DOUBLE)"
        return f"CASE WHEN isfinite({as_double}) THEN {as_double} END"

    def alias(self, what: str) -> str:
        return f"c{self.index}_{what}"


def _first_pass(col: _Col) -> list[str]:
    a, parts = col.alias, [f"count({col.ref}) AS {col.alias('n')}"]
    if col.kind == "other":
        return parts
    parts.append(f"approx_count_distinct({col.ref}) AS {a('distinct')}")
    value = col.x if col.type in _FLOATS else col.ref
    parts += [f"min({value}) AS {a('min')}", f"max({value}) AS {a('max')}"]
    if col.kind == "numeric":
        probabilities = ", ".join(repr(p) for p in (*QUANTILES.values(), *DECILES))
        parts += [
            f"count({col.x}) AS {a('nx')}",
            f"min({col.x}) AS {a('lo')}",
            f"max({col.x}) AS {a('hi')}",
            f"avg({col.x}) AS {a('mean')}",
            f"stddev_samp({col.x}) AS {a('std')}",
            f"approx_quantile({col.x}, [{probabilities}]) AS {a('q')}",
        ]
    if col.kind == "categorical":
        parts.append(f"approx_top_k({col.ref}, {TOP_K}) AS {a('top')}")
    return parts


# --------------------------------------------------------------------------- pass two


def _equal_width(lo: float | None, hi: float | None) -> list[float]:
    """11 edges from lo to hi (2 when every value is the same, none when there are none)."""
    if lo is None or hi is None:
        return []
    if lo == hi:
        return [lo, hi]
    width = (hi - lo) / HISTOGRAM_BINS
    return [lo + width * i for i in range(HISTOGRAM_BINS)] + [hi]


def _decile_edges(quantiles: Sequence[float] | None) -> list[float]:
    if not quantiles:
        return []
    return sorted({float(q) for q in quantiles[len(QUANTILES):]})


def _bucket_sql(col: _Col, boundaries: list[float], alias: str) -> str:
    """Counts of ``x <= b`` per boundary ``b`` (the overflow is count minus their sum)."""
    edges = ", ".join(repr(float(b)) for b in boundaries)
    return f"histogram({col.x}, [{edges}]::DOUBLE[]) AS {col.alias(alias)}"


def _buckets(found: Mapping[float, int] | None, boundaries: list[float], total: int) -> list[int]:
    """Per-bin counts: one per boundary, then the overflow bin above the last one."""
    counts = [int((found or {}).get(float(b), 0)) for b in boundaries]
    return [*counts, total - sum(counts)]


def _values_sql(col: _Col, texts: list[str]) -> str:
    """Exact counts of the given values (in text form) of a categorical column."""
    as_text = f"CAST({col.ref} AS VARCHAR)"
    listed = ", ".join(_text(t) for t in texts)
    return (
        f"histogram({as_text}) FILTER (WHERE {as_text} IN ({listed})) AS {col.alias('counts')}"
    )


# --------------------------------------------------------------------------- assembly


def _numeric(col: _Col, first: Mapping[str, Any]) -> dict[str, Any]:
    q = first[col.alias("q")] or []
    return {
        "mean": jsonable(first[col.alias("mean")]),
        "std": jsonable(first[col.alias("std")]),
        "quantiles": {k: jsonable(v) for k, v in zip(QUANTILES, q, strict=False)},
    }


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
        doc["distinct"] = int(first[col.alias("distinct")] or 0)
        doc["min"] = jsonable(first[col.alias("min")])
        doc["max"] = jsonable(first[col.alias("max")])
    if col.kind == "numeric":
        doc.update(_numeric(col, first))
    return doc


@dataclass
class _Plan:
    """Pass-two SQL and how to turn its row into each column's bins and top values."""

    sql: list[str]
    numeric: dict[int, tuple[list[float], list[float], list[float] | None]]
    """index → (histogram edges, decile edges, reference edges)."""
    categorical: dict[int, tuple[list[Any], list[Any] | None]]
    """index → (candidate top values, reference values)."""


def _reference_edges(reference: Mapping[str, Any] | None, col: _Col) -> list[float] | None:
    previous = (reference or {}).get("columns", {}).get(col.name)
    if not previous or previous.get("kind") != "numeric" or "bins" not in previous:
        return None
    return [float(e) for e in previous["bins"]["edges"]]


def _reference_values(reference: Mapping[str, Any] | None, col: _Col) -> list[Any] | None:
    previous = (reference or {}).get("columns", {}).get(col.name)
    if not previous or previous.get("kind") != "categorical":
        return None
    return [item["value"] for item in previous.get("top", [])]


def _second_plan(
    cols: list[_Col], first: Mapping[str, Any], reference: Mapping[str, Any] | None
) -> _Plan:
    plan = _Plan([], {}, {})
    for col in cols:
        if col.kind == "numeric" and first[col.alias("nx")]:
            hist = _equal_width(first[col.alias("lo")], first[col.alias("hi")])
            deciles = _decile_edges(first[col.alias("q")])
            ref = _reference_edges(reference, col)
            plan.numeric[col.index] = (hist, deciles, ref)
            for alias, boundaries in (("hist", hist[1:-1]), ("bins", deciles), ("ref", ref)):
                if boundaries:  # no boundary: one bin holding everything, nothing to count
                    plan.sql.append(_bucket_sql(col, boundaries, alias))
        elif col.kind == "categorical" and first[col.alias("n")]:
            candidates = list(first[col.alias("top")] or [])
            ref_values = _reference_values(reference, col)
            plan.categorical[col.index] = (candidates, ref_values)
            texts = {as_text(v) for v in candidates} | {as_text(v) for v in ref_values or []}
            plan.sql.append(_values_sql(col, sorted(texts)))
    return plan


def _fill_numeric(
    doc: dict[str, Any], col: _Col, second: Mapping[str, Any], plan: _Plan, total: int
) -> None:
    hist, deciles, ref = plan.numeric[col.index]
    counts = _buckets(second.get(col.alias("hist")), hist[1:-1], total)
    doc["histogram"] = {"edges": hist, "counts": counts}
    doc["bins"] = {"edges": deciles, "counts": _buckets(second.get(col.alias("bins")), deciles, total)}
    if ref is not None:
        found = second.get(col.alias("ref"))
        doc["reference"] = {"edges": ref, "counts": _buckets(found, ref, total)}


def _fill_categorical(doc: dict[str, Any], col: _Col, second: Mapping[str, Any], plan: _Plan) -> None:
    candidates, ref_values = plan.categorical[col.index]
    found = {str(k): int(v) for k, v in (second[col.alias("counts")] or {}).items()}
    top = [{"value": jsonable(v), "count": found.get(as_text(v), 0)} for v in candidates]
    top.sort(key=lambda item: (-item["count"], as_text(item["value"])))
    doc["top"] = top
    doc["top_complete"] = sum(item["count"] for item in top) == doc["count"]
    if ref_values is not None:
        counts = [found.get(as_text(v), 0) for v in ref_values]
        doc["reference"] = {"values": ref_values, "counts": counts}


def _run(con: duckdb.DuckDBPyConnection, parts: list[str], relation: str) -> dict[str, Any]:
    query = f"SELECT {', '.join(parts)} FROM {_subquery(relation)} AS __hw_in"
    try:
        result = con.sql(query)
        return dict(zip(result.columns, result.fetchall()[0], strict=True))
    except duckdb.Error as exc:
        raise StepError(f"cannot compute column statistics: {exc}") from exc


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
    """Statistics of every column of ``relation`` (see the module docstring for the shape).

    ``reference`` is the previous version's document; given, each column also records its
    counts in that version's bins and top values, so :func:`compute_drift` is exact.
    """
    cols = _columns(con, relation)
    first = _run(con, ["count(*) AS __rows"] + [p for c in cols for p in _first_pass(c)], relation)
    rows = int(first["__rows"])
    docs = {c.name: _base(c, first, rows) for c in cols}
    plan = _second_plan(cols, first, reference)
    if plan.sql:
        second = _run(con, plan.sql, relation)
        for col in cols:
            if col.index in plan.numeric:
                _fill_numeric(docs[col.name], col, second, plan, int(first[col.alias("nx")]))
            elif col.index in plan.categorical:
                _fill_categorical(docs[col.name], col, second, plan)
    return {"rows": rows, "columns": docs}
