"""``/api/runs``: filtered pages of runs, one run with its step attempts, logs (live over
SSE), rerun (from the failed step) and cancel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse

from headwater.project import create_rerun
from headwater.server import queries
from headwater.server.api.common import Context, off_loop
from headwater.server.auth import Identity

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FOLLOW_POLL = 0.5


def router(ctx: Context) -> APIRouter:
    api = APIRouter(tags=["runs"])
    server = ctx.server

    @api.get("/runs", dependencies=[Depends(ctx.viewer)])
    def list_runs(response: Response, pipeline: str | None = None,
                  status: list[str] | None = Query(default=None),
                  trigger: str | None = None,
                  before: int | None = Query(default=None, ge=0),
                  limit: int = Query(default=50, ge=1, le=500)) -> list[dict[str, Any]]:
        """Runs newest first. For the next page pass the last run's ``seq`` as ``before``
        (also in the ``X-Next-Before`` header while there are more)."""
        bad = [s for s in status or [] if s not in STATUSES]
        if bad:
            from fastapi import HTTPException

            raise HTTPException(422, f"unknown status {bad[0]!r} (one of {', '.join(STATUSES)})")
        page = queries.runs(server, pipeline=pipeline, status=status, trigger=trigger,
                            before=before, limit=limit)
        if page["next"] is not None:
            response.headers["X-Next-Before"] = str(page["next"])
        return list(page["runs"])

    @api.get("/runs/{run_id}", dependencies=[Depends(ctx.viewer)])
    def get_run(run_id: str) -> dict[str, Any]:
        """A run with every step attempt (rows in/out, seconds, error) and its versions."""
        return queries.run(server, run_id)

    @api.get("/runs/{run_id}/logs", dependencies=[Depends(ctx.viewer)])
    def get_logs(run_id: str, after: int = Query(default=0, ge=0)) -> list[dict[str, Any]]:
        """Log lines after the id ``after``."""
        return queries.logs(server, run_id, after)

    @api.get("/runs/{run_id}/events", dependencies=[Depends(ctx.viewer)])
    async def follow(run_id: str, after: int = Query(default=0, ge=0)) -> StreamingResponse:
        """Server-sent events: ``log`` per new line, ``run`` on each change, until finished."""
        await off_loop(queries.run_row, server, run_id)  # 404 before the stream starts
        return StreamingResponse(_events(ctx, run_id, after), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    @api.get("/runs/{run_id}/rejected", dependencies=[Depends(ctx.viewer)])
    def get_rejected(run_id: str, offset: int = Query(default=0, ge=0),
                     limit: int = Query(default=50, ge=1, le=500)) -> dict[str, Any]:
        """The rows this run rejected, each with ``_error`` naming every failed check."""
        return queries.rejected_for_run(server, run_id, offset, limit)

    @api.post("/runs/{run_id}/rerun", status_code=202)
    def rerun(run_id: str, from_failed: bool = False,
              who: Identity = Depends(ctx.operator)) -> dict[str, Any]:
        """Queue the run again (same params); ``from_failed`` reuses the steps that succeeded."""
        row = queries.run_row(server, run_id)
        new_id = create_rerun(server.runtime, row["id"], from_failed=from_failed)
        server.wake_threadsafe()
        ctx.audit(who, "rerun", row["id"], {"run_id": new_id, "from_failed": from_failed})
        return {"run_id": new_id, "status": "queued"}

    @api.post("/runs/{run_id}/cancel")
    def cancel(run_id: str, who: Identity = Depends(ctx.operator)) -> dict[str, Any]:
        """Cancel a queued run at once, or ask a running one to stop."""
        row = queries.run_row(server, run_id)
        state = server.store.request_cancel(row["id"])
        ctx.audit(who, "cancel", row["id"], {"status": state})
        return {"run_id": row["id"], "status": state}

    return api


async def _events(ctx: Context, run_id: str, after: int) -> AsyncIterator[str]:
    last_state: Any = None
    while True:
        lines = await off_loop(queries.logs, ctx.server, run_id, after)
        for line in lines:
            after = line["id"]
            yield f"event: log\nid: {after}\ndata: {json.dumps(line)}\n\n"
        run = await off_loop(queries.run, ctx.server, run_id)
        state = (run["status"], [(s["id"], s["status"]) for s in run["steps"]])
        if state != last_state:
            last_state = state
            yield f"event: run\ndata: {json.dumps(run)}\n\n"
        if run["finished"]:
            yield "event: end\ndata: {}\n\n"
            return
        await asyncio.sleep(FOLLOW_POLL)
