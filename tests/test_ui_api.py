"""The JSON API under /api and the pages behind it, against the real app on a real project.

One project is run once per module (two versions of a dataset, a rejected row); tests that
change something work on their own copy.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import headwater as hw
from headwater.runtime import ProjectRuntime
from headwater.server.app import create_app
from headwater.server.auth import CSRF_HEADER
from headwater.server.service import Server, ServerOptions
from tests.conftest import run_cli, write

SHOP = """
# the shop's orders, nightly
name: shop
description: Shop <b>orders</b>   # shown in the UI
params: {min_amount: 0}
triggers:
  - schedule: {cron: "0 2 * * *"}   # nightly at two
steps:
  - id: raw
    source: {type: files, path: in/*.csv, format: csv}
  - id: clean
    sql: SELECT * FROM raw WHERE amount >= {{ params.min_amount }}
  - id: checked
    validate:
      input: clean
      columns:
        id: {type: int64, nullable: false}
      on_error: quarantine
      max_error_ratio: 0.5
  - id: publish
    publish: {input: checked, dataset: shop, mode: overwrite}
"""


def _project(root: Path) -> Path:
    write(root / "headwater.yaml", "name: ui\n")
    write(root / "pipelines/shop.yaml", SHOP)
    write(root / "in/a.csv", "id,amount\n1,5\n2,7\n,3\n")
    return root


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose pipeline ran twice: dataset ``shop`` versions 1 and 2."""
    root = _project(tmp_path_factory.mktemp("ui") / "proj")
    with hw.Project(root) as project:
        assert project.run("shop").ok
        write(root / "in/b.csv", "id,amount\n3,9\n")
        assert project.run("shop").ok
    return root


def _client(root: Path) -> Iterator[TestClient]:
    runtime = ProjectRuntime.load(root)
    server = Server(runtime, ServerOptions(triggers=False, api=False))
    with TestClient(create_app(server), base_url="http://127.0.0.1") as client:
        yield client
    server.pool.shutdown(wait=False)
    runtime.close()


@pytest.fixture(scope="module")
def client(ran: Path) -> Iterator[TestClient]:
    """A client of the app over the module's project (read-only tests)."""
    yield from _client(ran)


@pytest.fixture
def own(tmp_path: Path, ran: Path) -> Iterator[tuple[Path, TestClient]]:
    """A private copy of the project and a client over it (tests that change things)."""
    root = tmp_path / "proj"
    shutil.copytree(ran, root)
    yield from ((root, c) for c in _client(root))


def _csrf(client: TestClient) -> dict[str, str]:
    page = client.get("/").text
    value = page.split('name="hw-csrf" content="', 1)[1].split('"', 1)[0]
    return {CSRF_HEADER: value}


# --------------------------------------------------------------------------- reads


def test_pipelines_list_has_last_run_next_fire_and_stale(client: TestClient) -> None:
    """The overview document: last run, next schedule fire, code version, not stale."""
    [shop] = client.get("/api/pipelines").json()
    assert ("shop", "succeeded", False) == (shop["name"], shop["last_run"]["status"],
                                           shop["stale"])
    assert shop["next_fire_at"] is not None
    assert [{"id": "shop.0", "kind": "schedule", "enabled": True}] == shop["triggers"]


def test_pipeline_detail_has_dag_and_recent_runs(client: TestClient) -> None:
    """The DAG is the planner's: raw → clean → checked → publish."""
    doc = client.get("/api/pipelines/shop").json()
    edges = {(e["source"], e["target"]) for e in doc["dag"]["edges"]}
    assert {("raw", "clean"), ("clean", "checked"), ("checked", "publish")} == edges
    assert 2 == len(doc["recent_runs"])
    assert ["shop"] == doc["datasets"]


def test_runs_are_paged_filtered_and_matched_exactly(client: TestClient) -> None:
    """Keyset pages of one run each; a prefix of an id is not a run; bad status is 422."""
    first = client.get("/api/runs", params={"limit": 1})
    assert str(first.json()[0]["seq"]) == first.headers["x-next-before"]
    second = client.get("/api/runs", params={"limit": 1,
                                             "before": first.headers["x-next-before"]})
    assert first.json()[0]["id"] != second.json()[0]["id"]
    assert [] == client.get("/api/runs", params={"status": "failed"}).json()
    assert 422 == client.get("/api/runs", params={"status": "nope"}).status_code
    run_id = first.json()[0]["id"]
    assert 404 == client.get(f"/api/runs/{run_id[:8]}").status_code
    doc = client.get(f"/api/runs/{run_id}").json()
    assert ["raw", "clean", "checked", "publish"] == [s["step_id"] for s in doc["steps"]]
    assert [{"dataset": "shop", "version": 2, "rows_added": 3, "rows_total": 3},
            {"dataset": "shop__rejected", "version": 2, "rows_added": 1, "rows_total": 2}] == \
        sorted(doc["published"], key=lambda v: v["dataset"])


def test_logs_and_live_events_of_a_finished_run(client: TestClient) -> None:
    """SSE sends every log line, the run document, then ``end`` for a finished run."""
    run_id = client.get("/api/runs").json()[0]["id"]
    lines = client.get(f"/api/runs/{run_id}/logs").json()
    assert lines and all("message" in line for line in lines)
    stream = client.get(f"/api/runs/{run_id}/events").text
    events = [block.split("\n", 1)[0] for block in stream.strip().split("\n\n")]
    assert len(lines) == events.count("event: log")
    assert ["event: run", "event: end"] == events[-2:]
    later = client.get(f"/api/runs/{run_id}/logs", params={"after": lines[-1]["id"]}).json()
    assert [] == later


def test_dataset_versions_preview_diff_rejected_and_lineage(client: TestClient) -> None:
    """Every dataset document the UI draws, from the same functions the CLI uses."""
    doc = client.get("/api/datasets/shop").json()
    assert (2, 3) == (doc["version"], doc["rows_total"])
    assert {"id", "amount"} <= {c["name"] for c in doc["schema"]}
    versions = client.get("/api/datasets/shop/versions").json()["versions"]
    assert [2, 1] == [v["version"] for v in versions]
    page = client.get("/api/datasets/shop/preview", params={"limit": 2, "offset": 2}).json()
    assert (3, 1, 2) == (page["total"], len(page["rows"]), page["offset"])
    diff = client.get("/api/datasets/shop/diff", params={"a": 1, "b": 2}).json()
    assert (1, 0) == (diff["added"], diff["removed"])
    rejected = client.get("/api/datasets/shop/rejected").json()
    assert 1 == rejected["total"]
    error = rejected["rows"][0][rejected["columns"].index("_error")]
    assert "id" in error
    graph = client.get("/api/datasets/shop/lineage").json()
    kinds = {n["kind"] for n in graph["nodes"]}
    assert {"source", "step", "run", "dataset"} == kinds
    assert all({"source", "target"} == set(e) for e in graph["edges"])
    stats = client.get("/api/datasets/shop/stats").json()
    assert "amount" in stats["columns"]


@pytest.mark.parametrize("url", ["/api/datasets/nope", "/api/runs/nope",
                                 "/api/pipelines/nope", "/api/datasets/shop?version=99",
                                 "/api/pipelines/nope/definition"])
def test_unknown_things_are_404_with_a_message(client: TestClient, url: str) -> None:
    """An unknown name, id or version answers 404 naming it, never a 500."""
    answer = client.get(url)
    assert 404 == answer.status_code
    assert answer.json()["detail"]


def test_pages_render_and_escape_untrusted_text(client: TestClient) -> None:
    """Every page answers 200; the description's markup is shown as text, not run."""
    run_id = client.get("/api/runs").json()[0]["id"]
    for url in ["/", "/runs", "/pipelines/shop", f"/runs/{run_id}", "/datasets/shop",
                "/datasets/shop?version=1&a=1&b=2", "/lineage/shop", "/pipelines/new",
                "/pipelines/shop/edit", "/login", "/api/docs"]:
        answer = client.get(url)
        assert (url, 200) == (url, answer.status_code)
    home = client.get("/").text
    assert "Shop &lt;b&gt;orders&lt;/b&gt;" in home
    assert "<b>orders</b>" not in home
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]


def test_page_errors_are_pages_with_the_cause(client: TestClient) -> None:
    """An unknown run or a bad query value is a readable 4xx page, never a 500."""
    missing = client.get("/runs/no-such-run")
    assert 404 == missing.status_code
    assert "no run &#39;no-such-run&#39;" in missing.text
    bad = client.get("/datasets/shop?version=2026-01-01")
    assert 422 == bad.status_code
    assert "expected a positive number, not &#39;2026-01-01&#39;" in bad.text
    assert 404 == client.get("/datasets/..%2F..%2Fetc").status_code
    nowhere = client.get("/no/such/page")
    assert (404, "text/html") == (nowhere.status_code,
                                  nowhere.headers["content-type"].split(";")[0])
    assert 404 == client.get("/api/no/such").status_code
    assert "application/json" == client.get("/api/no/such").headers["content-type"]


def test_docs_and_assets_are_served_from_the_package(client: TestClient) -> None:
    """Swagger UI loads its script from this server (works offline), OpenAPI lists /api."""
    html = client.get("/api/docs").text
    assert "/static/swagger/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower()
    assert 200 == client.get("/static/swagger/swagger-ui-bundle.js").status_code
    paths = client.get("/api/openapi.json").json()["paths"]
    assert {"/api/pipelines/{name}/definition", "/api/runs/{run_id}/events",
            "/api/triggers/{trigger_id}/enable", "/api/datasets/{name}/lineage"} <= set(paths)


# --------------------------------------------------------------------------- changes


def test_run_now_queues_with_checked_params(own: tuple[Path, TestClient]) -> None:
    """Run now queues a manual run with coerced params; an unknown param is a 422."""
    _root, client = own
    csrf = _csrf(client)
    answer = client.post("/api/pipelines/shop/runs", json={"params": {"min_amount": "6"}},
                         headers=csrf)
    assert 202 == answer.status_code
    run = client.get(f"/api/runs/{answer.json()['run_id']}").json()
    assert ("queued", "manual", {"min_amount": 6}) == (run["status"], run["trigger"],
                                                      run["params"])
    bad = client.post("/api/pipelines/shop/runs", json={"params": {"min_amont": 1}},
                      headers=csrf)
    assert 422 == bad.status_code
    assert "did you mean 'min_amount'" in bad.json()["detail"]
    # an open (loopback) server takes a script's change without the page's CSRF token,
    # and refuses one another site's page sends
    assert 202 == client.post("/api/pipelines/shop/runs", json={}).status_code
    assert 403 == client.post("/api/pipelines/shop/runs", json={},
                              headers={"Sec-Fetch-Site": "cross-site"}).status_code


def test_cancel_and_rerun(own: tuple[Path, TestClient]) -> None:
    """A queued run is cancelled at once; rerun queues a copy; from_failed needs a failure."""
    _root, client = own
    csrf = _csrf(client)
    queued = client.post("/api/pipelines/shop/runs", json={}, headers=csrf).json()["run_id"]
    assert "cancelled" == client.post(f"/api/runs/{queued}/cancel",
                                      headers=csrf).json()["status"]
    done = client.get("/api/runs", params={"status": "succeeded"}).json()[0]["id"]
    again = client.post(f"/api/runs/{done}/rerun", headers=csrf)
    assert 202 == again.status_code
    rerun = client.get(f"/api/runs/{again.json()['run_id']}").json()
    assert ("rerun", done) == (rerun["trigger"], rerun["parent_run_id"])
    refused = client.post(f"/api/runs/{done}/rerun?from_failed=true", headers=csrf)
    assert 422 == refused.status_code


def test_triggers_enable_and_disable(own: tuple[Path, TestClient]) -> None:
    """A switch writes the trigger state; a bad trigger id is 422, a missing one 404."""
    _root, client = own
    csrf = _csrf(client)
    assert 200 == client.post("/api/triggers/shop.0/disable", headers=csrf).status_code
    assert [False] == [t["enabled"] for t in client.get("/api/triggers").json()]
    client.post("/api/triggers/shop.0/enable", headers=csrf)
    assert [True] == [t["enabled"] for t in client.get("/api/triggers").json()]
    assert 422 == client.post("/api/triggers/shop/disable", headers=csrf).status_code
    assert 404 == client.post("/api/triggers/shop.7/disable", headers=csrf).status_code


# --------------------------------------------------------------------------- builder


def test_definition_round_trip_keeps_comments_and_order(own: tuple[Path, TestClient]) -> None:
    """GET → change one value → PUT: only that line changes in the file, comments stay."""
    root, client = own
    csrf = _csrf(client)
    answer = client.get("/api/pipelines/shop/definition")
    doc, etag = answer.json(), answer.headers["etag"]
    doc["params"]["min_amount"] = 4
    saved = client.put("/api/pipelines/shop/definition", json=doc,
                       headers={**csrf, "If-Match": etag})
    assert 200 == saved.status_code, saved.text
    text = (root / "pipelines/shop.yaml").read_text()
    expected = SHOP.lstrip("\n").replace("{min_amount: 0}", "{min_amount: 4}")
    assert expected == text
    assert "-params: {min_amount: 0}\n+params: {min_amount: 4}" in saved.json()["diff"]
    stale = client.put("/api/pipelines/shop/definition", json=doc,
                       headers={**csrf, "If-Match": etag})
    assert 409 == stale.status_code
    assert [] == hw.Project(root).check()


def test_invalid_definition_lists_problems_and_writes_nothing(
        own: tuple[Path, TestClient]) -> None:
    """A bad cron and an unknown step input: 422 with file/line/key, the file untouched."""
    root, client = own
    csrf = _csrf(client)
    before = (root / "pipelines/shop.yaml").read_text()
    doc = client.get("/api/pipelines/shop/definition").json()
    doc["triggers"][0]["schedule"]["cron"] = "every day"
    doc["steps"][3]["publish"]["input"] = "chekced"
    answer = client.put("/api/pipelines/shop/definition", json=doc, headers=csrf)
    assert 422 == answer.status_code
    problems = answer.json()["problems"]
    keys = {p["key"] for p in problems}
    assert {"triggers[0].schedule.cron", "steps[3].publish.input"} <= keys
    assert all(p["file"] == "pipelines/shop.yaml" and p["line"] for p in problems)
    assert before == (root / "pipelines/shop.yaml").read_text()


def test_dry_run_shows_yaml_without_writing(own: tuple[Path, TestClient]) -> None:
    """``dry_run`` answers the YAML and the diff, and leaves the file alone."""
    root, client = own
    doc = client.get("/api/pipelines/shop/definition").json()
    doc["description"] = "changed"
    answer = client.put("/api/pipelines/shop/definition?dry_run=true", json=doc,
                        headers=_csrf(client))
    assert (200, False) == (answer.status_code, answer.json()["written"])
    assert "description: changed" in answer.json()["yaml"]
    assert "Shop <b>orders</b>" in (root / "pipelines/shop.yaml").read_text()


def test_create_pipeline_writes_a_file_check_accepts(own: tuple[Path, TestClient]) -> None:
    """POST /api/pipelines writes pipelines/<name>.yaml; a second POST is a 409."""
    root, client = own
    csrf = _csrf(client)
    doc = {"name": "copy", "triggers": [{"interval": "15m"}],
           "steps": [{"id": "raw", "source": {"type": "files", "path": "in/*.csv"}},
                     {"id": "out", "publish": {"input": "raw", "dataset": "copy"}}]}
    answer = client.post("/api/pipelines", json=doc, headers=csrf)
    assert 201 == answer.status_code, answer.text
    assert "pipelines/copy.yaml" == answer.json()["file"]
    assert (root / "pipelines/copy.yaml").is_file()
    assert [] == hw.Project(root).check()
    assert "copy" in [p["name"] for p in client.get("/api/pipelines").json()]
    assert 409 == client.post("/api/pipelines", json=doc, headers=csrf).status_code


@pytest.mark.parametrize("doc, status", [
    ({"name": "../evil", "steps": []}, 422),
    ({"name": "x; DROP TABLE runs", "steps": []}, 422),
    ([1, 2], 422),
])
def test_bad_new_pipelines_write_nothing(own: tuple[Path, TestClient], doc: Any,
                                         status: int) -> None:
    """A path in the name, SQL in the name, a non-object: 4xx and no new file."""
    root, client = own
    before = sorted(p.name for p in (root / "pipelines").iterdir())
    assert status == client.post("/api/pipelines", json=doc,
                                 headers=_csrf(client)).status_code
    assert before == sorted(p.name for p in (root / "pipelines").iterdir())
    assert not (root.parent / "evil.yaml").exists()


def test_huge_and_broken_bodies_are_4xx(own: tuple[Path, TestClient]) -> None:
    """A 2 MB body is a 413 and broken JSON a 422, both before anything is parsed further."""
    _root, client = own
    csrf = {**_csrf(client), "Content-Type": "application/json"}
    big = client.post("/api/pipelines", content=b"[" + b"1," * 1_000_000 + b"1]",
                      headers=csrf)
    assert 413 == big.status_code
    assert 422 == client.post("/api/pipelines", content=b"{nope", headers=csrf).status_code


def test_source_preview_reads_files_inside_the_project_only(
        own: tuple[Path, TestClient]) -> None:
    """The builder's preview shows the first rows; a path outside the project is refused."""
    _root, client = own
    csrf = _csrf(client)
    answer = client.post("/api/sources/preview", json={"path": "in/*.csv"}, headers=csrf)
    assert 200 == answer.status_code, answer.text
    assert ["id", "amount"] == answer.json()["columns"][:2]
    outside = client.post("/api/sources/preview", json={"path": "../../etc/passwd"},
                          headers=csrf)
    assert 422 == outside.status_code
    assert "outside the project" in outside.json()["detail"]


# --------------------------------------------------------------------------- auth


def _token(root: Path, role: str, *extra: str) -> str:
    result = run_cli("token", "create", "--role", role, "--json", *extra, "--project",
                     str(root))
    assert 0 == result.returncode, result.stderr
    return str(json.loads(result.stdout)["token"])


def test_token_create_stores_only_a_hash(own: tuple[Path, TestClient]) -> None:
    """The CLI prints a token once; the store holds its SHA-256, never the token."""
    root, _client = own
    token = _token(root, "viewer")
    from headwater.store import schema as t

    with hw.Project(root) as project:
        rows = project.runtime.store._read(t.api_tokens.select())
    assert 1 == len(rows)
    assert token not in json.dumps(rows, default=str)
    assert 2 == run_cli("token", "create", "--role", "admin", "--project", str(root)).returncode


def test_roles_bearer_cookie_csrf_and_audit(own: tuple[Path, TestClient]) -> None:
    """Viewers read but may not act; operators act; cookies need CSRF; actions are audited."""
    root, client = own
    viewer, operator = _token(root, "viewer"), _token(root, "operator")
    assert 401 == client.get("/api/runs").status_code
    assert 303 == client.get("/", follow_redirects=False).status_code
    as_viewer = {"Authorization": f"Bearer {viewer}"}
    assert 200 == client.get("/api/runs", headers=as_viewer).status_code
    assert 403 == client.post("/api/pipelines/shop/runs", json={},
                              headers=as_viewer).status_code
    as_operator = {"Authorization": f"Bearer {operator}"}
    assert 202 == client.post("/api/pipelines/shop/runs", json={},
                              headers=as_operator).status_code
    assert 401 == client.get("/api/runs", headers={"Authorization": "Bearer nope"}).status_code
    login = client.post("/login", data={"token": operator, "next": "/pipelines/shop"},
                        follow_redirects=False)
    assert (303, "/pipelines/shop") == (login.status_code, login.headers["location"])
    assert "httponly" in login.headers["set-cookie"].lower()
    assert "samesite=strict" in login.headers["set-cookie"].lower()
    assert 200 == client.get("/pipelines/shop").status_code
    assert 403 == client.post("/api/triggers/shop.0/disable").status_code  # cookie, no CSRF
    assert 200 == client.post("/api/triggers/shop.0/disable",
                              headers=_csrf(client)).status_code
    from headwater.store.access import audit_entries

    with hw.Project(root) as project:
        actions = [e["action"] for e in audit_entries(project.runtime.store)]
    assert ["disable", "run"] == actions


def test_expired_session_and_open_redirect(own: tuple[Path, TestClient]) -> None:
    """An expired token's cookie sends the page to log-in, saying so; ``next`` stays local."""
    root, client = own
    expired = _token(root, "viewer", "--days", "0.0000001")
    client.cookies.set("hw_session", expired)
    answer = client.get("/pipelines/shop", follow_redirects=False)
    assert 303 == answer.status_code
    assert "expired=1" in answer.headers["location"]
    client.cookies.clear()
    page = client.get("/login", params={"next": "https://evil.example/"}).text
    assert 'name="next" value="/"' in page
    wrong = client.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert 401 == wrong.status_code



def test_overview_flags_stale_code_and_lists_failures_first(tmp_path: Path, ran: Path) -> None:
    """After an SQL edit the pipeline is stale; one whose last run failed comes first."""
    root = tmp_path / "proj"
    shutil.copytree(ran, root)
    path = root / "pipelines/shop.yaml"
    path.write_text(path.read_text().replace("amount >= ", "amount > "))
    write(root / "pipelines/zz.yaml", """
        name: zz_broken
        steps:
          - id: raw
            source: {type: files, path: in/*.csv}
          - id: boom
            sql: SELECT CAST('x' AS INTEGER) AS n FROM raw
          - id: out
            publish: {input: boom, dataset: broken}
        """)
    with hw.Project(root) as project:
        assert not project.run("zz_broken").ok
    for client in _client(root):
        listed = client.get("/api/pipelines").json()
        assert [("zz_broken", "failed", False), ("shop", "succeeded", True)] == [
            (p["name"], p["last_run"]["status"], p["stale"]) for p in listed]
