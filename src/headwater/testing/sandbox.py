"""A throwaway copy of a project in which one test case runs.

The copy has its own SQLite store and local warehouse in a temporary folder, and every
source step of the pipeline under test reads the case's fixture instead of its real
place (files, a database, an API, a broker). So a case can never touch the project's
store, warehouse or sources: it has no way to name them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from headwater.config.loader import PIPELINES_DIR, PROJECT_FILE
from headwater.exceptions import ConfigError
from headwater.testing.cases import TESTS_DIR, Case

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from headwater.store.store import Store

SKIP = {".headwater", ".git", ".venv", "venv", "node_modules", "__pycache__", TESTS_DIR,
        ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def _top_folder(path: str) -> str | None:
    """The first folder of a relative local path (``landing/orders/*.csv`` → landing)."""
    if "://" in path or Path(path).is_absolute():
        return None
    parts = [p for p in Path(path).parts if p != "."]
    return parts[0] if len(parts) > 1 or (parts and "*" not in parts[0]) else None


def _data_roots(pipeline: dict[str, Any], settings: dict[str, Any]) -> set[str]:
    """Top-level folders holding data (sources, landing folders, the local warehouse):
    left out of the copy, which may be large and must never be read by a case."""
    found = [_top_folder(str(settings.get("warehouse") or "./warehouse"))]
    envs = settings.get("environments")
    for overlay in envs.values() if isinstance(envs, dict) else []:
        if isinstance(overlay, dict) and isinstance(overlay.get("warehouse"), str):
            found.append(_top_folder(overlay["warehouse"]))  # ./warehouse-qa and the like
    for step in pipeline.get("steps") or []:
        source = step.get("source") if isinstance(step, dict) else None
        path = source.get("path") if isinstance(source, dict) else None
        if isinstance(path, str):
            found.append(_top_folder(path))
    return {f for f in found if f and f not in (PIPELINES_DIR, "sql", "transforms")}


_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader when PyYAML has it: the pure-Python one is most of a copy's cost."""
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
"""libyaml's safe emitter likewise: ``yaml.safe_dump``'s pure-Python one was half of
writing a sandbox's two YAML files."""


def _load(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping", problems=[])
    return data


def _dump(data: dict[str, Any]) -> str:
    text: str = yaml.dump(data, Dumper=_DUMPER, sort_keys=False, allow_unicode=True)
    return text


CASE_DIR = "case"
"""Where, beside the copy, the case's ``inputs/`` are copied: a fixed place, so sandboxes
built at one path are confined to the same directories and share a pooled DuckDB."""


def _swap_sources(pipeline: dict[str, Any], case: Case, inputs: Path) -> dict[str, Any]:
    """Point every source step at the case's fixture (copied to ``inputs``); a missing
    fixture is an error."""
    case.check_inputs([str(s.get("id")) for s in pipeline.get("steps") or []
                       if isinstance(s, dict) and isinstance(s.get("source"), dict)
                       and s["source"].get("type") != "dataset"])
    steps = []
    for raw in pipeline.get("steps") or []:
        step = dict(raw)
        source = step.get("source")
        if isinstance(source, dict) and source.get("type") != "dataset":
            found = case.fixture_for(str(step.get("id")))
            if found is None:
                raise ConfigError(
                    f"{case.folder}: no fixture for source step {step.get('id')!r}: add "
                    f"inputs/{step.get('id')}/ (files) or inputs/{step.get('id')}.csv|.json|"
                    f".ndjson|.parquet (rows)", problems=[])
            found_path, fmt = found
            path = inputs / found_path.relative_to(case.inputs)
            swapped: dict[str, Any] = {"type": "files"}
            if source.get("type") == "files" and fmt is None:
                keep = ("format", "csv", "columns", "bad_rows", "compression")
                swapped.update({k: v for k, v in source.items() if k in keep})
                swapped["path"] = str(path)
            else:
                swapped["path"] = str(path)
                if fmt or source.get("format"):
                    swapped["format"] = fmt or source.get("format")
                if source.get("type") == "files":
                    swapped.update({k: v for k, v in source.items()
                                    if k in ("csv", "columns", "bad_rows")})
            step["source"] = swapped
        steps.append(step)
    return {**pipeline, "steps": steps, "triggers": []}


def build(root: Path, case: Case, into: Path, *, pipeline_file: Path | None = None,
          store_template: Path | None = None) -> Path:
    """Copy ``root`` into ``into`` (code only, and of the pipeline files only the one under
    test), with its own store and warehouse and fixture sources; returns the copy's root.

    The case's fixtures are copied to ``into/case/inputs``. ``pipeline_file`` (the loaded
    project knows it) saves reading every pipeline file to find it; ``store_template``, an
    empty store already migrated, is copied instead of migrating a new one (most of a small
    case's set-up time otherwise).
    """
    settings = _load(root / PROJECT_FILE)
    if pipeline_file is None:
        pipeline_file = next((p for p in sorted((root / PIPELINES_DIR).glob("*.y*ml"))
                              if _load(p).get("name") == case.pipeline), None)
    if pipeline_file is None:
        raise ConfigError(f"{case.folder}: no pipeline {case.pipeline!r} in "
                          f"{root / PIPELINES_DIR}", problems=[])
    pipeline = _load(pipeline_file)
    skip = SKIP | _data_roots(pipeline, settings)
    target = into / "project"
    pipelines = root / PIPELINES_DIR
    shutil.copytree(root, target, ignore=lambda folder, names: [
        n for n in names if (Path(folder) == root and n in skip) or n in SKIP
        or (Path(folder) == pipelines and n.endswith((".yaml", ".yml")))])
    settings.pop("environments", None)
    settings.pop("warehouse_connection", None)
    settings.update(store=store_url(into), warehouse=str(into / "warehouse"),
                    executor="local")
    if store_template is not None:
        shutil.copyfile(store_template, into / "store.db")
    inputs = into / CASE_DIR / "inputs"
    if case.inputs.is_dir():
        shutil.copytree(case.inputs, inputs)
    (target / ".headwater" / "spill").mkdir(parents=True, exist_ok=True)  # DuckDB's temp
    (target / PROJECT_FILE).write_text(_dump(settings), encoding="utf-8")
    swapped = _swap_sources(pipeline, case, inputs)
    (target / PIPELINES_DIR).mkdir(parents=True, exist_ok=True)
    (target / PIPELINES_DIR / pipeline_file.name).write_text(_dump(swapped), encoding="utf-8")
    return target


def store_url(into: Path) -> str:
    """The URL of the throwaway store of a sandbox built at ``into``."""
    return f"sqlite:///{into / 'store.db'}"


def store_template(into: Path) -> Path:
    """An empty SQLite store migrated to the head, for :func:`build` to copy per case."""
    from headwater.store.store import Store

    path = into / "template.db"
    Store(f"sqlite:///{path}").close()
    return path


def store_engine(into: Path) -> Engine:
    """One SQLAlchemy engine for the store of every sandbox built at ``into`` in turn.

    Each case still gets its own store file (copied from the template, removed after the
    case); only the engine, and with it the compiled-statement cache, outlives a case.
    A new engine per case compiled every statement again, ~11 % of a small suite. The
    case's store disposes the engine's connections when it closes, so none outlives its
    file.
    """
    from headwater.store.store import make_engine

    return make_engine(store_url(into))


def open_store(into: Path, engine: Engine | None) -> Store | None:
    """The store of the sandbox at ``into`` on ``engine`` (None: the project opens its own
    from the sandbox's ``headwater.yaml``). Not migrated: :func:`build` copied it from
    :func:`store_template`, which is."""
    if engine is None:
        return None
    from headwater.store.store import Store

    return Store(store_url(into), engine=engine, migrate=False)
