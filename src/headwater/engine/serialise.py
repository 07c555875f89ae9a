"""Which runs must take turns, and taking a turn: incremental pipelines run one at a time.

Two runs of a pipeline with an incremental source would both list the same unseen files
(or cursor range) and publish them twice. A run of such a pipeline therefore holds the
store-wide lock ``pipeline:NAME`` (:mod:`headwater.store.runlock`) from before crash
repair and the first state read until its end; the next run waits, then reads only what
is still unseen. A pipeline that sets ``max_concurrent_runs`` above 1 opts out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from headwater.config.models import PipelineConfig
from headwater.store import runlock
from headwater.store.store import Store

LEASE_SECONDS = float(os.environ.get("HEADWATER_LEASE_SECONDS", "30"))
"""A lock holder silent (no heartbeat) for this long has lost its lock."""


def incremental(config: PipelineConfig) -> bool:
    """True if a source step of the pipeline keeps incremental state."""
    return any(getattr(getattr(step, "source", None), "incremental", None)
               for step in config.steps)


def serialised(config: PipelineConfig) -> bool:
    """Runs of this pipeline take turns (incremental, and not opted out)."""
    return incremental(config) and (config.max_concurrent_runs or 1) <= 1


@contextmanager
def pipeline_turn(store: Store, run_id: str, config: PipelineConfig, *,
                  on_wait: Callable[[str], None],
                  cancelled: Callable[[], bool]) -> Iterator[None]:
    """Hold the pipeline's lock for the body, if its runs must take turns."""
    if not serialised(config):
        yield
        return
    name = runlock.pipeline_lock(config.name)
    runlock.acquire(store, name, run_id, lease_seconds=LEASE_SECONDS, on_wait=on_wait,
                    cancelled=cancelled)
    try:
        yield
    finally:
        runlock.release(store, name, run_id)
