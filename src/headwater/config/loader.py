"""Read a project folder into typed configs, reporting every problem with file, line, key.

YAML is composed (not just loaded) so each value keeps the line it came from; pydantic's
error locations are mapped back to those lines. Unknown keys get a "did you mean" from the
valid keys at that spot. This module parses and checks only: it never resolves secrets
and never touches the store.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from headwater.config.models import (
    STEP_KINDS,
    PipelineConfig,
    ProjectConfig,
    SourceStep,
    StepBase,
)
from headwater.exceptions import ConfigError

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml when available: parsing is on every command's path."""

PROJECT_FILE = "headwater.yaml"
PIPELINES_DIR = "pipelines"

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One finding of ``headwater check``."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "key": self.key, "message": self.message}


@dataclass
class _Lines:
    """Line numbers of every key path in one YAML document."""

    lines: dict[Loc, int] = field(default_factory=dict)

    def find(self, loc: Loc) -> int | None:
        """The line of ``loc`` or of its nearest ancestor that has one."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return None


def _index_lines(node: yaml.Node | None, loc: Loc, out: _Lines) -> None:
    if node is None:
        return
    out.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            out.lines[(*loc, key)] = key_node.start_mark.line + 1
            _index_lines(value_node, (*loc, key), out)
            # the key's own line wins over the value's start
            out.lines[(*loc, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*loc, index), out)


def read_yaml(path: Path, display: str) -> tuple[Any, _Lines]:
    """Parse one YAML file; a syntax error becomes a ConfigError with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _error(display, None, "", f"is not UTF-8 text ({exc.reason})") from exc
    return read_yaml_text(text, display)


def read_yaml_text(text: str, display: str) -> tuple[Any, _Lines]:
    """Parse YAML text as if read from ``display`` (the builder checks before it writes)."""
    try:
        loader = _LOADER(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise _error(display, line, "", f"invalid YAML: {exc.problem}") from exc
    lines = _Lines()
    _index_lines(node, (), lines)
    return data, lines


def _error(file: str, line: int | None, key: str, message: str) -> ConfigError:
    problem = Problem(file, line, key, message)
    return ConfigError(str(problem), problems=[problem.as_dict()])


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _valid_keys(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """Walk a model's fields along ``loc`` to find which model owns the last key."""
    current: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields:
            return None
        by_alias = {(f.alias or n): f for n, f in fields.items()}
        info = by_alias.get(str(part))
        if info is None:
            return None
        current = _first_model(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _first_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    metadata = getattr(annotation, "__metadata__", None)
    if metadata is not None:
        return _first_model(annotation.__origin__)
    return None


def _problems_from(
    exc: PydanticValidationError,
    file: str,
    lines: _Lines,
    prefix: Loc,
    model: type[BaseModel],
    data: Any,
) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = _clean_loc(tuple(err["loc"]), data)
        full = (*prefix, *loc)
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), _valid_keys(owner), n=1)
            message = "unknown key" + (f"; did you mean '{hint[0]}'?" if hint else "")
            if owner is not None and not hint:
                message += f" (valid: {', '.join(sorted(_valid_keys(owner)))})"
        elif err["type"] == "missing":
            message = "required key is missing"
        problems.append(Problem(file, lines.find(full), _dotted(full), message))
    return problems


def _clean_loc(loc: tuple[str | int, ...], data: Any) -> Loc:
    """Drop the parts pydantic adds for unions (a tag such as ``files``) that are no keys."""
    out: list[str | int] = []
    current = data
    for position, part in enumerate(loc):
        last = position == len(loc) - 1
        if isinstance(current, dict) and isinstance(part, str) and part not in current \
                and not last:
            continue
        out.append(part)
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            current = current[part]
        else:
            current = None
    return tuple(out)


def load_project_config(root: Path, env: str | None = None) -> ProjectConfig:
    """Parse ``headwater.yaml`` in ``root``, with environment ``env``'s overlay applied."""
    config, data, lines = _load_project_data(root)
    if not env:
        return config
    return _with_environment(config, data, lines, env)


def _with_environment(config: ProjectConfig, data: dict[str, Any], lines: _Lines,
                      env: str) -> ProjectConfig:
    """The project settings as environment ``env`` sees them (SPEC §2 ``environments``)."""
    if env not in config.environments:
        known = sorted(config.environments)
        hint = difflib.get_close_matches(env, known, n=1)
        suffix = f"; did you mean {hint[0]!r}?" if hint else (
            f" (defined: {', '.join(known)})" if known else
            " (this project defines no 'environments:')")
        line = lines.find(("environments",)) if known else None
        raise _error(PROJECT_FILE, line, f"environments.{env}",
                     f"no environment {env!r}{suffix}")
    overlay = config.environments[env]
    merged = {k: v for k, v in data.items() if k != "environments"}
    raw = data["environments"][env] or {}
    for key in ("store", "warehouse", "warehouse_connection", "executor",
                "max_concurrent_runs", "lineage", "auth"):
        if key in raw:
            merged[key] = raw[key]
    connections = {name: dict(conn) for name, conn in (data.get("connections") or {}).items()}
    for name, conn in overlay.connections.items():
        connections[name] = {**connections.get(name, {}), **conn}
    merged["connections"] = connections
    merged["params"] = {**(data.get("params") or {}), **overlay.params}
    merged["environments"] = data["environments"]
    try:
        return ProjectConfig.model_validate(merged)
    except PydanticValidationError as exc:
        problems = [replace(p, message=f"{p.message} (with environment {env!r})")
                    for p in _problems_from(exc, PROJECT_FILE, lines, (), ProjectConfig,
                                            merged)]
        raise ConfigError(
            "\n".join(map(str, problems)), problems=[p.as_dict() for p in problems]
        ) from None


def _load_project_data(root: Path) -> tuple[ProjectConfig, dict[str, Any], _Lines]:
    """Parse ``headwater.yaml`` in ``root``: the model, the raw mapping and its lines."""
    path = root / PROJECT_FILE
    if not path.is_file():
        raise _error(PROJECT_FILE, None, "",
                     f"not found in {root} (run 'headwater init' to create a project)")
    data, lines = read_yaml(path, PROJECT_FILE)
    if not isinstance(data, dict):
        raise _error(PROJECT_FILE, 1, "", "must be a mapping of settings (name, store, ...)")
    try:
        return ProjectConfig.model_validate(data), data, lines
    except PydanticValidationError as exc:
        problems = _problems_from(exc, PROJECT_FILE, lines, (), ProjectConfig, data)
        raise ConfigError(
            "\n".join(map(str, problems)), problems=[p.as_dict() for p in problems]
        ) from None


def _parse_step(raw: Any, index: int, file: str, lines: _Lines) -> tuple[StepBase | None,
                                                                            list[Problem]]:
    loc: Loc = ("steps", index)
    if not isinstance(raw, dict):
        return None, [Problem(file, lines.find(loc), _dotted(loc), "a step must be a mapping")]
    kinds = [k for k in STEP_KINDS if k in raw]
    if len(kinds) != 1:
        extra = [k for k in raw if k not in _common_step_keys()]
        hint = difflib.get_close_matches(extra[0], list(STEP_KINDS), n=1) if extra else []
        what = (
            f"has several kinds ({', '.join(kinds)}); pick one"
            if kinds
            else "needs exactly one kind: " + ", ".join(STEP_KINDS)
            + (f"; did you mean '{hint[0]}'?" if hint else "")
        )
        key = _dotted((*loc, extra[0])) if extra and not kinds else _dotted(loc)
        line = lines.find((*loc, extra[0])) if extra and not kinds else lines.find(loc)
        return None, [Problem(file, line, key, f"step {what}")]
    model = STEP_KINDS[kinds[0]]
    try:
        return TypeAdapter(model).validate_python(raw), []
    except PydanticValidationError as exc:
        return None, _problems_from(exc, file, lines, loc, model, raw)


def _common_step_keys() -> set[str]:
    return set(_valid_keys(StepBase))


def parse_pipeline(data: Any, file: str, lines: _Lines) -> PipelineConfig:
    """Validate one pipeline document; raises ConfigError with every problem found."""
    if not isinstance(data, dict):
        raise _error(file, 1, "", "a pipeline file must be a mapping with name and steps")
    problems: list[Problem] = []
    steps: list[StepBase] = []
    raw_steps = data.get("steps")
    if isinstance(raw_steps, list):
        for index, raw in enumerate(raw_steps):
            step, found = _parse_step(raw, index, file, lines)
            problems.extend(found)
            if step is not None:
                steps.append(step)
    rest = {k: v for k, v in data.items() if k != "steps"}
    if isinstance(raw_steps, list) and not problems:
        rest["steps"] = steps
    elif raw_steps is not None and not isinstance(raw_steps, list):
        rest["steps"] = raw_steps
    else:
        rest["steps"] = [SourceStep.model_construct(id="_")] if raw_steps else []
    try:
        pipeline = PipelineConfig.model_validate(rest)
    except PydanticValidationError as exc:
        problems.extend(_problems_from(exc, file, lines, (), PipelineConfig, rest))
        pipeline = None
    if problems or pipeline is None:
        raise ConfigError(
            "\n".join(map(str, problems)), problems=[p.as_dict() for p in problems]
        )
    return pipeline


@dataclass(frozen=True)
class PipelineFile:
    """A parsed pipeline with where it came from (for errors and code versions)."""

    config: PipelineConfig
    path: Path
    display: str
    lines: _Lines

    def line_of(self, *loc: str | int) -> int | None:
        return self.lines.find(tuple(loc))


def load_pipeline_file(path: Path, root: Path) -> PipelineFile:
    display = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    data, lines = read_yaml(path, display)
    return PipelineFile(parse_pipeline(data, display, lines), path, display, lines)
