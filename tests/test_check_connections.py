"""``headwater check --connections``: one line per connection, never a secret."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ProjectFactory, run_cli

CANARY = "canary-Pw-5Zq"
PIPELINE = """
name: load
steps:
  - id: raw
    source: {type: sql, connection: maria, table: hw_no_such_table_d1}
  - id: publish
    publish: {input: raw, dataset: items}
"""


@pytest.mark.services
@pytest.mark.slow
def test_wrong_password_fails_without_printing_it(make_project: ProjectFactory) -> None:
    """A rejected login is reported per connection; the password shows up nowhere."""
    settings = f"""
    connections:
      pg: {{type: postgres, url: "postgresql://postgres@127.0.0.1:5432/postgres"}}
      maria: {{type: mysql, url: "mysql://root:${{env:HW_D1_PW}}@127.0.0.1:3306/test"}}
      literal: {{type: postgres, url: "postgresql://hw_nobody:{CANARY}@127.0.0.1:5432/x"}}
      down: {{type: postgres, url: "postgresql://u:{CANARY}@127.0.0.1:1/x"}}
      bus: {{type: nats, url: "nats://127.0.0.1:4222"}}
    """
    root = make_project({"load": PIPELINE}, settings=settings)
    result = run_cli("check", "--connections", "--project", str(root),
                     env={"HW_D1_PW": CANARY})
    output = result.stdout + result.stderr
    assert 1 == result.returncode, output
    assert CANARY not in output
    lines = {line.split(" ")[0]: line for line in output.splitlines() if line.strip()}
    assert ["bus", "down", "literal", "maria", "pg"] == sorted(lines)
    assert "pg (postgres): ok: connect: reachable and authenticated; read SELECT 1: can read" \
        == lines["pg"]
    assert "FAILED" in lines["maria"] and "Access denied" in lines["maria"]
    assert "FAILED" in lines["literal"] and "hw_nobody" in lines["literal"]
    assert "FAILED" in lines["down"] and "Connection refused" in lines["down"]
    assert lines["bus"].startswith("bus (nats): ok: reach: reachable at 127.0.0.1:4222")


@pytest.mark.services
@pytest.mark.slow
def test_can_read_names_the_missing_table(make_project: ProjectFactory) -> None:
    """Authenticated but unable to read a source's table: the JSON report says which."""
    settings = """
    connections:
      maria: {type: mysql, url: "mysql://root@127.0.0.1:3306/test"}
    """
    root = make_project({"load": PIPELINE}, settings=settings)
    result = run_cli("check", "--connections", "--json", "--project", str(root))
    report = json.loads(result.stdout)["connections"][0]
    assert 1 == result.returncode
    assert [("connect", True), ("read hw_no_such_table_d1", False)] == \
        [(c["what"], c["ok"]) for c in report["checks"]]
    assert "doesn't exist" in report["checks"][1]["detail"]
