"""Benchmark: `headwater serve` cold start, to the first `/api/health` 200, side by side.

Run:  python bench/serve_start.py [--repeat 5]

  headwater serve   `headwater serve --port P --project <tmp>` on a small project (three
                    pipelines: a scheduled one, a webhook one and a plain one), its store
                    already created (as on any start but the first)
  fastapi floor     a bare FastAPI app with one `/api/health` route under uvicorn: what any
                    server on the same web stack pays before it can answer

Each start is a fresh process; the script polls `GET /api/health` (stdlib `http.client`,
every 10 ms) and takes the time from spawn to the first 200 and the process tree's RSS
at that moment, then stops the server (SIGTERM). Commands run in interleaved rounds and
the median of --repeat is reported. Targets: <= 1.0 s and <= 150 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import headwater_exe, machine_line, table

TARGET_SECONDS = 1.0
TARGET_MB = 150.0
TIMEOUT = 60.0

FLOOR_APP = """
import sys
import uvicorn
from fastapi import FastAPI

app = FastAPI()

@app.get("/api/health")
def health():
    return {"ok": True}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""

PIPELINES = {
    "nightly": "name: nightly\ntriggers:\n  - schedule: {cron: '0 3 * * *'}\nsteps:\n"
               "  - id: a\n    sql: SELECT 1 AS x\n",
    "hook": "name: hook\ntriggers:\n  - webhook: {token: TOKEN}\nsteps:\n"
            "  - id: a\n    sql: SELECT 1 AS x\n",
    "plain": "name: plain\nsteps:\n  - id: a\n    sql: SELECT 1 AS x\n  - id: b\n"
             "    sql: SELECT x FROM a\n",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_project(root: Path) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "headwater.yaml").write_text("name: serve_start\n")
    for name, text in PIPELINES.items():
        (root / "pipelines" / f"{name}.yaml").write_text(text)
    return root


def healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/api/health")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


def start_once(cmd: list[str], port: int, cwd: Path) -> tuple[float, float]:
    """(seconds to the first /api/health 200, tree RSS MB then); the server is stopped."""
    env = {**os.environ}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryFile() as log:
        return _timed_start(cmd, port, cwd, env, log)


def _timed_start(cmd: list[str], port: int, cwd: Path, env: dict[str, str],
                 log: Any) -> tuple[float, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        while not healthy(port):
            if proc.poll() is not None:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace")[-4000:])
                raise SystemExit(f"{cmd[:3]} exited with {proc.returncode} before serving")
            if time.perf_counter() - started > TIMEOUT:
                raise SystemExit(f"{cmd[:3]} did not answer within {TIMEOUT:g}s")
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        rss = tree_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return seconds, rss


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=5, help="starts per command (median)")
    args = p.parse_args(argv)
    print(machine_line())
    print(f"median of {args.repeat} cold starts each, interleaved\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="hw-serve-start-") as tmp:
        project = write_project(Path(tmp) / "project")
        check = subprocess.run([headwater_exe(), "check", "--project", str(project)],
                               capture_output=True, text=True)
        if check.returncode != 0:  # also creates the store, as any earlier start would
            raise SystemExit(f"headwater check failed: {check.stderr}")

        def commands(port: int) -> dict[str, list[str]]:
            return {"headwater serve": [headwater_exe(), "serve", "--port", str(port),
                                        "--project", str(project)],
                    "fastapi floor": [sys.executable, "-c", FLOOR_APP, str(port)]}

        results: dict[str, list[tuple[float, float]]] = {k: [] for k in commands(0)}
        for round_ in range(args.repeat + 1):  # round 0 warms the page cache, unmeasured
            for name in results:
                port = free_port()
                measured = start_once(commands(port)[name], port, project)
                if round_:
                    results[name].append(measured)
    rows: list[list[object]] = []
    medians: dict[str, tuple[float, float]] = {}
    for name, runs in results.items():
        secs = statistics.median(s for s, _ in runs)
        rss = statistics.median(r for _, r in runs)
        medians[name] = (secs, rss)
        rows.append([name, secs * 1000, rss])
    print(table(["command", "to /api/health 200, ms", "RSS MB then"], rows))
    secs, rss = medians["headwater serve"]
    floor_secs, floor_rss = medians["fastapi floor"]
    print()
    print(table(["target", "measured", "target", ""], [
        ["serve cold start", f"{secs:.2f} s", f"<= {TARGET_SECONDS:g} s",
         "ok" if secs <= TARGET_SECONDS else "MISSED"],
        ["serve RSS", f"{rss:.0f} MB", f"<= {TARGET_MB:g} MB",
         "ok" if rss <= TARGET_MB else "MISSED"],
    ]))
    print(f"\nheadwater serve / fastapi floor: {secs / floor_secs:.2f}x the time, "
          f"{rss / floor_rss:.2f}x the memory")


if __name__ == "__main__":
    main()
