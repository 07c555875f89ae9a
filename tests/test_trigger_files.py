"""File triggers on real folders with real inotify: latency, settling, batching, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.config.models import FilesTriggerConfig
from headwater.triggers.base import Fire
from headwater.triggers.files import FileState, FilesTrigger, Settler, file_key

FOLDER = "landing/orders"


@dataclass
class Recorder:
    """The server's emit, recording each fire with the monotonic time it arrived."""

    fires: list[tuple[float, Fire]] = field(default_factory=list)

    async def __call__(self, fire: Fire) -> None:
        self.fires.append((time.monotonic(), fire))

    @property
    def files(self) -> list[str]:
        return [path for _, fire in self.fires for path in fire.info["files"]]


Scenario = Callable[[Recorder], Awaitable[None]]


def _run(trigger: FilesTrigger, scenario: Scenario, emit: Recorder | None = None) -> Recorder:
    """Run the trigger while ``scenario`` acts on the folder; then cancel it."""
    recorder = emit or Recorder()

    async def main() -> None:
        task = asyncio.create_task(trigger.run(recorder))
        try:
            await scenario(recorder)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())
    return recorder


async def _until(predicate: Callable[[], bool], timeout: float) -> float:
    """Wait until ``predicate`` holds; returns when it did (monotonic), fails on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic()


def _trigger(root: Path, seen: frozenset[str] = frozenset(), watch: bool = True,
             **options: object) -> FilesTrigger:
    settings_ = {"path": FOLDER, "pattern": "*.csv", "settle": 0.3, "batch_window": 0.2,
                 **options}
    config = FilesTriggerConfig.model_validate(settings_)
    return FilesTrigger("orders", 0, config, root, seen, watch=watch)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / FOLDER
    path.mkdir(parents=True)
    return path


def test_written_file_fires_once_within_two_seconds(tmp_path: Path, folder: Path) -> None:
    """With default settle/batch settings a new file fires in < 2 s, once; others never."""
    config = FilesTriggerConfig(path=FOLDER, pattern="*.csv")
    trigger = FilesTrigger("orders", 0, config, tmp_path)
    latency: list[float] = []

    async def scenario(rec: Recorder) -> None:
        await asyncio.sleep(0.3)
        started = time.monotonic()
        (folder / "a.csv").write_text("id\n1\n")
        (folder / "notes.txt").write_text("not data")
        (folder / ".b.csv").write_text("hidden: an in-flight temp file")
        latency.append(await _until(lambda: bool(rec.fires), 5) - started)
        await asyncio.sleep(0.5)

    rec = _run(trigger, scenario)
    assert latency[0] < 2.0
    expected = [f"{FOLDER}/a.csv"]
    assert expected == rec.files
    fire = rec.fires[0][1]
    assert fire.dedupe_key.startswith("orders:0:files:")
    assert (fire.kind, fire.pipeline, fire.trigger_index) == ("files", "orders", 0)
    assert trigger.status.last_fired_at is not None


def test_file_still_being_written_is_not_fired_until_settled(
    tmp_path: Path, folder: Path
) -> None:
    """A file growing every 0.12 s fires only after it stopped growing for ``settle``."""
    trigger = _trigger(tmp_path, settle=0.4)
    last_write: list[float] = []

    async def scenario(rec: Recorder) -> None:
        await asyncio.sleep(0.3)
        with (folder / "big.csv").open("w") as out:
            for chunk in range(6):
                out.write(f"{chunk}\n" * 1000)
                out.flush()
                last_write.append(time.monotonic())
                await asyncio.sleep(0.12)
        await _until(lambda: bool(rec.fires), 5)
        await asyncio.sleep(0.3)

    rec = _run(trigger, scenario)
    expected_size = (folder / "big.csv").stat().st_size
    [(fired_at, fire)] = rec.fires
    assert fired_at >= last_write[-1] + 0.35
    assert f'"{FOLDER}/big.csv",{expected_size},' in fire.info["fingerprints"][0]


def test_burst_of_500_files_fires_each_file_exactly_once_in_few_batches(
    tmp_path: Path, folder: Path
) -> None:
    """500 files written at once arrive in a handful of fires covering each file once."""
    trigger = _trigger(tmp_path, batch_window=0.3)
    names = [f"part-{n:04d}.csv" for n in range(500)]

    async def scenario(rec: Recorder) -> None:
        await asyncio.sleep(0.3)
        for name in names:
            (folder / name).write_text("id\n1\n")
        await _until(lambda: len(rec.files) >= len(names), 10)
        await asyncio.sleep(0.5)

    rec = _run(trigger, scenario)
    expected = [f"{FOLDER}/{name}" for name in names]
    assert expected == sorted(rec.files)
    assert len(rec.fires) <= 3
    assert len({fire.dedupe_key for _, fire in rec.fires}) == len(rec.fires)


@pytest.mark.slow
def test_burst_of_10000_files_batches_without_melting_the_cpu(
    tmp_path: Path, folder: Path
) -> None:
    """10,000 files fire in a few batches, each file once, for modest CPU time."""
    trigger = _trigger(tmp_path, batch_window=0.5)
    names = [f"part-{n:05d}.csv" for n in range(10_000)]
    cpu: list[float] = []

    async def scenario(rec: Recorder) -> None:
        await asyncio.sleep(0.3)
        for name in names:
            (folder / name).write_text("1\n")
        start = time.process_time()
        await _until(lambda: len(rec.files) >= len(names), 60)
        cpu.append(time.process_time() - start)

    rec = _run(trigger, scenario)
    expected = [f"{FOLDER}/{name}" for name in names]
    assert expected == sorted(rec.files)
    assert len(rec.fires) <= 6
    assert cpu[0] < 10.0


def test_files_present_at_start_fire_unless_seen(tmp_path: Path, folder: Path) -> None:
    """Files that arrived while nothing watched (lost events) fire; ones seen before do not."""
    (folder / "a.csv").write_text("seen before\n")
    (folder / "b.csv").write_text("arrived while the server was down\n")
    stat = (folder / "a.csv").stat()
    seen = frozenset({file_key(f"{FOLDER}/a.csv", stat.st_size, str(stat.st_mtime_ns))})

    async def scenario(rec: Recorder) -> None:
        await _until(lambda: bool(rec.fires), 5)
        await asyncio.sleep(0.5)

    rec = _run(_trigger(tmp_path, seen), scenario)
    expected = [f"{FOLDER}/b.csv"]
    assert expected == rec.files


def test_listing_finds_files_whose_events_were_lost(tmp_path: Path, folder: Path) -> None:
    """Without any inotify event the reconciling listing still fires new files."""
    trigger = _trigger(tmp_path, watch=False, interval=0.3)

    async def scenario(rec: Recorder) -> None:
        await asyncio.sleep(0.2)
        (folder / "a.csv").write_text("1\n")
        await _until(lambda: bool(rec.fires), 3)

    expected = [f"{FOLDER}/a.csv"]
    assert expected == _run(trigger, scenario).files


def test_same_file_version_never_fires_twice_but_a_rewrite_does(
    tmp_path: Path, folder: Path
) -> None:
    """Repeated listings of an unchanged file fire nothing more; new contents fire again."""
    trigger = _trigger(tmp_path, interval=0.15)

    async def scenario(rec: Recorder) -> None:
        await asyncio.sleep(0.3)
        (folder / "a.csv").write_text("1\n")
        await _until(lambda: len(rec.fires) == 1, 5)
        await asyncio.sleep(0.6)  # several listings
        assert [f"{FOLDER}/a.csv"] == rec.files
        (folder / "a.csv").write_text("1\n2\n")
        await _until(lambda: len(rec.fires) == 2, 5)

    rec = _run(trigger, scenario)
    expected = [f"{FOLDER}/a.csv"] * 2
    assert expected == rec.files
    keys = [fire.dedupe_key for _, fire in rec.fires]
    assert len(set(keys)) == len(keys)


def test_marker_file_releases_the_batch(tmp_path: Path, folder: Path) -> None:
    """With ``marker: _SUCCESS`` files wait for the marker, not for the settle time."""
    trigger = _trigger(tmp_path, settle=30, marker="_SUCCESS")
    waited: list[int] = []

    async def scenario(rec: Recorder) -> None:
        await asyncio.sleep(0.3)
        (folder / "a.csv").write_text("1\n")
        (folder / "b.csv").write_text("2\n")
        await asyncio.sleep(0.6)
        waited.append(len(rec.fires))
        (folder / "_SUCCESS").write_text("")
        await _until(lambda: bool(rec.fires), 2)

    rec = _run(trigger, scenario)
    expected_before_marker = [0]
    assert expected_before_marker == waited
    expected = [f"{FOLDER}/a.csv", f"{FOLDER}/b.csv"]
    assert expected == rec.files


def test_missing_folder_sets_error_once_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder that does not exist is reported (logged once) and watched once it appears."""
    trigger = _trigger(tmp_path)
    errors: list[str | None] = []

    async def scenario(rec: Recorder) -> None:
        await _until(lambda: trigger.status.error is not None, 2)
        errors.append(trigger.status.error)
        await asyncio.sleep(0.8)  # several retries
        (tmp_path / FOLDER).mkdir(parents=True)
        (tmp_path / FOLDER / "a.csv").write_text("1\n")
        await _until(lambda: bool(rec.fires), 6)

    with caplog.at_level(logging.WARNING, logger="headwater.triggers"):
        rec = _run(trigger, scenario)
    assert [f"folder {FOLDER} does not exist"] == errors
    assert trigger.status.error is None
    expected = [f"{FOLDER}/a.csv"]
    assert expected == rec.files
    logged_once = 1
    assert logged_once == sum("does not exist" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_folder_deleted_while_watched_recovers(tmp_path: Path, folder: Path) -> None:
    """Deleting the watched folder sets status.error; recreating it re-arms the watch."""
    trigger = _trigger(tmp_path)

    async def scenario(rec: Recorder) -> None:
        await asyncio.sleep(0.3)
        (folder / "a.csv").write_text("1\n")
        await _until(lambda: len(rec.fires) == 1, 5)
        shutil.rmtree(folder)
        await _until(lambda: trigger.status.error is not None, 5)
        folder.mkdir()
        await asyncio.sleep(0.3)
        (folder / "b.csv").write_text("2\n")
        await _until(lambda: len(rec.fires) == 2, 8)

    rec = _run(trigger, scenario)
    expected = [f"{FOLDER}/a.csv", f"{FOLDER}/b.csv"]
    assert expected == rec.files
    assert trigger.status.error is None


def test_failed_emit_is_retried_and_reported(tmp_path: Path, folder: Path) -> None:
    """When the server cannot take a fire, status.error says why and the batch is retried."""
    trigger = _trigger(tmp_path)
    seen_errors: list[str | None] = []

    class Flaky(Recorder):
        async def __call__(self, fire: Fire) -> None:
            if not seen_errors:
                seen_errors.append(None)
                raise ConnectionError("store unreachable")
            seen_errors.append(trigger.status.error)
            await super().__call__(fire)

    async def scenario(rec: Recorder) -> None:
        await asyncio.sleep(0.3)
        (folder / "a.csv").write_text("1\n")
        await _until(lambda: bool(rec.fires), 5)

    rec = _run(trigger, scenario, Flaky())
    expected = [f"{FOLDER}/a.csv"]
    assert expected == rec.files
    assert seen_errors[1] is not None and "store unreachable" in seen_errors[1]
    assert trigger.status.error is None


@pytest.fixture
def memory_url() -> Iterator[str]:
    url = f"memory://landing-{uuid.uuid4().hex}/orders"
    yield url
    fs = fsspec.filesystem("memory")
    with contextlib.suppress(FileNotFoundError):
        fs.rm(url, recursive=True)


def test_object_store_prefix_is_listed_and_fires(tmp_path: Path, memory_url: str) -> None:
    """An fsspec URL is listed every ``interval``; settled objects fire with their URLs."""
    config = FilesTriggerConfig(path=memory_url, pattern="*.csv", settle=0.2, interval=0.2,
                                batch_window=0.1)
    trigger = FilesTrigger("orders", 1, config, tmp_path)
    fs = fsspec.filesystem("memory")

    async def scenario(rec: Recorder) -> None:
        fs.pipe(f"{memory_url}/a.csv", b"1\n")
        fs.pipe(f"{memory_url}/_SUCCESS", b"")
        await _until(lambda: bool(rec.fires), 5)
        await asyncio.sleep(0.6)

    rec = _run(trigger, scenario)
    expected = [f"{memory_url}/a.csv"]
    assert expected == rec.files


# --------------------------------------------------------------------------- settling


_STATES = st.builds(FileState, st.just("a.csv"), st.integers(0, 3), st.sampled_from("xyz"))


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0, 2), _STATES), min_size=1, max_size=20),
       settle=st.floats(0.1, 2))
def test_settler_fires_only_after_a_state_lasted_settle_seconds(
    steps: list[tuple[float, FileState]], settle: float
) -> None:
    """Observed without mtimes, a file settles exactly when one state lasted ``settle``."""
    settler = Settler(settle, trust_mtime=False)
    now, since, previous = 0.0, 0.0, None
    for gap, state in steps:
        now += gap
        if state != previous:
            since = now
        expected = now - since >= settle
        assert expected == settler.observe(state, now, wall=0.0)
        previous = None if expected else state
