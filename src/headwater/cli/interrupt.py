"""Ctrl-C and SIGTERM on a run executed by the CLI: the run records its own end.

The first signal asks the run to cancel through the store (the same path as ``headwater
cancel``): running steps are interrupted, command children's process groups are killed,
and the run ends ``cancelled``, naming its step. Afterwards the CLI says what really
happened, including versions this run published before the interrupt (they stand). A
second signal stops at once, still recording the run as cancelled first.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from headwater.exceptions import HeadwaterError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Interrupt:
    """Which signal arrived (None: none did)."""

    signal: int | None = None
    _asked: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal or signal.SIGINT)


@contextlib.contextmanager
def cancel_on_signals(store: Any, run_id: str) -> Iterator[Interrupt]:
    """While the body runs, SIGINT/SIGTERM cancel ``run_id`` instead of killing the CLI."""
    interrupt = Interrupt()

    def ask() -> None:  # store writes happen here, never inside the signal handler
        interrupt._asked.wait()
        if not interrupt._done.is_set():
            with contextlib.suppress(HeadwaterError):
                store.request_cancel(run_id)

    def handler(signum: int, _frame: FrameType | None) -> None:
        if interrupt.signal is not None:
            _stop_now(store, run_id, signum)
        interrupt.signal = signum
        name = signal.Signals(signum).name
        sys.stderr.write(f"\n{name}: cancelling run {run_id} (again to stop at once)\n")
        interrupt._asked.set()

    watcher = threading.Thread(target=ask, name="hw-interrupt", daemon=True)
    watcher.start()
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield interrupt
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        interrupt._done.set()
        interrupt._asked.set()


def _stop_now(store: Any, run_id: str, signum: int) -> None:
    """The second signal: record the run cancelled (if still unfinished) and leave."""
    import os

    from headwater.store.queue import fail_unfinished

    def record() -> None:
        with contextlib.suppress(HeadwaterError):
            fail_unfinished(store, run_id, "interrupted twice: stopped at once")
            store.update_run(run_id, status="cancelled")

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    recorder.join(5)
    sys.stderr.write(f"run {run_id} stopped at once\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def describe(run: Any, versions: list[dict[str, Any]], signum: int) -> str:
    """The truth after an interrupt: the run's end, and what it published before it."""
    name = signal.Signals(signum).name
    where = f" at step {run.failed_step!r}" if run.failed_step else ""
    lines = [f"{name}: run {run.id} {run.status}{where}"]
    for version in versions:
        lines.append(f"  it had already published {version['dataset']} version "
                     f"{version['version']} (+{version['rows_added']} rows); that version "
                     "stands")
    if not versions:
        lines.append("  nothing was published; the next run starts where the last "
                     "successful one ended")
    return "\n".join(lines) + "\n"
