"""Bring a store's schema to the Alembic head, cheaply when it already is there.

Every CLI command opens the store, so the common case (already at head) is one indexed
read and no Alembic import; Alembic runs only when a migration is due. On PostgreSQL an
advisory lock keeps two starting servers from migrating at once.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, inspect, text

HEAD = "0003h"
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
        command.upgrade(config, "head")  # type: ignore[arg-type]
