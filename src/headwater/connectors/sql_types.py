"""Database column types → Arrow types a Delta table can hold, and cursor values ↔ JSON.

Every driver hands over Arrow (ADBC) or Python rows (PyMySQL, SQLAlchemy); this module
decides what each column becomes: integers, decimals with their precision, floats, bools,
strings (text, enums, JSON, UUID, time of day), binaries, timestamps with and without a
time zone, dates and lists. A type with no faithful Arrow form (an interval, a geometry)
raises :class:`UnmappableType` naming the column and its database type, so the user can
cast it in a ``query:``. Cursor values travel through the store as JSON and come back as
the Python value the driver binds. This module must never open a connection.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

UNCONSTRAINED_DECIMAL = pa.decimal128(38, 10)
"""A PostgreSQL ``numeric`` without precision: wide enough for ML features; a value that
does not fit fails loudly instead of being rounded."""


class UnmappableType(Exception):
    """A column whose database type has no faithful Arrow form."""

    def __init__(self, column: str, db_type: str) -> None:
        super().__init__(column, db_type)
        self.column = column
        self.db_type = db_type

    def __str__(self) -> str:
        return (f"column {self.column!r} has type {self.db_type!r}, which headwater cannot "
                f"map to a dataset column; cast it in a query "
                f"(for example {self.column}::text)")


# --------------------------------------------------------------------------- PostgreSQL (ADBC)

Converter = Callable[[pa.Array | pa.ChunkedArray], pa.Array | pa.ChunkedArray]


def _pg_type(field: pa.Field) -> str:
    meta = field.metadata or {}
    name = meta.get(b"ADBC:postgresql:typname") or meta.get(b"POSTGRESQL:type") or b"?"
    return name.decode()


def _numeric_type(field: pa.Field) -> pa.DataType:
    typmod = int((field.metadata or {}).get(b"POSTGRESQL:typmod", b"-1"))
    if typmod < 4:
        return UNCONSTRAINED_DECIMAL
    precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
    return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)


def _storage(array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if isinstance(array, pa.ChunkedArray):
        return pa.chunked_array([c.storage for c in array.chunks], type=array.type.storage_type)
    return array.storage


def _uuid_text(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    raw = _storage(array).to_pylist()
    return pa.array([None if b is None else str(uuid.UUID(bytes=b)) for b in raw], pa.string())


def _time_text(array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    return pc.cast(array, pa.string())


def pg_converter(field: pa.Field) -> tuple[pa.Field, Converter | None]:
    """The Delta-ready field for one ADBC PostgreSQL column and how to convert it."""
    kind = field.type
    if isinstance(kind, pa.BaseExtensionType):
        ext = kind.extension_name
        if ext == "arrow.json":
            return field.with_type(pa.string()), _storage
        if ext == "arrow.uuid":
            return field.with_type(pa.string()), _uuid_text
        if ext == "arrow.opaque" and _pg_type(field) == "numeric":
            target = _numeric_type(field)
            return field.with_type(target), lambda a: pc.cast(_storage(a), target)
        raise UnmappableType(field.name, _pg_type(field))
    if pa.types.is_time(kind):
        return field.with_type(pa.string()), _time_text
    if pa.types.is_interval(kind) or pa.types.is_duration(kind):
        raise UnmappableType(field.name, _pg_type(field))
    if pa.types.is_list(kind) and isinstance(kind.value_type, pa.BaseExtensionType):
        raise UnmappableType(field.name, _pg_type(field))
    return field, None


class BatchNormalizer:
    """Applies the per-column conversions fixed from a stream's first schema."""

    def __init__(self, schema: pa.Schema,
                 mapper: Callable[[pa.Field], tuple[pa.Field, Converter | None]]) -> None:
        pairs = [mapper(f) for f in schema]
        self.schema = pa.schema([p[0].remove_metadata() for p in pairs])
        self._converters = [p[1] for p in pairs]
        self._identity = all(c is None for c in self._converters)

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self._identity:
            return batch.replace_schema_metadata(None).cast(self.schema)
        columns = [conv(col) if conv is not None else col
                   for conv, col in zip(self._converters, batch.columns, strict=True)]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)


# --------------------------------------------------------------------------- MySQL / MariaDB

_BINARY_CHARSET = 63
_UNSIGNED_FLAG = 32
_MYSQL_INTS = {1: 8, 2: 16, 3: 32, 9: 32, 8: 64, 13: 16}
"""FIELD_TYPE code → integer width: TINY, SHORT, LONG, INT24, LONGLONG, YEAR."""
_MYSQL_NAMES = {0: "decimal", 1: "tinyint", 2: "smallint", 3: "int", 4: "float", 5: "double",
                6: "null", 7: "timestamp", 8: "bigint", 9: "mediumint", 10: "date",
                11: "time", 12: "datetime", 13: "year", 14: "newdate", 15: "varchar",
                16: "bit", 245: "json", 246: "decimal", 247: "enum", 248: "set",
                249: "tinyblob", 250: "mediumblob", 251: "longblob", 252: "blob",
                253: "varchar", 254: "char", 255: "geometry"}


def mysql_arrow_type(name: str, type_code: int, length: int, scale: int, flags: int,
                     charset: int) -> pa.DataType:
    """The Arrow type of one MySQL/MariaDB result column (PyMySQL field metadata)."""
    if type_code in _MYSQL_INTS:
        width = _MYSQL_INTS[type_code]
        if type_code == 1 and length == 1:
            return pa.bool_()  # BOOLEAN is TINYINT(1)
        if flags & _UNSIGNED_FLAG and type_code != 13:
            return pa.int64() if width < 64 else pa.uint64()
        return getattr(pa, f"int{width}")()
    if type_code in (0, 246):
        digits = max(length - (1 if scale else 0) - (0 if flags & _UNSIGNED_FLAG else 1), 1)
        return pa.decimal128(min(max(digits, scale), 38), scale)
    simple = {4: pa.float32(), 5: pa.float64(), 10: pa.date32(), 14: pa.date32(),
              12: pa.timestamp("us"), 7: pa.timestamp("us", tz="UTC"), 11: pa.string(),
              245: pa.string(), 247: pa.string(), 248: pa.string(), 6: pa.string(),
              16: pa.binary()}
    if type_code in simple:
        return simple[type_code]
    if type_code in (15, 249, 250, 251, 252, 253, 254):
        return pa.binary() if charset == _BINARY_CHARSET else pa.string()
    raise UnmappableType(name, _MYSQL_NAMES.get(type_code, f"type code {type_code}"))


def _time_of_day(value: Any) -> Any:
    if isinstance(value, dt.timedelta):
        seconds = int(value.total_seconds())
        sign = "-" if seconds < 0 else ""
        seconds = abs(seconds)
        return f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return value


def rows_to_batch(rows: Sequence[Sequence[Any]], schema: pa.Schema) -> pa.RecordBatch:
    """Python rows (as a driver returns them) → one record batch of ``schema``."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    arrays = []
    for field, values in zip(schema, columns, strict=True):
        if field.type == pa.string():
            values = tuple(_as_text(v) for v in values)
        elif field.type == pa.bool_():
            values = tuple(None if v is None else bool(v) for v in values)
        arrays.append(pa.array(values, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _as_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, set):
        return ",".join(sorted(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return _time_of_day(value) if isinstance(value, dt.timedelta) else str(value)


def infer_batch(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> pa.RecordBatch:
    """Python rows of a driver that reports no usable types (SQLite, generic URLs)."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    arrays = []
    for name, values in zip(names, columns, strict=True):
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays.append(pa.array([_as_text(v) for v in values], pa.string()))
        if pa.types.is_time(arrays[-1].type):
            arrays[-1] = pc.cast(arrays[-1], pa.string())
        if pa.types.is_duration(arrays[-1].type):
            raise UnmappableType(name, "interval")
    return pa.RecordBatch.from_arrays(arrays, names=list(names))


# --------------------------------------------------------------------------- cursor values


def to_json(value: Any) -> Any:
    """A cursor or key value as JSON (the store keeps it; ``from_json`` restores it)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def from_json(value: Any, arrow_type: pa.DataType) -> Any:
    """A stored (or YAML ``initial``) cursor value as the Python value a driver binds."""
    if value is None:
        return None
    if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type):
        if isinstance(value, dt.datetime | dt.date):
            parsed: Any = value
        else:
            parsed = dt.datetime.fromisoformat(str(value))
        if pa.types.is_date(arrow_type):
            return parsed.date() if isinstance(parsed, dt.datetime) else parsed
        if not isinstance(parsed, dt.datetime):
            parsed = dt.datetime.combine(parsed, dt.time())
        if arrow_type.tz is not None and parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed
    if pa.types.is_decimal(arrow_type):
        return Decimal(str(value))
    if pa.types.is_integer(arrow_type):
        return int(value)
    if pa.types.is_floating(arrow_type):
        return float(value)
    return value


def arrow_scalar(value: Any, arrow_type: pa.DataType | None = None) -> pa.Scalar:
    """``pa.scalar`` built from raw buffers, so pyarrow does not import pandas for it.

    pyarrow 26 imports pandas (seconds of start-up in a process that otherwise never uses
    it) on any conversion from Python objects; a cursor value is a single number, time or
    string, which fixed-width buffers hold directly.
    """
    array = _one(value)
    if array is None:
        return pa.scalar(value, type=arrow_type)
    if arrow_type is not None and array.type != arrow_type:
        array = array.cast(arrow_type)
    return array[0]


def one_value(value: Any) -> pa.Array:
    """A one-value array of ``value`` (a bound query parameter), pandas-free when it can."""
    array = _one(value)
    return array if array is not None else pa.array([value])


_EPOCH = dt.datetime(1970, 1, 1)
_MICRO = dt.timedelta(microseconds=1)


def _one(value: Any) -> pa.Array | None:
    """A one-value array from buffers, or None for a type this does not cover."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return _fixed(pa.int64(), struct.pack("<q", value))
    if isinstance(value, float):
        return _fixed(pa.float64(), struct.pack("<d", value))
    if isinstance(value, dt.datetime):
        naive = value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
        micros = _fixed(pa.int64(), struct.pack("<q", (naive - _EPOCH) // _MICRO))
        return micros.cast(pa.timestamp("us", tz="UTC" if value.tzinfo else None))
    if isinstance(value, dt.date):
        days = (value - dt.date(1970, 1, 1)).days
        return _fixed(pa.int32(), struct.pack("<i", days)).cast(pa.date32())
    if isinstance(value, str | Decimal):
        data = str(value).encode()
        text = pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(
            struct.pack("<ii", 0, len(data))), pa.py_buffer(data)])
        if isinstance(value, Decimal):
            digits = len(value.as_tuple().digits)
            scale = max(-int(value.as_tuple().exponent), 0)
            return text.cast(pa.decimal128(max(digits, scale, 1), scale))
        return text
    return None


def _fixed(kind: pa.DataType, raw: bytes) -> pa.Array:
    return pa.Array.from_buffers(kind, 1, [None, pa.py_buffer(raw)])


_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def py_value(scalar: pa.Scalar) -> Any:
    """``scalar.as_py()``, except a zoned timestamp (which would import pandas for it)."""
    kind = scalar.type
    if not pa.types.is_timestamp(kind) or kind.tz is None or not scalar.is_valid:
        return scalar.as_py()
    ticks = scalar.cast(pa.int64()).as_py()
    micros = ticks * 1_000_000 // _PER_SECOND[kind.unit]
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)


def bool_array(values: Sequence[bool]) -> pa.Array:
    """A boolean array from Python bools, packed by hand (``pa.array`` imports pandas)."""
    packed = bytearray((len(values) + 7) // 8)
    for index, value in enumerate(values):
        if value:
            packed[index >> 3] |= 1 << (index & 7)
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bytes(packed))])


def empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    """A batch of no rows (``pa.array([])`` would import pandas to build it)."""
    return pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def key_of(values: Sequence[Any]) -> tuple[Any, ...]:
    """A row's key as a hashable tuple of JSON values (compares equal to a stored key)."""
    return tuple(to_json(v) for v in values)
