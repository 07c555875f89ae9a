"""The trigger seam: what a trigger emits and how the server sees its health.

A trigger only *detects* events and hands each one to ``emit`` as a :class:`Fire`. It never
touches the store or the run queue: the server inserts the fire into ``trigger_fires``,
whose unique ``dedupe_key`` makes one logical event fire once even when several servers
watch the same schedule or folder. A trigger must never raise for bad input or a flaky
environment (a missing folder, an emit that failed); it records the problem in ``status``
and keeps trying, because one broken trigger must not stop the server.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger("headwater.triggers")


@dataclass(frozen=True)
class Fire:
    """One logical event that should start a run of ``pipeline``."""

    pipeline: str
    trigger_index: int
    kind: str
    """The run's trigger kind (SPEC §4): ``schedule``, ``files``, ..."""
    dedupe_key: str
    """Unique per logical event; stored in ``trigger_fires.dedupe_key`` (UNIQUE)."""
    info: dict[str, Any]
    """Becomes the run's trigger info: ``{"files": [...]}``, ``{"window": {...}}`` ..."""
    event_at: datetime
    """When the event happened (a tick's due time, a file's arrival), for latency metrics."""
    window: tuple[datetime, datetime] | None = None


Emit = Callable[[Fire], Awaitable[None]]
"""The server's callback; it may raise (a store outage), and the trigger then retries."""


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


@dataclass
class TriggerStatus:
    """What the UI and ``headwater triggers`` show about one armed trigger."""

    last_fired_at: datetime | None = None
    next_fire_at: datetime | None = None
    error: str | None = None
    error_at: datetime | None = None
    name: str = field(default="", repr=False)
    """``pipeline:index``, only for log lines."""

    def fail(self, message: str) -> None:
        """Record an error; log it once, not on every retry of the same problem."""
        if message != self.error:
            log.warning("trigger %s: %s", self.name, message)
            self.error_at = utcnow()
        self.error = message

    def recover(self) -> None:
        """Clear a recorded error (logged once, so the log shows the outage's end)."""
        if self.error is not None:
            log.info("trigger %s recovered from: %s", self.name, self.error)
        self.error = None
        self.error_at = None

    def fired(self, at: datetime | None = None) -> None:
        self.last_fired_at = at or utcnow()

    def as_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "last_fired_at": iso(self.last_fired_at),
            "next_fire_at": iso(self.next_fire_at),
            "error": self.error,
            "error_at": iso(self.error_at),
        }


class Trigger(Protocol):
    """An armed trigger. ``run`` loops until cancelled and never raises for bad input."""

    status: TriggerStatus

    async def run(self, emit: Emit) -> None: ...


class Backoff:
    """Delays for retrying a failing environment: doubling from ``first`` up to ``cap``."""

    def __init__(self, first: float = 0.25, cap: float = 30.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first
