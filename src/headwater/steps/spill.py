"""Write a relation to a Parquet file in the run folder and point the output at it.

Spills make a step's result durable for ``rerun --from-failed`` and stop expensive work
from being recomputed by several consumers. DuckDB's COPY streams, so memory stays flat.
"""

from __future__ import annotations

import duckdb

from headwater.exceptions import StepError
from headwater.sqltext import text as sql_string
from headwater.steps.base import StepContext, StepOutput


def spill(ctx: StepContext, query: str, name: str | None = None) -> StepOutput:
    path = ctx.workdir / f"{name or ctx.step_id}.parquet"
    con = ctx.cursor()
    try:
        con.execute(f"COPY ({query}) TO {sql_string(str(path))} (FORMAT parquet)")
        rows = con.execute(
            f"SELECT count(*) FROM read_parquet({sql_string(str(path))})").fetchall()[0][0]
    except duckdb.Error as exc:
        text = str(exc).strip().splitlines()
        raise StepError(text[0] if text else type(exc).__name__) from None
    return StepOutput(relation=f"SELECT * FROM read_parquet({sql_string(str(path))})",
                      rows=int(rows), info={"bytes": path.stat().st_size})
