"""What every API router shares: the server, the auth checks, and the audit log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request

from headwater.server.auth import Auth, Identity
from headwater.store.access import audit

if TYPE_CHECKING:
    from headwater.server.service import Server

T = TypeVar("T")

MAX_BODY = 1_000_000
"""The largest JSON body a state-changing endpoint reads (a pipeline is far smaller)."""


@dataclass
class Context:
    server: Server
    auth: Auth

    def viewer(self, request: Request) -> Identity:
        """A FastAPI dependency: anyone with a token (or anyone, on an open server)."""
        return self.auth.require(request, operator=False)

    def operator(self, request: Request) -> Identity:
        """A FastAPI dependency: an operator, with CSRF for cookies."""
        return self.auth.require(request, operator=True)

    def audit(self, who: Identity, action: str, target: str,
              detail: dict[str, Any] | None = None) -> None:
        audit(self.server.store, who.actor, action, target, detail)


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Store and Delta reads block: run them in a thread so the event loop keeps serving."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def json_body(request: Request) -> Any:
    """The request's JSON, read here so a huge or broken body is a clear 4xx, never a 500."""
    import json

    from fastapi import HTTPException

    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY:
        raise HTTPException(413, f"the body is larger than {MAX_BODY} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise HTTPException(413, f"the body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(422, f"the body is not valid JSON: {exc}") from None
