"""A user's own Delta maintenance (OPTIMIZE + VACUUM) never breaks reads or versioning."""

from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import DeltaTable
from sqlalchemy import delete

import headwater as hw
from headwater.store import schema as t
from tests.conftest import COPY_ORDERS, INCREMENTAL_ORDERS, ProjectFactory, write

ORDERS = INCREMENTAL_ORDERS

COPY = COPY_ORDERS


def _csv(root: Path, name: str, start: int, count: int) -> None:
    write(root / "landing" / name, "id\n" + "".join(f"{i}\n" for i in range(start, start + count)))


def _maintain(uri: str) -> None:
    """What a Delta user runs weekly: compact small files, then vacuum with no retention."""
    table = DeltaTable(uri)
    table.optimize.compact()
    table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)


def test_reads_and_versions_survive_optimize_and_vacuum(make_project: ProjectFactory) -> None:
    """After compact + vacuum: the newest version and the one the compaction preserved read
    from the compacted files, the ``dataset`` source and stats work, the next publish is
    version 3 (no gap for the maintenance commits), and a vacuumed version fails clearly."""
    root = make_project({"orders": ORDERS, "copy": COPY})
    _csv(root, "a.csv", 0, 10)
    with hw.Project(root) as project:
        assert project.run("orders").ok
        _csv(root, "b.csv", 10, 5)
        assert project.run("orders").ok
        _maintain(project.dataset("orders").uri)
        ds = project.dataset("orders")
        assert list(range(15)) == sorted(ds.to_arrow()["id"].to_pylist())
        assert list(range(15)) == sorted(ds.to_arrow(version=2)["id"].to_pylist())
        assert 15 == ds.stats()["rows"]
        with pytest.raises(hw.NotFoundError, match="version 1 can no longer be read"):
            ds.to_arrow(version=1)
        copied = project.run("copy")
        assert copied.ok, copied.error
        assert 15 == project.dataset("orders_copy").to_arrow().num_rows
        _csv(root, "c.csv", 15, 5)
        assert project.run("orders").ok
        assert [1, 2, 3] == ds.versions()
        assert 5 == ds.record(3)["rows_added"]
        assert list(range(20)) == sorted(ds.to_arrow(version=3)["id"].to_pylist())


def test_crash_repair_after_maintenance_keeps_versions_dense(
        make_project: ProjectFactory) -> None:
    """Records lost after OPTIMIZE commits are rebuilt from the log as 1, 2, 3 with the
    Delta versions their commits really have."""
    root = make_project({"orders": ORDERS})
    with hw.Project(root) as project:
        for i in range(2):
            _csv(root, f"{i}.csv", i * 10, 10)
            assert project.run("orders").ok
        _maintain(project.dataset("orders").uri)
        _csv(root, "2.csv", 20, 10)
        assert project.run("orders").ok
        store = project.runtime.store
        before = [(v["version"], v["delta_version"]) for v in store.versions("orders")]
        with store.tx() as conn:  # the crash: the commits exist, their records do not
            conn.execute(delete(t.dataset_versions))
            conn.execute(delete(t.incremental_state))
        ds = project.dataset("orders")  # opening a dataset repairs it
        assert before == [(v["version"], v["delta_version"]) for v in store.versions("orders")]
        assert [1, 2, 3] == ds.versions()
        assert 30 == ds.to_arrow().num_rows
        assert project.run("orders").ok  # the files are known as ingested again
        assert 30 == ds.to_arrow().num_rows
