"""``headwater test``: fixture cases run in a sandbox and compared row by row."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ProjectFactory, run_cli, write

PIPELINE = """
name: sales
params: {min_amount: 0}
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true, bad_rows: quarantine,
             columns: {id: int64, amount: double}}
  - id: clean
    sql: SELECT id, amount FROM raw WHERE amount >= {{ params.min_amount }}
  - id: publish
    publish: {input: clean, dataset: sales, mode: merge, key: [id]}
"""


def _project(make_project: ProjectFactory) -> Path:
    root = make_project(pipelines={"sales": PIPELINE},
                        files={"landing/real.csv": "id,amount\n100,1.0\n"})
    case = root / "tests" / "sales" / "basic"
    write(case / "case.yaml", "params: {min_amount: 5}\n")
    write(case / "inputs" / "raw.csv", "id,amount\n1,2.5\n2,7.25\n3,x\n4,10\n")
    write(case / "expected" / "sales.csv", "id,amount\n2,7.25\n4,10.0\n")
    write(case / "expected" / "sales__rejected.csv",
          "_step,_source,_error,_row\n")
    return root


@pytest.mark.slow
def test_case_passes_and_never_touches_the_project(make_project: ProjectFactory) -> None:
    """A passing case prints PASS and '1 passed, 0 failed', exits 0, and the project's
    own store, warehouse and landing files are untouched (the case read its fixture)."""
    root = _project(make_project)
    write(root / "tests" / "sales" / "basic" / "expected" / "sales__rejected.csv",
          "_step,_source,_error,_row\nraw,inputs/raw.csv:4,"
          "column amount: cannot convert 'x' to DOUBLE,"
          '"{""id"": ""3"", ""amount"": ""x""}"\n')
    result = run_cli("test", "--project", str(root))
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "PASS sales/basic" in result.stdout
    assert "1 passed, 0 failed" == result.stdout.strip().splitlines()[-1]
    assert not (root / ".headwater").exists()
    assert not (root / "warehouse").exists()
    assert ["real.csv"] == sorted(p.name for p in (root / "landing").iterdir())


@pytest.mark.slow
def test_failing_case_shows_row_diff_junit_and_update(make_project: ProjectFactory,
                                                      tmp_path: Path) -> None:
    """A wrong expectation fails (exit 1) naming missing/unexpected rows by key, writes a
    JUnit failure; --update rewrites the expectation and the case then passes."""
    root = _project(make_project)
    write(root / "tests" / "sales" / "basic" / "expected" / "sales.csv",
          "id,amount\n2,7.25\n5,1.0\n")
    junit = tmp_path / "report.xml"
    failed = run_cli("test", "sales", "--junit", str(junit), "--project", str(root))
    assert 1 == failed.returncode, failed.stdout + failed.stderr
    assert "FAIL sales/basic" in failed.stdout
    assert "sales: 1 missing row(s); 1 unexpected row(s)" in failed.stdout
    assert "0 passed, 1 failed" == failed.stdout.strip().splitlines()[-1]
    assert 'failures="1"' in junit.read_text(encoding="utf-8")
    updated = run_cli("test", "sales/basic", "--update", "--project", str(root))
    assert 0 == updated.returncode, updated.stdout + updated.stderr
    expected = root / "tests" / "sales" / "basic" / "expected"
    assert "id,amount\n2,7.25\n4,10.0\n" == (expected / "sales.csv").read_text()
    assert "inputs/raw.csv:4" in (expected / "sales__rejected.csv").read_text()
    again = run_cli("test", "--project", str(root))
    assert 0 == again.returncode, again.stdout + again.stderr


def test_expectation_for_a_dataset_not_published_is_a_project_error(
        make_project: ProjectFactory) -> None:
    """An expectation naming a dataset the pipeline does not publish: exit 2, the file."""
    root = _project(make_project)
    write(root / "tests" / "sales" / "basic" / "expected" / "salez.csv", "id\n1\n")
    result = run_cli("test", "--project", str(root))
    assert 2 == result.returncode
    assert "salez.csv" in result.stderr
    assert "does not publish dataset 'salez'" in result.stderr


def test_missing_fixture_names_the_step(make_project: ProjectFactory) -> None:
    """A case without a fixture for a source step says which file to add (exit 2)."""
    root = _project(make_project)
    (root / "tests" / "sales" / "basic" / "inputs" / "raw.csv").unlink()
    result = run_cli("test", "--project", str(root))
    assert 2 == result.returncode
    assert "no fixture for source step 'raw'" in result.stderr
    assert "inputs/raw.csv" in result.stderr


def test_unknown_case_key_names_file_and_key(make_project: ProjectFactory) -> None:
    """A typo in case.yaml is an error naming the file and the key."""
    root = _project(make_project)
    write(root / "tests" / "sales" / "basic" / "case.yaml", "parms: {min_amount: 5}\n")
    result = run_cli("test", "--project", str(root))
    assert 2 == result.returncode
    assert "case.yaml: parms: unknown key" in result.stderr


@pytest.mark.slow
def test_init_scaffolds_a_passing_case(tmp_path: Path) -> None:
    """'headwater init' writes tests/orders/basic/, and 'headwater test' passes on it."""
    created = run_cli("init", str(tmp_path / "shop"))
    assert 0 == created.returncode, created.stderr
    result = run_cli("test", "--project", str(tmp_path / "shop"))
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "1 passed, 0 failed" in result.stdout


def test_fixture_in_an_unknown_format_names_the_file(make_project: ProjectFactory) -> None:
    """inputs/raw.xlsx is not read as 'no fixture': the error names the file and the
    formats a fixture may have (exit 2)."""
    root = _project(make_project)
    inputs = root / "tests" / "sales" / "basic" / "inputs"
    (inputs / "raw.csv").rename(inputs / "raw.xlsx")
    result = run_cli("test", "--project", str(root))
    assert 2 == result.returncode, result.stdout
    assert "inputs/raw.xlsx: unknown fixture format '.xlsx' for source step 'raw'" \
        in result.stderr
    assert ".csv, .json, .ndjson, .jsonl, .parquet" in result.stderr


def test_fixture_for_a_step_that_is_not_a_source_names_the_file(
        make_project: ProjectFactory) -> None:
    """A misspelt fixture (inputs/rwa.csv) would be silently ignored; it is an error."""
    root = _project(make_project)
    write(root / "tests" / "sales" / "basic" / "inputs" / "rwa.csv", "id,amount\n1,2\n")
    result = run_cli("test", "--project", str(root))
    assert 2 == result.returncode, result.stdout
    assert "inputs/rwa.csv: no source step 'rwa' in pipeline 'sales' (its source steps: raw)" \
        in result.stderr


def test_fixture_with_unreadable_content_fails_the_case_naming_it(
        make_project: ProjectFactory) -> None:
    """A fixture whose content is not its format (broken JSON, a CSV named .parquet)
    fails the case (exit 1) with the reader's error naming the fixture file."""
    root = _project(make_project)
    inputs = root / "tests" / "sales" / "basic" / "inputs"
    (inputs / "raw.csv").unlink()
    write(inputs / "raw.parquet", "id,amount\n1,2.5\n")
    result = run_cli("test", "--project", str(root))
    assert 1 == result.returncode, result.stdout + result.stderr
    flat = " ".join(result.stdout.split())
    assert "inputs/raw.parquet: not a valid Parquet file" in flat
    assert "0 passed, 1 failed" == result.stdout.strip().splitlines()[-1]


def test_test_command_with_an_unknown_environment_or_overlay_key(
        make_project: ProjectFactory) -> None:
    """'headwater test --env' names headwater.yaml and the key for a typo in the
    environment's name and for an overlay key that does not exist (exit 2)."""
    root = _project(make_project)
    (root / "headwater.yaml").write_text("name: proj\nenvironments:\n  qa: {}\n")
    unknown = run_cli("test", "--env", "qaa", "--project", str(root))
    assert 2 == unknown.returncode
    assert "headwater.yaml" in unknown.stderr and "environments.qaa" in unknown.stderr
    (root / "headwater.yaml").write_text("name: proj\nenvironments:\n  qa: {parms: {}}\n")
    typo = run_cli("test", "--env", "qa", "--project", str(root))
    assert 2 == typo.returncode
    assert "headwater.yaml:3: environments.qa.parms" in typo.stderr


def test_a_case_holds_only_the_pipeline_under_test(make_project: ProjectFactory) -> None:
    """Other pipelines are not copied into the sandbox (they would read real sources): a
    run_pipeline step fails the case naming the missing pipeline, and nothing ran."""
    root = _project(make_project)
    write(root / "pipelines" / "other.yaml", """
        name: other
        steps:
          - id: raw
            source: {type: files, path: landing/*.csv}
          - id: publish
            publish: {input: raw, dataset: other}
        """)
    write(root / "pipelines" / "sales.yaml", PIPELINE + """
  - id: kick
    run_pipeline: {pipeline: other}
    needs: [publish]
""")
    result = run_cli("test", "--project", str(root))
    assert 1 == result.returncode, result.stdout + result.stderr
    assert "no pipeline 'other'" in " ".join(result.stdout.split())
    assert not (root / ".headwater").exists() and not (root / "warehouse").exists()
