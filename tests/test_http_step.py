"""The ``http`` step under ``headwater run``: start a job, poll it until done, and hand
the last JSON to later steps; failures and timeouts name the URL and what was seen."""

from __future__ import annotations

import pytest

import headwater as hw
from tests.api_server import Reply, Request, Route, serve_api
from tests.conftest import ProjectFactory


def _pipeline(url: str, wait: str, extra: str = "") -> str:
    return f"""
name: job
params: {{size: 3}}
steps:
  - id: train
    http:
      method: POST
      url: "{url}/jobs"
      json: {{size: "{{{{ params.size }}}}", tags: ["{{{{ run.pipeline }}}}"]}}
      backoff: 10ms
      {wait}
{extra}
"""


POLL = ("wait: {poll: {url: \"URL/jobs/{{ response.id }}\", until: \"status == 'Succeeded'\", "
        "fail_when: \"status == 'Failed'\", every: 50ms, timeout: TIMEOUT}}")


def _job_api(states: list[str]) -> dict[str, Route]:
    def start(req: Request) -> Reply:
        return 201, {}, {"id": "j-42", "echo": req.body}

    def status(req: Request) -> Reply:
        state = states.pop(0) if len(states) > 1 else states[0]
        return 200, {}, {"id": "j-42", "status": state, "metrics": {"auc": 0.91}}

    return {"/jobs": start, "/jobs/j-42": status}


def test_poll_until_succeeded_and_output_feeds_sql(make_project: ProjectFactory) -> None:
    """The step polls the job named by the start call's JSON until ``until`` holds; the
    final JSON (nested fields kept) is a one-row relation a later SQL step reads."""
    with serve_api(_job_api(["Queued", "Running", "Succeeded"])) as api:
        wait = POLL.replace("URL", api.url).replace("TIMEOUT", "30s")
        extra = """  - id: scored
    sql: SELECT id, status, metrics.auc AS auc FROM train
  - id: publish
    publish: {input: scored, dataset: jobs}"""
        root = make_project({"job": _pipeline(api.url, wait, extra)})
        with hw.Project(root) as project:
            run = project.run("job")
            assert "succeeded" == run.status, run.error
            assert [{"id": "j-42", "status": "Succeeded", "auc": 0.91}] == \
                project.dataset("jobs").to_arrow().to_pylist()
        assert {"size": "3", "tags": ["job"]} == api.calls("/jobs")[0].body
        assert 3 == len(api.calls("/jobs/j-42"))


def test_fail_when_fails_the_run_with_the_json(make_project: ProjectFactory) -> None:
    """A job that reports failure fails the step, quoting the JSON that said so."""
    with serve_api(_job_api(["Running", "Failed"])) as api:
        wait = POLL.replace("URL", api.url).replace("TIMEOUT", "30s")
        root = make_project({"job": _pipeline(api.url, wait)})
        with hw.Project(root) as project:
            run = project.run("job")
        assert "failed" == run.status
        assert f"{api.url}/jobs/j-42 reported failure (status == 'Failed')" in (run.error or "")
        assert '"status": "Failed"' in (run.error or "")


def test_poll_that_never_finishes_times_out(make_project: ProjectFactory) -> None:
    """A job stuck in Running fails the step at the wait's timeout, naming the URL and
    the last status seen."""
    with serve_api(_job_api(["Running"])) as api:
        wait = POLL.replace("URL", api.url).replace("TIMEOUT", "400ms")
        root = make_project({"job": _pipeline(api.url, wait)})
        with hw.Project(root) as project:
            run = project.run("job")
        assert "failed" == run.status
        error = run.error or ""
        assert f"timed out after 0.4s waiting for {api.url}/jobs/j-42" in error
        assert "last answer: HTTP 200" in error and '"status": "Running"' in error


def test_no_wait_outputs_the_start_calls_json(make_project: ProjectFactory) -> None:
    """Without a wait the start call's JSON is the step's output."""
    with serve_api(_job_api(["Running"])) as api:
        extra = """  - id: publish
    publish: {input: train, dataset: started}"""
        root = make_project({"job": _pipeline(api.url, "", extra)})
        with hw.Project(root) as project:
            run = project.run("job")
            assert "succeeded" == run.status, run.error
            assert ["j-42"] == project.dataset("started").to_arrow()["id"].to_pylist()


@pytest.mark.parametrize("answer", ["<html>502 Bad Gateway</html>", "{not json"])
def test_start_call_answering_garbage_fails(make_project: ProjectFactory, answer: str) -> None:
    """A start call answered with HTML or broken JSON fails naming URL and status."""
    with serve_api({"/jobs": lambda req: (200, {"Content-Type": "text/html"}, answer)}) as api:
        root = make_project({"job": _pipeline(api.url, "")})
        with hw.Project(root) as project:
            run = project.run("job")
        assert "failed" == run.status
        assert f"{api.url}/jobs answered HTTP 200 OK with text/html, not JSON" in (run.error or "")


def test_bad_condition_fails_before_the_job_starts(make_project: ProjectFactory) -> None:
    """An ``until`` that does not parse fails the step without calling the API."""
    with serve_api(_job_api(["Running"])) as api:
        wait = f"wait: {{poll: {{url: '{api.url}/jobs/1', until: 'status ==', every: 1s}}}}"
        root = make_project({"job": _pipeline(api.url, wait)})
        with hw.Project(root) as project:
            run = project.run("job")
        assert "failed" == run.status
        assert "invalid condition 'status =='" in (run.error or "")
        assert [] == api.calls("/jobs")
