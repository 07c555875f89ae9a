"""Redis streams: a consumer group read with XREADGROUP and acknowledged with XACK.

The group (and the stream, MKSTREAM) is created at the stream's end if missing; after that
Redis remembers what the group has seen, so entries added while the trigger is down are
read when it is back. Entries read but never acknowledged stay in the consumer's pending
list; on every (re)connect and after a refusal the consumer reads that list first, so a
crash between emit and ack re-delivers them. Entry ids are stable, so a redelivery
reproduces the dedupe key.

An entry with one field gives that field's value as the message; an entry with several
fields gives all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis.asyncio
import redis.exceptions

from headwater.exceptions import TransientSourceError
from headwater.triggers.brokers.base import (
    ConsumerSpec,
    Delivery,
    broker_errors,
    endpoint,
    safe_name,
    setting,
)

_ERRORS = (redis.exceptions.RedisError,)
_Entry = tuple[bytes, dict[bytes, bytes] | None]


class RedisStreamConsumer:
    """A consumer-group reader of one stream; see the module docstring."""

    broker = "redis"

    def __init__(self, connection: Mapping[str, Any], spec: ConsumerSpec) -> None:
        self._url = setting(connection, "url", self.broker)
        self._spec = spec
        self._where = f"redis {endpoint(self._url)} stream {spec.subject}"
        self._group = safe_name(spec.name)
        self._client: redis.asyncio.Redis | None = None
        self._pending_from: str | None = "0"

    async def connect(self) -> None:
        self._pending_from = "0"
        with broker_errors(self._where, *_ERRORS):
            self._client = redis.asyncio.Redis.from_url(self._url, socket_connect_timeout=5)
            try:
                await self._client.xgroup_create(self._spec.subject, self._group, id="$",
                                                 mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def receive(self, limit: int, timeout: float) -> list[Delivery]:
        client = self._alive()
        with broker_errors(self._where, *_ERRORS):
            if self._pending_from is not None:
                entries = await self._read(client, self._pending_from, limit, block=None)
                if entries:
                    self._pending_from = entries[-1][0].decode()
                    return [self._delivery(entry) for entry in entries]
                self._pending_from = None
            entries = await self._read(client, ">", limit, block=max(1, int(timeout * 1000)))
        return [self._delivery(entry) for entry in entries]

    async def _read(self, client: redis.asyncio.Redis, start: str, limit: int,
                    block: int | None) -> list[_Entry]:
        reply: Any = await client.xreadgroup(self._group, self._group, {self._spec.subject: start},
                                        count=limit, block=block)
        # RESP2 answers [[stream, entries]], RESP3 {stream: [entries]}
        streams = reply.items() if isinstance(reply, dict) else (reply or [])
        return [(bytes(entry[0]), entry[1]) for _, entries in streams for entry in entries]

    def _delivery(self, entry: _Entry) -> Delivery:
        entry_id, values = entry
        fields = {key.decode("utf-8", "replace"): value for key, value in (values or {}).items()}
        single = next(iter(fields.values())) if len(fields) == 1 else None
        return Delivery(body=single if single is not None else b"", message_id=entry_id.decode(),
                        subject=self._spec.subject, at=_entry_time(entry_id),
                        fields=None if single is not None else fields)

    def _alive(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise TransientSourceError(f"{self._where}: not connected", source=self._where)
        return self._client

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        client = self._alive()
        with broker_errors(self._where, *_ERRORS):
            await client.xack(self._spec.subject, self._group, *[d.message_id for d in deliveries])

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        """Read the pending list again next time: refused entries are still on it."""
        self._pending_from = "0"

    def batch_key(self, deliveries: Sequence[Delivery]) -> str:
        ids = [d.message_id for d in deliveries]
        first, last = min(ids, key=_id_order), max(ids, key=_id_order)
        return f"redis:{self._spec.subject}:{first}-{last}:{len(ids)}"

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()


def _id_order(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


def _entry_time(entry_id: bytes) -> datetime:
    millis = _id_order(entry_id.decode())[0]
    return datetime.fromtimestamp(millis / 1000, tz=UTC)
