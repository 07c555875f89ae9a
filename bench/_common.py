"""Shared helpers for the benchmarks: measuring whole processes and printing tables.

Every number a benchmark reports comes from a fresh child process, so import time,
start-up and teardown are paid exactly as a user pays them. This module must never import
headwater, or any library that a measured child imports, so the parent stays small.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "bench" / ".data"
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Measurement:
    """One finished child process: wall time, peak memory, exit code and its output."""

    seconds: float
    peak_rss_mb: float
    returncode: int
    output: str
    cpu_seconds: float = 0.0
    """User + system CPU of the child and the descendants it waited for (``wait4``): on a
    shared machine, far steadier than wall time, which also counts waiting for a core."""

    def check(self, what: str) -> Measurement:
        """Return self, or exit with the child's output when it failed."""
        if self.returncode != 0:
            sys.stderr.write(self.output[-4000:])
            raise SystemExit(f"{what} failed with exit code {self.returncode}")
        return self


def headwater_exe() -> str:
    """The headwater command: the one beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).with_name("headwater")
    if beside.exists():
        return str(beside)
    found = shutil.which("headwater")
    if found is None:
        raise SystemExit("headwater is not installed: run 'make demo' or 'pip install -e .'")
    return found


def measure(
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Measurement:
    """Run ``cmd`` to completion; time it and take its peak resident memory.

    Peak RSS is the larger of two readings: ``wait4``'s ``ru_maxrss`` (the largest single
    process among the child and the descendants it waited for) and, when psutil is
    installed, the largest sum over the live process tree seen while polling (which catches
    worker processes running side by side).
    """
    full_env = {**os.environ, **(env or {})}
    # A user's Python caches bytecode; a sandbox that turns that off would make every run
    # recompile headwater's own (editable) sources and charge it to headwater.
    full_env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        tree_peak = _poll_tree_rss(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    peak = max(usage.ru_maxrss * 1024, tree_peak)  # ru_maxrss is in KiB on Linux
    cpu = usage.ru_utime + usage.ru_stime
    return Measurement(seconds, peak / 2**20, proc.returncode, output, cpu)


def _poll_tree_rss(pid: int) -> int:
    """Sample the process tree's total RSS until ``pid`` exits; return the peak in bytes.

    The child is left unreaped (``WNOWAIT``) so that ``wait4`` can still collect its usage.
    """
    try:
        import psutil
    except ImportError:
        psutil = None
    root = psutil.Process(pid) if psutil is not None else None
    peak = 0
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if root is not None:
            peak = max(peak, _tree_rss(root))
        time.sleep(POLL_SECONDS)
    return peak


def _tree_rss(root: object) -> int:
    import psutil

    assert isinstance(root, psutil.Process)
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def repeat(
    times: int,
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    what: str = "command",
) -> list[Measurement]:
    """Run ``cmd`` ``times`` times; fail loudly on the first non-zero exit."""
    return [measure(cmd, cwd=cwd, env=env).check(what) for _ in range(times)]


def median_seconds(runs: Sequence[Measurement]) -> float:
    return statistics.median(m.seconds for m in runs)


def median_cpu(runs: Sequence[Measurement]) -> float:
    return statistics.median(m.cpu_seconds for m in runs)


def median_rss(runs: Sequence[Measurement]) -> float:
    return statistics.median(m.peak_rss_mb for m in runs)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table: numbers right-aligned, text left-aligned."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    text = [all(isinstance(r[i], str) for r in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if left else v.rjust(w)
                         for v, w, left in zip(values, widths, text, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]),
                      *(line(row) for row in cells)])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine_line() -> str:
    """One line naming the interpreter and CPU count, printed above every result table."""
    import platform

    return (f"python {platform.python_version()} on {platform.machine()}, "
            f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}")
