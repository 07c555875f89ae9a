"""Scale-out on Dask: the same pipelines on 1 and on 2 worker processes of a local cluster.

    python bench/scaleout.py [--rows 2000000] [--files 16] [--repeat 3] [--skip-sql]

Two pipelines, each ``source → publish (overwrite)``:

- ``files``: 16 generated CSV files (``--rows`` in total, cached in bench/.data/), a files
  source that fans out one task per file;
- ``sql``: a ``--rows`` PostgreSQL table in a throwaway database on 127.0.0.1:5432
  (created and dropped here), read with ``partitions: {column: id, count: 16}``.

Each runs on a LocalCluster of 1 and of 2 worker processes (1 thread each; DuckDB on a
worker is capped at its thread count, so 1 worker really uses 1 core). Both clusters are
started once and kept, as a server keeps its cluster: their start is not a run's cost.
One unmeasured warm-up run each, then ``--repeat`` runs taking turns (1, 2, 1, 2, ...) so
a drifting load on the shared machine hits both alike; medians are reported.

It also measures what the cost model in docs/deploy.md needs:

- dispatch overhead per task: 400 no-op tasks through the executor's own fan-out path
  (amortised, 2 workers) and 50 one-task fan-outs one after another (round trip);
- per remote step: a chain of 20 ``sql: SELECT 1`` steps on Dask vs one step;
- store writes per run: INSERT/UPDATE/DELETE statements the store executes for one run;
- the publish step's share of a run (its write tasks fan out; the commit and the version's
  statistics stay on the server);
- CPU seconds per run of the server process and of the workers, which the load of a
  shared machine does not distort as it distorts wall time.

Targets (issue 13): speed-up ≥ 1.6x from 1 to 2 workers; ≤ 20 ms dispatch per task. The
machine has 2 cores shared with other work: compare only numbers taken back to back.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / ".data"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def make_csv(rows: int, files: int) -> Path:
    """``files`` CSV files of ``rows`` rows in all (cached): ids, amounts, text, dates."""
    import duckdb

    folder = DATA / f"scaleout-{rows}-{files}"
    if (folder / ".done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    per = rows // files
    con = duckdb.connect()
    for index in range(files):
        start = index * per
        con.execute(f"""
            COPY (SELECT i AS id, (i * 7919) % 100000 AS customer_id,
                         round(((i * 31) % 100000) / 100.0, 2) AS amount,
                         ['DE', 'FR', 'US', 'IT'][1 + i % 4] AS country,
                         DATE '2024-01-01' + CAST(i % 365 AS INTEGER) AS ordered_on,
                         'order ' || i || ', note "' || (i % 13) || '"' AS note
                  FROM range({start}, {start + per}) t(i))
            TO '{folder}/orders-{index:02d}.csv' (HEADER, DELIMITER ',')""")
    con.close()
    (folder / ".done").write_text("ok")
    return folder


def make_table(rows: int) -> tuple[str, str]:
    """A throwaway database with ``orders`` of ``rows`` rows; (its url, its name)."""
    import psycopg

    name = f"hw_bench_scaleout_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        fill_table(url, rows)
    except BaseException:
        drop_database(name)
        raise
    return url, name


def fill_table(url: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint,
                        amount numeric(12, 2), country text, ordered_on date, note text)""")
        conn.execute(f"""INSERT INTO orders SELECT i, (i * 7919) % 100000,
                            round(((i * 31) % 100000) / 100.0, 2),
                            (ARRAY['DE', 'FR', 'US', 'IT'])[1 + i % 4],
                            DATE '2024-01-01' + (i % 365)::int, 'order ' || i
                         FROM generate_series(0::bigint, {rows - 1}) i""")
        conn.execute("ANALYZE orders")


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_project(root: Path, csv: Path, pg_url: str | None, address: str) -> None:
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    settings = f"name: scaleout\nexecutor: {{type: dask, address: '{address}'}}\n"
    if pg_url:
        settings += f'connections:\n  pg: {{type: postgres, url: "{pg_url}"}}\n'
    (root / "headwater.yaml").write_text(settings)
    (root / "pipelines" / "files.yaml").write_text(f"""name: files
steps:
  - id: raw
    source: {{type: files, path: "{csv}/*.csv", format: csv}}
  - id: publish
    publish: {{input: raw, dataset: orders_files, mode: overwrite}}
""")
    if pg_url:
        (root / "pipelines" / "sql.yaml").write_text("""name: sql
steps:
  - id: raw
    source: {type: sql, connection: pg, table: orders, partitions: {column: id, count: 16}}
  - id: publish
    publish: {input: raw, dataset: orders_sql, mode: overwrite}
""")
    chain = ["name: chain", "steps:", "  - id: s0", "    sql: SELECT 1 AS x"]
    for i in range(1, 20):
        chain += [f"  - id: s{i}", f"    sql: SELECT x FROM s{i - 1}"]
    (root / "pipelines" / "chain.yaml").write_text("\n".join(chain) + "\n")
    (root / "pipelines" / "one.yaml").write_text(
        "name: one\nsteps:\n  - id: s0\n    sql: SELECT 1 AS x\n")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (the cluster's workers)."""
    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def timed_runs(projects: dict[int, Any], pipeline: str, repeat: int,
               pids: dict[int, list[int]] | None = None) -> dict[int, dict[str, float]]:
    """Per cluster size: median wall seconds of ``repeat`` runs and of each step, and the
    cores the workers actually got (their CPU seconds / wall seconds).

    The sizes take turns run by run (1, 2, 1, 2, ...) after one warm-up each, so a load
    that drifts (the machine is shared) hits both alike.
    """
    import psutil

    walls: dict[int, list[float]] = {w: [] for w in projects}
    cores: dict[int, list[float]] = {w: [] for w in projects}
    cpu_server: dict[int, list[float]] = {w: [] for w in projects}
    cpu_workers: dict[int, list[float]] = {w: [] for w in projects}
    here = psutil.Process()
    steps: dict[int, dict[str, list[float]]] = {w: {} for w in projects}
    for project in projects.values():
        warm = project.run(pipeline)
        assert warm.ok, warm.error
    for _ in range(repeat):
        for workers, project in projects.items():
            cpu = cpu_seconds(pids[workers]) if pids else 0.0
            mine = sum(here.cpu_times()[:2])
            started = time.perf_counter()
            run = project.run(pipeline)
            walls[workers].append(time.perf_counter() - started)
            cpu_server[workers].append(sum(here.cpu_times()[:2]) - mine)
            if pids:
                cpu_workers[workers].append(cpu_seconds(pids[workers]) - cpu)
                cores[workers].append(cpu_workers[workers][-1] / walls[workers][-1])
            assert run.ok, run.error
            for step in project.runtime.store.steps(run.id):
                steps[workers].setdefault(step["step_id"], []).append(
                    float(step["seconds"] or 0))
    out: dict[int, dict[str, float]] = {}
    for workers in projects:
        out[workers] = {"wall": statistics.median(walls[workers]),
                        "cores": statistics.median(cores[workers]) if pids else 0.0,
                        "cpu_server": statistics.median(cpu_server[workers]),
                        "cpu_workers": statistics.median(cpu_workers[workers]) if pids
                        else 0.0}
        out[workers].update({sid: statistics.median(v) for sid, v in steps[workers].items()})
    return out


def worker_pids(address: str) -> list[int]:
    import os

    from distributed import Client

    with Client(address, timeout=10, set_as_default=False) as client:
        return [int(pid) for pid in client.run(os.getpid).values()]


def dispatch_overhead(config: Any) -> tuple[float, float]:
    """(amortised ms per task over 400 no-op tasks, round-trip ms of a one-task fan-out)."""
    from headwater.engine.dask_executor import DaskExecutor

    executor = DaskExecutor(config)
    ctx: Any = SimpleNamespace(step_id="bench", interrupted=None,
                               cancel_event=threading.Event())
    executor.map(ctx, abs, list(range(50)))  # warm: the function and the wrapper ship once
    started = time.perf_counter()
    assert executor.map(ctx, abs, list(range(-400, 0)))[0] == 400
    amortised = (time.perf_counter() - started) / 400 * 1000
    trips = []
    for _ in range(50):
        started = time.perf_counter()
        executor.map(ctx, abs, [-1])
        trips.append(time.perf_counter() - started)
    executor.shutdown()
    return amortised, statistics.median(trips) * 1000


def store_writes(project: Any, pipeline: str) -> int:
    """INSERT/UPDATE/DELETE statements the store runs for one run of ``pipeline``."""
    from sqlalchemy import event

    engine = project.runtime.store.engine
    count = [0]

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            count[0] += 1

    event.listen(engine, "before_cursor_execute", seen)
    try:
        run = project.run(pipeline)
        assert run.ok, run.error
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    return count[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-sql", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    import distributed

    import headwater as hw
    from headwater.config.models import DaskExecutorConfig
    from headwater.engine.dask_executor import LOCAL_CLUSTER_QUIET, disconnect

    csv = make_csv(args.rows, args.files)
    pg_url, pg_name = (None, None) if args.skip_sql else make_table(args.rows)
    pipelines = ["files"] + ([] if args.skip_sql else ["sql"])
    results: dict[int, dict[str, dict[str, float]]] = {1: {}, 2: {}}
    extra: dict[str, float] = {}
    clusters: dict[int, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="hw-scaleout-") as tmp, \
                contextlib.ExitStack() as stack:
            projects: dict[int, Any] = {}
            for workers in (1, 2):
                clusters[workers] = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    **LOCAL_CLUSTER_QUIET)
                root = Path(tmp) / f"w{workers}"
                write_project(root, csv, pg_url, str(clusters[workers].scheduler_address))
                projects[workers] = stack.enter_context(hw.Project(root))
            pids = {w: worker_pids(str(c.scheduler_address)) for w, c in clusters.items()}
            for name in pipelines:
                for workers, timings in timed_runs(projects, name, args.repeat, pids).items():
                    results[workers][name] = timings
            two = {2: projects[2]}
            one = timed_runs(two, "one", args.repeat)[2]["wall"]
            chain = timed_runs(two, "chain", args.repeat)[2]["wall"]
            extra["ms_per_remote_step"] = (chain - one) / 19 * 1000
            extra["store_writes_files"] = store_writes(projects[2], "files")
            extra["store_writes_chain"] = store_writes(projects[2], "chain")
            amortised, trip = dispatch_overhead(DaskExecutorConfig(
                type="dask", address=str(clusters[2].scheduler_address)))
            extra["dispatch_ms_amortised"] = amortised
            extra["dispatch_ms_round_trip"] = trip
    finally:
        for cluster in clusters.values():
            disconnect(str(cluster.scheduler_address))
            cluster.close()
        if pg_name:
            drop_database(pg_name)
    report(args, results, extra)


def report(args: Any, results: dict[int, dict[str, dict[str, float]]],
           extra: dict[str, float]) -> None:
    import os

    print(f"# scale-out: {args.rows:,} rows, {args.files} CSV files / 16 SQL partitions; "
          f"median of {args.repeat}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"{'pipeline':<8} {'1 worker s':>11} {'2 workers s':>12} {'speed-up':>9} "
          f"{'source 1→2 s':>15} {'source x':>9} {'publish s':>10} {'worker cores 1→2':>17}")
    for name in results[1]:
        one, two = results[1][name], results[2][name]
        speed = one["wall"] / two["wall"]
        source = one["raw"] / two["raw"]
        verdict = "ok" if speed >= 1.6 else "MISSED"
        print(f"{name:<8} {one['wall']:>11.2f} {two['wall']:>12.2f} {speed:>8.2f}x "
              f"{one['raw']:>7.2f}→{two['raw']:<6.2f} {source:>8.2f}x "
              f"{two['publish']:>10.2f} {one['cores']:>8.2f}→{two['cores']:<8.2f}"
              f"  target ≥1.6x end to end: {verdict}")
    print("(worker cores: CPU seconds the workers got per wall second of a run; below 1 per "
          "worker means the shared machine's other load took the rest)")
    for name in results[1]:
        one, two = results[1][name], results[2][name]
        bound = (one["cpu_server"] + one["cpu_workers"]) / (
            two["cpu_server"] + two["cpu_workers"] / 2)
        print(f"{name}: CPU s per run, server process (runner, publish commit, scheduler) "
              f"{one['cpu_server']:.2f} / {two['cpu_server']:.2f}, workers "
              f"{one['cpu_workers']:.2f} / {two['cpu_workers']:.2f} (1 / 2 workers); "
              f"on 2 idle cores, if the server's CPU were all serial: ≈ {bound:.2f}x")
    amortised = extra["dispatch_ms_amortised"]
    trip = extra["dispatch_ms_round_trip"]
    print(f"dispatch per task: {amortised:.2f} ms amortised (400 tasks), {trip:.2f} ms "
          f"round trip (one-task fan-out)   target ≤20 ms: "
          f"{'ok' if max(amortised, trip) <= 20 else 'MISSED'}")
    print(f"per remote step (chain of 20 sql steps on Dask): "
          f"{extra['ms_per_remote_step']:.1f} ms")
    print(f"store writes per run: {extra['store_writes_files']:.0f} (files → publish), "
          f"{extra['store_writes_chain']:.0f} (chain of 20 steps)")


if __name__ == "__main__":
    main()
