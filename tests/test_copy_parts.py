"""DuckDB-native writes of a local table (``parts.copy_parts``) and the publish path on them.

What is shown: every type a files or SQL source produces (after ``normalised_select``) is
written by DuckDB's COPY into files whose committed Delta schema, rows and add-action stats
are the ones the Arrow path (``write_parts``) gives for the same query, read back both by
DuckDB and by pyarrow over delta-rs's ``file_uris()``; a publish step really takes the
COPY path; a bad CSV row fails as before and leaves neither a version nor a staged file.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import headwater as hw
from headwater.datasets import delta, parts
from headwater.datasets.publish import normalised_select
from tests.conftest import ProjectFactory, write

EVERY_TYPE = """
SELECT i AS id,
       (i % 100)::TINYINT AS t8, i::SMALLINT AS t16, i::INTEGER AS t32, i::BIGINT AS t64,
       (i % 200)::UTINYINT AS u8, i::USMALLINT AS u16, i::UINTEGER AS u32, i::UBIGINT AS u64,
       i::HUGEINT * 1000000000000 AS huge,
       i / 7 AS dbl, (i / 3)::FLOAT AS flt,
       (i / 8)::DECIMAL(9, 2) AS dec9, (i / 8)::DECIMAL(18, 3) AS dec18,
       (i / 8)::DECIMAL(38, 10) AS dec38,
       'v' || i::VARCHAR || CASE WHEN i % 3 = 0 THEN ' é' ELSE '' END AS s,
       i % 2 = 0 AS b,
       DATE '2024-01-01' + i::INTEGER AS d,
       TIMESTAMP '2024-01-01 00:00:00' + to_microseconds(i * 1001) AS ts,
       TIMESTAMP_NS '2024-01-01 00:00:00.123456789' AS tns,
       TIME '12:34:56' AS tm, INTERVAL 1 DAY AS iv,
       uuid_extract_version(gen_random_uuid())::VARCHAR AS uu,
       ('blob' || i::VARCHAR)::BLOB AS bl,
       {'a': i, 'b': 'x' || i::VARCHAR, 'c': {'d': i / 2}} AS st,
       [i, i + 1] AS li, [{'k': i}] AS lst, MAP {'k': i} AS mp,
       CASE WHEN i % 5 = 0 THEN NULL ELSE i END AS nullable,
       NULL::INTEGER AS all_null
FROM range(20000) r(i)
"""


def _commit(uri: str, written: list[parts.Part], plan: parts.Plan) -> int:
    return parts.commit_parts(uri, written, schema=plan.schema, mode="append", app="a",
                              metadata={"run_id": "r", "step_id": "s"},
                              partition_by=plan.partition_by)


def _both(tmp_path: Path) -> tuple[str, str, list[parts.Part]]:
    """The EVERY_TYPE rows committed once through COPY and once through Arrow batches."""
    con = duckdb.connect()
    query = normalised_select(con, EVERY_TYPE)
    schema = con.sql(f"SELECT * FROM ({query}) LIMIT 0").to_arrow_table().schema
    plan = parts.plan_write(None, schema, mode="append", evolve=True)
    copied_uri, arrow_uri = str(tmp_path / "copied"), str(tmp_path / "arrow")
    copied = parts.copy_parts(con, query, copied_uri, schema=plan.schema,
                              target_file_bytes=64 * 1024, row_group_rows=2048)
    _commit(copied_uri, copied, plan)
    batches = con.sql(query).to_arrow_reader(5000)
    _commit(arrow_uri, parts.write_parts(batches, arrow_uri, schema=plan.schema), plan)
    return copied_uri, arrow_uri, copied


def _by_id(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def _stats(uri: str) -> list[dict[str, Any]]:
    """Each add action's stats, in file order (the rows are written in id order)."""
    log = (Path(uri) / "_delta_log/00000000000000000000.json").read_text().splitlines()
    adds = [json.loads(line)["add"] for line in log if "add" in json.loads(line)]
    return [json.loads(a["stats"]) for a in sorted(adds, key=lambda a: json.loads(
        a["stats"])["minValues"]["id"])]


def test_every_type_reads_back_as_the_arrow_path_writes_it(tmp_path: Path) -> None:
    """Same Delta schema, same rows through pyarrow (over ``file_uris()``, cast to the
    committed schema) and through DuckDB, several files, no staging folder left."""
    copied_uri, arrow_uri, copied = _both(tmp_path)
    assert len(copied) > 1  # FILE_SIZE_BYTES cut the COPY into several files
    copied_table, arrow_table = delta.open_table(copied_uri), delta.open_table(arrow_uri)
    schema = delta.arrow_schema(copied_table)
    assert schema == delta.arrow_schema(arrow_table)
    via_pyarrow = pads.dataset(delta.data_files(copied_table), schema=schema).to_table()
    expected = pads.dataset(delta.data_files(arrow_table), schema=schema).to_table()
    assert 20000 == via_pyarrow.num_rows
    assert _by_id(expected) == _by_id(via_pyarrow)
    con = duckdb.connect()
    listing = ", ".join(f"'{f}'" for f in delta.data_files(copied_table))
    via_duckdb = con.sql(f"SELECT * FROM read_parquet([{listing}]) ORDER BY id").to_arrow_table()
    assert _by_id(expected.cast(via_duckdb.schema)) == via_duckdb.to_pylist()
    assert "DuckDB" in pq.read_metadata(delta.data_files(copied_table)[0]).created_by
    assert [p.name for p in Path(copied_uri).iterdir()
            if p.name.startswith(parts.STAGING_PREFIX)] == []


def _totals(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The table-wide min, max and null count per column (struct fields included)."""
    out: dict[str, Any] = {}

    def fold(kind: str, values: dict[str, Any], prefix: str) -> None:
        for name, value in values.items():
            if isinstance(value, dict):
                fold(kind, value, f"{prefix}{name}.")
                continue
            key = (kind, prefix + name)
            old = out.get(str(key))
            out[str(key)] = (value if old is None else min(old, value) if kind == "min"
                             else max(old, value) if kind == "max" else old + value)

    for s in stats:
        fold("min", s["minValues"], "")
        fold("max", s["maxValues"], "")
        fold("nulls", s["nullCount"], "")
    return out


def test_copy_stats_are_what_the_footers_say(tmp_path: Path) -> None:
    """The add actions' stats cover every file's rows: record counts add up, the id ranges
    tile 0..19999, each file's stats are ``file_stats_json`` of its own footer, and the
    table-wide min, max and null counts equal the Arrow path's for every column."""
    copied_uri, arrow_uri, copied = _both(tmp_path)
    stats = _stats(copied_uri)
    assert _totals(_stats(arrow_uri)) == _totals(stats)
    assert 20000 == sum(s["numRecords"] for s in stats)
    assert 0 == stats[0]["minValues"]["id"] and 19999 == stats[-1]["maxValues"]["id"]
    for before, after in itertools.pairwise(stats):
        assert before["maxValues"]["id"] + 1 == after["minValues"]["id"]
    schema = delta.arrow_schema(delta.open_table(copied_uri))
    for part in copied:
        footer = pq.read_metadata(str(Path(copied_uri) / part.path))
        assert part.stats == parts.file_stats_json(footer, schema)
        assert part.rows == footer.num_rows
    first = stats[0]
    assert 0 < first["nullCount"]["nullable"] and first["nullCount"]["all_null"] == \
        first["numRecords"]
    assert "all_null" not in first["minValues"]
    assert first["minValues"]["ts"] == "2024-01-01 00:00:00"


PIPELINE = """
name: p
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true}
  - id: out
    publish: {input: raw, dataset: d, mode: append}
"""


def _created_by(project: hw.Project) -> set[str]:
    table = delta.open_table(project.runtime.dataset_uri("d"))
    return {pq.read_metadata(f).created_by.split(" ")[0] for f in delta.data_files(table)}


def test_publish_step_takes_the_copy_path(make_project: ProjectFactory,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A local dataset is written by DuckDB; ``HEADWATER_PUBLISH_COPY=0`` keeps the Arrow
    path; the rows and their statistics are the same either way."""
    root = make_project({"p": PIPELINE})
    write(root / "landing/a.csv", "id,v\n" + "".join(f"{i},{i % 7}\n" for i in range(5000)))
    with hw.Project(root) as project:
        assert project.run("p").ok
        assert {"DuckDB"} == _created_by(project)
        first = project.dataset("d").record(1)["stats"]
        write(root / "landing/b.csv", "id,v\n" + "".join(f"{i},{i % 7}\n"
                                                          for i in range(5000, 6000)))
        monkeypatch.setenv("HEADWATER_PUBLISH_COPY", "0")
        assert project.run("p").ok
        assert {"DuckDB", "parquet-cpp-arrow"} == _created_by(project)
        assert list(range(6000)) == sorted(project.dataset("d").to_arrow()["id"].to_pylist())
    assert 5000 == first["rows"] and (0, 4999) == (first["columns"]["id"]["min"],
                                                   first["columns"]["id"]["max"])


def test_bad_csv_row_fails_as_before_and_stages_nothing(make_project: ProjectFactory) -> None:
    """A bad row far into a large file: the run fails naming the file and the line, no
    version is committed or recorded, and the failed COPY's files are gone (only the
    committed files stay in the table folder)."""
    root = make_project({"p": PIPELINE})
    write(root / "landing/a.csv", "id,v\n" + "".join(f"{i},{i}\n" for i in range(10)))
    with hw.Project(root) as project:
        assert project.run("p").ok
        uri = Path(project.runtime.dataset_uri("d"))
        lines = [f"{i},{i}\n" for i in range(300_000)]
        lines[250_000] = "oops,1,2,3\n"
        write(root / "landing/b.csv", "id,v\n" + "".join(lines))
        failed = project.run("p")
        error = failed.error or ""
        assert not failed.ok
        assert "b.csv" in error and "line" in error.lower(), error
        table = delta.open_table(str(uri))
        assert 0 == table.version()
        assert [1] == project.dataset("d").versions()
        on_disk = sorted(str(p) for p in uri.rglob("*.parquet"))
        assert sorted(delta.data_files(table)) == on_disk
        assert [] == [p for p in uri.iterdir() if p.name.startswith(parts.STAGING_PREFIX)]


def test_partitioned_copy_matches_the_arrow_path(tmp_path: Path) -> None:
    """Hive folders and the log's partition values are the Arrow path's (spaces, '/', '=',
    '%', é, NULL, dates, integers, booleans), and the rows read back through delta-rs."""
    con = duckdb.connect()
    query = """SELECT i AS id, CASE i % 5 WHEN 0 THEN 'a' WHEN 1 THEN 'b b' WHEN 2 THEN 'é/=%'
                                  WHEN 3 THEN NULL ELSE 'NULL' END AS p,
                      DATE '2024-01-01' + (i % 2)::INTEGER AS d, i % 3 AS n, i % 2 = 0 AS b,
                      i * 1.5 AS x
               FROM range(3000) r(i)"""
    schema = con.sql(f"SELECT * FROM ({query}) LIMIT 0").to_arrow_table().schema
    by = ("p", "d", "n", "b")
    plan = parts.plan_write(None, schema, mode="append", evolve=True, partition_by=by)
    copied_uri, arrow_uri = str(tmp_path / "copied"), str(tmp_path / "arrow")
    copied = parts.copy_parts(con, query, copied_uri, schema=plan.schema, partition_by=by)
    _commit(copied_uri, copied, plan)
    arrow = parts.write_parts(con.sql(query).to_arrow_reader(1000), arrow_uri,
                              schema=plan.schema, partition_by=by)
    _commit(arrow_uri, arrow, plan)
    assert sorted((p.path.rsplit("/", 1)[0], json.dumps(p.partition_values, sort_keys=True))
                  for p in copied) == sorted(
        (p.path.rsplit("/", 1)[0], json.dumps(p.partition_values, sort_keys=True))
        for p in arrow)
    copied_table, arrow_table = delta.open_table(copied_uri), delta.open_table(arrow_uri)
    assert by == tuple(delta.partition_columns(copied_table))
    assert _by_id(delta.read_arrow(arrow_table)) == _by_id(delta.read_arrow(copied_table))
    assert 3000 == delta.read_arrow(copied_table).num_rows


def test_a_killed_copys_staging_folder_is_swept(tmp_path: Path) -> None:
    """A staging folder left by a publisher killed mid-COPY is removed by the next write
    of the table; the committed files stay."""
    uri = tmp_path / "t"
    con = duckdb.connect()
    query = "SELECT i AS id FROM range(10) r(i)"
    schema = con.sql(query).to_arrow_table().schema
    plan = parts.plan_write(None, schema, mode="append", evolve=True)
    _commit(str(uri), parts.copy_parts(con, query, str(uri), schema=plan.schema), plan)
    left = uri / f"{parts.STAGING_PREFIX}dead"
    left.mkdir()
    (left / "data_0.parquet").write_bytes(b"partial")
    written = parts.copy_parts(con, query, str(uri), schema=plan.schema)
    assert not left.exists()
    assert all((uri / p.path).exists() for p in written)
    assert all(Path(f).exists() for f in delta.data_files(delta.open_table(str(uri))))
