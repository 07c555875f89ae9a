"""Pages of a dataset version's rows, read in DuckDB straight from its Parquet files.

The UI and the API show a page at a time (``LIMIT``/``OFFSET`` over the version's files),
so a preview of a 10 GB dataset reads a few row groups, not the table. Rejected rows of a
run are a page of ``<pipeline>__rejected`` filtered by a bound ``_run_id``: untrusted text
never becomes SQL. Never import the engine or the server here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headwater.datasets import delta
from headwater.datasets.stats import jsonable
from headwater.exceptions import HeadwaterError, NotFoundError
from headwater.sqltext import ident as quote
from headwater.sqltext import text as literal

if TYPE_CHECKING:
    import pyarrow as pa

    from headwater.datasets.dataset import Dataset

MAX_PAGE = 500
"""The most rows one page returns, whatever the caller asks."""


def version_relation(ds: Dataset, version: int) -> tuple[str, pa.Schema]:
    """DuckDB SQL selecting every row of ``version``, and the version's Arrow schema."""
    table = ds._table(version)
    files = delta.data_files(table)
    schema = delta.arrow_schema(table)
    if not files:
        cols = ", ".join(f"NULL AS {quote(f.name)}" for f in schema) or "NULL AS _empty"
        return f"SELECT {cols} LIMIT 0", schema
    listing = ", ".join(literal(f) for f in files)
    hive = "true" if delta.partition_columns(table) else "false"
    return (f"SELECT * FROM read_parquet([{listing}], union_by_name=true, "
            f"hive_partitioning={hive})", schema)


def preview_page(ds: Dataset, version: int | None = None, *, offset: int = 0,
                 limit: int = 50, run_id: str | None = None) -> dict[str, Any]:
    """``{"columns", "rows", "offset", "limit", "total"}``; ``run_id`` keeps that run's rows.

    ``run_id`` filters on a ``_run_id`` column (the rejected-rows schema) as a bound value.
    """
    import duckdb

    number = version if version is not None else ds.version
    if number < 1:
        raise NotFoundError(f"dataset {ds.name!r} has no version yet")
    offset, limit = max(0, offset), max(1, min(limit, MAX_PAGE))
    relation, schema = version_relation(ds, number)
    where, args = "", []
    if run_id is not None:
        if "_run_id" not in schema.names:
            raise HeadwaterError(f"dataset {ds.name!r} has no _run_id column to filter on")
        where, args = " WHERE _run_id = ?", [run_id]
    try:
        with duckdb.connect() as con:
            delta.register_readers(con, ds.uri)
            total = int(con.execute(f"SELECT count(*) FROM ({relation}){where}",
                                    args).fetchall()[0][0])
            cursor = con.execute(f"SELECT * FROM ({relation}){where} LIMIT {limit} "
                                 f"OFFSET {offset}", args)
            names = [d[0] for d in cursor.description]
            rows = [[jsonable(v) for v in row] for row in cursor.fetchall()]
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HeadwaterError(f"cannot read version {number} of dataset {ds.name!r}: "
                             f"{first}") from None
    return {"dataset": ds.name, "version": number, "columns": names, "rows": rows,
            "offset": offset, "limit": limit, "total": total}
