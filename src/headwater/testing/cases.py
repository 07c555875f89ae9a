"""Find and read test cases: ``tests/<pipeline>/<case>/`` folders of a project.

A case folder holds ``inputs/`` (one fixture per source step: a folder or a single
CSV/JSON/NDJSON/Parquet file named after the step id), ``expected/`` (one file per
published dataset: ``<dataset>.csv`` rows, or ``<dataset>.yaml`` with ``rows``, ``schema``
and ``checks``; ``<pipeline>__rejected.csv`` for quarantined rows) and an optional
``case.yaml`` (``params``, ``description``, ``expected_error``). Reading a case never
runs anything; every mistake is a ConfigError naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from headwater.exceptions import ConfigError

TESTS_DIR = "tests"
FIXTURE_FORMATS = {".csv": "csv", ".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson",
                   ".parquet": "parquet"}
CASE_KEYS = {"description", "params", "expected_error"}
EXPECTATION_KEYS = {"rows", "schema", "checks", "key"}
_FORMATS = ", ".join(FIXTURE_FORMATS)


@dataclass(frozen=True)
class Expectation:
    """What one published dataset must hold after the case ran."""

    dataset: str
    path: Path
    rows_file: Path | None = None
    row_count: int | None = None
    schema: dict[str, str] | None = None
    checks: list[str] = field(default_factory=list)
    key: list[str] | None = None


@dataclass(frozen=True)
class Case:
    """One folder under ``tests/<pipeline>/``."""

    pipeline: str
    name: str
    folder: Path
    params: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    expected_error: str | None = None

    @property
    def id(self) -> str:
        return f"{self.pipeline}/{self.name}"

    @property
    def inputs(self) -> Path:
        return self.folder / "inputs"

    @property
    def expected_dir(self) -> Path:
        return self.folder / "expected"

    def fixture_for(self, step_id: str) -> tuple[Path, str | None] | None:
        """The fixture of a source step: (path or glob, format or None for a folder)."""
        folder = self.inputs / step_id
        if folder.is_dir():
            return folder, None
        for suffix, fmt in FIXTURE_FORMATS.items():
            single = self.inputs / f"{step_id}{suffix}"
            if single.is_file():
                return single, fmt
        other = sorted(p for p in self.inputs.glob(f"{step_id}.*") if p.is_file())
        if other:
            raise _error(other[0], "", f"unknown fixture format {other[0].suffix!r} for "
                                       f"source step {step_id!r} (use {_FORMATS} or a folder "
                                       "of the source's own files)")
        return None

    def check_inputs(self, source_steps: list[str]) -> None:
        """Every entry of ``inputs/`` must belong to a source step: a misspelt fixture
        would otherwise be ignored while the case reads nothing."""
        if not self.inputs.is_dir():
            return
        for entry in sorted(self.inputs.iterdir()):
            step = entry.name if entry.is_dir() else entry.name.partition(".")[0]
            if entry.name.startswith(".") or step in source_steps:
                continue
            raise _error(entry, "", f"no source step {step!r} in pipeline "
                                    f"{self.pipeline!r} (its source steps: "
                                    f"{', '.join(source_steps) or 'none'})")

    def expectations(self) -> list[Expectation]:
        """Every expectation file, parsed; unknown keys and formats are errors."""
        out: list[Expectation] = []
        if not self.expected_dir.is_dir():
            return out
        for path in sorted(self.expected_dir.iterdir()):
            if path.suffix == ".csv":
                out.append(Expectation(path.stem, path, rows_file=path))
            elif path.suffix in (".yaml", ".yml"):
                out.append(_read_expectation(path))
            elif not path.name.startswith("."):
                raise _error(path, "", f"unknown expectation format {path.suffix!r} (use "
                                       "<dataset>.csv for rows or <dataset>.yaml)")
        return out


def _error(path: Path, key: str, message: str) -> ConfigError:
    where = f"{path}: {key}:" if key else f"{path}:"
    return ConfigError(f"{where} {message}",
                       problems=[{"file": str(path), "line": None, "key": key,
                                  "message": message}])


def _mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise _error(path, "", f"invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise _error(path, "", "must be a mapping")
    return data


def _read_expectation(path: Path) -> Expectation:
    data = _mapping(path)
    unknown = sorted(set(data) - EXPECTATION_KEYS)
    if unknown:
        known = ", ".join(sorted(EXPECTATION_KEYS))
        raise _error(path, unknown[0], f"unknown key (known: {known})")
    rows = data.get("rows")
    if rows is not None and not isinstance(rows, int):
        raise _error(path, "rows", "must be a row count (an integer)")
    schema = data.get("schema")
    if schema is not None and not (isinstance(schema, dict)
                                   and all(isinstance(v, str) for v in schema.values())):
        raise _error(path, "schema", "must map column names to type names")
    checks = data.get("checks") or []
    if not isinstance(checks, list) or not all(isinstance(c, str) for c in checks):
        raise _error(path, "checks", "must be a list of SQL conditions every row meets")
    key = data.get("key")
    if key is not None and not (isinstance(key, list) and all(isinstance(k, str) for k in key)):
        raise _error(path, "key", "must be a list of column names")
    return Expectation(path.stem, path, row_count=rows, schema=schema, checks=checks, key=key)


def _read_case(pipeline: str, folder: Path) -> Case:
    spec = folder / "case.yaml"
    data = _mapping(spec) if spec.is_file() else {}
    unknown = sorted(set(data) - CASE_KEYS)
    if unknown:
        raise _error(spec, unknown[0], f"unknown key (known: {', '.join(sorted(CASE_KEYS))})")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise _error(spec, "params", "must be a mapping of param names to values")
    return Case(pipeline, folder.name, folder, params=params,
                description=data.get("description"), expected_error=data.get("expected_error"))


def discover(root: Path, pipelines: list[str], only: str | None = None) -> list[Case]:
    """Every case of the project, optionally of one pipeline (``orders``) or case
    (``orders/basic``); a folder for a pipeline that does not exist is an error."""
    base = root / TESTS_DIR
    if not base.is_dir():
        return []
    wanted_pipeline, _, wanted_case = (only or "").partition("/")
    cases: list[Case] = []
    for pipeline_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        if pipeline_dir.name.startswith((".", "_")):
            continue
        if pipeline_dir.name not in pipelines:
            if not any(pipeline_dir.glob("*/expected")):
                continue  # not a headwater case folder (e.g. the user's own unit tests)
            raise _error(pipeline_dir, "", f"no pipeline {pipeline_dir.name!r} (known: "
                                           f"{', '.join(sorted(pipelines)) or 'none'})")
        if wanted_pipeline and pipeline_dir.name != wanted_pipeline:
            continue
        for folder in sorted(p for p in pipeline_dir.iterdir() if p.is_dir()):
            if wanted_case and folder.name != wanted_case:
                continue
            cases.append(_read_case(pipeline_dir.name, folder))
    return cases
