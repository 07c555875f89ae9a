"""Message brokers behind one small seam: NATS JetStream, MQTT, RabbitMQ, Redis streams."""

from headwater.triggers.brokers.base import Consumer, ConsumerSpec, Delivery
from headwater.triggers.brokers.registry import BROKERS, consumer_class, consumer_for

__all__ = ["BROKERS", "Consumer", "ConsumerSpec", "Delivery", "consumer_class", "consumer_for"]
