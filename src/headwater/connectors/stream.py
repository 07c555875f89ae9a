"""Stream sources: a micro-batch of broker messages, held unacknowledged until the commit.

:class:`BrokerSession` runs one broker consumer on its own event-loop thread, so the
connection (and with it the right to acknowledge what was received) outlives the source
step and stays open until the run has committed. :func:`open_session` connects with
backoff; :meth:`BrokerSession.fetch` takes up to ``max_messages`` (waiting at most
``max_wait`` for them); :func:`to_table` turns the messages into Arrow (JSON objects into
columns, nested values kept; text or bytes into a ``payload`` column; plus ``_subject``,
``_id``, ``_published_at``, ``_received_at``) and malformed ones into rejected rows.

This module never acknowledges by itself and never imports the engine or the steps
(beyond the rejected-row schema): the caller decides when the commit has happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import pyarrow as pa

from headwater.config.secrets import REDACTOR
from headwater.connectors.streams.base import BrokerAdapter
from headwater.exceptions import ConfigError, HeadwaterError, TransientSourceError
from headwater.steps.base import REJECTED_COLUMNS
from headwater.triggers.brokers.base import ConsumerSpec, Delivery, describe

T = TypeVar("T")

BROKERS: dict[str, tuple[str, str]] = {
    "nats": ("headwater.connectors.streams.nats", "nats-py"),
    "redis": ("headwater.connectors.streams.redis", "redis"),
    "rabbitmq": ("headwater.connectors.streams.rabbitmq", "aio-pika"),
    "amqp": ("headwater.connectors.streams.rabbitmq", "aio-pika"),
    "mqtt": ("headwater.connectors.streams.mqtt", "aiomqtt"),
}
"""Connection ``type`` → (the broker module, the pip package its client comes from)."""

CONNECT_ATTEMPTS = 4
CONNECT_BACKOFF_S = 0.5
IDLE_S = 0.3
"""Once messages flow, a batch ends when the broker has had nothing more for this long
(unless it says more are waiting: a busy machine can be slower than this)."""
CHUNK = 5000
"""Messages asked for per receive: large enough to amortise a round trip."""
_CALL_TIMEOUT_S = 60.0
METADATA = ("_subject", "_id", "_published_at", "_received_at")


def broker_adapter(connection: Mapping[str, Any], spec: ConsumerSpec,
                   stream: str | None) -> BrokerAdapter:
    """The adapter for a connection's ``type``; a ConfigError if it carries no messages
    or its client package is missing."""
    kind = str(connection.get("type", ""))
    try:
        module_name, package = BROKERS[kind]
    except KeyError:
        raise ConfigError(f"connection type {kind!r} cannot be a stream source (use one of "
                          f"{', '.join(sorted(BROKERS))})", problems=[]) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"a {kind} stream source needs the {package!r} package "
                          f"(pip install 'headwater[brokers]'): {exc}", problems=[]) from exc
    adapter: BrokerAdapter = module.open_broker(connection, spec, stream)
    return adapter


class BrokerSession:
    """A consumer living on a private event-loop thread until :meth:`close`."""

    def __init__(self, adapter: BrokerAdapter, connection_name: str) -> None:
        self.adapter = adapter
        self.name = connection_name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="hw-stream")
        self._thread.start()
        self._closed = False

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = _CALL_TIMEOUT_S) -> T:
        """Run ``coro`` on the session's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def connect(self, attempts: int = CONNECT_ATTEMPTS) -> None:
        """Connect, retrying with exponential backoff; then a TransientSourceError naming
        the connection, the broker and the cause (secrets masked)."""
        cause = ""
        for number in range(1, attempts + 1):
            try:
                self.call(self.adapter.consumer.connect())
                return
            except HeadwaterError as exc:
                cause = exc.message
            except Exception as exc:  # noqa: BLE001 - an untranslated client error is an outage
                cause = describe(exc)
            self.call(self.adapter.consumer.close())
            if number < attempts:
                time.sleep(CONNECT_BACKOFF_S * 2 ** (number - 1))
        raise TransientSourceError(REDACTOR(
            f"connection {self.name!r} ({self.adapter.where}) unreachable after {attempts} "
            f"attempts: {cause}"), source=self.name)

    def fetch(self, max_messages: int, max_wait: float) -> list[Delivery]:
        """Up to ``max_messages``: wait at most ``max_wait`` for the first, then take what
        keeps coming until the broker is idle for ``IDLE_S`` or ``max_wait`` is over."""
        return self.call(self._fetch(max_messages, max_wait), timeout=max_wait + _CALL_TIMEOUT_S)

    async def _fetch(self, max_messages: int, max_wait: float) -> list[Delivery]:
        consumer = self.adapter.consumer
        deadline = time.monotonic() + max_wait
        got = await consumer.receive(min(CHUNK, max_messages), max_wait)
        while got and len(got) < max_messages:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = await consumer.receive(min(CHUNK, max_messages - len(got)),
                                          min(IDLE_S, left))
            if not more and not self.adapter.more_pending(got[-1]):
                break
            got += more
        return got

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            self.call(self.adapter.consumer.ack(deliveries))

    def nack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            self.call(self.adapter.consumer.nack(deliveries))

    def close(self) -> None:
        """Disconnect and stop the loop thread; safe to call twice, never raises."""
        if self._closed:
            return
        self._closed = True
        # closing a broken link may fail; there is nothing left to do then
        with contextlib.suppress(Exception):
            self.call(self.adapter.consumer.close(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


def open_session(adapter: BrokerAdapter, connection_name: str) -> BrokerSession:
    """A connected session (the thread is stopped again if connecting fails)."""
    session = BrokerSession(adapter, connection_name)
    try:
        session.connect()
    except BaseException:
        session.close()
        raise
    return session


# --------------------------------------------------------------------------- to Arrow


@dataclass
class Converted:
    """Messages as a table plus the malformed ones as rejected rows."""

    table: pa.Table
    rejected: pa.Table | None = None
    errors: list[str] = field(default_factory=list)


def to_table(deliveries: Sequence[Delivery], fmt: str, *, run_id: str, step_id: str,
             source: str) -> Converted:
    """``deliveries`` as Arrow in ``fmt`` (json, text, bytes); see the module docstring."""
    received = datetime.now(tz=UTC)
    rows: list[Any] = []
    kept: list[Delivery] = []
    bad: list[tuple[Delivery, str]] = []
    for delivery in deliveries:
        try:
            rows.append(_decode(delivery, fmt))
            kept.append(delivery)
        except ValueError as exc:
            bad.append((delivery, str(exc)))
    columns = {**_payload_columns(rows, fmt), **_metadata(kept, received)}
    table = pa.table(columns)
    rejected = _rejected(bad, run_id, step_id, source) if bad else None
    return Converted(table=table, rejected=rejected, errors=[error for _, error in bad])


def _decode(delivery: Delivery, fmt: str) -> Any:
    """One message's row (json: a dict), or its payload (text: str, bytes: bytes)."""
    if delivery.fields is not None:  # a Redis entry with several fields
        values = {k: v.decode("utf-8", "replace") for k, v in delivery.fields.items()}
        if fmt == "json":
            return values
        text = json.dumps(values, sort_keys=True)
        return text if fmt == "text" else text.encode()
    if fmt == "bytes":
        return delivery.body
    try:
        text = delivery.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text: {exc}") from None
    if fmt == "text":
        return text
    try:
        value = _JSON.decode(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(parse_constant=_no_constant)
"""One decoder for every message (``json.loads`` with an option builds one per call)."""


def _payload_columns(rows: list[Any], fmt: str) -> dict[str, pa.Array]:
    """The payload as columns; metadata columns added later win over same-named keys."""
    if fmt == "text":
        return {"payload": pa.array(rows, type=pa.string())}
    if fmt == "bytes":
        return {"payload": pa.array(rows, type=pa.binary())}
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return {name: _column([row.get(name) for row in rows]) for name in names
            if name not in METADATA}


def _column(values: list[Any]) -> pa.Array:
    """Values of one JSON key as Arrow (nested objects as structs, arrays as lists); a key
    whose shapes disagree across messages becomes JSON text rather than failing."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else json.dumps(v, sort_keys=True)
                         for v in values], type=pa.string())


def _metadata(kept: Sequence[Delivery], received: datetime) -> dict[str, pa.Array]:
    stamp = pa.timestamp("us", tz="UTC")
    return {
        "_subject": pa.array([d.subject for d in kept], pa.string()),
        "_id": pa.array([d.message_id for d in kept], pa.string()),
        "_published_at": pa.array([d.at for d in kept], stamp),
        "_received_at": pa.array([received] * len(kept), stamp),
    }


def _rejected(bad: Sequence[tuple[Delivery, str]], run_id: str, step_id: str,
              source: str) -> pa.Table:
    rows = [{"_run_id": run_id, "_step": step_id,
             "_source": f"{source} message {delivery.message_id}", "_error": error,
             "_row": json.dumps(_raw(delivery), ensure_ascii=False)}
            for delivery, error in bad]
    return pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string())
                                                        for c in REJECTED_COLUMNS]))


def _raw(delivery: Delivery) -> dict[str, Any]:
    """The message as received: text when it is UTF-8, else base64."""
    try:
        payload: dict[str, Any] = {"payload": delivery.body.decode("utf-8")}
    except UnicodeDecodeError:
        payload = {"payload_base64": base64.b64encode(delivery.body).decode("ascii")}
    return {"subject": delivery.subject, "id": delivery.message_id, **payload}
