"""Benchmark: a PostgreSQL table to a published dataset, headwater against its floor and peers.

Run:  python bench/sql_to_dataset.py [--rows 2000000] [--skip-dlt] [--skip-incremental]

Each tool runs as a whole fresh process, timed for wall seconds and peak RSS:
  headwater          `headwater run load`: source {type: sql, table} -> publish overwrite
  adbc->delta        the hand-written floor: ADBC's Arrow record-batch stream straight into
                     deltalake.write_deltalake
  connectorx->delta  connectorx.read_sql(return_type="arrow") into write_deltalake
  dlt sql_database   dlt's sql_database source, pyarrow backend, filesystem destination,
                     parquet (only when dlt is installed: pip install 'headwater[bench]')

Then the incremental case on a copy of the table with an index on ``updated_at``:
  (a) a full incremental run, (b) a run that finds nothing new, (c) a run after 1 % new
  rows (half of them tied with the high-water mark). Target: c <= b + 2 % of a.

The table is generated once per row count in the database ``--database`` (created if
missing, kept for later runs: drop it by hand). The same script is the child for the
non-headwater tools (``--child TOOL``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Measurement, headwater_exe, machine_line, measure, table

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_FLOOR = 0.8
TARGET_INCREMENTAL = 0.02

# --------------------------------------------------------------------------- data


def db_url(args: argparse.Namespace) -> str:
    return args.admin.rsplit("/", 1)[0] + "/" + args.database


def ensure_table(args: argparse.Namespace) -> str:
    """``orders_<rows>`` in the bench database, generated on first use."""
    import psycopg

    with psycopg.connect(args.admin, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                             (args.database,)).fetchone()
        if found is None:
            conn.execute(f'CREATE DATABASE "{args.database}"')
    name = f"orders_{args.rows}"
    with psycopg.connect(db_url(args), autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
        if exists and exists[0]:
            return name
        print(f"generating {name} ...", flush=True)
        started = time.perf_counter()
        conn.execute(f"""
            CREATE TABLE {name} AS SELECT
              g::bigint AS order_id,
              (g % 50000)::bigint AS customer_id,
              round((random() * 1000)::numeric, 2)::numeric(12, 2) AS amount,
              CASE WHEN g % 10 = 0 THEN NULL ELSE random() END AS score,
              (g % 100)::int AS quantity,
              timestamptz '2024-01-01' + (g || ' seconds')::interval AS ordered_at,
              date '2024-01-01' + (g % 365) AS ship_date,
              (g % 3 = 0) AS returned,
              (ARRAY['DE','FR','US','GB','NL','ES','IT','PL'])[1 + g % 8] AS country,
              'order note ' || g AS note,
              timestamptz '2024-01-01' + ((g / 100) || ' seconds')::interval AS updated_at
            FROM generate_series(1, {args.rows}) AS g""")
        conn.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (order_id)")
        conn.execute(f"ANALYZE {name}")
        print(f"  {time.perf_counter() - started:.1f}s", flush=True)
    return name


def incremental_copy(args: argparse.Namespace, source: str) -> str:
    """A fresh copy of the table with an index on the cursor, for the incremental case."""
    import psycopg

    name = f"{source}_inc"
    with psycopg.connect(db_url(args), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute(f"CREATE TABLE {name} AS SELECT * FROM {source}")
        conn.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (order_id)")
        conn.execute(f"CREATE INDEX ON {name} (updated_at)")
        conn.execute(f"ANALYZE {name}")
    return name


def add_new_rows(args: argparse.Namespace, name: str) -> int:
    """1 % new rows: half tie with the current maximum ``updated_at``, half are later."""
    import psycopg

    new = max(args.rows // 100, 2)
    with psycopg.connect(db_url(args), autocommit=True) as conn:
        conn.execute(f"""
            INSERT INTO {name}
            SELECT {args.rows} + g, customer_id, amount, score, quantity, ordered_at,
                   ship_date, returned, country, note,
                   (SELECT max(updated_at) FROM {name}) +
                     CASE WHEN g % 2 = 0 THEN interval '0' ELSE interval '1 hour' END
            FROM generate_series(1, {new}) AS g
            JOIN {name} ON {name}.order_id = g""")
    return new


# --------------------------------------------------------------------------- children


def child_adbc_delta(url: str, name: str, out: Path) -> None:
    import adbc_driver_postgresql.dbapi as adbc
    from deltalake import write_deltalake

    with adbc.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {name}")
        write_deltalake(str(out / "delta"), cur.fetch_record_batch(), mode="overwrite")


def child_connectorx_delta(url: str, name: str, out: Path) -> None:
    import connectorx as cx
    from deltalake import write_deltalake

    data = cx.read_sql(url, f"SELECT * FROM {name}", return_type="arrow")
    write_deltalake(str(out / "delta"), data, mode="overwrite")


def child_dlt(url: str, name: str, out: Path) -> None:
    import dlt
    from dlt.sources.sql_database import sql_table

    pipeline = dlt.pipeline(
        pipeline_name="bench", pipelines_dir=str(out / "dlt_pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=(out / "dlt_lake").as_uri()),
        dataset_name="bench")
    resource = sql_table(credentials=url.replace("postgresql://", "postgresql+psycopg://"),
                         table=name, backend="pyarrow")
    pipeline.run(resource, loader_file_format="parquet")


CHILDREN: dict[str, Callable[[str, str, Path], None]] = {
    "adbc->delta": child_adbc_delta,
    "connectorx->delta": child_connectorx_delta,
    "dlt sql_database": child_dlt,
}


def run_child(tool: str, url: str, name: str, work: Path) -> Measurement:
    out = work / tool.replace(" ", "_").replace(">", "").replace("-", "_")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {"RUNTIME__DLTHUB_TELEMETRY": "false", "DLT_DATA_DIR": str(out / "dlt_data")}
    cmd = [sys.executable, __file__, "--child", tool, "--url", url, "--table", name,
           "--out", str(out)]
    return measure(cmd, env=env).check(tool)


# --------------------------------------------------------------------------- headwater


def write_project(root: Path, url: str, source: str, mode: str) -> Path:
    """A one-pipeline project: a sql source into a publish."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "pipelines").mkdir(parents=True)
    (root / "headwater.yaml").write_text(
        f"name: bench\nconnections:\n  pg: {{type: postgres, url: \"{url}\"}}\n")
    (root / "pipelines" / "load.yaml").write_text(
        "name: load\nsteps:\n  - id: raw\n"
        f"    source: {source}\n"
        f"  - id: publish\n    publish: {{input: raw, dataset: bench, mode: {mode}}}\n")
    return root


def headwater_run(project: Path) -> Measurement:
    cmd = [headwater_exe(), "run", "load", "--project", str(project)]
    return measure(cmd, cwd=project).check("headwater run load")


def published_rows(project: Path) -> int:
    listing = subprocess.run(
        [headwater_exe(), "datasets", "--json", "--project", str(project)],
        capture_output=True, text=True, check=True, cwd=project).stdout
    found = {d["name"]: d.get("rows") for d in json.loads(listing)}
    return int(found.get("bench") or 0)


def expect_rows(project: Path, rows: int) -> None:
    actual = published_rows(project)
    if actual != rows:
        raise SystemExit(f"headwater published {actual} rows, expected {rows}")


# --------------------------------------------------------------------------- main


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main_bench(args: argparse.Namespace) -> None:
    name = ensure_table(args)
    url = db_url(args)
    print(machine_line())
    print(f"input: PostgreSQL table {name}: {args.rows:,} rows, 11 columns\n", flush=True)
    results: dict[str, Measurement] = {}
    with tempfile.TemporaryDirectory(prefix="hw-bench-sql-", dir=args.workdir) as tmp:
        work = Path(tmp)
        project = write_project(work / "hw_full", url,
                                f"{{type: sql, connection: pg, table: {name}}}", "overwrite")
        tools: list[tuple[str, Callable[[], Measurement]]] = [
            ("headwater", lambda: headwater_run(project)),
            ("adbc->delta", lambda: run_child("adbc->delta", url, name, work))]
        if not args.skip_connectorx and have("connectorx"):
            tools.append(("connectorx->delta",
                          lambda: run_child("connectorx->delta", url, name, work)))
        if not args.skip_dlt and have("dlt"):
            tools.append(("dlt sql_database",
                          lambda: run_child("dlt sql_database", url, name, work)))
        for tool, job in tools:
            print(f"running {tool} ...", flush=True)
            results[tool] = job()
            print(f"  {results[tool].seconds:.2f}s, peak RSS "
                  f"{results[tool].peak_rss_mb:,.0f} MB", flush=True)
        expect_rows(project, args.rows)
        print()
        print(table(["tool", "seconds", "rows/s", "peak RSS MB"],
                    [[t, m.seconds, args.rows / m.seconds, m.peak_rss_mb]
                     for t, m in results.items()]))
        floor = results["adbc->delta"].seconds / results["headwater"].seconds
        verdict = "ok" if floor >= TARGET_FLOOR else "MISSED"
        print(f"\nheadwater vs ADBC->delta floor: {floor:.2f}x throughput "
              f"(target >= {TARGET_FLOOR}, {verdict})")
        for tool in ("connectorx->delta", "dlt sql_database"):
            if tool in results:
                print(f"headwater vs {tool}: "
                      f"{results[tool].seconds / results['headwater'].seconds:.2f}x")
        if not args.skip_incremental:
            incremental(args, name, url, work)


def incremental(args: argparse.Namespace, name: str, url: str, work: Path) -> None:
    """Full, nothing-new and 1 %-new runs of an incremental pipeline on a table copy."""
    print("\nincremental: preparing a copy with an index on updated_at ...", flush=True)
    copy = incremental_copy(args, name)
    source = (f"{{type: sql, connection: pg, table: {copy}, "
              "incremental: {cursor: updated_at}}")
    project = write_project(work / "hw_incremental", url, source, "append")
    full = headwater_run(project)
    nothing = headwater_run(project)
    new = add_new_rows(args, copy)
    some = headwater_run(project)
    expect_rows(project, args.rows + new)
    print(table(["incremental run", "seconds", "peak RSS MB"],
                [["(a) full", full.seconds, full.peak_rss_mb],
                 ["(b) nothing new", nothing.seconds, nothing.peak_rss_mb],
                 [f"(c) 1 % new ({new:,} rows)", some.seconds, some.peak_rss_mb]]))
    budget = nothing.seconds + TARGET_INCREMENTAL * full.seconds
    verdict = "ok" if some.seconds <= budget else "MISSED"
    print(f"\n(c) {some.seconds:.2f}s vs budget b + 2% of a = {budget:.2f}s ({verdict}); "
          f"every row published exactly once ({args.rows + new:,})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=2_000_000, help="rows in the table (default 2M)")
    p.add_argument("--admin", default=ADMIN, help="a PostgreSQL URL allowed to create a DB")
    p.add_argument("--database", default="hw_bench_sql", help="the database holding the table")
    p.add_argument("--skip-dlt", action="store_true", help="leave out dlt")
    p.add_argument("--skip-connectorx", action="store_true", help="leave out ConnectorX")
    p.add_argument("--skip-incremental", action="store_true", help="leave out the 1 %% case")
    p.add_argument("--workdir", default=None, help="folder for outputs (default: a temp dir)")
    p.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--table", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        CHILDREN[args.child](args.url, args.table, Path(args.out))
        return
    main_bench(args)


if __name__ == "__main__":
    main()
