"""Fit an append's (or merge's) columns to the types the dataset already has.

``schema: evolve`` adds columns; it cannot change a column's type. A column whose type
changed is cast to the dataset's type when every value survives the round trip (an
integer into a wider integer, ``"42"`` into a number); otherwise the publish fails naming
the column, both types, a value that would be lost and what to do. Never ``TRY_CAST``: a
value that does not fit must not silently become NULL while the log says "schema evolved".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from headwater.datasets import delta
from headwater.exceptions import PublishError
from headwater.sqltext import ident as quote

_INTEGERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT")
# casts no value can fail or change: the data need not be checked
_WIDENING = {
    *((a, b) for i, a in enumerate(_INTEGERS) for b in _INTEGERS[i + 1:]),
    *((a, "DOUBLE") for a in ("TINYINT", "SMALLINT", "INTEGER", "FLOAT")),
    ("DATE", "TIMESTAMP"),
}


@dataclass(frozen=True)
class Cast:
    """One column cast from the input's type to the dataset's."""

    column: str
    source: str
    target: str
    dataset_type: pa.DataType

    def sql(self) -> str:
        return f"CAST({quote(self.column)} AS {self.target}) AS {quote(self.column)}"

    def describe(self) -> str:
        return (f"column {self.column!r} ({self.source}) cast to the dataset's type "
                f"{self.dataset_type}")


def aligned(con: Any, query: str, uri: str, dataset: str) -> tuple[str, list[Cast]]:
    """``query`` with changed-type columns cast losslessly, and the casts made.

    Raises :class:`PublishError` if a value would be lost (nothing is written then).
    """
    table = delta.open_table(uri)
    if table is None:
        return query, []
    existing = delta.arrow_schema(table)
    rel = con.sql(f"SELECT * FROM ({query}) LIMIT 0")
    incoming = rel.to_arrow_table().schema
    sources = dict(zip(rel.columns, (str(t) for t in rel.types), strict=True))
    casts = []
    for field in incoming:
        if field.name not in existing.names or existing.field(field.name).type == field.type:
            continue
        dataset_type = existing.field(field.name).type
        target = duckdb_type(dataset_type)
        if target is not None and target != sources[field.name]:
            casts.append(Cast(field.name, sources[field.name], target, dataset_type))
    for cast in casts:
        _check_lossless(con, query, cast, dataset)
    if not casts:
        return query, []
    by_name = {c.column: c for c in casts}
    columns = [by_name[n].sql() if n in by_name else quote(n) for n in incoming.names]
    return f"SELECT {', '.join(columns)} FROM ({query})", casts


def _check_lossless(con: Any, query: str, cast: Cast, dataset: str) -> None:
    """Fail if any value of the column would not survive the cast (and back) unchanged."""
    if (cast.source, cast.target) in _WIDENING:
        return
    col = quote(cast.column)
    lost = (f"{col} IS NOT NULL AND (TRY_CAST({col} AS {cast.target}) IS NULL OR "
            f"TRY_CAST(TRY_CAST({col} AS {cast.target}) AS {cast.source}) "
            f"IS DISTINCT FROM {col})")
    count, example = con.sql(
        f"SELECT count(*) FILTER (WHERE {lost}), "
        f"CAST(any_value({col}) FILTER (WHERE {lost}) AS VARCHAR) FROM ({query})").fetchall()[0]
    if count:
        raise PublishError(
            f"dataset {dataset!r}: column {cast.column!r} is {cast.dataset_type} in the "
            f"dataset but {cast.source} in the input, and {count} value(s) cannot be stored "
            f"as {cast.dataset_type} without loss (e.g. {example!r}). 'schema: evolve' adds "
            f"columns but cannot change a type: publish with 'mode: overwrite' to replace "
            f"the dataset with the new type, or cast the column in SQL "
            f"(e.g. TRY_CAST({cast.column} AS {cast.target})) to keep the old one; "
            f"nothing was written")


def duckdb_type(dtype: pa.DataType) -> str | None:
    """The DuckDB type an Arrow type of a Delta table reads back as (None: leave it)."""
    simple = {
        pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER",
        pa.int64(): "BIGINT", pa.float32(): "FLOAT", pa.float64(): "DOUBLE",
        pa.string(): "VARCHAR", pa.large_string(): "VARCHAR", pa.bool_(): "BOOLEAN",
        pa.date32(): "DATE",
    }
    if dtype in simple:
        return simple[dtype]
    if pa.types.is_timestamp(dtype):
        return "TIMESTAMP WITH TIME ZONE" if dtype.tz else "TIMESTAMP"
    if pa.types.is_decimal(dtype):
        return f"DECIMAL({dtype.precision},{dtype.scale})"
    return None


def describe(casts: Sequence[Cast]) -> list[str]:
    return [c.describe() for c in casts]
