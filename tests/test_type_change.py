"""Appending a column whose type changed: cast when no value is lost, else fail clearly."""

from __future__ import annotations

from pathlib import Path

import headwater as hw
from tests.conftest import INCREMENTAL_ORDERS, ProjectFactory, write

PIPELINE = INCREMENTAL_ORDERS


def _first(root: Path, project: hw.Project) -> None:
    write(root / "landing/a.csv", "id,amount\n1,10\n2,20\n")
    assert project.run("orders").ok


def test_a_lossless_type_change_is_cast(make_project: ProjectFactory) -> None:
    """``amount`` was BIGINT; a file where it reads as DOUBLE with whole values is cast
    back to BIGINT: every value kept, the dataset's type unchanged."""
    root = make_project({"orders": PIPELINE})
    with hw.Project(root) as project:
        _first(root, project)
        write(root / "landing/b.csv", "id,amount\n3,30.0\n4,40.0\n")
        run = project.run("orders")
        assert run.ok, run.error
        ds = project.dataset("orders")
        assert [10, 20, 30, 40] == sorted(ds.to_arrow()["amount"].to_pylist())
        assert "int64" == str(ds.schema().field("amount").type)
        messages = [line["message"] for line in project.logs(run.id)]
        assert any("cast to the dataset's type int64" in m for m in messages), messages
        assert not any("schema evolved" in m for m in messages), messages


def test_a_lossy_type_change_fails_naming_column_types_and_fix(
        make_project: ProjectFactory) -> None:
    """Text that is not a number, appended to a BIGINT column, fails the run naming the
    column, both types, a lost value and the fixes; nothing is written (no NULLs)."""
    root = make_project({"orders": PIPELINE})
    with hw.Project(root) as project:
        _first(root, project)
        write(root / "landing/b.csv", "id,amount\n3,thirty\n4,40\n")
        run = project.run("orders")
        assert "failed" == run.status
        error = run.error or ""
        for part in ("'amount'", "int64", "VARCHAR", "'thirty'", "mode: overwrite",
                     "cast the column in SQL"):
            assert part in error, error
        ds = project.dataset("orders")
        assert [1] == ds.versions()
        assert [10, 20] == sorted(ds.to_arrow()["amount"].to_pylist())
