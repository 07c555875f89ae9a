"""Table-change triggers on the real PostgreSQL (and SQLite): probe changes fire, NOTIFY
fires at once, a failing probe or emit only shows in ``status``, secrets stay masked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from headwater.config.models import TableChangeConfig
from headwater.config.secrets import resolve
from headwater.exceptions import ConfigError
from headwater.triggers.base import Backoff, Fire
from headwater.triggers.table_change import TableChangeTrigger, engine_url, probe_value

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
WAIT_S = 10.0


@dataclass
class Recorder:
    """The server's emit: records every attempt (with its time); the first ``fail`` raise."""

    fail: int = 0
    attempts: list[Fire] = field(default_factory=list)
    fires: list[tuple[float, Fire]] = field(default_factory=list)

    async def __call__(self, fire: Fire) -> None:
        self.attempts.append(fire)
        if len(self.attempts) <= self.fail:
            raise RuntimeError("the store is unavailable")
        self.fires.append((time.monotonic(), fire))


async def until(check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Wait until ``check()`` holds, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(trigger: TableChangeTrigger, emit: Recorder) -> AsyncIterator[asyncio.Task[None]]:
    """Run the trigger as the server would; cancel it on exit."""
    task = asyncio.create_task(trigger.run(emit))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass(frozen=True)
class Table:
    """A throwaway table ``name(id serial, updated_at timestamptz)`` in the test database."""

    name: str

    def execute(self, statement: str, *params: Any) -> None:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL(statement).format(t=sql.Identifier(self.name)), params)

    def touch(self, when: str) -> None:
        self.execute("INSERT INTO {t} (updated_at) VALUES (%s)", when)

    @property
    def probe(self) -> str:
        return f'SELECT max(updated_at) FROM "{self.name}"'


@pytest.fixture
def table() -> Iterator[Table]:
    value = Table(f"hw_tc_{uuid.uuid4().hex[:12]}")
    value.execute("CREATE TABLE {t} (id serial PRIMARY KEY, updated_at timestamptz)")
    value.touch("2024-01-01T00:00:00Z")
    yield value
    value.execute("DROP TABLE IF EXISTS {t}")


def make_trigger(probe: str, *, every: float = 0.2, notify: str | None = None,
                 last_value: Any = None, url: str = PG_URL) -> TableChangeTrigger:
    config = TableChangeConfig(connection="pg", probe=probe, every=every, notify=notify)
    return TableChangeTrigger(f"p{uuid.uuid4().hex[:10]}", 1, config,
                              {"type": "postgres", "url": url}, last_value=last_value,
                              backoff=Backoff(first=0.05, cap=0.2))


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.services
def test_probe_change_fires_with_old_and_new_value(table: Table) -> None:
    """The first probe only records the baseline; a change fires once with old and new
    values, and the trigger then holds the new value for the server to persist."""
    trigger = make_trigger(table.probe)
    recorder = Recorder()

    async def body() -> None:
        async with running(trigger, recorder):
            await until(lambda: trigger.has_baseline)
            await asyncio.sleep(0.5)
            assert [] == recorder.attempts
            table.touch("2024-02-01T00:00:00Z")
            await until(lambda: len(recorder.fires) == 1)
            await asyncio.sleep(0.5)

    asyncio.run(body())
    [(_, fire)] = recorder.fires
    expected = {"old": "2024-01-01T00:00:00+00:00", "new": "2024-02-01T00:00:00+00:00",
                "via": "interval"}
    assert expected == fire.info["probe"]
    assert ("table_change", 1) == (fire.kind, fire.trigger_index)
    assert fire.dedupe_key.startswith(f"table_change:{fire.pipeline}:1:")
    assert "2024-02-01T00:00:00+00:00" == trigger.last_value
    assert trigger.status.error is None


@pytest.mark.services
def test_stored_cursor_is_compared_on_the_first_probe(table: Table) -> None:
    """A value stored by an earlier server run is the baseline: a change that happened
    while no server ran fires on the first probe; an unchanged one does not."""
    changed = make_trigger(table.probe, last_value="2023-12-31T00:00:00+00:00")
    unchanged = make_trigger(table.probe, last_value="2024-01-01T00:00:00+00:00")
    got_changed, got_unchanged = Recorder(), Recorder()

    async def body() -> None:
        async with running(changed, got_changed), running(unchanged, got_unchanged):
            await until(lambda: len(got_changed.fires) == 1)
            await asyncio.sleep(0.5)

    asyncio.run(body())
    assert "2023-12-31T00:00:00+00:00" == got_changed.fires[0][1].info["probe"]["old"]
    assert [] == got_unchanged.attempts


@pytest.mark.services
def test_notify_fires_within_a_second(table: Table) -> None:
    """With ``notify`` a NOTIFY on the channel probes at once: the fire arrives well inside
    a second although the interval is 30 s."""
    channel = f"hw_ch_{uuid.uuid4().hex[:10]}"
    trigger = make_trigger(table.probe, every=30, notify=channel)
    recorder = Recorder()

    async def body() -> None:
        async with running(trigger, recorder):
            await until(lambda: trigger.has_baseline and trigger.listening.is_set())
            await asyncio.sleep(0.3)  # let the probe that follows LISTEN settle
            sent = time.monotonic()
            with psycopg.connect(PG_URL, autocommit=True) as conn, conn.transaction():
                conn.execute(sql.SQL("INSERT INTO {} (updated_at) VALUES (now())")
                             .format(sql.Identifier(table.name)))
                conn.execute("SELECT pg_notify(%s, 'orders changed')", (channel,))
            await until(lambda: len(recorder.fires) == 1, timeout=5)
            latency = recorder.fires[0][0] - sent
            assert latency < 1.0, f"fired {latency:.3f}s after NOTIFY"

    asyncio.run(body())
    probe = recorder.fires[0][1].info["probe"]
    assert ("notify", "orders changed") == (probe["via"], probe["notify_payload"])


@pytest.mark.services
def test_failing_probe_sets_status_error_and_recovers(table: Table) -> None:
    """A probe on a missing table sets status.error to the database's message, keeps
    retrying each interval, and clears once the table exists."""
    missing = f"{table.name}_later"
    trigger = make_trigger(f'SELECT count(*) FROM "{missing}"')
    recorder = Recorder()

    async def body() -> None:
        async with running(trigger, recorder) as task:
            await until(lambda: trigger.status.error is not None)
            error = trigger.status.error or ""
            assert f'relation "{missing}" does not exist' in error
            assert "postgresql 127.0.0.1:5432/test" in error
            await asyncio.sleep(0.5)
            assert not task.done()
            Table(missing).execute("CREATE TABLE {t} (id int)")
            try:
                await until(lambda: trigger.status.error is None)
            finally:
                Table(missing).execute("DROP TABLE {t}")
        assert [] == recorder.attempts
        assert 0 == trigger.last_value

    asyncio.run(body())


@pytest.mark.services
def test_errors_never_show_secrets(table: Table, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    """A database that refuses connections: status.error says so without the URL's
    password; a resolved ``${env:...}`` secret in a database message shows as ***; the
    warning is logged once although the trigger retries."""
    monkeypatch.setenv("HW_TC_SECRET", "tc-secret-value-42")
    secret = resolve("${env:HW_TC_SECRET}")
    down = make_trigger("SELECT 1", notify="ch", url="postgresql://app:pw-s3cret@127.0.0.1:1/db")
    leaky = make_trigger(f'SELECT * FROM "{secret}"')

    async def body() -> None:
        with caplog.at_level(logging.WARNING, logger="headwater.triggers"):
            async with running(down, Recorder()), running(leaky, Recorder()):
                await until(lambda: down.status.error is not None
                            and "LISTEN" in down.status.error)
                await until(lambda: leaky.status.error is not None)
                await asyncio.sleep(1.0)

    asyncio.run(body())
    down_error, leaky_error = down.status.error or "", leaky.status.error or ""
    assert "127.0.0.1" in down_error and "port 1" in down_error
    assert "pw-s3cret" not in down_error + caplog.text
    assert 'relation "***" does not exist' in leaky_error
    assert secret not in leaky_error + caplog.text
    leaky_warnings = [r for r in caplog.records if leaky.pipeline in r.getMessage()]
    assert 1 == len(leaky_warnings)


@pytest.mark.services
def test_failed_emit_fires_the_change_again(table: Table) -> None:
    """When emit raises, the value does not advance: the next probe fires the same change
    again under the same dedupe key, and the error clears once it is queued."""
    trigger = make_trigger(table.probe)
    recorder = Recorder(fail=1)

    async def body() -> None:
        async with running(trigger, recorder):
            await until(lambda: trigger.has_baseline)
            table.touch("2024-03-01T00:00:00Z")
            await until(lambda: trigger.status.error is not None)
            assert "2024-01-01T00:00:00+00:00" == trigger.last_value
            await until(lambda: len(recorder.fires) == 1)
            await until(lambda: trigger.status.error is None)

    asyncio.run(body())
    first, second = recorder.attempts
    assert first.dedupe_key == second.dedupe_key
    assert "2024-03-01T00:00:00+00:00" == trigger.last_value


# --------------------------------------------------------------------------- SQLite, units


def test_sqlite_probe_change_fires(tmp_path: Path) -> None:
    """Any SQLAlchemy URL works: a SQLite table's row count going up fires."""
    import sqlite3

    db = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE t (id INTEGER)")
    config = TableChangeConfig(connection="lite", probe="SELECT count(*), max(id) FROM t",
                               every=0.1)
    trigger = TableChangeTrigger("lite", 0, config, {"type": "sqlite", "url": f"sqlite:///{db}"})
    recorder = Recorder()

    async def body() -> None:
        async with running(trigger, recorder):
            await until(lambda: trigger.has_baseline)
            with contextlib.closing(sqlite3.connect(db)) as conn, conn:
                conn.execute("INSERT INTO t VALUES (5)")
            await until(lambda: len(recorder.fires) == 1)

    asyncio.run(body())
    assert {"old": [0, None], "new": [1, 5], "via": "interval"} == recorder.fires[0][1].info[
        "probe"]


def test_notify_needs_postgres(tmp_path: Path) -> None:
    """``notify`` on a database without LISTEN is refused when the trigger is armed."""
    config = TableChangeConfig(connection="lite", probe="SELECT 1", notify="changes")
    with pytest.raises(ConfigError) as caught:
        TableChangeTrigger("p", 0, config, {"type": "sqlite", "url": "sqlite://"})
    assert "needs a PostgreSQL connection" in caught.value.message


@pytest.mark.parametrize(("url", "driver"), [
    ("postgres://u@h/db", "postgresql+psycopg"),
    ("postgresql://u@h/db", "postgresql+psycopg"),
    ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2"),
    ("mysql://u@h/db", "mysql+pymysql"),
    ("sqlite:///x.db", "sqlite"),
])
def test_engine_url_maps_plain_schemes_to_drivers(url: str, driver: str) -> None:
    """Plain ``postgresql://`` and ``mysql://`` URLs get the drivers headwater ships;
    an explicit driver is kept."""
    assert driver == engine_url({"type": "x", "url": url}).drivername


def test_engine_url_errors_hide_the_password() -> None:
    """A URL SQLAlchemy cannot parse is a ConfigError that does not repeat the password."""
    with pytest.raises(ConfigError) as caught:
        engine_url({"type": "postgres", "url": "postgresql://app:pw-XYZ@host:notaport/db"})
    assert "pw-XYZ" not in caught.value.message


@pytest.mark.parametrize(("row", "expected"), [
    (None, None),
    ((None,), None),
    ((datetime(2024, 5, 1, 12, tzinfo=UTC),), "2024-05-01T12:00:00+00:00"),
    ((Decimal("10.50"), date(2024, 5, 1)), ["10.50", "2024-05-01"]),
    ((float("nan"),), "nan"),
    ((b"\x00\x01",), "AAE="),
])
def test_probe_value_is_json_safe(row: Any, expected: Any) -> None:
    """Probe rows become JSON values, so the value stored by the server compares equal to
    a fresh probe of the same data."""
    assert expected == probe_value(row)
