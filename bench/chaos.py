"""Crash anywhere: kill ``headwater run`` with SIGKILL at random moments, then count.

Files keep landing between runs (good rows and malformed rows); each run is killed at a
random point with probability ``--kill-ratio`` (while it lists, extracts, validates,
commits, or records). After a final undisturbed run the script checks the guarantees of
SPEC §8 and prints one line per figure, each of which must be zero:

- rows lost / rows duplicated in an ``append`` dataset (every good row exactly once),
- keys lost in a ``merge`` dataset (every key present),
- rejected rows lost / duplicated in ``<pipeline>__rejected`` (every bad row exactly once),
- runs stuck ``running`` and files never recorded as seen.

``--runs 100`` is the full profile; ``make test`` runs a short one through
``tests/test_chaos.py``. Exit status 1 when any figure is not zero.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PIPELINE = """\
name: chaos
steps:
  - id: raw
    source: {type: files, path: landing/*.csv, format: csv, incremental: true,
             bad_rows: quarantine, columns: {id: int64, amount: double, note: string}}
  - id: clean
    sql: SELECT id, amount, note FROM raw
  - id: log
    publish: {input: clean, dataset: chaos_log, mode: append}
  - id: latest
    publish: {input: clean, dataset: chaos_latest, mode: merge, key: [id]}
"""


@dataclass
class Ledger:
    """What the harness wrote, to compare with what the datasets hold."""

    good_ids: list[int] = field(default_factory=list)
    bad_lines: int = 0
    files: int = 0
    next_id: int = 1


def write_file(landing: Path, ledger: Ledger, rng: random.Random, rows: int) -> None:
    """One CSV file: ``rows`` good rows and a few that cannot be parsed."""
    lines = ["id,amount,note"]
    for _ in range(rows):
        lines.append(f"{ledger.next_id},{rng.random() * 100:.2f},n{ledger.next_id}")
        ledger.good_ids.append(ledger.next_id)
        ledger.next_id += 1
        if rng.random() < 0.02:
            lines.append("not-a-number,1.0,broken")  # id cannot be cast to int64
            ledger.bad_lines += 1
    ledger.files += 1
    name = landing / f"part-{ledger.files:05d}.csv"
    tmp = name.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.rename(name)  # land atomically, as an uploader that renames would


def headwater(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "headwater.cli.main", *args,
                           "--project", str(root)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HEADWATER_ABANDON_GRACE": "2"})


def killed_run(root: Path, rng: random.Random, kill_ratio: float, typical: float) -> bool:
    """Start a run; maybe SIGKILL it at a random moment. True when it was killed."""
    proc = subprocess.Popen([sys.executable, "-m", "headwater.cli.main", "run", "chaos",
                             "--project", str(root), "--log-format", "json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if rng.random() < kill_ratio:
        time.sleep(rng.uniform(0.0, typical))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
    proc.wait(timeout=300)
    return False


def count(root: Path) -> dict[str, int]:
    """Read the datasets and runs back through the Python API."""
    import headwater as hw

    out: dict[str, int] = {}
    with hw.Project(root) as project:
        names = {d["name"] for d in project.datasets()}
        log = project.dataset("chaos_log").to_arrow() if "chaos_log" in names else None
        ids = log.column("id").to_pylist() if log is not None else []
        out["log_rows"] = len(ids)
        out["log_distinct"] = len(set(ids))
        out["log_id_set"] = hash(frozenset(ids))
        latest = project.dataset("chaos_latest").to_arrow() if "chaos_latest" in names else None
        out["latest_distinct"] = len(set(latest.column("id").to_pylist())) if latest else 0
        rejected = (project.dataset("chaos__rejected").to_arrow()
                    if "chaos__rejected" in names else None)
        sources = rejected.column("_source").to_pylist() if rejected is not None else []
        out["rejected_rows"] = len(sources)
        out["rejected_distinct"] = len(set(sources))
        out["stuck"] = sum(1 for r in project.runs("chaos", limit=100_000)
                           if r.status in ("running", "queued"))
        seen = project.runtime.store.state("chaos", "raw")
        out["files_seen"] = len(seen)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rows", type=int, default=200, help="good rows per landed file")
    parser.add_argument("--kill-ratio", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="keep the project here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    base = args.dir or Path(tempfile.mkdtemp(prefix="hw-chaos-"))
    root = base / "chaos project"  # a space on purpose
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "landing").mkdir(exist_ok=True)
    (root / "headwater.yaml").write_text("name: chaos\n", encoding="utf-8")
    (root / "pipelines" / "chaos.yaml").write_text(PIPELINE, encoding="utf-8")
    ledger = Ledger()
    write_file(root / "landing", ledger, rng, args.rows)
    started = time.perf_counter()
    first = headwater(root, "run", "chaos")
    typical = max(0.5, time.perf_counter() - started)
    if first.returncode != 0:
        sys.stderr.write(first.stdout + first.stderr)
        return 1
    killed = 0
    for _ in range(args.runs):
        for _ in range(rng.randint(0, 2)):
            write_file(root / "landing", ledger, rng, args.rows)
        killed += killed_run(root, rng, args.kill_ratio, typical)
    final = headwater(root, "run", "chaos")  # recovery: nothing may be stuck or lost now
    figures = count(root)
    expected = set(ledger.good_ids)
    report = {
        "runs": args.runs + 2,
        "killed": killed,
        "files landed": ledger.files,
        "good rows written": len(expected),
        "bad rows written": ledger.bad_lines,
        "rows lost": len(expected) - figures["log_distinct"],
        "rows duplicated": figures["log_rows"] - figures["log_distinct"],
        "merge keys lost": len(expected) - figures["latest_distinct"],
        "rejected rows lost": ledger.bad_lines - figures["rejected_distinct"],
        "rejected rows duplicated": figures["rejected_rows"] - figures["rejected_distinct"],
        "runs stuck": figures["stuck"],
        "files not recorded": ledger.files - figures["files_seen"],
        "final run exit code": final.returncode,
    }
    if figures["log_id_set"] != hash(frozenset(expected)) and report["rows lost"] == 0:
        report["rows lost"] = -1  # same count, different ids: still wrong
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    must_be_zero = [k for k in report if k.startswith(("rows", "merge", "rejected", "runs stuck",
                                                        "files not", "final"))]
    bad = {k: report[k] for k in must_be_zero if report[k] != 0}
    print(json.dumps({"ok": not bad, "nonzero": bad}))
    if bad and final.returncode != 0:
        sys.stderr.write(final.stderr[-2000:])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
