"""The metadata store: one small class over SQLAlchemy Core, SQLite (WAL) or PostgreSQL.

Every state change of a run is one short transaction, so a crash at any point leaves the
store describing what really happened up to then. The store is a record, not the source of
truth for data: dataset commits live in Delta, and :mod:`headwater.datasets` repairs the
store from the Delta log if a crash fell between the two. Never import the engine here.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from headwater.exceptions import NotFoundError, StoreError
from headwater.store import schema as t

ACTIVE = ("queued", "running")
_HOST = socket.gethostname()  # runs.host: see headwater.store.liveness
FINISHED = ("succeeded", "failed", "cancelled")
_RUN_ID_PREFIX = re.compile(r"[0-9a-f-]{4,}")
"""What a run id prefix may hold (ids are ``YYYYmmdd-HHMMSS-hex``); LIKE wildcards never."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    """Sortable, unique without coordination: UTC timestamp plus 24 random bits."""
    return f"{utcnow():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive; everything we write is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _row(mapping: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if mapping is None:
        return None
    return {k: _aware(v) if isinstance(v, datetime) else v for k, v in mapping.items()}


def resolve_store_url(url: str, root: Path) -> str:
    """Make a relative SQLite path relative to the project folder, not the cwd."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
        path = (root / url[len(prefix):]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


RECONNECT_PATIENCE_S = float(os.environ.get("HEADWATER_STORE_RECONNECT_SECONDS", "30"))
"""How long a server store that answered before may refuse connections (a restart)."""


class _PatientConnect:
    """A ``do_connect`` hook: once the store has answered, a refused connection is tried
    again for :data:`RECONNECT_PATIENCE_S` seconds instead of failing the run at once.

    A PostgreSQL restart refuses connections for a second or two; the pool's pre-ping
    then reconnects, and without patience the first heartbeat or log line of every run in
    flight failed it. Connecting is always safe to repeat: nothing was sent yet. A store
    never reached (a wrong URL) still fails at once.
    """

    def __init__(self) -> None:
        self.reached = False

    def __call__(self, dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        deadline = time.monotonic() + RECONNECT_PATIENCE_S
        while True:
            try:
                conn = dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError:
                if not self.reached or time.monotonic() >= deadline:
                    raise
                time.sleep(0.25)
                continue
            self.reached = True
            return conn


def make_engine(url: str) -> Engine:
    """The SQLAlchemy engine of a store URL (already resolved): SQLite with WAL and a
    busy timeout; a server database with a checked pool that waits out restarts."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    event.listen(engine, "do_connect", _PatientConnect())
    return engine


class Store:
    """Runs, step attempts, logs, datasets, versions and incremental state."""

    def __init__(self, url: str, root: Path | None = None, *, migrate: bool = True,
                 engine: Engine | None = None) -> None:
        """Open (and migrate) the store at ``url``.

        ``engine``, one made by :func:`make_engine` for this same URL, is used instead of
        a new one: its compiled-statement cache is warm. SQLAlchemy keys that cache by
        engine, and compiling the store's statements again was ~11 % of ``headwater
        test``, which opens one store per case at one path. :meth:`close` disposes its
        connections either way, so the file may be removed afterwards.
        """
        self.url = resolve_store_url(url, root or Path.cwd())
        self.is_sqlite = self.url.startswith("sqlite")
        self._write_lock: Any = threading.RLock() if self.is_sqlite else contextlib.nullcontext()
        if engine is not None and engine.url.database != make_url(self.url).database:
            raise ValueError(f"the engine opens {engine.url.database}, not this store's "
                             f"{make_url(self.url).database}")
        try:
            self.engine: Engine = engine if engine is not None else make_engine(self.url)
            if migrate:
                from headwater.store.migrate import upgrade

                upgrade(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot open the metadata store {_redact(self.url)}: {exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        self._seq_lock = threading.Lock()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """One short transaction, retried while SQLite reports the database locked.

        On SQLite, writers of this process take turns on a lock first: SQLite's own busy
        handler sleeps in growing steps, which made parallel steps wait for each other.
        """
        for attempt in range(50):
            try:
                with self._write_lock, self.engine.begin() as conn:
                    yield conn
                return
            except OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise StoreError(f"metadata store error: {str(exc).splitlines()[0]}") from exc
                time.sleep(0.05 * (attempt + 1))

    def _read(self, stmt: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [_row(dict(r._mapping)) or {} for r in conn.execute(stmt)]

    # ----------------------------------------------------------------------- runs

    def create_run(
        self,
        pipeline: str,
        *,
        trigger: str = "manual",
        trigger_info: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        code_version: str | None = None,
        parent_run_id: str | None = None,
        from_step: str | None = None,
        reuse_steps: Sequence[str] | None = None,
        window: tuple[datetime, datetime] | None = None,
        status: str = "queued",
    ) -> str:
        """Queue a run and return its id."""
        run_id = new_run_id()
        now = utcnow()
        values = {
            "id": run_id,
            "pipeline": pipeline,
            "status": status,
            "trigger": trigger,
            "trigger_info": dict(trigger_info or {}),
            "params": dict(params or {}),
            "code_version": code_version,
            "parent_run_id": parent_run_id,
            "from_step": from_step,
            "reuse_steps": list(reuse_steps) if reuse_steps is not None else None,
            "window_start": window[0] if window else None,
            "window_end": window[1] if window else None,
            "created_at": now,
            "started_at": now if status == "running" else None,
            # a run executed right here is born running and alive, so no server claims it
            "heartbeat_at": now if status == "running" else None,
            "worker": f"local:{os.getpid()}" if status == "running" else None,
            "host": _HOST if status == "running" else None,
            "pid": os.getpid() if status == "running" else None,
            "cancel_requested": False,
        }
        for _ in range(20):
            try:
                with self._seq_lock, self.tx() as conn:
                    seq = conn.execute(select(func.coalesce(func.max(t.runs.c.seq), 0))).scalar()
                    conn.execute(insert(t.runs).values(seq=int(seq or 0) + 1, **values))
                return run_id
            except IntegrityError:
                continue  # another process took that seq; take the next
        raise StoreError("could not allocate a run number after 20 tries")

    def run(self, run_id: str) -> dict[str, Any]:
        rows = self._read(select(t.runs).where(t.runs.c.id == run_id))
        if not rows:
            # a short prefix of an id is accepted, but only of characters ids are made of:
            # '%' or '_' must never act as LIKE wildcards (``/api/runs/%25`` found a run)
            if not _RUN_ID_PREFIX.fullmatch(run_id):
                raise NotFoundError(f"no run {run_id!r} (see 'headwater runs')")
            matches = self._read(select(t.runs).where(t.runs.c.id.like(f"{run_id}%")).limit(2))
            if len(matches) == 1:
                return matches[0]
            raise NotFoundError(f"no run {run_id!r} (see 'headwater runs')")
        return rows[0]

    def runs(self, pipeline: str | None = None, limit: int = 50,
             status: Iterable[str] | None = None) -> list[dict[str, Any]]:
        stmt = select(t.runs).order_by(t.runs.c.seq.desc()).limit(limit)
        if pipeline:
            stmt = stmt.where(t.runs.c.pipeline == pipeline)
        if status:
            stmt = stmt.where(t.runs.c.status.in_(list(status)))
        return self._read(stmt)

    def update_run(self, run_id: str, **values: Any) -> None:
        with self.tx() as conn:
            conn.execute(update(t.runs).where(t.runs.c.id == run_id).values(**values))

    def start_run(self, run_id: str, worker: str | None = None) -> None:
        now = utcnow()
        self.update_run(run_id, status="running", started_at=now, heartbeat_at=now, worker=worker,
                        host=_HOST, pid=os.getpid())

    def finish_run(self, run_id: str, status: str, error: str | None = None,
                   failed_step: str | None = None) -> None:
        """End a running run. A run queued again meanwhile (its server gave up on it at
        shutdown) or already ended is left alone: its engine no longer owns it."""
        with self.tx() as conn:
            conn.execute(update(t.runs).where(and_(
                t.runs.c.id == run_id, t.runs.c.status == "running")).values(
                status=status, finished_at=utcnow(), error=error, failed_step=failed_step))

    def request_cancel(self, run_id: str) -> str:
        """Mark a run for cancellation; a queued run is cancelled at once."""
        run = self.run(run_id)
        with self.tx() as conn:
            if run["status"] == "queued":
                conn.execute(update(t.runs).where(t.runs.c.id == run["id"]).values(
                    status="cancelled", finished_at=utcnow(), cancel_requested=True,
                    error="cancelled before it started"))
                return "cancelled"
            if run["status"] in ("running", "waiting"):  # a parked run: the waiter ends it
                conn.execute(update(t.runs).where(t.runs.c.id == run["id"]).values(
                    cancel_requested=True))
                return "cancelling"
        return str(run["status"])

    def cancel_requested(self, run_id: str) -> bool:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(t.runs.c.cancel_requested).where(t.runs.c.id == run_id)).scalar()
        return bool(value)

    def last_successful_run(self, pipeline: str) -> dict[str, Any] | None:
        rows = self.runs(pipeline, limit=1, status=["succeeded"])
        return rows[0] if rows else None

    # ----------------------------------------------------------------------- steps

    def start_step(self, run_id: str, step_id: str, kind: str, attempt: int) -> int:
        with self.tx() as conn:
            result = conn.execute(_INSERT_STEP_RUN, {
                "run_id": run_id, "step_id": step_id, "kind": kind, "attempt": attempt,
                "status": "running", "started_at": utcnow()})
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def record_step(self, run_id: str, step_id: str, kind: str, status: str,
                    output: Mapping[str, Any] | None = None, error: str | None = None) -> None:
        """A step that did not run here (reused from an earlier run, or skipped)."""
        now = utcnow()
        with self.tx() as conn:
            conn.execute(_INSERT_STEP_RUN, {
                "run_id": run_id, "step_id": step_id, "kind": kind, "attempt": 0,
                "status": status, "started_at": now, "finished_at": now, "seconds": 0.0,
                "output": dict(output) if output else None, "error": error})

    def finish_step(self, attempt_id: int, status: str, *, seconds: float,
                    rows_in: int | None = None, rows_out: int | None = None,
                    bytes_: int | None = None, error: str | None = None,
                    output: Mapping[str, Any] | None = None) -> None:
        with self.tx() as conn:
            conn.execute(_FINISH_STEP_RUN, {
                "attempt_id": attempt_id, "status": status, "finished_at": utcnow(),
                "seconds": seconds, "rows_in": rows_in, "rows_out": rows_out, "bytes": bytes_,
                "error": error, "output": dict(output) if output is not None else None})

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        return self._read(select(t.step_runs).where(t.step_runs.c.run_id == run_id)
                          .order_by(t.step_runs.c.id))

    def succeeded_outputs(self, run_id: str) -> dict[str, dict[str, Any]]:
        """step id → recorded output of each step that succeeded (or was reused) in a run."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.steps(run_id):
            if row["status"] in ("succeeded", "reused") and row["output"] is not None:
                out[row["step_id"]] = row["output"]
        return out

    # ----------------------------------------------------------------------- logs

    def log(self, run_id: str, step_id: str | None, level: str, message: str,
            fields: Mapping[str, Any] | None = None) -> None:
        with self.tx() as conn:
            conn.execute(insert(t.logs).values(run_id=run_id, step_id=step_id, ts=utcnow(),
                                               level=level, message=message,
                                               fields=dict(fields) if fields else None))

    def logs(self, run_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        return self._read(select(t.logs).where(and_(t.logs.c.run_id == run_id,
                                                    t.logs.c.id > after_id))
                          .order_by(t.logs.c.id))

    # ----------------------------------------------------------------------- pipelines

    def set_code_version(self, pipeline: str, code_version: str, path: str | None) -> None:
        try:
            self._set_code_version(pipeline, code_version, path)
        except IntegrityError:  # another server inserted it first: now it is an update
            self._set_code_version(pipeline, code_version, path)

    def _set_code_version(self, pipeline: str, code_version: str, path: str | None) -> None:
        with self.tx() as conn:
            existing = conn.execute(select(t.pipelines.c.code_version)
                                    .where(t.pipelines.c.name == pipeline)).first()
            if existing is None:
                conn.execute(insert(t.pipelines).values(name=pipeline, code_version=code_version,
                                                        path=path, updated_at=utcnow()))
            elif existing[0] != code_version:
                conn.execute(update(t.pipelines).where(t.pipelines.c.name == pipeline).values(
                    code_version=code_version, path=path, updated_at=utcnow()))

    def code_versions(self) -> dict[str, str]:
        return {r["name"]: r["code_version"] for r in self._read(select(t.pipelines))}

    # ----------------------------------------------------------------------- datasets

    def ensure_dataset(self, name: str, uri: str, pipeline: str | None,
                       key: Sequence[str] | None = None) -> None:
        # a concurrent publish may register it first: the same row, so that is fine
        with contextlib.suppress(IntegrityError), self.tx() as conn:
            found = conn.execute(
                select(t.datasets.c.name).where(t.datasets.c.name == name)).first()
            if found is None:
                conn.execute(insert(t.datasets).values(
                    name=name, uri=uri, pipeline=pipeline, key=list(key or []),
                    created_at=utcnow()))

    def datasets(self) -> list[dict[str, Any]]:
        return self._read(select(t.datasets).order_by(t.datasets.c.name))

    def dataset(self, name: str) -> dict[str, Any]:
        rows = self._read(select(t.datasets).where(t.datasets.c.name == name))
        if not rows:
            known = [d["name"] for d in self.datasets()]
            import difflib

            hint = difflib.get_close_matches(name, known, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else " (see 'headwater datasets')"
            raise NotFoundError(f"no dataset {name!r}{extra}")
        return rows[0]

    def add_version(self, values: Mapping[str, Any],
                    state: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> None:
        """Record a dataset version and, in the same transaction, advance source state.

        Recording is idempotent: if a concurrent repair (``reconcile``) recorded the same
        Delta commit first, only the state is applied.
        """
        try:
            with self.tx() as conn:
                conn.execute(insert(t.dataset_versions).values(created_at=utcnow(), **values))
                if state:
                    self._put_state(conn, values.get("pipeline") or "", state,
                                    values.get("run_id"))
        except IntegrityError:
            if not self.has_delta_version(values["dataset"], values["delta_version"]):
                raise
            self._enrich_version(values)
            if state:
                self.put_state(values.get("pipeline") or "", state, values.get("run_id"))

    def _enrich_version(self, values: Mapping[str, Any]) -> None:
        """A repair recorded this run's commit first: add what only the run knows (stats,
        drift, exact row counts) to that record."""
        extra = {k: values[k] for k in ("stats", "drift", "notes", "rows_added", "rows_removed")
                 if values.get(k) is not None}
        if not extra:
            return
        v = t.dataset_versions.c
        with self.tx() as conn:
            conn.execute(update(t.dataset_versions).where(and_(
                v.dataset == values["dataset"], v.delta_version == values["delta_version"],
                v.run_id == values.get("run_id"))).values(**extra))

    def has_delta_version(self, dataset: str, delta_version: int) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(t.dataset_versions.c.version).where(and_(
                t.dataset_versions.c.dataset == dataset,
                t.dataset_versions.c.delta_version == delta_version))).first() is not None

    def recorded_delta_versions(self, dataset: str) -> set[int]:
        """The Delta versions of ``dataset`` that have a record (for crash repair)."""
        v = t.dataset_versions.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(v.delta_version).where(v.dataset == dataset)).all()
        return {int(r[0]) for r in rows}

    def newest_delta_version(self, dataset: str) -> int | None:
        """The newest Delta version of ``dataset`` with a record: repair reads the log from
        there on (every earlier commit was recorded first), not from the start."""
        v = t.dataset_versions.c
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(v.delta_version))
                                 .where(v.dataset == dataset)).scalar()
        return None if value is None else int(value)

    def next_version_number(self, dataset: str, delta_version: int) -> int:
        """The dense headwater version of a new commit: one past those committed before it
        (Delta versions have gaps where a user's OPTIMIZE or VACUUM committed)."""
        v = t.dataset_versions.c
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(v.version)).where(and_(
                v.dataset == dataset, v.delta_version < delta_version))).scalar()
        return int(value or 0) + 1

    def version_at(self, dataset: str, delta_version: int) -> dict[str, Any] | None:
        """The record of the version committed as ``delta_version``, if any."""
        v = t.dataset_versions.c
        rows = self._read(select(t.dataset_versions).where(and_(
            v.dataset == dataset, v.delta_version == delta_version)))
        return rows[0] if rows else None

    def versions(self, dataset: str) -> list[dict[str, Any]]:
        return self._read(select(t.dataset_versions)
                          .where(t.dataset_versions.c.dataset == dataset)
                          .order_by(t.dataset_versions.c.version))

    def version(self, dataset: str, version: int | None = None) -> dict[str, Any]:
        stmt = select(t.dataset_versions).where(t.dataset_versions.c.dataset == dataset)
        if version is None:
            stmt = stmt.order_by(t.dataset_versions.c.version.desc()).limit(1)
        else:
            stmt = stmt.where(t.dataset_versions.c.version == version)
        rows = self._read(stmt)
        if not rows:
            self.dataset(dataset)
            raise NotFoundError(f"dataset {dataset!r} has no version {version}"
                                if version is not None else f"dataset {dataset!r} has no version")
        return rows[0]

    def latest_version_number(self, dataset: str) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(t.dataset_versions.c.version))
                                 .where(t.dataset_versions.c.dataset == dataset)).scalar()
        return int(value or 0)

    def versions_by_run(self, run_id: str) -> list[dict[str, Any]]:
        return self._read(select(t.dataset_versions).where(t.dataset_versions.c.run_id == run_id))

    # ----------------------------------------------------------------------- incremental

    def state(self, pipeline: str, step_id: str) -> dict[str, Any]:
        rows = self._read(select(t.incremental_state.c.key, t.incremental_state.c.value).where(
            and_(t.incremental_state.c.pipeline == pipeline,
                 t.incremental_state.c.step_id == step_id)))
        return {r["key"]: r["value"] for r in rows}

    def state_of_run(self, pipeline: str, step_id: str, run_id: str) -> dict[str, Any]:
        """The incremental state ``run_id`` itself recorded for a step (a run resumed after
        it committed part of its publishes reads exactly these inputs again)."""
        rows = self._read(select(t.incremental_state.c.key, t.incremental_state.c.value).where(
            and_(t.incremental_state.c.pipeline == pipeline,
                 t.incremental_state.c.step_id == step_id,
                 t.incremental_state.c.run_id == run_id)))
        return {r["key"]: r["value"] for r in rows}

    def put_state(self, pipeline: str, state: Mapping[tuple[str, str], Mapping[str, Any]],
                  run_id: str | None) -> None:
        with self.tx() as conn:
            self._put_state(conn, pipeline, state, run_id)

    def _put_state(self, conn: Connection, pipeline: str,
                   state: Mapping[tuple[str, str], Mapping[str, Any]],
                   run_id: str | None) -> None:
        """Upsert each key: a concurrent writer of the same key (a repair recording the same
        commit) must not fail a run whose data is already published."""
        now = utcnow()
        dialect = _upsert_dialect(self.is_sqlite)
        for (step_id, key), value in state.items():
            values = {"value": dict(value), "run_id": run_id, "updated_at": now}
            stmt = dialect.insert(t.incremental_state).values(
                pipeline=pipeline, step_id=step_id, key=key, **values)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["pipeline", "step_id", "key"], set_=values))

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


_INSERT_STEP_RUN = insert(t.step_runs)
_FINISH_STEP_RUN = update(t.step_runs).where(t.step_runs.c.id == bindparam("attempt_id"))
"""The two writes of every step attempt, built once and executed with a dict of values:
SQLAlchemy then reuses the compiled statement without deriving a cache key from each
literal value (building ``.values(...)`` anew was most of a no-op step's store cost)."""


def _upsert_dialect(is_sqlite: bool) -> Any:
    """The dialect module whose ``insert`` has ``on_conflict_do_update``; imported here, not
    at the top, so a SQLite store never loads the PostgreSQL dialect (and asyncpg's)."""
    if is_sqlite:
        from sqlalchemy.dialects import sqlite

        return sqlite
    from sqlalchemy.dialects import postgresql

    return postgresql


def _redact(url: str) -> str:
    """Hide a password in a database URL."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - never let redaction itself leak or crash
        return "<store url>"
