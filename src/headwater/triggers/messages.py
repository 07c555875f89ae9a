"""Message triggers: start a run when a message arrives on NATS, MQTT, RabbitMQ or Redis.

The loop is receive → emit → acknowledge, in that order and never another: a message is
acknowledged only after ``await emit(fire)`` returned (the run is queued), so a crash in
between makes the broker deliver it again rather than lose it. The redelivery carries the
same broker ids, so its :attr:`Fire.dedupe_key` is the same and the server does not queue
a second run.

Without ``batch`` each message is one Fire (``info["message"]``); with ``batch`` the
messages that arrive within ``window`` of the first (at most ``max``) are one Fire
(``info["messages"]``). A payload is decoded as JSON when it parses, else as UTF-8 text,
else kept as base64; ``encoding`` says which, so a malformed payload is data, not a crash.

This module never raises out of :meth:`MessageTrigger.run` for a broker outage or a
failing emit: it records the problem in ``status`` (logged once), reconnects with
exponential backoff and recovers by itself. Broker specifics live in
:mod:`headwater.triggers.brokers`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from headwater.config.models import MessageTriggerConfig
from headwater.exceptions import HeadwaterError, TriggerError
from headwater.triggers.base import Backoff, Emit, Fire, TriggerStatus
from headwater.triggers.brokers import Consumer, ConsumerSpec, Delivery, consumer_for
from headwater.triggers.brokers.base import describe, digest, raise_if_cancelled

log = logging.getLogger("headwater.triggers")

POLL_S = 1.0
"""How long one receive waits for a first message; bounds how late a dead link is seen."""
SINGLE_PREFETCH = 100
"""Messages a broker may hand over ahead of acknowledgement when every message fires."""
_CLOSE_TIMEOUT_S = 5.0
_MAX_KEY = 400


def message_trigger(pipeline: str, index: int, config: MessageTriggerConfig,
                    connection: Mapping[str, Any]) -> MessageTrigger:
    """The trigger for ``message:`` entry ``index`` of ``pipeline`` (a ConfigError if the
    connection type carries no messages or its client package is missing)."""
    return MessageTrigger(pipeline, index, config, connection)


def decode_payload(body: bytes) -> tuple[Any, str]:
    """``(value, encoding)``: parsed JSON, else UTF-8 text, else base64 of the bytes.

    NaN and Infinity are not JSON (a store or API would choke on them later), so such a
    payload stays text.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"
    try:
        return json.loads(text, parse_constant=_reject_constant), "json"
    except (ValueError, RecursionError):
        return text, "text"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_delivery(delivery: Delivery) -> tuple[Any, str]:
    """A delivery's message: its decoded body, or for a map of fields each field decoded
    (a binary field as ``{"base64": ...}``)."""
    if delivery.fields is None:
        return decode_payload(delivery.body)
    values = {}
    for key, raw in delivery.fields.items():
        value, encoding = decode_payload(raw)
        values[key] = {"base64": value} if encoding == "base64" else value
    return values, "fields"


class MessageTrigger:
    """Fires for messages on one subject of one broker; see the module docstring.

    ``ready`` is set while connected and subscribed (the UI may show it; tests wait on it).
    """

    kind = "message"

    def __init__(self, pipeline: str, index: int, config: MessageTriggerConfig,
                 connection: Mapping[str, Any], *, consumer: Consumer | None = None,
                 backoff: Backoff | None = None) -> None:
        self.pipeline = pipeline
        self.index = index
        self.config = config
        self.status = TriggerStatus(name=f"{pipeline}:{index}")
        self.ready = asyncio.Event()
        batch = config.batch
        spec = ConsumerSpec(subject=config.subject, name=f"headwater-{pipeline}-{index}",
                            prefetch=max(batch.max, SINGLE_PREFETCH) if batch else SINGLE_PREFETCH)
        self._consumer = consumer or consumer_for(connection, spec)
        self._backoff = backoff or Backoff()

    async def run(self, emit: Emit) -> None:
        """Connect, consume and fire until cancelled; outages only show in ``status``."""
        while True:
            try:
                await self._consumer.connect()
                self.ready.set()
                await self._consume(emit)
            except HeadwaterError as exc:
                self.status.fail(exc.message)
            except Exception as exc:  # a bug or an untranslated library error: keep going
                log.debug("trigger %s failed", self.status.name, exc_info=True)
                self.status.fail(f"unexpected {type(exc).__name__}: {describe(exc)}")
            finally:
                self.ready.clear()
                await self._close()
            raise_if_cancelled()
            await asyncio.sleep(self._backoff.next())

    async def _consume(self, emit: Emit) -> None:
        while True:
            deliveries = await self._collect()
            raise_if_cancelled()
            if not deliveries:
                self._healthy()
                continue
            await self._fire_all(emit, deliveries)

    async def _collect(self) -> list[Delivery]:
        """The next message, or with ``batch`` all that arrive within the window after it."""
        batch = self.config.batch
        limit = batch.max if batch else SINGLE_PREFETCH
        got = await self._consumer.receive(limit, POLL_S)
        if not got or batch is None:
            return got
        loop = asyncio.get_running_loop()
        deadline = loop.time() + batch.window
        while len(got) < batch.max and (left := deadline - loop.time()) > 0:
            got += await self._consumer.receive(batch.max - len(got), left)
        return got

    async def _fire_all(self, emit: Emit, deliveries: list[Delivery]) -> None:
        """Emit then acknowledge each group; on any failure hand back all not yet acked."""
        groups = [deliveries] if self.config.batch else [[d] for d in deliveries]
        unacked = list(deliveries)
        try:
            for group in groups:
                await self._emit(emit, group)
                await self._consumer.ack(group)
                del unacked[:len(group)]
                self.status.fired()
                self._healthy()
        except Exception:
            with contextlib.suppress(Exception):
                await self._consumer.nack(unacked)
            raise

    async def _emit(self, emit: Emit, group: Sequence[Delivery]) -> None:
        try:
            await emit(self._fire(group))
        except Exception as exc:
            raise TriggerError(f"could not queue a run for {len(group)} message(s) "
                               f"(they will be delivered again): {describe(exc)}") from exc

    def _healthy(self) -> None:
        self.status.recover()
        self._backoff.reset()

    def _fire(self, group: Sequence[Delivery]) -> Fire:
        return Fire(pipeline=self.pipeline, trigger_index=self.index, kind=self.kind,
                    dedupe_key=self._dedupe_key(group), info=self._info(group),
                    event_at=group[-1].at)

    def _dedupe_key(self, group: Sequence[Delivery]) -> str:
        prefix = f"message:{self.pipeline}:{self.index}:"
        key = self._consumer.batch_key(group)
        return prefix + (key if len(prefix) + len(key) <= _MAX_KEY else digest([key]))

    def _info(self, group: Sequence[Delivery]) -> dict[str, Any]:
        decoded = [decode_delivery(d) for d in group]
        common = {"broker": self._consumer.broker, "subject": self.config.subject}
        if self.config.batch is None:
            value, encoding = decoded[0]
            return {"message": value, "encoding": encoding, "message_id": group[0].message_id,
                    "message_subject": group[0].subject, **common}
        return {"messages": [value for value, _ in decoded],
                "encodings": [encoding for _, encoding in decoded],
                "message_ids": [d.message_id for d in group], "count": len(group), **common}

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._consumer.close(), _CLOSE_TIMEOUT_S)
