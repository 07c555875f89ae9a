"""Execute one queued run: plan, reuse, schedule steps, retry, time out, cancel, record.

The loop is deliberately plain: ready steps go to the executor, finished ones make their
dependants ready, the first step that fails for good stops new submissions. Every state
change is written to the store as it happens, so a crash leaves an honest record. Data
moves between steps as DuckDB relations inside one in-memory database per run (spilling
to the run folder), never through Python lists.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headwater.config.models import StepBase, step_kind
from headwater.config.secrets import REDACTOR
from headwater.engine import duckdb_pool
from headwater.engine.context import CommitHook, RunContext
from headwater.engine.executor import Executor, make_executor
from headwater.engine.plan import Plan, plan
from headwater.engine.reuse import step_codes
from headwater.exceptions import (
    ConfigError,
    HeadwaterError,
    TerminalSourceError,
    ValidationError,
)
from headwater.runtime import ProjectRuntime
from headwater.steps.base import Parked, StepOutput

log = logging.getLogger("headwater.engine")

Observer = Callable[[str, Mapping[str, Any]], None]
"""Receives ``(event, fields)``: run_started, step_started, step_finished, log, run_finished."""

_NO_RETRY = (ConfigError, ValidationError, TerminalSourceError)
ABANDON_GRACE = float(os.environ.get("HEADWATER_ABANDON_GRACE", "10"))
"""Seconds an interrupted step gets to return before the run stops waiting for it."""
INLINE_KINDS = frozenset({"sql"})
"""Step kinds the loop may run in its own thread (``RunEngine._inline_ok``)."""
HEARTBEAT_SECONDS = float(os.environ.get("HEADWATER_HEARTBEAT_SECONDS", "5"))
"""How often a running run proves it is alive; a server's lease is several beats."""


@dataclass
class StepFailure(Exception):
    step_id: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class _Attempt:
    ctx: RunContext | None = None
    deadline: float | None = None
    interrupted_at: float | None = None


@dataclass
class _RunState:
    outputs: dict[str, StepOutput] = field(default_factory=dict)
    lineage: dict[str, StepOutput] = field(default_factory=dict)
    attempts: dict[str, _Attempt] = field(default_factory=dict)
    failure: StepFailure | None = None
    parked: str | None = None
    """The step that parked the run (waiting under serve), if any."""


def merge_outputs(parts: list[StepOutput]) -> StepOutput:
    """Union the lineage facts of several outputs (no relation), without duplicates."""
    merged = StepOutput()
    seen: set[str] = set()
    for part in parts:
        for kind in ("sources", "inputs"):
            for item in getattr(part, kind):
                marker = kind + json.dumps(item, sort_keys=True, default=str)
                if marker not in seen:
                    seen.add(marker)
                    getattr(merged, kind).append(item)
        merged.state.update(part.state)
        for path in part.rejected:
            if path not in merged.rejected:
                merged.rejected.append(path)
    return merged


class RunEngine:
    """Runs one run to the end. Create one per run; not reusable."""

    def __init__(self, project: ProjectRuntime, run_id: str,
                 observer: Observer | None = None, worker: str | None = None,
                 parking: str | None = None) -> None:
        self.project = project
        self.parking = parking
        self.store = project.store
        self.run = self.store.run(run_id)
        self.run_id = str(self.run["id"])
        self.observer = observer
        self.worker = worker
        self.cancel_event = threading.Event()
        self.state = _RunState()
        self._stopped = threading.Event()
        self._commit_hooks: list[CommitHook] = []
        self._step_codes: dict[str, str] = {}
        """step id → its code hash (``engine.reuse.step_codes``), recorded with its output."""
        self._consumed: frozenset[str] | None = None
        self._inline_lock = threading.Lock()
        self._inline_sid: str | None = None
        """The step the loop itself is running (``_run_inline``), watched by ``_watchdog``."""
        self._watchdog_thread: threading.Thread | None = None
        self._lazy: set[str] = set()
        """Steps whose output is a lazy scan (a consumer's read error blames them); kept
        so a step's upstream is walked only when there is one (a chain walked it each
        step: quadratic)."""
        from headwater.lineage.openlineage import emitter_for

        self.lineage = emitter_for(project)

    # ------------------------------------------------------------------ events

    def _emit(self, event: str, **fields: Any) -> None:
        if self.observer is not None:
            self.observer(event, fields)

    def _log(self, step_id: str | None, level: str, message: str,
             fields: Mapping[str, Any]) -> None:
        message = REDACTOR(message)
        clean = REDACTOR.deep(dict(fields)) if fields else {}
        self.store.log(self.run_id, step_id, level, message, clean)
        self._emit("log", run_id=self.run_id, step_id=step_id, level=level, message=message,
                   fields=clean)

    # ------------------------------------------------------------------ entry

    def execute(self) -> dict[str, Any]:
        """Run to completion; returns the final run row. Never raises for a step failure."""
        try:
            pf = self.project.pipeline(self.run["pipeline"])
            dag = plan(pf, self.project.root)
            code = _code_version(self.project, pf)
        except HeadwaterError as exc:
            self.store.start_run(self.run_id, self.worker)
            self._finish("failed", REDACTOR(exc.message), None)
            self._lineage_end(None)
            return self.store.run(self.run_id)
        self.store.set_code_version(pf.config.name, code, pf.display)
        self.store.update_run(self.run_id, code_version=code)
        self.store.start_run(self.run_id, self.worker)
        self._emit("run_started", run_id=self.run_id, pipeline=pf.config.name,
                   steps=list(dag.order))
        if self.lineage is not None:
            self.lineage.start(self.store.run(self.run_id), [])
        workdir = self.project.runs_dir / self.run_id
        workdir.mkdir(parents=True, exist_ok=True)
        db = duckdb_pool.acquire(self.project.root / ".headwater" / "spill", _confinement(
            self.project))
        executor: Executor | None = None
        self.project.import_path()
        beat = threading.Thread(target=self._heartbeat, name="hw-heartbeat", daemon=True)
        beat.start()
        turn = contextlib.ExitStack()
        try:
            executor = make_executor(self.project.config.executor)  # may fail: no cluster
            template_vars = self._template_vars(pf.config.params)
            self._step_codes = step_codes(dag, self.project.root, template_vars["params"])
            turn.enter_context(self._pipeline_turn(pf.config))
            self._repair_datasets(dag)
            reuse = self._reused_outputs(dag, code)
            self._run_dag(dag, db, executor, workdir, code, template_vars, reuse)
            self._commit_leftovers(dag, db, workdir, code, template_vars)
        except HeadwaterError as exc:
            self.state.failure = self.state.failure or StepFailure("", REDACTOR(exc.message))
        except Exception as exc:  # a bug here must still end the run honestly
            log.exception("run %s: internal error", self.run_id)
            self.state.failure = self.state.failure or StepFailure(
                "", REDACTOR(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            self._stopped.set()
            if executor is not None:
                executor.shutdown(wait=self.state.failure is None)
            if self.state.failure is None:
                duckdb_pool.release(db)
            else:
                db.close()  # a failed step may still be running in an abandoned thread
            if self.state.parked is not None and self.state.failure is None:
                turn.pop_all()  # a parked run keeps its pipeline's lock until it goes on
            with contextlib.suppress(HeadwaterError):  # a dead holder's lock is taken over
                turn.close()
        if self.state.parked is not None and self.state.failure is None:
            self._settle_commit_hooks(committed=False)  # nothing committed yet: no acks
            return self._park()
        self._settle_commit_hooks()
        if self.state.failure is not None:
            status = "cancelled" if self.cancel_event.is_set() else "failed"
            self._finish(status, self.state.failure.message, self.state.failure.step_id or None)
        else:
            self._finish("succeeded", None, None)
        self._lineage_end(merge_outputs(list(self.state.lineage.values())))
        return self.store.run(self.run_id)

    def _settle_commit_hooks(self, committed: bool | None = None) -> None:
        """After the commit (or the failure) call what steps registered with
        ``ctx.after_commit``: a stream source acknowledges its messages only now.

        A hook that fails does not fail the run: the data is committed, and whatever the
        hook would have done is repeated safely by the next run (a message not
        acknowledged is redelivered and dropped as already committed).
        """
        if committed is None:
            committed = self.state.failure is None
        if committed and self._commit_hooks:
            _crash_point("after_commit")
        for done, undone in self._commit_hooks:
            hook = done if committed else undone
            if hook is None:
                continue
            try:
                hook()
            except Exception as exc:  # noqa: BLE001 - a hook must never change the outcome
                what = "after the commit" if committed else "after the failure"
                self._log(None, "warning", f"{what}: {type(exc).__name__}: {exc}", {})
        self._commit_hooks.clear()

    def _lineage_end(self, read: StepOutput | None) -> None:
        """COMPLETE (with what was published and read) or FAIL/ABORT, if configured."""
        if self.lineage is None:
            return
        run = self.store.run(self.run_id)
        if run["status"] == "succeeded":
            inputs = [*read.inputs, *read.sources] if read is not None else []
            self.lineage.complete(run, self.store.versions_by_run(self.run_id), inputs)
        else:
            self.lineage.fail(run, run["error"] or run["status"])

    def _park(self) -> dict[str, Any]:
        """A step is waiting: leave the run ``waiting`` (no worker, no slot) for the
        server's waiter to continue; nothing is committed until it does."""
        from headwater.store.waits import park_run

        park_run(self.store, self.run_id)
        self._log(self.state.parked, "info", "run parked: waiting without a worker", {})
        self._emit("run_parked", run_id=self.run_id, step_id=self.state.parked)
        return self.store.run(self.run_id)

    def _heartbeat(self) -> None:
        """Tell other servers this run is alive (they take over runs whose beat stops)."""
        from headwater.store.queue import heartbeat

        while not self._stopped.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(HeadwaterError):  # a hiccup: the next beat will do
                heartbeat(self.store, [self.run_id])

    def _finish(self, status: str, error: str | None, step: str | None) -> None:
        self.store.finish_run(self.run_id, status, error, step)
        self._emit("run_finished", run_id=self.run_id, status=status, error=error, step_id=step)

    # ------------------------------------------------------------------ setup

    def _template_vars(self, defaults: Mapping[str, Any]) -> dict[str, Any]:
        run = self.run
        from headwater.config.params import run_params

        params = run_params(self.project.config.params, defaults,
                            {**self.project.env_params, **(run["params"] or {})},
                            self.project.root)
        info = dict(run["trigger_info"] or {})
        window = {
            "start": run["window_start"].isoformat() if run["window_start"] else None,
            "end": run["window_end"].isoformat() if run["window_end"] else None,
        }
        return {
            "params": params,
            "run": {"id": run["id"], "seq": run["seq"], "pipeline": run["pipeline"],
                    "trigger": run["trigger"]},
            "trigger": {"kind": run["trigger"], **info},
            "window": window,
        }

    def _pipeline_turn(self, config: Any) -> contextlib.AbstractContextManager[None]:
        """Wait for this pipeline's other run to end if the two would share incremental
        state (``engine.serialise``), logging whom it waits for."""
        from headwater.engine.serialise import pipeline_turn

        def on_wait(holder: str) -> None:
            self._log(None, "info", f"waiting for run {holder} of {config.name} to finish "
                      "(runs of an incremental pipeline take turns)", {"holder": holder})

        def cancelled() -> bool:
            if self.cancel_event.is_set() or self.store.cancel_requested(self.run_id):
                self.cancel_event.set()
                return True
            return False

        return pipeline_turn(self.store, self.run_id, config, on_wait=on_wait,
                             cancelled=cancelled)

    def _repair_datasets(self, dag: Plan) -> None:
        """Record commits a crash left unrecorded *before* sources read incremental state,
        so files whose rows were committed are never ingested twice."""
        from headwater.config.models import PublishStep
        from headwater.steps.base import rejected_dataset

        names = {s.publish.dataset for s in dag.steps.values() if isinstance(s, PublishStep)}
        names.add(rejected_dataset(self.run["pipeline"]))
        for name in sorted(names):
            uri = self.project.dataset_uri(name)
            if _surely_no_table(uri):
                continue
            from headwater.datasets.publish import reconcile  # Arrow and delta-rs load here

            recovered = reconcile(self.store, name, uri)
            if recovered:
                self._log(None, "warning", f"recovered {recovered} unrecorded version(s) of "
                          f"{name} from its Delta log", {})

    def _reused_outputs(self, dag: Plan, code: str) -> dict[str, StepOutput]:
        """Outputs taken from an earlier run (rerun --from-failed, run --from-step, a
        resumed run), less those that would duplicate rows or came from other code."""
        from headwater.engine.reuse import decide

        found = self._recorded_outputs(dag)
        if not found:
            return found
        parent = str(self.run["parent_run_id"])
        parent_code = self.store.run(parent)["code_version"] if parent != self.run_id \
            else self.run["code_version"]
        continuation = (self.run["trigger_info"] or {}).get("resume") == "wait"
        committed = self._committed_by_self(found) if parent == self.run_id else frozenset()
        decision = decide(dag, found, parent_id=parent, parent_code=parent_code, code=code,
                          codes=self._step_codes, continuation=continuation,
                          committed=committed)
        for reason in decision.reasons:
            self._log(None, "warning", reason, {})
        return decision.outputs

    def _committed_by_self(self, found: Mapping[str, StepOutput]) -> frozenset[str]:
        """Incremental steps of this resumed run whose state it committed before it died
        (with one of its publishes): their spilled output is reused, so every publish of
        the run gets the same rows. A lazy files scan is re-executed instead (it re-reads
        exactly the files it recorded, ``steps.source._unseen``). A spill that is gone
        fails the run: re-reading would give the other datasets different rows."""
        pipeline = str(self.run["pipeline"])
        committed = set()
        for sid, output in found.items():
            if not output.state or output.info.get("lazy") or not output.relation:
                continue
            if not self.store.state_of_run(pipeline, sid, self.run_id):
                continue
            missing = [p for p in _spill_paths(output.relation) if not Path(p).exists()]
            if missing:
                raise HeadwaterError(
                    f"run {self.run_id} died after committing part of its publishes and "
                    f"step {sid!r}'s recorded output is gone ({missing[0]}): the datasets "
                    "it had not reached miss that batch; rerun the pipeline's sources by "
                    "hand or restore the run folder")
            committed.add(sid)
        return frozenset(committed)

    def _recorded_outputs(self, dag: Plan) -> dict[str, StepOutput]:
        steps = self.run["reuse_steps"]
        if not steps:
            return {}
        parent = self.run["parent_run_id"]
        found: dict[str, StepOutput] = {}
        if parent:
            recorded = self.store.succeeded_outputs(parent)
            for sid in steps:
                if sid in recorded and sid in dag.steps:
                    found[sid] = StepOutput.from_json(recorded[sid])
        return found

    # ------------------------------------------------------------------ the loop

    def _run_dag(self, dag: Plan, db: Any, executor: Executor, workdir: Path, code: str,
                 template_vars: Mapping[str, Any], reuse: Mapping[str, StepOutput]) -> None:
        done: set[str] = set()
        for sid in dag.order:
            if sid in reuse:
                self._accept(dag, db, sid, reuse[sid])
                self.store.record_step(self.run_id, sid, dag.kind(sid), "reused",
                                       output=reuse[sid].to_json())
                self._emit("step_finished", step_id=sid, status="reused", rows=reuse[sid].rows,
                           seconds=0.0)
                done.add(sid)
        running: dict[Future[StepOutput], str] = {}
        pending = {sid: None for sid in dag.order if sid not in done}  # ordered set
        unmet, dependants = _dependency_counts(dag, pending, done)
        ready = [sid for sid in pending if not unmet[sid]]
        finished: queue.SimpleQueue[Future[StepOutput]] = queue.SimpleQueue()
        cancel_checked = 0.0
        while pending or running:
            if self.state.failure is None and self.state.parked is None and \
                    not self.cancel_event.is_set():
                if len(ready) == 1 and not running and self._inline_ok(executor, ready[0], dag):
                    sid = ready.pop()
                    del pending[sid]
                    future = self._run_inline(executor, dag, db, sid, workdir, code,
                                              template_vars)
                    running[future] = sid
                    finished.put(future)
                else:
                    for sid in sorted(ready, key=dag.order.index) if len(ready) > 1 else ready:
                        del pending[sid]
                        future = self._submit(executor, dag, db, sid, workdir, code,
                                              template_vars)
                        running[future] = sid
                        future.add_done_callback(finished.put)
                    ready.clear()
            elif not running:
                break
            if not running:
                break
            for future in _drain(finished, timeout=0.5):
                if future not in running:  # abandoned earlier: the run no longer waits
                    continue
                sid = running.pop(future)
                try:
                    output = future.result()
                except StepFailure as failure:
                    self.state.failure = self.state.failure or failure
                    continue
                except Parked:
                    self.state.parked = sid
                    continue
                self._accept(dag, db, sid, output)
                done.add(sid)
                for dependant in dependants[sid]:
                    unmet[dependant] -= 1
                    if not unmet[dependant] and dependant in pending:
                        ready.append(dependant)
            now = time.monotonic()
            if now - cancel_checked > 0.5:
                cancel_checked = now
                self._check_cancel_and_timeouts(running.values())
                for future in self._abandoned(running):
                    sid = running.pop(future)
                    self.state.failure = self.state.failure or StepFailure(
                        sid, f"step '{sid}' did not stop within {ABANDON_GRACE:g}s of being "
                             "interrupted (its code ignores interrupts); abandoned")
        for sid in pending if self.state.parked is None or self.state.failure else ():
            self.store.record_step(self.run_id, sid, dag.kind(sid), "skipped")
        if self.cancel_event.is_set() and self.state.failure is None:
            self.state.failure = StepFailure("", "cancelled by request")

    def _inline_ok(self, executor: Executor, sid: str, dag: Plan) -> bool:
        """Whether the one step that can run now may run in this thread, skipping the
        hop to a worker thread and back (two thread switches, most of a no-op step's
        wall time on a busy machine).

        Only on the local executor (Dask ships steps to its workers), and only for kinds
        whose work always yields to ``ctx.interrupt`` (DuckDB queries): a step this
        thread cannot abandon must stop when its timeout or a cancel interrupts it, which
        the watchdog thread (``_watchdog``) does while the loop is busy running it.
        """
        return bool(getattr(executor, "runs_inline", False)) and dag.kind(sid) in INLINE_KINDS

    def _run_inline(self, executor: Executor, dag: Plan, db: Any, sid: str, workdir: Path,
                    code: str, template_vars: Mapping[str, Any]) -> Future[StepOutput]:
        """Run one step here, under the watchdog; its outcome as a finished future, so
        the loop treats it exactly as one that ran on a worker thread."""
        job = self._job(executor, dag, db, sid, workdir, code, template_vars)
        future: Future[StepOutput] = Future()
        self._ensure_watchdog()
        with self._inline_lock:
            self._inline_sid = sid
        try:
            future.set_result(job())
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - StepFailure, Parked, a bug:
            future.set_exception(exc)  # the loop handles it as it would from a worker
        finally:
            with self._inline_lock:
                self._inline_sid = None
        return future

    def _ensure_watchdog(self) -> None:
        if self._watchdog_thread is None:
            self._watchdog_thread = threading.Thread(target=self._watchdog, daemon=True,
                                                     name="hw-watchdog")
            self._watchdog_thread.start()

    def _watchdog(self) -> None:
        """While the loop runs a step inline it cannot look at the clock or the store:
        this thread applies that step's timeout and a cancel request instead, at the
        loop's own pace (every 0.5 s)."""
        while not self._stopped.wait(0.5):
            with self._inline_lock:
                if self._inline_sid is not None:
                    with contextlib.suppress(HeadwaterError):  # a hiccup: the next look
                        self._check_cancel_and_timeouts([self._inline_sid])

    def _check_cancel_and_timeouts(self, running: Iterable[str]) -> None:
        """Interrupt the given running steps on a cancel request or past their timeout."""
        running = list(running)
        if not self.cancel_event.is_set() and self.store.cancel_requested(self.run_id):
            self.cancel_event.set()
            self._log(None, "warning", "cancel requested: stopping running steps", {})
            for sid in running:
                attempt = self.state.attempts.get(sid)
                if attempt and attempt.ctx:
                    attempt.ctx.interrupt("cancelled")
        now = time.monotonic()
        for sid in running:
            attempt = self.state.attempts.get(sid)
            if attempt and attempt.deadline and now > attempt.deadline and attempt.ctx \
                    and attempt.ctx.interrupted is None:
                attempt.ctx.interrupt("timeout")

    def _abandoned(self, running: Mapping[Future[StepOutput], str]) -> list[Future[StepOutput]]:
        """Steps interrupted (timeout, cancel) whose code still has not returned: Python
        cannot stop a thread, so the run stops waiting for them."""
        now = time.monotonic()
        out = []
        for future, sid in running.items():
            attempt = self.state.attempts.get(sid)
            if attempt is None or attempt.ctx is None or attempt.ctx.interrupted is None:
                continue
            if attempt.interrupted_at is None:
                attempt.interrupted_at = now
            elif now - attempt.interrupted_at > ABANDON_GRACE:
                out.append(future)
        return out

    def _accept(self, dag: Plan, db: Any, sid: str, output: StepOutput) -> None:
        """Record a finished step's output: a view by its id, and its merged lineage.

        Only a step whose output another step may read by name gets its view
        (``Plan.read_by_others``): a leaf, or a step that others merely ``need``, has no
        reader, and each view costs a DuckDB catalog write (~1 ms, half a no-op step).
        """
        self.state.outputs[sid] = output
        if output.info.get("lazy"):
            self._lazy.add(sid)
        upstream = [self.state.lineage[d] for d in dag.deps[sid] if d in self.state.lineage]
        self.state.lineage[sid] = merge_outputs([*upstream, output])
        if self._consumed is None:
            self._consumed = dag.read_by_others()
        if output.relation and sid in self._consumed:
            db.execute(f'CREATE OR REPLACE VIEW "{sid}" AS {output.relation}')

    def _submit(self, executor: Executor, dag: Plan, db: Any, sid: str, workdir: Path,
                code: str, template_vars: Mapping[str, Any]) -> Future[StepOutput]:
        return executor.submit(self._job(executor, dag, db, sid, workdir, code,
                                         template_vars))

    def _job(self, executor: Executor, dag: Plan, db: Any, sid: str, workdir: Path,
             code: str, template_vars: Mapping[str, Any]) -> Callable[[], StepOutput]:
        """A step's attempts (retries, timeouts, records) as one call, for any thread."""
        step = dag.steps[sid]
        inputs = {d: self.state.outputs[d] for d in dag.deps[sid] if d in self.state.outputs}
        lineage = merge_outputs([self.state.lineage[d] for d in dag.deps[sid]
                                 if d in self.state.lineage])
        attempt = _Attempt()
        self.state.attempts[sid] = attempt

        def make_ctx(number: int) -> RunContext:
            return RunContext(
                run_id=self.run_id, run_seq=int(self.run["seq"]), pipeline=self.run["pipeline"],
                step_id=sid, attempt=number, code_version=code, trigger=self.run["trigger"],
                project=self.project, workdir=workdir, inputs=inputs, lineage=lineage,
                template_vars=template_vars, db=db, sink=self._log,
                cancel_event=self.cancel_event, commit_hooks=self._commit_hooks,
                parking=self.parking)

        lazy = [(u, self.state.outputs[u]) for u in dag.upstream(sid)
                if u in self._lazy] if self._lazy else []
        return lambda: self._run_step(step, make_ctx, attempt, lazy, executor)

    def _run_step(self, step: StepBase, make_ctx: Callable[[int], RunContext],
                  attempt: _Attempt, lazy: list[tuple[str, StepOutput]],
                  executor: Executor) -> StepOutput:
        kind = step_kind(step)
        total = step.retries.count + 1
        for number in range(1, total + 1):
            ctx = make_ctx(number)
            attempt.ctx = ctx
            attempt.deadline = time.monotonic() + step.timeout if step.timeout else None
            attempt_id = self.store.start_step(self.run_id, step.id, kind, number)
            self._emit("step_started", step_id=step.id, kind=kind, attempt=number)
            started = time.perf_counter()
            try:
                output = executor.run_step(kind, ctx, step)
            except Parked:
                from headwater.store.waits import mark_step_waiting

                mark_step_waiting(self.store, attempt_id, time.perf_counter() - started)
                self._emit("step_finished", step_id=step.id, status="waiting")
                raise
            except (Exception, SystemExit) as exc:  # every failure is recorded, then raised
                seconds = time.perf_counter() - started
                message = _blame_lazy_source(exc, lazy, self.project) or \
                    _describe(step, kind, exc, ctx)
                self.store.finish_step(attempt_id, "failed", seconds=seconds, error=message)
                self._emit("step_finished", step_id=step.id, status="failed", error=message,
                           seconds=seconds)
                retryable = not isinstance(exc, _NO_RETRY) and ctx.interrupted is None
                if number < total and retryable and not self.cancel_event.is_set():
                    delay = step.retries.backoff * (2 ** (number - 1))
                    self._log(step.id, "warning", f"attempt {number} of {total} failed; "
                              f"retrying in {delay:g}s", {"error": message})
                    time.sleep(delay)
                    continue
                raise StepFailure(step.id, message) from exc
            finally:
                ctx.close()
            seconds = time.perf_counter() - started
            output.info["code"] = self._step_codes.get(step.id)  # reuse checks it
            self.store.finish_step(attempt_id, "succeeded", seconds=seconds,
                                   rows_out=output.rows, output=output.to_json(),
                                   rows_in=output.info.get("rows_in"),
                                   bytes_=output.info.get("bytes"))
            self._emit("step_finished", step_id=step.id, status="succeeded", rows=output.rows,
                       seconds=seconds, info=output.info)
            return output
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ end of run

    def _commit_leftovers(self, dag: Plan, db: Any, workdir: Path, code: str,
                          template_vars: Mapping[str, Any]) -> None:
        """Quarantined rows and incremental state no publish step carried: commit them now."""
        if self.state.failure is not None or self.state.parked is not None:
            return
        carried_rejected: set[str] = set()
        carried_state: set[str] = set()
        for output in self.state.outputs.values():
            carried_rejected.update(output.info.get("committed_rejected", []))
            carried_state.update(output.info.get("committed_state", []))
        everything = merge_outputs(list(self.state.lineage.values()))
        rejected = [p for p in everything.rejected if p not in carried_rejected]
        state = {k: v for k, v in everything.state.items() if k not in carried_state}
        if rejected:
            from headwater.steps.publish import publish_rejected

            publish_rejected(self.project, self.run, code, rejected, step_id="_end",
                             state=state, db=db)
        if state:
            from headwater.steps.base import split_state_key

            self.store.put_state(self.run["pipeline"],
                                 {split_state_key(k): v for k, v in state.items()},
                                 self.run_id)


def _dependency_counts(dag: Plan, pending: Mapping[str, None], done: set[str],
                       ) -> tuple[dict[str, int], dict[str, list[str]]]:
    """(step → how many of its needs are not done yet, step → the steps that need it).

    The loop updates the counts as steps finish instead of re-checking every pending
    step's needs after each one (quadratic in a long chain)."""
    dependants: dict[str, list[str]] = {sid: [] for sid in dag.order}
    for sid in dag.order:
        for dep in dag.deps[sid]:
            dependants.setdefault(dep, []).append(sid)
    unmet = {sid: sum(1 for dep in dag.deps[sid] if dep not in done) for sid in pending}
    return unmet, dependants


def _drain(finished: queue.SimpleQueue[Future[StepOutput]],
           timeout: float) -> Iterator[Future[StepOutput]]:
    """The futures finished so far, waiting up to ``timeout`` for the first one.

    A queue fed by done-callbacks costs the same for 2 or 200 running steps, where
    ``concurrent.futures.wait`` installs and removes a waiter on every one each time.
    """
    try:
        yield finished.get(timeout=timeout)
    except queue.Empty:
        return
    while True:
        try:
            yield finished.get_nowait()
        except queue.Empty:
            return


def _describe(step: StepBase, kind: str, exc: BaseException, ctx: RunContext) -> str:
    """``step 'raw' (source files) failed: <cause>`` with secrets masked."""
    if ctx.interrupted == "timeout":
        cause = f"timed out after {step.timeout:g}s"
    elif ctx.interrupted == "cancelled":
        cause = "cancelled"
    elif isinstance(exc, HeadwaterError):
        cause = exc.message
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        cause = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    what = kind
    source = getattr(step, "source", None)
    if source is not None:
        what = f"source {source.type}"
        where = getattr(source, "path", None) or getattr(source, "dataset", None)
        if where:
            what += f" {where}"
    return REDACTOR(f"step '{step.id}' ({what}) failed: {cause}")


def _blame_lazy_source(exc: BaseException, lazy: list[tuple[str, StepOutput]],
                       project: ProjectRuntime) -> str | None:
    """A read error raised while a consumer pulled a lazily scanned file source.

    Sources stream straight into their consumer, so a malformed row surfaces in, say, the
    publish step; the message must still name the source step, the file and the line.
    """
    if isinstance(exc, HeadwaterError) or not lazy:
        return None
    text = str(exc)
    markers = ("CSV Error", "Invalid Input Error", "Conversion Error", "Malformed JSON",
               "Invalid unicode", "Could not convert", "parquet")
    if not any(marker.lower() in text.lower() for marker in markers):
        return None
    from headwater.connectors.files import FileInfo, translate_error

    sid, output = lazy[-1]
    files = [FileInfo(f["path"], int(f["size"]), str(f["etag"]))
             for source in output.sources for f in source.get("files", [])]
    for candidate_sid, candidate in lazy:
        paths = [f["path"] for s in candidate.sources for f in s.get("files", [])]
        if any(path in text for path in paths):
            sid, files = candidate_sid, [FileInfo(f["path"], int(f["size"]), str(f["etag"]))
                                         for s in candidate.sources
                                         for f in s.get("files", [])]
    translated = translate_error(exc if isinstance(exc, Exception) else Exception(text),
                                 files, sid, root=project.root)
    where = next((s.get("path") for s in output.sources if s.get("path")), "")
    return REDACTOR(f"step '{sid}' (source files {where}) failed: {translated.message}")


def _surely_no_table(uri: str) -> bool:
    """A plain local path with no ``_delta_log`` folder: no commit to repair there.

    Checked before loading Arrow and delta-rs, which a run that publishes nothing (and has
    never quarantined a row) would otherwise import only to learn that. Any URI with a
    scheme (``file://`` included: it may be percent-encoded) goes through ``reconcile``.
    """
    return "://" not in uri and not (Path(uri) / "_delta_log").is_dir()


def _crash_point(name: str) -> None:
    """Tests of the crash guarantees: ``HEADWATER_CRASH_AT=<name>`` kills this process
    (SIGKILL, no clean-up) at that point, as a power cut would."""
    if os.environ.get("HEADWATER_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _code_version(project: ProjectRuntime, pf: Any) -> str:
    try:
        from headwater.engine.codeversion import code_version
    except ImportError:  # pragma: no cover - during bring-up only
        import hashlib

        return hashlib.sha256(pf.path.read_bytes()).hexdigest()[:16]
    return code_version(project.root, pf).hash


def _confinement(project: ProjectRuntime) -> tuple[str, ...] | None:
    """The folders a run's DuckDB may touch (``engine.confine``), or None when disabled."""
    from headwater.engine.confine import allowed_directories, unconfined

    return None if unconfined() else allowed_directories(project)


def execute_run(project: ProjectRuntime, run_id: str, observer: Observer | None = None,
                worker: str | None = None, parking: str | None = None) -> dict[str, Any]:
    """Execute a queued run and return its final row (status, error, ...).

    ``parking`` (the server's base URL) lets a waiting step park the run: it then returns
    ``waiting`` and the server's waiter continues it later.
    """
    return RunEngine(project, run_id, observer, worker, parking).execute()


def _spill_paths(relation: str) -> list[str]:
    """The local files a spilled output's ``read_parquet(...)`` names (quoted literals)."""
    return [m.replace("''", "'") for m in re.findall(r"'((?:[^']|'')*)'", relation)
            if m.endswith(".parquet")]
