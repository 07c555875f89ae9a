"""Runs publishing to one dataset at the same moment take turns: none fails on Delta's
"Protocol/Metadata changed since last commit" when the table is created or evolves."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ProjectFactory

PIPELINE = """
name: snap
steps:
  - id: rows
    sql: SELECT range AS id, 'x' AS note FROM range(1000)
  - id: publish
    publish: {input: rows, dataset: snaps, mode: append}
"""


@pytest.mark.slow
def test_parallel_first_publishes_all_succeed(make_project: ProjectFactory) -> None:
    """Four `headwater run` processes of a non-incremental pipeline start together on a
    fresh project: all succeed and the new dataset holds four versions of 1,000 rows."""
    root = make_project(pipelines={"snap": PIPELINE})
    procs = [subprocess.Popen([sys.executable, "-m", "headwater.cli.main", "run", "snap",
                               "--project", str(root), "--log-format", "json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outcomes = [(p.communicate(timeout=240)[1], p.returncode) for p in procs]
    assert [0, 0, 0, 0] == [code for _, code in outcomes], outcomes
    import headwater as hw

    with hw.Project(root) as project:
        dataset = project.dataset("snaps")
        assert [1, 2, 3, 4] == dataset.versions()
        assert 4000 == dataset.to_arrow().num_rows
