"""Connection ``type`` → the consumer class for that broker.

Imports are lazy: a project that uses only NATS does not need the MQTT client installed,
and a missing client is a ConfigError naming the package to install, raised when the
trigger is armed rather than when the first message would arrive.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from headwater.exceptions import ConfigError
from headwater.triggers.brokers.base import Consumer, ConsumerSpec

ConsumerFactory = Callable[[Mapping[str, Any], ConsumerSpec], Consumer]

BROKERS: dict[str, tuple[str, str]] = {
    "nats": ("headwater.triggers.brokers.nats_jetstream:NatsConsumer", "nats-py"),
    "mqtt": ("headwater.triggers.brokers.mqtt:MqttConsumer", "aiomqtt"),
    "rabbitmq": ("headwater.triggers.brokers.rabbitmq:RabbitConsumer", "aio-pika"),
    "amqp": ("headwater.triggers.brokers.rabbitmq:RabbitConsumer", "aio-pika"),
    "redis": ("headwater.triggers.brokers.redis_streams:RedisStreamConsumer", "redis"),
}
"""Connection type → (``module:Class``, the pip package its client comes from)."""


def consumer_class(broker: str) -> ConsumerFactory:
    """The consumer class for a connection ``type``, imported on first use."""
    try:
        target, package = BROKERS[broker]
    except KeyError:
        hint = difflib.get_close_matches(broker, list(BROKERS), n=1)
        suffix = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"connection type {broker!r} cannot carry messages (use one of "
                          f"{', '.join(sorted(BROKERS))}){suffix}", problems=[]) from None
    module_name, _, name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"a {broker} connection needs the {package!r} package "
                          f"(pip install {package}): {exc}", problems=[]) from exc
    factory: ConsumerFactory = getattr(module, name)
    return factory


def consumer_for(connection: Mapping[str, Any], spec: ConsumerSpec) -> Consumer:
    """A new, unconnected consumer for ``spec`` on the broker ``connection`` points at."""
    return consumer_class(str(connection.get("type", "")))(connection, spec)
