"""MQTT for the stream source: QoS 1 in a persistent session, PUBACK after the commit.

The session (client id = the consumer name) is not clean, so the broker keeps QoS 1
messages while no run is connected and resends those whose PUBACK never came when the
next run resumes the session, under their original packet id. A window of committed
identities (topic + packet id + body hash) drops such resends. The guarantee is weaker
than for the other brokers: packet ids are reused (1-65535), so two messages with the
same topic, body and packet id within the window are taken as one (the window is
kept to two batches, at most half a packet-id cycle, to make that unlikely); and a broker that
drops a session (its expiry, a restart without persistence) loses what it held.
QoS 0 publishes are delivered at most once, whatever the subscriber does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headwater.connectors.streams.base import BrokerAdapter
from headwater.connectors.streams.ledger import WindowLedger
from headwater.triggers.brokers.base import ConsumerSpec, Delivery, digest
from headwater.triggers.brokers.mqtt import MqttConsumer

PACKET_IDS = 65_535
"""Packet ids cycle through this many values; the window stays well inside one cycle."""


def _identity(delivery: Delivery) -> str:
    return digest([delivery.subject, delivery.message_id, delivery.body])


def open_broker(connection: Mapping[str, Any], spec: ConsumerSpec,
                stream: str | None) -> BrokerAdapter:
    consumer = MqttConsumer(connection, spec)
    cap = min(2 * spec.prefetch, PACKET_IDS // 2)

    def ledger(state: Mapping[str, Any] | None) -> WindowLedger:
        return WindowLedger.from_state(state, cap=cap)

    return BrokerAdapter(consumer=consumer, where=consumer._where, ledger=ledger,
                         identity=_identity)
