"""NATS JetStream for the stream source: a durable pull consumer, stream sequence numbers.

Unlike the message trigger (which starts at new messages), a source starts at the first
message its stream holds: ingesting "everything from now on" would silently skip data.
``stream:`` names the JetStream stream; without it the stream that captures ``subject``
is used (created as ``HEADWATER_<subject>`` when none does). ``ack_wait`` (on the
connection, default 30s) is how soon messages of a run killed before its commit are
delivered again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from headwater.config.models import parse_duration
from headwater.connectors.streams.base import BrokerAdapter
from headwater.connectors.streams.ledger import Ledger, SeqLedger
from headwater.triggers.brokers.base import ConsumerSpec, Delivery, broker_errors
from headwater.triggers.brokers.nats_jetstream import _ERRORS, NatsConsumer

ACK_WAIT_S = 30.0


class SourceNatsConsumer(NatsConsumer):
    """The trigger's consumer, reading the whole stream and naming it if asked."""

    def __init__(self, connection: Mapping[str, Any], spec: ConsumerSpec,
                 stream: str | None) -> None:
        super().__init__(connection, spec)
        self._named_stream = stream
        self._ack_wait = parse_duration(connection.get("ack_wait", ACK_WAIT_S))

    def _consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self._durable, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, filter_subject=self._spec.subject,
            ack_wait=self._ack_wait, max_ack_pending=max(1000, 2 * self._spec.prefetch))

    async def _ensure_stream(self, js: JetStreamContext) -> str:
        if self._named_stream:
            await js.stream_info(self._named_stream)  # NotFoundError names it
            return self._named_stream
        return await super()._ensure_stream(js)

    async def ack_floor(self) -> int:
        """The stream sequence at or below which every message is acknowledged."""
        nc, _ = self._alive()
        with broker_errors(self._where, *_ERRORS):
            info = await nc.jetstream().consumer_info(self._stream, self._durable)
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        return int(floor or 0)


def _seq(delivery: Delivery) -> int:
    return int(delivery.message_id)


def open_broker(connection: Mapping[str, Any], spec: ConsumerSpec,
                stream: str | None) -> BrokerAdapter:
    consumer = SourceNatsConsumer(connection, spec, stream)

    async def prune(ledger: Ledger) -> None:
        if isinstance(ledger, SeqLedger):
            ledger.prune(await consumer.ack_floor())

    return BrokerAdapter(consumer=consumer, where=consumer._where, ledger=SeqLedger.from_state,
                         identity=_seq, prune=prune)
