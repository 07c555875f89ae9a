"""Bring a store's schema to the Alembic head, cheaply when it already is there.

Every CLI command opens the store, so the common case (already at head) is one indexed
read and no Alembic import; Alembic runs only when a migration is due. On PostgreSQL an
advisory lock keeps two starting servers from migrating at once; on SQLite a lock file
next to the database does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, inspect, text

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process migrates at a time by hand
    fcntl = None  # type: ignore[assignment]

HEAD = "0004"
"""The newest revision in ``migrations/versions``; a test pins it to Alembic's head."""

MIGRATIONS = Path(__file__).parent / "migrations"


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def alembic_config(engine: Engine) -> object:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    """Migrate to head if needed (idempotent, safe to call on every open)."""
    if current_revision(engine) == HEAD:
        return
    from alembic import command

    config = alembic_config(engine)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(7342001)"))
            try:
                if current_revision(engine) != HEAD:
                    command.upgrade(config, "head")  # type: ignore[arg-type]
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(7342001)"))
                conn.commit()
    else:
        with _file_lock(engine):
            if current_revision(engine) != HEAD:
                command.upgrade(config, "head")  # type: ignore[arg-type]


@contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrating one SQLite file across processes (``<db>.migrate.lock``).

    Without it, two first runs on a fresh store both create the tables and one fails with
    ``table datasets already exists``. An in-memory database needs no lock.
    """
    database = engine.url.database
    if not database or database == ":memory:" or fcntl is None:
        yield
        return
    with open(f"{database}.migrate.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
