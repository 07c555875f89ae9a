"""MQTT (Mosquitto and others): a QoS 1 subscription in a persistent session.

The client id is stable and the session is not clean, so the broker queues QoS 1 messages
published while the trigger is down and delivers them on reconnect. Acknowledgement is
manual (PUBACK after the run was queued): a message whose PUBACK was never sent is sent
again by the broker when the session resumes, under its original packet id, which is why
the packet id is part of the dedupe key.

One session per client id: two servers running the same trigger take the session from
each other, so run a message trigger on MQTT from one server only.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho

from headwater.exceptions import ConfigError, TransientSourceError
from headwater.triggers.base import utcnow
from headwater.triggers.brokers.base import (
    ConsumerSpec,
    Delivery,
    broker_errors,
    digest,
    safe_name,
    setting,
)

_ERRORS = (aiomqtt.MqttError,)
_FLUSH_TIMEOUT_S = 5.0
_SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}


class MqttConsumer:
    """A persistent-session QoS 1 subscriber; see the module docstring."""

    broker = "mqtt"

    def __init__(self, connection: Mapping[str, Any], spec: ConsumerSpec) -> None:
        url = urlsplit(setting(connection, "url", self.broker))
        if url.scheme not in _SCHEMES:
            raise ConfigError(f"an mqtt connection url starts with mqtt:// or mqtts://, "
                              f"not {url.scheme}://", problems=[])
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (8883 if _SCHEMES[url.scheme] else 1883)
        self._tls = _SCHEMES[url.scheme]
        self._username = unquote(url.username) if url.username else None
        self._password = unquote(url.password) if url.password else None
        self._spec = spec
        self._where = f"mqtt {self._host}:{self._port} topic {spec.subject}"
        self._client: aiomqtt.Client | None = None
        self._stack = contextlib.AsyncExitStack()

    async def connect(self) -> None:
        client = aiomqtt.Client(
            self._host, self._port, username=self._username, password=self._password,
            identifier=safe_name(self._spec.name), clean_session=False, keepalive=30,
            timeout=10, tls_params=aiomqtt.TLSParameters() if self._tls else None)
        # aiomqtt has no switch for it; paho holds back PUBACK until ack() is called
        client._client.manual_ack_set(True)
        with broker_errors(self._where, *_ERRORS):
            await self._stack.enter_async_context(client)
            self._client = client
            await client.subscribe(self._spec.subject, qos=1)

    async def receive(self, limit: int, timeout: float) -> list[Delivery]:
        messages = self._alive().messages
        with broker_errors(self._where, *_ERRORS):
            try:
                first = await asyncio.wait_for(anext(messages), timeout=max(timeout, 0.001))
            except TimeoutError:
                return []
            got = [first]
            while len(got) < limit and len(messages) > 0:
                got.append(await anext(messages))
        return [self._delivery(message) for message in got]

    def _delivery(self, message: aiomqtt.Message) -> Delivery:
        body = message.payload if isinstance(message.payload, bytes) else (
            b"" if message.payload is None else str(message.payload).encode())
        return Delivery(body=body, message_id=str(message.mid), subject=message.topic.value,
                        at=utcnow(), handle=message)

    def _alive(self) -> aiomqtt.Client:
        if self._client is None:
            raise TransientSourceError(f"{self._where}: not connected", source=self._where)
        return self._client

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        paho_client = self._alive()._client
        for delivery in deliveries:
            message: aiomqtt.Message = delivery.handle
            code = paho_client.ack(message.mid, message.qos)
            if code != paho.MQTT_ERR_SUCCESS:
                raise TransientSourceError(
                    f"{self._where}: acknowledging failed: {paho.error_string(code)}",
                    source=self._where)
        await self._flushed(paho_client)

    async def _flushed(self, paho_client: paho.Client) -> None:
        """Wait until the PUBACKs left the socket: a disconnect right after ack() would
        drop them, and the broker would send those messages again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _FLUSH_TIMEOUT_S
        while paho_client.want_write():
            if loop.time() > deadline:
                raise TransientSourceError(f"{self._where}: acknowledgements not sent within "
                                           f"{_FLUSH_TIMEOUT_S:g}s", source=self._where)
            await asyncio.sleep(0.002)

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to send: MQTT redelivers an un-acknowledged message when the session
        resumes, which the trigger's reconnect after a failure does."""

    def batch_key(self, deliveries: Sequence[Delivery]) -> str:
        return "mqtt:" + digest(_identity(d) for d in deliveries)

    async def close(self) -> None:
        self._client = None
        stack, self._stack = self._stack, contextlib.AsyncExitStack()
        with contextlib.suppress(Exception):
            await stack.aclose()


def _identity(delivery: Delivery) -> str:
    message: aiomqtt.Message = delivery.handle
    if message.qos == 0:
        # QoS 0 is never redelivered, and its packet id is always 0: identical payloads
        # must still fire separately, so the identity is made unique
        return f"qos0:{uuid.uuid4().hex}"
    return f"{delivery.subject}\0{message.mid}\0{digest([delivery.body])}"
