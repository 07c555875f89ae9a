"""Time triggers: cron in a time zone, fixed intervals, catch-up windows and backfills.

Cron fields are *wall-clock* times in the trigger's time zone (croniter does the calendar
arithmetic on naive times; this module maps them to instants), and each wall-clock tick
fires once:

* a tick inside the hour skipped at spring-forward fires when the clock jumps (02:30 on a
  Europe/Berlin spring-forward day fires at 03:00 CEST), and several skipped ticks collapse
  into that one instant;
* a tick inside the hour repeated at fall-back fires on its first occurrence only.

Intervals are anchored at the Unix epoch so that every server computes the same ticks,
which is what lets ``trigger_fires.dedupe_key`` make a tick fire once across servers.
A window is the schedule interval that ends at a tick: ``(previous tick, tick]``.

Ticks are returned in UTC: an aware datetime inside a repeated hour never compares equal to
one in another zone (PEP 495), so zone-local ticks would break the server's comparisons.
The zone is used only for cron arithmetic and for the text a user reads (:meth:`local`).

The window math is pure functions; :class:`ScheduleTrigger` only sleeps until the next due
time and emits. Nothing here touches the store: the server passes in the last fired window
end (``trigger_state.cursor``) and records each fire.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from headwater.config.models import TriggerConfig
from headwater.exceptions import TriggerError
from headwater.triggers.base import Backoff, Emit, Fire, TriggerStatus, utcnow

Window = tuple[datetime, datetime]
"""``(start, end)``: the schedule interval ending at a tick (``end`` is the tick)."""

MAX_WINDOWS = 10_000
"""The most windows computed at once: catch-up continues in slices, a backfill refuses."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_AROUND = timedelta(hours=26)
_MAX_NAP = 60.0
"""Long sleeps wake this often to re-read the wall clock (NTP steps, a suspended laptop)."""


class Schedule(Protocol):
    """A sequence of ticks (aware UTC datetimes), strictly increasing."""

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``."""
        ...

    def prev_before(self, moment: datetime) -> datetime:
        """The last tick strictly before ``moment``."""
        ...

    @property
    def zone(self) -> ZoneInfo:
        """Where cron fields are read; naive datetimes given to this module are read here."""
        ...

    def local(self, moment: datetime) -> datetime:
        """``moment`` in the schedule's time zone, for what users read."""
        ...

    def ticks_after(self, moment: datetime) -> Iterator[datetime]:
        """Every tick strictly after ``moment``, in order (cheaper than ``next_after``
        in a loop, which re-parses the cron expression each time)."""
        ...


# --------------------------------------------------------------------------- cron


def validate_cron(cron: str, timezone: str = "UTC") -> None:
    """Raise :class:`TriggerError` with a clear message if ``cron``/``timezone`` is invalid.

    headwater cron has the five classic fields (or an alias such as ``@daily``): croniter's
    six-field form puts seconds *last*, which would silently misread a Quartz expression.
    """
    _zone(timezone)
    fields = cron.split()
    if not (len(fields) == 5 or (len(fields) == 1 and fields[0].startswith("@"))):
        raise TriggerError(
            f"invalid cron expression {cron!r}: expected 5 fields "
            "(minute hour day-of-month month day-of-week, e.g. '0 2 * * *') or an alias "
            "such as @daily; for sub-minute schedules use 'interval: 30s'",
            cron=cron,
        )
    try:
        croniter(cron, datetime(2000, 1, 1)).get_next(datetime)
    except (CroniterError, ValueError, KeyError) as exc:
        raise TriggerError(
            f"invalid cron expression {cron!r}: {exc} (e.g. '0 2 * * *' is 02:00 daily)",
            cron=cron,
        ) from exc


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TriggerError(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin or UTC",
            timezone=name,
        ) from exc


@dataclass(frozen=True)
class CronSchedule:
    """Ticks of a cron expression read as wall-clock time in ``timezone``."""

    cron: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        validate_cron(self.cron, self.timezone)

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone)

    def local(self, moment: datetime) -> datetime:
        """``moment`` in the schedule's time zone, for what users read."""
        return moment.astimezone(self.zone)

    def next_after(self, moment: datetime) -> datetime:
        return next(self.ticks_after(moment))

    def ticks_after(self, moment: datetime) -> Iterator[datetime]:
        utc = _aware(moment, self.zone).astimezone(UTC)
        # no wall time below utc + the smallest nearby offset can map after ``moment``
        start = (utc + min(self._offsets(utc))).replace(tzinfo=None)
        walls = croniter(self.cron, start)
        previous = utc
        while True:
            tick = self._instant(walls.get_next(datetime))
            if tick > previous:  # skipped wall times collapse into one instant
                previous = tick
                yield tick

    def prev_before(self, moment: datetime) -> datetime:
        utc = _aware(moment, self.zone).astimezone(UTC)
        start = (utc + max(self._offsets(utc))).replace(tzinfo=None)
        walls = croniter(self.cron, start)
        while True:
            tick = self._instant(walls.get_prev(datetime))
            if tick < utc:
                return tick

    def _offsets(self, utc: datetime) -> list[timedelta]:
        """UTC offsets in force around ``utc``; transitions are never closer than 26 h."""
        return [_offset((utc + delta).astimezone(self.zone)) for delta in
                (-_AROUND, timedelta(0), _AROUND)]

    def _instant(self, wall: datetime) -> datetime:
        """The instant a wall-clock tick fires: its first occurrence, or a gap's end."""
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        if first.astimezone(self.zone).replace(tzinfo=None) == wall:
            return first
        return _gap_end(wall, self.zone)


def _offset(moment: datetime) -> timedelta:
    offset = moment.utcoffset()
    return offset if offset is not None else timedelta(0)


def _gap_end(wall: datetime, zone: ZoneInfo) -> datetime:
    """The transition instant that skips over the non-existent ``wall`` (bisected to 1 s)."""
    a = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    b = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    low, high = min(a, b), max(a, b)
    after = _offset(high.astimezone(zone))
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if _offset(middle.astimezone(zone)) == after:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def _aware(moment: datetime, zone: ZoneInfo | None = None) -> datetime:
    """Naive datetimes are read in the schedule's zone (UTC for intervals)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=zone or UTC)
    return moment


# --------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class IntervalSchedule:
    """A tick every ``seconds``, anchored at the Unix epoch (so every server agrees)."""

    seconds: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.seconds) or self.seconds < 0.001:
            raise TriggerError(
                f"invalid interval {self.seconds!r}: must be at least 1ms, e.g. 'interval: 15m'",
                interval=self.seconds,
            )

    @property
    def _step(self) -> int:
        return round(self.seconds * 1_000_000)

    def next_after(self, moment: datetime) -> datetime:
        micros = (_aware(moment) - _EPOCH) // _MICRO
        return _EPOCH + _MICRO * ((micros // self._step + 1) * self._step)

    def prev_before(self, moment: datetime) -> datetime:
        micros = (_aware(moment) - _EPOCH) // _MICRO
        return _EPOCH + _MICRO * (((micros - 1) // self._step) * self._step)

    @property
    def zone(self) -> ZoneInfo:
        return _zone("UTC")

    def local(self, moment: datetime) -> datetime:
        return moment.astimezone(UTC)

    def ticks_after(self, moment: datetime) -> Iterator[datetime]:
        tick = self.next_after(moment)
        while True:
            yield tick
            tick += _MICRO * self._step


def schedule_for(trigger: TriggerConfig) -> CronSchedule | IntervalSchedule:
    """The schedule of a ``schedule:`` or ``interval:`` trigger entry."""
    if trigger.schedule is not None:
        return CronSchedule(trigger.schedule.cron, trigger.schedule.timezone)
    if trigger.interval is not None:
        return IntervalSchedule(trigger.interval)
    raise TriggerError(f"a {trigger.kind} trigger has no schedule", kind=trigger.kind)


# --------------------------------------------------------------------------- windows


def latest_tick(schedule: Schedule, now: datetime) -> datetime:
    """The last tick at or before ``now``."""
    return schedule.prev_before(_aware(now, schedule.zone) + _MICRO)


def windows_missed(
    schedule: Schedule,
    last: datetime | None,
    now: datetime,
    catchup: bool,
    limit: int = MAX_WINDOWS,
) -> list[Window]:
    """Windows whose tick lies in ``(last, now]``, oldest first.

    With ``catchup`` each such tick yields its window (at most ``limit``: call again with the
    last end to continue); without it only the latest tick does. ``last`` is the end of the
    last fired window; ``None`` means the trigger never fired, so nothing was missed.
    """
    if last is None:
        return []
    last, now = _aware(last, schedule.zone), _aware(now, schedule.zone)
    if not catchup:
        tick = latest_tick(schedule, now)
        return [(schedule.prev_before(tick), tick)] if tick > last else []
    windows: list[Window] = []
    ticks = schedule.ticks_after(last)
    tick = next(ticks)
    start = schedule.prev_before(tick)
    while tick <= now and len(windows) < limit:
        windows.append((start, tick))
        start, tick = tick, next(ticks)
    return windows


def windows_between(
    schedule: Schedule, start: datetime, end: datetime, limit: int = MAX_WINDOWS
) -> list[Window]:
    """The windows lying wholly inside ``[start, end]``, oldest first (for backfills).

    Naive datetimes are read in the schedule's time zone.
    """
    start, end = _aware(start, schedule.zone), _aware(end, schedule.zone)
    windows: list[Window] = []
    ticks = schedule.ticks_after(start - _MICRO)
    tick, following = next(ticks), next(ticks)
    while following <= end:
        if len(windows) == limit:
            raise TriggerError(
                f"the backfill from {start.isoformat()} to {end.isoformat()} has more than "
                f"{limit} windows; split it into shorter ranges",
                start=start.isoformat(), end=end.isoformat(),
            )
        windows.append((tick, following))
        tick, following = following, next(ticks)
    return windows


def next_fire(cron: str, tz: str, after: datetime) -> datetime:
    """The first tick of ``cron`` in time zone ``tz`` strictly after ``after``."""
    return CronSchedule(cron, tz).next_after(after)


def missed_windows(
    cron: str, tz: str, last: datetime | None, now: datetime, catchup: bool
) -> list[Window]:
    """:func:`windows_missed` for a cron expression."""
    return windows_missed(CronSchedule(cron, tz), last, now, catchup)


def backfill_windows(cron: str, tz: str, start: datetime, end: datetime) -> list[Window]:
    """:func:`windows_between` for a cron expression."""
    return windows_between(CronSchedule(cron, tz), start, end)


# --------------------------------------------------------------------------- the trigger


@dataclass
class ScheduleTrigger:
    """Sleeps until each tick and emits its window; catches up after downtime.

    ``last`` is the end of the last window fired (from ``trigger_state.cursor``); without it
    the first fire is the next tick. ``clock`` exists so tests can shift time; sleeping is
    always real.
    """

    pipeline: str
    index: int
    trigger: TriggerConfig
    last: datetime | None = None
    clock: Callable[[], datetime] = utcnow
    status: TriggerStatus = field(default_factory=TriggerStatus)
    schedule: CronSchedule | IntervalSchedule = field(init=False)
    catchup: bool = field(init=False)

    def __post_init__(self) -> None:
        self.schedule = schedule_for(self.trigger)
        self.catchup = self.trigger.schedule is not None and self.trigger.schedule.catchup
        self.status.name = f"{self.pipeline}:{self.index}"

    async def run(self, emit: Emit) -> None:
        if self.last is None:
            self.last = self.clock()
        catchup = self.catchup
        while True:
            windows = windows_missed(self.schedule, self.last, self.clock(), catchup)
            # ``catchup`` is about downtime before this start only: once running, a late
            # wake-up (a busy event loop, a slow store) must not skip a tick, so every
            # later window fires (two ticks 50 ms apart were skipped under load).
            catchup = True
            for window in windows:
                await self._emit(emit, window)
            if windows:
                continue  # a catch-up longer than MAX_WINDOWS continues in the next slice
            due = self.schedule.next_after(self.last)
            self.status.next_fire_at = due
            await _sleep_until(due, self.clock)

    async def _emit(self, emit: Emit, window: Window) -> None:
        """Emit one window, retrying with backoff until the server accepts it."""
        fire = self.fire(window)
        backoff = Backoff(first=0.5, cap=30.0)
        while True:
            try:
                await emit(fire)
            except Exception as exc:  # noqa: BLE001 - the server's failure must not kill the trigger
                self.status.fail(f"could not queue the run for {window[1].isoformat()}: {exc}")
                await asyncio.sleep(backoff.next())
                continue
            self.status.recover()
            self.status.fired(self.clock())
            self.last = window[1]
            return

    def fire(self, window: Window) -> Fire:
        """The Fire for one window; its dedupe key is the same on every server."""
        start, end = (self.schedule.local(moment).isoformat() for moment in window)
        return Fire(
            pipeline=self.pipeline,
            trigger_index=self.index,
            kind="schedule",
            dedupe_key=f"{self.pipeline}:{self.index}:schedule:{end}",
            info={"window": {"start": start, "end": end}},
            event_at=window[1],
            window=window,
        )


async def _sleep_until(due: datetime, clock: Callable[[], datetime]) -> None:
    """Sleep until ``due`` by the wall clock: one precise timer, re-checked every minute."""
    while True:
        remaining = (due - clock()).total_seconds()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, _MAX_NAP))
