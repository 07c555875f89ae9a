"""``headwater backfill``: the windows of a range, each run once, skipping finished ones.

Windows come from the pipeline's schedule trigger (cron + time zone), exactly as the
scheduler would have produced them; a window whose run already succeeded is skipped, so a
backfill can be repeated after a partial failure. Runs are queued with ``trigger:
backfill`` and executed here with bounded concurrency (or left to a server). Each run is
claimed before it executes here, so a server beside the backfill never executes it too.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from headwater.exceptions import HeadwaterError
from headwater.runtime import ProjectRuntime

POLL_SECONDS = 0.5
"""How often backfill looks at a run a server claimed first."""


def _schedule_of(runtime: ProjectRuntime, pipeline: str) -> Any:
    from headwater.triggers.schedule import schedule_for

    pf = runtime.pipeline(pipeline)
    for trigger in pf.config.triggers:
        if trigger.schedule is not None or trigger.interval is not None:
            return schedule_for(trigger)
    raise HeadwaterError(f"pipeline {pipeline!r} has no schedule or interval trigger to "
                         "take backfill windows from")


def plan_windows(runtime: ProjectRuntime, pipeline: str, start: datetime,
                 end: datetime) -> tuple[list[tuple[datetime, datetime]], int]:
    """Windows lying wholly inside [start, end] not yet succeeded, and how many were skipped."""
    from headwater.triggers.schedule import windows_between

    windows = [(w[0], w[1]) for w in windows_between(_schedule_of(runtime, pipeline), start,
                                                     end)]
    done = {(r["window_start"], r["window_end"]) for r in
            runtime.store.runs(pipeline, limit=100_000, status=["succeeded"])
            if r["window_start"] is not None}
    todo = [w for w in windows if w not in done]
    return todo, len(windows) - len(todo)


def backfill(runtime: ProjectRuntime, pipeline: str, start: datetime, end: datetime, *,
             concurrency: int = 1, execute: bool = True) -> dict[str, Any]:
    from headwater.store.queue import fire

    if end <= start:
        raise HeadwaterError("--end must be after --start")
    todo, skipped = plan_windows(runtime, pipeline, start, end)
    run_ids = []
    for window in todo:
        run_id = fire(runtime.store, pipeline=pipeline, trigger_index=None, kind="backfill",
                      dedupe_key=None, info={"window": {"start": window[0].isoformat(),
                                                        "end": window[1].isoformat()}},
                      event_at=None, window=window)
        if run_id:
            run_ids.append(run_id)
    statuses: dict[str, str] = {}
    if execute and run_ids:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for row in pool.map(lambda rid: _run_once(runtime, rid), run_ids):
                statuses[row["id"]] = row["status"]
    return {"pipeline": pipeline, "windows": len(todo) + skipped, "skipped": skipped,
            "queued": run_ids, "statuses": statuses}


def _run_once(runtime: ProjectRuntime, run_id: str) -> dict[str, Any]:
    """Execute a queued backfill run here only if this process claims it; a server that
    claimed it first executes it instead, and this waits for its end. Either way the run's
    steps execute once (a command step, i.e. a training, never twice)."""
    from headwater.engine.runner import execute_run
    from headwater.store.queue import claim_run

    worker = f"local:{os.getpid()}"
    if claim_run(runtime.store, run_id, worker):
        return execute_run(runtime, run_id, worker=worker)
    return _wait_until_finished(runtime, run_id)


def _wait_until_finished(runtime: ProjectRuntime, run_id: str) -> dict[str, Any]:
    from headwater.store.liveness import reap_dead
    from headwater.store.store import FINISHED

    while True:
        row = runtime.store.run(run_id)
        if row["status"] in FINISHED:
            return row
        reap_dead(runtime.store)  # a server on this host that died must not hang us
        time.sleep(POLL_SECONDS)
