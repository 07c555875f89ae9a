"""The object a step receives while it runs (implements ``steps.base.StepContext``)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headwater.config.templates import render
from headwater.steps.base import FanOut, StepOutput

if TYPE_CHECKING:
    import duckdb

    from headwater.runtime import ProjectRuntime

CommitHook = tuple[Callable[[], None], Callable[[], None] | None]
"""(done, undone): what a step asked to run after the run's commit, or instead of it."""

LogSink = Callable[[str | None, str, str, Mapping[str, Any]], None]
"""(step_id, level, message, fields) → None: the run's log, persisted and displayed."""


@dataclass
class RunContext:
    run_id: str
    run_seq: int
    pipeline: str
    step_id: str
    attempt: int
    code_version: str
    trigger: str
    project: ProjectRuntime
    workdir: Path
    inputs: Mapping[str, StepOutput]
    lineage: StepOutput
    template_vars: Mapping[str, Any]
    db: duckdb.DuckDBPyConnection
    sink: LogSink
    cancel_event: threading.Event
    _cursor: duckdb.DuckDBPyConnection | None = None
    _on_interrupt: list[Callable[[], None]] = field(default_factory=list)
    interrupted: str | None = None
    commit_hooks: list[CommitHook] = field(default_factory=list)
    """Shared by every step of the run; the engine calls them when the run ends."""
    parking: str | None = None
    fan_out: FanOut | None = None
    """Set by an executor with workers for this attempt: partitioned reads fan out."""

    def cursor(self) -> duckdb.DuckDBPyConnection:
        if self._cursor is None:
            self._cursor = self.db.cursor()
        return self._cursor

    def log(self, message: str, level: str = "info", **fields: Any) -> None:
        self.sink(self.step_id, level, message, fields)

    def render(self, template: str) -> str:
        return render(template, self.template_vars)

    def cancelled(self) -> bool:
        return self.cancel_event.is_set() or self.interrupted is not None

    def run_child(self, run_id: str) -> dict[str, Any]:
        """Execute a child run (``run_pipeline`` under ``headwater run``) in this thread."""
        from headwater.engine.runner import execute_run

        return execute_run(self.project, run_id)

    def on_interrupt(self, callback: Callable[[], None]) -> None:
        """Register how to stop this step's work early (kill a process, close a socket)."""
        self._on_interrupt.append(callback)

    def after_commit(self, done: Callable[[], None],
                     undone: Callable[[], None] | None = None) -> None:
        """See ``steps.base.StepContext.after_commit``."""
        self.commit_hooks.append((done, undone))

    def interrupt(self, reason: str) -> None:
        """Stop the step: DuckDB queries are interrupted, registered callbacks run."""
        self.interrupted = reason
        if self._cursor is not None:
            with contextlib.suppress(Exception):  # best effort: the cursor may be closed
                self._cursor.interrupt()
        for callback in self._on_interrupt:
            with contextlib.suppress(Exception):  # one failing callback must not stop others
                callback()

    def close(self) -> None:
        if self._cursor is not None:
            with contextlib.suppress(Exception):
                self._cursor.close()
            self._cursor = None
