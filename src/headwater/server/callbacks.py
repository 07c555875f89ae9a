"""``POST /api/callbacks/{token}``: the one-time URL a ``wait: callback`` step hands out.

The token is the credential (unguessable, one use), so the route needs no API token. A
token that never existed is 404, one already used is 409, a body that is not JSON is 400
and leaves the wait open (the caller may send it again). The JSON completes the step; the
server's waiter continues the run.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request

from headwater.config.secrets import REDACTOR
from headwater.store import waits as waitstore

if TYPE_CHECKING:
    from headwater.server.service import Server


def router(server: Server) -> APIRouter:
    routes = APIRouter()
    store = server.store

    @routes.post("/api/callbacks/{token}")
    async def callback(token: str, request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            wait = await asyncio.to_thread(waitstore.get, store, token)
            if wait is None:
                raise HTTPException(404, "no such callback") from None
            await asyncio.to_thread(
                store.log, wait["run_id"], wait["step_id"], "warning",
                f"callback body is not JSON ({len(raw)} bytes); still waiting", None)
            raise HTTPException(400, "the callback body must be JSON") from None
        outcome = await asyncio.to_thread(waitstore.complete, store, token, body)
        if outcome == "unknown":
            raise HTTPException(404, "no such callback")
        if outcome == "used":
            raise HTTPException(409, "this callback was already used")
        server.wake()
        return {"accepted": True, "detail": REDACTOR("the waiting step completes")}

    return routes
