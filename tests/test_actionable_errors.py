"""Errors a user can act on (issue 8, item 20): file and line, tracebacks, prints, unset env."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.project import Project
from tests.conftest import ProjectFactory, run_cli

TRANSFORM = """\
import pyarrow as pa


def enrich(raw: pa.Table) -> pa.Table:
    print("enriching", raw.num_rows, "rows")
    print("no newline at the end", end="")
    return _helper(raw)


def _helper(raw: pa.Table) -> pa.Table:
    return raw.append_column("ratio", pa.array([1 / 0]))
"""

PY_PIPELINE = """
name: py
steps:
  - id: raw
    sql: SELECT 1 AS n
  - id: enriched
    python: transforms.enrich:enrich
    input: raw
"""


def test_python_failure_names_file_line_and_logs_traceback_and_prints(
        make_project: ProjectFactory) -> None:
    """A transform's ZeroDivisionError: the run error names ``transforms/enrich.py:11``;
    the log holds the traceback through the user's frames and what the code printed."""
    root = make_project({"py": PY_PIPELINE}, files={"transforms/__init__.py": "",
                                                   "transforms/enrich.py": TRANSFORM})
    with Project(root) as proj:
        run = proj.run("py")
        logs = proj.logs(run.id)
    assert "failed" == run.status
    assert "transforms/enrich.py:11" in (run.error or ""), run.error
    assert "ZeroDivisionError" in (run.error or "")
    messages = [(r["step_id"], r["message"]) for r in logs]
    assert ("enriched", "enriching 1 rows") in messages
    assert ("enriched", "no newline at the end") in messages
    [trace] = [m for _s, m in messages if m.startswith("Traceback")]
    assert "enrich.py\", line 7, in enrich" in trace
    assert "enrich.py\", line 11, in _helper" in trace
    assert "headwater/steps" not in trace


SQL_FILE = "-- clean the rows\n-- (two comment lines)\nSELECT n,\n       n + 1 AS m\nFORM raw\n"


def test_sql_file_syntax_error_names_file_and_line(make_project: ProjectFactory) -> None:
    """A syntax error on line 5 of ``sql/clean.sql`` (after two comment lines) says so."""
    root = make_project({"s": """
    name: s
    steps:
      - id: raw
        sql: SELECT 1 AS n
      - id: clean
        sql: sql/clean.sql
        needs: [raw]
    """}, files={"sql/clean.sql": SQL_FILE})
    with Project(root) as proj:
        run = proj.run("s")
    assert "failed" == run.status
    assert "sql/clean.sql:5:" in (run.error or ""), run.error


def test_project_params_resolve_env_references(make_project: ProjectFactory,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``params: {region: "${env:HW_REGION}"}`` in headwater.yaml reaches templates as the
    variable's value (the literal reference used to land in the data)."""
    monkeypatch.setenv("HW_REGION", "eu-north")
    root = make_project({"p": """
    name: p
    steps:
      - id: rows
        sql: SELECT {{ params.region }} AS region
      - id: publish
        publish: {input: rows, dataset: regions}
    """}, settings='params: {region: "${env:HW_REGION}"}\n')
    with Project(root) as proj:
        run = proj.run("p")
        assert "succeeded" == run.status, run.error
        assert [{"region": "eu-north"}] == proj.dataset("regions").to_arrow().to_pylist()


@pytest.mark.slow
def test_check_warns_about_unset_env_variables(make_project: ProjectFactory,
                                               tmp_path: Path) -> None:
    """``headwater check`` names the file and line of an unset ``${env:}``, as a warning
    (exit 0): CI checks projects without their secrets."""
    root = make_project({"p": """
    name: p
    steps:
      - id: rows
        sql: SELECT 1 AS n
    """}, settings="connections:\n  db: {type: postgres, url: \"postgresql://u:${env:"
                   "HW_UNSET_PASSWORD_X}@127.0.0.1/x\"}\n")
    result = run_cli("check", "--project", str(root))
    assert 0 == result.returncode, result.stderr
    assert "headwater.yaml:3: warning: ${env:HW_UNSET_PASSWORD_X}:" in result.stderr
    assert "HW_UNSET_PASSWORD_X" in result.stderr


def test_sql_file_binder_error_names_the_file(make_project: ProjectFactory) -> None:
    """An error DuckDB finds only when binding (an unknown column) names the ``.sql`` file."""
    root = make_project({"s": """
    name: s
    steps:
      - id: raw
        sql: SELECT 1 AS n
      - id: clean
        sql: sql/clean.sql
    """}, files={"sql/clean.sql": "SELECT nosuch\nFROM raw\n"})
    with Project(root) as proj:
        run = proj.run("s")
    assert "failed" == run.status
    assert "sql/clean.sql" in (run.error or ""), run.error
    assert "nosuch" in (run.error or "")


def test_check_reports_bad_param_declarations(make_project: ProjectFactory) -> None:
    """An unknown param type gets a did-you-mean; a default that is not of its declared
    type is named at its line."""
    root = make_project({"p": """
    name: p
    params:
      n: {type: integr, default: 1}
      day: {type: date, default: someday}
    steps:
      - id: rows
        sql: SELECT 1 AS n
    """})
    with Project(root) as proj:
        problems = proj.check()
    assert [("params.n.type", 3), ("params.day.default", 4)] == [
        (p["key"], p["line"]) for p in problems]
    assert "did you mean 'int'" in str(problems[0]["message"])
    assert "param 'day' must be a date" in str(problems[1]["message"])
