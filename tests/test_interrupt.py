"""Ctrl-C / SIGTERM on ``headwater run``: the run records its own end (issue 8, item 5)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import headwater as hw
from tests.conftest import ProjectFactory, write

PIPELINE = """
name: orders
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true}
  - id: publish
    publish: {input: raw, dataset: orders}
  - id: train
    needs: [publish]
    command: sleep 60
"""


def _wait_for_step(project: hw.Project, step: str) -> str:
    deadline = time.time() + 60
    while time.time() < deadline:
        runs = project.runs("orders")
        if runs and any(s.step_id == step and s.status == "running"
                        for s in project.get_run(runs[0].id).steps):
            return runs[0].id
        time.sleep(0.2)
    raise AssertionError(f"step {step} never started")


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_cancels_the_run_and_tells_the_truth(make_project: ProjectFactory,
                                                    sig: int, code: int) -> None:
    """A signal during a step ends the run ``cancelled`` at that step (not left running),
    kills the step's command, says the version published before it stands, and exits
    128 + the signal number."""
    root = make_project({"orders": PIPELINE})
    write(root / "landing/a.csv", "id\n1\n2\n")
    proc = subprocess.Popen([sys.executable, "-m", "headwater.cli.main", "run", "orders",
                             "--project", str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with hw.Project(root) as project:
        run_id = _wait_for_step(project, "train")
        started = time.time()
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
        assert time.time() - started < 20  # the sleeping command did not run out its time
        assert code == proc.returncode, err
        assert "it had already published orders version 1" in err, err
        assert "interrupted\n" not in err
        run = project.get_run(run_id)
        assert ("cancelled", "train") == (run.status, run.failed_step)
        assert [1, 2] == sorted(project.dataset("orders").to_arrow()["id"].to_pylist())
        ps = subprocess.run(["pgrep", "-f", "sleep 60"], capture_output=True, text=True)
        assert not [p for p in ps.stdout.split() if _child_of_project(int(p), root)]


def _child_of_project(pid: int, root: Path) -> bool:
    """A process whose working directory is the test project (our command's child)."""
    try:
        return Path(f"/proc/{pid}/cwd").resolve() == root.resolve()
    except OSError:
        return False


HEAVY_SQL = """
name: heavy
steps:
  - id: warm
    sql: SELECT 1 AS x
  - id: heavy
    needs: [warm]
    sql: SELECT sum(hash(i)) AS h FROM range(20000000000) t(i)
    materialize: true
"""


@pytest.mark.slow
def test_ctrl_c_reaches_a_query_running_in_the_engine_thread(
        make_project: ProjectFactory) -> None:
    """A lone SQL step runs in the CLI's main thread (no worker hop); Ctrl-C during its
    query still cancels the run within moments instead of waiting for the query."""
    root = make_project({"heavy": HEAVY_SQL})
    proc = subprocess.Popen([sys.executable, "-m", "headwater.cli.main", "run", "heavy",
                             "--project", str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with hw.Project(root) as project:
        deadline = time.time() + 60
        while time.time() < deadline:
            runs = project.runs("heavy")
            if runs and any(s.step_id == "heavy" and s.status == "running"
                            for s in project.get_run(runs[0].id).steps):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("step heavy never started")
        started = time.time()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        assert time.time() - started < 20, err  # the query would run for many minutes
        assert 130 == proc.returncode, err
        run = project.get_run(runs[0].id)
        assert ("cancelled", "heavy") == (run.status, run.failed_step)
