"""NATS JetStream: a durable pull consumer on the stream that holds the subject.

The stream is created (``HEADWATER_<subject>``) when no stream captures the subject yet, so
messages published while the trigger is down are kept. The durable consumer starts at new
messages the first time and at its own ack floor ever after. The client's own reconnect
logic is off: the trigger reconnects with backoff and reports the outage in its status.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from headwater.exceptions import TransientSourceError
from headwater.triggers.base import utcnow
from headwater.triggers.brokers.base import (
    ConsumerSpec,
    Delivery,
    broker_errors,
    describe,
    endpoint,
    safe_name,
    seq_range_key,
    setting,
)

_ERRORS = (nats.errors.Error,)
# long enough that a slow emit (the store under load) does not cause a redelivery
_ACK_WAIT_S = 120.0
_MIN_FETCH_S = 0.05


class NatsConsumer:
    """A JetStream durable pull subscription; see the module docstring."""

    broker = "nats"

    def __init__(self, connection: Mapping[str, Any], spec: ConsumerSpec) -> None:
        self._url = setting(connection, "url", self.broker)
        self._spec = spec
        self._where = f"nats {endpoint(self._url)} subject {spec.subject}"
        self._nc: NatsClient | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._stream = ""

    async def connect(self) -> None:
        with broker_errors(self._where, *_ERRORS):
            self._nc = await self._open()
            js = self._nc.jetstream()
            self._stream = await self._ensure_stream(js)
            self._sub = await js.pull_subscribe(
                self._spec.subject, durable=self._durable, stream=self._stream,
                config=self._consumer_config())

    async def _open(self) -> NatsClient:
        failures: list[Exception] = []

        async def remember(exc: Exception) -> None:
            # nats-py would log every failed attempt; the trigger reports the outage once
            failures.append(exc)

        try:
            return await nats.connect(
                self._url, name=self._spec.name, allow_reconnect=False, connect_timeout=5,
                # nats-py treats 0 as "retry forever"; 1 means give up after one retry
                max_reconnect_attempts=1, reconnect_time_wait=0, error_cb=remember)
        except nats.errors.NoServersError as exc:
            # "no servers available" hides the reason; the last attempt's error says it
            cause = failures[-1] if failures else exc
            raise TransientSourceError(f"{self._where}: {describe(cause)}",
                                       source=self._where) from exc

    @property
    def _durable(self) -> str:
        return safe_name(self._spec.name)

    def _consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self._durable, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW, filter_subject=self._spec.subject,
            ack_wait=_ACK_WAIT_S, max_ack_pending=max(1000, 2 * self._spec.prefetch))

    async def _ensure_stream(self, js: JetStreamContext) -> str:
        try:
            return await js.find_stream_name_by_subject(self._spec.subject)
        except nats.js.errors.NotFoundError:
            pass
        name = "HEADWATER_" + safe_name(self._spec.subject.replace(">", "all").replace("*", "any"))
        # add_stream with an identical config is idempotent, so two servers racing is fine
        await js.add_stream(name=name, subjects=[self._spec.subject])
        return name

    async def receive(self, limit: int, timeout: float) -> list[Delivery]:
        _, sub = self._alive()
        with broker_errors(self._where, *_ERRORS):
            try:
                msgs = await sub.fetch(batch=limit, timeout=max(timeout, _MIN_FETCH_S))
            except TimeoutError:
                self._alive()  # a fetch on a dropped connection just times out
                return []
        return [self._delivery(msg) for msg in msgs]

    def _delivery(self, msg: Msg) -> Delivery:
        meta = msg.metadata
        at = meta.timestamp.astimezone(UTC) if meta.timestamp else utcnow()
        return Delivery(body=msg.data, message_id=str(meta.sequence.stream), subject=msg.subject,
                        at=at, handle=msg)

    def _alive(self) -> tuple[NatsClient, JetStreamContext.PullSubscription]:
        if self._nc is None or self._sub is None or not self._nc.is_connected:
            raise TransientSourceError(f"{self._where}: connection lost", source=self._where)
        return self._nc, self._sub

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        nc, _ = self._alive()
        with broker_errors(self._where, *_ERRORS):
            for delivery in deliveries:
                await delivery.handle.ack()
            # ack() only queues the ack; the flush makes sure the server has it
            await nc.flush(timeout=5)

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        self._alive()
        with broker_errors(self._where, *_ERRORS):
            for delivery in deliveries:
                # one acknowledged before a failed batch ack needs no refusal
                with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
                    await delivery.handle.nak()

    def batch_key(self, deliveries: Sequence[Delivery]) -> str:
        return seq_range_key(f"nats:{self._stream}", [int(d.message_id) for d in deliveries])

    async def close(self) -> None:
        nc, self._nc, self._sub = self._nc, None, None
        if nc is not None and not nc.is_closed:
            # closing a broken connection may fail; there is nothing left to do then
            with contextlib.suppress(Exception):
                await nc.close()
