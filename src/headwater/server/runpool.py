"""Run executors in their own processes, so one GIL is not the ceiling of a busy server.

A run's own work is mostly Python around DuckDB and delta-rs calls (planning, store
records, logs); in one process every run and every webhook share one GIL, which capped a
server at ~1,500 small runs a minute on two cores. With ``HEADWATER_RUN_PROCESSES=N``
(or :attr:`ServerOptions.run_processes`) the server keeps its dispatcher, limits and
bookkeeping as they are (it still claims each run, so ``max_concurrent_runs`` and the
per-pipeline limits hold exactly) and hands each claimed run to one of N executor
processes, which execute it with the same engine as ``headwater run``.

Guarantees are those of runs in threads: an executor records the run's ``pid`` when it
starts it, so an executor that dies is noticed at once (its runs are queued again and
resume, as after a server crash, ``store.liveness``); executors die with their server
(``PR_SET_PDEATHSIG``), so a ``kill -9`` of the server leaves no run executing; cancel is
read from the store, as in threads. An executor ignores SIGINT/SIGTERM: a Ctrl-C reaches
the whole process group, and the server decides (graceful shutdown) what happens to
runs in flight, then tells each executor to kill its commands and exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from headwater.exceptions import HeadwaterError
from headwater.runtime import ProjectRuntime
from headwater.store import queue, runlock

log = logging.getLogger("headwater.server")

Outcome = tuple[str, str, list[tuple[str, int]]]
"""What an executed run reports: (pipeline, status, [(dataset, rows added), ...])."""


# --------------------------------------------------------------------------- one run


def execute_one(runtime: ProjectRuntime, run_id: str, worker: str,
                parking: str | None) -> Outcome | None:
    """Execute one claimed run to its end, whatever its steps do; None if the runner broke
    (the run is then recorded failed). Used by threads and executor processes alike."""
    from headwater.engine.runner import execute_run  # loads with the first run

    store = runtime.store
    try:
        row = execute_run(runtime, run_id, worker=worker, parking=parking)
        versions = [(str(v["dataset"]), int(v["rows_added"] or 0))
                    for v in store.versions_by_run(run_id)]
        return str(row["pipeline"]), str(row["status"]), versions
    except Exception:  # a run must never take the server (or its executor) down
        log.exception("run %s crashed the runner", run_id)
        _fail_unfinished(runtime, run_id, "internal error in the runner; see the server log")
    except (SystemExit, KeyboardInterrupt) as exc:  # raised by a step's own code
        # Only user code raises these in a worker thread (signals reach the main thread).
        # Left alone, the run would stay `running`, be taken over after its lease and
        # exit again, forever.
        raised = f"{type(exc).__name__}({', '.join(repr(a) for a in exc.args)})"
        log.error("run %s: a step raised %s", run_id, raised)
        _fail_unfinished(runtime, run_id, f"the step raised {raised}: a step must return or "
                         "raise an exception, not exit")
    return None


def _fail_unfinished(runtime: ProjectRuntime, run_id: str, message: str) -> None:
    try:
        queue.fail_unfinished(runtime.store, run_id, message)
    except HeadwaterError as exc:
        log.error("could not record run %s as failed: %s", run_id, exc.message)


# --------------------------------------------------------------------------- the pool


@dataclass
class _Executor:
    """One executor process as the server sees it."""

    proc: subprocess.Popen[bytes]
    conn: Connection
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    inflight: dict[str, Future[Outcome | None]] = field(default_factory=dict)


class RunPool:
    """``size`` executor processes; :meth:`execute` blocks the calling thread until the
    run ends (the server calls it from its run threads, so its accounting is unchanged)."""

    def __init__(self, runtime: ProjectRuntime, size: int, worker: str,
                 parking: str | None) -> None:
        self.runtime = runtime
        self.size = size
        self.worker = worker
        self.parking = parking
        self._executors: list[_Executor] = []
        self._changed = threading.Condition()
        """Guards the executors and their runs; notified when an executor comes or goes."""
        self._spawns: SimpleQueue[bool] = SimpleQueue()
        self._stopping = False

    def start(self) -> None:
        """Start the executors from one thread that lives as long as the pool: Linux
        sends the parent-death signal when the *thread* that started a child ends."""
        threading.Thread(target=self._spawner, name="hw-runpool-spawner", daemon=True).start()
        for _ in range(self.size):
            self._spawns.put(True)

    def _spawner(self) -> None:
        while self._spawns.get():
            with self._changed:
                if self._stopping:
                    return
            try:
                executor = self._spawn()
            except OSError as exc:
                log.error("cannot start a run executor process: %s", exc)
                time.sleep(1.0)
                self._spawns.put(True)
                continue
            with self._changed:
                self._executors.append(executor)
                self._changed.notify_all()

    def _spawn(self) -> _Executor:
        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "headwater.server.runpool", str(self.runtime.root),
               str(theirs.fileno()), self.worker, self.parking or "", self.runtime.env or "",
               str(os.getpid())]
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parents[2])
        if Path(package_parent).name not in ("site-packages", "dist-packages"):
            # a source checkout on sys.path by other means: the executor runs this code too
            env["PYTHONPATH"] = os.pathsep.join(
                [package_parent, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        try:
            proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                    env=env)
        finally:
            theirs.close()
        executor = _Executor(proc, Connection(ours.detach()))
        threading.Thread(target=self._listen, args=(executor,), daemon=True,
                         name=f"hw-runpool-{proc.pid}").start()
        return executor

    def execute(self, run_id: str) -> Outcome | None:
        """Run ``run_id`` (claimed by this server) in the least busy executor; None if the
        runner broke or its executor died (the run was then recorded or queued again)."""
        future: Future[Outcome | None] = Future()
        with self._changed:
            while not self._executors and not self._stopping:
                self._changed.wait()
            stopping = self._stopping
            if not stopping:
                executor = min(self._executors, key=lambda e: len(e.inflight))
                executor.inflight[run_id] = future
        if stopping:  # claimed as the server stopped: the next server resumes it
            self._requeue([run_id], os.getpid(), "its server stopped")
            return None
        try:
            with executor.send_lock:
                executor.conn.send(("run", run_id))
        except OSError:
            pass  # it died: its listener settles every run it had, this one too
        return future.result()

    def reload(self) -> None:
        """Pipelines changed (a deploy): executors read them again before their next run."""
        self._broadcast(("reload",))

    def stop(self) -> None:
        """Kill the executors' commands and the executors (runs in flight were queued
        again by the server first, or have ended)."""
        with self._changed:
            self._stopping = True
            executors = list(self._executors)
            self._changed.notify_all()
        self._broadcast(("stop",))
        for executor in executors:
            try:
                executor.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                executor.proc.kill()
        # only now: the spawner thread's end is the executors' parent-death signal, which
        # must not kill them before they killed their commands
        self._spawns.put(False)

    def _broadcast(self, message: tuple[str, ...], but: _Executor | None = None) -> None:
        with self._changed:
            executors = [e for e in self._executors if e is not but]
        for executor in executors:
            with contextlib.suppress(OSError), executor.send_lock:
                executor.conn.send(message)

    def _listen(self, executor: _Executor) -> None:
        """Settle the runs an executor reports; if it dies, queue its runs again."""
        while True:
            try:
                message = executor.conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "released":  # a run lock: its waiters may be elsewhere
                self._broadcast(("wake",), but=executor)
            elif message[0] == "done":
                _, run_id, outcome = message
                with self._changed:
                    future = executor.inflight.pop(run_id, None)
                if future is not None:
                    future.set_result(outcome)
        code = executor.proc.wait()
        self._executor_died(executor, code)

    def _executor_died(self, executor: _Executor, code: int) -> None:
        with self._changed:
            lost = dict(executor.inflight)
            executor.inflight.clear()
            if executor in self._executors:
                self._executors.remove(executor)
            replace = not self._stopping
        if lost and replace:
            log.error("run executor %d died (exit %s): queueing its %d run(s) again: %s",
                      executor.proc.pid, code, len(lost), ", ".join(lost))
            self._requeue(list(lost), executor.proc.pid)
        for future in lost.values():
            future.set_result(None)
        if replace:
            self._spawns.put(True)

    def _requeue(self, run_ids: list[str], pid: int,
                 reason: str = "its run executor process died") -> None:
        """Queue runs again to resume: those an executor started carry its pid, those it
        had not started yet still carry the server's."""
        try:
            queue.requeue_runs(self.runtime.store, run_ids, only_pid=pid, reason=reason)
            if pid != os.getpid():
                queue.requeue_runs(self.runtime.store, run_ids, only_pid=os.getpid(),
                                   reason=reason)
        except HeadwaterError as exc:
            log.error("could not queue runs %s again: %s", ", ".join(run_ids), exc.message)


# --------------------------------------------------------------------------- the executor


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the server dies (Linux), and now if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)


def _serve_executor(root: str, fd: int, worker: str, parking: str, env: str,
                    parent: int) -> None:
    """An executor's life: execute the runs the server sends, one thread each."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    conn = Connection(fd)
    send_lock = threading.Lock()
    runtime = ProjectRuntime.load(root, env or None)

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    def run(run_id: str) -> None:
        outcome = execute_one(runtime, run_id, worker, parking or None)
        with contextlib.suppress(OSError):
            send(("done", run_id, outcome))

    def released(_name: str) -> None:
        with contextlib.suppress(OSError):
            send(("released",))

    runlock.on_release(released)
    _loop(conn, runtime, run)


def _loop(conn: Connection, runtime: ProjectRuntime, run: Callable[[str], None]) -> None:
    # threads are reused (starting one per run cost ~3 ms under load); the server bounds
    # how many runs an executor has at once, so the pool's own bound is only a backstop
    threads = ThreadPoolExecutor(max_workers=256, thread_name_prefix="hw-run")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the server is gone
        if message[0] == "run":
            threads.submit(run, message[1])
        elif message[0] == "wake":
            runlock.wake_waiters()
        elif message[0] == "reload":
            runtime.forget_pipelines()
        elif message[0] == "stop":
            from headwater.steps.command import kill_running

            kill_running()
            logging.shutdown()
            os._exit(0)


if __name__ == "__main__":
    _root, _fd, _worker, _parking, _env, _parent = sys.argv[1:7]
    _serve_executor(_root, int(_fd), _worker, _parking, _env, int(_parent))
