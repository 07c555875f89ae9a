"""The Delta Lake boundary: every call into ``deltalake`` goes through this module (and
:mod:`headwater.datasets.parts`, its streamed writes: Parquet parts + one write transaction).

Writes are idempotent: each commit carries an app transaction ``(app_id, 1)`` unique to the
run and step that made it, so a retried or re-executed publish sees that it already
committed and does nothing. Reads never use ``DeltaTable.to_pyarrow_table()`` (with
pyarrow 26 it aborts the process at exit, delta-rs#2184); they read the version's Parquet
files, as the Delta log lists them, through pyarrow.dataset or DuckDB instead.

headwater's dataset versions are dense (1, 2, 3, ...) while Delta versions are not: a user's
OPTIMIZE or VACUUM adds commits of its own. The store maps each headwater version to its
Delta version; this module never assumes one from the other. The log is always read from
a freshly loaded table (``fresh_history``): ``history()`` on an older handle numbers newer
commits from the handle's version down (``[2, 1, 0, -1]``), which credited commits to the
wrong run under concurrent writers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pyarrow as pa

from headwater.exceptions import NotFoundError, PublishError

META_PREFIX = "headwater."
MAINTENANCE = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END", "CHECKPOINT"})
"""Commit operations that rewrite files but never change a table's rows."""
TAIL_COMMITS = 4
"""Commits read first when looking for one just made (more only if others came after)."""


@dataclass(frozen=True)
class Location:
    """How to reach a remote warehouse: options for delta-rs and for fsspec (readers)."""

    prefix: str
    delta_options: Mapping[str, str]
    fsspec_options: Mapping[str, Any]


_LOCATIONS: dict[str, Location] = {}


def register_location(location: Location) -> None:
    """Remember the credentials of a warehouse prefix (the project does it on load).

    Every Delta call below looks its URI up here, so callers pass URIs only and secrets
    stay out of signatures, logs and the store.
    """
    _LOCATIONS[location.prefix.rstrip("/")] = location


def location_of(uri: str) -> Location | None:
    for prefix, location in _LOCATIONS.items():
        if uri == prefix or uri.startswith(prefix + "/"):
            return location
    return None


def _options(uri: str, given: Mapping[str, str] | None) -> dict[str, str] | None:
    if given:
        return dict(given)
    location = location_of(uri)
    return dict(location.delta_options) if location is not None else None


def register_readers(con: Any, uri: str) -> None:
    """Let a DuckDB connection read the Parquet files of a remote dataset (fsspec)."""
    location = location_of(uri)
    if location is None:
        return
    from headwater.connectors.fsspec_util import register_filesystem

    register_filesystem(con, uri, location.fsspec_options)


def table_root(table: Any) -> str:
    """The table's folder as a path (local) or URL (remote), percent-decoded.

    delta-rs percent-encodes the table URI (``my%20project/%C3%BC``); the folder on disk
    or the object key has the plain name.
    """
    uri = str(table.table_uri).rstrip("/")
    if uri.startswith("file://"):
        return unquote(uri.removeprefix("file://"))
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://{unquote(rest)}" if rest else unquote(uri)


def _encoded_root(table: Any) -> str:
    return str(table.table_uri).rstrip("/").removeprefix("file://")


def add_actions(table: Any) -> pa.Table:
    """The table's add actions (flattened: per-file rows, nulls, min, max) as pyarrow.

    deltalake hands back an arro3 table; reading it through the C stream interface, rather
    than ``pa.table(...)``, keeps pyarrow from importing pandas to check whether it is a
    DataFrame (~0.4 s, which dominated small publishes).
    """
    return pa.RecordBatchReader.from_stream(table.get_add_actions(flatten=True)).read_all()


def data_files(table: Any) -> list[str]:
    """The Parquet files of the loaded version, as DuckDB and pyarrow open them.

    ``file_uris()`` joins the percent-encoded table URI to each file's path below it (which
    is already the name on disk, e.g. a partition folder ``city=a%20b``), so only the table
    root is decoded. A local file the log lists but the disk lacks (a VACUUM removed it)
    raises :class:`NotFoundError` instead of a raw ``FileNotFoundError`` later.
    """
    encoded, root = _encoded_root(table), table_root(table)
    files = []
    for uri in table.file_uris():
        path = str(uri).removeprefix("file://")
        if path.startswith(encoded + "/"):
            path = root + path[len(encoded):]
        files.append(path)
    if "://" not in root:  # local: check now; a remote read fails in its own reader
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise NotFoundError(
                f"Delta version {table.version()} of {root} lists {len(missing)} file(s) that "
                f"are gone, e.g. {missing[0]} (removed by a VACUUM?); read a newer version")
    return files


def app_id(run_id: str, step_id: str, dataset: str) -> str:
    return f"headwater:{run_id}:{step_id}:{dataset}"


def open_table(uri: str, delta_version: int | None = None,
               storage_options: Mapping[str, str] | None = None) -> Any:
    """The DeltaTable at ``uri`` (at ``delta_version`` if given), or None if there is none."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(uri, storage_options=_options(uri, storage_options))
        if delta_version is not None:
            table.load_as_version(delta_version)
        return table
    except TableNotFoundError:
        return None
    except Exception as exc:
        if delta_version is not None and ("version" in str(exc).lower()):
            raise NotFoundError(f"Delta version {delta_version} does not exist at {uri} "
                                "(its log entry was cleaned up?)") from None
        raise


def fresh_history(uri: str, storage_options: Mapping[str, str] | None = None, *,
                  limit: int | None = None, table: Any = None) -> list[dict[str, Any]]:
    """The newest ``limit`` commits' info (every commit if None), oldest first, numbered
    correctly even while others commit.

    ``history()`` lists the log as it is *now* but numbers entries down from the handle's
    version, so a commit landing between loading and listing shifts every number. A
    listing is trusted only if the table's version did not move across it. ``table`` (a
    handle the caller just loaded or wrote with) saves loading the log again; it is moved
    to the newest version. A ``limit`` keeps a publish from reading every commit file of a
    long log (delta-rs reads the newest ``limit`` only).
    """
    for _ in range(50):
        if table is None:
            table = open_table(uri, storage_options=storage_options)
            if table is None:
                return []
        before = table.version()
        entries = table.history(limit)
        table.update_incremental()
        if table.version() == before:
            found = [e for e in entries if int(e.get("version", -1)) >= 0]
            return sorted(found, key=lambda e: int(e["version"]))
    raise PublishError(f"the Delta log of {uri} kept changing while being read; try again")


def already_committed(table: Any, app: str) -> bool:
    return table is not None and table.transaction_version(app) is not None


@dataclass
class CountingReader:
    """Wrap a RecordBatchReader to count rows and bytes as delta-rs pulls batches."""

    source: pa.RecordBatchReader
    first: pa.RecordBatch | None = None
    rows: int = 0
    bytes: int = 0
    error: BaseException | None = None
    """What the *source* raised while being pulled (a bad CSV row, say), kept so the
    caller reports the real cause instead of delta-rs's wrapper around it."""

    @classmethod
    def peek(cls, source: pa.RecordBatchReader) -> CountingReader:
        """Read ahead to the first non-empty batch so an empty input is known up front."""
        reader = cls(source)
        for batch in source:  # a source error here propagates as it is
            if batch.num_rows:
                reader.first = batch
                break
        return reader

    @property
    def empty(self) -> bool:
        return self.first is None

    def _batches(self) -> Iterator[pa.RecordBatch]:
        if self.first is not None:
            yield self._count(self.first)
        try:
            for batch in self.source:
                if batch.num_rows:
                    yield self._count(batch)
        except Exception as exc:
            self.error = exc
            raise

    def _count(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        self.rows += batch.num_rows
        self.bytes += batch.nbytes
        return batch

    def reader(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(self.source.schema, self._batches())


def commit_properties(app: str, metadata: Mapping[str, Any],
                      operation_metrics: Mapping[str, int] | None = None) -> Any:
    """The app transaction and ``headwater.*`` metadata of a commit; ``operation_metrics``
    (``num_added_rows`` ...) for a commit delta-rs records none for (a write transaction
    of files written by headwater), so crash repair reads the row counts it always did."""
    from deltalake import CommitProperties, Transaction

    custom: dict[str, Any] = {META_PREFIX + k: json.dumps(v, default=str)
                              for k, v in metadata.items()}
    if operation_metrics:
        custom["operationMetrics"] = dict(operation_metrics)
    return CommitProperties(app_transactions=[Transaction(app, 1)], custom_metadata=custom)


def write(uri: str, data: pa.RecordBatchReader, *, mode: str, app: str,
          metadata: Mapping[str, Any], partition_by: Sequence[str] = (),
          evolve: bool = True, storage_options: Mapping[str, str] | None = None,
          table: Any = None) -> int:
    """Append or overwrite in one commit; returns the new Delta version.

    ``table``, a handle of ``uri`` loaded under the dataset's turn, is written through (and
    left at the commit) instead of loading the log once more.
    """
    from deltalake import write_deltalake

    try:
        write_deltalake(  # type: ignore[call-overload]
            uri if table is None else table, data, mode=mode,
            partition_by=list(partition_by) or None,
            schema_mode=("merge" if evolve and mode == "append" else
                         "overwrite" if evolve and mode == "overwrite" else None),
            commit_properties=commit_properties(app, metadata),
            storage_options=_options(uri, storage_options) if table is None else None,
        )
    except Exception as exc:
        raise PublishError(f"writing {uri} failed: {_first_line(exc)}") from exc
    return committed_version(uri, metadata, storage_options, table=table)


def merge(uri: str, data: pa.RecordBatchReader, *, key: Sequence[str], app: str,
          metadata: Mapping[str, Any], evolve: bool = True,
          storage_options: Mapping[str, str] | None = None,
          table: Any = None) -> tuple[int, dict[str, Any]]:
    """Upsert on ``key`` in one commit; returns the new Delta version and merge metrics.

    ``table``, as for :func:`write`, saves loading the log once more.
    """
    if table is None:
        table = open_table(uri, storage_options=storage_options)
    predicate = " AND ".join(f't."{k}" = s."{k}"' for k in key)
    try:
        metrics = (
            table.merge(source=data, predicate=predicate, source_alias="s", target_alias="t",
                        merge_schema=evolve,
                        commit_properties=commit_properties(app, metadata))
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
    except Exception as exc:
        raise PublishError(f"merging into {uri} failed: {_first_line(exc)}") from exc
    return committed_version(uri, metadata, storage_options, table=table), dict(metrics)


def committed_version(uri: str, metadata: Mapping[str, Any],
                      storage_options: Mapping[str, str] | None = None, *,
                      table: Any = None) -> int:
    """The Delta version of the commit made with ``metadata`` (by its run and step).

    Not the table's latest version: another writer may have committed after it. The log is
    read from its newest end, a few commits first and more only if the commit is older
    (another writer's commits landed after it), so a publish costs the same on a table
    with a long history as on a new one.
    """
    run_id, step_id = metadata.get("run_id"), metadata.get("step_id")
    limit: int | None = TAIL_COMMITS
    while True:
        history = fresh_history(uri, storage_options, limit=limit, table=table)
        for dv, meta in reversed(commit_metadata(history)):
            if meta.get("run_id") == run_id and meta.get("step_id") == step_id:
                return int(dv)
        if limit is None or len(history) < limit:
            raise PublishError(f"the commit of run {run_id} step {step_id} is not in the "
                               f"Delta log of {uri}")
        limit = limit * 16 if limit < 4096 else None


def headwater_metadata(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The ``headwater.*`` commit metadata of one history entry (empty if not ours)."""
    return {k[len(META_PREFIX):]: _loads(v) for k, v in entry.items()
            if isinstance(k, str) and k.startswith(META_PREFIX)}


def commit_metadata(history: Sequence[Mapping[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(delta version, headwater metadata) of every commit headwater made, oldest first.

    ``history`` comes from :func:`fresh_history`, never a possibly stale table handle.
    """
    out: list[tuple[int, dict[str, Any]]] = []
    for entry in history:
        found = headwater_metadata(entry)
        if found and "version" in entry:
            out.append((int(entry["version"]), found))
    return sorted(out, key=lambda item: item[0])


def readable_snapshot(history: Sequence[Mapping[str, Any]], delta_version: int,
                      until: int | None) -> int:
    """The newest Delta version with the same rows as ``delta_version``.

    Walks forward over maintenance commits (OPTIMIZE, VACUUM) only, stopping before
    ``until`` (the next headwater commit): after a compaction and a vacuum the files of
    ``delta_version`` are gone, but the compacted snapshot holds the same rows.
    """
    best = delta_version
    for entry in history:
        version = int(entry["version"])
        if version <= delta_version:
            continue
        if (until is not None and version >= until) or \
                entry.get("operation") not in MAINTENANCE or headwater_metadata(entry):
            break
        best = version
    return best


def _loads(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def arrow_schema(table: Any) -> pa.Schema:
    schema = table.schema()
    if hasattr(schema, "to_arrow"):
        return pa.schema(schema.to_arrow())
    return pa.schema(schema.to_pyarrow())


def partition_columns(table: Any) -> list[str]:
    return list(table.metadata().partition_columns)


def read_arrow(table: Any, columns: Sequence[str] | None = None,
               filter_sql: str | None = None) -> pa.Table:
    """The rows of a loaded DeltaTable as one Arrow table (partition columns restored)."""
    import pyarrow.dataset as pads

    schema = arrow_schema(table)
    files = data_files(table)
    parts = partition_columns(table)
    if not files:
        return schema.empty_table() if columns is None else schema.empty_table().select(
            list(columns))
    partitioning = None
    if parts:
        partitioning = pads.partitioning(pa.schema([schema.field(p) for p in parts]),
                                         flavor="hive")
    filesystem = None
    base = table_root(table)
    location = location_of(base)
    if location is not None:  # a remote warehouse: read through fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        from headwater.connectors.fsspec_util import open_filesystem

        fs, _ = open_filesystem(files[0], location.fsspec_options)
        filesystem = PyFileSystem(FSSpecHandler(fs))
        files = [f.split("://", 1)[1] for f in files]
        base = base.split("://", 1)[1]
    dataset = pads.dataset(files, format="parquet", partitioning=partitioning,
                           partition_base_dir=base, schema=schema, filesystem=filesystem)
    result = dataset.to_table(columns=list(columns) if columns else None)
    return result


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
