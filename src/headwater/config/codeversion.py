"""The code version of a pipeline: a fingerprint of what its code *means*.

A pipeline's code is its YAML plus every project file it uses: SQL files named by ``sql:``
steps and the Python modules named by ``python: module:function`` steps, with every project
module they import, transitively, and the parts of ``headwater.yaml`` that change its result
(project params, the warehouse, the settings of the connections it names). Each file is
reduced to its meaning before hashing (the parsed YAML document with inline SQL as tokens,
the Python AST, the SQL tokens), so comment and formatting edits do not start a
``code_change`` run, while any change to a constant or a query does. Settings are hashed as
written (``${env:PASSWORD}``), never resolved: a secret's value is no part of the code.

The hash must be stable across machines and library upgrades, which is why SQL is split by
the small tokenizer here rather than by a database's own (whose token kinds could change
between versions). This module only reads files: a missing or unparsable file is hashed as
a marker (``check`` reports it) and never raises.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from headwater.config.loader import PROJECT_FILE, PipelineFile
from headwater.config.models import PythonStep, SqlStep

MISSING = "missing"
"""The meaning-hash recorded for a referenced file that does not exist."""

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when built in: the same documents as ``yaml.safe_load`` (the same
constructor), parsed ~10x faster; every run hashes its pipeline file twice."""


@dataclass(frozen=True)
class CodeVersion:
    """A pipeline's code fingerprint and the per-file hashes it was built from."""

    hash: str
    """16 hex characters, the same on every machine for the same meaning."""
    files: dict[str, str]
    """Project-relative POSIX path → that file's meaning-hash (or ``"missing"``)."""

    def changed_files(self, other: CodeVersion) -> list[str]:
        """Paths whose meaning differs between two versions (added and removed included)."""
        paths = set(self.files) | set(other.files)
        return sorted(p for p in paths if self.files.get(p) != other.files.get(p))


def code_version(root: Path, pipeline: PipelineFile) -> CodeVersion:
    """The code version of ``pipeline`` in the project at ``root``."""
    root = root.resolve()
    files = {_relative(root, pipeline.path): pipeline_meaning(pipeline.path),
             PROJECT_FILE: project_meaning(root / PROJECT_FILE, pipeline.path)}
    for path in _sql_files(root, pipeline):
        files[_relative(root, path)] = sql_meaning(path)
    for path in _python_files(root, pipeline):
        files[_relative(root, path)] = python_meaning(path) if path.is_file() else MISSING
    return CodeVersion(hash=_digest(files)[:16], files=dict(sorted(files.items())))


# --------------------------------------------------------------------------- hashing


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=_canonical)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(value: Any) -> Any:
    """JSON for what YAML can hold beyond JSON: a ``!!set`` sorted (its order is random
    per process), dates and anything else as text."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return str(value)


def _relative(root: Path, path: Path) -> str:
    resolved = path.resolve()
    if resolved.is_relative_to(root):
        return resolved.relative_to(root).as_posix()
    return path.as_posix()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def yaml_meaning(path: Path) -> str:
    """Hash of the parsed document as canonical JSON: comments, layout, key order ignored."""
    data = _read(path)
    if data is None:
        return MISSING
    try:
        document = _safe_load(data)
    except yaml.YAMLError:
        return "unparsable:" + hashlib.sha256(data).hexdigest()
    return _digest(document)


def _safe_load(data: bytes) -> Any:
    """The parsed document; the same bytes are parsed once (``code_version`` reads the
    pipeline file for its own meaning and again for the connections it names). Callers
    only read the document, never change it."""
    return _parse(data)


@functools.lru_cache(maxsize=64)
def _parse(data: bytes) -> Any:
    return yaml.load(data, Loader=_LOADER)  # a safe loader, C or Python


def _load(path: Path) -> tuple[Any, str | None]:
    """The parsed YAML document, or (None, a marker hash) when missing or unparsable."""
    data = _read(path)
    if data is None:
        return None, MISSING
    try:
        return _safe_load(data), None
    except yaml.YAMLError:
        return None, "unparsable:" + hashlib.sha256(data).hexdigest()


def pipeline_meaning(path: Path) -> str:
    """:func:`yaml_meaning` with inline SQL (``sql:`` steps, ``query:``, validate ``rules``)
    reduced to its tokens, as ``.sql`` files are: its comments and layout mean nothing."""
    document, marker = _load(path)
    if marker is not None:
        return marker
    if isinstance(document, dict) and isinstance(document.get("steps"), list):
        document = {**document, "steps": [_step_meaning(s) for s in document["steps"]]}
    return _digest(document)


def _step_meaning(step: Any) -> Any:
    if not isinstance(step, dict):
        return step
    step = dict(step)
    sql = step.get("sql")
    if isinstance(sql, str) and not _names_sql_file(sql):
        step["sql"] = {"tokens": sql_tokens(sql)}
    for key, field in (("source", "query"), ("validate", "rules")):
        inner = step.get(key)
        if isinstance(inner, dict) and field in inner:
            step[key] = {**inner, field: _sql_value(inner[field])}
    return step


def _sql_value(value: Any) -> Any:
    if isinstance(value, str):
        return {"tokens": sql_tokens(value)}
    if isinstance(value, list):
        return [_sql_value(item) for item in value]
    return value


def _names_sql_file(value: str) -> bool:
    """The same test as the engine's: a ``.sql`` path alone, not inline SQL."""
    text = value.strip()
    return text.endswith(".sql") and "\n" not in text and " " not in text


def project_meaning(settings: Path, pipeline: Path) -> str:
    """Hash of what ``headwater.yaml`` gives the pipeline: project ``params``, the
    warehouse, and the connections the pipeline (or the warehouse) names, as written."""
    project, marker = _load(settings)
    if marker is not None:
        return marker
    if not isinstance(project, dict):
        return _digest(project)
    document, _ = _load(pipeline)
    names = set(_connection_names(document))
    if isinstance(project.get("warehouse_connection"), str):
        names.add(project["warehouse_connection"])
    connections = project.get("connections")
    used = {name: connections.get(name) for name in sorted(names)} \
        if isinstance(connections, dict) else {}
    return _digest({"params": project.get("params"), "warehouse": project.get("warehouse"),
                    "warehouse_connection": project.get("warehouse_connection"),
                    "connections": used})


def _connection_names(node: Any) -> Iterator[str]:
    """Every ``connection: NAME`` anywhere in a pipeline document (sources, triggers)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "connection" and isinstance(value, str):
                yield value
            else:
                yield from _connection_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from _connection_names(item)


def python_meaning(path: Path) -> str:
    """Hash of the module's AST without positions: formatting and comments are ignored."""
    data = _read(path)
    if data is None:
        return MISSING
    try:
        tree = ast.parse(data, filename=str(path))
    except (SyntaxError, ValueError):
        return "unparsable:" + hashlib.sha256(data).hexdigest()
    return _digest(ast.dump(tree, annotate_fields=True, include_attributes=False))


def sql_meaning(path: Path) -> str:
    """Hash of the SQL file's tokens (see :func:`sql_tokens`)."""
    data = _read(path)
    if data is None:
        return MISSING
    return sql_hash(data.decode("utf-8", errors="replace"))


def sql_hash(text: str) -> str:
    """Hash of SQL text by its tokens: comments, whitespace and keyword case ignored."""
    return _digest(sql_tokens(text))


# --------------------------------------------------------------------------- SQL tokens

_SQL_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<line_comment>--[^\n]*)
    | (?P<block_comment>/\*.*?(?:\*/|\Z))
    | (?P<jinja_comment>\{\#.*?(?:\#\}|\Z))
    | (?P<jinja_open>\{\{|\{%)
    | (?P<jinja_close>\}\}|%\})
    | (?P<string>'(?:[^']|'')*(?:'|\Z))
    | (?P<quoted>"(?:[^"]|"")*(?:"|\Z))
    | (?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?(?:\$(?P=tag)?\$|\Z))
    | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
    | (?P<word>[^\W\d]\w*)
    | (?P<symbol>::|<=|>=|<>|!=|\|\||->>|->|=>|\*\*|.)
    """,
    re.VERBOSE | re.DOTALL,
)
_DROPPED = {"space", "line_comment", "block_comment", "jinja_comment"}


def sql_tokens(text: str) -> list[str]:
    """The meaningful tokens of SQL (with Jinja templates): comments and layout dropped.

    Unquoted words are lower-cased outside ``{{ }}``/``{% %}`` because SQL keywords and
    unquoted identifiers are case-insensitive, while template variable names are not.
    """
    tokens: list[str] = []
    in_template = False
    for kind, value in _scan(text):
        if kind in _DROPPED:
            continue
        if kind == "jinja_open":
            in_template = True
        elif kind == "jinja_close":
            in_template = False
        elif kind == "word" and not in_template:
            value = value.lower()
        tokens.append(value)
    return tokens


def _scan(text: str) -> Iterator[tuple[str, str]]:
    for match in _SQL_TOKEN.finditer(text):
        yield match.lastgroup or "symbol", match.group(0)


# --------------------------------------------------------------------------- references


def _sql_files(root: Path, pipeline: PipelineFile) -> list[Path]:
    return [
        root / step.sql.strip()
        for step in pipeline.config.steps
        if isinstance(step, SqlStep) and _names_sql_file(step.sql)
    ]


def _python_files(root: Path, pipeline: PipelineFile) -> list[Path]:
    """Every project file imported, directly or transitively, by the pipeline's Python."""
    modules = [
        step.python.split(":", 1)[0]
        for step in pipeline.config.steps
        if isinstance(step, PythonStep)
    ]
    found: dict[Path, None] = {}
    pending: list[Path] = []
    for module in modules:
        paths = _module_files(root, module)
        if not paths:
            found.setdefault(root / (module.replace(".", "/") + ".py"), None)
        pending.extend(paths)
    while pending:
        path = pending.pop()
        if path in found:
            continue
        found[path] = None
        pending.extend(_imported_files(root, path))
    return sorted(found)


def _module_files(root: Path, module: str) -> list[Path]:
    """The project files executed by ``import module``: each package ``__init__`` and the
    module itself. Empty when the module is not in the project (a library, the stdlib)."""
    parts = module.split(".")
    if not all(parts):
        return []
    files: list[Path] = []
    for end in range(1, len(parts) + 1):
        base = root.joinpath(*parts[:end])
        init = base / "__init__.py"
        if init.is_file():
            files.append(init)
        elif base.with_suffix(".py").is_file() and end == len(parts):
            files.append(base.with_suffix(".py"))
        elif not base.is_dir():
            return []
    return files


def _imported_files(root: Path, path: Path) -> list[Path]:
    data = _read(path)
    if data is None:
        return []
    try:
        tree = ast.parse(data, filename=str(path))
    except (SyntaxError, ValueError):
        return []
    package = _package_of(root, path)
    files: list[Path] = []
    for module in _imported_modules(tree, package):
        files.extend(_module_files(root, module))
    return files


def _package_of(root: Path, path: Path) -> list[str]:
    """The dotted package a project file belongs to, as parts (for relative imports)."""
    try:
        relative = path.resolve().relative_to(root)
    except ValueError:
        return []
    return list(relative.parent.parts)


def _imported_modules(tree: ast.AST, package: list[str]) -> Iterator[str]:
    """Every module name an AST may import, anywhere (top level, functions, try blocks)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            if base is None:
                continue
            if base:
                yield base
            # ``from pkg import mod`` may name a submodule rather than an attribute
            yield from (f"{base}.{a.name}" if base else a.name for a in node.names
                        if a.name != "*")


def _absolute(module: str | None, level: int, package: list[str]) -> str | None:
    if level == 0:
        return module
    if level - 1 > len(package):
        return None
    parts = package[: len(package) - (level - 1)]
    if module:
        parts = [*parts, *module.split(".")]
    return ".".join(parts)
