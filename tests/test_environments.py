"""Environments: overlays of headwater.yaml chosen with --env / HEADWATER_ENV."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ProjectFactory, run_cli

PIPELINE = """
name: orders
params: {min_amount: 0}
triggers:
  - interval: 1h
steps:
  - id: raw
    source: {type: files, path: data/*.csv}
  - id: clean
    sql: SELECT * FROM raw WHERE amount >= {{ params.min_amount }}
  - id: publish
    publish: {input: clean, dataset: orders, mode: overwrite}
"""

SETTINGS = """
connections:
  db: {type: sqlite, url: "sqlite:///base.db"}
environments:
  qa:
    store: sqlite:///.headwater/qa.db
    warehouse: ./warehouse-qa
    params: {min_amount: 50}
    triggers: false
    connections: {db: {url: "sqlite:///qa.db"}}
  prod: {max_concurrent_runs: 2}
"""


def _project(make_project: ProjectFactory) -> Path:
    return make_project(pipelines={"orders": PIPELINE}, settings=SETTINGS,
                        files={"data/a.csv": "id,amount\n1,10\n2,60\n3,90\n"})


def test_env_overlay_changes_warehouse_params_and_triggers(make_project: ProjectFactory) -> None:
    """--env qa records in the qa store and writes to the qa warehouse, its params override
    the pipeline default, its connection overlay changes only the URL, and its triggers
    are off; without --env the base settings apply."""
    root = _project(make_project)
    qa = run_cli("run", "orders", "--env", "qa", "--project", str(root))
    assert 0 == qa.returncode, qa.stderr
    assert (root / "warehouse-qa" / "orders").is_dir()
    assert not (root / "warehouse").exists()
    assert (root / ".headwater" / "qa.db").is_file()
    import headwater as hw

    with hw.Project(root, env="qa") as project:
        assert [2, 3] == sorted(project.dataset("orders").to_arrow().column("id").to_pylist())
        assert "sqlite:///qa.db" == project.runtime.connection("db")["url"]
        assert "sqlite" == project.runtime.connection("db")["type"]
    triggers = run_cli("triggers", "--json", "--project", str(root), env={"HEADWATER_ENV": "qa"})
    assert 0 == triggers.returncode, triggers.stderr
    assert [False] == [t["enabled"] for t in json.loads(triggers.stdout)]
    base = run_cli("run", "orders", "--project", str(root))
    assert 0 == base.returncode, base.stderr
    with hw.Project(root) as project:
        assert [1, 2, 3] == sorted(project.dataset("orders").to_arrow().column("id").to_pylist())
        assert 4 == project.runtime.config.max_concurrent_runs
    with hw.Project(root, env="prod") as project:
        assert 2 == project.runtime.config.max_concurrent_runs


def test_unknown_environment_names_file_and_suggests(make_project: ProjectFactory) -> None:
    """A typo in --env is a project error (exit 2) with the file, the key and a suggestion."""
    root = _project(make_project)
    result = run_cli("check", "--env", "qaa", "--project", str(root))
    assert 2 == result.returncode
    assert "headwater.yaml" in result.stderr
    assert "environments.qaa" in result.stderr
    assert "did you mean 'qa'" in result.stderr


def test_unknown_overlay_key_is_a_config_error(make_project: ProjectFactory) -> None:
    """An overlay key that does not exist names the file, line and dotted key."""
    root = make_project(pipelines={"orders": PIPELINE},
                        settings="environments:\n  dev: {wharehouse: ./x}\n")
    result = run_cli("check", "--project", str(root))
    assert 2 == result.returncode
    assert "headwater.yaml:3: environments.dev.wharehouse" in result.stderr


def test_env_option_needs_a_value(make_project: ProjectFactory) -> None:
    """'--env' without a name is a usage error, not a crash."""
    root = _project(make_project)
    result = run_cli("check", "--project", str(root), "--env")
    assert 2 == result.returncode
    assert "--env expects an environment name" in result.stderr
