"""A version's statistics from the rows as they are written: no second pass over files.

:class:`StreamStats` watches every batch a publish writes (``write_parts(on_batch=...)``)
and keeps two things, both in bounded memory:

* exact facts of every row: the row count, and per column the null count and, for numeric
  and temporal columns, min and max (finite values only for floats, as ``column_stats``);
* a systematic sample (every *k*-th row, *k* doubling whenever more than ``SAMPLE_ROWS``
  rows are kept), from which ``column_stats`` computes the distribution parts.

Up to ``SAMPLE_ROWS`` rows the sample is every row, so the document is exact, as one
computed over the written files. Past that, it is marked ``sampled_rows`` and its exact
facts replace the sample's, as :mod:`headwater.datasets.version_stats` does.

An append's version holds the previous version's rows too. When both are small the caller
reads the version's files (exact); otherwise :func:`combine_append` merges the previous
version's recorded document with the appended rows' one. Exact in the combination: rows,
null counts, min and max, the histogram counts in the previous version's bins (and so the
drift against it), and the top values when both sides counted every distinct value.
Estimated (and listed under ``estimated``): mean and std (weighted from the two sides),
quantiles (interpolated from the combined histogram), distinct counts, and top values
that are not complete.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from headwater.datasets import version_stats
from headwater.datasets.stats import QUANTILES, TOP_K, as_text, column_stats, jsonable

_INDEX: list[pa.Array] = []


def _strided(first: int, end: int, step: int) -> pa.Array:
    """``range(first, end, step)`` as an Arrow index, built by Arrow (no Python ints)."""
    count = len(range(first, end, step))
    if not _INDEX or len(_INDEX[0]) < count:
        _INDEX[:] = [pa.array(range(max(count, 1 << 18)), pa.int64())]
    base = _INDEX[0].slice(0, count)
    return pc.add(pc.multiply(base, step), first) if step != 1 or first else base


class StreamStats:
    """Exact facts and a bounded, repeatable sample of a stream of record batches."""

    def __init__(self, sample_rows: int | None = None) -> None:
        # the same sample size as a version read from its files (one setting for both)
        self.sample_rows = sample_rows or version_stats.SAMPLE_ROWS
        self.rows = 0
        self.stride = 1
        self.kept: list[tuple[int, pa.RecordBatch]] = []
        """(global position of the first row, rows at that position + j * stride)."""
        self.kept_rows = 0
        self.nulls: dict[str, int] = {}
        self.mins: dict[str, Any] = {}
        self.maxs: dict[str, Any] = {}
        self.schema: pa.Schema | None = None
        self.seconds = 0.0
        """Time spent watching batches (part of the statistics' cost)."""

    def add(self, batch: pa.RecordBatch) -> None:
        """Watch one batch (called by the writer before it writes the batch)."""
        started = time.perf_counter()
        if self.schema is None:
            self.schema = batch.schema
        self._facts(batch)
        self._sample(batch)
        self.rows += batch.num_rows
        self.seconds += time.perf_counter() - started

    @property
    def exact(self) -> bool:
        """Whether the sample holds every row."""
        return self.stride == 1

    def sample(self) -> pa.Table:
        if self.schema is None:
            return pa.Table.from_batches([], pa.schema([]))
        return pa.Table.from_batches([b for _, b in self.kept], self.schema)

    def _facts(self, batch: pa.RecordBatch) -> None:
        for field, column in zip(batch.schema, batch.columns, strict=True):
            self.nulls[field.name] = self.nulls.get(field.name, 0) + column.null_count
            if not _ranged(field.type) or len(column) == column.null_count:
                continue
            lo, hi = _finite_range(column) if pa.types.is_floating(field.type) else (
                s.as_py() for s in pc.min_max(column).values())
            self._extend(field.name, lo, hi)

    def _extend(self, name: str, lo: Any, hi: Any) -> None:
        if lo is not None and (name not in self.mins or lo < self.mins[name]):
            self.mins[name] = lo
        if hi is not None and (name not in self.maxs or hi > self.maxs[name]):
            self.maxs[name] = hi

    def _sample(self, batch: pa.RecordBatch) -> None:
        """Keep (a copy of) every ``stride``-th row, by global row position."""
        first = (-self.rows) % self.stride
        if first >= batch.num_rows:
            return
        piece = batch if self.stride == 1 else batch.take(
            _strided(first, batch.num_rows, self.stride))
        self.kept.append((self.rows + first, piece))
        self.kept_rows += piece.num_rows
        while self.kept_rows > self.sample_rows:
            self._thin()

    def _thin(self) -> None:
        """Double the stride: keep the kept rows whose global position it divides."""
        stride = self.stride * 2
        kept: list[tuple[int, pa.RecordBatch]] = []
        for start, piece in self.kept:
            offset = 0 if start % stride == 0 else 1
            if offset < piece.num_rows:
                kept.append((start + offset * self.stride,
                             piece.take(_strided(offset, piece.num_rows, 2))))
        self.stride, self.kept = stride, kept
        self.kept_rows = sum(p.num_rows for _, p in kept)

    def document(self, con: Any, reference: Mapping[str, Any] | None) -> dict[str, Any]:
        """The ``column_stats`` document of the streamed rows (exact facts kept exact)."""
        started = time.perf_counter()
        sample = self.sample()
        name = f"__hw_stream_{id(self):x}"
        con.register(name, sample)
        try:
            doc = column_stats(con, f"SELECT * FROM {name}", reference=reference)
        finally:
            con.unregister(name)
        if not self.exact:
            self._exact_facts(doc)
        self.seconds += time.perf_counter() - started
        return doc

    def _exact_facts(self, doc: dict[str, Any]) -> None:
        sample_n = int(doc.get("rows") or 0)
        scale = self.rows / sample_n if sample_n else 1.0
        doc["rows"] = self.rows
        doc["sampled_rows"] = sample_n
        for name, col in doc.get("columns", {}).items():
            col["sampled"] = True
            version_stats.scale_counts(col, scale)
            nulls = self.nulls.get(name, 0)
            col["nulls"] = nulls
            col["count"] = self.rows - nulls
            col["null_rate"] = nulls / self.rows if self.rows else 0.0
            if col.get("kind") in ("numeric", "temporal"):
                for key, found in (("min", self.mins), ("max", self.maxs)):
                    if name in found:
                        col[key] = jsonable(found[name])


def _finite_range(column: pa.Array) -> tuple[float | None, float | None]:
    """Min and max of a float column's finite values. Arrow's ``min_max`` already skips
    NaN (unless every value is NaN), so when both ends it finds are finite there was no
    infinity either and they are the answer; only otherwise is the column filtered (a
    copy of it: ~40 % of the cost, on every batch of every publish)."""
    lo, hi = (s.as_py() for s in pc.min_max(column).values())
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        return lo, hi
    finite = pc.filter(column, pc.is_finite(column))
    if len(finite) == finite.null_count:
        return None, None
    lo, hi = (s.as_py() for s in pc.min_max(finite).values())
    return lo, hi


def _ranged(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
                or pa.types.is_temporal(t))


# --------------------------------------------------------------------------- appends


def combine_append(previous: Mapping[str, Any], added: Mapping[str, Any]) -> dict[str, Any]:
    """The document of a version made of ``previous``'s rows plus ``added``'s.

    ``added`` was computed with ``reference=previous``, so its rows are counted in the
    previous version's bins and top values; the module docstring says what is exact.
    """
    old_rows, new_rows = int(previous.get("rows") or 0), int(added.get("rows") or 0)
    rows = old_rows + new_rows
    old_cols, new_cols = previous.get("columns", {}), added.get("columns", {})
    columns: dict[str, Any] = {}
    for name, new in new_cols.items():
        old = old_cols.get(name)
        if old is None or old.get("kind") != new.get("kind"):
            columns[name] = _padded(new, old_rows, rows)
        else:
            columns[name] = _combined(old, new, rows)
    for name, old in old_cols.items():
        if name not in new_cols:
            columns[name] = _padded(old, new_rows, rows)
    sampled = int(previous.get("sampled_rows") or 0) + int(added.get("sampled_rows") or 0)
    doc: dict[str, Any] = {"rows": rows, "columns": columns,
                           "combined": {"previous_rows": old_rows, "appended_rows": new_rows},
                           "estimated": ["mean", "std", "quantiles", "distinct", "top"]}
    if sampled:
        doc["sampled_rows"] = sampled
    return doc


def _padded(col: Mapping[str, Any], missing: int, rows: int) -> dict[str, Any]:
    """A column one side lacks: its rows there are NULL."""
    out = {k: v for k, v in col.items() if k != "reference"}
    out["nulls"] = int(col.get("nulls") or 0) + missing
    out["null_rate"] = out["nulls"] / rows if rows else 0.0
    return out


def _combined(old: Mapping[str, Any], new: Mapping[str, Any], rows: int) -> dict[str, Any]:
    out: dict[str, Any] = {"type": new.get("type"), "kind": new.get("kind")}
    out["count"] = int(old.get("count") or 0) + int(new.get("count") or 0)
    out["nulls"] = int(old.get("nulls") or 0) + int(new.get("nulls") or 0)
    out["null_rate"] = out["nulls"] / rows if rows else 0.0
    if "distinct" in new or "distinct" in old:
        out["distinct"] = max(int(old.get("distinct") or 0), int(new.get("distinct") or 0))
    for key, pick in (("min", min), ("max", max)):
        values = [c[key] for c in (old, new) if c.get(key) is not None]
        if "min" in new or "min" in old:
            out[key] = pick(values) if values else None
    if out["kind"] == "numeric":
        _combine_numeric(out, old, new)
    elif out["kind"] == "categorical":
        _combine_categorical(out, old, new)
    if old.get("sampled") or new.get("sampled"):
        out["sampled"] = True
    return out


def _combine_numeric(out: dict[str, Any], old: Mapping[str, Any],
                     new: Mapping[str, Any]) -> None:
    n1, n2 = _finite_count(old), _finite_count(new)
    m1, m2 = old.get("mean"), new.get("mean")
    if m1 is None or m2 is None or n1 + n2 == 0:
        out["mean"] = m2 if m1 is None else m1
        out["std"] = new.get("std") if m1 is None else old.get("std")
    else:
        mean = (n1 * m1 + n2 * m2) / (n1 + n2)
        out["mean"] = mean
        out["std"] = _pooled_std(old, new, n1, n2, mean)
    histogram = old.get("histogram")
    ref = new.get("reference")
    if isinstance(histogram, dict) and isinstance(ref, dict) and \
            ref.get("edges") == histogram.get("edges"):
        counts = [a + b for a, b in zip(histogram["counts"], ref["counts"], strict=True)]
        edges = list(histogram["edges"])
        if isinstance(out.get("min"), int | float) and isinstance(out.get("max"), int | float):
            edges[0], edges[-1] = float(out["min"]), float(out["max"])  # outer bins are open
        out["histogram"] = {"edges": edges, "counts": counts}
        out["reference"] = {"edges": list(histogram["edges"]), "counts": counts}
        out["quantiles"] = _quantiles(edges, counts)
    else:
        for key in ("histogram", "quantiles"):
            if key in new:
                out[key] = new[key]


def _finite_count(col: Mapping[str, Any]) -> int:
    histogram = col.get("histogram")
    if isinstance(histogram, dict) and histogram.get("counts"):
        return int(sum(histogram["counts"]))
    return int(col.get("count") or 0)


def _pooled_std(old: Mapping[str, Any], new: Mapping[str, Any], n1: int, n2: int,
                mean: float) -> float | None:
    s1, s2 = old.get("std"), new.get("std")
    if s1 is None or s2 is None or n1 + n2 < 2:
        return None
    m1, m2 = float(old["mean"]), float(new["mean"])
    squares = ((n1 - 1) * s1 ** 2 + n1 * (m1 - mean) ** 2
               + (n2 - 1) * s2 ** 2 + n2 * (m2 - mean) ** 2)
    return math.sqrt(max(squares, 0.0) / (n1 + n2 - 1))


def _quantiles(edges: list[float], counts: list[int]) -> dict[str, float | None]:
    """Quantiles read off a histogram, linear within each bin (an estimate)."""
    total = sum(counts)
    out: dict[str, float | None] = {}
    for key, p in QUANTILES.items():
        out[key] = None if not total else _quantile(edges, counts, p * total)
    return out


def _quantile(edges: list[float], counts: list[int], target: float) -> float:
    below = 0.0
    for i, n in enumerate(counts):
        if n and below + n >= target:
            lo, hi = edges[i], edges[i + 1]
            return lo + (hi - lo) * (target - below) / n
        below += n
    return edges[-1]


def _combine_categorical(out: dict[str, Any], old: Mapping[str, Any],
                         new: Mapping[str, Any]) -> None:
    merged: dict[str, tuple[Any, int]] = {}
    for item in [*(old.get("top") or []), *(new.get("top") or [])]:
        key = as_text(item["value"])
        value, count = merged.get(key, (item["value"], 0))
        merged[key] = (value, count + int(item["count"]))
    complete = bool(old.get("top_complete")) and bool(new.get("top_complete"))
    ranked = sorted(merged.values(), key=lambda vc: (-vc[1], as_text(vc[0])))
    out["top"] = [{"value": v, "count": n} for v, n in ranked[:TOP_K]]
    out["top_complete"] = complete and len(ranked) <= TOP_K
    if complete:
        out["distinct"] = len(ranked)
    ref = new.get("reference")
    if isinstance(ref, dict) and "values" in ref:
        old_counts = {as_text(i["value"]): int(i["count"]) for i in old.get("top") or []}
        counts = [old_counts.get(as_text(v), 0) + int(c)
                  for v, c in zip(ref["values"], ref["counts"], strict=True)]
        out["reference"] = {"values": list(ref["values"]), "counts": counts}
