"""Benchmark: from an event to its run's start, through a real ``headwater serve``.

Run:  python bench/trigger_latency.py [--events 50] [--cases files,notify,message,dataset]
      python bench/trigger_latency.py --history 100000     # (a) on an empty, then a big store
      python bench/trigger_latency.py --schedules          # 200 minutely schedules, CPU

A generated project in a temporary folder is served by ``headwater serve`` in its own
process; this process makes one event at a time, waits for the run it causes to finish,
and reads the run's ``started_at`` from the store (the value the engine records when the
run really starts, after planning). Latency = started_at - event time, where the event is

  files     the moment a CSV file is closed in the watched folder
            (``files: {settle: 50ms, batch_window: 20ms}``)
  notify    the commit of ``INSERT ...; NOTIFY channel`` on PostgreSQL
            (``table_change: {probe: ..., notify: channel}``)
  message   the publish of a NATS JetStream message (``message: {subject: ...}``)
  dataset   the commit of a new version of the upstream dataset, as recorded in the store
            (the upstream pipeline is queued through the Python API and run by the server)

Targets per case: p50 <= 0.3 s and p99 <= 1 s. A case whose trigger module or service is
missing prints ``skipped: ...`` instead. Besides the total, each case prints the two halves
the store can tell apart: event -> run queued (detection) and queued -> started (dispatch).

``--history N`` seeds the store with N finished runs (one step run each; a bulk insert)
before the server starts, and repeats the files case on the empty and the seeded store: the
latency must stay flat (the script prints the ratio of the medians).

``--schedules`` serves 200 pipelines with a ``* * * * *`` schedule for ``--schedule-seconds``
(120) and samples the server's CPU every second: the mean includes the 200 runs a minute;
the median second is the idle floor between ticks.

This file also holds the serving helpers ``serve_load.py`` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import headwater_exe, machine_line, table

PG_ADMIN = os.environ.get("HEADWATER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
NATS_URL = os.environ.get("HEADWATER_TEST_NATS", "nats://127.0.0.1:4222")
TARGET_P50 = 0.3
TARGET_P99 = 1.0
CASES = ("files", "notify", "message", "dataset")
FINISHED = ("succeeded", "failed", "cancelled")
RUN_TIMEOUT = 30.0
STORE_POLL = 0.01

# --------------------------------------------------------------------------- serving


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """``headwater serve`` on a free loopback port, its stderr in ``<root>/serve.log``."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        import httpx

        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "serve.log"
        self._log = self.log.open("a")
        self.proc = subprocess.Popen(
            [headwater_exe(), "serve", "--port", str(self.port), "--project", str(root),
             "--worker", "bench"],
            stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise SystemExit("headwater serve did not start:\n" + self.log.read_text()[-4000:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def serving(root: Path, env: dict[str, str] | None = None) -> Iterator[Served]:
    server = Served(root, env)
    try:
        yield server
    finally:
        server.stop()


def store_url(root: Path) -> str:
    """The project's store URL as SQLAlchemy opens it (relative SQLite made absolute)."""
    from headwater.runtime import ProjectRuntime

    runtime = ProjectRuntime.load(root)
    try:
        return runtime.store.url
    finally:
        runtime.close()


class StoreReader:
    """Reads run timings straight from the store tables (no server API in the way)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        from headwater.store.store import Store

        Store(url).close()  # create or upgrade the tables before anyone reads them
        self.engine = create_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    def last_seq(self, pipeline: str) -> int:
        from sqlalchemy import func, select

        from headwater.store import schema as t

        with self.engine.connect() as conn:
            value = conn.execute(select(func.coalesce(func.max(t.runs.c.seq), 0)).where(
                t.runs.c.pipeline == pipeline)).scalar()
        return int(value or 0)

    def run_count(self, pipeline: str) -> int:
        from sqlalchemy import func, select

        from headwater.store import schema as t

        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.runs).where(
                t.runs.c.pipeline == pipeline)).scalar() or 0)

    def finished_after(self, pipeline: str, seq: int) -> dict[str, Any] | None:
        """The first run of ``pipeline`` after ``seq``, once it has finished."""
        from sqlalchemy import select

        from headwater.store import schema as t

        query = (select(t.runs.c.id, t.runs.c.seq, t.runs.c.status, t.runs.c.created_at,
                        t.runs.c.started_at, t.runs.c.error)
                 .where(t.runs.c.pipeline == pipeline, t.runs.c.seq > seq)
                 .order_by(t.runs.c.seq).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None or row["status"] not in FINISHED:
            return None
        return {k: _aware(v) for k, v in row.items()}

    def wait_run(self, pipeline: str, seq: int, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.finished_after(pipeline, seq)
            if row is not None:
                return row
            time.sleep(STORE_POLL)
        raise TimeoutError(f"no finished run of {pipeline} after seq {seq} in {timeout:.0f} s")

    def latest_version(self, dataset: str) -> dict[str, Any] | None:
        from sqlalchemy import select

        from headwater.store import schema as t

        query = (select(t.dataset_versions.c.version, t.dataset_versions.c.created_at)
                 .where(t.dataset_versions.c.dataset == dataset)
                 .order_by(t.dataset_versions.c.version.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else {k: _aware(v) for k, v in row.items()}


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): with 50 values, p99 is the largest."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values)}


@dataclass
class CaseResult:
    case: str
    total: list[float]
    detect: list[float]
    """event -> run queued (created_at)."""
    dispatch: list[float]
    """run queued -> started_at."""
    failed_runs: int = 0
    extra_runs: int = 0
    """Runs beyond one per event: a duplicate fire (a bug) that also spoils the pairing."""
    skipped: str | None = None

    @property
    def verdict(self) -> str:
        if self.skipped is not None:
            return "skipped"
        stats = summary(self.total)
        ok = stats["p50"] <= TARGET_P50 and stats["p99"] <= TARGET_P99 and not self.extra_runs
        return "PASS" if ok else "FAIL"


def print_results(results: Sequence[CaseResult], title: str) -> None:
    print(f"\n{title}")
    rows: list[list[object]] = []
    for r in results:
        if r.skipped is not None:
            rows.append([r.case, 0, "-", "-", "-", "-", "-", "-", "skipped"])
            continue
        s = summary(r.total)
        rows.append([r.case, len(r.total), s["p50"], s["p90"], s["p99"], s["max"],
                     percentile(r.detect, 50), percentile(r.dispatch, 50), r.verdict])
    print(table(["case", "events", "p50 s", "p90 s", "p99 s", "max s", "detect p50",
                 "dispatch p50", f"p50<={TARGET_P50} p99<={TARGET_P99}"], rows))
    for r in results:
        if r.skipped is not None:
            print(f"  {r.case}: skipped: {r.skipped}")
        if r.failed_runs:
            print(f"  note: {r.failed_runs} run(s) of {r.case} did not succeed "
                  "(latency still counts: the run started)")
        if r.extra_runs:
            print(f"  WARNING: {r.case}: {r.extra_runs} run(s) more than events: a duplicate "
                  "fire; the pairing of events and runs is off")


# --------------------------------------------------------------------------- project

STEP = "  - id: one\n    sql: SELECT 1 AS x\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_project(root: Path, cases: Sequence[str], *, pg_url: str | None = None,
                  subject: str = "", settings: str = "") -> None:
    """The project: one pipeline per case, each a single no-op SQL step."""
    connections = []
    if "notify" in cases and pg_url:
        connections.append(f"  pg: {{type: postgres, url: \"{pg_url}\"}}")
    if "message" in cases:
        connections.append(f"  bus: {{type: nats, url: \"{NATS_URL}\"}}")
    text = "name: latency\n" + settings
    if connections:
        text += "connections:\n" + "\n".join(connections) + "\n"
    write(root / "headwater.yaml", text)
    pipelines = root / "pipelines"
    if "files" in cases:
        (root / "landing").mkdir(parents=True, exist_ok=True)
        write(pipelines / "on_file.yaml",
              "name: on_file\ntriggers:\n"
              "  - files: {path: landing, pattern: \"*.csv\", settle: 50ms, batch_window: 20ms}\n"
              "steps:\n" + STEP)
    if "notify" in cases:
        write(pipelines / "on_notify.yaml",
              "name: on_notify\ntriggers:\n"
              "  - table_change: {connection: pg, probe: \"SELECT max(id) FROM bench_events\","
              " every: 30s, notify: bench_events}\n"
              "steps:\n" + STEP)
    if "message" in cases:
        write(pipelines / "on_message.yaml",
              f"name: on_message\ntriggers:\n  - message: {{connection: bus, subject: {subject}}}\n"
              "steps:\n" + STEP)
    if "dataset" in cases:
        write(pipelines / "up.yaml",
              "name: up\nsteps:\n" + STEP +
              "  - id: out\n    publish: {input: one, dataset: up, mode: append}\n")
        write(pipelines / "down.yaml",
              "name: down\ntriggers:\n  - dataset: up\nsteps:\n" + STEP)


def available(case: str) -> str | None:
    """None when ``case`` can run here, else why it cannot."""
    import importlib

    if case == "notify":
        try:
            importlib.import_module("headwater.triggers.table_change")
        except ImportError as exc:
            return f"not available (headwater.triggers.table_change: {exc})"
        try:
            import psycopg

            with psycopg.connect(PG_ADMIN, connect_timeout=3):
                pass
        except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL here"
            return f"not available (PostgreSQL at {PG_ADMIN}: {type(exc).__name__})"
    if case == "message":
        try:
            importlib.import_module("headwater.triggers.messages")
            import nats  # noqa: F401
        except ImportError as exc:
            return f"not available ({exc})"
        try:
            asyncio.run(_nats_ping())
        except Exception as exc:  # noqa: BLE001
            return f"not available (NATS at {NATS_URL}: {type(exc).__name__})"
    return None


async def _nats_ping() -> None:
    import nats

    nc = await nats.connect(NATS_URL, connect_timeout=3, allow_reconnect=False)
    await nc.close()


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database with table ``bench_events``; yields its URL."""
    import psycopg

    name = f"hw_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_events (id serial PRIMARY KEY, at timestamptz)")
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- events

Event = Callable[[int], datetime]
"""Make event ``i`` happen; return when it happened (UTC)."""


def measure_case(case: str, reader: StoreReader, pipeline: str, event: Event, events: int,
                 *, event_time: Callable[[datetime], datetime] | None = None,
                 warmup: int = 2) -> CaseResult:
    """Make ``warmup`` + ``events`` events one at a time, each after the previous run."""
    result = CaseResult(case, [], [], [])
    before = reader.run_count(pipeline)
    for i in range(warmup + events):
        seq = reader.last_seq(pipeline)
        at = event(i)
        row = reader.wait_run(pipeline, seq)
        if event_time is not None:
            at = event_time(at)
        if i < warmup:  # the first run imports the engine's libraries in the server
            continue
        if row["status"] != "succeeded":
            result.failed_runs += 1
        result.total.append((row["started_at"] - at).total_seconds())
        result.detect.append((row["created_at"] - at).total_seconds())
        result.dispatch.append((row["started_at"] - row["created_at"]).total_seconds())
        if sys.stdout.isatty():
            print(f"  {case} {i - warmup + 1}/{events}: {result.total[-1]:.3f} s   ",
                  end="\r", flush=True)
    if sys.stdout.isatty():
        print(" " * 60, end="\r")
    time.sleep(1.0)  # a duplicate fire would queue its run by now
    result.extra_runs = reader.run_count(pipeline) - before - warmup - events
    return result


def file_event(root: Path) -> Event:
    def make(i: int) -> datetime:
        path = root / "landing" / f"f{i:06d}.csv"
        with path.open("w") as handle:
            handle.write(f"id\n{i}\n")
        return datetime.now(UTC)

    return make


def notify_event(pg_url: str) -> tuple[Event, Callable[[], None]]:
    import psycopg

    conn = psycopg.connect(pg_url)

    def make(i: int) -> datetime:
        conn.execute("INSERT INTO bench_events (at) VALUES (now())")
        conn.execute("NOTIFY bench_events")
        at = datetime.now(UTC)
        conn.commit()  # the NOTIFY is delivered at commit
        return at

    return make, conn.close


class NatsPublisher:
    """A JetStream publisher on its own event loop (this process is synchronous)."""

    def __init__(self, subject: str) -> None:
        import nats

        self.subject = subject
        self.loop = asyncio.new_event_loop()
        self.nc = self.loop.run_until_complete(nats.connect(NATS_URL))
        self.js = self.nc.jetstream()

    def publish(self, i: int) -> datetime:
        at = datetime.now(UTC)
        self.loop.run_until_complete(self.js.publish(self.subject, f'{{"i": {i}}}'.encode()))
        return at

    def wait_stream(self, timeout: float = 30.0) -> None:
        """Until the trigger created the stream that captures the subject."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.js.find_stream_name_by_subject(self.subject))
                return
            time.sleep(0.2)
        raise TimeoutError(f"no JetStream stream for {self.subject} after {timeout:.0f} s")

    def close(self) -> None:
        async def cleanup() -> None:
            with contextlib.suppress(Exception):
                name = await self.js.find_stream_name_by_subject(self.subject)
                await self.js.delete_stream(name)
            await self.nc.close()

        self.loop.run_until_complete(cleanup())
        self.loop.close()


def dataset_event(root: Path, reader: StoreReader) -> tuple[Event, Callable[[datetime], datetime],
                                                            Callable[[], None]]:
    """Queue the upstream pipeline (Python API); the server runs it and the publish fires
    ``down``. The event time is the new version's commit as the store records it."""
    import headwater as hw

    project = hw.Project(root)

    def make(i: int) -> datetime:
        before = reader.last_seq("up")
        project.queue("up")
        row = reader.wait_run("up", before)
        if row["status"] != "succeeded":
            raise SystemExit(f"the upstream run failed: {row['error']}")
        return datetime.now(UTC)

    def version_time(_unused: datetime) -> datetime:
        version = reader.latest_version("up")
        assert version is not None
        return version["created_at"]  # type: ignore[no-any-return]

    return make, version_time, project.close


def run_cases(cases: Sequence[str], events: int, *, settings: str = "",
              history: int = 0) -> list[CaseResult]:
    """Serve one project with a pipeline per available case and measure each case."""
    skipped = {c: why for c in cases if (why := available(c)) is not None}
    live = [c for c in cases if c not in skipped]
    results = {c: CaseResult(c, [], [], [], skipped=why) for c, why in skipped.items()}
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hw-latency-")))
        pg_url = stack.enter_context(pg_database()) if "notify" in live else None
        subject = f"hwbench.{uuid.uuid4().hex[:8]}"
        write_project(root, live, pg_url=pg_url, subject=subject, settings=settings)
        url = store_url(root)
        reader = StoreReader(url)
        stack.callback(reader.close)
        if history:
            seed_history(url, history, ["on_file", "other_a", "other_b"])
        server = stack.enter_context(serving(root))
        stack.callback(_print_errors, server)
        for case in live:
            print(f"measuring {case} ({events} events) ...", flush=True)
            if case == "files":
                results[case] = measure_case(case, reader, "on_file", file_event(root), events)
            elif case == "notify":
                assert pg_url is not None
                make, close = notify_event(pg_url)
                stack.callback(close)
                results[case] = measure_case(case, reader, "on_notify", make, events)
            elif case == "message":
                publisher = NatsPublisher(subject)
                stack.callback(publisher.close)
                publisher.wait_stream()
                results[case] = measure_case(case, reader, "on_message", publisher.publish,
                                             events)
            elif case == "dataset":
                make, when, close = dataset_event(root, reader)
                stack.callback(close)
                results[case] = measure_case(case, reader, "down", make, events,
                                             event_time=when)
    return [results[c] for c in cases]


def _print_errors(server: Served) -> None:
    """Show the server's warnings and errors, so a slow or skipped case can be explained."""
    lines = [line for line in server.log.read_text().splitlines()
             if " ERROR " in line or " WARNING " in line or "Traceback" in line]
    if lines:
        print(f"server log ({len(lines)} warning/error lines; first 10):")
        for line in lines[:10]:
            print("  " + line[:200])


# --------------------------------------------------------------------------- history


def seed_history(url: str, count: int, pipelines: Sequence[str]) -> None:
    """Insert ``count`` finished runs (one step run each) in 10,000-row batches."""
    from sqlalchemy import create_engine, func, insert, select

    from headwater.store import schema as t

    started = time.perf_counter()
    engine = create_engine(url)
    base = datetime.now(UTC) - timedelta(days=60)
    with engine.begin() as conn:
        first = int(conn.execute(select(func.coalesce(func.max(t.runs.c.seq), 0))).scalar() or 0)
        for chunk in range(0, count, 10_000):
            runs, steps = [], []
            for n in range(chunk, min(count, chunk + 10_000)):
                at = base + timedelta(seconds=n * 50)
                run_id = f"{at:%Y%m%d-%H%M%S}-h{n:07d}"
                runs.append({
                    "id": run_id, "seq": first + n + 1, "pipeline": pipelines[n % len(pipelines)],
                    "status": "succeeded" if n % 20 else "failed", "trigger": "files",
                    "trigger_info": {"files": [f"landing/old{n}.csv"]}, "params": {},
                    "code_version": "0" * 16, "created_at": at, "started_at": at,
                    "finished_at": at + timedelta(seconds=2), "heartbeat_at": at,
                    "worker": "history", "cancel_requested": False,
                    "error": None if n % 20 else "step one: boom"})
                steps.append({"run_id": run_id, "step_id": "one", "kind": "sql", "attempt": 1,
                              "status": runs[-1]["status"], "started_at": at,
                              "finished_at": at + timedelta(seconds=1), "seconds": 1.0})
            conn.execute(insert(t.runs), runs)
            conn.execute(insert(t.step_runs), steps)
    engine.dispose()
    print(f"seeded {count:,} past runs in {time.perf_counter() - started:.1f} s", flush=True)


def history_mode(events: int, count: int) -> list[CaseResult]:
    empty = run_cases(["files"], events)[0]
    empty.case = "files, empty store"
    seeded = run_cases(["files"], events, history=count)[0]
    seeded.case = f"files, {count:,} past runs"
    return [empty, seeded]


# --------------------------------------------------------------------------- schedules


def schedules_mode(pipelines: int, seconds: float) -> None:
    import psutil

    with tempfile.TemporaryDirectory(prefix="hw-schedules-") as tmp:
        root = Path(tmp)
        write(root / "headwater.yaml", "name: schedules\n")
        for i in range(pipelines):
            write(root / "pipelines" / f"tick{i:03d}.yaml",
                  f"name: tick{i:03d}\ntriggers:\n  - schedule: {{cron: \"* * * * *\"}}\n"
                  "steps:\n" + STEP)
        reader = StoreReader(store_url(root))
        with serving(root) as server:
            proc = psutil.Process(server.pid)
            proc.cpu_percent(None)
            cpu0 = proc.cpu_times()
            samples = []
            end = time.monotonic() + seconds
            print(f"sampling the server's CPU for {seconds:.0f} s ...", flush=True)
            while time.monotonic() < end:
                time.sleep(1.0)
                samples.append(proc.cpu_percent(None))
            cpu1 = proc.cpu_times()
            rss = proc.memory_info().rss / 2**20
        used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        runs = _count_runs(reader)
        reader.close()
    samples.sort()
    print(table(["pipelines", "seconds", "cpu s", "mean cpu %", "median second %",
                 "p90 second %", "runs", "rss MiB"],
                [[pipelines, seconds, used, 100 * used / seconds, samples[len(samples) // 2],
                  percentile(samples, 90), runs, rss]]))


def _count_runs(reader: StoreReader) -> int:
    from sqlalchemy import func, select

    from headwater.store import schema as t

    with reader.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.runs)).scalar() or 0)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50, help="events per case (default 50)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--history", type=int, default=0, metavar="N",
                        help="seed N past runs and compare the files case with an empty store")
    parser.add_argument("--schedules", action="store_true",
                        help="CPU of 200 pipelines with minutely schedules instead")
    parser.add_argument("--schedule-pipelines", type=int, default=200)
    parser.add_argument("--schedule-seconds", type=float, default=120.0)
    args = parser.parse_args(argv)
    print(machine_line())
    if args.schedules:
        schedules_mode(args.schedule_pipelines, args.schedule_seconds)
        return 0
    if args.history:
        results = history_mode(args.events, args.history)
        print_results(results, "event -> run started_at, seconds (files trigger)")
        a, b = (percentile(r.total, 50) for r in results)
        print(f"median with {args.history:,} past runs / empty store: {b / a:.2f}x "
              f"({'flat' if b <= 1.5 * a + 0.02 else 'GROWS'})")
        return 0 if all(r.verdict == "PASS" for r in results) else 1
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    results = run_cases(cases, args.events)
    print_results(results, "event -> run started_at, seconds")
    return 0 if all(r.verdict in ("PASS", "skipped") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
