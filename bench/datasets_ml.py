"""Benchmark: what validate, merge and statistics cost on a 2M-row dataset, in one run.

Run:  python bench/datasets_ml.py [--rows 2000000] [--stats-repeat 3] [--workdir DIR]

Three measurements, each against its own baseline, on generated deterministic data:

  1. validation cost   `headwater run` of files -> publish against files -> validate
                       (5 checked columns + 1 row rule, on_error: quarantine,
                       max_error_ratio: 0.05) -> publish, on the same CSV with 1 % bad rows;
                       cost = 1 - throughput(with validate) / throughput(without).
                       Target: <= 30 %.
  2. merge vs overwrite on a dataset built from the 2M-row CSV (mode: overwrite), the
                       time of `headwater run` for (a) a full overwrite with the same 2M rows
                       and (b) a `mode: merge, key: [order_id]` publish of a CSV holding 1 %
                       changed rows (half updates of existing keys, half inserts).
                       Target: b / a <= 25 %.
  3. stats + drift     the stream statistics of a publish (StreamStats watching each batch,
                       its document with the previous version as reference) + compute_drift
                       on the version (a) published, timed in-process with the functions the
                       publish step calls, against that publish step's `seconds` in the
                       store's step_runs table. Target: <= 15 %.

Every `headwater run` is a whole fresh process (wall seconds and peak RSS, as in
files_to_dataset.py). Stats are timed inside a child process (``--child stats``) so this
parent never imports headwater.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DATA_DIR, Measurement, headwater_exe, machine_line, measure, table
from files_to_dataset import CHUNK_ROWS, SEED, _chunk, csv_path

TARGET_VALIDATE = 0.30  # validation may cost at most this share of throughput
TARGET_MERGE = 0.25  # merge of 1 % changed rows: at most this share of a full overwrite
TARGET_STATS = 0.15  # stats + drift: at most this share of the publish step's seconds

BAD_SHARE = 100  # one row in BAD_SHARE is bad (1 %)
CHANGE_SHARE = 100  # the merge file holds rows / CHANGE_SHARE rows (1 %), half inserts
DEFECTS = ("amount < 0", "quantity 0", "country XX", "customer_id null",
           "shipped before ordered", "duplicate order_id")

VALIDATE_STEP = """\
  - id: checked
    validate:
      input: raw
      columns:
        order_id:    {type: int64, nullable: false, unique: true}
        customer_id: {type: int64, nullable: false}
        amount:      {type: float64, min: 0, max: 100000}
        quantity:    {type: int64, min: 1, max: 100}
        country:     {type: string, in: [DE, FR, US, GB, NL, ES, IT, PL]}
      rules: ["shipped_at IS NULL OR shipped_at >= ordered_at"]
      on_error: quarantine
      max_error_ratio: 0.05
"""

# --------------------------------------------------------------------------- data


def bad_csv_path(rows: int, seed: int = SEED) -> tuple[Path, int]:
    """The CSV of files_to_dataset.py with 1 % of its rows broken (cached); and how many.

    Rows are the same as ``orders_<rows>_s<seed>.csv`` (same generator, same seed) except
    exactly ``n // 100`` rows of every chunk of ``n``, each with one defect that exactly one
    declared check catches (see DEFECTS), so validate must reject exactly that many rows.
    """
    path = DATA_DIR / f"orders_{rows}_s{seed}_bad1pct.csv"
    meta = path.with_suffix(".json")
    if not (path.exists() and meta.exists()):
        started = time.perf_counter()
        print(f"generating {path.name} ...", flush=True)
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".csv.part")
        bad = _write_bad_csv(tmp, rows, seed)
        tmp.rename(path)
        meta.write_text(json.dumps({"rows": rows, "bad": bad}))
        print(f"  {rows:,} rows ({bad:,} bad) in {time.perf_counter() - started:.1f}s",
              flush=True)
    return path, int(json.loads(meta.read_text())["bad"])


def _write_bad_csv(path: Path, rows: int, seed: int) -> int:
    import numpy as np
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)  # the base generator's stream: same rows
    defects = np.random.default_rng(seed + 1)  # a separate stream picks and breaks rows
    writer: pacsv.CSVWriter | None = None
    bad = 0
    try:
        for offset in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - offset)
            batch, broken = _break_rows(_chunk(rng, offset, n), defects)
            bad += broken
            if writer is None:
                writer = pacsv.CSVWriter(str(path), batch.schema)
            writer.write_batch(batch)
    finally:
        if writer is not None:
            writer.close()
    return bad


def _break_rows(batch: Any, rng: Any) -> tuple[Any, int]:
    """Give ``len(batch) // BAD_SHARE`` rows (never row 0) one defect each."""
    import numpy as np
    import pyarrow as pa

    n = batch.num_rows
    count = n // BAD_SHARE
    if count == 0 or n < 2:
        return batch, 0
    picked = np.sort(rng.choice(np.arange(1, n), count, replace=False))
    kinds = rng.integers(0, len(DEFECTS), count)
    chosen = set(picked.tolist())
    cols = {name: batch.column(name).to_pylist() for name in
            ("order_id", "customer_id", "amount", "quantity", "country", "ordered_at",
             "shipped_at")}
    for row, kind in zip(picked.tolist(), kinds.tolist(), strict=True):
        if kind == 0:
            cols["amount"][row] = -abs(cols["amount"][row] or 0.0) - 1.0
        elif kind == 1:
            cols["quantity"][row] = 0
        elif kind == 2:
            cols["country"][row] = "XX"
        elif kind == 3:
            cols["customer_id"][row] = None
        elif kind == 4:  # a day before it was ordered (ISO text sorts as time does)
            ordered = np.datetime64(cols["ordered_at"][row])
            cols["shipped_at"][row] = str(ordered - np.timedelta64(1, "D"))
        else:  # the key of the nearest good row before it: that one is kept, this rejected
            source = row - 1
            while source in chosen:
                source -= 1
            cols["order_id"][row] = cols["order_id"][source]
    arrays = [pa.array(cols[name], batch.schema.field(name).type) if name in cols
              else batch.column(name) for name in batch.schema.names]
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema), count


def changes_csv_path(rows: int, seed: int = SEED) -> tuple[Path, int, int]:
    """A CSV of ``rows // 100`` changed rows for the merge: half updates, half inserts.

    Updates carry existing ``order_id`` values (spread at random over the whole table),
    inserts new ones above ``rows``; every other column is freshly generated.
    """
    total = rows // CHANGE_SHARE
    updates = total // 2
    inserts = total - updates
    path = DATA_DIR / f"orders_{rows}_s{seed}_changes1pct.csv"
    if not path.exists():
        import numpy as np
        import pyarrow as pa
        import pyarrow.csv as pacsv

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed + 2)
        ids = np.concatenate([
            np.sort(rng.choice(rows, updates, replace=False)) + 1,
            np.arange(rows + 1, rows + 1 + inserts, dtype=np.int64),
        ]).astype(np.int64)
        batch: Any = _chunk(rng, 0, total)
        arrays = [pa.array(ids) if name == "order_id" else batch.column(name)
                  for name in batch.schema.names]
        tmp = path.with_suffix(".csv.part")
        pacsv.write_csv(pa.Table.from_batches(
            [pa.RecordBatch.from_arrays(arrays, schema=batch.schema)]), str(tmp))
        tmp.rename(path)
    return path, updates, inserts


def recent_changes_csv_path(rows: int, seed: int = SEED) -> tuple[Path, int, int]:
    """Like :func:`changes_csv_path` but the way CDC and upserts of an ML feed look: the
    updates hit the newest keys (random among the newest ``2 * rows // 100``), the inserts
    continue above the keys the random changes file inserted."""
    total = rows // CHANGE_SHARE
    newest = 2 * total
    return _more_changes(f"orders_{rows}_s{seed}_recent1pct.csv", rows, seed + 3,
                         first_insert=rows + 1 + (total - total // 2),
                         update_range=(rows - newest + 1, newest))


def random_changes_again_csv_path(rows: int, seed: int = SEED) -> tuple[Path, int, int]:
    """A second random 1 %: other keys than :func:`changes_csv_path` updated (spread over
    the whole table), inserts above the recent file's; so the merge cannot find its
    updates where the first random merge left its own."""
    total = rows // CHANGE_SHARE
    return _more_changes(f"orders_{rows}_s{seed}_random2_1pct.csv", rows, seed + 4,
                         first_insert=rows + 1 + 2 * (total - total // 2),
                         update_range=(1, rows))


def _more_changes(name: str, rows: int, seed: int, *, first_insert: int,
                  update_range: tuple[int, int]) -> tuple[Path, int, int]:
    """A cached CSV of ``rows // 100`` changed rows: half updates of keys drawn from
    ``update_range`` (first key, how many), half inserts from ``first_insert`` on."""
    total = rows // CHANGE_SHARE
    updates = total // 2
    inserts = total - updates
    path = DATA_DIR / name
    if not path.exists():
        import numpy as np
        import pyarrow as pa
        import pyarrow.csv as pacsv

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        first, span = update_range
        ids = np.concatenate([
            np.sort(rng.choice(span, updates, replace=False)) + first,
            np.arange(first_insert, first_insert + inserts, dtype=np.int64),
        ]).astype(np.int64)
        batch: Any = _chunk(rng, 0, total)
        arrays = [pa.array(ids) if name == "order_id" else batch.column(name)
                  for name in batch.schema.names]
        tmp = path.with_suffix(".csv.part")
        pacsv.write_csv(pa.Table.from_batches(
            [pa.RecordBatch.from_arrays(arrays, schema=batch.schema)]), str(tmp))
        tmp.rename(path)
    return path, updates, inserts


# --------------------------------------------------------------------------- projects


def write_project(root: Path, pipelines: dict[str, str]) -> Path:
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "headwater.yaml").write_text("name: bench\n")
    for name, text in pipelines.items():
        (root / "pipelines" / f"{name}.yaml").write_text(text)
    return root


def pipeline(name: str, src: Path, publish: str, *, validate: bool = False) -> str:
    steps = (
        "  - id: raw\n"
        f"    source: {{type: files, path: '{src}', format: csv}}\n"
        + (VALIDATE_STEP if validate else "")
        + "  - id: publish\n"
        f"    publish: {{input: {'checked' if validate else 'raw'}, dataset: orders, "
        f"{publish}}}\n"
    )
    return f"name: {name}\nsteps:\n{steps}"


def run(project: Path, name: str) -> Measurement:
    cmd = [headwater_exe(), "run", name, "--project", str(project)]
    return measure(cmd, cwd=project).check(f"headwater run {name}")


def _store(project: Path) -> sqlite3.Connection:
    con = sqlite3.connect(project / ".headwater" / "headwater.db")
    con.row_factory = sqlite3.Row
    return con


def step_seconds(project: Path, name: str) -> dict[str, float]:
    """Seconds of each succeeded step of the pipeline's newest run, from the store."""
    with _store(project) as con:
        run_id = con.execute("SELECT id FROM runs WHERE pipeline = ? ORDER BY seq DESC "
                             "LIMIT 1", (name,)).fetchone()["id"]
        rows = con.execute("SELECT step_id, seconds FROM step_runs WHERE run_id = ? AND "
                           "status = 'succeeded' ORDER BY id", (run_id,)).fetchall()
    return {r["step_id"]: float(r["seconds"] or 0.0) for r in rows}


def latest_version(project: Path, dataset: str) -> dict[str, Any]:
    with _store(project) as con:
        row = con.execute("SELECT version, mode, rows_added, rows_removed, rows_total "
                          "FROM dataset_versions WHERE dataset = ? ORDER BY version DESC "
                          "LIMIT 1", (dataset,)).fetchone()
    if row is None:
        raise SystemExit(f"no version of dataset {dataset!r} in {project}")
    return dict(row)


def expect(what: str, found: object, wanted: object) -> None:
    if found != wanted:
        raise SystemExit(f"{what}: found {found!r}, expected {wanted!r}")


def steps_text(seconds: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --------------------------------------------------------------------------- sections


def bench_validate(rows: int, work: Path) -> tuple[list[list[object]], list[object]]:
    src, bad = bad_csv_path(rows)
    print(f"[1] validation cost: {src.name} ({rows:,} rows, {bad:,} bad)", flush=True)
    plain = write_project(work / "plain", {"load": pipeline("load", src, "mode: overwrite")})
    checked = write_project(work / "validated", {
        "load": pipeline("load", src, "mode: overwrite", validate=True)})
    results = []
    for label, project, published in (("files -> publish", plain, rows),
                                       ("files -> validate -> publish", checked, rows - bad)):
        print(f"  running {label} ...", flush=True)
        m = run(project, "load")
        expect(f"{label}: rows published", latest_version(project, "orders")["rows_total"],
               published)
        steps = step_seconds(project, "load")
        print(f"    {m.seconds:.2f}s, peak RSS {m.peak_rss_mb:,.0f} MB ({steps_text(steps)})",
              flush=True)
        results.append((label, m, steps))
    expect("rows quarantined", latest_version(checked, "load__rejected")["rows_total"], bad)
    (_, base, _), (_, val, _) = results
    cost = 1 - base.seconds / val.seconds  # 1 - throughput ratio (same input rows)
    table_rows: list[list[object]] = [
        [label, m.seconds, rows / m.seconds, m.peak_rss_mb, steps_text(steps)]
        for label, m, steps in results]
    check: list[object] = ["validation cost (1 - rows/s ratio)", f"{cost:.1%}",
             f"<= {TARGET_VALIDATE:.0%}", verdict(cost <= TARGET_VALIDATE)]
    return table_rows, check


def bench_merge(rows: int, work: Path, stats_repeat: int
                ) -> tuple[list[list[object]], list[list[object]]]:
    src = csv_path(rows)
    changes, updates, inserts = changes_csv_path(rows)
    print(f"[2] merge vs overwrite: {src.name} ({rows:,} rows), {changes.name} "
          f"({updates:,} updates + {inserts:,} inserts)", flush=True)
    project = write_project(work / "merge", {
        "full": pipeline("full", src, "mode: overwrite"),
        "changes": pipeline("changes", changes, "mode: merge, key: [order_id]"),
    })
    print("  building the dataset (overwrite, not timed) ...", flush=True)
    run(project, "full")
    print("  (a) full overwrite ...", flush=True)
    full = run(project, "full")
    full_steps = step_seconds(project, "full")
    expect("overwrite: rows", latest_version(project, "orders")["rows_total"], rows)
    print(f"    {full.seconds:.2f}s, peak RSS {full.peak_rss_mb:,.0f} MB "
          f"({steps_text(full_steps)})", flush=True)

    print(f"[3] stats + drift on the version (a) published ({rows:,} rows), "
          f"in-process x{stats_repeat} ...", flush=True)
    stats = stats_child(project, stats_repeat)
    print(f"    median {stats['median']:.2f}s (runs: "
          f"{', '.join(f'{s:.2f}' for s in stats['seconds'])}), "
          f"cpu median {stats['cpu_median']:.3f}s", flush=True)

    merges = merge_runs(project, rows, inserts)
    merge_steps = merges[0][2]
    publish = full_steps["publish"]
    share = stats["median"] / publish
    table_rows: list[list[object]] = [
        [f"(a) overwrite, {rows:,} rows", full.seconds, full.cpu_seconds, full.peak_rss_mb,
         steps_text(full_steps)],
        *[[label, m.seconds, m.cpu_seconds, m.peak_rss_mb, f"{steps_text(steps)}; {files}"]
          for label, m, steps, files in merges],
        ["stats + drift, in-process", stats["median"], stats["cpu_median"], stats["rss_mb"],
         f"median of {stats_repeat}; {stats['columns']} columns"],
    ]
    checks: list[list[object]] = [
        [f"merge 1 % / full overwrite, {label.split(' ', 1)[0]} wall (cpu)",
         f"{m.seconds / full.seconds:.1%} ({m.cpu_seconds / full.cpu_seconds:.1%})",
         f"<= {TARGET_MERGE:.0%}", verdict(m.seconds / full.seconds <= TARGET_MERGE)]
        for label, m, _, _ in merges]
    checks += [
        ["stats + drift / publish step (a)", f"{share:.1%}", f"<= {TARGET_STATS:.0%}",
         verdict(share <= TARGET_STATS)],
        ["  (info) stats + drift / merge publish step",
         f"{stats['median'] / merge_steps['publish']:.1%}", "", ""],
    ]
    return table_rows, checks


def merge_runs(project: Path, rows: int, inserts: int
               ) -> list[tuple[str, Measurement, dict[str, float], str]]:
    """(b) the random 1 % right after the overwrite (the table is what the overwrite
    wrote), (c) the recent 1 % on the table (b) left, (d) another random 1 % on that.

    (c) is what an ML feed's CDC or upserts do: change the newest rows. (b) and (d) update
    keys spread over the whole table, so every file holds one and every file is rewritten.
    """
    recent, _, r_inserts = recent_changes_csv_path(rows)
    again, _, a_inserts = random_changes_again_csv_path(rows)
    write_project(project, {
        "recent": pipeline("recent", recent, "mode: merge, key: [order_id]"),
        "again": pipeline("again", again, "mode: merge, key: [order_id]"),
    })
    plan = [("(b) random", "changes", rows + inserts),
            ("(c) recent", "recent", rows + inserts + r_inserts),
            ("(d) random again", "again", rows + inserts + r_inserts + a_inserts)]
    found = []
    for label, name, total in plan:
        print(f"  {label} merge of 1 % changed rows ...", flush=True)
        m = run(project, name)
        steps = step_seconds(project, name)
        version = latest_version(project, "orders")
        expect(f"{label}: rows", version["rows_total"], total)
        expect(f"{label}: mode", version["mode"], "merge")
        files = files_text(merge_notes(project))
        print(f"    {m.seconds:.2f}s (cpu {m.cpu_seconds:.2f}s), peak RSS "
              f"{m.peak_rss_mb:,.0f} MB ({steps_text(steps)}; {files})", flush=True)
        found.append((f"{label}, {rows // CHANGE_SHARE:,} rows", m, steps, files))
    return found


def merge_notes(project: Path) -> dict[str, Any]:
    with _store(project) as con:
        row = con.execute("SELECT notes FROM dataset_versions WHERE dataset = 'orders' "
                          "ORDER BY version DESC LIMIT 1").fetchone()
    notes = json.loads(row["notes"]) if row and row["notes"] else {}
    found: dict[str, Any] = notes.get("merge") or {}
    return found


def files_text(metrics: dict[str, Any]) -> str:
    return (f"files scanned {metrics.get('num_target_files_scanned', '?')}, "
            f"rewritten {metrics.get('num_target_files_removed', '?')}, "
            f"added {metrics.get('num_target_files_added', '?')}")


def stats_child(project: Path, repeat: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "stats", "--project", str(project),
           "--stats-repeat", str(repeat)]
    m = measure(cmd, cwd=project).check("stats child")
    line = [x for x in m.output.splitlines() if x.startswith("{")][-1]
    found: dict[str, Any] = json.loads(line)
    found["rss_mb"] = m.peak_rss_mb
    return found


# --------------------------------------------------------------------------- child


def child_stats(project: Path, repeat: int) -> None:
    """Time what the publish step's statistics cost, on the newest version of orders (an
    overwrite): the stream statistics watching every written batch (``StreamStats.add``,
    fed the version's rows in the publish's batch size; reading them is not timed), their
    document with the previous version's stats as reference, then compute_drift. Prints
    one JSON line."""
    import duckdb
    import pyarrow.dataset as pads

    from headwater.datasets import delta
    from headwater.datasets.drift import compute_drift
    from headwater.datasets.stream_stats import StreamStats
    from headwater.runtime import ProjectRuntime
    from headwater.steps.publish import BATCH_ROWS

    runtime = ProjectRuntime.load(project)
    versions = runtime.store.versions("orders")
    if len(versions) < 2:
        raise SystemExit("stats child: the dataset needs two versions (for drift)")
    previous, current = versions[-2]["stats"], versions[-1]
    table = delta.open_table(runtime.dataset_uri("orders"))
    table.load_as_version(int(current["delta_version"]))
    files = delta.data_files(table)
    seconds, cpu = [], []
    stats: dict[str, Any] = {}
    for _ in range(repeat):
        con = duckdb.connect()
        stream = StreamStats()
        cpu_used = 0.0  # process CPU (all threads) of the same calls: steadier under load
        for batch in pads.dataset(files, format="parquet").to_batches(batch_size=BATCH_ROWS):
            cpu_started = time.process_time()
            stream.add(batch)  # times itself (stream.seconds), the read is not counted
            cpu_used += time.process_time() - cpu_started
        cpu_started = time.process_time()
        stats = stream.document(con, previous)
        started = time.perf_counter()
        drift = compute_drift(previous, stats)
        seconds.append(stream.seconds + time.perf_counter() - started)
        cpu.append(cpu_used + time.process_time() - cpu_started)
        con.close()
    expect("stats: rows", stats["rows"], current["rows_total"])
    expect("drift: method", {c.get("method") for c in drift["columns"].values()
                             if c.get("method")}, {"exact"})
    print(json.dumps({"seconds": seconds, "median": statistics.median(seconds),
                      "cpu_median": statistics.median(cpu),
                      "columns": len(stats["columns"]), "files": len(files)}))
    runtime.close()


# --------------------------------------------------------------------------- main


def main_bench(args: argparse.Namespace) -> None:
    print(machine_line())
    print(f"rows: {args.rows:,}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="hw-bench-ml-", dir=args.workdir) as tmp:
        work = Path(tmp)
        checks: list[list[object]] = []
        if "validate" in args.only:
            val_rows, val_check = bench_validate(args.rows, work)
            checks.append(val_check)
        if "merge" in args.only:
            merge_rows, merge_checks = bench_merge(args.rows, work, args.stats_repeat)
            checks.extend(merge_checks)
    if "validate" in args.only:
        print()
        print(table(["pipeline (whole process)", "seconds", "rows/s", "peak RSS MB",
                     "step seconds (store)"], val_rows))
    if "merge" in args.only:
        print()
        print(table(["run", "seconds", "cpu s", "peak RSS MB", "detail"], merge_rows))
    print()
    print(table(["check", "measured", "target", ""], checks))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=2_000_000, help="rows in the CSV (default 2M)")
    p.add_argument("--stats-repeat", type=int, default=3,
                   help="in-process stats + drift runs, median reported (default 3)")
    p.add_argument("--only", nargs="+", choices=["validate", "merge"],
                   default=["validate", "merge"],
                   help="sections to run (default both; merge includes the stats section)")
    p.add_argument("--workdir", default=None, help="folder for outputs (default: a temp dir)")
    p.add_argument("--child", choices=["stats"], help=argparse.SUPPRESS)
    p.add_argument("--project", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child == "stats":
        child_stats(Path(args.project), args.stats_repeat)
    else:
        main_bench(args)


if __name__ == "__main__":
    main()
