"""Compare a published dataset with a case's expectation, row by row.

Values are compared as text in one canonical form (the form ``--update`` writes), so an
expectation file is plain CSV a reviewer reads in a diff: NULL is empty, timestamps are
ISO, floats compare within 1e-9 relative. With a key, differences are reported as
missing / unexpected / changed rows by key; without one, as missing / unexpected rows.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

IGNORED = {"_run_id"}
"""Columns that differ on every run by design, left out of rows expectations."""


def canonical(value: Any) -> str:
    """One value as expectation text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date | time | Decimal):
        return str(value)
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def same(expected: str, actual: str) -> bool:
    if expected == actual:
        return True
    try:
        a, b = float(expected), float(actual)
    except ValueError:
        return False
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


Row = dict[str, str]


@dataclass
class Diff:
    """What differs between the expected and the actual rows of one dataset."""

    dataset: str
    problems: list[str] = field(default_factory=list)
    missing: list[Row] = field(default_factory=list)
    unexpected: list[Row] = field(default_factory=list)
    changed: list[tuple[Row, Row]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.problems or self.missing or self.unexpected or self.changed)

    def summary(self) -> str:
        parts = list(self.problems)
        for label, rows in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("changed", self.changed)):
            if rows:
                parts.append(f"{len(rows)} {label} row(s)")
        return f"{self.dataset}: " + "; ".join(parts)


def rows_of(table: Any, strip: str = "") -> tuple[list[str], list[Row]]:
    """Columns and canonical rows of an Arrow table; ``strip`` is removed from text
    (the fixture folder's absolute path, so ``_source`` reads ``inputs/raw.csv:3``)."""
    columns = [c for c in table.column_names if c not in IGNORED]
    rows = []
    for record in table.select(columns).to_pylist():
        row = {c: canonical(record[c]) for c in columns}
        if strip:
            row = {c: v.replace(strip, "") for c, v in row.items()}
        rows.append(row)
    return columns, sorted(rows, key=lambda r: [r[c] for c in columns])


def read_rows(path: Path) -> tuple[list[str], list[Row]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        return columns, [dict(r) for r in reader]


def write_rows(path: Path, columns: list[str], rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def diff_rows(dataset: str, expected: tuple[list[str], list[Row]],
              actual: tuple[list[str], list[Row]], key: list[str] | None) -> Diff:
    out = Diff(dataset)
    exp_cols, exp_rows = expected
    act_cols, act_rows = actual
    if exp_cols != act_cols:
        missing = [c for c in exp_cols if c not in act_cols]
        extra = [c for c in act_cols if c not in exp_cols]
        if missing or extra:
            out.problems.append(
                "columns differ" + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {extra}" if extra else ""))
            return out
    if key and all(k in exp_cols for k in key):
        return _by_key(out, exp_rows, act_rows, exp_cols, key)
    return _as_multiset(out, exp_rows, act_rows, exp_cols)


def _ident(row: Row, columns: list[str]) -> tuple[str, ...]:
    return tuple(row.get(c, "") for c in columns)


def _by_key(out: Diff, exp_rows: list[Row], act_rows: list[Row], columns: list[str],
            key: list[str]) -> Diff:
    expected = {_ident(r, key): r for r in exp_rows}
    actual = {_ident(r, key): r for r in act_rows}
    if len(actual) != len(act_rows):
        out.problems.append(f"key {key} is not unique in the dataset")
    for k, row in expected.items():
        got = actual.get(k)
        if got is None:
            out.missing.append(row)
        elif not all(same(row.get(c, ""), got.get(c, "")) for c in columns):
            out.changed.append((row, got))
    out.unexpected.extend(r for k, r in actual.items() if k not in expected)
    return out


def _as_multiset(out: Diff, exp_rows: list[Row], act_rows: list[Row],
                 columns: list[str]) -> Diff:
    want = Counter(_ident(r, columns) for r in exp_rows)
    have = Counter(_ident(r, columns) for r in act_rows)
    unmatched_want = want - have
    unmatched_have = have - want
    # tolerate float text differences: pair leftovers that are the same within tolerance
    leftovers = list(unmatched_have.elements())
    for ident in list(unmatched_want.elements()):
        match = next((h for h in leftovers if all(map(same, ident, h))), None)
        if match is not None:
            leftovers.remove(match)
        else:
            out.missing.append(dict(zip(columns, ident, strict=True)))
    out.unexpected.extend(dict(zip(columns, h, strict=True)) for h in leftovers)
    return out
