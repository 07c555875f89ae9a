"""The builder's pair: a pipeline file as JSON, and JSON written back as that file.

``definition`` reads ``pipelines/<name>.yaml`` as a JSON document (with a ``version``,
the hash of the file's text); ``save`` merges a changed document into the file without
losing its comments or order (:mod:`headwater.config.roundtrip`), after the same checks as
``headwater check`` (every problem with file, line and key; nothing written if any). A
file changed on disk since the caller read it is refused, never overwritten blindly.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headwater.config.loader import PIPELINES_DIR, PipelineFile, parse_pipeline, read_yaml_text
from headwater.exceptions import ConfigError, HeadwaterError

if TYPE_CHECKING:
    from headwater.runtime import ProjectRuntime

MAX_TEXT = 1_000_000
"""A pipeline file larger than this is a mistake (or an attack), not a pipeline."""


class Conflict(HeadwaterError):
    """The file changed on disk (or already exists) since the caller last read it."""


@dataclass
class Outcome:
    name: str
    file: str
    yaml: str
    diff: str
    version: str
    written: bool


def version_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def definition(runtime: ProjectRuntime, name: str) -> tuple[dict[str, Any], str, str]:
    """(the pipeline as JSON, its file, the file's version) of an existing pipeline."""
    pf = runtime.pipeline(name)
    from headwater.config.roundtrip import load  # ruamel: only for the builder's pages

    text = pf.path.read_text(encoding="utf-8")
    doc = load(text)
    if not isinstance(doc, dict):
        raise HeadwaterError(f"{pf.display} is not a mapping")
    return doc, pf.display, version_of(text)


def save(runtime: ProjectRuntime, name: str | None, doc: Any, *, expected: str | None = None,
         dry_run: bool = False) -> Outcome:
    """Check ``doc`` and write it: over pipeline ``name``, or as a new one if ``name`` is None.

    Raises ConfigError (every problem) or Conflict; on either nothing is written.
    """
    if not isinstance(doc, dict):
        raise ConfigError("the definition must be a JSON object (a pipeline: name, steps, ...)",
                          problems=[{"file": "", "line": None, "key": "",
                                     "message": "must be a JSON object"}])
    path, old_text = _target(runtime, name, doc)
    if expected is not None and old_text is not None and version_of(old_text) != expected:
        raise Conflict(f"{_display(runtime, path)} changed on disk since you opened it; "
                       "reload to see the new version (nothing was written)")
    from headwater.config.roundtrip import render

    text = render(doc, old_text)
    if old_text is None:
        text = _schema_header(runtime) + text
    if len(text) > MAX_TEXT:
        raise HeadwaterError(f"the pipeline is larger than {MAX_TEXT} bytes")
    display = _display(runtime, path)
    _check(runtime, path, display, text)
    diff = "".join(difflib.unified_diff((old_text or "").splitlines(keepends=True),
                                        text.splitlines(keepends=True),
                                        fromfile=f"a/{display}", tofile=f"b/{display}"))
    if not dry_run and text != old_text:
        _write(path, text)
        runtime.forget_pipelines()
    return Outcome(name=str(doc.get("name")), file=display, yaml=text, diff=diff,
                   version=version_of(text), written=not dry_run and text != old_text)


SCHEMA_HEADER = "# yaml-language-server: $schema=../schema/pipeline.schema.json\n"
"""The editor-validation header ``headwater init`` puts on pipeline files; an edited file
keeps its own header (the round-trip writer keeps comments)."""


def _schema_header(runtime: ProjectRuntime) -> str:
    """A new pipeline gets the header when the project has the schema ``init`` writes."""
    has_schema = (runtime.root / "schema" / "pipeline.schema.json").is_file()
    return SCHEMA_HEADER if has_schema else ""


def _target(runtime: ProjectRuntime, name: str | None, doc: dict[str, Any],
            ) -> tuple[Path, str | None]:
    new_name = doc.get("name")
    if name is None:
        if not isinstance(new_name, str) or not new_name:
            raise _problem("name", "required key is missing")
        _valid_name(new_name)
        path = runtime.root / PIPELINES_DIR / f"{new_name}.yaml"
        if new_name in runtime.pipelines or path.exists():
            raise Conflict(f"pipeline {new_name!r} already exists; edit it instead")
        return path, None
    pf = runtime.pipeline(name)
    if new_name != name:
        raise _problem("name", f"must stay {name!r} (renaming a pipeline would orphan its "
                               "runs and datasets; create a new pipeline instead)")
    return pf.path, pf.path.read_text(encoding="utf-8")


def _valid_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]{0,99}", name):
        raise _problem("name", "must start with a letter or _ and hold only letters, digits, "
                               "_ and - (it names the file pipelines/<name>.yaml)")


def _problem(key: str, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}", problems=[{"file": "", "line": None, "key": key,
                                                       "message": message}])


def _display(runtime: ProjectRuntime, path: Path) -> str:
    return str(path.relative_to(runtime.root))


def _check(runtime: ProjectRuntime, path: Path, display: str, text: str) -> None:
    """``headwater check`` on the text about to be written, as if it were on disk."""
    from headwater.checks import check_pipeline, published_datasets

    data, lines = read_yaml_text(text, display)
    config = parse_pipeline(data, display, lines)  # raises with every parse problem
    pf = PipelineFile(config, path, display, lines)
    others = {n: p for n, p in runtime.pipelines.items() if p.path != path}
    published = published_datasets({**others, config.name: pf})
    problems = check_pipeline(runtime, pf, published)
    if problems:
        raise ConfigError("\n".join(f"{p['file']}:{p['line']}: {p['key']}: {p['message']}"
                                    for p in problems), problems=problems)


def _write(path: Path, text: str) -> None:
    """Atomically: a reader (a trigger, ``check``) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
