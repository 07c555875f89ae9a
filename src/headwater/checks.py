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
    HttpSource,
    HttpStep,
    PublishStep,
    PythonStep,
    RunPipelineStep,
    SourceStep,
    SqlSource,
    SqlStep,
    StreamSource,
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
        problems.extend(check_pipeline(runtime, pf, published))
    problems.extend(_unset_references(runtime.root))
    problems.extend(_executor_problems(runtime))
    return problems


def _executor_problems(runtime: ProjectRuntime) -> list[dict[str, Any]]:
    """``executor: {type: dask}`` needs the ``[dask]`` extra importable here."""
    from headwater.config.loader import read_yaml

    if runtime.config.executor.type != "dask":
        return []
    from headwater.engine.dask_executor import importable

    if importable():
        return []
    try:
        _, lines = read_yaml(runtime.root / PROJECT_FILE, PROJECT_FILE)
        line = lines.find(("executor",))
    except (OSError, ConfigError):
        line = None
    return [{"file": PROJECT_FILE, "line": line, "key": "executor",
             "message": "executor type dask needs the [dask] extra, which is not installed: "
                        "pip install 'headwater[dask]' (or use 'executor: local')"}]


def check_pipeline(runtime: ProjectRuntime, pf: PipelineFile,
                   published: set[str]) -> list[dict[str, Any]]:
    """The checks of one parsed pipeline (the builder runs them before it writes a file)."""
    problems: list[dict[str, Any]] = []
    try:
        plan(pf, runtime.root)
    except ConfigError as exc:
        problems.extend(exc.problems)
    problems.extend(_references(runtime, pf, published))
    problems.extend(_triggers(runtime, pf))
    problems.extend(_param_declarations(pf))
    return problems


def published_datasets(pipelines: dict[str, PipelineFile]) -> set[str]:
    """Every dataset some pipeline of the project publishes."""
    return _published_datasets(pipelines)


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
            if isinstance(source, SqlSource):
                out.extend(_sql_connection_type(pf, (*loc, "source", "connection"),
                                                connections.get(source.connection)))
            if not isinstance(source, FilesSource | DatasetSource | SqlSource | StreamSource
                              | HttpSource):
                out.append(_problem(pf, (*loc, "source", "type"),
                                    f"source type {source.type!r} is not available yet"))
        if isinstance(step, RunPipelineStep):
            out.extend(_child_pipeline(runtime, pf, loc, step))
        if isinstance(step, HttpStep):
            out.extend(_wait_conditions(pf, loc, step))
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


def _wait_conditions(pf: PipelineFile, loc: tuple[str | int, ...],
                     step: HttpStep) -> list[dict[str, Any]]:
    """A polling wait's ``until``/``fail_when`` must parse (they are checked, not run)."""
    from headwater.config.expressions import compile_condition
    from headwater.config.models import HttpWait

    wait = step.http.wait
    if not isinstance(wait, HttpWait) or wait.poll is None:
        return []
    out = []
    for key in ("until", "fail_when"):
        text = getattr(wait.poll, key)
        try:
            if text:
                compile_condition(text)
        except ValueError as exc:
            out.append(_problem(pf, (*loc, "http", "wait", "poll", key), str(exc)))
    return out


def _child_pipeline(runtime: ProjectRuntime, pf: PipelineFile, loc: tuple[str | int, ...],
                    step: RunPipelineStep) -> list[dict[str, Any]]:
    """``run_pipeline`` must name another pipeline of this project (never itself)."""
    name = step.run_pipeline.pipeline
    known = sorted(runtime.pipelines)
    if name == pf.config.name:
        return [_problem(pf, (*loc, "run_pipeline"),
                         f"pipeline {name!r} cannot run itself (that would never end)")]
    if name in known:
        return []
    hint = difflib.get_close_matches(name, known, n=1)
    return [_problem(pf, (*loc, "run_pipeline"), f"no pipeline {name!r} in pipelines/"
                     + (f"; did you mean {hint[0]!r}?" if hint else ""))]


def _sql_connection_type(pf: PipelineFile, loc: tuple[str | int, ...],
                         settings: dict[str, Any] | None) -> list[dict[str, Any]]:
    from headwater.connectors.sql_drivers import SQL_TYPES

    if settings is None or settings.get("type") in SQL_TYPES:
        return []
    return [_problem(pf, loc, f"connection type {settings.get('type')!r} cannot be read by a "
                              f"sql source (use one of {', '.join(SQL_TYPES)})")]


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


def check_connections(runtime: ProjectRuntime) -> list[dict[str, Any]]:
    """``check --connections``: for each connection, can headwater reach, log in and read?

    One report per connection: ``{"connection", "type", "ok", "checks": [{"what", "ok",
    "detail"}]}``. SQL connections connect with their real driver and read every table a
    pipeline's sql source names (or ``SELECT 1``); other kinds get a TCP reachability
    check of their URL's host and port. Details are masked by ``REDACTOR``: a wrong
    password never appears, even inside a driver's message.
    """
    from headwater.config.secrets import REDACTOR

    tables = _tables_by_connection(runtime)
    reports = []
    for name in sorted(runtime.config.connections):
        kind = str(runtime.config.connections[name].get("type"))
        checks = [{"what": what, "ok": ok, "detail": REDACTOR(detail)}
                  for what, ok, detail in _probe_connection(runtime, name, kind,
                                                            tables.get(name, []))]
        reports.append({"connection": name, "type": kind, "checks": checks,
                        "ok": all(c["ok"] for c in checks)})
    if runtime.config.executor.type == "dask":
        from headwater.engine.dask_executor import probe

        what, ok, detail = probe(runtime.config.executor)
        reports.append({"connection": "executor", "type": "dask", "ok": ok,
                        "checks": [{"what": what, "ok": ok, "detail": REDACTOR(detail)}]})
    return reports


def _tables_by_connection(runtime: ProjectRuntime) -> dict[str, list[str]]:
    pipelines, _ = runtime.load_pipelines()
    out: dict[str, list[str]] = {}
    for pf in pipelines.values():
        for step in pf.config.steps:
            if isinstance(step, SourceStep) and isinstance(step.source, SqlSource) and \
                    step.source.table and step.source.table not in out.get(
                        step.source.connection, []):
                out.setdefault(step.source.connection, []).append(step.source.table)
    return out


def _probe_connection(runtime: ProjectRuntime, name: str, kind: str,
                      tables: list[str]) -> list[tuple[str, bool, str]]:
    from headwater.connectors import sql as sqlconn
    from headwater.connectors.sql_drivers import SQL_TYPES, connection_spec
    from headwater.exceptions import HeadwaterError

    try:
        settings = runtime.connection(name)
        if kind in SQL_TYPES:
            return list(sqlconn.probe(connection_spec(name, settings, runtime.root), tables))
    except HeadwaterError as exc:
        return [("settings", False, exc.message)]
    return [_tcp_probe(settings)]


def _tcp_probe(settings: dict[str, Any]) -> tuple[str, bool, str]:
    import socket
    from urllib.parse import urlsplit

    url = settings.get("url")
    if not isinstance(url, str) or "://" not in url:
        return "reach", True, "not checked: no url to reach (authentication untested)"
    parts = urlsplit(url)
    defaults = {"nats": 4222, "mqtt": 1883, "redis": 6379, "amqp": 5672, "rabbitmq": 5672}
    port = parts.port or defaults.get(parts.scheme)
    if not parts.hostname or port is None:
        return "reach", True, "not checked: the url names no host and port"
    try:
        with socket.create_connection((parts.hostname, port), timeout=5):
            pass
    except OSError as exc:
        return "reach", False, f"cannot reach {parts.hostname}:{port}: {exc.strerror or exc}"
    return "reach", True, f"reachable at {parts.hostname}:{port} (authentication not checked)"
