"""A busy server: webhook runs queued in group-committed batches, claimed in batches within
every limit, and executed in run executor processes without losing a guarantee."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest

from headwater.store import queue
from headwater.store import schema as t
from headwater.store.liveness import process_alive
from headwater.store.store import Store
from tests.conftest import ProjectFactory
from tests.test_serve import Served, wait_for

HOOK = """
name: hook
triggers:
  - webhook: {token: tok}
steps:
  - id: a
    sql: SELECT 1 AS x
  - id: b
    sql: SELECT x + 1 AS y FROM a
"""

SLOW = """
name: slow
steps:
  - id: first
    sql: SELECT 1 AS x
  - id: nap
    command: "echo $$ > nap.pid; exec sleep {seconds}"
    needs: [first]
"""


def _request(pipeline: str, key: str | None = None) -> queue.FireRequest:
    return queue.FireRequest(pipeline=pipeline, kind="webhook", info={"webhook": True},
                             event_at=datetime.now(UTC), dedupe_key=key, params={"n": 1})


def test_fire_many_queues_a_batch_once_per_event(store_url: str) -> None:
    """One transaction queues the batch with consecutive run numbers; a key fired before,
    or twice in the batch, queues nothing more."""
    store = Store(store_url)
    try:
        first = queue.fire_many(store, [_request("p", "k1")])
        assert first[0] is not None
        ids = queue.fire_many(store, [_request("p", "k1"), _request("p"), _request("p", "k2"),
                                      _request("p", "k2"), _request("q")])
        assert ids[0] is None and ids[3] is None
        assert all(ids[i] is not None for i in (1, 2, 4))
        runs = store._read(t.runs.select().order_by(t.runs.c.seq))
        assert [1, 2, 3, 4] == [r["seq"] for r in runs]
        assert [first[0], ids[1], ids[2], ids[4]] == [r["id"] for r in runs]
        assert {"n": 1} == runs[1]["params"] and "queued" == runs[3]["status"]
        fires = store._read(t.trigger_fires.select())
        assert sorted(r["id"] for r in runs) == sorted(f["run_id"] for f in fires)
    finally:
        store.close()


def test_claim_many_takes_free_slots_within_each_pipeline_limit(store_url: str) -> None:
    """A burst of one limited pipeline is claimed up to its limit, counting runs already
    running store-wide; other pipelines fill the remaining slots in queue order."""
    store = Store(store_url)
    limits = {"one": 1, "two": 2}
    try:
        queue.fire_many(store, [_request(name) for name in
                                ["one", "one", "one", "free", "two", "two", "two", "free"]])
        taken = queue.claim_many(store, "w1", 10, limits.get)
        assert ["one", "free", "two", "two", "free"] == [p for _, p, _ in taken]
        assert all(created.tzinfo is not None for _, _, created in taken)
        assert [] == queue.claim_many(store, "w2", 10, limits.get)  # both limits reached
        queue.fail_unfinished(store, taken[0][0], "done")
        again = queue.claim_many(store, "w2", 1, limits.get)
        assert ["one"] == [p for _, p, _ in again]
        running = store._read(t.runs.select().where(t.runs.c.status == "running"))
        assert 5 == len(running) and {"w1", "w2"} == {r["worker"] for r in running}
    finally:
        store.close()


def test_concurrent_webhooks_run_once_each_in_run_executors(
        make_project: ProjectFactory, serve: Callable[..., Served]) -> None:
    """150 webhooks from 12 threads (every third a replay of an Idempotency-Key) queue one
    run per distinct request; each runs exactly once, in an executor process."""
    root = make_project({"hook": HOOK})
    server = serve(root, env={"HEADWATER_RUN_PROCESSES": "2"})
    answers: list[tuple[str, dict[str, str]]] = []
    lock = threading.Lock()

    def post(numbers: range) -> None:
        with httpx.Client(timeout=60) as client:
            for n in numbers:
                key = f"key-{n // 3}" if n % 3 == 0 else None  # 0, 3 share key-0, ...
                headers = {"Authorization": "Bearer tok",
                           **({"Idempotency-Key": key} if key else {})}
                reply = client.post(f"{server.url}/api/pipelines/hook/trigger",
                                    headers=headers)
                assert 202 == reply.status_code
                with lock:
                    answers.append((reply.json()["status"], headers))

    threads = [threading.Thread(target=post, args=(range(i, 150, 12),)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queued = [a for a in answers if a[0] == "queued"]
    assert 150 == len(answers) and 150 == len(queued)  # keys are distinct: key-0, key-1, ...
    replay = httpx.post(f"{server.url}/api/pipelines/hook/trigger",
                        headers={"Authorization": "Bearer tok", "Idempotency-Key": "key-0"})
    assert "duplicate" == replay.json()["status"]
    store = Store(f"sqlite:///{root / '.headwater' / 'headwater.db'}", migrate=False)
    try:
        wait_for(lambda: len([r for r in store.runs("hook", 500)
                              if r["status"] == "succeeded"]) == 150, 120)
        runs = store.runs("hook", 500)
        assert 150 == len(runs) and len({r["seq"] for r in runs}) == 150
        for run in runs:
            assert ["a", "b"] == sorted(s["step_id"] for s in store.steps(run["id"]))
        executors = {int(r["pid"]) for r in runs}
        assert server.proc.pid not in executors and 1 <= len(executors) <= 2
    finally:
        store.close()


def test_a_dead_executor_s_run_resumes_and_the_server_s_death_ends_executors(
        make_project: ProjectFactory, serve: Callable[..., Served]) -> None:
    """kill -9 of the executor running a run: the run is queued again at once and
    finishes once, its succeeded step reused; kill -9 of the server ends every executor."""
    root = make_project({"slow": SLOW.format(seconds=3)})
    server = serve(root, env={"HEADWATER_RUN_PROCESSES": "2"})
    store = Store(f"sqlite:///{root / '.headwater' / 'headwater.db'}", migrate=False)
    try:
        run_id = store.create_run("slow")
        wait_for(lambda: (root / "nap.pid").exists() and (root / "nap.pid").read_text(), 60)
        executor = int(store.run(run_id)["pid"])
        assert executor != server.proc.pid
        os.kill(executor, signal.SIGKILL)
        wait_for(lambda: store.run(run_id)["status"] == "succeeded", 60)
        steps = [(s["step_id"], s["status"]) for s in store.steps(run_id)]
        assert ("first", "reused") in steps and ("nap", "succeeded") in steps
        assert 1 == len([s for s in steps if s == ("nap", "succeeded")])
        assert "died" in server.log.read_text()
        children = [p.pid for p in psutil.Process(server.proc.pid).children()]
        assert len(children) == 2  # the dead executor was replaced
        server.stop(signal.SIGKILL)
        wait_for(lambda: not any(process_alive(pid) for pid in children), 10)
    finally:
        store.close()


@pytest.mark.parametrize("processes", ["0", "2"])
def test_sigterm_waits_for_runs_then_queues_the_rest(
        make_project: ProjectFactory, serve: Callable[..., Served], processes: str,
        tmp_path: Path) -> None:
    """A graceful shutdown past its grace queues the unfinished run again and kills its
    command, with or without run executors; the executors exit with the server."""
    root = make_project({"slow": SLOW.format(seconds=120)})
    server = serve(root, env={"HEADWATER_RUN_PROCESSES": processes,
                              "HEADWATER_SHUTDOWN_GRACE": "0.5"})
    store = Store(f"sqlite:///{root / '.headwater' / 'headwater.db'}", migrate=False)
    try:
        run_id = store.create_run("slow")
        wait_for(lambda: (root / "nap.pid").exists() and (root / "nap.pid").read_text(), 60)
        nap = int((root / "nap.pid").read_text())
        children = [p.pid for p in psutil.Process(server.proc.pid).children()
                    if p.pid != nap]
        assert 0 == server.stop()
        assert "queued" == store.run(run_id)["status"]
        wait_for(lambda: not process_alive(nap), 10)
        wait_for(lambda: not any(process_alive(pid) for pid in children), 10)
        time.sleep(0.2)
        assert "queued" == store.run(run_id)["status"]
    finally:
        store.close()


PUBLISH = """
name: ingest
triggers:
  - webhook: {token: tok}
steps:
  - id: a
    sql: SELECT {{ params.n }} AS n
  - id: p
    publish: {input: a, dataset: events}
params: {n: 0}
"""


def test_publishes_to_one_dataset_take_turns_across_executors(
        make_project: ProjectFactory, serve: Callable[..., Served]) -> None:
    """Runs in two executors append to one dataset: one version per run, each row once,
    each version credited to the run that committed it."""
    root = make_project({"ingest": PUBLISH})
    server = serve(root, env={"HEADWATER_RUN_PROCESSES": "2"})
    with httpx.Client(timeout=60) as client:
        for n in range(1, 25):
            reply = client.post(f"{server.url}/api/pipelines/ingest/trigger",
                                headers={"Authorization": "Bearer tok"},
                                json={"params": {"n": n}})
            assert 202 == reply.status_code
    store = Store(f"sqlite:///{root / '.headwater' / 'headwater.db'}", migrate=False)
    try:
        wait_for(lambda: len([r for r in store.runs("ingest", 100)
                              if r["status"] == "succeeded"]) == 24, 120)
        runs = store.runs("ingest", 100)
        assert len({int(r["pid"]) for r in runs}) == 2  # both executors published
        versions = store.versions("events")
        assert 24 == len(versions)
        assert sorted(r["id"] for r in runs) == sorted(v["run_id"] for v in versions)
        assert list(range(1, 25)) == [v["version"] for v in
                                      sorted(versions, key=lambda v: v["delta_version"])]
    finally:
        store.close()
    import headwater as hw

    with hw.Project(root) as project:
        assert list(range(1, 25)) == sorted(project.dataset("events").to_arrow()["n"]
                                            .to_pylist())


def test_a_lock_released_elsewhere_wakes_waiters_at_once(tmp_path: Path) -> None:
    """A waiter polling rarely takes its turn as soon as another process's release is
    passed on (``wake_waiters``), and this process's releases reach ``on_release``."""
    from headwater.store import runlock

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    released: list[str] = []
    runlock.on_release(released.append)
    try:
        holder, waiter = store.create_run("p"), store.create_run("p")
        for run_id in (holder, waiter):
            assert queue.claim_run(store, run_id, "w")
        assert runlock.try_acquire(store, "dataset:d", holder, 30) is None
        took: list[float] = []

        def wait() -> None:
            runlock.acquire(store, "dataset:d", waiter, lease_seconds=30,
                            on_wait=lambda _h: None, cancelled=lambda: False,
                            poll_seconds=30)
            took.append(time.monotonic())

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.5)
        with store.tx() as conn:  # the holder's process releases it, as another would
            conn.execute(t.run_locks.delete().where(t.run_locks.c.run_id == holder))
        woke = time.monotonic()
        runlock.wake_waiters()
        thread.join(timeout=10)
        assert took and took[0] - woke < 5.0  # not the 30 s poll
        runlock.release(store, "dataset:d", waiter)
        assert "dataset:d" in released
    finally:
        runlock._LISTENERS.remove(released.append)
        store.close()
