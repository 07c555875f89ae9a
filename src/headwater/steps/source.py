"""``source`` steps: turn a place outside the run into a relation inside it.

``files`` lists what matches, drops what an incremental source has already ingested
(path + size + mtime/etag), and either scans lazily (the default ``bad_rows: fail``, so
DuckDB streams straight into the consumer) or scans once into a Parquet spill while
collecting unparsable rows (``skip`` / ``quarantine``). The files taken are recorded as
the run's fingerprint and as incremental state that advances only with the publish.
``dataset`` reads a version of another headwater dataset.
"""

from __future__ import annotations

import functools
from typing import Any

import duckdb

from headwater.config.models import (
    DatasetSource,
    FilesSource,
    HttpSource,
    SourceStep,
    SqlSource,
    StreamSource,
)
from headwater.connectors import files as fileconn
from headwater.datasets import delta
from headwater.datasets.snapshot import open_version, unreadable
from headwater.exceptions import (
    ConfigError,
    HeadwaterError,
    NotFoundError,
    TerminalSourceError,
)
from headwater.sqltext import text as sql_string
from headwater.steps.base import StepContext, StepOutput, register, state_key


@register("source")
def run_source(ctx: StepContext, step: SourceStep) -> StepOutput:
    source = step.source
    if isinstance(source, FilesSource):
        return _files(ctx, source)
    if isinstance(source, DatasetSource):
        return _dataset(ctx, source)
    if isinstance(source, SqlSource):
        return _sql(ctx, source)
    if isinstance(source, StreamSource):
        from headwater.steps.stream import run_stream  # broker clients load only if used

        return run_stream(ctx, source)
    if isinstance(source, HttpSource):
        from headwater.steps.http_source import read_http  # httpx: only for http sources

        return read_http(ctx, source)
    raise ConfigError(f"source type {source.type!r} is not available yet in this version "
                      "(available: files, dataset, http, stream, sql)", problems=[])


def storage_options(ctx: StepContext, connection: str | None) -> dict[str, Any] | None:
    """fsspec options from a project connection (secrets resolved here, never logged)."""
    if connection is None:
        return None
    settings = dict(ctx.project.connection(connection))
    kind = settings.pop("type")
    if kind in ("azure_blob", "azure", "adls"):
        return {k: v for k, v in settings.items() if v is not None}
    return settings


def _files(ctx: StepContext, source: FilesSource) -> StepOutput:
    root = ctx.project.root
    options = storage_options(ctx, source.connection)
    path = ctx.render(source.path)
    matched = fileconn.list_files(path, root=root, storage_options=options, allow_empty=True)
    if not matched:
        return _no_files(ctx, source, path)
    con = ctx.cursor()
    fileconn.register_filesystem(con, matched[0].path if matched else path, options)
    new = _unseen(ctx, matched) if source.incremental else matched
    fingerprint = {"step": ctx.step_id, "type": "files", "path": source.path,
                   "files": [f.fingerprint() for f in new]}
    state = {state_key(ctx.step_id, f.path): f.fingerprint() for f in new}
    if source.incremental:
        ctx.log(f"{len(new)} new of {len(matched)} matching files", files=len(new))
    if not new:
        scan = fileconn.scan_sql(matched, source, root=root, con=con, workdir=ctx.workdir,
                                 name=ctx.step_id)
        relation = f"SELECT * FROM ({scan}) LIMIT 0"
        _bind(con, relation, matched, ctx.step_id, root)
        return StepOutput(relation=relation, rows=0, sources=[fingerprint], state=state)
    if source.bad_rows == "fail":
        if ctx.fan_out is not None and options is None:
            return _fanned_out(ctx, source, new, fingerprint, state)
        relation = fileconn.scan_sql(new, source, root=root, con=con, workdir=ctx.workdir,
                                     name=ctx.step_id)
        _bind(con, relation, new, ctx.step_id, root)
        if ctx.fan_out is not None:  # on a cluster, but behind a connection's secret
            return _spilled_here(ctx, relation, fingerprint, state, len(new))
        return StepOutput(relation=relation, sources=[fingerprint], state=state,
                          info={"files": len(new), "lazy": True})
    return _scan_with_rejects(ctx, source, new, fingerprint, state)


MAX_PARTITIONS = 64
"""A files source fans out to at most this many tasks (files are grouped beyond it)."""


def _fanned_out(ctx: StepContext, source: FilesSource, files: list[Any],
                fingerprint: dict[str, Any], state: dict[str, Any]) -> StepOutput:
    """On a cluster: groups of files are planned and scanned in parallel on workers into
    Parquet files in the run folder (``connectors.files.scan_partition``); the publish
    then commits every part in one transaction."""
    assert ctx.fan_out is not None
    count = min(len(files), MAX_PARTITIONS)
    size = -(-len(files) // count)
    groups = [(i, files[i * size:(i + 1) * size]) for i in range(count)
              if files[i * size:(i + 1) * size]]
    scan = functools.partial(fileconn.scan_partition, source, ctx.project.root, ctx.workdir,
                             ctx.step_id)
    parts: list[tuple[str, int]] = ctx.fan_out(scan, groups)
    listing = ", ".join(sql_string(path) for path, _ in parts)
    ctx.log(f"read {len(files)} files in {len(groups)} partitions on the cluster",
            partitions=len(groups))
    return StepOutput(relation=f"SELECT * FROM read_parquet([{listing}], union_by_name=true)",
                      rows=sum(rows for _, rows in parts), sources=[fingerprint], state=state,
                      info={"files": len(files), "partitions": len(groups)})


def _spilled_here(ctx: StepContext, relation: str, fingerprint: dict[str, Any],
                  state: dict[str, Any], files: int) -> StepOutput:
    """On a cluster, files behind a connection are read on the server (their credentials
    stay there) into a Parquet spill of the run folder, which workers can read; a lazy
    scan would need the filesystem and its secret registered on every worker."""
    from headwater.steps.spill import spill

    spilled = spill(ctx, relation)
    return StepOutput(relation=spilled.relation, rows=spilled.rows, sources=[fingerprint],
                      state=state, info={"files": files, **spilled.info})


def _no_files(ctx: StepContext, source: FilesSource, path: str) -> StepOutput:
    """Nothing has landed yet: no rows (with the hinted columns), so nothing is published."""
    reason = "matched no files" if fileconn.has_glob(path) else "holds no files"
    ctx.log(f"{path} {reason}: nothing to read, so nothing is published", level="warning",
            files=0)
    relation = fileconn.scan_sql([], source, root=ctx.project.root, con=ctx.cursor())
    fingerprint = {"step": ctx.step_id, "type": "files", "path": source.path, "files": []}
    return StepOutput(relation=relation, rows=0, sources=[fingerprint], info={"files": 0})


def _scan_with_rejects(ctx: StepContext, source: FilesSource, files: list[Any],
                       fingerprint: dict[str, Any], state: dict[str, Any]) -> StepOutput:
    out = ctx.workdir / f"{ctx.step_id}.parquet"
    try:
        result = fileconn.materialize(ctx.cursor(), files, source, out, run_id=ctx.run_id,
                                      step_id=ctx.step_id, root=ctx.project.root)
    except HeadwaterError:
        raise
    except duckdb.Error as exc:
        raise fileconn.translate_error(exc, files, ctx.step_id,
                                       root=ctx.project.root) from None
    rejected: list[str] = []
    if result.skipped:
        verb = "quarantined" if source.bad_rows == "quarantine" else "skipped"
        ctx.log(f"{result.skipped} unparsable rows {verb}", level="warning",
                rows_rejected=result.skipped)
    if result.rejected is not None and result.rejected.num_rows and \
            source.bad_rows == "quarantine":
        import pyarrow.parquet as pq

        path = ctx.workdir / f"{ctx.step_id}.rejected.parquet"
        pq.write_table(result.rejected, path)
        rejected.append(str(path))
    for empty in result.empty_files:
        ctx.log(f"{empty} is empty; it adds no rows", level="warning")
    return StepOutput(relation=f"SELECT * FROM read_parquet({sql_string(str(out))})",
                      rows=result.rows, sources=[fingerprint], state=state, rejected=rejected,
                      info={"files": len(files), "rows_rejected": result.skipped})


def _unseen(ctx: StepContext, matched: list[Any]) -> list[Any]:
    """Files not yet ingested; for a run resumed after one of its publishes committed
    (its own state is recorded), exactly the files it recorded then.

    A run with two publish steps that dies between them has advanced the files' state
    with the first commit. Resumed under its own id it reads the same files again: the
    committed publish is skipped by its transaction id, the other one gets the same rows,
    and files that landed since are left to the next run (the committed publish could
    not take them).
    """
    own = ctx.project.store.state_of_run(ctx.pipeline, ctx.step_id, ctx.run_id)
    if own:
        return [f for f in matched if f.path in own]
    seen = ctx.project.store.state(ctx.pipeline, ctx.step_id)
    return [f for f in matched if seen.get(f.path) != f.fingerprint()]


def _bind(con: Any, relation: str, files: list[Any], step_id: str,
          root: Any = None) -> None:
    """Plan the scan now, so sniffing/encoding/type-hint errors fail this step."""
    try:
        con.sql(relation).columns  # noqa: B018
    except HeadwaterError:
        raise
    except duckdb.Error as exc:
        raise fileconn.translate_error(exc, files, step_id, root=root) from None


def _dataset(ctx: StepContext, source: DatasetSource) -> StepOutput:
    store = ctx.project.store
    record = store.version(source.dataset, source.version)
    uri = store.dataset(source.dataset)["uri"]
    try:  # the version's rows as the Delta log has them now (after an OPTIMIZE, say)
        table = open_version(store, source.dataset, uri, int(record["version"]))
        files = delta.data_files(table)
    except NotFoundError as exc:
        raise TerminalSourceError(unreadable(source.dataset, int(record["version"]),
                                             exc).message) from None
    if files:
        delta.register_readers(ctx.cursor(), uri)
        listing = ", ".join(sql_string(f) for f in files)
        hive = "true" if delta.partition_columns(table) else "false"
        relation = (f"SELECT * FROM read_parquet([{listing}], union_by_name=true, "
                    f"hive_partitioning={hive})")
    else:
        relation = "SELECT NULL AS _empty LIMIT 0"
    version = int(record["version"])
    ctx.log(f"reading dataset {source.dataset} version {version}")
    return StepOutput(relation=relation, rows=int(record["rows_total"]),
                      inputs=[{"dataset": source.dataset, "version": version}],
                      sources=[{"step": ctx.step_id, "type": "dataset",
                                "dataset": source.dataset, "version": version}])


def _sql(ctx: StepContext, source: SqlSource) -> StepOutput:
    """A table or query streamed into Parquet spills; the cursor advances with the publish."""
    from headwater.connectors import sql as sqlconn
    from headwater.connectors.sql_drivers import connection_spec

    spec = connection_spec(source.connection, ctx.project.connection(source.connection),
                           ctx.project.root)
    previous = ctx.project.store.state(ctx.pipeline, ctx.step_id)
    worker_spec = functools.partial(_spec_on_worker, str(ctx.project.root), ctx.project.env,
                                    source.connection)
    result = sqlconn.read(spec, source, step_id=ctx.step_id, workdir=ctx.workdir,
                          previous=previous, cancelled=ctx.cancelled, log=ctx.log,
                          fan_out=ctx.fan_out, worker_spec=worker_spec)
    listing = ", ".join(sql_string(str(f)) for f in result.files)
    relation = f"SELECT * FROM read_parquet([{listing}], union_by_name=true)"
    state = {state_key(ctx.step_id, key): value for key, value in result.state.items()}
    return StepOutput(relation=relation, rows=result.rows, sources=[result.fingerprint],
                      state=state, info={"rows_in": result.rows,
                                         "rows_already_ingested": result.dropped})


def _spec_on_worker(root: str, env: str | None, connection: str) -> Any:
    """A SQL connection resolved on a cluster worker from the project there (its secrets
    from the worker's own environment), so no task carries a resolved password."""
    from headwater.connectors.sql_drivers import connection_spec
    from headwater.runtime import ProjectRuntime

    project = _worker_projects.get((root, env))
    if project is None:
        project = _worker_projects[(root, env)] = ProjectRuntime.load(root, env)
    return connection_spec(connection, project.connection(connection), project.root)


_worker_projects: dict[tuple[str, str | None], Any] = {}
"""Projects loaded by this (worker) process for partition reads, by folder and env."""
