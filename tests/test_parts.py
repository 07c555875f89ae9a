"""Streaming Delta writes (``datasets.parts``) and statistics from the write stream.

What is shown: any stream of batches, partitioned or not and cut into any number of files,
reads back exactly after ``write_parts`` + ``commit_parts``; the add actions' stats JSON is
the one delta-rs writes for the same rows; a stream that fails midway leaves the table's
version and rows as they were; an append's combined statistics agree with statistics
computed over the whole version wherever the combination claims to be exact.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.datasets import delta, parts
from headwater.datasets.stats import column_stats
from headwater.datasets.stream_stats import StreamStats, combine_append
from headwater.exceptions import PublishError
from tests.conftest import ProjectFactory, write

SCHEMA = pa.schema([
    ("id", pa.int64()), ("n", pa.int32()), ("x", pa.float64()), ("s", pa.string()),
    ("d", pa.date32()), ("ts", pa.timestamp("us")), ("tz", pa.timestamp("us", tz="UTC")),
    ("b", pa.bool_()), ("p", pa.string()),
])
PARTITIONS = ["a", "b b", "é/=%", None]
BASE = dt.datetime(2024, 1, 1, 12, 0, 0)

_row = st.fixed_dictionaries({
    "n": st.none() | st.integers(-(2 ** 31), 2 ** 31 - 1),
    "x": st.none() | st.integers(-10 ** 6, 10 ** 6).map(lambda v: v / 4),
    "s": st.none() | st.text("abcé ,\"", max_size=6),
    "d": st.none() | st.integers(0, 20_000).map(lambda v: dt.date(1990, 1, 1)
                                               + dt.timedelta(days=v)),
    "ts": st.none() | st.integers(0, 10 ** 12).map(lambda v: BASE + dt.timedelta(
        microseconds=v)),
    "tz": st.none() | st.integers(0, 10 ** 12).map(lambda v: (BASE + dt.timedelta(
        microseconds=v)).replace(tzinfo=dt.UTC)),
    "b": st.none() | st.booleans(),
    "p": st.sampled_from(PARTITIONS),
})
_batches = st.lists(st.lists(_row, max_size=30), min_size=1, max_size=5)


def _reader(batches: list[list[dict[str, Any]]]) -> pa.RecordBatchReader:
    out, next_id = [], 0
    for rows in batches:
        numbered = [{"id": next_id + i, **r} for i, r in enumerate(rows)]
        next_id += len(rows)
        out.append(pa.RecordBatch.from_pylist(numbered, schema=SCHEMA))
    return pa.RecordBatchReader.from_batches(SCHEMA, out)


def _commit(uri: str, reader: pa.RecordBatchReader, *, mode: str = "append",
            partition_by: tuple[str, ...] = (), app: str = "app", **write: Any) -> int:
    table = delta.open_table(uri)
    plan = parts.plan_write(table, reader.schema, mode=mode, evolve=True,
                            partition_by=partition_by)
    written = parts.write_parts(reader, uri, partition_by=plan.partition_by,
                                schema=plan.schema, **write)
    return parts.commit_parts(uri, written, schema=plan.schema, mode=mode, app=app,
                              metadata={"run_id": app, "step_id": "s"},
                              partition_by=plan.partition_by, table=table)


def _rows(uri: str) -> list[dict[str, Any]]:
    table = delta.read_arrow(delta.open_table(uri))
    return sorted(table.select(SCHEMA.names).to_pylist(), key=lambda r: r["id"])


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=_batches, partitioned=st.booleans(), tiny=st.booleans())
def test_any_stream_round_trips(tmp_path_factory: pytest.TempPathFactory,
                                batches: list[list[dict[str, Any]]], partitioned: bool,
                                tiny: bool) -> None:
    """Whatever the batches, the partitioning (values with spaces, '/', '=', '%', é and
    NULL) and the file size (tiny: a file per row group of a few rows, two writers), the
    committed table holds exactly the rows written, in one Delta commit."""
    uri = str(tmp_path_factory.mktemp("t") / "table")
    sizes = {"target_file_bytes": 1, "row_group_bytes": 1, "writers": 2} if tiny else {}
    version = _commit(uri, _reader(batches), partition_by=("p",) if partitioned else (),
                      **sizes)
    expected = sorted(_reader(batches).read_all().to_pylist(), key=lambda r: r["id"])
    assert 0 == version
    assert expected == _rows(uri)
    assert (["p"] if partitioned else []) == delta.partition_columns(delta.open_table(uri))


def _add_stats(uri: str) -> dict[str, dict[str, Any]]:
    """Each add action's stats, by its partition values (one file per partition)."""
    found: dict[str, dict[str, Any]] = {}
    for line in (Path(uri) / "_delta_log/00000000000000000000.json").read_text().splitlines():
        add = json.loads(line).get("add")
        if add:
            found[json.dumps(add["partitionValues"], sort_keys=True)] = json.loads(add["stats"])
    return found


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=_batches, partitioned=st.booleans())
def test_stats_json_is_what_delta_rs_writes(tmp_path_factory: pytest.TempPathFactory,
                                            batches: list[list[dict[str, Any]]],
                                            partitioned: bool) -> None:
    """The stats of each add action (numRecords, minValues, maxValues, nullCount) equal
    the ones delta-rs's own writer records for the same rows, file by file."""
    from deltalake import write_deltalake

    if not any(batches):
        return  # delta-rs writes no file for no rows; neither do we (shown above)
    root = tmp_path_factory.mktemp("s")
    by = ("p",) if partitioned else ()
    write_deltalake(str(root / "rs"), _reader(batches), partition_by=list(by) or None)
    _commit(str(root / "hw"), _reader(batches), partition_by=by)
    assert _add_stats(str(root / "rs")) == _add_stats(str(root / "hw"))


class _Failing:
    """A source that yields ``good`` batches, then fails as a bad CSV row would."""

    def __init__(self, good: int) -> None:
        self.good = good

    def batches(self) -> Iterator[pa.RecordBatch]:
        for i in range(self.good):
            yield pa.RecordBatch.from_pylist(
                [{"id": i * 1000 + j, "p": "a"} for j in range(1000)],
                schema=pa.schema([("id", pa.int64()), ("p", pa.string())]))
        raise pa.ArrowInvalid("CSV parse error: Expected 2 columns, got 3")

    def reader(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(
            pa.schema([("id", pa.int64()), ("p", pa.string())]), self.batches())


def test_a_stream_failing_midway_changes_nothing(tmp_path: Path) -> None:
    """Files are written (several, complete) before the source fails: the source's own
    error surfaces, the table stays at its version with its rows, and the leftovers are
    orphans no commit lists; a retry under the same app id then commits once."""
    uri = str(tmp_path / "table")
    first = pa.table({"id": [-1], "p": ["a"]})
    assert 0 == _commit(uri, first.to_reader(), app="v0")
    with pytest.raises(pa.ArrowInvalid, match="CSV parse error"):
        _commit(uri, _Failing(5).reader(), app="v1", target_file_bytes=1,
                row_group_bytes=1)
    on_disk = [p for p in Path(uri).rglob("*.parquet")]
    table = delta.open_table(uri)
    assert 0 == table.version()
    assert [{"id": -1, "p": "a"}] == delta.read_arrow(table).to_pylist()
    assert len(on_disk) > len(delta.data_files(table))  # orphans, harmless
    good = pa.table({"id": [1, 2], "p": ["a", "a"]})
    assert 1 == _commit(uri, good.to_reader(), app="v1")
    assert delta.already_committed(delta.open_table(uri), "v1")
    assert [-1, 1, 2] == sorted(delta.read_arrow(delta.open_table(uri))["id"].to_pylist())


def test_any_zone_name_of_utc_is_stored(tmp_path: Path) -> None:
    """DuckDB labels TIMESTAMPTZ with its session's zone (``Etc/UTC`` on many machines):
    delta-rs accepts only ``UTC``, and the instants are the same (found by the stream
    sources' ``_received_at`` column)."""
    uri = str(tmp_path / "table")
    moment = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    zoned = pa.struct([("at", pa.timestamp("us", tz="Etc/UTC"))])
    data = pa.table({"at": pa.array([moment], pa.timestamp("us", tz="Etc/UTC")),
                     "nested": pa.array([{"at": moment}], zoned)})
    assert 0 == _commit(uri, data.to_reader())
    back = delta.read_arrow(delta.open_table(uri))
    assert pa.timestamp("us", tz="UTC") == back.schema.field("at").type
    assert moment == back["at"][0].as_py()
    assert moment == back["nested"][0].as_py()["at"]


def test_schema_evolution_matches_write_deltalake(tmp_path: Path) -> None:
    """An append adds new columns at the end (old rows read NULL) and keeps the table's
    types; an overwrite replaces the schema; a different partitioning on append is refused
    with the way out named."""
    uri = str(tmp_path / "table")
    _commit(uri, pa.table({"a": pa.array([1], pa.int32()), "p": ["x"]}).to_reader(),
            partition_by=("p",), app="1")
    _commit(uri, pa.table({"a": pa.array([2], pa.int64()), "p": ["y"], "c": ["new"]})
            .to_reader(), app="2")
    table = delta.open_table(uri)
    assert ["a", "p", "c"] == delta.arrow_schema(table).names
    assert pa.int32() == delta.arrow_schema(table).field("a").type
    assert [{"a": 1, "p": "x", "c": None}, {"a": 2, "p": "y", "c": "new"}] == sorted(
        delta.read_arrow(table).to_pylist(), key=lambda r: r["a"])
    with pytest.raises(PublishError, match="overwrite it to change its partitioning"):
        _commit(uri, pa.table({"a": [3], "p": ["z"]}).to_reader(), partition_by=("a",))
    _commit(uri, pa.table({"z": [1.5], "p": ["q"]}).to_reader(), mode="overwrite", app="3")
    table = delta.open_table(uri)
    assert ["z", "p"] == delta.arrow_schema(table).names
    assert [{"z": 1.5, "p": "q"}] == delta.read_arrow(table).to_pylist()


# --------------------------------------------------------------------------- statistics


def _docs(con: duckdb.DuckDBPyConnection, old: pa.Table, new: pa.Table
          ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(previous doc, combined doc, doc computed over the union) for old + new."""
    con.register("old_rows", old)
    con.register("all_rows", pa.concat_tables([old, new]))
    previous = column_stats(con, "SELECT * FROM old_rows")
    stream = StreamStats(sample_rows=10 ** 9)
    for batch in new.to_batches(max_chunksize=7):
        stream.add(batch)
    combined = combine_append(previous, stream.document(con, previous))
    whole = column_stats(con, "SELECT * FROM all_rows", reference=previous)
    return previous, combined, whole


def test_append_stats_combine_exactly_where_claimed() -> None:
    """Rows, nulls, min, max, mean, std (both sides exact), the counts in the previous
    version's bins and complete top values equal those computed over the whole version;
    what is estimated is listed in the document."""
    con = duckdb.connect()
    old = pa.table({"v": [1.0, 2.0, None, 4.0, 8.0, 9.5, 3.0, 3.0],
                    "c": ["a", "b", "a", None, "c", "a", "b", "b"],
                    "t": pa.array([dt.date(2020, 1, i) for i in range(1, 9)])})
    new = pa.table({"v": [0.5, None, 12.0, 3.0, 7.0], "c": ["d", "a", None, "a", "b"],
                    "t": pa.array([dt.date(2019, 5, 1)] * 5)})
    _previous, combined, whole = _docs(con, old, new)
    assert whole["rows"] == combined["rows"]
    for name in ("v", "c", "t"):
        for key in ("count", "nulls", "min", "max"):
            assert whole["columns"][name][key] == combined["columns"][name][key], (name, key)
    v, truth = combined["columns"]["v"], whole["columns"]["v"]
    assert truth["mean"] == pytest.approx(v["mean"])
    assert truth["std"] == pytest.approx(v["std"])
    assert truth["reference"] == v["reference"]
    assert truth["reference"]["counts"] == v["histogram"]["counts"]
    c, truth = combined["columns"]["c"], whole["columns"]["c"]
    assert (truth["top"], truth["top_complete"]) == (c["top"], c["top_complete"])
    assert truth["reference"] == c["reference"]
    assert {"quantiles", "distinct"} <= set(combined["estimated"])
    assert {"previous_rows": 8, "appended_rows": 5} == combined["combined"]


def test_stream_sample_is_bounded_and_facts_exact() -> None:
    """Past the sample size the sample stays within it (every k-th row) while rows, nulls,
    min and max stay exact."""
    stream = StreamStats(sample_rows=100)
    values = [None if i % 7 == 0 else float(i) for i in range(5_000)]
    for start in range(0, 5_000, 333):
        stream.add(pa.record_batch({"v": values[start:start + 333]}))
    assert 50 < stream.kept_rows <= 100
    doc = stream.document(duckdb.connect(), None)
    col = doc["columns"]["v"]
    assert (5_000, doc["sampled_rows"]) == (doc["rows"], stream.kept_rows)
    assert (715, 1.0, 4_999.0) == (col["nulls"], col["min"], col["max"])


def test_large_append_records_combined_stats(make_project: ProjectFactory,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish appending to a version too large to re-read records the previous
    document combined with the appended rows': exact rows, nulls, min and max."""
    import headwater.datasets.version_stats as version_stats

    monkeypatch.setattr(version_stats, "SAMPLE_ROWS", 500)
    root = make_project({"p": _PIPELINE})
    write(root / "landing/a.csv", "id,v\n" + "".join(f"{i},{i % 9 or ''}\n"
                                                      for i in range(3_000)))
    with hw.Project(root) as project:
        assert project.run("p").ok
        write(root / "landing/b.csv", "id,v\n" + "".join(f"{i},{i % 5 or ''}\n"
                                                          for i in range(3_000, 4_000)))
        assert project.run("p").ok
        stats = project.dataset("d").record(2)["stats"]
        rows = project.dataset("d").to_arrow()
    assert 4_000 == stats["rows"] == rows.num_rows
    assert rows["v"].null_count == stats["columns"]["v"]["nulls"]
    assert (0, 3_999) == (stats["columns"]["id"]["min"], stats["columns"]["id"]["max"])
    assert {"previous_rows": 3_000, "appended_rows": 1_000} == stats["combined"]


_PIPELINE = """
name: p
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true}
  - id: out
    publish: {input: raw, dataset: d, mode: append}
"""


@pytest.mark.services
def test_partitioned_parts_on_azure_blob_storage() -> None:
    """On object storage (Azurite) parts are uploaded whole through delta-rs's object store
    and read back by their hive names, odd partition values included."""
    import os
    import uuid

    import fsspec

    from headwater.datasets.locations import warehouse_location

    port = os.environ.get("AZURITE_PORT", "10000")
    conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    container = f"hw-{uuid.uuid4().hex[:10]}"
    fs = fsspec.filesystem("az", connection_string=conn)
    fs.mkdir(container)
    try:
        warehouse = f"az://{container}/wh"
        location = warehouse_location(warehouse, {"type": "azure_blob",
                                                  "connection_string": conn})
        assert location is not None
        delta.register_location(location)
        uri = f"{warehouse}/t"
        rows = pa.table({"id": [1, 2, 3], "p": ["a b", "é/=%", None]})
        assert 0 == _commit(uri, rows.to_reader(), partition_by=("p",))
        found = delta.read_arrow(delta.open_table(uri)).to_pylist()
        assert rows.to_pylist() == sorted(found, key=lambda r: r["id"])
    finally:
        fs.rm(container, recursive=True)


AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
"""Azurite's well-known development key (public)."""
