"""What ``headwater deploy`` recorded in a store: per pipeline, its code and triggers.

One row per pipeline per deploy; the newest row of a pipeline is what is deployed (a
``removed`` row says the pipeline was taken out). A server watches ``latest_id`` to
reload pipelines without a restart. Never import the engine or the server from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, insert, select

from headwater.store import schema as t
from headwater.store.store import Store, utcnow


def deployed(store: Store) -> dict[str, dict[str, Any]]:
    """pipeline → its newest deployment row (removed pipelines left out)."""
    newest = (select(t.deployments.c.pipeline, func.max(t.deployments.c.id).label("id"))
              .group_by(t.deployments.c.pipeline).subquery())
    rows = store._read(select(t.deployments).join(newest, t.deployments.c.id == newest.c.id))
    return {r["pipeline"]: r for r in rows if not r["removed"]}


def record(store: Store, env: str | None, current: Mapping[str, Mapping[str, Any]],
           removed: Iterable[str]) -> int:
    """Record ``current`` (pipeline → code_version, files, triggers) as deployed and
    ``removed`` as taken out, in one transaction; returns the newest deployment id."""
    now = utcnow()
    with store.tx() as conn:
        for name, doc in sorted(current.items()):
            conn.execute(insert(t.deployments).values(
                pipeline=name, env=env, code_version=doc["code_version"],
                files=dict(doc["files"]), triggers=list(doc["triggers"]), removed=False,
                deployed_at=now))
        for name in sorted(removed):
            conn.execute(insert(t.deployments).values(
                pipeline=name, env=env, code_version=None, files={}, triggers=[],
                removed=True, deployed_at=now))
    return latest_id(store)


def latest_id(store: Store) -> int:
    """The newest deployment's id (0 before the first deploy): a server's reload cue."""
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.max(t.deployments.c.id))).scalar() or 0)
