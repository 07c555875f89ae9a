"""A merge rewrites only the files that hold a matched key (datasets/merge.py), and keeps
every guarantee of delta-rs's MERGE: one commit, exactly once per app id, nothing
half-written, concurrent commits noticed, duplicate keys and schema evolution as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.datasets import delta, merge
from headwater.exceptions import PublishError

META = {"run_id": "r1", "step_id": "publish"}


def _rows(ids: list[int], tag: str) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()),
                     "v": pa.array([f"{tag}{i}" for i in ids], pa.string())})


def _table(root: Path, files: list[list[int]]) -> str:
    """A Delta table with one file per list of ids (one append each)."""
    uri = str(root / "t")
    for ids in files:
        write_deltalake(uri, _rows(ids, "old"), mode="append")
    return uri


def _merge(uri: str, source: pa.Table, app: str = "hw:r1:publish:t",
           meta: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    return delta.merge(uri, source.to_reader(), key=["id"], app=app,
                       metadata=meta or META)


def _content(uri: str) -> dict[int, str]:
    table = delta.read_arrow(delta.open_table(uri))
    ids, values = table["id"].to_pylist(), table["v"].to_pylist()
    assert len(ids) == len(set(ids)), "a key is in the table twice"
    return dict(zip(ids, values, strict=True))


def _newest_operation(uri: str) -> str:
    return str(delta.fresh_history(uri, limit=1)[-1]["operation"])


def test_merge_rewrites_only_the_file_holding_a_matched_key(tmp_path: Path) -> None:
    """An update of one key and inserts of new ones remove exactly the file that held the
    key: every other file's path is still in the new version, unread and unrewritten."""
    uri = _table(tmp_path, [list(range(i, i + 10)) for i in range(0, 50, 10)])
    before = set(delta.data_files(delta.open_table(uri)))
    dv, metrics = _merge(uri, _rows([23, 100, 101], "new"))
    after = set(delta.data_files(delta.open_table(uri)))
    removed = before - after
    assert len(removed) == 1 and len(before & after) == 4
    assert _content(uri)[23] == "new23" and _content(uri)[100] == "new100"
    assert len(_content(uri)) == 52
    assert (metrics["num_target_files_removed"], metrics["num_target_files_scanned"],
            metrics["num_target_rows_updated"], metrics["num_target_rows_inserted"]) == \
        (1, 1, 1, 2)
    assert _newest_operation(uri) == "WRITE"  # headwater's commit, not delta-rs's MERGE
    assert delta.already_committed(delta.open_table(uri), "hw:r1:publish:t")
    assert dv == delta.open_table(uri).version()


def test_merge_notes_keep_delta_rs_shape(tmp_path: Path) -> None:
    """The metrics recorded as ``notes.merge`` have exactly delta-rs's keys, and the commit
    carries the row counts crash repair records."""
    ours = _table(tmp_path / "a", [[1, 2]])
    _, metrics = _merge(ours, _rows([2, 3], "new"))
    theirs = _table(tmp_path / "b", [[1, 2]])
    reference = dict(DeltaTable(theirs).merge(
        _rows([2, 3], "new"), "t.id = s.id", source_alias="s", target_alias="t")
        .when_matched_update_all().when_not_matched_insert_all().execute())
    assert set(metrics) == set(reference)
    for name in ("num_source_rows", "num_target_rows_inserted", "num_target_rows_updated",
                 "num_target_rows_deleted", "num_output_rows"):
        assert metrics[name] == reference[name], name
    meta = delta.commit_metadata(delta.fresh_history(ours, limit=1))[-1][1]
    assert meta["merge"] == {"num_target_rows_inserted": 1, "num_target_rows_updated": 1,
                             "num_target_rows_deleted": 0}


def test_merged_files_carry_exact_statistics(tmp_path: Path) -> None:
    """Rewritten files get the per-file row counts, null counts and min/max the stats of a
    version and delta-rs's file skipping read from the log."""
    uri = str(tmp_path / "t")
    write_deltalake(uri, pa.table({"id": pa.array([1, 2, 3], pa.int64()),
                                   "x": pa.array([1.5, None, -2.0]),
                                   "d": pa.array([None, "b", "a"])}))
    _merge(uri, pa.table({"id": pa.array([2, 9], pa.int64()), "x": pa.array([7.0, None]),
                          "d": pa.array(["z" * 40, None])}))
    actions = delta.add_actions(delta.open_table(uri)).to_pylist()
    assert len(actions) == 1
    got = actions[0]
    assert got["num_records"] == 4
    assert (got["min.id"], got["max.id"], got["null_count.id"]) == (1, 9, 0)
    assert (got["min.x"], got["max.x"], got["null_count.x"]) == (-2.0, 7.0, 1)
    assert (got["min.d"], got["null_count.d"]) == ("a", 2)
    assert got["max.d"] >= "z" * 40  # cut to 32 characters, rounded up


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.lists(st.integers(0, 60), min_size=0, max_size=40, unique=True),
       cuts=st.lists(st.integers(1, 40), max_size=4),
       upserts=st.lists(st.lists(st.integers(0, 80), min_size=1, max_size=20, unique=True),
                        min_size=1, max_size=3),
       sort_all=st.booleans())
def test_merge_equals_a_dict_upsert(target: list[int], cuts: list[int],
                                    upserts: list[list[int]], sort_all: bool) -> None:
    """Random tables (keys spread over random files) and a few random upserts in a row,
    with the touched files rewritten sorted or streamed in file order: every merged
    version holds exactly what upserting into a dict gives."""
    files = [target[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(target)],
                                         strict=True)]
    files = [f for f in files if f] or [[999]]
    threshold = merge.SORTED_REWRITE_FILES
    merge.SORTED_REWRITE_FILES = threshold if sort_all else 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            uri = _table(Path(tmp), files)
            expected = {i: f"old{i}" for f in files for i in f}
            for n, upsert in enumerate(upserts):
                expected.update({i: f"new{n}_{i}" for i in upsert})
                _merge(uri, _rows(upsert, f"new{n}_"), app=f"hw:r{n}:publish:t",
                       meta={"run_id": f"r{n}", "step_id": "publish"})
                assert _content(uri) == expected
    finally:
        merge.SORTED_REWRITE_FILES = threshold


def test_merge_killed_before_commit_changes_nothing(tmp_path: Path) -> None:
    """kill -9 after the new files are written, before the commit: the version and its rows
    are unchanged, and the same merge run again commits once, correctly."""
    uri = _table(tmp_path, [[1, 2, 3], [4, 5, 6]])
    version, content = delta.open_table(uri).version(), _content(uri)
    code = ("import pyarrow as pa, sys\n"
            "from headwater.datasets import delta\n"
            "src = pa.table({'id': pa.array([2, 7], pa.int64()), 'v': ['new2', 'new7']})\n"
            f"delta.merge({uri!r}, src.to_reader(), key=['id'], app='hw:r1:publish:t', "
            f"metadata={META!r})\n")
    env = {**os.environ, "HEADWATER_CRASH_AT": "merge:before-commit"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          timeout=120)
    assert done.returncode == -9, done.stderr.decode()
    assert delta.open_table(uri).version() == version
    assert _content(uri) == content
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert _content(uri) == {**content, 2: "new2", 7: "new7"}
    assert delta.open_table(uri).version() == version + 1


def test_merge_plans_again_after_a_concurrent_compaction(tmp_path: Path) -> None:
    """Another writer compacts the table between the merge's read and its commit: the
    commit must not land on top of it (delta-rs would, keeping the old rows of the
    compacted file next to the rewritten ones); the merge plans again on the new snapshot."""
    uri = _table(tmp_path, [[1, 2], [3, 4], [5, 6]])
    stale = delta.open_table(uri)
    DeltaTable(uri).optimize.compact()
    dv, metrics = delta.merge(uri, _rows([3, 8], "new").to_reader(), key=["id"],
                              app="hw:r1:publish:t", metadata=META, table=stale)
    assert _content(uri) == {1: "old1", 2: "old2", 3: "new3", 4: "old4", 5: "old5",
                             6: "old6", 8: "new8"}
    assert metrics["num_target_rows_updated"] == 1
    assert dv == delta.open_table(uri).version()


def test_merge_after_a_concurrent_append_sees_its_rows(tmp_path: Path) -> None:
    """A row another writer appended after the merge's read is matched, not duplicated."""
    uri = _table(tmp_path, [[1, 2]])
    stale = delta.open_table(uri)
    write_deltalake(uri, _rows([5], "theirs"), mode="append")
    delta.merge(uri, _rows([5], "new").to_reader(), key=["id"], app="hw:r1:publish:t",
                metadata=META, table=stale)
    assert _content(uri) == {1: "old1", 2: "old2", 5: "new5"}


def test_matched_duplicate_keys_in_the_source_fail_as_before(tmp_path: Path) -> None:
    """Two source rows for one existing key: delta-rs's MERGE decides (it refuses)."""
    uri = _table(tmp_path, [[1, 2]])
    version = delta.open_table(uri).version()
    with pytest.raises(PublishError, match="merging into"):
        _merge(uri, pa.table({"id": pa.array([2, 2], pa.int64()), "v": ["a", "b"]}))
    assert delta.open_table(uri).version() == version


def test_new_source_column_evolves_the_schema_as_before(tmp_path: Path) -> None:
    """A source with a column the table lacks goes through delta-rs's ``merge_schema``."""
    uri = _table(tmp_path, [[1, 2]])
    source = _rows([2, 3], "new").append_column("extra", pa.array([True, None]))
    _merge(uri, source)
    table = delta.read_arrow(delta.open_table(uri))
    assert "extra" in table.column_names
    rows = {r["id"]: (r["v"], r["extra"]) for r in table.to_pylist()}
    assert rows == {1: ("old1", None), 2: ("new2", True), 3: ("new3", None)}


def test_engine_merge_records_notes_and_leaves_other_files(tmp_path: Path) -> None:
    """Through a pipeline: a second merge that changes one key rewrites one file, and the
    version's notes say so."""
    import headwater as hw
    from tests.conftest import write

    root = tmp_path / "p"
    write(root / "headwater.yaml", "name: m\n")
    write(root / "pipelines/p.yaml", """
name: p
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, incremental: true}
  - id: out
    publish: {input: raw, dataset: d, mode: merge, key: [id]}
""")
    for n in range(3):
        write(root / f"landing/{n}.csv",
              "id,v\n" + "".join(f"{i},a{i}\n" for i in range(n * 10, n * 10 + 10)))
        with hw.Project(root) as project:
            assert project.run("p").ok
    write(root / "landing/z.csv", "id,v\n15,changed\n")
    with hw.Project(root) as project:
        run = project.run("p")
        assert run.ok, run.error
        version = project.runtime.store.versions("d")[-1]
        rows = {r["id"]: r["v"] for r in project.dataset("d").to_arrow().to_pylist()}
    notes = version["notes"]
    notes = notes if isinstance(notes, dict) else json.loads(notes)
    assert notes["merge"]["num_target_files_removed"] == 1
    assert notes["merge"]["num_target_rows_updated"] == 1
    assert (version["rows_added"], version["rows_total"]) == (0, 30)
    assert rows[15] == "changed" and len(rows) == 30


def test_merge_failing_mid_write_leaves_version_and_folder_unchanged(tmp_path: Path) -> None:
    """A NULL for a NOT NULL column fails the rewrite after files were written: the error
    names the column, the version is unchanged and no written file is left behind."""
    uri = str(tmp_path / "t")
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False),
                        pa.field("v", pa.string(), nullable=False)])
    write_deltalake(uri, pa.table({"id": list(range(5000)), "v": ["a"] * 5000},
                                  schema=schema))
    files, version = sorted(os.listdir(uri)), delta.open_table(uri).version()
    source = pa.table({"id": pa.array([4999, 6000], pa.int64()),
                       "v": pa.array(["b", None], pa.string())})
    with pytest.raises(PublishError, match="'v' is NOT NULL"):
        _merge(uri, source)
    assert delta.open_table(uri).version() == version
    assert sorted(os.listdir(uri)) == files


def test_crash_repair_records_a_merge_with_its_row_counts(tmp_path: Path) -> None:
    """A merge committed but never recorded (the process died in between) is recorded by
    ``reconcile`` with the rows it inserted, from the commit's own metadata."""
    from headwater.datasets.publish import reconcile
    from headwater.store.store import Store

    uri = _table(tmp_path, [[1, 2], [3, 4]])
    meta = {**META, "pipeline": "p", "mode": "merge"}
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        dv, _ = _merge(uri, _rows([2, 7, 8], "new"), meta=meta)
        assert reconcile(store, "t", uri) == 1
        record = store.version_at("t", dv)
        assert record is not None
        assert (record["rows_added"], record["rows_removed"], record["rows_total"]) == \
            (2, 0, 6)
    finally:
        store.close()


def test_long_string_keys_are_matched_past_their_cut_statistics(tmp_path: Path) -> None:
    """String keys longer than the 32 characters a file's min/max keep: a key sorting past
    the cut max of its file is still found there (never inserted a second time)."""
    prefix = "k" * 40
    uri = str(tmp_path / "t")
    for ids in (["a", "b"], [prefix + "1", prefix + "9"], ["z"]):
        write_deltalake(uri, pa.table({"id": ids, "v": ["old"] * len(ids)}), mode="append")
    delta.merge(uri, pa.table({"id": [prefix + "9", "c"], "v": ["new", "new"]}).to_reader(),
                key=["id"], app="hw:r1:publish:t", metadata=META)
    table = delta.read_arrow(delta.open_table(uri))
    rows = dict(zip(table["id"].to_pylist(), table["v"].to_pylist(), strict=True))
    assert table.num_rows == 6 and rows[prefix + "9"] == "new" and rows["c"] == "new"
    assert _newest_operation(uri) == "WRITE"


def test_merged_files_carry_temporal_and_decimal_statistics(tmp_path: Path) -> None:
    """Timestamps (naive and zoned), dates and decimals come back from the log as the
    values they bound (timestamps to the millisecond, as delta-rs writes them)."""
    import datetime as dt
    import decimal

    uri = str(tmp_path / "t")
    zone = dt.timezone(dt.timedelta(hours=2))
    schema = pa.schema([("id", pa.int64()), ("ts", pa.timestamp("us")),
                        ("tz", pa.timestamp("us", tz="UTC")), ("day", pa.date32()),
                        ("price", pa.decimal128(10, 2))])
    write_deltalake(uri, pa.table({
        "id": [1, 2], "ts": [dt.datetime(2024, 1, 1, 0, 0, 0, 123456), None],
        "tz": [dt.datetime(2024, 1, 1, 12, tzinfo=zone), None],
        "day": [dt.date(2024, 1, 1), dt.date(2024, 6, 1)],
        "price": [decimal.Decimal("1.25"), decimal.Decimal("-3.50")]}, schema=schema))
    _merge_source = pa.table({
        "id": [2], "ts": [dt.datetime(2025, 5, 5, 5, 5, 5, 987654)],
        "tz": [dt.datetime(2025, 1, 1, tzinfo=dt.UTC)], "day": [dt.date(2023, 1, 1)],
        "price": [decimal.Decimal("9.99")]}, schema=schema)
    delta.merge(uri, _merge_source.to_reader(), key=["id"], app="hw:r1:publish:t",
                metadata=META)
    assert _newest_operation(uri) == "WRITE"
    got = delta.add_actions(delta.open_table(uri)).to_pylist()[0]
    assert got["min.ts"] == dt.datetime(2024, 1, 1, 0, 0, 0, 123000)
    assert got["max.ts"] == dt.datetime(2025, 5, 5, 5, 5, 5, 987000)
    assert got["min.tz"] == dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC)
    assert got["max.tz"] == dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    assert (got["min.day"], got["max.day"]) == (dt.date(2023, 1, 1), dt.date(2024, 1, 1))
    assert (float(got["min.price"]), float(got["max.price"])) == (1.25, 9.99)
    assert (got["null_count.ts"], got["null_count.tz"]) == (0, 0)
