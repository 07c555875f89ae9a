"""Two processes publishing to one dataset at once: every version credited to its own run.

One worker publishes normally; the other commits to Delta and "crashes" before recording
(the window crash repair exists for), so the first worker's repair must credit those
commits while both keep committing. Run ids are matched through commit metadata, never
by the position of an entry in the Delta log.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from headwater.datasets import delta
from headwater.datasets.publish import VersionFacts, publish_reader, reconcile
from headwater.store.store import Store

PUBLISHES = 10
REPO = Path(__file__).resolve().parent.parent


def _facts(worker: str, i: int) -> VersionFacts:
    return VersionFacts(run_id=f"{worker}-{i:02d}", pipeline="p", step_id="publish",
                        code_version="c", trigger="manual", mode="append")


def _reader(worker: str, i: int) -> pa.RecordBatchReader:
    rows = pa.table({"worker": [worker] * 3, "i": [i] * 3})
    return pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches())


def worker(store_url: str, uri: str, name: str, start_at: float, record: bool) -> None:
    """Publish ``PUBLISHES`` versions; without ``record`` commit only (crash before record)."""
    store = Store(store_url, migrate=False)
    time.sleep(max(0.0, start_at - time.time()))
    for i in range(PUBLISHES):
        facts = _facts(name, i)
        if record:
            publish_reader(store, "shared", uri, _reader(name, i), facts)
        else:
            delta.write(uri, _reader(name, i), mode="append",
                        app=delta.app_id(facts.run_id, facts.step_id, "shared"),
                        metadata=facts.metadata())
            time.sleep(0.15)  # interleave with the recording worker's slower publishes


def _spawn(store_url: str, uri: str, name: str, start_at: float,
           record: bool) -> subprocess.Popen[bytes]:
    code = (f"from tests.test_concurrent_publish import worker; "
            f"worker({store_url!r}, {uri!r}, {name!r}, {start_at!r}, {record!r})")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO)


@pytest.mark.slow
@pytest.mark.services
def test_concurrent_publishes_credit_every_version_to_its_run(
        pg_database: str, tmp_path: Path) -> None:
    """2 x 10 overlapping commits: versions 1..20, dense and in commit order, each record's
    run is the run whose metadata its Delta commit carries; none missing or duplicated."""
    store = Store(pg_database)  # migrated once, before the workers start
    uri = str(tmp_path / "warehouse" / "shared")
    publish_reader(store, "shared", uri, _reader("seed", 0), _facts("seed", 0))
    start_at = time.time() + 2.0
    procs = [_spawn(pg_database, uri, "a", start_at, True),
             _spawn(pg_database, uri, "b", start_at, False)]
    assert [0, 0] == [p.wait(timeout=240) for p in procs]
    reconcile(store, "shared", uri)
    records = store.versions("shared")
    history = delta.fresh_history(uri)
    by_delta = {dv: meta["run_id"] for dv, meta in delta.commit_metadata(history)}
    assert list(range(1, 2 * PUBLISHES + 2)) == [r["version"] for r in records]
    assert sorted(by_delta) == [r["delta_version"] for r in records]
    assert [by_delta[r["delta_version"]] for r in records] == [r["run_id"] for r in records]
    expected = {"seed-00"} | {f"{w}-{i:02d}" for w in "ab" for i in range(PUBLISHES)}
    assert expected == {r["run_id"] for r in records}
    assert [3] * len(records) == [r["rows_added"] for r in records]
    assert [3 * n for n in range(1, len(records) + 1)] == [r["rows_total"] for r in records]
    store.close()


def test_history_is_numbered_from_the_log_not_a_stale_handle(tmp_path: Path) -> None:
    """A handle opened before two more commits numbers ``history()`` [2, 1, 0, -1, -2];
    ``fresh_history`` gives 0..4, each with the run whose metadata the commit carries."""
    uri = str(tmp_path / "t")
    for i in range(3):
        facts = _facts("x", i)
        delta.write(uri, _reader("x", i), mode="append", app=delta.app_id(
            facts.run_id, "publish", "t"), metadata=facts.metadata())
    stale = delta.open_table(uri)
    for i in range(3, 5):
        facts = _facts("x", i)
        delta.write(uri, _reader("x", i), mode="append", app=delta.app_id(
            facts.run_id, "publish", "t"), metadata=facts.metadata())
    assert [2, 1, 0, -1, -2] == [h["version"] for h in stale.history()]  # the trap
    credited = [(dv, meta["run_id"]) for dv, meta in
                delta.commit_metadata(delta.fresh_history(uri))]
    assert [(i, f"x-{i:02d}") for i in range(5)] == credited


def test_unrecorded_commits_between_publishes_get_their_own_numbers(tmp_path: Path) -> None:
    """Commits another process made but did not record (it crashed) are recorded before
    this publish's own version, in commit order, each credited to its own run."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    uri = str(tmp_path / "shared")
    order = []
    for i in range(3):
        crashed = _facts("crashed", i)
        delta.write(uri, _reader("crashed", i), mode="append", app=delta.app_id(
            crashed.run_id, "publish", "shared"), metadata=crashed.metadata())
        publish_reader(store, "shared", uri, _reader("ok", i), _facts("ok", i))
        order += [f"crashed-{i:02d}", f"ok-{i:02d}"]
    records = store.versions("shared")
    assert list(range(1, 7)) == [r["version"] for r in records]
    assert list(range(6)) == [r["delta_version"] for r in records]
    assert order == [r["run_id"] for r in records]
    store.close()
