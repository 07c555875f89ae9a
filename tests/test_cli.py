"""The real ``headwater`` command in subprocesses: output, JSON documents, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ProjectFactory, run_cli, write

pytestmark = pytest.mark.slow

PIPELINE = """
name: orders
params: {min_amount: 0}
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true}
  - id: clean
    sql: SELECT * FROM raw WHERE amount >= {{ params.min_amount }}
  - id: publish
    publish: {input: clean, dataset: orders}
"""


@pytest.fixture
def project(make_project: ProjectFactory) -> Path:
    root = make_project({"orders": PIPELINE})
    write(root / "landing/a.csv", "order_id,amount\n1,10.5\n2,3.0\n3,7.25\n")
    return root


def test_run_runs_datasets_and_show_as_json(project: Path) -> None:
    """A successful run exits 0; runs/datasets/show --json are JSON documents on stdout."""
    result = run_cli("run", "orders", "-p", "min_amount=5", "--project", str(project))
    assert 0 == result.returncode, result.stderr
    assert "published orders version 1 (+2 rows)" in result.stdout
    runs = json.loads(run_cli("runs", "--json", "--project", str(project)).stdout)
    assert {"id", "pipeline", "status", "trigger", "started_at", "finished_at",
            "error"} <= set(runs[0])
    assert ("orders", "succeeded", "manual") == (runs[0]["pipeline"], runs[0]["status"],
                                                 runs[0]["trigger"])
    datasets = json.loads(run_cli("datasets", "--json", cwd=project).stdout)
    assert [("orders", 1, 2)] == [(d["name"], d["version"], d["rows"]) for d in datasets]
    show = json.loads(run_cli("dataset", "show", "orders", "--json", cwd=project).stdout)
    assert runs[0]["id"] == show["run_id"]
    preview = json.loads(run_cli("dataset", "preview", "orders", "-n", "1", "--json",
                                 cwd=project).stdout)
    assert 1 == len(preview)
    logs = run_cli("logs", runs[0]["id"], cwd=project)
    assert 0 == logs.returncode
    assert "published orders version 1" in logs.stdout


def test_failed_run_exits_1_naming_step_file_and_line(project: Path) -> None:
    """A malformed CSV fails the run with exit 1 and names the step, file and line."""
    write(project / "landing/b.csv", "order_id,amount\n4,1.0\n5,2.0,extra\n")
    result = run_cli("run", "orders", "--project", str(project), "--log-format", "json")
    assert 1 == result.returncode
    assert "step 'raw'" in result.stderr
    assert "b.csv" in result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert all("run_id" in line and "step_id" in line for line in lines)


def test_usage_and_project_errors_exit_2(project: Path, tmp_path: Path) -> None:
    """Unknown pipeline, bad -p, a missing project and check failures all exit 2."""
    unknown = run_cli("run", "ordres", "--project", str(project))
    assert 2 == unknown.returncode
    assert "did you mean 'orders'" in unknown.stderr
    assert 2 == run_cli("run", "orders", "-p", "nonsense", "--project", str(project)).returncode
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = run_cli("runs", cwd=empty)
    assert 2 == missing.returncode
    assert "headwater init" in missing.stderr
    write(project / "pipelines/bad.yaml", "name: bad\nsteps:\n  - id: a\n    sqll: SELECT 1\n")
    check = run_cli("check", "--json", cwd=project)
    assert 2 == check.returncode
    assert "did you mean 'sql'" in json.loads(check.stdout)["problems"][0]["message"]


def test_init_scaffolds_a_project_that_checks_clean(tmp_path: Path) -> None:
    """``init`` writes a project whose ``check`` passes, and refuses to overwrite it."""
    target = tmp_path / "demo"
    assert 0 == run_cli("init", str(target)).returncode
    assert (target / "landing/orders/orders-001.csv").is_file()
    result = run_cli("check", cwd=target)
    assert 0 == result.returncode, result.stderr
    assert 2 == run_cli("init", str(target)).returncode


def test_secret_never_printed(make_project: ProjectFactory) -> None:
    """A store URL's ${env:} password never appears when the store cannot be reached."""
    root = make_project(settings='store: "postgresql://app:${env:HW_PG_PASS}@127.0.0.1:1/x"\n')
    env = {"HW_PG_PASS": "pw-123456789"}
    result = run_cli("runs", "--json", "--project", str(root), env=env)
    assert 2 == result.returncode
    assert "cannot open the metadata store" in result.stderr
    assert "pw-123456789" not in result.stderr + result.stdout


def test_a_step_ignoring_its_timeout_is_abandoned(make_project: ProjectFactory) -> None:
    """Python code that sleeps through its timeout fails the run, and the command still
    exits (1) instead of waiting for the thread."""
    root = make_project({"p": """
    name: p
    steps:
      - id: stuck
        python: transforms.t:stuck
        timeout: 300ms
    """}, {"transforms/__init__.py": "",
           "transforms/t.py": "import time\n\ndef stuck():\n    time.sleep(60)\n"})
    result = run_cli("run", "p", "--project", str(root), env={"HEADWATER_ABANDON_GRACE": "1"},
                     timeout=40)
    assert 1 == result.returncode
    assert "abandoned" in result.stderr
