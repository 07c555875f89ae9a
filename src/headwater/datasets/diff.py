"""``dataset diff``: rows added, removed and changed between two versions, and schema changes.

With a key (a merge dataset's ``key``) a row whose key exists in both versions but whose
values differ is *changed*; without one, rows are compared whole (a changed row counts as
one removed plus one added). Runs in DuckDB over both versions' Parquet files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headwater.datasets import delta
from headwater.datasets.publish import quote

if TYPE_CHECKING:
    from headwater.datasets.dataset import Dataset


def _relation(ds: Dataset, version: int) -> tuple[str, list[str]]:
    table = ds._table(version)
    files = [f.removeprefix("file://") for f in delta.files_of(table)]
    schema = delta.arrow_schema(table)
    if not files:
        cols = ", ".join(f"NULL AS {quote(f.name)}" for f in schema) or "NULL AS _empty"
        return f"SELECT {cols} LIMIT 0", schema.names
    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    hive = "true" if delta.partition_columns(table) else "false"
    return (f"SELECT * FROM read_parquet([{listing}], union_by_name=true, "
            f"hive_partitioning={hive})", schema.names)


def diff_versions(ds: Dataset, a: int, b: int) -> dict[str, Any]:
    import duckdb

    rel_a, cols_a = _relation(ds, a)
    rel_b, cols_b = _relation(ds, b)
    schema_changes = [f"added column {c!r}" for c in cols_b if c not in cols_a]
    schema_changes += [f"removed column {c!r}" for c in cols_a if c not in cols_b]
    common = [c for c in cols_b if c in cols_a]
    key = [k for k in (ds._runtime.store.dataset(ds.name).get("key") or []) if k in common]
    sel = ", ".join(quote(c) for c in common)
    with duckdb.connect() as con:
        con.execute(f"CREATE VIEW a AS SELECT {sel} FROM ({rel_a})")
        con.execute(f"CREATE VIEW b AS SELECT {sel} FROM ({rel_b})")
        if key:
            on = " AND ".join(f"a.{quote(k)} IS NOT DISTINCT FROM b.{quote(k)}" for k in key)
            keys = ", ".join(quote(k) for k in key)
            added = _count(con, f"SELECT {keys} FROM b EXCEPT SELECT {keys} FROM a")
            removed = _count(con, f"SELECT {keys} FROM a EXCEPT SELECT {keys} FROM b")
            differs = " OR ".join(f"a.{quote(c)} IS DISTINCT FROM b.{quote(c)}"
                                  for c in common if c not in key) or "false"
            changed = _count(con, f"SELECT 1 FROM a JOIN b ON {on} WHERE {differs}")
        else:
            added = _count(con, "SELECT * FROM b EXCEPT ALL SELECT * FROM a")
            removed = _count(con, "SELECT * FROM a EXCEPT ALL SELECT * FROM b")
            changed = 0
    return {"dataset": ds.name, "from": a, "to": b, "key": key, "added": added,
            "removed": removed, "changed": changed, "schema_changes": schema_changes}


def _count(con: Any, query: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM ({query})").fetchall()[0][0])
