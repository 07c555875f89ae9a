"""Edge cases of everyday pipelines: SQL ending in a comment, a landing folder with no
file yet, and a column empty in every row of a new file under declared checks."""

from __future__ import annotations

from pathlib import Path

import pytest

import headwater as hw
from tests.conftest import ProjectFactory, write


def _sql_pipeline(sql: str) -> str:
    return f"""
    name: orders
    steps:
      - id: raw
        source: {{type: files, path: landing/*.csv}}
      - id: clean
        sql: {sql}
      - id: publish
        publish: {{input: clean, dataset: orders}}
    """


@pytest.mark.parametrize("sql", [
    '"SELECT * FROM raw WHERE amount > 1 -- only real orders"',
    '"SELECT * FROM raw WHERE amount > 1; -- done"',
    '|\n          SELECT *\n          FROM raw /* keep */ WHERE amount > 1\n'
    '          -- trailing comment\n          -- and another',
    "sql/clean.sql",
])
def test_sql_ending_in_a_comment_runs_and_publishes(make_project: ProjectFactory,
                                                    sql: str) -> None:
    """A SQL step whose text ends in ``-- comment`` (inline or in a ``.sql`` file, after a
    ``;`` or not) runs, publishes, and a second run publishes again."""
    root = make_project({"orders": _sql_pipeline(sql)}, files={
        "sql/clean.sql": "SELECT * FROM raw WHERE amount > 1;\n-- only real orders",
        "landing/a.csv": "id,amount\n1,0.5\n2,2.5\n",
    })
    with hw.Project(root) as project:
        for expected_version in (1, 2):
            run = project.run("orders")
            assert "succeeded" == run.status, run.error
            dataset = project.dataset("orders")
            assert expected_version == dataset.version
        assert [2, 2] == dataset.to_arrow()["id"].to_pylist()


def test_sql_comment_inside_a_string_is_kept(make_project: ProjectFactory) -> None:
    """Only real comments are dropped: ``--`` inside a string literal is data."""
    root = make_project({"orders": _sql_pipeline(
        "\"SELECT id, '-- not a comment' AS note FROM raw -- a comment\"")},
        files={"landing/a.csv": "id,amount\n1,0.5\n"})
    with hw.Project(root) as project:
        run = project.run("orders")
        assert "succeeded" == run.status, run.error
        assert ["-- not a comment"] == project.dataset("orders").to_arrow()["note"].to_pylist()


def _landing_pipeline(incremental: bool) -> str:
    return f"""
    name: orders
    steps:
      - id: raw
        source: {{type: files, path: landing/*.csv, incremental: {str(incremental).lower()},
                  columns: {{id: int64}}}}
      - id: publish
        publish: {{input: raw, dataset: orders}}
    """


@pytest.mark.parametrize("incremental", [False, True])
@pytest.mark.parametrize("landing", ["missing", "empty folder", "no match"])
def test_empty_landing_succeeds_and_publishes_nothing(
    make_project: ProjectFactory, incremental: bool, landing: str
) -> None:
    """No file matches yet (folder empty, missing, or only other files): the run succeeds,
    publishes no version, and says why in its log; the next file is then ingested."""
    root = make_project({"orders": _landing_pipeline(incremental)})
    if landing != "missing":
        (root / "landing").mkdir()
    if landing == "no match":
        write(root / "landing/readme.txt", "not data")
    with hw.Project(root) as project:
        run = project.run("orders")
        assert "succeeded" == run.status, run.error
        with pytest.raises(hw.NotFoundError):
            project.dataset("orders")
        messages = [row["message"] for row in project.runtime.store.logs(run.id)]
        assert any("matched no files" in m or "holds no files" in m for m in messages), messages
        write(root / "landing/a.csv", "id,amount\n1,2\n")
        run = project.run("orders")
        assert "succeeded" == run.status, run.error
        assert [1] == project.dataset("orders").to_arrow()["id"].to_pylist()


def _validate_pipeline() -> str:
    return """
    name: orders
    steps:
      - id: raw
        source: {type: files, path: landing/*.csv, incremental: true,
                 columns: {id: int64, ordered_at: timestamp}}
      - id: checked
        validate:
          input: raw
          columns:
            id: {type: int64, nullable: false}
            ordered_at: {type: timestamp}
            shipped_at: {type: timestamp}
            amount: {type: float64, min: 0}
          rules: ["shipped_at IS NULL OR shipped_at >= ordered_at",
                  "amount IS NULL OR amount < 1000"]
          on_error: quarantine
      - id: publish
        publish: {input: checked, dataset: orders}
    """


def test_column_empty_in_every_row_is_typed_by_the_checks(
    make_project: ProjectFactory, tmp_path: Path
) -> None:
    """A new file whose ``shipped_at`` and ``amount`` are empty in every row (so the file
    alone says VARCHAR) still validates: the rules compare them as the declared types, and
    the version keeps those types."""
    root = make_project({"orders": _validate_pipeline()})
    write(root / "landing/a.csv",
          "id,ordered_at,shipped_at,amount\n1,2026-01-01 10:00:00,2026-01-02 09:00:00,5.5\n")
    write(root / "landing/b.csv", "id,ordered_at,shipped_at,amount\n"
          "2,2026-01-03 10:00:00,,\n3,2026-01-04 10:00:00,,\n")
    with hw.Project(root) as project:
        run = project.run("orders")
        assert "succeeded" == run.status, run.error
        table = project.dataset("orders").to_arrow()
    assert [1, 2, 3] == sorted(table["id"].to_pylist())
    assert "timestamp[us]" == str(table.schema.field("shipped_at").type)
    assert "double" == str(table.schema.field("amount").type)


def test_only_empty_column_file_after_a_typed_one(make_project: ProjectFactory) -> None:
    """The second run's only file has the column empty in every row: it validates and
    appends to the version typed by the first run (no VARCHAR vs TIMESTAMP error)."""
    root = make_project({"orders": _validate_pipeline()})
    write(root / "landing/a.csv",
          "id,ordered_at,shipped_at,amount\n1,2026-01-01 10:00:00,2026-01-02 09:00:00,5.5\n")
    with hw.Project(root) as project:
        assert "succeeded" == project.run("orders").status
        write(root / "landing/b.csv", "id,ordered_at,shipped_at,amount\n"
              "2,2026-01-03 10:00:00,,\n")
        run = project.run("orders")
        assert "succeeded" == run.status, run.error
        assert [1, 2] == sorted(project.dataset("orders").to_arrow()["id"].to_pylist())


def _rules_only_pipeline(hints: str = "") -> str:
    return f"""
    name: orders
    steps:
      - id: raw
        source: {{type: files, path: landing/*.csv, incremental: true{hints}}}
      - id: checked
        validate:
          input: raw
          columns:
            id: {{type: int64, nullable: false}}
          rules: ["shipped_at IS NULL OR shipped_at >= ordered_at"]
          on_error: quarantine
      - id: publish
        publish: {{input: checked, dataset: orders}}
    """


def test_rule_over_a_column_empty_in_every_row(make_project: ProjectFactory) -> None:
    """A rule comparing ``shipped_at`` (empty in every row of the new file, so the file
    alone says VARCHAR) with a timestamp binds and passes; the dataset keeps its type."""
    root = make_project({"orders": _rules_only_pipeline()})
    write(root / "landing/a.csv",
          "id,ordered_at,shipped_at\n1,2026-01-01 10:00:00,2026-01-02 09:00:00\n")
    with hw.Project(root) as project:
        assert "succeeded" == project.run("orders").status
        write(root / "landing/b.csv", "id,ordered_at,shipped_at\n2,2026-01-03 10:00:00,\n"
              "3,2026-01-04 10:00:00,\n")
        run = project.run("orders")
        assert "succeeded" == run.status, run.error
        table = project.dataset("orders").to_arrow()
    assert [1, 2, 3] == sorted(table["id"].to_pylist())
    assert [None, None] == [r["shipped_at"] for r in table.to_pylist() if r["id"] > 1]
    assert "timestamp[us]" == str(table.schema.field("shipped_at").type)


def test_empty_column_file_beside_a_typed_one_in_one_run(make_project: ProjectFactory) -> None:
    """Two new files in one run, one with ``shipped_at`` empty throughout: the column keeps
    the type the other file shows (not VARCHAR for both), so the rule binds."""
    root = make_project({"orders": _rules_only_pipeline()})
    write(root / "landing/a.csv",
          "id,ordered_at,shipped_at\n1,2026-01-01 10:00:00,2026-01-02 09:00:00\n"
          "4,2026-01-01 10:00:00,2025-01-02 09:00:00\n")
    write(root / "landing/b.csv", "id,ordered_at,shipped_at\n2,2026-01-03 10:00:00,\n")
    with hw.Project(root) as project:
        run = project.run("orders")
        assert "succeeded" == run.status, run.error
        table = project.dataset("orders").to_arrow()
        rejected = project.dataset("orders__rejected").to_arrow().to_pylist()
    assert [1, 2] == sorted(table["id"].to_pylist())
    assert "timestamp[us]" == str(table.schema.field("shipped_at").type)
    assert ["rule failed: shipped_at IS NULL OR shipped_at >= ordered_at"] == \
        [r["_error"] for r in rejected]
