"""``${env:NAME}`` and ``${file:PATH}`` references: resolved late, redacted everywhere.

Configs keep the reference text; :func:`resolve` turns it into the value only at the moment
a connector needs it, and registers the value with the process-wide :data:`REDACTOR` so
any log line, error message or JSON document that would carry it shows ``***`` instead.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from headwater.exceptions import ConfigError

_REF = re.compile(r"\$\{(env|file):([^}]+)\}")
MASK = "***"


class Redactor:
    """Remembers secret values and masks them in any text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        # very short values would mask ordinary words; they are weak secrets anyway
        if len(value) < 3:
            return
        with self._lock:
            if value not in self._secrets:
                self._secrets.add(value)
                ordered = sorted(self._secrets, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def __call__(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def deep(self, value: Any) -> Any:
        """Mask secrets inside nested dicts, lists and strings."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {k: self.deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep(v) for v in value]
        return value


REDACTOR = Redactor()


def has_reference(text: str) -> bool:
    return bool(_REF.search(text))


def mask_references(text: str) -> str:
    """Show a reference as ``***`` where even its name should not appear."""
    return _REF.sub(MASK, text)


def resolve(text: str, root: Path | None = None) -> str:
    """Replace every reference in ``text`` with its value and remember the value."""

    def one(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2).strip()
        if kind == "env":
            value = os.environ.get(name)
            if value is None:
                raise ConfigError(f"environment variable {name} is not set (needed by ${{env:"
                                  f"{name}}})", problems=[])
        else:
            path = Path(name).expanduser()
            if not path.is_absolute() and root is not None:
                path = root / path
            try:
                value = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"cannot read secret file {name}: {exc.strerror}",
                                  problems=[]) from None
        REDACTOR.add(value)
        return value

    return _REF.sub(one, text)


def resolve_deep(value: Any, root: Path | None = None) -> Any:
    """Resolve references inside nested dicts and lists (a connection's settings)."""
    if isinstance(value, str):
        return resolve(value, root)
    if isinstance(value, Mapping):
        return {k: resolve_deep(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_deep(v, root) for v in value]
    return value


def references(text: str) -> list[tuple[str, str]]:
    """Every ``(kind, name)`` referenced in ``text``: ``("env", "PG_PASSWORD")``."""
    return [(m.group(1), m.group(2).strip()) for m in _REF.finditer(text)]


def remember_all(texts: list[str], root: Path | None = None) -> list[str]:
    """Resolve every reference in the project's files now, so its value is masked in this
    process even where nothing has used it yet (a serve must not print a secret that sits
    in an unused connection); returns the references that cannot be resolved."""
    missing: list[str] = []
    for text in texts:
        for kind, name in references(text):
            try:
                resolve(f"${{{kind}:{name}}}", root)
            except ConfigError:
                missing.append(f"${{{kind}:{name}}}")
    return sorted(set(missing))


def project_texts(root: Path) -> list[str]:
    """The text of headwater.yaml and every pipeline file (where references live)."""
    files = [root / "headwater.yaml", *sorted((root / "pipelines").glob("*.y*ml"))]
    texts = []
    for path in files:
        try:
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    return texts
