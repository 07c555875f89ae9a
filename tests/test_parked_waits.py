"""Waiting ``http`` steps under ``headwater serve``: parked runs hold no worker, survive a
restart, and continue by polling or by a one-time callback URL."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import headwater as hw
from tests.api_server import Reply, Request, Route, serve_api
from tests.conftest import ProjectFactory
from tests.test_serve import Served, wait_for

pytestmark = pytest.mark.slow

POLLING = """
name: job
params: {n: 0}
steps:
  - id: train
    http:
      url: "URL/jobs"
      json: {n: "{{ params.n }}"}
      wait: {poll: {url: "URL/jobs/{{ response.id }}", until: "status == 'Succeeded'",
                    fail_when: "status == 'Failed'", every: 200ms, timeout: TIMEOUT}}
  - id: publish
    publish: {input: train, dataset: jobs}
"""


def _jobs(state: dict[str, str]) -> dict[str, Route]:
    def start(req: Request) -> Reply:
        return 201, {}, {"id": f"j{req.body['n']}"}

    def status(req: Request) -> Reply:
        return 200, {}, {"id": req.path.rsplit("/", 1)[1], "status": state["status"]}

    return {"/jobs": start, **{f"/jobs/j{n}": status for n in range(3)}}


def _statuses(project: hw.Project) -> list[str]:
    return sorted(r.status for r in project.runs("job"))


def test_three_runs_wait_at_once_with_one_slot_and_survive_a_restart(
        make_project: ProjectFactory, serve: Callable[..., Served]) -> None:
    """With ``max_concurrent_runs: 1`` three polling runs are all parked at once (none
    holds the slot); after a kill -9 and a new server they all finish when the job does."""
    state = {"status": "Running"}
    with serve_api(_jobs(state)) as api:
        pipeline = POLLING.replace("URL", api.url).replace("TIMEOUT", "5m")
        root = make_project({"job": pipeline}, settings="max_concurrent_runs: 1\n")
        server = serve(root)
        for n in range(3):
            answer = httpx.post(f"{server.url}/api/pipelines/job/runs",
                                json={"params": {"n": n}})
            assert 202 == answer.status_code
        with hw.Project(root) as project:
            wait_for(lambda: ["waiting"] * 3 == _statuses(project), timeout=30)
            server.stop(signal.SIGKILL)
            again = serve(root, worker="second")
            state["status"] = "Succeeded"
            wait_for(lambda: ["succeeded"] * 3 == _statuses(project), timeout=30)
            rows = project.dataset("jobs").to_arrow().to_pylist()
            run = project.runs("job")[0]
            assert "wait" == project.runtime.store.run(run.id)["trigger_info"]["resume"]
        assert [{"id": f"j{n}", "status": "Succeeded"} for n in range(3)] == \
            sorted(rows, key=lambda r: r["id"])
        assert 3 == len(api.calls("/jobs"))  # each job was started once, not per resume
        assert "HTTP Request:" not in again.log.read_text()  # polls are not logged per request
        assert 0 == again.stop()


def test_parked_poll_times_out_and_fail_when_fails(make_project: ProjectFactory,
                                                   serve: Callable[..., Served]) -> None:
    """A parked wait that never finishes fails its run at the timeout, naming the URL and
    the last status; nothing is published."""
    state = {"status": "Running"}
    with serve_api(_jobs(state)) as api:
        pipeline = POLLING.replace("URL", api.url).replace("TIMEOUT", "1s")
        root = make_project({"job": pipeline})
        server = serve(root)
        httpx.post(f"{server.url}/api/pipelines/job/runs", json={"params": {"n": 1}})
        with hw.Project(root) as project:
            run = wait_for(lambda: [r for r in project.runs("job") if r.status == "failed"],
                           timeout=30)[0]
            assert f"timed out after 1s waiting for {api.url}/jobs/j1" in (run.error or "")
            assert "step 'train'" in (run.error or "")
            assert [] == project.runtime.store.datasets()
        server.stop()


CALLBACK = """
name: cb
steps:
  - id: train
    http:
      url: "URL/start"
      json: {notify: "{{ callback.url }}"}
      wait: callback
  - id: publish
    publish: {input: train, dataset: results}
"""


def test_callback_completes_the_step_once(make_project: ProjectFactory,
                                          serve: Callable[..., Served]) -> None:
    """The start call receives a one-time URL; garbage gets 400 and keeps waiting, a
    wrong token 404, the JSON completes the step (and is its output), a reuse 409."""
    with serve_api({"/start": lambda req: (202, {}, {"accepted": True})}) as api:
        root = make_project({"cb": CALLBACK.replace("URL", api.url)})
        server = serve(root)
        httpx.post(f"{server.url}/api/pipelines/cb/runs", json={})
        with hw.Project(root) as project:
            wait_for(lambda: ["waiting"] == [r.status for r in project.runs("cb")], timeout=30)
            url: Any = api.calls("/start")[0].body["notify"]
            assert url.startswith(f"{server.url}/api/callbacks/")
            assert 400 == httpx.post(url, content=b"<html>not json").status_code
            assert 404 == httpx.post(url + "x", json={}).status_code
            assert 200 == httpx.post(url, json={"model": "m-7", "auc": 0.93}).status_code
            assert 409 == httpx.post(url, json={"model": "again"}).status_code
            run = wait_for(lambda: [r for r in project.runs("cb") if r.status == "succeeded"],
                           timeout=30)[0]
            assert [{"model": "m-7", "auc": 0.93}] == \
                project.dataset("results").to_arrow().to_pylist()
            logs = " ".join(str(line["message"]) for line in project.logs(run.id))
        assert "callback body is not JSON" in logs
        assert url.rsplit("/", 1)[1] not in logs
        server.stop()


def test_callback_under_headwater_run_says_it_needs_serve(make_project: ProjectFactory) -> None:
    """Without a server there is no callback URL: the step fails saying so, before any
    call is made."""
    with serve_api({"/start": lambda req: (202, {}, {})}) as api:
        root = make_project({"cb": CALLBACK.replace("URL", api.url)})
        with hw.Project(root) as project:
            run = project.run("cb")
        assert "failed" == run.status
        assert "wait: callback needs `headwater serve`" in (run.error or "")
        assert [] == api.calls("/start")


def test_cancel_of_a_parked_run(make_project: ProjectFactory,
                                serve: Callable[..., Served]) -> None:
    """Cancelling a waiting run ends it ``cancelled`` and its callback URL stops working."""
    with serve_api({"/start": lambda req: (202, {}, {})}) as api:
        root = make_project({"cb": CALLBACK.replace("URL", api.url)})
        server = serve(root)
        httpx.post(f"{server.url}/api/pipelines/cb/runs", json={})
        with hw.Project(root) as project:
            run = wait_for(lambda: [r for r in project.runs("cb") if r.status == "waiting"],
                           timeout=30)[0]
            url: Any = api.calls("/start")[0].body["notify"]
            assert 200 == httpx.post(f"{server.url}/api/runs/{run.id}/cancel").status_code
            wait_for(lambda: "cancelled" == project.get_run(run.id).status, timeout=30)
            assert 409 == httpx.post(url, json={"late": True}).status_code
        server.stop()
