"""DuckDB read errors as one sentence a user can act on: file, line and cause.

DuckDB's messages run to a dozen lines of internals; :func:`translate_error` keeps the
full text in the error's context (for the log) and leads with
``landing/b.csv line 7: expected 5 fields, found 6``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from headwater.connectors.fsspec_util import is_remote
from headwater.connectors.json_lines import first_bad_line
from headwater.connectors.listing import FileInfo, display
from headwater.connectors.newlines import listed_path
from headwater.exceptions import TerminalSourceError

__all__ = ["translate_error"]


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
        path = listed_path(file_match.group(1).strip(), files) if file_match else _first(files)
        cause = _cause(body.splitlines()[2:] if body.count("\n") >= 2 else [body])
        return (f"{display(path, root)} line {line.group(1)}: {cause}",
                {"file": path, "line": int(line.group(1))})
    json_at = _JSON_AT.search(body)
    if json_at:
        path, number, cause = json_at.groups()
        path = listed_path(path, files)
        cause = cause.splitlines()[0].strip().rstrip(".")
        fix = _json_line(path, int(number))
        return (f"{display(path, root)} line {fix}: {cause}", {"file": path, "line": fix})
    if body.startswith("headwater: "):
        first = body.removeprefix("headwater: ").splitlines()[0]
        path, _, rest = first.partition(": ")
        return f"{display(path, root)}: {rest}", {"file": path}
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
    path = display(listed_path(quoted.group(1), files), root) if quoted else _first(files)
    if "Parquet" in first or "magic bytes" in first.lower():
        return f"{path}: not a valid Parquet file ({first})"
    if "Error when sniffing file" in first:
        return (f"{path}: cannot make out its CSV layout (delimiter, quoting, columns); is it "
                "CSV text in the declared encoding? csv.delimiter and csv.quote can be set")
    if "No files found that match the pattern" in first:
        return f"{path} does not exist"
    if "COLUMN_TYPES" in first or "Referenced column" in first:
        return f"columns: {first}"
    names = ", ".join(display(f.path, root) for f in files[:3])
    more = f" and {len(files) - 3} more" if len(files) > 3 else ""
    return f"cannot read {names}{more}: {first}"


def _first(files: Sequence[FileInfo]) -> str:
    return files[0].path if files else "?"


def _json_line(path: str, reported: int) -> int:
    """The line to fix: DuckDB names the line *after* an unclosed JSON object.

    Local files are re-read up to that line (error path only); remote ones keep DuckDB's
    number, as reading them needs the source's credentials.
    """
    if is_remote(path):
        return reported
    con = duckdb.connect()
    try:
        return first_bad_line(con, path, reported) or reported
    except duckdb.Error:
        return reported
    finally:
        con.close()
