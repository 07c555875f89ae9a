"""Where step functions execute: the seam a Dask executor plugs into later.

The engine hands an executor zero-argument callables and waits on the futures it returns;
it never assumes threads. The local executor is a thread pool: DuckDB, Arrow and
delta-rs release the GIL, so steps really run in parallel on one machine.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, TypeVar

T = TypeVar("T")


class Executor(Protocol):
    def submit(self, fn: Callable[[], T]) -> Future[T]: ...

    def shutdown(self, wait: bool = True) -> None: ...


class LocalExecutor:
    """A bounded thread pool."""

    def __init__(self, max_workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="hw-step")

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        return self._pool.submit(fn)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)


def make_executor(config: object) -> Executor:
    """The executor a project's ``executor:`` setting names."""
    kind = getattr(config, "type", "local")
    if kind == "local":
        return LocalExecutor(int(getattr(config, "max_workers", 4)))
    raise NotImplementedError(
        f"executor {kind!r} is not available yet; use 'executor: local'")
