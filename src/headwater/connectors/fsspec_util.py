"""Reach files behind fsspec URLs (``az://``, ``abfs://``, ``s3://``, ``memory://``).

Why a module of its own: the optional filesystem packages (adlfs, s3fs) are imported only
through here, so a missing extra becomes one ConfigError naming what to install, and
DuckDB learns about a remote filesystem in exactly one place. It classifies paths and
opens filesystems; it must never read file contents.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

from headwater.exceptions import (
    ConfigError,
    SourceError,
    TerminalSourceError,
    TransientSourceError,
)

if TYPE_CHECKING:
    import duckdb
    from fsspec import AbstractFileSystem

PathKind = Literal["url", "glob", "folder_or_file"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_GLOB_CHARS = frozenset("*?[")
_EXTRAS = {"az": "azure", "abfs": "azure", "abfss": "azure", "adl": "azure"}


def url_protocol(path: str) -> str | None:
    """The scheme of ``path`` (``"az"`` for ``az://c/x.csv``), or None for a plain path."""
    match = _SCHEME.match(path)
    return match.group(1).lower() if match else None


def is_remote(path: str) -> bool:
    """True for a URL that needs fsspec; ``file://`` URLs are local paths in disguise."""
    protocol = url_protocol(path)
    return protocol is not None and protocol != "file"


def file_url_to_path(url: str) -> str:
    """``file:///data/x.csv`` → ``/data/x.csv``; other strings pass through.

    Split by hand, not with urllib: ``?`` and ``#`` are glob and file-name characters here,
    not a query or a fragment.
    """
    if url_protocol(url) != "file":
        return url
    rest = url[len("file://"):]
    if rest.startswith("localhost/"):
        rest = rest[len("localhost"):]
    return unquote(rest)


def has_glob(path: str) -> bool:
    """Whether ``path`` holds a glob character (``*``, ``?``, ``[``)."""
    return any(char in _GLOB_CHARS for char in path)


def classify_path(path: str) -> PathKind:
    """How ``list_files`` treats ``path``: a remote URL, a glob, or a folder/file name."""
    if is_remote(path):
        return "url"
    if has_glob(file_url_to_path(path)):
        return "glob"
    return "folder_or_file"


def open_filesystem(
    url: str, storage_options: Mapping[str, Any] | None
) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it (without the protocol)."""
    import fsspec

    try:
        fs, inner = fsspec.url_to_fs(url, **dict(storage_options or {}))
    except ImportError as exc:
        protocol = url_protocol(url) or "?"
        extra = _EXTRAS.get(protocol)
        hint = f"pip install 'headwater[{extra}]'" if extra else f"install the fsspec package for {protocol}://"
        raise ConfigError(f"cannot open {url}: {exc}; {hint}", problems=[]) from None
    except ValueError as exc:
        raise ConfigError(f"cannot open {url}: {exc}", problems=[]) from None
    return fs, str(inner)


def etag_of(info: Mapping[str, Any]) -> str:
    """A change marker from an fsspec ``info`` dict: the etag, else the modification time."""
    for key in ("ETag", "etag", "md5", "content_md5"):
        value = info.get(key)
        if value:
            return str(value).strip('"')
    for key in ("mtime", "last_modified", "LastModified", "created", "creation_time"):
        value = info.get(key)
        if value is not None:
            return str(value)
    return ""


def source_error(url: str, exc: BaseException) -> SourceError:
    """Classify an fsspec failure: a missing file or refusal is terminal, the rest transient."""
    if isinstance(exc, FileNotFoundError):
        return TerminalSourceError(f"{url} does not exist", path=url, cause=str(exc))
    if isinstance(exc, PermissionError):
        return TerminalSourceError(f"{url}: permission denied ({exc})", path=url,
                                   cause=str(exc))
    return TransientSourceError(f"cannot list {url}: {type(exc).__name__}: {exc}", path=url,
                                cause=str(exc))


def register_filesystem(
    con: duckdb.DuckDBPyConnection, url: str, storage_options: Mapping[str, Any] | None
) -> None:
    """Let DuckDB read ``url`` through fsspec; a no-op for local paths and ``file://``.

    DuckDB knows a filesystem by its protocol name and refuses a second registration, so a
    registered one is replaced: the newest storage options win (one account per protocol
    per connection).
    """
    if not is_remote(url):
        return
    fs, _ = open_filesystem(url, storage_options)
    name = _protocol_name(fs)
    if name in con.list_filesystems():
        con.unregister_filesystem(name)
    con.register_filesystem(fs)


def _protocol_name(fs: AbstractFileSystem) -> str:
    protocol = fs.protocol
    return str(protocol if isinstance(protocol, str) else protocol[0])
