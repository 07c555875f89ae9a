"""The JSON API under ``/api`` (OpenAPI at ``/api/openapi.json``) and ``/metrics``.

Thin: every endpoint calls the same store and project functions the CLI uses. Auth: when
the project configures tokens, every request needs ``Authorization: Bearer <token>``;
``operator`` may change things (run, cancel, toggle triggers), ``viewer`` may only read.
Webhook triggers authenticate with their own token instead.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Request
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
                  docs_url="/api/docs", redoc_url=None)
    runtime = server.runtime
    store = server.store

    def role(authorization: str | None = Header(default=None)) -> str:
        tokens = runtime.auth_tokens()
        if not tokens:
            return "operator"
        given = _bearer(authorization)
        for token, token_role in tokens.items():
            if given is not None and hmac.compare_digest(given, token):
                return token_role
        raise HTTPException(401, "missing or wrong bearer token")

    def operator(who: str = Depends(role)) -> str:
        if who != "operator":
            raise HTTPException(403, "this needs an operator token")
        return who

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

    from headwater.server import events  # Event Grid / CloudEvents pushes

    events.add_routes(app, server)
    app.include_router(callback_routes(server))  # wait: callback (D2)
    return app


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


def _run_json(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "pipeline", "status", "trigger", "trigger_info", "params", "created_at",
            "started_at", "finished_at", "error", "failed_step", "worker")
    return REDACTOR.deep(_jsonable({k: row.get(k) for k in keep}))  # type: ignore[no-any-return]

