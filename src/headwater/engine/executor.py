"""Where step functions execute: the seam between the engine and a cluster.

The engine hands an executor zero-argument callables (a step's attempts: retries,
timeouts and store records stay with the engine) and waits on the futures it returns;
it never assumes threads. Inside an attempt it asks the executor to ``run_step``: the
local executor calls the step function in that thread, the Dask executor
(``engine.dask_executor``, imported only when configured) ships the step to a worker.
The local executor is a thread pool: DuckDB, Arrow and delta-rs release the GIL, so
steps really run in parallel on one machine.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from headwater.steps.base import StepOutput, step_function

if TYPE_CHECKING:
    from headwater.engine.context import RunContext

T = TypeVar("T")


class Executor(Protocol):
    def submit(self, fn: Callable[[], T]) -> Future[T]: ...

    def run_step(self, kind: str, ctx: RunContext, step: Any) -> StepOutput:
        """Run one attempt of a step and return its output (its data already where
        every later step, on any machine, can read it)."""

    def shutdown(self, wait: bool = True) -> None: ...


class LocalExecutor:
    """A bounded thread pool."""

    runs_inline = True
    """The engine may run a step whose work it can interrupt in its own thread instead
    (``RunEngine._inline_ok``): the step function is called the same way either way.
    Executors without this attribute (Dask) always get ``submit``."""

    def __init__(self, max_workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="hw-step")

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        return self._pool.submit(fn)

    def run_step(self, kind: str, ctx: RunContext, step: Any) -> StepOutput:
        return step_function(kind)(ctx, step)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)


def make_executor(config: object) -> Executor:
    """The executor a project's ``executor:`` setting names."""
    kind = getattr(config, "type", "local")
    if kind == "local":
        return LocalExecutor(int(getattr(config, "max_workers", 4)))
    if kind == "dask":
        from headwater.engine.dask_executor import DaskExecutor

        return DaskExecutor(config)
    raise NotImplementedError(
        f"executor {kind!r} is not available; use 'executor: local' or 'type: dask'")
