"""A run's data commit and its rejected-rows commit are idempotent together (SPEC §8)."""

from __future__ import annotations

import signal

import pytest

import headwater as hw
from headwater.datasets import delta
from tests.conftest import ProjectFactory, run_cli, write

PIPELINE = """
name: orders
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true, bad_rows: quarantine,
             columns: {amount: float64}}
  - id: publish
    publish: {input: raw, dataset: orders}
"""


def _counts(project: hw.Project) -> tuple[list[int], int]:
    good = sorted(project.dataset("orders").to_arrow()["id"].to_pylist())
    return good, project.dataset("orders__rejected").to_arrow().num_rows


@pytest.mark.slow
def test_kill_9_between_the_data_and_rejected_commits(make_project: ProjectFactory) -> None:
    """SIGKILL after the data commit, before the quarantined rows are committed: the next
    run commits the owed rows once (from the killed run's spill) and re-reads nothing;
    every good row is in ``orders`` once, every bad row in ``orders__rejected`` once."""
    root = make_project({"orders": PIPELINE})
    write(root / "landing/a.csv", "id,amount\n1,1.5\n2,oops\n3,3.5\n4,nope\n")
    killed = run_cli("run", "orders", cwd=root,
                     env={"HEADWATER_CRASH_AT": "publish:between-commits"})
    assert -signal.SIGKILL == killed.returncode, killed.stderr[-1500:]
    with hw.Project(root) as project:
        assert [1, 3] == sorted(project.dataset("orders").to_arrow()["id"].to_pylist())
        with pytest.raises(hw.NotFoundError):
            project.dataset("orders__rejected")  # the kill came before this commit
        write(root / "landing/b.csv", "id,amount\n5,5.5\n6,bad\n")
        run = project.run("orders")
        assert run.ok, run.error
        assert ([1, 3, 5], 3) == _counts(project)
        assert project.run("orders").ok  # and again: nothing new, nothing twice
        assert ([1, 3, 5], 3) == _counts(project)
        rejected = project.dataset("orders__rejected").to_arrow().to_pylist()
        assert ["a.csv:3", "a.csv:5", "b.csv:3"] == sorted(
            r["_source"].rsplit("/", 1)[-1] for r in rejected)


def test_all_rows_rejected_commits_state_with_the_rejected_rows(
        make_project: ProjectFactory) -> None:
    """A file whose every row is bad makes no data version: its rows and the file's state
    are one commit of ``orders__rejected``, so a later run does not quarantine them again."""
    root = make_project({"orders": PIPELINE})
    write(root / "landing/a.csv", "id,amount\n1,1.5\n")
    with hw.Project(root) as project:
        assert project.run("orders").ok
        write(root / "landing/b.csv", "id,amount\n2,x\n3,y\n")
        assert project.run("orders").ok
        rejected = project.dataset("orders__rejected")
        [(_, meta)] = delta.commit_metadata(delta.fresh_history(rejected.uri))
        assert any(k.endswith("b.csv") for k in meta["state"])  # in the same commit
        assert 2 == rejected.record()["rows_added"]
        assert project.run("orders").ok
        assert ([1], 2) == _counts(project)
