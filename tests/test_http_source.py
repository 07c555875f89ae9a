"""``source: {type: http}`` against a real HTTP server on loopback: pagination, auth,
retries, incremental cursors, nested JSON, and the faults an API can throw."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

import headwater as hw
from tests.api_server import Reply, Request, serve_api
from tests.conftest import ProjectFactory

ITEMS = [{"id": i, "name": f"n{i}", "updated_at": f"2026-01-{i + 1:02d}",
          "tags": ["a", "b"][: i % 3], "address": {"city": f"c{i}", "zip": 1000 + i}}
         for i in range(7)]


def _pipeline(url: str, extra: str = "", records: str = "data.items") -> str:
    return f"""
name: api
steps:
  - id: raw
    source:
      type: http
      url: "{url}"
      records: {records}
      backoff: 10ms
{extra}
  - id: publish
    publish: {{input: raw, dataset: items, mode: append}}
"""


def _run(root: Path) -> tuple[hw.Run, hw.Project]:
    project = hw.Project(root)
    return project.run("api"), project


def _page_of(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"data": {"items": items}}


def test_link_header_pagination_with_bearer_token(make_project: ProjectFactory,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages linked by ``Link: rel=next`` are all read, with the token from ``${env:}``
    sent on every request and never shown in the run's log or fingerprint."""
    monkeypatch.setenv("HW_TEST_API_TOKEN", "tok-secret-123")

    def items(req: Request) -> Reply:
        if req.headers.get("authorization") != "Bearer tok-secret-123":
            return 401, {}, {"error": "no token"}
        page = int(req.query.get("p", "0"))
        chunk = ITEMS[page * 3:(page + 1) * 3]
        links = {"Link": f'</items?p={page + 1}>; rel="next"'} if page < 2 else {}
        return 200, links, _page_of(chunk)

    with serve_api({"/items": items}) as api:
        extra = "      auth: {type: bearer, token: '${env:HW_TEST_API_TOKEN}'}\n" \
                "      pagination: {type: link_header}"
        root = make_project({"api": _pipeline(f"{api.url}/items", extra)})
        run, project = _run(root)
        with project:
            assert "succeeded" == run.status, run.error
            table = project.dataset("items").to_arrow()
            assert list(range(7)) == sorted(table["id"].to_pylist())
            assert {"city": "c3", "zip": 1003} == table.to_pylist()[3]["address"]
            record = project.dataset("items").record(1)
            assert 3 == record["sources"][0]["pages"]
            logs = project.runtime.store.logs(run.id)
        assert 3 == len(api.calls("/items"))
    assert "tok-secret-123" not in repr(logs) + repr(record)


@pytest.mark.parametrize(("paging", "route"), [
    ("{type: cursor, param: after, path: meta.next}", "cursor"),
    ("{type: offset, param: skip, limit: 3, limit_param: take}", "offset"),
    ("{type: page, param: page, start: 1}", "page"),
])
def test_cursor_offset_and_page_pagination(make_project: ProjectFactory, paging: str,
                                           route: str) -> None:
    """Each pagination scheme reads every record exactly once and stops at the end."""

    def items(req: Request) -> Reply:
        if route == "cursor":
            start = int(req.query.get("after", "0"))
            chunk = ITEMS[start:start + 3]
            more = start + 3 < len(ITEMS)
            return 200, {}, {**_page_of(chunk), "meta": {"next": str(start + 3) if more
                                                         else None}}
        if route == "offset":
            start, size = int(req.query["skip"]), int(req.query["take"])
            return 200, {}, _page_of(ITEMS[start:start + size])
        page = int(req.query["page"])
        return 200, {}, _page_of(ITEMS[(page - 1) * 3:page * 3])

    with serve_api({"/items": items}) as api:
        root = make_project({"api": _pipeline(f"{api.url}/items",
                                              f"      pagination: {paging}")})
        run, project = _run(root)
        with project:
            assert "succeeded" == run.status, run.error
            assert list(range(7)) == sorted(project.dataset("items").to_arrow()["id"]
                                            .to_pylist())


@pytest.mark.parametrize("auth", ["basic", "api_key", "oauth2"])
def test_basic_api_key_and_oauth2_auth(make_project: ProjectFactory, auth: str) -> None:
    """Basic, API-key and OAuth2 client-credentials auth each reach the API as it expects."""
    expected = {"basic": "Basic " + base64.b64encode(b"ann:pw-1").decode(),
                "api_key": "key-77", "oauth2": "Bearer issued-9"}[auth]
    header = "x-key" if auth == "api_key" else "authorization"

    def token(req: Request) -> Reply:
        form = str(req.body)
        ok = req.method == "POST" and all(part in form for part in (
            "grant_type=client_credentials", "client_id=c1", "client_secret=s1", "scope=read"))
        return (200, {}, {"access_token": "issued-9", "token_type": "bearer"}) if ok else \
            (400, {}, {})

    def items(req: Request) -> Reply:
        if req.headers.get(header) != expected:
            return 401, {}, {"error": "denied"}
        return 200, {}, _page_of(ITEMS[:2])

    with serve_api({"/items": items, "/token": token}) as api:
        spec = {"basic": "{type: basic, username: ann, password: pw-1}",
                "api_key": "{type: api_key, header: X-Key, value: key-77}",
                "oauth2": f"{{type: oauth2_client_credentials, token_url: '{api.url}/token', "
                          "client_id: c1, client_secret: s1, scope: read}"}[auth]
        root = make_project({"api": _pipeline(f"{api.url}/items", f"      auth: {spec}")})
        run, project = _run(root)
        with project:
            assert "succeeded" == run.status, run.error
            assert 2 == project.dataset("items").to_arrow().num_rows


def test_500_storm_then_success_and_retry_after(make_project: ProjectFactory) -> None:
    """Three 500s and a 429 with ``Retry-After`` are retried; the fifth answer is used."""
    answers: list[Reply] = [(500, {}, "boom"), (503, {}, "down"), (502, {}, "bad"),
                            (429, {"Retry-After": "0"}, {"error": "slow down"})]

    def items(req: Request) -> Reply:
        return answers.pop(0) if answers else (200, {}, _page_of(ITEMS[:4]))

    with serve_api({"/items": items}) as api:
        root = make_project({"api": _pipeline(f"{api.url}/items")})
        run, project = _run(root)
        with project:
            assert "succeeded" == run.status, run.error
            assert 4 == project.dataset("items").to_arrow().num_rows
        assert 5 == len(api.calls("/items"))


def test_endless_500_fails_naming_url_and_status(make_project: ProjectFactory) -> None:
    """An API that keeps failing fails the run after the retries, naming URL and status,
    and publishes nothing."""
    with serve_api({"/items": lambda req: (500, {}, "boom")}) as api:
        root = make_project({"api": _pipeline(f"{api.url}/items", "      max_retries: 2")})
        run, project = _run(root)
        with project:
            assert "failed" == run.status
            assert f"{api.url}/items answered HTTP 500" in (run.error or "")
            assert "step 'raw'" in (run.error or "")
            assert [] == project.runtime.store.datasets()
        assert 3 == len(api.calls("/items"))


def test_html_instead_of_json_fails_clearly(make_project: ProjectFactory) -> None:
    """An HTML answer (a login page, a proxy error) fails naming URL, status and type."""
    html = "<html><body>Please sign in</body></html>"

    def items(req: Request) -> Reply:
        return 200, {"Content-Type": "text/html; charset=utf-8"}, html

    with serve_api({"/items": items}) as api:
        root = make_project({"api": _pipeline(f"{api.url}/items")})
        run, project = _run(root)
        with project:
            assert "failed" == run.status
            error = run.error or ""
            assert f"{api.url}/items answered HTTP 200 OK with text/html" in error
            assert "not JSON" in error
            assert [] == project.runtime.store.datasets()


def test_page_loop_stops_with_an_error(make_project: ProjectFactory) -> None:
    """An API that hands out the same cursor forever fails instead of looping."""

    def items(req: Request) -> Reply:
        return 200, {}, {**_page_of(ITEMS[:2] if "after" not in req.query else ITEMS[2:4]),
                         "meta": {"next": "same"}}

    with serve_api({"/items": items}) as api:
        extra = "      pagination: {type: cursor, param: after, path: meta.next}"
        root = make_project({"api": _pipeline(f"{api.url}/items", extra)})
        run, project = _run(root)
        with project:
            assert "failed" == run.status
            assert "page loop" in (run.error or "")
            assert "cursor 'same'" in (run.error or "")
            assert [] == project.runtime.store.datasets()


def test_incremental_cursor_advances_only_with_the_publish(make_project: ProjectFactory) -> None:
    """The second run sends the highest ``updated_at`` of the first as ``since``; a failed
    run leaves the cursor where it was."""
    state = {"fail": False}

    def items(req: Request) -> Reply:
        since = req.query.get("since", "")
        if state["fail"]:
            return 200, {"Content-Type": "text/html"}, "<html>oops</html>"
        return 200, {}, _page_of([i for i in ITEMS if i["updated_at"] > since])

    with serve_api({"/items": items}) as api:
        extra = "      incremental: {param: since, path: updated_at}"
        root = make_project({"api": _pipeline(f"{api.url}/items", extra)})
        run, project = _run(root)
        with project:
            assert "succeeded" == run.status, run.error
            assert 7 == project.dataset("items").to_arrow().num_rows
            state["fail"] = True
            failed = project.run("api")
            assert "failed" == failed.status
            state["fail"] = False
            again = project.run("api")
            assert "succeeded" == again.status, again.error
            assert [1] == project.dataset("items").versions()
        sent = [r.query.get("since") for r in api.calls("/items")]
        assert [None, "2026-01-07", "2026-01-07"] == sent


def test_shapes_that_vary_become_json_text(make_project: ProjectFactory) -> None:
    """A field that is a number on one page and an object on the next is kept as JSON
    text; ints and floats widen to float; a field absent on one page is null there."""
    pages = [[{"id": 1, "v": 5, "x": 1}], [{"id": 2, "v": {"a": 1}, "x": 2.5, "extra": "e"}]]

    def items(req: Request) -> Reply:
        page = int(req.query["page"])
        return 200, {}, pages[page - 1] if page <= len(pages) else []

    with serve_api({"/items": items}) as api:
        extra = "      pagination: {type: page, param: page}"
        root = make_project({"api": _pipeline(f"{api.url}/items", extra, records="''")})
        run, project = _run(root)
        with project:
            assert "succeeded" == run.status, run.error
            rows = sorted(project.dataset("items").to_arrow().to_pylist(),
                          key=lambda r: r["id"])
    assert [{"id": 1, "v": "5", "x": 1.0, "extra": None},
            {"id": 2, "v": '{"a":1}', "x": 2.5, "extra": "e"}] == rows
