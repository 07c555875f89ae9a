"""Which Delta snapshot holds the rows of a headwater dataset version.

A version's rows are read through the Delta log, never through a file list recorded at
publish time: a user's ``optimize.compact()`` + ``vacuum()`` replaces the files but not the
rows. The store maps version N to the Delta version its commit made; from there the log is
followed forward over maintenance commits only (up to the next headwater commit), so the
compacted files serve the same rows once the originals are vacuumed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headwater.datasets import delta
from headwater.exceptions import NotFoundError
from headwater.store.store import Store


def open_version(store: Store, dataset: str, uri: str, version: int | None = None,
                 storage_options: Mapping[str, str] | None = None) -> Any:
    """The DeltaTable loaded at the snapshot holding ``version`` (default: the newest)."""
    record = store.version(dataset, version)
    dv = int(record["delta_version"])
    table = delta.open_table(uri, storage_options=storage_options)
    if table is None:
        raise NotFoundError(f"dataset {dataset!r} has no Delta table at {uri}")
    if int(table.version()) == dv:  # nothing committed since: the common case, no log read
        return table
    later = sorted(d for d in store.recorded_delta_versions(dataset) if d > dv)
    history = delta.fresh_history(uri, storage_options)
    snapshot = delta.readable_snapshot(history, dv, later[0] if later else None)
    table.load_as_version(snapshot)
    return table


def unreadable(dataset: str, version: int | None, cause: NotFoundError) -> NotFoundError:
    """The error for a version whose files a VACUUM removed: what happened, what to do."""
    which = f"version {version}" if version is not None else "its newest version"
    return NotFoundError(f"dataset {dataset!r} {which} can no longer be read: {cause.message}")
