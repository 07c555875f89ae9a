"""Stream sources against the real brokers on loopback: NATS JetStream, Redis streams,
RabbitMQ and Mosquitto.

What every broker must show: a run ingests a micro-batch into a dataset; messages are
acknowledged only after the commit, so a failing later step leaves them with the broker
and the next run takes them again, each landing exactly once; malformed JSON lands in
``<pipeline>__rejected`` with its raw payload; a broker that is down fails the run naming
the connection and the cause, without a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import headwater as hw
from tests.conftest import ProjectFactory
from tests.test_trigger_messages import BROKER_LIST, Broker

pytestmark = pytest.mark.services

KEYS = {"nats": "subject", "mqtt": "topic", "rabbitmq": "queue", "redis": "stream"}


@dataclass
class StreamCase:
    """One broker, one unique subject/queue/topic/stream and a project reading it."""

    broker: Broker
    target: str
    consumer: str
    root: Path

    def publish(self, bodies: list[bytes]) -> None:
        asyncio.run(self.broker.publish(self.target, bodies))

    def publish_json(self, values: list[dict[str, Any]]) -> None:
        self.publish([json.dumps(v).encode() for v in values])


def _pipeline(case_broker: Broker, target: str, consumer: str, extra_steps: str = "",
              fmt: str = "json", max_messages: int = 1000) -> str:
    key = KEYS[case_broker.type]
    return f"""
        name: events
        steps:
          - id: raw
            source: {{type: stream, connection: bus, {key}: "{target}", format: {fmt},
                      max_messages: {max_messages}, max_wait: 1s, consumer: {consumer}}}
        {extra_steps}
          - id: publish
            publish: {{input: raw, dataset: events}}
    """


def _settings(broker: Broker, url: str | None = None) -> str:
    extra = "    ack_wait: 2s\n" if broker.type == "nats" else ""
    return f"connections:\n  bus:\n    type: {broker.type}\n    url: \"{url or broker.url()}\"\n" \
        + extra


@pytest.fixture(params=BROKER_LIST, ids=[b.type for b in BROKER_LIST])
def case(request: pytest.FixtureRequest, make_project: ProjectFactory) -> Iterator[StreamCase]:
    broker: Broker = request.param
    target = broker.subject()
    consumer = f"hwsrc_{uuid.uuid4().hex[:12]}"
    if broker.type == "nats":
        asyncio.run(_nats_stream(target))
    root = make_project({"events": _pipeline(broker, target, consumer)},
                        settings=_settings(broker))
    if broker.type in ("mqtt", "rabbitmq"):
        # these brokers keep messages only for a subscription/queue that exists: a first
        # empty run creates it, as a deployed pipeline's first run would
        with hw.Project(root) as project:
            assert project.run("events").ok
    yield StreamCase(broker, target, consumer, root)
    with contextlib.suppress(Exception):
        asyncio.run(broker.cleanup_fn(broker.url(), target, consumer))


async def _nats_stream(subject: str) -> None:
    import nats

    nc = await nats.connect("nats://127.0.0.1:4222")
    try:
        await nc.jetstream().add_stream(name="HWT_" + subject.replace(".", "_"),
                                        subjects=[subject])
    finally:
        await nc.close()


def _rows(project: hw.Project, name: str = "events") -> list[dict[str, Any]]:
    return project.dataset(name).to_arrow().to_pylist()


def test_run_ingests_a_micro_batch(case: StreamCase) -> None:
    """JSON messages become columns (nested values kept) plus metadata columns; a second
    run with nothing new adds nothing."""
    case.publish_json([{"id": i, "tags": {"a": i}} for i in range(5)])
    with hw.Project(case.root) as project:
        run = project.run("events")
        assert run.ok, run.error
        rows = _rows(project)
        assert [0, 1, 2, 3, 4] == sorted(r["id"] for r in rows)
        assert {"a": 3} == next(r["tags"] for r in rows if r["id"] == 3)
        assert {case.target} == {r["_subject"] for r in rows}
        assert all(r["_received_at"] is not None and r["_id"] for r in rows)
        assert project.run("events").ok
        assert 5 == len(_rows(project))


GATE = """  - id: gate
            command: test ! -e fail
            needs: [raw]
"""


def _with_gate(case: StreamCase) -> None:
    text = _pipeline(case.broker, case.target, case.consumer, extra_steps=GATE)
    text = text.replace("publish: {input: raw", "needs: [gate]\n            publish: {input: raw")
    (case.root / "pipelines" / "events.yaml").write_text(
        __import__("textwrap").dedent(text).lstrip("\n"), encoding="utf-8")


def test_failing_later_step_leaves_messages_for_the_next_run(case: StreamCase) -> None:
    """A step after the source fails: nothing is acknowledged, so the next run takes the
    same messages again, and each lands exactly once."""
    _with_gate(case)
    (case.root / "fail").write_text("")
    case.publish_json([{"id": i} for i in range(6)])
    with hw.Project(case.root) as project:
        failed = project.run("events")
        assert "failed" == failed.status
        assert "gate" in (failed.error or "")
        (case.root / "fail").unlink()
        run = project.run("events")
        assert run.ok, run.error
        assert [0, 1, 2, 3, 4, 5] == sorted(r["id"] for r in _rows(project))
        assert project.run("events").ok
        assert 6 == len(_rows(project))


def test_malformed_messages_are_quarantined_with_raw_payload(case: StreamCase) -> None:
    """Bad JSON goes to ``events__rejected`` with its raw payload and the reason; the good
    messages are published; nothing is redelivered afterwards."""
    case.publish([b'{"id": 1}', b'{"id": 2,', b'{"id": 3}'])
    with hw.Project(case.root) as project:
        run = project.run("events")
        assert run.ok, run.error
        assert [1, 3] == sorted(r["id"] for r in _rows(project))
        rejected = _rows(project, "events__rejected")
        assert 1 == len(rejected)
        assert '{"id": 2,' == json.loads(rejected[0]["_row"])["payload"]
        assert "malformed JSON" in rejected[0]["_error"]
        assert "raw" == rejected[0]["_step"]
        assert project.run("events").ok
        assert 1 == len(_rows(project, "events__rejected"))


def test_kill_9_between_commit_and_ack_lands_each_message_once(case: StreamCase) -> None:
    """A ``headwater run`` killed (SIGKILL) after its commit and before acknowledging:
    the broker redelivers, and the next run drops the redelivered messages as already
    committed (and acknowledges them): every message is in the dataset exactly once."""
    case.publish_json([{"id": i} for i in range(8)])
    proc = subprocess.run([sys.executable, "-m", "headwater.cli.main", "run", "events"],
                          cwd=case.root, env={**os.environ, "HEADWATER_CRASH_AT": "after_commit"},
                          capture_output=True, text=True, timeout=120)
    assert -signal.SIGKILL == proc.returncode, proc.stderr[-2000:]
    with hw.Project(case.root) as project:
        assert list(range(8)) == sorted(r["id"] for r in _rows(project))
        case.publish_json([{"id": 8}])
        if case.broker.type == "nats":
            import time

            time.sleep(2.5)  # ack_wait: JetStream redelivers after it expires
        run = project.run("events")
        assert run.ok, run.error
        assert list(range(9)) == sorted(r["id"] for r in _rows(project))
        assert project.run("events").ok
        assert list(range(9)) == sorted(r["id"] for r in _rows(project))
        raw = next(st for st in project.get_run(run.id).steps if st.step_id == "raw")
        assert 8 == raw.info["redelivered_dropped"]


@pytest.mark.parametrize("broker", [b for b in BROKER_LIST if b.type in ("nats", "rabbitmq")],
                         ids=["nats", "rabbitmq"])
def test_broker_down_fails_the_run_naming_connection_without_secret(
        broker: Broker, make_project: ProjectFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens on the port: the run retries, then fails naming the step, the
    connection and the cause; the password in the URL is never shown."""
    monkeypatch.setenv("BUS_PASSWORD", "s3cr3t-pw")
    url = f"{broker.scheme}://guest:${{env:BUS_PASSWORD}}@127.0.0.1:1/"
    root = make_project({"events": _pipeline(broker, broker.subject(), "hwdown")},
                        settings=_settings(broker, url))
    with hw.Project(root) as project:
        run = project.run("events")
        assert "failed" == run.status
        error = run.error or ""
        assert "'raw'" in error and "'bus'" in error and "unreachable" in error
        assert "s3cr3t-pw" not in error


@dataclass
class PrivateNats:
    """A nats-server of this test's own (JetStream on disk), so it can be restarted."""

    store: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import socket
        import time

        self.proc = subprocess.Popen(["nats-server", "-js", "-sd", str(self.store), "-a",
                                      "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                time.sleep(0.3)  # JetStream becomes ready just after the port opens
                return
            time.sleep(0.05)
        raise AssertionError("private nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[PrivateNats]:
    import shutil
    import socket

    if shutil.which("nats-server") is None:
        pytest.skip("nats-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = PrivateNats(tmp_path / "js", port)
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_broker_restarted_mid_batch_loses_and_duplicates_nothing(
        private_nats: PrivateNats, make_project: ProjectFactory) -> None:
    """The broker restarts while the run holds its batch unacknowledged: the commit still
    happens, the acknowledgement fails (a warning, the run succeeds), the broker
    redelivers after ack_wait, and the next run drops what was committed: every message
    exactly once, none lost."""
    import time

    import nats

    url = f"nats://127.0.0.1:{private_nats.port}"
    subject = f"hwrestart.{uuid.uuid4().hex}"

    async def publish(ids: range) -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            with contextlib.suppress(Exception):
                await js.add_stream(name="RESTART", subjects=[subject])
            for i in ids:
                await js.publish(subject, json.dumps({"id": i}).encode())
        finally:
            await nc.close()

    asyncio.run(publish(range(10)))
    broker = next(b for b in BROKER_LIST if b.type == "nats")
    root = make_project({"events": _pipeline(broker, subject, "restart", extra_steps=(
        "  - id: gate\n            command: sleep 4\n            needs: [raw]\n"))},
        settings=_settings(broker, url))
    proc = subprocess.Popen([sys.executable, "-m", "headwater.cli.main", "run", "events"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with hw.Project(root) as project:
        deadline = time.time() + 60
        while time.time() < deadline:
            runs = project.runs("events")
            if runs and any(s.step_id == "gate" for s in project.get_run(runs[0].id).steps):
                break
            time.sleep(0.1)
        private_nats.stop()
        private_nats.start()
        _, stderr = proc.communicate(timeout=120)
        assert 0 == proc.returncode, stderr.decode()[-2000:]
        first = project.runs("events")[0]
        assert any("after the commit" in e["message"] for e in project.logs(first.id))
        assert list(range(10)) == sorted(r["id"] for r in _rows(project))
        asyncio.run(publish(range(10, 12)))
        time.sleep(2.5)  # ack_wait: then JetStream redelivers the unacknowledged batch
        run = project.run("events")
        assert run.ok, run.error
        assert list(range(12)) == sorted(r["id"] for r in _rows(project))
        raw = next(st for st in project.get_run(run.id).steps if st.step_id == "raw")
        assert 10 == raw.info["redelivered_dropped"]


@pytest.mark.parametrize("broker", [b for b in BROKER_LIST if b.type == "redis"], ids=["redis"])
def test_formats_and_odd_json_shapes(broker: Broker, make_project: ProjectFactory) -> None:
    """A key that is always null, a key whose type varies (kept as JSON text) and non-object
    JSON (rejected) publish cleanly; ``format: text`` keeps each payload as text."""
    target = broker.subject()
    root = make_project({"events": _pipeline(broker, target, "hwshapes"),
                         "texts": _pipeline(broker, target, "hwtexts", fmt="text").replace(
                             "name: events", "name: texts").replace("dataset: events",
                                                                    "dataset: texts")},
                        settings=_settings(broker))
    bodies = [b'{"id": 1, "gone": null, "v": 1}', b'{"id": 2, "gone": null, "v": "two"}',
              b"[1, 2]", b'"just a string"']
    asyncio.run(broker.publish(target, bodies))
    try:
        with hw.Project(root) as project:
            run = project.run("events")
            assert run.ok, run.error
            rows = sorted(_rows(project), key=lambda r: r["id"])
            assert ["1", '"two"'] == [r["v"] for r in rows]
            assert 2 == len(_rows(project, "events__rejected"))
            assert project.run("texts").ok
            assert [b.decode() for b in bodies] == [r["payload"] for r in _rows(project,
                                                                                "texts")]
    finally:
        asyncio.run(broker.cleanup_fn(broker.url(), target, ""))


TWO_PUBLISHES = """
name: events
steps:
  - id: raw
    source: {{type: stream, connection: bus, {key}: "{target}", format: json,
              max_messages: 1000, max_wait: 1s, consumer: {consumer}}}
  - id: log
    publish: {{input: raw, dataset: events}}
  - id: latest
    publish: {{input: raw, dataset: events_latest, mode: merge, key: [id]}}
    needs: [log]
"""


def test_kill_between_two_publishes_gives_both_datasets_the_same_batch(
        case: StreamCase) -> None:
    """A run killed after its first publish committed and before its second: the next
    ``headwater run`` finishes it first with the batch it had spilled (a re-read would
    take new messages the committed publish never saw), then takes what arrived since.
    Every message lands in both datasets exactly once."""
    (case.root / "pipelines" / "events.yaml").write_text(TWO_PUBLISHES.format(
        key=KEYS[case.broker.type], target=case.target, consumer=case.consumer))
    case.publish_json([{"id": i} for i in range(4)])
    proc = subprocess.run([sys.executable, "-m", "headwater.cli.main", "run", "events"],
                          cwd=case.root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HEADWATER_CRASH_AT": "publish:between-commits"})
    assert -signal.SIGKILL == proc.returncode, proc.stderr[-2000:]
    case.publish_json([{"id": i} for i in range(4, 6)])  # arrives before the recovery
    if case.broker.type == "nats":
        import time

        time.sleep(2.5)  # ack_wait: JetStream redelivers the dead run's batch after it
    with hw.Project(case.root) as project:
        assert list(range(4)) == sorted(r["id"] for r in _rows(project))
        with pytest.raises(hw.NotFoundError):
            project.dataset("events_latest")
        for _ in range(3):  # the resumed run, then whatever is redelivered or new
            run = project.run("events")
            assert run.ok, (_, run.error, [r.status for r in project.runs("events")])
        assert list(range(6)) == sorted(r["id"] for r in _rows(project))
        assert list(range(6)) == sorted(r["id"] for r in _rows(project, "events_latest"))
        statuses = [r.status for r in project.runs("events")]
        assert "failed" not in statuses, statuses
