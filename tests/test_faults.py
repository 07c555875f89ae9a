"""Faults of the services around a run (issue 8, "Prove it"): PostgreSQL restarted mid-run
(the store, a SQL source, a table-change probe), Azurite stopped mid-upload, a full disk.

Each fault is real: every backend connection of a throwaway database is terminated (what a
client sees of a PostgreSQL restart), a private Azurite process is killed, a warehouse sits
on a 2 MB tmpfs. After each: the run succeeded (retried) or failed naming the cause,
nothing is partial (Delta commits == recorded versions), no run is left ``running``, the
incremental state did not advance past the data, and the next run ingests every row once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

import headwater as hw
from headwater.datasets import delta
from headwater.exceptions import StoreError
from headwater.store.store import Store
from tests.conftest import INCREMENTAL_ORDERS, PG_ADMIN, ProjectFactory

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class FaultDb:
    """A throwaway PostgreSQL database whose connections the test can cut at will."""

    name: str

    @property
    def plain(self) -> str:
        return f"{PG_ADMIN.rsplit('/', 1)[0]}/{self.name}"

    @property
    def url(self) -> str:
        return self.plain.replace("postgresql://", "postgresql+psycopg://", 1)

    def execute(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.plain, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []

    def restart(self, where: str = "") -> int:
        """Terminate every other backend of this database (a restart, as clients see it);
        ``where`` narrows it (a SQL condition on ``pg_stat_activity``). Returns how many."""
        rows = self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            + (f" AND {where}" if where else ""))
        return sum(1 for (done,) in rows if done)


@pytest.fixture
def fault_db() -> Iterator[FaultDb]:
    db = FaultDb(f"hw_fault_{uuid.uuid4().hex[:10]}")
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db.name}"')
    try:
        yield db
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (``initdb`` + ``pg_ctl`` as the ``postgres``
    OS user), so it can really be restarted. Same interface as :class:`FaultDb`."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hw-pg-"))
        shutil.chown(self.dir, "postgres")
        self.port = _free_port()
        self.plain = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.url = self.plain.replace("postgresql://", "postgresql+psycopg://", 1)
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-A", "trust",
                          "-U", "postgres", "--no-sync")
        self._ctl("start")

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True,
                       capture_output=True, timeout=120)

    def _ctl(self, action: str) -> None:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off")
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast",
                          "-w", "-l", str(self.dir / "log"), "-o", options, action)

    def execute(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.plain, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []

    def restart(self, where: str = "") -> int:
        """A real restart (fast shutdown: every session is ended, then it starts again)."""
        self._ctl("restart")
        return 1

    def down(self) -> None:
        self._ctl("stop")

    def up(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._ctl("stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(params=["terminate", "restart"])
def pg_fault(request: pytest.FixtureRequest) -> Iterator[FaultDb | PrivatePostgres]:
    """``terminate``: a throwaway database on the shared server whose backends the test
    terminates; ``restart``: a private cluster the test really restarts."""
    if request.param == "terminate":
        yield request.getfixturevalue("fault_db")
        return
    yield request.getfixturevalue("private_pg")


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL 15 server binaries (initdb, pg_ctl) or runuser are missing")
    cluster = PrivatePostgres()
    try:
        yield cluster
    finally:
        cluster.stop()


def until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
          proc: subprocess.Popen[str] | None = None) -> Any:
    """Wait for ``predicate``; fail at once (with its output) if ``proc`` ended meanwhile."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended before {what}: {proc.returncode}\n{out}{err}")
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


def cli(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "headwater.cli.main", *args,
                             "--project", str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})


def commits_and_records(project: hw.Project, dataset: str,
                        storage_options: dict[str, str] | None = None
                        ) -> tuple[dict[int, str], dict[int, str]]:
    """(Delta version → run id) read from the Delta log, and as the store recorded it."""
    store = project.runtime.store
    if not any(d["name"] == dataset for d in store.datasets()):
        return {}, {}
    uri = project.dataset(dataset).uri
    history = delta.fresh_history(uri, storage_options=storage_options)
    log = {dv: str(meta.get("run_id")) for dv, meta in delta.commit_metadata(history)}
    recorded = {int(v["delta_version"]): str(v["run_id"]) for v in store.versions(dataset)}
    return log, recorded


def duplicates(values: list[Any]) -> int:
    return sum(n - 1 for n in Counter(values).values() if n > 1)


def running_runs(project: hw.Project) -> list[str]:
    return [r.id for r in project.runs(limit=1000) if r.status in ("running", "queued")]


# --------------------------------------------------------------------------- PostgreSQL


def pg_settings(db: FaultDb | PrivatePostgres) -> str:
    """A store and a ``db`` connection, both in the throwaway database."""
    return f"store: {db.url}\nconnections:\n  db: {{type: postgres, url: \"{db.plain}\"}}\n"


@pytest.mark.services
def test_store_waits_out_a_restart_but_not_a_wrong_url(private_pg: PrivatePostgres) -> None:
    """A store that answered before waits for a restarting server (connections refused for
    1.5 s) instead of failing the write; a store never reached fails at once."""
    store = Store(private_pg.url)
    run_id = store.create_run("p")
    private_pg.down()
    comeback = threading.Timer(1.5, private_pg.up)
    comeback.start()
    started = time.monotonic()
    try:
        store.update_run(run_id, status="running")  # refused until the server is back
    finally:
        comeback.join()
    assert time.monotonic() - started >= 1.0
    assert "running" == store.run(run_id)["status"]
    store.close()
    started = time.monotonic()
    with pytest.raises(StoreError, match="Connection refused"):
        Store(f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/nowhere")
    assert time.monotonic() - started < 10


SQL_PIPELINE = """
name: load
steps:
  - id: raw
    retries: {count: 5, backoff: 0.5}
    source:
      type: sql
      connection: db
      query: "SELECT i.id, i.v FROM items i WHERE pg_sleep(SLEEP * sign(i.id))::text = ''"
      key: id
      incremental: {cursor: id}
  - id: wait
    needs: [raw]
    command: "touch reached; while [ ! -f go ]; do sleep 0.05; done"
  - id: publish
    needs: [wait]
    publish: {input: raw, dataset: items}
"""
"""A SQL source whose query sleeps (a window to cut it), then a step that waits for the
test's marker file (a window to cut the store's idle and heartbeating connections)."""


@pytest.mark.services
@pytest.mark.slow
def test_postgres_restart_mid_run_store_and_sql_source(
        make_project: ProjectFactory, pg_fault: FaultDb | PrivatePostgres) -> None:
    """The database holding both the store and the source loses every connection twice
    (terminated backends, or a real restart of a private cluster): while the source query
    runs (the step retries) and while a later step runs (the store reconnects). The run
    succeeds with every row once, or, when a store statement was in flight, fails naming
    the lost connection; either way nothing is partial, no run is left running, and the
    next run leaves every row in the dataset exactly once."""
    pg_fault.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    pg_fault.execute("INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 500) g")
    root = make_project({"load": SQL_PIPELINE.replace("SLEEP", "0.004")},
                        settings=pg_settings(pg_fault))
    proc = cli(root, "run", "load", env={"HEADWATER_HEARTBEAT_SECONDS": "0.05"})
    # the source query sleeps 4 ms per row (2 s in all): cut it while it runs
    until(lambda: pg_fault.execute(
        "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%pg_sleep%' AND state = 'active' "
        "AND pid <> pg_backend_pid()"), 60, "the source query to run", proc)
    assert pg_fault.restart() >= 1
    until(lambda: (root / "reached").exists() or proc.poll() is not None, 60, "the wait step")
    if proc.poll() is None:
        assert pg_fault.restart() >= 1
    (root / "go").touch()
    out, err = proc.communicate(timeout=120)
    with hw.Project(root) as project:
        store = project.runtime.store
        run = project.runs("load")[0]
        if proc.returncode == 0:
            attempts = [s["status"] for s in store.steps(run.id) if s["step_id"] == "raw"]
            assert "failed" == attempts[0] and "succeeded" == attempts[-1]  # it was retried
            ids = project.dataset("items").to_arrow()["id"].to_pylist()
            assert (0, 500) == (duplicates(ids), len(ids))
        else:  # a store statement in flight when the server went away: fail, naming it
            assert any(cause in err for cause in CUT), out + err
            assert "failed" == run.status
        log, recorded = commits_and_records(project, "items")
        assert log == recorded and len(log) <= 1
        assert [] == running_runs(project)
        pg_fault.execute("INSERT INTO items SELECT g, 'v' || g FROM generate_series(501, 600) g")
        assert project.run("load").ok  # "go" is still there: no waiting now
        ids = project.dataset("items").to_arrow()["id"].to_pylist()
        assert (0, 600) == (duplicates(ids), len(ids))
        log, recorded = commits_and_records(project, "items")
        assert log == recorded and len(log) in (1, 2)


CUT = ("metadata store error", "terminating connection", "server closed the connection",
       "connection failed", "Connection refused")
"""How a connection lost to a restart reads in a failed run's error (the database's words)."""


WATCH_PIPELINE = """
name: watch
triggers:
  - table_change: {connection: probe, probe: "SELECT max(id) FROM items", every: 300ms}
steps:
  - id: raw
    retries: {count: 3, backoff: 0.2}
    source: {type: sql, connection: db, table: items, key: id, incremental: {cursor: id}}
  - id: publish
    publish: {input: raw, dataset: items}
"""


@pytest.mark.services
@pytest.mark.slow
def test_postgres_restart_under_serve_store_and_probe(make_project: ProjectFactory,
                                                      fault_db: FaultDb,
                                                      serve: Callable[..., Any]) -> None:
    """``serve`` with its store and a table-change probe in one database: after every
    connection is cut (between runs: the dispatcher's, the heartbeat's, the probe's), the
    probe reconnects and fires for new rows, the dispatcher claims and records the run,
    every run succeeds and every row lands exactly once."""
    fault_db.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    probe = f"{fault_db.plain}?application_name=hw_probe"  # to see it in pg_stat_activity
    root = make_project({"watch": WATCH_PIPELINE},
                        settings=pg_settings(fault_db) + f"  probe: {{type: postgres, url: "
                                                         f"\"{probe}\"}}\n")
    server = serve(root)
    with hw.Project(root) as project:
        def settled(count: int) -> bool:
            if running_runs(project):
                return False
            names = {d["name"] for d in project.datasets()}
            return project.dataset("items").to_arrow().num_rows == count if "items" in names \
                else count == 0

        def runs() -> list[tuple[str, str | None]]:
            return [(r.status, r.error) for r in project.runs("watch", limit=100)]

        # the probe's first answer is its baseline: insert only after it was taken (its
        # connection is open, and a few probe intervals have passed)
        until(lambda: fault_db.execute("SELECT 1 FROM pg_stat_activity "
                                       "WHERE application_name = 'hw_probe'"),
              60, "the probe's connection")
        time.sleep(1.5)
        for first, last in ((1, 100), (101, 250), (251, 300)):
            if first > 1:
                assert fault_db.restart() >= 2, runs()  # at least the store and the probe
            fault_db.execute("INSERT INTO items SELECT g, 'v' || g "
                             "FROM generate_series(%s::int, %s::int) g", (first, last))
            try:
                until(lambda last=last: settled(last), 60, f"rows up to {last}")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: runs {runs()}") from None
        ids = project.dataset("items").to_arrow()["id"].to_pylist()
        assert (0, 300) == (duplicates(ids), len(set(ids)))
        log, recorded = commits_and_records(project, "items")
        assert log == recorded
        assert all(status == "succeeded" for status, _ in runs()), runs()
    assert server.proc.poll() is None, server.log.read_text()[-3000:]


# --------------------------------------------------------------------------- disk full

ORDERS = INCREMENTAL_ORDERS


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (CI runs as root on a fresh machine). Skipped only when mounting is
    refused (no privilege): there is no honest ENOSPC without a small filesystem."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"mounting a 2 MB tmpfs was refused: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _random_csv(path: Path, first: int, rows: int) -> None:
    """Rows with an incompressible column, so the Parquet file is about as big."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        out.write("id,blob\n")
        for n in range(first, first + rows):
            out.write(f"{n},{os.urandom(48).hex()}\n")


def test_full_disk_fails_clearly_and_changes_nothing(make_project: ProjectFactory,
                                                     tiny_disk: Path) -> None:
    """A warehouse on a full filesystem: the run fails saying so (naming the step), no
    version is recorded or committed, the incremental state keeps the file unseen, and
    once space is freed the next run ingests every row exactly once."""
    root = make_project({"orders": ORDERS}, settings=f"warehouse: {tiny_disk}/warehouse\n")
    _random_csv(root / "landing/a.csv", 0, 100)
    with hw.Project(root) as project:
        assert project.run("orders").ok
        state = project.runtime.store.state("orders", "raw")
        _random_csv(root / "landing/b.csv", 100, 40_000)  # ~4 MB on a 2 MB disk
        failed = project.run("orders")
        assert "failed" == failed.status
        error = (failed.error or "").lower()
        assert "no space left" in error and "publish" in error, failed.error
        assert f"{tiny_disk}/warehouse/orders".lower() in error  # names the warehouse
        assert state == project.runtime.store.state("orders", "raw")
        log, recorded = commits_and_records(project, "orders")
        assert log == recorded and 1 == len(recorded)
        assert [] == running_runs(project)
        subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
        again = project.run("orders")
        assert again.ok, again.error
        ids = project.dataset("orders").to_arrow()["id"].to_pylist()
        assert (0, 40_100) == (duplicates(ids), len(set(ids)))
        log, recorded = commits_and_records(project, "orders")
        assert log == recorded and 2 == len(recorded)


# --------------------------------------------------------------------------- Azurite

AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
"""Azurite's well-known development key (public)."""


def _azurite_bin() -> str:
    """The Azurite that ``scripts/start-services.sh`` installs (``npm ci`` in the repo), or
    ``$AZURITE_BIN``, or one on PATH."""
    for candidate in (os.environ.get("AZURITE_BIN"), str(REPO / "node_modules/.bin/azurite-blob"),
                      shutil.which("azurite-blob")):
        if candidate and Path(candidate).exists():
            return candidate
    raise AssertionError("Azurite is not installed: run scripts/start-services.sh azurite "
                         "(or set AZURITE_BIN)")


class Azurite:
    """A private Azurite blob service on a free port, persisting to a folder, that the test
    can kill and start again on the same storage."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                f"AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/devstoreaccount1;")

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [_azurite_bin(), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
             "--location", str(self.folder), "--skipApiVersionCheck", "--loose",
             "--disableTelemetry", "--silent"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        until(self._answers, 60, "Azurite to start")

    def _answers(self) -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{self.port}/devstoreaccount1?comp=list", timeout=1)
            return True
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def persisted(self, blob_name: str) -> bool:
        """True once Azurite saved the metadata naming ``blob_name`` to disk (it saves
        every few seconds: a SIGKILL before that loses what it acknowledged)."""
        db = self.folder / "__azurite_db_blob__.json"
        return db.exists() and blob_name in db.read_text(encoding="utf-8", errors="replace")

    def stored_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Azurite]:
    service = Azurite(tmp_path / "azurite")
    service.start()
    try:
        yield service
    finally:
        service.kill()


@pytest.mark.services
@pytest.mark.slow
def test_azurite_killed_mid_upload(make_project: ProjectFactory, azurite: Azurite,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The blob service dies while a run uploads a version's files: the run fails naming
    the warehouse (no account key printed), nothing is committed or recorded, the file
    stays unseen; once Azurite is back on the same storage, the next run leaves every row
    in the dataset exactly once."""
    import fsspec

    fs = fsspec.filesystem("az", connection_string=azurite.connection_string)
    fs.mkdir("lake")
    root = make_project({"orders": ORDERS},
                        settings=("warehouse: az://lake/warehouse\n"
                                  "warehouse_connection: lake\n"
                                  "connections:\n  lake: {type: azure_blob, "
                                  "connection_string: \"${env:HW_WH_CONN}\"}\n"))
    monkeypatch.setenv("HW_WH_CONN", azurite.connection_string)  # the port stays the same
    _random_csv(root / "landing/a.csv", 0, 100)
    first = cli(root, "run", "orders")
    out, err = first.communicate(timeout=120)
    assert 0 == first.returncode, out + err
    with hw.Project(root) as project:
        state = project.runtime.store.state("orders", "raw")
    # the first version must be durable in Azurite before it is killed (a real service's
    # acknowledged writes are): its metadata is saved to disk every few seconds
    until(lambda: azurite.persisted("_delta_log/00000000000000000000.json"), 60,
          "Azurite to save the first version")
    before = azurite.stored_bytes()
    _random_csv(root / "landing/b.csv", 100, 200_000)  # ~20 MB of incompressible text
    proc = cli(root, "run", "orders")
    until(lambda: azurite.stored_bytes() > before + 2_000_000, 120, "the upload", proc)
    azurite.kill()  # and it stays down until the run gives up
    out, err = proc.communicate(timeout=300)
    assert 1 == proc.returncode, out + err
    assert "az://lake/warehouse/orders" in err and "publish" in err, err[-2000:]
    assert AZURITE_KEY not in out + err
    azurite.start()  # same storage folder
    with hw.Project(root) as project:
        assert state == project.runtime.store.state("orders", "raw")
        log, recorded = commits_and_records(project, "orders")
        assert log == recorded and 1 == len(recorded)
        assert [] == running_runs(project)
        again = project.run("orders")
        assert again.ok, again.error
        ids = project.dataset("orders").to_arrow()["id"].to_pylist()
        assert (0, 200_100) == (duplicates(ids), len(set(ids)))
        log, recorded = commits_and_records(project, "orders")
        assert log == recorded and 2 == len(recorded)
