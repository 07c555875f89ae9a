"""JSON records → one Parquet file, in bounded memory, with nested JSON kept as structure.

APIs answer page by page and records of one API rarely agree on every field's shape. A
:class:`JsonSpool` appends each page's records to an NDJSON file in the run folder while
inferring, column by column, one Arrow type that fits every page (``int`` and ``float``
widen to ``float64``, structs gain the union of their fields, ``null`` takes any type).
A column whose shapes cannot agree (a number here, an object there) is kept as JSON text
rather than failing. :meth:`JsonSpool.finish` re-reads the spool in chunks and writes
Parquet with that schema, so memory holds one page or one chunk, never the whole answer.
This module must never import the engine, steps or server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

CHUNK_ROWS = 10_000
VALUE_COLUMN = "value"
"""The column name records that are not JSON objects (a list of ids, say) are kept in."""


class JsonSpool:
    """Collects JSON records page by page; writes them as one Parquet file at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self._types: dict[str, pa.DataType] = {}
        self._as_text: set[str] = set()
        self._file: IO[str] = path.open("w", encoding="utf-8")

    def add(self, records: list[Any]) -> None:
        """Append one page of records and widen the inferred column types to fit it."""
        rows = [r if isinstance(r, dict) else {VALUE_COLUMN: r} for r in records]
        for name in _names(rows):
            if name not in self._as_text:
                self._widen(name, [row.get(name) for row in rows])
        for row in rows:
            self._file.write(json.dumps(row, separators=(",", ":")) + "\n")
        self.rows += len(rows)

    def _widen(self, name: str, values: list[Any]) -> None:
        try:
            found = pa.array(values).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            self._as_text.add(name)
            return
        known = self._types.get(name)
        if known is not None:
            try:
                merged = pa.unify_schemas([pa.schema([(name, known)]), pa.schema([(name, found)])],
                                          promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                self._as_text.add(name)
                return
            found = merged.field(name).type
        self._types[name] = found

    def schema(self) -> pa.Schema:
        """The schema the Parquet file gets: inferred types, JSON text where shapes vary."""
        fields = []
        for name, kind in self._types.items():
            if name in self._as_text or not _writable(kind):
                fields.append(pa.field(name, pa.string()))
            else:
                fields.append(pa.field(name, kind))
        for name in self._as_text:
            if name not in self._types:
                fields.append(pa.field(name, pa.string()))
        return pa.schema(fields)

    def finish(self, out: Path) -> pa.Schema:
        """Write the Parquet file (chunk by chunk) and remove the spool; returns the schema."""
        self._file.close()
        schema = self.schema()
        if not len(schema):  # no records at all: nothing to write
            self.path.unlink(missing_ok=True)
            return schema
        text = {f.name for f in schema if f.type == pa.string() and
                (f.name in self._as_text or not _writable(self._types.get(f.name, pa.null())))}
        try:
            with pq.ParquetWriter(out, schema) as writer:
                for chunk in _chunks(self.path):
                    writer.write_table(_table(chunk, schema, text))
        finally:
            self.path.unlink(missing_ok=True)
        return schema

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def _names(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(str(key), None)
    return list(seen)


def _writable(kind: pa.DataType) -> bool:
    """Parquet cannot store a null-typed column or a struct without fields."""
    if pa.types.is_null(kind):
        return False
    if pa.types.is_struct(kind):
        return kind.num_fields > 0 and all(_writable(kind.field(i).type)
                                           for i in range(kind.num_fields))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _writable(kind.value_type)
    return True


def _chunks(path: Path) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            chunk.append(json.loads(line))
            if len(chunk) >= CHUNK_ROWS:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _table(rows: list[dict[str, Any]], schema: pa.Schema, text: set[str]) -> pa.Table:
    columns = []
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if field.name in text:
            values = [None if v is None else json.dumps(v, separators=(",", ":"))
                      for v in values]
        columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)
