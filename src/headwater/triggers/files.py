"""File triggers: fire when files arrive in a local folder or an object-store prefix.

Detection has two layers because either alone fails somewhere. Local folders are watched
with inotify (``watchfiles.awatch``), which reports a write within milliseconds but can lose
events (a full kernel queue, a folder recreated, a network mount); a reconciling listing
every ``interval`` catches whatever the events missed. Object stores (``s3://``, ``az://``,
``memory://``) have no events, so they are listed every ``interval`` only.

A file fires once it is *settled*: its size and version (mtime, or the etag) unchanged for
``settle`` seconds, or, with ``marker`` set, once that marker file (``_SUCCESS``) exists in
its folder. Settled files arriving within ``batch_window`` of each other become one
:class:`Fire` listing them all, so a burst of thousands of files starts a few runs, not
thousands. A file is identified by path + size + version (:attr:`FileState.key`): the same
version never fires twice from this trigger, and the server additionally drops a repeated
``dedupe_key`` (a hash of the batch's keys) when several servers watch one folder.

This module only detects and emits; it never reads file contents, the store or the queue,
and it never raises for a missing folder or a failing emit: ``status.error`` says what is
wrong while the trigger retries with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import heapq
import json
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from stat import S_ISREG
from typing import Any, Protocol, TypeVar

from watchfiles import Change, awatch

from headwater.config.models import FilesTriggerConfig
from headwater.triggers.base import Backoff, Emit, Fire, TriggerStatus, utcnow

_T = TypeVar("_T")

Seen = Collection[str] | Callable[[str], bool]
"""Keys of files already handled (:attr:`FileState.key`), or a predicate over them."""

MAX_BATCH_FILES = 10_000
"""The most files in one Fire; a larger burst is split."""
_MAX_BATCH_DELAY = 5.0
"""A steady stream of arrivals still fires at least this often (seconds)."""
_QUANTUM = 0.05
"""Timer wake-ups are at least this far apart, so 10,000 settle deadlines cost 20 checks/s."""
_DEBOUNCE_MS = 500
_MAX_QUEUED = 1_000
_VERSION_KEYS = ("ETag", "etag", "md5Hash", "LastModified", "last_modified", "mtime", "created")


@dataclass(frozen=True)
class FileState:
    """One file as listed: ``rel`` is its path below the watched folder (POSIX)."""

    rel: str
    size: int
    version: str
    """The local mtime in nanoseconds, or an object store's etag / modification time."""
    modified: float | None = None
    """Wall-clock epoch seconds of the last write, when the filesystem tells."""


def file_key(path: str, size: int, version: str) -> str:
    """The identity of one file version: path (as in ``trigger.files``), size, version."""
    return json.dumps([path, size, version], separators=(",", ":"))


@dataclass(frozen=True)
class Listing:
    files: dict[str, FileState]
    markers: set[str]
    """Folders (``rel`` of the folder, ``""`` for the top) that hold the marker file."""


class FolderMissing(Exception):
    """The watched folder does not exist (internal: becomes ``status.error``)."""


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class _Rules:
    """Which names count as data files: the pattern, minus hidden files and the marker."""

    pattern: str
    marker: str | None

    @property
    def recursive(self) -> bool:
        return "/" in self.pattern

    def wanted(self, rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        if name == self.marker:
            return False
        first = PurePosixPath(self.pattern).name[:1]
        # Hadoop/Spark convention: "_" and "." files are metadata or in-flight temp files
        if name[:1] in "._" and first != name[:1]:
            return False
        if not self.recursive:
            return "/" not in rel and fnmatch.fnmatchcase(name, self.pattern)
        tail = self.pattern[3:] if self.pattern.startswith("**/") else None
        return fnmatch.fnmatchcase(rel, self.pattern) or (
            tail is not None and fnmatch.fnmatchcase(rel, tail))

    def is_marker(self, rel: str) -> bool:
        return self.marker is not None and rel.rsplit("/", 1)[-1] == self.marker


def _folder_of(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


# --------------------------------------------------------------------------- settling


@dataclass
class _Pending:
    state: FileState
    since: float
    check_at: float


class Settler:
    """Decides when a file has stopped changing. Pure: the caller supplies the clocks.

    A file is settled when one observed state has lasted ``settle`` seconds, counted from
    when it was first seen or, if ``trust_mtime``, from its mtime (so files that were
    already complete when the trigger started fire at once instead of after a wait).
    """

    def __init__(self, settle: float, trust_mtime: bool) -> None:
        self.settle = settle
        self.trust_mtime = trust_mtime
        self._pending: dict[str, _Pending] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def observe(self, state: FileState, now: float, wall: float) -> bool:
        """Record one observation; True when the file is settled (and no longer tracked)."""
        old = self._pending.get(state.rel)
        since = old.since if old is not None and old.state == state else now
        stable = now - since
        if self.trust_mtime and state.modified is not None:
            stable = max(stable, wall - state.modified)
        if stable >= self.settle:
            self._pending.pop(state.rel, None)
            return True
        check_at = now + self.settle - stable
        self._pending[state.rel] = _Pending(state, since, check_at)
        heapq.heappush(self._heap, (check_at, state.rel))
        return False

    def expired(self, now: float) -> list[str]:
        """Files whose settle time has come: look at them again and ``observe`` them."""
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            check_at, rel = heapq.heappop(self._heap)
            pending = self._pending.get(rel)
            if pending is not None and pending.check_at == check_at:
                due.append(rel)
        return due

    def next_check(self) -> float | None:
        while self._heap:
            check_at, rel = self._heap[0]
            pending = self._pending.get(rel)
            if pending is not None and pending.check_at == check_at:
                return check_at
            heapq.heappop(self._heap)
        return None

    def forget(self, rel: str) -> None:
        self._pending.pop(rel, None)


# --------------------------------------------------------------------------- listers


Sink = Callable[[set[str] | None], None]
"""Receives changed ``rel`` paths from a watcher; ``None`` asks for a full listing."""
Problem = Callable[[str | None], None]
"""Receives a watcher's error message, or ``None`` when it is resolved."""


class Lister(Protocol):
    """Where files are listed from: a local folder or an fsspec URL."""

    @property
    def display(self) -> str:
        """The folder as the user wrote it, for messages and ``trigger.files``."""
        ...

    @property
    def trust_mtime(self) -> bool:
        """Whether file times come from our own clock (so age since mtime counts)."""
        ...

    def list(self, rules: _Rules) -> Listing: ...

    def stat(self, rels: Iterable[str], rules: _Rules) -> dict[str, FileState | None]: ...

    def existing(self, rels: Iterable[str]) -> set[str]: ...

    def path_of(self, rel: str) -> str: ...

    async def watch(self, rules: _Rules, sink: Sink, problem: Problem) -> None: ...


@dataclass
class LocalLister:
    """A folder on this machine: inotify hints plus ``os.scandir`` listings."""

    folder: Path
    display: str
    trust_mtime: bool = True

    def path_of(self, rel: str) -> str:
        return f"{self.display.rstrip('/')}/{rel}"

    def list(self, rules: _Rules) -> Listing:
        if not self.folder.is_dir():
            raise FolderMissing(self.display)
        files: dict[str, FileState] = {}
        markers: set[str] = set()
        for rel, stat in self._walk(self.folder, "", rules.recursive):
            if rules.is_marker(rel):
                markers.add(_folder_of(rel))
            elif rules.wanted(rel):
                files[rel] = _local_state(rel, stat)
        return Listing(files, markers)

    def _walk(self, folder: Path, prefix: str,
              recursive: bool) -> Iterable[tuple[str, os.stat_result]]:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            rel = prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        yield from self._walk(Path(entry.path), rel + "/", recursive)
                elif entry.is_file():
                    yield rel, entry.stat()
            except FileNotFoundError:
                continue  # deleted between listing and stat

    def stat(self, rels: Iterable[str], rules: _Rules) -> dict[str, FileState | None]:
        out: dict[str, FileState | None] = {}
        for rel in rels:
            try:
                stat = (self.folder / rel).stat()
            except OSError:
                stat = None
            regular = stat is not None and S_ISREG(stat.st_mode)
            out[rel] = _local_state(rel, stat) if stat is not None and regular else None
        return out

    def existing(self, rels: Iterable[str]) -> set[str]:
        return {rel for rel in rels if (self.folder / rel).is_file()}

    async def watch(self, rules: _Rules, sink: Sink, problem: Problem) -> None:
        """Forward inotify changes until cancelled; re-arm when the folder comes back."""
        backoff = Backoff(first=0.25, cap=10.0)
        while True:
            if not self.folder.is_dir():
                problem(_missing(self.display))
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            try:
                await self._watch_once(rules, sink)
            except OSError as exc:
                problem(f"cannot watch folder {self.display}: {exc}")
                await asyncio.sleep(backoff.next())

    async def _watch_once(self, rules: _Rules, sink: Sink) -> None:
        root = str(self.folder)
        # a listing just after arming catches files written while nothing was watching
        rescan = asyncio.get_running_loop().call_later(0.2, sink, None)
        try:
            async for changes in awatch(
                self.folder,
                watch_filter=lambda _change, path: self._relevant(path, rules),
                recursive=rules.recursive, step=50, debounce=_DEBOUNCE_MS,
                ignore_permission_denied=True,
            ):
                if any(p == root and c == Change.deleted for c, p in changes):
                    return  # the folder itself went away: notify watches nothing now
                sink({_rel(self.folder, p) for _, p in changes if p != root})
        finally:
            rescan.cancel()

    def _relevant(self, path: str, rules: _Rules) -> bool:
        if path == str(self.folder):
            return True
        rel = _rel(self.folder, path)
        return rules.wanted(rel) or rules.is_marker(rel)


def _rel(folder: Path, path: str) -> str:
    return Path(path).relative_to(folder).as_posix()


def _local_state(rel: str, stat: os.stat_result) -> FileState:
    return FileState(rel, stat.st_size, str(stat.st_mtime_ns), stat.st_mtime)


def _missing(display: str) -> str:
    return f"folder {display} does not exist"


@dataclass
class RemoteLister:
    """An fsspec URL (``az://container/landing``): listed with etags, no events."""

    url: str
    fs: Any
    trust_mtime: bool = False  # an object store's clock is not ours

    @property
    def display(self) -> str:
        return self.url

    def path_of(self, rel: str) -> str:
        return f"{self.url.rstrip('/')}/{rel}"

    def list(self, rules: _Rules) -> Listing:
        base = self.fs._strip_protocol(self.url).rstrip("/")
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, maxdepth=None if rules.recursive else 1, detail=True)
        except FileNotFoundError as exc:
            raise FolderMissing(self.url) from exc
        files: dict[str, FileState] = {}
        markers: set[str] = set()
        for name, info in found.items():
            rel = str(name)[len(base):].lstrip("/")
            if not rel or info.get("type") == "directory":
                continue
            if rules.is_marker(rel):
                markers.add(_folder_of(rel))
            elif rules.wanted(rel):
                files[rel] = FileState(rel, int(info.get("size") or 0), _version(info))
        return Listing(files, markers)

    def stat(self, rels: Iterable[str], rules: _Rules) -> dict[str, FileState | None]:
        # one listing is cheaper than an info call per object when many are due
        listing = self.list(rules)
        return {rel: listing.files.get(rel) for rel in rels}

    def existing(self, rels: Iterable[str]) -> set[str]:
        return {rel for rel in rels if self.fs.exists(self.path_of(rel))}

    async def watch(self, rules: _Rules, sink: Sink, problem: Problem) -> None:
        return None  # object stores have no change events; the listing does the work


def _version(info: Mapping[str, Any]) -> str:
    for key in _VERSION_KEYS:
        value = info.get(key)
        if value:
            return str(value).strip('"')
    return ""


def lister_for(config: FilesTriggerConfig, root: Path,
               storage_options: Mapping[str, Any] | None = None, fs: Any = None) -> Lister:
    """A local lister for a path (relative to the project), a remote one for a URL."""
    if "://" in config.path and not config.path.startswith("file://"):
        if fs is None:
            import fsspec

            fs, _ = fsspec.core.url_to_fs(config.path, **dict(storage_options or {}))
        return RemoteLister(config.path, fs)
    raw = config.path.removeprefix("file://")
    folder = Path(raw).expanduser()
    absolute = folder if folder.is_absolute() else root / folder
    # watchfiles reports resolved paths; compare like with like
    return LocalLister(absolute.resolve(), raw)


# --------------------------------------------------------------------------- the trigger


@dataclass
class _Batch:
    files: dict[str, FileState] = field(default_factory=dict)
    first: float = 0.0
    last: float = 0.0

    def add(self, state: FileState, now: float) -> None:
        if not self.files:
            self.first = now
        self.files[state.rel] = state
        self.last = now

    def due_at(self, window: float) -> float | None:
        if not self.files:
            return None
        if len(self.files) >= MAX_BATCH_FILES:
            return self.last
        return min(self.last + window, self.first + max(_MAX_BATCH_DELAY, window))


class FilesTrigger:
    """Fires a pipeline when files settle in a folder or object-store prefix.

    ``seen`` holds the keys (:func:`file_key`) of files handled before, e.g. rebuilt by the
    server from earlier fires' ``info["fingerprints"]``; files present at start that are not
    in it fire. ``storage_options`` are fsspec options for a URL path (the resolved
    connection); ``filesystem`` overrides the fsspec filesystem; ``watch=False`` relies on
    the listing alone (network mounts where inotify sees nothing).
    """

    def __init__(
        self,
        pipeline: str,
        index: int,
        config: FilesTriggerConfig,
        root: Path,
        seen: Seen = frozenset(),
        *,
        storage_options: Mapping[str, Any] | None = None,
        filesystem: Any = None,
        watch: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.index = index
        self.config = config
        self.lister = lister_for(config, root, storage_options, filesystem)
        self.rules = _Rules(config.pattern, config.marker)
        self.settler = Settler(config.settle, self.lister.trust_mtime)
        self.status = TriggerStatus(name=f"{pipeline}:{index}")
        self._seen: Callable[[str], bool] = seen if callable(seen) else seen.__contains__
        self._watch = watch
        self._fired: dict[str, str] = {}
        self._batch = _Batch()
        self._unmarked: dict[str, FileState] = {}
        self._markers: set[str] = set()
        self._errors: dict[str, str] = {}
        self._hints: asyncio.Queue[set[str] | None] = asyncio.Queue(maxsize=_MAX_QUEUED)
        self._rescan = True

    # ----------------------------------------------------------------- the loop

    async def run(self, emit: Emit) -> None:
        watcher = None
        if self._watch:
            watcher = asyncio.create_task(
                self.lister.watch(self.rules, self._hint, self._watch_problem))
        try:
            await self._loop(emit)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def _loop(self, emit: Emit) -> None:
        next_listing = 0.0
        backoff = Backoff(first=0.25, cap=self.config.interval)
        while True:
            if self._rescan or time.monotonic() >= next_listing:
                self._rescan = False
                ok = await self._reconcile()
                delay = self.config.interval if ok else backoff.next()
                if ok:
                    backoff.reset()
                next_listing = time.monotonic() + delay
            await self._recheck()
            due = self._batch.due_at(self.config.batch_window)
            if due is not None and due <= time.monotonic():
                await self._flush(emit)
                continue
            wake = min(next_listing, self.settler.next_check() or next_listing,
                       due or next_listing)
            changed = await self._next_hints(max(wake - time.monotonic(), _QUANTUM))
            if changed:
                await self._observe(changed)

    async def _next_hints(self, timeout: float) -> set[str]:
        """Wait for watcher hints (or the timeout); drain everything already queued."""
        try:
            first = await asyncio.wait_for(self._hints.get(), timeout)
        except TimeoutError:
            return set()
        changed: set[str] = set()
        for item in (first, *self._drain()):
            if item is None:
                self._rescan = True
            else:
                changed |= item
        return changed

    def _drain(self) -> list[set[str] | None]:
        items: list[set[str] | None] = []
        while not self._hints.empty():
            items.append(self._hints.get_nowait())
        return items

    def _hint(self, changed: set[str] | None) -> None:
        try:
            self._hints.put_nowait(changed)
        except asyncio.QueueFull:
            self._rescan = True  # events were dropped: the next listing finds the files

    # ----------------------------------------------------------------- observing

    async def _reconcile(self) -> bool:
        """List everything; returns False when the folder cannot be listed."""
        try:
            listing = await asyncio.to_thread(self.lister.list, self.rules)
        except FolderMissing:
            self._problem("folder", _missing(self.lister.display))
            return False
        except Exception as exc:  # noqa: BLE001 - a store outage, bad credentials: report, retry
            self._problem("folder", f"cannot list {self.lister.display}: {exc}")
            return False
        self._problem("folder", None)
        self._markers = listing.markers
        known = {*self._fired, *self._batch.files, *self._unmarked}
        for rel in known - listing.files.keys():
            self._gone(rel)
        self._consider_all(listing.files.values())
        return True

    async def _observe(self, changed: set[str]) -> None:
        markers = {rel for rel in changed if self.rules.is_marker(rel)}
        data = [rel for rel in changed if self.rules.wanted(rel)]
        if markers:
            present = await self._io(self.lister.existing, markers)
            if present is not None:
                self._markers |= {_folder_of(rel) for rel in present}
                self._markers -= {_folder_of(rel) for rel in markers - present}
        if data:
            self._apply(await self._io(self.lister.stat, data, self.rules) or {})
        if markers:
            self._release_marked()

    async def _recheck(self) -> None:
        due = self.settler.expired(time.monotonic())
        if due:
            states = await self._io(self.lister.stat, due, self.rules)
            # a failed look is retried at the next listing, which sees every file again
            self._apply(states or {})

    async def _io(self, function: Callable[..., _T], *args: Any) -> _T | None:
        """Run blocking I/O in a thread; a failure becomes status.error, not an exception."""
        try:
            result = await asyncio.to_thread(function, *args)
        except Exception as exc:  # noqa: BLE001 - any listing failure is a status
            self._problem("folder", f"cannot read {self.lister.display}: {exc}")
            return None
        return result

    def _apply(self, states: Mapping[str, FileState | None]) -> None:
        for rel, state in states.items():
            if state is None:
                self._gone(rel)
        self._consider_all(s for s in states.values() if s is not None)

    def _consider_all(self, states: Iterable[FileState]) -> None:
        now, wall = time.monotonic(), time.time()
        for state in states:
            self._consider(state, now, wall)

    def _consider(self, state: FileState, now: float, wall: float) -> None:
        key = self._key(state)
        if self._fired.get(state.rel) == key:
            return
        if self._seen(key):
            self._fired[state.rel] = key
            return
        queued = self._batch.files.get(state.rel)
        if queued == state:
            return
        if queued is not None:  # rewritten after it settled: wait for it to settle again
            del self._batch.files[state.rel]
        if self.config.marker is not None:
            self._unmarked[state.rel] = state
            self._release_marked()
        elif self.settler.observe(state, now, wall):
            self._batch.add(state, now)

    def _release_marked(self) -> None:
        now = time.monotonic()
        for rel, state in list(self._unmarked.items()):
            if _folder_of(rel) in self._markers:
                del self._unmarked[rel]
                self._batch.add(state, now)

    def _gone(self, rel: str) -> None:
        self.settler.forget(rel)
        self._fired.pop(rel, None)
        self._batch.files.pop(rel, None)
        self._unmarked.pop(rel, None)

    # ----------------------------------------------------------------- firing

    async def _flush(self, emit: Emit) -> None:
        """Emit the batch (at most MAX_BATCH_FILES), retrying until the server takes it."""
        ordered = sorted(self._batch.files.values(), key=lambda s: s.rel)
        states, rest = ordered[:MAX_BATCH_FILES], ordered[MAX_BATCH_FILES:]
        self._batch = _Batch()
        for state in rest:
            self._batch.add(state, time.monotonic())
        fire = self.fire(states)
        backoff = Backoff(first=0.5, cap=30.0)
        while True:
            try:
                await emit(fire)
                break
            except Exception as exc:  # noqa: BLE001 - the server's failure must not kill the trigger
                self._problem("emit", f"could not queue a run for {len(states)} files: {exc}")
                await asyncio.sleep(backoff.next())
        self._problem("emit", None)
        self.status.fired()
        for state in states:
            self._fired[state.rel] = self._key(state)

    def fire(self, states: list[FileState]) -> Fire:
        """The Fire for one batch; its dedupe key hashes the batch's file keys."""
        keys = sorted(self._key(s) for s in states)
        digest = hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()[:32]
        times = [s.modified for s in states if s.modified is not None]
        event_at = datetime.fromtimestamp(min(times), UTC) if times else utcnow()
        return Fire(
            pipeline=self.pipeline,
            trigger_index=self.index,
            kind="files",
            dedupe_key=f"{self.pipeline}:{self.index}:files:{digest}",
            info={"files": [self.lister.path_of(s.rel) for s in states], "fingerprints": keys},
            event_at=min(event_at, utcnow()),
        )

    def _key(self, state: FileState) -> str:
        return file_key(self.lister.path_of(state.rel), state.size, state.version)

    # ----------------------------------------------------------------- status

    def _watch_problem(self, message: str | None) -> None:
        self._problem("folder", message)

    def _problem(self, source: str, message: str | None) -> None:
        """Track errors per source so one resolving does not hide another."""
        if message is None:
            self._errors.pop(source, None)
        else:
            self._errors[source] = message
        if self._errors:
            self.status.fail(next(iter(self._errors.values())))
        else:
            self.status.recover()

