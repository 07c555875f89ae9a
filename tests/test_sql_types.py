"""The pure parts of SQL sources: cursor values through JSON, pandas-free Arrow values."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from headwater.connectors import sql_types
from tests.conftest import ProjectFactory

VALUES = [5, -(2**40), 2.5, "x", dt.date(2024, 1, 2), dt.datetime(2024, 1, 1, 10, 0, 0, 7),
          dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2))),
          Decimal("12.340")]


@pytest.mark.parametrize("value", VALUES)
def test_arrow_scalar_matches_pyarrow(value: Any) -> None:
    """Buffer-built scalars hold what ``pa.scalar`` builds (a zoned time as UTC)."""
    assert pa.scalar(value).as_py() == sql_types.arrow_scalar(value).as_py()
    assert pa.scalar(value).type.id == sql_types.arrow_scalar(value).type.id


@pytest.mark.parametrize("value, kind", [
    (dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC), pa.timestamp("us", tz="UTC")),
    (dt.datetime(2024, 1, 1, 10), pa.timestamp("us")), (dt.date(2024, 5, 6), pa.date32()),
    (Decimal("1.25"), pa.decimal128(12, 2)), (7, pa.int64()), ("k", pa.string())])
def test_cursor_value_survives_json(value: Any, kind: pa.DataType) -> None:
    """A mark stored as JSON comes back as the value the driver binds."""
    assert value == sql_types.from_json(sql_types.to_json(value), kind)


def test_initial_string_becomes_the_cursor_type() -> None:
    """``initial: '2024-01-01'`` on a timestamptz cursor binds as an aware datetime."""
    expected = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert expected == sql_types.from_json("2024-01-01", pa.timestamp("us", tz="UTC"))


def test_zoned_timestamp_to_python_without_pandas() -> None:
    """``py_value`` reads a zoned timestamp as the aware datetime ``as_py`` would give."""
    scalar = sql_types.arrow_scalar(dt.datetime(2024, 3, 1, 8, 30, tzinfo=dt.UTC))
    assert dt.datetime(2024, 3, 1, 8, 30, tzinfo=dt.UTC) == sql_types.py_value(scalar)


def test_bool_array_packs_bits() -> None:
    """Hand-packed booleans read back in order, across a byte boundary."""
    values = [True, False, True, True, False, False, False, True, True, False]
    assert values == sql_types.bool_array(values).to_pylist()


def test_mysql_types() -> None:
    """MySQL field metadata maps: DECIMAL keeps precision, TINYINT(1) is a bool, GEOMETRY fails."""
    assert pa.decimal128(12, 2) == sql_types.mysql_arrow_type("a", 246, 14, 2, 0, 63)
    assert pa.bool_() == sql_types.mysql_arrow_type("b", 1, 1, 0, 0, 63)
    assert pa.binary() == sql_types.mysql_arrow_type("c", 252, 65535, 0, 0, 63)
    assert pa.string() == sql_types.mysql_arrow_type("d", 252, 65535, 0, 0, 45)
    with pytest.raises(sql_types.UnmappableType, match="column 'g' has type 'geometry'"):
        sql_types.mysql_arrow_type("g", 255, 0, 0, 0, 63)


def test_check_flags_a_non_sql_connection(make_project: ProjectFactory) -> None:
    """``check`` says a sql source cannot read a broker connection, naming the key."""
    import headwater as hw

    root = make_project({"p": """
    name: p
    steps:
      - id: raw
        source: {type: sql, connection: bus, table: t}
    """}, settings="connections:\n  bus: {type: nats, url: 'nats://127.0.0.1:4222'}\n")
    with hw.Project(root) as project:
        problems = project.check()
    assert ["steps[0].source.connection"] == [p["key"] for p in problems]
    assert "cannot be read by a sql source" in problems[0]["message"]


def test_prefetch_passes_batches_and_errors_in_order() -> None:
    """The read-ahead thread yields every batch in order, then the reader's own error."""
    from headwater.connectors.sql import _prefetched

    def reader() -> Any:
        for i in range(5):
            yield pa.record_batch([pa.nulls(i, pa.int64())], names=["x"])
        raise RuntimeError("connection lost")

    seen = []
    with pytest.raises(RuntimeError, match="connection lost"):
        for batch in _prefetched(reader()):
            seen.append(batch.num_rows)
    assert [0, 1, 2, 3, 4] == seen


def test_prefetch_stops_when_the_consumer_stops() -> None:
    """A consumer that gives up early does not leave the reader thread blocked."""
    import threading

    from headwater.connectors.sql import _prefetched

    closed = threading.Event()

    def reader() -> Any:
        try:
            while True:
                yield pa.record_batch([pa.nulls(1, pa.int64())], names=["x"])
        finally:
            closed.set()

    stream = _prefetched(reader())
    next(stream)
    stream.close()
    assert closed.wait(5)
