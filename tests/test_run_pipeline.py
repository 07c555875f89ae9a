"""``run_pipeline``: a parent runs a child pipeline and waits, in-process under
``headwater run`` and parked (no worker held) under ``headwater serve``."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

import headwater as hw
from tests.conftest import ProjectFactory
from tests.test_serve import Served, wait_for

CHILD = """
name: child
params: {min: 0}
steps:
  - id: raw
    source: {type: files, path: data/*.csv, format: csv}
  - id: kept
    sql: SELECT * FROM raw WHERE id >= {{ params.min }}
  - id: publish
    publish: {input: kept, dataset: child_rows}
"""

PARENT = """
name: parent
params: {cut: 2}
steps:
  - id: child
    run_pipeline: {pipeline: child, params: {min: "{{ params.cut }}"}, wait: true}
  - id: after
    sql: SELECT child_run_id, status FROM child
  - id: publish
    publish: {input: after, dataset: parent_log}
"""

FILES = {"data/a.csv": "id,name\n1,a\n2,b\n3,c\n"}


def test_parent_runs_child_in_process_and_links_them(make_project: ProjectFactory) -> None:
    """The child runs with the rendered params, publishes, and is linked to its parent;
    the parent's step output names the child run."""
    root = make_project({"child": CHILD, "parent": PARENT}, files=FILES)
    with hw.Project(root) as project:
        parent = project.run("parent")
        assert "succeeded" == parent.status, parent.error
        child = project.runs("child")[0]
        assert "succeeded" == child.status
        assert parent.id == child.parent_run_id
        assert "pipeline" == child.trigger
        assert {"min": 2} == child.params
        info = project.runtime.store.run(child.id)["trigger_info"]
        assert {"parent_run": parent.id, "parent_pipeline": "parent",
                "parent_step": "child"} == info
        assert [2, 3] == sorted(project.dataset("child_rows").to_arrow()["id"].to_pylist())
        assert [{"child_run_id": child.id, "status": "succeeded"}] == \
            project.dataset("parent_log").to_arrow().to_pylist()


def test_child_failure_fails_the_parent(make_project: ProjectFactory) -> None:
    """A failing child fails the parent step with the child's own error; the parent
    publishes nothing."""
    files = {"data/a.csv": "id,name\n1,a\nnot-a-number,b\n"}
    child = CHILD.replace("WHERE id >=", "WHERE CAST(id AS INTEGER) >=")
    child = child.replace("format: csv}", "format: csv, columns: {id: VARCHAR}}")
    root = make_project({"child": child, "parent": PARENT}, files=files)
    with hw.Project(root) as project:
        parent = project.run("parent")
        child_run = project.runs("child")[0]
        assert "failed" == parent.status
        assert "failed" == child_run.status
        error = parent.error or ""
        assert f"step 'child' (run_pipeline) failed: child run {child_run.id} of pipeline " \
               "'child' failed: " in error
        assert "not-a-number" in error
        assert [] == [d["name"] for d in project.datasets() if d["name"] == "parent_log"]


@pytest.mark.slow
def test_parent_parks_while_child_runs_under_serve(make_project: ProjectFactory,
                                                   serve: Callable[..., Served]) -> None:
    """With one run slot, a parent waiting on its child parks (frees the slot), the child
    runs, and the parent continues: no deadlock."""
    root = make_project({"child": CHILD, "parent": PARENT}, files=FILES,
                        settings="max_concurrent_runs: 1\n")
    server = serve(root)
    httpx.post(f"{server.url}/api/pipelines/parent/runs", json={})
    with hw.Project(root) as project:
        done = wait_for(lambda: [r for r in project.runs("parent")
                                 if r.status in ("succeeded", "failed")], timeout=60)[0]
        assert "succeeded" == done.status, done.error
        child = project.runs("child")[0]
        assert done.id == child.parent_run_id
        assert [{"child_run_id": child.id, "status": "succeeded"}] == \
            project.dataset("parent_log").to_arrow().to_pylist()
    server.stop()
