"""A warehouse on Azure Blob Storage (Azurite): publish, read back, time travel, stats."""

from __future__ import annotations

import os
import uuid

import fsspec
import pytest

import headwater as hw
from tests.conftest import ProjectFactory, run_cli, write

pytestmark = [pytest.mark.services, pytest.mark.slow]

KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
       "KBHBeksoGMGw==")
"""Azurite's well-known development key (public)."""


def test_datasets_live_in_a_blob_container(make_project: ProjectFactory,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``warehouse: az://...`` every version is a Delta commit in the container, and
    the Python API, the CLI, a downstream dataset source and the statistics read it."""
    port = os.environ.get("AZURITE_PORT", "10000")
    conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    fs = fsspec.filesystem("az", connection_string=conn)
    container = f"hw-{uuid.uuid4().hex[:10]}"
    fs.mkdir(container)
    monkeypatch.setenv("HW_WH_CONN", conn)
    try:
        root = make_project(
            {"orders": """
            name: orders
            steps:
              - id: raw
                source: {type: files, path: landing/*.csv, incremental: true}
              - id: out
                publish: {input: raw, dataset: orders}
            """, "totals": """
            name: totals
            steps:
              - id: src
                source: {type: dataset, name: orders}
              - id: agg
                sql: SELECT count(*) AS n FROM src
              - id: out
                publish: {input: agg, dataset: totals, mode: overwrite}
            """},
            settings=(f"warehouse: az://{container}/warehouse\n"
                      "warehouse_connection: lake\n"
                      "connections:\n  lake: {type: azure_blob, "
                      "connection_string: \"${env:HW_WH_CONN}\"}\n"))
        write(root / "landing/a.csv", "id,v\n1,a\n2,b\n")
        with hw.Project(root) as project:
            assert project.run("orders").ok
            write(root / "landing/b.csv", "id,v\n3,c\n")
            assert project.run("orders").ok
            ds = project.dataset("orders")
            assert ds.uri.startswith(f"az://{container}/warehouse/")
            assert [1, 2] == ds.versions()
            assert [1, 2] == sorted(ds.to_arrow(version=1)["id"].to_pylist())
            assert 3 == ds.to_arrow().num_rows
            assert 3 == ds.stats()["rows"]
            totals = project.run("totals")
            assert totals.ok, totals.error
            assert [3] == project.dataset("totals").to_arrow()["n"].to_pylist()
        assert fs.ls(f"{container}/warehouse/orders/_delta_log")
        preview = run_cli("dataset", "preview", "orders", "--json", "--project", str(root))
        assert 0 == preview.returncode, preview.stderr
        assert KEY not in preview.stdout + preview.stderr
    finally:
        fs.rm(container, recursive=True)
