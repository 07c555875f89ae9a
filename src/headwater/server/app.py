"""The JSON API under ``/api`` (OpenAPI at ``/api/openapi.json``) and ``/metrics``.

Thin: every endpoint calls the same store and project functions the CLI uses. The API's
routers live in ``server/api/``, the web UI in ``server/pages.py``, auth (tokens, roles,
session cookie, CSRF) in ``server/auth.py``. Webhook triggers authenticate with their own
token instead.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from fastapi import Body, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from headwater.config.secrets import REDACTOR, resolve
from headwater.exceptions import HeadwaterError, NotFoundError
from headwater.project import coerce_params
from headwater.server.callbacks import router as callback_routes
from headwater.store import queue

if TYPE_CHECKING:
    from headwater.server.service import Server


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="headwater", version="0.1.0", openapi_url="/api/openapi.json",
                  docs_url=None, redoc_url=None)
    runtime = server.runtime
    store = server.store

    @app.exception_handler(NotFoundError)
    async def not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": REDACTOR(exc.message)}, status_code=404)

    @app.exception_handler(HeadwaterError)
    async def headwater_error(_request: Request, exc: HeadwaterError) -> JSONResponse:
        return JSONResponse({"detail": REDACTOR(exc.message)}, status_code=422)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "worker": server.worker, "running": len(server.running),
                "queued": queue.queued_count(store), "triggers": len(server.triggers),
                "started_at": server.started_at.isoformat()}

    @app.post("/api/pipelines/{name}/trigger", status_code=202)
    def webhook(name: str, authorization: str | None = Header(default=None),
                body: dict[str, Any] | None = Body(default=None),
                idempotency_key: str | None = Header(default=None)) -> dict[str, Any]:
        try:
            pf = runtime.pipeline(name)
        except HeadwaterError:
            raise HTTPException(404, f"no pipeline {name!r}") from None
        tokens = [resolve(t.webhook.token, runtime.root) for t in pf.config.triggers
                  if t.webhook is not None]
        given = _bearer(authorization)
        if not tokens or given is None or not any(
                hmac.compare_digest(given, token) for token in tokens):
            raise HTTPException(401, "missing or wrong bearer token for this webhook")
        raw = (body or {}).get("params", body or {})
        if not isinstance(raw, dict):
            raise HTTPException(422, "params must be a JSON object")
        try:
            params = coerce_params(pf.config.params, raw, name)
        except HeadwaterError as exc:
            raise HTTPException(422, exc.message) from None
        key = f"webhook:{name}:{idempotency_key}" if idempotency_key else None
        run_id = server.queue_run(name, kind="webhook", info={"webhook": True},
                                  params=params, dedupe_key=key)
        return {"run_id": run_id, "status": "queued" if run_id else "duplicate"}

    @app.get("/metrics")
    def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from headwater.server.metrics import REGISTRY

        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    from headwater.server import events  # Event Grid / CloudEvents pushes

    events.add_routes(app, server)
    app.include_router(callback_routes(server))  # wait: callback (D2)
    from headwater.server.api import include_api
    from headwater.server.pages import include_pages

    include_pages(app, include_api(app, server))
    return app
