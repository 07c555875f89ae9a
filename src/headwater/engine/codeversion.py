"""The code version of a pipeline: a fingerprint of what its code *means*.

A pipeline's code is its YAML plus every project file it uses: SQL files named by ``sql:``
steps and the Python modules named by ``python: module:function`` steps, with every project
module they import, transitively. Each file is reduced to its meaning before hashing (the
parsed YAML document, the Python AST, the SQL tokens), so comment and formatting edits do
not start a ``code_change`` run, while any change to a constant or a query does.

The hash must be stable across machines and library upgrades, which is why SQL is split by
the small tokenizer here rather than by a database's own (whose token kinds could change
between versions). This module only reads files: a missing or unparsable file is hashed as
a marker (``check`` reports it) and never raises.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from headwater.config.loader import PipelineFile
from headwater.config.models import PythonStep, SqlStep

MISSING = "missing"
"""The meaning-hash recorded for a referenced file that does not exist."""


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
    files = {_relative(root, pipeline.path): yaml_meaning(pipeline.path)}
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
        document = yaml.safe_load(data)
    except yaml.YAMLError:
        return "unparsable:" + hashlib.sha256(data).hexdigest()
    return _digest(document)


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
        if isinstance(step, SqlStep) and step.sql.strip().lower().endswith(".sql")
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
