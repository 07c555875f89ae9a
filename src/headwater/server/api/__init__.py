"""The JSON API under ``/api``: one router per concept, each a thin map onto ``queries``.

``include_api`` mounts them on the app (``server/app.py``). Reads need a viewer, changes an
operator (:mod:`headwater.server.auth`); every change is written to the audit log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headwater.server.api import datasets, pipelines, runs, triggers
from headwater.server.api.common import Context
from headwater.server.auth import Auth

if TYPE_CHECKING:
    from fastapi import FastAPI

    from headwater.server.service import Server

__all__ = ["include_api"]


def include_api(app: FastAPI, server: Server) -> Context:
    """Mount every API router; returns the context the pages share."""
    ctx = Context(server, Auth(server.runtime))
    for module in (pipelines, runs, triggers, datasets):
        app.include_router(module.router(ctx), prefix="/api")
    return ctx
