"""The files connector reads every supported shape of file and explains every bad one."""

from __future__ import annotations

import gzip
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.config.models import FilesSource
from headwater.connectors import files as fc
from headwater.connectors.formats import TYPES
from headwater.connectors.fsspec_util import classify_path, register_filesystem
from headwater.exceptions import ConfigError, TerminalSourceError
from headwater.steps.base import REJECTED_COLUMNS

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def spec(path: str = "x", **options: Any) -> FilesSource:
    return FilesSource(type="files", path=path, **options)


def rows(con: duckdb.DuckDBPyConnection, sql: str, order: str = "1") -> list[tuple[Any, ...]]:
    return con.sql(f"SELECT * FROM ({sql}) ORDER BY {order}").fetchall()


def scan(con: duckdb.DuckDBPyConnection, root: Path, path: str, **options: Any) -> str:
    files = fc.list_files(path, root=root)
    return fc.scan_sql(files, spec(path, **options), root=root, con=con)


def fail_message(con: duckdb.DuckDBPyConnection, root: Path, path: str, **options: Any) -> str:
    """Run a lazy scan to the end and return the translated error message."""
    files = fc.list_files(path, root=root)
    try:
        con.sql(fc.scan_sql(files, spec(path, **options), root=root, con=con)).fetchall()
    except TerminalSourceError as exc:
        return exc.message
    except duckdb.Error as exc:
        return fc.translate_error(exc, files, "raw", root=root).message
    raise AssertionError("the scan did not fail")


def quarantine(con: duckdb.DuckDBPyConnection, root: Path, path: str,
               **options: Any) -> tuple[fc.ScanResult, list[tuple[Any, ...]]]:
    files = fc.list_files(path, root=root)
    out = root / f"out-{uuid.uuid4().hex}.parquet"
    result = fc.materialize(con, files, spec(path, bad_rows="quarantine", **options), out,
                            run_id="run-1", step_id="raw", root=root)
    return result, con.sql(f"SELECT * FROM read_parquet('{out}') ORDER BY 1").fetchall()


def rejected(result: fc.ScanResult) -> list[dict[str, Any]]:
    assert result.rejected is not None
    records: list[dict[str, Any]] = result.rejected.to_pylist()
    return records


# --------------------------------------------------------------------------- listing


def test_folder_lists_visible_files_only(tmp_path: Path) -> None:
    """A folder path yields its files sorted, not hidden ones, markers or subfolders."""
    for name in ("b.csv", "a.csv", ".hidden.csv", "_SUCCESS", "sub/c.csv"):
        write(tmp_path / "landing" / name, "x\n1\n")
    found = fc.list_files("landing", root=tmp_path)
    expected = [str(tmp_path / "landing" / n) for n in ("a.csv", "b.csv")]
    assert expected == [f.path for f in found]


def test_file_info_fingerprint_uses_size_and_mtime(tmp_path: Path) -> None:
    """A local file's etag is its mtime in nanoseconds, so a rewrite changes the fingerprint."""
    path = write(tmp_path / "a.csv", "x\n1\n")
    (info,) = fc.list_files(str(path), root=tmp_path)
    expected = {"path": str(path), "size": 4, "etag": str(os.stat(path).st_mtime_ns)}
    assert expected == info.fingerprint()


def test_glob_recurses_with_double_star(tmp_path: Path) -> None:
    """``**`` matches files in nested folders; a plain ``*`` stays in one folder."""
    write(tmp_path / "in" / "a.csv", "x\n1\n")
    write(tmp_path / "in" / "2024" / "b.csv", "x\n2\n")
    deep = [Path(f.path).name for f in fc.list_files("in/**/*.csv", root=tmp_path)]
    flat = [Path(f.path).name for f in fc.list_files("in/*.csv", root=tmp_path)]
    expected = (["a.csv", "b.csv"], ["a.csv"])
    assert expected == (sorted(deep), flat)


def test_brackets_in_root_and_names_are_not_patterns(tmp_path: Path) -> None:
    """The project folder is never a pattern, and ``data[1].csv`` can name a real file."""
    root = tmp_path / "proj[1]"
    write(root / "in" / "a.csv", "x\n1\n")
    write(root / "data[1].csv", "x\n1\n")
    globbed = [f.path for f in fc.list_files("in/*.csv", root=root)]
    literal = [f.path for f in fc.list_files("data[1].csv", root=root)]
    expected = ([str(root / "in" / "a.csv")], [str(root / "data[1].csv")])
    assert expected == (globbed, literal)


def test_glob_matching_nothing_names_the_path(tmp_path: Path) -> None:
    """A glob that matches nothing is a terminal error that quotes the glob."""
    (tmp_path / "landing" / "orders").mkdir(parents=True)
    with pytest.raises(TerminalSourceError) as info:
        fc.list_files("landing/orders/*.csv", root=tmp_path)
    expected = "landing/orders/*.csv matched no files"
    assert expected == info.value.message


def test_missing_path_is_terminal(tmp_path: Path) -> None:
    """A path that does not exist says so, with where it looked."""
    with pytest.raises(TerminalSourceError) as info:
        fc.list_files("nowhere/file.csv", root=tmp_path)
    assert info.value.message.startswith("nowhere/file.csv does not exist")


def test_file_url_reads_as_a_local_path(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """``file://`` URLs are local files: listed with their plain path and read natively."""
    write(tmp_path / "a.csv", "id,name\n1,x\n")
    files = fc.list_files(f"file://{tmp_path}/*.csv", root=Path("/"))
    assert [str(tmp_path / "a.csv")] == [f.path for f in files]
    expected = [(1, "x")]
    assert expected == rows(con, fc.scan_sql(files, spec(), root=tmp_path, con=con))


@pytest.fixture
def memory_folder() -> Iterator[str]:
    fs = fsspec.filesystem("memory")
    folder = f"/hw-{uuid.uuid4().hex}"
    fs.pipe(f"{folder}/a.csv", b"id,amount\n1,2.5\n")
    fs.pipe(f"{folder}/b.csv", b"id,amount\n2,3.5\n")
    fs.pipe(f"{folder}/_tmp.csv", b"id,amount\n9,9\n")
    yield folder
    fs.rm(folder, recursive=True)


def test_memory_url_is_listed_and_read_through_fsspec(
    memory_folder: str, con: duckdb.DuckDBPyConnection
) -> None:
    """An fsspec URL is listed with fsspec and read by DuckDB via the registered filesystem."""
    url = f"memory://{memory_folder}"
    files = fc.list_files(url, root=Path("/"))
    assert [f"memory://{memory_folder}/a.csv", f"memory://{memory_folder}/b.csv"] == [
        f.path for f in files]
    assert all(f.etag for f in files)
    register_filesystem(con, url, None)
    register_filesystem(con, url, None)  # a second registration replaces the first
    sql = fc.scan_sql(files, spec(url, filename_column=True), root=Path("/"), con=con)
    assert [(1, 2.5, files[0].path), (2, 3.5, files[1].path)] == rows(con, sql)


def test_many_remote_files_are_sniffed_in_parallel(con: duckdb.DuckDBPyConnection) -> None:
    """Sniffing many files on several cursors still reads through the registered fsspec."""
    fs = fsspec.filesystem("memory")
    folder = f"/hw-{uuid.uuid4().hex}"
    for n in range(40):
        extra = ",extra" if n % 2 else ""
        fs.pipe(f"{folder}/f{n:02d}.csv", f"id{extra}\n{n}{',x' if extra else ''}\n".encode())
    try:
        files = fc.list_files(f"memory://{folder}/*.csv", root=Path("/"))
        register_filesystem(con, files[0].path, None)
        sql = fc.scan_sql(files, spec(), root=Path("/"), con=con)
        expected = (40, 20, 2)
        assert expected == con.sql(f"SELECT count(*), count(extra), {sql.count('read_csv')} "
                                   f"FROM ({sql})").fetchall()[0]
    finally:
        fs.rm(folder, recursive=True)


def test_memory_glob_matching_nothing(memory_folder: str) -> None:
    """A remote glob that matches nothing fails like a local one."""
    with pytest.raises(TerminalSourceError) as info:
        fc.list_files(f"memory://{memory_folder}/*.parquet", root=Path("/"))
    assert info.value.message.endswith("matched no files")


def test_scan_sql_without_a_connection(
    tmp_path: Path, memory_folder: str, con: duckdb.DuckDBPyConnection
) -> None:
    """Without a connection, scan_sql sniffs on a private one; its SQL runs anywhere."""
    write(tmp_path / "a.csv", "id\n1\n")
    local = fc.scan_sql(fc.list_files("a.csv", root=tmp_path), spec(), root=tmp_path)
    remote_files = fc.list_files(f"memory://{memory_folder}/a.csv", root=tmp_path)
    remote = fc.scan_sql(remote_files, spec(), root=tmp_path)
    register_filesystem(con, remote_files[0].path, None)
    expected = ([(1,)], [(1, 2.5)])
    assert expected == (rows(con, local), rows(con, remote))


def test_register_filesystem_ignores_local_paths(con: duckdb.DuckDBPyConnection) -> None:
    """Local paths and file:// need no registration."""
    register_filesystem(con, "/data/x.csv", None)
    register_filesystem(con, "file:///data/x.csv", None)
    assert "file" not in con.list_filesystems()


AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
"""Azurite's well-known development account key (public, the same on every machine)."""


@pytest.fixture
def azurite_container() -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh container in the Azurite that ``make test`` starts on loopback."""
    port = os.environ.get("AZURITE_PORT", "10000")
    options = {"connection_string": (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")}
    fs = fsspec.filesystem("az", **options)
    container = f"hw-{uuid.uuid4().hex[:12]}"
    fs.mkdir(container)
    yield container, options
    fs.rm(container, recursive=True)


@pytest.mark.services
def test_azure_blob_files_scan_and_quarantine(
    azurite_container: tuple[str, dict[str, str]], tmp_path: Path,
    con: duckdb.DuckDBPyConnection,
) -> None:
    """az:// files list with etags, scan through the registered adlfs, and reject bad rows
    naming the blob and line; an empty blob is reported, not read."""
    container, options = azurite_container
    fs = fsspec.filesystem("az", **options)
    fs.pipe(f"{container}/landing/a.csv", b"id,amount\n1,2.5\n")
    fs.pipe(f"{container}/landing/b.csv", b"id,amount\n2,x\n3,4\n")
    fs.pipe(f"{container}/landing/c.csv", b"")
    files = fc.list_files(f"az://{container}/landing/*.csv", root=tmp_path,
                          storage_options=options)
    register_filesystem(con, files[0].path, options)
    source = spec(bad_rows="quarantine", columns={"amount": "float64"}, filename_column=True)
    result = fc.materialize(con, files, source, tmp_path / "out.parquet", run_id="r",
                            step_id="raw", root=tmp_path)
    kept = rows(con, f"SELECT * FROM read_parquet('{tmp_path / 'out.parquet'}')")
    blob = f"abfs://{container}/landing"
    expected = ([(1, 2.5, f"{blob}/a.csv"), (3, 4.0, f"{blob}/b.csv")], [f"{blob}/c.csv"],
                [f"{blob}/b.csv:2"])
    assert expected == (kept, result.empty_files, [r["_source"] for r in rejected(result)])
    assert all(f.etag for f in files)


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(("name", "expected"), [
    ("a.csv", "csv"), ("a.CSV.GZ", "csv"), ("a.tsv.zst", "csv"), ("a.json", "json"),
    ("a.ndjson.gz", "ndjson"), ("a.jsonl", "ndjson"), ("az://c/a.parquet", "parquet"),
    ("a.csv.zstd", "csv"),
])
def test_detect_format_by_extension(name: str, expected: str) -> None:
    """The format comes from the extension, seen through a compression suffix."""
    assert expected == fc.detect_format(name, None)


def test_declared_format_wins_and_unknown_extension_asks_for_one() -> None:
    """A declared format overrides the name; an unknown extension says to declare one."""
    expected = "ndjson"
    assert expected == fc.detect_format("events.log", "ndjson")
    with pytest.raises(ConfigError) as info:
        fc.detect_format("events.log", None)
    assert "set format:" in info.value.message


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(("name", "expected"), [
    ("int64", "BIGINT"), ("float64", "DOUBLE"), ("string", "VARCHAR"), ("date", "DATE"),
    ("timestamp", "TIMESTAMP"), ("bool", "BOOLEAN"), ("Decimal(10, 2)", "DECIMAL(10,2)"),
    ("BIGINT", "BIGINT"), ("timestamp_tz", "TIMESTAMPTZ"),
])
def test_type_names_map_to_duckdb(name: str, expected: str) -> None:
    """Pipeline type names (and DuckDB's own) become DuckDB types."""
    assert expected == fc.duckdb_type(name)


def test_unknown_type_suggests_the_closest_name() -> None:
    """A typo in a type name is a ConfigError that suggests the intended name."""
    with pytest.raises(ConfigError) as info:
        fc.duckdb_type("flaot64")
    assert "did you mean 'float64'?" in info.value.message


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(TYPES)), upper=st.booleans(),
       pad=st.sampled_from(["", " ", "  \t"]))
def test_type_names_ignore_case_and_spaces_and_are_valid_duckdb(
    name: str, upper: bool, pad: str
) -> None:
    """Every known name maps the same in any case or padding, to a type DuckDB accepts."""
    written = pad + (name.upper() if upper else name) + pad
    kind = fc.duckdb_type(written)
    assert fc.duckdb_type(name) == kind
    with duckdb.connect() as connection:
        expected = [(None,)]
        assert expected == connection.execute(f"SELECT CAST(NULL AS {kind})").fetchall()


@settings(max_examples=80, deadline=None)
@given(text=st.text(max_size=20))
def test_any_type_name_maps_or_raises_config_error(text: str) -> None:
    """Whatever is written, the result is a DuckDB type or a ConfigError, nothing else."""
    try:
        kind = fc.duckdb_type(text)
    except ConfigError as exc:
        assert "unknown type" in exc.message
        return
    with duckdb.connect() as connection:
        connection.execute(f"SELECT CAST(NULL AS {kind})")


@settings(max_examples=80, deadline=None)
@given(precision=st.integers(1, 38), data=st.data())
def test_decimal_precision_and_scale_pass_through(precision: int, data: st.DataObject) -> None:
    """``decimal(p,s)`` keeps p and s for every valid pair."""
    scale = data.draw(st.integers(0, precision))
    assert f"DECIMAL({precision},{scale})" == fc.duckdb_type(f"decimal({precision}, {scale})")


@settings(max_examples=100, deadline=None)
@given(value=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30))
def test_sql_string_round_trips_through_duckdb(value: str) -> None:
    """Any path quoted with sql_string comes back from DuckDB unchanged."""
    with duckdb.connect() as connection:
        assert [(value,)] == connection.execute(f"SELECT {fc.sql_string(value)}").fetchall()


@settings(max_examples=100)
@given(scheme=st.sampled_from(["az", "abfs", "s3", "memory", "gs"]),
       rest=st.text(alphabet="abc/._-*?[]", max_size=20))
def test_urls_are_classified_as_urls_whatever_they_hold(scheme: str, rest: str) -> None:
    """A path with a remote scheme is a URL even if it holds glob characters."""
    expected = "url"
    assert expected == classify_path(f"{scheme}://{rest}")


@settings(max_examples=100)
@given(rest=st.text(alphabet="abc/._-", max_size=20), glob_char=st.sampled_from("*?["),
       file_url=st.booleans())
def test_local_paths_with_glob_characters_are_globs(
    rest: str, glob_char: str, file_url: bool
) -> None:
    """A local (or file://) path is a glob exactly when it holds a glob character."""
    prefix = "file://" if file_url else ""
    expected = ("glob", "folder_or_file")
    assert expected == (
        classify_path(f"{prefix}{rest}{glob_char}"), classify_path(f"{prefix}/{rest}"))


# --------------------------------------------------------------------------- reading


def test_csv_with_type_hints(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """``columns`` hints set the types; the rest are sniffed once and written into the SQL."""
    write(tmp_path / "a.csv", "order_id,amount,day,ts,name\n1,2,2024-01-02,2024-01-02 03:04:05,x\n")
    sql = scan(con, tmp_path, "a.csv", columns={"amount": "float64", "order_id": "int64",
                                               "day": "date", "ts": "timestamp",
                                               "name": "string"})
    schema = con.sql(sql).to_arrow_table().schema
    expected = [pa.int64(), pa.float64(), pa.date32(), pa.timestamp("us"), pa.string()]
    assert expected == [field.type for field in schema]
    assert "auto_detect=false" in sql


def test_quoted_fields_with_commas_and_newlines(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """RFC 4180 quoting: commas, newlines and doubled quotes inside a field parse fine."""
    write(tmp_path / "a.csv", 'id,note\n1,"one, two\nthree"\n2,"say ""hi"""\n3,plain\n')
    expected = [(1, "one, two\nthree"), (2, 'say "hi"'), (3, "plain")]
    assert expected == rows(
        con, scan(con, tmp_path, "a.csv"))


def test_quotes_after_the_sniffer_sample(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """A quoted field far beyond the sniffed sample still parses (quote defaults to ")."""
    lines = ["id,name", *(f"{i},n{i}" for i in range(25_000)), '25000,"a, b"']
    write(tmp_path / "a.csv", "\n".join(lines) + "\n")
    result = con.sql(f"SELECT name FROM ({scan(con, tmp_path, 'a.csv')}) WHERE id = 25000")
    expected = [("a, b",)]
    assert expected == result.fetchall()


def test_delimiter_null_values_and_header_options(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """csv options reach DuckDB: delimiter, null values, and header: false."""
    write(tmp_path / "a.txt", "1;NA\n2;x\n")
    sql = scan(con, tmp_path, "a.txt",
               csv={"delimiter": ";", "header": False, "null_values": ["NA"]})
    expected = [(1, None), (2, "x")]
    assert expected == rows(con, sql)


def test_gzip_and_zstd_csv(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """gz, .zst and .zstd compressed CSVs read like plain ones, together in one scan."""
    write(tmp_path / "in" / "a.csv.gz", gzip.compress(b"id,v\n1,a\n"))
    plain = write(tmp_path / "plain.csv", "id,v\n2,b\n")
    for suffix in ("zst", "zstd"):
        target = tmp_path / "in" / f"b-{suffix}.csv.{suffix}"
        con.execute(f"COPY (SELECT * FROM read_csv('{plain}')) TO '{target}' "
                    "(FORMAT csv, COMPRESSION zstd)")
    expected = [(1, "a"), (2, "b"), (2, "b")]
    assert expected == rows(con, scan(con, tmp_path, "in"))


def test_ndjson_and_json_array(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """NDJSON and a JSON array both read, nested values kept, hints applied."""
    write(tmp_path / "a.ndjson", '{"id": 1, "tags": ["x"]}\n{"id": 2, "tags": []}\n')
    write(tmp_path / "b.json", '[{"id": 3, "amount": 1}, {"id": 4, "amount": 2.5}]')
    sql = scan(con, tmp_path, "b.json", columns={"amount": "float64"})
    expected = ([(1, ["x"]), (2, [])], [(3, 1.0), (4, 2.5)])
    assert expected == (rows(con, scan(con, tmp_path, "a.ndjson")), rows(con, sql))


def test_json_gz(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """Compressed NDJSON reads through the .gz suffix."""
    write(tmp_path / "a.ndjson.gz", gzip.compress(b'{"id": 1}\n{"id": 2}\n'))
    expected = [(1,), (2,)]
    assert expected == rows(con, scan(con, tmp_path, "a.ndjson.gz"))


def test_parquet_with_union_and_hints(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """Parquet files union by name; a hint casts the column."""
    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"id": [1], "amount": [2]}), tmp_path / "p" / "a.parquet")
    pq.write_table(pa.table({"id": [2], "extra": ["e"]}), tmp_path / "p" / "b.parquet")
    sql = scan(con, tmp_path, "p", columns={"amount": "float64"})
    expected = [(1, 2.0, None), (2, None, "e")]
    assert expected == rows(con, sql)
    assert pa.float64() == con.sql(sql).to_arrow_table().schema.field("amount").type


def test_schema_drift_unions_by_name(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """Files whose columns differ union by name; a column a file lacks is NULL there."""
    write(tmp_path / "in" / "a.csv", "id,amount\n1,2.5\n")
    write(tmp_path / "in" / "b.csv", "amount,id,country\n3.5,2,DE\n")
    sql = scan(con, tmp_path, "in/*.csv")
    expected = [(1, 2.5, None), (2, 3.5, "DE")]
    assert expected == rows(con, f"SELECT id, amount, country FROM ({sql})")


def test_filename_column(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """``filename_column: true`` adds ``_file`` holding each row's file path."""
    write(tmp_path / "a.csv", "id\n1\n")
    write(tmp_path / "b.csv", "id\n2\n")
    sql = scan(con, tmp_path, "*.csv", filename_column=True)
    assert [(1, str(tmp_path / "a.csv")), (2, str(tmp_path / "b.csv"))] == rows(con, sql)


def test_paths_with_quotes_are_safe(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """A single quote in a file name is escaped in the SQL, not an injection."""
    write(tmp_path / "o'brien.csv", "id\n1\n")
    expected = [(1,)]
    assert expected == rows(con, scan(con, tmp_path, "o'brien.csv"))


def test_encodings(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """latin-1 and utf-16 files read with csv.encoding; an unsupported one is a ConfigError."""
    write(tmp_path / "l.csv", "id,name\n1,café\n".encode("latin-1"))
    write(tmp_path / "u.csv", "id,name\n2,naïve\n".encode("utf-16"))
    expected = [(1, "café")]
    assert expected == rows(con, scan(con, tmp_path, "l.csv", csv={"encoding": "latin1"}))
    expected = [(2, "naïve")]
    assert expected == rows(con, scan(con, tmp_path, "u.csv", csv={"encoding": "utf-16"}))
    with pytest.raises(ConfigError) as info:
        scan(con, tmp_path, "l.csv", csv={"encoding": "ebcdic"})
    assert "encoding 'ebcdic' is not supported" in info.value.message


def test_empty_and_header_only_files_do_not_break_a_scan(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """0-byte, blank, header-only and empty-gz files add no rows and no phantom columns."""
    write(tmp_path / "in" / "a.csv", "id,amount\n1,2.5\n")
    write(tmp_path / "in" / "b.csv", b"")
    write(tmp_path / "in" / "c.csv", "id,amount\n")
    write(tmp_path / "in" / "d.csv", "\n\n")
    write(tmp_path / "in" / "e.csv.gz", gzip.compress(b""))
    files = fc.list_files("in", root=tmp_path)
    kept, empty = fc.split_empty(con, files, spec())
    assert [str(tmp_path / "in" / "a.csv")] == [f.path for f in kept]
    relation = con.sql(fc.scan_sql(files, spec(), root=tmp_path, con=con))
    expected = (4, ["id", "amount"], [(1, 2.5)])
    assert expected == (len(empty), relation.columns, relation.fetchall())


def test_small_files_with_any_bytes_are_not_mistaken_for_empty(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """utf-8 text with C1 bytes (the euro sign) and a badly encoded small file keep their
    rows: the emptiness check never hides a file the real scan should read or report."""
    write(tmp_path / "in" / "a.csv", "id,name\n1,€uro\n")
    write(tmp_path / "in" / "b.csv", "id,name\n2,caf\xe9\n3,ok\n".encode("latin-1"))
    write(tmp_path / "in" / "c.csv", "id,name\n")
    kept, empty = fc.split_empty(con, fc.list_files("in", root=tmp_path), spec())
    expected = (["a.csv", "b.csv"], ["c.csv"])
    assert expected == ([Path(f.path).name for f in kept], [Path(p).name for p in empty])
    result, good = quarantine(con, tmp_path, "in")
    expected_rows = ([(1, "€uro"), (3, "ok")], ["in/b.csv:2"])
    assert expected_rows == (good, [r["_source"] for r in rejected(result)])


def test_only_empty_files_give_an_empty_typed_relation(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """When every file is empty the SQL yields zero rows with the header's or hinted columns."""
    write(tmp_path / "h" / "a.csv", "id,amount\n")
    write(tmp_path / "z" / "a.csv", b"")
    header_only = con.sql(scan(con, tmp_path, "h", columns={"amount": "float64"}))
    zero_bytes = con.sql(scan(con, tmp_path, "z", columns={"amount": "float64"}))
    expected = (["id", "amount"], 0, ["amount"], 0)
    assert expected == (header_only.columns, len(header_only.fetchall()),
                        zero_bytes.columns, len(zero_bytes.fetchall()))


def test_empty_json_files_are_skipped(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """A ``[]`` JSON file or a blank NDJSON file adds no rows beside a real one."""
    write(tmp_path / "in" / "a.json", '[{"id": 1}]')
    write(tmp_path / "in" / "b.json", "[ ]\n")
    write(tmp_path / "in" / "c.json", "\n")
    expected = [(1,)]
    assert expected == rows(con, scan(con, tmp_path, "in", format="json"))


# --------------------------------------------------------------------------- bad input, fail


def test_wrong_field_count_names_file_and_line(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """A row with an extra field fails with file, line and the field counts."""
    write(tmp_path / "landing" / "orders" / "a.csv", "id,amount,name\n1,2,a\n")
    write(tmp_path / "landing" / "orders" / "b.csv", "id,amount,name\n1,2,a\n2,3,b\n3,4,c,d\n")
    message = fail_message(con, tmp_path, "landing/orders/*.csv")
    expected = "landing/orders/b.csv line 4: expected 3 fields, found 4"
    assert expected == message


def test_declared_number_column_holding_text(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """A float64 hint over a text value fails naming file, line, column and value."""
    write(tmp_path / "a.csv", "id,amount\n1,2.5\n2,abc\n")
    message = fail_message(con, tmp_path, "a.csv", columns={"amount": "float64"})
    expected = "a.csv line 3: column amount: cannot convert 'abc' to DOUBLE"
    assert expected == message


def test_inferred_number_column_holding_text_late(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """Text after the sniffer's sample in a column it inferred as BIGINT names the line."""
    lines = ["id,amount", *(f"{i},{i}" for i in range(25_000)), "25000,oops"]
    write(tmp_path / "a.csv", "\n".join(lines) + "\n")
    message = fail_message(con, tmp_path, "a.csv")
    expected = "a.csv line 25002: column amount: cannot convert 'oops' to BIGINT"
    assert expected == message


def test_latin1_bytes_read_as_utf8(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """A latin-1 file read as utf-8 fails on its line and says to set csv.encoding."""
    write(tmp_path / "a.csv", "id,name\n1,ok\n2,caf\xe9\n".encode("latin-1"))
    message = fail_message(con, tmp_path, "a.csv")
    assert message.startswith("a.csv line 3: the bytes are not valid for the file's encoding")
    assert "csv.encoding" in message


def test_malformed_ndjson_names_file_and_line(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """A broken NDJSON record fails naming its file and its own line (not the next)."""
    write(tmp_path / "a.ndjson", '{"id": 1}\n{"id": 2\n{"id": 3}\n')
    assert fail_message(con, tmp_path, "a.ndjson").startswith("a.ndjson line 2: ")


def test_json_value_not_matching_hint(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """A JSON value that does not fit its hinted type names file and line."""
    write(tmp_path / "a.ndjson", '{"amount": 1}\n{"amount": "abc"}\n')
    message = fail_message(con, tmp_path, "a.ndjson", columns={"amount": "float64"})
    assert message.startswith("a.ndjson line 2: ")


def test_corrupt_parquet(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """A file that is not Parquet says so, naming the file."""
    write(tmp_path / "a.parquet", b"not parquet at all")
    assert fail_message(con, tmp_path, "a.parquet").startswith("a.parquet: not a valid Parquet")


def test_binary_file_named_csv(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """Random bytes in a .csv fail planning with the file name and what to check."""
    write(tmp_path / "a.csv", bytes(range(256)) * 12)
    message = fail_message(con, tmp_path, "a.csv")
    assert message.startswith("a.csv: cannot make out its CSV layout")


def test_parquet_value_not_matching_hint(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """A Parquet value that does not cast to its hint fails naming the file and value."""
    pq.write_table(pa.table({"amount": ["1", "abc"]}), tmp_path / "a.parquet")
    message = fail_message(con, tmp_path, "a.parquet", columns={"amount": "float64"})
    expected = "a.parquet: column amount: cannot convert \"abc\" to DOUBLE"
    assert expected == message


def test_hint_for_a_missing_column(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """A hint naming no column of any file is an error listing the real columns."""
    write(tmp_path / "a.csv", "id,amount\n1,2\n")
    with pytest.raises(TerminalSourceError) as info:
        scan(con, tmp_path, "a.csv", columns={"amuont": "float64"})
    assert "columns: amuont is not a column of" in info.value.message
    assert "(its columns: id, amount)" in info.value.message


def test_translate_error_keeps_duckdb_text(tmp_path: Path) -> None:
    """The translated error keeps DuckDB's full text, the step, the file and the line."""
    files = [fc.FileInfo(str(tmp_path / "b.csv"), 10, "1")]
    exc = duckdb.InvalidInputException(
        f"Invalid Input Error: CSV Error on Line: 7\nOriginal Line: 1,2,3\nExpected Number of "
        f"Columns: 2 Found: 3\n\n  file = {tmp_path / 'b.csv'}\n")
    error = fc.translate_error(exc, files, "raw", root=tmp_path)
    expected = ("b.csv line 7: expected 2 fields, found 3", "raw", 7)
    assert expected == (
        error.message, error.context["step"], error.context["line"])
    assert "Expected Number of Columns" in error.context["duckdb"]


# --------------------------------------------------------------------------- materialize


def test_quarantine_collects_rejected_rows_with_reasons(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """Bad rows leave the output and come back with file:line, reason and raw fields."""
    write(tmp_path / "in" / "a.csv", "id,amount,name\n1,2.5,a\n2,abc,b\n3,4,c,d\n"
                                     '4,5,"x, y"\n')
    write(tmp_path / "in" / "b.csv", "id,amount,name\n5,1,e\n")
    result, kept = quarantine(con, tmp_path, "in", columns={"amount": "float64"})
    expected_kept = [(1, 2.5, "a"), (4, 5.0, "x, y"), (5, 1.0, "e")]
    assert (expected_kept, 3, 2) == (kept, result.rows, result.skipped)
    expected = [
        {"_run_id": "run-1", "_step": "raw", "_source": "in/a.csv:3",
         "_error": "column amount: cannot convert 'abc' to DOUBLE",
         "_row": '{"id": "2", "amount": "abc", "name": "b"}'},
        {"_run_id": "run-1", "_step": "raw", "_source": "in/a.csv:4",
         "_error": "expected 3 fields, found 4", "_row": '{"_raw": "3,4,c,d"}'},
    ]
    assert expected == rejected(result)
    assert result.rejected is not None
    assert (list(REJECTED_COLUMNS), {pa.string()}) == (
        result.rejected.schema.names, set(result.rejected.schema.types))


def test_rejects_tables_are_dropped(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """Materializing leaves no reject tables behind on the shared connection."""
    write(tmp_path / "a.csv", "id,amount\n1,x\n2,3,4\n")
    quarantine(con, tmp_path, "a.csv")
    leftovers = con.execute("SELECT table_name FROM duckdb_tables() "
                            "WHERE table_name LIKE 'hw_reject%'").fetchall()
    assert not leftovers


def test_skip_rejects_late_text_in_inferred_number_column(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """Text after the sniffed sample in a BIGINT column is one rejected row, not a failure."""
    lines = ["id,amount", *(f"{i},{i}" for i in range(25_000)), "25000,oops"]
    write(tmp_path / "a.csv", "\n".join(lines) + "\n")
    files = fc.list_files("a.csv", root=tmp_path)
    result = fc.materialize(con, files, spec(bad_rows="skip"), tmp_path / "out.parquet",
                            run_id="r", step_id="raw", root=tmp_path)
    (row,) = rejected(result)
    expected = (25_000, 1, "a.csv:25002", "column amount: cannot convert 'oops' to BIGINT")
    assert expected == (result.rows, result.skipped, row["_source"], row["_error"])


def test_quarantine_wrong_encoding(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """A line with bytes invalid in the declared encoding is rejected with that reason."""
    write(tmp_path / "a.csv", "id,name\n1,ok\n2,caf\xe9\n".encode("latin-1"))
    result, kept = quarantine(con, tmp_path, "a.csv")
    (row,) = rejected(result)
    expected = ([(1, "ok")], "a.csv:3", True)
    assert expected == (kept, row["_source"], "encoding" in row["_error"])


def test_quarantine_reports_empty_files_and_unions_drift(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """Empty and header-only files are reported; drifting files still union by name."""
    write(tmp_path / "in" / "a.csv", "id,amount\n1,2\n")
    write(tmp_path / "in" / "b.csv", "id,country\n2,DE\n")
    write(tmp_path / "in" / "c.csv", b"")
    write(tmp_path / "in" / "d.csv", "id,amount\n")
    result, kept = quarantine(con, tmp_path, "in", filename_column=True)
    assert [str(tmp_path / "in" / n) for n in ("c.csv", "d.csv")] == result.empty_files
    assert [(1, 2, None, str(tmp_path / "in" / "a.csv")),
            (2, None, "DE", str(tmp_path / "in" / "b.csv"))] == [
        (r[0], r[1], r[3], r[2]) for r in kept]
    expected = (2, 0, None)
    assert expected == (result.rows, result.skipped, result.rejected)


def test_quarantine_json_value_not_matching_hint(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """A JSON record whose value does not fit its hint is rejected with its fields."""
    write(tmp_path / "a.ndjson", '{"id": 1, "amount": 1.5}\n{"id": 2, "amount": "abc"}\n')
    result, kept = quarantine(con, tmp_path, "a.ndjson", columns={"amount": "float64"})
    (row,) = rejected(result)
    expected = ([(1, 1.5)], "a.ndjson", {"id": 2, "amount": "abc"})
    assert expected == (kept, row["_source"], json.loads(row["_row"]))
    expected_error = 'column amount: cannot convert "abc" to DOUBLE'
    assert expected_error == row["_error"]


def test_quarantine_parquet_value_not_matching_hint(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """A Parquet value that does not cast to its hint is rejected; the rest is kept, cast."""
    pq.write_table(pa.table({"id": [1, 2], "amount": ["1.5", "abc"]}), tmp_path / "a.parquet")
    result, kept = quarantine(con, tmp_path, "a.parquet", columns={"amount": "float64"})
    (row,) = rejected(result)
    expected = ([(1, 1.5)], "a.parquet", 'column amount: cannot convert "abc" to DOUBLE',
                {"id": 2, "amount": "abc"})
    assert expected == (kept, row["_source"], row["_error"], json.loads(row["_row"]))


def test_materialize_in_fail_mode_raises_translated(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """``bad_rows: fail`` through materialize raises the same clear error."""
    write(tmp_path / "a.csv", "id,amount\n1,2\n2,3,4\n")
    files = fc.list_files("a.csv", root=tmp_path)
    with pytest.raises(TerminalSourceError) as info:
        fc.materialize(con, files, spec(), tmp_path / "o.parquet", run_id="r", step_id="raw",
                       root=tmp_path)
    expected = "a.csv line 3: expected 2 fields, found 3"
    assert expected == info.value.message


# --------------------------------------------------------------------------- performance


@pytest.mark.slow
def test_two_million_rows_scan_at_duckdb_speed(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """The lazy scan of a 2M-row CSV costs what DuckDB's own read_csv costs, plus a sniff."""
    path = tmp_path / "big.csv"
    con.execute(f"COPY (SELECT i AS order_id, i * 1.5 AS amount, 'c' || (i % 100) AS customer "
                f"FROM range(2000000) t(i)) TO '{path}' (HEADER)")
    started = time.perf_counter()
    sql = scan(con, tmp_path, "big.csv")
    planned = time.perf_counter()
    ours = con.sql(f"SELECT count(*), sum(amount) FROM ({sql})").fetchall()
    ours_seconds = time.perf_counter() - planned
    started_raw = time.perf_counter()
    raw = con.sql(f"SELECT count(*), sum(amount) FROM read_csv('{path}')").fetchall()
    raw_seconds = time.perf_counter() - started_raw
    assert raw == ours
    assert planned - started < 1.0
    assert ours_seconds < 2 * raw_seconds + 0.5
