"""Read CSV, JSON, NDJSON and Parquet files (plain, gz or zstd) through DuckDB.

The reading side of ``source: {type: files}``: list what a folder, glob or fsspec URL
matches, turn the files into DuckDB SQL that yields their rows, and, when bad rows are to
be skipped or quarantined, scan once into Parquet while DuckDB collects the rows it could
not parse. Every row goes through DuckDB (parallel, streamed as Arrow); Python only ever
touches rejected rows, never good ones.

This module plans and runs the scan; it is also the one entry other code imports, so the
pieces it is built from stay private to the package: ``listing`` (what matches),
``formats`` (formats, type names, table-function text), ``csv_sniff`` (CSV dialects),
``rejects`` (rejected-row records) and ``errors`` (DuckDB errors as sentences). Files of
one shape share one table-function call; shapes are unioned by name, so columns missing
from a file become NULL. This module must never write outside ``out_path``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import duckdb

from headwater.config.models import FilesSource
from headwater.connectors.csv_sniff import csv_encoding, csv_groups
from headwater.connectors.errors import translate_error
from headwater.connectors.formats import (
    FILE_COLUMN,
    Format,
    Group,
    compression_of,
    detect_format,
    duckdb_type,
    format_of,
    hints_of,
    path_key,
    plain_groups,
    sql_struct,
    table_call,
    union_by_name,
)
from headwater.connectors.fsspec_util import (
    has_glob,
    is_remote,
    register_filesystem,
    url_protocol,
)
from headwater.connectors.json_lines import drop_bad_lines
from headwater.connectors.listing import FileInfo, display, list_files
from headwater.connectors.newlines import normalize_newlines
from headwater.connectors.rejects import Bad, csv_rejects, drop_file, rejected_table
from headwater.exceptions import TerminalSourceError
from headwater.sqltext import ident as sql_ident
from headwater.sqltext import text as sql_string

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
    "has_glob",
    "list_files",
    "materialize",
    "register_filesystem",
    "scan_partition",
    "scan_sql",
    "split_empty",
    "sql_ident",
    "sql_string",
    "translate_error",
]

_PEEK_BYTES = 64 * 1024
"""Files up to this size are looked into for emptiness; a bigger one has rows for sure."""

# --------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class _Plan:
    fmt: Format
    groups: tuple[Group, ...]
    empty: tuple[str, ...]
    hints: tuple[tuple[str, str], ...]
    originals: tuple[tuple[str, str], ...] = ()
    """A cleaned copy's path → the listed file it stands for (``json_lines``)."""

    def original(self, path: str) -> str:
        return dict(self.originals).get(path, path)

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
    threads = os.environ.get("HEADWATER_DUCKDB_THREADS", "").strip()  # engine.duckdb_pool
    con = duckdb.connect(config={"threads": int(threads)} if threads.isdigit() and
                         int(threads) > 0 else {})
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
    fmt = format_of(files, spec.format)
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
    declared = csv_encoding(encoding) if fmt == "csv" else "utf-8"
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
        + table_call("read_csv", paths, (
            ("columns", "{'l': 'VARCHAR'}"), ("header", "false"), ("auto_detect", "false"),
            ("delim", "''"), ("quote", "''"), ("escape", "''"), ("strict_mode", "false"),
            ("encoding", sql_string(encoding)), ("compression", sql_string(comp)),
            ("filename", sql_string(FILE_COLUMN))))
        + ") GROUP BY _file"
        for comp, paths in by_compression.items()
    ]
    rows = con.execute(" UNION ALL ".join(selects)).fetchall()
    found = {path_key(str(path)): (int(n), str(text)) for path, n, text in rows}
    return {info.path: found.get(path_key(info.path), (0, "")) for info in files}


def _plan(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], spec: FilesSource,
    *, json_hints: bool, root: Path | None, workdir: Path | None = None, name: str = "scan",
) -> _Plan:
    """Decide how to read ``files``: drop empty ones, sniff, and group alike files.

    Hints become CSV column types always (DuckDB then reports a bad value with its line).
    For JSON they do only when ``json_hints``; otherwise the caller casts them itself, row by
    row, so a bad value rejects its row instead of failing the scan. With a ``workdir``,
    CSV files mixing ``\\n`` and ``\\r\\n`` are read from normalized copies written there.
    """
    fmt = format_of(files, spec.format)
    hints = hints_of(spec)
    originals: dict[str, str] = {}
    if fmt == "csv" and workdir is not None:
        files, originals = normalize_newlines(files, workdir, name)
    kinds = _contents(con, files, spec)
    kept = [f for f in files if kinds[f.path] == "rows"]
    empty = [f.path for f in files if kinds[f.path] != "rows"]
    if not kept:
        # A header alone still tells the columns: read those for a typed, empty relation.
        kept = [f for f in files if kinds[f.path] == "header"]
    if fmt == "csv":
        groups = csv_groups(con, kept, spec, hints)
    elif fmt == "parquet":
        groups = _parquet_groups(con, kept)
    else:
        # cast later, row by row; but text is read as text, or DuckDB's type detection
        # would turn a string "INFINITY" or "2026-01-01" into a number or date first
        text = {n: k for n, k in hints.items() if k == "VARCHAR"}
        groups = _json_groups(con, kept, fmt, hints if json_hints else text)
    plan = _Plan(fmt, tuple(groups), tuple(empty), tuple(hints.items()),
                 tuple(originals.items()))
    _check_hints(plan, files, root)
    return plan


def _check_hints(plan: _Plan, files: Sequence[FileInfo], root: Path | None) -> None:
    if not plan.groups:
        return
    columns = plan.columns()
    missing = [name for name, _ in plan.hints if name not in columns]
    if missing:
        raise TerminalSourceError(
            f"columns: {', '.join(missing)} is not a column of {display(files[0].path, root)}"
            f"{' or the other files' if len(files) > 1 else ''} (its columns: "
            f"{', '.join(columns)})", missing=missing)


# --------------------------------------------------------------------------- JSON, Parquet

def _describe(con: duckdb.DuckDBPyConnection, call: str) -> list[tuple[str, str]]:
    described = con.execute(f"DESCRIBE SELECT * FROM {call}").fetchall()
    return [(str(row[0]), str(row[1])) for row in described]


def _json_groups(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], fmt: Format,
    hints: Mapping[str, str],
) -> list[Group]:
    """Sniff JSON once here, then read with explicit columns so no later run re-sniffs."""
    layout = "'newline_delimited'" if fmt == "ndjson" else "'auto'"
    groups = []
    for group in plain_groups(files, (("format", layout),), fmt):
        sniffed = _describe(con, table_call("read_json", group.paths,
                                       (*group.options, ("union_by_name", "true"))))
        columns = tuple((name, hints.get(name, kind)) for name, kind in sniffed)
        options = (*group.options, ("auto_detect", "false"), ("columns", sql_struct(columns)))
        groups.append(Group(group.paths, options, columns))
    return groups


def _parquet_groups(con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo]) -> list[Group]:
    """Parquet carries its schema; reading the footers tells the columns for hint checks."""
    options = (("union_by_name", "true"),)
    groups = plain_groups(files, options, "parquet")
    return [Group(g.paths, g.options, tuple(_describe(con, table_call("read_parquet", g.paths,
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
    union = union_by_name([f"SELECT * FROM {table_call(function, g.paths, (*g.options, *extra))}"
                           for g in plan.groups])
    if not (with_file and plan.originals):
        return union
    cases = " ".join(f"WHEN {sql_string(copy)} THEN {sql_string(original)}"
                     for copy, original in plan.originals)
    column = sql_ident(FILE_COLUMN)
    return f"SELECT * REPLACE (CASE {column} {cases} ELSE {column} END AS {column}) FROM ({union})"


def _empty_select(plan: _Plan, *, with_file: bool) -> str:
    columns = [f"CAST(NULL AS {kind}) AS {sql_ident(name)}" for name, kind in plan.hints]
    if with_file or not columns:
        columns.append(f"CAST(NULL AS VARCHAR) AS {sql_ident(FILE_COLUMN)}")
    return f"SELECT {', '.join(columns)} WHERE false"


def scan_sql(
    files: Sequence[FileInfo], spec: FilesSource, *, root: Path,
    con: duckdb.DuckDBPyConnection | None = None, workdir: Path | None = None,
    name: str = "scan",
) -> str:
    """DuckDB SQL yielding every row of ``files`` lazily, for ``bad_rows: fail``.

    CSV files are sniffed now (once, not on every run of the SQL) on ``con``, which must have
    the filesystem of remote files registered (:func:`register_filesystem`); a private
    connection serves local files. Type hints become column types, so a value that does not
    convert fails naming its file and line. Empty files are left out; if every file is
    empty the SQL yields no rows, with the hinted columns (or only ``_file``). Copies of
    CSV files mixing newlines are written under ``workdir`` (which must outlive the SQL).
    """
    connection = con if con is not None else _private_con(files)
    try:
        plan = _plan(connection, files, spec, json_hints=True, root=root, workdir=workdir,
                     name=name)
        return _final_select(plan, spec)
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
            return _materialize_strict(con, files, spec, out_path, root)
        return _materialize_lenient(con, files, spec, out_path, run_id=run_id,
                                    step_id=step_id, root=root)
    except duckdb.Error as exc:
        raise translate_error(exc, files, step_id, root=root) from None


def _materialize_strict(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], spec: FilesSource,
    out_path: Path, root: Path | None,
) -> ScanResult:
    try:
        plan = _plan(con, files, spec, json_hints=True, root=root, workdir=out_path.parent,
                     name=out_path.stem)
        rows = _copy(con, _final_select(plan, spec), out_path)
    finally:
        shutil.rmtree(_normalized(out_path), ignore_errors=True)
    return ScanResult(rows, None, 0, [plan.original(p) for p in plan.empty])


def _normalized(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + ".normalized")


def _materialize_lenient(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], spec: FilesSource,
    out_path: Path, *, run_id: str, step_id: str, root: Path | None,
) -> ScanResult:
    """``skip``/``quarantine``: bad lines are rejected, and so is a file that cannot be read
    at all (a corrupt Parquet file, a broken JSON document), whole, with its reason; the
    other files still land. Only when every file fails is it the source's error."""
    try:
        scanned = _scan_lenient(con, files, spec, out_path, root)
    except (duckdb.Error, TerminalSourceError):
        unreadable = _unreadable(con, files, spec, out_path, step_id, root)
        if not unreadable or len(unreadable) == len(files):
            raise
        readable = [f for f in files if f.path not in unreadable]
        scanned = _scan_lenient(con, readable, spec, out_path, root)
        scanned = replace(scanned, bad=[*unreadable.values(), *scanned.bad])
    table = rejected_table(scanned.bad, run_id, step_id) if scanned.bad else None
    return ScanResult(scanned.rows, table, len(scanned.bad), scanned.empty)


@dataclass(frozen=True)
class _Scanned:
    rows: int
    bad: list[Bad]
    empty: list[str]


def _scan_lenient(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], spec: FilesSource,
    out_path: Path, root: Path | None,
) -> _Scanned:
    fmt = format_of(files, spec.format)
    cleaned = out_path.with_name(out_path.stem + ".cleaned")
    lines = None
    try:
        if fmt in ("json", "ndjson"):
            lines = drop_bad_lines(con, files, cleaned, ndjson=fmt == "ndjson", root=root)
            files = lines.files
        plan = _plan(con, files, spec, json_hints=False, root=root, workdir=out_path.parent,
                     name=out_path.stem)
        if lines is not None:
            plan = replace(plan, originals=tuple(lines.originals.items()))
        if plan.fmt == "csv":
            rows, bad = _materialize_csv(con, plan, spec, out_path, root)
        else:
            rows, bad = _materialize_cast(con, plan, spec, out_path, root)
    finally:
        shutil.rmtree(cleaned, ignore_errors=True)
        shutil.rmtree(_normalized(out_path), ignore_errors=True)
    line_bad = lines.rejected if lines is not None else []
    return _Scanned(rows, [*line_bad, *bad], [plan.original(p) for p in plan.empty])


def _unreadable(
    con: duckdb.DuckDBPyConnection, files: Sequence[FileInfo], spec: FilesSource,
    out_path: Path, step_id: str, root: Path | None,
) -> dict[str, Bad]:
    """Each file that fails on its own, as one rejected record naming it and the cause.

    Runs only after a scan of all the files failed, so its cost (each file read again,
    alone) is paid on bad input only.
    """
    found: dict[str, Bad] = {}
    probe = out_path.with_name(out_path.stem + ".probe.parquet")
    for info in files:
        try:
            _scan_lenient(con, [info], spec, probe, root)
        except (duckdb.Error, TerminalSourceError) as exc:
            error = exc if isinstance(exc, TerminalSourceError) else \
                translate_error(exc, [info], step_id, root=root)
            where = display(info.path, root)
            found[info.path] = Bad(where, f"file rejected whole: {error.message}",
                                   json.dumps({"_file": where}, ensure_ascii=False))
        finally:
            probe.unlink(missing_ok=True)
    return found


def _final_select(plan: _Plan, spec: FilesSource) -> str:
    relation = _select(plan, with_file=spec.filename_column or _needs_file(plan))
    if plan.fmt == "parquet" and plan.hints and plan.groups:
        return _parquet_cast_select(relation, plan, keep_file=spec.filename_column)
    return relation


def _copy(con: duckdb.DuckDBPyConnection, select: str, out_path: Path) -> int:
    target = sql_string(str(out_path))
    result = con.execute(f"COPY ({select}) TO {target} (FORMAT parquet, COMPRESSION zstd)")
    return int(result.fetchall()[0][0])


def _materialize_csv(
    con: duckdb.DuckDBPyConnection, plan: _Plan, spec: FilesSource, out_path: Path,
    root: Path | None,
) -> tuple[int, list[Bad]]:
    token = uuid.uuid4().hex
    errors, scans = f"hw_rejects_{token}", f"hw_reject_scans_{token}"
    rejects = (("store_rejects", "true"), ("rejects_table", sql_string(errors)),
               ("rejects_scan", sql_string(scans)), ("rejects_limit", "0"))
    with_rejects = replace(plan, groups=tuple(
        Group(g.paths, (*g.options, *rejects), g.columns) for g in plan.groups))
    try:
        rows = _copy(con, _select(with_rejects, with_file=spec.filename_column), out_path)
        bad = csv_rejects(con, errors, scans, plan.groups, root,
                                  dict(plan.originals)) if plan.groups else []
    finally:
        con.execute(f"DROP TABLE IF EXISTS {sql_ident(errors)}")
        con.execute(f"DROP TABLE IF EXISTS {sql_ident(scans)}")
    return rows, bad


def _materialize_cast(
    con: duckdb.DuckDBPyConnection, plan: _Plan, spec: FilesSource, out_path: Path,
    root: Path | None,
) -> tuple[int, list[Bad]]:
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
    return rows, [Bad(display(plan.original(str(path)), root), str(reason), drop_file(str(row)))
                  for path, reason, row in bad_rows]


def _quoted_value(plan: _Plan, name: str) -> str:
    """SQL showing a bad value in a reason; JSON values carry their own quotes already."""
    kinds = {kind for group in plan.groups for column, kind in group.columns if column == name}
    text = f"CAST({sql_ident(name)} AS VARCHAR)"
    return text if kinds == {"JSON"} else f"'\"' || {text} || '\"'"


# --------------------------------------------------------------------------- partitions


def scan_partition(spec: FilesSource, root: Path, out_dir: Path, name: str,
                   part: tuple[int, Sequence[FileInfo]]) -> tuple[str, int]:
    """Scan one partition of a files source into one Parquet file; ``(path, rows)``.

    Runs on a cluster worker (``steps.base.FanOut``): the partition's files are sniffed
    and planned here, as ``scan_sql`` plans any set of files (type hints and their errors
    naming file and line included), so the server plans nothing and stays out of the
    parallel part. Partitions whose sniffed types differ are unified when read back
    (``read_parquet(..., union_by_name=true)`` widens to a common type). The file appears
    under its final name only when complete (written aside, renamed), so a partition
    retried after its worker died never leaves half a file behind.
    """
    index, files = part
    con = _private_con(files)
    final = out_dir / f"{name}.part-{index:04d}.parquet"
    aside = final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        scan = scan_sql(files, spec, root=root, con=con, workdir=out_dir,
                        name=f"{name}-p{index}")
        rows = _copy(con, scan, aside)
        aside.replace(final)
    except duckdb.Error as exc:
        raise translate_error(exc, files, name, root=root) from None
    finally:
        con.close()
        aside.unlink(missing_ok=True)
    return str(final), rows
