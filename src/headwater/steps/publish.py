"""``publish`` steps: the input rows become one new version of a dataset.

Builds the final query (Delta-safe types, the deterministic ``_split`` column, optional
dedupe), enforces ``schema: freeze``, commits quarantined rows to ``<pipeline>__rejected``
first and then the data, carrying the run's incremental state into the same record.
The commit mechanics live in :mod:`headwater.datasets.publish`.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from headwater.config.models import PublishConfig, PublishStep
from headwater.datasets import delta
from headwater.datasets.publish import (
    PublishResult,
    QuerySource,
    VersionFacts,
    normalised_select,
    publish_reader,
)
from headwater.exceptions import HeadwaterError, PublishError, StepError
from headwater.sqltext import ident as quote
from headwater.sqltext import text as sql_string
from headwater.steps import publish_fan
from headwater.steps.align import Cast, aligned
from headwater.steps.base import (
    REJECTED_COLUMNS,
    StepContext,
    StepOutput,
    register,
    rejected_dataset,
)

if TYPE_CHECKING:
    from headwater.runtime import ProjectRuntime

BATCH_ROWS = 256_000
PENDING_LOOKBACK = 3
"""How many of a dataset's newest versions are checked for rejected rows still owed."""


def _final_query(con: Any, relation: str, config: PublishConfig) -> str:
    query = normalised_select(con, relation)
    if config.dedupe:
        cols = ", ".join(quote(c) for c in config.dedupe)
        query = f"SELECT * FROM ({query}) QUALIFY row_number() OVER (PARTITION BY {cols}) = 1"
    if config.mode == "merge" and config.key:
        query = _one_row_per_key(con, query, config)
    if config.split is not None:
        from headwater.datasets.split import add_split

        query = add_split(query, config.split)
    return query


def _one_row_per_key(con: Any, query: str, config: PublishConfig) -> str:
    """A merge needs one source row per key: newest by ``order_by`` wins, else fail clearly."""
    keys = ", ".join(quote(k) for k in config.key)
    if config.order_by:
        return (f"SELECT * FROM ({query}) QUALIFY row_number() OVER (PARTITION BY {keys} "
                f"ORDER BY {config.order_by} DESC) = 1")
    dupes = con.sql(f"SELECT {keys}, count(*) AS n FROM ({query}) GROUP BY ALL HAVING n > 1 "
                    f"LIMIT 3").fetchall()
    if dupes:
        shown = "; ".join(", ".join(map(str, row[:-1])) + f" ({row[-1]} rows)" for row in dupes)
        raise PublishError(
            f"merge key {config.key} is not unique in the input (e.g. {shown}); add "
            f"'order_by: <column>' to keep the newest row per key, or 'dedupe: [...]'")
    return query


def _check_schema(con: Any, query: str, ctx: StepContext, config: PublishConfig,
                  uri: str) -> list[str]:
    """Fail under ``freeze`` on any new or changed column; describe changes under evolve.

    A changed type is a schema change only for an overwrite: an append or merge casts it
    to the dataset's type or fails (:mod:`headwater.steps.align`).
    """
    table = delta.open_table(uri)
    if table is None:
        return []
    existing = delta.arrow_schema(table)
    incoming = con.sql(f"SELECT * FROM ({query}) LIMIT 0").to_arrow_table().schema
    changes = []
    for field in incoming:
        if field.name not in existing.names:
            changes.append(f"new column {field.name!r} ({field.type})")
        elif not _compatible(existing.field(field.name).type, field.type) and (
                config.schema_ == "freeze" or config.mode == "overwrite"):
            changes.append(f"column {field.name!r} changed type from "
                           f"{existing.field(field.name).type} to {field.type}")
    missing = [n for n in existing.names if n not in incoming.names]
    changes.extend(f"column {name!r} is missing from the input" for name in missing)
    if changes and config.schema_ == "freeze":
        raise PublishError(f"schema is frozen for dataset {config.dataset!r}: "
                           + "; ".join(changes) + " (nothing was written)")
    return changes


def _compatible(existing: pa.DataType, incoming: pa.DataType) -> bool:
    if existing == incoming:
        return True
    if pa.types.is_string(existing) and (pa.types.is_string(incoming)
                                         or pa.types.is_large_string(incoming)):
        return True
    return bool(pa.types.is_timestamp(existing) and pa.types.is_timestamp(incoming))


def _stats_fn(ctx: StepContext, config: PublishConfig, previous: dict[str, Any] | None) -> Any:
    """Per-version column statistics and drift against the previous version."""

    def compute(table: Any, _dv: int, stream: Any = None) -> tuple[Any, Any]:
        from headwater.datasets.drift import compute_drift, exceeds

        stats = _version_doc(ctx, config, table, stream, previous)
        if not stats.get("columns"):
            return stats, None
        drift = compute_drift(previous, stats) if previous else None
        if drift and config.drift is not None:
            over = exceeds(drift, config.drift)
            if over:
                message = (f"drift over max_psi {config.drift.max_psi} in "
                           f"{', '.join(over)} of dataset {config.dataset!r}")
                if config.drift.on_exceed == "fail":
                    raise PublishError(message)
                ctx.log(message, level="warning")
        return stats, drift

    return compute


def _version_doc(ctx: StepContext, config: PublishConfig, table: Any, stream: Any,
                 previous: dict[str, Any] | None) -> dict[str, Any]:
    """The version's statistics: from the written rows when they are the whole version
    (an overwrite, a first version), combined with the previous version's document for a
    large append, and read from the version's files otherwise (a merge, a small append,
    or a previous version without statistics)."""
    from headwater.datasets import version_stats as files
    from headwater.datasets.publish import total_rows
    from headwater.datasets.stream_stats import combine_append

    if stream is not None and stream.rows == 0 and config.mode == "overwrite":
        return {"rows": 0, "columns": {}}
    if stream is None or stream.rows == 0:
        return files.version_stats(ctx.cursor(), table, reference=previous)
    rows = total_rows(table)
    if rows == stream.rows:  # the version is exactly the rows just written
        doc: dict[str, Any] = stream.document(ctx.cursor(), previous)
        return doc
    old_rows = int((previous or {}).get("rows") or -1)
    if previous is None or old_rows + stream.rows != rows or rows <= files.SAMPLE_ROWS:
        return files.version_stats(ctx.cursor(), table, reference=previous)
    return combine_append(previous, stream.document(ctx.cursor(), previous))


def _stats_needed(ctx: StepContext, config: PublishConfig,
                  previous: dict[str, Any] | None) -> Any:
    """:func:`_stats_fn`, or None when the project computes no statistics for a first
    version (``ProjectRuntime.version_stats``): ~8 % of a ``headwater test`` suite, and
    without a previous version there is no drift to check."""
    if previous is None and not ctx.project.version_stats:
        return None
    return _stats_fn(ctx, config, previous)


def _previous_stats(ctx: StepContext, dataset: str) -> dict[str, Any] | None:
    try:
        record = ctx.project.store.version(dataset)
    except HeadwaterError:  # no version yet
        return None
    stats = record.get("stats")
    return stats if isinstance(stats, dict) else None


@register("publish")
def run_publish(ctx: StepContext, step: PublishStep) -> StepOutput:
    config = step.publish
    source = ctx.inputs.get(config.input)
    if source is None or source.relation is None:
        raise StepError(f"step {config.input!r} produced no rows to publish")
    con = ctx.cursor()
    uri = ctx.project.dataset_uri(config.dataset)
    if source.rows == 0 and config.mode != "overwrite":
        # known empty (an empty micro-batch may not even have the key's column): nothing
        # to bind or commit, but the state it saw and its rejected rows still count
        finish_pending_rejected(ctx, config.dataset)
        result = PublishResult(config.dataset, None, 0, 0, skipped="no rows to publish")
        _log_result(ctx, result, [])
        return _finished(ctx, config, result, [])
    groups = publish_fan.shares(ctx, config, source, uri)
    relation = source.relation if groups is None else publish_fan.input_view(
        con, source.relation)
    try:
        return _publish(ctx, config, con, relation, uri, groups)
    finally:
        if groups is not None:
            publish_fan.drop_input_view(con)


def _publish(ctx: StepContext, config: PublishConfig, con: Any, relation: str, uri: str,
             groups: list[tuple[int, list[str]]] | None) -> StepOutput:
    """Plan the final query, commit it as a version (here, or written by the cluster's
    workers when ``groups`` shares the input out), then the quarantined rows."""
    try:
        query = _final_query(con, relation, config)
        changes = _check_schema(con, query, ctx, config, uri)
        casts: list[Cast] = []
        if config.mode != "overwrite":
            query, casts = aligned(con, query, uri, config.dataset)
    except PublishError:
        raise
    except duckdb.Error as exc:
        raise StepError(str(exc).strip().splitlines()[0]) from None
    lineage = ctx.lineage
    finish_pending_rejected(ctx, config.dataset)
    pending = _pending(ctx, lineage.rejected)
    facts = VersionFacts(
        run_id=ctx.run_id, pipeline=ctx.pipeline, step_id=ctx.step_id,
        code_version=ctx.code_version, trigger=ctx.trigger, mode=config.mode,
        inputs=list(lineage.inputs), sources=list(lineage.sources), state=dict(lineage.state),
        key=list(config.key), rejected=pending)
    stats_fn = _stats_needed(ctx, config, _previous_stats(ctx, config.dataset))
    if groups is not None:
        result = publish_fan.publish(ctx, config, query, groups, uri, facts, stats_fn,
                                     int(ctx.inputs[config.input].rows or 0))
    else:
        result = publish_reader(
            ctx.project.store, config.dataset, uri, QuerySource(con, query, BATCH_ROWS), facts,
            partition_by=config.partition_by, evolve=config.schema_ == "evolve",
            stats_fn=stats_fn)
    _log_result(ctx, result, changes)
    for cast in casts:
        ctx.log(cast.describe())
    return _finished(ctx, config, result, changes)


def _finished(ctx: StepContext, config: PublishConfig, result: PublishResult,
              changes: Sequence[str]) -> StepOutput:
    """After the data commit (or none): the quarantined rows and the state follow."""
    lineage = ctx.lineage
    nothing_new = result.skipped == "no rows to publish"
    _crash_point("publish:between-commits")
    # the quarantined rows follow the data: committed by run and step exactly once; if the
    # data commit made no version, the rejected commit carries the incremental state
    committed_rejected = publish_rejected(
        ctx.project, _run_row(ctx), ctx.code_version, lineage.rejected, step_id=ctx.step_id,
        state=dict(lineage.state) if nothing_new else None, db=ctx.cursor())
    if nothing_new and lineage.state:
        # nothing new arrived, but what was seen (e.g. empty files) still counts as seen
        from headwater.steps.base import split_state_key

        ctx.project.store.put_state(ctx.pipeline, {split_state_key(k): v for k, v in
                                                   lineage.state.items()}, ctx.run_id)
    return StepOutput(rows=result.rows_added, info={
        "dataset": config.dataset, "version": result.version, "rows_added": result.rows_added,
        "rows_removed": result.rows_removed, "skipped": result.skipped,
        "schema_changes": changes, "bytes": result.bytes,
        "committed_rejected": committed_rejected, "committed_state": list(lineage.state)})


def _log_result(ctx: StepContext, result: PublishResult, changes: Sequence[str]) -> None:
    if result.skipped:
        ctx.log(f"dataset {result.dataset}: {result.skipped}; no new version")
        return
    ctx.log(f"published {result.dataset} version {result.version}: +{result.rows_added} "
            f"-{result.rows_removed} rows", dataset=result.dataset, version=result.version)
    for change in changes:
        ctx.log(f"schema evolved: {change}", level="warning")


def _run_row(ctx: StepContext) -> Mapping[str, Any]:
    return {"id": ctx.run_id, "pipeline": ctx.pipeline, "trigger": ctx.trigger}


def _pending(ctx: StepContext, paths: Sequence[str]) -> dict[str, Any] | None:
    """What the data commit records it still owes ``<pipeline>__rejected`` (for repair)."""
    if not paths:
        return None
    return {"step_id": ctx.step_id, "paths": list(paths)}


def finish_pending_rejected(ctx: StepContext, dataset: str) -> None:
    """Commit the quarantined rows a crashed run owed: its data commit lists them.

    A run commits its data first, then its rejected rows; a kill between the two leaves
    the data version recorded (with the files' state, so they are not read again) and
    ``notes.rejected`` naming the run's quarantine spills. Publishing those under the
    crashed run's own id is idempotent, so neither a repeat nor a race duplicates them.
    """
    store = ctx.project.store
    latest = store.latest_version_number(dataset)
    for number in range(latest, max(0, latest - PENDING_LOOKBACK), -1):
        try:
            record = store.version(dataset, number)
        except HeadwaterError:  # a gap left by an older store: nothing owed there
            continue
        owed = (record.get("notes") or {}).get("rejected")
        if not owed or record["run_id"] == ctx.run_id or _rejected_committed(
                ctx.project, record, str(owed["step_id"])):
            continue
        paths = [p for p in owed["paths"] if Path(p).exists()]
        if len(paths) < len(owed["paths"]):
            ctx.log(f"run {record['run_id']} owed quarantined rows whose spill files are "
                    f"gone; they cannot be committed", level="warning")
        run = {"id": record["run_id"], "pipeline": record["pipeline"],
               "trigger": record["trigger"]}
        publish_rejected(ctx.project, run, str(record["code_version"]), paths,
                         step_id=str(owed["step_id"]), db=ctx.cursor())


def _rejected_committed(project: ProjectRuntime, record: Mapping[str, Any],
                        step_id: str) -> bool:
    name = rejected_dataset(str(record["pipeline"]))
    table = delta.open_table(project.dataset_uri(name))
    return delta.already_committed(
        table, delta.app_id(str(record["run_id"]), f"{step_id}:rejected", name))


def _crash_point(name: str) -> None:
    """Die here, as kill -9 would, if ``HEADWATER_CRASH_AT`` names this point (tests)."""
    if os.environ.get("HEADWATER_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def publish_rejected(project: ProjectRuntime, run: Mapping[str, Any], code_version: str,
                     paths: Sequence[str], *, step_id: str,
                     state: Mapping[str, Any] | None = None, db: Any = None) -> list[str]:
    """Append quarantined rows (Parquet spills) to ``<pipeline>__rejected``, idempotently.

    ``state`` (incremental state no data commit carried) is recorded with the version, so
    a crash right after cannot make the next run quarantine the same rows again. ``db``, a
    connection of the run's DuckDB database, reads the spills on a new cursor: opening a
    database for it cost ~20 ms, a fifth of a small run (``headwater test`` runs dozens).
    """
    if not paths:
        return []
    name = rejected_dataset(str(run["pipeline"]))
    # Several publish steps of one run see the same quarantine spills (and run in
    # parallel): each spill is committed once per run, whichever step gets there first.
    with _rejected_lock(str(run["id"])):
        todo = [p for p in paths
                if p not in _committed_spills(project, name, str(run["id"]))]
        if not todo:
            if state:  # the spills are in already: the state may advance on its own now
                from headwater.steps.base import split_state_key

                project.store.put_state(str(run["pipeline"]), {
                    split_state_key(k): v for k, v in state.items()}, str(run["id"]))
            return list(paths)
        listing = ", ".join(sql_string(p) for p in todo)
        columns = ", ".join(f"CAST({c} AS VARCHAR) AS {c}" for c in REJECTED_COLUMNS)
        with _spill_reader(db) as con:
            reader = con.sql(f"SELECT {columns} FROM read_parquet([{listing}], "
                             "union_by_name=true)").to_arrow_reader(BATCH_ROWS)
            facts = VersionFacts(run_id=str(run["id"]), pipeline=str(run["pipeline"]),
                                 step_id=f"{step_id}:rejected", code_version=code_version,
                                 trigger=str(run.get("trigger", "manual")), mode="append",
                                 state=dict(state or {}),
                                 sources=[{"type": "quarantine", "path": p} for p in todo])
            publish_reader(project.store, name, project.dataset_uri(name), reader, facts,
                           evolve=False)
    return list(paths)


@contextmanager
def _spill_reader(db: Any) -> Iterator[Any]:
    """A new cursor of ``db`` (the run's database; its confinement allows the run folder,
    where the spills are), or a new in-memory database without one; closed afterwards."""
    with db.cursor() if db is not None else duckdb.connect() as con:
        yield con


_LOCKS_GUARD = threading.Lock()
_RUN_LOCKS: dict[str, threading.Lock] = {}


def _rejected_lock(run_id: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _RUN_LOCKS.setdefault(run_id, threading.Lock())


def _committed_spills(project: ProjectRuntime, dataset: str, run_id: str) -> set[str]:
    """Quarantine spills this run already committed to ``dataset`` (from the store, which
    publish repairs from the Delta log before it reads)."""
    return {str(source.get("path")) for record in project.store.versions_by_run(run_id)
            if record["dataset"] == dataset
            for source in record.get("sources") or [] if source.get("type") == "quarantine"}
