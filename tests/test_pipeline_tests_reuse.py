"""What ``headwater test`` shares between cases to be fast, and what it must not share.

Cases run one after another in sandboxes built at one path, on one SQLAlchemy engine (its
compiled statements outlive a case); each case must still start from an empty store and
warehouse. Statistics are skipped for a sandbox's first versions, but never where a drift
check needs them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from headwater import Project
from headwater.store.store import Store, make_engine
from headwater.testing.run import run_tests
from tests.conftest import ProjectFactory, write

PIPELINE = """
name: sales
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true,
             columns: {id: int64, amount: double}}
  - id: publish
    publish: {input: raw, dataset: sales, mode: merge, key: [id]}
"""

ROWS = "id,amount\n1,2.5\n2,7.25\n"


def _case(root: Path, name: str, extra: str = "") -> Path:
    case = root / "tests" / "sales" / name
    write(case / "inputs" / "raw.csv", ROWS)
    write(case / "expected" / "sales.csv", "id,amount\n1,2.5\n2,7.25\n")
    if extra:
        write(case / "case.yaml", extra)
    return case


def test_cases_on_one_engine_each_start_from_an_empty_store(
        make_project: ProjectFactory) -> None:
    """Two cases with the very same fixture (path, bytes and mtime) both publish every
    row: had the second case seen the first one's store, its incremental source would
    have skipped the file as already ingested."""
    root = make_project(pipelines={"sales": PIPELINE})
    first, second = _case(root, "a"), _case(root, "b")
    stamp = (1_700_000_000, 1_700_000_000)
    for case in (first, second):
        os.utime(case / "inputs" / "raw.csv", stamp)
    with Project(root) as project:
        results = run_tests(project)
    assert [(r.case.name, r.ok, r.error) for r in results] == [
        ("a", True, None), ("b", True, None)]
    assert results[0].run_id != results[1].run_id
    assert not (root / ".headwater").exists() and not (root / "warehouse").exists()


def test_a_store_reopened_on_a_shared_engine_reuses_compiled_statements(
        tmp_path: Path) -> None:
    """A second store file at the same path, opened on the first store's engine, sees
    none of the first file's runs, and its statements come from the compiled cache."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = make_engine(url)
    store = Store(url, engine=engine)
    first = store.create_run("p", code_version="code")
    store.close()
    (tmp_path / "store.db").unlink()
    for leftover in tmp_path.glob("store.db-*"):
        leftover.unlink()
    hits: list[bool] = []

    def seen(_conn: Any, _cursor: Any, _stmt: Any, _params: Any, context: Any,
             _many: bool) -> None:
        if context is not None and getattr(context, "compiled", None) is not None:
            hits.append(context.cache_hit == context.dialect.CACHE_HIT)

    store = Store(url, engine=engine)
    try:
        event.listen(engine, "after_cursor_execute", seen)
        second = store.create_run("p", code_version="code")  # what the first store ran
        event.remove(engine, "after_cursor_execute", seen)
        assert [r["id"] for r in store.runs()] == [second]
    finally:
        store.close()
    assert second != first
    assert hits and all(hits), hits


def test_a_store_refuses_an_engine_of_another_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'one.db'}")
    with pytest.raises(ValueError, match=r"two\.db"):
        Store(f"sqlite:///{tmp_path / 'two.db'}", engine=engine)
    engine.dispose()


def test_without_version_stats_a_first_version_has_no_statistics(
        make_project: ProjectFactory) -> None:
    """``version_stats = False`` (a sandbox) skips the statistics of a version that has no
    previous one; the rows published are the same, and a project with statistics on
    records them."""
    root = make_project(pipelines={"sales": PIPELINE}, files={"landing/a.csv": ROWS})
    with Project(root) as project:
        project.runtime.version_stats = False
        assert project.run("sales").ok
        assert project.dataset("sales").record()["stats"] is None
        rows = project.dataset("sales").to_arrow().to_pylist()
    write(root / "landing" / "b.csv", "id,amount\n3,1.0\n")
    with Project(root) as project:
        assert project.run("sales").ok
        assert project.dataset("sales").record()["stats"]["columns"]
    assert rows == [{"id": 1, "amount": 2.5}, {"id": 2, "amount": 7.25}]


TWICE = """
name: sales
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, columns: {id: int64, amount: double}}
  - id: first
    publish: {input: raw, dataset: sales, mode: overwrite}
  - id: scaled
    sql: SELECT id, amount * 1000 + 5000 AS amount FROM raw
    needs: [first]
  - id: second
    publish: {input: scaled, dataset: sales, mode: overwrite,
              drift: {max_psi: 0.01, on_exceed: fail}}
"""


def test_a_drift_check_between_two_publish_steps_still_runs_in_a_sandbox(
        make_project: ProjectFactory) -> None:
    """The second publish of one dataset compares its statistics with the first's, as in
    a real run: the case that expects the drift failure passes."""
    root = make_project(pipelines={"sales": TWICE})
    case = root / "tests" / "sales" / "drift"
    write(case / "inputs" / "raw.csv", "id,amount\n" + "".join(
        f"{i},{i % 7}.5\n" for i in range(1, 41)))
    write(case / "case.yaml", "expected_error: drift over max_psi\n")
    with Project(root) as project:
        results = run_tests(project)
    assert [(r.ok, r.error) for r in results] == [(True, None)]
