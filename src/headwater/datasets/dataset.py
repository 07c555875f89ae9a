"""``Dataset``: the Python API over one published dataset (SPEC §5).

Versions, rows (Arrow, Polars, pandas; optionally one split), schema, statistics and the
version's lineage record. Reads go through :mod:`headwater.datasets.delta` (never
``to_pyarrow_table``), and every read first repairs the store from the Delta log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from headwater.datasets import delta
from headwater.datasets.publish import reconcile
from headwater.datasets.snapshot import open_version, unreadable
from headwater.datasets.split import SPLITS
from headwater.exceptions import HeadwaterError, NotFoundError

if TYPE_CHECKING:
    import pandas
    import polars

    from headwater.runtime import ProjectRuntime


class Dataset:
    """A versioned Delta Lake dataset under the project's warehouse."""

    def __init__(self, runtime: ProjectRuntime, name: str) -> None:
        self._runtime = runtime
        self.name = name
        record = runtime.store.dataset(name)
        self.uri: str = str(record["uri"])
        """Where the Delta table lives; any Delta reader opens it."""
        reconcile(runtime.store, name, self.uri)

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, version={self.version})"

    @property
    def version(self) -> int:
        """The newest version number (1 is the first publish)."""
        return self._runtime.store.latest_version_number(self.name)

    def versions(self) -> list[int]:
        """Every version number, newest last."""
        return [int(v["version"]) for v in self._runtime.store.versions(self.name)]

    def record(self, version: int | None = None) -> dict[str, Any]:
        """The store's record of a version: run, pipeline, code version, rows, schema, ..."""
        return self._runtime.store.version(self.name, version)

    def _table(self, version: int | None) -> Any:
        number = version if version is not None else self.version
        if number < 1:
            raise NotFoundError(f"dataset {self.name!r} has no version yet")
        if version is not None and version not in self.versions():
            raise NotFoundError(f"dataset {self.name!r} has no version {version} "
                                f"(versions: {self.versions()})")
        return open_version(self._runtime.store, self.name, self.uri, number)

    def to_arrow(self, version: int | None = None, split: str | None = None,
                 columns: list[str] | None = None) -> pa.Table:
        """The rows of ``version`` (default newest), optionally only one split."""
        if split is not None and split not in SPLITS:
            raise HeadwaterError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        try:
            table = delta.read_arrow(self._table(version), columns=columns)
        except NotFoundError as exc:
            raise unreadable(self.name, version, exc) from None
        if split is not None:
            if "_split" not in table.column_names:
                raise HeadwaterError(f"dataset {self.name!r} has no splits; add "
                                     "'split: {by: <column>}' to its publish step")
            import pyarrow.compute as pc  # ~0.1 s to import: only a split read needs it

            table = table.filter(pc.equal(table["_split"], split))
        return table

    def to_polars(self, version: int | None = None, split: str | None = None) -> polars.DataFrame:
        import polars as pl

        frame = pl.from_arrow(self.to_arrow(version, split))
        assert isinstance(frame, pl.DataFrame)
        return frame

    def to_pandas(self, version: int | None = None, split: str | None = None) -> pandas.DataFrame:
        return self.to_arrow(version, split).to_pandas()

    def schema(self, version: int | None = None) -> pa.Schema:
        return delta.arrow_schema(self._table(version))

    def stats(self, version: int | None = None) -> dict[str, Any]:
        """Per-column statistics of a version (and its drift against the one before)."""
        record = self.record(version)
        doc = record.get("stats") or {}
        return {"version": record["version"], "rows": record["rows_total"],
                "columns": doc.get("columns", {}), "sampled_rows": doc.get("sampled_rows"),
                "drift": record.get("drift")}

    def lineage(self, version: int | None = None) -> dict[str, Any]:
        """What produced a version: run, pipeline, code, trigger, inputs and sources."""
        from headwater.lineage.graph import version_lineage

        return version_lineage(self._runtime, self.name, version)
