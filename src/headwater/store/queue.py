"""The run queue and trigger bookkeeping, safe with several servers on one store.

A fire and the run it queues are one transaction keyed by a unique ``dedupe_key``, so a
tick, a file batch or a message queues one run however many servers saw it. A queued run
is claimed with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serialises writers, so a
conditional update is enough there). Running runs carry a heartbeat; a run whose
heartbeat is older than the lease belongs to a dead server and is queued again, resuming
from its succeeded steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from headwater.store import schema as t
from headwater.store.liveness import this_process
from headwater.store.store import Store, new_run_id, utcnow


def fire(store: Store, *, pipeline: str, trigger_index: int | None, kind: str,
         dedupe_key: str | None, info: Mapping[str, Any], event_at: datetime | None,
         params: Mapping[str, Any] | None = None, code_version: str | None = None,
         window: tuple[datetime, datetime] | None = None) -> str | None:
    """Record a fire and queue its run atomically; None if this event already fired."""
    now = utcnow()
    for _ in range(20):
        run_id = new_run_id()  # a retry after an id taken in the same second needs a new one
        try:
            # one fire at a time per process (webhook threads race for the next seq otherwise:
            # at 32 concurrent calls that halves the throughput); servers still race, and retry
            with store._seq_lock, store.tx() as conn:
                if dedupe_key is not None:
                    seen = conn.execute(select(t.trigger_fires.c.id).where(
                        t.trigger_fires.c.dedupe_key == dedupe_key)).first()
                    if seen is not None:
                        return None
                seq = conn.execute(select(func.coalesce(func.max(t.runs.c.seq), 0))).scalar()
                conn.execute(insert(t.runs).values(
                    id=run_id, seq=int(seq or 0) + 1, pipeline=pipeline, status="queued",
                    trigger=kind, trigger_info=dict(info), params=dict(params or {}),
                    code_version=code_version, created_at=now, cancel_requested=False,
                    window_start=window[0] if window else None,
                    window_end=window[1] if window else None))
                conn.execute(insert(t.trigger_fires).values(
                    pipeline=pipeline, trigger_index=trigger_index, kind=kind,
                    dedupe_key=dedupe_key, fired_at=now, event_at=event_at,
                    info=_small(info), run_id=run_id))
            return run_id
        except IntegrityError as exc:
            if dedupe_key is not None and "dedupe" in str(exc).lower():
                return None
            if dedupe_key is not None and _fired(store, dedupe_key):
                return None
            continue  # a concurrent insert took our seq: try the next one
    return None


def _fired(store: Store, dedupe_key: str) -> bool:
    with store.engine.connect() as conn:
        return conn.execute(select(t.trigger_fires.c.id).where(
            t.trigger_fires.c.dedupe_key == dedupe_key)).first() is not None


def _small(info: Mapping[str, Any]) -> dict[str, Any]:
    """Keep fire records bounded: a burst of 10,000 files is summarised, not copied."""
    out = dict(info)
    for key in ("files", "messages"):
        value = out.get(key)
        if isinstance(value, list) and len(value) > 50:
            out[key] = [*value[:50], f"... {len(value) - 50} more"]
    return out


@dataclass(frozen=True)
class FireRequest:
    """One fire to record with :func:`fire_many` (the arguments of :func:`fire`)."""

    pipeline: str
    kind: str
    info: Mapping[str, Any]
    event_at: datetime | None
    trigger_index: int | None = None
    dedupe_key: str | None = None
    params: Mapping[str, Any] | None = None
    code_version: str | None = None
    window: tuple[datetime, datetime] | None = None


def fire_many(store: Store, requests: Sequence[FireRequest]) -> list[str | None]:
    """Record several fires and queue their runs in ONE transaction; per request its run
    id, or None if its event already fired (an earlier request of the batch counts).

    A burst of webhooks costs one commit (one WAL sync on SQLite) instead of one each:
    at thousands a minute the per-fire commits and the lock they queue on were most of a
    webhook's time. Every run is durably queued when this returns, exactly as with
    :func:`fire`. A race with another server (a seq or a dedupe key taken between our
    read and our insert) rolls the whole batch back and it is tried again.
    """
    if not requests:
        return []
    for _ in range(20):
        try:
            with store._seq_lock, store.tx() as conn:
                return _insert_fires(conn, requests)
        except IntegrityError:
            continue  # a concurrent insert took a seq or a key (or an id): read again
    return [fire(store, pipeline=r.pipeline, trigger_index=r.trigger_index, kind=r.kind,
                 dedupe_key=r.dedupe_key, info=r.info, event_at=r.event_at, params=r.params,
                 code_version=r.code_version, window=r.window) for r in requests]


def _insert_fires(conn: Connection, requests: Sequence[FireRequest]) -> list[str | None]:
    """The inserts of :func:`fire_many`, inside its transaction."""
    keys = sorted({r.dedupe_key for r in requests if r.dedupe_key is not None})
    seen: set[str] = set()
    if keys:
        seen = {str(row[0]) for row in conn.execute(select(t.trigger_fires.c.dedupe_key).where(
            t.trigger_fires.c.dedupe_key.in_(keys)))}
    seq = int(conn.execute(select(func.coalesce(func.max(t.runs.c.seq), 0))).scalar() or 0)
    now = utcnow()
    out: list[str | None] = []
    runs: list[dict[str, Any]] = []
    fires: list[dict[str, Any]] = []
    for request in requests:
        if request.dedupe_key is not None and request.dedupe_key in seen:
            out.append(None)
            continue
        if request.dedupe_key is not None:
            seen.add(request.dedupe_key)
        run_id = new_run_id()
        seq += 1
        window = request.window
        runs.append({"id": run_id, "seq": seq, "pipeline": request.pipeline,
                     "status": "queued", "trigger": request.kind,
                     "trigger_info": dict(request.info), "params": dict(request.params or {}),
                     "code_version": request.code_version, "created_at": now,
                     "cancel_requested": False,
                     "window_start": window[0] if window else None,
                     "window_end": window[1] if window else None})
        fires.append({"pipeline": request.pipeline, "trigger_index": request.trigger_index,
                      "kind": request.kind, "dedupe_key": request.dedupe_key, "fired_at": now,
                      "event_at": request.event_at, "info": _small(request.info),
                      "run_id": run_id})
        out.append(run_id)
    if runs:
        conn.execute(insert(t.runs), runs)
        conn.execute(insert(t.trigger_fires), fires)
    return out


def claim_many(store: Store, worker: str, slots: int,
               limit_of: Callable[[str], int | None]) -> list[tuple[str, str, datetime]]:
    """Take up to ``slots`` of the oldest queued runs for ``worker`` in one transaction;
    ``(run id, pipeline, created_at)`` each.

    ``limit_of(pipeline)`` is that pipeline's run limit (None: none). Runs already running
    are counted store-wide inside the same transaction, and a pipeline that reaches its
    limit within this batch gets no more: a burst of one pipeline's runs is claimed in
    one statement, never past its limit. PostgreSQL locks the rows it takes
    (``FOR UPDATE SKIP LOCKED``); SQLite has one writer, and the update is conditional.
    """
    now = utcnow()
    with store.tx() as conn:
        running = {str(r[0]): int(r[1]) for r in conn.execute(
            select(t.runs.c.pipeline, func.count()).where(t.runs.c.status == "running")
            .group_by(t.runs.c.pipeline)).all()}
        room = {name: limit - count for name, count in running.items()
                if (limit := limit_of(name)) is not None}
        query = select(t.runs.c.id, t.runs.c.pipeline, t.runs.c.created_at).where(
            t.runs.c.status == "queued")
        full = sorted(name for name, left in room.items() if left <= 0)
        if full:
            query = query.where(t.runs.c.pipeline.not_in(full))
        query = query.order_by(t.runs.c.seq).limit(slots)
        if not store.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        taken: list[tuple[str, str, datetime]] = []
        for run_id, pipeline, created_at in conn.execute(query).all():
            name = str(pipeline)
            if name not in room:
                limit = limit_of(name)
                room[name] = limit if limit is not None else slots
            if room[name] <= 0:
                continue
            room[name] -= 1
            taken.append((str(run_id), name, created_at))
        if not taken:
            return []
        ids = [run_id for run_id, _, _ in taken]
        result = conn.execute(update(t.runs).where(and_(
            t.runs.c.id.in_(ids), t.runs.c.status == "queued")).values(
            status="running", worker=worker, started_at=now, heartbeat_at=now,
            **this_process()))
        if result.rowcount != len(ids):  # cannot happen with the lock/single writer: be sure
            mine = {str(r[0]) for r in conn.execute(select(t.runs.c.id).where(and_(
                t.runs.c.id.in_(ids), t.runs.c.worker == worker,
                t.runs.c.started_at == now)))}
            taken = [row for row in taken if row[0] in mine]
    return [(run_id, name, _aware(created_at)) for run_id, name, created_at in taken]


def _aware(value: datetime) -> datetime:
    """SQLite gives datetimes back naive; the store writes UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def claim(store: Store, worker: str, *, exclude_pipelines: Sequence[str] = ()) -> str | None:
    """Take the oldest queued run (not of a saturated pipeline) for ``worker``."""
    now = utcnow()
    query = select(t.runs.c.id).where(t.runs.c.status == "queued")
    if exclude_pipelines:
        query = query.where(t.runs.c.pipeline.not_in(list(exclude_pipelines)))
    query = query.order_by(t.runs.c.seq).limit(1)
    if not store.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    with store.tx() as conn:
        run_id = conn.execute(query).scalar()
        if run_id is None:
            return None
        result = conn.execute(update(t.runs).where(and_(
            t.runs.c.id == run_id, t.runs.c.status == "queued")).values(
            status="running", worker=worker, started_at=now, heartbeat_at=now,
            **this_process()))
        return str(run_id) if result.rowcount == 1 else None


def claim_run(store: Store, run_id: str, worker: str) -> bool:
    """Take one given queued run for ``worker``; False if someone (a server) took it first."""
    now = utcnow()
    with store.tx() as conn:
        result = conn.execute(update(t.runs).where(and_(
            t.runs.c.id == run_id, t.runs.c.status == "queued")).values(
            status="running", worker=worker, started_at=now, heartbeat_at=now,
            **this_process()))
        return result.rowcount == 1


def running_counts(store: Store) -> dict[str, int]:
    """pipeline → runs running now, across every server."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.runs.c.pipeline, func.count()).where(
            t.runs.c.status == "running").group_by(t.runs.c.pipeline)).all()
    return {str(r[0]): int(r[1]) for r in rows}


def queued_count(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.runs).where(
            t.runs.c.status == "queued")).scalar() or 0)


def heartbeat(store: Store, run_ids: Sequence[str]) -> None:
    if not run_ids:
        return
    with store.tx() as conn:
        conn.execute(update(t.runs).where(t.runs.c.id.in_(list(run_ids))).values(
            heartbeat_at=utcnow()))


def requeue_orphans(store: Store, lease_seconds: float, *, worker: str | None = None,
                    resumable: Callable[[str], bool] | None = None) -> list[str]:
    """Queue again every running run whose heartbeat expired (its server died).

    With ``worker`` given, that worker's own running runs are requeued regardless of age
    (the server restarted under the same name). Runs of this host whose process is gone
    are ended at once (:func:`headwater.store.liveness.reap_dead`, with ``resumable``). The
    run resumes: steps that succeeded are reused (except those that read sources, which
    re-read against the state committed since, unless the run committed that state itself
    before it died: ``engine.reuse.decide``), and its publish is idempotent per run.
    """
    from headwater.store.liveness import reap_dead

    reaped = reap_dead(store, resumable)
    cutoff = utcnow() - timedelta(seconds=lease_seconds)
    cond = and_(t.runs.c.status == "running", t.runs.c.heartbeat_at < cutoff)
    if worker is not None:
        cond = cond | and_(t.runs.c.status == "running", t.runs.c.worker == worker)
    with store.engine.connect() as conn:
        ids = [str(r[0]) for r in conn.execute(select(t.runs.c.id).where(cond)).all()]
    requeue_runs(store, ids)
    return [*reaped, *ids]


def requeue_runs(store: Store, run_ids: Sequence[str], *, only_pid: int | None = None,
                 reason: str = "its server stopped") -> None:
    """Queue running runs again to resume them; ``only_pid``: if that process still owns it."""
    with store.tx() as conn:
        for run_id in run_ids:
            steps = conn.execute(select(t.step_runs.c.step_id).where(and_(
                t.step_runs.c.run_id == run_id,
                t.step_runs.c.status.in_(["succeeded", "reused"])))).all()
            owned = and_(t.runs.c.id == run_id, t.runs.c.status == "running")
            if only_pid is not None:
                owned = and_(owned, t.runs.c.pid == only_pid)
            result = conn.execute(update(t.runs).where(owned).values(
                status="queued", worker=None, host=None, pid=None, parent_run_id=run_id,
                reuse_steps=sorted({str(s[0]) for s in steps}),
                error=f"resumed after {reason}"))
            if result.rowcount != 1:
                continue
            conn.execute(update(t.step_runs).where(and_(
                t.step_runs.c.run_id == run_id, t.step_runs.c.status == "running")).values(
                status="failed", error=f"interrupted: {reason}",
                finished_at=utcnow()))
            conn.execute(delete(t.run_locks).where(t.run_locks.c.run_id == run_id))


def fail_unfinished(store: Store, run_id: str, message: str, *,
                    only_pid: int | None = None) -> None:
    """Fail a run its engine left unfinished (and its running steps), naming the step.

    A run that already reached a final state is left as it is; with ``only_pid``, so is
    a run another process has taken over since. Its run locks are released.
    """
    now = utcnow()
    running_steps = and_(t.step_runs.c.run_id == run_id, t.step_runs.c.status == "running")
    unfinished = and_(t.runs.c.id == run_id, t.runs.c.status.in_(["queued", "running"]))
    if only_pid is not None:
        unfinished = and_(unfinished, t.runs.c.pid == only_pid)
    with store.tx() as conn:
        step = conn.execute(select(t.step_runs.c.step_id).where(running_steps)
                            .order_by(t.step_runs.c.id).limit(1)).scalar()
        result = conn.execute(update(t.runs).where(unfinished).values(
            status="failed", finished_at=now, failed_step=step,
            error=f"step {step!r} failed: {message}" if step else message))
        if result.rowcount != 1:
            return
        conn.execute(update(t.step_runs).where(running_steps).values(
            status="failed", error=message, finished_at=now))
        conn.execute(delete(t.run_locks).where(t.run_locks.c.run_id == run_id))


# --------------------------------------------------------------------------- triggers


def trigger_states(store: Store) -> dict[tuple[str, int], dict[str, Any]]:
    rows = store._read(select(t.trigger_state))
    return {(r["pipeline"], int(r["trigger_index"])): r for r in rows}


def save_trigger_state(store: Store, pipeline: str, index: int, kind: str,
                       **values: Any) -> None:
    now = utcnow()
    with store.tx() as conn:
        key = and_(t.trigger_state.c.pipeline == pipeline,
                   t.trigger_state.c.trigger_index == index)
        found = conn.execute(select(t.trigger_state.c.kind).where(key)).first()
        if found is None:
            conn.execute(insert(t.trigger_state).values(
                pipeline=pipeline, trigger_index=index, kind=kind,
                enabled=values.pop("enabled", True), updated_at=now, **values))
        else:
            conn.execute(update(t.trigger_state).where(key).values(kind=kind, updated_at=now,
                                                                   **values))


def last_fires(store: Store, pipeline: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    query = select(t.trigger_fires).order_by(t.trigger_fires.c.id.desc()).limit(limit)
    if pipeline:
        query = query.where(t.trigger_fires.c.pipeline == pipeline)
    return store._read(query)


def versions_since(store: Store, after: datetime) -> list[dict[str, Any]]:
    """Dataset versions recorded after ``after`` (the dataset trigger's cheap poll)."""
    return store._read(select(t.dataset_versions.c.dataset, t.dataset_versions.c.version,
                              t.dataset_versions.c.created_at)
                       .where(t.dataset_versions.c.created_at > after)
                       .order_by(t.dataset_versions.c.created_at))
