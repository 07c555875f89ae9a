"""Streaming Delta writes: Parquet parts written from a stream, then one commit of them.

``write_parts`` turns a RecordBatchReader into Parquet files under a table root (hive
folders for partitions) at a target size, in bounded memory; ``commit_parts`` makes one
Delta commit of those files, carrying the run's app transaction. Splitting the two lets
files be written anywhere (a Dask worker, say) and committed by the one process that holds
the dataset's turn, and lets the per-file Delta statistics come from the Parquet footers
the writer just produced instead of a second read of the data.

Files written but never committed are harmless orphans (no Delta reader lists them; a
VACUUM removes them); this module never deletes a file another commit may list.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from headwater.datasets import delta
from headwater.exceptions import PublishError

TARGET_FILE_BYTES = 128 * 1024 * 1024
"""A file is closed once this many bytes are written (delta-rs's default is ~100 MiB)."""
ROW_GROUP_BYTES = 32 * 1024 * 1024
"""Arrow bytes buffered per open file before they are encoded as one row group: the memory
bound of a write (times the number of partitions written at once)."""
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
IN_FLIGHT = 1
WRITERS = 1
"""Files encoded at once by default (one thread each; pyarrow encodes a file on one core).
Two use both cores of a quiet 2-core machine but raised the peak RSS of a 10M-row load
from ~580 to ~670 MB, so more writers are opt-in (``write_parts(writers=...)``)."""
UPLOAD_CHUNK = 8 * 1024 * 1024
"""Batches handed to the encoding thread and not yet written."""


@dataclass(frozen=True)
class Part:
    """One written Parquet file, as a Delta add action needs it (picklable)."""

    path: str
    """Relative to the table root, '/'-separated, as named in storage (hive folders with
    percent-encoded values included); delta-rs encodes it once more in the log."""
    size: int
    rows: int
    partition_values: dict[str, str | None]
    stats: str
    """The add action's stats JSON (numRecords, minValues, maxValues, nullCount)."""
    modification_time: int
    """Milliseconds since the epoch."""


# ----------------------------------------------------------------------------- writing


def delta_arrow_schema(schema: pa.Schema) -> pa.Schema:
    """The Arrow schema Delta stores for ``schema`` (e.g. timestamps in µs, UTC-zoned).

    Batches are cast to it before writing so the files hold exactly what delta-rs would
    have written for the same stream.
    """
    from deltalake import Schema as DeltaSchema

    try:
        return pa.schema(DeltaSchema.from_arrow(_utc_zoned(schema)).to_arrow())
    except Exception as exc:
        raise PublishError(f"Delta cannot store this schema: {exc} ({schema})") from exc


def _utc_zoned(schema: pa.Schema) -> pa.Schema:
    """Every zoned timestamp labelled ``UTC``: delta-rs accepts no other zone name, while
    DuckDB labels TIMESTAMPTZ with the session's zone (``Etc/UTC`` on many machines).
    Arrow stores zoned timestamps as UTC instants, so the relabel changes no value."""
    return pa.schema([f.with_type(_utc_type(f.type)) for f in schema], schema.metadata)


def _utc_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(t):
        return pa.timestamp(t.unit, tz="UTC") if t.tz else t
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_utc_type(t.field(i).type))
                          for i in range(t.num_fields)])
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_utc_type(t.value_type)))
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_utc_type(t.value_type)))
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(_utc_type(t.key_type)),
                       t.item_field.with_type(_utc_type(t.item_type)))
    return t


@dataclass
class _Sink:
    """An open Parquet file of one partition: the writer and what it has written."""

    final: str
    temp: str
    rel_path: str
    partition_values: dict[str, str | None]
    stream: Any
    writer: pq.ParquetWriter
    buffered: list[pa.RecordBatch] = field(default_factory=list)
    buffered_bytes: int = 0
    rows: int = 0


class _Target:
    """Where files go: a local folder (each file written beside its final name, renamed
    when complete) or object storage (written to a local temporary file, then uploaded
    through delta-rs's own object store with the table's credentials: an object appears
    only once its upload completes)."""

    def __init__(self, uri: str, storage_options: Mapping[str, str] | None) -> None:
        self.root = uri.rstrip("/")
        self.store: Any = None
        if "://" in self.root and not self.root.startswith("file://"):
            from deltalake._internal import DeltaFileSystemHandler

            # the raw handler: deltalake's pyarrow wrapper hands it Buffers it refuses
            self.store = DeltaFileSystemHandler(
                table_uri=self.root, options=delta._options(self.root, storage_options))
        else:
            self.root = self.root.removeprefix("file://")

    def open(self, rel_dir: str, name: str) -> tuple[str, str, Any]:
        """(final path, temporary path, output stream) of a new file ``rel_dir/name``."""
        if self.store is not None:
            final = f"{rel_dir}/{name}" if rel_dir else name
            handle, temp = tempfile.mkstemp(prefix="headwater-part-", suffix=".parquet")
            os.close(handle)
            return final, temp, pa.OSFile(temp, "wb")
        folder = os.path.join(self.root, rel_dir) if rel_dir else self.root
        os.makedirs(folder, exist_ok=True)
        final = os.path.join(folder, name)
        temp = os.path.join(folder, f".{name}.tmp")
        return final, temp, pa.OSFile(temp, "wb")

    def finish(self, sink: _Sink) -> int:
        """Put a complete file in place; returns its size."""
        size = os.path.getsize(sink.temp)
        if self.store is None:
            os.replace(sink.temp, sink.final)
            return size
        try:
            out = self.store.open_output_stream(sink.final, None)
            with open(sink.temp, "rb") as source:
                while chunk := source.read(UPLOAD_CHUNK):
                    out.write(chunk)
            out.close()
        finally:
            os.remove(sink.temp)
        return size

    def discard(self, sink: _Sink) -> None:
        """Drop an unfinished file's local temporary (never a file in the table)."""
        with contextlib.suppress(OSError):
            os.remove(sink.temp)


def partition_value(value: Any) -> str | None:
    """A partition value as the Delta log records it (None for null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return str(value)


def _folder(partition_by: Sequence[str], values: Mapping[str, str | None]) -> str:
    """The hive folder of a partition as it is named on disk (values percent-encoded)."""
    return "/".join(
        f"{c}={NULL_PARTITION if values[c] is None else quote(str(values[c]), safe='')}"
        for c in partition_by)


class _PartWriter:
    """Routes batches to one open file per partition, rolling files at the target size."""

    def __init__(self, target: _Target, schema: pa.Schema, partition_by: Sequence[str],
                 target_file_bytes: int, row_group_bytes: int, prefix: str) -> None:
        self.target = target
        self.partition_by = list(partition_by)
        self.file_schema = pa.schema([f for f in schema if f.name not in self.partition_by])
        self.target_file_bytes = target_file_bytes
        self.row_group_bytes = row_group_bytes
        self.prefix = prefix
        self.run = uuid.uuid4().hex
        self.counter = 0
        self.open: dict[tuple[str | None, ...], _Sink] = {}
        self.parts: list[Part] = []

    def add(self, batch: pa.RecordBatch) -> None:
        if not self.partition_by:
            self._buffer((), {}, batch)
            return
        for key, values, piece in _split(batch, self.partition_by):
            self._buffer(key, values, piece.select(self.file_schema.names))

    def _buffer(self, key: tuple[str | None, ...], values: dict[str, str | None],
                batch: pa.RecordBatch) -> None:
        sink = self.open.get(key) or self._new_sink(key, values)
        sink.buffered.append(batch)
        sink.buffered_bytes += batch.nbytes
        sink.rows += batch.num_rows
        if sink.buffered_bytes >= self.row_group_bytes:
            self._flush(sink)
            if sink.stream.tell() >= self.target_file_bytes:
                self._close(key)

    def _new_sink(self, key: tuple[str | None, ...], values: dict[str, str | None]) -> _Sink:
        rel_dir = _folder(self.partition_by, values)
        name = f"{self.prefix}part-{self.counter:05d}-{self.run}-c000.snappy.parquet"
        self.counter += 1
        final, temp, stream = self.target.open(rel_dir, name)
        writer = pq.ParquetWriter(stream, self.file_schema, compression="snappy")
        rel = f"{rel_dir}/{name}" if rel_dir else name
        sink = _Sink(final, temp, rel, values, stream, writer)
        self.open[key] = sink
        return sink

    def _flush(self, sink: _Sink) -> None:
        if sink.buffered:
            table = pa.Table.from_batches(sink.buffered, self.file_schema)
            sink.writer.write_table(table, row_group_size=max(table.num_rows, 1))
            sink.buffered, sink.buffered_bytes = [], 0

    def _close(self, key: tuple[str | None, ...]) -> None:
        sink = self.open.pop(key)
        self._flush(sink)
        sink.writer.close()
        metadata = sink.writer.writer.metadata
        sink.stream.close()
        size = self.target.finish(sink)
        self.parts.append(Part(
            path=sink.rel_path, size=size, rows=sink.rows,
            partition_values=dict(sink.partition_values),
            stats=file_stats_json(metadata, self.file_schema),
            modification_time=int(time.time() * 1000)))

    def close_all(self) -> list[Part]:
        for key in list(self.open):
            self._close(key)
        return self.parts

    def abandon(self) -> None:
        """Close what is open without publishing it (a failed stream); complete files
        already in place stay, orphans no commit lists."""
        for sink in self.open.values():
            with contextlib.suppress(Exception):  # the original error is what matters
                sink.writer.close()
                sink.stream.close()
            self.target.discard(sink)
        self.open.clear()


def _split(batch: pa.RecordBatch, partition_by: Sequence[str]
           ) -> Iterator[tuple[tuple[str | None, ...], dict[str, str | None], pa.RecordBatch]]:
    """The rows of ``batch`` grouped by partition values (one sort, then contiguous runs)."""
    table = pa.Table.from_batches([batch])
    if len(partition_by) == 1 or batch.num_rows == 0:
        keys = table.column(partition_by[0])
    else:
        keys = pc.binary_join_element_wise(
            *[pc.fill_null(pc.cast(table.column(c), pa.string()), "\x00") for c in partition_by],
            "\x01")
    codes = pc.dictionary_encode(keys, null_encoding="encode").combine_chunks().indices
    order = pc.sort_indices(codes)
    ordered = table.take(order)
    runs = pc.run_end_encode(codes.take(order))
    start = 0
    for end in runs.run_ends.to_pylist():
        piece = ordered.slice(start, end - start)
        values = {c: partition_value(piece.column(c)[0].as_py()) for c in partition_by}
        key = tuple(values[c] for c in partition_by)
        yield key, values, piece.combine_chunks().to_batches()[0]
        start = end


def write_parts(reader: pa.RecordBatchReader, uri: str, *, partition_by: Sequence[str] = (),
                target_file_bytes: int = TARGET_FILE_BYTES,
                storage_options: Mapping[str, str] | None = None, prefix: str = "",
                row_group_bytes: int = ROW_GROUP_BYTES, schema: pa.Schema | None = None,
                on_batch: Callable[[pa.RecordBatch], None] | None = None,
                writers: int = WRITERS) -> list[Part]:
    """Stream ``reader`` into Parquet files under the table root ``uri``; bounded memory.

    ``schema`` (default: the Delta form of the reader's) is what each batch is cast to;
    ``on_batch`` sees every cast batch (a statistics accumulator, say) before it is written.
    ``prefix`` starts each file name (distinct writers of one commit may set their own);
    ``writers`` files are encoded at once, batches dealt to them round-robin.
    A file is visible under its final name only once complete; an error leaves at most
    orphans no commit lists, and the source's own exception propagates unchanged.
    """
    target_schema = schema if schema is not None else delta_arrow_schema(reader.schema)
    missing = [c for c in partition_by if c not in target_schema.names]
    if missing:
        raise PublishError(f"partition_by names column(s) {missing} the data does not have "
                           f"(columns: {target_schema.names})")
    target = _Target(uri, storage_options)
    encoders = [_PartWriter(target, target_schema, partition_by, target_file_bytes,
                            row_group_bytes, prefix) for _ in range(max(1, writers))]
    try:
        _pipeline(reader, encoders, target_schema, on_batch)
        return [part for writer in encoders for part in writer.close_all()]
    except BaseException:
        for writer in encoders:
            writer.abandon()
        raise


def _pipeline(reader: pa.RecordBatchReader, writers: Sequence[_PartWriter],
              schema: pa.Schema, on_batch: Callable[[pa.RecordBatch], None] | None) -> None:
    """Read batches here and hand them out: ``on_batch`` (the statistics) on one thread,
    encoding on one thread per writer (batches dealt round-robin, each writer keeping its
    own files). pyarrow's compute and Parquet writer release the GIL, so the source's next
    batch, the statistics and the encodings overlap. At most ``IN_FLIGHT`` batches per
    thread wait (bounded memory); a worker's error surfaces here, and the source's own
    error propagates unchanged."""
    pending: deque[Future[None]] = deque()
    pools = [ThreadPoolExecutor(1, thread_name_prefix="headwater-parts")
             for _ in range(len(writers) + 1)]
    limit = IN_FLIGHT * len(pools)
    try:
        for index, batch in enumerate(_cast_batches(reader, schema)):
            if on_batch is not None:
                pending.append(pools[-1].submit(on_batch, batch))
            pending.append(pools[index % len(writers)].submit(
                writers[index % len(writers)].add, batch))
            while len(pending) > limit:
                pending.popleft().result()
        while pending:
            pending.popleft().result()
    except BaseException:
        for future in pending:
            future.cancel()
        wait(pending)
        raise
    finally:
        for pool in pools:
            pool.shutdown(wait=True)


def _cast_batches(reader: pa.RecordBatchReader, schema: pa.Schema
                  ) -> Iterator[pa.RecordBatch]:
    for batch in reader:
        if batch.num_rows:
            yield _cast(batch, schema)


def _cast(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    try:
        columns = [batch.column(f.name).cast(f.type) if f.name in batch.schema.names
                   else pa.nulls(batch.num_rows, f.type) for f in schema]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise PublishError(f"the rows do not fit the dataset's schema: {exc}") from exc
    return pa.RecordBatch.from_arrays(columns, schema=schema)


# ----------------------------------------------------------------- DuckDB-native writing

STAGING_PREFIX = "_headwater-staging-"
"""A COPY's files land in a fresh folder of this name under the table root first: no Delta
reader lists a folder whose name starts with ``_``, and nothing but that COPY writes it."""


def local_root(uri: str) -> str | None:
    """The table root of ``uri`` as an absolute local path, or None for object storage."""
    if "://" in uri and not uri.startswith("file://"):
        return None
    return os.path.realpath(uri.removeprefix("file://").rstrip("/") or "/")


def copy_parts(con: Any, query: str, uri: str, *, schema: pa.Schema,
               partition_by: Sequence[str] = (), target_file_bytes: int = TARGET_FILE_BYTES,
               prefix: str = "", row_group_rows: int | None = None) -> list[Part]:
    """Let DuckDB write ``query``'s rows as Parquet files of the local table ``uri``.

    DuckDB's ``COPY ... TO`` encodes on all its threads straight from its own vectors,
    skipping the Arrow export and pyarrow's re-encoding that :func:`write_parts` pays for.
    The files are written to a fresh staging folder, renamed into the table root under the
    names :func:`write_parts` gives (complete files only), and described for the Delta log
    from their footers by :func:`file_stats_json`, as delta-rs would. ``schema`` is the
    Delta form of the rows (:func:`plan_write`; the caller checks the rows have it).
    ``partition_by`` columns become hive folders (DuckDB's ``PARTITION_BY`` names them as
    :func:`write_parts` does: values percent-encoded, NULL as ``NULL_PARTITION``; the
    caller keeps to column types whose value text is the Delta log's, see
    :func:`copy_partitionable`). DuckDB checks a file's size after each row group
    (``row_group_rows``, default DuckDB's 122,880 rows), so files end a row group past
    ``target_file_bytes``.

    A failing COPY leaves nothing: its staging folder is removed (no commit lists it), and
    so are staging folders a killed publisher left (:func:`_sweep_staging`). The
    source's own error (a bad CSV row) propagates unchanged; a failed write (a full disk)
    becomes a :class:`PublishError` naming the table.
    """
    root = local_root(uri)
    if root is None:
        raise PublishError(f"copy_parts writes local tables only, not {uri}")
    from headwater.sqltext import ident

    run = uuid.uuid4().hex
    staging = os.path.join(root, STAGING_PREFIX + run)
    file_schema = pa.schema([f for f in schema if f.name not in partition_by])
    try:
        _sweep_staging(root)
        os.makedirs(staging)
        options = f"FILE_SIZE_BYTES {int(target_file_bytes)}"
        if row_group_rows:
            options += f", ROW_GROUP_SIZE {int(row_group_rows)}"
        if partition_by:
            options += f", PARTITION_BY ({', '.join(ident(c) for c in partition_by)})"
        files = _copy(con, query, uri, staging, options)
        return [_place(root, staging, row, file_schema, partition_by,
                       f"{prefix}part-{n:05d}-{run}-c000")
                for n, row in enumerate(r for r in files if int(r[1]))]
    except OSError as exc:
        raise PublishError(f"writing {uri} failed: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sweep_staging(root: str) -> None:
    """Remove staging folders of COPYs that never finished (a publisher killed mid-write).

    Called under the dataset's turn, so no other publish of this table is writing one; a
    publisher that lost its turn and still writes only loses files no commit can list
    (a file is committed only after it left the staging folder).
    """
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(root):
            if entry.name.startswith(STAGING_PREFIX) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)


def _copy(con: Any, query: str, uri: str, staging: str,
          options: str) -> list[tuple[Any, ...]]:
    """Run the COPY; (file name, rows, ...) per file written (RETURN_STATS)."""
    import duckdb

    from headwater.sqltext import text

    try:
        rows: list[tuple[Any, ...]] = con.execute(
            f"COPY ({query}) TO {text(staging)} (FORMAT parquet, COMPRESSION snappy, "
            f"{options}, RETURN_STATS true)").fetchall()
    except duckdb.Error as exc:
        if staging not in str(exc):
            raise  # the rows' own error (a bad source row): the caller reports it as is
        message = str(exc).strip().splitlines()[0].replace(staging, "(staging folder)")
        raise PublishError(f"writing {uri} failed: {message}") from None
    return rows


def _place(root: str, staging: str, row: tuple[Any, ...], schema: pa.Schema,
           partition_by: Sequence[str], stem: str) -> Part:
    """Move one staged file to its final name (in its partition's hive folder) under the
    table root and describe it; ``row`` is the COPY's RETURN_STATS row of the file."""
    written = row[0] if os.path.isabs(row[0]) else os.path.join(staging, row[0])
    keys = dict(row[5] or {})
    values = {c: keys.get(c) for c in partition_by}
    rel_dir = _folder(partition_by, values)
    name = f"{stem}.snappy.parquet"
    rel = f"{rel_dir}/{name}" if rel_dir else name
    metadata = pq.read_metadata(written)
    size = os.path.getsize(written)
    os.makedirs(os.path.join(root, rel_dir), exist_ok=True)
    os.replace(written, os.path.join(root, rel))
    return Part(path=rel, size=size, rows=int(metadata.num_rows), partition_values=values,
                stats=file_stats_json(metadata, schema),
                modification_time=int(time.time() * 1000))


def copy_partitionable(t: pa.DataType) -> bool:
    """Whether DuckDB's text of a partition value of type ``t`` is the Delta log's
    (:func:`partition_value`): strings, integers, booleans and dates; a timestamp's or a
    float's text differs, so those tables keep the Arrow path."""
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t)
                or pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_date32(t))


# ------------------------------------------------------------------------ Delta stats


def file_stats_json(metadata: pq.FileMetaData, schema: pa.Schema) -> str:
    """A file's Delta stats JSON from its Parquet footer, as delta-rs writes it.

    delta-rs reads the same footer statistics: leaf columns of structs nest, binary and
    list/map columns are left out, an all-null (or all-NaN) column has a null count but no
    min/max, timestamps are cut to milliseconds.
    """
    leaves = _leaf_stats(metadata)
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, Any] = {}
    for f in schema:
        _field_stats(f, (f.name,), leaves, mins, maxs, nulls)
    return json.dumps({"numRecords": metadata.num_rows, "minValues": mins,
                       "maxValues": maxs, "nullCount": nulls}, separators=(",", ":"))


def _leaf_stats(metadata: pq.FileMetaData) -> dict[str, tuple[Any, Any, int, bool]]:
    """(min, max, nulls, has_min_max) per leaf path, combined over the row groups."""
    out: dict[str, tuple[Any, Any, int, bool]] = {}
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            stats = column.statistics
            path = column.path_in_schema
            lo, hi, n, has = out.get(path, (None, None, 0, True))
            if stats is None:
                out[path] = (None, None, n, False)
                continue
            n += int(stats.null_count or 0)
            if stats.has_min_max and stats.min is not None:
                lo = stats.min if lo is None or stats.min < lo else lo
                hi = stats.max if hi is None or stats.max > hi else hi
            out[path] = (lo, hi, n, has)
    return out


def _field_stats(f: pa.Field, path: tuple[str, ...],
                 leaves: Mapping[str, tuple[Any, Any, int, bool]], mins: dict[str, Any],
                 maxs: dict[str, Any], nulls: dict[str, Any]) -> None:
    if pa.types.is_struct(f.type):
        sub = ({}, {}, {})  # type: tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
        for child in f.type:
            _field_stats(child, (*path, child.name), leaves, *sub)
        for target, found in zip((mins, maxs, nulls), sub, strict=True):
            target[f.name] = found  # delta-rs keeps an empty object for an all-null struct
        return
    if _skipped(f.type):
        return
    leaf = leaves.get(".".join(path))
    if leaf is None:
        return
    lo, hi, n, has = leaf
    nulls[f.name] = n
    if has and lo is not None and hi is not None and not _nan(lo) and not _nan(hi):
        mins[f.name] = _json_value(lo, f.type)
        maxs[f.name] = _json_value(hi, f.type)


def _skipped(t: pa.DataType) -> bool:
    return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t)
                or pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t)
                or pa.types.is_list(t) or pa.types.is_large_list(t)
                or pa.types.is_map(t) or pa.types.is_list_view(t)
                or pa.types.is_large_list_view(t) or pa.types.is_fixed_size_list(t))


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _json_value(value: Any, t: pa.DataType) -> Any:
    """A footer min/max in the form delta-rs puts it in the stats JSON."""
    if isinstance(value, dt.datetime):
        return _timestamp_text(value, t)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _timestamp_text(value: dt.datetime, t: pa.DataType) -> str:
    # delta-rs prints a fraction whenever there is one, cut to milliseconds (".000")
    fraction = f".{value.microsecond // 1000:03d}" if value.microsecond else ""
    if isinstance(t, pa.TimestampType) and t.tz is not None:
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"
    return value.strftime("%Y-%m-%d %H:%M:%S") + fraction


# --------------------------------------------------------------------------- committing


def _add_actions(parts: Sequence[Part]) -> list[Any]:
    from deltalake.transaction import AddAction

    return [AddAction(p.path, p.size, dict(p.partition_values), p.modification_time, True,
                      p.stats) for p in parts]


@dataclass(frozen=True)
class Plan:
    """How one write lays out its files: the schema they hold and the partition columns.

    Both halves (:func:`write_parts` and :func:`commit_parts`) must use the same plan;
    :func:`plan_write` makes it from the table as it is (``None`` if it does not exist).
    """

    schema: pa.Schema
    partition_by: tuple[str, ...]


def plan_write(table: Any, data_schema: pa.Schema, *, mode: str, evolve: bool,
               partition_by: Sequence[str] = ()) -> Plan:
    """The files' schema and partitioning, as ``write_deltalake`` with ``schema_mode``
    ``merge`` (append) or ``overwrite`` (overwrite) would have them.

    An append keeps the table's column types (rows are cast to them) and adds new columns
    at the end; an overwrite with ``evolve`` takes the rows' schema. Without ``evolve`` the
    rows must fit the table's columns. No partitioning given means the table's own.
    """
    data = delta_arrow_schema(data_schema)
    if table is None:
        return Plan(data, tuple(partition_by))
    current = delta.arrow_schema(table)
    existing = tuple(delta.partition_columns(table))
    wanted = tuple(partition_by) or existing
    if mode != "overwrite" and wanted != existing:
        raise PublishError(f"the dataset is partitioned by {list(existing)}, not "
                           f"{list(wanted)}; overwrite it to change its partitioning")
    if mode == "overwrite" and evolve:
        return Plan(data, wanted)
    new = [f for f in data if f.name not in current.names]
    if new and not evolve:
        raise PublishError(
            f"the rows have column(s) {[f.name for f in new]} the dataset does not; allow "
            "schema evolution (evolve: true) or leave them out in the step's SQL")
    if mode == "overwrite" and not evolve and data.names != current.names:
        raise PublishError(
            f"the rows' columns {data.names} differ from the dataset's {current.names}; "
            "allow schema evolution (evolve: true) to replace the schema")
    return Plan(pa.schema([*current, *new]), wanted)


def commit_parts(uri: str, parts: Sequence[Part], *, schema: pa.Schema, mode: str,
                 app: str, metadata: Mapping[str, Any], partition_by: Sequence[str] = (),
                 evolve: bool = True, storage_options: Mapping[str, str] | None = None,
                 table: Any = None) -> int:
    """One Delta commit of ``parts`` (append or overwrite) carrying the run's app
    transaction; returns its Delta version (:func:`delta.committed_version`).

    ``schema`` and ``partition_by`` are the ones the files were written with (see
    :func:`plan_write`; no partitioning given means the table's own). A table that does not
    exist yet is created by this commit. An append that adds columns first commits the new
    columns alone (``ADD COLUMN``, no rows: delta-rs's write transaction cannot change the
    schema of an append), so a crash between the two leaves only empty new columns.
    ``table``, a handle loaded under the dataset's turn, saves loading the log.
    """
    if mode not in ("append", "overwrite"):
        raise PublishError(f"commit_parts writes append or overwrite, not {mode!r}")
    if table is None:
        table = delta.open_table(uri, storage_options=storage_options)
    props = delta.commit_properties(app, metadata, {
        "num_added_files": len(parts), "num_added_rows": sum(p.rows for p in parts)})
    try:
        if table is None:
            _create(uri, parts, schema, partition_by, storage_options, props)
        else:
            _transact(table, parts, schema, mode, partition_by, evolve, props)
    except PublishError:
        raise
    except Exception as exc:
        raise PublishError(f"committing to {uri} failed: {_first_line(exc)}") from exc
    return delta.committed_version(uri, metadata, storage_options, table=table)


def _create(uri: str, parts: Sequence[Part], schema: pa.Schema, partition_by: Sequence[str],
            storage_options: Mapping[str, str] | None, props: Any) -> None:
    from deltalake import Schema as DeltaSchema
    from deltalake.transaction import create_table_with_add_actions

    options = delta._options(uri, storage_options)
    create_table_with_add_actions(
        uri, DeltaSchema.from_arrow(schema), _add_actions(parts), mode="error",
        partition_by=list(partition_by) or None, storage_options=options,
        commit_properties=props)


def _transact(table: Any, parts: Sequence[Part], schema: pa.Schema, mode: str,
              partition_by: Sequence[str], evolve: bool, props: Any) -> None:
    plan = plan_write(table, schema, mode=mode, evolve=evolve, partition_by=partition_by)
    if mode == "append":
        _add_columns(table, plan.schema)
    table.create_write_transaction(_add_actions(parts), mode, plan.schema,
                                   partition_by=list(plan.partition_by) or None,
                                   commit_properties=props)


def _add_columns(table: Any, schema: pa.Schema) -> None:
    from deltalake import Schema as DeltaSchema

    current = delta.arrow_schema(table).names
    new = [f for f in schema if f.name not in current]
    if new:
        table.alter.add_columns(DeltaSchema.from_arrow(pa.schema(new)).fields)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
