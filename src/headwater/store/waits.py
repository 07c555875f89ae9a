"""Parked waits: an ``http`` step waiting for a job, recorded so no thread has to.

Under ``headwater serve`` a waiting step records a wait (``waiting``) and its run leaves
the runner as ``waiting``: it holds no worker and does not count against
``max_concurrent_runs``. A server's waiter polls due waits, a callback completes one
(``done``), a failure or timeout closes one (``failed``); then exactly one server claims
the outcome (a conditional update) and either continues the run — the waited step's
output recorded, the run queued again reusing every finished step — or fails it. Rows
live in the store, so waits survive a restart. Never import the engine or the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, select, update

from headwater.store import schema as t
from headwater.store.store import Store, utcnow

WAITING = "waiting"
RESUME_MARK = "wait"
"""``trigger_info.resume`` of a run continued after a wait (not crash recovery: every
finished step, sources included, is reused as it was)."""


def add(store: Store, *, token: str, run_id: str, step_id: str, kind: str,
        spec: Mapping[str, Any], every: float | None, timeout: float) -> None:
    """Record a wait; a poll is first due ``every`` seconds from now."""
    now = utcnow()
    with store.tx() as conn:
        conn.execute(insert(t.waits).values(
            token=token, run_id=run_id, step_id=step_id, kind=kind, status=WAITING,
            spec=dict(spec), created_at=now, deadline=now + timedelta(seconds=timeout),
            due_at=now + timedelta(seconds=every) if every is not None else None))


def drop(store: Store, token: str) -> None:
    """Forget a wait whose start call failed (no job was started to wait for)."""
    with store.tx() as conn:
        conn.execute(t.waits.delete().where(t.waits.c.token == token))


def get(store: Store, token: str) -> dict[str, Any] | None:
    rows = store._read(select(t.waits).where(t.waits.c.token == token))
    return rows[0] if rows else None


def _of_waiting_runs(*conditions: Any) -> Any:
    return select(t.waits).join(t.runs, t.runs.c.id == t.waits.c.run_id).where(
        and_(t.runs.c.status == WAITING, *conditions))


def due(store: Store, kind: str, now: datetime | None = None) -> list[dict[str, Any]]:
    """Waits of ``kind`` (poll, run) of parked runs whose next check is due."""
    now = now or utcnow()
    return store._read(_of_waiting_runs(t.waits.c.status == WAITING, t.waits.c.kind == kind,
                                        t.waits.c.due_at <= now).order_by(t.waits.c.due_at))


def cancelled_waiting_runs(store: Store) -> list[str]:
    """Parked runs someone asked to cancel."""
    rows = store._read(select(t.runs.c.id).where(and_(t.runs.c.status == WAITING,
                                                      t.runs.c.cancel_requested.is_(True))))
    return [str(r["id"]) for r in rows]


def cancel_waiting_run(store: Store, run_id: str) -> None:
    """Cancel a parked run: its waits close, its waiting step and the run end cancelled."""
    now = utcnow()
    with store.tx() as conn:
        conn.execute(update(t.waits).where(and_(t.waits.c.run_id == run_id,
                                                t.waits.c.status == WAITING)).values(
            status="closed", error="cancelled"))
        conn.execute(update(t.step_runs).where(and_(
            t.step_runs.c.run_id == run_id, t.step_runs.c.status == WAITING)).values(
            status="cancelled", finished_at=now, error="cancelled while waiting"))
        conn.execute(update(t.runs).where(and_(t.runs.c.id == run_id,
                                               t.runs.c.status == WAITING)).values(
            status="cancelled", finished_at=now, error="cancelled by request while waiting"))


def expired_callbacks(store: Store, now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or utcnow()
    return store._read(_of_waiting_runs(t.waits.c.status == WAITING,
                                        t.waits.c.kind == "callback",
                                        t.waits.c.deadline <= now))


def reschedule(store: Store, token: str, due_at: datetime, last_status: str) -> None:
    with store.tx() as conn:
        conn.execute(update(t.waits).where(and_(t.waits.c.token == token,
                                                t.waits.c.status == WAITING)).values(
            due_at=due_at, last_status=last_status))


def complete(store: Store, token: str, result: Any) -> str:
    """Store the JSON that ends a wait: ``done``, or ``unknown`` / ``used`` for a token
    that never existed / already completed."""
    with store.tx() as conn:
        changed = conn.execute(update(t.waits).where(and_(
            t.waits.c.token == token, t.waits.c.status == WAITING)).values(
            status="done", result={"json": result})).rowcount
    if changed == 1:
        return "done"
    return "used" if get(store, token) is not None else "unknown"


def fail(store: Store, token: str, error: str) -> None:
    with store.tx() as conn:
        conn.execute(update(t.waits).where(and_(t.waits.c.token == token,
                                                t.waits.c.status == WAITING)).values(
            status="failed", error=error))


def ready(store: Store) -> list[dict[str, Any]]:
    """Waits that ended (done or failed) whose run is still parked."""
    return store._read(_of_waiting_runs(t.waits.c.status.in_(["done", "failed"])))


def claim_outcome(store: Store, token: str, status: str) -> bool:
    """Take an ended wait for this server (True once across servers)."""
    with store.tx() as conn:
        return bool(conn.execute(update(t.waits).where(and_(
            t.waits.c.token == token, t.waits.c.status == status)).values(
            status="resumed" if status == "done" else "closed")).rowcount == 1)


def park_run(store: Store, run_id: str) -> None:
    """The runner leaves a run ``waiting``: no worker, no heartbeat, no slot."""
    with store.tx() as conn:
        conn.execute(update(t.runs).where(and_(t.runs.c.id == run_id,
                                               t.runs.c.status == "running")).values(
            status=WAITING, worker=None))


def mark_step_waiting(store: Store, attempt_id: int, seconds: float) -> None:
    with store.tx() as conn:
        conn.execute(update(t.step_runs).where(t.step_runs.c.id == attempt_id).values(
            status=WAITING, seconds=seconds))


def continue_after_wait(store: Store, run_id: str, step_id: str,
                        output: Mapping[str, Any]) -> None:
    """Record the waited step's output and queue its run again to continue.

    The run resumes from itself with every finished step reused, sources included (their
    rows were read before the wait; reading again would read other rows). It is marked
    ``trigger_info.resume = "wait"`` so crash-recovery rules do not apply to it; it kept
    its pipeline's run lock while parked, so no other run read that state meanwhile.
    """
    now = utcnow()
    with store.tx() as conn:
        conn.execute(update(t.step_runs).where(and_(
            t.step_runs.c.run_id == run_id, t.step_runs.c.step_id == step_id,
            t.step_runs.c.status == WAITING)).values(
            status="succeeded", finished_at=now, output=dict(output),
            rows_out=output.get("rows")))
        steps = conn.execute(select(t.step_runs.c.step_id).where(and_(
            t.step_runs.c.run_id == run_id,
            t.step_runs.c.status.in_(["succeeded", "reused"])))).all()
        info = conn.execute(select(t.runs.c.trigger_info).where(
            t.runs.c.id == run_id)).scalar()
        conn.execute(update(t.runs).where(and_(t.runs.c.id == run_id,
                                               t.runs.c.status == WAITING)).values(
            status="queued", parent_run_id=run_id, error=None,
            reuse_steps=sorted({str(s[0]) for s in steps}),
            trigger_info={**dict(info or {}), "resume": RESUME_MARK}))


def fail_waiting_run(store: Store, run_id: str, step_id: str, message: str) -> None:
    """End a parked run as failed, naming the waited step and why."""
    now = utcnow()
    with store.tx() as conn:
        conn.execute(update(t.step_runs).where(and_(
            t.step_runs.c.run_id == run_id, t.step_runs.c.step_id == step_id,
            t.step_runs.c.status == WAITING)).values(
            status="failed", finished_at=now, error=message))
        conn.execute(update(t.runs).where(and_(t.runs.c.id == run_id,
                                               t.runs.c.status == WAITING)).values(
            status="failed", finished_at=now, failed_step=step_id, error=message))
