"""``headwater serve`` under bad input and faults: it keeps serving and says what is wrong.

Each test starts a real server process on a throwaway project: broken triggers (an invalid
cron, a folder that does not exist, a broker that is down) show their error in
``headwater triggers --json`` and are logged once; a step that raises, or even exits,
fails its run and nothing else; a malformed webhook body is refused without queueing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ProjectFactory, run_cli, write
from tests.test_serve import Served, _free_port, wait_for

pytestmark = pytest.mark.slow

TOKEN = "fault-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}

BAD_CRON = """
name: badcron
triggers:
  - schedule: {cron: "61 * * * *"}
steps:
  - id: one
    sql: SELECT 1 AS x
"""

LATER = """
name: later
triggers:
  - files: {path: landing/later, pattern: "*.csv", settle: 50ms, batch_window: 20ms}
steps:
  - id: one
    sql: SELECT 1 AS x
"""

HOOKED = f"""
name: hooked
triggers:
  - webhook: {{token: {TOKEN}}}
params: {{how: ok}}
steps:
  - id: one
    python: transforms.boom:explode
"""

BOOM = """
import sys

import pyarrow as pa


def explode(params):
    if params["how"] == "raise":
        raise RuntimeError("kaboom from the step")
    if params["how"] == "exit":
        sys.exit(3)
    return pa.table({"x": [1]})
"""




def triggers_json(root: Path) -> dict[str, dict[str, Any]]:
    """``headwater triggers --json`` from its own process, by trigger id."""
    answer = run_cli("triggers", "--json", "--project", str(root))
    assert 0 == answer.returncode, answer.stderr
    return {row["id"]: row for row in json.loads(answer.stdout)}


def hook(server: Served, pipeline: str = "hooked", **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/api/pipelines/{pipeline}/trigger", headers=HEADERS,
                      timeout=30, **kwargs)


def finished(server: Served, run_id: str) -> dict[str, Any] | None:
    row: dict[str, Any] = httpx.get(f"{server.url}/api/runs/{run_id}", timeout=10).json()
    return row if row["status"] in ("succeeded", "failed", "cancelled") else None


def healthy(server: Served) -> bool:
    answer = httpx.get(f"{server.url}/api/health", timeout=10)
    return 200 == answer.status_code and "ok" == answer.json()["status"]


def test_invalid_cron_leaves_the_server_serving(make_project: ProjectFactory,
                                                serve: Callable[..., Served]) -> None:
    """`check` rejects a cron with minute 61, but `serve` starts anyway: the broken
    trigger's error shows in `headwater triggers --json` and other pipelines still run."""
    root = make_project({"badcron": BAD_CRON, "hooked": HOOKED},
                        {"transforms/boom.py": BOOM})
    assert 2 == run_cli("check", "--project", str(root)).returncode
    server = serve(root)
    assert healthy(server)
    rows = wait_for(lambda: (r := triggers_json(root))["badcron.0"]["error"] and r)
    assert "invalid cron expression '61 * * * *'" in rows["badcron.0"]["error"]
    assert rows["hooked.0"]["error"] is None
    answer = hook(server)
    assert 202 == answer.status_code
    run = wait_for(lambda: finished(server, answer.json()["run_id"]))
    assert "succeeded" == run["status"]


def test_files_trigger_on_a_missing_folder_recovers(make_project: ProjectFactory,
                                                    serve: Callable[..., Served]) -> None:
    """A files trigger on a folder that does not exist shows the error; once the folder is
    made and a file dropped in it, the pipeline runs and the error clears."""
    root = make_project({"later": LATER})
    server = serve(root)
    rows = wait_for(lambda: (r := triggers_json(root))["later.0"]["error"] and r)
    assert "folder landing/later does not exist" == rows["later.0"]["error"]
    assert healthy(server)
    write(root / "landing/later/a.csv", "id\n1\n")
    runs = wait_for(lambda: [r for r in httpx.get(f"{server.url}/api/runs").json()
                             if r["status"] == "succeeded"], timeout=30)
    assert ["files"] == [r["trigger"] for r in runs]
    assert ["landing/later/a.csv"] == runs[0]["trigger_info"]["files"]
    wait_for(lambda: triggers_json(root)["later.0"]["error"] is None)


def test_a_step_that_raises_or_exits_fails_only_its_run(make_project: ProjectFactory,
                                                        serve: Callable[..., Served]) -> None:
    """A step raising an exception fails its run with the message; a step calling
    sys.exit() fails its run too (it is not left `running` to be taken over and exit again
    after the lease); the server stays healthy and the next run succeeds."""
    root = make_project({"hooked": HOOKED}, {"transforms/boom.py": BOOM})
    server = serve(root)  # the test server's lease is 3 s
    raised = hook(server, json={"params": {"how": "raise"}}).json()["run_id"]
    run = wait_for(lambda: finished(server, raised))
    assert "failed" == run["status"]
    assert "kaboom from the step" in run["error"]
    assert healthy(server)
    exited = hook(server, json={"params": {"how": "exit"}}).json()["run_id"]
    run = wait_for(lambda: finished(server, exited))
    assert ("failed", "one") == (run["status"], run["failed_step"])
    assert "SystemExit: 3" in run["error"]
    time.sleep(5.0)  # past the lease and a housekeeping round: still failed, not resumed
    run = finished(server, exited)
    assert run is not None
    assert "failed" == run["status"]
    assert [("one", "failed")] == [(s["step_id"], s["status"]) for s in run["steps"]]
    assert "took over" not in server.log.read_text()
    assert healthy(server)
    fine = hook(server).json()["run_id"]
    run = wait_for(lambda: finished(server, fine))
    assert "succeeded" == run["status"]


def test_malformed_webhook_body_is_refused_and_queues_nothing(
        make_project: ProjectFactory, serve: Callable[..., Served]) -> None:
    """Bodies that are not JSON, not an object, or carry params that are not an object get
    a 4xx and queue no run; a well-formed call afterwards still queues one."""
    root = make_project({"hooked": HOOKED}, {"transforms/boom.py": BOOM})
    server = serve(root)
    bad: list[dict[str, Any]] = [
        {"content": b"not json", "headers": {**HEADERS, "Content-Type": "application/json"}},
        {"content": b"not json", "headers": {**HEADERS, "Content-Type": "text/plain"}},
        {"content": b"{\"params\": ", "headers": {**HEADERS,
                                                  "Content-Type": "application/json"}},
        {"content": b"\xff\xfe\x00", "headers": {**HEADERS,
                                                 "Content-Type": "application/json"}},
        {"json": [1, 2]},
        {"json": {"params": "x"}},
    ]
    url = f"{server.url}/api/pipelines/hooked/trigger"
    for request in bad:
        request.setdefault("headers", HEADERS)
        answer = httpx.post(url, timeout=10, **request)
        assert 400 <= answer.status_code < 500, (request, answer.status_code, answer.text)
    assert [] == httpx.get(f"{server.url}/api/runs").json()
    assert healthy(server)
    assert 202 == hook(server).status_code
    assert 1 == len(httpx.get(f"{server.url}/api/runs").json())


def test_each_trigger_error_is_logged_once(make_project: ProjectFactory,
                                           serve: Callable[..., Served]) -> None:
    """Three broken triggers (an invalid cron, a missing folder, a NATS server that is not
    there) retry all the time, but over ~3.5 s each error is one line in the server log."""
    dead = """
    name: deadbus
    triggers:
      - message: {connection: bus, subject: faults.nobody}
    steps:
      - id: one
        sql: SELECT 1 AS x
    """
    settings = f"connections:\n  bus: {{type: nats, url: \"nats://127.0.0.1:{_free_port()}\"}}\n"
    root = make_project({"badcron": BAD_CRON, "later": LATER, "deadbus": dead},
                        settings=settings)
    server = serve(root)
    wait_for(lambda: all(r["error"] for r in triggers_json(root).values()))
    time.sleep(3.5)  # the folder and broker checks retry at 0.25, 0.5, 1, 2 s ...
    lines = server.log.read_text().splitlines()
    for pipeline in ("badcron", "later", "deadbus"):
        mentions = [line for line in lines if f"trigger {pipeline}" in line]
        assert 1 == len(mentions), mentions
    assert healthy(server)
