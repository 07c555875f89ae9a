"""``dataset diff``: rows added, removed and changed between two versions, and schema changes.

With a key (a merge dataset's ``key``) a row whose key exists in both versions but whose
values differ is *changed*; without one, rows are compared whole (a changed row counts as
one removed plus one added). A column whose type changed is compared as text. Runs in
DuckDB over both versions' Parquet files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headwater.datasets import delta
from headwater.datasets.preview import version_relation
from headwater.exceptions import HeadwaterError
from headwater.sqltext import ident as quote

if TYPE_CHECKING:
    from headwater.datasets.dataset import Dataset


def diff_versions(ds: Dataset, a: int, b: int) -> dict[str, Any]:
    import duckdb

    rel_a, schema_a = version_relation(ds, a)
    rel_b, schema_b = version_relation(ds, b)
    cols_a, cols_b = schema_a.names, schema_b.names
    common = [c for c in cols_b if c in cols_a]
    retyped = [c for c in common if schema_a.field(c).type != schema_b.field(c).type]
    schema_changes = [f"added column {c!r}" for c in cols_b if c not in cols_a]
    schema_changes += [f"removed column {c!r}" for c in cols_a if c not in cols_b]
    schema_changes += [f"column {c!r} changed type from {schema_a.field(c).type} to "
                       f"{schema_b.field(c).type}" for c in retyped]
    key = [k for k in (ds._runtime.store.dataset(ds.name).get("key") or []) if k in common]
    # a column whose type changed is compared as text, so the two sides always compare
    sel = ", ".join(f"CAST({quote(c)} AS VARCHAR) AS {quote(c)}" if c in retyped else quote(c)
                    for c in common)
    try:
        with duckdb.connect() as con:
            delta.register_readers(con, ds.uri)
            con.execute(f"CREATE VIEW a AS SELECT {sel} FROM ({rel_a})")
            con.execute(f"CREATE VIEW b AS SELECT {sel} FROM ({rel_b})")
            added, removed, changed = _counts(con, key, common)
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HeadwaterError(f"cannot diff versions {a} and {b} of dataset {ds.name!r}: "
                             f"{first}") from None
    return {"dataset": ds.name, "from": a, "to": b, "key": key, "added": added,
            "removed": removed, "changed": changed, "schema_changes": schema_changes}


def _counts(con: Any, key: list[str], common: list[str]) -> tuple[int, int, int]:
    """(added, removed, changed) between views ``a`` and ``b``."""
    if not key:
        added = _count(con, "SELECT * FROM b EXCEPT ALL SELECT * FROM a")
        removed = _count(con, "SELECT * FROM a EXCEPT ALL SELECT * FROM b")
        return added, removed, 0
    on = " AND ".join(f"a.{quote(k)} IS NOT DISTINCT FROM b.{quote(k)}" for k in key)
    keys = ", ".join(quote(k) for k in key)
    added = _count(con, f"SELECT {keys} FROM b EXCEPT SELECT {keys} FROM a")
    removed = _count(con, f"SELECT {keys} FROM a EXCEPT SELECT {keys} FROM b")
    differs = " OR ".join(f"a.{quote(c)} IS DISTINCT FROM b.{quote(c)}"
                          for c in common if c not in key) or "false"
    changed = _count(con, f"SELECT 1 FROM a JOIN b ON {on} WHERE {differs}")
    return added, removed, changed


def _count(con: Any, query: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM ({query})").fetchall()[0][0])
