"""A project whose path has a space and a non-ASCII letter works end to end.

delta-rs percent-encodes the table URI (``my%20project/%C3%BC``); every read must open the
files by their real names, and the store must never fall behind the table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import headwater as hw
from tests.conftest import COPY_ORDERS, INCREMENTAL_ORDERS, run_cli, write

ORDERS = INCREMENTAL_ORDERS

COPY = COPY_ORDERS


@pytest.fixture
def odd_root(tmp_path: Path) -> Path:
    root = tmp_path / "my project" / "ü"
    write(root / "headwater.yaml", "name: odd\n")
    write(root / "pipelines/orders.yaml", ORDERS)
    write(root / "pipelines/copy.yaml", COPY)
    return root


@pytest.mark.slow
def test_space_and_non_ascii_in_the_project_path(odd_root: Path) -> None:
    """Two CLI runs publish versions 1 and 2; preview, lineage, a ``dataset`` source and
    ``to_arrow`` (latest and version 1) all read the real files."""
    write(odd_root / "landing/a.csv", "id,v\n1,1\n2,2\n")
    first = run_cli("run", "orders", cwd=odd_root)
    assert 0 == first.returncode, first.stderr[-1500:]
    write(odd_root / "landing/b.csv", "id,v\n3,3\n")
    second = run_cli("run", "orders", cwd=odd_root)
    assert 0 == second.returncode, second.stderr[-1500:]
    preview = run_cli("dataset", "preview", "orders", "--json", cwd=odd_root)
    assert 0 == preview.returncode, preview.stderr[-1500:]
    assert [1, 2, 3] == sorted(row["id"] for row in json.loads(preview.stdout))
    lineage = run_cli("lineage", "orders@2", "--json", cwd=odd_root)
    assert 0 == lineage.returncode, lineage.stderr[-1500:]
    files = json.loads(lineage.stdout)["node"]["sources"][0]["files"]
    assert [str(odd_root / "landing/b.csv")] == [f["path"] for f in files]
    copied = run_cli("run", "copy", cwd=odd_root)
    assert 0 == copied.returncode, copied.stderr[-1500:]
    with hw.Project(odd_root) as project:
        ds = project.dataset("orders")
        assert [1, 2] == ds.versions()
        assert [1, 2, 3] == sorted(ds.to_arrow()["id"].to_pylist())
        assert [1, 2] == sorted(ds.to_arrow(version=1)["id"].to_pylist())
        assert 3 == project.dataset("orders_copy").to_arrow().num_rows
