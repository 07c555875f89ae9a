"""``/api/datasets``: versions, schema, stats, drift, paged preview, diff, rejected rows and
the lineage graph of a version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from headwater.server import queries
from headwater.server.api.common import Context

Version = Query(default=None, ge=1, description="a version number (default: the newest)")


def router(ctx: Context) -> APIRouter:
    api = APIRouter(tags=["datasets"], dependencies=[Depends(ctx.viewer)])
    server = ctx.server

    @api.get("/datasets")
    def list_datasets() -> list[dict[str, Any]]:
        """Every dataset with its newest version, rows and stale flag."""
        return queries.datasets(server)

    @api.get("/datasets/{name}")
    def get_dataset(name: str, version: int | None = Version) -> dict[str, Any]:
        """One version: run, code, trigger, rows, schema, column stats, drift, sources."""
        return queries.dataset(server, name, version)

    @api.get("/datasets/{name}/versions")
    def list_versions(name: str, before: int | None = Query(default=None, ge=1),
                      limit: int = Query(default=50, ge=1, le=500)) -> dict[str, Any]:
        """Versions newest first; ``next`` is the ``before`` of the next page."""
        return queries.versions(server, name, before, limit)

    @api.get("/datasets/{name}/schema")
    def get_schema(name: str, version: int | None = Version) -> list[dict[str, Any]]:
        """Columns and types of a version."""
        return list(queries.dataset(server, name, version)["schema"])

    @api.get("/datasets/{name}/stats")
    def get_stats(name: str, version: int | None = Version) -> dict[str, Any]:
        """Per-column statistics (histograms, top values) and drift against the previous."""
        doc = queries.dataset(server, name, version)
        return {"version": doc["version"], "rows": doc["rows_total"], **doc["stats"],
                "drift": doc["drift"]}

    @api.get("/datasets/{name}/preview")
    def get_preview(name: str, version: int | None = Version,
                    offset: int = Query(default=0, ge=0),
                    limit: int = Query(default=50, ge=1, le=500)) -> dict[str, Any]:
        """A page of rows (``offset``, ``limit``) and the version's row count."""
        return queries.preview(server, name, version, offset, limit)

    @api.get("/datasets/{name}/diff")
    def get_diff(name: str, a: int = Query(ge=1), b: int = Query(ge=1)) -> dict[str, Any]:
        """Rows added, removed and changed from version ``a`` to ``b``; schema changes."""
        return queries.diff(server, name, a, b)

    @api.get("/datasets/{name}/rejected")
    def get_rejected(name: str, version: int | None = Version,
                     offset: int = Query(default=0, ge=0),
                     limit: int = Query(default=50, ge=1, le=500)) -> dict[str, Any]:
        """Rows the run that made this version rejected, with reasons."""
        return queries.rejected_for_version(server, name, version, offset, limit)

    @api.get("/datasets/{name}/lineage")
    def get_lineage(name: str, version: int | None = Version) -> dict[str, Any]:
        """Sources → steps → runs → dataset versions → downstream runs, as nodes and edges."""
        return queries.lineage(server, name, version)

    return api
