"""The Python API (SPEC §5): ``Project``, ``Run``, and the command functions behind the CLI.

Every CLI command and every server endpoint calls these, so the three surfaces cannot
drift apart. Nothing here formats output for a terminal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headwater.config.secrets import REDACTOR
from headwater.engine.runner import Observer, execute_run
from headwater.exceptions import HeadwaterError, NotFoundError, ParamError
from headwater.runtime import ProjectRuntime

if TYPE_CHECKING:
    from headwater.datasets.dataset import Dataset
    from headwater.store.store import Store


@dataclass(frozen=True)
class StepRun:
    step_id: str
    kind: str
    status: str
    attempt: int
    seconds: float | None
    rows: int | None
    error: str | None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """A run as recorded in the store."""

    id: str
    pipeline: str
    status: str
    trigger: str
    params: dict[str, Any]
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    failed_step: str | None
    code_version: str | None
    parent_run_id: str | None
    steps: list[StepRun]

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def as_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id, "pipeline": self.pipeline, "status": self.status,
            "trigger": self.trigger, "params": REDACTOR.deep(self.params),
            "created_at": iso(self.created_at), "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at), "error": self.error,
            "failed_step": self.failed_step, "code_version": self.code_version,
            "parent_run_id": self.parent_run_id,
            "steps": [s.__dict__ for s in self.steps],
        }


def _run_from(row: Mapping[str, Any], steps: list[dict[str, Any]] | None) -> Run:
    latest: dict[str, dict[str, Any]] = {}
    for step in steps or []:
        latest[step["step_id"]] = step  # the last attempt wins
    step_runs = [
        StepRun(step_id=s["step_id"], kind=s["kind"], status=s["status"], attempt=s["attempt"],
                seconds=s["seconds"], rows=s["rows_out"], error=s["error"],
                info=dict((s.get("output") or {}).get("info") or {}))
        for s in latest.values()
    ]
    return Run(id=row["id"], pipeline=row["pipeline"], status=row["status"],
               trigger=row["trigger"], params=dict(row["params"] or {}),
               created_at=row["created_at"], started_at=row["started_at"],
               finished_at=row["finished_at"], error=row["error"],
               failed_step=row["failed_step"], code_version=row["code_version"],
               parent_run_id=row["parent_run_id"], steps=step_runs)


def coerce_params(declared: Mapping[str, Any], given: Mapping[str, Any],
                  pipeline: str) -> dict[str, Any]:
    """Check run params against the pipeline's ``params:`` and coerce each to its type.

    Returns JSON values for the store (dates as ISO text); raises ``ParamError`` naming the
    param, the value and the type (the CLI exits 2, the API answers 422).
    """
    import difflib

    from headwater.config import params as typed_params

    if not isinstance(given, Mapping):
        raise ParamError(
            f"params must be an object of name: value, got {type(given).__name__}")
    specs = typed_params.specs(declared)
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key not in specs:
            hint = difflib.get_close_matches(str(key), list(specs), n=1)
            known = ", ".join(sorted(specs)) or "none"
            raise ParamError(
                f"pipeline {pipeline!r} has no param {key!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else f" (declared: {known})"))
        spec = specs[key]
        if isinstance(value, str) and spec.type == "any":
            value = _number_or_text(value)
        out[key] = typed_params.to_json(typed_params.coerce_one(spec, value))
    return out


def create_rerun(runtime: ProjectRuntime, run_id: str, *, from_failed: bool = False,
                 status: str = "queued") -> str:
    """Record a run of ``run_id`` again (same params and window); returns the new id.

    ``from_failed`` reuses the steps that succeeded. ``rerun`` executes it here; the
    server queues it (``status="queued"``) for its dispatcher.
    """
    old = runtime.store.run(run_id)
    reuse: list[str] | None = None
    if from_failed:
        if old["status"] == "succeeded":
            raise HeadwaterError(f"run {old['id']} succeeded; there is no failed step to "
                                 "rerun from (use 'headwater rerun' without --from-failed)")
        if old["status"] in ("queued", "running"):
            raise HeadwaterError(f"run {old['id']} is still {old['status']}; rerun it from "
                                 "its failed step once it has finished")
        reuse = list(runtime.store.succeeded_outputs(old["id"]))
    return runtime.store.create_run(
        old["pipeline"], trigger="rerun",
        trigger_info={"rerun_of": old["id"], "original_trigger": old["trigger"],
                      **(old["trigger_info"] or {})},
        params=old["params"], parent_run_id=old["id"],
        from_step=old["failed_step"] if from_failed else None, reuse_steps=reuse,
        window=(old["window_start"], old["window_end"]) if old["window_start"] else None,
        status=status)


def _number_or_text(value: str) -> Any:
    """CLI text for a param declared without a type: a number if it reads as one."""
    import math

    for kind in (int, float):
        with contextlib.suppress(ValueError):
            number = kind(value.strip())
            if math.isfinite(number):
                return number
    return value


class Project:
    """A headwater project folder: run pipelines, read datasets, inspect runs."""

    def __init__(self, path: str | Path | None = None, env: str | None = None, *,
                 store: Store | None = None) -> None:
        """Load the project at ``path`` (else found from the working directory).

        ``store``, an open :class:`~headwater.store.store.Store`, replaces the configured
        one and is closed with the project: ``headwater test`` hands each case's sandbox
        its throwaway store on a shared engine.
        """
        self.runtime = ProjectRuntime.load(path, env, store=store)
        self.root = self.runtime.root
        self.name = self.runtime.config.name

    def __repr__(self) -> str:
        return f"Project({str(self.root)!r})"

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ pipelines

    def pipelines(self) -> list[str]:
        return sorted(self.runtime.pipelines)

    def check(self) -> list[dict[str, Any]]:
        """Every problem in the project, each with file, line, key and message."""
        from headwater.checks import check_project

        return check_project(self.runtime)

    def check_connections(self) -> list[dict[str, Any]]:
        """Each connection: reachable, authenticated, can read (secrets never shown)."""
        from headwater.checks import check_connections

        return check_connections(self.runtime)

    # ------------------------------------------------------------------ runs

    def queue(self, pipeline: str, params: Mapping[str, Any] | None = None, *,
              trigger: str = "manual", trigger_info: Mapping[str, Any] | None = None,
              from_step: str | None = None, window: tuple[datetime, datetime] | None = None,
              _status: str = "queued") -> str:
        """Queue a run (a server will pick it up); returns its id."""
        pf = self.runtime.pipeline(pipeline)
        values = coerce_params(pf.config.params, params or {}, pipeline)
        parent, reuse = (None, None)
        if from_step is not None:
            parent, reuse = self._reuse_for(pipeline, from_step)
        return self.runtime.store.create_run(
            pipeline, trigger=trigger, trigger_info=trigger_info, params=values,
            parent_run_id=parent, from_step=from_step, reuse_steps=reuse, window=window,
            status=_status)

    def run(self, pipeline: str, params: Mapping[str, Any] | None = None, *,
            from_step: str | None = None, trigger: str = "manual",
            trigger_info: Mapping[str, Any] | None = None,
            observer: Observer | None = None) -> Run:
        """Run a pipeline now, in this process, and return the finished run."""
        self.finish_resumed(pipeline)
        run_id = self.queue(pipeline, params, trigger=trigger, trigger_info=trigger_info,
                            from_step=from_step, _status="running")
        return self.execute(run_id, observer)

    def finish_resumed(self, pipeline: str) -> list[str]:
        """Execute, here and first, the runs of ``pipeline`` whose process died after they
        began publishing (queued again by the reaper); returns their ids.

        Without a server nobody else would: the datasets they committed to would keep
        their rows while those they had not reached would miss them.
        """
        import os

        from headwater.store import queue
        from headwater.store.liveness import RESUMED_LOCAL

        self._reap_dead()
        finished = []
        for row in reversed(self.runtime.store.runs(pipeline, status=["queued"], limit=100)):
            if row.get("parent_run_id") != row["id"] or \
                    not str(row.get("error") or "").startswith(RESUMED_LOCAL):
                continue  # a queued or resumed server run: a server's to take
            if queue.claim_run(self.runtime.store, str(row["id"]), f"local:{os.getpid()}"):
                execute_run(self.runtime, str(row["id"]))
                finished.append(str(row["id"]))
        return finished

    def execute(self, run_id: str, observer: Observer | None = None) -> Run:
        execute_run(self.runtime, run_id, observer)
        return self.get_run(run_id)

    def _reuse_for(self, pipeline: str, from_step: str) -> tuple[str, list[str]]:
        from headwater.engine.plan import plan

        dag = plan(self.runtime.pipeline(pipeline), self.root)
        if from_step not in dag.steps:
            import difflib

            hint = difflib.get_close_matches(from_step, list(dag.steps), n=1)
            raise HeadwaterError(f"pipeline {pipeline!r} has no step {from_step!r}"
                                 + (f"; did you mean {hint[0]!r}?" if hint else ""))
        needed = [s for s in dag.order if s not in dag.downstream(from_step)]
        if not needed:
            return "", []
        for row in self.runtime.store.runs(pipeline, limit=200):
            outputs = self.runtime.store.succeeded_outputs(row["id"])
            if all(s in outputs for s in needed):
                return str(row["id"]), needed
        raise HeadwaterError(
            f"no earlier run of {pipeline!r} has outputs for {', '.join(needed)}; run the "
            f"whole pipeline first")

    def rerun(self, run_id: str, *, from_failed: bool = False,
              observer: Observer | None = None) -> Run:
        """Run again with the same params; ``from_failed`` reuses the steps that succeeded."""
        return self.execute(self.prepare_rerun(run_id, from_failed=from_failed), observer)

    def prepare_rerun(self, run_id: str, *, from_failed: bool = False) -> str:
        """Create (``running``, here) the run that reruns ``run_id``; returns its id."""
        return create_rerun(self.runtime, run_id, from_failed=from_failed, status="running")

    def cancel(self, run_id: str) -> str:
        """Ask a run to stop; returns the resulting state (cancelled / cancelling / ...)."""
        return self.runtime.store.request_cancel(run_id)

    def get_run(self, run_id: str) -> Run:
        self._reap_dead()
        row = self.runtime.store.run(run_id)
        return _run_from(row, self.runtime.store.steps(row["id"]))

    def runs(self, pipeline: str | None = None, limit: int = 50) -> list[Run]:
        if pipeline is not None:
            self.runtime.pipeline(pipeline)
        self._reap_dead()
        return [_run_from(r, None) for r in self.runtime.store.runs(pipeline, limit)]

    def _reap_dead(self) -> None:
        """A run whose process on this host died is ended now, not shown ``running``."""
        from headwater.store.liveness import reap_dead

        reap_dead(self.runtime.store, resumable=self.runtime.resumable)

    def logs(self, run_id: str) -> list[dict[str, Any]]:
        row = self.runtime.store.run(run_id)
        return self.runtime.store.logs(row["id"])

    # ------------------------------------------------------------------ datasets

    def dataset(self, name: str) -> Dataset:
        from headwater.datasets.dataset import Dataset

        return Dataset(self.runtime, name)

    def datasets(self) -> list[dict[str, Any]]:
        out = []
        for record in self.runtime.store.datasets():
            try:
                latest = self.runtime.store.version(record["name"])
            except NotFoundError:
                latest = None
            out.append({
                "name": record["name"], "uri": record["uri"], "pipeline": record["pipeline"],
                "version": latest["version"] if latest else 0,
                "rows": latest["rows_total"] if latest else 0,
                "updated_at": latest["created_at"].isoformat() if latest else None,
            })
        return out

