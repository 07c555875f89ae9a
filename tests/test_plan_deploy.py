"""``headwater plan`` / ``deploy``: what a deploy changes in an environment's store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ProjectFactory, run_cli, write

PIPELINE = """
name: orders
triggers:
  - interval: 1h
steps:
  - id: raw
    source: {type: files, path: data/*.csv}
  - id: clean
    sql: sql/clean.sql
  - id: publish
    publish: {input: clean, dataset: orders, mode: overwrite}
"""

SETTINGS = """
environments:
  qa: {store: "sqlite:///.headwater/qa.db"}
"""


def _project(make_project: ProjectFactory) -> Path:
    return make_project(pipelines={"orders": PIPELINE}, settings=SETTINGS,
                        files={"sql/clean.sql": "SELECT * FROM raw -- all rows\n",
                               "data/a.csv": "id\n1\n"})


def _plan(root: Path, *extra: str) -> Any:
    return run_cli("plan", "--env", "qa", "--json", "--project", str(root), *extra)


def test_plan_deploy_cycle(make_project: ProjectFactory) -> None:
    """A new project plans a pipeline added (exit 3); after deploy nothing would change
    (exit 0); a changed SQL file, a changed trigger and a removed pipeline are each named;
    the default environment's store is not touched by a qa deploy."""
    root = _project(make_project)
    first = _plan(root)
    assert 3 == first.returncode, first.stderr
    assert ["pipeline_added"] == [c["kind"] for c in json.loads(first.stdout)["changes"]]
    deployed = run_cli("deploy", "--env", "qa", "--project", str(root))
    assert 0 == deployed.returncode, deployed.stderr
    assert "deployed 1 change(s)" in deployed.stdout
    quiet = run_cli("plan", "--env", "qa", "--project", str(root))
    assert 0 == quiet.returncode, quiet.stdout + quiet.stderr
    assert "nothing would change" in quiet.stdout
    # a comment-only edit is no change; a real one names the file
    write(root / "sql" / "clean.sql", "SELECT * FROM raw  -- every row\n")
    assert 0 == _plan(root).returncode
    write(root / "sql" / "clean.sql", "SELECT * FROM raw WHERE id > 0\n")
    write(root / "pipelines" / "orders.yaml", PIPELINE.replace("interval: 1h", "interval: 2h"))
    changed = json.loads(_plan(root).stdout)["changes"]
    assert ["code_changed", "trigger_changed"] == [c["kind"] for c in changed]
    assert "sql/clean.sql" in changed[0]["detail"]["files"]
    assert {"interval": 7200.0} == changed[1]["detail"]["spec"]
    assert 0 == run_cli("deploy", "--env", "qa", "--project", str(root)).returncode
    (root / "pipelines" / "orders.yaml").unlink()
    gone = _plan(root)
    assert ["pipeline_removed"] == [c["kind"] for c in json.loads(gone.stdout)["changes"]]
    base = run_cli("plan", "--project", str(root))
    assert 0 == base.returncode, "the default store never saw a deploy and has no pipeline"


VALIDATED = """
name: scores
steps:
  - id: raw
    source: {type: files, path: data/*.csv}
  - id: checked
    validate:
      input: raw
      columns: {id: {type: int64}, amount: {type: float64}}
  - id: publish
    publish: {input: checked, dataset: scores, mode: overwrite, schema: SCHEMA}
"""


def test_plan_lists_declared_schema_changes(make_project: ProjectFactory) -> None:
    """A changed validate step's declared types are compared with the dataset's newest
    version in the environment's store: a type change and a new column are listed (exit
    3), a frozen schema says the run would fail; once deployed, nothing is left."""
    root = make_project(pipelines={"scores": VALIDATED.replace("SCHEMA", "evolve")},
                        settings=SETTINGS, files={"data/a.csv": "id,amount\n1,2.5\n"})
    assert 0 == run_cli("run", "scores", "--env", "qa", "--project", str(root)).returncode
    assert 0 == run_cli("deploy", "--env", "qa", "--project", str(root)).returncode
    assert 0 == _plan(root).returncode  # declared types match what was published
    write(root / "pipelines" / "scores.yaml", VALIDATED.replace("SCHEMA", "freeze").replace(
        "amount: {type: float64}", "amount: {type: string}, note: {type: string}"))
    result = _plan(root)
    assert 3 == result.returncode, result.stderr
    changes = json.loads(result.stdout)["changes"]
    assert ["code_changed", "schema_changed"] == [c["kind"] for c in changes]
    assert {"dataset": "scores", "frozen": True,
            "columns": [{"column": "amount", "from": "double", "to": "string"},
                        {"column": "note", "from": None, "to": "string"}]
            } == changes[1]["detail"]
    text = run_cli("plan", "--env", "qa", "--project", str(root))
    assert ("~ dataset scores (scores): amount double -> string; + note string "
            "(schema: freeze, so the run would fail)") in text.stdout
    assert 0 == run_cli("deploy", "--env", "qa", "--project", str(root)).returncode
    assert 0 == _plan(root).returncode


def test_deploy_refuses_a_broken_project(make_project: ProjectFactory) -> None:
    """A project with problems is not deployed (exit 2) and the store stays as it was."""
    root = _project(make_project)
    write(root / "pipelines" / "orders.yaml", PIPELINE.replace("input: clean", "input: claen"))
    result = run_cli("deploy", "--env", "qa", "--project", str(root))
    assert 2 == result.returncode
    assert "not deploying" in result.stderr
    assert 3 == _plan(root).returncode


@pytest.mark.slow
def test_running_server_reloads_after_deploy(make_project: ProjectFactory,
                                             serve: Callable[..., Any]) -> None:
    """A server on the store arms a pipeline added by a deploy, without a restart."""
    root = make_project(pipelines={"orders": PIPELINE},
                        files={"sql/clean.sql": "SELECT * FROM raw\n", "data/a.csv": "id\n1\n"})
    server = serve(root)
    write(root / "pipelines" / "ticks.yaml", """
        name: ticks
        triggers:
          - interval: 1s
        steps:
          - id: one
            sql: SELECT 1 AS n
        """)
    assert 0 == run_cli("deploy", "--project", str(root)).returncode
    from tests.test_serve import wait_for

    def ticked() -> bool:
        runs = json.loads(run_cli("runs", "ticks", "--json", "--project", str(root)).stdout)
        return any(r["status"] == "succeeded" for r in runs)

    wait_for(ticked, timeout=60)
    assert "reloaded pipelines after a deploy" in server.log.read_text()
