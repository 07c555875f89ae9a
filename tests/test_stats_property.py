"""``column_stats`` against a straightforward pyarrow.compute computation of the same
document, on random tables: NULLs, NaN, infinities, empty strings, all-NULL columns and
one-row tables. The statistics are built from several fused DuckDB passes; this checks
that fusing them changed no figure."""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.datasets.stats import DECILES, QUANTILES, TOP_K, as_text, column_stats

FLOATS = st.one_of(
    st.none(),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0]),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)
INTEGERS = st.one_of(st.none(), st.integers(min_value=-(10**6), max_value=10**6))
TEXTS = st.one_of(st.none(), st.text(alphabet="abZ é", max_size=3))
BOOLS = st.one_of(st.none(), st.booleans())
CLOSE = {"rel": 1e-9, "abs": 1e-9}


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    """A random table of every kind of column, with at least one row."""
    rows = draw(st.integers(min_value=1, max_value=40))

    def column(values: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(values, min_size=rows, max_size=rows))

    return pa.table(
        {
            "f": pa.array(column(FLOATS), pa.float64()),
            "i": pa.array(column(INTEGERS), pa.int64()),
            "s": pa.array(column(TEXTS), pa.string()),
            "b": pa.array(column(BOOLS), pa.bool_()),
            "null_i": pa.nulls(rows, pa.int64()),
            "null_s": pa.nulls(rows, pa.string()),
        }
    )


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def finite(column: pa.ChunkedArray) -> pa.Array:
    """What the numeric parts summarise: the non-NULL finite values, as doubles."""
    values = column.combine_chunks().drop_null().cast(pa.float64())
    return pc.filter(values, pc.is_finite(values))


def at_most(values: pa.Array, edge: float) -> int:
    return int(pc.sum(pc.less_equal(values, edge)).as_py() or 0)


def bin_counts(values: pa.Array, edges: list[float]) -> list[int]:
    """Counts in ``(-inf, e1], (e1, e2], ..., (ek, +inf)`` for the inner edges."""
    cumulative = [0, *(at_most(values, e) for e in edges[1:-1]), len(values)]
    return [b - a for a, b in pairwise(cumulative)]


def expected_top(column: pa.ChunkedArray) -> list[dict[str, Any]]:
    counted = pc.value_counts(column.combine_chunks().drop_null()).to_pylist()
    ranked = sorted(counted, key=lambda item: (-item["counts"], as_text(item["values"])))
    return [{"value": item["values"], "count": item["counts"]} for item in ranked[:TOP_K]]


def check_numeric(doc: dict[str, Any], column: pa.ChunkedArray) -> None:
    values = finite(column)
    raw = column.combine_chunks().drop_null()
    if pa.types.is_floating(column.type):
        raw = pc.filter(raw, pc.is_finite(raw))
    low, high = pc.min_max(raw).values() if len(raw) else (None, None)
    assert (doc["min"], doc["max"]) == (
        low.as_py() if low is not None else None,
        high.as_py() if high is not None else None,
    )
    mean = pc.mean(values).as_py()
    std = pc.stddev(values, ddof=1).as_py() if len(values) > 1 else None
    assert doc["mean"] == (None if mean is None else pytest.approx(mean, **CLOSE))
    assert doc["std"] == (None if std is None else pytest.approx(std, rel=1e-6, abs=1e-6))
    if not len(values):
        assert set(doc["quantiles"].values()) == {None}
        assert "histogram" not in doc
        return
    quantiles = pc.quantile(values, q=list(QUANTILES.values()), interpolation="linear")
    assert list(doc["quantiles"].values()) == pytest.approx(quantiles.to_pylist(), **CLOSE)
    edges = doc["histogram"]["edges"]
    deciles = pc.quantile(values, q=list(DECILES), interpolation="linear").to_pylist()
    assert (edges[0], edges[-1]) == (pc.min(values).as_py(), pc.max(values).as_py())
    for edge in edges[1:-1]:
        assert any(edge == pytest.approx(d, **CLOSE) for d in deciles)
    assert doc["histogram"]["counts"] == bin_counts(values, edges)


def check_categorical(doc: dict[str, Any], column: pa.ChunkedArray) -> None:
    present = column.combine_chunks().drop_null()
    low, high = pc.min_max(present).values() if len(present) else (None, None)
    assert (doc["min"], doc["max"]) == (
        low.as_py() if low is not None else None,
        high.as_py() if high is not None else None,
    )
    if not len(present):
        assert "top" not in doc
        return
    assert doc["top"] == expected_top(column)
    assert doc["top_complete"] == (len(pc.unique(present)) <= TOP_K)


def check_reference(doc: dict[str, Any], previous: dict[str, Any], column: pa.ChunkedArray) -> None:
    """The counts of this data in the previous document's bins or top values (a previous
    column without values still lends its empty list of top values)."""
    values = finite(column) if doc["kind"] == "numeric" else column.combine_chunks().drop_null()
    if not len(values) or (doc["kind"] == "numeric" and "histogram" not in previous):
        assert "reference" not in doc
        return
    if doc["kind"] == "numeric":
        edges = previous["histogram"]["edges"]
        assert doc["reference"] == {"edges": edges, "counts": bin_counts(values, edges)}
        return
    texts = [as_text(v) for v in values.to_pylist()]
    wanted = [item["value"] for item in previous.get("top", [])]
    counts = [sum(t == as_text(v) for t in texts) for v in wanted]
    assert doc["reference"] == {"values": wanted, "counts": counts}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(table=tables(), previous_table=tables())
def test_column_stats_equal_a_reference_computation(
    con: duckdb.DuckDBPyConnection, table: pa.Table, previous_table: pa.Table
) -> None:
    """Every figure of the document, with and without a previous version's document."""
    con.register("previous_rows", previous_table)
    con.register("rows", table)
    previous = column_stats(con, "SELECT * FROM previous_rows")
    stats = column_stats(con, "SELECT * FROM rows", reference=previous)

    assert stats["rows"] == table.num_rows
    assert list(stats["columns"]) == table.column_names
    for name in table.column_names:
        doc, column = stats["columns"][name], table[name]
        count = len(column) - column.null_count
        assert (doc["count"], doc["nulls"]) == (count, column.null_count)
        assert doc["null_rate"] == column.null_count / table.num_rows
        assert 0 <= doc["distinct"] <= max(count, 1) + 1
        if doc["kind"] == "numeric":
            check_numeric(doc, column)
        else:
            assert doc["kind"] == "categorical"
            check_categorical(doc, column)
        check_reference(doc, previous["columns"][name], column)


def test_distinct_never_exceeds_the_values_counted() -> None:
    """HyperLogLog overshoots small unique columns (1,018 "distinct" of 1,000 ids was shown
    by `dataset show`): the estimate is capped at the non-null count."""
    import duckdb

    from headwater.datasets.stats import column_stats

    con = duckdb.connect()
    for n in (1, 10, 100, 1000, 5000):
        doc = column_stats(con, f"SELECT range AS id, range::VARCHAR AS s FROM range({n})")
        for name in ("id", "s"):
            assert doc["columns"][name]["distinct"] <= n, (n, name)
