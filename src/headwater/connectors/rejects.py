"""Rejected rows: what a scan could not parse, as ``REJECTED_COLUMNS`` records.

Each rejected row names its source as ``file:line`` (1-based, as an editor shows it), a
reason a user can act on, and the row itself as JSON (its fields when they can be told
apart, else ``{"_raw": line}``). Python only ever touches these rows, never good ones.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from headwater.connectors.formats import FILE_COLUMN, Group, compression_of, path_key
from headwater.connectors.fsspec_util import is_remote
from headwater.connectors.listing import display
from headwater.sqltext import ident as sql_ident
from headwater.steps.base import REJECTED_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["Bad", "csv_rejects", "drop_file", "rejected_table"]


@dataclass(frozen=True)
class Bad:
    """One rejected row before it becomes a REJECTED_COLUMNS record."""

    source: str
    error: str
    row: str


def csv_rejects(
    con: duckdb.DuckDBPyConnection, errors: str, scans: str, groups: Sequence[Group],
    root: Path | None, originals: Mapping[str, str] | None = None,
) -> list[Bad]:
    """The rows DuckDB's CSV reader put in its rejects tables, one :class:`Bad` per line
    (several failed columns of one line are joined into one reason)."""
    rows = con.execute(
        f"SELECT s.file_path, e.line, e.error_type::VARCHAR, e.column_name, e.error_message, "
        f"e.csv_line, e.line_byte_position FROM {sql_ident(errors)} e JOIN "
        f"{sql_ident(scans)} s USING (scan_id, file_id) "
        "ORDER BY s.file_path, e.line, e.column_idx").fetchall()
    listed = {path_key(p): p for g in groups for p in g.paths}
    columns = {p: g for g in groups for p in g.paths}
    lines = _physical_lines({(listed.get(path_key(str(r[0])), str(r[0])), r[6]) for r in rows})
    merged: dict[tuple[str, int], tuple[list[str], str]] = {}
    for path, row_line, kind, column, message, raw, position in rows:
        name = listed.get(path_key(str(path)), str(path))
        line = lines.get((name, position), int(row_line))
        reasons, _ = merged.setdefault((name, line), ([], str(raw or "")))
        reasons.append(_reject_reason(str(kind), column, str(message)))
    return [
        Bad(f"{display((originals or {}).get(path, path), root)}:{line}", "; ".join(reasons),
            _raw_row(raw, columns.get(path)))
        for (path, line), (reasons, raw) in merged.items()
    ]


def _physical_lines(starts: set[tuple[str, Any]]) -> dict[tuple[str, Any], int]:
    """The line an editor shows for each (file, byte offset of a rejected row's start).

    DuckDB numbers rows, so a value with a newline inside quotes shifts every later line;
    counting ``\\n`` before the offset gives the real one. Only local plain or gzip files
    are read (the error path, once per file); others keep DuckDB's number.
    """
    by_file: dict[str, list[int]] = {}
    for path, position in starts:
        if position is not None and compression_of(path) in ("none", "gzip") \
                and not is_remote(path):
            by_file.setdefault(path, []).append(int(position))
    found: dict[tuple[str, Any], int] = {}
    for path, positions in by_file.items():
        try:
            found.update(((path, p), n) for p, n in _count_lines(path, sorted(positions)))
        except OSError:
            continue
    return found


def _count_lines(path: str, positions: list[int]) -> list[tuple[int, int]]:
    local = path.removeprefix("file://")
    opener = gzip.open if compression_of(path) == "gzip" else open
    result: list[tuple[int, int]] = []
    newlines = offset = 0
    with opener(local, "rb") as handle:
        for position in positions:
            while offset < position:
                chunk = handle.read(min(1 << 20, position - offset))
                if not chunk:
                    break
                newlines += chunk.count(b"\n")
                offset += len(chunk)
            result.append((position, newlines + 1))
    return result


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


def _raw_row(raw: str, group: Group | None) -> str:
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


def drop_file(row_json: str) -> str:
    data = json.loads(row_json)
    data.pop(FILE_COLUMN, None)
    return json.dumps(data, ensure_ascii=False)


def rejected_table(bad: Sequence[Bad], run_id: str, step_id: str) -> pa.Table:
    """The REJECTED_COLUMNS records of ``bad`` (every column a string).

    Built by Arrow's JSON reader from NDJSON: every conversion of Python objects in pyarrow
    (``pa.array``, ``pa.table``, ``from_pylist``) imports pandas first, ~0.4 s, which was
    ~4 % of a ``headwater test`` suite whose fixtures hold a bad row.
    """
    import pyarrow as pa
    import pyarrow.json as pajson

    schema = pa.schema([(name, pa.string()) for name in REJECTED_COLUMNS])
    lines = [json.dumps(dict(zip(REJECTED_COLUMNS, _record(b, run_id, step_id), strict=True)),
                        ensure_ascii=False).encode() + b"\n" for b in bad]
    if not lines:
        return schema.empty_table()
    data = b"".join(lines)
    # a block must hold the longest line; Arrow's block size is an int32
    block = max(1 << 20, max(len(line) for line in lines) + 1)
    return pajson.read_json(pa.BufferReader(data),
                            read_options=pajson.ReadOptions(block_size=min(block, 2**31 - 1)),
                            parse_options=pajson.ParseOptions(explicit_schema=schema))


def _record(bad: Bad, run_id: str, step_id: str) -> tuple[str, ...]:
    values = {"_run_id": run_id, "_step": step_id, "_source": bad.source,
              "_error": bad.error, "_row": bad.row}
    return tuple(values[name] for name in REJECTED_COLUMNS)
