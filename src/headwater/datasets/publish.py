"""Commit rows as one new dataset version and record it: the heart of the guarantees.

Order of work for one publish: repair the store from the Delta log (a crash may have
fallen between a commit and its record), commit quarantined rows, commit the data (one
Delta commit, idempotent per run and step), then record the version together with the
incremental state that produced it in one store transaction. Each piece is safe to repeat,
so a retried, rerun or resumed publish neither loses nor duplicates a row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from headwater.datasets import delta, parts
from headwater.datasets.stream_stats import StreamStats
from headwater.exceptions import PublishError
from headwater.sqltext import ident as quote
from headwater.store import runlock
from headwater.store.store import Store

if TYPE_CHECKING:
    from headwater.datasets.parts import Part, Plan

log = logging.getLogger("headwater.datasets.publish")

LEASE_SECONDS = float(os.environ.get("HEADWATER_LEASE_SECONDS", "30"))
"""A publisher silent (no heartbeat) this long has lost its turn on the dataset."""

# DuckDB types Delta cannot store, and what they become on the way in.
_NORMALISE = {
    "UTINYINT": "SMALLINT",
    "USMALLINT": "INTEGER",
    "UINTEGER": "BIGINT",
    "UBIGINT": "DECIMAL(20,0)",
    "HUGEINT": "DECIMAL(38,0)",
    "UHUGEINT": "DECIMAL(38,0)",
    "TIME": "VARCHAR",
    "TIME WITH TIME ZONE": "VARCHAR",
    "INTERVAL": "VARCHAR",
    "UUID": "VARCHAR",
    "BIT": "VARCHAR",
    '"NULL"': "VARCHAR",
    "NULL": "VARCHAR",
    "TIMESTAMP_NS": "TIMESTAMP",
    "TIMESTAMP_MS": "TIMESTAMP",
    "TIMESTAMP_S": "TIMESTAMP",
}


def normalised_select(con: Any, relation: str) -> str:
    """``SELECT`` over ``relation`` casting columns Delta cannot hold to ones it can."""
    rel = con.sql(relation)
    parts = []
    changed = False
    for name, dtype in zip(rel.columns, rel.types, strict=True):
        text = str(dtype)
        target = _NORMALISE.get(text)
        if target is None and text.startswith("ENUM"):
            target = "VARCHAR"
        if target is not None:
            changed = True
            parts.append(f"CAST({quote(name)} AS {target}) AS {quote(name)}")
        else:
            parts.append(quote(name))
    if not changed:
        return relation
    return f"SELECT {', '.join(parts)} FROM ({relation})"


@dataclass
class VersionFacts:
    """What a dataset version records besides its rows (SPEC §6)."""

    run_id: str
    pipeline: str
    step_id: str
    code_version: str
    trigger: str
    mode: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    key: list[str] = field(default_factory=list)
    rejected: dict[str, Any] | None = None
    """Quarantined rows this commit's run commits next (step, spill paths), for repair."""

    def metadata(self) -> dict[str, Any]:
        meta = {
            "run_id": self.run_id, "pipeline": self.pipeline, "step_id": self.step_id,
            "code_version": self.code_version, "trigger": self.trigger, "mode": self.mode,
            "inputs": self.inputs, "sources": self.sources, "state": self.state,
        }
        if self.rejected:
            meta["rejected"] = self.rejected
        return meta


def schema_json(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def reconcile(store: Store, dataset: str, uri: str,
              storage_options: Mapping[str, str] | None = None, *,
              before: int | None = None, table: Any = None) -> int:
    """Record every headwater commit of ``uri`` the store does not know yet (crash repair).

    Commits are matched to runs by their own commit metadata (run, step), read from a fresh
    log, never by position; ``before`` stops at that Delta version. Only the commits after
    the newest recorded one are read (each commit is recorded after every one before it),
    so a publish to a long-lived dataset does not read its whole history. ``table``, a
    handle the caller holds, saves loading the log again (it is moved to the newest
    version). Returns how many versions were recovered.
    """
    newest = store.newest_delta_version(dataset)
    if before is not None and (before == 0 or (newest is not None and newest >= before - 1)):
        return 0  # every commit before ``before`` is recorded (a first publish: none is)
    if table is None:
        table = delta.open_table(uri, storage_options=storage_options)
    if table is None or (newest is not None and newest >= int(table.version())):
        return 0  # the newest commit is recorded, and every one before it was recorded first
    history = _unrecorded_history(uri, storage_options, table, newest)
    entries = {int(h["version"]): h for h in history}
    recovered = 0
    for dv, meta in delta.commit_metadata(history):
        if before is not None and dv >= before:
            break
        if (newest is not None and dv <= newest) or store.has_delta_version(dataset, dv):
            continue
        # a merge headwater wrote itself (datasets/merge.py) carries its counts in its
        # metadata; a delta-rs write or MERGE in the log's operationMetrics
        metrics = meta.get("merge") or entries[dv].get("operationMetrics", {}) or {}
        at_dv = delta.open_table(uri, dv, storage_options)
        store.ensure_dataset(dataset, uri, meta.get("pipeline"))
        _record(store, dataset, dv, meta, at_dv, rows_added=int(
            metrics.get("num_added_rows", metrics.get("num_target_rows_inserted", 0)) or 0),
            rows_removed=int(metrics.get("num_target_rows_deleted", 0) or 0))
        recovered += 1
    return recovered


def _unrecorded_history(uri: str, storage_options: Mapping[str, str] | None, table: Any,
                        newest: int | None) -> list[dict[str, Any]]:
    """The log's commits after ``newest`` (all of them if nothing is recorded yet)."""
    if newest is None:
        return delta.fresh_history(uri, storage_options, table=table)
    history = delta.fresh_history(uri, storage_options, table=table,
                                  limit=max(int(table.version()) - newest, 1))
    if history and int(history[0]["version"]) > newest + 1:  # more landed meanwhile
        history = delta.fresh_history(uri, storage_options, table=table,
                                      limit=int(table.version()) - newest)
    return history


def total_rows(table: Any) -> int:
    try:
        import pyarrow.compute as pc

        total: Any = pc.sum(delta.add_actions(table)["num_records"]).as_py()
        return int(total or 0)
    except Exception:  # noqa: BLE001 - fall back to reading the row count from the files
        rows: int = delta.read_arrow(table, columns=[]).num_rows
        return rows


def _record(store: Store, dataset: str, dv: int, meta: Mapping[str, Any], table: Any, *,
            rows_added: int, rows_removed: int, stats: Any = None, drift: Any = None,
            notes: Any = None) -> dict[str, Any]:
    from headwater.steps.base import split_state_key

    values = {
        "dataset": dataset,
        # dense: one more than the newest version committed before this one (every earlier
        # commit is recorded first), whatever Delta versions maintenance commits took
        "version": store.next_version_number(dataset, dv),
        "delta_version": dv,
        "run_id": meta.get("run_id"),
        "pipeline": meta.get("pipeline"),
        "step_id": meta.get("step_id"),
        "code_version": meta.get("code_version"),
        "trigger": meta.get("trigger"),
        "mode": meta.get("mode", "append"),
        "inputs": list(meta.get("inputs") or []),
        "sources": list(meta.get("sources") or []),
        "rows_added": rows_added,
        "rows_removed": rows_removed,
        "rows_total": total_rows(table),
        "schema": schema_json(delta.arrow_schema(table)),
        "stats": stats,
        "drift": drift,
        "notes": notes,
    }
    if meta.get("rejected"):  # rejected rows this commit owes (see steps/publish.py)
        values["notes"] = {**(notes or {}), "rejected": meta["rejected"]}
    state = {split_state_key(k): v for k, v in (meta.get("state") or {}).items()}
    store.add_version(values, state)
    return store.version_at(dataset, dv) or values


@dataclass
class PublishResult:
    dataset: str
    version: int | None
    rows_added: int
    rows_removed: int
    skipped: str | None = None
    bytes: int = 0
    record: dict[str, Any] | None = None


@dataclass(frozen=True)
class QuerySource:
    """Rows to publish as a DuckDB query: written by DuckDB itself (``COPY``) to a local
    table, or exported as Arrow batches (:meth:`reader`) where that cannot be done."""

    con: Any
    query: str
    batch_rows: int

    def reader(self) -> pa.RecordBatchReader:
        reader: pa.RecordBatchReader = self.con.sql(self.query).to_arrow_reader(
            self.batch_rows)
        return reader

    def schema(self) -> pa.Schema:
        """The rows' Arrow schema (binds the query, reads no rows)."""
        schema: pa.Schema = self.con.sql(
            f"SELECT * FROM ({self.query}) LIMIT 0").to_arrow_table().schema
        return schema


def publish_reader(store: Store, dataset: str, uri: str,
                   reader: pa.RecordBatchReader | QuerySource,
                   facts: VersionFacts, *, partition_by: Sequence[str] = (),
                   evolve: bool = True, storage_options: Mapping[str, str] | None = None,
                   stats_fn: Any = None) -> PublishResult:
    """Commit ``reader`` as one version of ``dataset`` (or find it already committed).

    Publishes to one dataset take turns store-wide (``dataset:NAME`` in
    :mod:`headwater.store.runlock`): delta-rs refuses a second concurrent table creation
    or schema change ("Protocol/Metadata changed since last commit") after the data files
    are written, and a streamed input cannot be read again for a retry. A
    :class:`QuerySource` bound for a local table is written by DuckDB (:func:`_copy_plan`).
    """
    name = f"dataset:{dataset}"
    runlock.acquire(store, name, facts.run_id, lease_seconds=LEASE_SECONDS,
                    on_wait=lambda _holder: None, cancelled=lambda: False)
    try:
        return _publish_reader(store, dataset, uri, reader, facts, partition_by=partition_by,
                               evolve=evolve, storage_options=storage_options,
                               stats_fn=stats_fn)
    finally:
        runlock.release(store, name, facts.run_id)


def _publish_reader(store: Store, dataset: str, uri: str,
                    source: pa.RecordBatchReader | QuerySource,
                    facts: VersionFacts, *, partition_by: Sequence[str],
                    evolve: bool, storage_options: Mapping[str, str] | None,
                    stats_fn: Any) -> PublishResult:
    # one handle of the log serves the repair, the exactly-once check, the commit and the
    # statistics: it is moved forward in place, never loaded a second time
    table = delta.open_table(uri, storage_options=storage_options)
    reconcile(store, dataset, uri, storage_options, table=table)
    app = delta.app_id(facts.run_id, facts.step_id, dataset)
    if delta.already_committed(table, app):
        return PublishResult(dataset, None, 0, 0, skipped="already committed by this run")
    if isinstance(source, QuerySource):
        plan = _copy_plan(source, uri, facts, table, partition_by, evolve)
        if plan is not None:
            try:
                return _publish_copy(store, dataset, uri, source, facts, table, app, plan,
                                     evolve=evolve, storage_options=storage_options,
                                     stats_fn=stats_fn)
            except _CopyOutOfMemory as exc:
                log.warning("publishing %s: DuckDB's COPY ran out of memory (%s); writing "
                            "through the streaming Arrow path instead", dataset, exc)
        source = source.reader()
    counting = delta.CountingReader.peek(source)
    if counting.empty and facts.mode != "overwrite":
        return PublishResult(dataset, None, 0, 0, skipped="no rows to publish")
    # only an overwrite removes rows; other modes need not read the table's row count
    previous_rows = total_rows(table) if table is not None and facts.mode == "overwrite" else 0
    stream = StreamStats() if stats_fn is not None and _streamed(facts, table) else None
    try:
        dv, added, removed, metrics = _commit(uri, counting, table, facts, app,
                                              partition_by, evolve, storage_options,
                                              previous_rows, stream)
    except PublishError:
        if counting.error is not None:
            raise counting.error from None  # the source failed, not Delta
        raise
    return _committed(store, dataset, uri, facts, table, dv, added, removed, metrics,
                      storage_options=storage_options, stats_fn=stats_fn, stream=stream,
                      written_bytes=counting.bytes)


def _committed(store: Store, dataset: str, uri: str, facts: VersionFacts, table: Any,
               dv: int, added: int, removed: int, metrics: dict[str, Any], *,
               storage_options: Mapping[str, str] | None, stats_fn: Any,
               stream: StreamStats | None, written_bytes: int,
               copied: Sequence[parts.Part] = ()) -> PublishResult:
    """Record Delta version ``dv`` just committed, with its statistics (of the rows
    watched by ``stream``, or of the ``copied`` files DuckDB wrote)."""
    store.ensure_dataset(dataset, uri, facts.pipeline, facts.key)  # only once it has a version
    # a concurrent writer may have committed before us and not recorded it yet: record
    # every earlier commit first, so version numbers stay dense and in commit order
    reconcile(store, dataset, uri, storage_options, before=dv)
    if table is None or int(table.version()) != dv:  # created now, or moved past our commit
        table = delta.open_table(uri, dv, storage_options)
    watched: Any = stream
    if copied:
        from headwater.datasets.version_stats import WrittenFiles

        watched = WrittenFiles(table, [p.path for p in copied], added)
    stats = drift = None
    if stats_fn is not None:
        stats, drift = (stats_fn(table, dv, watched) if watched is not None
                        else stats_fn(table, dv))
    notes = {"merge": metrics} if metrics else None
    record = _record(store, dataset, dv, facts.metadata(), table, rows_added=added,
                     rows_removed=removed, stats=stats, drift=drift, notes=notes)
    return PublishResult(dataset, int(record["version"]), added, removed,
                         bytes=written_bytes, record=record)


def copy_enabled() -> bool:
    """Whether a local table is written by DuckDB's ``COPY`` (``HEADWATER_PUBLISH_COPY=0``:
    always the Arrow path, e.g. to compare the two)."""
    return os.environ.get("HEADWATER_PUBLISH_COPY", "1").strip() not in ("0", "false", "no")


def _copy_plan(source: QuerySource, uri: str, facts: VersionFacts, table: Any,
               partition_by: Sequence[str], evolve: bool) -> parts.Plan | None:
    """The write plan if DuckDB can write the files itself, else None (the Arrow path).

    Only a local table (DuckDB's object-store extensions cannot be installed offline), not
    a merge into an existing table, partitioned only by columns whose value text DuckDB
    writes as Delta does (:func:`parts.copy_partitionable`), and only when the rows already
    have the table's columns, in order, with its types: the Arrow path casts batches and
    fills missing columns, a COPY writes the rows as they are. A plan that fails is left
    to the Arrow path, which reports it as it always has.
    """
    if (not copy_enabled() or parts.local_root(uri) is None
            or (facts.mode == "merge" and table is not None)):
        return None
    mode = "append" if facts.mode == "merge" else facts.mode
    try:
        data = source.schema()
        plan = parts.plan_write(table, data, mode=mode, evolve=evolve,
                                partition_by=partition_by)
    except PublishError:
        return None
    delta_form = parts.delta_arrow_schema(data)
    if [(f.name, f.type) for f in delta_form] != [(f.name, f.type) for f in plan.schema]:
        return None
    if not all(parts.copy_partitionable(plan.schema.field(c).type)
               for c in plan.partition_by if c in plan.schema.names):
        return None
    if any(c not in plan.schema.names for c in plan.partition_by):
        return None  # the Arrow path names the missing column
    return plan


class _CopyOutOfMemory(Exception):
    """DuckDB's COPY of a publish ran out of memory before anything was committed."""


def _publish_copy(store: Store, dataset: str, uri: str, source: QuerySource,
                  facts: VersionFacts, table: Any, app: str, plan: parts.Plan, *,
                  evolve: bool, storage_options: Mapping[str, str] | None,
                  stats_fn: Any) -> PublishResult:
    """DuckDB writes the files (:func:`parts.copy_parts`), then the same one commit.

    The written rows' statistics are read from the new files (:mod:`version_stats`: exact
    facts from their add actions, the distribution from a sample past ``SAMPLE_ROWS``)
    instead of the write stream, which this path never turns into Arrow.
    """
    import duckdb

    mode = "append" if facts.mode == "merge" else facts.mode
    previous_rows = total_rows(table) if table is not None and facts.mode == "overwrite" else 0
    try:
        written = parts.copy_parts(source.con, source.query, uri, schema=plan.schema,
                                   partition_by=plan.partition_by)
    except duckdb.OutOfMemoryException as exc:
        # nothing committed, the staging folder removed: the Arrow path streams the same
        # query to Python in batches, which a small memory limit (a sort that spills)
        # bears where COPY's writer, buffering row groups per thread, did not
        raise _CopyOutOfMemory(str(exc).strip().splitlines()[0]) from exc
    added = sum(p.rows for p in written)
    if not added and facts.mode != "overwrite":
        return PublishResult(dataset, None, 0, 0, skipped="no rows to publish")
    dv = parts.commit_parts(uri, written, schema=plan.schema, mode=mode, app=app,
                            metadata=facts.metadata(), partition_by=plan.partition_by,
                            evolve=evolve, storage_options=storage_options, table=table)
    removed = previous_rows if facts.mode == "overwrite" else 0
    return _committed(store, dataset, uri, facts, table, dv, added, removed, {},
                      storage_options=storage_options, stats_fn=stats_fn, stream=None,
                      written_bytes=sum(p.size for p in written), copied=written)


def publish_parts(store: Store, dataset: str, uri: str,
                  write: Callable[[Plan], tuple[list[Part], StreamStats | None]],
                  facts: VersionFacts, *, schema: pa.Schema, partition_by: Sequence[str] = (),
                  evolve: bool = True, storage_options: Mapping[str, str] | None = None,
                  stats_fn: Any = None) -> PublishResult:
    """Commit the Parquet files ``write(plan)`` puts under the table root as one version
    (``write`` returns their descriptions and, optionally, the written rows' statistics).

    The same turn, repair, exactly-once check and record as :func:`publish_reader`, but
    the rows are encoded elsewhere (``write`` fans the work out to a cluster's workers,
    each writing its share of the input straight into the table root): this process
    plans the files' schema and partitioning from the table as it is under the turn
    (``datasets.parts.plan_write``: ``schema`` is the rows'), and commits the files'
    descriptions in one transaction with the run's app id. ``write`` runs after the
    exactly-once check, so a publish already committed writes nothing; files of a task
    that died or was retried are orphans no commit lists. Append and overwrite only.
    """
    name = f"dataset:{dataset}"
    runlock.acquire(store, name, facts.run_id, lease_seconds=LEASE_SECONDS,
                    on_wait=lambda _holder: None, cancelled=lambda: False)
    try:
        return _publish_parts(store, dataset, uri, write, facts, schema=schema,
                              partition_by=partition_by, evolve=evolve,
                              storage_options=storage_options, stats_fn=stats_fn)
    finally:
        runlock.release(store, name, facts.run_id)


def _publish_parts(store: Store, dataset: str, uri: str,
                   write: Callable[[Plan], tuple[list[Part], StreamStats | None]],
                   facts: VersionFacts, *, schema: pa.Schema, partition_by: Sequence[str],
                   evolve: bool, storage_options: Mapping[str, str] | None,
                   stats_fn: Any) -> PublishResult:
    from headwater.datasets.parts import commit_parts, plan_write

    if facts.mode not in ("append", "overwrite"):
        raise PublishError(f"a fanned-out publish appends or overwrites, not {facts.mode!r}")
    table = delta.open_table(uri, storage_options=storage_options)
    reconcile(store, dataset, uri, storage_options, table=table)
    app = delta.app_id(facts.run_id, facts.step_id, dataset)
    if delta.already_committed(table, app):
        return PublishResult(dataset, None, 0, 0, skipped="already committed by this run")
    plan = plan_write(table, schema, mode=facts.mode, evolve=evolve, partition_by=partition_by)
    written, stream = write(plan)
    parts = [part for part in written if part.rows]
    added = sum(part.rows for part in parts)
    if not added and facts.mode != "overwrite":
        return PublishResult(dataset, None, 0, 0, skipped="no rows to publish")
    previous_rows = total_rows(table) if table is not None and facts.mode == "overwrite" else 0
    dv = commit_parts(uri, parts, schema=plan.schema, mode=facts.mode, app=app,
                      metadata=facts.metadata(), partition_by=plan.partition_by,
                      evolve=evolve, storage_options=storage_options, table=table)
    return _committed(store, dataset, uri, facts, table, dv, added,
                      previous_rows if facts.mode == "overwrite" else 0, {},
                      storage_options=storage_options, stats_fn=stats_fn,
                      stream=stream if stats_fn is not None else None,
                      written_bytes=sum(part.size for part in parts))


def _streamed(facts: VersionFacts, table: Any) -> bool:
    """Whether the version's statistics can come from the rows being written: all but a
    merge into an existing table (its version mixes old rows, rewritten ones and new)."""
    return facts.mode != "merge" or table is None


def _commit(uri: str, counting: delta.CountingReader, table: Any, facts: VersionFacts,
            app: str, partition_by: Sequence[str], evolve: bool,
            storage_options: Mapping[str, str] | None, previous_rows: int,
            stream: StreamStats | None = None) -> tuple[int, int, int, dict[str, Any]]:
    """One Delta commit; returns (delta version, rows added, rows removed, metrics)."""
    metrics: dict[str, Any] = {}
    if facts.mode == "merge" and table is not None:
        dv, metrics = delta.merge(uri, counting.reader(), key=facts.key, app=app,
                                  metadata=facts.metadata(), evolve=evolve,
                                  storage_options=storage_options, table=table)
        added = int(metrics.get("num_target_rows_inserted", 0))
        removed = int(metrics.get("num_target_rows_deleted", 0))
    elif facts.mode in ("append", "overwrite", "merge"):
        mode = "append" if facts.mode == "merge" else facts.mode
        dv = _write(uri, counting, table, mode, app, facts.metadata(), partition_by, evolve,
                    storage_options, stream)
        added = counting.rows
        removed = previous_rows if facts.mode == "overwrite" else 0
    else:  # pragma: no cover - the config model forbids it
        raise PublishError(f"unknown publish mode {facts.mode!r}")
    return dv, added, removed, metrics


def _write(uri: str, counting: delta.CountingReader, table: Any, mode: str, app: str,
           metadata: Mapping[str, Any], partition_by: Sequence[str], evolve: bool,
           storage_options: Mapping[str, str] | None, stream: StreamStats | None) -> int:
    """Stream the rows into Parquet parts, then make one Delta commit of them.

    Parts written before a failure are orphans no commit lists; the source's own error
    (a bad CSV row) is kept by ``counting`` and re-raised by the caller.
    """
    plan = parts.plan_write(table, counting.source.schema, mode=mode, evolve=evolve,
                            partition_by=partition_by)
    try:
        written = parts.write_parts(counting.reader(), uri, partition_by=plan.partition_by,
                                    storage_options=storage_options, schema=plan.schema,
                                    on_batch=stream.add if stream is not None else None)
    except PublishError:
        raise
    except Exception as exc:
        if counting.error is not None:
            raise PublishError(str(counting.error)) from exc
        raise PublishError(f"writing {uri} failed: {_first_line(exc)}") from exc
    return parts.commit_parts(uri, written, schema=plan.schema, mode=mode, app=app,
                              metadata=metadata, partition_by=plan.partition_by,
                              evolve=evolve, storage_options=storage_options, table=table)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
