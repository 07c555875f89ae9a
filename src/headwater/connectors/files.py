"""Read CSV, JSON, NDJSON and Parquet files (plain, gz or zstd) through DuckDB.

The reading side of ``source: {type: files}``: list what a folder, glob or fsspec URL
matches, turn the files into DuckDB SQL that yields their rows, and, when bad rows are to
be skipped or quarantined, scan once into Parquet while DuckDB collects the rows it could
not parse. Every row goes through DuckDB (parallel, streamed as Arrow); Python only ever
touches rejected rows, never good ones.

CSV files are sniffed here, once each, at plan time (DuckDB's sniffer with
``ignore_errors`` so a bad row in the sample cannot make it guess a wrong dialect), and the
SQL carries the dialect and the column types explicitly: running the relation again never
sniffs again, and a bad row then fails on its own line instead of derailing detection.
Files with the same shape share one ``read_csv``; shapes are unioned by name, so columns
missing from a file become NULL. This module must never write outside ``out_path``.
"""

from __future__ import annotations

import csv
import difflib
import glob
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import duckdb

from headwater.config.models import FilesSource
from headwater.connectors.fsspec_util import (
    classify_path,
    etag_of,
    file_url_to_path,
    has_glob,
    is_remote,
    open_filesystem,
    register_filesystem,
    source_error,
    url_protocol,
)
from headwater.exceptions import ConfigError, HeadwaterError, TerminalSourceError
from headwater.sqltext import ident as sql_ident
from headwater.sqltext import text as sql_string
from headwater.steps.base import REJECTED_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "FILE_COLUMN",
    "FileInfo",
    "Format",
    "ScanResult",
    "compression_of",
    "detect_format",
    "duckdb_type",
    "list_files",
    "materialize",
    "register_filesystem",
    "scan_sql",
    "split_empty",
    "sql_ident",
    "sql_string",
    "translate_error",
]

Format = Literal["csv", "json", "ndjson", "parquet"]

FILE_COLUMN = "_file"
"""The column ``filename_column: true`` adds: the path (or URL) each row came from."""

_PEEK_BYTES = 64 * 1024
"""Files up to this size are looked into for emptiness; a bigger one has rows for sure."""

# --------------------------------------------------------------------------- listing


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
    path: str, *, root: Path, storage_options: Mapping[str, Any] | None = None
) -> list[FileInfo]:
    """Every file ``path`` names, sorted by path.

    ``path`` is a folder (its visible files, not recursive), a glob (``**`` recurses), a
    file, or an fsspec URL of any of these. Names starting with ``.`` or ``_`` (hidden
    files, ``_SUCCESS`` markers) are left out unless named exactly.
    """
    if classify_path(path) == "url":
        found = _list_remote(path, storage_options)
    else:
        found = _list_local(path, root)
    if not found:
        reason = "matched no files" if has_glob(path) else "holds no files"
        raise TerminalSourceError(f"{path} {reason}", path=path)
    return sorted(found, key=lambda info: info.path)


def _visible(name: str) -> bool:
    return not _basename(name).startswith((".", "_"))


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


def _basename(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


# --------------------------------------------------------------------------- formats

_COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_EXTENSIONS: dict[str, Format] = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv", ".psv": "csv", ".tab": "csv",
    ".json": "json",
    ".ndjson": "ndjson", ".jsonl": "ndjson", ".ldjson": "ndjson",
    ".parquet": "parquet", ".pq": "parquet", ".parq": "parquet",
}


def compression_of(path: str) -> str:
    """DuckDB's compression name for ``path`` by its last extension: gzip, zstd or none."""
    return _COMPRESSIONS.get(_suffix(path), "none")


def _suffix(path: str) -> str:
    name = _basename(path).lower()
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def detect_format(path: str, declared: str | None) -> Format:
    """The format of ``path``: ``declared`` if given, else by extension (through .gz/.zst)."""
    if declared is not None:
        if declared not in ("csv", "json", "ndjson", "parquet"):
            raise ConfigError(f"format: unknown format {declared!r} "
                              "(use csv, json, ndjson or parquet)", problems=[])
        return cast(Format, declared)
    name = _basename(path)
    if _suffix(name) in _COMPRESSIONS:
        name = name[: -len(_suffix(name))]
    found = _EXTENSIONS.get(_suffix(name))
    if found is None:
        raise ConfigError(f"cannot tell the format of {path} from its name; set format: csv, "
                          "json, ndjson or parquet on the source", problems=[])
    return found


def _format_of(files: Sequence[FileInfo], declared: str | None) -> Format:
    formats = {detect_format(f.path, declared) for f in files}
    if len(formats) > 1:
        raise ConfigError(f"the files mix formats ({', '.join(sorted(formats))}); narrow the "
                          "path or pattern, or set format: on the source", problems=[])
    return formats.pop() if formats else detect_format("", declared or "csv")


# --------------------------------------------------------------------------- types

_TYPES: dict[str, str] = {
    "int8": "TINYINT", "int16": "SMALLINT", "int32": "INTEGER", "int64": "BIGINT",
    "int": "BIGINT", "long": "BIGINT", "int128": "HUGEINT",
    "uint8": "UTINYINT", "uint16": "USMALLINT", "uint32": "UINTEGER", "uint64": "UBIGINT",
    "float": "DOUBLE", "float64": "DOUBLE", "double": "DOUBLE", "float32": "FLOAT",
    "real": "FLOAT", "number": "DOUBLE",
    "string": "VARCHAR", "str": "VARCHAR", "utf8": "VARCHAR", "large_string": "VARCHAR",
    "text": "VARCHAR", "varchar": "VARCHAR",
    "bool": "BOOLEAN", "boolean": "BOOLEAN",
    "date": "DATE", "date32": "DATE", "time": "TIME",
    "timestamp": "TIMESTAMP", "datetime": "TIMESTAMP", "timestamp[us]": "TIMESTAMP",
    "timestamp[s]": "TIMESTAMP_S", "timestamp[ms]": "TIMESTAMP_MS",
    "timestamp[ns]": "TIMESTAMP_NS", "timestamp_tz": "TIMESTAMPTZ",
    "timestamptz": "TIMESTAMPTZ", "datetime_tz": "TIMESTAMPTZ",
    "binary": "BLOB", "bytes": "BLOB", "blob": "BLOB",
    "json": "JSON", "uuid": "UUID", "interval": "INTERVAL", "duration": "INTERVAL",
    "decimal": "DECIMAL(18,3)", "numeric": "DECIMAL(18,3)",
    **{name.lower(): name for name in (
        "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
        "UINTEGER", "UBIGINT", "UHUGEINT", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS")},
}
"""Type names a pipeline may write (``columns: {amount: float64}``) → DuckDB types."""

_DECIMAL = re.compile(r"^(?:decimal|numeric)\((\d+),(\d+)\)$")


def duckdb_type(name: str) -> str:
    """The DuckDB type for a column type name, or a ConfigError naming the closest match."""
    key = re.sub(r"\s+", "", str(name)).lower()
    if key in _TYPES:
        return _TYPES[key]
    match = _DECIMAL.match(key)
    if match and 1 <= int(match.group(1)) <= 38 and int(match.group(2)) <= int(match.group(1)):
        return f"DECIMAL({int(match.group(1))},{int(match.group(2))})"
    close = difflib.get_close_matches(key, list(_TYPES), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    message = (f"columns: unknown type {name!r}; {hint}known types: int64, float64, string, "
               "bool, date, timestamp, decimal(p,s) and DuckDB's own names")
    raise ConfigError(message, problems=[{"key": "columns", "message": message}])


def _hints(spec: FilesSource) -> dict[str, str]:
    return {column: duckdb_type(kind) for column, kind in spec.columns.items()}


# --------------------------------------------------------------------------- SQL text


def _sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(sql_string(v) for v in values) + "]"


def _sql_struct(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{sql_string(k)}: {sql_string(v)}" for k, v in pairs) + "}"


def _call(function: str, paths: Sequence[str], options: Sequence[tuple[str, str]]) -> str:
    rendered = "".join(f", {name}={value}" for name, value in options)
    return f"{function}({_sql_list(paths)}{rendered})"


def _union(selects: Sequence[str]) -> str:
    return " UNION ALL BY NAME ".join(selects)


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Group:
    """Files read by one DuckDB table function call, with its options and column types."""

    paths: tuple[str, ...]
    options: tuple[tuple[str, str], ...]
    columns: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Plan:
    fmt: Format
    groups: tuple[_Group, ...]
    empty: tuple[str, ...]
    hints: tuple[tuple[str, str], ...]

    def columns(self) -> list[str]:
        names: dict[str, None] = {}
        for group in self.groups:
            names.update((name, None) for name, _ in group.columns)
        return list(names)


def _private_con(files: Sequence[FileInfo]) -> duckdb.DuckDBPyConnection:
    """A throwaway connection for sniffing when the caller gave none.

    Remote filesystems are registered without storage options: enough for ``memory://``
    or public buckets; private ones need the caller's connection with its options.
    """
    con = duckdb.connect()
    by_protocol = {url_protocol(f.path): f.path for f in files if is_remote(f.path)}
    for url in by_protocol.values():
        register_filesystem(con, url, None)
    return con


def split_empty(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], spec: FilesSource
) -> tuple[list[FileInfo], list[str]]:
    """The files that hold rows, and the paths of those that hold none.

    Empty means 0 bytes, only blank lines, a CSV header alone, or a JSON ``[]``, after
    decompression. DuckDB would otherwise invent a ``column0`` for them or a row of NULLs.
    Only small files are looked into, in one DuckDB query per compression (which also reads
    remote files through the registered filesystem).
    """
    kinds = _contents(con, files, spec)
    return ([f for f in files if kinds[f.path] == "rows"],
            [f.path for f in files if kinds[f.path] != "rows"])


Content = Literal["rows", "header", "blank"]


def _contents(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], spec: FilesSource
) -> dict[str, Content]:
    fmt = _format_of(files, spec.format)
    small = [f for f in files if 0 < f.size <= _PEEK_BYTES and fmt != "parquet"]
    peeked = _peek(con, small, fmt, spec.csv.encoding) if small else {}
    kinds: dict[str, Content] = {}
    for info in files:
        if info.size == 0:
            kinds[info.path] = "blank"
        elif info.path in peeked:
            kinds[info.path] = _content_of(peeked[info.path], fmt, spec.csv.header)
        else:
            kinds[info.path] = "rows"
    return kinds


def _content_of(peeked: tuple[int, str], fmt: Format, header: bool) -> Content:
    lines, text = peeked
    if fmt != "csv":
        return "blank" if text in ("", "[]") else "rows"
    if lines == 0:
        return "blank"
    return "header" if header and lines == 1 else "rows"


def _peek(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], fmt: Format, encoding: str
) -> dict[str, tuple[int, str]]:
    """Non-blank line count and text of small files; a file that cannot be decoded is left
    out (so it counts as holding rows, and the real scan reports its bad line)."""
    declared = _csv_encoding(encoding) if fmt == "csv" else "utf-8"
    try:
        return _peek_query(con, files, declared)
    except duckdb.Error:  # a decoding error in one file; find which below
        if len(files) == 1:
            return {}
    found: dict[str, tuple[int, str]] = {}
    for info in files:
        found.update(_peek(con, [info], fmt, encoding))
    return found


def _peek_query(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], encoding: str
) -> dict[str, tuple[int, str]]:
    by_compression: dict[str, list[str]] = {}
    for info in files:
        by_compression.setdefault(compression_of(info.path), []).append(info.path)
    selects = [
        "SELECT _file, count(t) FILTER (WHERE t <> '') AS n, coalesce(string_agg(t, ''), '') "
        "FROM (SELECT _file, trim(l, E' \t\r\n') AS t FROM "
        + _call("read_csv", paths, (
            ("columns", "{'l': 'VARCHAR'}"), ("header", "false"), ("auto_detect", "false"),
            ("delim", "''"), ("quote", "''"), ("escape", "''"), ("strict_mode", "false"),
            ("encoding", sql_string(encoding)), ("compression", sql_string(comp)),
            ("filename", sql_string(FILE_COLUMN))))
        + ") GROUP BY _file"
        for comp, paths in by_compression.items()
    ]
    rows = con.execute(" UNION ALL ".join(selects)).fetchall()
    found = {_path_key(str(path)): (int(n), str(text)) for path, n, text in rows}
    return {info.path: found.get(_path_key(info.path), (0, "")) for info in files}


def _path_key(path: str) -> str:
    """A file's name without its protocol, to match what DuckDB reports to what we listed."""
    return path.split("://", 1)[1].lstrip("/") if "://" in path else path


def _plan(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], spec: FilesSource,
    *, json_hints: bool, root: Path | None,
) -> _Plan:
    """Decide how to read ``files``: drop empty ones, sniff, and group alike files.

    Hints become CSV column types always (DuckDB then reports a bad value with its line).
    For JSON they do only when ``json_hints``; otherwise the caller casts them itself, row by
    row, so a bad value rejects its row instead of failing the scan.
    """
    fmt = _format_of(files, spec.format)
    hints = _hints(spec)
    kinds = _contents(con, files, spec)
    kept = [f for f in files if kinds[f.path] == "rows"]
    empty = [f.path for f in files if kinds[f.path] != "rows"]
    if not kept:
        # A header alone still tells the columns: read those for a typed, empty relation.
        kept = [f for f in files if kinds[f.path] == "header"]
    if fmt == "csv":
        groups = _csv_groups(con, kept, spec, hints)
    elif fmt == "parquet":
        groups = _parquet_groups(con, kept)
    else:
        groups = _json_groups(con, kept, fmt, hints if json_hints else {})
    plan = _Plan(fmt, tuple(groups), tuple(empty), tuple(hints.items()))
    _check_hints(plan, files, root)
    return plan


def _check_hints(plan: _Plan, files: Sequence[FileInfo], root: Path | None) -> None:
    if not plan.groups:
        return
    columns = plan.columns()
    missing = [name for name, _ in plan.hints if name not in columns]
    if missing:
        raise TerminalSourceError(
            f"columns: {', '.join(missing)} is not a column of {_display(files[0].path, root)}"
            f"{' or the other files' if len(files) > 1 else ''} (its columns: "
            f"{', '.join(columns)})", missing=missing)


def _plain_groups(
    files: Sequence[FileInfo], options: tuple[tuple[str, str], ...], fmt: Format
) -> list[_Group]:
    by_compression: dict[str, list[str]] = {}
    for info in files:
        by_compression.setdefault(compression_of(info.path), []).append(info.path)
    groups = []
    for comp, paths in by_compression.items():
        extra = () if fmt == "parquet" else (("compression", sql_string(comp)),)
        groups.append(_Group(tuple(paths), options + extra, ()))
    return groups


# --------------------------------------------------------------------------- CSV


@dataclass(frozen=True)
class _CsvShape:
    """What sniffing one CSV file found: its dialect and its typed columns."""

    options: tuple[tuple[str, str], ...]
    columns: tuple[tuple[str, str], ...]


_CSV_ENCODINGS = {
    "utf8": "utf-8", "utf-8": "utf-8", "utf-8-sig": "utf-8",
    "utf16": "utf-16", "utf-16": "utf-16", "utf-16le": "utf-16", "utf-16-le": "utf-16",
    "latin1": "latin-1", "latin-1": "latin-1", "iso-8859-1": "latin-1",
    "iso8859-1": "latin-1", "l1": "latin-1",
}
_NEWLINES = ("\\n", "\\r\\n", "\\r")
_SNIFF_THREADS = 4


def _csv_encoding(encoding: str) -> str:
    try:
        return _CSV_ENCODINGS[encoding.strip().lower().replace("_", "-")]
    except KeyError:
        message = (f"csv: encoding {encoding!r} is not supported "
                   "(use utf-8, utf-16 or latin-1)")
        raise ConfigError(message, problems=[{"key": "csv.encoding", "message": message}]) \
            from None


def _csv_user_options(spec: FilesSource, path: str) -> list[tuple[str, str]]:
    opts = spec.csv
    options = [("header", "true" if opts.header else "false"), ("skip", "0"),
               ("encoding", sql_string(_csv_encoding(opts.encoding))),
               ("compression", sql_string(compression_of(path)))]
    for name, value in (("delim", opts.delimiter), ("quote", opts.quote),
                        ("escape", opts.escape)):
        if value is not None:
            options.append((name, sql_string(value)))
    if opts.null_values is not None:
        options.append(("nullstr", _sql_list(opts.null_values)))
    return options


def _looks_like_text(path: str) -> bool:
    """False for a local file whose first 4 KiB hold NUL bytes (remote files: assume text)."""
    if "://" in path and not path.startswith("file://"):
        return True
    try:
        with open(path.removeprefix("file://"), "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return True
    return b"\x00" not in head


def _sniff_csv(con: duckdb.DuckDBPyConnection, info: FileInfo, spec: FilesSource) -> _CsvShape:
    user = _csv_user_options(spec, info.path)
    rendered = "".join(f", {k}={v}" for k, v in user)
    query = ("SELECT Delimiter, Quote, Escape, NewLineDelimiter, Comment, Columns, DateFormat, "
             f"TimestampFormat FROM sniff_csv({sql_string(info.path)}{rendered}, "
             "ignore_errors=true{extra})")
    try:
        row = con.execute(query.format(extra="")).fetchall()[0]
    except duckdb.InvalidInputException:
        # DuckDB's sniffer gives up when a small file's sample holds a short row (it
        # samples the whole file); the lenient dialect search still finds the layout, and
        # the scan itself stays strict, so the bad row is still caught on its own line.
        # Binary data must keep failing here, so only text gets the second chance.
        if not _looks_like_text(info.path):
            raise
        row = con.execute(query.format(extra=", strict_mode=false")).fetchall()[0]
    delim, quote, escape, newline, comment, columns, date_format, ts_format = row
    options = [o for o in user if o[0] not in ("delim", "quote", "escape")]
    options += _quoting(spec, delim, _unempty(quote), _unempty(escape))
    for name, value in (("new_line", newline if newline in _NEWLINES else ""),
                        ("comment", _unempty(comment)), ("dateformat", date_format),
                        ("timestampformat", ts_format)):
        if value:
            options.append((name, sql_string(value)))
    typed = tuple((str(c["name"]), str(c["type"])) for c in columns)
    return _CsvShape(tuple(options), typed)


def _quoting(spec: FilesSource, delim: str, quote: str, escape: str) -> list[tuple[str, str]]:
    """Sniffed quoting, with RFC 4180 defaults where the sample showed none.

    A sample without quotes says nothing about the rows after it; ``"`` as quote (and a
    doubled quote as escape) reads those rows too, and unquoted files alike.
    """
    if spec.csv.quote is not None:
        quote = spec.csv.quote
    elif not quote:
        quote = '"'
    if spec.csv.escape is not None:
        escape = spec.csv.escape
    elif not escape:
        escape = quote
    return [("delim", sql_string(delim)), ("quote", sql_string(quote)),
            ("escape", sql_string(escape))]


def _sniff_all(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], spec: FilesSource
) -> list[_CsvShape]:
    """Sniff every file, on a few cursors at once: sniffing waits on I/O, not on Python."""
    workers = min(_SNIFF_THREADS, len(files) // 16)
    if workers < 2:
        return [_sniff_csv(con, info, spec) for info in files]
    chunks = [list(files[i::workers]) for i in range(workers)]

    def sniff_chunk(chunk: list[FileInfo]) -> list[_CsvShape]:
        with con.cursor() as cursor:
            return [_sniff_csv(cursor, info, spec) for info in chunk]

    with ThreadPoolExecutor(workers, thread_name_prefix="hw-sniff") as pool:
        results = list(pool.map(sniff_chunk, chunks))
    by_index = {offset + n * workers: shape
                for offset, result in enumerate(results) for n, shape in enumerate(result)}
    return [by_index[i] for i in range(len(files))]


def _unempty(value: str | None) -> str:
    return "" if value in (None, "(empty)") else str(value)


def _csv_groups(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], spec: FilesSource,
    hints: Mapping[str, str],
) -> list[_Group]:
    shapes: dict[_CsvShape, list[str]] = {}
    for info, shape in zip(files, _sniff_all(con, files, spec), strict=True):
        shapes.setdefault(shape, []).append(info.path)
    groups = []
    for shape, paths in shapes.items():
        columns = tuple((name, hints.get(name, kind)) for name, kind in shape.columns)
        options = (("auto_detect", "false"), *shape.options, ("columns", _sql_struct(columns)))
        groups.append(_Group(tuple(paths), options, columns))
    return groups


# --------------------------------------------------------------------------- JSON, Parquet


def _describe(con: duckdb.DuckDBPyConnection, call: str) -> list[tuple[str, str]]:
    described = con.execute(f"DESCRIBE SELECT * FROM {call}").fetchall()
    return [(str(row[0]), str(row[1])) for row in described]


def _json_groups(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], fmt: Format,
    hints: Mapping[str, str],
) -> list[_Group]:
    """Sniff JSON once here, then read with explicit columns so no later run re-sniffs."""
    layout = "'newline_delimited'" if fmt == "ndjson" else "'auto'"
    groups = []
    for group in _plain_groups(files, (("format", layout),), fmt):
        sniffed = _describe(con, _call("read_json", group.paths,
                                       (*group.options, ("union_by_name", "true"))))
        columns = tuple((name, hints.get(name, kind)) for name, kind in sniffed)
        options = (*group.options, ("auto_detect", "false"), ("columns", _sql_struct(columns)))
        groups.append(_Group(group.paths, options, columns))
    return groups


def _parquet_groups(con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo]) -> list[_Group]:
    """Parquet carries its schema; reading the footers tells the columns for hint checks."""
    options = (("union_by_name", "true"),)
    groups = _plain_groups(files, options, "parquet")
    return [_Group(g.paths, g.options, tuple(_describe(con, _call("read_parquet", g.paths,
                                                                     g.options))))
            for g in groups]


# --------------------------------------------------------------------------- scan SQL

_FUNCTIONS = {"csv": "read_csv", "json": "read_json", "ndjson": "read_json",
              "parquet": "read_parquet"}


def _select(plan: _Plan, *, with_file: bool) -> str:
    """The union of every group's table function call, as one SELECT."""
    if not plan.groups:
        return _empty_select(plan, with_file=with_file)
    function = _FUNCTIONS[plan.fmt]
    extra = (("filename", sql_string(FILE_COLUMN)),) if with_file else ()
    return _union([f"SELECT * FROM {_call(function, g.paths, (*g.options, *extra))}"
                   for g in plan.groups])


def _empty_select(plan: _Plan, *, with_file: bool) -> str:
    columns = [f"CAST(NULL AS {kind}) AS {sql_ident(name)}" for name, kind in plan.hints]
    if with_file or not columns:
        columns.append(f"CAST(NULL AS VARCHAR) AS {sql_ident(FILE_COLUMN)}")
    return f"SELECT {', '.join(columns)} WHERE false"


def scan_sql(
    files: Sequence[FileInfo], spec: FilesSource, *, root: Path,
    con: duckdb.DuckDBPyConnection | None = None,
) -> str:
    """DuckDB SQL yielding every row of ``files`` lazily, for ``bad_rows: fail``.

    CSV files are sniffed now (once, not on every run of the SQL) on ``con``, which must have
    the filesystem of remote files registered (:func:`register_filesystem`); a private
    connection serves local files. Type hints become column types, so a value that does not
    convert fails naming its file and line. Empty files are left out; if every file is
    empty the SQL yields no rows, with the hinted columns (or only ``_file``).
    """
    connection = con if con is not None else _private_con(files)
    try:
        return _final_select(_plan(connection, files, spec, json_hints=True, root=root), spec)
    except duckdb.Error as exc:
        raise translate_error(exc, files, "", root=root) from None
    finally:
        if con is None:
            connection.close()


def _needs_file(plan: _Plan) -> bool:
    return plan.fmt == "parquet" and bool(plan.hints)


def _parquet_cast_select(relation: str, plan: _Plan, *, keep_file: bool) -> str:
    """Cast hinted Parquet columns, failing a value that does not convert with its file."""
    casts = []
    for name, kind in plan.hints:
        col = sql_ident(name)
        reason = (f"'headwater: ' || {FILE_COLUMN} || ': column {_escape(name)}: cannot "
                  f"convert \"' || CAST({col} AS VARCHAR) || '\" to {kind}'")
        casts.append(f"CASE WHEN {col} IS NULL THEN NULL WHEN TRY_CAST({col} AS {kind}) IS NULL"
                     f" THEN error({reason}) ELSE TRY_CAST({col} AS {kind}) END AS {col}")
    exclude = "" if keep_file else f" EXCLUDE ({FILE_COLUMN})"
    return f"SELECT *{exclude} REPLACE ({', '.join(casts)}) FROM ({relation})"


def _escape(text: str) -> str:
    return text.replace("'", "''")


# --------------------------------------------------------------------------- materialize


@dataclass
class ScanResult:
    """What a materializing scan kept and what it rejected."""

    rows: int
    rejected: pa.Table | None
    """Rejected rows in the REJECTED_COLUMNS schema (all strings), or None if none."""
    skipped: int
    empty_files: list[str]


def materialize(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], spec: FilesSource,
    out_path: Path, *, run_id: str, step_id: str, root: Path | None = None,
) -> ScanResult:
    """Scan ``files`` once into Parquet at ``out_path``, collecting rows that fail to parse.

    With ``bad_rows: fail`` a bad row raises (file and line in the message); otherwise the
    good rows are written and each bad one comes back with ``file:line`` and its reason.
    Memory stays bounded: DuckDB streams the scan into the file through COPY.
    """
    try:
        if spec.bad_rows == "fail":
            plan = _plan(con, files, spec, json_hints=True, root=root)
            rows = _copy(con, _final_select(plan, spec), out_path)
            return ScanResult(rows, None, 0, list(plan.empty))
        plan = _plan(con, files, spec, json_hints=False, root=root)
        if plan.fmt == "csv":
            rows, bad = _materialize_csv(con, plan, spec, out_path, root)
        else:
            rows, bad = _materialize_cast(con, plan, spec, out_path, root)
    except duckdb.Error as exc:
        raise translate_error(exc, files, step_id, root=root) from None
    table = _rejected_table(bad, run_id, step_id) if bad else None
    return ScanResult(rows, table, len(bad), list(plan.empty))


def _final_select(plan: _Plan, spec: FilesSource) -> str:
    relation = _select(plan, with_file=spec.filename_column or _needs_file(plan))
    if plan.fmt == "parquet" and plan.hints and plan.groups:
        return _parquet_cast_select(relation, plan, keep_file=spec.filename_column)
    return relation


def _copy(con: duckdb.DuckDBPyConnection, select: str, out_path: Path) -> int:
    target = sql_string(str(out_path))
    result = con.execute(f"COPY ({select}) TO {target} (FORMAT parquet, COMPRESSION zstd)")
    return int(result.fetchall()[0][0])


@dataclass(frozen=True)
class _Bad:
    """One rejected row before it becomes a REJECTED_COLUMNS record."""

    source: str
    error: str
    row: str


def _materialize_csv(
    con: duckdb.DuckDBPyConnection, plan: _Plan, spec: FilesSource, out_path: Path,
    root: Path | None,
) -> tuple[int, list[_Bad]]:
    token = uuid.uuid4().hex
    errors, scans = f"hw_rejects_{token}", f"hw_reject_scans_{token}"
    rejects = (("store_rejects", "true"), ("rejects_table", sql_string(errors)),
               ("rejects_scan", sql_string(scans)), ("rejects_limit", "0"))
    with_rejects = _Plan(plan.fmt, tuple(
        _Group(g.paths, (*g.options, *rejects), g.columns) for g in plan.groups),
        plan.empty, plan.hints)
    try:
        rows = _copy(con, _select(with_rejects, with_file=spec.filename_column), out_path)
        bad = _csv_rejects(con, errors, scans, plan, root) if plan.groups else []
    finally:
        con.execute(f"DROP TABLE IF EXISTS {sql_ident(errors)}")
        con.execute(f"DROP TABLE IF EXISTS {sql_ident(scans)}")
    return rows, bad


def _csv_rejects(
    con: duckdb.DuckDBPyConnection, errors: str, scans: str, plan: _Plan, root: Path | None
) -> list[_Bad]:
    rows = con.execute(
        f"SELECT s.file_path, e.line, e.error_type::VARCHAR, e.column_name, e.error_message, "
        f"e.csv_line FROM {sql_ident(errors)} e JOIN {sql_ident(scans)} s "
        "USING (scan_id, file_id) ORDER BY s.file_path, e.line, e.column_idx").fetchall()
    listed = {_path_key(p): p for g in plan.groups for p in g.paths}
    columns = {p: g for g in plan.groups for p in g.paths}
    merged: dict[tuple[str, int], tuple[list[str], str]] = {}
    for path, line, kind, column, message, raw in rows:
        name = listed.get(_path_key(str(path)), str(path))
        reasons, _ = merged.setdefault((name, int(line)), ([], str(raw or "")))
        reasons.append(_reject_reason(str(kind), column, str(message)))
    return [
        _Bad(f"{_display(path, root)}:{line}", "; ".join(reasons),
             _raw_row(raw, columns.get(path)))
        for (path, line), (reasons, raw) in merged.items()
    ]


def _reject_reason(kind: str, column: str | None, message: str) -> str:
    if kind == "CAST":
        found = re.search(r'Could not convert string "(.*)" to \'?([^\'.]+)', message, re.S)
        if found:
            return f"column {column}: cannot convert {found.group(1)!r} to {found.group(2)}"
    if kind in ("TOO MANY COLUMNS", "MISSING COLUMNS"):
        found = re.search(r"Expected Number of Columns: (\d+) Found: (\d+)", message)
        if found:
            return f"expected {found.group(1)} fields, found {found.group(2)}"
    if kind == "INVALID ENCODING":
        return "invalid bytes for the file's encoding (set csv.encoding, e.g. latin-1)"
    if kind == "UNQUOTED VALUE":
        return f"a quote is not closed or stands inside an unquoted value ({message})"
    return message.strip().splitlines()[0] if message.strip() else kind.lower()


def _raw_row(raw: str, group: _Group | None) -> str:
    """The rejected line as a JSON object of its fields, or ``{"_raw": line}``."""
    names = [name for name, _ in group.columns] if group else []
    options = dict(group.options) if group else {}
    delimiter = _literal(options.get("delim")) or ","
    quote = _literal(options.get("quote")) or None
    try:
        fields = next(csv.reader([raw], delimiter=delimiter[0], quotechar=quote or '"',
                                 quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE))
    except (csv.Error, StopIteration):
        fields = []
    if names and len(fields) == len(names):
        return json.dumps(dict(zip(names, fields, strict=True)), ensure_ascii=False)
    return json.dumps({"_raw": raw}, ensure_ascii=False)


def _literal(value: str | None) -> str:
    if value is None or len(value) < 2:
        return ""
    return value[1:-1].replace("''", "'")


def _materialize_cast(
    con: duckdb.DuckDBPyConnection, plan: _Plan, spec: FilesSource, out_path: Path,
    root: Path | None,
) -> tuple[int, list[_Bad]]:
    """JSON and Parquet: a value that does not convert to its hinted type rejects its row.

    Neither reader keeps a rejects table, so this takes two passes when there are hints:
    the good rows stream into ``out_path``, then the (few) bad ones are fetched.
    """
    if not plan.hints or not plan.groups:
        return _copy(con, _select(plan, with_file=spec.filename_column), out_path), []
    source = _select(plan, with_file=True)
    checks = [(name, kind, f"({sql_ident(name)} IS NOT NULL AND "
               f"TRY_CAST({sql_ident(name)} AS {kind}) IS NULL)") for name, kind in plan.hints]
    failed = " OR ".join(check for _, _, check in checks)
    casts = ", ".join(f"TRY_CAST({sql_ident(n)} AS {k}) AS {sql_ident(n)}" for n, k, _ in checks)
    exclude = "" if spec.filename_column else f" EXCLUDE ({FILE_COLUMN})"
    good = f"SELECT *{exclude} REPLACE ({casts}) FROM ({source}) WHERE NOT ({failed})"
    rows = _copy(con, good, out_path)
    reasons = " || ".join(
        f"CASE WHEN {check} THEN 'column {_escape(name)}: cannot convert ' || "
        f"{_quoted_value(plan, name)} || ' to {kind}; ' ELSE '' END"
        for name, kind, check in checks)
    bad_rows = con.execute(
        f"SELECT {FILE_COLUMN}, rtrim({reasons}, '; '), CAST(to_json(src) AS VARCHAR) "
        f"FROM ({source}) AS src WHERE {failed}").fetchall()
    return rows, [_Bad(_display(str(path), root), str(reason), _drop_file(str(row)))
                  for path, reason, row in bad_rows]


def _quoted_value(plan: _Plan, name: str) -> str:
    """SQL showing a bad value in a reason; JSON values carry their own quotes already."""
    kinds = {kind for group in plan.groups for column, kind in group.columns if column == name}
    text = f"CAST({sql_ident(name)} AS VARCHAR)"
    return text if kinds == {"JSON"} else f"'\"' || {text} || '\"'"


def _drop_file(row_json: str) -> str:
    data = json.loads(row_json)
    data.pop(FILE_COLUMN, None)
    return json.dumps(data, ensure_ascii=False)


def _rejected_table(bad: Sequence[_Bad], run_id: str, step_id: str) -> pa.Table:
    import pyarrow as pa

    columns = {
        "_run_id": [run_id] * len(bad), "_step": [step_id] * len(bad),
        "_source": [b.source for b in bad], "_error": [b.error for b in bad],
        "_row": [b.row for b in bad],
    }
    return pa.table({name: pa.array(columns[name], pa.string()) for name in REJECTED_COLUMNS})


# --------------------------------------------------------------------------- errors


def _display(path: str, root: Path | None = None) -> str:
    """``path`` as a user wrote it: relative to the project when it lies inside it."""
    if root is None or is_remote(path):
        return path
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


_CSV_LINE = re.compile(r"CSV Error on Line: (\d+)")
_CSV_FILE = re.compile(r"^\s*file = (.+)$", re.M)
_JSON_AT = re.compile(r'in file "(.+?)", (?:at byte \d+ )?in line (\d+): (.+)')
_CAUSES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Expected Number of Columns: (\d+) Found: (\d+)"),
     "expected {0} fields, found {1}"),
    (re.compile(r'Error when converting column "(.+?)"\. Could not convert string "(.*?)" '
                r"to '?([^'\n]+?)'?$", re.M),
     "column {0}: cannot convert {1!r} to {2}"),
    (re.compile(r"Invalid unicode \(byte sequence mismatch\)"),
     "the bytes are not valid for the file's encoding (set csv.encoding, e.g. latin-1)"),
    (re.compile(r"Value with unterminated quote found"),
     "a quoted value is not closed"),
)


def translate_error(
    exc: Exception, files: Sequence[FileInfo], step_id: str, *, root: Path | None = None
) -> TerminalSourceError:
    """A DuckDB read error as one short sentence naming file, line and cause.

    The full DuckDB text stays in ``context["duckdb"]`` for the log; the message is what a
    user reads first (``landing/b.csv line 7: expected 5 fields, found 6``).
    """
    text = str(exc)
    body = re.sub(r"^[A-Za-z ]*Error: ", "", text.strip())
    message, where = _explain(body, files, root)
    return TerminalSourceError(message, step=step_id, duckdb=text, **where)


def _explain(
    body: str, files: Sequence[FileInfo], root: Path | None
) -> tuple[str, dict[str, Any]]:
    line = _CSV_LINE.search(body)
    if line:
        file_match = _CSV_FILE.search(body)
        path = file_match.group(1).strip() if file_match else _first(files)
        cause = _cause(body.splitlines()[2:] if body.count("\n") >= 2 else [body])
        return (f"{_display(path, root)} line {line.group(1)}: {cause}",
                {"file": path, "line": int(line.group(1))})
    json_at = _JSON_AT.search(body)
    if json_at:
        path, number, cause = json_at.groups()
        cause = cause.splitlines()[0].strip().rstrip(".")
        return (f"{_display(path, root)} line {number}: {cause}",
                {"file": path, "line": int(number)})
    if body.startswith("headwater: "):
        first = body.removeprefix("headwater: ").splitlines()[0]
        path, _, rest = first.partition(": ")
        return f"{_display(path, root)}: {rest}", {"file": path}
    return _explain_other(body, files, root), {}


def _cause(lines: Sequence[str]) -> str:
    joined = "\n".join(lines)
    for pattern, template in _CAUSES:
        found = pattern.search(joined)
        if found:
            return template.format(*found.groups())
    first = next((ln.strip() for ln in lines if ln.strip()), "unreadable row")
    return first.rstrip(".")


def _explain_other(body: str, files: Sequence[FileInfo], root: Path | None) -> str:
    first = body.splitlines()[0].strip() if body.strip() else "unknown error"
    quoted = re.search(r"""['"]([^'"]+)['"]""", first)
    path = _display(quoted.group(1), root) if quoted else _first(files)
    if "Parquet" in first or "magic bytes" in first.lower():
        return f"{path}: not a valid Parquet file ({first})"
    if "Error when sniffing file" in first:
        return (f"{path}: cannot make out its CSV layout (delimiter, quoting, columns); is it "
                "CSV text in the declared encoding? csv.delimiter and csv.quote can be set")
    if "No files found that match the pattern" in first:
        return f"{path} does not exist"
    if "COLUMN_TYPES" in first or "Referenced column" in first:
        return f"columns: {first}"
    names = ", ".join(_display(f.path, root) for f in files[:3])
    more = f" and {len(files) - 3} more" if len(files) > 3 else ""
    return f"cannot read {names}{more}: {first}"


def _first(files: Sequence[FileInfo]) -> str:
    return files[0].path if files else "?"
