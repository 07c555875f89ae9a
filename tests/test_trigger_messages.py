"""Message triggers against the real brokers on loopback: NATS JetStream, Mosquitto,
RabbitMQ and Redis streams.

Every broker runs the same scenarios: a message fires once with its payload; a failed emit
leaves the message unacknowledged so it comes back with the same dedupe key; a burst
becomes a few batched fires covering each message exactly once; malformed payloads are
data; a broker that is down, or goes away and comes back, only shows in ``status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiomqtt
import nats
import pytest
import redis.asyncio

from headwater.config.models import BatchConfig, MessageTriggerConfig
from headwater.exceptions import ConfigError
from headwater.triggers.base import Backoff, Fire
from headwater.triggers.brokers import BROKERS, ConsumerSpec, Delivery, consumer_for
from headwater.triggers.brokers.base import safe_text
from headwater.triggers.messages import (
    MessageTrigger,
    decode_delivery,
    decode_payload,
    message_trigger,
)

WAIT_S = 15.0

# --------------------------------------------------------------------------- brokers


async def _nats_publish(url: str, subject: str, bodies: list[bytes]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for body in bodies:
            await js.publish(subject, body)
    finally:
        await nc.close()


async def _nats_cleanup(url: str, subject: str, name: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        with contextlib.suppress(Exception):
            await js.delete_stream(await js.find_stream_name_by_subject(subject))
    finally:
        await nc.close()


async def _mqtt_publish(url: str, subject: str, bodies: list[bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", 1883) as client:
        for body in bodies:
            await client.publish(subject, body, qos=1)


async def _mqtt_cleanup(url: str, subject: str, name: str) -> None:
    # connecting with the same client id and a clean session drops the stored session
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=name, clean_session=True):
        pass


async def _rabbit_publish(url: str, subject: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for body in bodies:
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=subject)


async def _rabbit_cleanup(url: str, subject: str, name: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(subject, if_unused=False, if_empty=False)


async def _redis_publish(url: str, subject: str, bodies: list[bytes]) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        for body in bodies:
            await client.xadd(subject, {"payload": body})
    finally:
        await client.aclose()


async def _redis_cleanup(url: str, subject: str, name: str) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.delete(subject)
    finally:
        await client.aclose()


Publish = Callable[[str, str, list[bytes]], Awaitable[None]]
Cleanup = Callable[[str, str, str], Awaitable[None]]


@dataclass(frozen=True)
class Broker:
    """One real broker: how to reach it, publish to it and clean up after a test."""

    type: str
    scheme: str
    port: int
    separator: str
    publish_fn: Publish
    cleanup_fn: Cleanup
    max_burst_fires: int
    """Mosquitto keeps at most 20 QoS 1 messages in flight per client, so a burst there
    arrives 20 at a time; the others hand over the whole burst at once."""
    credentials: str = ""

    def url(self, port: int | None = None, credentials: str | None = None) -> str:
        userinfo = self.credentials if credentials is None else credentials
        return f"{self.scheme}://{userinfo}127.0.0.1:{port or self.port}/"

    def connection(self, port: int | None = None, credentials: str | None = None
                   ) -> dict[str, Any]:
        return {"type": self.type, "url": self.url(port, credentials)}

    def subject(self) -> str:
        return self.separator.join(["hwtest", uuid.uuid4().hex])

    async def publish(self, subject: str, bodies: list[bytes]) -> None:
        await self.publish_fn(self.url(), subject, bodies)


BROKER_LIST = [
    Broker("nats", "nats", 4222, ".", _nats_publish, _nats_cleanup, 3),
    Broker("mqtt", "mqtt", 1883, "/", _mqtt_publish, _mqtt_cleanup, 15),
    Broker("rabbitmq", "amqp", 5672, ".", _rabbit_publish, _rabbit_cleanup, 3,
           credentials="guest:guest@"),
    Broker("redis", "redis", 6379, ":", _redis_publish, _redis_cleanup, 3),
]


@pytest.fixture(params=BROKER_LIST, ids=[b.type for b in BROKER_LIST])
def broker(request: pytest.FixtureRequest) -> Broker:
    value: Broker = request.param
    return value


# --------------------------------------------------------------------------- harness


@dataclass
class Recorder:
    """The server's emit: records every attempt; the first ``fail`` attempts raise."""

    fail: int = 0
    attempts: list[Fire] = field(default_factory=list)
    fires: list[Fire] = field(default_factory=list)

    async def __call__(self, fire: Fire) -> None:
        self.attempts.append(fire)
        if len(self.attempts) <= self.fail:
            raise RuntimeError("the store is unavailable")
        self.fires.append(fire)

    @property
    def messages(self) -> list[Any]:
        return [m for f in self.fires for m in f.info.get("messages", [f.info.get("message")])]


async def until(check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Wait until ``check()`` holds, failing the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


@dataclass
class Case:
    """One trigger under test, with unique subject and pipeline names."""

    broker: Broker
    subject: str = ""
    pipeline: str = ""
    batch: BatchConfig | None = None

    def __post_init__(self) -> None:
        self.subject = self.subject or self.broker.subject()
        self.pipeline = self.pipeline or f"p{uuid.uuid4().hex[:12]}"

    def trigger(self, connection: dict[str, Any] | None = None) -> MessageTrigger:
        config = MessageTriggerConfig(connection="bus", subject=self.subject, batch=self.batch)
        return MessageTrigger(self.pipeline, 0, config, connection or self.broker.connection(),
                              backoff=Backoff(first=0.05, cap=0.2))

    async def cleanup(self) -> None:
        await self.broker.cleanup_fn(self.broker.url(), self.subject,
                                     f"headwater-{self.pipeline}-0")


@contextlib.asynccontextmanager
async def running(trigger: MessageTrigger, emit: Recorder, ready: bool = True
                  ) -> AsyncIterator[asyncio.Task[None]]:
    """Run the trigger as the server would; cancel it on exit."""
    task = asyncio.create_task(trigger.run(emit))
    try:
        if ready:
            await asyncio.wait_for(trigger.ready.wait(), WAIT_S)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def scenario(case: Case, body: Callable[[], Awaitable[None]]) -> None:
    """Run an async scenario and always clean the broker up afterwards."""

    async def main() -> None:
        try:
            await body()
        finally:
            await case.cleanup()

    asyncio.run(main())


class Proxy:
    """A TCP relay to a broker that can be cut and restored, to simulate an outage."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = _free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.transport.abort()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- scenarios


@pytest.mark.services
def test_message_fires_once_with_its_payload(broker: Broker) -> None:
    """A JSON message published to the subject becomes one Fire carrying the decoded
    payload, and nothing fires after it."""
    case = Case(broker)
    recorder = Recorder()

    async def body() -> None:
        trigger = case.trigger()
        async with running(trigger, recorder):
            await broker.publish(case.subject, [b'{"order_id": 7, "amount": 9.5}'])
            await until(lambda: len(recorder.fires) == 1)
            await asyncio.sleep(0.5)
        fire = recorder.fires[0]
        assert 1 == len(recorder.fires)
        assert {"order_id": 7, "amount": 9.5} == fire.info["message"]
        assert "json" == fire.info["encoding"]
        assert (case.pipeline, 0, "message") == (fire.pipeline, fire.trigger_index, fire.kind)
        assert fire.dedupe_key.startswith(f"message:{case.pipeline}:0:{broker.type}:")
        assert trigger.status.last_fired_at is not None
        assert trigger.status.error is None

    scenario(case, body)


@pytest.mark.services
def test_failed_emit_redelivers_the_message(broker: Broker) -> None:
    """When emit raises (the run was not queued) the message is not acknowledged: it is
    delivered again with the same dedupe key, and once emitted it never comes back."""
    case = Case(broker)
    recorder = Recorder(fail=1)

    async def body() -> None:
        trigger = case.trigger()
        async with running(trigger, recorder):
            await broker.publish(case.subject, [b"refresh"])
            await until(lambda: len(recorder.attempts) == 1)
            await until(lambda: trigger.status.error is not None)
            assert "the store is unavailable" in (trigger.status.error or "")
            await until(lambda: len(recorder.fires) == 1)
            await until(lambda: trigger.status.error is None)
        first, second = recorder.attempts
        assert first.dedupe_key == second.dedupe_key
        assert "refresh" == second.info["message"]
        # acknowledged now: a new trigger process on the same durable state gets nothing
        again = Recorder()
        async with running(case.trigger(), again):
            await asyncio.sleep(1.5)
        assert [] == again.attempts

    scenario(case, body)


@pytest.mark.services
def test_burst_is_batched_into_few_fires_covering_each_message_once(broker: Broker) -> None:
    """200 messages published while the trigger is down arrive when it starts, batched into
    a few fires that together hold every message exactly once."""
    case = Case(broker, batch=BatchConfig(max=1000, window=0.5))
    recorder = Recorder()

    async def body() -> None:
        async with running(case.trigger(), Recorder()):
            pass  # creates the durable consumer / group / queue / session
        await broker.publish(case.subject, [json.dumps({"n": n}).encode() for n in range(200)])
        async with running(case.trigger(), recorder):
            await until(lambda: len(recorder.messages) >= 200)
            await asyncio.sleep(0.7)
        assert list(range(200)) == sorted(m["n"] for m in recorder.messages)
        assert len(recorder.fires) <= broker.max_burst_fires
        assert len(recorder.fires) == len({f.dedupe_key for f in recorder.fires})
        for fire in recorder.fires:
            assert len(fire.info["messages"]) == fire.info["count"]
            assert ["json"] * fire.info["count"] == fire.info["encodings"]

    scenario(case, body)


@pytest.mark.services
def test_malformed_payloads_are_data_not_crashes(broker: Broker) -> None:
    """Invalid UTF-8 becomes base64, broken JSON stays text, an empty body is empty text,
    and the trigger keeps firing for the valid message after them."""
    case = Case(broker)
    recorder = Recorder()

    async def body() -> None:
        async with running(case.trigger(), recorder):
            await broker.publish(case.subject, [b"\xff\xfe\x00bin", b'{"broken": ', b"",
                                                b"NaN", b"[1, 2]"])
            await until(lambda: len(recorder.fires) == 5)
        got = [(f.info["message"], f.info["encoding"]) for f in recorder.fires]
        assert [("//4AYmlu", "base64"), ('{"broken": ', "text"), ("", "text"),
                ("NaN", "text"), ([1, 2], "json")] == got

    scenario(case, body)


@pytest.mark.services
def test_broker_down_at_start_sets_status_error_once(
        broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    """A broker on a closed port: status.error names it (without the password), the
    trigger keeps retrying instead of raising, and the warning is logged once."""
    case = Case(broker)
    recorder = Recorder()
    connection = broker.connection(port=1, credentials="app:s3cret-pw@")

    async def body() -> None:
        trigger = case.trigger(connection)
        with caplog.at_level(logging.WARNING, logger="headwater.triggers"):
            async with running(trigger, recorder, ready=False) as task:
                await until(lambda: trigger.status.error is not None)
                await asyncio.sleep(1.0)  # several retries at the test's short backoff
                assert not task.done()
        error = trigger.status.error or ""
        assert "127.0.0.1:1" in error
        assert "s3cret-pw" not in error
        assert trigger.status.error_at is not None
        warnings = [r for r in caplog.records if case.pipeline in r.getMessage()]
        assert 1 == len(warnings)
        assert [] == recorder.attempts

    asyncio.run(body())


@pytest.mark.services
def test_recovers_after_the_broker_goes_away(broker: Broker) -> None:
    """The link to the broker is cut mid-stream: status.error is set; a message published
    during the outage fires once the broker is reachable again, and the error clears."""
    case = Case(broker)
    recorder = Recorder()
    proxy = Proxy(broker.port)

    async def body() -> None:
        await proxy.start()
        trigger = case.trigger(broker.connection(port=proxy.port))
        try:
            async with running(trigger, recorder):
                await broker.publish(case.subject, [b'"before"'])
                await until(lambda: len(recorder.fires) == 1)
                await proxy.stop()
                await until(lambda: trigger.status.error is not None)
                await broker.publish(case.subject, [b'"during"'])
                await asyncio.sleep(0.3)
                await proxy.start()
                await until(lambda: "during" in recorder.messages)
                await until(lambda: trigger.status.error is None)
        finally:
            await proxy.stop()
        # the cut may come between emit and ack of "before": it is then delivered again
        # under the same dedupe key, which the server drops
        by_key = {f.dedupe_key: f.info["message"] for f in recorder.fires}
        assert ["before", "during"] == sorted(by_key.values())

    scenario(case, body)


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"a": [1, null]}', ({"a": [1, None]}, "json")),
    (b"42", (42, "json")),
    (b"hello", ("hello", "text")),
    ("grüße".encode(), ("grüße", "text")),
    (b"Infinity", ("Infinity", "text")),
    (b"[" * 100_000, ("[" * 100_000, "text")),
    (b"\x80\x81", ("gIE=", "base64")),
])
def test_decode_payload(body: bytes, expected: tuple[Any, str]) -> None:
    """Payloads decode as JSON, else UTF-8 text, else base64; nothing raises, not even
    JSON nested too deep to parse."""
    assert expected == decode_payload(body)


def test_unknown_broker_type_is_a_config_error() -> None:
    """A connection type that carries no messages is refused when the trigger is armed,
    naming the types that work and the closest one."""
    config = MessageTriggerConfig(connection="bus", subject="orders")
    with pytest.raises(ConfigError) as caught:
        message_trigger("orders", 0, config, {"type": "nat", "url": "nats://x"})
    assert "did you mean 'nats'?" in caught.value.message
    assert {"amqp", "mqtt", "nats", "rabbitmq", "redis"} == set(BROKERS)


def test_connection_without_url_is_a_config_error() -> None:
    """A broker connection without ``url`` says which key is missing."""
    with pytest.raises(ConfigError) as caught:
        consumer_for({"type": "redis"}, ConsumerSpec(subject="s", name="n"))
    assert "needs 'url'" in caught.value.message


def test_safe_text_masks_url_passwords() -> None:
    """Error text quoting a broker URL never shows its password."""
    text = "cannot reach amqp://app:pa55word@10.0.0.1:5672/ (and redis://:tok3n@r:6379)"
    assert ("cannot reach amqp://app:***@10.0.0.1:5672/ (and redis://:***@r:6379)"
            == safe_text(text))


def test_decode_delivery_of_a_field_map() -> None:
    """A Redis entry with several fields becomes a dict of decoded fields; a binary field
    is wrapped as ``{"base64": ...}`` so it cannot be mistaken for text."""
    delivery = Delivery(body=b"", message_id="1-0", subject="s", at=datetime.now(UTC),
                        fields={"id": b"7", "name": b"anna", "blob": b"\xff"})
    expected = ({"id": 7, "name": "anna", "blob": {"base64": "/w=="}}, "fields")
    assert expected == decode_delivery(delivery)


def test_public_names_of_the_broker_seam() -> None:
    """The broker package exports exactly its seam, sorted."""
    import headwater.triggers.brokers as brokers

    expected = ["BROKERS", "Consumer", "ConsumerSpec", "Delivery", "consumer_class",
                "consumer_for"]
    assert expected == brokers.__all__
