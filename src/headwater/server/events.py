"""``/api/events/{pipeline}``: Azure Event Grid and CloudEvents pushes start runs.

``POST`` checks the bearer token (``Authorization: Bearer`` or ``?token=``: the
pipeline's webhook token, or the token of a files trigger with ``events: eventgrid``)
before it reads a byte of the body, reads at most :data:`MAX_BODY` bytes, answers Event
Grid's ``SubscriptionValidationEvent`` with ``{"validationResponse": code}``, and turns
``Microsoft.Storage.BlobCreated`` events into one files-trigger fire per trigger listing
the blobs it watches (``trigger.files``). An event id already fired is dropped, so Event
Grid's redeliveries start nothing. ``OPTIONS`` answers the CloudEvents webhook
abuse-protection handshake (``WebHook-Allowed-Origin``).

Event parsing lives in :mod:`headwater.triggers.eventgrid`; this module only
authenticates, queues and answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from headwater.config.models import PipelineConfig
from headwater.config.secrets import resolve
from headwater.exceptions import HeadwaterError
from headwater.store import queue
from headwater.triggers import eventgrid
from headwater.triggers.files import file_key

if TYPE_CHECKING:
    from headwater.server.service import Server

MAX_BODY = 1_048_576 + 65_536
"""Event Grid delivers batches of at most 1 MB; a little slack for headers in the body."""
RECENT_FIRES = 500
"""Earlier fires searched for event ids already handled (redeliveries come soon)."""


def add_routes(app: FastAPI, server: Server) -> None:
    """Mount the events endpoint on the API app."""

    @app.options("/api/events/{pipeline}", include_in_schema=False)
    def handshake(pipeline: str, request: Request) -> Response:
        config = _pipeline(server, pipeline)
        if isinstance(config, Response):
            return config
        origin = request.headers.get("webhook-request-origin")
        if not origin:
            return Response(status_code=400, content="missing WebHook-Request-Origin")
        return Response(status_code=200, headers={"WebHook-Allowed-Origin": origin,
                                                  "WebHook-Allowed-Rate": "*",
                                                  "Allow": "POST, OPTIONS"})

    @app.post("/api/events/{pipeline}")
    async def events(pipeline: str, request: Request) -> Response:
        config = _pipeline(server, pipeline)
        if isinstance(config, Response):
            return config
        denied = _authenticate(server, config, request)
        if denied is not None:
            return denied
        body = await _read_capped(request)
        if body is None:
            return _error(413, f"the body is larger than {MAX_BODY} bytes")
        try:
            parsed = eventgrid.parse(body, {k.lower(): v for k, v in request.headers.items()})
            code = eventgrid.validation_code(parsed)
            if code is not None:
                return JSONResponse({"validationResponse": code})
            blobs = eventgrid.blobs(parsed)
        except eventgrid.EventError as exc:
            return _error(400, str(exc))
        result = await asyncio.to_thread(_fire, server, config, blobs)
        return JSONResponse({**result, "events": len(parsed)})


def _pipeline(server: Server, name: str) -> PipelineConfig | Response:
    try:
        return server.runtime.pipeline(name).config
    except HeadwaterError:
        return _error(404, f"no pipeline {name!r}")


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _tokens(server: Server, config: PipelineConfig) -> list[str]:
    root = server.runtime.root
    found = [resolve(t.webhook.token, root) for t in config.triggers if t.webhook is not None]
    found += [resolve(t.files.token, root) for t in config.triggers
              if t.files is not None and t.files.token]
    return [token for token in found if token]


def _authenticate(server: Server, config: PipelineConfig, request: Request) -> Response | None:
    """None when the request carries one of the pipeline's event tokens; else a 401/403."""
    tokens = _tokens(server, config)
    if not tokens:
        return _error(403, f"pipeline {config.name!r} accepts no events: add a webhook "
                           "trigger, or 'files: {events: eventgrid, token: ...}'")
    header = request.headers.get("authorization") or ""
    given = header[7:].strip() if header.lower().startswith("bearer ") else \
        request.query_params.get("token")
    if given and any(hmac.compare_digest(given, token) for token in tokens):
        return None
    return _error(401, "missing or wrong bearer token for this pipeline's events")


async def _read_capped(request: Request) -> bytes | None:
    """The body, or None once it passes MAX_BODY (the rest is never read)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _fire(server: Server, config: PipelineConfig,
          blobs: Sequence[eventgrid.Blob]) -> dict[str, Any]:
    """Queue one run per files trigger for the blobs it watches (new event ids only)."""
    done = _fired_event_ids(server, config.name)
    fresh = [b for b in blobs if b.event_id not in done]
    targets = [(i, t.files) for i, t in enumerate(config.triggers)
               if t.files is not None and t.files.events == "eventgrid"] or \
        [(i, t.files) for i, t in enumerate(config.triggers) if t.files is not None]
    if not targets:  # a webhook-only pipeline: every created blob starts it
        picked = [(b, b.path()) for b in fresh]
        run_id = _queue(server, config.name, None, picked) if picked else None
        return {"runs": [run_id] if run_id else [], "blobs": len(blobs),
                "duplicates": len(blobs) - len(fresh), "ignored": 0}
    runs: list[str] = []
    matched: set[str] = set()
    for index, trigger in targets:
        picked = [(b, path) for b in fresh if (path := eventgrid.matches(trigger, b))]
        if not picked or not server.trigger_enabled(config.name, index):
            continue
        matched.update(b.event_id for b, _ in picked)
        run_id = _queue(server, config.name, index, picked)
        if run_id:
            runs.append(run_id)
    return {"runs": runs, "blobs": len(blobs), "duplicates": len(blobs) - len(fresh),
            "ignored": len([b for b in fresh if b.event_id not in matched])}


def _queue(server: Server, pipeline: str, index: int | None,
           picked: Sequence[tuple[eventgrid.Blob, str]]) -> str | None:
    ids = sorted(b.event_id for b, _ in picked)
    digest = hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()[:32]
    now = datetime.now(UTC)
    info = {"files": [path for _, path in picked],
            "fingerprints": [file_key(path, b.size, b.etag) for b, path in picked],
            "event_ids": ids, "via": "eventgrid"}
    kind = "files" if index is not None else "webhook"
    run_id = queue.fire(server.store, pipeline=pipeline, trigger_index=index, kind=kind,
                        dedupe_key=f"{pipeline}:{index}:eventgrid:{digest}", info=info,
                        event_at=now)
    if run_id is not None:
        server.remember_event(run_id, now)
        server.wake_threadsafe()
    return run_id


def _fired_event_ids(server: Server, pipeline: str) -> set[str]:
    seen: set[str] = set()
    for fire in queue.last_fires(server.store, pipeline, limit=RECENT_FIRES):
        for event_id in (fire.get("info") or {}).get("event_ids", []) or []:
            if isinstance(event_id, str):
                seen.add(event_id)
    return seen
