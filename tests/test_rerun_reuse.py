"""Reruns and resumed runs never duplicate rows, nor reuse what other code made (issue 8)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sqlalchemy import update

import headwater as hw
from headwater.store import schema as t
from headwater.store.queue import requeue_runs
from tests.conftest import ProjectFactory, write

PIPELINE = """
name: orders
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true}
  - id: clean
    sql: SELECT id, v FROM raw WHERE v >= 0
  - id: publish
    publish: {input: clean, dataset: orders}
"""


def _csv(path: Path, start: int, count: int) -> None:
    write(path, "id,v\n" + "".join(f"{i},{i}\n" for i in range(start, start + count)))


def _ids(project: hw.Project) -> list[int]:
    return list(project.dataset("orders").to_arrow()["id"].to_pylist())


def test_documented_recovery_ingests_each_row_once(make_project: ProjectFactory) -> None:
    """Run fails on a malformed file → the file is fixed → ``rerun --from-failed`` → a plain
    run: every row exactly once (the rerun re-reads the source instead of reusing the
    broken file's recorded fingerprint)."""
    root = make_project({"orders": PIPELINE})
    _csv(root / "landing/a.csv", 0, 10)
    with hw.Project(root) as project:
        assert project.run("orders").ok
        write(root / "landing/b.csv", "id,v\n10,10\n11,11,11\n")
        failed = project.run("orders")
        assert "failed" == failed.status
        _csv(root / "landing/b.csv", 10, 5)
        rerun = project.rerun(failed.id, from_failed=True)
        assert rerun.ok, rerun.error
        assert project.run("orders").ok
        ids = _ids(project)
        assert ({}, 15) == ({i: n for i, n in Counter(ids).items() if n > 1}, len(ids))
        assert any("re-executing raw, clean" in line["message"]
                   for line in project.logs(rerun.id))


def test_resumed_run_rereads_what_later_runs_ingested(make_project: ProjectFactory) -> None:
    """A run taken over after its process stopped does not publish its recorded file list
    again when a later run has ingested those files meanwhile."""
    root = make_project({"orders": PIPELINE})
    _csv(root / "landing/a.csv", 0, 10)
    with hw.Project(root) as project:
        store = project.runtime.store
        stale = project.run("orders")  # stands in for the killed run: its steps recorded
        assert stale.ok
        with store.tx() as conn:  # ... as if it had died before publishing
            conn.execute(update(t.step_runs).where(t.step_runs.c.run_id == stale.id)
                         .where(t.step_runs.c.step_id == "publish").values(status="running"))
            conn.execute(update(t.runs).where(t.runs.c.id == stale.id).values(
                status="running", finished_at=None))
        _csv(root / "landing/b.csv", 10, 5)
        assert project.run("orders").ok  # a later run ingests b.csv
        requeue_runs(store, [stale.id])  # a server takes the stale run over
        resumed = project.execute(stale.id)
        assert resumed.ok, resumed.error
        assert sorted(_ids(project)) == list(range(15))


def test_from_failed_recomputes_steps_after_a_code_change(make_project: ProjectFactory) -> None:
    """``rerun --from-failed`` re-executes a step that succeeded before but whose code
    changed since (saying so), instead of silently reusing what the old code made."""
    pipeline = PIPELINE.replace(
        "    source: {type: files, path: landing/*.csv, incremental: true}",
        "    sql: SELECT range AS id, range AS v FROM range(10)").replace(
        "    publish: {input: clean, dataset: orders}",
        "    publish: {input: broken, dataset: orders}").replace(
        "  - id: publish\n",
        "  - id: broken\n    sql: SELECT * FROM clean WHERE nonexistent\n  - id: publish\n")
    root = make_project({"orders": pipeline})
    with hw.Project(root) as project:
        failed = project.run("orders")
        assert ("failed", "broken") == (failed.status, failed.failed_step)
    write(root / "pipelines/orders.yaml", pipeline.replace("v >= 0", "v >= 5").replace(
        " WHERE nonexistent", ""))
    with hw.Project(root) as project:
        rerun = project.rerun(failed.id, from_failed=True)
        assert rerun.ok, rerun.error
        assert [5, 6, 7, 8, 9] == sorted(_ids(project))
        assert any("code of clean changed since run" in line["message"]
                   for line in project.logs(rerun.id))
        assert {"raw": "reused", "clean": "succeeded", "broken": "succeeded",
                "publish": "succeeded"} == {s.step_id: s.status for s in rerun.steps}
