"""DuckDB spills past its memory limit into ``.headwater/spill``; the folder must exist."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ProjectFactory, run_cli

BIG_SORT = """
name: big
steps:
  - id: gen
    sql: "SELECT range AS id, md5(range::VARCHAR) AS s FROM range(1500000) ORDER BY s"
  - id: publish
    publish: {input: gen, dataset: big}
"""


@pytest.mark.slow
@pytest.mark.parametrize("memory", ["64MB", "48MB"])
def test_a_step_that_spills_succeeds_on_a_fresh_project(make_project: ProjectFactory,
                                                        memory: str) -> None:
    """A large sort under a tiny memory limit spills to disk: the run succeeds (no
    'Failed to create directory .headwater/spill/...') and every row is published. At
    48MB (64MB on a busy machine) DuckDB's COPY of the publish runs out of memory, and
    the publish goes through the streaming Arrow path instead, which bears it."""
    root = make_project({"big": BIG_SORT})
    assert not (root / ".headwater" / "spill").exists()
    done = run_cli("run", "big", cwd=root, env={"HEADWATER_DUCKDB_MEMORY": memory})
    assert 0 == done.returncode, done.stderr[-2000:]
    spilled = list((root / ".headwater" / "spill").iterdir())
    assert 1 == len(spilled)  # one folder of this process's database: it did spill
    shown = run_cli("dataset", "show", "big", "--json", cwd=root)
    assert 0 == shown.returncode, shown.stderr
    assert 1500000 == json.loads(shown.stdout)["rows_total"]
