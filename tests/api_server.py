"""A real HTTP server on loopback for API tests: routes are plain Python functions.

Each route gets the request (method, path, query, headers, JSON body) and returns
``(status, headers, body)``; a dict or list body is sent as JSON, a str as-is. Every request
is recorded, so tests assert on what headwater actually sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


Reply = tuple[int, dict[str, str], Any]
Route = Callable[[Request], Reply]


@dataclass
class Api:
    url: str
    routes: dict[str, Route]
    requests: list[Request] = field(default_factory=list)

    def calls(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]


def _handler(api: Api) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            request = Request(self.command, parts.path,
                              {k: v[-1] for k, v in parse_qs(parts.query).items()},
                              {k.lower(): v for k, v in self.headers.items()}, body)
            api.requests.append(request)
            route = api.routes.get(parts.path)
            status, headers, reply = route(request) if route else (404, {}, {"error": "no"})
            data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
            self.send_response(status)
            if not isinstance(reply, str):
                self.send_header("Content-Type", "application/json")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler


@contextmanager
def serve_api(routes: dict[str, Route]) -> Iterator[Api]:
    """Start the server on a free loopback port; stop it when the block ends."""
    api = Api("", routes)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
