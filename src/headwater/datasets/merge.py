"""A merge (upsert on a key) that rewrites only the files holding a matched key.

delta-rs's ``MERGE`` rewrites every file that holds a matched row, and prunes files only
by the source's key range: one update of an old key next to a thousand inserts of new ones
spans the whole table and rewrites all of it. Here the files to rewrite are found exactly
instead, in two passes that read no more than the key columns:

1. the per-file min/max of the key that the Delta log already holds rules out files no
   source key falls into (free, no read);
2. DuckDB joins the remaining files' key columns (``filename``) to the source keys.

Only the matched files are rewritten, without their matched rows, together with the whole
source, by key into files of a bounded size (``delta.targetFileSize``, else
:data:`TARGET_FILE_BYTES`): over time a table that takes merges of recent keys (CDC,
upserts of the newest rows) stays clustered, and a merge rewrites the tail, not the table.
Every removed and added file lands in ONE Delta commit carrying the run's app transaction
and commit metadata, so exactly-once and atomicity are those of :func:`delta.merge`. The
commit is made on the snapshot the plan was read from or fails (no delta-rs retry onto a
newer version, which would not notice that a concurrent OPTIMIZE removed the very files
this one rewrote); the merge then plans again on the new snapshot.

Deletion vectors would avoid even the tail rewrite, but deltalake 1.6.6 writes none (its
``AddAction`` has no descriptor) and headwater reads a version's Parquet files directly,
so a deletion vector would be silently ignored by every reader.

Where this path cannot reproduce delta-rs exactly, :func:`delta.merge` runs delta-rs's
``MERGE`` as before: partitioned or remote tables, tables with writer features (see
:data:`PLAIN_FEATURES`), a source whose columns or types differ from the table's (schema
evolution, casts), or duplicate keys in the source (delta-rs decides which fail).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import decimal
import json
import math
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc

from headwater.datasets import delta
from headwater.exceptions import PublishError
from headwater.sqltext import ident, text

TARGET_FILE_BYTES = 8 * 1024 * 1024
"""Parquet bytes a rewritten file aims at when the table sets no ``delta.targetFileSize``:
small enough that a merge of recent keys rewrites ~10 % of a 2M-row table (~75 MB), large
enough that a reader opens ~120 files per GB, not thousands."""
STRING_STAT_CHARS = 32
"""delta-rs keeps this many characters of a string min/max (the max rounded up)."""
_SRC = "__hw_merge_src"
SORTED_REWRITE_FILES = 4
"""Up to this many files' rows are rewritten sorted by key; past it (a merge whose keys
span the table) the kept rows stream in file order: a sort of everything blocked the
writers for most of a full rewrite (0.8 s of 2.2 s at 2M rows)."""
WRITERS = 2
"""Files written side by side (each thread holds one file's rows, ~8 MiB compressed)."""
ATTEMPTS = 5
"""Plans a merge makes when other writers keep committing between its read and its commit."""
PLAIN_FEATURES = frozenset({"timestampNtz"})
"""Writer features that only widen the types a file may hold: a plain Parquet file with
an add action still satisfies them. Any other (column mapping, deletion vectors, CDF,
check constraints, generated or identity columns, row tracking, append-only) leaves the
merge to delta-rs."""


@dataclass
class Plan:
    """The files one merge reads and rewrites, and the counts its metrics report."""

    files: int = 0
    scanned: list[str] = field(default_factory=list)
    touched: dict[str, int] = field(default_factory=dict)
    """Log path → size in bytes of every file holding a matched key (to remove)."""
    touched_rows: int = 0
    updated: int = 0
    source_rows: int = 0


def eligible(table: Any, source: pa.Schema, key: Sequence[str]) -> bool:
    """Whether this merge can run here exactly as delta-rs would (see the module doc)."""
    root = delta.table_root(table)
    if "://" in root or delta.location_of(root) is not None or delta.partition_columns(table):
        return False
    protocol = table.protocol()
    if protocol.writer_features is None:  # legacy versions: 3+ add constraints, CDF, ...
        if protocol.min_writer_version > 2:
            return False
    elif protocol.min_writer_version > 7 or set(protocol.writer_features) - PLAIN_FEATURES:
        return False
    if any(k.startswith("delta.constraints.") for k in table.metadata().configuration):
        return False
    target = delta.arrow_schema(table)
    if not key or any(k not in target.names for k in key):
        return False
    if sorted(source.names) != sorted(target.names):
        return False
    return all(_same_type(source.field(f.name).type, f.type) for f in target)


_LAYOUTS = (
    (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view),
    (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view),
)


def _same_type(source: pa.DataType, target: pa.DataType) -> bool:
    """Equal, or text/bytes in another Arrow layout (DuckDB hands out ``string``, delta-rs
    may declare ``large_string`` or a view): the values are the same either way."""
    if source == target:
        return True
    return any(any(k(source) for k in kinds) and any(k(target) for k in kinds)
               for kinds in _LAYOUTS)


def run(table: Any, data: pa.RecordBatchReader, *, key: Sequence[str], app: str,
        metadata: Mapping[str, Any]) -> dict[str, Any] | pa.RecordBatchReader:
    """Merge ``data`` into ``table`` in one commit; returns delta-rs-shaped metrics.

    The source is read into DuckDB first (it may be larger than memory: DuckDB spills),
    which lets a merge that lost a race to another writer plan again on the new snapshot.
    If the source holds a key twice, or the table changed into one this module does not
    write, the source comes back as a reader for delta-rs's ``MERGE`` instead.
    """
    import duckdb
    from deltalake.exceptions import CommitFailedError

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hw-merge-") as spill:
        con = duckdb.connect(config={"temp_directory": spill, **_duckdb_limits()})
        try:
            con.register("__hw_merge_stream", data)
            con.execute(f"CREATE TEMP TABLE {_SRC} AS SELECT * FROM __hw_merge_stream")
            con.unregister("__hw_merge_stream")
            for _ in range(ATTEMPTS):
                if _duplicate_keys(con, key) or not eligible(table, data.schema, key):
                    return con.table(_SRC).to_arrow_table().to_reader()
                try:
                    return _merge(con, table, key, app, metadata, started)
                except CommitFailedError:  # another writer committed since the snapshot
                    table.update_incremental()
            raise PublishError(f"other writers kept committing to {table.table_uri} while "
                               f"merging ({ATTEMPTS} attempts); run the publish again")
        finally:
            con.close()


def _duckdb_limits() -> dict[str, Any]:
    """The bounds a run's DuckDB has (engine/duckdb_pool.py): the rewrite sorts whole
    files and spills past the memory limit instead of growing the process."""
    limits: dict[str, Any] = {
        "memory_limit": os.environ.get("HEADWATER_DUCKDB_MEMORY", "512MB")}
    threads = os.environ.get("HEADWATER_DUCKDB_THREADS", "").strip()
    if threads.isdigit() and int(threads) > 0:
        limits["threads"] = int(threads)
    return limits


def _duplicate_keys(con: Any, key: Sequence[str]) -> bool:
    cols = ", ".join(ident(k) for k in key)
    not_null = " AND ".join(f"{ident(k)} IS NOT NULL" for k in key)
    found = con.execute(f"SELECT 1 FROM {_SRC} WHERE {not_null} GROUP BY {cols} "
                        f"HAVING count(*) > 1 LIMIT 1").fetchall()
    return bool(found)


def _merge(con: Any, table: Any, key: Sequence[str], app: str,
           metadata: Mapping[str, Any], started: float) -> dict[str, Any]:
    root = delta.table_root(table)
    actions = delta.add_actions(table)
    plan = _plan(con, root, actions, key)
    scanned_at = time.perf_counter()
    target = delta.arrow_schema(table)
    rows_per_file = _rows_per_file(table, actions)
    written: list[Any] = []
    try:
        written = _write(con, root, target, key, plan, rows_per_file)
        copied = sum(a.rows for a in written) - plan.source_rows
        metrics = _metrics(plan, written, copied, started, scanned_at)
        _crash_point("merge:before-commit")
        _commit(table, plan, written, target, app, {**metadata, "merge": _counts(metrics)})
    except BaseException:
        for file in written:  # never committed: leave no stray file behind
            _remove_quietly(os.path.join(root, file.action.path))
        raise
    return metrics


def _plan(con: Any, root: str, actions: pa.Table, key: Sequence[str]) -> Plan:
    """The files that hold a source key: stats rule most out, DuckDB confirms the rest."""
    plan = Plan(files=actions.num_rows,
                source_rows=int(con.execute(f"SELECT count(*) FROM {_SRC}").fetchone()[0]))
    if not actions.num_rows:
        return plan
    plan.scanned = _candidates(con, actions, key)
    if not plan.scanned:
        return plan
    sizes = dict(zip(actions["path"].to_pylist(), actions["size_bytes"].to_pylist(),
                     strict=True))
    counts = dict(zip(actions["path"].to_pylist(), actions["num_records"].to_pylist(),
                      strict=True))
    paths = {os.path.join(root, unquote(p)): p for p in plan.scanned}
    listing = ", ".join(text(p) for p in paths)
    on = " AND ".join(f"t.{ident(k)} = s.{ident(k)}" for k in key)
    rows = con.execute(
        f"SELECT t.__hw_file, count(*) FROM read_parquet([{listing}], union_by_name=true, "
        f"filename='__hw_file') t JOIN {_SRC} s ON {on} GROUP BY ALL").fetchall()
    for name, count in rows:
        path = paths[str(name)]
        plan.touched[path] = int(sizes[path])
        plan.touched_rows += int(counts[path] or 0)
        plan.updated += int(count)
    return plan


def _candidates(con: Any, actions: pa.Table, key: Sequence[str]) -> list[str]:
    """Log paths of the files whose per-column key range holds a source key value.

    A file lacking a key's statistics, or a key type whose statistics delta-rs rounds
    (timestamps to the millisecond, decimals through floats, long strings), is always a
    candidate: a file wrongly ruled out would keep its row next to the updated one.
    """
    paths: list[str] = actions["path"].to_pylist()
    keep = [True] * len(paths)
    for k in key:
        lows, highs = f"min.{k}", f"max.{k}"
        if lows not in actions.column_names or highs not in actions.column_names:
            continue
        if not _prunable(actions.schema.field(lows).type):
            continue
        values = [r[0] for r in con.execute(
            f"SELECT DISTINCT {ident(k)} FROM {_SRC} WHERE {ident(k)} IS NOT NULL "
            f"ORDER BY 1").fetchall()]
        for i, (lo, hi) in enumerate(zip(actions[lows].to_pylist(),
                                         actions[highs].to_pylist(), strict=True)):
            if keep[i] and lo is not None and hi is not None and not _cut(hi):
                at = bisect.bisect_left(values, lo)
                keep[i] = at < len(values) and values[at] <= hi
    return [p for p, kept in zip(paths, keep, strict=True) if kept]


def _cut(high: Any) -> bool:
    """A string max that may have been cut to its first characters: writers round it
    up differently (or not at all), so it bounds nothing for sure."""
    return isinstance(high, str) and len(high) >= STRING_STAT_CHARS


def _prunable(dtype: pa.DataType) -> bool:
    return bool(pa.types.is_integer(dtype) or pa.types.is_date(dtype)
                or pa.types.is_string(dtype) or pa.types.is_large_string(dtype))


def _rows_per_file(table: Any, actions: pa.Table) -> int:
    """Rows a rewritten file holds to reach the target bytes, from the table's own ratio."""
    configured = table.metadata().configuration.get("delta.targetFileSize")
    target = int(configured) if configured else TARGET_FILE_BYTES
    rows = int(pc.sum(actions["num_records"]).as_py() or 0) if actions.num_rows else 0
    size = int(pc.sum(actions["size_bytes"]).as_py() or 0) if actions.num_rows else 0
    if not rows or not size:
        return 1_000_000
    return max(1_000, int(target * rows / size))


@dataclass
class Written:
    """One new data file: its add action and row count."""

    action: Any
    rows: int


def _write(con: Any, root: str, target: pa.Schema, key: Sequence[str], plan: Plan,
           rows_per_file: int) -> list[Written]:
    """Kept rows of the touched files plus the whole source, by key, into bounded files."""
    batches = _rewritten(con, root, target, key, plan, min(rows_per_file, 122_880),
                         sort_all=plan.touched_rows <= SORTED_REWRITE_FILES * rows_per_file)
    futures: list[Future[Written]] = []
    try:
        # pyarrow encodes with the GIL released: files are written side by side while
        # DuckDB sorts the next ones, at most WRITERS files (each bounded) held at once
        with ThreadPoolExecutor(WRITERS, thread_name_prefix="hw-merge-write") as pool:
            for group in _chunks(batches, rows_per_file):
                futures.append(pool.submit(_write_file, root, target, group))
                while sum(not f.done() for f in futures) > WRITERS:
                    wait(futures, return_when=FIRST_COMPLETED)
        return [f.result() for f in futures]
    except BaseException:
        for f in futures:  # every file is written or failed by now: remove those written
            if not f.cancelled() and f.exception() is None:
                _remove_quietly(os.path.join(root, f.result().action.path))
        raise


def _rewritten(con: Any, root: str, target: pa.Schema, key: Sequence[str], plan: Plan,
               batch_rows: int, *, sort_all: bool) -> Iterator[pa.RecordBatch]:
    """The rows of the new files: a few touched files are sorted by key together with the
    source (the tail of a table that takes recent keys stays clustered); many (keys spread
    over the whole table) are streamed in file order, which keeps each file's key range,
    and the sorted source follows, so no sort of the whole table holds up the writers."""
    cols = ", ".join(ident(f.name) for f in target)
    order = ", ".join(ident(k) for k in key)
    source = f"SELECT {cols} FROM {_SRC}"
    queries = [f"{source} ORDER BY {order}"]
    if plan.touched:
        listing = ", ".join(text(os.path.join(root, unquote(p))) for p in plan.touched)
        on = " AND ".join(f"t.{ident(k)} = s.{ident(k)}" for k in key)
        kept = (f"SELECT {', '.join('t.' + ident(f.name) for f in target)} FROM "
                f"read_parquet([{listing}], union_by_name=true) t ANTI JOIN {_SRC} s ON {on}")
        queries = ([f"SELECT * FROM ({kept} UNION ALL {source}) ORDER BY {order}"] if sort_all
                   else [kept, queries[0]])
    for query in queries:
        yield from con.sql(query).to_arrow_reader(batch_size=batch_rows)


def _chunks(reader: Iterable[pa.RecordBatch], rows: int) -> Iterator[list[pa.RecordBatch]]:
    """Batches grouped so that each group holds ``rows`` rows (the last one fewer)."""
    group: list[pa.RecordBatch] = []
    held = 0
    for batch in reader:
        while batch.num_rows:
            take = batch.slice(0, rows - held)
            group.append(take)
            held += take.num_rows
            batch = batch.slice(take.num_rows)
            if held == rows:
                yield group
                group, held = [], 0
    if held:
        yield group


def _write_file(root: str, target: pa.Schema, batches: list[pa.RecordBatch]) -> Written:
    import pyarrow.parquet as pq
    from deltalake.transaction import AddAction

    name = f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
    path = os.path.join(root, name)
    stats = _Stats(target)
    try:
        with pq.ParquetWriter(path, target, compression="snappy",
                              use_dictionary=_dictionary_columns(target)) as writer:
            for batch in batches:
                cast = _cast(batch, target)
                stats.add(cast)
                writer.write_batch(cast)
    except BaseException:
        _remove_quietly(path)
        raise
    action = AddAction(name, os.path.getsize(path), {}, int(time.time() * 1000), True,
                       json.dumps(stats.document()))
    return Written(action, stats.rows)


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode text and bytes only: tried on numbers it mostly falls back to
    plain and costs a third of the write (as delta-rs's files come out, near enough)."""
    kinds = [k for group in _LAYOUTS for k in group]
    return [f.name for f in schema if any(k(f.type) for k in kinds)]


def _cast(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """The batch in the table's exact Arrow types; a NULL in a NOT NULL column fails here,
    as delta-rs's writer would fail it (pyarrow itself would write it)."""
    for f, column in zip(target, batch.columns, strict=True):
        if not f.nullable and column.null_count:
            raise PublishError(f"column {f.name!r} is NOT NULL in the dataset but the merge "
                               f"gives {column.null_count} row(s) a NULL there")
    if batch.schema.equals(target):
        return batch
    arrays = [batch.column(i).cast(f.type) for i, f in enumerate(target)]
    return pa.RecordBatch.from_arrays(arrays, schema=target)


class _Stats:
    """A Delta ``stats`` document (numRecords, minValues, maxValues, nullCount) built as
    batches are written, in the encoding delta-rs writes and reads back."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.rows = 0
        self.nulls: dict[str, Any] = {}
        self.low: dict[str, Any] = {}
        self.high: dict[str, Any] = {}

    def add(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        for f, column in zip(self.schema, batch.columns, strict=True):
            self._column((f.name,), f.type, column)

    def _column(self, path: tuple[str, ...], dtype: pa.DataType, array: pa.Array) -> None:
        if pa.types.is_struct(dtype):
            for i in range(dtype.num_fields):
                child = dtype.field(i)
                self._column((*path, child.name), child.type, array.flatten()[i])
            return
        _bump(self.nulls, path, array.null_count)
        if not _has_bounds(dtype) or array.null_count == len(array):
            return
        bounds = pc.min_max(array)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if _is_nan(low) or _is_nan(high):
            return
        _bound(self.low, path, low, min)
        _bound(self.high, path, high, max)

    def document(self) -> dict[str, Any]:
        return {"numRecords": self.rows,
                "minValues": _encoded(self.low, high=False),
                "maxValues": _encoded(self.high, high=True),
                "nullCount": self.nulls}


def _has_bounds(dtype: pa.DataType) -> bool:
    return bool(pa.types.is_integer(dtype) or pa.types.is_floating(dtype)
                or pa.types.is_decimal(dtype) or pa.types.is_boolean(dtype)
                or pa.types.is_date(dtype) or pa.types.is_timestamp(dtype)
                or pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
                or pa.types.is_string_view(dtype))


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _leaf(doc: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for part in path[:-1]:
        doc = doc.setdefault(part, {})
    return doc


def _bump(doc: dict[str, Any], path: tuple[str, ...], count: int) -> None:
    leaf = _leaf(doc, path)
    leaf[path[-1]] = leaf.get(path[-1], 0) + count


def _bound(doc: dict[str, Any], path: tuple[str, ...], value: Any, pick: Any) -> None:
    leaf = _leaf(doc, path)
    leaf[path[-1]] = value if path[-1] not in leaf else pick(leaf[path[-1]], value)


def _encoded(doc: dict[str, Any], *, high: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in doc.items():
        if isinstance(value, dict):
            out[name] = _encoded(value, high=high)
        else:
            encoded = _stat_value(value, high=high)
            if encoded is not None:
                out[name] = encoded
    return out


def _stat_value(value: Any, *, high: bool) -> Any:
    """One min or max as delta-rs writes it: timestamps to the millisecond (naive ones
    with a space, zoned ones in UTC with a ``Z``), decimals as numbers, long strings cut
    to :data:`STRING_STAT_CHARS` (a cut max rounded up so it still bounds the values)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            utc = value.astimezone(dt.UTC).replace(tzinfo=None)
            return utc.isoformat(timespec="milliseconds") + "Z"
        return value.isoformat(sep=" ", timespec="milliseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, str) and len(value) > STRING_STAT_CHARS:
        cut = value[:STRING_STAT_CHARS]
        if not high:
            return cut
        if ord(cut[-1]) >= 0x10FFFF:
            return None  # no character above it: leave the max unknown
        return cut[:-1] + chr(ord(cut[-1]) + 1)
    return value


def _commit(table: Any, plan: Plan, written: Sequence[Written], schema: pa.Schema,
            app: str, metadata: Mapping[str, Any]) -> None:
    from deltalake.transaction import RemoveAction

    now = int(time.time() * 1000)
    removes = [RemoveAction(path, True, now, size, {}) for path, size in plan.touched.items()]
    # no retries: the commit must be the snapshot's next version or fail. delta-rs's
    # retry would land it after another writer's commit without noticing that one had
    # removed (compacted) or changed the very files planned from (deltalake 1.6.6)
    table.create_write_transaction(
        [*removes, *(w.action for w in written)], "append", table.schema(),
        commit_properties=delta.commit_properties(app, metadata, retries=0))


def _metrics(plan: Plan, written: Sequence[Written], copied: int, started: float,
             scanned_at: float) -> dict[str, Any]:
    """The counts delta-rs's ``MERGE`` reports, under its names (``notes.merge``)."""
    now = time.perf_counter()
    inserted = plan.source_rows - plan.updated
    return {
        "num_source_rows": plan.source_rows,
        "num_target_rows_inserted": inserted,
        "num_target_rows_updated": plan.updated,
        "num_target_rows_deleted": 0,
        "num_target_rows_copied": copied,
        "num_output_rows": copied + plan.source_rows,
        "num_target_files_scanned": len(plan.scanned),
        "num_target_files_skipped_during_scan": plan.files - len(plan.scanned),
        "num_target_files_added": len(written),
        "num_target_files_removed": len(plan.touched),
        "execution_time_ms": int((now - started) * 1000),
        "scan_time_ms": int((scanned_at - started) * 1000),
        "rewrite_time_ms": int((now - scanned_at) * 1000),
    }


def _counts(metrics: Mapping[str, Any]) -> dict[str, int]:
    """What crash repair needs to record the version as the run would have."""
    return {k: int(metrics[k]) for k in ("num_target_rows_inserted", "num_target_rows_updated",
                                         "num_target_rows_deleted")}


def _crash_point(name: str) -> None:
    """Die here, as kill -9 would, if ``HEADWATER_CRASH_AT`` names this point (tests)."""
    if os.environ.get("HEADWATER_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
