"""A whole pipeline over Azure Blob Storage (Azurite on loopback), with a secret connection."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import fsspec
import pytest

import headwater as hw
from tests.conftest import ProjectFactory, run_cli

pytestmark = [pytest.mark.services, pytest.mark.slow]

KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
       "KBHBeksoGMGw==")
"""Azurite's well-known development key (public)."""


@pytest.fixture
def connection_string() -> Iterator[str]:
    port = os.environ.get("AZURITE_PORT", "10000")
    yield ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
           f"AccountKey={KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")


def test_incremental_blob_source_and_no_leaked_secret(
        make_project: ProjectFactory, connection_string: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """New blobs become version 2; the connection string (a secret from the environment)
    appears in no log line, run record or JSON output."""
    container = f"hw-{uuid.uuid4().hex[:10]}"
    fs = fsspec.filesystem("az", connection_string=connection_string)
    fs.mkdir(container)
    try:
        fs.pipe(f"{container}/landing/a.csv", b"id,v\n1,a\n2,b\n")
        monkeypatch.setenv("HW_AZ_CONN", connection_string)
        root = make_project(
            {"blobs": f"""
            name: blobs
            steps:
              - id: raw
                source: {{type: files, path: "az://{container}/landing/*.csv",
                          connection: lake, incremental: true}}
              - id: out
                publish: {{input: raw, dataset: blobs}}
            """},
            settings='connections:\n  lake: {type: azure_blob, '
                     'connection_string: "${env:HW_AZ_CONN}"}\n')
        with hw.Project(root) as project:
            first = project.run("blobs")
            assert first.ok, first.error
            fs.pipe(f"{container}/landing/b.csv", b"id,v\n3,c\n")
            second = project.run("blobs")
            assert second.ok, second.error
            ds = project.dataset("blobs")
            assert [1, 2] == ds.versions()
            assert [3] == ds.to_arrow().filter(
                ds.to_arrow()["id"].to_numpy() > 2)["id"].to_pylist()
            files = ds.record(2)["sources"][0]["files"]
            assert [f"{container}/landing/b.csv"] == [f["path"].split("://")[1] for f in files]
            logs = json.dumps([r["message"] for r in project.logs(second.id)])
        runs = run_cli("runs", "--json", "--project", str(root))
        show = run_cli("dataset", "show", "blobs", "--json", "--project", str(root))
        for text in (logs, runs.stdout, runs.stderr, show.stdout):
            assert KEY not in text
    finally:
        fs.rm(container, recursive=True)
