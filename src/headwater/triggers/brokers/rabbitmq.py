"""RabbitMQ: manual-ack consumer on a durable queue named after the subject.

The queue is declared durable (created if missing), so messages sent to it while the
trigger is down wait there. Un-acknowledged messages return to the queue when the
channel closes, so a crash between emit and ack re-delivers. RabbitMQ has no stable
message number, so the dedupe key hashes each message's ``message_id``, ``timestamp``
and body: publishers that send identical bodies on purpose should set ``message_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any

import aio_pika
import aio_pika.connection
import aio_pika.exceptions
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from headwater.exceptions import TransientSourceError
from headwater.triggers.base import utcnow
from headwater.triggers.brokers.base import (
    ConsumerSpec,
    Delivery,
    broker_errors,
    digest,
    endpoint,
    setting,
)

_ERRORS = (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException)
_CONNECT_TIMEOUT_S = 10.0


class _QuietConnectFailures(logging.Filter):
    """aiormq logs each failed connect at ERROR; the trigger reports an outage once itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error when creating transport")


logging.getLogger("aiormq.connection").addFilter(_QuietConnectFailures())


class RabbitConsumer:
    """A manual-ack consumer of one durable queue; see the module docstring."""

    broker = "rabbitmq"

    def __init__(self, connection: Mapping[str, Any], spec: ConsumerSpec) -> None:
        self._url = setting(connection, "url", self.broker)
        self._spec = spec
        self._where = f"rabbitmq {endpoint(self._url)} queue {spec.subject}"
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def connect(self) -> None:
        # a fresh inbox: messages of a closed channel can no longer be acknowledged
        self._inbox = asyncio.Queue()
        with broker_errors(self._where, *_ERRORS):
            self._connection = await _connect(self._url)
            self._channel = await self._connection.channel()
            await self._channel.set_qos(prefetch_count=self._spec.prefetch)
            queue = await self._channel.declare_queue(self._spec.subject, durable=True)
            await queue.consume(self._inbox.put, no_ack=False)

    async def receive(self, limit: int, timeout: float) -> list[Delivery]:
        self._alive()
        try:
            first = await asyncio.wait_for(self._inbox.get(), timeout=max(timeout, 0.001))
        except TimeoutError:
            self._alive()  # a dead connection just stops delivering
            return []
        got = [first]
        while len(got) < limit and not self._inbox.empty():
            got.append(self._inbox.get_nowait())
        return [self._delivery(message) for message in got]

    def _delivery(self, message: AbstractIncomingMessage) -> Delivery:
        stamp = message.timestamp
        at = stamp.astimezone(UTC) if stamp is not None else utcnow()
        return Delivery(body=message.body, message_id=message.message_id or "",
                        subject=message.routing_key or self._spec.subject, at=at,
                        handle=message)

    def _alive(self) -> AbstractChannel:
        if self._connection is None or self._channel is None or self._channel.is_closed:
            raise TransientSourceError(f"{self._where}: connection lost", source=self._where)
        return self._channel

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._alive()
        with broker_errors(self._where, *_ERRORS):
            for delivery in deliveries:
                await delivery.handle.ack()

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        self._alive()
        with broker_errors(self._where, *_ERRORS):
            for delivery in deliveries:
                # one acknowledged before a failed batch ack needs no refusal
                with contextlib.suppress(aio_pika.exceptions.MessageProcessError):
                    await delivery.handle.nack(requeue=True)

    def batch_key(self, deliveries: Sequence[Delivery]) -> str:
        return "rabbitmq:" + digest(_identity(d) for d in deliveries)

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


async def _connect(url: str) -> AbstractConnection:
    """``aio_pika.connect``, but a connection that failed to open is closed here.

    ``aio_pika.connect`` drops the half-made connection on failure; its ``__del__`` later
    schedules ``close()`` on whatever loop is current, or leaks the coroutine unawaited.
    """
    connection = aio_pika.Connection(aio_pika.connection.make_url(url))
    try:
        await connection.connect(timeout=_CONNECT_TIMEOUT_S)
    except BaseException:
        with contextlib.suppress(Exception):
            await connection.close()
        raise
    return connection


def _identity(delivery: Delivery) -> str:
    message: AbstractIncomingMessage = delivery.handle
    stamp = message.timestamp.isoformat() if message.timestamp is not None else ""
    return f"{message.message_id or ''}\0{stamp}\0{digest([delivery.body])}"
