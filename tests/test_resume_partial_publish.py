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


SQL_PIPELINE = """
name: two
steps:
  - id: raw
    source: {type: sql, connection: db, table: ev, incremental: {cursor: id}}
  - id: log
    publish: {input: raw, dataset: two_log, mode: append}
  - id: latest
    publish: {input: raw, dataset: two_latest, mode: merge, key: [id]}
    needs: [log]
"""


@pytest.mark.slow
@pytest.mark.services
def test_sql_source_resumed_run_reuses_its_batch(make_project: ProjectFactory,
                                                 pg_database: str) -> None:
    """The same with an incremental SQL source: resumed, the run publishes the rows it had
    read (its spill), not a fresh read that would include rows inserted since; those go to
    the next run, so both datasets get every row exactly once."""
    import psycopg

    url = pg_database.replace("postgresql+psycopg://", "postgresql://")

    def insert(*ids: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS ev (id int PRIMARY KEY, v text)")
            for i in ids:
                conn.execute("INSERT INTO ev VALUES (%s, 'x')", (i,))

    insert(1, 2)
    root = make_project({"two": SQL_PIPELINE},
                        settings=f"connections:\n  db: {{type: postgres, url: \"{url}\"}}\n")
    killed = run_cli("run", "two", cwd=root,
                     env={"HEADWATER_CRASH_AT": "publish:between-commits"})
    assert -signal.SIGKILL == killed.returncode, killed.stderr[-1500:]
    insert(3)
    after = run_cli("run", "two", cwd=root)
    assert 0 == after.returncode, after.stderr[-1500:]
    with hw.Project(root) as project:
        assert [1, 2, 3] == _ids(project, "two_log")
        assert [1, 2, 3] == _ids(project, "two_latest")
        newest, resumed = project.runs("two")
        assert ("succeeded", "succeeded") == (resumed.status, newest.status)
        latest = project.dataset("two_latest")
        assert [1, 2] == sorted(latest.to_arrow(version=1)["id"].to_pylist())  # the spill
        assert (resumed.id, newest.id) == (latest.record(1)["run_id"], latest.record(2)["run_id"])
