"""A run that dies between two publish steps is finished by the next run, exactly once.

The first publish advanced the files' state with its commit; the second dataset has not
seen their rows. Failing the dead run would lose those rows for the second dataset for
good (the files count as ingested); the next ``headwater run`` instead resumes it under its
own id (found by ``bench/chaos.py``: "merge keys lost").
"""

from __future__ import annotations

import signal

import pytest

import headwater as hw
from tests.conftest import ProjectFactory, run_cli, write

PIPELINE = """
name: two
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true}
  - id: log
    publish: {input: raw, dataset: two_log, mode: append}
  - id: latest
    publish: {input: raw, dataset: two_latest, mode: merge, key: [id]}
    needs: [log]
"""


def _ids(project: hw.Project, dataset: str) -> list[int]:
    return sorted(project.dataset(dataset).to_arrow()["id"].to_pylist())


@pytest.mark.slow
def test_kill_between_two_publishes_is_finished_by_the_next_run(
        make_project: ProjectFactory) -> None:
    root = make_project({"two": PIPELINE})
    write(root / "landing/a.csv", "id,amount\n1,1.5\n2,2.5\n")
    killed = run_cli("run", "two", cwd=root,
                     env={"HEADWATER_CRASH_AT": "publish:between-commits"})
    assert -signal.SIGKILL == killed.returncode, killed.stderr[-1500:]
    with hw.Project(root) as project:
        assert [1, 2] == _ids(project, "two_log")
        with pytest.raises(hw.NotFoundError):
            project.dataset("two_latest")  # the kill came before this publish
    write(root / "landing/b.csv", "id,amount\n3,3.5\n")  # lands before the recovery
    after = run_cli("run", "two", cwd=root)
    assert 0 == after.returncode, after.stderr[-1500:]
    with hw.Project(root) as project:
        assert [1, 2, 3] == _ids(project, "two_log")  # nothing twice
        assert [1, 2, 3] == _ids(project, "two_latest")  # nothing lost
        runs = project.runs("two")
        assert ["succeeded", "succeeded"] == [r.status for r in runs]  # the dead one finished
        assert project.run("two").ok  # and again: nothing new, nothing twice
        assert [1, 2, 3] == _ids(project, "two_log")
        assert [1, 2, 3] == _ids(project, "two_latest")
