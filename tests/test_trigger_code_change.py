"""``code_change: true`` fires when the code differs from the last *successful* run's, by
meaning: each check goes through the real store (fires are deduplicated there), and each
fired run is executed for real."""

from __future__ import annotations

import asyncio
from pathlib import Path

import headwater as hw
from headwater.engine.runner import execute_run
from headwater.runtime import ProjectRuntime
from headwater.store import queue
from headwater.triggers.base import Fire
from headwater.triggers.code_change import CodeChangeTrigger
from tests.conftest import ProjectFactory, write

PIPELINE = """
name: totals
triggers:
  - code_change: true
steps:
  - id: t
    sql: SELECT {value} AS n -- the total
  - id: out
    publish: {{input: t, dataset: totals, mode: overwrite}}
"""


def _check(runtime: ProjectRuntime) -> list[str]:
    """One trigger check; the ids of the runs it queued (none when deduplicated)."""
    queued: list[str] = []

    async def emit(fire: Fire) -> None:
        run_id = queue.fire(runtime.store, pipeline=fire.pipeline,
                            trigger_index=fire.trigger_index, kind=fire.kind,
                            dedupe_key=fire.dedupe_key, info=fire.info,
                            event_at=fire.event_at)
        if run_id is not None:
            queued.append(run_id)

    runtime._pipelines = None  # as the watcher does after a change
    asyncio.run(CodeChangeTrigger(runtime, "totals", 0).check(emit))
    return queued


def _set(root: Path, text: str) -> None:
    write(root / "pipelines/totals.yaml", text)


def test_returning_to_an_earlier_version_fires_again(make_project: ProjectFactory) -> None:
    """A → B → A → B: each change after a success fires once (the last one is a version
    that already ran before, which a dedupe key of the version alone would swallow)."""
    version_a, version_b = PIPELINE.format(value=1), PIPELINE.format(value=2)
    root = make_project({"totals": version_a})
    with hw.Project(root) as project:
        assert project.run("totals").ok
        runtime = project.runtime
        assert [] == _check(runtime)
        for text, expected in ((version_b, 2), (version_a, 1), (version_b, 2)):
            _set(root, text)
            (run_id,) = _check(runtime)
            assert [] == _check(runtime)  # checked again before the run: not twice
            assert "succeeded" == execute_run(runtime, run_id)["status"]
            assert [expected] == project.dataset("totals").to_arrow()["n"].to_pylist()
            assert [] == _check(runtime)


def test_comment_in_inline_sql_does_not_fire(make_project: ProjectFactory) -> None:
    """Editing only a comment or the layout of inline SQL is no code change."""
    root = make_project({"totals": PIPELINE.format(value=1)})
    with hw.Project(root) as project:
        assert project.run("totals").ok
        _set(root, PIPELINE.format(value=1).replace("-- the total", "-- the sum, renamed")
             .replace("SELECT 1", "select   1"))
        assert [] == _check(project.runtime)


def test_a_failed_run_does_not_count_as_the_code_that_ran(
    make_project: ProjectFactory
) -> None:
    """The rule compares with the last successful run: after a failing change is fixed
    back to what last succeeded, nothing fires; fixed to something new, it fires."""
    root = make_project({"totals": PIPELINE.format(value=1)})
    with hw.Project(root) as project:
        assert project.run("totals").ok
        runtime = project.runtime
        _set(root, PIPELINE.format(value="no_such_column"))
        (run_id,) = _check(runtime)
        assert "failed" == execute_run(runtime, run_id)["status"]
        _set(root, PIPELINE.format(value=1))
        assert [] == _check(runtime)
        _set(root, PIPELINE.format(value=3))
        assert 1 == len(_check(runtime))


def test_a_project_param_change_fires(make_project: ProjectFactory) -> None:
    """A change to ``headwater.yaml`` that alters the result (a project param the SQL
    uses) is a code change of the pipeline."""
    text = PIPELINE.format(value="'{{ params.factor }}'")
    root = make_project({"totals": text}, settings="params: {factor: 2}\n")
    with hw.Project(root) as project:
        assert project.run("totals").ok
        runtime = project.runtime
        assert [] == _check(runtime)
        write(root / "headwater.yaml", "name: proj\nparams: {factor: 5}\n")
        assert 1 == len(_check(runtime))
