"""``headwater init``'s DevOps files: CI templates, the pre-commit hook, editor schemas."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import ProjectFactory, run_cli

REPO = Path(__file__).resolve().parent.parent
HEADER = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scaffolded project with a GitHub workflow, shared by the tests of this module
    (scaffolding runs the example case, so it is done once)."""
    root = tmp_path_factory.mktemp("init") / "shop"
    created = run_cli("init", str(root), "--ci", "github")
    assert 0 == created.returncode, created.stderr
    return root


def _shell(root: Path, tmp: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run a CI/pre-commit script line in bash with ``headwater`` meaning this checkout."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "headwater"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m headwater.cli.main "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def _commands(steps: list[dict[str, Any]], key: str) -> list[str]:
    return [s[key] for s in steps if str(s.get(key, "")).startswith("headwater ")]


@pytest.mark.slow
def test_github_workflow_gates_deploys_and_its_commands_pass(shop: Path, tmp_path: Path,
                                                             ) -> None:
    """The workflow verifies (check, test --junit, check+plan per environment), then deploys
    qa and prod in file order, each job on a GitHub environment (the approval gate), only
    from main; every headwater command in it succeeds on the scaffolded project."""
    doc = yaml.safe_load((shop / ".github" / "workflows" / "headwater.yml").read_text())
    jobs = doc["jobs"]
    verify = _commands(jobs["verify"]["steps"], "run")
    assert ["headwater check", "headwater test --junit reports/headwater-tests.xml",
            "headwater check --env qa", "headwater plan --env qa || [ $? -eq 3 ]",
            "headwater check --env prod", "headwater plan --env prod || [ $? -eq 3 ]"
            ] == verify
    assert ["verify", "deploy_qa", "deploy_prod"] == list(jobs)
    assert "verify" == jobs["deploy_qa"]["needs"] and "qa" == jobs["deploy_qa"]["environment"]
    assert "deploy_qa" == jobs["deploy_prod"]["needs"]
    assert "prod" == jobs["deploy_prod"]["environment"]
    assert "refs/heads/main" in jobs["deploy_prod"]["if"]
    deploys = [_commands(jobs[j]["steps"], "run") for j in ("deploy_qa", "deploy_prod")]
    assert ["headwater plan --env qa || [ $? -eq 3 ]", "headwater deploy --env qa"] == deploys[0]
    for script in verify + deploys[0] + deploys[1]:
        done = _shell(shop, tmp_path, script)
        assert 0 == done.returncode, f"{script}\n{done.stdout}{done.stderr}"
    report = (shop / "reports" / "headwater-tests.xml").read_text(encoding="utf-8")
    assert 'tests="1"' in report and 'failures="0"' in report
    again = run_cli("plan", "--env", "qa", "--project", str(shop))
    assert 0 == again.returncode, again.stdout  # deployed: nothing left to change in qa


def test_azure_pipeline_on_an_existing_project(make_project: ProjectFactory) -> None:
    """On an existing project only the CI file is written, naming its environments; a
    second run refuses to overwrite without --force."""
    root = make_project(pipelines={}, settings="environments:\n  dev: {}\n  staging: {}\n"
                                              "  live: {max_concurrent_runs: 2}\n")
    first = run_cli("init", str(root), "--ci", "azure")
    assert 0 == first.returncode, first.stderr
    assert not (root / "pipelines" / "orders.yaml").exists()  # no scaffolding over it
    doc = yaml.safe_load((root / "azure-pipelines.yml").read_text(encoding="utf-8"))
    stages = {s["stage"]: s for s in doc["stages"]}
    assert ["verify", "deploy_dev", "deploy_staging", "deploy_live"] == list(stages)
    verify = _commands(stages["verify"]["jobs"][0]["steps"], "script")
    assert verify[:2] == ["headwater check", "headwater test --junit reports/headwater-tests.xml"]
    assert "headwater plan --env live || [ $? -eq 3 ]" in verify
    live = stages["deploy_live"]
    assert "deploy_staging" == live["dependsOn"]
    job = live["jobs"][0]
    assert "live" == job["environment"] and "deploy_live" == job["deployment"]
    steps = _commands(job["strategy"]["runOnce"]["deploy"]["steps"], "script")
    assert steps == ["headwater plan --env live || [ $? -eq 3 ]", "headwater deploy --env live"]
    again = run_cli("init", str(root), "--ci", "azure")
    assert 2 == again.returncode
    assert "azure-pipelines.yml already exists (use --force" in again.stderr
    forced = run_cli("init", str(root), "--ci", "azure", "--force")
    assert 0 == forced.returncode, forced.stderr


def test_ci_without_environments_deploys_the_base_settings(make_project: ProjectFactory,
                                                            ) -> None:
    """No environments: one gated deploy job with the base settings (no --env)."""
    root = make_project(pipelines={})
    assert 0 == run_cli("init", str(root), "--ci", "github").returncode
    jobs = yaml.safe_load((root / ".github/workflows/headwater.yml").read_text())["jobs"]
    assert ["verify", "deploy_default"] == list(jobs)
    assert "production" == jobs["deploy_default"]["environment"]
    assert "headwater deploy" in _commands(jobs["deploy_default"]["steps"], "run")
    bad = run_cli("init", str(root), "--ci", "gitlab")
    assert 2 == bad.returncode and "--ci must be one of azure, github" in bad.stderr


def test_pre_commit_hook_runs_check(shop: Path, tmp_path: Path) -> None:
    """init writes a local pre-commit hook whose entry passes on the scaffold and whose
    file pattern matches the project's files; the repository ships the same hook id."""
    config = yaml.safe_load((shop / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    (hook,) = config["repos"][0]["hooks"]
    assert "local" == config["repos"][0]["repo"]
    assert ("headwater-check", "headwater check", False) == (
        hook["id"], hook["entry"], hook["pass_filenames"])
    done = _shell(shop, tmp_path, hook["entry"])
    assert 0 == done.returncode, done.stderr
    assert "ok: 1 pipelines" in done.stdout
    (shipped,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert ("headwater-check", "headwater check", "python", False) == (
        shipped["id"], shipped["entry"], shipped["language"], shipped["pass_filenames"])
    for pattern in (hook["files"], shipped["files"]):
        matched = [p for p in ("headwater.yaml", "pipelines/orders.yaml", "sql/clean.sql",
                               "README.md", "landing/orders/a.csv") if re.search(pattern, p)]
        assert ["headwater.yaml", "pipelines/orders.yaml", "sql/clean.sql"] == matched


def test_schema_headers_resolve_and_validate_the_scaffold(shop: Path) -> None:
    """headwater.yaml and every pipeline file start with a yaml-language-server header
    whose path resolves to the schema 'headwater schema' prints, and it validates them."""
    from headwater.config.schema import render

    files = [shop / "headwater.yaml", *sorted((shop / "pipelines").glob("*.yaml"))]
    for path in files:
        text = path.read_text(encoding="utf-8")
        found = HEADER.match(text.splitlines()[0])
        assert found, f"{path} has no schema header"
        schema_path = (path.parent / found.group(1)).resolve()
        kind = "project" if path.name == "headwater.yaml" else "pipeline"
        assert render(kind) == schema_path.read_text(encoding="utf-8")
        jsonschema.validate(yaml.safe_load(text), json.loads(render(kind)))


def test_builder_keeps_the_header_and_gives_new_pipelines_one(shop: Path) -> None:
    """Saving from the builder keeps an edited file's header; a new pipeline in a project
    with the schema gets it too."""
    from headwater.project import Project
    from headwater.server.builder import definition, save

    with Project(shop) as project:
        doc, _, version = definition(project.runtime, "orders")
        doc["description"] = "Orders, edited in the builder"
        edited = save(project.runtime, "orders", doc, expected=version, dry_run=True)
        assert edited.yaml.startswith("# yaml-language-server: $schema=../schema/")
        new = {"name": "tiny", "steps": [{"id": "one", "sql": "SELECT 1 AS x"}]}
        created = save(project.runtime, None, new, dry_run=True)
        assert HEADER.match(created.yaml.splitlines()[0])
