"""``headwater serve`` as a real process: triggers fire runs, the API answers, servers share."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import headwater as hw
from headwater.store.queue import save_trigger_state
from tests.conftest import ProjectFactory, write

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    def __init__(self, root: Path, env: dict[str, str] | None = None,
                 worker: str = "test") -> None:
        self.root = root
        self.port = _free_port()
        self.log = root / f"serve-{self.port}.log"
        self._log_handle = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "headwater.cli.main", "serve", "--port", str(self.port),
             "--worker", worker, "--project", str(root)],
            stdout=subprocess.DEVNULL, stderr=self._log_handle,
            env={**os.environ, "HEADWATER_HEARTBEAT_SECONDS": "0.5",
                 "HEADWATER_LEASE_SECONDS": "3", **(env or {})})
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 90  # a loaded 2-core machine has taken 20 s to start one
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200 \
                        and self._armed():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.log.read_text())

    def _armed(self) -> bool:
        """Health answers as soon as the port is bound, before the triggers are armed
        (``server/starting.py``); tests that change pipelines or the store afterwards
        need the server to have read them first ("serving ... (N triggers)")."""
        return "headwater.server: serving " in self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self._log_handle.close()
        return code




def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


INGEST = """
name: ingest
triggers:
  - files: {path: in, pattern: "*.csv", settle: 200ms, batch_window: 100ms}
  - webhook: {token: "${env:HOOK_TOKEN}"}
params: {note: none}
steps:
  - id: raw
    source: {type: files, path: in/*.csv, incremental: true}
  - id: out
    publish: {input: raw, dataset: ingest}
"""


def test_file_arrival_runs_pipeline_and_webhook_rules(make_project: ProjectFactory,
                                                      serve: Callable[..., Served]) -> None:
    """A dropped file starts a run within seconds; webhook 401/404/422 queue nothing."""
    root = make_project({"ingest": INGEST})
    (root / "in").mkdir()
    server = serve(root, env={"HOOK_TOKEN": "hook-secret-1"})
    write(root / "in/a.csv", "id\n1\n2\n")
    dropped = datetime.now(UTC)
    with hw.Project(root) as project:
        run = wait_for(lambda: [r for r in project.runs("ingest") if r.status == "succeeded"])
        assert "files" == run[0].trigger
        assert (run[0].started_at - dropped).total_seconds() < 3.0
        hook = f"{server.url}/api/pipelines/ingest/trigger"
        good = {"Authorization": "Bearer hook-secret-1"}
        assert 401 == httpx.post(hook, headers={"Authorization": "Bearer no"}).status_code
        assert 404 == httpx.post(f"{server.url}/api/pipelines/nope/trigger",
                                 headers=good).status_code
        assert 422 == httpx.post(hook, headers=good, json={"params": {"bad": 1}}).status_code
        assert 1 == len(project.runs("ingest"))
        answer = httpx.post(hook, headers=good, json={"params": {"note": "hi"}})
        assert 202 == answer.status_code
        hooked = wait_for(lambda: [r for r in project.runs("ingest")
                                   if r.trigger == "webhook" and r.status == "succeeded"])
        assert {"note": "hi"} == hooked[0].params
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "headwater_event_to_start_seconds_count" in metrics
    assert 0 == server.stop()


def test_dataset_trigger_and_code_change(make_project: ProjectFactory,
                                         serve: Callable[..., Served]) -> None:
    """A publish fires its downstream pipeline; a meaningful SQL edit reruns once, a
    comment-only edit does not."""
    down = """
    name: down
    triggers:
      - dataset: ingest
      - code_change: true
    steps:
      - id: src
        source: {type: dataset, name: ingest}
      - id: agg
        sql: sql/agg.sql
      - id: out
        publish: {input: agg, dataset: down, mode: overwrite}
    """
    root = make_project({"ingest": INGEST, "down": down},
                        {"sql/agg.sql": "SELECT count(*) AS n FROM src\n"})
    (root / "in").mkdir()
    write(root / "in/a.csv", "id\n1\n")
    with hw.Project(root) as project:
        assert project.run("ingest").ok
        assert project.run("down").ok
    serve(root, env={"HOOK_TOKEN": "x"})
    write(root / "in/b.csv", "id\n2\n")
    with hw.Project(root) as project:
        wait_for(lambda: [r for r in project.runs("down") if r.trigger == "dataset"
                          and r.status == "succeeded"])
        write(root / "sql/agg.sql", "-- just a comment\nselect   count(*) as n from src\n")
        time.sleep(2.0)
        assert [] == [r for r in project.runs("down") if r.trigger == "code_change"]
        write(root / "sql/agg.sql", "SELECT count(*) * 10 AS n FROM src\n")
        wait_for(lambda: [r for r in project.runs("down") if r.trigger == "code_change"
                          and r.status == "succeeded"])
        time.sleep(1.5)
        assert 1 == len([r for r in project.runs("down") if r.trigger == "code_change"])
        assert [20] == project.dataset("down").to_arrow()["n"].to_pylist()


def test_schedule_catches_up_each_missed_window_once(make_project: ProjectFactory,
                                                     serve: Callable[..., Served]) -> None:
    """Down for three minutely windows, the server runs exactly those three on start."""
    tick = """
    name: tick
    triggers:
      - schedule: {cron: "* * * * *", timezone: Europe/Berlin, catchup: true}
    steps:
      - id: w
        sql: SELECT '{{ window.start }}' AS s, '{{ window.end }}' AS e
    """
    root = make_project({"tick": tick})
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    if datetime.now(UTC).second > 50:  # keep the test clear of a minute boundary
        time.sleep(11)
        now = datetime.now(UTC).replace(second=0, microsecond=0)
    last = now - timedelta(minutes=3)
    with hw.Project(root) as project:
        save_trigger_state(project.runtime.store, "tick", 0, "schedule",
                           cursor={"last": last.isoformat()})
    serve(root)
    with hw.Project(root) as project:
        runs = wait_for(lambda: [r for r in project.runs("tick") if r.status == "succeeded"]
                        if len(project.runs("tick")) >= 3 else None)
        time.sleep(1.0)
        rows = project.runtime.store.runs("tick")
        windows = sorted((r["window_start"], r["window_end"]) for r in rows)
        expected = [(last + timedelta(minutes=i), last + timedelta(minutes=i + 1))
                    for i in range(3)]
        assert expected == windows[:3]
        assert len(windows) == len(set(windows))
        assert runs


def test_sigterm_requeues_and_restart_resumes(make_project: ProjectFactory,
                                              serve: Callable[..., Served]) -> None:
    """A run still going at shutdown is queued again and finished by the next server."""
    slow = """
    name: slow
    steps:
      - id: first
        sql: SELECT 1 AS x
      - id: nap
        command: sleep 4
        needs: [first]
    """
    root = make_project({"slow": slow})
    server = serve(root, env={"HEADWATER_SHUTDOWN_GRACE": "0.5"})
    with hw.Project(root) as project:
        run_id = project.queue("slow")
        wait_for(lambda: any(s["step_id"] == "nap"
                             for s in project.runtime.store.steps(run_id)))
        assert 0 == server.stop()
        assert "queued" == project.runtime.store.run(run_id)["status"]
        serve(root)
        wait_for(lambda: project.runtime.store.run(run_id)["status"] == "succeeded", 30)
        statuses = [(s["step_id"], s["status"]) for s in project.runtime.store.steps(run_id)]
        assert ("first", "reused") in statuses


def test_shutdown_kills_the_command_before_requeueing(make_project: ProjectFactory,
                                                      serve: Callable[..., Served]) -> None:
    """A graceful shutdown that gives up on a running command step kills its process
    group before queueing the run again, so a restart never runs it twice at once."""
    from headwater.store.liveness import process_alive

    slow = """
    name: slow
    steps:
      - id: train
        command: "echo $$ > train.pid; exec sleep 120"
    """
    root = make_project({"slow": slow})
    server = serve(root, env={"HEADWATER_SHUTDOWN_GRACE": "0.5"})
    with hw.Project(root) as project:
        run_id = project.queue("slow")
        pid_file = root / "train.pid"
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
        pid = int(pid_file.read_text())
        assert 0 == server.stop()
        assert "queued" == project.runtime.store.run(run_id)["status"]
        wait_for(lambda: not process_alive(pid), 10)


@pytest.mark.services
def test_two_servers_on_postgres_never_double_run(make_project: ProjectFactory,
                                                  serve: Callable[..., Served],
                                                  pg_database: str) -> None:
    """Two servers share a PostgreSQL store: each webhook run and each file runs once,
    and a killed server's run is taken over after its lease."""
    work = """
    name: work
    max_concurrent_runs: 4
    triggers:
      - webhook: {token: tok}
    steps:
      - id: a
        sql: SELECT 1 AS x
      - id: b
        sql: SELECT x + 1 AS y FROM a
    """
    slow = """
    name: slow
    steps:
      - id: nap
        command: sleep 3
    """
    root = make_project({"work": work, "ingest": INGEST, "slow": slow},
                        settings=f"store: {pg_database}\n")
    (root / "in").mkdir()
    one = serve(root, worker="one", env={"HOOK_TOKEN": "x"})
    two = serve(root, worker="two", env={"HOOK_TOKEN": "x"})
    for i in range(30):
        url = (one if i % 2 else two).url
        assert 202 == httpx.post(f"{url}/api/pipelines/work/trigger",
                                 headers={"Authorization": "Bearer tok"}).status_code
    for i in range(10):
        write(root / f"in/f{i}.csv", f"id\n{i}\n")
    with hw.Project(root) as project:
        store = project.runtime.store
        wait_for(lambda: len([r for r in store.runs("work", 100)
                              if r["status"] == "succeeded"]) == 30, 60)
        for run in store.runs("work", 100):
            assert 2 == len(store.steps(run["id"]))  # each step executed exactly once
        assert {"one", "two"} >= {r["worker"] for r in store.runs("work", 100)}
        wait_for(lambda: project.dataset("ingest").to_arrow().num_rows == 10
                 if store.datasets() else False, 60)
        time.sleep(2)
        assert list(range(10)) == sorted(project.dataset("ingest").to_arrow()["id"].to_pylist())
        run_id = project.queue("slow")
        owner = wait_for(lambda: store.run(run_id)["worker"], 20)
        victim = one if owner == "one" else two
        victim.stop(signal.SIGKILL)
        wait_for(lambda: store.run(run_id)["status"] == "succeeded", 40)
        assert owner != store.run(run_id)["worker"]


def test_serve_on_a_busy_port_exits_2_and_claims_nothing(make_project: ProjectFactory) -> None:
    """``serve`` on a port already in use says so and exits 2 without claiming (and so
    abandoning) a queued run, and never claims to be serving."""
    root = make_project({"ingest": INGEST})
    with socket.socket() as busy, hw.Project(root) as project:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run_id = project.queue("ingest")
        result = subprocess.run(
            [sys.executable, "-m", "headwater.cli.main", "serve", "--port", str(port),
             "--project", str(root)], capture_output=True, text=True, timeout=60,
            env={**os.environ, "HOOK_TOKEN": "t"})
        assert 2 == result.returncode, result.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
        assert "serving on" not in result.stderr
        assert "queued" == project.runtime.store.run(run_id)["status"]


def test_serve_reports_config_errors_before_serving(make_project: ProjectFactory) -> None:
    """A broken ``headwater.yaml`` stops ``serve`` with exit 2 and the file's error, and
    nothing claims to be serving first."""
    root = make_project({"ingest": INGEST}, settings="max_concurrent_runs: many\n")
    result = subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", "serve", "--port", str(_free_port()),
         "--project", str(root)], capture_output=True, text=True, timeout=60)
    assert 2 == result.returncode, result.stderr
    assert "max_concurrent_runs" in result.stderr
    assert "serving on" not in result.stderr
