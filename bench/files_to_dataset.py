"""Benchmark: one CSV file to a published dataset, headwater against its floors and peers.

Run:  python bench/files_to_dataset.py [--rows 2000000] [--skip-dlt] [--rss-scaling]

Each tool runs as a whole fresh process, timed for wall seconds and peak RSS:
  headwater          `headwater run load` of a files -> publish pipeline (a Delta table)
  pyarrow->delta     the hand-written floor: pyarrow.csv.open_csv batches streamed into
                     deltalake.write_deltalake
  duckdb COPY        COPY (SELECT * FROM read_csv(...)) TO 'x.parquet'
  polars sink        pl.scan_csv(...).sink_parquet(...)
  dlt arrow          a dlt resource yielding pyarrow batches, filesystem destination, parquet
  dlt dict rows      dlt's default path: dict rows (csv.DictReader), filesystem destination,
                     default file format; run on --dlt-dict-rows rows and scaled

The same script is the child for the non-headwater tools (``--child TOOL``), so every child
imports only what its tool needs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DATA_DIR,
    Measurement,
    headwater_exe,
    machine_line,
    measure,
    table,
)

SEED = 20240601
CHUNK_ROWS = 250_000
TARGETS = {  # headwater's throughput over the other tool's must be at least this
    "pyarrow->delta": 0.8,
    "duckdb COPY": 0.8,
    "dlt arrow": 1.5,
}

# --------------------------------------------------------------------------- data


def csv_path(rows: int, seed: int = SEED) -> Path:
    """The cached CSV for ``rows`` and ``seed``, generated on first use."""
    path = DATA_DIR / f"orders_{rows}_s{seed}.csv"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        print(f"generating {path.name} ...", flush=True)
        tmp = path.with_suffix(".csv.part")
        write_csv(tmp, rows, seed)
        tmp.rename(path)
        size = path.stat().st_size / 2**20
        print(f"  {rows:,} rows, {size:,.0f} MiB in {time.perf_counter() - started:.1f}s",
              flush=True)
    return path


def write_csv(path: Path, rows: int, seed: int) -> None:
    """Write ``rows`` deterministic rows of 12 mixed columns (chunked, so memory is flat)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    writer: pacsv.CSVWriter | None = None
    try:
        for offset in range(0, rows, CHUNK_ROWS):
            batch = _chunk(rng, offset, min(CHUNK_ROWS, rows - offset))
            if writer is None:
                writer = pacsv.CSVWriter(str(path), batch.schema)
            writer.write_batch(batch)
        if writer is None:  # rows == 0: a header only
            empty = _chunk(rng, 0, 0)
            pacsv.write_csv(pa.Table.from_batches([empty]), str(path))
    finally:
        if writer is not None:
            writer.close()


NOTE_WORDS = [
    "leave at the door",
    'fragile, handle with care',
    'ring "twice"',
    "call, then wait",
    'gift wrap: "blue", no card',
    "",
    "back entrance",
    "comma, inside, text",
]
COUNTRIES = ["DE", "FR", "US", "GB", "NL", "ES", "IT", "PL"]
TAGS = ['"new"', '"vip"', '"promo"', '"repeat"', '"b2b"']


def _chunk(rng: object, offset: int, n: int) -> object:
    """One record batch of the benchmark table (row ids ``offset`` .. ``offset + n``)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    assert isinstance(rng, np.random.Generator)

    def nulls(p: float) -> np.ndarray:
        return rng.random(n) < p

    epoch = np.datetime64("2023-01-01T00:00:00", "s")
    ordered = epoch + rng.integers(0, 2 * 365 * 86400, n).astype("timedelta64[s]")
    shipped = ordered + rng.integers(3600, 10 * 86400, n).astype("timedelta64[s]")
    iso = "%Y-%m-%dT%H:%M:%S"
    ordered_s = pc.strftime(pa.array(ordered, pa.timestamp("s")), format=iso)
    shipped_s = pc.strftime(pa.array(shipped, pa.timestamp("s"), mask=nulls(0.2)), format=iso)
    notes = np.array(NOTE_WORDS, dtype=object)[rng.integers(0, len(NOTE_WORDS), n)]
    tag_a = np.array(TAGS, dtype=object)[rng.integers(0, len(TAGS), n)]
    tag_b = np.array(TAGS, dtype=object)[rng.integers(0, len(TAGS), n)]
    score = rng.integers(0, 1000, n).astype(str).astype(object)
    attributes = pc.binary_join_element_wise(
        '{"score": ', pa.array(score, pa.string()), ', "tags": [',
        pa.array(tag_a, pa.string()), ", ", pa.array(tag_b, pa.string()), "]}", "",
    )
    columns = {
        "order_id": pa.array(np.arange(offset, offset + n, dtype=np.int64) + 1),
        "customer_id": pa.array(rng.integers(1, 100_000, n, dtype=np.int64)),
        "amount": pa.array(np.round(rng.gamma(2.0, 40.0, n), 2), mask=nulls(0.02)),
        "quantity": pa.array(rng.integers(1, 20, n, dtype=np.int32), mask=nulls(0.05)),
        "discount": pa.array(np.round(rng.random(n) * 0.5, 3)),
        "ordered_at": ordered_s,
        "shipped_at": shipped_s,
        "order_date": pa.array(ordered.astype("datetime64[D]"), pa.date32()),
        "is_gift": pa.array(rng.random(n) < 0.1, mask=nulls(0.1)),
        "country": pa.array(np.array(COUNTRIES, dtype=object)[rng.integers(0, 8, n)],
                            pa.string()),
        "note": pa.array(notes, pa.string(), mask=nulls(0.3)),
        "attributes": attributes,
    }
    return pa.RecordBatch.from_pydict(columns)


# --------------------------------------------------------------------------- children
# Each runs inside its own fresh process (``--child TOOL``).

# pyarrow's default 1 MiB CSV block is used throughout: at 500k rows it was both faster
# and smaller in memory than 4, 16 or 64 MiB blocks.


def child_pyarrow_delta(src: Path, out: Path) -> None:
    import pyarrow.csv as pacsv
    from deltalake import write_deltalake

    write_deltalake(str(out / "delta"), pacsv.open_csv(str(src)), mode="overwrite")


def child_duckdb(src: Path, out: Path) -> None:
    import duckdb

    con = duckdb.connect()
    target = out / "duckdb.parquet"
    con.execute(f"COPY (SELECT * FROM read_csv('{src}')) TO '{target}' (FORMAT parquet)")


def child_polars(src: Path, out: Path) -> None:
    import polars as pl

    pl.scan_csv(src).sink_parquet(out / "polars.parquet")


def _dlt_pipeline(out: Path) -> object:
    import dlt

    return dlt.pipeline(
        pipeline_name="bench",
        pipelines_dir=str(out / "dlt_pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=(out / "dlt_lake").as_uri()),
        dataset_name="bench",
    )


def child_dlt_arrow(src: Path, out: Path) -> None:
    import dlt
    import pyarrow.csv as pacsv

    @dlt.resource(name="orders", write_disposition="replace")
    def orders():  # type: ignore[no-untyped-def]
        yield from pacsv.open_csv(str(src))

    pipeline = _dlt_pipeline(out)
    pipeline.run(orders(), loader_file_format="parquet")  # type: ignore[attr-defined]


def child_dlt_dicts(src: Path, out: Path, limit: int) -> None:
    import csv
    import itertools

    import dlt

    @dlt.resource(name="orders", write_disposition="replace")
    def orders():  # type: ignore[no-untyped-def]
        with src.open(newline="", encoding="utf-8") as f:
            yield from itertools.islice(csv.DictReader(f), limit)

    _dlt_pipeline(out).run(orders())  # type: ignore[attr-defined]


CHILDREN: dict[str, Callable[[Path, Path], None]] = {
    "pyarrow->delta": child_pyarrow_delta,
    "duckdb COPY": child_duckdb,
    "polars sink": child_polars,
    "dlt arrow": child_dlt_arrow,
}

DLT_ENV = {  # keep dlt off the network and out of ~/.dlt
    "RUNTIME__DLTHUB_TELEMETRY": "false",
    "DLT_DATA_DIR": "",  # filled per run
}

# --------------------------------------------------------------------------- parent


def run_child(tool: str, src: Path, work: Path, extra: list[str] | None = None) -> Measurement:
    out = work / tool.replace(" ", "_").replace(">", "").replace("-", "_")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**DLT_ENV, "DLT_DATA_DIR": str(out / "dlt_data")}
    cmd = [sys.executable, __file__, "--child", tool, "--src", str(src), "--out", str(out)]
    return measure(cmd + (extra or []), env=env).check(tool)


def write_project(root: Path, src: Path) -> Path:
    """The small headwater project the benchmark runs: files -> publish."""
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "headwater.yaml").write_text("name: bench\n")
    (root / "pipelines" / "load.yaml").write_text(
        "name: load\n"
        "steps:\n"
        "  - id: raw\n"
        f"    source: {{type: files, path: '{src}', format: csv}}\n"
        "  - id: publish\n"
        "    publish: {input: raw, dataset: bench, mode: overwrite}\n"
    )
    return root


def run_headwater(src: Path, work: Path) -> Measurement:
    project = work / "headwater_project"
    shutil.rmtree(project, ignore_errors=True)
    write_project(project, src)
    cmd = [headwater_exe(), "run", "load", "--project", str(project)]
    result = measure(cmd, cwd=project).check("headwater run load")
    check_published(project, count_rows(src))
    return result


def count_rows(src: Path) -> int:
    """Rows in a generated CSV: its name says so (``orders_<rows>_s<seed>.csv``)."""
    return int(src.name.split("_")[1])


def check_published(project: Path, rows: int) -> None:
    """Fail unless `headwater datasets --json` lists dataset bench with ``rows`` rows."""
    import json
    import subprocess

    listing = subprocess.run(
        [headwater_exe(), "datasets", "--json", "--project", str(project)],
        capture_output=True, text=True, check=True, cwd=project,
    ).stdout
    found = {d["name"]: d.get("rows") for d in json.loads(listing)}
    if found.get("bench") != rows:
        raise SystemExit(f"headwater published {found!r}, expected bench with {rows} rows")


def run_tool(tool: str, src: Path, work: Path) -> Measurement:
    return run_headwater(src, work) if tool == "headwater" else run_child(tool, src, work)


def result_row(tool: str, rows: int, m: Measurement, note: str = "") -> list[object]:
    return [tool, m.seconds, rows / m.seconds, m.peak_rss_mb, note]


def main_bench(args: argparse.Namespace) -> None:
    src = csv_path(args.rows)
    size_mb = src.stat().st_size / 2**20
    print(machine_line())
    print(f"input: {src.name}: {args.rows:,} rows, {size_mb:,.0f} MiB\n", flush=True)
    results: dict[str, tuple[float, list[object]]] = {}  # tool -> (rows/s, row)
    with tempfile.TemporaryDirectory(prefix="hw-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        plan: list[tuple[str, Callable[[], tuple[int, Measurement, str]]]] = []
        if not args.skip_headwater:
            plan.append(("headwater", lambda: (args.rows, run_headwater(src, work), "Delta")))
        plan += [
            ("pyarrow->delta", lambda: (args.rows, run_child("pyarrow->delta", src, work),
                                        "Delta, hand-written floor")),
            ("duckdb COPY", lambda: (args.rows, run_child("duckdb COPY", src, work),
                                     "one Parquet file")),
            ("polars sink", lambda: (args.rows, run_child("polars sink", src, work),
                                     "one Parquet file")),
        ]
        if not args.skip_dlt:
            plan.append(("dlt arrow", lambda: (args.rows, run_child("dlt arrow", src, work),
                                               "Parquet, filesystem destination")))
            dict_rows = min(args.dlt_dict_rows, args.rows)
            plan.append(("dlt dict rows", lambda: (
                dict_rows,
                run_child("dlt dict rows", src, work, ["--limit", str(dict_rows)]),
                f"first {dict_rows:,} rows only, default (jsonl)",
            )))
        for tool, job in plan:
            print(f"running {tool} ...", flush=True)
            rows, m, note = job()
            results[tool] = (rows / m.seconds, result_row(tool, rows, m, note))
            print(f"  {m.seconds:.2f}s, peak RSS {m.peak_rss_mb:,.0f} MB", flush=True)
    print()
    print(table(["tool", "seconds", "rows/s", "peak RSS MB", "note"],
                [row for _, row in results.values()]))
    if "dlt dict rows" in results:
        rate = results["dlt dict rows"][0]
        print(f"\ndlt dict rows ran on {min(args.dlt_dict_rows, args.rows):,} rows; "
              f"scaled to {args.rows:,} rows that is ~{args.rows / rate:,.0f}s.")
    if "headwater" in results:
        print_ratios(results)


def print_ratios(results: dict[str, tuple[float, list[object]]]) -> None:
    hw = results["headwater"][0]
    rows = []
    for tool, target in TARGETS.items():
        if tool in results:
            ratio = hw / results[tool][0]
            verdict = "ok" if ratio >= target else "MISSED"
            rows.append([f"headwater vs {tool}", ratio, f">= {target}x", verdict])
    print()
    print(table(["throughput ratio", "x", "target", ""], rows))


def main_rss_scaling(args: argparse.Namespace) -> None:
    """Peak RSS of headwater (and the floor) on 1x and 4x the rows: it should stay flat."""
    print(machine_line())
    tools = ["pyarrow->delta"] if args.skip_headwater else ["headwater", "pyarrow->delta"]
    rows_out: list[list[object]] = []
    peaks: dict[str, list[float]] = {tool: [] for tool in tools}
    with tempfile.TemporaryDirectory(prefix="hw-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        for factor in (1, 4):
            rows = args.rows * factor
            src = csv_path(rows)
            mib = src.stat().st_size / 2**20
            print(f"running at {factor}x: {rows:,} rows ({mib:,.0f} MiB) ...", flush=True)
            for tool in tools:
                m = run_tool(tool, src, work)
                peaks[tool].append(m.peak_rss_mb)
                rows_out.append([tool, f"{factor}x", rows, mib, m.seconds, m.peak_rss_mb])
    print()
    print(table(["tool", "size", "rows", "file MiB", "seconds", "peak RSS MB"], rows_out))
    print()
    for tool, (one, four) in peaks.items():
        growth = four / one
        verdict = "flat" if growth <= 1.25 else "grows"
        print(f"{tool}: peak RSS x{growth:.2f} (+{four - one:,.0f} MB) for x4 the file "
              f"({verdict})")
    print("A streaming load keeps peak RSS flat from 1x to 4x; the floor shows how much of any "
          "growth is the Delta writer's own buffering (up to its target file size).")


def main_child(args: argparse.Namespace) -> None:
    src, out = Path(args.src), Path(args.out)
    if args.child == "dlt dict rows":
        child_dlt_dicts(src, out, args.limit)
    else:
        CHILDREN[args.child](src, out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=2_000_000, help="rows in the CSV (default 2M)")
    p.add_argument("--skip-dlt", action="store_true", help="leave out both dlt runs")
    p.add_argument("--skip-headwater", action="store_true",
                   help="only the floors and peers (while headwater is not installed)")
    p.add_argument("--dlt-dict-rows", type=int, default=200_000,
                   help="rows for dlt's dict-row path, which is slow (default 200k), scaled")
    p.add_argument("--rss-scaling", action="store_true",
                   help="run headwater on --rows and 4x --rows and compare peak RSS")
    p.add_argument("--workdir", default=None, help="folder for outputs (default: a temp dir)")
    p.add_argument("--child", choices=[*CHILDREN, "dlt dict rows"], help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        main_child(args)
    elif args.rss_scaling:
        main_rss_scaling(args)
    else:
        main_bench(args)


if __name__ == "__main__":
    main()
