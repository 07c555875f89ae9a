"""Properties of the CSV and NDJSON readers under ``bad_rows: quarantine``, over random
files: every good row lands exactly once with its values, every bad line is rejected
once with its ``file:line``, and nothing crashes (delimiters, quotes, newlines inside
values, unicode, ``\\n`` and ``\\r\\n`` mixed, blank lines)."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.config.models import FilesSource
from headwater.connectors import files as fc

PROPERTY = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

# Text for values: any unicode but surrogates (not encodable), NUL and lone CR (which
# the CSV normalization would turn into a line end), including delimiters and quotes.
VALUE = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00\r"),
                max_size=12)


@dataclass(frozen=True)
class Line:
    """One record to write: a good row (id, name) or a broken line (text)."""

    id: int | None
    name: str | None
    broken: str | None = None


def _scan(root: Path, pattern: str, spec: dict[str, Any]
          ) -> tuple[dict[int, Any], list[str], list[int]]:
    """Quarantine-scan; (good rows by id, rejected sources, ids seen, with repeats)."""
    source = FilesSource.model_validate({"type": "files", "path": pattern,
                                         "bad_rows": "quarantine", **spec})
    con = duckdb.connect()
    try:
        listed = fc.list_files(pattern, root=root)
        out = root / "out" / "raw.parquet"
        out.parent.mkdir(exist_ok=True)
        result = fc.materialize(con, listed, source, out, run_id="r", step_id="raw",
                                root=root)
        rows = con.execute(f"SELECT id, name FROM read_parquet({fc.sql_string(str(out))})"
                           ).fetchall()
    finally:
        con.close()
    rejected = result.rejected.to_pylist() if result.rejected is not None else []
    return ({int(i): n for i, n in rows}, sorted(r["_source"] for r in rejected),
            [int(i) for i, _ in rows])


def _records(draw: st.DrawFn, broken: st.SearchStrategy[str]) -> list[Line]:
    ids = draw(st.lists(st.integers(0, 10**9), unique=True, max_size=12))
    lines = [Line(i, draw(VALUE)) for i in ids]
    for _ in range(draw(st.integers(0, 4))):
        lines.insert(draw(st.integers(0, len(lines))), Line(None, None, draw(broken)))
    return lines


# --------------------------------------------------------------------------- NDJSON

NDJSON_BROKEN = st.one_of(
    st.builds(lambda t: json.dumps({"id": 1, "name": t}, ensure_ascii=False)[:-1], VALUE),
    st.sampled_from(['[1, 2]', '"text"', '42', '{"id": }', "{", "null", "{'id': 1}"]),
    st.builds(lambda t: "x" + t.replace("\n", " "), VALUE),
)


@st.composite
def ndjson_files(draw: st.DrawFn) -> list[list[tuple[Line, str]]]:
    """Files of (line, its ending), with blank lines now and then."""
    files = []
    for _ in range(draw(st.integers(1, 3))):
        lines = _records(draw, NDJSON_BROKEN)
        if draw(st.booleans()):
            lines.insert(draw(st.integers(0, len(lines))), Line(None, None, ""))
        files.append([(line, draw(st.sampled_from(["\n", "\r\n"]))) for line in lines])
    return files


def _ndjson_text(lines: list[tuple[Line, str]]) -> tuple[str, list[int]]:
    """The file's text and the 1-based numbers of its broken (non-blank) lines."""
    out, bad = [], []
    for number, (line, ending) in enumerate(lines, start=1):
        if line.broken is None:
            out.append(json.dumps({"id": line.id, "name": line.name}, ensure_ascii=False))
        else:
            out.append(line.broken)
            if line.broken.strip():
                bad.append(number)
        out.append(ending)
    return "".join(out), bad


@PROPERTY
@given(files=ndjson_files())
def test_ndjson_good_rows_land_once_and_bad_lines_are_rejected_by_line(
    files: list[list[tuple[Line, str]]]
) -> None:
    """Random NDJSON files with broken lines: each good record lands exactly once with
    its name; each broken line is rejected as ``file:line``; ids never repeat."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "landing").mkdir()
        expected: dict[int, Any] = {}
        expected_rejects: list[str] = []
        taken: set[int] = set()
        for index, lines in enumerate(files):
            lines = [(ln, e) for ln, e in lines if ln.id is None or ln.id not in taken]
            taken.update(ln.id for ln, _ in lines if ln.id is not None)
            text, bad = _ndjson_text(lines)
            (root / "landing" / f"f{index}.ndjson").write_text(text, encoding="utf-8")
            expected.update({ln.id: ln.name for ln, _ in lines if ln.id is not None})
            expected_rejects += [f"landing/f{index}.ndjson:{n}" for n in bad]
        rows, rejects, ids = _scan(root, "landing/*.ndjson",
                                   {"columns": {"id": "int64", "name": "string"}})
    assert expected == rows
    assert len(ids) == len(set(ids))
    assert sorted(expected_rejects) == rejects


# --------------------------------------------------------------------------- CSV

CSV_BROKEN = st.builds(lambda n: ",".join(["1", "x", "extra"] + ["y"] * n),
                       st.integers(0, 3))
"""A row with too many fields (another kind of bad line: a missing field, below)."""


@st.composite
def csv_files(draw: st.DrawFn) -> list[list[tuple[Line, str]]]:
    files = []
    for _ in range(draw(st.integers(1, 3))):
        broken = st.one_of(CSV_BROKEN, st.just("7"))
        lines = _records(draw, broken)
        mixed = draw(st.booleans())
        first = draw(st.sampled_from(["\n", "\r\n"]))
        files.append([(line, draw(st.sampled_from(["\n", "\r\n"])) if mixed else first)
                      for line in lines])
    return files


def _csv_text(lines: list[tuple[Line, str]]) -> tuple[str, list[int]]:
    """The file's text (header first) and the physical line each bad row starts on."""
    out, bad, number = ["id,name\n"], [], 2
    for line, ending in lines:
        if line.broken is not None:
            text = line.broken
            bad.append(number)
        else:
            buffer = io.StringIO()  # "\r\n" as terminator: values holding \n get quoted
            csv.writer(buffer, lineterminator="\r\n").writerow([line.id, line.name])
            text = buffer.getvalue()[:-2]
        out.append(text + ending)
        number += 1 + text.count("\n")
    return "".join(out), bad


@PROPERTY
@given(files=csv_files())
def test_csv_good_rows_land_once_and_bad_rows_are_rejected_by_line(
    files: list[list[tuple[Line, str]]]
) -> None:
    """Random CSV files (quotes, delimiters and newlines inside values, unicode, mixed line
    endings) with rows of the wrong width: each good row lands exactly once with its
    value; each bad row is rejected as ``file:line``; ids never repeat."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "landing").mkdir()
        expected: dict[int, Any] = {}
        expected_rejects: list[str] = []
        taken: set[int] = set()
        for index, lines in enumerate(files):
            lines = [(ln, e) for ln, e in lines if ln.id is None or ln.id not in taken]
            taken.update(ln.id for ln, _ in lines if ln.id is not None)
            text, bad = _csv_text(lines)
            (root / "landing" / f"f{index}.csv").write_bytes(text.encode("utf-8"))
            # an empty field is NULL, as for every CSV reader
            expected.update({ln.id: ln.name or None for ln, _ in lines if ln.id is not None})
            expected_rejects += [f"landing/f{index}.csv:{n}" for n in bad]
        rows, rejects, ids = _scan(root, "landing/*.csv", {
            "columns": {"id": "int64", "name": "string"},
            "csv": {"delimiter": ",", "quote": '"'}})
    assert expected == rows
    assert len(ids) == len(set(ids))
    assert sorted(expected_rejects) == rejects
