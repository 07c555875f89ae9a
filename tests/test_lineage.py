"""Lineage: OpenLineage run events (file and HTTP transports) and the version graph.

The emitter is exercised on records a real run produced, then read back from the NDJSON
file or from a loopback HTTP collector. The graph is walked through the real engine: a
dataset published from CSV files feeds a second pipeline, and a code change makes the
versions it produced stale.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import headwater as hw
from headwater.config.secrets import resolve
from headwater.lineage.openlineage import emitter_for, run_uuid
from headwater.runtime import ProjectRuntime
from tests.conftest import ProjectFactory, run_cli, write

ORDERS = """
name: orders
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, format: csv, incremental: true}
  - id: clean
    sql: SELECT order_id, amount FROM raw
  - id: publish
    publish: {input: clean, dataset: orders, mode: append}
"""

TOTALS = """
name: totals
steps:
  - id: src
    source: {type: dataset, name: orders}
  - id: agg
    sql: SELECT count(*) AS n, sum(amount) AS total FROM src
  - id: out
    publish: {input: agg, dataset: totals, mode: overwrite}
"""


def _orders_csv(root: Path, name: str, ids: range) -> None:
    write(root / "landing" / name, "order_id,amount\n"
          + "".join(f"{i},{i * 1.5}\n" for i in ids))


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _with_lineage(root: Path, setting: str) -> ProjectRuntime:
    """Turn lineage on only after the runs, so the engine itself emits nothing here."""
    (root / "headwater.yaml").write_text(f"name: proj\nlineage: {setting}\n", encoding="utf-8")
    return ProjectRuntime.load(root)


@pytest.fixture
def two_pipelines(make_project: ProjectFactory) -> Path:
    """``orders`` from two CSV files, then ``totals`` computed from ``orders`` version 1."""
    root = make_project({"orders": ORDERS, "totals": TOTALS})
    _orders_csv(root, "a.csv", range(0, 10))
    _orders_csv(root, "b.csv", range(10, 15))
    with hw.Project(root) as project:
        first = project.run("orders")
        assert first.ok, first.error
        second = project.run("totals")
        assert second.ok, second.error
    return root


# --------------------------------------------------------------------------- events


def test_no_lineage_setting_means_no_emitter(make_project: ProjectFactory) -> None:
    """Without ``lineage.openlineage`` (or with neither file nor url) nothing is emitted."""
    root = make_project({"orders": ORDERS})
    assert emitter_for(ProjectRuntime.load(root)) is None
    assert emitter_for(_with_lineage(root, "{openlineage: {namespace: x}}")) is None


def test_file_transport_writes_start_then_complete(two_pipelines: Path) -> None:
    """START then COMPLETE as NDJSON lines: one run id (a UUID), the pipeline as the job,
    the committed version with schema, statistics and headwater facets, and its inputs."""
    runtime = _with_lineage(two_pipelines, "{openlineage: {file: out/lineage.ndjson, "
                                           "namespace: shop}}")
    store = runtime.store
    run = store.runs("totals")[0]
    outputs = store.versions_by_run(run["id"])
    emitter = emitter_for(runtime)
    assert emitter is not None

    emitter.start(run, [{"dataset": "orders", "version": 1}])
    emitter.complete(run, outputs, [])
    runtime.close()

    start, complete = _events(two_pipelines / "out/lineage.ndjson")
    assert ["START", "COMPLETE"] == [start["eventType"], complete["eventType"]]
    assert run_uuid(run["id"]) == start["run"]["runId"] == complete["run"]["runId"]
    assert 5 == uuid.UUID(start["run"]["runId"]).version
    assert {"namespace": "shop", "name": "totals"} == {
        k: complete["job"][k] for k in ("namespace", "name")}
    assert [("shop", "orders")] == [(i["namespace"], i["name"]) for i in start["inputs"]]
    assert [] == start["outputs"]

    (output,) = complete["outputs"]
    assert ("shop", "totals") == (output["namespace"], output["name"])
    facets = output["facets"]
    assert ["n", "total"] == [f["name"] for f in facets["schema"]["fields"]]
    assert "1" == facets["version"]["datasetVersion"]
    assert {"version": 1, "code_version": run["code_version"], "trigger": "manual",
            "run_id": run["id"], "pipeline": "totals", "mode": "overwrite"} == {
        k: facets["headwater"][k] for k in ("version", "code_version", "trigger", "run_id",
                                            "pipeline", "mode")}
    assert 1 == output["outputFacets"]["outputStatistics"]["rowCount"]
    quality = facets["dataQualityMetrics"]
    assert 1 == quality["rowCount"]
    assert 15.0 == quality["columnMetrics"]["n"]["max"]
    assert "https://pypi.org/project/headwater/" == facets["schema"]["_producer"]
    assert ("file", str(two_pipelines / "warehouse" / "totals")) == (
        facets["symlinks"]["identifiers"][0]["namespace"],
        facets["symlinks"]["identifiers"][0]["name"])

    # the recorded input version, with the schema it had
    (orders,) = complete["inputs"]
    assert ("shop", "orders", "1") == (orders["namespace"], orders["name"],
                                       orders["facets"]["version"]["datasetVersion"])
    assert ["order_id", "amount"] == [f["name"] for f in orders["facets"]["schema"]["fields"]]


def test_file_sources_are_inputs_in_the_file_namespace(two_pipelines: Path) -> None:
    """A files source is an input named by its folder's absolute path, listing its files."""
    runtime = _with_lineage(two_pipelines, "{openlineage: {file: lineage.ndjson}}")
    run = runtime.store.runs("orders")[0]
    emitter = emitter_for(runtime)
    assert emitter is not None
    emitter.complete(run, runtime.store.versions_by_run(run["id"]), [])
    runtime.close()

    (event,) = _events(two_pipelines / "lineage.ndjson")
    (source,) = event["inputs"]
    assert ("file", str(two_pipelines / "landing")) == (source["namespace"], source["name"])
    listed = source["facets"]["headwater"]["files"]
    assert ["a.csv", "b.csv"] == [Path(f["path"]).name for f in listed]
    assert 2 == source["inputFacets"]["inputStatistics"]["fileCount"]
    assert ["headwater"] == [o["namespace"] for o in event["outputs"]]


def test_fail_carries_the_error_and_abort_marks_a_cancelled_run(two_pipelines: Path) -> None:
    """FAIL names the error (with secrets masked); a cancelled run is reported as ABORT."""
    runtime = _with_lineage(two_pipelines, "{openlineage: {file: lineage.ndjson}}")
    run = dict(runtime.store.runs("orders")[0], status="failed")
    emitter = emitter_for(runtime)
    assert emitter is not None
    emitter.fail(run, "step 'raw' (source files landing/*.csv) failed: boom")
    emitter.fail(dict(run, status="cancelled"), "cancelled by request")
    runtime.close()

    failed, aborted = _events(two_pipelines / "lineage.ndjson")
    assert ("FAIL", "ABORT") == (failed["eventType"], aborted["eventType"])
    message = failed["run"]["facets"]["errorMessage"]
    assert "step 'raw' (source files landing/*.csv) failed: boom" == message["message"]
    assert "python" == message["programmingLanguage"]
    assert "cancelled by request" == aborted["run"]["facets"]["errorMessage"]["message"]


def test_secrets_never_reach_an_event(two_pipelines: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A resolved secret in an error, and user-info in a URL, are masked in the event."""
    monkeypatch.setenv("HW_LINEAGE_TEST_SECRET", "s3cr3t-Pa55word")
    secret = resolve("${env:HW_LINEAGE_TEST_SECRET}")
    runtime = _with_lineage(two_pipelines, "{openlineage: {file: lineage.ndjson}}")
    run = runtime.store.runs("orders")[0]
    emitter = emitter_for(runtime)
    assert emitter is not None
    emitter.fail(run, f"cannot reach postgresql://app:{secret}@127.0.0.1/shop ({secret})")
    emitter.start(run, [{"type": "http", "step": "api",
                         "url": "https://bob:hunter22@api.example.com/v1/items"}])
    runtime.close()

    text = (two_pipelines / "lineage.ndjson").read_text(encoding="utf-8")
    assert secret not in text
    assert "hunter22" not in text
    failed, started = (json.loads(line) for line in text.splitlines())
    assert "cannot reach postgresql://***@127.0.0.1/shop (***)" == (
        failed["run"]["facets"]["errorMessage"]["message"])
    assert [("https://api.example.com", "/v1/items")] == [
        (i["namespace"], i["name"]) for i in started["inputs"]]


def test_emitting_errors_never_raise_and_warn_once(two_pipelines: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """An unwritable destination costs a run nothing: one warning, however many events."""
    (two_pipelines / "blocked").mkdir()
    runtime = _with_lineage(two_pipelines, "{openlineage: {file: blocked}}")  # a folder
    run = runtime.store.runs("orders")[0]
    emitter = emitter_for(runtime)
    assert emitter is not None
    with caplog.at_level(logging.WARNING, logger="headwater.lineage"):
        emitter.start(run, [])
        emitter.complete(run, runtime.store.versions_by_run(run["id"]), [])
        emitter.fail(run, "boom")
    runtime.close()
    warnings = [r for r in caplog.records if r.name == "headwater.lineage"]
    assert 1 == len(warnings)
    assert "OpenLineage events to file" in warnings[0].getMessage()


def test_an_unreachable_collector_costs_one_warning(
        two_pipelines: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A collector that refuses connections: no exception, one warning, no secret in it."""
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runtime = _with_lineage(two_pipelines,
                            f"{{openlineage: {{url: 'http://ol:pw123@127.0.0.1:{port}'}}}}")
    run = runtime.store.runs("orders")[0]
    emitter = emitter_for(runtime)
    assert emitter is not None
    with caplog.at_level(logging.WARNING, logger="headwater.lineage"):
        emitter.start(run, [])
        emitter.fail(run, "boom")
    runtime.close()
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "headwater.lineage"]
    assert f"OpenLineage events to url http://***@127.0.0.1:{port}" in warning
    assert "pw123" not in warning


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, json.loads(body)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        return


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """An OpenLineage HTTP endpoint on loopback; yields its URL and what it received."""
    received: list[tuple[str, dict[str, Any]]] = []
    handler = type("Handler", (_Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_transport_posts_events(
        two_pipelines: Path, collector: tuple[str, list[tuple[str, dict[str, Any]]]]) -> None:
    """With ``url:`` events are POSTed to the collector's ``/api/v1/lineage``."""
    url, received = collector
    runtime = _with_lineage(two_pipelines, f"{{openlineage: {{url: '{url}'}}}}")
    run = runtime.store.runs("totals")[0]
    emitter = emitter_for(runtime)
    assert emitter is not None
    emitter.start(run, [])
    emitter.complete(run, runtime.store.versions_by_run(run["id"]), [])
    runtime.close()
    assert [("/api/v1/lineage", "START"), ("/api/v1/lineage", "COMPLETE")] == [
        (path, body["eventType"]) for path, body in received]
    assert ["totals"] == [o["name"] for o in received[1][1]["outputs"]]


# --------------------------------------------------------------------------- graph


def test_lineage_walks_upstream_to_files_and_downstream(two_pipelines: Path) -> None:
    """``totals`` leads upstream to ``orders`` and its CSV files; ``orders@1`` leads down to
    ``totals``; the CLI's ``lineage --json`` shows the same graph."""
    with hw.Project(two_pipelines) as project:
        graph = project.dataset("totals").lineage()
        down = project.dataset("orders").lineage(1)["downstream"]
    node = graph["node"]
    assert ("totals", 1, "totals", False) == (node["dataset"], node["version"],
                                              node["pipeline"], node["stale"])
    assert [{"dataset": "orders", "version": 1}] == node["inputs"]
    (orders,) = graph["upstream"]
    assert ("orders", 1, "orders", []) == (orders["dataset"], orders["version"],
                                           orders["pipeline"], orders["upstream"])
    (files,) = orders["sources"]
    assert ("files", "landing/*.csv") == (files["type"], files["path"])
    assert ["a.csv", "b.csv"] == [Path(f["path"]).name for f in files["files"]]
    assert [("totals", 1)] == [(d["dataset"], d["version"]) for d in down]

    result = run_cli("lineage", "totals@1", "--json", "--project", str(two_pipelines))
    assert 0 == result.returncode, result.stderr
    assert json.loads(json.dumps(graph, default=str)) == json.loads(result.stdout)

    text = run_cli("lineage", "orders", "--project", str(two_pipelines))
    assert 0 == text.returncode, text.stderr
    assert "totals@1" in text.stdout
    assert "a.csv" in text.stdout


def test_a_code_change_makes_earlier_versions_stale(two_pipelines: Path) -> None:
    """Once ``totals`` runs with changed SQL, the versions its old code made are stale,
    while the new version and the untouched upstream are not."""
    write(two_pipelines / "pipelines/totals.yaml",
          TOTALS.replace("sum(amount) AS total", "sum(amount) AS total, max(amount) AS top"))
    with hw.Project(two_pipelines) as project:
        assert project.run("totals").ok
        totals = project.dataset("totals")
        assert [1, 2] == totals.versions()
        assert totals.lineage(1)["node"]["stale"] is True
        assert totals.lineage(2)["node"]["stale"] is False
        assert totals.lineage(1)["upstream"][0]["stale"] is False
        assert project.dataset("orders").lineage(1)["downstream"][0]["stale"] is True
    shown = json.loads(run_cli("dataset", "show", "totals", "--version", "1", "--json",
                               "--project", str(two_pipelines)).stdout)
    assert shown["stale"] is True


def test_a_diamond_shows_every_path(two_pipelines: Path) -> None:
    """A version reading ``orders`` both directly and through ``totals`` lists both inputs,
    and ``orders`` lists it downstream both directly and under ``totals``."""
    report = """
    name: report
    steps:
      - id: o
        source: {type: dataset, name: orders}
      - id: t
        source: {type: dataset, name: totals}
      - id: j
        sql: SELECT count(*) AS n, max(t.total) AS total FROM o, t
      - id: out
        publish: {input: j, dataset: report, mode: overwrite}
    """
    write(two_pipelines / "pipelines/report.yaml", report)
    with hw.Project(two_pipelines) as project:
        assert project.run("report").ok
        up = project.dataset("report").lineage()["upstream"]
        down = project.dataset("orders").lineage(1)["downstream"]
    assert [("orders", 1), ("totals", 1)] == sorted((u["dataset"], u["version"]) for u in up)
    via_totals = next(u for u in up if u["dataset"] == "totals")
    assert [("orders", 1)] == [(u["dataset"], u["version"]) for u in via_totals["upstream"]]
    assert ["report", "totals"] == sorted(d["dataset"] for d in down)
    under_totals = next(d for d in down if d["dataset"] == "totals")
    assert ["report"] == [d["dataset"] for d in under_totals["downstream"]]


def test_a_long_self_chain_is_truncated_not_a_crash(make_project: ProjectFactory) -> None:
    """A dataset that read its own previous version 600 times over is walked to a depth
    limit (the last node marked ``truncated``), both ways, reading each record once."""
    from headwater.lineage.graph import MAX_DEPTH, version_lineage

    runtime = ProjectRuntime.load(make_project())
    store = runtime.store
    store.ensure_dataset("chain", runtime.dataset_uri("chain"), "chain")
    for version in range(1, 601):
        store.add_version({
            "dataset": "chain", "version": version, "delta_version": version - 1,
            "run_id": f"r{version}", "pipeline": "chain", "code_version": "c1",
            "trigger": "schedule", "mode": "append", "sources": [],
            "inputs": [{"dataset": "chain", "version": version - 1}] if version > 1 else [],
            "rows_added": 1, "rows_removed": 0, "rows_total": version, "schema": []})
    graph = version_lineage(runtime, "chain")
    depth, node = 0, graph
    while node["upstream"]:
        (node,) = node["upstream"]
        depth += 1
    assert (MAX_DEPTH, 600 - MAX_DEPTH, True) == (depth, node["version"], node["truncated"])
    depth, node = 0, version_lineage(runtime, "chain", 1)
    while node["downstream"]:
        (node,) = node["downstream"]
        depth += 1
    assert (MAX_DEPTH, 1 + MAX_DEPTH) == (depth, node["version"])
    runtime.close()


def test_engine_emits_run_events(make_project: ProjectFactory) -> None:
    """A configured project records each run's START and COMPLETE through the engine."""
    root = make_project({"orders": ORDERS},
                        settings="lineage: {openlineage: {file: lineage.ndjson}}\n")
    _orders_csv(root, "a.csv", range(0, 3))
    with hw.Project(root) as project:
        run = project.run("orders")
        assert run.ok, run.error
    events = _events(root / "lineage.ndjson")
    assert ["START", "COMPLETE"] == [e["eventType"] for e in events]
    assert {run_uuid(run.id)} == {e["run"]["runId"] for e in events}
    assert ["orders"] == [o["name"] for o in events[1]["outputs"]]


def test_staleness_is_known_before_the_next_run_and_passes_downstream(
    two_pipelines: Path,
) -> None:
    """Editing ``orders``' SQL on disk (no run since) makes ``orders@1`` stale at once, and
    ``totals@1``, computed from it, stale too (transitively); ``dataset show`` agrees.
    A comment-only edit makes nothing stale."""
    path = two_pipelines / "pipelines/orders.yaml"
    write(path, ORDERS.replace("SELECT order_id, amount FROM raw",
                               "SELECT order_id, amount FROM raw -- same query"))
    with hw.Project(two_pipelines) as project:
        assert project.dataset("totals").lineage(1)["node"]["stale"] is False
    write(path, ORDERS.replace("SELECT order_id, amount FROM raw",
                               "SELECT order_id, amount * 2 AS amount FROM raw"))
    with hw.Project(two_pipelines) as project:
        assert [1] == project.dataset("orders").versions()
        graph = project.dataset("totals").lineage(1)
        assert graph["node"]["stale"] is True
        assert graph["upstream"][0]["stale"] is True
        assert project.dataset("orders").lineage(1)["downstream"][0]["stale"] is True
    for name in ("orders", "totals"):
        shown = json.loads(run_cli("dataset", "show", name, "--json",
                                   "--project", str(two_pipelines)).stdout)
        assert shown["stale"] is True


def test_a_rerun_downstream_of_fresh_code_is_not_stale(two_pipelines: Path) -> None:
    """After ``orders`` changes and both pipelines run again, the new ``totals`` version
    (read from the fresh ``orders`` version) is not stale; the old ones are."""
    write(two_pipelines / "pipelines/orders.yaml",
          ORDERS.replace("mode: append", "mode: overwrite"))
    _orders_csv(two_pipelines, "c.csv", range(15, 16))
    with hw.Project(two_pipelines) as project:
        assert project.run("orders").ok
        assert project.run("totals").ok
        totals = project.dataset("totals")
        assert (True, False) == (totals.lineage(1)["node"]["stale"],
                                 totals.lineage(2)["node"]["stale"])
