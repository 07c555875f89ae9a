"""What every HTTP request passes before the API sees it: body size, Host and Origin.

A server without tokens on loopback trusts whoever can reach it, which a web page in the
user's browser can too: a cross-site ``fetch`` (or a form) POSTs to 127.0.0.1, and a
DNS-rebinding page reaches it under its own host name. So, without auth, requests must
name a loopback host (or the host ``serve`` listens on) and state-changing requests must
not come from another site's page. Bodies are capped before anything reads them.
This module must never import the engine or the store.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

MAX_BODY = 1024 * 1024
"""Largest request body accepted (1 MiB): webhook params, never data."""

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(value: str) -> str:
    """``127.0.0.1:8765`` → ``127.0.0.1``; ``[::1]:80`` → ``::1``; lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_hosts(configured: str) -> frozenset[str]:
    names = {host_name(n) for n in LOOPBACK_NAMES}
    if configured and configured not in ("0.0.0.0", "::"):
        names.add(host_name(configured))
    return frozenset(names)


class RequestGuard:
    """ASGI middleware: 413 for big bodies; without auth, 403 for foreign Host/Origin."""

    def __init__(self, app: ASGIApp, *, hosts: Iterable[str],
                 auth_enabled: Callable[[], bool], max_body: int = MAX_BODY) -> None:
        self.app = app
        self.hosts = frozenset(hosts)
        self.auth_enabled = auth_enabled
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        problem = self.problem(scope["method"], headers)
        if problem is not None:
            await _answer(send, *problem)
            return
        await self.app(scope, receive, send)

    def problem(self, method: str, headers: dict[str, str]) -> tuple[int, str] | None:
        """Why this request is refused (status, detail), or None."""
        length = headers.get("content-length", "0").strip() or "0"
        if not length.isdigit():
            return 400, "Content-Length must be a number"
        if int(length) > self.max_body:
            return 413, f"request body larger than {self.max_body} bytes"
        if self.auth_enabled():
            return None
        if host_name(headers.get("host", "")) not in self.hosts:
            return 403, ("unknown Host header; without auth tokens the server answers only "
                         "to 127.0.0.1, localhost and its --host")
        if method.upper() not in _SAFE_METHODS and self._cross_site(headers):
            return 403, "cross-site request refused (Origin is not this server)"
        return None

    def _cross_site(self, headers: dict[str, str]) -> bool:
        if headers.get("sec-fetch-site", "") == "cross-site":
            return True
        origin = headers.get("origin")
        if origin is None:
            return False  # curl, scripts and same-origin GET-born requests send none
        if origin == "null":
            return True  # sandboxed pages and file:// send "null"
        return host_name(urlsplit(origin).netloc) not in self.hosts


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def read_capped(receive: Receive, limit: int = MAX_BODY) -> bytes | None:
    """The request body, or None once it grows past ``limit`` (a chunked upload)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
