"""Benchmark: `headwater test` of 20 pipelines x 3 small cases, against plain runs.

Run:  python bench/pipeline_tests.py [--pipelines 20] [--cases 3] [--rows 50] [--skip-runs]

  headwater test   one `headwater test` process over every case: each case runs in its own
                   sandbox (a copy of the code, a fresh SQLite store and warehouse, sources
                   swapped for the case's fixtures) and its datasets are compared row by
                   row with expected/ (the expectations are written once, unmeasured, with
                   `headwater test --update`)
  plain runs       the side-by-side alternative a team builds by hand: per case, a fresh
                   project folder (its own store and warehouse) with the fixture copied to
                   the landing folder, then one `headwater run` process; no comparison

Each pipeline is the shape a real one has: a CSV source with bad_rows: quarantine, a SQL
step with a param, a validate step and a merge publish. Fixtures hold --rows rows (one
row per case deliberately unparsable, so the rejected-rows expectation is exercised).
Target: `headwater test` under 10 s on this machine (cheap enough for every commit). The
CPU seconds (user + system) of the child are printed too: on a shared machine the wall
time follows the load average, the CPU time much less.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import headwater_exe, machine_line, measure

TARGET_SECONDS = 10.0

PIPELINE = """\
name: {name}
params: {{min_amount: 0}}
steps:
  - id: raw
    source:
      type: files
      path: landing/{name}/*.csv
      incremental: true
      bad_rows: quarantine
      columns: {{id: int64, amount: float64}}
  - id: clean
    sql: SELECT id, upper(country) AS country, amount FROM raw
         WHERE amount >= {{{{ params.min_amount }}}}
  - id: checked
    validate:
      input: clean
      columns:
        id: {{type: int64, nullable: false, unique: true}}
        country: {{type: string, in: [DE, FR, US]}}
      on_error: quarantine
      max_error_ratio: 0.5
  - id: publish
    publish: {{input: checked, dataset: {name}, mode: merge, key: [id]}}
"""


def fixture(rows: int, seed: int) -> str:
    """A small deterministic CSV; the last row does not parse (amount is text)."""
    lines = ["id,country,amount"]
    for i in range(rows):
        value = (i * 37 + seed * 11) % 500
        lines.append(f"{i + 1},{['de', 'fr', 'us'][(i + seed) % 3]},{value / 4:.2f}")
    lines.append(f"{rows + 1},de,not-a-number")
    return "\n".join(lines) + "\n"


def make_project(root: Path, pipelines: int, cases: int, rows: int) -> list[str]:
    """The benchmark project; returns its pipeline names."""
    names = [f"p{i:02d}" for i in range(pipelines)]
    (root / "pipelines").mkdir(parents=True)
    (root / "headwater.yaml").write_text("name: bench\n", encoding="utf-8")
    for index, name in enumerate(names):
        (root / "pipelines" / f"{name}.yaml").write_text(PIPELINE.format(name=name),
                                                        encoding="utf-8")
        for case in range(cases):
            folder = root / "tests" / name / f"case{case}"
            (folder / "inputs").mkdir(parents=True)
            (folder / "inputs" / "raw.csv").write_text(fixture(rows, index * 10 + case),
                                                       encoding="utf-8")
            (folder / "case.yaml").write_text(f"params: {{min_amount: {case * 10}}}\n",
                                              encoding="utf-8")
    return names


def plain_runs(root: Path, names: list[str], cases: int, exe: str, work: Path) -> float:
    """Every case as a fresh project plus one `headwater run`; total wall seconds."""
    total = 0.0
    for name in names:
        for case in range(cases):
            project = work / f"{name}-{case}"
            shutil.copytree(root, project, ignore=shutil.ignore_patterns("tests"))
            landing = project / "landing" / name
            landing.mkdir(parents=True)
            shutil.copy(root / "tests" / name / f"case{case}" / "inputs" / "raw.csv",
                        landing / "raw.csv")
            ran = measure([exe, "run", name, "-p", f"min_amount={case * 10}", "--project",
                           str(project)]).check(f"headwater run {name} (case {case})")
            total += ran.seconds
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=20)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--skip-runs", action="store_true", help="Skip the plain runs.")
    args = parser.parse_args()
    exe = headwater_exe()
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="hw-bench-tests-") as tmp:
        root = Path(tmp) / "project"
        names = make_project(root, args.pipelines, args.cases, args.rows)
        measure([exe, "test", "--update", "--project", str(root)]).check("headwater test "
                                                                          "--update")
        cpu = _children_cpu()
        timed = measure([exe, "test", "--project", str(root)]).check("headwater test")
        cpu = _children_cpu() - cpu
        summary = timed.output.strip().splitlines()[-1]
        count = args.pipelines * args.cases
        verdict = "ok" if timed.seconds < TARGET_SECONDS else "MISSED"
        print(f"headwater test: {count} cases of {args.pipelines} pipelines in "
              f"{timed.seconds:.2f} s ({timed.seconds / count * 1000:.0f} ms a case), "
              f"CPU {cpu:.2f} s, peak RSS {timed.peak_rss_mb:.0f} MiB; '{summary}'; "
              f"load average {os.getloadavg()[0]:.1f}; target < "
              f"{TARGET_SECONDS:.0f} s: {verdict}")
        if not args.skip_runs:
            seconds = plain_runs(root, names, args.cases, exe, Path(tmp) / "runs")
            print(f"plain runs:     {count} x 'headwater run' into fresh projects in "
                  f"{seconds:.2f} s ({seconds / count * 1000:.0f} ms a case), no comparison")


if __name__ == "__main__":
    main()
