"""Who is asking: bearer tokens, the browser's session cookie, roles and CSRF.

Tokens come from ``headwater.yaml`` (``auth: {tokens: ...}``) or ``headwater token
create`` (stored hashed). With neither, the server is open (it then only listens on
loopback, see ``service``). ``viewer`` reads; ``operator`` also runs, cancels, toggles
triggers and edits pipelines. A browser logs in once: the token goes into an HttpOnly,
SameSite=Strict cookie, and every state-changing request made with that cookie must carry
the page's CSRF token in the ``X-Headwater-CSRF`` header, which another site can neither
read nor send without a CORS preflight this server refuses. An open server (no tokens,
loopback only) takes changes from scripts too; ``server.guard`` refuses foreign ``Host``
headers and cross-site requests there.
Never log a token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

from headwater.store.access import has_tokens, role_of_token, token_hash

if TYPE_CHECKING:
    from headwater.runtime import ProjectRuntime

COOKIE = "hw_session"
CSRF_HEADER = "X-Headwater-CSRF"
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Identity:
    role: str
    actor: str
    """What the audit log records: ``token:<id>``, ``config-token`` or ``anonymous``."""
    via: str
    """``bearer``, ``cookie`` or ``open``."""
    csrf: str

    @property
    def operator(self) -> bool:
        return self.role == "operator"


class Auth:
    """The project's tokens, checked per request (store tokens may be added at any time)."""

    def __init__(self, runtime: ProjectRuntime) -> None:
        self.runtime = runtime
        self._open_secret = secrets.token_urlsafe(24)

    def enabled(self) -> bool:
        return bool(self.runtime.auth_tokens()) or has_tokens(self.runtime.store)

    def role(self, token: str) -> str | None:
        for known, role in self.runtime.auth_tokens().items():
            if hmac.compare_digest(token.encode(), known.encode()):
                return role
        return role_of_token(self.runtime.store, token)

    def identify(self, request: Request) -> Identity:
        """The caller, or 401 naming what is missing."""
        if not self.enabled():
            return Identity("operator", "anonymous", "open", _csrf(self._open_secret))
        header = request.headers.get("authorization") or ""
        if header.lower().startswith("bearer "):
            return self._check(header[7:].strip(), "bearer")
        cookie = request.cookies.get(COOKIE)
        if cookie:
            return self._check(cookie, "cookie")
        raise HTTPException(401, "log in at /login, or send 'Authorization: Bearer <token>' "
                                 "(make one with 'headwater token create')")

    def _check(self, token: str, via: str) -> Identity:
        role = self.role(token)
        if role is None:
            what = "session has expired or its token was revoked; log in again" \
                if via == "cookie" else "bearer token is wrong, expired or revoked"
            raise HTTPException(401, f"your {what}")
        config = any(hmac.compare_digest(token.encode(), k.encode())
                     for k in self.runtime.auth_tokens())
        actor = "config-token" if config else f"token:{token_hash(token)[:12]}"
        return Identity(role, actor, via, _csrf(token))

    def require(self, request: Request, operator: bool) -> Identity:
        """The caller if allowed: operators for changes, CSRF for cookie sessions."""
        who = self.identify(request)
        if operator and not who.operator:
            raise HTTPException(403, "this needs an operator token (you are a viewer)")
        # Only a cookie rides along on another site's request; an open server's callers
        # (scripts on loopback) are guarded by Host/Origin/Sec-Fetch-Site in server.guard
        if request.method not in SAFE_METHODS and who.via == "cookie":
            given = request.headers.get(CSRF_HEADER) or ""
            if not hmac.compare_digest(given.encode(), who.csrf.encode()):
                raise HTTPException(403, "missing or wrong CSRF token: reload the page and "
                                         "try again")
        return who


def _csrf(secret: str) -> str:
    """A value bound to the session: unguessable without the token, the same on every server."""
    return hashlib.sha256(f"headwater-csrf:{secret}".encode()).hexdigest()[:32]
