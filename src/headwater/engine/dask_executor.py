"""The Dask executor: steps and source partitions run as tasks on Dask distributed.

``executor: {type: dask, address: tcp://host:8786}`` joins an existing cluster;
``{type: dask, local_cluster: {workers: N}}`` starts N worker processes on this machine
(once per process, shared by its runs). Only this module imports ``distributed``, and
only when a project names it, so the local path never pays for it.

What runs where. The engine keeps everything stateful on the server that claimed the run:
the DAG loop, retries, timeouts, cancel, store records, the Delta commit and the
after-commit hooks. What is heavy runs on workers:

- ``sql``, ``validate`` and ``python`` steps are shipped whole (``_remote``): the worker
  loads the project from its folder, re-creates the upstream views in its own DuckDB,
  runs the step function and writes the result to a Parquet spill in the run folder.
- Partitioned sources fan out (``ctx.fan_out``): a files source scans groups of files,
  a SQL source with ``partitions:`` reads each range, one task each, into Parquet files.

Data therefore moves between steps only through the run folder (which workers must see
at the same path), never through the scheduler: a task's result is a relation's text,
file names and counts. A publish over such files fans out too (``steps.publish_fan``):
each task writes its share of the version into the table root and returns the files'
descriptions; the server commits all of them in one Delta transaction with the run's
app id, so a version is atomic and exactly-once.

A worker that dies takes its tasks with it; the scheduler runs them again elsewhere
(``distributed.scheduler.allowed-failures`` times, then ``KilledWorker``, which fails the
attempt as retryable). Each attempt writes under fresh names and a file appears only when
complete, so a retried partition never leaves a half or a second copy of its rows.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from headwater.exceptions import ConfigError, ExecutorError, HeadwaterError, StepError
from headwater.steps.base import StepOutput, step_function

if TYPE_CHECKING:
    from headwater.engine.context import RunContext
    from headwater.runtime import ProjectRuntime

log = logging.getLogger("headwater.engine.dask")

T = TypeVar("T")

REMOTE_KINDS = frozenset({"sql", "validate", "python"})
"""Step kinds shipped whole to a worker. The others stay on the server: sources plan
there and fan their partitions out, publish commits there, and streams, commands, http
and waits hold sockets, processes or after-commit hooks that must not leave it."""

POLL_SECONDS = 0.2
"""How often a waiting attempt looks at its interrupt (timeout, cancel)."""

_LOCK = threading.Lock()
_CLIENTS: dict[str, Any] = {}
"""address → Client: one connection per process, shared by its runs."""
_CLUSTERS: dict[tuple[int, int], Any] = {}
"""(workers, threads) → a LocalCluster this process started."""
_CLOSE_REGISTERED = False

LOCAL_CLUSTER_QUIET: dict[str, Any] = {
    "dashboard_address": None, "silence_logs": logging.ERROR,
    # the scheduler's HTTP server (health, metrics) starts even without a dashboard, on
    # :8787 unless told otherwise; another cluster there costs a warning: any free port
    "scheduler_kwargs": {"dashboard_address": ":0"}}
"""LocalCluster options: no dashboard, no fixed port, only errors logged."""


def _distributed() -> Any:
    global _CLOSE_REGISTERED
    try:
        import distributed
    except ImportError:
        raise ConfigError(
            "executor type dask needs the [dask] extra, which is not installed: "
            "pip install 'headwater[dask]' (or use 'executor: local')", problems=[]) from None
    if not _CLOSE_REGISTERED:  # after distributed's own exit hooks, so ours run first
        _CLOSE_REGISTERED = True
        atexit.register(_close_all)
    return distributed


def importable() -> bool:
    """Whether the ``[dask]`` extra imports here (``check`` asks before any run does)."""
    try:
        _distributed()
    except ConfigError:
        return False
    return True


def cluster_address(config: Any) -> str:
    """The scheduler's address: the configured one, or this process's local cluster's."""
    if config.address is not None:
        return str(config.address)
    distributed = _distributed()
    spec = (int(config.local_cluster.workers), int(config.local_cluster.threads_per_worker))
    with _LOCK:
        cluster = _CLUSTERS.get(spec)
        if cluster is None:
            try:
                cluster = distributed.LocalCluster(
                    n_workers=spec[0], threads_per_worker=spec[1], processes=True,
                    **LOCAL_CLUSTER_QUIET)
            except Exception as exc:  # noqa: BLE001 - any start failure ends the run clearly
                raise ExecutorError(
                    f"could not start a local Dask cluster of {spec[0]} worker processes "
                    f"({type(exc).__name__}: {exc}); a Python script that runs pipelines "
                    "must guard its entry with `if __name__ == '__main__':`, because "
                    "worker processes import it") from None
            _CLUSTERS[spec] = cluster
        return str(cluster.scheduler_address)


def connect(config: Any) -> Any:
    """A client of the configured cluster, or an ``ExecutorError`` naming the address."""
    distributed = _distributed()
    address = cluster_address(config)
    with _LOCK:
        client = _CLIENTS.get(address)
        if client is not None and client.status == "running":
            return client
        try:
            client = distributed.Client(address, timeout=float(config.connect_timeout),
                                        set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(
                f"cannot reach the Dask scheduler at {address} within "
                f"{float(config.connect_timeout):g}s ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no answer'}); start it, fix "
                "executor.address in headwater.yaml, or use 'executor: local'") from None
        _CLIENTS[address] = client
        return client


def probe(config: Any) -> tuple[str, bool, str]:
    """``check --connections``: can this server reach the scheduler, and with how many
    workers? A local cluster is not started just to be checked."""
    if config.address is None:
        try:
            _distributed()
        except ConfigError as exc:
            return "scheduler", False, exc.message
        return "scheduler", True, (f"not checked: a local cluster of "
                                   f"{config.local_cluster.workers} workers starts with "
                                   "the first run")
    try:
        client = connect(config)
        workers = len(client.scheduler_info().get("workers", {}))
    except HeadwaterError as exc:
        return "scheduler", False, exc.message
    if not workers:
        return "scheduler", False, (f"the Dask scheduler at {config.address} has no "
                                    "workers: steps would wait for one")
    return "scheduler", True, f"reachable at {config.address} with {workers} workers"


def disconnect(address: str) -> None:
    """Close this process's client of ``address`` (before that cluster goes away)."""
    with _LOCK:
        client = _CLIENTS.pop(address, None)
    if client is not None:
        with contextlib.suppress(Exception):
            client.close()


def _close_all() -> None:
    """Close clients, then the local clusters this process started."""
    for client in list(_CLIENTS.values()):
        with contextlib.suppress(Exception):
            client.close()
    _CLIENTS.clear()
    for cluster in list(_CLUSTERS.values()):
        with contextlib.suppress(Exception):
            cluster.close()
    _CLUSTERS.clear()


class DaskExecutor:
    """Attempts run on server threads that mostly wait; their work runs on workers."""

    def __init__(self, config: Any, threads: int = 32) -> None:
        self.config = config
        self.client = connect(config)
        self.address = str(self.client.scheduler.address)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hw-dask")

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        return self._pool.submit(fn)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def run_step(self, kind: str, ctx: RunContext, step: Any) -> StepOutput:
        if kind in REMOTE_KINDS:
            return self._remote(kind, ctx, step)

        def fan_out(func: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
            return self.map(ctx, func, items)

        ctx.fan_out = fan_out
        return step_function(kind)(ctx, step)

    # ------------------------------------------------------------------ fan-out

    def map(self, ctx: RunContext, func: Callable[[Any], Any], items: Sequence[Any]
            ) -> list[Any]:
        """``[func(item) ...]`` as one task per item, in order; the attempt's interrupt
        cancels them. The first task that fails cancels the others and is raised."""
        batch = uuid.uuid4().hex[:10]
        keys = [f"hw-part-{ctx.step_id}-{batch}-{i}" for i in range(len(items))]
        futures = self.client.map(functools.partial(_task, func), list(items), key=keys,
                                  pure=False)
        self._wait(ctx, futures)
        return list(self.client.gather(futures))

    def _wait(self, ctx: RunContext, futures: list[Any]) -> None:
        """Until every task finished; the first error, or the attempt's interrupt,
        cancels the rest. Completion callbacks wake this thread at once; the poll only
        bounds how late an interrupt is seen."""
        changed = threading.Event()
        for future in futures:
            future.add_done_callback(lambda _f: changed.set())
        while True:
            changed.clear()
            if ctx.interrupted is not None or ctx.cancel_event.is_set():
                self.client.cancel(futures)
                raise StepError(f"interrupted ({ctx.interrupted or 'cancelled'})")
            statuses = [future.status for future in futures]
            failed = [f for f, status in zip(futures, statuses, strict=True)
                      if status == "error" or (status == "finished" and f.type is Raised)]
            if failed:
                self.client.cancel([f for f in futures if f is not failed[0]])
                raise _failure(failed[0])
            if "cancelled" in statuses:
                raise ExecutorError("the Dask cluster cancelled this step's tasks "
                                    f"(scheduler {self.address} restarted?)")
            if all(status == "finished" for status in statuses):
                return
            changed.wait(POLL_SECONDS)

    # ------------------------------------------------------------------ whole steps

    def _remote(self, kind: str, ctx: RunContext, step: Any) -> StepOutput:
        distributed = _distributed()
        key = f"hw-step-{ctx.run_id}-{ctx.step_id}-{ctx.attempt}-{uuid.uuid4().hex[:8]}"
        task = RemoteStep(
            kind=kind, step=step, root=str(ctx.project.root), env=ctx.project.env,
            run={"run_id": ctx.run_id, "run_seq": ctx.run_seq, "pipeline": ctx.pipeline,
                 "step_id": ctx.step_id, "attempt": ctx.attempt,
                 "code_version": ctx.code_version, "trigger": ctx.trigger},
            workdir=str(ctx.workdir), inputs=dict(ctx.inputs), lineage=ctx.lineage,
            template_vars=dict(ctx.template_vars), views=_views(ctx), interrupt=key)
        signal = distributed.Event(key, client=self.client)
        ctx.on_interrupt(signal.set)
        future = self.client.submit(run_remote_step, task, key=key, pure=False)
        # no clean-up: an event nobody set is dropped by the scheduler when its last
        # waiter times out; a set one (an interrupted step) is a few bytes until restart
        self._wait(ctx, [future])
        result: RemoteResult = future.result()
        for level, message, fields in result.logs:
            ctx.log(message, level=level, **fields)
        if result.error is not None:
            raise result.error
        assert result.output is not None
        return result.output


def _failure(future: Any) -> BaseException:
    """A failed task's exception; a worker lost too often becomes an ``ExecutorError``."""
    if future.status == "finished":
        raised: Raised = future.result()
        return raised.error
    exc = future.exception()
    if type(exc).__name__ == "KilledWorker":
        return ExecutorError(f"the Dask workers running {future.key} died repeatedly "
                             f"({exc}); the attempt failed and may be retried")
    return exc if isinstance(exc, BaseException) else ExecutorError(str(exc))


def _views(ctx: RunContext) -> list[str]:
    """The ``CREATE VIEW`` statements of earlier steps, in creation order (a worker
    replays them: a step's SQL names upstream steps as tables)."""
    rows = ctx.cursor().execute(
        "SELECT sql FROM duckdb_views() WHERE NOT internal AND schema_name = 'main' "
        "ORDER BY view_oid").fetchall()
    return [str(sql) for (sql,) in rows]


# --------------------------------------------------------------------------- on the worker


@dataclass
class RemoteStep:
    """Everything a worker needs to run one attempt of a step (all of it pickles)."""

    kind: str
    step: Any
    root: str
    env: str | None
    run: dict[str, Any]
    workdir: str
    inputs: dict[str, StepOutput]
    lineage: StepOutput
    template_vars: dict[str, Any]
    views: list[str]
    interrupt: str
    """The name of the ``distributed.Event`` the server sets to interrupt the step."""


@dataclass
class RemoteResult:
    output: StepOutput | None
    error: BaseException | None
    logs: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


_PROJECTS: dict[tuple[str, str | None], tuple[float, ProjectRuntime]] = {}


def _project(root: str, env: str | None) -> ProjectRuntime:
    """The project as loaded in this worker (again when headwater.yaml changed)."""
    from headwater.runtime import ProjectRuntime

    stamp = (Path(root) / "headwater.yaml").stat().st_mtime
    cached = _PROJECTS.get((root, env))
    if cached is None or cached[0] != stamp:
        cached = (stamp, ProjectRuntime.load(root, env))
        _PROJECTS[(root, env)] = cached
    return cached[1]


def run_remote_step(task: RemoteStep) -> RemoteResult:
    """A Dask task: one attempt of one step, its output spilled to the run folder.

    Failures come back as values with the step's log lines (a traceback a Python step
    logged must reach the run's log), never as a lost exception.
    """
    import duckdb

    from headwater.engine import duckdb_pool
    from headwater.engine.confine import allowed_directories, unconfined
    from headwater.engine.context import RunContext

    started = time.perf_counter()
    logs: list[tuple[str, str, dict[str, Any]]] = []
    _share_cores()
    try:
        project = _project(task.root, task.env)
        project.import_path()
        db = duckdb_pool.acquire(project.root / ".headwater" / "spill",
                                 None if unconfined() else allowed_directories(project))
    except Exception as exc:  # noqa: BLE001 - reported to the server as the step's failure
        return RemoteResult(None, _portable(exc), logs)
    hooks: list[Any] = []
    ctx = RunContext(**task.run, project=project, workdir=Path(task.workdir),
                     inputs=task.inputs, lineage=task.lineage,
                     template_vars=task.template_vars, db=db,
                     sink=lambda _sid, level, message, fields: logs.append(
                         (level, message, dict(fields))),
                     cancel_event=threading.Event(), commit_hooks=hooks)
    stop = threading.Event()
    missing: list[str] = []
    try:
        for statement in task.views:
            try:
                db.execute(statement)
            except duckdb.Error as exc:  # one this step does not read may fail harmlessly
                missing.append(str(exc).strip().splitlines()[0] if str(exc).strip() else
                               type(exc).__name__)
        threading.Thread(target=_watch, args=(_event(task.interrupt), ctx, stop),
                         name="hw-interrupt", daemon=True).start()
        output = step_function(task.kind)(ctx, task.step)
        if hooks:
            raise ExecutorError(f"step kind {task.kind!r} registered after-commit work on a "
                                "Dask worker; it must run on the server")
        output = _spilled(ctx, output)
        output.info["worker"] = _worker_address()
        output.info["worker_seconds"] = round(time.perf_counter() - started, 4)
        return RemoteResult(output, None, logs)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the server
        if missing:  # say why an upstream table may be unknown on this worker
            logs.append(("warning", "on the Dask worker, upstream views could not be "
                         f"re-created: {'; '.join(missing)}", {}))
        return RemoteResult(None, _portable(exc), logs)
    finally:
        stop.set()
        ctx.close()
        duckdb_pool.release(db)


@dataclass
class Raised:
    """A partition's failure, returned as a value: Dask's own exception transport loses
    what headwater's errors carry (the message naming file and line)."""

    error: BaseException


def _task(func: Callable[[Any], Any], item: Any) -> Any:
    """One partition on a worker, its DuckDB sized to the worker's threads."""
    _share_cores()
    try:
        return func(item)
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the server
        return Raised(_portable(exc))


def _worker_address() -> str | None:
    from distributed import get_worker

    try:
        return str(get_worker().address)
    except ValueError:
        return None


def _share_cores() -> None:
    """Cap DuckDB at this worker's thread count (``HEADWATER_DUCKDB_THREADS``, unless the
    operator set it): worker processes on one machine otherwise each use every core."""
    from distributed import get_worker

    with contextlib.suppress(ValueError):  # not inside a worker: leave DuckDB's default
        os.environ.setdefault("HEADWATER_DUCKDB_THREADS", str(get_worker().state.nthreads))


WATCH_AFTER = 1.0
"""Seconds a step runs before its worker starts watching for an interrupt: short steps
cost the scheduler nothing, and an interrupt reaches a long one within a second."""


def _watch(signal: Any, ctx: RunContext, stop: threading.Event) -> None:
    """Interrupt the step when the server sets its event (timeout, cancel)."""
    if stop.wait(WATCH_AFTER):
        return
    try:
        while not stop.is_set():
            if signal.wait(timeout=0.5):
                if not stop.is_set():
                    ctx.interrupt("interrupted by the server")
                return
    except Exception:
        log.debug("interrupt watcher of %s stopped", ctx.step_id, exc_info=True)


def _event(name: str) -> Any:
    """The server's interrupt event for this task, through this worker's client."""
    from distributed import get_client

    return _distributed().Event(name, client=get_client())


def _spilled(ctx: RunContext, output: StepOutput) -> StepOutput:
    """The output with its rows in a Parquet file of the run folder (a view over this
    worker's DuckDB means nothing to the next worker)."""
    from headwater.steps.spill import spill

    if output.relation is None or _reads_files_only(output.relation):
        return output
    spilled = spill(ctx, output.relation)
    return replace(output, relation=spilled.relation, rows=spilled.rows,
                   info={**output.info, **spilled.info})


def _reads_files_only(relation: str) -> bool:
    text = relation.strip()
    return text.startswith("SELECT * FROM read_parquet(") and text.endswith(")") \
        and " FROM " not in text[len("SELECT * FROM "):]


def _portable(exc: BaseException) -> BaseException:
    """The exception if it pickles (headwater's do), else a ``StepError`` saying the same."""
    if isinstance(exc, HeadwaterError):
        return exc
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - anything unpicklable is described instead
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return StepError(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
    return exc

