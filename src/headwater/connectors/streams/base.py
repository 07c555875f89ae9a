"""The seam between the stream source and one broker: its consumer plus how to tell a
redelivery of a committed message from a new one.

A broker module (``nats``, ``redis``, ``rabbitmq``, ``mqtt``) exports
``open_broker(connection, target, name, source) -> BrokerAdapter``; the consumer itself is
the message trigger's (:mod:`headwater.triggers.brokers`), so a broker's client quirks
live in one place. Nothing here knows about steps, runs or datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from headwater.connectors.streams.ledger import Ledger
from headwater.triggers.brokers.base import Consumer, Delivery


def always(_: Delivery) -> bool:
    """Any delivery may be a redelivery (the broker does not say)."""
    return True


def unknown(_: Delivery) -> bool:
    """The broker does not say whether more messages wait."""
    return False


@dataclass
class BrokerAdapter:
    """One broker as the stream source sees it."""

    consumer: Consumer
    where: str
    """Broker, endpoint and subject for messages ("nats 127.0.0.1:4222 subject orders")."""
    ledger: Callable[[Mapping[str, Any] | None], Ledger]
    """The committed-message ledger, from its stored state."""
    identity: Callable[[Delivery], Any]
    """The key a redelivery of this message reproduces."""
    may_be_redelivery: Callable[[Delivery], bool] = always
    """False when the broker guarantees a first delivery (RabbitMQ's redelivered flag)."""
    more_pending: Callable[[Delivery], bool] = unknown
    """Whether the broker said, with this delivery, that more messages wait (NATS)."""
    prune: Callable[[Ledger], Coroutine[Any, Any, None]] | None = None
    """Forget what the broker will never redeliver (NATS: below the ack floor)."""
