"""Server time of the UI's pages and API lists over a large store (issue 10: p95 < 200 ms).

Seeds a throwaway project's store with ``--runs`` runs (spread over ``--pipelines``
pipelines, one step attempt each) and ``--versions`` versions of one dataset, in bulk,
then requests each page and list ``--repeat`` times through the real app (in process, so
what is timed is the server's work, not a network) and prints p50/p95 per address.

    python bench/ui_load.py [--runs 10000] [--versions 1000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

PIPELINE = """name: {name}
triggers:
  - schedule: {{cron: "0 2 * * *"}}
steps:
  - id: raw
    source: {{type: files, path: in/*.csv}}
  - id: out
    publish: {{input: raw, dataset: {name}}}
"""


def seed(root: Path, pipelines: int, runs: int, versions: int) -> None:
    from sqlalchemy import insert

    from headwater.runtime import ProjectRuntime
    from headwater.store import schema as t

    (root / "pipelines").mkdir(parents=True)
    (root / "headwater.yaml").write_text("name: bench\n")
    for i in range(pipelines):
        (root / "pipelines" / f"p{i}.yaml").write_text(PIPELINE.format(name=f"p{i}"))
    runtime = ProjectRuntime.load(root)
    store = runtime.store
    start = datetime(2026, 1, 1, tzinfo=UTC)
    statuses = ("succeeded", "succeeded", "succeeded", "failed", "cancelled")
    run_rows, step_rows = [], []
    for seq in range(1, runs + 1):
        at = start + timedelta(minutes=seq)
        status = statuses[seq % len(statuses)]
        run_id = f"{at:%Y%m%d-%H%M%S}-{seq:06x}"
        run_rows.append({
            "id": run_id, "seq": seq, "pipeline": f"p{seq % pipelines}", "status": status,
            "trigger": "schedule", "trigger_info": {}, "params": {}, "created_at": at,
            "started_at": at, "finished_at": at + timedelta(seconds=3),
            "error": "boom" if status == "failed" else None, "cancel_requested": False})
        step_rows.append({"run_id": run_id, "step_id": "raw", "kind": "source", "attempt": 1,
                          "status": status, "started_at": at, "seconds": 1.0})
    with store.tx() as conn:
        conn.execute(insert(t.runs), run_rows)
        conn.execute(insert(t.step_runs), step_rows)
        conn.execute(insert(t.datasets).values(name="p0", uri=str(root / "wh/p0"),
                                               pipeline="p0", key=[], created_at=start))
        conn.execute(insert(t.dataset_versions), [{
            "dataset": "p0", "version": v, "delta_version": v - 1, "run_id": run_rows[v][
                "id"], "pipeline": "p0", "step_id": "out", "trigger": "schedule",
            "mode": "append", "inputs": [], "sources": [], "rows_added": 10,
            "rows_removed": 0, "rows_total": 10 * v, "schema": [{"name": "id",
                                                                 "type": "int64"}],
            "created_at": start + timedelta(hours=v)} for v in range(1, versions + 1)])
    runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--versions", type=int, default=1_000)
    parser.add_argument("--pipelines", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    from headwater.runtime import ProjectRuntime
    from headwater.server.app import create_app
    from headwater.server.service import Server, ServerOptions

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "proj"
        seed(root, args.pipelines, args.runs, args.versions)
        server = Server(ProjectRuntime.load(root), ServerOptions(triggers=False, api=False))
        client = TestClient(create_app(server), base_url="http://127.0.0.1")  # loopback Host
        last = client.get("/api/runs?limit=1").json()[0]["id"]
        addresses = ["/", "/runs", "/runs?status=failed", "/pipelines/p1", f"/runs/{last}",
                     "/api/pipelines", "/api/runs", "/api/runs?pipeline=p3&status=failed",
                     "/api/runs?before=500", "/api/datasets", "/api/datasets/p0/versions",
                     "/api/datasets/p0/versions?before=10", "/api/triggers",
                     "/lineage/p0"]
        print(f"{args.runs} runs, {args.versions} versions, {args.pipelines} pipelines; "
              f"{args.repeat} requests each (ms)")
        print(f"{'address':45} {'p50':>8} {'p95':>8}")
        for address in addresses:
            client.get(address)  # warm-up: the first render compiles its templates
            times = []
            for _ in range(args.repeat):
                began = time.perf_counter()
                answer = client.get(address)
                times.append((time.perf_counter() - began) * 1000)
                assert answer.status_code == 200, (address, answer.status_code, answer.text)
            p95 = statistics.quantiles(times, n=20)[-1]
            print(f"{address:45} {statistics.median(times):8.1f} {p95:8.1f}")
        server.pool.shutdown(wait=False)


if __name__ == "__main__":
    main()
