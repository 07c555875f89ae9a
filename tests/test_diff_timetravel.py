"""Time travel and ``dataset diff`` through the real engine.

Every dataset version stays readable as it was (rows and schema); ``headwater dataset diff``
counts rows added, removed and (with a merge key) changed between two versions, and names
schema changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import headwater as hw
from tests.conftest import ProjectFactory, run_cli, write

pytestmark = pytest.mark.slow


def _pipeline(mode: str, *, incremental: bool = True, extra: str = "") -> str:
    flag = str(incremental).lower()
    return f"""
name: orders
steps:
  - id: raw
    source: {{type: files, path: landing/*.csv, format: csv, incremental: {flag}}}
  - id: publish
    publish: {{input: raw, dataset: orders, mode: {mode}{extra}}}
"""


def _csv(root: Path, name: str, rows: list[tuple[Any, ...]],
         header: str = "id,amount") -> None:
    write(root / "landing" / name, header + "\n" + "".join(
        ",".join(str(v) for v in row) + "\n" for row in rows))


def _run(project: hw.Project) -> None:
    run = project.run("orders")
    assert run.ok, run.error


def _diff(root: Path, a: int, b: int) -> dict[str, Any]:
    result = run_cli("dataset", "diff", "orders", str(a), str(b), "--json",
                     "--project", str(root))
    assert 0 == result.returncode, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def _ids(table: Any) -> list[int]:
    return sorted(table["id"].to_pylist())


def test_time_travel_reads_each_version_as_it_was(make_project: ProjectFactory) -> None:
    """After three appends, version 1 and 2 still return exactly their own rows."""
    root = make_project({"orders": _pipeline("append")})
    with hw.Project(root) as project:
        for number, ids in enumerate((range(0, 4), range(4, 7), range(7, 9)), start=1):
            _csv(root, f"{number}.csv", [(i, i * 2.5) for i in ids])
            _run(project)
        ds = project.dataset("orders")
        assert [1, 2, 3] == ds.versions()
        assert list(range(0, 4)) == _ids(ds.to_arrow(version=1))
        assert list(range(0, 7)) == _ids(ds.to_arrow(version=2))
        assert list(range(0, 9)) == _ids(ds.to_arrow())
        assert [(0, 0.0), (1, 2.5), (2, 5.0), (3, 7.5)] == sorted(
            (r["id"], r["amount"]) for r in ds.to_arrow(version=1).to_pylist())
        assert 4 == len(ds.to_pandas(version=1))
        assert 7 == ds.to_polars(version=2).height
        with pytest.raises(hw.NotFoundError, match="no version 4"):
            ds.to_arrow(version=4)


def test_diff_of_an_append_counts_the_new_rows(make_project: ProjectFactory) -> None:
    """Between two appends the diff is the second file's rows added, none removed."""
    root = make_project({"orders": _pipeline("append")})
    _csv(root, "a.csv", [(1, 10.0), (2, 20.0)])
    with hw.Project(root) as project:
        _run(project)
        _csv(root, "b.csv", [(3, 30.0), (4, 40.0), (5, 50.0)])
        _run(project)
    assert {"dataset": "orders", "from": 1, "to": 2, "key": [], "added": 3, "removed": 0,
            "changed": 0, "schema_changes": []} == _diff(root, 1, 2)
    assert {"added": 0, "removed": 3} == {k: v for k, v in _diff(root, 2, 1).items()
                                          if k in ("added", "removed")}
    text = run_cli("dataset", "diff", "orders", "1", "2", "--project", str(root))
    assert 0 == text.returncode, text.stderr
    assert "+3 added, -0 removed, ~0 changed" in text.stdout


def test_diff_of_an_overwrite_with_a_changed_row(make_project: ProjectFactory) -> None:
    """Without a key, a row whose value changed counts as one removed and one added."""
    root = make_project({"orders": _pipeline("overwrite", incremental=False)})
    _csv(root, "a.csv", [(1, 10.0), (2, 20.0), (3, 30.0)])
    with hw.Project(root) as project:
        _run(project)
        _csv(root, "a.csv", [(1, 10.0), (2, 25.0), (3, 30.0)])
        _run(project)
        ds = project.dataset("orders")
        assert [20.0, 25.0] == [ds.to_arrow(version=v).sort_by("id")["amount"][1].as_py()
                                for v in (1, 2)]
    doc = _diff(root, 1, 2)
    assert (1, 1, 0, []) == (doc["added"], doc["removed"], doc["changed"], doc["key"])


def test_diff_names_a_column_added_under_schema_evolve(make_project: ProjectFactory) -> None:
    """A later file with an extra column evolves the schema; old versions keep theirs."""
    root = make_project({"orders": _pipeline("append", extra=", schema: evolve")})
    _csv(root, "a.csv", [(1, 10.0), (2, 20.0)])
    with hw.Project(root) as project:
        _run(project)
        _csv(root, "b.csv", [(3, 30.0, "DE")], header="id,amount,country")
        _run(project)
        ds = project.dataset("orders")
        assert ["id", "amount"] == ds.schema(1).names
        assert ["id", "amount", "country"] == ds.schema(2).names
        assert ["id", "amount"] == ds.to_arrow(version=1).column_names
        assert [None, None, "DE"] == ds.to_arrow().sort_by("id")["country"].to_pylist()
    doc = _diff(root, 1, 2)
    assert (["added column 'country'"], 1, 0) == (doc["schema_changes"], doc["added"],
                                                  doc["removed"])
    assert ["removed column 'country'"] == _diff(root, 2, 1)["schema_changes"]


def test_diff_compares_a_retyped_column_as_text(make_project: ProjectFactory) -> None:
    """An overwrite that turns a number column into text is named as a type change, and
    only the row whose text differs counts as removed and added."""
    root = make_project({"orders": _pipeline("overwrite", incremental=False)})
    _csv(root, "a.csv", [(1, 10), (2, 20), (3, 30)])
    with hw.Project(root) as project:
        _run(project)
        _csv(root, "a.csv", [(1, 10), (2, "x20"), (3, 30)])
        _run(project)
    doc = _diff(root, 1, 2)
    assert (["column 'amount' changed type from int64 to string"], 1, 1) == (
        doc["schema_changes"], doc["added"], doc["removed"])


def test_diff_by_merge_key_reports_changed_rows(make_project: ProjectFactory) -> None:
    """With ``mode: merge`` and a key, an updated row is *changed*, a new key *added*."""
    root = make_project({"orders": _pipeline("merge", extra=", key: [id]")})
    _csv(root, "a.csv", [(1, 10.0), (2, 20.0), (3, 30.0)])
    with hw.Project(root) as project:
        _run(project)
        _csv(root, "b.csv", [(2, 25.0), (4, 40.0)])
        _run(project)
        ds = project.dataset("orders")
        assert [(1, 10.0), (2, 25.0), (3, 30.0), (4, 40.0)] == [
            (r["id"], r["amount"]) for r in ds.to_arrow().sort_by("id").to_pylist()]
        assert [(1, 10.0), (2, 20.0), (3, 30.0)] == [
            (r["id"], r["amount"]) for r in ds.to_arrow(version=1).sort_by("id").to_pylist()]
    assert {"key": ["id"], "added": 1, "removed": 0, "changed": 1, "schema_changes": []} == {
        k: v for k, v in _diff(root, 1, 2).items()
        if k in ("key", "added", "removed", "changed", "schema_changes")}


def test_diff_of_a_missing_version_is_a_usage_error(make_project: ProjectFactory) -> None:
    """Asking for a version that does not exist exits 2 and lists the versions there are."""
    root = make_project({"orders": _pipeline("append")})
    _csv(root, "a.csv", [(1, 10.0)])
    with hw.Project(root) as project:
        _run(project)
    result = run_cli("dataset", "diff", "orders", "1", "7", "--json", "--project", str(root))
    assert 2 == result.returncode
    assert "no version 7" in result.stderr
    assert "" == result.stdout
