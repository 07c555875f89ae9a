"""A plain ``headwater run`` loads only what its steps need (issue 12: lean process start).

Structural, not timed: a subprocess runs a pipeline of SQL steps through the real CLI app
and reports ``sys.modules``; the server, web, HTTP-client and template stacks, the step
kinds the pipeline does not use, and Alembic once the store exists, must not be among them.
Each was seen costing 50-250 ms of a run's start-up before it was made lazy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ProjectFactory, run_cli

SQL_ONLY = """
name: lean
steps:
  - id: first
    sql: SELECT 1 AS x
  - id: second
    sql: SELECT x + 1 AS y FROM first
"""

PUBLISH = """
name: pub
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true}
  - id: out
    publish: {input: raw, dataset: pub}
"""

PROBE = r"""
import json, os, sys
from headwater.cli.main import app
app(["run", sys.argv[2], "--project", sys.argv[1], "--log-format", "json"],
    standalone_mode=False)
sys.stdout.write("\nMODULES " + json.dumps(sorted(sys.modules)) + "\n")
sys.stdout.flush()
os._exit(0)
"""

NOT_FOR_A_SQL_RUN = (
    "fastapi", "starlette", "uvicorn", "httpx", "jinja2", "pandas", "alembic",
    "pyarrow", "numpy", "deltalake", "headwater.datasets.publish",
    "pyarrow.compute", "sqlalchemy.dialects.postgresql",
    "headwater.server", "headwater.triggers", "headwater.connectors.files",
    "headwater.connectors.http", "headwater.steps.source", "headwater.steps.http",
    "headwater.steps.validate", "headwater.steps.python", "headwater.datasets.version_stats",
)


def _heavy(loaded: list[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in names))


def _modules_after(args: list[str]) -> list[str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ))
    assert 0 == result.returncode, result.stderr
    assert "succeeded" in result.stdout, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("MODULES "))
    loaded: list[str] = json.loads(line.removeprefix("MODULES "))
    return loaded


def test_a_sql_run_imports_no_server_http_or_template_stack(
        make_project: ProjectFactory) -> None:
    root = make_project({"lean": SQL_ONLY})
    first = run_cli("run", "lean", "--project", str(root))  # creates the store (Alembic)
    assert 0 == first.returncode, first.stderr
    loaded = _modules_after([str(root), "lean"])
    assert "duckdb" in loaded and "headwater.steps.sql" in loaded  # the probe really ran
    assert [] == _heavy(loaded, NOT_FOR_A_SQL_RUN)


def test_a_file_publish_imports_neither_pandas_nor_httpx(
        make_project: ProjectFactory) -> None:
    """pyarrow imports pandas whenever it converts Python objects (even the arro3 table of
    Delta's add actions through ``pa.table``); a publish reads them through the C stream."""
    root = make_project({"pub": PUBLISH}, files={"landing/a.csv": "id,amount\n1,2.5\n"})
    loaded = _modules_after([str(root), "pub"])  # the first version: creates the table
    assert "deltalake" in loaded and "headwater.datasets.version_stats" in loaded
    assert [] == _heavy(loaded, ("pandas", "httpx", "headwater.server", "jinja2"))
    (root / "landing/b.csv").write_text("id,amount\n2,3.5\n")
    loaded = _modules_after([str(root), "pub"])  # an incremental append with statistics
    assert [] == _heavy(loaded, ("pandas", "httpx", "headwater.server", "jinja2"))


def test_a_run_that_quarantines_rows_imports_no_pandas(make_project: ProjectFactory) -> None:
    """The rejected rows of a CSV scan become an Arrow table without ``pa.table(dict)``,
    which imports pandas (~0.4 s of every ``headwater test`` with a bad-row fixture)."""
    pipeline = PUBLISH.replace("incremental: true}", "incremental: true, bad_rows: quarantine,"
                               " columns: {id: int64, amount: double}}")
    root = make_project({"pub": pipeline},
                        files={"landing/a.csv": "id,amount\n1,2.5\n2,not-a-number\n"})
    loaded = _modules_after([str(root), "pub"])
    assert "headwater.connectors.rejects" in loaded  # the row really was rejected
    assert [] == _heavy(loaded, ("pandas",))


SERVE_PROBE = r"""
import http.client, json, os, socket, sys, threading, time

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]


def probe():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/api/health")
            if conn.getresponse().status == 200:
                sys.stdout.write("\nMODULES " + json.dumps(sorted(sys.modules)) + "\n")
                sys.stdout.flush()
                os._exit(0)
        except OSError:
            pass
        time.sleep(0.02)
    os._exit(3)


threading.Thread(target=probe, daemon=True).start()
from headwater.cli.main import app
app(["serve", "--port", str(port), "--project", sys.argv[1]], standalone_mode=False)
"""

NOT_BEFORE_HEALTH = ("pyarrow", "duckdb", "deltalake", "pandas", "numpy", "httpx",
                     "ruamel", "headwater.datasets.dataset", "headwater.steps.waits")


def test_serve_answers_health_before_loading_the_data_stack(
        make_project: ProjectFactory) -> None:
    """`serve` is ready (``/api/health`` 200) before Arrow, DuckDB, Delta, the HTTP client
    or the builder's YAML round-tripper load: they come with the first run or page that
    needs them (issue 12: serve cold start)."""
    root = make_project({"lean": SQL_ONLY})
    assert 0 == run_cli("check", "--project", str(root)).returncode  # creates the store
    result = subprocess.run([sys.executable, "-c", SERVE_PROBE, str(root)],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert 0 == result.returncode, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("MODULES "))
    loaded: list[str] = json.loads(line.removeprefix("MODULES "))
    # the answer came from serve's listener; the full API may still be building beside it
    # (``server.starting``), so whether FastAPI is loaded yet is a race, not asserted
    assert "headwater.server.starting" in loaded and "uvicorn" in loaded
    assert [] == _heavy(loaded, NOT_BEFORE_HEALTH)


def test_the_cli_module_loads_no_engine_or_server() -> None:
    """`headwater --help` and every command start from here: commands import what they
    need inside themselves, so the CLI module alone loads none of the heavy stacks."""
    result = subprocess.run(
        [sys.executable, "-c", "import json, sys, headwater.cli.main; "
                               "print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert 0 == result.returncode, result.stderr
    loaded: list[str] = json.loads(result.stdout)
    assert "typer" in loaded
    assert [] == _heavy(loaded, (*NOT_BEFORE_HEALTH, "fastapi", "uvicorn", "sqlalchemy",
                                 "pydantic", "headwater.engine", "headwater.server",
                                 "headwater.project"))
