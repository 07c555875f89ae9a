"""Paged, filtered reads for the UI and the API: lists that stay fast at 10,000 runs.

Paging is by keyset (``before`` a run's ``seq``), so page 100 costs what page 1 does, and
every filter is a column with an index. Read only; never import the engine or the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from headwater.store import schema as t
from headwater.store.store import Store


def runs_page(store: Store, *, pipeline: str | None = None,
              status: Sequence[str] | None = None, trigger: str | None = None,
              before: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Runs newest first, filtered; pass the last row's ``seq`` as ``before`` for more."""
    stmt = select(t.runs).order_by(t.runs.c.seq.desc()).limit(limit)
    if pipeline:
        stmt = stmt.where(t.runs.c.pipeline == pipeline)
    if status:
        stmt = stmt.where(t.runs.c.status.in_(list(status)))
    if trigger:
        stmt = stmt.where(t.runs.c.trigger == trigger)
    if before is not None:
        stmt = stmt.where(t.runs.c.seq < before)
    return store._read(stmt)


def run_exact(store: Store, run_id: str) -> dict[str, Any] | None:
    """The run with exactly this id (the API never guesses from a prefix)."""
    rows = store._read(select(t.runs).where(t.runs.c.id == run_id))
    return rows[0] if rows else None


def last_runs(store: Store, status: str | None = None) -> dict[str, dict[str, Any]]:
    """pipeline → its newest run (with ``status``), in one query whatever the history."""
    grouped = select(t.runs.c.pipeline, func.max(t.runs.c.seq).label("seq"))
    if status is not None:
        grouped = grouped.where(t.runs.c.status == status)
    newest = grouped.group_by(t.runs.c.pipeline).subquery()
    stmt = select(t.runs).join(newest, t.runs.c.seq == newest.c.seq)
    return {str(r["pipeline"]): r for r in store._read(stmt)}


def versions_page(store: Store, dataset: str, *, before: int | None = None,
                  limit: int = 50) -> list[dict[str, Any]]:
    """A dataset's versions newest first, without their (large) stats documents."""
    cols = [c for c in t.dataset_versions.c if c.name not in ("stats", "sources")]
    stmt = select(*cols).where(t.dataset_versions.c.dataset == dataset) \
        .order_by(t.dataset_versions.c.version.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(t.dataset_versions.c.version < before)
    return store._read(stmt)
