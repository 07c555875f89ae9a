"""``headwater check``: every problem in a project, each with file, line, key and message.

Beyond parsing (``config.loader``) it plans each pipeline's DAG (unknown references,
cycles, SQL that does not parse), checks that referenced connections, SQL files, Python
modules and upstream datasets exist, and validates cron expressions. It never runs a step.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from typing import Any

from headwater.config.loader import PROJECT_FILE, PipelineFile
from headwater.config.models import (
    DatasetSource,
    FilesSource,
    HttpStep,
    PublishStep,
    PythonStep,
    RunPipelineStep,
    SourceStep,
    SqlStep,
)
from headwater.engine.plan import plan
from headwater.exceptions import ConfigError
from headwater.runtime import ProjectRuntime


def check_project(runtime: ProjectRuntime) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    pipelines, errors = runtime.load_pipelines()
    for error in errors:
        problems.extend(error.problems or [{"file": "", "line": None, "key": "",
                                            "message": error.message}])
    published = _published_datasets(pipelines)
    for pf in pipelines.values():
        try:
            plan(pf, runtime.root)
        except ConfigError as exc:
            problems.extend(exc.problems)
        problems.extend(_references(runtime, pf, published))
        problems.extend(_triggers(runtime, pf))
        problems.extend(_param_declarations(pf))
    problems.extend(_unset_references(runtime.root))
    return problems


def _param_declarations(pf: PipelineFile) -> list[dict[str, Any]]:
    """``params: {x: {type: integr}}``: an unknown type, or a default not of its type."""
    from headwater.config import params as typed
    from headwater.exceptions import ParamError

    found = []
    for name, declaration in pf.config.params.items():
        if not (isinstance(declaration, dict) and "type" in declaration):
            continue
        if not typed.is_explicit(declaration):
            hint = difflib.get_close_matches(str(declaration["type"]), typed.TYPES, n=1)
            found.append(_problem(pf, ("params", name, "type"), (
                f"unknown param type {declaration['type']!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else
                   f" (one of {', '.join(typed.TYPES)})"))))
            continue
        try:
            typed.spec_of(name, declaration)
        except ParamError as exc:
            found.append(_problem(pf, ("params", name, "default"), exc.message))
    return found


def _unset_references(root: Path) -> list[dict[str, Any]]:
    """Warnings (not errors: CI checks a project without its secrets) for ``${env:X}`` that
    is unset and ``${file:P}`` that cannot be read here; a run needing them would fail."""
    from headwater.config.secrets import references, remember_all

    files = [root / PROJECT_FILE, *sorted((root / "pipelines").glob("*.y*ml"))]
    found = []
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, start=1):
            for kind, name in references(line):
                if remember_all([f"${{{kind}:{name}}}"], root):
                    what = "environment variable is not set" if kind == "env" else \
                        "secret file cannot be read"
                    found.append({"file": str(path.relative_to(root)), "line": number,
                                  "key": f"${{{kind}:{name}}}", "level": "warning",
                                  "message": f"{what}: {name} (runs that need it will fail)"})
    return found


def _published_datasets(pipelines: dict[str, PipelineFile]) -> set[str]:
    out = set()
    for pf in pipelines.values():
        for step in pf.config.steps:
            if isinstance(step, PublishStep):
                out.add(step.publish.dataset)
    return out


def _problem(pf: PipelineFile, loc: tuple[str | int, ...], message: str) -> dict[str, Any]:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return {"file": pf.display, "line": pf.line_of(*loc), "key": key, "message": message}


def _references(runtime: ProjectRuntime, pf: PipelineFile,
                published: set[str]) -> list[dict[str, Any]]:
    out = []
    connections = runtime.config.connections
    for index, step in enumerate(pf.config.steps):
        loc: tuple[str | int, ...] = ("steps", index)
        if isinstance(step, SourceStep):
            source = step.source
            name = getattr(source, "connection", None)
            if name and name not in connections:
                hint = difflib.get_close_matches(name, list(connections), n=1)
                out.append(_problem(pf, (*loc, "source", "connection"),
                                    f"no connection {name!r} in {PROJECT_FILE}"
                                    + (f"; did you mean {hint[0]!r}?" if hint else "")))
            if isinstance(source, DatasetSource) and source.dataset not in published:
                known = {d["name"] for d in _safe_datasets(runtime)}
                if source.dataset not in known:
                    out.append(_problem(pf, (*loc, "source", "name"),
                                        f"no pipeline publishes dataset {source.dataset!r}"))
            if not isinstance(source, FilesSource | DatasetSource):
                out.append(_problem(pf, (*loc, "source", "type"),
                                    f"source type {source.type!r} is not available yet"))
        if isinstance(step, HttpStep | RunPipelineStep):
            key = "http" if isinstance(step, HttpStep) else "run_pipeline"
            out.append(_problem(pf, (*loc, key), f"step kind {key!r} is not available yet"))
        if isinstance(step, PythonStep):
            module = step.python.split(":")[0]
            rel = module.replace(".", "/")
            if not ((runtime.root / f"{rel}.py").is_file()
                    or (runtime.root / rel / "__init__.py").is_file()
                    or importlib.util.find_spec(module.split(".")[0]) is not None):
                out.append(_problem(pf, (*loc, "python"),
                                    f"module {module!r} not found in {runtime.root}"))
        if isinstance(step, SqlStep) and step.sql.strip().endswith(".sql") and \
                not (runtime.root / step.sql.strip()).is_file():
            out.append(_problem(pf, (*loc, "sql"), f"SQL file {step.sql.strip()} not found"))
    return out


def _safe_datasets(runtime: ProjectRuntime) -> list[dict[str, Any]]:
    try:
        return runtime.store.datasets()
    except Exception:  # noqa: BLE001 - check works without a reachable store
        return []


def _triggers(runtime: ProjectRuntime, pf: PipelineFile) -> list[dict[str, Any]]:
    out = []
    for index, trigger in enumerate(pf.config.triggers):
        loc: tuple[str | int, ...] = ("triggers", index)
        fields = [n for n in type(trigger).model_fields if getattr(trigger, n) is not None]
        if len(fields) != 1:
            out.append(_problem(pf, loc, "a trigger needs exactly one kind: schedule, interval, "
                                         "files, table_change, message, dataset, code_change, "
                                         "webhook"))
            continue
        if trigger.schedule is not None:
            message = _cron_problem(trigger.schedule.cron, trigger.schedule.timezone)
            if message:
                out.append(_problem(pf, (*loc, "schedule", "cron"), message))
        for attr in ("table_change", "message", "files"):
            value = getattr(trigger, attr)
            name = getattr(value, "connection", None) if value is not None else None
            if name and name not in runtime.config.connections:
                out.append(_problem(pf, (*loc, attr, "connection"),
                                    f"no connection {name!r} in {PROJECT_FILE}"))
    return out


def _cron_problem(cron: str, timezone: str) -> str | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {timezone!r}"
    from croniter import croniter

    if not croniter.is_valid(cron):
        return f"invalid cron expression {cron!r} (five fields: minute hour day month weekday)"
    return None
