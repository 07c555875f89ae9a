"""RabbitMQ for the stream source: manual acknowledgement on the channel that received.

A message not acknowledged returns to its durable queue when the channel closes (a crash,
a failed run), flagged ``redelivered``. Only such messages can be copies of committed
ones; they are matched against a window of committed identities: the ``message_id`` when
the publisher set one, else a hash of timestamp and body (so publishers that send
identical bodies on purpose should set ``message_id``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headwater.connectors.streams.base import BrokerAdapter
from headwater.connectors.streams.ledger import WindowLedger
from headwater.triggers.brokers.base import ConsumerSpec, Delivery, digest
from headwater.triggers.brokers.rabbitmq import RabbitConsumer


def _identity(delivery: Delivery) -> str:
    if delivery.message_id:
        return "id:" + delivery.message_id
    stamp = delivery.handle.timestamp.isoformat() if delivery.handle.timestamp else ""
    return "sha:" + digest([stamp, delivery.body])


def _redelivered(delivery: Delivery) -> bool:
    return bool(getattr(delivery.handle, "redelivered", True))


def open_broker(connection: Mapping[str, Any], spec: ConsumerSpec,
                stream: str | None) -> BrokerAdapter:
    consumer = RabbitConsumer(connection, spec)
    return BrokerAdapter(consumer=consumer, where=consumer._where,
                         ledger=WindowLedger.from_state, identity=_identity,
                         may_be_redelivery=_redelivered)
