"""The ASGI app ``serve`` listens with: it answers ``/api/health`` from the first moment
and builds the full API and UI (``server.app.create_app``) in a thread meanwhile.

Importing FastAPI and building every route's schemas was about a third of ``serve``'s
cold start (issue 12); none of it is needed to say whether the server is alive. While
the app builds, health is the same store-backed answer the full app gives (the queue is
read, so a store that cannot answer still fails it) with ``"api": "starting"``; every
other request waits for the build and is then served by the full app, behind the same
request guard. A build that failed turns health into a 503 naming the error, so the
server never looks healthy while it cannot serve its API.
This module must stay cheap to import: no FastAPI, no engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from headwater.server.guard import ASGIApp, Receive, RequestGuard, Scope, Send, allowed_hosts

if TYPE_CHECKING:
    from headwater.server.service import Server

log = logging.getLogger("headwater.server")


def health(server: Server, api: str) -> dict[str, Any]:
    """What ``/api/health`` reports: this worker, its runs and triggers, the shared queue
    (a store read: a store that cannot answer fails the check) and the API's state."""
    from headwater.store import queue

    return {"status": "ok", "worker": server.worker, "running": len(server.running),
            "queued": queue.queued_count(server.store), "triggers": len(server.triggers),
            "started_at": server.started_at.isoformat(), "api": api}


class StartingApp:
    """Health at once, everything else from the full app once it is built."""

    def __init__(self, server: Server, build: Callable[[], ASGIApp]) -> None:
        self.server = server
        self._build = build
        self._app: ASGIApp | None = None
        self._error: str | None = None
        self._built = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[Callable[[], None]] = []
        """Wake-ups of requests held until the build ends (called from its thread)."""
        self._guard = RequestGuard(self._answer_while_starting,
                                   hosts=allowed_hosts(server.options.host),
                                   auth_enabled=auth_probe(server))
        threading.Thread(target=self._build_now, name="hw-api-build", daemon=True).start()

    def _build_now(self) -> None:
        try:
            self._app = self._build()
        except Exception as exc:  # reported by health and every request
            log.exception("the API could not be built")
            self._error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._built.set()
                waiters, self._waiters = self._waiters, []
            for wake in waiters:
                wake()

    def wait_built(self, timeout: float | None = None) -> bool:
        """Block until the full app is built (or failed to); False on timeout."""
        return self._built.wait(timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is not None:
            await self._app(scope, receive, send)
            return
        if scope["type"] == "http":
            await self._guard(scope, receive, send)
            return
        await self._after_build(scope, receive, send)  # websocket, lifespan

    async def _answer_while_starting(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Past the guard (Host, Origin, body size), before the app is built."""
        if scope.get("path") == "/api/health" and scope.get("method") == "GET" \
                and not self._built.is_set():
            body = await asyncio.to_thread(health, self.server, "starting")
            await _json(send, 200, body)
            return
        await self._after_build(scope, receive, send)

    async def _after_build(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._until_built()
        if self._app is None:
            if scope["type"] == "http":
                await _json(send, 503, {"status": "error",
                                        "detail": f"the API failed to start: {self._error}"})
            return
        await self._app(scope, receive, send)

    async def _until_built(self) -> None:
        """Wait on the event loop, not in a thread: a burst of early requests must not
        fill the default executor that health and the server's start-up use."""
        loop = asyncio.get_running_loop()
        built: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(_resolve, built)

        with self._lock:
            if self._built.is_set():
                return
            self._waiters.append(wake)
        await built


def starting_app(server: Server) -> StartingApp:
    """``serve``'s ASGI app: see the module docstring."""

    def build() -> ASGIApp:
        from headwater.server.app import create_app

        return create_app(server)

    return StartingApp(server, build)


def auth_probe(server: Server) -> Callable[[], bool]:
    """Whether any token exists (headwater.yaml or 'headwater token create'), asked of the
    store at most every few seconds: the guard runs on every request."""
    from headwater.store.access import has_tokens

    seen = {"at": -1e9, "value": 0.0}

    def probe() -> bool:
        now = time.monotonic()
        if now - seen["at"] > 5.0:
            found = bool(server.runtime.auth_tokens()) or has_tokens(server.store)
            seen.update(at=now, value=1.0 if found else 0.0)
        return bool(seen["value"])

    return probe


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _json(send: Send, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
