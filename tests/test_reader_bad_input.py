"""Bad input in files sources, case by case: input files → the rows that land and the rows
rejected (``_source`` as file:line, 1-based), or the error naming the file.

Each case is a small folder written here (text in the test, binary Parquet made by
pyarrow) and scanned for real through DuckDB, as a ``source: {type: files}`` step does.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headwater as hw
from headwater.config.models import FilesSource
from headwater.connectors import files as fc
from headwater.exceptions import TerminalSourceError
from tests.conftest import ProjectFactory, write


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def _files(root: Path, contents: dict[str, str | bytes]) -> None:
    for name, content in contents.items():
        path = root / "landing" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)


def _scan(con: duckdb.DuckDBPyConnection, root: Path, pattern: str,
          **options: Any) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]]]:
    """Materialize like a skip/quarantine source; rows sorted, rejects as (source, error)."""
    spec = FilesSource.model_validate({"type": "files", "path": pattern, **options})
    listed = fc.list_files(pattern, root=root)
    out = root / "work" / "raw.parquet"
    out.parent.mkdir(exist_ok=True)
    result = fc.materialize(con, listed, spec, out, run_id="r1", step_id="raw", root=root)
    rows = sorted(con.execute(f"SELECT * FROM read_parquet({fc.sql_string(str(out))})")
                  .fetchall(), key=repr)
    rejected = result.rejected.to_pylist() if result.rejected is not None else []
    assert len(rejected) == result.skipped
    assert [] == sorted(p.name for p in out.parent.iterdir() if p != out)  # no leftovers
    return rows, sorted((r["_source"], r["_error"]) for r in rejected)


NDJSON_BROKEN = ('{"id": 1, "name": "a"}\n'
                 '{"id": 2, "name": "b"\n'        # line 2: an object never closed
                 '\n'                               # line 3: blank, no row
                 '[1, 2]\n'                         # line 4: JSON, but not an object
                 '{"id": 3, "name": "c, \\"q\\""}\r\n'
                 '   \n'                            # line 6: only spaces, no row
                 '{"id": 4, "name": "é"}')          # line 7: no final newline


@pytest.mark.parametrize("bad_rows", ["skip", "quarantine"])
def test_ndjson_broken_lines_are_rejected_by_line(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, bad_rows: str
) -> None:
    """A broken NDJSON line is rejected as file:line (the line itself, not the next one);
    blank lines are no rows; every good line of that file and of the others lands."""
    _files(tmp_path, {"a.ndjson": NDJSON_BROKEN, "b.ndjson": '{"id": 10, "name": "z"}\n'})
    rows, rejects = _scan(con, tmp_path, "landing/*.ndjson", bad_rows=bad_rows)
    assert [(1, "a"), (10, "z"), (3, 'c, "q"'), (4, "é")] == rows
    assert ["landing/a.ndjson:2", "landing/a.ndjson:4"] == [source for source, _ in rejects]
    assert "not valid JSON" in rejects[0][1]
    assert "a JSON array, not an object" == rejects[1][1]


def test_ndjson_rejects_keep_the_raw_line_and_the_file_column(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """``_row`` holds the broken line as it was; ``_file`` names the listed file, never the
    cleaned copy read in its place."""
    _files(tmp_path, {"a.ndjson.gz": gzip.compress(NDJSON_BROKEN.encode())})
    spec = FilesSource.model_validate({"type": "files", "path": "landing", "format": "ndjson",
                                       "bad_rows": "quarantine", "filename_column": True})
    listed = fc.list_files("landing", root=tmp_path)
    out = tmp_path / "raw.parquet"
    result = fc.materialize(con, listed, spec, out, run_id="r1", step_id="raw", root=tmp_path)
    files = {row[0] for row in con.execute(
        f"SELECT DISTINCT _file FROM read_parquet({fc.sql_string(str(out))})").fetchall()}
    assert {listed[0].path} == files
    assert result.rejected is not None
    assert {"_raw": '{"id": 2, "name": "b"'} == json.loads(result.rejected["_row"][0].as_py())


def test_ndjson_type_hint_failure_still_rejects_its_row(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """Broken lines and values that do not convert to a hinted type are rejected together."""
    _files(tmp_path, {"a.ndjson": '{"id": 1}\n{"id": "x"}\n{"id": \n{"id": 4}\n'})
    rows, rejects = _scan(con, tmp_path, "landing/a.ndjson", bad_rows="quarantine",
                          columns={"id": "int64"})
    assert [(1,), (4,)] == rows
    assert ["landing/a.ndjson", "landing/a.ndjson:3"] == [s for s, _ in rejects]
    assert "cannot convert" in rejects[0][1]


def test_json_document_broken_is_rejected_whole_beside_good_ones(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """A JSON array file that does not parse is rejected as a whole, naming it; a
    pretty-printed good file and an NDJSON-style ``.json`` file beside it land."""
    _files(tmp_path, {
        "bad.json": '[{"id": 1}, {"id": 2',
        "pretty.json": '[\n  {"id": 3},\n  {"id": 4}\n]\n',
        "lines.json": '{"id": 5}\n{"id": 6\n{"id": 7}\n',
    })
    rows, rejects = _scan(con, tmp_path, "landing/*.json", bad_rows="skip")
    assert [(3,), (4,), (5,), (7,)] == rows
    assert ["landing/bad.json", "landing/lines.json:2"] == [s for s, _ in rejects]
    assert "landing/bad.json" in rejects[0][1]


def _parquet(path: Path, ids: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64())}), path)


@pytest.mark.parametrize("bad_rows", ["skip", "quarantine"])
def test_corrupt_parquet_is_rejected_whole_and_good_files_land(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, bad_rows: str
) -> None:
    """One corrupt Parquet file among good ones: it is rejected whole with a reason naming
    it; the rows of the good files are ingested."""
    _parquet(tmp_path / "landing/a.parquet", [1, 2])
    _parquet(tmp_path / "landing/c.parquet", [3])
    good = (tmp_path / "landing/a.parquet").read_bytes()
    (tmp_path / "landing/b.parquet").write_bytes(good[: len(good) // 2] + b"PAR1")
    rows, rejects = _scan(con, tmp_path, "landing/*.parquet", bad_rows=bad_rows)
    assert [(1,), (2,), (3,)] == rows
    assert ["landing/b.parquet"] == [s for s, _ in rejects]
    assert "landing/b.parquet" in rejects[0][1]


def test_every_file_corrupt_is_the_source_error(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """When no file can be read the scan fails (nothing to keep), naming the file."""
    _files(tmp_path, {"b.parquet": b"PAR1 not parquet at all PAR1"})
    with pytest.raises(TerminalSourceError, match=r"landing/b\.parquet"):
        _scan(con, tmp_path, "landing/*.parquet", bad_rows="quarantine")


def test_corrupt_parquet_with_fail_names_the_file(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """``bad_rows: fail`` (the default) fails on a corrupt Parquet file, naming it."""
    _parquet(tmp_path / "landing/a.parquet", [1])
    _files(tmp_path, {"b.parquet": b"PAR1 not parquet at all PAR1"})
    with pytest.raises(TerminalSourceError, match=r"landing/b\.parquet"):
        _scan(con, tmp_path, "landing/*.parquet")


def test_ndjson_fail_names_the_broken_line_not_the_next(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """With ``bad_rows: fail`` an unclosed object on line 2 is reported as line 2 (DuckDB
    itself names line 3, where it noticed)."""
    _files(tmp_path, {"a.ndjson": '{"id": 1}\n{"id": 2\n{"id": 3}\n'})
    with pytest.raises(TerminalSourceError, match=r"landing/a.ndjson line 2\b"):
        _scan(con, tmp_path, "landing/a.ndjson")


MIXED = "id,name\r\n1,a\r\n2,b\n3,c\r\n4,d\n"
LF_WITH_QUOTED_CRLF = 'id,name\n5,e\n6,"f\r\ng"\n'


@pytest.mark.parametrize("bad_rows", ["fail", "skip", "quarantine"])
def test_csv_mixing_newlines_is_read(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, bad_rows: str
) -> None:
    """CSV files mixing ``\\n`` and ``\\r\\n`` (plain or gzip) read every row, none lost."""
    _files(tmp_path, {"m.csv": MIXED, "n.csv.gz": gzip.compress(LF_WITH_QUOTED_CRLF.encode()),
                      "o.csv": "id,name\r\n7,h\r\n"})
    rows, rejects = _scan(con, tmp_path, "landing/*", bad_rows=bad_rows, format="csv")
    assert [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e"), (6, "f\ng"), (7, "h")] == rows
    assert [] == rejects


def test_csv_mixing_newlines_rejects_name_the_listed_file_and_line(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """A bad row in a mixed-newline file is rejected with that file's name and its line."""
    _files(tmp_path, {"m.csv": "id,name\r\n1,a\n2,b,extra\r\n3,c\n"})
    rows, rejects = _scan(con, tmp_path, "landing/m.csv", bad_rows="quarantine",
                          columns={"id": "int64"})
    assert [(1, "a"), (3, "c")] == rows
    assert [("landing/m.csv:3", "expected 2 fields, found 3")] == rejects


def test_csv_mixing_newlines_fail_names_the_listed_file(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """The lazy ``fail`` scan reads a normalized copy; its error still names the listed
    file and the line in it."""
    _files(tmp_path, {"m.csv": "id,name\r\n1,a\n2,b,extra\r\n3,c\n"})
    listed = fc.list_files("landing/m.csv", root=tmp_path)
    spec = FilesSource.model_validate({"type": "files", "path": "landing/m.csv"})
    sql = fc.scan_sql(listed, spec, root=tmp_path, con=con, workdir=tmp_path / "run",
                      name="raw")
    with pytest.raises(duckdb.Error) as caught:
        con.execute(sql).fetchall()
    error = fc.translate_error(caught.value, listed, "raw", root=tmp_path)
    assert "landing/m.csv line 3: expected 2 fields, found 3" == error.message


def _ndjson_pipeline(bad_rows: str) -> str:
    return f"""
    name: events
    steps:
      - id: raw
        source: {{type: files, path: landing/*.ndjson, bad_rows: {bad_rows}}}
      - id: publish
        publish: {{input: raw, dataset: events}}
    """


def test_ndjson_quarantine_end_to_end(make_project: ProjectFactory) -> None:
    """Through a whole run: the good lines are published, the broken one lands in
    ``events__rejected`` with its file:line."""
    root = make_project({"events": _ndjson_pipeline("quarantine")})
    write(root / "landing/a.ndjson", '{"id": 1}\n{"id": 2,\n{"id": 3}\n')
    with hw.Project(root) as project:
        run = project.run("events")
        assert "succeeded" == run.status, run.error
        assert [1, 3] == sorted(project.dataset("events").to_arrow()["id"].to_pylist())
        rejected = project.dataset("events__rejected").to_arrow().to_pylist()
    assert ["landing/a.ndjson:2"] == [r["_source"] for r in rejected]


def test_csv_reject_line_counts_newlines_inside_quoted_values(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """A quoted value spanning two lines shifts the rows after it: the rejected row is
    named by the line an editor shows (DuckDB alone would count rows)."""
    _files(tmp_path, {"q.csv": 'id,name\n0,"a\nb"\n1,x,extra\n2,c\n'})
    rows, rejects = _scan(con, tmp_path, "landing/q.csv", bad_rows="quarantine",
                          columns={"id": "int64"})
    assert [(0, "a\nb"), (2, "c")] == rows
    assert [("landing/q.csv:4", "expected 2 fields, found 3")] == rejects


def test_ndjson_text_hint_keeps_strings_as_written(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """A string column hinted as text keeps its values as written, even those DuckDB's
    detection would read as numbers or dates."""
    _files(tmp_path, {"a.ndjson": '{"id": 1, "name": "INFINITY"}\n'
                                  '{"id": 2, "name": "2026-01-01"}\n{"id": 3, "name": \n'})
    rows, rejects = _scan(con, tmp_path, "landing/a.ndjson", bad_rows="quarantine",
                          columns={"id": "int64", "name": "string"})
    assert [(1, "INFINITY"), (2, "2026-01-01")] == rows
    assert ["landing/a.ndjson:3"] == [s for s, _ in rejects]
