"""Typed params, and template values that reach SQL and shell text only as data (issue 8, 14-15)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from headwater.config.params import specs
from headwater.config.templates import render_shell, render_sql
from headwater.exceptions import ParamError
from headwater.project import Project, coerce_params
from tests.conftest import ProjectFactory, run_cli, write

SECRET_FILE_TEXT = "TOP-SECRET-CONTENT-42"
TOKEN = "hook-token-xyz"


def _exfiltration(path: Path) -> str:
    return f"0 AND CAST((SELECT content FROM read_text('{path}')) AS INTEGER)=1"


PIPELINE = """
name: orders
params:
  min_amount: 0
  country: DE
  day: {type: date, default: "2026-01-01"}
  note: null
triggers:
  - webhook: {token: "TOKEN"}
steps:
  - id: raw
    source: {type: files, path: landing/*.csv}
  - id: clean
    sql: >-
      SELECT *, {{ params.day }} AS day, '{{ params.note }}' AS note FROM raw
      WHERE amount >= {{ params.min_amount }} AND country = {{ params.country }}
  - id: publish
    publish: {input: clean, dataset: orders, mode: overwrite}
""".replace("TOKEN", TOKEN)


@pytest.fixture
def project(make_project: ProjectFactory, tmp_path: Path) -> Path:
    root = make_project({"orders": PIPELINE})
    write(root / "landing/a.csv", "order_id,amount,country\n1,10.5,DE\n2,3.0,FR\n3,7.0,DE\n")
    write(tmp_path / "outside/secret.txt", SECRET_FILE_TEXT)
    return root


def _rows(root: Path) -> list[dict[str, Any]]:
    with Project(root) as proj:
        return proj.dataset("orders").to_arrow().sort_by("order_id").to_pylist()


def test_param_types_come_from_defaults_or_explicit_declarations() -> None:
    """``{min: 0}`` is an int, ``{day: {type: date}}`` a date; text is coerced to the type."""
    declared = {"n": 0, "x": 1.5, "flag": False, "name": "a", "day": dt.date(2026, 1, 1),
                "at": {"type": "timestamp"}, "free": None}
    given = {"n": "12", "x": "2", "flag": "yes", "name": 7, "day": "2026-12-02",
             "at": "2026-12-02T10:00:00Z", "free": "3"}
    expected = {"n": 12, "x": 2.0, "flag": True, "name": "7", "day": "2026-12-02",
                "at": "2026-12-02T10:00:00+00:00", "free": 3}
    assert expected == coerce_params(declared, given, "p")
    assert "date" == specs(declared)["day"].type


@pytest.mark.parametrize(("declared", "value", "words"), [
    ({"n": 0}, "1 OR 1=1", ["'n'", "int", "1 OR 1=1"]),
    ({"x": 0.5}, float("inf"), ["'x'", "float", "infinity"]),
    ({"day": {"type": "date"}}, "tomorrow", ["'day'", "date", "tomorrow"]),
    ({"free": None}, [1, {"a": 1}], ["'free'"]),
])
def test_a_value_of_the_wrong_type_is_rejected_naming_param_value_and_type(
        declared: dict[str, Any], value: Any, words: list[str]) -> None:
    """A wrong value is a ParamError that names the param, the value and the type."""
    with pytest.raises(ParamError) as info:
        coerce_params(declared, {next(iter(declared)): value}, "p")
    assert all(word in info.value.message for word in words), info.value.message


def test_sql_rendering_makes_every_value_a_typed_literal() -> None:
    """Numbers stay numbers, text is one quoted literal, dates are DATE '…', None is NULL;
    inside a quoted string or a comment a value cannot close the quote or the comment."""
    values = {"params": {"n": 5, "s": "x' OR '1'='1", "d": dt.date(2026, 12, 2), "z": None,
                         "t": "my col", "c": "a\nDROP TABLE t"}}
    sql = ("SELECT {{ params.n }}, {{ params.s }}, {{ params.d }}, {{ params.z }}, "
           "'{{ params.s }}', {{ params.t | sql_identifier }} -- {{ params.c }}")
    expected = ("SELECT 5, 'x'' OR ''1''=''1', DATE '2026-12-02', NULL, "
                "'x'' OR ''1''=''1', \"my col\" -- 'a DROP TABLE t'")
    assert expected == render_sql(sql, values)
    assert "echo 'hi; touch FILE'" == render_shell("echo {{ params.s }}",
                                                   {"params": {"s": "hi; touch FILE"}})


@pytest.mark.slow
def test_cli_param_cannot_read_a_server_file(project: Path, tmp_path: Path) -> None:
    """The exfiltration value from issue 8 is rejected for an int param (exit 2, naming it)
    and is a harmless text value for a string param: the file is never read."""
    attack = _exfiltration(tmp_path / "outside/secret.txt")
    as_int = run_cli("run", "orders", "-p", f"min_amount={attack}", "--project", str(project))
    assert 2 == as_int.returncode
    assert "param 'min_amount' must be an int" in as_int.stderr
    assert "Traceback" not in as_int.stderr
    as_text = run_cli("run", "orders", "-p", f"country={attack}", "-p", "day=2026-12-02",
                      "--project", str(project))
    assert 0 == as_text.returncode, as_text.stderr
    assert SECRET_FILE_TEXT not in as_text.stdout + as_text.stderr
    assert [] == _rows(project)


@pytest.mark.slow
def test_cli_date_param_and_quoted_template_values(project: Path) -> None:
    """``-p day=2026-12-02`` works (no traceback) and lands as a DATE; a value inside the
    template's own quotes is escaped, so a quote in it is data."""
    result = run_cli("run", "orders", "-p", "day=2026-12-02", "-p", "note=it's",
                     "-p", "min_amount=5", "--project", str(project))
    assert 0 == result.returncode, result.stderr
    rows = _rows(project)
    assert [1, 3] == [r["order_id"] for r in rows]
    assert {(dt.date(2026, 12, 2), "it's")} == {(r["day"], r["note"]) for r in rows}


@pytest.fixture
def client(project: Path) -> Iterator[tuple[TestClient, Project]]:
    from headwater.server.app import create_app
    from headwater.server.service import Server

    proj = Project(project)
    with TestClient(create_app(Server(proj.runtime)), base_url="http://127.0.0.1") as http:
        yield http, proj
    proj.close()


def test_webhook_body_cannot_read_a_server_file(client: tuple[TestClient, Project],
                                                tmp_path: Path) -> None:
    """The same exfiltration value in a webhook body: 422 for the int param; as text it
    queues a run that reads nothing outside the project."""
    http, proj = client
    auth = {"Authorization": f"Bearer {TOKEN}"}
    attack = _exfiltration(tmp_path / "outside/secret.txt")
    bad = http.post("/api/pipelines/orders/trigger", headers=auth,
                    json={"params": {"min_amount": attack}})
    assert 422 == bad.status_code
    assert "min_amount" in bad.json()["detail"]
    ok = http.post("/api/pipelines/orders/trigger", headers=auth,
                   json={"params": {"country": attack, "day": "2026-12-02"}})
    assert 202 == ok.status_code, ok.text
    run = proj.execute(ok.json()["run_id"])
    assert "succeeded" == run.status, run.error
    assert SECRET_FILE_TEXT not in str(proj.logs(run.id))
    assert [] == _rows(proj.root)


def test_webhook_date_param_is_accepted(client: tuple[TestClient, Project]) -> None:
    """``{"params": {"day": "2026-12-02"}}`` queues a run (issue 8, 15: it was a 500)."""
    http, proj = client
    answer = http.post("/api/pipelines/orders/trigger",
                       headers={"Authorization": f"Bearer {TOKEN}"},
                       json={"params": {"day": "2026-12-02", "note": "2026-12-02"}})
    assert 202 == answer.status_code, answer.text
    assert {"day": "2026-12-02", "note": "2026-12-02"} == proj.get_run(
        answer.json()["run_id"]).params


COMMAND_PIPELINE = """
name: shell
params: {note: hello}
triggers:
  - webhook: {token: "TOKEN"}
steps:
  - id: say
    command: "echo {{ params.note }} > said.txt"
""".replace("TOKEN", TOKEN)


def test_command_step_param_is_one_shell_word(make_project: ProjectFactory) -> None:
    """A webhook-style param ``hi; touch FILE`` is echoed, not executed (issue 8, 14)."""
    root = make_project({"shell": COMMAND_PIPELINE})
    with Project(root) as proj:
        run = proj.run("shell", params={"note": "hi; touch PWNED"})
    assert "succeeded" == run.status, run.error
    assert not (root / "PWNED").exists()
    assert "hi; touch PWNED\n" == (root / "said.txt").read_text()


def test_sql_steps_cannot_read_outside_the_project(make_project: ProjectFactory,
                                                   tmp_path: Path) -> None:
    """A run's DuckDB reads the project, its warehouse and declared sources only:
    ``read_text`` of a file elsewhere fails the step without its content."""
    secret = write(tmp_path / "elsewhere/secret.txt", SECRET_FILE_TEXT)
    root = make_project({"peek": f"""
    name: peek
    steps:
      - id: look
        sql: SELECT content FROM read_text('{secret}')
    """})
    with Project(root) as proj:
        run = proj.run("peek")
    assert "failed" == run.status
    assert "Permission Error" in (run.error or ""), run.error
    assert "HEADWATER_DUCKDB_ALLOWED" in (run.error or "")
    assert SECRET_FILE_TEXT not in (run.error or "")


def test_confined_database_cannot_be_widened_again(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The confinement is locked: no SQL can switch external access back on or widen the
    allowed folders, and a pooled database is only reused under the same confinement."""
    import duckdb

    from headwater.engine import duckdb_pool

    monkeypatch.setattr(duckdb_pool, "_POOL", [])  # earlier in-process runs may fill it

    allowed = (str(tmp_path) + "/",)
    db = duckdb_pool.acquire(tmp_path / "spill", allowed)
    for statement in ("SET enable_external_access = true",
                      "SET allowed_directories = ['/']", "SET lock_configuration = false"):
        with pytest.raises(duckdb.Error):
            db.execute(statement)
    duckdb_pool.release(db)
    other = duckdb_pool.acquire(tmp_path / "spill", None)
    assert other is not db
    assert db is duckdb_pool.acquire(tmp_path / "spill", allowed)
    duckdb_pool.release(other)
    duckdb_pool.release(db)


TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(TEXT, st.integers(-2**63, 2**63 - 1),
                       st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                       st.dates(), st.none(), st.lists(TEXT, max_size=3)))
def test_any_value_round_trips_through_sql_as_data(value: Any) -> None:
    """Whatever a param holds, DuckDB reads it back as that one value: rendered bare, inside
    the template's quotes, or in a comment, it never becomes SQL (hypothesis)."""
    con = duckdb.connect()
    variables = {"params": {"v": value}}
    bare = con.sql(render_sql("SELECT {{ params.v }} AS v -- {{ params.v }}\n, 1 AS one",
                              variables)).fetchall()
    assert [(value, 1)] == bare
    if isinstance(value, str):
        quoted = con.sql(render_sql("SELECT '{{ params.v }}' AS v /* {{ params.v }} */",
                                    variables)).fetchall()
        assert [(value,)] == quoted
