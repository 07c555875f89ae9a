"""Quarantined rows land in ``<pipeline>__rejected`` once per run, however many publish
steps (running in parallel) carry them."""

from __future__ import annotations

from tests.conftest import ProjectFactory, run_cli

PIPELINE = """
name: two
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true, bad_rows: quarantine,
             columns: {id: int64, amount: double}}
  - id: log
    publish: {input: raw, dataset: two_log, mode: append}
  - id: latest
    publish: {input: raw, dataset: two_latest, mode: merge, key: [id]}
"""


def test_two_publish_steps_commit_the_rejected_rows_once(make_project: ProjectFactory) -> None:
    """Two publish steps downstream of one quarantining source: each bad row appears once
    in the rejected dataset (it appeared once per publish step before)."""
    root = make_project(pipelines={"two": PIPELINE},
                        files={"landing/a.csv": "id,amount\n1,1.5\nx,2\n3,y\n4,4\n"})
    result = run_cli("run", "two", "--project", str(root))
    assert 0 == result.returncode, result.stderr
    import headwater as hw

    with hw.Project(root) as project:
        sources = project.dataset("two__rejected").to_arrow().column("_source").to_pylist()
        assert 2 == len(sources)
        assert 2 == len(set(sources))
        assert [1, 4] == sorted(project.dataset("two_log").to_arrow().column("id").to_pylist())
    again = run_cli("run", "two", "--project", str(root))
    assert 0 == again.returncode, again.stderr
    with hw.Project(root) as project:
        assert 2 == project.dataset("two__rejected").to_arrow().num_rows
