"""Store-wide run locks: one run at a time reads a pipeline's incremental state.

A lock is a row in ``run_locks`` keyed by name; inserting it is the claim (the primary key
makes two claims exclusive on SQLite and PostgreSQL alike). The holder's liveness is its
run row, never the lock row: a holder that finished, whose heartbeat is older than the
lease, or whose process on this host is gone has lost the lock, which is then taken over
at once. Never import the engine or the server from here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import and_, delete, insert, select
from sqlalchemy.exc import IntegrityError

from headwater.exceptions import HeadwaterError
from headwater.store import schema as t
from headwater.store.liveness import is_dead, reap_dead
from headwater.store.store import Store, utcnow

_RELEASED = threading.Condition()
"""Notified whenever this process releases a lock: a waiter in the same process (runs
publishing to one dataset under ``serve``) takes its turn at once instead of at its next
poll; waiters in other processes still poll."""


_LISTENERS: list[Callable[[str], None]] = []
"""Told the name of every lock this process releases (``on_release``)."""


def on_release(listener: Callable[[str], None]) -> None:
    """Call ``listener(name)`` after each release in this process: a server's run
    executor passes it on, so waiters in its sibling processes take their turn at once."""
    _LISTENERS.append(listener)


def wake_waiters() -> None:
    """Another process released a lock and said so: waiters here try again now, not at
    their next poll."""
    with _RELEASED:
        _RELEASED.notify_all()


class LockWaitCancelled(HeadwaterError):
    """The run was cancelled while it waited for another run to release a lock."""


def pipeline_lock(pipeline: str) -> str:
    """The lock name that serialises runs of one pipeline."""
    return f"pipeline:{pipeline}"


def try_acquire(store: Store, name: str, run_id: str, lease_seconds: float) -> str | None:
    """Take ``name`` for ``run_id``; None when taken, else the id of the live holder."""
    for _ in range(10):
        try:
            with store.tx() as conn:
                conn.execute(insert(t.run_locks).values(name=name, run_id=run_id,
                                                        acquired_at=utcnow()))
            return None
        except IntegrityError:
            pass
        holder = _holder(store, name)
        if holder is None or holder == run_id:  # released meanwhile / ours (a resumed run)
            if holder == run_id:
                return None
            continue
        if not _holder_gone(store, holder, lease_seconds):
            return holder
        with store.tx() as conn:  # only if the dead holder still has it
            conn.execute(delete(t.run_locks).where(and_(t.run_locks.c.name == name,
                                                        t.run_locks.c.run_id == holder)))
    raise HeadwaterError(f"could not take the run lock {name!r} after 10 tries")


def acquire(store: Store, name: str, run_id: str, *, lease_seconds: float,
            on_wait: Callable[[str], None], cancelled: Callable[[], bool],
            poll_seconds: float = 0.2) -> None:
    """Wait until ``run_id`` holds ``name``; ``on_wait(holder)`` each time the holder changes.

    Raises :class:`LockWaitCancelled` as soon as ``cancelled()`` says so.
    """
    announced: str | None = None
    while True:
        holder = try_acquire(store, name, run_id, lease_seconds)
        if holder is None:
            return
        if holder != announced:
            on_wait(holder)
            announced = holder
        if cancelled():
            raise LockWaitCancelled(f"cancelled while waiting for run {holder} to finish")
        with _RELEASED:
            _RELEASED.wait(poll_seconds)


def release(store: Store, name: str, run_id: str) -> None:
    """Give ``name`` up if ``run_id`` still holds it."""
    with store.tx() as conn:
        conn.execute(delete(t.run_locks).where(and_(t.run_locks.c.name == name,
                                                    t.run_locks.c.run_id == run_id)))
    with _RELEASED:
        _RELEASED.notify_all()
    for listener in list(_LISTENERS):
        listener(name)


def holders(store: Store) -> dict[str, str]:
    """lock name → holding run id (for tests and diagnostics)."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.run_locks.c.name, t.run_locks.c.run_id)).all()
    return {str(r[0]): str(r[1]) for r in rows}


def _holder(store: Store, name: str) -> str | None:
    with store.engine.connect() as conn:
        value = conn.execute(select(t.run_locks.c.run_id)
                             .where(t.run_locks.c.name == name)).scalar()
    return None if value is None else str(value)


def _holder_gone(store: Store, holder: str, lease_seconds: float) -> bool:
    """The holding run ended, went silent past the lease, or its local process died."""
    with store.engine.connect() as conn:
        row = conn.execute(select(t.runs).where(t.runs.c.id == holder)).first()
    if row is None:
        return True
    run = dict(row._mapping)
    if run["status"] in ("waiting", "queued"):
        return False  # parked, or queued to go on: it keeps its turn (continuations reuse it)
    if run["status"] != "running":
        return True
    if is_dead(run):
        reap_dead(store)  # end it honestly too, not only take its lock
        return True
    beat = run["heartbeat_at"]
    if beat is None:
        return False
    if beat.tzinfo is None:
        from datetime import UTC

        beat = beat.replace(tzinfo=UTC)
    return bool(beat < utcnow() - timedelta(seconds=lease_seconds))
