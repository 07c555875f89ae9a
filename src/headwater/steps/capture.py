"""``print()`` inside a step's Python code goes to that step's log, line by line.

Steps run on threads of one process, so ``contextlib.redirect_stdout`` (process-wide)
would mix steps up: instead ``sys.stdout``/``sys.stderr`` become a router that sends
what a registered thread writes to its step's sink and everything else where it went
before. Threads the user's code starts itself are not followed.
"""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

LineSink = Callable[[str], None]


class _Router(io.TextIOBase):
    """A text stream that routes writes by thread."""

    def __init__(self, fallback: TextIO) -> None:
        super().__init__()
        self.fallback = fallback
        self.sinks: dict[int, _LineBuffer] = {}

    def write(self, text: str) -> int:
        sink = self.sinks.get(threading.get_ident())
        if sink is None:
            return self.fallback.write(text)
        sink.write(text)
        return len(text)

    def flush(self) -> None:
        self.fallback.flush()

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty ... of the original
        return getattr(self.fallback, name)


class _LineBuffer:
    def __init__(self, sink: LineSink) -> None:
        self.sink = sink
        self.partial = ""

    def write(self, text: str) -> None:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.sink(line.rstrip("\r"))

    def close(self) -> None:
        if self.partial:
            self.sink(self.partial)
            self.partial = ""


_INSTALL_LOCK = threading.Lock()


def _router(name: str) -> _Router:
    with _INSTALL_LOCK:
        current = getattr(sys, name)
        if not isinstance(current, _Router):
            current = _Router(current)
            setattr(sys, name, current)
        return current


@contextmanager
def prints_to(sink: LineSink) -> Iterator[None]:
    """While the block runs, this thread's stdout/stderr lines go to ``sink``."""
    buffer = _LineBuffer(sink)
    routers = [_router("stdout"), _router("stderr")]
    me = threading.get_ident()
    for router in routers:
        router.sinks[me] = buffer
    try:
        yield
    finally:
        for router in routers:
            router.sinks.pop(me, None)
        buffer.close()
