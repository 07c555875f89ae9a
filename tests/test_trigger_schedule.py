"""Schedule triggers: cron and interval ticks, DST, catch-up windows, precise firing."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.config.models import ScheduleConfig, TriggerConfig
from headwater.exceptions import TriggerError
from headwater.triggers.base import Emit, Fire
from headwater.triggers.schedule import (
    CronSchedule,
    IntervalSchedule,
    Schedule,
    ScheduleTrigger,
    Window,
    backfill_windows,
    latest_tick,
    missed_windows,
    next_fire,
    validate_cron,
    windows_between,
    windows_missed,
)

BERLIN = ZoneInfo("Europe/Berlin")


def _ticks(cron: str, tz: str, after: datetime, count: int) -> list[datetime]:
    ticks = []
    for _ in range(count):
        after = next_fire(cron, tz, after)
        ticks.append(after)
    return ticks


def _berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


# --------------------------------------------------------------------------- DST


def test_daily_tick_in_the_skipped_hour_fires_once_when_the_clock_jumps() -> None:
    """02:30 does not exist on 29 March 2026 in Berlin: that day fires once, at 03:00 CEST."""
    expected = [_berlin(2026, 3, 28, 2, 30), _berlin(2026, 3, 29, 3, 0),
                _berlin(2026, 3, 30, 2, 30)]
    assert expected == _ticks("30 2 * * *", "Europe/Berlin", _berlin(2026, 3, 28), 3)


def test_daily_tick_in_the_repeated_hour_fires_once() -> None:
    """02:30 happens twice on 25 October 2026 in Berlin; the job runs on the first only."""
    ticks = _ticks("30 2 * * *", "Europe/Berlin", _berlin(2026, 10, 24), 3)
    expected = ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00",
                "2026-10-26T02:30:00+01:00"]
    assert expected == [t.astimezone(BERLIN).isoformat() for t in ticks]


def test_frequent_ticks_across_spring_forward_collapse_at_the_jump() -> None:
    """Quarter-hourly ticks of the skipped hour become one tick at 03:00 CEST, not four."""
    ticks = _ticks("*/15 * * * *", "Europe/Berlin", _berlin(2026, 3, 29, 1, 30), 4)
    expected = ["2026-03-29T01:45:00+01:00", "2026-03-29T03:00:00+02:00",
                "2026-03-29T03:15:00+02:00", "2026-03-29T03:30:00+02:00"]
    assert expected == [t.astimezone(BERLIN).isoformat() for t in ticks]


def test_new_york_spring_forward_and_utc_offsets() -> None:
    """The same rule holds in another zone: 02:30 on 8 March 2026 fires at 03:00 EDT."""
    ticks = _ticks("30 2 * * *", "America/New_York",
                   datetime(2026, 3, 7, tzinfo=ZoneInfo("America/New_York")), 2)
    expected = ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00"]
    assert expected == [t.astimezone(ZoneInfo("America/New_York")).isoformat() for t in ticks]


_ORACLE_CRONS = {
    "30 2 * * *": ({30}, {2}),
    "*/15 * * * *": ({0, 15, 30, 45}, set(range(24))),
    "0 0 * * *": ({0}, {0}),
    "45 1 * * *": ({45}, {1}),
    "0 * * * *": ({0}, set(range(24))),
    "30 1,2,3 * * *": ({30}, {1, 2, 3}),
}
_MINUTE = timedelta(minutes=1)


def _transition_days(zone: ZoneInfo, year: int) -> list[datetime]:
    days = [datetime(year, 1, 1, 12, tzinfo=zone) + timedelta(days=n) for n in range(365)]
    return [day for day, following in itertools.pairwise(days)
            if day.utcoffset() != following.utcoffset()]


def _oracle(cron: str, zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """Ticks by brute force, minute by minute: a matching wall time fires on its first
    occurrence; matching wall times skipped by a jump fire once, at the jump."""
    minutes, hours = _ORACLE_CRONS[cron]

    def matches(wall: datetime) -> bool:
        return wall.minute in minutes and wall.hour in hours

    ticks: list[datetime] = []
    moment, previous = start, None
    while moment < end:
        local = moment.astimezone(zone)
        wall = local.replace(tzinfo=None)
        skipped: list[datetime] = [] if previous is None else [
            previous + _MINUTE * n for n in range(1, (wall - previous) // _MINUTE)]
        if any(map(matches, skipped)) or (matches(wall) and local.fold == 0):
            ticks.append(moment)
        moment, previous = moment + _MINUTE, wall
    return ticks


@pytest.mark.parametrize("cron", sorted(_ORACLE_CRONS))
@pytest.mark.parametrize(
    "zone", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago"])
def test_ticks_around_every_dst_change_match_a_brute_force_oracle(cron: str, zone: str) -> None:
    """Around each 2026 DST change, ticks equal a minute-by-minute simulation of the rule:
    first occurrence of a repeated wall time; one fire at the jump for skipped ones."""
    tz = ZoneInfo(zone)
    schedule = CronSchedule(cron, zone)
    for day in _transition_days(tz, 2026):
        start, end = (day - timedelta(hours=12)).astimezone(UTC), day + timedelta(hours=36)
        expected = _oracle(cron, tz, start, end)
        ticks = schedule.ticks_after(start - timedelta(microseconds=1))
        actual = list(itertools.takewhile(end.__gt__, ticks))
        assert expected == actual, (zone, day)


# --------------------------------------------------------------------------- windows


def test_catchup_runs_each_missed_window_once() -> None:
    """After 3 days down a daily job with catchup gets 3 contiguous day windows."""
    last = _berlin(2026, 11, 22, 2, 0)
    windows = missed_windows("0 2 * * *", "Europe/Berlin", last, _berlin(2026, 11, 25, 9), True)
    expected = [(_berlin(2026, 11, d, 2), _berlin(2026, 11, d + 1, 2)) for d in (22, 23, 24)]
    assert expected == windows


def test_without_catchup_only_the_latest_missed_tick_fires() -> None:
    """Without catchup the same downtime yields only the window of the latest tick."""
    last = _berlin(2026, 11, 22, 2, 0)
    windows = missed_windows("0 2 * * *", "Europe/Berlin", last, _berlin(2026, 11, 25, 9), False)
    expected = [(_berlin(2026, 11, 24, 2), _berlin(2026, 11, 25, 2))]
    assert expected == windows


def test_nothing_is_missed_before_the_next_tick_or_without_a_cursor() -> None:
    """No tick in (last, now] means no window; a trigger that never fired missed nothing."""
    last = _berlin(2026, 11, 25, 2, 0)
    expected: list[Window] = []
    assert expected == missed_windows("0 2 * * *", "Europe/Berlin", last,
                                      _berlin(2026, 11, 26, 1, 59), True)
    assert expected == missed_windows("0 2 * * *", "Europe/Berlin", None,
                                      _berlin(2026, 11, 26, 3), True)


def test_tick_exactly_at_now_counts_as_missed() -> None:
    """A tick due at exactly ``now`` fires now, not a day later."""
    windows = missed_windows("0 2 * * *", "UTC", datetime(2026, 1, 1, 2, tzinfo=UTC),
                             datetime(2026, 1, 2, 2, tzinfo=UTC), False)
    expected = [(datetime(2026, 1, 1, 2, tzinfo=UTC), datetime(2026, 1, 2, 2, tzinfo=UTC))]
    assert expected == windows


def test_backfill_covers_the_range_with_whole_windows() -> None:
    """A backfill from 1 to 4 January of a midnight job is three whole day windows."""
    windows = backfill_windows("0 0 * * *", "UTC", datetime(2026, 1, 1), datetime(2026, 1, 4))
    expected = [(datetime(2026, 1, d, tzinfo=UTC), datetime(2026, 1, d + 1, tzinfo=UTC))
                for d in (1, 2, 3)]
    assert expected == windows


def test_naive_backfill_bounds_are_read_in_the_schedule_time_zone() -> None:
    """``--start 2026-01-01`` for a Berlin schedule means Berlin midnight, not UTC."""
    windows = windows_between(CronSchedule("0 0 * * *", "Europe/Berlin"),
                              datetime(2026, 1, 1), datetime(2026, 1, 3))
    expected = [(_berlin(2026, 1, 1), _berlin(2026, 1, 2)), (_berlin(2026, 1, 2),
                                                             _berlin(2026, 1, 3))]
    assert expected == windows


def test_huge_backfill_is_refused_with_advice() -> None:
    """A backfill with more windows than the limit is refused, saying what to do."""
    schedule = CronSchedule("* * * * *")
    with pytest.raises(TriggerError, match="more than 100 windows; split it into shorter"):
        windows_between(schedule, datetime(2025, 1, 1, tzinfo=UTC),
                        datetime(2025, 1, 2, tzinfo=UTC), limit=100)


def test_interval_ticks_are_epoch_anchored() -> None:
    """Every server computes the same 15-minute ticks: on the quarter hours (UTC)."""
    schedule = IntervalSchedule(900)
    moment = datetime(2026, 5, 1, 10, 7, 12, tzinfo=UTC)
    expected = (datetime(2026, 5, 1, 10, 0, tzinfo=UTC), datetime(2026, 5, 1, 10, 15, tzinfo=UTC))
    assert expected == (schedule.prev_before(moment), schedule.next_after(moment))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("cron", "timezone", "message"),
    [
        ("61 * * * *", "UTC", "invalid cron expression '61 \\* \\* \\* \\*'.*out of range"),
        ("0 2 * *", "UTC", "expected 5 fields"),
        ("0 0 2 * * *", "UTC", "expected 5 fields"),
        ("0 0 30 2 *", "UTC", "invalid cron expression"),
        ("0 2 * * *", "Europe/Berlinn", "unknown time zone 'Europe/Berlinn'"),
    ],
)
def test_invalid_cron_or_zone_is_a_clear_trigger_error(
    cron: str, timezone: str, message: str
) -> None:
    """validate_cron and construction reject bad input with a message naming it."""
    with pytest.raises(TriggerError, match=message):
        validate_cron(cron, timezone)
    with pytest.raises(TriggerError, match=message):
        ScheduleTrigger("orders", 0, TriggerConfig(schedule=ScheduleConfig(
            cron=cron, timezone=timezone)))


def test_aliases_are_valid_cron() -> None:
    """``@daily`` and friends are accepted."""
    validate_cron("@daily", "Europe/Berlin")
    expected = _berlin(2026, 1, 2)
    assert expected == next_fire("@daily", "Europe/Berlin", _berlin(2026, 1, 1, 5))


# --------------------------------------------------------------------------- properties

_CRONS = st.sampled_from([
    "0 2 * * *", "30 2 * * *", "*/15 * * * *", "0 * * * *", "5 4 * * 1-5", "0 0 1 * *",
    "30 1,2,3 * * *", "@hourly", "59 23 31 12 *", "*/7 2 * * *",
])
_ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe",
                          "Asia/Kolkata", "America/Santiago"])
_MOMENTS = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31),
                        timezones=st.just(UTC))


def _schedules() -> st.SearchStrategy[Schedule]:
    cron = st.builds(CronSchedule, _CRONS, _ZONES)
    interval = st.builds(IntervalSchedule, st.sampled_from([60.0, 900.0, 5400.0, 86400.0]))
    return st.one_of(cron, interval)


def _assert_contiguous(schedule: Schedule, windows: list[Window]) -> None:
    for start, end in windows:
        assert start < end
        assert start == schedule.prev_before(end)
        assert end == schedule.next_after(start)
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert end == start


@settings(max_examples=100, deadline=None)
@given(schedule=_schedules(), moment=_MOMENTS)
def test_ticks_bracket_every_moment(schedule: Schedule, moment: datetime) -> None:
    """prev_before(t) < t < next_after(t), with no tick between them but t itself."""
    before, after = schedule.prev_before(moment), schedule.next_after(moment)
    assert before < moment < after
    assert schedule.next_after(before) in (moment, after)
    assert schedule.prev_before(after) in (moment, before)


@settings(max_examples=100, deadline=None)
@given(schedule=_schedules(), last=_MOMENTS, span=st.integers(0, 2 * 86400))
def test_catchup_windows_are_each_tick_exactly_once(
    schedule: Schedule, last: datetime, span: int
) -> None:
    """Catch-up windows are contiguous, non-overlapping, and end at every tick in (last, now]."""
    last = schedule.prev_before(last)
    now = last + timedelta(seconds=span)
    windows = windows_missed(schedule, last, now, catchup=True, limit=500)
    _assert_contiguous(schedule, windows)
    if windows:
        assert last == windows[0][0]
        assert windows[-1][1] <= now
    if len(windows) < 500:
        expected_next = windows[-1][1] if windows else last
        assert schedule.next_after(expected_next) > now


@settings(max_examples=100, deadline=None)
@given(schedule=_schedules(), last=_MOMENTS, span=st.integers(0, 2 * 86400))
def test_without_catchup_the_latest_tick_fires(
    schedule: Schedule, last: datetime, span: int
) -> None:
    """Without catchup at most one window fires, and it ends at the latest tick ≤ now."""
    now = last + timedelta(seconds=span)
    windows = windows_missed(schedule, last, now, catchup=False)
    tick = latest_tick(schedule, now)
    expected = [(schedule.prev_before(tick), tick)] if tick > last else []
    assert expected == windows
    assert tick <= now < schedule.next_after(tick)


@settings(max_examples=100, deadline=None)
@given(schedule=_schedules(), start=_MOMENTS, span=st.integers(0, 2 * 86400))
def test_backfill_windows_tile_the_range(schedule: Schedule, start: datetime, span: int) -> None:
    """Backfill windows lie inside [start, end], are contiguous, and none is left out."""
    end = start + timedelta(seconds=span)
    windows = windows_between(schedule, start, end, limit=200_000)
    _assert_contiguous(schedule, windows)
    if windows:
        assert start <= windows[0][0] and windows[-1][1] <= end
        assert schedule.prev_before(windows[0][0]) < start
        assert schedule.next_after(windows[-1][1]) > end


# --------------------------------------------------------------------------- the trigger


def _collect(fires: list[tuple[float, Fire]]) -> Emit:
    async def emit(fire: Fire) -> None:
        fires.append((time.time(), fire))

    return emit


async def _run_for(trigger: ScheduleTrigger, seconds: float, emit: Emit) -> None:
    task = asyncio.create_task(trigger.run(emit))
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_cron_tick_fires_within_50ms_of_due_time() -> None:
    """A minutely cron fires at the minute boundary (clock shifted to 0.4 s before it)."""
    real = datetime.now(UTC)
    boundary = real.replace(second=0, microsecond=0) + timedelta(minutes=5)
    shift = boundary - timedelta(seconds=0.4) - real
    trigger = ScheduleTrigger("orders", 0, TriggerConfig(schedule=ScheduleConfig(
        cron="* * * * *", timezone="Europe/Berlin")), clock=lambda: datetime.now(UTC) + shift)
    fires: list[tuple[float, Fire]] = []
    asyncio.run(_run_for(trigger, 0.7, _collect(fires)))
    expected_end = boundary.astimezone(BERLIN)
    assert [expected_end] == [fire.window[1] for _, fire in fires if fire.window]
    lateness = fires[0][0] + shift.total_seconds() - boundary.timestamp()
    assert 0 <= lateness < 0.05
    expected_key = f"orders:0:schedule:{expected_end.isoformat()}"
    assert expected_key == fires[0][1].dedupe_key
    assert {"window": {"start": (expected_end - timedelta(minutes=1)).isoformat(),
                       "end": expected_end.isoformat()}} == fires[0][1].info


@pytest.mark.slow
def test_interval_trigger_fires_every_tick_precisely() -> None:
    """An interval of 0.25 s fires each tick once, contiguous, each within 50 ms of due."""
    trigger = ScheduleTrigger("orders", 1, TriggerConfig(interval=0.25))
    fires: list[tuple[float, Fire]] = []
    asyncio.run(_run_for(trigger, 1.6, _collect(fires)))
    assert 5 <= len(fires) <= 7
    windows = [fire.window for _, fire in fires if fire.window]
    _assert_contiguous(trigger.schedule, windows)
    lateness = [at - fire.event_at.timestamp() for at, fire in fires]
    assert all(0 <= late < 0.05 for late in lateness), lateness


def test_a_late_wake_up_never_skips_a_live_tick() -> None:
    """Once running, every tick fires even if the trigger wakes late: an emit that took
    3.5 intervals (a slow store under load) made the trigger skip the windows it spanned."""
    trigger = ScheduleTrigger("orders", 1, TriggerConfig(interval=0.1))
    fires: list[Fire] = []

    async def slow_first(fire: Fire) -> None:
        if not fires:
            await asyncio.sleep(0.35)
        fires.append(fire)

    asyncio.run(_run_for(trigger, 0.9, slow_first))
    windows = [fire.window for fire in fires if fire.window]
    assert len(windows) >= 6
    _assert_contiguous(trigger.schedule, windows)


def test_catchup_emits_missed_windows_at_start() -> None:
    """Started with a cursor 3 days old, a catchup trigger emits 3 windows at once."""
    now = datetime.now(UTC)
    last = CronSchedule("0 2 * * *", "Europe/Berlin").prev_before(now) - timedelta(days=3)
    config = TriggerConfig(schedule=ScheduleConfig(cron="0 2 * * *", timezone="Europe/Berlin",
                                                   catchup=True))
    trigger = ScheduleTrigger("orders", 0, config, last=last)
    fires: list[tuple[float, Fire]] = []
    asyncio.run(_run_for(trigger, 0.2, _collect(fires)))
    expected = 3
    assert expected == len(fires)
    assert len({fire.dedupe_key for _, fire in fires}) == expected
    assert trigger.status.next_fire_at is not None and trigger.status.next_fire_at > now


def test_failed_emit_is_retried_and_reported_not_raised() -> None:
    """When the server cannot queue a run, status.error says so and the window is retried."""
    now = datetime.now(UTC)
    config = TriggerConfig(schedule=ScheduleConfig(cron="0 2 * * *", catchup=True))
    last = CronSchedule("0 2 * * *").prev_before(now) - timedelta(days=1)
    trigger = ScheduleTrigger("orders", 0, config, last=last)
    fires: list[Fire] = []
    errors: list[str | None] = []

    async def flaky(fire: Fire) -> None:
        if not errors:
            errors.append(None)
            raise OSError("store is down")
        errors.append(trigger.status.error)
        fires.append(fire)

    asyncio.run(_run_for(trigger, 0.8, flaky))
    expected_windows = 1
    assert expected_windows == len(fires)
    assert errors[1] is not None and "store is down" in errors[1]
    assert trigger.status.error is None


def test_idle_trigger_uses_no_cpu() -> None:
    """Waiting for a daily tick sleeps: no polling loop burns CPU."""
    trigger = ScheduleTrigger("orders", 0, TriggerConfig(schedule=ScheduleConfig(
        cron="0 2 1 1 *")))
    fires: list[tuple[float, Fire]] = []
    before = time.process_time()
    asyncio.run(_run_for(trigger, 0.5, _collect(fires)))
    used = time.process_time() - before
    assert fires == []
    assert used < 0.1


def test_fire_names_the_tick_in_the_trigger_time_zone() -> None:
    """The dedupe key and window text use the schedule's zone, identical on every server."""
    config = TriggerConfig(schedule=ScheduleConfig(cron="0 2 * * *", timezone="Europe/Berlin"))
    trigger = ScheduleTrigger("orders", 0, config)
    tick = trigger.schedule.next_after(_berlin(2026, 11, 24, 12))
    fire = trigger.fire((trigger.schedule.prev_before(tick), tick))
    expected = ("schedule", "orders:0:schedule:2026-11-25T02:00:00+01:00",
                {"window": {"start": "2026-11-24T02:00:00+01:00",
                            "end": "2026-11-25T02:00:00+01:00"}})
    assert expected == (fire.kind, fire.dedupe_key, fire.info)
