"""Shared fixtures: throwaway projects on disk, stores on SQLite and the real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

INCREMENTAL_ORDERS = """
name: orders
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true}
  - id: publish
    publish: {input: raw, dataset: orders}
"""
"""The smallest incremental pipeline: CSV files landing → append to ``orders``."""

COPY_ORDERS = """
name: copy
steps:
  - id: src
    source: {type: dataset, dataset: orders}
  - id: publish
    publish: {input: src, dataset: orders_copy, mode: overwrite}
"""
"""Reads the ``orders`` dataset back and overwrites ``orders_copy`` with it."""

PG_ADMIN = os.environ.get("HEADWATER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


ProjectFactory = Callable[..., Path]


@pytest.fixture
def make_project(tmp_path: Path) -> ProjectFactory:
    """Write a project: ``make_project(pipelines={"name": yaml}, files={"rel": text})``."""

    def factory(pipelines: dict[str, str] | None = None, files: dict[str, str] | None = None,
                settings: str = "", name: str = "proj") -> Path:
        root = tmp_path / name
        write(root / "headwater.yaml", f"name: {name}\n" + textwrap.dedent(settings))
        for pname, text in (pipelines or {}).items():
            write(root / "pipelines" / f"{pname}.yaml", text)
        for rel, text in (files or {}).items():
            write(root / rel, text)
        return root

    return factory


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database on loopback, dropped afterwards; yields its URL."""
    import psycopg

    name = f"hw_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"postgresql+psycopg://{base.split('://', 1)[1]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store tests run against both backends the product supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    request.applymarker(pytest.mark.services)
    yield request.getfixturevalue("pg_database")


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real ``headwater`` command in a subprocess (true exit codes)."""
    return subprocess.run([sys.executable, "-m", "headwater.cli.main", *args], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def serve() -> Iterator[Callable[..., Any]]:
    """Start real ``headwater serve`` processes; each is killed at the end of the test."""
    from tests.test_serve import Served

    started: list[Served] = []

    def start(root: Path, **kwargs: Any) -> Served:
        server = Served(root, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[str]:
    """One Dask LocalCluster per test module (2 worker processes of 1 thread); its address.

    Processes, not threads: workers then import the project as a remote cluster would,
    and a test can kill one. Starting it costs about two seconds, once per module.
    """
    distributed = pytest.importorskip("distributed")
    from headwater.engine.dask_executor import LOCAL_CLUSTER_QUIET, disconnect

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       **LOCAL_CLUSTER_QUIET)
    try:
        yield str(cluster.scheduler_address)
    finally:
        disconnect(str(cluster.scheduler_address))
        cluster.close()


@pytest.fixture(scope="module", params=["local", "dask"])
def executor_settings(request: pytest.FixtureRequest) -> str:
    """``headwater.yaml`` lines naming the executor: engine tests run on both executors
    (``make_project(..., settings=executor_settings)``)."""
    if request.param == "local":
        return ""
    address = request.getfixturevalue("dask_cluster")
    return f"executor: {{type: dask, address: '{address}'}}\n"
