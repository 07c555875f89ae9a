"""The metadata store on SQLite and the real PostgreSQL: same behaviour on both."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from headwater.exceptions import NotFoundError
from headwater.store import migrate
from headwater.store.store import Store


def test_alembic_has_a_single_head_pinned_in_code() -> None:
    """migrate.HEAD is Alembic's only head, so the fast path checks the right revision."""
    script = ScriptDirectory(str(migrate.MIGRATIONS))
    assert [migrate.HEAD] == list(script.get_heads())


def test_run_lifecycle(store_url: str) -> None:
    """A run moves queued → running → succeeded with its steps and logs recorded."""
    store = Store(store_url)
    run_id = store.create_run("p", params={"x": 1}, trigger="manual")
    assert "queued" == store.run(run_id)["status"]
    store.start_run(run_id, worker="w1")
    attempt = store.start_step(run_id, "a", "sql", 1)
    store.log(run_id, "a", "info", "hello", {"rows": 3})
    store.finish_step(attempt, "succeeded", seconds=0.1, rows_out=3,
                      output={"relation": "SELECT 1"})
    store.finish_run(run_id, "succeeded")
    run = store.run(run_id)
    assert ("succeeded", {"x": 1}, "w1") == (run["status"], run["params"], run["worker"])
    assert run["finished_at"] >= run["started_at"]
    assert {"a": {"relation": "SELECT 1"}} == store.succeeded_outputs(run_id)
    assert ["hello"] == [r["message"] for r in store.logs(run_id)]
    assert run_id == store.run(run_id[:17])["id"]  # a unique prefix is enough
    with pytest.raises(NotFoundError):
        store.run("nope")
    store.close()


def test_run_numbers_are_unique_under_concurrency(store_url: str) -> None:
    """Eight threads creating runs at once never share a sequence number."""
    store = Store(store_url)
    ids: list[str] = []

    def make() -> None:
        for _ in range(10):
            ids.append(store.create_run("p"))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [store.run(i)["seq"] for i in ids]
    assert 80 == len(set(seqs))
    store.close()


def test_versions_and_state_advance_together(store_url: str) -> None:
    """add_version records the version and the incremental state in one transaction,
    and recording the same Delta commit twice is harmless."""
    store = Store(store_url)
    store.ensure_dataset("d", "/tmp/d", "p")
    values = {"dataset": "d", "version": 1, "delta_version": 0, "run_id": "r", "pipeline": "p",
              "step_id": "pub", "code_version": "c", "trigger": "manual", "mode": "append",
              "inputs": [], "sources": [], "rows_added": 2, "rows_removed": 0,
              "rows_total": 2, "schema": []}
    store.add_version(values, {("raw", "/f.csv"): {"size": 1, "etag": "e"}})
    assert {"/f.csv": {"size": 1, "etag": "e"}} == store.state("p", "raw")
    assert 1 == store.latest_version_number("d")
    assert store.has_delta_version("d", 0)
    # a repair racing the publish records the same commit again: one version, state kept
    store.add_version(values, {("raw", "/g.csv"): {"size": 2, "etag": "f"}})
    assert [1] == [v["version"] for v in store.versions("d")]
    assert ["/f.csv", "/g.csv"] == sorted(store.state("p", "raw"))
    store.close()


def test_cancel_of_queued_run_is_immediate(store_url: str) -> None:
    """A queued run is cancelled at once; a running one is asked to stop."""
    store = Store(store_url)
    queued = store.create_run("p")
    assert "cancelled" == store.request_cancel(queued)
    running = store.create_run("p")
    store.start_run(running)
    assert "cancelling" == store.request_cancel(running)
    assert store.cancel_requested(running)
    store.close()


def test_relative_sqlite_path_is_relative_to_project(tmp_path: Path) -> None:
    """``sqlite:///.headwater/x.db`` lands in the project folder, not the cwd."""
    store = Store("sqlite:///.headwater/x.db", tmp_path)
    store.create_run("p")
    store.close()
    assert (tmp_path / ".headwater" / "x.db").is_file()


def test_migrations_match_the_tables(store_url: str) -> None:
    """A store migrated to head has exactly the tables and indexes schema.py declares."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from headwater.store.schema import metadata

    store = Store(store_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    store.close()
    assert [] == diff
