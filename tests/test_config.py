"""Configuration: every error names file, line and key; secrets never leak."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import headwater as hw
from headwater.config.models import parse_duration
from headwater.config.schema import render
from headwater.config.secrets import REDACTOR, resolve
from tests.conftest import ProjectFactory


def _problems(root: Path) -> list[dict[str, object]]:
    with hw.Project(root) as project:
        return project.check()


def test_typo_in_a_key_names_line_and_suggests(make_project: ProjectFactory) -> None:
    """``incremntal`` is reported at its line with a did-you-mean for ``incremental``."""
    root = make_project({"p": """
    name: p
    steps:
      - id: raw
        source:
          type: files
          path: x/*.csv
          incremntal: true
    """})
    [problem] = _problems(root)
    assert "pipelines/p.yaml" == problem["file"]
    assert 7 == problem["line"]
    assert "steps[0].source.incremntal" == problem["key"]
    assert "did you mean 'incremental'" in str(problem["message"])


def test_unknown_step_kind_and_missing_required(make_project: ProjectFactory) -> None:
    """A misspelt step kind is named with a suggestion; a missing key is 'required'."""
    root = make_project({"p": """
    name: p
    steps:
      - id: a
        sqll: SELECT 1
      - id: b
        publish: {dataset: d}
    """})
    problems = _problems(root)
    messages = {str(p["key"]): str(p["message"]) for p in problems}
    assert "did you mean 'sql'" in messages["steps[0].sqll"]
    assert "required key is missing" == messages["steps[1].publish.input"]
    assert {4, 6} == {p["line"] for p in problems}


def test_yaml_syntax_error_has_a_line(make_project: ProjectFactory) -> None:
    """Broken YAML is one problem with the line the parser stopped at."""
    root = make_project({"p": "name: p\nsteps:\n  - id: a\n    sql: [unclosed\n"})
    [problem] = _problems(root)
    assert "invalid YAML" in str(problem["message"])
    assert isinstance(problem["line"], int)


def test_reference_to_missing_step(make_project: ProjectFactory) -> None:
    """A publish whose input is no step is an error at the input's line."""
    root = make_project({"p": """
    name: p
    steps:
      - id: clean
        sql: SELECT 1 AS x
      - id: out
        publish: {input: cleen, dataset: d}
    """})
    [problem] = _problems(root)
    assert "unknown step 'cleen'; did you mean 'clean'?" == problem["message"]
    assert 6 == problem["line"]


def test_invalid_cron_and_timezone(make_project: ProjectFactory) -> None:
    """check validates cron expressions and time zones."""
    root = make_project({"p": """
    name: p
    triggers:
      - schedule: {cron: "61 * * * *", timezone: Mars/Olympus}
    steps:
      - id: a
        sql: SELECT 1 AS x
    """})
    [problem] = _problems(root)
    assert "time zone" in str(problem["message"])


def test_project_file_errors(tmp_path: Path) -> None:
    """A bad headwater.yaml raises ConfigError naming the file and key."""
    (tmp_path / "headwater.yaml").write_text("name: x\nmax_concurrent_runs: zero\n")
    with pytest.raises(hw.ConfigError, match=r"headwater.yaml:2: max_concurrent_runs:"):
        hw.Project(tmp_path)


def test_secrets_resolve_late_and_are_redacted(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """A resolved ${env:...} value is masked wherever text passes through the redactor."""
    monkeypatch.setenv("HW_TEST_SECRET", "s3cr3t-value-42")
    (tmp_path / "key.txt").write_text("file-secret-99\n")
    url = resolve("postgresql://app:${env:HW_TEST_SECRET}@h/db", tmp_path)
    assert "postgresql://app:s3cr3t-value-42@h/db" == url
    assert "file-secret-99" == resolve("${file:key.txt}", tmp_path)
    assert "connect to postgresql://app:***@h/db failed" == REDACTOR(f"connect to {url} failed")
    assert {"a": ["***"]} == REDACTOR.deep({"a": ["file-secret-99"]})
    with pytest.raises(hw.ConfigError, match="HW_TEST_MISSING is not set"):
        resolve("${env:HW_TEST_MISSING}")


def test_schema_file_matches_models() -> None:
    """The committed JSON Schema is what the models generate (regenerate with
    ``headwater schema > schema/pipeline.schema.json``)."""
    committed = Path(__file__).parent.parent / "schema" / "pipeline.schema.json"
    assert json.loads(render("pipeline")) == json.loads(committed.read_text())


@given(st.integers(min_value=0, max_value=10**6),
       st.sampled_from([("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]))
def test_durations_parse(number: int, unit: tuple[str, float]) -> None:
    """Any ``<number><unit>`` parses to seconds."""
    assert pytest.approx(number * unit[1]) == parse_duration(f"{number}{unit[0]}")


@given(st.text(min_size=1, max_size=20).filter(lambda s: not s.strip().replace(".", "")
                                               .isdigit()))
def test_garbage_durations_are_refused(text: str) -> None:
    """Anything that is not a duration raises ValueError (never returns nonsense)."""
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert value >= 0


def test_http_and_run_pipeline_steps_are_checked(make_project: ProjectFactory) -> None:
    """``check`` accepts ``http`` and ``run_pipeline`` steps, and names a child pipeline
    that does not exist (with a suggestion) or a pipeline that would run itself."""
    root = make_project({"p": """
    name: p
    steps:
      - id: call
        http: {url: "http://127.0.0.1:9/x"}
      - id: child
        run_pipeline: {pipeline: othr}
      - id: me
        run_pipeline: p
    """, "other": """
    name: other
    steps:
      - id: call
        http: {url: "http://127.0.0.1:9/x", wait: {poll: {url: "http://x", until: "done"}}}
      - id: bad
        http: {url: "http://127.0.0.1:9/x", wait: {poll: {url: "http://x", until: "a =="}}}
    """})
    messages = sorted(str(p["message"]) for p in _problems(root))
    assert ["invalid condition 'a ==': unexpected 'end of template'",
            "no pipeline 'othr' in pipelines/; did you mean 'other'?",
            "pipeline 'p' cannot run itself (that would never end)"] == messages
