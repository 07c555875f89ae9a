"""Statistics of a whole dataset version, cheap enough to compute on every publish.

Small versions are summarised exactly by :func:`~headwater.datasets.stats.column_stats`
(over a temporary copy when they span many files, so the files are read once, not four
times).
Past ``SAMPLE_ROWS`` rows the distribution parts (mean, std, quantiles, histograms, top
values, distinct estimates, drift) come from a repeatable system sample (whole 2,048-row
vectors), while the facts a reader checks first stay exact: the row count, and each
column's null count, min and max, taken from the per-file statistics the Delta writer
already recorded in its add actions (free: no scan). ``sampled_rows`` says a document was
sampled, and how many rows the sample held.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from headwater.datasets import delta
from headwater.datasets.stats import column_stats, jsonable
from headwater.sqltext import text

SAMPLE_ROWS = 200_000
SAMPLE_SEED = 42


def version_stats(con: Any, table: Any, *, reference: Mapping[str, Any] | None = None,
                  only: Collection[str] | None = None) -> dict[str, Any]:
    """Column statistics of a loaded Delta table version (the shape of ``column_stats``);
    ``only`` (paths relative to the table root, as the log names them) limits them to
    those files: the rows one write added (:class:`WrittenFiles`)."""
    files = delta.data_files(table)
    delta.register_readers(con, delta.table_root(table))
    actions = delta.add_actions(table)
    if only is not None:
        files, actions = _restricted(table, files, actions, only)
    if not files:
        return {"rows": 0, "columns": {}}
    rows = int(pc.sum(actions["num_records"]).as_py() or 0)
    listing = ", ".join(text(f) for f in files)
    hive = "true" if delta.partition_columns(table) else "false"
    relation = (f"SELECT * FROM read_parquet([{listing}], union_by_name=true, "
                f"hive_partitioning={hive})")
    if rows <= SAMPLE_ROWS and len(files) == 1:
        return column_stats(con, relation, reference=reference)
    if rows <= SAMPLE_ROWS:
        return _materialised_stats(con, relation, reference)
    # materialised once: column_stats makes several passes, each would re-sample the files
    name = f"__hw_sample_{uuid.uuid4().hex[:12]}"
    # system sampling takes whole vectors (2,048 rows) spread over the files: 5x cheaper
    # than a reservoir, and as repeatable; clustered, which the sizes here make harmless
    percent = min(100.0, 100.0 * SAMPLE_ROWS / rows)
    con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM ({relation}) "
                f"USING SAMPLE {percent:.4f} PERCENT (system, {SAMPLE_SEED})")
    try:
        doc = column_stats(con, f"SELECT * FROM {name}", reference=reference)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {name}")
    _exact_facts(doc, actions, rows)
    return doc


def _restricted(table: Any, files: list[str], actions: pa.Table, only: Collection[str]
                ) -> tuple[list[str], pa.Table]:
    """The files and add actions of ``only`` (paths as named on disk; the log's add
    actions name them decoded)."""
    from urllib.parse import unquote

    root = delta.table_root(table).rstrip("/")
    wanted = set(only) | {unquote(p) for p in only}
    kept = [f for f in files if f.removeprefix(root + "/") in wanted]
    # row slices, not an is_in mask: building a value-set array imports pandas (~0.3 s)
    rows = [actions.slice(i, 1) for i, path in
            enumerate(actions.column("path").to_pylist()) if path in wanted]
    return kept, pa.concat_tables(rows) if rows else actions.slice(0, 0)


class WrittenFiles:
    """The rows one write added, as the files it committed: the ``stream`` a publish
    hands its statistics when DuckDB wrote the files (no Arrow batches to watch). Its
    document is :func:`version_stats` of those files alone, so an append's statistics
    combine the previous version's document with them (``combine_append``)."""

    def __init__(self, table: Any, paths: Sequence[str], rows: int) -> None:
        self.table = table
        self.paths = list(paths)
        self.rows = rows

    def document(self, con: Any, reference: Mapping[str, Any] | None) -> dict[str, Any]:
        return version_stats(con, self.table, reference=reference, only=self.paths)


def _materialised_stats(con: Any, relation: str,
                        reference: Mapping[str, Any] | None) -> dict[str, Any]:
    """Exact statistics of a small version spread over many files (a dataset grown by
    many tiny appends): read once into a temporary table, because ``column_stats`` makes
    four passes and each would open and bind every file again (at 200 one-row files that
    was most of a publish)."""
    name = f"__hw_small_{uuid.uuid4().hex[:12]}"
    con.execute(f"CREATE TEMP TABLE {name} AS {relation}")
    try:
        return column_stats(con, f"SELECT * FROM {name}", reference=reference)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {name}")


def _exact_facts(doc: dict[str, Any], actions: pa.Table, rows: int) -> None:
    """Replace sampled counts, nulls, min and max with the add actions' exact ones."""
    sample_n = int(doc.get("rows") or 0)
    scale = rows / sample_n if sample_n else 1.0
    doc["rows"] = rows
    doc["sampled_rows"] = sample_n
    names = set(actions.column_names)
    for name, col in doc.get("columns", {}).items():
        col["sampled"] = True
        scale_counts(col, scale)
        nulls_key = f"null_count.{name}"
        if nulls_key in names:
            nulls = int(pc.sum(actions[nulls_key]).as_py() or 0)
            col["nulls"] = nulls
            col["count"] = rows - nulls
            col["null_rate"] = nulls / rows if rows else 0.0
        for key, reduce in (("min", pc.min), ("max", pc.max)):
            column = f"{key}.{name}"
            if column in names and col.get("kind") in ("numeric", "temporal"):
                value = reduce(actions[column]).as_py()
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    col[key] = jsonable(value)


def scale_counts(col: dict[str, Any], scale: float) -> None:
    """Sample counts → estimated counts of the whole version (PSI only needs shares)."""
    histogram = col.get("histogram")
    if isinstance(histogram, dict) and "counts" in histogram:
        histogram["counts"] = [round(c * scale) for c in histogram["counts"]]
    for item in col.get("top") or []:
        item["count"] = round(item["count"] * scale)
    ref = col.get("reference")
    if isinstance(ref, dict) and "counts" in ref:
        ref["counts"] = [round(c * scale) for c in ref["counts"]]
