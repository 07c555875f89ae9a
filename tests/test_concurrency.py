"""Runs of one incremental pipeline at once, across processes: store-wide turns (issue 8).

Several ``headwater run`` processes on one store (SQLite or PostgreSQL) take turns through
the store's run lock, so every row is ingested exactly once and every dataset version is
credited to the run that made it. A run whose process died is ended at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import headwater as hw
from headwater.store import runlock
from headwater.store.liveness import reap_dead
from headwater.store.store import Store
from tests.conftest import INCREMENTAL_ORDERS, ProjectFactory, write

PIPELINE = INCREMENTAL_ORDERS


def _files(root: Path, first: int, count: int, rows: int = 25) -> None:
    for n in range(first, first + count):
        write(root / f"landing/f{n:04d}.csv",
              "id,v\n" + "".join(f"{n * rows + i},{i}\n" for i in range(rows)))


def _cli(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "headwater.cli.main", *args,
                             "--project", str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(params=["sqlite", "postgres"])
def store_setting(request: pytest.FixtureRequest) -> str:
    """``headwater.yaml`` store lines for a fresh store on each backend."""
    if request.param == "sqlite":
        return ""
    request.applymarker(pytest.mark.services)
    return f"store: {request.getfixturevalue('pg_database')}\n"


@pytest.mark.slow
def test_five_parallel_cli_runs_ingest_every_row_once(make_project: ProjectFactory,
                                                      store_setting: str) -> None:
    """Five ``headwater run`` processes started together on a fresh store (files arriving
    meanwhile): no migration race, 0 duplicated rows, every version credited to its own
    run, no run left running."""
    root = make_project({"orders": PIPELINE}, settings=store_setting)
    _files(root, 0, 150)
    procs = [_cli(root, "run", "orders") for _ in range(5)]
    time.sleep(0.5)
    _files(root, 150, 150)  # more arrive while the runs take turns
    results = [p.communicate(timeout=240) for p in procs]
    assert [0] * 5 == [p.returncode for p in procs], [r[1][-800:] for r in results]
    with hw.Project(root) as project:
        assert project.run("orders").ok  # whatever arrived after the five
        ids = project.dataset("orders").to_arrow()["id"].to_pylist()
        duplicated = sum(n - 1 for n in Counter(ids).values() if n > 1)
        assert (0, 300 * 25) == (duplicated, len(set(ids)))
        store = project.runtime.store
        versions = store.versions("orders")
        assert len(versions) == len({v["run_id"] for v in versions})
        for version in versions:  # the run's own publish step names this version
            run = project.get_run(version["run_id"])
            published = [s.info.get("version") for s in run.steps if s.step_id == "publish"]
            assert [version["version"]] == published
        assert [] == [r.id for r in project.runs(limit=100) if r.status == "running"]
        assert {} == runlock.holders(store)


def test_second_run_waits_for_the_first_and_names_it(make_project: ProjectFactory) -> None:
    """A run of an incremental pipeline waits while another live run holds the pipeline's
    turn, logs whom it waits for, and then reads only the files still unseen."""
    root = make_project({"orders": PIPELINE})
    _files(root, 0, 4)
    with hw.Project(root) as project:
        store = project.runtime.store
        holder = store.create_run("orders", status="running")  # alive: this very process
        runlock.try_acquire(store, runlock.pipeline_lock("orders"), holder, 30)
        waiter = _cli(root, "run", "orders")
        time.sleep(3)
        assert waiter.poll() is None  # still waiting
        waiting = project.runs("orders")[0]
        assert any(f"waiting for run {holder}" in line["message"]
                   for line in project.logs(waiting.id))
        store.finish_run(holder, "succeeded")  # a finished holder no longer holds it
        _out, err = waiter.communicate(timeout=60)
        assert 0 == waiter.returncode, err
        assert 100 == project.dataset("orders").to_arrow().num_rows


def test_dead_local_holder_is_taken_over_at_once(make_project: ProjectFactory,
                                                 store_url: str) -> None:
    """A lock held by a run whose process on this host is gone is taken over without
    waiting for a lease, and that run is ended ("its process died")."""
    store = Store(store_url)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = store.create_run("orders", status="running")
    store.update_run(holder, pid=dead.pid)
    name = runlock.pipeline_lock("orders")
    assert runlock.try_acquire(store, name, holder, 3600) is None
    other = store.create_run("orders", status="running")
    assert runlock.try_acquire(store, name, other, 3600) is None
    assert {name: other} == runlock.holders(store)
    ended = store.run(holder)
    assert "failed" == ended["status"]
    assert "its process died" in ended["error"]
    store.close()


def test_live_holder_keeps_its_lock_and_stale_one_loses_it(store_url: str) -> None:
    """A live holder keeps the lock; once its heartbeat is older than the lease, it is
    taken over (a holder on another host, whose pid cannot be checked)."""
    store = Store(store_url)
    holder = store.create_run("orders", status="running")
    store.update_run(holder, host="elsewhere")
    name = runlock.pipeline_lock("orders")
    assert runlock.try_acquire(store, name, holder, 3600) is None
    other = store.create_run("orders", status="running")
    assert holder == runlock.try_acquire(store, name, other, 3600)
    assert runlock.try_acquire(store, name, other, 0.0) is None
    store.close()


def test_state_upsert_tolerates_a_concurrent_writer(store_url: str) -> None:
    """Writing the same incremental-state key twice (a run and a repair recording the same
    commit) updates it instead of failing with a unique violation."""
    store = Store(store_url)
    store.put_state("p", {("raw", "a.csv"): {"size": 1}}, "r1")
    store.put_state("p", {("raw", "a.csv"): {"size": 2}}, "r2")
    assert {"a.csv": {"size": 2}} == store.state("p", "raw")
    store.close()


def test_fresh_sqlite_store_migrates_once_under_racing_processes(tmp_path: Path) -> None:
    """Six processes opening one fresh SQLite store at once all succeed (no
    ``table ... already exists``): migrating is serialised by a lock file."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = f"from headwater.store.store import Store; Store({url!r}).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [0] * 6 == [p.returncode for p in procs], errors


@pytest.mark.slow
def test_kill_9_mid_step_then_new_run(make_project: ProjectFactory) -> None:
    """A CLI run killed with SIGKILL mid-step is ended at once (not left running), and the
    next run ingests its files exactly once."""
    slow = PIPELINE.replace("  - id: publish\n    publish: {input: raw, dataset: orders}",
                            "  - id: wait\n    command: sleep 30\n"
                            "  - id: publish\n    needs: [wait]\n"
                            "    publish: {input: raw, dataset: orders}")
    root = make_project({"orders": slow})
    _files(root, 0, 8)
    proc = _cli(root, "run", "orders")
    with hw.Project(root) as project:
        deadline = time.time() + 60
        while time.time() < deadline:
            runs = project.runs("orders")
            if runs and any(s.step_id == "wait" for s in project.get_run(runs[0].id).steps):
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        killed = project.runs("orders")[0]
        assert "failed" == killed.status
        assert "its process died" in (killed.error or "")
        write(root / "pipelines/orders.yaml", PIPELINE)
        project2 = hw.Project(root)
        assert project2.run("orders").ok
        ids = project2.dataset("orders").to_arrow()["id"].to_pylist()
        assert sorted(ids) == sorted(set(ids))
        assert 200 == len(ids)
        assert [] == [r.id for r in project2.runs() if r.status == "running"]
        assert [] == reap_dead(project2.runtime.store)
        project2.close()
