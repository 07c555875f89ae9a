"""Broken lines in newline-delimited JSON, found by line number before the real scan.

DuckDB's JSON reader has no rejects table: with ``ignore_errors`` a broken line becomes a
row of NULLs (indistinguishable from a real one), and without it the scan fails, naming
the line *after* an unclosed object. So for ``bad_rows: skip|quarantine`` each file is
first read as plain lines (DuckDB's CSV reader with no delimiter and no quoting, which
also decompresses and reads ``\\n`` and ``\\r\\n`` alike); a line that is not one JSON
object is rejected as ``file:line`` (1-based), and a file that had any is copied without
them beside the scan's output, for ``read_json`` to read instead. Blank lines are no rows,
as for ``read_json``. A ``.json`` file that reads as one document (an array, a
pretty-printed object) is not line-based and is left to the whole-file check.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from headwater.connectors.formats import compression_of, table_call
from headwater.connectors.listing import FileInfo, display
from headwater.connectors.rejects import Bad
from headwater.sqltext import text as sql_string

__all__ = ["CleanedFiles", "drop_bad_lines", "first_bad_line"]


@dataclass
class CleanedFiles:
    """The files to scan instead of the listed ones, and the lines left out of them."""

    files: list[FileInfo]
    rejected: list[Bad] = field(default_factory=list)
    originals: dict[str, str] = field(default_factory=dict)
    """Cleaned copy path → the listed path it stands for (for ``_file`` and reasons)."""


def _lines(path: str) -> str:
    """SQL numbering every line of one file from 1 (blank lines included, as editors do).

    One call per file: ``row_number() OVER ()`` follows the scan order of a single file.
    ``new_line='\\r\\n'`` with ``strict_mode=false`` ends a line at ``\\n`` as well, so a
    file mixing both is numbered right and no line keeps a trailing ``\\r``.
    """
    reader = table_call("read_csv", [path], (
        ("columns", "{'l': 'VARCHAR'}"), ("header", "false"), ("auto_detect", "false"),
        ("delim", "''"), ("quote", "''"), ("escape", "''"), ("strict_mode", "false"),
        ("new_line", sql_string("\\r\\n")), ("compression", sql_string(compression_of(path))),
    ))
    return f"SELECT row_number() OVER () AS n, l FROM {reader}"


_BAD = ("trim(coalesce(l, ''), E' \\t\\r') <> '' AND "
        "CASE WHEN json_valid(l) THEN json_type(l) <> 'OBJECT' ELSE true END")
"""A line that holds something, but not exactly one JSON object."""


def _whole_document(con: duckdb.DuckDBPyConnection, path: str) -> bool:
    """Whether a ``.json`` file is one document (an array, a pretty-printed object) that
    ``read_json`` reads as it is: then lines mean nothing, and if it is broken the file is
    rejected whole by the caller."""
    reader = table_call("read_json", [path], (
        ("format", "'auto'"), ("compression", sql_string(compression_of(path)))))
    try:
        con.execute(f"SELECT count(*) FROM {reader}").fetchall()
    except duckdb.Error:
        good = con.execute(f"SELECT count(*) FROM ({_lines(path)}) WHERE l IS NOT NULL "
                           f"AND NOT ({_BAD}) AND trim(l) <> ''").fetchall()
        return int(good[0][0]) == 0
    return True


def _reason(line: str) -> str:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    except (ValueError, RecursionError):
        return "not valid JSON"
    return f"a JSON {_JSON_KINDS.get(type(value).__name__, 'value')}, not an object"


_JSON_KINDS = {"list": "array", "str": "string", "int": "number", "float": "number",
               "bool": "boolean", "NoneType": "null"}


def _bad_lines(con: duckdb.DuckDBPyConnection, info: FileInfo,
               root: Path | None) -> list[Bad]:
    rows = con.execute(f"SELECT n, l FROM ({_lines(info.path)}) WHERE {_BAD} ORDER BY n"
                       ).fetchall()
    where = display(info.path, root)
    return [Bad(f"{where}:{n}", _reason(str(line)),
                json.dumps({"_raw": str(line)}, ensure_ascii=False)) for n, line in rows]


def _copy_good_lines(con: duckdb.DuckDBPyConnection, path: str, target: Path) -> FileInfo:
    """Write the good lines of ``path`` verbatim (no quoting) to ``target``."""
    con.execute(f"COPY (SELECT l FROM ({_lines(path)}) WHERE l IS NOT NULL AND NOT ({_BAD}) "
                f"ORDER BY n) TO {sql_string(str(target))} "
                "(FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER E'\\x01')")
    return FileInfo(path=str(target), size=target.stat().st_size, etag="cleaned")


def drop_bad_lines(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], workdir: Path,
    *, ndjson: bool, root: Path | None,
) -> CleanedFiles:
    """Reject every line that is not a JSON object; cleaned copies stand in for the files
    that had one (written under ``workdir``, which the caller owns)."""
    result = CleanedFiles(files=[])
    for index, info in enumerate(files):
        whole = not ndjson and _whole_document(con, info.path)
        bad = [] if whole else _bad_lines(con, info, root)
        if not bad:
            result.files.append(info)
            continue
        workdir.mkdir(parents=True, exist_ok=True)
        target = workdir / f"cleaned-{index}{'.ndjson' if ndjson else '.json'}"
        result.files.append(_copy_good_lines(con, info.path, target))
        result.originals[str(target)] = info.path
        result.rejected.extend(bad)
    return result


def first_bad_line(con: duckdb.DuckDBPyConnection, path: str, upto: int) -> int | None:
    """The first line up to ``upto`` that is not a JSON object, or None.

    DuckDB names the line *after* an unclosed object; this finds the one to fix.
    """
    rows = con.execute(f"SELECT min(n) FROM ({_lines(path)}) WHERE n <= {int(upto)} AND {_BAD}"
                       ).fetchall()
    return None if not rows or rows[0][0] is None else int(rows[0][0])
