"""Bad input through whole pipelines: a clear error naming file and line, or rejected rows
with reasons; never a half-written version, never a lost row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import headwater as hw
from tests.conftest import ProjectFactory, write


def _pipeline(bad_rows: str = "fail", columns: str = "") -> str:
    return f"""
    name: orders
    steps:
      - id: raw
        source: {{type: files, path: landing/*.csv, incremental: true, bad_rows: {bad_rows}
                  {columns}}}
      - id: publish
        publish: {{input: raw, dataset: orders}}
    """


GOOD = "id,amount\n1,1.5\n2,2.5\n"


def _run(root: Path) -> hw.Run:
    with hw.Project(root) as project:
        return project.run("orders")


@pytest.mark.parametrize(("content", "expected"), [
    ("id,amount\n1,1.5\n2,2.5,9\n", "b.csv line 3"),
    ("id,amount\n1,1.5\n2,abc\n", "b.csv line 3"),
])
def test_default_fails_naming_file_and_line(make_project: ProjectFactory, content: str,
                                            expected: str) -> None:
    """With ``bad_rows: fail`` the run fails, naming the source step, file and line."""
    columns = ", columns: {amount: float64}"
    root = make_project({"orders": _pipeline(columns=columns)})
    write(root / "landing/a.csv", GOOD)
    write(root / "landing/b.csv", content)
    run = _run(root)
    assert "failed" == run.status
    assert "step 'raw'" in (run.error or "")
    assert expected in (run.error or "")
    with hw.Project(root) as project, pytest.raises(hw.NotFoundError):
        project.dataset("orders")


def test_wrong_encoding_fails_clearly(make_project: ProjectFactory) -> None:
    """Latin-1 bytes read as UTF-8 fail with the file named, not a crash."""
    root = make_project({"orders": _pipeline()})
    (root / "landing").mkdir()
    (root / "landing/a.csv").write_bytes("id,name\n1,Müller\n".encode("latin-1"))
    run = _run(root)
    assert "failed" == run.status
    assert "a.csv" in (run.error or "")


def test_glob_matching_nothing_succeeds_publishing_nothing(
    make_project: ProjectFactory
) -> None:
    """A source whose glob matches no file yet is a run with nothing to do: it succeeds,
    says so in its log, and publishes no version."""
    root = make_project({"orders": _pipeline()})
    (root / "landing").mkdir()
    run = _run(root)
    assert "succeeded" == run.status
    with hw.Project(root) as project:
        logs = [row["message"] for row in project.runtime.store.logs(run.id)]
        with pytest.raises(hw.NotFoundError):
            project.dataset("orders")
    assert any("matched no files" in message for message in logs)


def test_empty_file_adds_no_rows(make_project: ProjectFactory) -> None:
    """An empty file next to a good one contributes nothing and breaks nothing."""
    root = make_project({"orders": _pipeline()})
    write(root / "landing/a.csv", GOOD)
    write(root / "landing/empty.csv", "")
    run = _run(root)
    assert run.ok, run.error
    with hw.Project(root) as project:
        assert 2 == project.dataset("orders").to_arrow().num_rows


def test_skip_counts_rows_and_reports_reasons(make_project: ProjectFactory) -> None:
    """``bad_rows: skip`` publishes the good rows and logs how many were skipped."""
    root = make_project({"orders": _pipeline("skip", ", columns: {amount: float64}")})
    write(root / "landing/a.csv", "id,amount\n1,1.5\n2,oops\n3,3.5\n4,4.5,extra\n")
    run = _run(root)
    assert run.ok, run.error
    with hw.Project(root) as project:
        assert [1, 3] == sorted(project.dataset("orders").to_arrow()["id"].to_pylist())
        messages = [line["message"] for line in project.logs(run.id)]
        assert any("2 unparsable rows skipped" in m for m in messages)
        with pytest.raises(hw.NotFoundError):
            project.dataset("orders__rejected")


def test_quarantine_lands_in_rejected_dataset(make_project: ProjectFactory) -> None:
    """``bad_rows: quarantine`` writes each bad row to orders__rejected with file:line and
    reason, committed with the run's publish; a rerun of nothing adds nothing."""
    root = make_project({"orders": _pipeline("quarantine", ", columns: {amount: float64}")})
    write(root / "landing/a.csv", "id,amount\n1,1.5\n2,oops\n3,3.5\n")
    run = _run(root)
    assert run.ok, run.error
    with hw.Project(root) as project:
        assert [1, 3] == sorted(project.dataset("orders").to_arrow()["id"].to_pylist())
        rejected = project.dataset("orders__rejected").to_arrow().to_pylist()
        assert 1 == len(rejected)
        [row] = rejected
        assert run.id == row["_run_id"]
        assert "raw" == row["_step"]
        assert row["_source"].endswith("a.csv:3")
        assert "amount" in row["_error"]
        assert "oops" in json.dumps(json.loads(row["_row"]))
        assert ["_run_id", "_step", "_source", "_error", "_row"] == project.dataset(
            "orders__rejected").schema().names
        assert project.run("orders").ok
        assert 1 == project.dataset("orders__rejected").to_arrow().num_rows


def test_failing_python_step_keeps_previous_version(make_project: ProjectFactory) -> None:
    """A transform that raises fails the run naming the step; version 1 is untouched."""
    pipeline = """
    name: orders
    params: {explode: false}
    steps:
      - id: raw
        source: {type: files, path: landing/*.csv, incremental: true}
      - id: t
        python: transforms.t:maybe_explode
        input: raw
      - id: publish
        publish: {input: t, dataset: orders}
    """
    module = '''
    def maybe_explode(raw, params):
        if params["explode"]:
            raise RuntimeError("transform exploded")
        return raw
    '''
    root = make_project({"orders": pipeline}, {"transforms/__init__.py": "",
                                                "transforms/t.py": module})
    write(root / "landing/a.csv", GOOD)
    with hw.Project(root) as project:
        assert project.run("orders").ok
        write(root / "landing/b.csv", "id,amount\n3,3.5\n")
        failed = project.run("orders", params={"explode": "true"})
        assert "failed" == failed.status
        assert "step 't'" in (failed.error or "")
        assert "transform exploded" in (failed.error or "")
        assert [1] == project.dataset("orders").versions()
        assert 2 == project.dataset("orders").to_arrow().num_rows
