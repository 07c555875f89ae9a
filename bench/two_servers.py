"""Concurrency at scale: two servers on one PostgreSQL store, CLI runs beside servers.

Three scenarios, each with real ``headwater serve`` / ``headwater run`` processes:

1. **ticks and files**: two servers share a PostgreSQL store (a throwaway database); a
   fast ``interval`` trigger ticks ``--ticks`` times while ``--files`` files land for a
   files-triggered incremental pipeline. Every tick is fired once (no gap between the
   first and the last window), queues one run, and that run's command executes once
   (it appends its run id to a file); every landed row is in the dataset exactly once.
2. **queued incremental runs**: ``--runs`` runs of one incremental pipeline are queued for
   both servers while ``--cli`` ``headwater run`` processes start at once and files keep
   landing: no row is duplicated or lost, every version is credited to the run whose
   publish step made it, no run fails or stays ``running``.
3. **SQLite beside a server**: one server on a SQLite store (files trigger) plus
   ``--sqlite-cli`` CLI runs of the same pipeline: no ``database is locked`` anywhere (run
   errors, process output, server log), no row duplicated or lost.

Prints one line per figure; every figure whose name starts with a count of failures
("double", "missed", "lost", ...) must be zero. Exit status 1 otherwise.
``--ticks 1000 --files 1000 --runs 40 --cli 5 --sqlite-cli 8`` is the full profile (the
defaults); ``tests/test_scale_concurrency.py`` runs a short one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PG_ADMIN = os.environ.get("HEADWATER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

TICK = """\
name: tick
max_concurrent_runs: 8
triggers:
  - interval: INTERVAL
steps:
  - id: mark
    command: echo "$HEADWATER_RUN_ID" >> ticks.log
"""
"""A tick's run appends its id to ``ticks.log``: a run executed twice shows up twice."""

INGEST = """\
name: ingest
triggers:
  - files: {path: in, pattern: "*.csv", settle: 200ms, batch_window: 200ms}
steps:
  - id: raw
    source: {type: files, path: in/*.csv, incremental: true}
  - id: publish
    publish: {input: raw, dataset: ingest}
"""

ORDERS = """\
name: orders
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true}
  - id: publish
    publish: {input: raw, dataset: orders}
"""

ORDERS_TRIGGERED = ORDERS.replace(
    "name: orders\n",
    'name: orders\ntriggers:\n  - files: {path: landing, pattern: "*.csv", settle: 200ms}\n')

LOCKED = "database is locked"


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _headwater(*args: str) -> list[str]:
    return [sys.executable, "-m", "headwater.cli.main", *args]


class Server:
    """One ``headwater serve`` process, its stderr in a log file."""

    def __init__(self, root: Path, worker: str) -> None:
        import httpx

        self.port = _free_port()
        self.log = root / f"serve-{worker}.log"
        with self.log.open("w") as handle:
            self.proc = subprocess.Popen(
                _headwater("serve", "--port", str(self.port), "--worker", worker,
                           "--project", str(root)),
                stdout=subprocess.DEVNULL, stderr=handle, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server {worker} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/api/health",
                             timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"server {worker} did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@contextmanager
def servers(root: Path, workers: list[str]) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        for worker in workers:
            started.append(Server(root, worker))
        yield started
    finally:
        for server in started:
            server.stop()


@contextmanager
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database; yields its SQLAlchemy URL."""
    import psycopg

    name = f"hw_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_ADMIN.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def project(base: Path, name: str, settings: str, pipelines: dict[str, str]) -> Path:
    root = base / name
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "headwater.yaml").write_text(f"name: {name}\n{settings}", encoding="utf-8")
    for pname, text in pipelines.items():
        (root / "pipelines" / f"{pname}.yaml").write_text(text, encoding="utf-8")
    return root


def land(folder: Path, number: int, rows: int) -> list[int]:
    """One CSV file of ``rows`` unique ids, landed atomically (write, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(range(number * rows, (number + 1) * rows))
    tmp = folder / f".f{number:05d}.tmp"
    tmp.write_text("id,v\n" + "".join(f"{i},{i % 7}\n" for i in ids), encoding="utf-8")
    tmp.rename(folder / f"f{number:05d}.csv")
    return ids


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def dataset_ids(hw_project: Any, name: str) -> list[int]:
    if not any(d["name"] == name for d in hw_project.datasets()):
        return []
    return [int(i) for i in hw_project.dataset(name).to_arrow()["id"].to_pylist()]


def row_figures(ids: list[int], expected: set[int], prefix: str) -> dict[str, int]:
    return {f"{prefix} rows lost": len(expected - set(ids)),
            f"{prefix} rows duplicated": sum(n - 1 for n in Counter(ids).values() if n > 1),
            f"{prefix} rows unexpected": len(set(ids) - expected)}


def misattributed_versions(hw_project: Any, dataset: str) -> int:
    """Versions not credited to the run whose publish step reported making them."""
    bad = 0
    versions = hw_project.runtime.store.versions(dataset)
    bad += len(versions) - len({v["run_id"] for v in versions})
    for version in versions:
        run = hw_project.get_run(version["run_id"])
        made = [s.info.get("version") for s in run.steps if s.step_id == "publish"]
        bad += made != [version["version"]]
    return bad


def left_running(root: Path) -> int:
    """Runs still ``running`` once every server stopped (a graceful stop re-queues its own
    runs, and a CLI run ends its own): any left is stuck."""
    import headwater as hw

    with hw.Project(root) as hwp:
        return sum(r.status == "running" for r in hwp.runs(limit=1_000_000))


# --------------------------------------------------------------------------- scenario 1


def ticks_and_files(base: Path, store: str, ticks: int, files: int,
                    interval_ms: int) -> dict[str, Any]:
    """Two servers, one fast interval trigger and files landing for a files trigger."""
    import headwater as hw
    from headwater.store.queue import last_fires

    root = project(base, "ticks", f"store: {store}\n",
                   {"tick": TICK.replace("INTERVAL", f"{interval_ms}ms"), "ingest": INGEST})
    (root / "in").mkdir()
    expected: set[int] = set()
    started = time.perf_counter()
    with servers(root, ["one", "two"]), hw.Project(root) as hwp:
        store_ = hwp.runtime.store

        def fired() -> list[dict[str, Any]]:
            return last_fires(store_, "tick", limit=1_000_000)

        pause = ticks * interval_ms / 1000 / max(files, 1)
        for number in range(files):  # spread over the ticking
            expected.update(land(root / "in", number, 10))
            time.sleep(pause)
        wait_until(lambda: len(fired()) >= ticks, 60 + ticks * interval_ms / 100, "the ticks")
        first = sorted(fired(), key=lambda f: f["event_at"])[:ticks]
        runs_by_id = {}

        def ticked_runs_done() -> bool:
            runs_by_id.clear()
            runs_by_id.update({r["id"]: r for r in store_.runs("tick", 1_000_000)})
            return all(runs_by_id.get(f["run_id"], {}).get("status") in ("succeeded", "failed")
                       for f in first)

        wait_until(ticked_runs_done, 600, "the ticks' runs")
        wait_until(lambda: len(set(dataset_ids(hwp, "ingest"))) >= len(expected),
                   600, "every landed file")
        time.sleep(2)  # anything that would ingest a file twice has had its chance
        ids = dataset_ids(hwp, "ingest")
        figures = _tick_figures(root, first, runs_by_id, interval_ms)
        figures["file files landed"] = files
        figures.update(row_figures(ids, expected, "file"))
        figures["file runs failed"] = sum(r.status == "failed" for r in hwp.runs("ingest", 100_000))
        figures["workers that ran ticks"] = len({r["worker"] for r in runs_by_id.values()
                                                 if r["worker"]})
    figures["ticks runs stuck (running after the servers stopped)"] = left_running(root)
    figures["ticks seconds"] = round(time.perf_counter() - started, 1)
    return figures


def _tick_figures(root: Path, first: list[dict[str, Any]], runs: dict[str, dict[str, Any]],
                  interval_ms: int) -> dict[str, Any]:
    ends = sorted(f["event_at"] for f in first)
    span = (ends[-1] - ends[0]).total_seconds() * 1000 if ends else 0.0
    windows = round(span / interval_ms) + 1 if ends else 0
    per_key = Counter(f["dedupe_key"] for f in first)
    run_ids = [f["run_id"] for f in first]
    executed = Counter((root / "ticks.log").read_text().split())
    return {
        "ticks fired": len(first),
        "ticks missed (gaps between first and last window)": windows - len(set(ends)),
        "ticks double-fired (fires per dedupe key > 1)": sum(n - 1 for n in per_key.values()),
        "ticks double runs (runs per fire > 1)": len(run_ids) - len(set(run_ids)),
        "ticks runs missed (fire without a run)": sum(1 for r in run_ids if r not in runs),
        "ticks runs failed": sum(1 for r in run_ids if runs.get(r, {}).get("status") == "failed"),
        "ticks double executions (command ran twice)": sum(
            n - 1 for r, n in executed.items() if n > 1),
        "ticks executions missed": sum(1 for r in run_ids if executed[r] == 0),
    }


# --------------------------------------------------------------------------- scenario 2


def queued_runs(base: Path, store: str, runs: int, cli: int, files: int) -> dict[str, Any]:
    """``runs`` queued runs across two servers plus ``cli`` CLI runs of one pipeline."""
    import headwater as hw

    root = project(base, "queued", f"store: {store}\n", {"orders": ORDERS})
    expected: set[int] = set()
    for number in range(files // 2):
        expected.update(land(root / "landing", number, 50))
    started = time.perf_counter()
    with servers(root, ["one", "two"]), hw.Project(root) as hwp:
        queued = [hwp.queue("orders") for _ in range(runs)]
        procs = [subprocess.Popen(_headwater("run", "orders", "--project", str(root)),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(cli)]
        for number in range(files // 2, files):  # more land while they take turns
            expected.update(land(root / "landing", number, 50))
            time.sleep(0.1)
        outputs = [p.communicate(timeout=900)[0] for p in procs]
        store_ = hwp.runtime.store
        wait_until(lambda: all(store_.run(r)["status"] in ("succeeded", "failed")
                               for r in queued), 900, "the queued runs")
        final = hwp.run("orders")  # whatever landed after the last turn
        figures: dict[str, Any] = {"queued runs": runs, "queued cli runs": cli,
                                   "queued files landed": files}
        figures.update(row_figures(dataset_ids(hwp, "orders"), expected, "queued"))
        figures["queued versions misattributed"] = misattributed_versions(hwp, "orders")
        figures["queued runs failed"] = sum(store_.run(r)["status"] == "failed" for r in queued)
        figures["queued cli runs failed"] = sum(p.returncode != 0 for p in procs)
        figures["queued final run failed"] = int(not final.ok)
        figures["queued versions"] = len(store_.versions("orders"))
        if figures["queued cli runs failed"]:
            sys.stderr.write("\n".join(o[-1500:] for o in outputs))
    figures["queued runs stuck (running after the servers stopped)"] = left_running(root)
    figures["queued seconds"] = round(time.perf_counter() - started, 1)
    return figures


# --------------------------------------------------------------------------- scenario 3


def sqlite_beside_server(base: Path, cli: int, files: int) -> dict[str, Any]:
    """One server on a SQLite store (files trigger) plus ``cli`` CLI runs at once."""
    import headwater as hw

    root = project(base, "sqlite", "", {"orders": ORDERS_TRIGGERED})
    (root / "landing").mkdir()
    expected: set[int] = set()
    started = time.perf_counter()
    with servers(root, ["solo"]) as (server,):
        for number in range(files // 2):
            expected.update(land(root / "landing", number, 50))
        procs = [subprocess.Popen(_headwater("run", "orders", "--project", str(root)),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(cli)]
        for number in range(files // 2, files):
            expected.update(land(root / "landing", number, 50))
            time.sleep(0.1)
        outputs = [p.communicate(timeout=900)[0] for p in procs]
        with hw.Project(root) as hwp:
            wait_until(lambda: len(set(dataset_ids(hwp, "orders"))) >= len(expected), 600,
                       "the server to ingest every file")
            time.sleep(2)
            errors = " ".join(r.error or "" for r in hwp.runs("orders", 100_000))
            figures: dict[str, Any] = {"sqlite cli runs": cli, "sqlite files landed": files}
            figures.update(row_figures(dataset_ids(hwp, "orders"), expected, "sqlite"))
            figures["sqlite 'database is locked'"] = (
                sum(o.count(LOCKED) for o in outputs) + errors.count(LOCKED)
                + server.log.read_text().count(LOCKED))
            figures["sqlite cli runs failed"] = sum(p.returncode != 0 for p in procs)
            figures["sqlite runs failed"] = sum(r.status == "failed"
                                                for r in hwp.runs("orders", 100_000))
            figures["sqlite versions misattributed"] = misattributed_versions(hwp, "orders")
            if figures["sqlite cli runs failed"]:
                sys.stderr.write("\n".join(o[-1500:] for o in outputs))
    figures["sqlite runs stuck (running after the server stopped)"] = left_running(root)
    figures["sqlite seconds"] = round(time.perf_counter() - started, 1)
    return figures


# --------------------------------------------------------------------------- main

MUST_BE_ZERO = ("lost", "duplicated", "unexpected", "missed", "double", "failed", "stuck",
                "misattributed", "database is locked")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=1000)
    parser.add_argument("--interval-ms", type=int, default=50)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--cli", type=int, default=5)
    parser.add_argument("--queued-files", type=int, default=200, help="50 rows each")
    parser.add_argument("--sqlite-cli", type=int, default=8)
    parser.add_argument("--sqlite-files", type=int, default=100, help="50 rows each")
    parser.add_argument("--only", choices=["ticks", "queued", "sqlite"], action="append")
    parser.add_argument("--dir", type=Path, default=None, help="keep the projects here")
    args = parser.parse_args(argv)
    base = args.dir or Path(tempfile.mkdtemp(prefix="hw-two-servers-"))
    only = set(args.only or ["ticks", "queued", "sqlite"])
    report: dict[str, Any] = {}
    if "ticks" in only:
        with pg_database() as store:
            report.update(ticks_and_files(base, store, args.ticks, args.files, args.interval_ms))
    if "queued" in only:
        with pg_database() as store:
            report.update(queued_runs(base, store, args.runs, args.cli, args.queued_files))
    if "sqlite" in only:
        report.update(sqlite_beside_server(base, args.sqlite_cli, args.sqlite_files))
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    bad = {k: v for k, v in report.items() if any(w in k for w in MUST_BE_ZERO) and v != 0}
    print(json.dumps({"ok": not bad, "nonzero": bad}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
