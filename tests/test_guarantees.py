"""SPEC §8: no row lost or duplicated across retries, reruns and crashes (the quick ones on
both executors: local threads and a Dask cluster, ``executor_settings``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import delete

import headwater as hw
from headwater.datasets import delta
from headwater.store import schema as t
from tests.conftest import INCREMENTAL_ORDERS, ProjectFactory, write

PIPELINE = INCREMENTAL_ORDERS


def _csv(path: Path, start: int, count: int) -> None:
    write(path, "id,v\n" + "".join(f"{i},{i}\n" for i in range(start, start + count)))


def test_crash_between_commit_and_record_is_repaired(make_project: ProjectFactory,
                                                     executor_settings: str) -> None:
    """If the store lost a version (crash after the Delta commit), the next run recovers
    it from the Delta log, with its incremental state, instead of ingesting files twice."""
    root = make_project({"orders": PIPELINE}, settings=executor_settings)
    _csv(root / "landing/a.csv", 0, 10)
    with hw.Project(root) as project:
        assert project.run("orders").ok
        store = project.runtime.store
        with store.tx() as conn:  # the crash: the commit exists, its record does not
            conn.execute(delete(t.dataset_versions))
            conn.execute(delete(t.incremental_state))
        _csv(root / "landing/b.csv", 10, 5)
        second = project.run("orders")
        assert second.ok, second.error
        ds = project.dataset("orders")
        assert [1, 2] == ds.versions()
        assert list(range(15)) == sorted(ds.to_arrow()["id"].to_pylist())
        assert 5 == ds.record(2)["rows_added"]


def test_publish_is_idempotent_per_run(make_project: ProjectFactory,
                                       executor_settings: str) -> None:
    """Re-executing the same run's publish finds its own commit and appends nothing."""
    root = make_project({"orders": PIPELINE}, settings=executor_settings)
    _csv(root / "landing/a.csv", 0, 10)
    with hw.Project(root) as project:
        run = project.run("orders")
        table = delta.open_table(project.dataset("orders").uri)
        assert delta.already_committed(table, delta.app_id(run.id, "publish", "orders"))
        with project.runtime.store.tx() as conn:  # pretend the run must be resumed
            conn.execute(delete(t.incremental_state))
        again = project.execute(run.id)
        assert again.ok, again.error
        assert 10 == project.dataset("orders").to_arrow().num_rows
        assert [1] == project.dataset("orders").versions()


@pytest.mark.slow
def test_kill_9_mid_run_loses_and_duplicates_nothing(make_project: ProjectFactory) -> None:
    """A run killed with SIGKILL leaves the previous version intact; the next run ingests
    the files exactly once."""
    slow = PIPELINE.replace("  - id: publish\n", "  - id: wait\n    command: sleep 30\n"
                            "  - id: publish\n").replace("input: raw, dataset",
                                                         "input: raw, dataset")
    slow = slow.replace("  - id: publish\n    publish: {input: raw, dataset: orders}",
                        "  - id: publish\n    needs: [wait]\n"
                        "    publish: {input: raw, dataset: orders}")
    root = make_project({"orders": PIPELINE, "slow": slow.replace("name: orders", "name: slow")})
    _csv(root / "landing/a.csv", 0, 10)
    proc = subprocess.Popen([sys.executable, "-m", "headwater.cli.main", "run", "slow"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    with hw.Project(root) as project:
        deadline = time.time() + 60
        while time.time() < deadline:
            runs = project.runs("slow")
            steps = project.get_run(runs[0].id).steps if runs else []
            if any(s.step_id == "wait" for s in steps):
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert "failed" == project.runs("slow")[0].status  # its process died: ended at once
        with pytest.raises(hw.NotFoundError):
            project.dataset("orders")
        assert project.run("orders").ok
        assert list(range(10)) == sorted(project.dataset("orders").to_arrow()["id"].to_pylist())
        assert project.run("orders").ok
        assert [1] == project.dataset("orders").versions()


def test_failed_publish_leaves_previous_version_untouched(make_project: ProjectFactory,
                                                          executor_settings: str) -> None:
    """A bad file fails the run; version 1 still reads exactly as before."""
    root = make_project({"orders": PIPELINE}, settings=executor_settings)
    _csv(root / "landing/a.csv", 0, 10)
    with hw.Project(root) as project:
        assert project.run("orders").ok
        write(root / "landing/b.csv", "id,v\n11,11\n12,12,12\n")
        failed = project.run("orders")
        assert "failed" == failed.status
        assert "b.csv line 3" in (failed.error or "")
        ds = project.dataset("orders")
        assert [1] == ds.versions()
        assert list(range(10)) == sorted(ds.to_arrow()["id"].to_pylist())
        # the bad file was not marked as seen: fixing it gets it ingested
        write(root / "landing/b.csv", "id,v\n11,11\n12,12\n")
        assert project.run("orders").ok
        assert 12 == ds.to_arrow().num_rows
