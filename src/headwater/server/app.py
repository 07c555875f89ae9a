"""The JSON API under ``/api`` (OpenAPI at ``/api/openapi.json``) and ``/metrics``.

Thin: every endpoint calls the same store and project functions the CLI uses. Auth: when
the project configures tokens, every request needs ``Authorization: Bearer <token>``;
``operator`` may change things (run, cancel, toggle triggers), ``viewer`` may only read.
Webhook triggers authenticate with their own token instead.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from headwater.config.secrets import REDACTOR, resolve
from headwater.exceptions import HeadwaterError, NotFoundError
from headwater.project import coerce_params
from headwater.server.guard import MAX_BODY, RequestGuard, allowed_hosts, read_capped
from headwater.server.webhook import BadBody, parse_params
from headwater.store import queue

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
                  docs_url="/api/docs", redoc_url=None, default_response_class=SafeJSONResponse)
    runtime = server.runtime
    store = server.store
    app.add_middleware(RequestGuard, hosts=allowed_hosts(server.options.host),
                       auth_enabled=lambda: bool(runtime.config.auth and
                                                 runtime.config.auth.tokens))

    def role(authorization: str | None = Header(default=None)) -> str:
        tokens = runtime.auth_tokens()
        if not tokens:
            return "operator"
        given = _bearer(authorization)
        for token, token_role in tokens.items():
            if given is not None and _same(given, token):
                return token_role
        raise HTTPException(401, "missing or wrong bearer token")

    def operator(who: str = Depends(role)) -> str:
        if who != "operator":
            raise HTTPException(403, "this needs an operator token")
        return who

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

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "worker": server.worker, "running": len(server.running),
                "queued": queue.queued_count(store), "triggers": len(server.triggers),
                "started_at": server.started_at.isoformat()}

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

    def _webhook_pipeline(name: str) -> Any:
        try:
            return runtime.pipeline(name)
        except HeadwaterError:
            raise HTTPException(404, f"no pipeline {name!r}") from None

    @app.get("/api/runs", dependencies=[Depends(role)])
    def runs(pipeline: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return [_run_json(r) for r in store.runs(pipeline, limit)]

    @app.get("/api/runs/{run_id}", dependencies=[Depends(role)])
    def run(run_id: str) -> dict[str, Any]:
        row = store.run(run_id)
        return {**_run_json(row), "steps": [_jsonable(s) for s in store.steps(row["id"])]}

    @app.post("/api/runs/{run_id}/cancel", dependencies=[Depends(operator)])
    def cancel(run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "status": store.request_cancel(run_id)}

    @app.post("/api/pipelines/{name}/runs", status_code=202, dependencies=[Depends(operator)])
    def run_now(name: str, body: dict[str, Any] | None = Body(default=None)) -> dict[str, Any]:
        pf = runtime.pipeline(name)
        params = coerce_params(pf.config.params, (body or {}).get("params", {}), name)
        return {"run_id": server.queue_run(name, kind="manual", info={}, params=params)}

    @app.get("/api/triggers", dependencies=[Depends(role)])
    def triggers() -> list[dict[str, Any]]:
        from headwater.triggers.registry import trigger_table

        return trigger_table(runtime, server)

    @app.get("/api/datasets", dependencies=[Depends(role)])
    def datasets() -> list[dict[str, Any]]:
        return [_jsonable(d) for d in store.datasets()]

    @app.get("/metrics")
    def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from headwater.server.metrics import REGISTRY

        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

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


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


def _run_json(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "pipeline", "status", "trigger", "trigger_info", "params", "created_at",
            "started_at", "finished_at", "error", "failed_step", "worker")
    return REDACTOR.deep(_jsonable({k: row.get(k) for k in keep}))  # type: ignore[no-any-return]

