"""``executor: {type: dask}``: steps on worker processes, partitioned sources fanned out,
one atomic commit per version, a worker killed mid-run, and configs that cannot work.

One LocalCluster (2 worker processes) serves the module (``dask_cluster`` in conftest);
the engine's own tests also run against it (``executor_settings`` in test_engine.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest

import headwater as hw
from tests.conftest import ProjectFactory, run_cli, write

pytest.importorskip("distributed")


def _dask(address: str) -> str:
    return f"executor: {{type: dask, address: '{address}'}}\n"


def _csv_files(root: Path, files: int, rows: int) -> int:
    """``files`` CSV files of ``rows`` rows each under landing/; ids unique overall."""
    for index in range(files):
        lines = ["id,amount,country"]
        lines += [f"{index * rows + i},{i % 97}.5,{'DE' if i % 2 else 'FR'}"
                  for i in range(rows)]
        write(root / "landing" / f"orders-{index:02d}.csv", "\n".join(lines) + "\n")
    return files * rows


FANNED = """
name: orders
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true}
  - id: clean
    sql: SELECT id, amount, country FROM raw WHERE amount >= 0
  - id: publish
    publish: {input: clean, dataset: orders}
"""


def _commits(uri: str) -> list[dict[str, Any]]:
    """The Delta log's commits (one JSON file per table version), oldest first."""
    log = Path(uri.removeprefix("file://")) / "_delta_log"
    out = []
    for path in sorted(log.glob("*.json")):
        actions = [json.loads(line) for line in path.read_text().splitlines() if line]
        out.append({"adds": sum("add" in a for a in actions),
                    "txn": [a["txn"] for a in actions if "txn" in a]})
    return out


def test_steps_run_on_worker_processes(make_project: ProjectFactory,
                                       dask_cluster: str) -> None:
    """Python and SQL steps execute in worker processes, not in the server's; their
    results come back as Parquet files in the run folder."""
    root = make_project({"p": """
    name: p
    steps:
      - id: here
        python: transforms.t:pid
      - id: twice
        sql: SELECT pid, pid * 2 AS doubled FROM here
    """}, settings=_dask(dask_cluster))
    write(root / "transforms/__init__.py", "")
    write(root / "transforms/t.py", """
    import os
    import pyarrow as pa

    def pid():
        return pa.table({"pid": [os.getpid()]})
    """)
    with hw.Project(root) as project:
        run = project.run("p")
        assert run.ok, run.error
        outputs = project.runtime.store.succeeded_outputs(run.id)
    relation = outputs["twice"]["relation"]
    assert "read_parquet(" in relation and str(root) in relation
    import duckdb

    pid, doubled = duckdb.sql(relation).fetchall()[0]
    assert pid != os.getpid()
    assert doubled == 2 * pid


def test_files_fan_out_and_publish_in_one_commit(make_project: ProjectFactory,
                                                 dask_cluster: str) -> None:
    """Twelve files are scanned as twelve tasks on the workers; the publish commits every
    part in one Delta transaction keyed by the run; the same data as the local executor."""
    root = make_project({"orders": FANNED}, settings=_dask(dask_cluster))
    total = _csv_files(root, files=12, rows=500)
    with hw.Project(root) as project:
        run = project.run("orders")
        assert run.ok, run.error
        logs = [entry["message"] for entry in project.runtime.store.logs(run.id)]
        assert "read 12 files in 12 partitions on the cluster" in logs
        table = project.dataset("orders").to_arrow()
        uri = project.runtime.store.dataset("orders")["uri"]
        again = project.run("orders")  # incremental: nothing new, nothing published
        assert again.ok, again.error
        assert 1 == len(project.runtime.store.versions("orders"))
    assert total == table.num_rows == len(set(table["id"].to_pylist()))
    commits = _commits(uri)
    assert 1 == len([c for c in commits if c["adds"]])
    data_commit = next(c for c in commits if c["adds"])
    assert data_commit["adds"] >= 1
    assert any(run.id in json.dumps(t) for t in data_commit["txn"])
    local = make_project({"orders": FANNED}, name="local")
    _csv_files(local, files=12, rows=500)
    with hw.Project(local) as project:
        assert project.run("orders").ok
        expected = project.dataset("orders").to_arrow()
    assert expected.sort_by("id").equals(table.sort_by("id"))


DIRECT = """
name: orders
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true}
  - id: publish
    publish: {input: raw, dataset: orders, split: {by: id}}
"""


def _data_files(uri: str) -> list[str]:
    """Data file names under the table root (committed or not)."""
    root = Path(uri.removeprefix("file://"))
    return sorted(p.name for p in root.rglob("*.parquet"))


def test_publish_fans_out_its_files_and_commits_them_once(make_project: ProjectFactory,
                                                          dask_cluster: str) -> None:
    """A publish straight over a fanned-out source: the workers write the Delta files
    (split column included), the server commits them in one transaction keyed by the
    run; an append with a new column evolves the schema; rows equal the local
    executor's."""
    root = make_project({"orders": DIRECT}, settings=_dask(dask_cluster))
    first = _csv_files(root, files=6, rows=400)
    with hw.Project(root) as project:
        run = project.run("orders")
        assert run.ok, run.error
        logs = [entry["message"] for entry in project.runtime.store.logs(run.id)]
        write(root / "landing" / "orders-90.csv", "id,amount,country,extra\n"
              "90000,1.5,DE,x\n90001,2.5,FR,y\n")
        write(root / "landing" / "orders-91.csv", "id,amount,country\n90002,3.5,DE\n")
        second = project.run("orders")
        assert second.ok, second.error
        table = project.dataset("orders").to_arrow()
        versions = project.runtime.store.versions("orders")
        uri = project.runtime.store.dataset("orders")["uri"]
        published = project.runtime.store.succeeded_outputs(second.id)["publish"]["info"]
    assert "wrote the version's files in 6 tasks on the cluster" in logs
    assert first + 3 == table.num_rows == len(set(table["id"].to_pylist()))
    assert {"train", "validation", "test"} >= set(table["_split"].to_pylist())
    assert ["x", "y"] == sorted(v for v in table["extra"].to_pylist() if v is not None)
    assert 2 == len(versions) and 3 == published["rows_added"]
    commits = [c for c in _commits(uri) if c["adds"]]
    assert [6, 2] == [c["adds"] for c in commits]
    assert all(name.startswith("hw-") for name in _data_files(uri))
    assert any(run.id in json.dumps(t) for t in commits[0]["txn"])
    local = make_project({"orders": DIRECT}, name="local")
    _csv_files(local, files=6, rows=400)
    with hw.Project(local) as project:
        assert project.run("orders").ok
        expected = project.dataset("orders").to_arrow()
    fanned = table.filter(pc.less(table["id"], 90000)).drop_columns(["extra"])
    assert expected.sort_by("id").equals(fanned.sort_by("id"))


def test_a_fanned_out_overwrite_replaces_the_version(make_project: ProjectFactory,
                                                     dask_cluster: str) -> None:
    """Overwrite twice over six files partitioned by country: one commit each, the
    second removes the first's rows; a frozen schema with a changed column writes
    nothing."""
    pipeline = DIRECT.replace("incremental: true", "incremental: false").replace(
        "split: {by: id}", "mode: overwrite, partition_by: [country]")
    root = make_project({"orders": pipeline}, settings=_dask(dask_cluster))
    total = _csv_files(root, files=6, rows=300)
    with hw.Project(root) as project:
        assert project.run("orders").ok
        again = project.run("orders")
        assert again.ok, again.error
        info = project.runtime.store.succeeded_outputs(again.id)["publish"]["info"]
        table = project.dataset("orders").to_arrow()
        uri = project.runtime.store.dataset("orders")["uri"]
        stats = project.runtime.store.version("orders")["stats"]
    local = make_project({"orders": pipeline}, name="local")
    _csv_files(local, files=6, rows=300)
    with hw.Project(local) as project:
        assert project.run("orders").ok and project.run("orders").ok
        expected = project.runtime.store.version("orders")["stats"]
    facts = ("kind", "nulls", "count", "min", "max", "distinct")
    assert total == stats["rows"] == expected["rows"]
    assert {c: {k: v.get(k) for k in facts} for c, v in expected["columns"].items()} == \
        {c: {k: v.get(k) for k in facts} for c, v in stats["columns"].items()}
    assert (total, total) == (info["rows_added"], info["rows_removed"])
    assert total == table.num_rows == len(set(table["id"].to_pylist()))
    assert {"DE", "FR"} == set(table["country"].to_pylist())
    assert all(name.startswith("hw-") for name in _data_files(uri))
    assert {"country=DE", "country=FR"} == {
        p.name for p in Path(uri.removeprefix("file://")).iterdir() if "=" in p.name}
    frozen = pipeline.replace("mode: overwrite", "mode: overwrite, schema: freeze")
    write(root / "pipelines" / "orders.yaml", frozen)
    write(root / "landing" / "orders-00.csv", "id,amount,country\n1,x,DE\n")
    before = _data_files(uri)
    with hw.Project(root) as project:
        failed = project.run("orders")
        assert 2 == len([c for c in _commits(uri) if c["adds"]])
    assert not failed.ok
    assert "schema is frozen" in (failed.error or "")
    assert before == _data_files(uri)


@pytest.mark.services
def test_sql_partitions_read_on_workers(make_project: ProjectFactory, dask_cluster: str,
                                        pg_database: str) -> None:
    """A PostgreSQL table with ``partitions: {column: id, count: 4}``: four tasks on the
    workers, each writing its own Parquet files; one version with every row once."""
    import psycopg

    url = pg_database.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, name text)")
        conn.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 20000) g")
    root = make_project({"load": """
    name: load
    steps:
      - id: raw
        source: {type: sql, connection: db, table: items,
                 partitions: {column: id, count: 4}}
      - id: publish
        publish: {input: raw, dataset: items}
    """}, settings=_dask(dask_cluster) + f'connections:\n  db: {{type: postgres, url: "{url}"}}\n')
    with hw.Project(root) as project:
        run = project.run("load")
        assert run.ok, run.error
        ids = project.dataset("items").to_arrow()["id"].to_pylist()
        uri = project.runtime.store.dataset("items")["uri"]
        relation = project.runtime.store.succeeded_outputs(run.id)["raw"]["relation"]
    assert sorted(ids) == list(range(1, 20001))
    names = [Path(p).name for p in relation.split("'") if p.endswith(".parquet")]
    assert {"000", "001", "002", "003"} == {name.split("-")[1] for name in names}
    assert all(len(name.split("-")) == 4 for name in names)  # part-NNN-<attempt>-MMMM
    assert 1 == len([c for c in _commits(uri) if c["adds"]])


def _worker_pids(address: str) -> dict[str, int]:
    from distributed import Client

    with Client(address, timeout=10, set_as_default=False) as client:
        return dict(client.run(os.getpid))


@pytest.mark.slow
def test_a_killed_worker_loses_nothing_and_duplicates_nothing(
        make_project: ProjectFactory, dask_cluster: str) -> None:
    """SIGKILL a worker process while it scans partitions: the scheduler runs them again
    on the other worker; the run succeeds with every row exactly once in one version."""
    from distributed import Client

    root = make_project({"orders": FANNED}, settings=_dask(dask_cluster))
    total = _csv_files(root, files=8, rows=60000)
    killed: list[int] = []
    with Client(dask_cluster, timeout=10, set_as_default=False) as client:
        pids = dict(client.run(os.getpid))

        def kill_a_busy_worker() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                busy = [w for w, keys in client.processing().items()
                        if any(str(k).startswith("hw-part-") for k in keys)]
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(pids[busy[0]])
                    return
                time.sleep(0.005)

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        with hw.Project(root) as project:
            run = project.run("orders")
            killer.join()
            assert run.ok, run.error
            table = project.dataset("orders").to_arrow()
            versions = project.runtime.store.versions("orders")
            uri = project.runtime.store.dataset("orders")["uri"]
        client.wait_for_workers(2, timeout=180)  # the nanny restarts it for later tests
    assert killed, "no partition was ever seen running"
    assert total == table.num_rows == len(set(table["id"].to_pylist()))
    assert 1 == len(versions)
    assert 1 == len([c for c in _commits(uri) if c["adds"]])
    assert not list(root.rglob("*.tmp"))


def _kill_when_busy(client: Any, pids: dict[str, int], prefix: str,
                    killed: list[int]) -> None:
    """SIGKILL the first worker seen running a task whose key starts with ``prefix``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        busy = [w for w, keys in client.processing().items()
                if any(str(k).startswith(prefix) for k in keys)]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(pids[busy[0]])
            return
        time.sleep(0.005)


@pytest.mark.services
@pytest.mark.slow
@pytest.mark.parametrize("victim", ["raw", "publish"])
def test_a_worker_killed_mid_sql_read_or_mid_publish_keeps_the_version_exact(
        make_project: ProjectFactory, dask_cluster: str, pg_database: str,
        victim: str) -> None:
    """A PostgreSQL table read in 8 partitions and published by 8 write tasks; a worker
    process is SIGKILLed while it reads a partition (``raw``) or writes its share of the
    version (``publish``). The run succeeds (or fails retryably and a rerun succeeds)
    with exactly the table's rows, once each, in one version and one data commit."""
    import psycopg
    from distributed import Client

    url = pg_database.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, name text, price numeric(12, 2))")
        conn.execute("INSERT INTO items SELECT g, repeat('item ' || g, 4), round(g / 7.0, 2) "
                     "FROM generate_series(1, 400000) g")
    root = make_project({"load": """
    name: load
    steps:
      - id: raw
        source: {type: sql, connection: db, table: items,
                 partitions: {column: id, count: 8}}
      - id: publish
        publish: {input: raw, dataset: items, mode: append}
    """}, settings=_dask(dask_cluster) + f'connections:\n  db: {{type: postgres, url: "{url}"}}\n')
    killed: list[int] = []
    with Client(dask_cluster, timeout=10, set_as_default=False) as client:
        pids = dict(client.run(os.getpid))
        killer = threading.Thread(target=_kill_when_busy,
                                  args=(client, pids, f"hw-part-{victim}-", killed))
        killer.start()
        with hw.Project(root) as project:
            run = project.run("load")
            killer.join()
            if not run.ok:  # the lost worker's tasks failed too often: retryable
                assert "may be retried" in (run.error or ""), run.error
                run = project.rerun(run.id)
            assert run.ok, run.error
            ids = project.dataset("items").to_arrow(columns=["id"])["id"].to_pylist()
            versions = project.runtime.store.versions("items")
            uri = project.runtime.store.dataset("items")["uri"]
            logs = [e["message"] for e in project.runtime.store.logs(run.id)]
        client.wait_for_workers(2, timeout=180)  # the nanny restarts it for later tests
    with psycopg.connect(url) as conn:
        expected = conn.execute("SELECT count(*), count(DISTINCT id) FROM items").fetchone()
    assert killed, f"no {victim} task was ever seen running"
    assert "wrote the version's files in 8 tasks on the cluster" in logs
    assert expected == (len(ids), len(set(ids))) == (400000, 400000)
    assert 1 == len(versions)
    assert 1 == len([c for c in _commits(uri) if c["adds"]])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_scheduler_fails_the_run_and_check_naming_it(
        make_project: ProjectFactory) -> None:
    """Nobody listens at the address: the run fails (not left running) naming it, and
    ``check --connections`` reports it."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    root = make_project({"p": """
    name: p
    steps:
      - id: one
        sql: SELECT 1 AS x
    """}, settings=f"executor: {{type: dask, address: '{address}', connect_timeout: 1s}}\n")
    with hw.Project(root) as project:
        run = project.run("p")
        reports = project.check_connections()
        assert "failed" == project.runtime.store.run(run.id)["status"]
    assert address in (run.error or "")
    assert "cannot reach the Dask scheduler" in (run.error or "")
    executor = next(r for r in reports if r["connection"] == "executor")
    assert not executor["ok"]
    assert address in executor["checks"][0]["detail"]


def test_check_connections_counts_the_workers(make_project: ProjectFactory,
                                              dask_cluster: str) -> None:
    root = make_project({}, settings=_dask(dask_cluster))
    with hw.Project(root) as project:
        executor = next(r for r in project.check_connections()
                        if r["connection"] == "executor")
    assert executor["ok"]
    assert f"reachable at {dask_cluster} with 2 workers" == executor["checks"][0]["detail"]


@pytest.mark.slow
def test_without_the_dask_extra_check_and_run_fail_clearly(
        make_project: ProjectFactory, tmp_path: Path) -> None:
    """``distributed`` not importable (shadowed by a package that raises ImportError, as
    if never installed): ``check`` names headwater.yaml, its line and the extra to
    install; a run fails with the same advice and is not left running."""
    root = make_project({"p": """
    name: p
    steps:
      - id: one
        sql: SELECT 1 AS x
    """}, settings="executor: {type: dask, local_cluster: {workers: 2}}\n")
    shadow = tmp_path / "shadow"
    write(shadow / "distributed" / "__init__.py", "raise ImportError('not installed')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shadow), *sys.path])}
    checked = run_cli("check", "--project", str(root), env=env)
    assert 2 == checked.returncode
    assert "headwater.yaml:2: executor: executor type dask needs the [dask] extra" \
        in checked.stderr
    script = ("import headwater as hw\n"
              f"with hw.Project({str(root)!r}) as p:\n"
              "    run = p.run('p')\n"
              "    print(p.runtime.store.run(run.id)['status'], run.error, sep='|')\n")
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120)
    assert ran.returncode == 0, ran.stderr
    status, error = ran.stdout.strip().split("|", 1)
    assert "failed" == status
    assert "pip install 'headwater[dask]'" in error


def test_a_dask_executor_needs_exactly_one_cluster(make_project: ProjectFactory) -> None:
    """Neither (or both) of ``address`` and ``local_cluster`` is a config error naming
    headwater.yaml and the executor key."""
    root = make_project({}, settings="executor: {type: dask}\n")
    checked = run_cli("check", "--project", str(root))
    assert 2 == checked.returncode
    assert "headwater.yaml:2" in checked.stderr
    assert "exactly one of 'address' (tcp://host:8786) and 'local_cluster'" in checked.stderr


@pytest.mark.services
@pytest.mark.slow
def test_two_servers_share_one_cluster_and_one_store(
        make_project: ProjectFactory, serve: Any, dask_cluster: str,
        pg_database: str) -> None:
    """The production topology in small: two ``serve`` processes on one PostgreSQL store
    send their runs' steps to one two-worker cluster; each run executes once, every
    remote step on a worker, every file fanned out and committed once."""
    root = make_project({"work": """
    name: work
    max_concurrent_runs: 4
    steps:
      - id: a
        sql: SELECT 1 AS x
      - id: b
        sql: SELECT x + 1 AS y FROM a
    """, "orders": FANNED}, settings=_dask(dask_cluster) + f"store: {pg_database}\n")
    total = _csv_files(root, files=6, rows=200)
    serve(root, worker="one")
    serve(root, worker="two")
    with hw.Project(root) as project:
        store = project.runtime.store
        runs = [project.queue("work") for _ in range(12)] + [project.queue("orders")]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(
                store.run(r)["status"] in ("queued", "running") for r in runs):
            time.sleep(0.2)
        assert ["succeeded"] * len(runs) == [store.run(r)["status"] for r in runs]
        assert {"one", "two"} >= {store.run(r)["worker"] for r in runs}
        workers = _worker_pids(dask_cluster)
        for run_id in runs[:-1]:
            steps = store.steps(run_id)
            assert ["a", "b"] == sorted(s["step_id"] for s in steps)  # each ran once
            outputs = store.succeeded_outputs(run_id)
            assert {outputs[s]["info"]["worker"] for s in ("a", "b")} <= set(workers)
        table = project.dataset("orders").to_arrow()
    assert total == table.num_rows == len(set(table["id"].to_pylist()))


def test_the_local_executor_never_imports_dask(make_project: ProjectFactory) -> None:
    """The seam imports ``distributed`` only for a project that names it."""
    root = make_project({"p": FANNED.replace("name: orders", "name: p")})
    _csv_files(root, files=2, rows=3)
    script = ("import sys, headwater as hw\n"
              f"with hw.Project({str(root)!r}) as p:\n"
              "    assert p.run('p').ok\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('distributed', 'dask')))\n")
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "[]" == ran.stdout.strip()


def test_a_timed_out_step_stops_on_its_worker(make_project: ProjectFactory,
                                              dask_cluster: str) -> None:
    """The server stops waiting at the timeout, and the query on the worker is
    interrupted too: the worker is free again within seconds, not at the query's end."""
    from distributed import Client

    root = make_project({"p": """
    name: p
    steps:
      - id: heavy
        sql: SELECT sum(hash(i)) AS h FROM range(50000000000) t(i)
        materialize: true
        timeout: 1500ms
    """}, settings=_dask(dask_cluster))
    with hw.Project(root) as project:
        run = project.run("p")
    assert "timed out after 1.5s" in (run.error or "")
    with Client(dask_cluster, timeout=10, set_as_default=False) as client:
        deadline = time.monotonic() + 10
        while any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(client.processing().values())


@pytest.mark.services
def test_files_behind_a_connection_are_read_on_the_server(
        make_project: ProjectFactory, dask_cluster: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Blobs on Azure (Azurite) with a secret connection: the source reads them on the
    server into the run folder (the secret never ships to a worker), and a SQL step on a
    worker reads that spill."""
    import fsspec

    from tests.test_azure_pipeline import KEY

    port = os.environ.get("AZURITE_PORT", "10000")
    conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    container = f"hw-{uuid.uuid4().hex[:10]}"
    fs = fsspec.filesystem("az", connection_string=conn)
    fs.mkdir(container)
    try:
        fs.pipe(f"{container}/landing/a.csv", b"id,v\n1,a\n2,b\n")
        fs.pipe(f"{container}/landing/b.csv", b"id,v\n3,c\n")
        monkeypatch.setenv("HW_AZ_CONN", conn)
        root = make_project({"blobs": f"""
        name: blobs
        steps:
          - id: raw
            source: {{type: files, path: "az://{container}/landing/*.csv", connection: lake}}
          - id: upper
            sql: SELECT id, upper(v) AS v FROM raw
          - id: out
            publish: {{input: upper, dataset: blobs}}
        """}, settings=_dask(dask_cluster) + 'connections:\n  lake: {type: azure_blob, '
                                               'connection_string: "${env:HW_AZ_CONN}"}\n')
        with hw.Project(root) as project:
            run = project.run("blobs")
            assert run.ok, run.error
            outputs = project.runtime.store.succeeded_outputs(run.id)
            rows = sorted(project.dataset("blobs").to_arrow().to_pylist(),
                          key=lambda r: r["id"])
        assert outputs["upper"]["info"]["worker"] is not None
        assert "az://" not in outputs["raw"]["relation"]
        assert [{"id": 1, "v": "A"}, {"id": 2, "v": "B"}, {"id": 3, "v": "C"}] == rows
    finally:
        fs.rm(container, recursive=True)


@pytest.mark.slow
def test_local_cluster_from_the_cli(make_project: ProjectFactory) -> None:
    """``executor: {type: dask, local_cluster: {workers: 2}}``: ``headwater run`` starts
    the worker processes itself, runs the pipeline on them and exits cleanly."""
    root = make_project({"orders": FANNED}, settings="executor: {type: dask, "
                                                     "local_cluster: {workers: 2}}\n")
    total = _csv_files(root, files=4, rows=50)
    ran = run_cli("run", "orders", "--project", str(root))
    assert 0 == ran.returncode, ran.stderr
    assert "Traceback" not in ran.stderr
    with hw.Project(root) as project:
        run = project.runs("orders")[0]
        outputs = project.runtime.store.succeeded_outputs(run.id)
        assert total == project.dataset("orders").to_arrow().num_rows
    assert outputs["clean"]["info"]["worker"].startswith("tcp://127.0.0.1:")
    assert 4 == outputs["raw"]["info"]["partitions"]
