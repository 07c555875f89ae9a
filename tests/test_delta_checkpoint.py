"""A dataset grown by many small publishes keeps a checkpointed Delta log, and stays whole.

delta-rs writes a checkpoint every ``delta.checkpointInterval`` (100) commits after the
commit itself, so loading the table replays at most ~100 JSON commits, however long the
log. Publishes read only the log's tail (the commit just made, the commits after the newest
recorded one); these tests prove that past a checkpoint every version still reads as it
was, and a commit whose record was lost is still repaired.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

import headwater as hw
from headwater.datasets import delta
from headwater.datasets.publish import VersionFacts, publish_reader
from tests.conftest import ProjectFactory, run_cli

CHECKPOINT_EVERY = 100
"""delta-rs's default ``delta.checkpointInterval``."""

PIPELINE = """
name: hook
steps:
  - id: a
    sql: SELECT 1 AS x
  - id: p
    publish: {input: a, dataset: events}
"""


def _facts(run: str) -> VersionFacts:
    return VersionFacts(run_id=run, pipeline="hook", step_id="p", code_version="c",
                        trigger="webhook", mode="append")


def _rows(i: int) -> pa.RecordBatchReader:
    table = pa.table({"x": pa.array([i], pa.int64())})
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())


def _publish_many(project: hw.Project, count: int) -> str:
    store, uri = project.runtime.store, project.runtime.dataset_uri("events")
    for i in range(1, count + 1):
        result = publish_reader(store, "events", uri, _rows(i), _facts(f"run-{i}"))
        assert result.version == i
    return uri


def test_a_long_log_is_checkpointed_and_every_version_reads_as_it_was(
        make_project: ProjectFactory) -> None:
    """After N+1 appends the log has a checkpoint; version 1 (before it), the checkpointed
    version and the newest read exactly their rows, through the API and ``dataset preview``."""
    root = make_project({"hook": PIPELINE})
    with hw.Project(root) as project:
        uri = _publish_many(project, CHECKPOINT_EVERY + 1)
        checkpoints = sorted(Path(uri, "_delta_log").glob("*.checkpoint.parquet"))
        assert checkpoints, "no checkpoint after 101 commits"
        ds = project.dataset("events")
        assert ds.versions() == list(range(1, CHECKPOINT_EVERY + 2))
        assert ds.to_arrow(version=1)["x"].to_pylist() == [1]
        assert sorted(ds.to_arrow(version=CHECKPOINT_EVERY)["x"].to_pylist()) == \
            list(range(1, CHECKPOINT_EVERY + 1))
        assert sorted(ds.to_arrow()["x"].to_pylist()) == list(range(1, CHECKPOINT_EVERY + 2))
        assert ds.record()["rows_total"] == CHECKPOINT_EVERY + 1
    shown = run_cli("dataset", "preview", "events", "--version", "1", "--json",
                    "--project", str(root))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == [{"x": 1}]


def test_a_commit_past_a_checkpoint_whose_record_was_lost_is_repaired(
        make_project: ProjectFactory) -> None:
    """A crash between commit and record, after the checkpoint: the next read records it
    with its own run and the next dense version number, from the log's tail alone."""
    root = make_project({"hook": PIPELINE})
    with hw.Project(root) as project:
        uri = _publish_many(project, CHECKPOINT_EVERY + 1)
        lost = _facts("crashed-run")
        delta.write(uri, _rows(0), mode="append", app=delta.app_id("crashed-run", "p",
                                                                    "events"),
                    metadata=lost.metadata())  # committed, never recorded
        store = project.runtime.store
        assert store.newest_delta_version("events") == CHECKPOINT_EVERY
        ds = project.dataset("events")  # opening a dataset repairs the store first
        record = ds.record()
        assert (record["version"], record["run_id"]) == (CHECKPOINT_EVERY + 2, "crashed-run")
        assert record["delta_version"] == CHECKPOINT_EVERY + 1
        # the crashed run's retry finds its commit and adds nothing
        again = publish_reader(store, "events", uri, _rows(0), lost)
        assert again.skipped == "already committed by this run"
        assert ds.version == CHECKPOINT_EVERY + 2
