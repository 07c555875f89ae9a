"""Redis streams for the stream source: a consumer group (XREADGROUP / XACK).

The group is created at the start of the stream (``0``), so entries already in it are
ingested, not only those added later. Entries read but not acknowledged stay pending and
are read first by the next run; their ids are stable, so a :class:`SpanLedger` of
committed ids recognises those that a crash after the commit left unacknowledged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio
import redis.exceptions

from headwater.connectors.streams.base import BrokerAdapter
from headwater.connectors.streams.ledger import SpanLedger
from headwater.triggers.brokers.base import ConsumerSpec, Delivery, broker_errors
from headwater.triggers.brokers.redis_streams import _ERRORS, RedisStreamConsumer


class SourceRedisConsumer(RedisStreamConsumer):
    """The trigger's consumer with its group created at the stream's first entry."""

    async def connect(self) -> None:
        self._pending_from = "0"
        with broker_errors(self._where, *_ERRORS):
            self._client = redis.asyncio.Redis.from_url(self._url, socket_connect_timeout=5)
            try:
                await self._client.xgroup_create(self._spec.subject, self._group, id="0",
                                                 mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise


def _entry_id(delivery: Delivery) -> str:
    return delivery.message_id


def open_broker(connection: Mapping[str, Any], spec: ConsumerSpec,
                stream: str | None) -> BrokerAdapter:
    consumer = SourceRedisConsumer(connection, spec)
    return BrokerAdapter(consumer=consumer, where=consumer._where,
                         ledger=SpanLedger.from_state, identity=_entry_id)
