"""`serve` listens before its API is built (``server.starting``): health answers at once
from the store, every other request waits for the full app, and a build that fails makes
health fail instead of looking healthy (issue 12: serve cold start)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from headwater.project import Project
from headwater.server.app import create_app
from headwater.server.guard import ASGIApp
from headwater.server.service import Server, ServerOptions
from headwater.server.starting import StartingApp
from tests.conftest import ProjectFactory

PIPELINE = """
name: p
steps:
  - id: a
    sql: SELECT 1 AS x
"""


@pytest.fixture
def server(make_project: ProjectFactory) -> Iterator[Server]:
    with Project(make_project({"p": PIPELINE})) as proj:
        served = Server(proj.runtime, ServerOptions(triggers=False, api=False))
        yield served
        served.pool.shutdown(wait=False)


def test_health_answers_while_the_api_builds(server: Server) -> None:
    """Before the build ends: health is the store's real answer marked ``starting`` (a
    queued run is counted), the request guard still applies, and an API request waits for
    the build and is then served by the full app, whose health says ``ready``."""
    release = threading.Event()

    def slow_build() -> ASGIApp:
        assert release.wait(60), "the test never released the build"
        return create_app(server)

    server.store.create_run("p")
    app = StartingApp(server, slow_build)
    client = TestClient(app, base_url="http://127.0.0.1")  # no lifespan: serve has none
    early = client.get("/api/health")
    assert 200 == early.status_code
    assert {"status": "ok", "api": "starting", "queued": 1} == {
        k: early.json()[k] for k in ("status", "api", "queued")}
    foreign = client.get("/api/health", headers={"host": "rebind.example"})
    assert 403 == foreign.status_code  # the guard answers before any app exists
    answers: list[int] = []
    waiting = threading.Thread(
        target=lambda: answers.append(client.get("/api/pipelines").status_code))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and [] == answers  # held until the app exists
    release.set()
    waiting.join(60)
    assert [200] == answers
    assert app.wait_built(0)
    assert "ready" == client.get("/api/health").json()["api"]


def test_a_failed_build_fails_health(server: Server) -> None:
    """A server whose API cannot be built is not healthy: health is a 503 naming why."""

    def broken_build() -> ASGIApp:
        raise RuntimeError("template folder missing")

    app = StartingApp(server, broken_build)
    assert app.wait_built(60)
    client = TestClient(app, base_url="http://127.0.0.1")
    answer = client.get("/api/health")
    assert 503 == answer.status_code
    assert "template folder missing" in answer.json()["detail"]
    assert 503 == client.get("/api/pipelines").status_code
