"""The core slice end to end: a folder of CSV files → SQL → a versioned Delta dataset."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

import headwater as hw
from tests.conftest import ProjectFactory, write

PIPELINE = """
name: orders
params: {min_amount: 0}
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, format: csv, incremental: true}
  - id: clean
    sql: SELECT order_id, amount FROM raw WHERE amount >= {{ params.min_amount }}
  - id: publish
    publish: {input: clean, dataset: orders, mode: append}
"""


def _csv(path: Path, start: int, count: int) -> None:
    lines = ["order_id,amount"] + [f"{i},{i * 1.5}" for i in range(start, start + count)]
    write(path, "\n".join(lines) + "\n")


def test_incremental_folder_publishes_only_new_files(make_project: ProjectFactory) -> None:
    """Version 2 adds exactly the rows of the files that arrived after version 1."""
    root = make_project({"orders": PIPELINE})
    _csv(root / "landing/a.csv", 0, 100)
    _csv(root / "landing/b.csv", 100, 50)
    with hw.Project(root) as project:
        first = project.run("orders")
        assert "succeeded" == first.status, first.error
        _csv(root / "landing/c.csv", 150, 25)
        second = project.run("orders")
        assert "succeeded" == second.status, second.error
        ds = project.dataset("orders")
        assert [1, 2] == ds.versions()
        assert 2 == ds.version
        v1 = ds.to_arrow(version=1)
        v2 = ds.to_arrow(version=2)
        assert 150 == v1.num_rows
        assert 175 == v2.num_rows
        new_ids = set(v2["order_id"].to_pylist()) - set(v1["order_id"].to_pylist())
        assert set(range(150, 175)) == new_ids
        assert 175 == ds.to_polars().height
        assert 175 == len(ds.to_pandas())
        record = ds.record(2)
        assert second.id == record["run_id"]
        assert ["c.csv"] == [Path(f["path"]).name for f in record["sources"][0]["files"]]


def test_params_filter_rows(make_project: ProjectFactory) -> None:
    """``-p`` params reach the SQL template and undeclared params are refused."""
    root = make_project({"orders": PIPELINE})
    _csv(root / "landing/a.csv", 0, 10)
    with hw.Project(root) as project:
        run = project.run("orders", params={"min_amount": "6"})
        assert "succeeded" == run.status, run.error
        assert [4, 5, 6, 7, 8, 9] == sorted(project.dataset("orders").to_arrow()["order_id"]
                                            .to_pylist())
        with pytest.raises(hw.HeadwaterError, match="did you mean 'min_amount'"):
            project.run("orders", params={"min_amont": 1})


def test_nothing_new_makes_no_version(make_project: ProjectFactory) -> None:
    """A run that finds no new files succeeds without creating an empty version."""
    root = make_project({"orders": PIPELINE})
    _csv(root / "landing/a.csv", 0, 10)
    with hw.Project(root) as project:
        project.run("orders")
        again = project.run("orders")
        assert "succeeded" == again.status
        assert [1] == project.dataset("orders").versions()


def test_overwrite_and_dataset_source(make_project: ProjectFactory) -> None:
    """A downstream pipeline reads a dataset version and records it as its input."""
    downstream = """
    name: totals
    steps:
      - id: src
        source: {type: dataset, name: orders}
      - id: agg
        sql: SELECT count(*) AS n, sum(amount) AS total FROM src
      - id: out
        publish: {input: agg, dataset: totals, mode: overwrite}
    """
    root = make_project({"orders": PIPELINE, "totals": downstream})
    _csv(root / "landing/a.csv", 0, 10)
    with hw.Project(root) as project:
        assert project.run("orders").ok
        run = project.run("totals")
        assert run.ok, run.error
        totals = project.dataset("totals")
        assert [10] == totals.to_arrow()["n"].to_pylist()
        assert [{"dataset": "orders", "version": 1}] == totals.record()["inputs"]
        lineage = totals.lineage()
        assert "orders" == lineage["upstream"][0]["dataset"]
        down = project.dataset("orders").lineage(1)["downstream"]
        assert ["totals"] == [d["dataset"] for d in down]
        assert project.run("totals").ok
        assert [1, 2] == totals.versions()
        assert 1 == totals.to_arrow().num_rows


def test_python_step_with_polars_annotation(make_project: ProjectFactory) -> None:
    """A Python step gets its input as the annotated frame type and returns one."""
    pipeline = """
    name: py
    steps:
      - id: raw
        source: {type: files, path: landing/*.csv}
      - id: doubled
        python: transforms.double:run
        input: raw
      - id: out
        publish: {input: doubled, dataset: doubled}
    """
    module = '''
    import polars as pl

    def run(raw: pl.DataFrame, params) -> pl.DataFrame:
        return raw.with_columns((pl.col("amount") * 2).alias("twice"))
    '''
    root = make_project({"py": pipeline}, {"transforms/__init__.py": "",
                                            "transforms/double.py": module})
    _csv(root / "landing/a.csv", 1, 3)
    with hw.Project(root) as project:
        run = project.run("py")
        assert run.ok, run.error
        table = project.dataset("doubled").to_arrow()
        assert [3.0, 6.0, 9.0] == sorted(table["twice"].to_pylist())


def test_schema_and_stats_are_recorded(make_project: ProjectFactory) -> None:
    """Each version records its schema and row counts; ``schema()`` answers from Delta."""
    root = make_project({"orders": PIPELINE})
    _csv(root / "landing/a.csv", 0, 10)
    with hw.Project(root) as project:
        project.run("orders")
        ds = project.dataset("orders")
        assert ["order_id", "amount"] == ds.schema().names
        assert pa.float64() == ds.schema().field("amount").type
        record = ds.record(1)
        assert 10 == record["rows_added"]
        assert 10 == record["rows_total"]
        assert "order_id" == record["schema"][0]["name"]
        assert 10 == ds.stats(1)["rows"]
