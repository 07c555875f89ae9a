"""The seam every message broker plugs into, and the helpers its consumers share
(the table-change trigger uses the error-text ones too).

A :class:`Consumer` hands out :class:`Delivery` objects and takes them back as acknowledged
or refused. It knows nothing about pipelines, fires or batching windows: those belong to
:class:`headwater.triggers.messages.MessageTrigger`, so a new broker is one module with one
class plus one line in :mod:`headwater.triggers.brokers.registry`.

A consumer must never acknowledge on its own (no auto-ack, no QoS-0 shortcut): the caller
acknowledges only after the run was queued, which is what makes a crash re-deliver
instead of lose. Errors from the client library are translated into
:class:`~headwater.exceptions.TransientSourceError` here, at the boundary, with every
secret masked.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from headwater.config.secrets import MASK, REDACTOR
from headwater.exceptions import ConfigError, TransientSourceError

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@\s]*@")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


@dataclass(frozen=True)
class ConsumerSpec:
    """What a consumer subscribes to and the stable name its broker-side state lives under.

    ``name`` is the NATS durable, the Redis consumer group and the MQTT client id: it must
    survive a restart unchanged, or the broker forgets what was delivered.
    """

    subject: str
    name: str
    prefetch: int = 100


@dataclass(frozen=True)
class Delivery:
    """One message as received, not yet acknowledged.

    ``fields`` is set instead of ``body`` for brokers whose messages are maps (a Redis
    stream entry with several fields). ``handle`` is the broker's own object, used only by
    the consumer that made it.
    """

    body: bytes
    message_id: str
    subject: str
    at: datetime
    handle: Any = field(default=None, compare=False, repr=False)
    fields: Mapping[str, bytes] | None = None


class Consumer(Protocol):
    """A connection to one subject on one broker.

    Every method may raise :class:`~headwater.exceptions.TransientSourceError`; the caller
    closes the consumer and connects again with backoff.
    """

    broker: str

    async def connect(self) -> None:
        """Connect and subscribe, creating the broker-side stream/queue/group if missing."""
        ...

    async def receive(self, limit: int, timeout: float) -> list[Delivery]:
        """Wait up to ``timeout`` s for a message; return it and any already waiting.

        Returns at most ``limit`` deliveries, and ``[]`` when nothing arrived in time.
        """
        ...

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Tell the broker these are done; they are never delivered again."""
        ...

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        """Give these back: the broker delivers them again (at the latest after reconnect)."""
        ...

    def batch_key(self, deliveries: Sequence[Delivery]) -> str:
        """An id for exactly these messages that a redelivery of them reproduces."""
        ...

    async def close(self) -> None:
        """Disconnect; never raises."""
        ...


def safe_text(text: str) -> str:
    """``text`` with known secrets and any password inside a URL masked."""
    return REDACTOR(_USERINFO.sub(rf"\g<scheme>\g<user>:{MASK}@", text))


def describe(exc: BaseException) -> str:
    """A one-line, secret-free description of a library exception."""
    text = str(exc).strip() or type(exc).__name__
    return safe_text(" ".join(text.split()))


def digest(parts: Iterable[str | bytes]) -> str:
    """A stable hex digest of several strings, unambiguous about where each one ends."""
    sha = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        sha.update(len(data).to_bytes(8, "big"))
        sha.update(data)
    return sha.hexdigest()[:32]


def safe_name(text: str) -> str:
    """``text`` reduced to characters every broker accepts in a durable/group/client name."""
    return _NAME_UNSAFE.sub("_", text)


def setting(connection: Mapping[str, Any], key: str, broker: str) -> str:
    """A required string setting of a connection, or a ConfigError naming it."""
    value = connection.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"a {broker} connection needs '{key}' (for example "
                          f"{key}: {_EXAMPLES.get(broker, '...')})", problems=[])
    return value


_EXAMPLES = {
    "nats": "nats://127.0.0.1:4222",
    "mqtt": "mqtt://127.0.0.1:1883",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "redis": "redis://127.0.0.1:6379/0",
}


@contextmanager
def broker_errors(where: str, *errors: type[BaseException]) -> Iterator[None]:
    """Translate the client library's ``errors`` into TransientSourceError.

    ``where`` names broker and subject (never a URL with credentials), so the message
    says what to check: "nats 127.0.0.1:4222 subject orders: connection refused".
    """
    caught: tuple[type[BaseException], ...] = (OSError, TimeoutError, *errors)
    try:
        yield
    except caught as exc:
        raise TransientSourceError(f"{where}: {describe(exc)}", source=where) from exc


def seq_range_key(prefix: str, ids: Sequence[int]) -> str:
    """``prefix:first-last`` for a contiguous run of sequence numbers, else with a digest."""
    low, high = min(ids), max(ids)
    key = f"{prefix}:{low}-{high}"
    if len(ids) != high - low + 1 or len(set(ids)) != len(ids):
        key += ":" + digest(str(i) for i in ids)
    return key


def endpoint(url: str) -> str:
    """``host:port`` of a broker URL, the part of it that is safe to show."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return safe_text(url)


def raise_if_cancelled() -> None:
    """Honour a cancellation that was swallowed on the way.

    Python 3.11's ``asyncio.wait_for`` (used inside redis-py, aiomqtt and here) returns the
    result instead of raising when the awaited thing completes just as the task is
    cancelled; the task still counts the request, so a loop that checks this stops anyway
    instead of running on after the server asked it to stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
