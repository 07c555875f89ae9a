"""File formats, column type names and the DuckDB table-function text that reads them.

Everything here is pure: names in, names or SQL text out (every value quoted through
``headwater.sqltext``). A format is told by extension (through ``.gz``/``.zst``) unless
the source declares one; a column type a pipeline writes (``float64``) maps to DuckDB's.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

from headwater.config.models import FilesSource
from headwater.connectors.listing import FileInfo, basename
from headwater.exceptions import ConfigError
from headwater.sqltext import text as sql_string

__all__ = [
    "FILE_COLUMN",
    "TYPES",
    "Format",
    "Group",
    "compression_of",
    "detect_format",
    "duckdb_type",
    "format_of",
    "hints_of",
    "path_key",
    "plain_groups",
    "sql_list",
    "sql_struct",
    "table_call",
    "union_by_name",
]

Format = Literal["csv", "json", "ndjson", "parquet"]

FILE_COLUMN = "_file"
"""The column ``filename_column: true`` adds: the path (or URL) each row came from."""

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
    name = basename(path).lower()
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def detect_format(path: str, declared: str | None) -> Format:
    """The format of ``path``: ``declared`` if given, else by extension (through .gz/.zst)."""
    if declared is not None:
        if declared not in ("csv", "json", "ndjson", "parquet"):
            raise ConfigError(f"format: unknown format {declared!r} "
                              "(use csv, json, ndjson or parquet)", problems=[])
        return cast(Format, declared)
    name = basename(path)
    if _suffix(name) in _COMPRESSIONS:
        name = name[: -len(_suffix(name))]
    found = _EXTENSIONS.get(_suffix(name))
    if found is None:
        raise ConfigError(f"cannot tell the format of {path} from its name; set format: csv, "
                          "json, ndjson or parquet on the source", problems=[])
    return found


def format_of(files: Sequence[FileInfo], declared: str | None) -> Format:
    formats = {detect_format(f.path, declared) for f in files}
    if len(formats) > 1:
        raise ConfigError(f"the files mix formats ({', '.join(sorted(formats))}); narrow the "
                          "path or pattern, or set format: on the source", problems=[])
    return formats.pop() if formats else detect_format("", declared or "csv")


# --------------------------------------------------------------------------- types

TYPES: dict[str, str] = {
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
    if key in TYPES:
        return TYPES[key]
    match = _DECIMAL.match(key)
    if match and 1 <= int(match.group(1)) <= 38 and int(match.group(2)) <= int(match.group(1)):
        return f"DECIMAL({int(match.group(1))},{int(match.group(2))})"
    close = difflib.get_close_matches(key, list(TYPES), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    message = (f"columns: unknown type {name!r}; {hint}known types: int64, float64, string, "
               "bool, date, timestamp, decimal(p,s) and DuckDB's own names")
    raise ConfigError(message, problems=[{"key": "columns", "message": message}])


def hints_of(spec: FilesSource) -> dict[str, str]:
    return {column: duckdb_type(kind) for column, kind in spec.columns.items()}


# --------------------------------------------------------------------------- SQL text


def sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(sql_string(v) for v in values) + "]"


def sql_struct(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{sql_string(k)}: {sql_string(v)}" for k, v in pairs) + "}"


def table_call(function: str, paths: Sequence[str], options: Sequence[tuple[str, str]]) -> str:
    rendered = "".join(f", {name}={value}" for name, value in options)
    return f"{function}({sql_list(paths)}{rendered})"


def union_by_name(selects: Sequence[str]) -> str:
    return " UNION ALL BY NAME ".join(selects)


@dataclass(frozen=True)
class Group:
    """Files read by one DuckDB table function call, with its options and column types."""

    paths: tuple[str, ...]
    options: tuple[tuple[str, str], ...]
    columns: tuple[tuple[str, str], ...]


def path_key(path: str) -> str:
    """A file's name without its protocol, to match what DuckDB reports to what we listed."""
    return path.split("://", 1)[1].lstrip("/") if "://" in path else path


def plain_groups(
    files: Sequence[FileInfo], options: tuple[tuple[str, str], ...], fmt: Format
) -> list[Group]:
    by_compression: dict[str, list[str]] = {}
    for info in files:
        by_compression.setdefault(compression_of(info.path), []).append(info.path)
    groups = []
    for comp, paths in by_compression.items():
        extra = () if fmt == "parquet" else (("compression", sql_string(comp)),)
        groups.append(Group(tuple(paths), options + extra, ()))
    return groups

