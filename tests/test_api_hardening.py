"""The HTTP API facing bad input, strangers' pages and replays (issue 8, item 15 and Fuzz).

Every test drives the real ASGI app in process (no mocks): bodies the webhook refuses
before reading them, bodies it cannot parse, hosts and origins it must not trust, and a
hypothesis fuzz over every endpoint of ``/api/openapi.json``: never a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from headwater.project import Project
from tests.conftest import ProjectFactory

TOKEN = "api-hook-token"
HOOK = "/api/pipelines/orders/trigger"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

PIPELINE = """
name: orders
params: {min_amount: 0, day: {type: date, default: "2026-01-01"}, note: null}
triggers:
  - webhook: {token: TOKEN}
steps:
  - id: a
    sql: SELECT {{ params.min_amount }} AS n
""".replace("TOKEN", TOKEN)


@pytest.fixture
def project(make_project: ProjectFactory) -> Iterator[Project]:
    with Project(make_project({"orders": PIPELINE})) as proj:
        yield proj


def _client(proj: Project, host: str = "127.0.0.1") -> TestClient:
    from headwater.server.app import create_app
    from headwater.server.service import Server

    return TestClient(create_app(Server(proj.runtime)), base_url=f"http://{host}",
                      raise_server_exceptions=False)


@pytest.fixture
def http(project: Project) -> Iterator[TestClient]:
    with _client(project) as client:
        yield client


def _queued(project: Project) -> int:
    return len(project.runs("orders"))


def test_token_is_checked_before_the_body_and_bodies_are_capped(
        http: TestClient, project: Project) -> None:
    """Without the token even a malformed or huge body is a 401; with it, a body over
    1 MiB is a 413 (announced or streamed), and nothing is queued."""
    assert 401 == http.post(HOOK, content=b"\xff{not json").status_code
    assert 401 == http.post(HOOK, headers={"Authorization": b"Bearer t\xf6ken"}).status_code
    huge = b'{"params": {"note": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
    assert 413 == http.post(HOOK, headers=AUTH, content=huge).status_code
    assert 413 == http.post(HOOK, headers=AUTH, content=iter([huge[:900_000],
                                                              huge[900_000:]])).status_code
    assert 0 == _queued(project)


@pytest.mark.parametrize(("body", "status"), [
    (b"\xff\xfe\x00garbage", 400),
    (b'{"params": {"min_amount": NaN}}', 400),
    (b'{"params": {"min_amount": Infinity}}', 400),
    (b'{"params": {"note": 1e999}}', 400),
    (b'{"params": [1]}', 422),
    (b"[1, 2]", 422),
    (b'{"params": {"day": "not a day"}}', 422),
    (b'{"params": {"min_amount": "1 OR 1=1"}}', 422),
    (b'{"params": {"nope": 1}}', 422),
    (b"{" * 100_000, 400),
])
def test_bad_webhook_bodies_are_4xx_and_queue_nothing(
        http: TestClient, project: Project, body: bytes, status: int) -> None:
    """Non-UTF-8, NaN/Infinity, a list for params, deep nesting: 4xx, never 500."""
    answer = http.post(HOOK, headers=AUTH, content=body)
    assert status == answer.status_code, answer.text
    assert 0 == _queued(project)


def test_idempotency_key_dedupes_a_replayed_webhook(http: TestClient,
                                                   project: Project) -> None:
    """The same ``Idempotency-Key`` twice queues one run; the replay says duplicate."""
    headers = {**AUTH, "Idempotency-Key": "delivery-17"}
    first = http.post(HOOK, headers=headers, json={"params": {"day": "2026-12-02"}})
    again = http.post(HOOK, headers=headers, json={"params": {"day": "2026-12-02"}})
    assert (202, "queued") == (first.status_code, first.json()["status"])
    assert (202, "duplicate") == (again.status_code, again.json()["status"])
    assert 1 == _queued(project)


def test_stored_infinite_param_never_breaks_the_runs_list(http: TestClient,
                                                         project: Project) -> None:
    """A run whose stored params hold ±Infinity (written by an older version) is listed
    with null instead of making ``GET /api/runs`` a 500 forever after."""
    run_id = project.runtime.store.create_run("orders", trigger="manual",
                                              params={"x": float("inf"), "y": float("-inf")})
    answer = http.get("/api/runs")
    assert 200 == answer.status_code
    assert {"x": None, "y": None} == answer.json()[0]["params"]
    assert 200 == http.get(f"/api/runs/{run_id}").status_code


def test_run_ids_are_not_like_patterns(http: TestClient, project: Project) -> None:
    """``/api/runs/%25`` and ``/api/runs/_`` are 404s, not whichever run LIKE finds."""
    run_id = project.runtime.store.create_run("orders", trigger="manual")
    for probe in ("%25", "_", "2%25", run_id[:4] + "%25"):
        assert 404 == http.get(f"/api/runs/{probe}").status_code, probe
    assert 404 == http.get(f"/api/runs/{run_id[:17]}").status_code  # the API never guesses
    assert run_id == http.get(f"/api/runs/{run_id}").json()["id"]


def test_without_auth_foreign_hosts_and_cross_site_posts_are_refused(
        project: Project) -> None:
    """DNS rebinding (an unknown Host) and a cross-site POST (a foreign Origin, or
    ``Sec-Fetch-Site: cross-site``) get 403 and queue nothing; loopback callers work."""
    with _client(project, host="evil.example:8765") as rebound:
        assert 403 == rebound.get("/api/runs").status_code
    with _client(project, host="localhost:8765") as local:
        assert 200 == local.get("/api/health").status_code
        assert 403 == local.post("/api/pipelines/orders/runs",
                                 headers={"Origin": "https://evil.example"}).status_code
        assert 403 == local.post("/api/pipelines/orders/runs",
                                 headers={"Sec-Fetch-Site": "cross-site"}).status_code
        assert 0 == _queued(project)
        same = local.post("/api/pipelines/orders/runs",
                          headers={"Origin": "http://localhost:8765"})
        assert 202 == same.status_code, same.text
    assert 1 == _queued(project)


# --------------------------------------------------------------------------- fuzz

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
BODIES = st.one_of(
    st.binary(max_size=200),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["min_amount", "day", "note", "x"]), JSON, max_size=3)
    .map(lambda p: json.dumps({"params": p}).encode()))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_fuzzed_webhook_bodies_never_500(http: TestClient, body: bytes) -> None:
    """Hypothesis bodies (bytes, any JSON, params of any shape) to the webhook: no 5xx."""
    answer = http.post(HOOK, headers=AUTH, content=body)
    assert answer.status_code < 500, (body, answer.text)


_SEGMENT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/?#"),
                   min_size=1, max_size=12)


def _routes(http: TestClient) -> list[tuple[str, str]]:
    spec = http.get("/api/openapi.json").json()
    return sorted((method.upper(), path) for path, item in spec["paths"].items()
                  for method in item)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_openapi_endpoint_answers_fuzzed_input_without_500(http: TestClient,
                                                                 data: Any) -> None:
    """Every route in ``/api/openapi.json`` with fuzzed path segments, query values and
    JSON bodies (a small schemathesis): the answer is never a server error."""
    method, template = data.draw(st.sampled_from(_routes(http)))
    path = re.sub(r"\{[^}]+\}", lambda _m: quote(data.draw(_SEGMENT), safe=""), template)
    query = data.draw(st.dictionaries(st.sampled_from(["pipeline", "limit"]),
                                      st.text(max_size=8), max_size=2))
    body = data.draw(BODIES) if method != "GET" else None
    answer = http.request(method, path, params=query, content=body, headers=AUTH)
    assert answer.status_code < 500, (method, path, query, body, answer.text)
