"""The builder's "show me the first rows" of a files source, before any pipeline exists.

Lists and scans the files exactly as a run's ``source: {type: files}`` step would (the
connector's own ``list_files`` and ``scan_sql``), so a format or path problem shows the
same message the run would give. Local paths must stay inside the project folder: the
form must not become a way to read any file on the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from headwater.config.models import FilesSource
from headwater.datasets.stats import jsonable
from headwater.exceptions import HeadwaterError

if TYPE_CHECKING:
    from headwater.runtime import ProjectRuntime

MAX_FILES = 20
MAX_ROWS = 50


def preview_source(runtime: ProjectRuntime, spec: Any, limit: int = 10) -> dict[str, Any]:
    """``{"files": [...], "columns": [...], "rows": [[...]]}`` of a files source."""
    import duckdb

    from headwater.connectors.files import list_files, scan_sql
    from headwater.connectors.fsspec_util import classify_path

    source = _parse(spec)
    if classify_path(source.path) != "url":
        _inside(runtime.root, source.path)
    options = None
    if source.connection:
        options = {k: v for k, v in runtime.connection(source.connection).items() if k != "type"}
    files = list_files(source.path, root=runtime.root, storage_options=options)[:MAX_FILES]
    sql = scan_sql(files, source, root=runtime.root)
    try:
        with duckdb.connect() as con:
            cursor = con.execute(f"SELECT * FROM ({sql}) LIMIT {max(1, min(limit, MAX_ROWS))}")
            columns = [d[0] for d in cursor.description]
            rows = [[jsonable(v) for v in row] for row in cursor.fetchall()]
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HeadwaterError(f"cannot read {source.path}: {first}") from None
    return {"files": [_shown(runtime.root, f.path) for f in files], "columns": columns,
            "rows": rows}


def _shown(root: Path, path: str) -> str:
    """A local file relative to the project, as the user typed it; URLs as they are."""
    local = Path(path)
    if local.is_absolute() and local.is_relative_to(root):
        return str(local.relative_to(root))
    return path


def _parse(spec: Any) -> FilesSource:
    if not isinstance(spec, dict):
        raise HeadwaterError("the source must be a JSON object: {type: files, path, format}")
    try:
        return FilesSource.model_validate({"type": "files", **spec})
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise HeadwaterError(f"source.{where}: {first['msg']}") from None


def _inside(root: Path, path: str) -> None:
    """A relative path (or glob) that stays within ``root``."""
    head = path.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
    target = (root / head).resolve() if not Path(head).is_absolute() else Path(head).resolve()
    if not target.is_relative_to(root.resolve()):
        raise HeadwaterError(f"source.path: {path!r} is outside the project folder; use a "
                             "path relative to it (or a connection's URL)")
