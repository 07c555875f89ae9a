"""Read a table or a query from a SQL database into Parquet spills, exactly once.

The read streams record batches from the database (``sql_drivers``) into Parquet files in
the run folder, so memory stays bounded by one batch per reader. ``partitions`` splits the
rows by ranges of a column between its min and max, each range read by its own thread on
its own connection.

Incremental reads keep a high-water mark: the largest cursor value read, and the keys of
every row holding it. The next run reads ``cursor >= mark`` (the value bound as a
parameter, never pasted into SQL) and drops the rows whose key is among those boundary
keys, so rows that share the mark's value and arrive after the last run are read once,
and the ones read before are not read again. The new mark is returned as state for the
publish to commit with the data; until then the store keeps the old one, so a failed run
changes nothing. This module must never import the engine, the steps or the server.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from headwater.config.models import SqlSource
from headwater.connectors import sql_drivers, sql_types
from headwater.connectors.sql_drivers import ConnectionSpec, Dialect
from headwater.exceptions import ConfigError, HeadwaterError, TerminalSourceError
from headwater.steps.base import FanOut

CURSOR_STATE = "cursor"
"""The incremental state key of a sql source (one per step)."""


@dataclass(frozen=True)
class Mark:
    """A high-water mark: the largest cursor value read and the keys of its rows."""

    column: str
    value: Any
    kind: str
    keys: frozenset[tuple[Any, ...]] = frozenset()

    def to_state(self, key_columns: Sequence[str]) -> dict[str, Any]:
        return {"column": self.column, "value": sql_types.to_json(self.value),
                "kind": self.kind, "key_columns": list(key_columns),
                "keys": sorted([list(k) for k in self.keys], key=repr)}

    @classmethod
    def from_state(cls, state: dict[str, Any], cursor: str) -> Mark | None:
        if not state or state.get("column") != cursor:
            return None
        kind = str(state.get("kind", "string"))
        value = sql_types.from_json(state.get("value"), _kind_type(kind))
        keys = frozenset(tuple(k) for k in state.get("keys") or [])
        return cls(column=cursor, value=value, kind=kind, keys=keys)


@dataclass
class SqlRead:
    """What a read produced: Parquet files, rows, lineage fingerprint and new state."""

    files: list[Path]
    rows: int
    fingerprint: dict[str, Any]
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped: int = 0


@dataclass
class _Part:
    """One reader's share: files written, rows kept, and the largest cursor it saw."""

    files: list[Path] = field(default_factory=list)
    rows: int = 0
    dropped: int = 0
    top: Any = None
    top_keys: set[tuple[Any, ...]] = field(default_factory=set)
    cursor_type: pa.DataType | None = None


@dataclass(frozen=True)
class _Plan:
    """The SQL of one read before partitioning: ``SELECT * FROM ... WHERE ...``."""

    base: str
    where: list[str]
    params: list[Any]

    def sql(self, extra: Sequence[str] = ()) -> str:
        clauses = [*self.where, *extra]
        return self.base + (" WHERE " + " AND ".join(clauses) if clauses else "")


def read(spec: ConnectionSpec, source: SqlSource, *, step_id: str, workdir: Path,
         previous: dict[str, Any], cancelled: Callable[[], bool] = lambda: False,
         log: Callable[[str], None] = lambda _m: None,
         fan_out: FanOut | None = None,
         worker_spec: Callable[[], ConnectionSpec] | None = None) -> SqlRead:
    """Read ``source`` into Parquet files under ``workdir``; see the module docstring.

    ``fan_out`` (a cluster's map, ``steps.base.FanOut``) reads the partitions on workers;
    ``worker_spec`` (which must pickle) builds the connection there, so its resolved
    secret never travels in a task (without it, the spec itself is shipped).
    """
    try:
        return _read(spec, source, step_id=step_id, workdir=workdir, previous=previous,
                     cancelled=cancelled, log=log, fan_out=fan_out, worker_spec=worker_spec)
    except sql_types.UnmappableType as exc:
        raise TerminalSourceError(f"{spec.describe()}: {exc}", source=spec.name) from None


def _read(spec: ConnectionSpec, source: SqlSource, *, step_id: str, workdir: Path,
          previous: dict[str, Any], cancelled: Callable[[], bool],
          log: Callable[[str], None], fan_out: FanOut | None = None,
          worker_spec: Callable[[], ConnectionSpec] | None = None) -> SqlRead:
    dialect = sql_drivers.dialect(spec)
    base = _base_sql(dialect, source)
    plan = _Plan(base=base, where=[], params=[])
    mark: Mark | None = None
    key_columns: list[str] = []
    cursor = source.incremental.cursor if source.incremental else None
    if source.incremental is not None and cursor is not None:
        stored = previous.get(CURSOR_STATE) or {}
        mark = Mark.from_state(stored, cursor)
        key_columns = _key_columns(spec, source, stored if mark is not None else {})
        start = mark.value if mark is not None else _initial(
            dialect, plan, cursor, source.incremental.initial, source.batch_rows)
        if start is not None:
            plan = _Plan(base=base, where=[f"{_col(dialect, cursor)} >= "
                                           f"{dialect.placeholder(0)}"], params=[start])
    out = workdir / f"{step_id}.sql"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.parquet"):
        stale.unlink()
    parts = _read_parts(dialect, source, plan, out, mark, cursor, key_columns, cancelled,
                        fan_out, worker_spec or functools.partial(_given, spec))
    result = _combine(parts)
    log(f"read {result.rows} rows from {spec.describe()}"
        + (f" ({result.dropped} already ingested at the cursor boundary)"
           if result.dropped else ""))
    state: dict[str, dict[str, Any]] = {}
    new_mark = _advance(mark, result, cursor)
    if new_mark is not None:
        state[CURSOR_STATE] = new_mark.to_state(key_columns)
    fingerprint: dict[str, Any] = {"step": step_id, "type": "sql", "connection": spec.name,
                                   **({"table": source.table} if source.table
                                      else {"query": source.query}),
                                   "rows": result.rows}
    if cursor is not None:
        fingerprint["cursor"] = {
            "column": cursor,
            "from": sql_types.to_json(mark.value) if mark else None,
            "to": sql_types.to_json(new_mark.value) if new_mark else None}
    return SqlRead(files=result.files, rows=result.rows, fingerprint=fingerprint,
                   state=state, dropped=result.dropped)


def _base_sql(dialect: Dialect, source: SqlSource) -> str:
    if source.table is not None:
        return f"SELECT * FROM {sql_drivers.quote_dotted(dialect, source.table)}"
    query = (source.query or "").strip().rstrip(";")
    return f"SELECT * FROM ({query}) AS {dialect.quote('_hw_query')}"


def _col(dialect: Dialect, name: str) -> str:
    return dialect.quote(name)


def _column_type(dialect: Dialect, plan: _Plan, column: str,
                 batch_rows: int) -> pa.DataType | None:
    """The Arrow type of ``column`` (from an empty result), to bind cursor values right."""
    session = dialect.connect()
    try:
        first = next(iter(session.batches(plan.sql(["1 = 0"]), [], batch_rows)))
    finally:
        session.close()
    if column not in first.schema.names:
        raise ConfigError(f"incremental cursor {column!r} is not a column of the source "
                          f"(columns: {', '.join(first.schema.names)})", problems=[])
    kind = first.schema.field(column).type
    return None if pa.types.is_null(kind) else kind


def _initial(dialect: Dialect, plan: _Plan, cursor: str, initial: Any,
             batch_rows: int) -> Any:
    """The first run's start, typed like the cursor column (so ``'2024-01-01'`` binds)."""
    if initial is None:
        return None
    kind = _column_type(dialect, plan, cursor, batch_rows)
    return sql_types.from_json(initial, kind) if kind is not None else initial


def _key_columns(spec: ConnectionSpec, source: SqlSource,
                 stored: dict[str, Any]) -> list[str]:
    """Declared ``key:``, else the primary key found by the first run (kept in the state)."""
    if source.key:
        return list(source.key)
    if stored.get("key_columns"):
        return [str(c) for c in stored["key_columns"]]
    found = sql_drivers.primary_key(spec, source.table) if source.table else []
    if not found:
        what = f"table {source.table!r} has no primary key" if source.table else \
            "a query has no primary key"
        raise ConfigError(f"an incremental sql source needs a key to read rows that share "
                          f"the cursor value exactly once: {what}; declare key: [column, ...]",
                          problems=[])
    return found


def _read_parts(dialect: Dialect, source: SqlSource, plan: _Plan, out: Path,
                mark: Mark | None, cursor: str | None, key_columns: list[str],
                cancelled: Callable[[], bool], fan_out: FanOut | None = None,
                worker_spec: Callable[[], ConnectionSpec] | None = None) -> list[_Part]:
    """Each partition on its own connection: threads here, or tasks on a cluster's
    workers when ``fan_out`` is given (each then writes its own uniquely named files,
    so a partition retried after a lost worker never mixes with the dead attempt's)."""
    ranges = _ranges(dialect, source, plan) if source.partitions else [([], [])]
    one = functools.partial(_read_one, dialect, source, plan, ranges, out, mark, cursor,
                            key_columns)
    if fan_out is not None and worker_spec is not None and len(ranges) > 1:
        remote = functools.partial(_read_remote, worker_spec, source, plan, ranges, out,
                                   mark, cursor, key_columns)
        parts: list[_Part] = fan_out(remote, range(len(ranges)))
        return parts
    if len(ranges) == 1:
        return [one(0, cancelled=cancelled)]
    with ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="hw-sql") as pool:
        return list(pool.map(functools.partial(one, cancelled=cancelled), range(len(ranges))))


def _given(spec: ConnectionSpec) -> ConnectionSpec:
    return spec


def _read_remote(worker_spec: Callable[[], ConnectionSpec], source: SqlSource, plan: _Plan,
                 ranges: list[tuple[list[str], list[Any]]], out: Path, mark: Mark | None,
                 cursor: str | None, key_columns: list[str], index: int) -> _Part:
    """One partition on a worker, on a connection built there by ``worker_spec``."""
    return _read_one(sql_drivers.dialect(worker_spec()), source, plan, ranges, out, mark,
                     cursor, key_columns, index, unique=True)


def _read_one(dialect: Dialect, source: SqlSource, plan: _Plan,
              ranges: list[tuple[list[str], list[Any]]], out: Path, mark: Mark | None,
              cursor: str | None, key_columns: list[str], index: int,
              cancelled: Callable[[], bool] = lambda: False, unique: bool = False) -> _Part:
    """Read partition ``index`` into Parquet files ``out/part-NNN[-token]-MMMM.parquet``."""
    clauses, params = ranges[index]
    sql = plan.sql(clauses)
    name = f"part-{index:03d}" + (f"-{uuid.uuid4().hex[:8]}" if unique else "")
    reader = _PartReader(out / name, mark, cursor, key_columns)
    session = dialect.connect()
    try:
        batches = session.batches(sql, [*plan.params, *params], source.batch_rows)
        for batch in _prefetched(batches):
            if cancelled():
                raise TerminalSourceError("cancelled while reading")
            reader.add(batch)
    finally:
        reader.close()
        session.close()
    return reader.part


_DONE = object()


def _prefetched(batches: Iterator[pa.RecordBatch], depth: int = 2
                ) -> Iterator[pa.RecordBatch]:
    """Read the next batches on a helper thread while this one writes the last.

    The database read and the Parquet write each take about half the time and both release
    the GIL, so overlapping them nearly halves a read. At most ``depth`` batches wait.
    """
    import queue

    pending: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        """Queue ``item`` unless the consumer has gone; False once it has."""
        while not stop.is_set():
            try:
                pending.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not offer(batch):
                    return
            offer(_DONE)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            offer(exc)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # the driver's cursor closes on this thread, where it was used

    worker = threading.Thread(target=produce, name="hw-sql-read", daemon=True)
    worker.start()
    try:
        while True:
            item = pending.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _ranges(dialect: Dialect, source: SqlSource,
            plan: _Plan) -> list[tuple[list[str], list[Any]]]:
    """``count`` half-open ranges of the partition column (NULLs go to the first)."""
    assert source.partitions is not None
    column = _col(dialect, source.partitions.column)
    count = source.partitions.count
    probe = (f"SELECT min({column}) AS lo, max({column}) AS hi FROM ({plan.sql()}) AS "
             f"{dialect.quote('_hw_bounds')}")
    session = dialect.connect()
    try:
        row = next(iter(session.batches(probe, plan.params, 1))).to_pylist()
    finally:
        session.close()
    lo, hi = (row[0]["lo"], row[0]["hi"]) if row else (None, None)
    if lo is None or hi is None or count == 1:
        return [([], [])]
    bounds = _split(lo, hi, count)
    start = len(plan.params)
    out: list[tuple[list[str], list[Any]]] = []
    for i in range(len(bounds) - 1):
        last = i == len(bounds) - 2
        ph_lo, ph_hi = dialect.placeholder(start), dialect.placeholder(start + 1)
        clause = f"({column} >= {ph_lo} AND {column} {'<=' if last else '<'} {ph_hi})"
        if i == 0:
            clause = f"({clause} OR {column} IS NULL)"
        out.append(([clause], [bounds[i], bounds[i + 1]]))
    return out


def _split(lo: Any, hi: Any, count: int) -> list[Any]:
    """``count + 1`` increasing bounds from ``lo`` to ``hi`` (integers, decimals, times)."""
    if isinstance(lo, bool) or not isinstance(lo, int | float | Decimal | datetime | date):
        raise ConfigError(f"partitions: column values must be numbers, dates or timestamps, "
                          f"got {type(lo).__name__}", problems=[])
    if isinstance(lo, int):
        step = max((hi - lo) // count, 1)
        points = [lo + step * i for i in range(count)]
    elif isinstance(lo, datetime | date):
        points = [lo + (hi - lo) * i / count for i in range(count)]
    else:
        points = [lo + (hi - lo) * i / count for i in range(count)]
    bounds = sorted(set(points) | {hi})
    return bounds if len(bounds) > 1 else [lo, hi]


class _PartReader:
    """Writes one reader's batches to Parquet, dropping boundary rows already ingested."""

    def __init__(self, prefix: Path, mark: Mark | None, cursor: str | None,
                 key_columns: list[str]) -> None:
        self.prefix = prefix
        self.mark = mark
        self.cursor = cursor
        self.key_columns = key_columns
        self.part = _Part()
        self._writer: pq.ParquetWriter | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        if self.cursor is not None:
            batch = self._dedupe(batch)
            self._track(batch)
        if self._writer is not None and not self._writer.schema.equals(batch.schema):
            self._writer.close()  # a generic driver's inferred types changed: new file
            self._writer = None
        if self._writer is None:
            path = self.prefix.with_name(f"{self.prefix.name}-{len(self.part.files):04d}"
                                         ".parquet")
            # no dictionaries: a spill is read once, and building them costs 3x the write
            self._writer = pq.ParquetWriter(path, batch.schema, use_dictionary=False)
            self.part.files.append(path)
        if batch.num_rows or self.part.rows == 0:
            self._writer.write_batch(batch)
        self.part.rows += batch.num_rows

    def _dedupe(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        assert self.cursor is not None
        _require(batch, [self.cursor, *self.key_columns])
        if self.mark is None or not self.mark.keys or not batch.num_rows:
            return batch
        at_mark = _equal(batch.column(self.cursor), self.mark.value)
        if at_mark is None:
            return batch
        keep = [True] * batch.num_rows
        positions = pc.indices_nonzero(at_mark)
        hits = positions.to_pylist()
        rows = batch.take(positions).select(self.key_columns).to_pylist()
        for index, row in zip(hits, rows, strict=True):
            if sql_types.key_of([row[k] for k in self.key_columns]) in self.mark.keys:
                keep[index] = False
        dropped = keep.count(False)
        if not dropped:
            return batch
        self.part.dropped += dropped
        return batch.filter(sql_types.bool_array(keep))

    def _track(self, batch: pa.RecordBatch) -> None:
        assert self.cursor is not None
        column = batch.column(self.cursor)
        self.part.cursor_type = column.type
        if not batch.num_rows or column.null_count == batch.num_rows:
            return
        top = sql_types.py_value(pc.max(column))
        if self.part.top is not None and top < self.part.top:
            return
        if self.part.top is None or top > self.part.top:
            self.part.top, self.part.top_keys = top, set()
        at_top = _equal(column, top)
        if at_top is None:
            return
        rows = batch.filter(at_top).select(self.key_columns).to_pylist()
        self.part.top_keys.update(sql_types.key_of([r[k] for k in self.key_columns])
                                  for r in rows)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _require(batch: pa.RecordBatch, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in batch.schema.names]
    if missing:
        raise ConfigError(f"incremental: column {missing[0]!r} (cursor or key) is not in the "
                          f"source's columns ({', '.join(batch.schema.names)})", problems=[])


def _equal(column: pa.Array | pa.ChunkedArray, value: Any) -> pa.Array | None:
    """A mask of the rows equal to ``value``, or None when no row can be."""
    try:
        scalar = sql_types.arrow_scalar(value, column.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return None
    mask = pc.fill_null(pc.equal(column, scalar), sql_types.bool_array([False])[0])
    return mask if pc.any(mask).as_py() else None


def _combine(parts: list[_Part]) -> _Part:
    total = _Part()
    for part in parts:
        total.files.extend(part.files)
        total.rows += part.rows
        total.dropped += part.dropped
        total.cursor_type = total.cursor_type or part.cursor_type
        if part.top is None:
            continue
        if total.top is None or part.top > total.top:
            total.top, total.top_keys = part.top, set(part.top_keys)
        elif part.top == total.top:
            total.top_keys |= part.top_keys
    return total


def _advance(mark: Mark | None, read: _Part, cursor: str | None) -> Mark | None:
    """The mark after this read; None when there is nothing new to record."""
    if cursor is None or read.top is None:
        return None
    kind = _kind_of(read.cursor_type)
    if mark is not None and read.top == mark.value:
        return Mark(cursor, read.top, kind, mark.keys | frozenset(read.top_keys))
    if mark is not None and read.top < mark.value:
        return None
    return Mark(cursor, read.top, kind, frozenset(read.top_keys))


_KINDS: dict[str, pa.DataType] = {"timestamp": pa.timestamp("us"),
                                  "timestamptz": pa.timestamp("us", tz="UTC"),
                                  "date": pa.date32(), "decimal": pa.decimal128(38, 10),
                                  "int": pa.int64(), "float": pa.float64(),
                                  "string": pa.string()}


def _kind_of(kind: pa.DataType | None) -> str:
    if kind is None:
        return "string"
    if pa.types.is_timestamp(kind):
        return "timestamptz" if kind.tz else "timestamp"
    for name, pred in (("date", pa.types.is_date), ("decimal", pa.types.is_decimal),
                       ("int", pa.types.is_integer), ("float", pa.types.is_floating)):
        if pred(kind):
            return name
    return "string"


def _kind_type(kind: str) -> pa.DataType:
    return _KINDS.get(kind, pa.string())


def probe(spec: ConnectionSpec, tables: Sequence[str]) -> Iterator[tuple[str, bool, str]]:
    """``check --connections``: (what, ok, detail) for connect, then each table read."""
    dialect = sql_drivers.dialect(spec)
    try:
        session = dialect.connect()
    except HeadwaterError as exc:
        yield "connect", False, exc.message
        return
    try:
        yield "connect", True, "reachable and authenticated"
        targets = [(t, f"SELECT * FROM {sql_drivers.quote_dotted(dialect, t)} WHERE 1 = 0")
                   for t in tables] or [("SELECT 1", "SELECT 1 AS ok")]
        for name, sql in targets:
            try:
                for _ in session.batches(sql, [], 1):
                    pass
            except HeadwaterError as exc:
                yield f"read {name}", False, exc.message
            else:
                yield f"read {name}", True, "can read"
    finally:
        session.close()
