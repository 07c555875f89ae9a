"""``headwater backfill`` and ``headwater triggers`` from the command line."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import ProjectFactory, run_cli

HOURLY = """
name: hourly
triggers:
  - schedule: {cron: "0 * * * *", timezone: Europe/Berlin}
  - webhook: {token: "${env:SECRET_HOOK}"}
steps:
  - id: w
    sql: SELECT '{{ window.start }}' AS s, '{{ window.end }}' AS e
  - id: out
    publish: {input: w, dataset: windows}
"""


def test_backfill_runs_each_window_once_and_skips_done(make_project: ProjectFactory) -> None:
    """Six hourly windows run once each; repeating the backfill runs none again."""
    root = make_project({"hourly": HOURLY})
    args = ("backfill", "hourly", "--start", "2026-11-01T00:00:00+00:00",
            "--end", "2026-11-01T06:00:00+00:00", "--concurrency", "2", "--json",
            "--project", str(root))
    first = run_cli(*args)
    assert 0 == first.returncode, first.stderr
    result = json.loads(first.stdout)
    assert (6, 0, 6) == (result["windows"], result["skipped"], len(result["queued"]))
    assert {"succeeded"} == set(result["statuses"].values())
    again = json.loads(run_cli(*args).stdout)
    assert (6, 6, []) == (again["windows"], again["skipped"], again["queued"])
    rows = json.loads(run_cli("dataset", "preview", "windows", "-n", "100", "--json",
                              "--project", str(root)).stdout)
    assert 6 == len({r["s"] for r in rows})
    runs = json.loads(run_cli("runs", "--json", "--project", str(root)).stdout)
    assert {"backfill"} == {r["trigger"] for r in runs}


def test_triggers_list_and_disable(make_project: ProjectFactory) -> None:
    """``triggers --json`` lists each trigger with its next fire time; disable sticks; the
    webhook token is never shown."""
    root = make_project({"hourly": HOURLY})
    listed = json.loads(run_cli("triggers", "--json", "--project", str(root),
                                env={"SECRET_HOOK": "hook-value-123"}).stdout)
    assert [("hourly.0", "schedule", True), ("hourly.1", "webhook", True)] == [
        (t["id"], t["kind"], t["enabled"]) for t in listed]
    assert listed[0]["next_fire_at"] is not None
    assert "hook-value-123" not in json.dumps(listed)
    assert 0 == run_cli("triggers", "disable", "hourly.0", "--project", str(root)).returncode
    after = json.loads(run_cli("triggers", "--json", "--project", str(root)).stdout)
    assert [False, True] == [t["enabled"] for t in after]
    bad = run_cli("triggers", "disable", "hourly.7", "--project", str(root))
    assert 2 == bad.returncode


@pytest.mark.slow
def test_backfill_beside_a_server_executes_each_run_once(make_project: ProjectFactory,
                                                         serve: Callable[..., Any]) -> None:
    """With ``serve`` running on the same store, each backfill run's steps execute exactly
    once (the server and the backfill never both claim a run): a command step, i.e. a
    training, never runs twice."""
    pipeline = HOURLY + """  - id: train
    needs: [out]
    command: "echo {{ run.id }} >> executions.txt"
"""
    root = make_project({"hourly": pipeline})
    server = serve(root)
    result = run_cli("backfill", "hourly", "--start", "2026-11-01T00:00:00+00:00",
                     "--end", "2026-11-01T08:00:00+00:00", "--concurrency", "2", "--json",
                     "--project", str(root), env={"SECRET_HOOK": "x"})
    assert 0 == result.returncode, (result.stdout + result.stderr + run_cli(
        "runs", "--json", "--project", str(root)).stdout)
    queued = json.loads(result.stdout)["queued"]
    server.stop()
    executions = Counter((root / "executions.txt").read_text().split())
    assert (8, {1}) == (len(queued), set(executions.values()))
    assert set(queued) == set(executions)
