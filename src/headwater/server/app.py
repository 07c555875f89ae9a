"""The JSON API under ``/api`` (OpenAPI at ``/api/openapi.json``) and ``/metrics``.

Thin: every endpoint calls the same store and project functions the CLI uses. The API's
routers live in ``server/api/``, the web UI in ``server/pages.py``, auth (tokens, roles,
session cookie, CSRF) in ``server/auth.py``. Webhook triggers authenticate with their own
token instead.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from headwater.config.secrets import REDACTOR, resolve
from headwater.exceptions import HeadwaterError, NotFoundError
from headwater.project import coerce_params
from headwater.server.callbacks import router as callback_routes
from headwater.server.guard import MAX_BODY, RequestGuard, allowed_hosts, read_capped
from headwater.server.starting import auth_probe
from headwater.server.starting import health as server_health
from headwater.server.webhook import BadBody, parse_params

if TYPE_CHECKING:
    from headwater.server.service import Server


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def _same(given: str, token: str) -> bool:
    """Constant-time comparison that also takes non-ASCII headers (str compare raises)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               token.encode("utf-8", "surrogateescape"))


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="headwater", version="0.1.0", openapi_url="/api/openapi.json",
                  docs_url=None, redoc_url=None, default_response_class=SafeJSONResponse)
    runtime = server.runtime
    app.add_middleware(RequestGuard, hosts=allowed_hosts(server.options.host),
                       auth_enabled=auth_probe(server))

    @app.exception_handler(NotFoundError)
    async def not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": REDACTOR(exc.message)}, status_code=404)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer echoes the input, which fails on non-UTF-8 bytes (a 500)
        return JSONResponse({"detail": [_validation_problem(e) for e in exc.errors()]},
                            status_code=422)

    @app.exception_handler(HeadwaterError)
    async def headwater_error(_request: Request, exc: HeadwaterError) -> JSONResponse:
        return JSONResponse({"detail": REDACTOR(exc.message)}, status_code=422)

    def _webhook_pipeline(name: str) -> Any:
        try:
            return runtime.pipeline(name)
        except HeadwaterError:
            raise HTTPException(404, f"no pipeline {name!r}") from None

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return server_health(server, "ready")

    @app.post("/api/pipelines/{name}/trigger", status_code=202, openapi_extra={
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"params": {"type": "object"}}}}}}})
    async def webhook(name: str, request: Request,
                      authorization: str | None = Header(default=None),
                      idempotency_key: str | None = Header(default=None)) -> dict[str, Any]:
        """Queue a run. The token is checked before the body is read (capped at 1 MiB);
        an ``Idempotency-Key`` header makes a replay of the same request queue nothing."""
        pf = await run_in_threadpool(_webhook_pipeline, name)
        tokens = [resolve(t.webhook.token, runtime.root) for t in pf.config.triggers
                  if t.webhook is not None]
        given = _bearer(authorization)
        if not tokens or given is None or not any(
                _same(given, token) for token in tokens):
            raise HTTPException(401, "missing or wrong bearer token for this webhook")
        raw = await read_capped(request.receive)
        if raw is None:
            raise HTTPException(413, f"request body larger than {MAX_BODY} bytes")
        try:
            params = coerce_params(pf.config.params, parse_params(raw), name)
        except BadBody as exc:
            raise HTTPException(exc.status, exc.detail) from None
        except HeadwaterError as exc:
            raise HTTPException(422, REDACTOR(exc.message)) from None
        key = f"webhook:{name}:{idempotency_key}" if idempotency_key else None
        run_id = await run_in_threadpool(
            lambda: server.queue_run(name, kind="webhook", info={"webhook": True},
                                     params=params, dedupe_key=key))
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


def _validation_problem(error: Mapping[str, Any]) -> dict[str, Any]:
    """Where and what, without the offending input (bytes, or a secret in a body)."""
    return {"loc": [str(part) for part in error.get("loc", ())],
            "msg": REDACTOR(str(error.get("msg", ""))), "type": str(error.get("type", ""))}


class SafeJSONResponse(JSONResponse):
    """JSON that never fails on a float: NaN and ±Infinity (a stored param, a statistic)
    become null, so one odd value cannot turn an endpoint into a 500 forever."""

    def render(self, content: Any) -> bytes:
        return super().render(_finite(content))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
