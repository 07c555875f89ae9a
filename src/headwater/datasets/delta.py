"""The Delta Lake boundary: every call into ``deltalake`` goes through this module.

Writes are idempotent: each commit carries an app transaction ``(app_id, 1)`` unique to the
run and step that made it, so a retried or re-executed publish sees that it already
committed and does nothing. Reads never use ``DeltaTable.to_pyarrow_table()`` (with
pyarrow 26 it aborts the process at exit, delta-rs#2184); they read the version's Parquet
files through pyarrow.dataset or DuckDB instead. headwater's dataset version N is Delta
version N-1, so time travel needs no lookup table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from headwater.exceptions import NotFoundError, PublishError

META_PREFIX = "headwater."


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


def parquet_path(file_uri: str) -> str:
    """A data file's URI as DuckDB and pyarrow read it (local files lose ``file://``)."""
    return file_uri.removeprefix("file://")


def delta_version_of(version: int) -> int:
    return version - 1


def version_of(delta_version: int) -> int:
    return delta_version + 1


def app_id(run_id: str, step_id: str, dataset: str) -> str:
    return f"headwater:{run_id}:{step_id}:{dataset}"


def open_table(uri: str, version: int | None = None,
               storage_options: Mapping[str, str] | None = None) -> Any:
    """The DeltaTable at ``uri`` (headwater ``version`` if given), or None if there is none."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(uri, storage_options=_options(uri, storage_options))
        if version is not None:
            table.load_as_version(delta_version_of(version))
        return table
    except TableNotFoundError:
        return None
    except Exception as exc:
        if version is not None and ("version" in str(exc).lower()):
            raise NotFoundError(f"version {version} does not exist at {uri}") from None
        raise


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


def commit_properties(app: str, metadata: Mapping[str, Any]) -> Any:
    from deltalake import CommitProperties, Transaction

    return CommitProperties(
        app_transactions=[Transaction(app, 1)],
        custom_metadata={META_PREFIX + k: json.dumps(v, default=str) for k, v in
                         metadata.items()},
    )


def write(uri: str, data: pa.RecordBatchReader, *, mode: str, app: str,
          metadata: Mapping[str, Any], partition_by: Sequence[str] = (),
          evolve: bool = True, storage_options: Mapping[str, str] | None = None) -> int:
    """Append or overwrite in one commit; returns the new Delta version."""
    from deltalake import write_deltalake

    try:
        write_deltalake(  # type: ignore[call-overload]
            uri, data, mode=mode,
            partition_by=list(partition_by) or None,
            schema_mode=("merge" if evolve and mode == "append" else
                         "overwrite" if evolve and mode == "overwrite" else None),
            commit_properties=commit_properties(app, metadata),
            storage_options=_options(uri, storage_options),
        )
    except Exception as exc:
        raise PublishError(f"writing {uri} failed: {_first_line(exc)}") from exc
    table = open_table(uri, storage_options=storage_options)
    return int(table.version())


def merge(uri: str, data: pa.RecordBatchReader, *, key: Sequence[str], app: str,
          metadata: Mapping[str, Any], evolve: bool = True,
          storage_options: Mapping[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Upsert on ``key`` in one commit; returns the new Delta version and merge metrics."""
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
    table = open_table(uri, storage_options=storage_options)
    return int(table.version()), dict(metrics)


def commit_metadata(table: Any) -> list[tuple[int, dict[str, Any]]]:
    """(delta version, headwater metadata) of every commit headwater made, oldest first."""
    out = []
    for entry in table.history():
        found = {k[len(META_PREFIX):]: v for k, v in entry.items()
                 if isinstance(k, str) and k.startswith(META_PREFIX)}
        if found and "version" in entry:
            decoded = {k: _loads(v) for k, v in found.items()}
            out.append((int(entry["version"]), decoded))
    return sorted(out, key=lambda item: item[0])


def _loads(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def files_of(table: Any) -> list[str]:
    return [str(uri) for uri in table.file_uris()]


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
    files = files_of(table)
    parts = partition_columns(table)
    if not files:
        return schema.empty_table() if columns is None else schema.empty_table().select(
            list(columns))
    partitioning = None
    if parts:
        partitioning = pads.partitioning(pa.schema([schema.field(p) for p in parts]),
                                         flavor="hive")
    filesystem = None
    base = str(table.table_uri).removeprefix("file://")
    location = location_of(str(table.table_uri))
    if location is not None:  # a remote warehouse: read through fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        from headwater.connectors.fsspec_util import open_filesystem

        fs, _ = open_filesystem(files[0], location.fsspec_options)
        filesystem = PyFileSystem(FSSpecHandler(fs))
        files = [f.split("://", 1)[1] for f in files]
        base = base.split("://", 1)[1]
    else:
        files = [parquet_path(f) for f in files]
    dataset = pads.dataset(files, format="parquet", partitioning=partitioning,
                           partition_base_dir=base, schema=schema, filesystem=filesystem)
    result = dataset.to_table(columns=list(columns) if columns else None)
    return result


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
