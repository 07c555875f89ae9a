"""CSV dialect sniffing: each file once, at plan time, into explicit ``read_csv`` options.

DuckDB's sniffer runs with ``ignore_errors`` so a bad row in the sample cannot make it
guess a wrong dialect; the options it finds (delimiter, quoting, newline, date formats,
column types) are written into the SQL, so running the relation again never sniffs again
and a bad row then fails (or is rejected) on its own line. Files of one shape share one
:class:`Group`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import duckdb

from headwater.config.models import FilesSource
from headwater.connectors.formats import (
    Group,
    compression_of,
    sql_list,
    sql_struct,
    table_call,
)
from headwater.connectors.listing import FileInfo
from headwater.exceptions import ConfigError
from headwater.sqltext import ident as sql_ident
from headwater.sqltext import text as sql_string

__all__ = ["csv_encoding", "csv_groups"]


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


def csv_encoding(encoding: str) -> str:
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
               ("encoding", sql_string(csv_encoding(opts.encoding))),
               ("compression", sql_string(compression_of(path)))]
    for name, value in (("delim", opts.delimiter), ("quote", opts.quote),
                        ("escape", opts.escape)):
        if value is not None:
            options.append((name, sql_string(value)))
    if opts.null_values is not None:
        options.append(("nullstr", sql_list(opts.null_values)))
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


def csv_groups(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], spec: FilesSource,
    hints: Mapping[str, str],
) -> list[Group]:
    shapes: dict[_CsvShape, list[str]] = {}
    for info, shape in zip(files, _sniff_all(con, files, spec), strict=True):
        shapes.setdefault(shape, []).append(info.path)
    groups = []
    for shape, paths in shapes.items():
        columns = tuple((name, hints.get(name, kind)) for name, kind in shape.columns)
        options = (("auto_detect", "false"), *shape.options, ("columns", sql_struct(columns)))
        groups.append(Group(tuple(paths), options, columns))
    return _settle_empty_columns(con, groups, hints)


def _settle_empty_columns(
    con: duckdb.DuckDBPyConnection, groups: list[Group], hints: Mapping[str, str]
) -> list[Group]:
    """A column empty in every row of some files reads as VARCHAR there; where the other
    files agree on one type, those files take it, instead of the union turning the column
    into text. Files are counted only on such a conflict (rare), never otherwise."""
    kinds: dict[str, set[str]] = {}
    for group in groups:
        for name, kind in group.columns:
            if name not in hints:
                kinds.setdefault(name, set()).add(kind)
    settled = {name: (found - {"VARCHAR"}).pop() for name, found in kinds.items()
               if len(found) == 2 and "VARCHAR" in found}
    if not settled:
        return groups
    return [_retyped(con, group, settled) for group in groups]


def _retyped(con: duckdb.DuckDBPyConnection, group: Group, settled: Mapping[str, str]) -> Group:
    text = [name for name, kind in group.columns if kind == "VARCHAR" and name in settled]
    if not text:
        return group
    counts = ", ".join(f"count({sql_ident(name)})" for name in text)
    lenient = (*group.options, ("ignore_errors", "true"))  # bad rows are the scan's business
    found = con.execute(f"SELECT {counts} FROM {table_call('read_csv', group.paths, lenient)}"
                        ).fetchall()[0]
    empty = {name for name, count in zip(text, found, strict=True) if count == 0}
    if not empty:
        return group
    columns = tuple((name, settled[name] if name in empty else kind)
                    for name, kind in group.columns)
    options = tuple(("columns", sql_struct(columns)) if key == "columns" else (key, value)
                    for key, value in group.options)
    return Group(group.paths, options, columns)


