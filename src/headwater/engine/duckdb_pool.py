"""In-memory DuckDB databases, reused across runs of one process.

Opening a DuckDB database costs ~30 ms, more than a small run's own work; a server runs
thousands. A run takes a database, names its step views in it, and gives it back; what a
run created (views, tables, macros) is dropped on the way back, so the next run starts
from an empty catalog. Registered fsspec filesystems stay: they carry no data.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any

_POOL: list[Any] = []
_LOCK = threading.Lock()
MAX_IDLE = 8
_CONFINED: dict[int, tuple[str, ...] | None] = {}
"""id(db) → the directories it is locked to (``engine.confine``); reuse only for the same."""


def acquire(spill_dir: Path, allowed: tuple[str, ...] | None = None) -> Any:
    """A database for one run (new, or returned clean by an earlier run), confined to
    ``allowed`` (None: unconfined)."""
    with _LOCK:
        for index, db in enumerate(_POOL):
            if _CONFINED.get(id(db)) == allowed:
                return _POOL.pop(index)
    db = _open(spill_dir)
    if allowed is not None:
        from headwater.engine.confine import confine

        confine(db, allowed)
    _CONFINED[id(db)] = allowed  # also overwrites what a closed database's id left behind
    return db


def _open(spill_dir: Path) -> Any:
    import duckdb

    # one folder per database (pid + random): processes and databases never share temp
    # files; DuckDB creates only the last level, so the parents must exist first
    spill_dir.mkdir(parents=True, exist_ok=True)
    own = spill_dir / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    db = duckdb.connect(config={
        "temp_directory": str(own),
        # bounded memory whatever the input size: DuckDB spills past this
        "memory_limit": os.environ.get("HEADWATER_DUCKDB_MEMORY", "512MB"),
        **duckdb_threads(),
    })
    db.execute("SET enable_progress_bar = false")  # DuckDB must not draw on our stderr
    return db


def duckdb_threads() -> dict[str, int]:
    """``{"threads": N}`` when ``HEADWATER_DUCKDB_THREADS`` caps DuckDB's threads (a Dask
    worker sets it to its own thread count, so worker processes do not oversubscribe
    the cores they share); else DuckDB's default, every core."""
    value = os.environ.get("HEADWATER_DUCKDB_THREADS", "").strip()
    return {"threads": int(value)} if value.isdigit() and int(value) > 0 else {}


def release(db: Any) -> None:
    """Drop what the run created and keep the database for the next run (or close it)."""
    try:
        _clean(db)
    except Exception:  # noqa: BLE001 - a database we cannot clean is not reused
        _close(db)
        return
    with _LOCK:
        if len(_POOL) < MAX_IDLE:
            _POOL.append(db)
            return
    _close(db)


def _close(db: Any) -> None:
    _CONFINED.pop(id(db), None)
    db.close()


def _clean(db: Any) -> None:
    """Drop the run's views and tables in one transaction: one commit, not one per object
    (a run of 100 steps spent ~50 ms here dropping its views one by one)."""
    views = db.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                       "AND schema_name = 'main'").fetchall()
    tables = db.execute("SELECT table_name, temporary FROM duckdb_tables() "
                        "WHERE schema_name = 'main'").fetchall()
    if not views and not tables:
        return
    db.execute("BEGIN TRANSACTION")
    try:
        for (name,) in views:
            db.execute(f'DROP VIEW IF EXISTS "{_escape(name)}"')
        for name, _temporary in tables:
            db.execute(f'DROP TABLE IF EXISTS "{_escape(name)}"')
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _escape(name: str) -> str:
    return name.replace('"', '""')
