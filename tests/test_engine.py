"""Run engine semantics: DAG order, parallelism, retries, timeouts, cancel, reruns."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import headwater as hw
from headwater.config.loader import load_pipeline_file
from headwater.engine.plan import plan, tables_in_sql
from tests.conftest import ProjectFactory, write


def test_plan_finds_sql_tables_and_ignores_ctes() -> None:
    """Dependencies come from DuckDB's parser: CTE names and table functions are no steps."""
    sql = ("WITH x AS (SELECT * FROM raw) SELECT * FROM x JOIN other USING (id) "
           "WHERE id IN (SELECT id FROM read_csv('f.csv'))")
    assert {"raw", "other"} == tables_in_sql(sql)


def test_plan_orders_steps_and_rejects_cycles(make_project: ProjectFactory) -> None:
    """A cycle is a config error naming the file, line and the cycle itself."""
    root = make_project({"p": """
    name: p
    steps:
      - id: a
        sql: SELECT * FROM b
      - id: b
        sql: SELECT * FROM a
    """})
    pf = load_pipeline_file(root / "pipelines/p.yaml", root)
    with pytest.raises(hw.ConfigError) as info:
        plan(pf, root)
    assert "cycle" in info.value.message
    assert "pipelines/p.yaml:3" in info.value.message


def test_unknown_reference_suggests_the_step(make_project: ProjectFactory) -> None:
    """A SQL table that is no step is reported with a did-you-mean."""
    root = make_project({"p": """
    name: p
    steps:
      - id: raw
        sql: SELECT 1 AS x
      - id: clean
        sql: SELECT * FROM rawz
    """})
    pf = load_pipeline_file(root / "pipelines/p.yaml", root)
    with pytest.raises(hw.ConfigError, match="did you mean 'raw'"):
        plan(pf, root)


def _marker_module(root: Path) -> None:
    write(root / "transforms/__init__.py", "")
    write(root / "transforms/t.py", '''
    import os, time, threading
    import pyarrow as pa

    def slow(params):
        start = time.time()
        time.sleep(float(params.get("sleep", 0.6)))
        return pa.table({"t": [start], "end": [time.time()]})

    def flaky(params):
        marker = params["marker"]
        n = 0
        if os.path.exists(marker):
            with open(marker) as handle:
                n = int(handle.read())
        with open(marker, "w") as handle:
            handle.write(str(n + 1))
        if n < 2:
            raise RuntimeError(f"flaky failure {n}")
        return pa.table({"attempts": [n + 1]})

    def boom():
        raise ValueError("bad things")

    def forever():
        time.sleep(30)
    ''')


def test_independent_steps_run_in_parallel(make_project: ProjectFactory,
                                           executor_settings: str) -> None:
    """Two independent steps run at the same time: their busy intervals overlap."""
    root = make_project({"p": """
    name: p
    params: {sleep: 0.6}
    steps:
      - id: a
        python: transforms.t:slow
      - id: b
        python: transforms.t:slow
      - id: both
        sql: SELECT * FROM a UNION ALL SELECT * FROM b
    """}, settings=executor_settings)
    _marker_module(root)
    with hw.Project(root) as project:
        run = project.run("p")
        assert run.ok, run.error
        a, b = project.runtime.store.steps(run.id)[:2]
    assert {"a", "b"} == {a["step_id"], b["step_id"]}
    assert a["started_at"] < b["finished_at"]
    assert b["started_at"] < a["finished_at"]


def test_retries_with_backoff_then_succeed(make_project: ProjectFactory, tmp_path: Path,
                                           executor_settings: str) -> None:
    """A step failing twice with retries: {count: 3} succeeds on its third attempt."""
    root = make_project({"p": """
    name: p
    params: {marker: ""}
    steps:
      - id: f
        python: transforms.t:flaky
        retries: {count: 3, backoff: 10ms}
    """}, settings=executor_settings)
    _marker_module(root)
    with hw.Project(root) as project:
        run = project.run("p", params={"marker": str(tmp_path / "m")})
        assert run.ok, run.error
        attempts = [s for s in project.runtime.store.steps(run.id) if s["step_id"] == "f"]
    assert ["failed", "failed", "succeeded"] == [a["status"] for a in attempts]


def test_step_that_raises_fails_the_run_naming_step_and_cause(
        make_project: ProjectFactory, executor_settings: str) -> None:
    """The run error names the step and the exception; downstream steps are skipped."""
    root = make_project({"p": """
    name: p
    steps:
      - id: b
        python: transforms.t:boom
      - id: after
        sql: SELECT * FROM b
    """}, settings=executor_settings)
    _marker_module(root)
    with hw.Project(root) as project:
        run = project.run("p")
    assert "failed" == run.status
    assert "b" == run.failed_step
    assert "step 'b'" in (run.error or "")
    assert "ValueError: bad things" in (run.error or "")
    assert {"b": "failed", "after": "skipped"} == {s.step_id: s.status for s in run.steps}


def test_timeout_fails_the_step(make_project: ProjectFactory,
                                executor_settings: str) -> None:
    """A command past its timeout is killed and the run says it timed out."""
    root = make_project({"p": """
    name: p
    steps:
      - id: sleepy
        command: sleep 20
        timeout: 500ms
    """}, settings=executor_settings)
    with hw.Project(root) as project:
        started = time.perf_counter()
        run = project.run("p")
    assert "failed" == run.status
    assert "timed out" in (run.error or "")
    assert time.perf_counter() - started < 10


def test_cancel_stops_a_running_run(make_project: ProjectFactory,
                                    executor_settings: str) -> None:
    """``cancel`` from another thread (as the CLI would) ends the run as cancelled."""
    root = make_project({"p": """
    name: p
    steps:
      - id: sleepy
        command: sleep 20
    """}, settings=executor_settings)
    with hw.Project(root) as project:
        run_id = project.queue("p")

        def cancel_soon() -> None:
            time.sleep(1.0)
            project.cancel(run_id)

        threading.Thread(target=cancel_soon).start()
        started = time.perf_counter()
        run = project.execute(run_id)
    assert "cancelled" == run.status
    assert time.perf_counter() - started < 10


def test_rerun_from_failed_reuses_succeeded_steps(make_project: ProjectFactory,
                                                  executor_settings: str) -> None:
    """After fixing a broken step, --from-failed reruns only it and what follows."""
    root = make_project({"p": """
    name: p
    steps:
      - id: first
        python: transforms.t:slow
      - id: second
        sql: SELECT t, 1 / 0 AS broken FROM first WHERE nonexistent
      - id: out
        publish: {input: second, dataset: out}
    """}, settings=executor_settings)
    _marker_module(root)
    with hw.Project(root) as project:
        failed = project.run("p", params={})
        assert "failed" == failed.status
        assert "second" == failed.failed_step
        first_t = project.runtime.store.succeeded_outputs(failed.id)["first"]
        pipeline = (root / "pipelines/p.yaml").read_text()
        (root / "pipelines/p.yaml").write_text(
            pipeline.replace("1 / 0 AS broken FROM first WHERE nonexistent",
                             "2 AS fixed FROM first"))
        project.runtime._pipelines = None
        rerun = project.rerun(failed.id, from_failed=True)
        assert rerun.ok, rerun.error
        statuses = {s.step_id: s.status for s in rerun.steps}
        assert {"first": "reused", "second": "succeeded", "out": "succeeded"} == statuses
        assert first_t["relation"] == project.runtime.store.succeeded_outputs(
            rerun.id)["first"]["relation"]


def test_from_step_reuses_upstream_outputs(make_project: ProjectFactory,
                                           executor_settings: str) -> None:
    """``run --from-step`` takes upstream outputs from the last run that had them."""
    root = make_project({"p": """
    name: p
    steps:
      - id: first
        python: transforms.t:slow
      - id: second
        sql: SELECT t FROM first
    """}, settings=executor_settings)
    _marker_module(root)
    with hw.Project(root) as project:
        assert project.run("p").ok
        again = project.run("p", from_step="second")
        assert again.ok, again.error
        assert {"first": "reused", "second": "succeeded"} == {
            s.step_id: s.status for s in again.steps}
        with pytest.raises(hw.HeadwaterError, match="did you mean 'second'"):
            project.run("p", from_step="secnd")


def test_views_exist_for_every_step_a_later_step_may_read(
        make_project: ProjectFactory) -> None:
    """Only outputs some step may read get a DuckDB view (issue 12), yet every read works:
    SQL naming a step, and Python code querying any step upstream of it through its
    context's cursor, even one its input merely ``needs``."""
    root = make_project({"p": """
    name: p
    steps:
      - id: a
        sql: SELECT 41 AS x
      - id: b
        sql: SELECT 1 AS y
        needs: [a]
      - id: c
        python: transforms.reads:upstream_of_input
        input: b
      - id: d
        sql: SELECT x + y AS z FROM c
    """})
    write(root / "transforms/__init__.py", "")
    write(root / "transforms/reads.py", '''
    import pyarrow as pa

    def upstream_of_input(b, context):
        x = context.cursor().execute("SELECT x FROM a").fetchall()[0][0]
        return pa.table({"x": [x], "y": b.column("y").to_pylist()})
    ''')
    pf = load_pipeline_file(root / "pipelines/p.yaml", root)
    dag = plan(pf, root)
    assert {"a", "b", "c"} == dag.read_by_others()  # d is a leaf: nothing reads it
    assert () == (dag.reads or {})["b"]  # b needs a but its SQL reads nothing
    with hw.Project(root) as project:
        run = project.run("p")
        assert run.ok, run.error
        outputs = project.runtime.store.succeeded_outputs(run.id)
    import duckdb

    from headwater.steps.base import StepOutput

    c = StepOutput.from_json(outputs["c"]).relation
    assert [(41, 1)] == duckdb.connect().execute(c).fetchall()  # c read a through the view
    assert {"a", "b", "c", "d"} == set(outputs)


def test_timeout_interrupts_a_long_query(make_project: ProjectFactory,
                                        executor_settings: str) -> None:
    """A SQL step past its timeout is interrupted (on Dask: on its worker) and the run
    says it timed out, long before the query would have ended."""
    root = make_project({"p": """
    name: p
    steps:
      - id: heavy
        sql: SELECT sum(hash(i)) AS h FROM range(20000000000) t(i)
        materialize: true
        timeout: 500ms
    """}, settings=executor_settings)
    with hw.Project(root) as project:
        started = time.perf_counter()
        run = project.run("p")
    assert "failed" == run.status
    assert "timed out after 0.5s" in (run.error or "")
    assert time.perf_counter() - started < 8


def test_cancel_interrupts_a_long_query(make_project: ProjectFactory,
                                        executor_settings: str) -> None:
    """``cancel`` reaches a running SQL step (on Dask: on its worker): the run ends
    cancelled long before the query would have."""
    root = make_project({"p": """
    name: p
    steps:
      - id: heavy
        sql: SELECT sum(hash(i)) AS h FROM range(20000000000) t(i)
        materialize: true
    """}, settings=executor_settings)
    with hw.Project(root) as project:
        run_id = project.queue("p")
        threading.Timer(1.0, project.cancel, args=(run_id,)).start()
        started = time.perf_counter()
        run = project.execute(run_id)
    assert "cancelled" == run.status
    assert time.perf_counter() - started < 10
