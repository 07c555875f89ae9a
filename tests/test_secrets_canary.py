"""Secrets never leave in clear (SPEC §8; issue 8, item 19 and the Secrets suite).

Canaries sit in an unused connection, a project param and a command step's ``env:``; a
command prints all three. After a succeeding and a failing run (real CLI processes), no
canary is in the store file, the logs, ``runs --json``, ``logs --json``, the API's
answers, the OpenLineage file or the Delta log.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from headwater.project import Project
from tests.conftest import ProjectFactory, run_cli

pytestmark = pytest.mark.slow

CANARIES = {"HW_CONN_SECRET": "canary-conn-5f1c9e", "HW_PARAM_SECRET": "canary-param-8b2d4a",
            "HW_CMD_SECRET": "canary-cmd-3e7a60"}

SETTINGS = """
lineage: {openlineage: {file: lineage.ndjson}}
params: {api_key: "${env:HW_PARAM_SECRET}"}
connections:
  unused: {type: postgres, url: "postgresql://app:${env:HW_CONN_SECRET}@127.0.0.1:1/x"}
"""

PIPELINE = """
name: NAME
steps:
  - id: talk
    command: >-
      echo "key={{ params.api_key }} token=$TOKEN conn=$HW_CONN_SECRET"; exit CODE
    env: {TOKEN: "${env:HW_CMD_SECRET}"}
  - id: rows
    needs: [talk]
    sql: SELECT 1 AS n
  - id: publish
    publish: {input: rows, dataset: NAME_data}
"""


def _leaks(text: str) -> list[str]:
    return [value for value in CANARIES.values() if value in text]


def _files_leaking(root: Path) -> list[str]:
    files = [p for p in root.rglob("*") if p.is_file() and p.name != "headwater.yaml"
             and "pipelines" not in p.parts]
    return [str(p.relative_to(root)) for p in files
            if _leaks(p.read_bytes().decode("utf-8", errors="replace"))]


def test_canaries_leak_nowhere(make_project: ProjectFactory,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """0 occurrences of any canary after a good and a failing run, in every output."""
    root = make_project({"good": PIPELINE.replace("NAME", "good").replace("CODE", "0"),
                         "bad": PIPELINE.replace("NAME", "bad").replace("CODE", "3")},
                        settings=SETTINGS)
    outputs = []
    good = run_cli("run", "good", "--project", str(root), env=CANARIES)
    assert 0 == good.returncode, good.stderr
    bad = run_cli("run", "bad", "--project", str(root), env=CANARIES)
    assert 1 == bad.returncode, bad.stderr
    outputs += [good.stdout, good.stderr, bad.stdout, bad.stderr]
    runs = run_cli("runs", "--json", "--project", str(root), env=CANARIES)
    outputs.append(runs.stdout)
    ids = [r["id"] for r in json.loads(runs.stdout)]
    assert "***" in next(r["error"] for r in json.loads(runs.stdout) if r["pipeline"] == "bad")
    for run_id in ids:
        outputs.append(run_cli("logs", run_id, "--json", "--project", str(root),
                               env=CANARIES).stdout)
    assert "token=*** conn=***" in outputs[-1] + outputs[-2]
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    outputs.append(_api_answers(root, ids))
    assert [] == _leaks("\n".join(outputs))
    assert (root / "lineage.ndjson").stat().st_size > 0
    assert [] == _files_leaking(root)


def _api_answers(root: Path, ids: list[str]) -> str:
    """What ``serve``'s API says about the runs, from a process that never used a secret."""
    from headwater.server.app import create_app
    from headwater.server.service import Server

    with Project(root) as proj, TestClient(create_app(Server(proj.runtime)),
                                           base_url="http://127.0.0.1") as http:
        answers = [http.get("/api/runs").text, http.get("/api/datasets").text]
        answers += [http.get(f"/api/runs/{run_id}").text for run_id in ids]
    return "\n".join(answers)
