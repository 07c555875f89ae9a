"""Where a run's DuckDB may read and write: the project, the warehouse, declared sources.

SQL steps run text that templates and users wrote; DuckDB's file functions
(``read_text``, ``read_csv``, ``COPY ... TO``) would otherwise reach any file the process
can. A run's database therefore gets ``allowed_directories`` (the project folder, its run
and spill folders, the warehouse, and the fixed prefix of every files source and files
trigger of the project) and then ``enable_external_access = false`` and
``lock_configuration``, so no SQL can widen them again.

Two escape hatches, both read from the environment of the process that runs the pipeline
(never from a pipeline file, which a webhook cannot change either):
``HEADWATER_DUCKDB_ALLOWED`` adds folders or URL prefixes (``os.pathsep``-separated), and
``HEADWATER_DUCKDB_UNCONFINED=1`` turns confinement off.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from headwater.runtime import ProjectRuntime

_GLOB_OR_TEMPLATE = re.compile(r"[*?\[{]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$")
_ALIASES = {"az": ("abfs", "abfss"), "abfs": ("az", "abfss"), "abfss": ("az", "abfs"),
            "s3": ("s3a",), "s3a": ("s3",), "gs": ("gcs",), "gcs": ("gs",)}
"""fsspec registers a filesystem under its first protocol name (``az://`` is read as
``abfs://``), so a prefix is allowed under every name of its filesystem."""


def unconfined() -> bool:
    return os.environ.get("HEADWATER_DUCKDB_UNCONFINED", "").strip() in ("1", "true", "yes")


def allowed_directories(runtime: ProjectRuntime) -> tuple[str, ...]:
    """Every prefix a run of this project may touch, sorted (the pool keys on it)."""
    found: set[str] = set()
    for place in (str(runtime.root), runtime.warehouse, *_declared_paths(runtime),
                  *_extra()):
        found.update(_forms(place, runtime.root))
    return tuple(sorted(found))


def _declared_paths(runtime: ProjectRuntime) -> Iterable[str]:
    """The fixed prefix of every files source and files trigger path of the project."""
    from headwater.config.models import SourceStep

    for pf in runtime.pipelines.values():
        for step in pf.config.steps:
            source = getattr(step, "source", None) if isinstance(step, SourceStep) else None
            if source is not None and getattr(source, "type", "") == "files":
                yield _fixed_prefix(source.path)
        for trigger in pf.config.triggers:
            if trigger.files is not None:
                yield _fixed_prefix(trigger.files.path)


def _fixed_prefix(path: str) -> str:
    """``landing/2026-*/x.csv`` → ``landing/``: the folder before any glob or template; a
    path without either (a file, or a folder) allows its parent folder."""
    match = _GLOB_OR_TEMPLATE.search(path)
    head = path[:match.start()] if match else path.rstrip("/")
    return head[:head.rfind("/") + 1]


def _extra() -> list[str]:
    raw = os.environ.get("HEADWATER_DUCKDB_ALLOWED", "")
    return [part for part in raw.split(os.pathsep) if part.strip()]


def _forms(place: str, root: Path) -> set[str]:
    """A place as DuckDB compares it: an absolute folder with a trailing slash; a URL both
    as written and with the triple slash DuckDB normalises fsspec URLs to."""
    match = _SCHEME.match(place)
    if match is not None and match.group(1).lower() != "file":
        scheme, rest = match.group(1).lower(), match.group(2).lstrip("/")
        rest = rest if rest.endswith("/") or not rest else rest + "/"
        return {form for name in (scheme, *_ALIASES.get(scheme, ()))
                for form in (f"{name}://{rest}", f"{name}:///{rest}")}
    path = Path(place.removeprefix("file://")).expanduser()
    if not path.is_absolute():
        path = root / path
    folder = str(path.resolve())
    return {folder.rstrip("/") + "/"}


def confine(db: object, allowed: tuple[str, ...]) -> None:
    """Limit ``db`` to ``allowed`` for good (the configuration is locked afterwards)."""
    from headwater.sqltext import text

    execute = db.execute  # type: ignore[attr-defined]
    execute(f"SET allowed_directories = [{', '.join(text(a) for a in allowed)}]")
    execute("SET enable_external_access = false")
    execute("SET lock_configuration = true")
