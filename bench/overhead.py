"""Benchmark: what headwater itself costs around the work, as whole `headwater run` processes.

Run:  python bench/overhead.py [--repeat 5] [--steps 100]

  bare imports   python -c "import pyarrow, duckdb, deltalake, sqlalchemy" (the floor any
                 Python tool built on these libraries pays)
  one step       `headwater run one`: a pipeline of one `sql: SELECT 1 AS x` step
  chain          `headwater run chain`: --steps no-op SQL steps, each `needs` the one before
  fan-out        `headwater run fanout`: --steps no-op SQL steps, all but the root need the root

Every run uses the project's default SQLite store, so every state change of the run and of
each step is written as it happens. Each project gets one unmeasured warm-up run (it creates
the store); then the commands run in rounds (bare, one, chain, fan-out, then again) --repeat
times, and the median of each is reported: interleaved, a burst of load from other work on
a shared machine lands on all of them alike instead of on whichever ran during it.
Targets: one step <= 1.5x bare imports; <= 2 ms per no-op step.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Measurement,
    headwater_exe,
    machine_line,
    median_cpu,
    median_rss,
    median_seconds,
    repeat,
    table,
)

BARE = "import pyarrow, duckdb, deltalake, sqlalchemy"
NOOP = "SELECT 1 AS x"
TARGET_RATIO = 1.5
TARGET_MS_PER_STEP = 2.0


def pipeline_yaml(name: str, steps: int, shape: str) -> str:
    """A pipeline of ``steps`` no-op SQL steps: ``chain`` or ``fanout`` (from s0000)."""
    lines = [f"name: {name}", "steps:"]
    for i in range(steps):
        lines += [f"  - id: s{i:04d}", f"    sql: {NOOP}"]
        if i and shape == "chain":
            lines.append(f"    needs: [s{i - 1:04d}]")
        elif i and shape == "fanout":
            lines.append("    needs: [s0000]")
    return "\n".join(lines) + "\n"


def write_project(root: Path, steps: int) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "headwater.yaml").write_text("name: overhead\n")
    (root / "pipelines" / "one.yaml").write_text(pipeline_yaml("one", 1, "chain"))
    (root / "pipelines" / "chain.yaml").write_text(pipeline_yaml("chain", steps, "chain"))
    (root / "pipelines" / "fanout.yaml").write_text(pipeline_yaml("fanout", steps, "fanout"))
    return root


def recorded_steps(project: Path) -> tuple[int, int] | None:
    """(runs, step-run rows) in the project's SQLite store, or None if it cannot be read.

    A check that the timed runs really recorded their state, not a measurement.
    """
    db = project / ".headwater" / "headwater.db"
    if not db.exists():
        return None
    try:
        with sqlite3.connect(db) as con:
            runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
            steps = con.execute("SELECT count(*) FROM step_runs").fetchone()[0]
    except sqlite3.Error:
        return None
    return int(runs), int(steps)


def interleaved(commands: dict[str, list[str]], cwd: Path, times: int,
                ) -> dict[str, list[Measurement]]:
    """Each command once per round, ``times`` rounds; a warm-up round first (unmeasured)."""
    for name, cmd in commands.items():
        repeat(1, cmd, cwd=cwd, what=f"{name} (warm-up)")
    results: dict[str, list[Measurement]] = {name: [] for name in commands}
    for round_ in range(times):
        print(f"round {round_ + 1}/{times} ...", flush=True)
        for name, cmd in commands.items():
            results[name] += repeat(1, cmd, cwd=cwd, what=name)
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=5, help="measured runs per command (median)")
    p.add_argument("--steps", type=int, default=100, help="no-op steps in chain and fan-out")
    args = p.parse_args(argv)

    print(machine_line())
    print(f"median of {args.repeat} runs each (after one warm-up run per pipeline)\n",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="hw-overhead-") as tmp:
        project = write_project(Path(tmp) / "project", args.steps)
        commands = {"bare imports": [sys.executable, "-c", BARE]}
        for name in ("one", "chain", "fanout"):
            commands[name] = [headwater_exe(), "run", name, "--project", str(project)]
        results = interleaved(commands, project, args.repeat)
        store = recorded_steps(project)

    one = median_seconds(results["one"])
    one_cpu = median_cpu(results["one"])
    rows: list[list[object]] = []
    for label, key, steps in [("bare imports", "bare imports", 0), ("one step", "one", 1),
                              (f"chain of {args.steps}", "chain", args.steps),
                              (f"fan-out of {args.steps}", "fanout", args.steps)]:
        secs = median_seconds(results[key])
        cpu = median_cpu(results[key])
        per_step = (secs - one) * 1000 / (steps - 1) if steps > 1 else None
        cpu_step = (cpu - one_cpu) * 1000 / (steps - 1) if steps > 1 else None
        rows.append([label, secs * 1000, cpu * 1000, median_rss(results[key]),
                     "" if per_step is None else f"{per_step:.2f}",
                     "" if cpu_step is None else f"{cpu_step:.2f}"])
    print()
    print(table(["command", "median ms", "CPU ms", "peak RSS MB", "ms per extra step",
                 "CPU ms per step"], rows))

    ratio = one / median_seconds(results["bare imports"])
    print()
    verdicts = [["one step / bare imports", f"{ratio:.2f}x", f"<= {TARGET_RATIO}x",
                 "ok" if ratio <= TARGET_RATIO else "MISSED"]]
    for key, label in (("chain", "chain"), ("fanout", "fan-out")):
        ms = (median_seconds(results[key]) - one) * 1000 / max(args.steps - 1, 1)
        verdicts.append([f"ms per no-op step, {label}", f"{ms:.2f}", f"<= {TARGET_MS_PER_STEP}",
                         "ok" if ms <= TARGET_MS_PER_STEP else "MISSED"])
    print(table(["target", "measured", "target", ""], verdicts))
    cpu_ratio = one_cpu / median_cpu(results["bare imports"])
    print(f"\nfor information, in CPU time (user + system; steadier under load): one step / "
          f"bare imports {cpu_ratio:.2f}x")
    print("ms per extra step = (pipeline median - one-step median) / (steps - 1); CPU ms "
          "per step likewise with CPU time.")
    if store is None:
        print("store check: could not read .headwater/headwater.db (runs / step_runs)")
    else:
        runs = 3 * (args.repeat + 1)
        expected = (args.repeat + 1) * (1 + 2 * args.steps)
        print(f"store check: {store[0]} runs and {store[1]} step-run rows recorded "
              f"(expected {runs} runs, at least {expected} step runs)")


if __name__ == "__main__":
    main()
