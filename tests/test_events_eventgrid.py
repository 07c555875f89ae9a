"""``/api/events/{pipeline}``: Azure Event Grid and CloudEvents 1.0 pushes, driven through
the real ASGI app of ``headwater serve`` (in process, on a real project and store).

Shows: the Event Grid subscription handshake and the CloudEvents OPTIONS handshake are
answered; the token is checked before the body is read (garbage or an oversized body with
a wrong token is a 401, never a parse error); BlobCreated events in the Event Grid schema,
CloudEvents structured and binary mode each queue one files-trigger run listing the blobs
the trigger watches; a redelivered event id starts nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

import headwater as hw
from headwater.runtime import ProjectRuntime
from headwater.server.app import create_app
from headwater.server.events import MAX_BODY
from headwater.server.service import Server, ServerOptions
from tests.conftest import ProjectFactory

TOKEN = "ev-token-123"
PIPELINE = """
name: landing
triggers:
  - files: {path: "az://raw/landing", pattern: "*.csv", events: eventgrid,
            token: "${env:EVENTS_TOKEN}", connection: lake}
steps:
  - id: files
    sql: SELECT '{{ trigger.files }}' AS files
"""
HOOK_ONLY = """
name: hooked
triggers:
  - webhook: {token: "${env:EVENTS_TOKEN}"}
steps:
  - id: files
    sql: SELECT 1 AS one
"""
QUIET = """
name: quiet
steps:
  - id: one
    sql: SELECT 1 AS one
"""
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[tuple[TestClient, ProjectRuntime]]:
    monkeypatch.setenv("EVENTS_TOKEN", TOKEN)
    root = make_project({"landing": PIPELINE, "hooked": HOOK_ONLY, "quiet": QUIET},
                        settings="connections:\n  lake: {type: azure_blob, "
                                 "connection_string: unused}\n")
    runtime = ProjectRuntime.load(root)
    server = Server(runtime, ServerOptions(triggers=False))
    with TestClient(create_app(server), base_url="http://127.0.0.1") as http:
        yield http, runtime
    runtime.close()


def _blob_event(name: str, event_id: str | None = None, container: str = "raw") -> dict[str, Any]:
    return {
        "id": event_id or str(uuid.uuid4()), "eventType": "Microsoft.Storage.BlobCreated",
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "eventTime": "2026-12-02T01:00:00Z", "dataVersion": "", "metadataVersion": "1",
        "topic": "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/"
                 "storageAccounts/acct",
        "data": {"api": "PutBlob", "contentType": "text/csv", "contentLength": 42,
                 "eTag": "0x8DABCDEF", "blobType": "BlockBlob",
                 "url": f"https://acct.blob.core.windows.net/{container}/{name}"}}


def _runs(runtime: ProjectRuntime, pipeline: str = "landing") -> list[dict[str, Any]]:
    return runtime.store.runs(pipeline, 50)


def test_subscription_validation_handshake(client: tuple[TestClient, ProjectRuntime]) -> None:
    """Event Grid's SubscriptionValidationEvent is answered with its validation code."""
    http, runtime = client
    event = {"id": "v1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
             "subject": "", "eventTime": "2026-12-02T01:00:00Z",
             "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}}
    answer = http.post("/api/events/landing", json=[event], headers=AUTH)
    assert 200 == answer.status_code
    assert {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"} == answer.json()
    assert [] == _runs(runtime)


def test_cloudevents_options_handshake(client: tuple[TestClient, ProjectRuntime]) -> None:
    """The CloudEvents webhook abuse-protection OPTIONS request gets the origin allowed."""
    http, _ = client
    answer = http.options("/api/events/landing",
                          headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert 200 == answer.status_code
    assert "eventgrid.azure.net" == answer.headers["WebHook-Allowed-Origin"]
    assert 404 == http.options("/api/events/nope",
                               headers={"WebHook-Request-Origin": "x"}).status_code


def test_token_is_checked_before_the_body(client: tuple[TestClient, ProjectRuntime]) -> None:
    """A wrong or missing token is a 401 whatever the body (garbage, oversized); a
    pipeline without any event token refuses events; the right token with garbage is a
    400 naming the problem."""
    http, runtime = client
    garbage = b"{not json"
    assert 401 == http.post("/api/events/landing", content=garbage).status_code
    assert 401 == http.post("/api/events/landing", content=garbage,
                            headers={"Authorization": "Bearer wrong"}).status_code
    huge = b"x" * (MAX_BODY + 10)
    # refused unread either way: the server guard turns a declared oversize away first
    assert http.post("/api/events/landing", content=huge).status_code in (401, 413)
    assert 413 == http.post("/api/events/landing", content=huge, headers=AUTH).status_code
    assert 403 == http.post("/api/events/quiet", content=garbage, headers=AUTH).status_code
    bad = http.post("/api/events/landing", content=garbage, headers=AUTH)
    assert 400 == bad.status_code
    assert "not JSON" in bad.json()["detail"]
    assert [] == _runs(runtime)


def test_blob_created_event_grid_schema_queues_one_files_run(
        client: tuple[TestClient, ProjectRuntime]) -> None:
    """A batch of BlobCreated events becomes one files-trigger run listing the blobs the
    trigger watches (folder and pattern); others are ignored; a redelivery starts nothing."""
    http, runtime = client
    events = [_blob_event("landing/a.csv"), _blob_event("landing/sub/b.csv"),
              _blob_event("landing/c.json"), _blob_event("elsewhere/d.csv"),
              _blob_event("landing/e.csv", container="other")]
    answer = http.post("/api/events/landing?token=" + TOKEN, json=events)
    assert 200 == answer.status_code, answer.text
    body = answer.json()
    assert (1, 3, 0) == (len(body["runs"]), body["ignored"], body["duplicates"])
    [run] = _runs(runtime)
    assert "files" == run["trigger"]
    assert ["az://raw/landing/a.csv", "az://raw/landing/sub/b.csv"] == \
        run["trigger_info"]["files"]
    again = http.post("/api/events/landing", json=events[:2], headers=AUTH).json()
    assert ([], 2) == (again["runs"], again["duplicates"])
    assert 1 == len(_runs(runtime))


def test_cloudevents_structured_and_binary_modes(
        client: tuple[TestClient, ProjectRuntime]) -> None:
    """CloudEvents 1.0 in structured mode (one event or a batch) and binary mode (ce-*
    headers) queue runs for the blobs they announce."""
    http, runtime = client
    grid = _blob_event("landing/s.csv")
    structured = {"specversion": "1.0", "id": "ce-1", "type": grid["eventType"],
                  "source": grid["topic"], "subject": grid["subject"], "data": grid["data"]}
    answer = http.post("/api/events/landing", content=json.dumps(structured),
                       headers={**AUTH, "Content-Type": "application/cloudevents+json"})
    assert 1 == len(answer.json()["runs"]), answer.text
    binary = _blob_event("landing/b.csv")
    answer = http.post("/api/events/landing", content=json.dumps(binary["data"]), headers={
        **AUTH, "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "ce-2",
        "ce-type": "Microsoft.Storage.BlobCreated", "ce-source": binary["topic"],
        "ce-subject": binary["subject"]})
    assert 1 == len(answer.json()["runs"]), answer.text
    files = sorted(f for r in _runs(runtime) for f in r["trigger_info"]["files"])
    assert ["az://raw/landing/b.csv", "az://raw/landing/s.csv"] == files


def test_webhook_only_pipeline_takes_blob_events(
        client: tuple[TestClient, ProjectRuntime]) -> None:
    """A pipeline with only a webhook trigger accepts events with its webhook token: a
    blob created starts it with the blob listed."""
    http, runtime = client
    answer = http.post("/api/events/hooked", json=[_blob_event("x/y.parquet")], headers=AUTH)
    assert 200 == answer.status_code
    [run] = _runs(runtime, "hooked")
    assert ("webhook", ["az://raw/x/y.parquet"]) == (run["trigger"],
                                                     run["trigger_info"]["files"])




@pytest.mark.services
@pytest.mark.slow
def test_blob_created_push_runs_pipeline_under_real_serve(
        make_project: ProjectFactory, serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: a blob lands in Azurite, Event Grid's BlobCreated is POSTed to a real
    ``headwater serve`` (polling is an hour away), and the pipeline publishes the blob's
    rows at once; the redelivered event starts nothing."""
    import time

    import fsspec
    import httpx

    from tests.test_azure_pipeline import KEY

    conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")
    container = f"hwev-{uuid.uuid4().hex[:10]}"
    fs = fsspec.filesystem("az", connection_string=conn)
    fs.mkdir(container)
    monkeypatch.setenv("HW_AZ_CONN", conn)
    monkeypatch.setenv("EVENTS_TOKEN", TOKEN)
    try:
        root = make_project({"blobs": f"""
            name: blobs
            triggers:
              - files: {{path: "az://{container}/landing", pattern: "*.csv", connection: lake,
                        events: eventgrid, token: "${{env:EVENTS_TOKEN}}", interval: 1h}}
            steps:
              - id: raw
                source: {{type: files, path: "az://{container}/landing/*.csv",
                          connection: lake, incremental: true}}
              - id: out
                publish: {{input: raw, dataset: blobs}}
            """}, settings='connections:\n  lake: {type: azure_blob, '
                           'connection_string: "${env:HW_AZ_CONN}"}\n')
        server = serve(root)
        time.sleep(1.0)  # the trigger's first listing (an empty folder) is done
        fs.pipe(f"{container}/landing/a.csv", b"id,v\n1,a\n2,b\n")
        event = _blob_event("landing/a.csv", container=container)
        answer = httpx.post(f"{server.url}/api/events/blobs", json=[event], headers=AUTH,
                            timeout=10)
        assert 200 == answer.status_code, answer.text
        assert 1 == len(answer.json()["runs"])
        with hw.Project(root) as project:
            deadline = time.time() + 60
            while time.time() < deadline:
                runs = project.runs("blobs")
                if runs and runs[0].status in ("succeeded", "failed"):
                    break
                time.sleep(0.2)
            assert "succeeded" == runs[0].status, runs[0].error
            assert "files" == runs[0].trigger
            assert [1, 2] == sorted(project.dataset("blobs").to_arrow()["id"].to_pylist())
        again = httpx.post(f"{server.url}/api/events/blobs", json=[event], headers=AUTH,
                           timeout=10).json()
        assert ([], 1) == (again["runs"], again["duplicates"])
    finally:
        fs.rm(container, recursive=True)
