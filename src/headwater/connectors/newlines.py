"""CSV files whose lines end in both ``\\n`` and ``\\r\\n`` (two files concatenated, say).

DuckDB's strict CSV reader cannot read them: with the newline left to it, it stops on an
invalid parser state; with one given, it reads some such files as having no rows at all.
The lenient mode would read them, but would also silently merge or cut bad rows that
strict mode rejects. So a local file that mixes the two is copied once into the run's
folder with every ``\\r\\n`` made ``\\n`` (line numbers unchanged, as each line keeps its
place) and the copy is read instead; rows and rejects still name the listed file.
Remote files are read as they are (looking into them would download them twice).

The copy of ``files[i]`` lives under ``<workdir>/<name>.normalized/<i>/``, so an error
DuckDB raises later on, naming the copy, can be traced back to the listed file.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Sequence
from pathlib import Path

from headwater.connectors.formats import compression_of
from headwater.connectors.fsspec_util import is_remote
from headwater.connectors.listing import FileInfo

__all__ = ["listed_path", "normalize_newlines"]

_CHUNK = 1 << 20
_COPY = re.compile(r"\.normalized/(\d+)/[^/]+$")


def _open(path: str) -> io.BufferedIOBase | None:
    """The file's bytes, decompressed; None where Python cannot read it cheaply."""
    compression = compression_of(path)
    local = path.removeprefix("file://")
    if compression == "gzip":
        return gzip.open(local, "rb")
    if compression == "none":
        return open(local, "rb")
    return None


def _mixes(path: str) -> bool:
    """Whether the file has both a ``\\r\\n`` and a bare ``\\n`` (outside quotes or not)."""
    handle = _open(path)
    if handle is None:
        return False
    crlf = bare = False
    last = b""
    with handle:
        while chunk := handle.read(_CHUNK):
            pairs = chunk.count(b"\r\n") + (last == b"\r" and chunk[:1] == b"\n")
            crlf = crlf or pairs > 0
            bare = bare or chunk.count(b"\n") > pairs
            if crlf and bare:
                return True
            last = chunk[-1:]
    return False


def _write_normalized(path: str, target: Path) -> None:
    handle = _open(path)
    assert handle is not None  # only files _mixes could read get here
    target.parent.mkdir(parents=True, exist_ok=True)
    with handle, open(target, "wb") as out:
        held = b""
        while chunk := handle.read(_CHUNK):
            data = held + chunk
            held = b"\r" if data.endswith(b"\r") else b""
            out.write(data[: len(data) - len(held)].replace(b"\r\n", b"\n"))
        out.write(held)


def normalize_newlines(
    files: Sequence[FileInfo], workdir: Path, name: str
) -> tuple[list[FileInfo], dict[str, str]]:
    """The files to read (copies for those that mix newlines) and copy → listed path."""
    result: list[FileInfo] = []
    originals: dict[str, str] = {}
    for index, info in enumerate(files):
        if is_remote(info.path) or not _mixes(info.path):
            result.append(info)
            continue
        base = Path(info.path.removeprefix("file://")).name
        for suffix in (".gz", ".gzip"):
            base = base.removesuffix(suffix)
        target = workdir / f"{name}.normalized" / str(index) / base
        _write_normalized(info.path, target)
        result.append(FileInfo(str(target), target.stat().st_size, info.etag))
        originals[str(target)] = info.path
    return result, originals


def listed_path(path: str, files: Sequence[FileInfo]) -> str:
    """The listed file a normalized copy stands for (``path`` itself otherwise)."""
    found = _COPY.search(path.replace("\\", "/"))
    if found is None or int(found.group(1)) >= len(files):
        return path
    return files[int(found.group(1))].path
