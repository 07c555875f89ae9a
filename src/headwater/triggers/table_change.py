"""Table-change triggers: fire when a probe query's answer changes.

The probe (``SELECT max(updated_at) FROM orders``) runs every ``every`` seconds through
SQLAlchemy, on any database a connection URL names. Its first row (one value, or a list
when it has several columns) is made JSON-safe so it compares equal to the value the
server stored in ``trigger_state`` and passed back as ``last_value``. Without a stored
value the first probe only records the baseline. A fire carries
``info["probe"] = {"old": ..., "new": ...}``; the server persists ``new`` (also
:attr:`TableChangeTrigger.last_value`) as the next start's ``last_value``.

With ``notify: channel`` on PostgreSQL a second task LISTENs on that channel and wakes the
probe at once on every NOTIFY; the interval probe stays the safety net for a lost
notification or a dropped LISTEN connection. The value only advances after ``emit``
returned, so a failed emit fires again at the next probe.

Never raises out of :meth:`TableChangeTrigger.run` for a failing probe, an unreachable
database or a failing emit: ``status.error`` carries the database's own message with
secrets masked, and the next interval retries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import threading
import uuid
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from headwater.config.models import TableChangeConfig
from headwater.exceptions import ConfigError, TransientSourceError
from headwater.triggers.base import Backoff, Emit, Fire, TriggerStatus, utcnow
from headwater.triggers.brokers.base import describe, digest, raise_if_cancelled, safe_text

_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
"""Plain URL schemes → the driver headwater installs for them."""
_PROBE_TIMEOUT_S = 60.0
"""A probe that has not answered by then is reported; the interval goes on."""
_CONNECT_TIMEOUT_S = 10
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3}
"""A LISTEN connection is idle by design; TCP keepalives notice when its peer vanished."""


def engine_url(connection: Mapping[str, Any]) -> URL:
    """The SQLAlchemy URL of a connection, with plain schemes mapped to real drivers."""
    raw = connection.get("url")
    if not isinstance(raw, str) or not raw:
        raise ConfigError("a table_change connection needs 'url' (for example "
                          "url: postgresql://app@127.0.0.1:5432/shop)", problems=[])
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"connection url is not a database URL: {describe(exc)}",
                          problems=[]) from None
    return url.set(drivername=_DRIVERS.get(url.drivername, url.drivername))


def probe_value(row: Any) -> Any:
    """A probe's first row as a JSON-safe value: one column → that value, several → a list."""
    if row is None:
        return None
    values = [json_safe(value) for value in row]
    return values[0] if len(values) == 1 else values


def json_safe(value: Any) -> Any:
    """``value`` as JSON can hold it, so it survives the round trip through the store."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    return str(value)


def _db_message(exc: BaseException) -> str:
    """The database's own first line for a driver error, not SQLAlchemy's wrapping."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return safe_text(lines[0] if lines else type(cause).__name__)


class TableChangeTrigger:
    """Fires when the probe's value changes; see the module docstring.

    ``listening`` is set while a LISTEN connection is open (only with ``notify``).
    """

    kind = "table_change"

    def __init__(self, pipeline: str, index: int, config: TableChangeConfig,
                 connection: Mapping[str, Any], *, last_value: Any = None,
                 backoff: Backoff | None = None) -> None:
        self.pipeline = pipeline
        self.index = index
        self.config = config
        self.status = TriggerStatus(name=f"{pipeline}:{index}")
        self.last_value: Any = json_safe(last_value)
        """The value the last fire (or the baseline) saw; what the server persists."""
        self.has_baseline = last_value is not None
        self.listening = asyncio.Event()
        self._url = engine_url(connection)
        self._where = self._describe_target()
        self._engine = self._create_engine()
        self._probing = threading.Lock()
        """Held by a probe thread, which a timeout or cancel does not stop: the engine is
        disposed only after it returned its connection (else the connection is left open
        for the garbage collector)."""
        self._backoff = backoff or Backoff()
        self._wake = asyncio.Event()
        self._notify_payload: str | None = None
        self._probe_error: str | None = None
        self._listen_error: str | None = None
        if config.notify and self._url.get_backend_name() != "postgresql":
            raise ConfigError(f"table_change notify: {config.notify!r} needs a PostgreSQL "
                              f"connection, not {self._url.get_backend_name()}", problems=[])

    def _describe_target(self) -> str:
        """``postgresql 127.0.0.1:5432/shop``: where the probe runs, without credentials."""
        url = self._url
        if not url.host:
            return f"{url.get_backend_name()} {url.database or ''}".strip()
        host = f"{url.host}:{url.port}" if url.port else url.host
        return f"{url.get_backend_name()} {host}/{url.database or ''}"

    def _create_engine(self) -> Engine:
        connect_args: dict[str, Any] = {}
        if self._url.get_backend_name() == "postgresql":
            connect_args["connect_timeout"] = _CONNECT_TIMEOUT_S
        try:
            return create_engine(self._url, pool_pre_ping=True, connect_args=connect_args)
        except (NoSuchModuleError, ImportError) as exc:
            raise ConfigError(f"no database driver for {self._url.drivername}: "
                              f"{describe(exc)} (pip install the driver, e.g. "
                              f"psycopg[binary] or pymysql)", problems=[]) from exc

    # ----------------------------------------------------------------- the loop

    async def run(self, emit: Emit) -> None:
        """Probe now, then every ``every`` seconds and on each NOTIFY, until cancelled."""
        listener = asyncio.create_task(self._listen()) if self.config.notify else None
        try:
            via = "start"
            while True:
                await self._tick(emit, via)
                via = await self._sleep()
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            await asyncio.to_thread(self._dispose)

    async def _sleep(self) -> str:
        """Wait for the interval or a NOTIFY; say which woke us."""
        self.status.next_fire_at = utcnow() + timedelta(seconds=self.config.every)
        try:
            await asyncio.wait_for(self._wake.wait(), self.config.every)
            via = "notify"
        except TimeoutError:
            via = "interval"
        self._wake.clear()
        raise_if_cancelled()
        return via

    async def _tick(self, emit: Emit, via: str) -> None:
        try:
            value = await self._probe()
        except TransientSourceError as exc:
            self._set_probe_error(exc.message)
            return
        if self.has_baseline and value != self.last_value:
            try:
                await emit(self._fire(value, via))
            except Exception as exc:  # noqa: BLE001 - the server's failure is only reported
                self._set_probe_error(f"could not queue a run (the next probe tries again): "
                                      f"{describe(exc)}")
                return
            self.status.fired()
        self.last_value, self.has_baseline = value, True
        self._set_probe_error(None)

    def _fire(self, value: Any, via: str) -> Fire:
        probe: dict[str, Any] = {"old": self.last_value, "new": value, "via": via}
        if via == "notify" and self._notify_payload is not None:
            probe["notify_payload"] = self._notify_payload
        change = digest([json.dumps(self.last_value, sort_keys=True),
                         json.dumps(value, sort_keys=True)])
        return Fire(pipeline=self.pipeline, trigger_index=self.index, kind=self.kind,
                    dedupe_key=f"table_change:{self.pipeline}:{self.index}:{change}",
                    info={"probe": probe}, event_at=utcnow())

    def _set_probe_error(self, message: str | None) -> None:
        self._probe_error = message
        self._show_problems()

    def _set_listen_error(self, message: str | None) -> None:
        self._listen_error = message
        self._show_problems()

    def _show_problems(self) -> None:
        """The probe and the listener fail independently; status shows both until both
        are fine again, so a working probe does not hide a broken LISTEN."""
        problems = [p for p in (self._probe_error, self._listen_error) if p]
        if problems:
            self.status.fail("; ".join(problems))
        else:
            self.status.recover()

    # ----------------------------------------------------------------- the probe

    async def _probe(self) -> Any:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._probe_sync), _PROBE_TIMEOUT_S)
        except TimeoutError:
            raise TransientSourceError(f"probe on {self._where} did not answer within "
                                       f"{_PROBE_TIMEOUT_S:g}s", source=self._where) from None

    def _dispose(self) -> None:
        got = self._probing.acquire(timeout=_PROBE_TIMEOUT_S)
        try:
            self._engine.dispose()
        finally:
            if got:
                self._probing.release()

    def _probe_sync(self) -> Any:
        try:
            with self._probing, self._engine.connect() as conn:
                row = conn.execute(text(self.config.probe)).first()
                return probe_value(row)
        except SQLAlchemyError as exc:
            raise TransientSourceError(f"probe on {self._where} failed: {_db_message(exc)}",
                                       source=self._where) from exc

    # ----------------------------------------------------------------- LISTEN

    async def _listen(self) -> None:
        """Keep a LISTEN connection open, waking the probe on each NOTIFY; reconnect with
        backoff when it drops (the interval probe covers the gap)."""
        import psycopg  # only PostgreSQL projects install it

        channel = self.config.notify or ""
        while True:
            try:
                await self._listen_once(channel)
            except (psycopg.Error, OSError) as exc:
                self._set_listen_error(f"LISTEN {channel} on {self._where} failed: "
                                       f"{_db_message(exc)}")
            finally:
                self.listening.clear()
            raise_if_cancelled()
            await asyncio.sleep(self._backoff.next())

    async def _listen_once(self, channel: str) -> None:
        from psycopg import AsyncConnection, sql
        from psycopg.conninfo import make_conninfo

        url = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
        conninfo = make_conninfo(url, connect_timeout=_CONNECT_TIMEOUT_S, **_KEEPALIVE)
        async with await AsyncConnection.connect(conninfo, autocommit=True) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self.listening.set()
            self._set_listen_error(None)
            self._backoff.reset()
            # a NOTIFY sent while we were not listening is lost: probe once now
            self._wake.set()
            async for note in conn.notifies():
                self._notify_payload = note.payload
                self._wake.set()
