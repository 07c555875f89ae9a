"""API tokens and the audit log: who may use the API and UI, and what operators did.

A token is shown once, when created; the store keeps only its SHA-256 (tokens are 32
random bytes, so a plain hash is as strong as a slow one and costs nothing per request).
Never import the engine or the server from here.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update

from headwater.exceptions import HeadwaterError
from headwater.store import schema as t
from headwater.store.store import Store, utcnow

ROLES = ("viewer", "operator")
PREFIX = "hw_"


@dataclass(frozen=True)
class NewToken:
    id: str
    token: str
    """The secret itself: shown once, never stored."""
    role: str
    expires_at: datetime | None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(store: Store, role: str, *, name: str | None = None,
                 days: float | None = None) -> NewToken:
    """Make a token with ``role``; only its hash is written to the store."""
    if role not in ROLES:
        raise HeadwaterError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    token = PREFIX + secrets.token_urlsafe(32)
    digest = token_hash(token)
    expires = utcnow() + timedelta(days=days) if days else None
    with store.tx() as conn:
        conn.execute(insert(t.api_tokens).values(
            id=digest[:12], hash=digest, role=role, name=name, created_at=utcnow(),
            expires_at=expires, revoked=False))
    return NewToken(id=digest[:12], token=token, role=role, expires_at=expires)


def role_of_token(store: Store, token: str) -> str | None:
    """The role of a stored, unexpired, unrevoked token, or None."""
    rows = store._read(select(t.api_tokens).where(t.api_tokens.c.hash == token_hash(token)))
    if not rows or rows[0]["revoked"]:
        return None
    expires = rows[0]["expires_at"]
    if expires is not None and expires <= utcnow():
        return None
    return str(rows[0]["role"])


def has_tokens(store: Store) -> bool:
    rows = store._read(select(t.api_tokens.c.id).where(t.api_tokens.c.revoked.is_(False))
                       .limit(1))
    return bool(rows)


def revoke_token(store: Store, token_id: str) -> bool:
    with store.tx() as conn:
        done = conn.execute(update(t.api_tokens).where(t.api_tokens.c.id == token_id)
                            .values(revoked=True))
    return bool(done.rowcount)


def audit(store: Store, actor: str, action: str, target: str,
          detail: Mapping[str, Any] | None = None) -> None:
    """Record one operator action (run, cancel, toggle, edit)."""
    with store.tx() as conn:
        conn.execute(insert(t.audit_log).values(ts=utcnow(), actor=actor[:200],
                                                action=action, target=target[:400],
                                                detail=dict(detail) if detail else None))


def audit_entries(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    return store._read(select(t.audit_log).order_by(t.audit_log.c.id.desc()).limit(limit))
