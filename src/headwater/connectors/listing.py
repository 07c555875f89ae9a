"""Listing what a files source names: a folder, a glob, a file, or an fsspec URL of these.

Each match is a :class:`FileInfo` whose fingerprint (path + size + mtime/etag) is what an
incremental source compares with the files it ingested before. Listing only reads
directory entries and metadata, never file contents.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headwater.connectors.fsspec_util import (
    classify_path,
    etag_of,
    file_url_to_path,
    has_glob,
    is_remote,
    open_filesystem,
    source_error,
)
from headwater.exceptions import HeadwaterError, TerminalSourceError

__all__ = ["FileInfo", "basename", "display", "list_files"]


@dataclass(frozen=True)
class FileInfo:
    """One matched file: what it is and how to tell whether it changed since last time."""

    path: str
    """Absolute local path, or the full fsspec URL (``az://container/x.csv``)."""
    size: int
    etag: str
    """The remote etag, or ``str(mtime_ns)`` for a local file."""

    def fingerprint(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "etag": self.etag}


def list_files(
    path: str, *, root: Path, storage_options: Mapping[str, Any] | None = None,
    allow_empty: bool = False,
) -> list[FileInfo]:
    """Every file ``path`` names, sorted by path.

    ``path`` is a folder (its visible files, not recursive), a glob (``**`` recurses), a
    file, or an fsspec URL of any of these. Names starting with ``.`` or ``_`` (hidden
    files, ``_SUCCESS`` markers) are left out unless named exactly. Matching nothing is an
    error unless ``allow_empty`` (a landing folder waiting for its first file); a path that
    does not exist at all always is.
    """
    if classify_path(path) == "url":
        found = _list_remote(path, storage_options)
    else:
        found = _list_local(path, root)
    if not found and not allow_empty:
        reason = "matched no files" if has_glob(path) else "holds no files"
        raise TerminalSourceError(f"{path} {reason}", path=path)
    return sorted(found, key=lambda info: info.path)


def _visible(name: str) -> bool:
    return not basename(name).startswith((".", "_"))


def _local_info(path: str) -> FileInfo:
    stat = os.stat(path)
    return FileInfo(path=path, size=stat.st_size, etag=str(stat.st_mtime_ns))


def _list_local(path: str, root: Path) -> list[FileInfo]:
    target = file_url_to_path(path)
    absolute = os.path.isabs(os.path.expanduser(target))
    base = "" if absolute else glob.escape(str(root))  # the project folder is no pattern
    full = os.path.abspath(os.path.join(str(root), os.path.expanduser(target)))
    try:
        if has_glob(target):
            pattern = os.path.join(base, os.path.expanduser(target))
            names = [n for n in glob.glob(pattern, recursive=True) if os.path.isfile(n)]
            if not names and os.path.isfile(full):  # ``data[1].csv``: a name, not a pattern
                names = [full]
            return [_local_info(os.path.abspath(n)) for n in names if _visible(n)]
        if os.path.isdir(full):
            with os.scandir(full) as entries:
                return [_local_info(e.path) for e in entries if e.is_file() and _visible(e.name)]
        if os.path.isfile(full):
            return [_local_info(full)]
    except OSError as exc:
        raise source_error(path, exc) from None
    raise TerminalSourceError(f"{path} does not exist (looked for {full})", path=path)


def _list_remote(url: str, storage_options: Mapping[str, Any] | None) -> list[FileInfo]:
    """Files behind an fsspec URL, named by the filesystem's canonical protocol.

    DuckDB reports remote files by that name (``az://c/x.csv`` comes back as
    ``abfs://c/x.csv``), so listing uses it too: ``_file``, rejected rows, errors and
    fingerprints then all agree.
    """
    fs, inner = open_filesystem(url, storage_options)
    try:
        if has_glob(inner):
            infos = [i for i in fs.glob(inner, detail=True).values() if _visible(i["name"])]
        elif fs.isdir(inner):
            infos = [i for i in fs.ls(inner, detail=True) if _visible(i["name"])]
        else:
            infos = [fs.info(inner)]
    except HeadwaterError:
        raise
    except Exception as exc:  # noqa: BLE001  (adlfs, s3fs, gcsfs: each its own error tree)
        raise source_error(url, exc) from None
    return [FileInfo(path=str(fs.unstrip_protocol(str(i["name"]))),
                     size=int(i.get("size") or 0), etag=etag_of(i))
            for i in infos if i.get("type") == "file"]


def basename(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


def display(path: str, root: Path | None = None) -> str:
    """``path`` as a user wrote it: relative to the project when it lies inside it."""
    if root is None or is_remote(path):
        return path
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path
